import { randomUUID } from "node:crypto";
import { Client } from "pg";
import type { ServiceBroker } from "moleculer";
import { startNode, uniq, waitFor } from "./helpers";
import { fromDeploymentEvent, fromInvoiceEvent, fromStepEvent, type Mapped } from "../services/webhooks/events";
import { ingestBatch, ingestInput } from "../services/webhooks/store";

/*
 * The batched intake (services/webhooks/README.md "One statement per batch"): webhooks_ingest over real
 * PostgreSQL — repeats inside a batch, gap-free seq per deployment in the batch's order, deliveries only to the
 * endpoints that existed when the event happened, the head's tenant, two batches over the same deployments in
 * opposite orders at once (no deadlock), and the service's queue splitting a batch the server refused.
 */

let hooks: ServiceBroker;
let db: Client;
const svc = () => hooks.getLocalService({ name: "webhooks", version: 1 }) as any;
const em = () => svc().orm.em.fork();

beforeAll(async () => {
  hooks = await startNode(["webhooks"], { nodeID: "whi-webhooks", settings: { webhooks: { catchUpMs: 0, pollMs: 60_000, retentionSweepMs: 0 } } });
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
}, 60_000);

afterAll(async () => {
  await hooks?.stop();
  await db?.end();
});

let depEventId = 700_000_000 + Math.floor(Math.random() * 1_000_000) * 100;
function depEvent(deployment: { id: string; tenant_id: string }, from: string | null, to: string, at = new Date()): Mapped {
  return fromDeploymentEvent({ deployment: { ...deployment, state: to }, event: { id: ++depEventId, deployment_id: deployment.id, from_state: from, to_state: to, occurred_at: at.toISOString() } });
}
const step = (deploymentId: string, sagaId: string, name: string, status = "succeeded", attempts = 1) =>
  fromStepEvent(status, { saga_id: sagaId, deployment_id: deploymentId, step: name, attempts });
const lines = async (deploymentId: string) =>
  (await db.query("select seq::int as seq, type, dedupe_key from watch_events where deployment_id = $1 order by seq", [deploymentId])).rows;

describe("ingestInput (pure)", () => {
  test("heads sorted with the first tenant named; a watch line sharing its envelope's data is sent once", () => {
    const a = { id: "bbbbbbbb-0000-4000-8000-000000000000", tenant_id: "t-b" };
    const b = { id: "aaaaaaaa-0000-4000-8000-000000000000", tenant_id: "t-a" };
    const input = JSON.parse(ingestInput([step(a.id, "s1", "x"), depEvent(a, null, "pending"), depEvent(b, null, "pending"), fromInvoiceEvent("issued", { invoice: { id: "inv1", tenant_id: "t-a" } })]));
    expect(input.heads).toEqual([
      { d: b.id, t: "t-a" },
      { d: a.id, t: "t-b" },
    ]);
    expect(input.events).toHaveLength(4);
    expect(input.events[0]).toEqual({ w: expect.objectContaining({ deployment_id: a.id, data: expect.objectContaining({ step: "x" }) }) });
    expect(input.events[1].w).not.toHaveProperty("data");
    expect(input.events[1].e.payload).toEqual({ id: expect.stringMatching(/^evt_dep_/), type: "deployment.created", created_at: expect.any(String), tenant_id: "t-b", data: expect.objectContaining({ deployment: expect.anything() }) });
    expect(input.events[3]).toEqual({ e: expect.objectContaining({ id: "evt_inv_inv1_issued", deployment_id: null }) });
  });
});

