/** Pages beyond System and Training jobs, registered here. */
import { lazy, type ReactNode } from "react";

// Each page is a chunk of its own, loaded on first use (see App.tsx).
const AlertsPage = lazy(() => import("./AlertsPage").then((m) => ({ default: m.AlertsPage })));
const ModelsPage = lazy(() => import("./ModelsPage").then((m) => ({ default: m.ModelsPage })));
const ModelPage = lazy(() => import("./ModelsPage").then((m) => ({ default: m.ModelPage })));
const PhasesPage = lazy(() => import("./PhasesPage").then((m) => ({ default: m.PhasesPage })));
const PhaseRunPage = lazy(() => import("./PhasesPage").then((m) => ({ default: m.PhaseRunPage })));

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
