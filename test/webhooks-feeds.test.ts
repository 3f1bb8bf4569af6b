import { randomUUID } from "node:crypto";
import { Client } from "pg";
import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, asAdmin, asTenant, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";
import { freshMonth, setClock } from "./billing-clock";
import { startReceiver, type Receiver } from "./webhook-receiver";

/*
 * SPEC §9 "an event is never lost because a node ... was down", for every webhook type: with no webhooks node
 * running, a provisioning (its deployment events, its runtime changes, its saga's end), an invoice issued and paid
 * on the billing test clock, and more finished sagas than GET /sagas' page of 200; a webhooks node started
 * afterwards delivers every one of them, once by id, in order per deployment, from the durable feeds
 * (v1.deployments.eventsSince / runtimeSince, v1.provisioning.finishedSince, v1.billing.eventsSince). Real
 * PostgreSQL, NATS and the DigitalOcean simulator; the feeds are also paged with tiny pages.
 */

const DOMAIN = "apps.arcadia.test";
const WEBHOOKS = { allowPrivate: true, retryBaseMs: 150, maxAttempts: 12, timeoutMs: 2000, pollMs: 100, catchUpMs: 400, claimMs: 5000 };
let sim: Simulator;
let services: ServiceBroker;
let gateway: ServiceBroker;
let hooks: ServiceBroker | null = null;
let ns: string;
let base: string;
let op: ReturnType<typeof client>;
let db: Client;
const receivers: Receiver[] = [];
const plan = uniq("whf-plan");

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 100 });
  ns = newNamespace();
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  services = await startNode(["deployments", "subscriptions", "inventory", "dns", "provisioning", "billing"], {
    nats: ns,
    nodeID: "whf-services",
    settings: {
      deployments: { eventSweepMs: 500 },
      inventory: provider,
      dns: { ...provider, dnsDomain: DOMAIN },
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 5000, sweepMs: 300, leaseMs: 3000 },
      billing: { testClock: true, runMs: 0, eventSweepMs: 0 },
    },
  });
  gateway = await startNode(["api"], { nats: ns, nodeID: "whf-gateway" });
  await gateway.waitForServices(["v1.deployments", "v1.provisioning", "v1.billing", "v1.subscriptions"], 15_000);
  base = apiUrl(gateway);
  op = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  expect((await op.post("/plans", { code: plan, name: "Feeds plan", price_cents: 3100 })).status).toBe(201);
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
}, 60_000);

afterAll(async () => {
  await hooks?.stop();
  await gateway?.stop();
  await services?.stop();
  await sim?.close();
  await db?.end();
  await Promise.all(receivers.map((r) => r.close()));
});

async function startHooks(nodeID: string) {
  hooks = await startNode(["webhooks"], { nats: ns, nodeID, settings: { webhooks: WEBHOOKS } });
  await gateway.waitForServices(["v1.webhooks"], 15_000);
  await hooks.waitForServices(["v1.deployments", "v1.provisioning", "v1.billing"], 15_000);
}
async function stopHooks() {
  const id = hooks!.nodeID;
  await hooks!.stop();
  hooks = null;
  await waitFor(async () => !gateway.registry.services.has("v1.webhooks", id) && !services.registry.services.has("v1.webhooks", id), { what: "the webhooks node to leave" });
}

