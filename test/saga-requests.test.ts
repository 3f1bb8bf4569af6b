import type { ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { Client } from "pg";
import { apiUrl, asAdmin, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * The deployments side of the saga-start contract (COMMON.md: v1.provisioning.start({id, kind, ...}) idempotent
 * by id), with a stand-in for the engine's start action while the engine with saga kinds (h/engine) is not
 * merged. The stand-in keeps only what the contract promises (one saga per id, a repeat returns it) and can be
 * absent, refuse, or do the work and lose the reply. The real engine end to end: test/lifecycle-sagas.test.ts.
 */

let broker: ServiceBroker;
let base: string;
let pg: Client;
const sagas = new Map<string, { id: string; kind: string; deployment_id: string; input: any }>();
const calls: { id: string; kind: string; at: number }[] = [];
let mode: "ok" | "refuse" | "lose" = "ok";
const refuseIds = new Set<string>();
let refuse422 = false;

const standInEngine = {
  name: "provisioning",
  version: 1,
  actions: {
    start: {
      visibility: "public",
      handler(ctx: any) {
        const p = ctx.params;
        calls.push({ id: p.id, kind: p.kind, at: Date.now() });
        if (refuse422) throw new Errors.ValidationError("bad input", "VALIDATION_ERROR", []);
        if (mode === "refuse" || refuseIds.has(p.id)) throw new Errors.MoleculerRetryableError("engine unavailable", 503, "SERVICE_UNAVAILABLE");
        if (!sagas.has(p.id)) sagas.set(p.id, { id: p.id, kind: p.kind, deployment_id: p.deployment_id, input: p.input });
        if (mode === "lose") throw new Errors.RequestTimeoutError({ action: "v1.provisioning.start", nodeID: "x" } as any);
        return { saga: { ...sagas.get(p.id), status: "running", steps: [] } };
      },
    },
    forDeployment: { visibility: "public", handler: () => null },
  },
};

beforeAll(async () => {
  broker = await startNode(["api", "deployments", "subscriptions"], { settings: { deployments: { sagaRequestSweepMs: 200, sagaStartTimeoutMs: 1000 } } });
  base = apiUrl(broker);
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
});
afterEach(() => {
  mode = "ok";
  refuse422 = false;
  refuseIds.clear();
});

const row = async (id: string) => (await pg.query("select started_at, attempts, last_error from deployment_saga_requests where id = $1", [id])).rows[0];
const callsOf = (id: string) => calls.filter((c) => c.id === id);

test("with no engine a provisioning create answers 202 and stays provisioning; once it is up the sweep starts the saga once", async () => {
  const api = client(base, await token({ tenant: uniq("sw") }));
  const res = await api.post("/deployments", { slug: uniq("d"), provision: true });
  expect(res.status).toBe(202);
  expect(res.body.saga).toMatchObject({ kind: "provision", status: "running" });
  const id = res.body.saga.id;
  await waitFor(async () => (await row(id)).attempts >= 2, { what: "the sweep to try again" });
  expect((await row(id)).started_at).toBeNull();
  expect((await api.get(`/deployments/${res.body.deployment.id}`)).body.deployment.state).toBe("provisioning");
  await broker.createService(standInEngine as any);
  await broker.waitForServices(["v1.provisioning"]);
  await waitFor(async () => (await row(id)).started_at, { what: "the request to be acknowledged" });
  expect(sagas.get(id)).toMatchObject({ kind: "provision", deployment_id: res.body.deployment.id, input: expect.objectContaining({ target_state: "active" }) });
  const n = callsOf(id).length;
  // Acknowledged requests are not sent again.
  await new Promise((r) => setTimeout(r, 700));
  expect(callsOf(id).length).toBe(n);
});

test("a start whose reply was lost is re-sent under the same id and acknowledged; the engine has one saga", async () => {
  const api = client(base, await token({ tenant: uniq("sw") }));
  mode = "lose";
  const res = await api.post("/deployments", { slug: uniq("d"), provision: true });
  expect(res.status).toBe(202);
  const id = res.body.saga.id;
  expect(res.body.saga.steps).toEqual([]); // the requested saga: start did not answer
  expect((await row(id)).last_error).toEqual(expect.any(String));
  mode = "ok";
  await waitFor(async () => (await row(id)).started_at, { what: "the re-sent start to be acknowledged" });
  expect(callsOf(id).length).toBeGreaterThanOrEqual(2);
  expect([...sagas.values()].filter((s) => s.deployment_id === res.body.deployment.id)).toHaveLength(1);
  // No request-side timeout undid the move.
  expect((await api.get(`/deployments/${res.body.deployment.id}`)).body.deployment.state).toBe("provisioning");
});

test("a newer request of a deployment is never sent before an older one was acknowledged", async () => {
  const api = client(base, await token({ tenant: uniq("sw") }));
  const d = (await api.post("/deployments", { slug: uniq("d") })).body.deployment;
  await broker.call("v1.deployments.setRuntime", { id: d.id, status: "running", droplet_id: 1 }, asAdmin);
  mode = "refuse";
  const pause = (await api.post(`/deployments/${d.id}/transition`, { to_state: "paused" })).body.saga;
  const pauseId = pause.id;
  refuseIds.add(pauseId);
  mode = "ok";
  const resume = (await api.post(`/deployments/${d.id}/transition`, { to_state: "active" })).body.saga;
  // The resume's own start waits behind the unacknowledged pause.
  expect(resume.steps).toEqual([]);
  await waitFor(async () => callsOf(pauseId).length >= 3, { what: "the pause to be retried" });
  expect(callsOf(resume.id)).toEqual([]);
  expect((await row(resume.id)).started_at).toBeNull();
  refuseIds.clear();
  await waitFor(async () => (await row(resume.id)).started_at, { what: "both to be acknowledged" });
  const firstOk = (id: string) => sagas.has(id) && calls.filter((c) => c.id === id).at(-1)!.at;
  expect(sagas.get(pauseId)!.kind).toBe("power_off");
  expect(sagas.get(resume.id)!.kind).toBe("power_on");
  expect(callsOf(resume.id)[0].at).toBeGreaterThanOrEqual(firstOk(pauseId) as number);
});

test("a provision request the engine refuses as invalid (422) is not retried and its deployment ends cancelled", async () => {
  const api = client(base, await token({ tenant: uniq("sw"), sub: "ivy" }));
  refuse422 = true;
  const res = await api.post("/deployments", { slug: uniq("d"), provision: true });
  expect(res.status).toBe(202);
  const id = res.body.saga.id;
  const d = await waitFor(async () => {
    const got = (await api.get(`/deployments/${res.body.deployment.id}`)).body;
    return got.deployment.state === "cancelled" && got;
  }, { what: "the refused provisioning to be cancelled" });
  expect(d.events.at(-1)).toMatchObject({ from_state: "provisioning", to_state: "cancelled", reason: "provisioning_refused", actor: "ivy" });
  expect((await row(id)).last_error).toMatch(/^refused/);
  const n = callsOf(id).length;
  await new Promise((r) => setTimeout(r, 700));
  expect(callsOf(id).length).toBe(n);
});
