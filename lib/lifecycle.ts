import type { DeploymentState } from "../entities/deployment";

/** SPEC §2: from → allowed to. Only the provisioning saga moves a deployment out of `provisioning`. */
export const TRANSITIONS: Record<DeploymentState, readonly DeploymentState[]> = {
  provisioning: ["active", "cancelled"],
  trial: ["active", "cancelled"],
  active: ["paused", "past_due", "cancelled"],
  paused: ["active", "cancelled"],
  past_due: ["active", "suspended", "cancelled"],
  suspended: ["active", "cancelled"],
  cancelled: ["active", "archived"],
  archived: [],
};

export function canTransition(from: DeploymentState, to: DeploymentState, bySaga = false): boolean {
  if (from === "provisioning" && !bySaga) return false;
  return TRANSITIONS[from].includes(to);
}