describe("webhooks_ingest", () => {
  test("one batch: repeats inside it dropped, seq 1, 2, 3… in the batch's order, deliveries only to earlier endpoints, the head's tenant filled in", async () => {
    const tenant = uniq("whi");
    const dep = { id: randomUUID(), tenant_id: tenant };
    const saga = randomUUID();
    const t0 = new Date(Date.now() - 60_000);
    const early = randomUUID();
    const late = randomUUID();
    await db.query("insert into webhook_endpoints (id, tenant_id, url, events, secret, created_by, inserted_at) values ($1, $2, 'http://127.0.0.1:9/a', '[]', 's', 't', $3), ($4, $2, 'http://127.0.0.1:9/b', '[]', 's', 't', now())", [early, tenant, new Date(t0.getTime() - 1000), late]);
    const created = depEvent(dep, null, "pending", t0);
    const batch = [step(dep.id, saga, "one"), created, step(dep.id, saga, "two"), created, step(dep.id, saga, "one"), depEvent(dep, "pending", "provisioning", t0)];
    const r = await ingestBatch(em(), batch);
    expect(r.map((x) => [x.fresh, x.deliveries, x.watchSeq])).toEqual([
      [false, 0, 1],
      [true, 1, 2],
      [false, 0, 3],
      [false, 0, null],
      [false, 0, null],
      [true, 1, 4],
    ]);
    expect(r.every((x) => x.deploymentId === dep.id)).toBe(true);
    expect((await lines(dep.id)).map((l) => l.dedupe_key)).toEqual([`step:${saga}:one:succeeded:1`, created.watch!.dedupe_key, `step:${saga}:two:succeeded:1`, batch[5].watch!.dedupe_key]);
    const head = (await db.query("select seq::int as seq, tenant_id from watch_heads where deployment_id = $1", [dep.id])).rows[0];
    expect(head).toEqual({ seq: 4, tenant_id: tenant });
    const deliveries = (await db.query("select endpoint_id, event_id, order_key from webhook_deliveries where endpoint_id = any($1) order by seq", [[early, late]])).rows;
    expect(deliveries).toEqual([
      { endpoint_id: early, event_id: created.envelope!.id, order_key: dep.id },
      { endpoint_id: early, event_id: batch[5].envelope!.id, order_key: dep.id },
    ]);
    // The stored payload is the envelope, and the deployment event's watch line carries the same data.
    const ev = (await db.query("select payload, dep_event_id::int as dep, from_state, to_state from webhook_events where id = $1", [created.envelope!.id])).rows[0];
    expect(ev.payload).toEqual(JSON.parse(JSON.stringify({ id: created.envelope!.id, type: created.envelope!.type, created_at: created.envelope!.created_at, tenant_id: tenant, data: created.envelope!.data })));
    expect(ev).toMatchObject({ dep: created.envelope!.chain!.event_id, from_state: null, to_state: "pending" });
    const line = (await db.query("select data from watch_events where deployment_id = $1 and seq = 2", [dep.id])).rows[0];
    expect(line.data).toEqual(ev.payload.data);
    // A later batch goes on from the head.
    const again = await ingestBatch(em(), [created, step(dep.id, saga, "three")]);
    expect(again.map((x) => x.watchSeq)).toEqual([null, 5]);
  });

  test("two batches over the same deployments in opposite orders at once: no deadlock, every seq once and gap-free", async () => {
    const deps = Array.from({ length: 12 }, () => randomUUID());
    for (let round = 0; round < 10; round++) {
      const forward = deps.map((d) => step(d, `saga-${round}`, "fwd"));
      const backward = [...deps].reverse().map((d) => step(d, `saga-${round}`, "bwd"));
      // Headless events too, in opposite orders (invoices of no deployment: inserted by id).
      const invoices = Array.from({ length: 6 }, (_, i) => fromInvoiceEvent("issued", { invoice: { id: `whi-${round}-${i}-${deps[0]}`, tenant_id: "t" } }));
      await Promise.all([ingestBatch(em(), [...forward, ...invoices]), ingestBatch(em(), [...backward, ...[...invoices].reverse()])]);
    }
    for (const d of deps) expect((await lines(d)).map((l) => l.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
  });
});

describe("the service's intake queue", () => {
  test("events of one turn go as one batch; a batch the server refuses is taken in one event at a time, so only the bad one is lost", async () => {
    const dep = randomUUID();
    const saga = randomUUID();
    const s = svc();
    const before = (await db.query("select count(*)::int as n from watch_events")).rows[0].n;
    await Promise.all([s.take(step(dep, saga, "a"), "test"), s.take(step("not-a-uuid", saga, "bad"), "test"), s.take(step(dep, saga, "b"), "test")]);
    expect((await lines(dep)).map((l) => [l.seq, l.dedupe_key])).toEqual([
      [1, `step:${saga}:a:succeeded:1`],
      [2, `step:${saga}:b:succeeded:1`],
    ]);
    expect((await db.query("select count(*)::int as n from watch_events")).rows[0].n).toBe(before + 2);
    // A strict (catch-up) event that cannot be taken in rejects; the live ones around it do not.
    await expect(s.take(step("not-a-uuid", saga, "bad2"), "catch-up", true)).rejects.toBeTruthy();
  });

  test("many events arriving together keep each deployment's order across batches", async () => {
    const deps = Array.from({ length: 5 }, () => randomUUID());
    const saga = randomUUID();
    const s = svc();
    const size = s.cfg.ingestBatch;
    s.cfg.ingestBatch = 7; // 200 events: 29 batches
    const all: Promise<void>[] = [];
    try {
      for (let i = 0; i < 40; i++) {
        for (const d of deps) all.push(s.take(step(d, saga, `s${String(i).padStart(2, "0")}`), "test"));
        if (i % 10 === 9) await new Promise((r) => setImmediate(r)); // some arrive while a batch is in flight
      }
      await Promise.all(all);
    } finally {
      s.cfg.ingestBatch = size;
    }
    for (const d of deps) {
      const got = await lines(d);
      expect(got.map((l) => l.seq)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
      expect(got.map((l) => l.dedupe_key)).toEqual(Array.from({ length: 40 }, (_, i) => `step:${saga}:s${String(i).padStart(2, "0")}:succeeded:1`));
    }
    await waitFor(async () => !s.flushing && !s.intake.length, { what: "the queue drained" });
  });
});