describe("the feeds, paged", () => {
  test("v1.provisioning.finishedSince reads every finished saga once in (finished_at, id) order, ties included, with pages of 7", async () => {
    const tenant = uniq("whf-page");
    const dep = randomUUID();
    const at = new Date(Date.now() - 5000);
    const ids: string[] = [];
    // 40 sagas, 25 of them finishing in the same millisecond (the keyset's id breaks the tie); one still running.
    for (let i = 0; i < 40; i++) {
      const id = randomUUID();
      ids.push(id);
      const finished = new Date(at.getTime() + (i < 25 ? 0 : i));
      await db.query(
        `insert into sagas (id, kind, deployment_id, tenant_id, input, status, started_at, finished_at, updated_at) values ($1, 'provision', $2, $3, '{}', $4, $5, $5, $5)`,
        [id, dep, tenant, i % 3 ? "succeeded" : "compensated", finished],
      );
    }
    await db.query(`insert into sagas (id, kind, deployment_id, tenant_id, input, status, started_at, updated_at) values ($1, 'provision', $2, $3, '{}', 'running', now(), now())`, [randomUUID(), dep, tenant]);
    const seen: any[] = [];
    let after: object = {};
    for (let pages = 0; pages < 100; pages++) {
      const res: any = await services.call("v1.provisioning.finishedSince", { since: at.toISOString(), ...after, limit: 7 }, asAdmin);
      seen.push(...res.items.filter((s: any) => s.tenant_id === tenant));
      if (!res.next) break;
      after = res.next;
    }
    expect(seen.map((s) => s.id).sort()).toEqual([...ids].sort());
    expect(new Set(seen.map((s) => s.id)).size).toBe(40);
    const keys = seen.map((s) => `${s.finished_at}|${s.id}`);
    expect(keys).toEqual([...keys].sort());
    expect(seen[0]).toEqual({ id: expect.any(String), kind: "provision", deployment_id: dep, tenant_id: tenant, status: expect.stringMatching(/^(succeeded|compensated)$/), error: null, finished_at: expect.any(String) });
    // Nothing before `since`; internal: a tenant may not read it.
    const later: any = await services.call("v1.provisioning.finishedSince", { since: new Date(at.getTime() + 30).toISOString(), limit: 500 }, asAdmin);
    expect(later.items.filter((s: any) => s.tenant_id === tenant)).toHaveLength(10);
    await expect(services.call("v1.provisioning.finishedSince", { since: at.toISOString() }, asTenant(tenant))).rejects.toMatchObject({ code: 403 });
  });

  test("v1.billing.eventsSince: one item per invoice of an outbox row naming several, pages splitting a row", async () => {
    const m = await freshMonth(op);
    await setClock(op, m.day(15));
    const tenant = uniq("whf-inv");
    const api = client(base, await token({ tenant, sub: "ivy", roles: ["admin"] }));
    const since = new Date(Date.now() - 1000).toISOString();
    const deps: string[] = [];
    for (let i = 0; i < 3; i++) {
      const d = await api.post("/deployments", { slug: uniq("inv") });
      expect(d.status).toBe(201);
      deps.push(d.body.deployment.id);
      expect((await api.post(`/deployments/${d.body.deployment.id}/subscribe`, { plan_code: plan })).status).toBe(201);
    }
    const invoices = await waitFor(async () => {
      const all = await Promise.all(deps.map(async (d) => (await op.get(`/invoices?deployment_id=${d}`)).body.items[0]));
      return all.every(Boolean) ? all : null;
    }, { what: "three invoices" });
    // A month start issues the next invoices of all three in one statement: one outbox row naming the three.
    await setClock(op, m.day(1, 10, true));
    const next = await waitFor(async () => {
      const all = await Promise.all(deps.map(async (d) => (await op.get(`/invoices?deployment_id=${d}&limit=10`)).body.items));
      return all.every((l) => l.length === 2) ? all.map((l) => l.find((i: any) => !invoices.some((f) => f.id === i.id))) : null;
    }, { what: "the month's invoices" });
    const paid = await op.post(`/invoices/${next[0].id}/pay`, {});
    expect(paid.status).toBe(200);
    const rows = (await db.query(`select id, type, cardinality(invoice_ids)::int as n from invoice_events where invoice_ids && $1::uuid[] order by id`, [next.map((i) => i.id)])).rows;
    expect(rows.some((r) => r.type === "issued" && r.n >= 3)).toBe(true);

    const mine = new Set([...invoices, ...next].map((i) => i.id));
    const got: any[] = [];
    let after: object = {};
    for (let pages = 0; pages < 500; pages++) {
      const res: any = await services.call("v1.billing.eventsSince", { since, ...after, limit: 2 }, asAdmin);
      got.push(...res.items.filter((it: any) => mine.has(it.invoice.id)));
      if (!res.next) break;
      after = res.next;
    }
    // The first invoices were due on the 22nd: the month start also made them overdue (one more row naming three).
    const expected = [
      ...invoices.map((i) => `${i.id}:issued`),
      ...invoices.map((i) => `${i.id}:overdue`),
      ...next.map((i) => `${i.id}:issued`),
      `${next[0].id}:paid`,
    ];
    expect(got.map((it) => it.event_id).sort()).toEqual(expected.sort());
    expect(new Set(got.map((it) => it.event_id)).size).toBe(expected.length);
    const keys = got.map((it) => [it.outbox_id, it.position]);
    expect(keys).toEqual([...keys].sort((a, b) => a[0] - b[0] || a[1] - b[1]));
    expect(got.filter((it) => it.type === "overdue").map((it) => it.invoice.status)).toEqual(["open", "open", "open"]);
    const paidItem = got.find((it) => it.type === "paid");
    expect(paidItem).toMatchObject({ type: "paid", event_id: `${next[0].id}:paid`, occurred_at: expect.any(String), invoice: { id: next[0].id, status: "paid", tenant_id: tenant } });
    await expect(services.call("v1.billing.eventsSince", { since }, asTenant(tenant))).rejects.toMatchObject({ code: 403 });
  }, 60_000);
});

