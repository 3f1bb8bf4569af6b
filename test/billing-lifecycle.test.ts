import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, client, startNode, token, uniq, waitFor, newNamespace } from "./helpers";
import { clockNow, freshMonth, setClock } from "./billing-clock";

/*
 * Billing moves with their cloud side, on the test clock: the droplet powers off at suspension and on at payment,
 * retention archives and decommissions, the override holds the ladder, a tenant's resume or reactivation with an
 * overdue invoice is 409 PAYMENT_REQUIRED, and a trial's end is the billing clock's now + TRIAL_DAYS. These need the
 * lifecycle (power sagas, PATCH, PAYMENT_REQUIRED, trial_ends_at) and engine branches besides billing.
 */
let sim: Simulator;
let node: ServiceBroker;
let op: ReturnType<typeof client>;
let tenant: ReturnType<typeof client>;
let base: string;
const plan = uniq("bl-life");

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 0 });
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  node = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning", "billing"], {
    nats: newNamespace(),
    settings: {
      inventory: { ...provider, driftCheckMs: 0 }, dns: provider, billing: { testClock: true, runMs: 0, eventSweepMs: 0 },
      provisioning: { pollMs: 25, backoffMs: 10, sweepMs: 300, leaseMs: 3000 },
    },
  });
  base = apiUrl(node);
  op = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  tenant = client(base, await token({ tenant: uniq("bl-life"), roles: ["admin"] }));
  expect((await op.post("/plans", { code: plan, name: "Life plan", price_cents: 3100 })).status).toBe(201);
}, 60_000);
afterAll(async () => {
  await node?.stop();
  await sim?.close();
});

/** The deployment's droplet at the simulator, found through inventory (destroyed rows included): undefined once gone. */
async function dropletOf(id: string) {
  const res = await op.get(`/inventory?deployment_id=${id}&include_destroyed=true`);
  const ext = res.body.items.map((r: any) => String(r.external_id));
  expect(ext.length).toBeGreaterThan(0);
  return ((await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as any).droplets.find((d: any) => ext.includes(String(d.id)));
}
const stateOf = async (id: string) => (await op.get(`/deployments/${id}`)).body.deployment.state as string;

async function provisioned() {
  const res = await tenant.post("/deployments", { slug: uniq("app"), provision: true });
  expect(res.status).toBe(202);
  const id = res.body.deployment.id;
  await waitFor(async () => (await stateOf(id)) === "active", { timeoutMs: 30_000, what: "provisioned" });
  expect((await tenant.post(`/deployments/${id}/subscribe`, { plan_code: plan })).status).toBe(201);
  return id as string;
}

test("suspension powers the droplet off and payment powers it on; paying at past_due keeps it on", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const d = await provisioned();
  const early = await provisioned();
  const [inv] = (await op.get(`/invoices?deployment_id=${d}`)).body.items;
  const [inv2] = (await op.get(`/invoices?deployment_id=${early}`)).body.items;
  await setClock(op, m.day(22)); // due
  expect(await stateOf(d)).toBe("past_due");
  expect((await dropletOf(d)).status).toBe("active");
  // Paying at past_due: back to active, the droplet never went off.
  expect((await op.post(`/invoices/${inv2.id}/pay`, {})).status).toBe(200);
  expect(await stateOf(early)).toBe("active");
  expect((await dropletOf(early)).status).toBe("active");
  // due + 14 days: suspended, and its droplet powers off at the provider.
  await setClock(op, m.day(5, 10, true));
  expect(await stateOf(d)).toBe("suspended");
  await waitFor(async () => (await dropletOf(d)).status === "off", { timeoutMs: 30_000, what: "the droplet powered off" });
  // Paying every open invoice: active, and the droplet powers on again.
  for (const i of (await op.get(`/invoices?deployment_id=${d}&status=open`)).body.items) expect((await op.post(`/invoices/${i.id}/pay`, {})).status).toBe(200);
  expect(inv.id).toBeDefined();
  expect(await stateOf(d)).toBe("active");
  await waitFor(async () => (await dropletOf(d)).status === "active", { timeoutMs: 30_000, what: "the droplet powered on" });
}, 120_000);

