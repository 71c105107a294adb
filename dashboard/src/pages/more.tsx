/** Pages beyond System and Training jobs, registered here. */
import type { ReactNode } from "react";

export const extraNav: [string, string][] = [];

export function extraRoutes(_route: string): ReactNode | null {
  return null;
}
