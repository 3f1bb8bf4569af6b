import { DEPLOYMENT_STATES, type DeploymentState } from "../entities/deployment";
import { hasLiveDroplet, lifecycleEffect, notBillable, runtimeWhile, subscriptionStatusFor, TRANSITIONS, wantsPower, type RuntimeStatus } from "../lib/lifecycle";
import { factsNeeded, isBillingControlled, mayOverrideBilling, refuseMove } from "../lib/move-rules";
import { requestedSaga } from "../services/deployments/saga-requests";

/* Pure rules of SPEC §2, no I/O. */

const TENANT = { operator: false };
const OPERATOR = { operator: true };
const moves = (DEPLOYMENT_STATES as readonly DeploymentState[]).flatMap((from) => TRANSITIONS[from].map((to) => [from, to] as const));

describe("lifecycleEffect: what a move asks of the cloud", () => {
  // SPEC §2 table, written out: the effect of each allowed move on a deployment whose droplet matches its state.
  const runtimeOf = (s: DeploymentState): RuntimeStatus => (wantsPower(s) === false ? "stopped" : "running");
  const EXPECTED: Record<string, string> = {
    "provisioning>active": "none", "provisioning>trial": "none", "provisioning>cancelled": "power_off",
    "trial>active": "none", "trial>cancelled": "power_off",
    "active>paused": "power_off", "active>past_due": "none", "active>cancelled": "power_off",
    "paused>active": "power_on", "paused>cancelled": "none",
    "past_due>active": "none", "past_due>suspended": "power_off", "past_due>cancelled": "power_off",
    "suspended>active": "power_on", "suspended>cancelled": "none",
    "cancelled>active": "power_on", "cancelled>archived": "decommission",
  };
  test.each(moves)("%s → %s with a droplet in line with the old state", (from, to) => {
    expect(lifecycleEffect(from, to, runtimeOf(from))).toBe(EXPECTED[`${from}>${to}`]);
  });
  test.each(moves)("%s → %s without a live droplet has no cloud effect", (from, to) => {
    expect(lifecycleEffect(from, to, "none")).toBe("none");
    expect(lifecycleEffect(from, to, "destroyed")).toBe("none");
  });
  test("the runtime's heading wins over the old state: a pause then a resume before the power-off finished", () => {
    // pause: running → power_off, runtime shows stopping; resume: wants on, heading off → power_on
    expect(lifecycleEffect("active", "paused", "running")).toBe("power_off");
    expect(lifecycleEffect("paused", "active", "stopping")).toBe("power_on");
    // a power-off that failed left it running: the next off-move still powers off
    expect(lifecycleEffect("paused", "cancelled", "running")).toBe("power_off");
    // a power-on in flight and a cancel: off again
    expect(lifecycleEffect("active", "cancelled", "starting")).toBe("power_off");
    // already heading where the new state wants: nothing more
    expect(lifecycleEffect("active", "paused", "stopping")).toBe("none");
  });
  test("a decommission is asked once", () => {
    expect(lifecycleEffect("cancelled", "archived", "stopped")).toBe("decommission");
    expect(lifecycleEffect("cancelled", "archived", "destroying")).toBe("none");
  });
  test("live droplets and the runtime a move shows at once", () => {
    expect(["none", "destroyed"].filter((s) => hasLiveDroplet(s as RuntimeStatus))).toEqual([]);
    for (const s of ["starting", "running", "stopping", "stopped", "destroying"] as RuntimeStatus[]) expect(hasLiveDroplet(s)).toBe(true);
    expect(runtimeWhile("power_off")).toBe("stopping");
    expect(runtimeWhile("power_on")).toBe("starting");
    expect(runtimeWhile("decommission")).toBe("destroying");
  });
});