test("retention archives a cancelled deployment and decommissions it", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(2));
  const d = await provisioned();
  expect(await dropletOf(d)).toBeDefined();
  expect((await tenant.post(`/deployments/${d}/transition`, { to_state: "cancelled" })).status).toBe(200);
  await setClock(op, new Date(Date.parse(m.day(2)) + 30 * 86_400_000 - 60_000).toISOString());
  expect(await stateOf(d)).toBe("cancelled");
  const run = await setClock(op, new Date(Date.parse(m.day(2)) + 30 * 86_400_000).toISOString());
  expect(run.moves).toContainEqual({ deployment_id: d, from: "cancelled", to: "archived", reason: "retention_expired" });
  await waitFor(async () => !(await dropletOf(d)), { timeoutMs: 30_000, what: "the droplet destroyed" });
}, 120_000);

test("the override holds a deployment through the whole ladder; the run after clearing catches it up, each move an event", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const res = await op.post("/deployments", { slug: uniq("held"), tenant_id: uniq("held"), billing_action_suspended: true });
  expect(res.status).toBe(201);
  const d = res.body.deployment.id;
  expect((await op.post(`/deployments/${d}/subscribe`, { plan_code: plan })).status).toBe(201);
  for (const day of [m.day(22), m.day(6, 10, true), m.day(10, 10, true)]) {
    const run = await setClock(op, day);
    expect(run.moves.filter((mv) => mv.deployment_id === d)).toEqual([]);
  }
  expect(await stateOf(d)).toBe("active");
  expect((await op.get(`/invoices?deployment_id=${d}`)).body.items).toHaveLength(2); // still invoiced
  expect((await op.patch(`/deployments/${d}`, { billing_action_suspended: false })).status).toBe(200);
  const run = await op.post("/billing/run");
  expect(run.body.moves.filter((mv: any) => mv.deployment_id === d)).toEqual([
    { deployment_id: d, from: "active", to: "past_due", reason: "invoice_overdue" },
    { deployment_id: d, from: "past_due", to: "suspended", reason: "payment_overdue" },
  ]);
  const events = (await op.get(`/deployments/${d}`)).body.events.slice(1);
  expect(events.map((e: any) => [e.to_state, e.reason, e.actor])).toEqual([["past_due", "invoice_overdue", "system:billing"], ["suspended", "payment_overdue", "system:billing"]]);
});

test("a tenant resuming or reactivating with an overdue invoice gets 409 PAYMENT_REQUIRED", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const res = await tenant.post("/deployments", { slug: uniq("owes") });
  const d = res.body.deployment.id;
  expect((await tenant.post(`/deployments/${d}/subscribe`, { plan_code: plan })).status).toBe(201);
  expect((await tenant.post(`/deployments/${d}/transition`, { to_state: "paused" })).status).toBe(200);
  await setClock(op, m.day(23));
  const resume = await tenant.post(`/deployments/${d}/transition`, { to_state: "active" });
  expect(resume.status).toBe(409);
  expect(resume.body.type).toBe("PAYMENT_REQUIRED");
  expect(await stateOf(d)).toBe("paused");
});

test("trial_ends_at is the billing clock's now + TRIAL_DAYS", async () => {
  const now = await clockNow(op);
  const res = await tenant.post("/deployments", { slug: uniq("trial"), state: "trial" });
  expect(res.body.deployment.trial_ends_at).toBe(new Date(now.getTime() + 14 * 86_400_000).toISOString());
});

test("a create with provision and plan_code gets its first invoice as provisioning activates it, not at the next run", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(10));
  const res = await tenant.post("/deployments", { slug: uniq("app"), provision: true, plan_code: plan });
  expect(res.status).toBe(202);
  expect(res.body.subscription.status).toBe("active");
  const id = res.body.deployment.id as string;
  await waitFor(async () => (await stateOf(id)) === "active", { timeoutMs: 30_000, what: "provisioned" });
  // runMs: 0 — no scheduled run issues it here.
  const inv = await waitFor(async () => (await tenant.get(`/invoices?deployment_id=${id}`)).body.items[0], { timeoutMs: 10_000, what: "first invoice" });
  expect(inv.status).toBe("open");
  expect(inv.issued_at).toBe(m.day(10));
  expect((await tenant.get(`/invoices?deployment_id=${id}`)).body.items).toHaveLength(1);
});
