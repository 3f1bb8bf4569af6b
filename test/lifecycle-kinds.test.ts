import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { Errors } from "moleculer";
import { actionFaults, apiUrl, asAdmin, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * The lifecycle kinds (SPEC §2 "What a move does", §7) against the simulator, started directly through
 * v1.provisioning.start (the deployments service wires them to the moves): power_off, power_on, decommission, their
 * serialisation per deployment, and a forward-only saga that fails on an errored action and is retried.
 */

const DOMAIN = "apps.arcadia.test";
const FINAL = ["succeeded", "failed", "compensated", "compensation_failed"];

describe("lifecycle kinds against the simulator", () => {
let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let operator: ReturnType<typeof client>;
const faults = actionFaults();

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 50, actionMs: 100 } as any);
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    middlewares: [faults.middleware],
    settings: {
      inventory: provider,
      dns: { ...provider, dnsDomain: DOMAIN },
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 3000, actionTimeoutMs: 3000, stepMaxAttempts: 3, sweepMs: 300, leaseMs: 3000 },
    },
  });
  base = apiUrl(broker);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
});
afterAll(async () => {
  await broker.stop();
  await sim.close();
});
afterEach(async () => {
  faults.clear();
  await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
});

const simFault = (body: object) => fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }).then((r) => expect(r.status).toBe(201));
const simState = async () => (await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as { droplets: any[]; domain_records: any[] };
const sagaOf = async (id: string) => (await operator.get(`/sagas/${id}`)).body.saga;
const settled = (id: string, timeoutMs = 20_000) =>
  waitFor(async () => {
    const s = await sagaOf(id);
    return FINAL.includes(s.status) ? s : null;
  }, { timeoutMs, what: `saga ${id} to finish` });
const stepsOf = (saga: any) => Object.fromEntries(saga.steps.map((s: any) => [s.name, s]));

/** A deployment provisioned end to end: one droplet, its inventory row and its A record. */
async function provisioned() {
  const tenant = uniq("lk");
  const slug = uniq("app");
  const api = client(base, await token({ tenant, sub: "pat" }));
  const res = await api.post("/deployments", { slug, provision: true });
  expect(res.status).toBe(202);
  expect((await settled(res.body.saga.id)).status).toBe("succeeded");
  const id = res.body.deployment.id as string;
  const droplets = (await simState()).droplets.filter((d) => d.tags.includes(`deployment-${id}`));
  expect(droplets).toHaveLength(1);
  return { api, tenant, id, fqdn: `${slug}.${tenant}.${DOMAIN}`, dropletId: droplets[0].id as number };
}
const start = (d: { id: string; tenant: string }, kind: string, id = randomUUID(), input: Record<string, unknown> = {}) =>
  broker.call<any, any>("v1.provisioning.start", { id, kind, deployment_id: d.id, tenant_id: d.tenant, input, requested_by: "pat" }, asAdmin).then((r) => r.saga);
const dropletStatus = async (id: number) => (await simState()).droplets.find((d) => d.id === id)?.status;
const inventoryOf = async (deploymentId: string) => (await operator.get(`/inventory?deployment_id=${deploymentId}&include_destroyed=true`)).body.items;
/** The deployment's runtime, where the deployments service has one (SPEC §2). */
const runtimeOf = async (d: { api: ReturnType<typeof client>; id: string }) => (await d.api.get(`/deployments/${d.id}`)).body.deployment.runtime?.status;

test("power_off, then power_off again (nothing to do), then power_on: the droplet and its inventory row follow", async () => {
  const d = await provisioned();
  const off = await settled((await start(d, "power_off")).id);
  expect(off).toMatchObject({ kind: "power_off", status: "succeeded", error: null });
  expect(off.steps.map((s: any) => s.name)).toEqual(["set_runtime_stopping", "power_off_droplets", "update_inventory", "set_runtime_stopped"]);
  expect(stepsOf(off).power_off_droplets.output).toMatchObject({ droplet_ids: [d.dropletId], [`action_${d.dropletId}`]: expect.any(Number) });
  expect(await dropletStatus(d.dropletId)).toBe("off");
  expect((await inventoryOf(d.id)).map((r: any) => r.status)).toEqual(["off"]);
  const rt = await runtimeOf(d);
  if (rt !== undefined) expect(rt).toBe("stopped");

  // Already off: no second action.
  const again = await settled((await start(d, "power_off")).id);
  expect(again.status).toBe("succeeded");
  expect(stepsOf(again).power_off_droplets.output).toEqual({ droplet_ids: [d.dropletId] });

  const on = await settled((await start(d, "power_on")).id);
  expect(on.status).toBe("succeeded");
  expect(await dropletStatus(d.dropletId)).toBe("active");
  expect((await inventoryOf(d.id)).map((r: any) => r.status)).toEqual(["active"]);
  const rt2 = await runtimeOf(d);
  if (rt2 !== undefined) expect(rt2).toBe("running");
}, 60_000);

test("a pause and a resume sent back to back run in order and end with the droplet running", async () => {
  const d = await provisioned();
  const off = await start(d, "power_off");
  const on = await start(d, "power_on");
  const [doneOff, doneOn] = [await settled(off.id), await settled(on.id)];
  expect([doneOff.status, doneOn.status]).toEqual(["succeeded", "succeeded"]);
  expect(new Date(doneOn.steps[0].started_at).getTime()).toBeGreaterThanOrEqual(new Date(doneOff.finished_at).getTime());
  expect(await dropletStatus(d.dropletId)).toBe("active");
  expect((await inventoryOf(d.id)).map((r: any) => r.status)).toEqual(["active"]);
}, 60_000);

test("an action that errors is retried, then the saga is failed; an operator retry after the fault clears finishes it", async () => {
  const d = await provisioned();
  await simFault({ operation: "droplets.actions.create", mode: "action_errored", count: -1 });
  const failed = await settled((await start(d, "power_off")).id);
  expect(failed.status).toBe("failed");
  expect(failed.error).toMatch(/^power_off_droplets: .*errored/);
  expect(stepsOf(failed).power_off_droplets).toMatchObject({ status: "failed", attempts: 3 });
  expect(stepsOf(failed).update_inventory.status).toBe("pending");
  // Nothing changed: the droplet runs, inventory says so, the deployment keeps its state.
  expect(await dropletStatus(d.dropletId)).toBe("active");
  expect((await inventoryOf(d.id)).map((r: any) => r.status)).toEqual(["active"]);
  expect((await d.api.get(`/deployments/${d.id}`)).body.deployment.state).toBe("active");
  const rt = await runtimeOf(d);
  if (rt !== undefined) expect(rt).toBe("running");
  expect((await operator.get(`/sagas?status=failed&deployment_id=${d.id}`)).body.items.map((s: any) => s.id)).toEqual([failed.id]);

  await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
  const retried = await operator.post(`/sagas/${failed.id}/retry`);
  expect(retried.status).toBe(202);
  const done = await settled(failed.id);
  expect(done.status).toBe("succeeded");
  expect(await dropletStatus(d.dropletId)).toBe("off");
  expect((await inventoryOf(d.id)).map((r: any) => r.status)).toEqual(["off"]);
}, 60_000);

test("a power action whose answer is lost is found in the droplet's action list and waited on, not sent again", async () => {
  const d = await provisioned();
  await simFault({ operation: "droplets.actions.create", mode: "lose_response" });
  const done = await settled((await start(d, "power_off")).id);
  expect(done.status).toBe("succeeded");
  expect(await dropletStatus(d.dropletId)).toBe("off");
  const { actions } = await broker.call<any, any>("v1.inventory.dropletActions", { id: d.dropletId }, asAdmin);
  expect(actions.filter((a: any) => a.type === "power_off")).toHaveLength(1);
  expect(stepsOf(done).power_off_droplets.output[`action_${d.dropletId}`]).toBe(actions.find((a: any) => a.type === "power_off").id);
}, 60_000);

test("decommission: no droplet and no A record left at the provider, inventory rows destroyed; a second one finds nothing to do", async () => {
  const d = await provisioned();
  expect((await simState()).domain_records.filter((r) => `${r.name}.${r.domain}` === d.fqdn)).toHaveLength(1);
  const done = await settled((await start(d, "decommission")).id);
  expect(done).toMatchObject({ kind: "decommission", status: "succeeded" });
  expect(done.steps.map((s: any) => s.name)).toEqual(["set_runtime_destroying", "destroy_droplets", "remove_dns", "mark_inventory_destroyed", "cancel_subscription", "set_runtime_destroyed"]);
  const state = await simState();
  expect(state.droplets.filter((x) => x.tags.includes(`deployment-${d.id}`) || x.id === d.dropletId)).toEqual([]);
  expect(state.domain_records.filter((r) => `${r.name}.${r.domain}` === d.fqdn)).toEqual([]);
  const rows = await inventoryOf(d.id);
  expect(rows.length).toBeGreaterThan(0);
  for (const r of rows) expect(r.status).toBe("destroyed");
  const rt = await runtimeOf(d);
  if (rt !== undefined) expect(rt).toBe("destroyed");

  const again = await settled((await start(d, "decommission")).id);
  expect(again.status).toBe("succeeded");
  expect(stepsOf(again).remove_dns.output).toEqual({ fqdn: null, removed: false });
}, 60_000);

test("resize: powered off, resized, powered on; inventory's size and price follow", async () => {
  const d = await provisioned();
  const done = await settled((await start(d, "resize", randomUUID(), { size: "s-2vcpu-2gb" })).id);
  expect(done).toMatchObject({ kind: "resize", status: "succeeded" });
  const droplet = (await simState()).droplets.find((x) => x.id === d.dropletId);
  expect(droplet).toMatchObject({ status: "active", size_slug: "s-2vcpu-2gb" });
  expect((await inventoryOf(d.id)).map((r: any) => [r.size_slug, r.monthly_cost_cents, r.status])).toEqual([["s-2vcpu-2gb", 1800, "active"]]);
}, 60_000);

test("resize: a failure after the resize puts the droplet back to its size, powered on", async () => {
  const d = await provisioned();
  faults.fail("v1.inventory.updateResource", () => new Errors.MoleculerError("inventory refused", 409, "REFUSED"), 1);
  const done = await settled((await start(d, "resize", randomUUID(), { size: "s-2vcpu-2gb" })).id);
  expect(done.status).toBe("compensated");
  expect(stepsOf(done).update_inventory_size.status).toBe("failed");
  expect(stepsOf(done).resize_droplets.status).toBe("compensated");
  expect(stepsOf(done).snapshot_droplets).toMatchObject({ status: "compensated", compensation_attempts: 1 });
  const droplet = (await simState()).droplets.find((x) => x.id === d.dropletId);
  expect(droplet).toMatchObject({ status: "active", size_slug: "s-1vcpu-1gb" });
  expect((await inventoryOf(d.id)).map((r: any) => [r.size_slug, r.monthly_cost_cents, r.status])).toEqual([["s-1vcpu-1gb", 600, "active"]]);
}, 60_000);
});
