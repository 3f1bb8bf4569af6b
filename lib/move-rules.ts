import type { DeploymentState } from "../entities/deployment";

/*
 * Who may make a move (SPEC §2 "Who may make a move"), as pure functions. The deployments service gathers the
 * facts a rule needs (does it have a subscription, an overdue invoice) before its transaction and asks here.
 */

export interface Mover {
  /** Operators and system users (system:billing, system:provisioning) carry the operator role. */
  operator: boolean;
}

/** Into past_due or suspended, or from either back to active: the billing runs' and operators' moves only. */
export function isBillingControlled(from: DeploymentState, to: DeploymentState): boolean {
  if (to === "past_due" || to === "suspended") return true;
  return (from === "past_due" || from === "suspended") && to === "active";
}

/** The facts a move needs checked beyond the table. */
export interface MoveFacts {
  hasSubscription?: boolean;
  overdue?: boolean;
}

/** Which facts must be looked up for this move by this caller (none for most moves). */
export function factsNeeded(from: DeploymentState, to: DeploymentState, who: Mover): { subscription: boolean; overdue: boolean } {
  return {
    subscription: from === "trial" && to === "active",
    overdue: !who.operator && to === "active" && (from === "cancelled" || from === "paused"),
  };
}

export type MoveRefusal =
  | { status: 403; type: "BILLING_CONTROLLED"; message: string; data: { from: DeploymentState; to: DeploymentState } }
  | { status: 409; type: "SUBSCRIPTION_REQUIRED" | "PAYMENT_REQUIRED"; message: string; data: Record<string, unknown> };

/**
 * Null when the caller may make the move (the table is checked separately), else why not. Throws if a fact the
 * move needs (factsNeeded) was not given: the caller must look it up first.
 */
export function refuseMove(from: DeploymentState, to: DeploymentState, who: Mover, facts: MoveFacts = {}): MoveRefusal | null {
  if (from === to) return null;
  if (!who.operator && isBillingControlled(from, to))
    return { status: 403, type: "BILLING_CONTROLLED", message: `Moving a deployment from ${from} to ${to} is done by billing (or an operator)`, data: { from, to } };
  const need = factsNeeded(from, to, who);
  if (need.subscription) {
    if (facts.hasSubscription === undefined) throw new Error("refuseMove: hasSubscription not given");
    if (!facts.hasSubscription) return { status: 409, type: "SUBSCRIPTION_REQUIRED", message: "Converting a trial needs a subscription: subscribe to a plan first", data: { from, to } };
  }
  if (need.overdue) {
    if (facts.overdue === undefined) throw new Error("refuseMove: overdue not given");
    if (facts.overdue) return { status: 409, type: "PAYMENT_REQUIRED", message: "This deployment has an overdue invoice: pay it before moving it back to active", data: { from, to } };
  }
  return null;
}

/** billing_action_suspended is an operator override: in a create body or a PATCH, tenants get 403. */
export const mayOverrideBilling = (who: Mover): boolean => who.operator;
