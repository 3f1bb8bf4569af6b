import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { apiUrl, asAdmin, asTenant, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * SPEC §2 moves as the deployments and subscriptions services see them, without a saga engine in the cluster:
 * who may move, runtime, the saga requests a move writes (and answers with while the engine does not answer),
 * DELETE / provision / PATCH, and the subscription's status following the state. The sagas themselves:
 * test/lifecycle-sagas.test.ts.
 */

let broker: ServiceBroker;
let base: string;
let pg: Client;
let operator: ReturnType<typeof client>;
const runtimeEvents: any[] = [];

beforeAll(async () => {
  // The sweep is off here: a request stays unstarted so the test can read it (the sweep has its own test).
  broker = await startNode(["api", "deployments", "subscriptions"], { settings: { deployments: { sagaRequestSweepMs: 0, sagaStartTimeoutMs: 1000 } } });
  broker.createService({ name: "runtime-watcher", events: { "deployments.runtime_changed"(ctx: any) { runtimeEvents.push(ctx.params); } } });
  base = apiUrl(broker);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
});

async function tenantApi(sub = uniq("user")) {
  const tenant = uniq("lc");
  return { tenant, api: client(base, await token({ tenant, sub })), op: client(base, await token({ tenant, roles: ["platform-admin"], sub: "op" })) };
}
async function create(api: ReturnType<typeof client>, body: object = {}) {
  const res = await api.post("/deployments", { slug: uniq("d"), ...body });
  expect(res.status).toBe(201);
  return res.body.deployment;
}
const requests = async (deploymentId: string) =>
  (await pg.query("select id, kind, input, started_at from deployment_saga_requests where deployment_id = $1 order by seq", [deploymentId])).rows;
const events = async (api: ReturnType<typeof client>, id: string) => (await api.get(`/deployments/${id}`)).body.events;
/** What a provision saga's last steps report, set through the real internal action. */
const runDroplet = (id: string, status = "running") => broker.call("v1.deployments.setRuntime", { id, status, droplet_id: 4242, ipv4: "203.0.113.7", hostname: "x.example" }, asAdmin);

describe("runtime and trial_ends_at on the deployment", () => {
  test("a fresh deployment has no live droplet; a trial one ends TRIAL_DAYS (14) from now", async () => {
    const { api } = await tenantApi();
    const d = await create(api);
    expect(d.runtime).toEqual({ status: "none", droplet_id: null, ipv4: null, hostname: null });
    expect(d.trial_ends_at).toBeNull();
    const t = await create(api, { state: "trial" });
    const days = (Date.parse(t.trial_ends_at) - Date.parse(t.inserted_at)) / 86_400_000;
    expect(days).toBeGreaterThan(13.99);
    expect(days).toBeLessThan(14.01);
    // The subscription of a trial carries the deployment's trial end.
    expect((await api.post(`/deployments/${t.id}/subscribe`, { plan_code: "studio" })).body.subscription.trial_ends_at).toBe(t.trial_ends_at);
  });

  test("setRuntime updates the runtime, emits runtime_changed once per change, and is internal", async () => {
    const { api, tenant } = await tenantApi();
    const d = await create(api);
    const before = runtimeEvents.length;
    await runDroplet(d.id);
    await runDroplet(d.id); // the same again: no change, no event
    const got = (await api.get(`/deployments/${d.id}`)).body.deployment;
    expect(got.runtime).toEqual({ status: "running", droplet_id: 4242, ipv4: "203.0.113.7", hostname: "x.example" });
    await waitFor(async () => runtimeEvents.length > before, { what: "runtime_changed" });
    const mine = runtimeEvents.filter((e) => e.deployment_id === d.id);
    expect(mine).toEqual([expect.objectContaining({ deployment_id: d.id, tenant_id: tenant, runtime: got.runtime, occurred_at: expect.any(String) })]);
    await expect(broker.call("v1.deployments.setRuntime", { id: d.id, status: "stopped" }, asTenant(tenant))).rejects.toMatchObject({ code: 403 });
    await expect(broker.call("v1.deployments.setRuntime", { id: d.id, status: "sleeping" }, asAdmin)).rejects.toMatchObject({ code: 422 });
  });
});

describe("who may make a move (SPEC §2)", () => {
  test("tenants get 403 BILLING_CONTROLLED for every billing-controlled move and nothing changes; operators may", async () => {
    const { api, op } = await tenantApi();
    const d = await create(api);
    const refused = async (from: string, to: string) => {
      const n = (await events(api, d.id)).length;
      const res = await api.post(`/deployments/${d.id}/transition`, { to_state: to });
      expect(res.status).toBe(403);
      expect(res.body).toMatchObject({ code: 403, type: "BILLING_CONTROLLED", data: { from, to } });
      const after = (await api.get(`/deployments/${d.id}`)).body;
      expect(after.deployment.state).toBe(from);
      expect(after.events).toHaveLength(n);
    };
    await refused("active", "past_due");
    expect((await op.post(`/deployments/${d.id}/transition`, { to_state: "past_due" })).status).toBe(200);
    await refused("past_due", "suspended");
    await refused("past_due", "active");
    expect((await op.post(`/deployments/${d.id}/transition`, { to_state: "suspended" })).status).toBe(200);
    await refused("suspended", "active");
    const back = await op.post(`/deployments/${d.id}/transition`, { to_state: "active", reason: "payment_received" });
    expect(back.status).toBe(200);
    expect(back.body).toEqual({ deployment: expect.objectContaining({ state: "active" }), saga: null });
    // The tenant's own moves stay theirs: cancel from past_due.
    expect((await op.post(`/deployments/${d.id}/transition`, { to_state: "past_due" })).status).toBe(200);
    expect((await api.post(`/deployments/${d.id}/transition`, { to_state: "cancelled" })).status).toBe(200);
  });

  test("billing_action_suspended: 403 for a tenant at create and in PATCH; operators set it", async () => {
    const { api, op, tenant } = await tenantApi();
    const slug = uniq("d");
    const res = await api.post("/deployments", { slug, billing_action_suspended: false });
    expect(res.status).toBe(403);
    expect((await pg.query("select count(*)::int as n from deployments where tenant_id = $1", [tenant])).rows[0].n).toBe(0);
    const byOp = await op.post("/deployments", { slug, billing_action_suspended: true });
    expect(byOp.status).toBe(201);
    expect(byOp.body.deployment.billing_action_suspended).toBe(true);
    const d = byOp.body.deployment;
    const patch = await api.patch(`/deployments/${d.id}`, { billing_action_suspended: false });
    expect(patch.status).toBe(403);
    expect((await api.get(`/deployments/${d.id}`)).body.deployment.billing_action_suspended).toBe(true);
    const cleared = await op.patch(`/deployments/${d.id}`, { billing_action_suspended: false });
    expect(cleared.status).toBe(200);
    expect(cleared.body.deployment.billing_action_suspended).toBe(false);
  });

  test("trial → active needs a subscription (409 SUBSCRIPTION_REQUIRED), operators too", async () => {
    const { api, op } = await tenantApi();
    const d = await create(api, { state: "trial" });
    for (const c of [api, op]) {
      const res = await c.post(`/deployments/${d.id}/transition`, { to_state: "active" });
      expect(res.status).toBe(409);
      expect(res.body.type).toBe("SUBSCRIPTION_REQUIRED");
    }
    expect((await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" })).status).toBe(201);
    expect((await api.post(`/deployments/${d.id}/transition`, { to_state: "active" })).status).toBe(200);
  });

  test("without a billing service in the cluster, a tenant may resume and reactivate (no overdue invoice can exist)", async () => {
    const { api } = await tenantApi();
    const d = await create(api);
    for (const to of ["paused", "active", "cancelled", "active"]) expect((await api.post(`/deployments/${d.id}/transition`, { to_state: to })).status).toBe(200);
  });
});

describe("PATCH /deployments/:id", () => {
  test("display_name; another tenant's id is 404; nothing to change is 422", async () => {
    const { api } = await tenantApi();
    const other = await tenantApi();
    const d = await create(api);
    const res = await api.patch(`/deployments/${d.id}`, { display_name: "Shop" });
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ deployment: expect.objectContaining({ id: d.id, display_name: "Shop" }) });
    expect((await other.api.patch(`/deployments/${d.id}`, { display_name: "Mine" })).status).toBe(404);
    expect((await other.api.patch(`/deployments/${d.id}`, { billing_action_suspended: true })).status).toBe(404);
    expect((await api.patch(`/deployments/${d.id}`, {})).status).toBe(422);
    expect((await api.patch(`/deployments/${d.id}`, { display_name: "" })).status).toBe(422);
    expect((await api.get(`/deployments/${d.id}`)).body.deployment.display_name).toBe("Shop");
  });
});

describe("moves with a live droplet write their saga request with the move", () => {
  test("pause and resume: runtime shows stopping/starting at once, requests power_off then power_on in order", async () => {
    const { api } = await tenantApi();
    const d = await create(api);
    await runDroplet(d.id);
    const pause = await api.post(`/deployments/${d.id}/transition`, { to_state: "paused" });
    expect(pause.status).toBe(200);
    expect(pause.body.deployment.runtime.status).toBe("stopping");
    // No engine answers here: the answer is the saga as requested, under the id it will run with.
    expect(pause.body.saga).toMatchObject({ kind: "power_off", deployment_id: d.id, status: "running", steps: [] });
    const resume = await api.post(`/deployments/${d.id}/transition`, { to_state: "active" });
    expect(resume.body.deployment.runtime.status).toBe("starting");
    expect(resume.body.saga).toMatchObject({ kind: "power_on" });
    const rows = await requests(d.id);
    expect(rows.map((r) => [r.id, r.kind, r.started_at])).toEqual([[pause.body.saga.id, "power_off", null], [resume.body.saga.id, "power_on", null]]);
    expect(rows[0].input).toMatchObject({ from_state: "active", to_state: "paused", droplet_id: 4242 });
    // GET shows the newest saga: here the requested power_on, since no engine has it yet.
    expect((await api.get(`/deployments/${d.id}`)).body.saga).toMatchObject({ id: resume.body.saga.id, kind: "power_on" });
  });

  test("a move without a live droplet has no cloud effect: saga null, no request", async () => {
    const { api } = await tenantApi();
    const d = await create(api);
    const res = await api.post(`/deployments/${d.id}/transition`, { to_state: "paused" });
    expect(res.body).toEqual({ deployment: expect.objectContaining({ state: "paused", runtime: expect.objectContaining({ status: "none" }) }), saga: null });
    expect(await requests(d.id)).toEqual([]);
  });
});

describe("DELETE /deployments/:id", () => {
  test("without cloud resources: 200 saga null, cancel + archive (two events), subscription cancelled; twice is 200 and nothing", async () => {
    const { api } = await tenantApi("carol");
    const d = await create(api);
    expect((await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" })).status).toBe(201);
    const res = await fetch(`${base}/deployments/${d.id}`, { method: "DELETE", headers: { authorization: `Bearer ${await token({ tenant: d.tenant_id, sub: "carol" })}` } });
    expect(res.status).toBe(200);
    const body: any = await res.json();
    expect(body).toEqual({ deployment: expect.objectContaining({ state: "archived" }), saga: null });
    const evs = await events(api, d.id);
    expect(evs.slice(1)).toEqual([
      expect.objectContaining({ from_state: "active", to_state: "cancelled", reason: "deleted", actor: "carol" }),
      expect.objectContaining({ from_state: "cancelled", to_state: "archived", reason: "deleted", actor: "carol" }),
    ]);
    await waitFor(async () => (await api.get(`/deployments/${d.id}`)).body.subscription?.status === "cancelled", { what: "subscription cancelled" });
    const again = await fetch(`${base}/deployments/${d.id}`, { method: "DELETE", headers: { authorization: `Bearer ${await token({ tenant: d.tenant_id })}` } });
    expect(again.status).toBe(200);
    expect(((await again.json()) as any).saga).toBeNull();
    expect(await events(api, d.id)).toHaveLength(3);
  });

  test("a cancelled one gets only the archive event; with a live droplet 202 with the decommission saga", async () => {
    const { api, tenant } = await tenantApi();
    const tok = await token({ tenant });
    const d = await create(api);
    await runDroplet(d.id, "stopped");
    expect((await api.post(`/deployments/${d.id}/transition`, { to_state: "cancelled" })).body.saga).toBeNull(); // already off
    const res = await fetch(`${base}/deployments/${d.id}`, { method: "DELETE", headers: { authorization: `Bearer ${tok}` } });
    expect(res.status).toBe(202);
    const body: any = await res.json();
    expect(body.deployment).toMatchObject({ state: "archived", runtime: { status: "destroying" } });
    expect(body.saga).toMatchObject({ kind: "decommission", deployment_id: d.id });
    expect((await events(api, d.id)).map((e: any) => e.to_state)).toEqual(["active", "cancelled", "archived"]);
    expect((await requests(d.id)).map((r) => r.kind)).toEqual(["decommission"]);
  });

  test("provisioning is 409 PROVISIONING_IN_PROGRESS; another tenant's is 404", async () => {
    const { api, tenant } = await tenantApi();
    const d = await create(api);
    await pg.query("update deployments set state = 'provisioning' where id = $1", [d.id]);
    const res = await fetch(`${base}/deployments/${d.id}`, { method: "DELETE", headers: { authorization: `Bearer ${await token({ tenant })}` } });
    expect(res.status).toBe(409);
    expect(((await res.json()) as any).type).toBe("PROVISIONING_IN_PROGRESS");
    const other = await fetch(`${base}/deployments/${d.id}`, { method: "DELETE", headers: { authorization: `Bearer ${await token({ tenant: uniq("other") })}` } });
    expect(other.status).toBe(404);
  });
});

describe("POST /deployments/:id/provision", () => {
  test("active → provisioning, 202 with the provision saga it requested (target active); trial keeps trial", async () => {
    const { api } = await tenantApi();
    for (const [state, target] of [["active", "active"], ["trial", "trial"]] as const) {
      const d = await create(api, { state });
      const res = await api.post(`/deployments/${d.id}/provision`);
      expect(res.status).toBe(202);
      expect(res.body.deployment.state).toBe("provisioning");
      expect(res.body.saga).toMatchObject({ kind: "provision", deployment_id: d.id });
      const [r] = await requests(d.id);
      expect(r).toMatchObject({ id: res.body.saga.id, kind: "provision", input: expect.objectContaining({ slug: d.slug, region: d.region, target_state: target }) });
      expect((await events(api, d.id)).at(-1)).toMatchObject({ from_state: state, to_state: "provisioning", reason: "provision_requested" });
    }
  });

  test("a live droplet is 409 ALREADY_PROVISIONED in any state; another state is 422 INVALID_TRANSITION; nothing changes", async () => {
    const { api, op } = await tenantApi();
    const live = await create(api);
    await runDroplet(live.id);
    const res = await api.post(`/deployments/${live.id}/provision`);
    expect(res.status).toBe(409);
    expect(res.body.type).toBe("ALREADY_PROVISIONED");
    const paused = await create(api);
    await api.post(`/deployments/${paused.id}/transition`, { to_state: "paused" });
    const bad = await api.post(`/deployments/${paused.id}/provision`);
    expect(bad.status).toBe(422);
    expect(bad.body).toMatchObject({ type: "INVALID_TRANSITION", data: { from: "paused", to: "provisioning" } });
    const pastDue = await create(api);
    await op.post(`/deployments/${pastDue.id}/transition`, { to_state: "past_due" });
    expect((await api.post(`/deployments/${pastDue.id}/provision`)).status).toBe(422);
    expect(await requests(paused.id)).toEqual([]);
    expect((await api.get(`/deployments/${paused.id}`)).body.deployment.state).toBe("paused");
  });

  test("a cancelled deployment (e.g. a rolled-back provisioning) can be provisioned again", async () => {
    const { api } = await tenantApi();
    const d = await create(api);
    await api.post(`/deployments/${d.id}/transition`, { to_state: "cancelled" });
    const res = await api.post(`/deployments/${d.id}/provision`);
    expect(res.status).toBe(202);
    expect((await requests(d.id))[0].input.target_state).toBe("active");
  });

  test("a provisioning create answers 202 with its requested saga and stays provisioning when no engine answers", async () => {
    const { api } = await tenantApi();
    const res = await api.post("/deployments", { slug: uniq("d"), provision: true, state: "trial" });
    expect(res.status).toBe(202);
    expect(res.body.deployment.state).toBe("provisioning");
    expect(res.body.saga).toMatchObject({ kind: "provision", status: "running" });
    const [r] = await requests(res.body.deployment.id);
    expect(r).toMatchObject({ id: res.body.saga.id, started_at: null, input: expect.objectContaining({ target_state: "trial" }) });
    // Unlike before, a start that failed does not cancel it: the request owns it now.
    expect((await api.get(`/deployments/${res.body.deployment.id}`)).body.deployment.state).toBe("provisioning");
  });
});

describe("the subscription's status follows the state (SPEC §2 table, §3)", () => {
  test("active → paused → active → past_due → suspended → cancelled, then not billable", async () => {
    const { api, op } = await tenantApi();
    const d = await create(api);
    expect((await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" })).body.subscription.status).toBe("active");
    const statusIs = (s: string) => waitFor(async () => (await api.get(`/deployments/${d.id}`)).body.subscription.status === s, { what: `subscription ${s}` });
    for (const [to, status] of [["paused", "paused"], ["active", "active"], ["past_due", "active"], ["suspended", "active"], ["cancelled", "cancelled"]]) {
      expect((await op.post(`/deployments/${d.id}/transition`, { to_state: to })).status).toBe(200);
      await statusIs(status);
    }
    const sub = await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" });
    expect(sub.status).toBe(409);
    expect(sub.body).toMatchObject({ type: "DEPLOYMENT_NOT_BILLABLE", data: { state: "cancelled" } });
    expect((await api.post(`/deployments/${d.id}/subscription/addons`, { code: "storage_50gb" })).body.type).toBe("DEPLOYMENT_NOT_BILLABLE");
    expect((await api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "studio" })).body.type).toBe("DEPLOYMENT_NOT_BILLABLE");
    // An old event re-published after a newer one changes nothing (kept: the last applied event id).
    const evs = await events(api, d.id);
    await broker.emit("deployments.transitioned", { deployment: { id: d.id }, event: { ...evs[1], to_state: "active" } });
    expect((await api.get(`/deployments/${d.id}`)).body.subscription.status).toBe("cancelled");
    // while a newer one applies
    await broker.emit("deployments.transitioned", { deployment: { id: d.id }, event: { ...evs.at(-1), id: evs.at(-1).id + 1000, to_state: "paused" } });
    // (a local emit resolves once the local handlers have run)
    expect((await api.get(`/deployments/${d.id}`)).body.subscription.status).toBe("paused");
  });

  test("subscribing a paused deployment starts paused; an archived one is not billable", async () => {
    const { api } = await tenantApi();
    const d = await create(api);
    await api.post(`/deployments/${d.id}/transition`, { to_state: "paused" });
    expect((await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" })).body.subscription.status).toBe("paused");
    const a = await create(api);
    await api.post(`/deployments/${a.id}/transition`, { to_state: "cancelled" });
    await api.post(`/deployments/${a.id}/transition`, { to_state: "archived" });
    expect((await api.post(`/deployments/${a.id}/subscribe`, { plan_code: "studio" })).body.type).toBe("DEPLOYMENT_NOT_BILLABLE");
  });

  test("setStatus is internal and idempotent", async () => {
    const { api, tenant } = await tenantApi();
    const d = await create(api);
    await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" });
    for (let i = 0; i < 2; i++) {
      const res: any = await broker.call("v1.subscriptions.setStatus", { deployment_id: d.id, status: "paused" }, asAdmin);
      expect(res.subscription.status).toBe("paused");
    }
    await expect(broker.call("v1.subscriptions.setStatus", { deployment_id: d.id, status: "active" }, asTenant(tenant))).rejects.toMatchObject({ code: 403 });
  });
});
