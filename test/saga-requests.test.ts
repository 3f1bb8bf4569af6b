import type { ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { actionFaults, apiUrl, asAdmin, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * The deployments side of starting a saga (services/deployments/README.md): a move and its saga-start request
 * commit together, the request is sent after the commit and re-sent by the sweep until the real engine answers,
 * under the same id (start is idempotent by id). Faults are injected around the real v1.provisioning.start
 * (unavailable; runs but its answer is lost; refuses as invalid), as the simulator's control API does for the
 * provider. Crashes and every move end to end: test/lifecycle-sagas.test.ts.
 */

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let pg: Client;
const faults = actionFaults();
const START = "v1.provisioning.start";
const unavailable = () => new Errors.MoleculerRetryableError("engine unavailable", 503, "SERVICE_UNAVAILABLE");

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 0, actionMs: 20 } as any);
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    middlewares: [faults.middleware],
    settings: {
      deployments: { sagaRequestSweepMs: 200, sagaStartTimeoutMs: 1000 },
      inventory: provider,
      dns: { ...provider, dnsDomain: "apps.arcadia.test" },
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 5000, actionTimeoutMs: 5000, sweepMs: 300, leaseMs: 3000 },
    },
  });
  base = apiUrl(broker);
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
  await sim.close();
});
afterEach(() => faults.clear());

const row = async (id: string) => (await pg.query("select started_at, attempts, last_error from deployment_saga_requests where id = $1", [id])).rows[0];
const startsOf = (id: string) => faults.calls.filter((c) => c.action === START && c.params.id === id);
const sagasOf = async (deploymentId: string) => (await pg.query("select id, kind, status from sagas where deployment_id = $1 order by seq", [deploymentId])).rows;
const settled = (api: ReturnType<typeof client>, id: string, state: string) =>
  waitFor(async () => {
    const got = (await api.get(`/deployments/${id}`)).body;
    return got.deployment.state === state && got;
  }, { what: `deployment ${id} to be ${state}`, timeoutMs: 30_000 });

test("while the engine is unavailable a provisioning create answers 202 and stays provisioning; then the sweep starts its saga once", async () => {
  const api = client(base, await token({ tenant: uniq("sw") }));
  faults.fail(START, unavailable);
  const res = await api.post("/deployments", { slug: uniq("d"), provision: true });
  expect(res.status).toBe(202);
  expect(res.body.saga).toMatchObject({ kind: "provision", status: "running" });
  const id = res.body.saga.id;
  await waitFor(async () => (await row(id)).attempts >= 2, { what: "the sweep to try again" });
  expect((await row(id)).started_at).toBeNull();
  expect(await sagasOf(res.body.deployment.id)).toEqual([]);
  expect((await api.get(`/deployments/${res.body.deployment.id}`)).body.deployment.state).toBe("provisioning");
  faults.clear();
  await waitFor(async () => (await row(id)).started_at, { what: "the request to be acknowledged" });
  const done = await settled(api, res.body.deployment.id, "active");
  expect(done.saga).toMatchObject({ id, kind: "provision", status: "succeeded" });
  const n = startsOf(id).length;
  // Acknowledged requests are not sent again.
  await new Promise((r) => setTimeout(r, 700));
  expect(startsOf(id).length).toBe(n);
});

test("a start whose answer was lost is re-sent under the same id; the engine has one saga, and no request-side timeout undid the move", async () => {
  const api = client(base, await token({ tenant: uniq("sw") }));
  faults.lose(START, () => new Errors.RequestTimeoutError({ action: START, nodeID: "x" } as any), 1);
  const res = await api.post("/deployments", { slug: uniq("d"), provision: true });
  expect(res.status).toBe(202);
  const id = res.body.saga.id;
  expect(res.body.saga.steps).toEqual([]); // the requested saga: start did not answer
  expect((await row(id)).last_error).toEqual(expect.any(String));
  await waitFor(async () => (await row(id)).started_at, { what: "the re-sent start to be acknowledged" });
  expect(startsOf(id).length).toBeGreaterThanOrEqual(2);
  await settled(api, res.body.deployment.id, "active");
  expect(await sagasOf(res.body.deployment.id)).toEqual([{ id, kind: "provision", status: "succeeded" }]);
});

test("a newer request of a deployment is never sent before an older one was acknowledged", async () => {
  const api = client(base, await token({ tenant: uniq("sw") }));
  const d = (await api.post("/deployments", { slug: uniq("d") })).body.deployment;
  await broker.call("v1.deployments.setRuntime", { id: d.id, status: "running", droplet_id: 1 }, asAdmin);
  faults.fail(START, unavailable);
  const pause = (await api.post(`/deployments/${d.id}/transition`, { to_state: "paused" })).body.saga;
  const resume = (await api.post(`/deployments/${d.id}/transition`, { to_state: "active" })).body.saga;
  expect(resume.steps).toEqual([]); // its start waits behind the unacknowledged pause
  await waitFor(async () => startsOf(pause.id).length >= 3, { what: "the pause to be retried" });
  expect(startsOf(resume.id)).toEqual([]);
  expect((await row(resume.id)).started_at).toBeNull();
  faults.clear();
  await waitFor(async () => (await row(resume.id)).started_at, { what: "both to be acknowledged" });
  expect((await sagasOf(d.id)).map((s: any) => [s.id, s.kind])).toEqual([[pause.id, "power_off"], [resume.id, "power_on"]]);
  expect(startsOf(resume.id)[0].at).toBeGreaterThanOrEqual(startsOf(pause.id).at(-1)!.at);
});

test("a provision request the engine refuses as invalid (422) is not retried and its deployment ends cancelled", async () => {
  const api = client(base, await token({ tenant: uniq("sw"), sub: "ivy" }));
  faults.fail(START, () => new Errors.ValidationError("bad input", "VALIDATION_ERROR", []));
  const res = await api.post("/deployments", { slug: uniq("d"), provision: true });
  expect(res.status).toBe(202);
  const id = res.body.saga.id;
  const d = await settled(api, res.body.deployment.id, "cancelled");
  expect(d.events.at(-1)).toMatchObject({ from_state: "provisioning", to_state: "cancelled", reason: "provisioning_refused", actor: "ivy" });
  expect((await row(id)).last_error).toMatch(/^refused/);
  const n = startsOf(id).length;
  await new Promise((r) => setTimeout(r, 700));
  expect(startsOf(id).length).toBe(n);
});