describe("catch-up of every feed", () => {
  test("runtime changes, invoice events and 250 finished sagas that happen while no webhooks node runs are all delivered once one starts, in order per deployment", async () => {
    // A first webhooks node registers the endpoint and sets its feeds' cursors, then goes away.
    await startHooks("whf-webhooks-1");
    const tenant = uniq("whf");
    const api = client(base, await token({ tenant, sub: "fay", roles: ["admin"] }));
    const rx = await startReceiver();
    receivers.push(rx);
    const hook = await api.post("/webhooks", { url: rx.url });
    expect(hook.status).toBe(201);
    rx.trust(hook.body.webhook.secret);
    await waitFor(async () => (await db.query("select count(*)::int as n from webhook_feed_cursors")).rows[0].n === 4, { what: "the four catch-up cursors" });
    await stopHooks();

    // Nobody hears any of this.
    const m = await freshMonth(op);
    await setClock(op, m.day(15));
    const created = await api.post("/deployments", { slug: uniq("f"), provision: true });
    expect(created.status).toBe(202);
    const id = created.body.deployment.id;
    const saga = await waitFor(async () => {
      const res = await op.get(`/sagas/${created.body.saga.id}`);
      return res.body.saga?.status === "succeeded" ? res.body.saga : null;
    }, { timeoutMs: 30_000, what: "the provisioning to succeed" });
    // A pause powers the droplet off: more runtime changes (stopping, stopped) and a power_off saga.
    const paused = await api.post(`/deployments/${id}/transition`, { to_state: "paused" });
    expect(paused.status).toBe(200);
    const powerOff = await waitFor(async () => {
      const res = await op.get(`/sagas?deployment_id=${id}&kind=power_off`);
      return res.body.items?.[0]?.status === "succeeded" ? res.body.items[0] : null;
    }, { timeoutMs: 30_000, what: "the power_off saga to succeed" });
    expect((await api.post(`/deployments/${id}/transition`, { to_state: "active" })).status).toBe(200);
    const powerOn = await waitFor(async () => {
      const res = await op.get(`/sagas?deployment_id=${id}&kind=power_on`);
      return res.body.items?.[0]?.status === "succeeded" ? res.body.items[0] : null;
    }, { timeoutMs: 30_000, what: "the power_on saga to succeed" });
    expect((await api.post(`/deployments/${id}/subscribe`, { plan_code: plan })).status).toBe(201);
    const invoice = await waitFor(async () => (await op.get(`/invoices?deployment_id=${id}`)).body.items[0], { what: "the invoice" });
    expect((await op.post(`/invoices/${invoice.id}/pay`, {})).status).toBe(200);
    // More finished sagas than one page of GET /sagas (200), as the engine leaves them (rows of its own table).
    const bulkDeployment = randomUUID();
    const bulk: string[] = [];
    const t0 = Date.now();
    for (let i = 0; i < 250; i++) bulk.push(randomUUID());
    await db.query(
      `insert into sagas (id, kind, deployment_id, tenant_id, input, status, started_at, finished_at, updated_at)
       select x.id, 'provision', $2, $3, '{}', 'succeeded', $4::timestamptz, $4::timestamptz + (x.n % 50) * interval '1 millisecond', now()
       from unnest($1::uuid[]) with ordinality as x(id, n)`,
      [bulk, bulkDeployment, tenant, new Date(t0).toISOString()],
    );

    const view = (await api.get(`/deployments/${id}`)).body;
    const runtimeRows = (await db.query(`select id, status from deployment_runtime_events where deployment_id = $1 order by id`, [id])).rows;
    const statuses = runtimeRows.map((r) => r.status);
    expect(statuses).toEqual(expect.arrayContaining(["running", "stopping", "stopped"]));
    expect(statuses[statuses.length - 1]).toBe("running");
    const expected = new Map<string, string>([
      ...view.events.map((e: any) => [`evt_dep_${e.id}`, e.from_state === null ? "deployment.created" : "deployment.transitioned"] as [string, string]),
      ...runtimeRows.map((r) => [`evt_rt_${r.id}`, "deployment.runtime_changed"] as [string, string]),
      ...[saga, powerOff, powerOn].map((s: any) => [`evt_saga_${s.id}_succeeded`, "saga.succeeded"] as [string, string]),
      [`evt_inv_${invoice.id}_issued`, "invoice.issued"],
      [`evt_inv_${invoice.id}_paid`, "invoice.paid"],
      ...bulk.map((s) => [`evt_saga_${s}_succeeded`, "saga.succeeded"] as [string, string]),
    ]);
    expect(expected.size).toBe(view.events.length + runtimeRows.length + 3 + 2 + 250);
    expect(rx.received).toHaveLength(0);

    await startHooks("whf-webhooks-2");
    const firstSeen = () => [...new Map(rx.accepted().map((b) => [b.id, b])).values()];
    await waitFor(async () => firstSeen().length >= expected.size, { timeoutMs: 90_000, intervalMs: 250, what: `all ${expected.size} events at the receiver` }).catch((err) => {
      const got = new Set(firstSeen().map((b) => b.id));
      throw new Error(`${err.message}; missing: ${[...expected.keys()].filter((k) => !got.has(k)).slice(0, 20).join(", ")}`);
    });
    const got = firstSeen();
    expect(new Map(got.map((b) => [b.id, b.type]))).toEqual(expected);
    expect(rx.received.every((r) => r.verified)).toBe(true);
    // Once each: nothing was sent twice (no node died here).
    expect(rx.received).toHaveLength(expected.size);

    // In order per deployment: the deployment's events, runtime changes and sagas' ends by time; its deployment
    // events in their ids' order and its runtime changes in theirs.
    const ofDeployment = got.filter((b) => (b.data.deployment?.id ?? b.data.deployment_id ?? b.data.saga?.deployment_id ?? b.data.invoice?.deployment_id) === id);
    const times = ofDeployment.map((b) => Date.parse(b.created_at));
    expect(times).toEqual([...times].sort((a, b) => a - b));
    expect(ofDeployment.filter((b) => b.type.startsWith("deployment.") && b.type !== "deployment.runtime_changed").map((b) => b.id)).toEqual(view.events.map((e: any) => `evt_dep_${e.id}`));
    expect(ofDeployment.filter((b) => b.type === "deployment.runtime_changed").map((b) => b.id)).toEqual(runtimeRows.map((r) => `evt_rt_${r.id}`));
    expect(ofDeployment.filter((b) => b.type === "deployment.runtime_changed").map((b) => b.data.runtime.status)).toEqual(statuses);
    expect(ofDeployment.filter((b) => b.type.startsWith("invoice.")).map((b) => b.type)).toEqual(["invoice.issued", "invoice.paid"]);
    const paidBody = got.find((b) => b.id === `evt_inv_${invoice.id}_paid`)!;
    expect(paidBody).toMatchObject({ tenant_id: tenant, data: { invoice: { id: invoice.id, status: "paid" } } });
    const bulkTimes = got.filter((b) => b.data.saga?.deployment_id === bulkDeployment).map((b) => Date.parse(b.created_at));
    expect(bulkTimes).toHaveLength(250);
    expect(bulkTimes).toEqual([...bulkTimes].sort((a, b) => a - b));

    // The live events keep working beside the feeds, with the same ids: a change now arrives once.
    expect((await api.post(`/deployments/${id}/transition`, { to_state: "paused" })).status).toBe(200);
    const rt = await waitFor(async () => (await db.query(`select id from deployment_runtime_events where deployment_id = $1 and status = 'stopped' order by id desc limit 1`, [id])).rows.find((r) => !expected.has(`evt_rt_${r.id}`)), { timeoutMs: 30_000, what: "the new stop" });
    await waitFor(async () => firstSeen().some((b) => b.id === `evt_rt_${rt.id}`), { timeoutMs: 30_000, what: "the live runtime change" });
    await new Promise((r) => setTimeout(r, 1500)); // two catch-up ticks: a repeat would show now
    const counts = new Map<string, number>();
    for (const r of rx.received) counts.set(r.body.id, (counts.get(r.body.id) ?? 0) + 1);
    expect(Math.max(...counts.values())).toBe(1);
  }, 240_000);
});
