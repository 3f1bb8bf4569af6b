import { KINDS } from "../services/provisioning.service";
import { backoff, step, undo, StepResponse } from "../services/provisioning/engine";
import { provision } from "../services/provisioning/kinds/provision";

/* Pure parts of the engine and the kinds' step lists: no broker, no database. */

const ENV = { activeTimeoutMs: 1, pollMs: 1, actionTimeoutMs: 1, defaultSize: "s-def", defaultImage: "img-def" };

test("the registered kinds and their step lists", () => {
  expect(KINDS.map((k) => [k.kind, k.onFailure])).toEqual([["provision", "compensate"], ["power_off", "forward"], ["power_on", "forward"], ["decommission", "forward"], ["resize", "compensate"]]);
  for (const k of KINDS) {
    expect(new Set(k.steps.map((s) => s.name)).size).toBe(k.steps.length);
    for (const s of k.steps) expect(s.forward).toMatch(/^v1\.\w+\.\w+$/);
    // Forward-only kinds have no undo; a compensating kind's undos go to the owning services' handlers.
    for (const s of k.steps) if (s.compensate) expect(["deployments", "inventory", "dns"]).toContain(s.compensate.owner);
    if (k.onFailure === "forward") expect(k.steps.filter((s) => s.compensate)).toEqual([]);
  }
  expect(provision.steps.filter((s) => s.compensate).map((s) => [s.name, s.compensate!.owner, s.compensate!.op])).toEqual([
    ["mark_deployment_provisioning", "deployments", "cancel"],
    ["create_droplet", "inventory", "destroyDroplets"],
    ["register_inventory", "inventory", "markDestroyed"],
    ["link_deployment_resource", "inventory", "unlink"],
    ["point_deployment_dns", "dns", "revert"],
  ]);
});

test("provision's input gets the defaults once, at start; what the caller gave is kept", () => {
  expect(provision.prepare!({ slug: "a", region: "fra1" }, ENV)).toEqual({ slug: "a", region: "fra1", size: "s-def", image: "img-def", user_data: null, target_state: "active" });
  expect(provision.prepare!({ slug: "a", region: "fra1", size: "s-2", image: "i", user_data: "#cloud-config", target_state: "trial" }, ENV)).toMatchObject({ size: "s-2", image: "i", user_data: "#cloud-config", target_state: "trial" });
});

test("a step holds its forward side and its undo; StepResponse carries output and compensate input", () => {
  const invoke = async () => new StepResponse({ a: 1 }, { b: 2 });
  const s = step("x", "v1.svc.act", invoke, undo("inventory", "op", () => ({ c: 3 })));
  expect(s).toMatchObject({ name: "x", forward: "v1.svc.act", invoke, compensate: { owner: "inventory", op: "op" } });
  expect(s.compensate!.before!({} as any)).toEqual({ c: 3 });
  expect(new StepResponse({ a: 1 })).toMatchObject({ output: { a: 1 }, compensateInput: undefined });
});

test("backoff doubles from the base and is capped at 30 s", () => {
  expect([1, 2, 3, 4].map((n) => backoff(100, n))).toEqual([100, 200, 400, 800]);
  expect(backoff(1000, 20)).toBe(30_000);
});
