import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { step, type SagaKind } from "../services/provisioning/engine";
import { allPages, apiUrl, asAdmin, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * The generic engine (SPEC §7 "for every kind"), driven through kinds made for the test — a new kind is a new list,
 * registered with the service's `kinds` setting, no engine edit. Their steps call a real action
 * (v1.deployments.find); a middleware holds or fails those calls per saga (by the saga id the engine puts on meta).
 */

const FINAL = ["succeeded", "failed", "compensated", "compensation_failed"];

/** Holds (until released) or fails (count times) the saga's calls of v1.deployments.find. */
const holds = new Map<string, { entered: boolean; release: () => void; opened: Promise<void> }>();
const failures = new Map<string, number>();
function hold(sagaId: string) {
  let release!: () => void;
  const opened = new Promise<void>((r) => (release = r));
  const h = { entered: false, release, opened };
  holds.set(sagaId, h);
  return h;
}
const control = {
  name: "SagaTestControl",
  localAction(next: (ctx: any) => Promise<unknown>, action: { name: string }) {
    if (action.name !== "v1.deployments.find") return next;
    return async (ctx: any) => {
      const id = ctx.meta?.saga_id;
      const h = id && holds.get(id);
      if (h && !h.entered) {
        h.entered = true;
        await h.opened;
      }
      const left = id ? (failures.get(id) ?? 0) : 0;
      if (left > 0) {
        failures.set(id, left - 1);
        throw new Errors.MoleculerError("probe refused", 409, "PROBE_REFUSED");
      }
      return next(ctx);
    };
  },
};

const probe = (name: string) => step(name, "v1.deployments.find", async ({ call, saga }) => ({ state: (await call("v1.deployments.find", { id: saga.deployment_id })).deployment.state }));
/** Forward only: two idempotent checks. */
const PROBE: SagaKind = { kind: "probe", onFailure: "forward", steps: [probe("first"), probe("second")] };

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let operator: ReturnType<typeof client>;
const ENGINE = { pollMs: 25, backoffMs: 10, stepMaxAttempts: 3, sweepMs: 200, leaseMs: 1500, kinds: [PROBE] };

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 50 });
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    middlewares: [control],
    settings: { inventory: provider, dns: provider, provisioning: ENGINE },
  });
  base = apiUrl(broker);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
});
afterAll(async () => {
  // A hold still closed belongs to a stopped node (the "crash" test): it stays closed, as that node's call would.
  await broker.stop();
  await sim.close();
});

async function deployment(tenant = uniq("sg")) {
  const api = client(base, await token({ tenant, sub: "pat" }));
  const res = await api.post("/deployments", { slug: uniq("app") });
  expect(res.status).toBe(201);
  return { api, tenant, id: res.body.deployment.id as string };
}
const start = (b: ServiceBroker, d: { id: string; tenant: string }, id = randomUUID(), kind = "probe") =>
  b.call<any, any>("v1.provisioning.start", { id, kind, deployment_id: d.id, tenant_id: d.tenant, input: { note: "test" }, requested_by: "pat" }, asAdmin);
const sagaOf = async (id: string) => (await operator.get(`/sagas/${id}`)).body.saga;
const settled = (id: string, timeoutMs = 15_000) =>
  waitFor(async () => {
    const s = await sagaOf(id);
    return FINAL.includes(s.status) ? s : null;
  }, { timeoutMs, what: `saga ${id} to finish` });

test("start is idempotent by id: a repeat returns the same saga and starts nothing more", async () => {
  const d = await deployment();
  const id = randomUUID();
  const first = await start(broker, d, id);
  expect(first.saga).toMatchObject({ id, kind: "probe", deployment_id: d.id, tenant_id: d.tenant, status: "running" });
  expect(first.saga.steps.map((s: any) => s.name)).toEqual(["first", "second"]);
  const [again] = await Promise.all([start(broker, d, id), start(broker, d, id)]);
  expect(again.saga.id).toBe(id);
  const done = await settled(id);
  expect(done.status).toBe("succeeded");
  expect(done.steps.map((s: any) => s.attempts)).toEqual([1, 1]);
  const listed = (await operator.get(`/sagas?deployment_id=${d.id}`)).body.items;
  expect(listed.map((s: any) => s.id)).toEqual([id]);
  // Another deployment under the same id is a conflict, not a second saga.
  const other = await deployment(d.tenant);
  await expect(start(broker, other, id)).rejects.toMatchObject({ code: 409, type: "SAGA_ID_CONFLICT" });
  // An unknown kind is invalid input.
  await expect(start(broker, d, randomUUID(), "teleport")).rejects.toMatchObject({ code: 422 });
});

test("sagas of one deployment run one at a time, in creation order; another deployment's are not held", async () => {
  const d = await deployment();
  const a = randomUUID(), b = randomUUID();
  const ha = hold(a);
  await start(broker, d, a);
  await waitFor(async () => ha.entered, { what: "saga A to be inside its first step" });
  const held = (await start(broker, d, b)).saga;
  expect(held.status).toBe("running");
  // The creator answers from the rows it wrote, without reading them back: the same saga a read returns.
  expect(held).toEqual(await sagaOf(b));
  // Unrelated work goes on meanwhile.
  const elsewhere = await deployment(d.tenant);
  const c = randomUUID();
  await start(broker, elsewhere, c);
  expect((await settled(c)).status).toBe("succeeded");
  const waiting = await sagaOf(b);
  expect(waiting.steps.map((s: any) => [s.status, s.attempts, s.started_at])).toEqual([["pending", 0, null], ["pending", 0, null]]);

  ha.release();
  const doneA = await settled(a);
  const doneB = await settled(b);
  expect([doneA.status, doneB.status]).toEqual(["succeeded", "succeeded"]);
  expect(new Date(doneB.steps[0].started_at).getTime()).toBeGreaterThanOrEqual(new Date(doneA.finished_at).getTime());
});

