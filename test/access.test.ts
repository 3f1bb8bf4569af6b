import type { ServiceBroker } from "moleculer";
import { ACCESS_LEVELS } from "../lib/access";
import { ALL_SERVICES } from "../services";
import { asAdmin, asTenant, startNode, uniq } from "./helpers";

/** Access is declared once on each action and enforced by AccessMiddleware (lib/access.ts). */
let broker: ServiceBroker;
beforeAll(async () => {
  broker = await startNode(Object.keys(ALL_SERVICES));
});
afterAll(() => broker.stop());

const ourActions = () =>
  broker.registry
    .getActionList({ withEndpoints: false } as any)
    .filter((a: any) => !a.name.startsWith("$node."))
    .map((a: any) => ({ name: a.name as string, access: a.action?.access as string | undefined }));

test("every action of every service declares a known access level", () => {
  const actions = ourActions();
  expect(actions.length).toBeGreaterThan(30);
  const undeclared = actions.filter((a) => !ACCESS_LEVELS.includes(a.access as any)).map((a) => a.name);
  expect(undeclared).toEqual([]);
});

test("operator and internal actions refuse a tenant with 403 before their handler runs", async () => {
  const tenant = asTenant(uniq("acme"));
  const gated = ourActions().filter((a) => a.access === "operator" || a.access === "internal");
  expect(gated.length).toBeGreaterThan(10);
  for (const a of gated) {
    const err = await broker.call(a.name, {}, tenant).then(() => null, (e) => e);
    expect({ action: a.name, code: err?.code }).toEqual({ action: a.name, code: 403 });
  }
});

test("anything but a public action needs a user (401)", async () => {
  const signed = ourActions().filter((a) => a.access !== "public");
  for (const a of signed) {
    const err = await broker.call(a.name, {}).then(() => null, (e) => e);
    expect({ action: a.name, code: err?.code }).toEqual({ action: a.name, code: 401 });
  }
});

test("operators pass the gate (the handler then checks its parameters)", async () => {
  const err = await broker.call("v1.subscriptions.createPlan", {}, asAdmin).then(() => null, (e) => e);
  expect(err?.code).toBe(422);
  const plans: any = await broker.call("v1.subscriptions.listPlans", {}, asTenant(uniq("acme")));
  expect(plans.items.length).toBeGreaterThan(0);
});
