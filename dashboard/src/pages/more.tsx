/** Pages beyond System and Training jobs, registered here. */
import type { ReactNode } from "react";
import { AlertsPage } from "./AlertsPage";
import { ModelPage, ModelsPage } from "./ModelsPage";
import { PhaseRunPage, PhasesPage } from "./PhasesPage";

export const extraNav: [string, string][] = [
  ["/phases", "Phase runs"],
  ["/models", "Models"],
  ["/alerts", "Alerts"],
];

const ID = "([a-z0-9][a-z0-9-]{0,62})";

export function extraRoutes(route: string): ReactNode | null {
  if (route === "/phases") return <PhasesPage />;
  if (route === "/models") return <ModelsPage />;
  if (route === "/alerts") return <AlertsPage />;
  const run = new RegExp(`^/phaseRuns/${ID}$`).exec(route);
  if (run) return <PhaseRunPage key={run[1]} id={run[1]} />;
  const model = new RegExp(`^/models/${ID}$`).exec(route);
  if (model) return <ModelPage key={model[1]} id={model[1]} />;
  return null;
}
