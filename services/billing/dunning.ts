import type { DeploymentState } from "../../entities/deployment";
import { DAY_MS } from "./pricing";

/**
 * The moves billing's dates imply for one deployment (SPEC §4), as a pure function: the run, the catch-up after an
 * override is cleared and the settle after a payment all ask it, with the deployment's fresh state.
 */
export interface BillingPolicy {
  suspendAfterDays: number; // DUNNING_SUSPEND_AFTER_DAYS, counted from the oldest open invoice's due_at
  cancelAfterDays: number; // DUNNING_CANCEL_AFTER_DAYS, counted from the same due_at
  retentionDays: number; // CANCELLED_RETENTION_DAYS, counted from the (billing-clock) move to cancelled
}
export interface PlanInput {
  state: DeploymentState;
  billingActionSuspended: boolean;
  now: Date;
  /** due_at of the oldest open invoice; null when none is open. */
  oldestOpenDueAt: Date | null;
  trialEndsAt: Date | null;
  subscribed: boolean;
  cancelledAt: Date | null;
}
export interface PlannedMove {
  to: DeploymentState;
  reason: "invoice_overdue" | "payment_overdue" | "unpaid" | "payment_received" | "trial_converted" | "trial_expired" | "retention_expired";
}

const after = (t: Date, days: number) => new Date(t.getTime() + days * DAY_MS);

/**
 * The dunning ladder: an open invoice is overdue from its due_at on; suspension and cancellation come the
 * configured days after that due_at. The shortest path the lifecycle table allows, each step a move.
 */
export function dunningMoves(state: DeploymentState, oldestOpenDueAt: Date | null, now: Date, policy: BillingPolicy): PlannedMove[] {
  if (!["active", "past_due", "suspended", "paused"].includes(state)) return [];
  const overdue = oldestOpenDueAt !== null && now.getTime() >= oldestOpenDueAt.getTime();
  if (!overdue) return state === "past_due" || state === "suspended" ? [{ to: "active", reason: "payment_received" }] : [];
  if (now.getTime() >= after(oldestOpenDueAt, policy.cancelAfterDays).getTime()) return [{ to: "cancelled", reason: "unpaid" }];
  if (state === "paused") return []; // already off; it waits for the cancel day
  const suspend = now.getTime() >= after(oldestOpenDueAt, policy.suspendAfterDays).getTime();
  if (state === "active") return suspend ? [{ to: "past_due", reason: "invoice_overdue" }, { to: "suspended", reason: "payment_overdue" }] : [{ to: "past_due", reason: "invoice_overdue" }];
  if (state === "past_due" && suspend) return [{ to: "suspended", reason: "payment_overdue" }];
  return [];
}

export function planMoves(i: PlanInput, policy: BillingPolicy): PlannedMove[] {
  if (i.billingActionSuspended) return [];
  if (i.state === "trial") {
    if (!i.trialEndsAt || i.now.getTime() < i.trialEndsAt.getTime()) return [];
    return [i.subscribed ? { to: "active", reason: "trial_converted" } : { to: "cancelled", reason: "trial_expired" }];
  }
  if (i.state === "cancelled") {
    return i.cancelledAt && i.now.getTime() >= after(i.cancelledAt, policy.retentionDays).getTime() ? [{ to: "archived", reason: "retention_expired" }] : [];
  }
  return dunningMoves(i.state, i.oldestOpenDueAt, i.now, policy);
}