describe("subscription status follows the state (SPEC §2 table)", () => {
  test.each([
    ["provisioning", null], ["trial", "active"], ["active", "active"], ["past_due", "active"], ["paused", "paused"],
    ["suspended", "active"], ["cancelled", "cancelled"], ["archived", "cancelled"],
  ] as const)("%s → %s", (state, status) => {
    expect(subscriptionStatusFor(state)).toBe(status);
  });
  test("only cancelled and archived are not billable", () => {
    expect(DEPLOYMENT_STATES.filter(notBillable)).toEqual(["cancelled", "archived"]);
  });
});

describe("who may make a move", () => {
  const BILLING = new Set(["active>past_due", "past_due>suspended", "past_due>active", "suspended>active"]);
  test.each(moves)("%s → %s: billing-controlled only where SPEC §2 says", (from, to) => {
    expect(isBillingControlled(from, to)).toBe(BILLING.has(`${from}>${to}`));
  });
  test.each([...BILLING])("tenants get 403 BILLING_CONTROLLED for %s, operators may", (move) => {
    const [from, to] = move.split(">") as [DeploymentState, DeploymentState];
    expect(refuseMove(from, to, TENANT, { overdue: false, hasSubscription: true })).toEqual(expect.objectContaining({ status: 403, type: "BILLING_CONTROLLED", data: { from, to } }));
    expect(refuseMove(from, to, OPERATOR, {})).toBeNull();
  });
  test("trial → active needs a subscription, for operators too", () => {
    for (const who of [TENANT, OPERATOR]) {
      expect(factsNeeded("trial", "active", who).subscription).toBe(true);
      expect(refuseMove("trial", "active", who, { hasSubscription: false })).toEqual(expect.objectContaining({ status: 409, type: "SUBSCRIPTION_REQUIRED" }));
      expect(refuseMove("trial", "active", who, { hasSubscription: true })).toBeNull();
    }
  });
  test("tenants reactivating or resuming with an overdue invoice: 409 PAYMENT_REQUIRED; operators are not asked", () => {
    for (const from of ["cancelled", "paused"] as const) {
      expect(factsNeeded(from, "active", TENANT).overdue).toBe(true);
      expect(refuseMove(from, "active", TENANT, { overdue: true })).toEqual(expect.objectContaining({ status: 409, type: "PAYMENT_REQUIRED" }));
      expect(refuseMove(from, "active", TENANT, { overdue: false })).toBeNull();
      expect(factsNeeded(from, "active", OPERATOR).overdue).toBe(false);
      expect(refuseMove(from, "active", OPERATOR, {})).toBeNull();
    }
  });
  test("the tenant's own moves need no facts and are allowed", () => {
    for (const [from, to] of [["active", "paused"], ["active", "cancelled"], ["past_due", "cancelled"], ["suspended", "cancelled"], ["cancelled", "archived"], ["trial", "cancelled"]] as const) {
      expect(factsNeeded(from, to, TENANT)).toEqual({ subscription: false, overdue: false });
      expect(refuseMove(from, to, TENANT)).toBeNull();
    }
  });
  test("a fact that was not looked up is a programming error, not a silent allow", () => {
    expect(() => refuseMove("paused", "active", TENANT, {})).toThrow(/overdue/);
    expect(() => refuseMove("trial", "active", OPERATOR, {})).toThrow(/hasSubscription/);
  });
  test("billing_action_suspended is an operator override", () => {
    expect(mayOverrideBilling(TENANT)).toBe(false);
    expect(mayOverrideBilling(OPERATOR)).toBe(true);
  });
});

test("a saga whose start was not acknowledged is answered as requested, under its id", () => {
  const s = requestedSaga({ id: "11111111-1111-4111-8111-111111111111", deployment_id: "d", tenant_id: "t", kind: "power_off", input: {}, requested_by: "u", created_at: new Date("2026-12-02T06:00:00Z") });
  expect(s).toEqual({ id: "11111111-1111-4111-8111-111111111111", kind: "power_off", deployment_id: "d", tenant_id: "t", status: "running", steps: [], started_at: "2026-12-02T06:00:00.000Z", finished_at: null, error: null });
});