test("a node stopping while the first saga runs: another node resumes it, and the second still waits its turn", async () => {
  const d = await deployment();
  const a = randomUUID(), b = randomUUID();
  // Another provisioning node on the same database (its own in-process cluster, with a deployments service). The
  // suite's broker is the other node: its sweep takes over what this one leaves behind.
  const first = await startNode(["deployments", "provisioning"], { middlewares: [control], settings: { provisioning: ENGINE } });
  const ha = hold(a);
  await start(first, d, a);
  await waitFor(async () => ha.entered, { what: "saga A to run on the first node" });
  await start(first, d, b);
  // Its lease on A stays in the row, as after a crash, and is no longer renewed; the held call never returns to it.
  // The resumed run's call is not held (a hold catches the first call only).
  await first.stop();
  const doneA = await settled(a);
  const doneB = await settled(b);
  expect([doneA.status, doneB.status]).toEqual(["succeeded", "succeeded"]);
  expect(doneA.steps[0].attempts).toBe(2); // resumed: the step in doubt ran again
  expect(new Date(doneB.steps[0].started_at).getTime()).toBeGreaterThanOrEqual(new Date(doneA.finished_at).getTime());
}, 40_000);

test("a forward-only saga whose step keeps failing is retried, then failed; an operator retry finishes it", async () => {
  const d = await deployment();
  const id = randomUUID();
  failures.set(id, 3);
  await start(broker, d, id);
  const failed = await settled(id);
  expect(failed.status).toBe("failed");
  expect(failed.error).toMatch(/^first: probe refused/);
  expect(failed.steps.map((s: any) => [s.status, s.attempts])).toEqual([["failed", 3], ["pending", 0]]);

  expect((await client(base, await token({ tenant: d.tenant })).post(`/sagas/${id}/retry`)).status).toBe(403);
  expect((await operator.get(`/sagas?status=failed&kind=probe`)).body.items.map((s: any) => s.id)).toContain(id);
  const retried = await operator.post(`/sagas/${id}/retry`);
  expect(retried.status).toBe(202);
  expect(retried.body.saga).toMatchObject({ id, status: "running", error: null });
  const done = await settled(id);
  expect(done.status).toBe("succeeded");
  expect(done.steps.map((s: any) => [s.status, s.attempts])).toEqual([["succeeded", 4], ["succeeded", 1]]);
  const again = await operator.post(`/sagas/${id}/retry`);
  expect(again.status).toBe(409);
  expect(again.body).toMatchObject({ type: "SAGA_NOT_RETRYABLE", data: { status: "succeeded" } });
  expect((await operator.post(`/sagas/${randomUUID()}/retry`)).status).toBe(404);
});

test("GET /sagas: operators only, newest first, filtered, paged by a keyset cursor", async () => {
  const d1 = await deployment();
  const d2 = await deployment();
  const ids: string[] = [];
  for (const d of [d1, d2, d1, d2, d1]) {
    const id = randomUUID();
    ids.push(id);
    await start(broker, d, id);
    await settled(id);
  }
  const tenantApi = client(base, await token({ tenant: d1.tenant, roles: ["admin"] }));
  expect((await tenantApi.get("/sagas")).status).toBe(403);
  // A tenant still sees its own saga by id, and not another tenant's.
  expect((await tenantApi.get(`/sagas/${ids[0]}`)).status).toBe(200);
  expect((await tenantApi.get(`/sagas/${ids[1]}`)).status).toBe(404);

  const byDeployment = (await operator.get(`/sagas?deployment_id=${d1.id}`)).body;
  expect(byDeployment.items.map((s: any) => s.id)).toEqual([ids[4], ids[2], ids[0]]);
  expect(byDeployment.next_cursor).toBeNull();
  expect((await operator.get(`/sagas?tenant_id=${d2.tenant}`)).body.items.map((s: any) => s.id)).toEqual([ids[3], ids[1]]);
  expect((await operator.get(`/sagas?tenant_id=${d2.tenant}&status=running`)).body.items).toEqual([]);
  expect((await operator.get(`/sagas?tenant_id=${d2.tenant}&kind=provision`)).body.items).toEqual([]);

  const paged = await allPages(operator, `/sagas?kind=probe&deployment_id=${d1.id}`, 2);
  expect(paged).toEqual({ ids: [ids[4], ids[2], ids[0]], pages: 2 });
  const everything = await allPages(operator, "/sagas", 200);
  for (const id of ids) expect(everything.ids).toContain(id);
  expect(new Set(everything.ids).size).toBe(everything.ids.length);

  expect((await operator.get("/sagas?limit=201")).status).toBe(422);
  expect((await operator.get("/sagas?status=nonsense")).status).toBe(422);
  expect((await operator.get("/sagas?cursor=nonsense")).status).toBe(422);
});
