import type { DeploymentState } from "../entities/deployment";

/** SPEC §2: from → allowed to. Only the provisioning saga moves a deployment out of `provisioning`. */
export const TRANSITIONS: Record<DeploymentState, readonly DeploymentState[]> = {
  provisioning: ["active", "trial", "cancelled"],
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

/* ---- What a move does to the cloud (SPEC §2 "What a move does to the cloud and the subscription") ---- */

export const RUNTIME_STATUSES = ["none", "starting", "running", "stopping", "stopped", "destroying", "destroyed"] as const;
export type RuntimeStatus = (typeof RUNTIME_STATUSES)[number];
export type LifecycleKind = "power_off" | "power_on" | "decommission";
export type LifecycleEffect = "none" | LifecycleKind;

/** A deployment has a live droplet unless its runtime says none was ever linked or it is gone. */
export const hasLiveDroplet = (status: RuntimeStatus): boolean => status !== "none" && status !== "destroyed";

/** Whether a state's droplets are powered on (true), off (false), or in the hands of another saga (null). */
export function wantsPower(state: DeploymentState): boolean | null {
  switch (state) {
    case "trial":
    case "active":
    case "past_due":
      return true;
    case "paused":
    case "suspended":
    case "cancelled":
      return false;
    default:
      return null; // provisioning (the provision saga) and archived (decommission)
  }
}

/** Where the droplet is heading according to its runtime: on, off, or unknown. */
function heading(status: RuntimeStatus): boolean | null {
  if (status === "running" || status === "starting") return true;
  if (status === "stopped" || status === "stopping") return false;
  return null;
}

/**
 * The lifecycle saga a move needs. No live droplet: no cloud effect. Into `archived`: decommission. Otherwise the
 * power the new state wants is compared with where the runtime says the droplet is heading (so a move after a
 * failed power-off still powers off); when the runtime does not say, with the power the old state wanted.
 */
export function lifecycleEffect(from: DeploymentState, to: DeploymentState, runtime: RuntimeStatus): LifecycleEffect {
  if (!hasLiveDroplet(runtime) || from === to) return "none";
  if (to === "archived") return runtime === "destroying" ? "none" : "decommission";
  const want = wantsPower(to);
  if (want === null) return "none";
  const now = heading(runtime) ?? wantsPower(from);
  if (now === want) return "none";
  return want ? "power_on" : "power_off";
}

/** The runtime status a move shows at once (the saga moves it on from there). */
export function runtimeWhile(effect: LifecycleKind): RuntimeStatus {
  return effect === "power_off" ? "stopping" : effect === "power_on" ? "starting" : "destroying";
}

/** SPEC §2 table: the subscription status a state implies; null = leave it (provisioning). */
export function subscriptionStatusFor(state: DeploymentState): "active" | "paused" | "cancelled" | null {
  switch (state) {
    case "trial":
    case "active":
    case "past_due":
    case "suspended": // still owed
      return "active";
    case "paused":
      return "paused";
    case "cancelled":
    case "archived":
      return "cancelled";
    default:
      return null;
  }
}

/** SPEC §3: subscribing, attaching and changing plan are refused on these. */
export const notBillable = (state: DeploymentState): boolean => state === "cancelled" || state === "archived";
