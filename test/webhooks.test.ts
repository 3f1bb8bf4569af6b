import { Client } from "pg";
import { ServiceBroker } from "moleculer";
import { brokerConfig } from "../moleculer.config";
import { ALL_SERVICES } from "../services";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, asTenant, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";
import { startReceiver, type Receiver } from "./webhook-receiver";
import { openSse } from "./sse";

/*
 * SPEC §9 webhooks and watching, over real PostgreSQL and NATS: the gateway, the services, provisioning and the
 * webhooks service each on their own broker, joined through the machine's NATS; a loopback receiver verifies
 * every signature.
 */

const DOMAIN = "apps.arcadia.test";
const STEP_NAMES = ["mark_deployment_provisioning", "create_droplet", "wait_droplet_active", "register_inventory", "link_deployment_resource", "point_deployment_dns", "activate_deployment"];
const WEBHOOKS = { allowPrivate: true, retryBaseMs: 150, maxAttempts: 12, timeoutMs: 2000, pollMs: 100, catchUpMs: 500, claimMs: 5000, retentionSweepMs: 300 };

let sim: Simulator;
let gateway: ServiceBroker;
let services: ServiceBroker;
let hooks: ServiceBroker;
let base: string;
let operator: ReturnType<typeof client>;
const receivers: Receiver[] = [];
const streams: { close(): void }[] = [];
const sse = async (...args: Parameters<typeof openSse>) => {
  const c = await openSse(...args);
  streams.push(c);
  return c;
};

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 100 });
  const ns = newNamespace();
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  services = await startNode(["deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    nats: ns,
    nodeID: "wh-services",
    settings: {
      deployments: { eventSweepMs: 500 },
      inventory: provider,
      dns: { ...provider, dnsDomain: DOMAIN },
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 5000, sweepMs: 300, leaseMs: 3000 },
    },
  });
  hooks = await startNode(["webhooks"], { nats: ns, nodeID: "wh-webhooks", settings: { webhooks: WEBHOOKS } });
  gateway = await startNode(["api"], { nats: ns, nodeID: "wh-gateway", settings: { api: { watchHeartbeatMs: 300, watchPollMs: 1000 } } });
  await gateway.waitForServices(["v1.deployments", "v1.provisioning", "v1.webhooks"], 15_000);
  await services.waitForServices(["v1.webhooks"], 15_000);
  await hooks.waitForServices(["v1.deployments", "v1.provisioning", "api"], 15_000);
  base = apiUrl(gateway);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
}, 60_000);

afterEach(() => streams.splice(0).forEach((c) => c.close()));

afterAll(async () => {
  await gateway?.stop();
  await hooks?.stop();
  await services?.stop();
  await sim?.close();
  await Promise.all(receivers.map((r) => r.close()));
});

async function receiver() {
  const r = await startReceiver();
  receivers.push(r);
  return r;
}

async function tenantWithHook(events?: string[]) {
  const tenant = uniq("wh");
  const tok = await token({ tenant, sub: "wendy" });
  const api = client(base, tok);
  const rx = await receiver();
  const res = await api.post("/webhooks", { url: rx.url, ...(events ? { events } : {}) });
  expect(res.status).toBe(201);
  rx.trust(res.body.webhook.secret);
  return { tenant, tok, api, rx, webhook: res.body.webhook };
}

const byType = (bodies: any[], type: string) => bodies.filter((b) => b.type === type);

describe("endpoints", () => {
  test("201 with the secret shown once; lists and deliveries never show it again", async () => {
    const { api, webhook, rx } = await tenantWithHook(["deployment.created"]);
    expect(webhook).toMatchObject({ url: rx.url, events: ["deployment.created"], all_tenants: false, secret: expect.stringMatching(/^whsec_/) });
    const list = await api.get("/webhooks");
    expect(list.status).toBe(200);
    expect(list.body.items.map((w: any) => w.id)).toEqual([webhook.id]);
    expect(list.body.items[0].secret).toBeUndefined();
    expect(JSON.stringify(list.body)).not.toContain(webhook.secret);
    const deliveries = await api.get(`/webhooks/${webhook.id}/deliveries`);
    expect(deliveries.status).toBe(200);
    expect(JSON.stringify(deliveries.body)).not.toContain(webhook.secret);
  });

  test("URL and event type validation: 422 and nothing registered", async () => {
    const tenant = uniq("val");
    const api = client(base, await token({ tenant }));
    for (const body of [{ url: "ftp://127.0.0.1/x" }, { url: "not a url" }, { url: "javascript:alert(1)" }, { url: "http://127.0.0.1/x", events: ["deployment.exploded"] }, { events: ["invoice.paid"] }]) {
      const res = await api.post("/webhooks", body);
      expect({ body, status: res.status, type: res.body.type }).toEqual({ body, status: 422, type: "VALIDATION_ERROR" });
    }
    expect((await api.get("/webhooks")).body.items).toEqual([]);
  });

  test("private, loopback, link-local and metadata addresses are refused without WEBHOOK_ALLOW_PRIVATE", async () => {
    const strict = await startNode(["webhooks"], { settings: { webhooks: { ...WEBHOOKS, allowPrivate: false, catchUpMs: 0 } } });
    try {
      const as = asTenant(uniq("strict"));
      for (const url of ["http://127.0.0.1:8080/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://[fd00:ec2::254]/", "http://10.0.0.8/", "http://192.168.1.1/", "http://[::ffff:169.254.169.254]/", "http://localhost:3000/", "http://0.0.0.0/"]) {
        const err: any = await strict.call("v1.webhooks.create", { url }, as).catch((e) => e);
        expect({ url, code: err.code, type: err.type }).toEqual({ url, code: 422, type: "VALIDATION_ERROR" });
      }
      const ok: any = await strict.call("v1.webhooks.create", { url: "https://203.0.114.7/hook" }, as);
      expect(ok.webhook.url).toBe("https://203.0.114.7/hook");
    } finally {
      await strict.stop();
    }
  });

  test("another tenant's webhook is 404 on every id-taking route and never listed; all_tenants is for operators", async () => {
    const { webhook } = await tenantWithHook();
    const other = client(base, await token({ tenant: uniq("other") }));
    expect((await other.get(`/webhooks/${webhook.id}/deliveries`)).status).toBe(404);
    expect((await fetch(`${base}/webhooks/${webhook.id}`, { method: "DELETE", headers: { authorization: `Bearer ${await token({ tenant: uniq("other") })}` } })).status).toBe(404);
    expect((await other.get("/webhooks")).body.items).toEqual([]);
    expect((await other.get("/webhooks/not-a-uuid/deliveries")).status).toBe(404);
    const refused = await other.post("/webhooks", { url: "http://127.0.0.1:9/x", all_tenants: true });
    expect(refused.status).toBe(403);
    const mine = await operator.get(`/webhooks/${webhook.id}/deliveries`);
    expect(mine.status).toBe(200);
    const all = await operator.post("/webhooks", { url: "http://127.0.0.1:9/all", all_tenants: true });
    expect(all.status).toBe(201);
    expect(all.body.webhook).toMatchObject({ all_tenants: true, tenant_id: null });
    expect((await operator.get("/webhooks?limit=200")).body.items.map((w: any) => w.id)).toEqual(expect.arrayContaining([webhook.id, all.body.webhook.id]));
    const del = await fetch(`${base}/webhooks/${all.body.webhook.id}`, { method: "DELETE", headers: { authorization: `Bearer ${await token({ roles: ["platform-admin"] })}` } });
    expect(del.status).toBe(200);
    expect((await operator.get(`/webhooks/${all.body.webhook.id}/deliveries`)).status).toBe(404);
  });

  test("keyset pages over a tenant's endpoints", async () => {
    const tenant = uniq("pages");
    const api = client(base, await token({ tenant }));
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await api.post("/webhooks", { url: `http://127.0.0.1:9/h${i}` })).body.webhook.id);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res: any = await api.get(`/webhooks?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
      expect(res.status).toBe(200);
      seen.push(...res.body.items.map((w: any) => w.id));
      cursor = res.body.next_cursor;
    } while (cursor);
    expect(seen).toEqual([...ids].reverse());
  });
});

describe("deliveries", () => {
  test("a provisioning: deployment.created, each deployment.transitioned and the saga's end, every signature valid", async () => {
    const { api, rx, tenant, webhook } = await tenantWithHook();
    const created = await api.post("/deployments", { slug: uniq("app"), provision: true });
    expect(created.status).toBe(202);
    const id = created.body.deployment.id;
    const bodies = await waitFor(async () => {
      const got = rx.accepted();
      return byType(got, "saga.succeeded").length && byType(got, "deployment.transitioned").length ? got : null;
    }, { timeoutMs: 30_000, what: "the provisioning's webhooks" });
    expect(rx.received.every((r) => r.verified)).toBe(true);
    expect(rx.received[0].signature).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    for (const b of bodies) expect(Object.keys(b).sort()).toEqual(["created_at", "data", "id", "tenant_id", "type"]);
    expect(bodies.every((b) => b.tenant_id === tenant)).toBe(true);
    expect(byType(bodies, "deployment.created")).toEqual([expect.objectContaining({ data: expect.objectContaining({ deployment: expect.objectContaining({ id, state: "provisioning" }) }) })]);
    const moves = byType(bodies, "deployment.transitioned").map((b) => [b.data.event.from_state, b.data.event.to_state]);
    expect(moves).toEqual([["provisioning", "active"]]);
    expect(byType(bodies, "saga.succeeded")[0].data.saga).toMatchObject({ id: created.body.saga.id, deployment_id: id, status: "succeeded" });
    // In order for the deployment: created, then the move, then the saga's end.
    const order = bodies.filter((b) => b.type !== "deployment.runtime_changed").map((b) => b.type);
    expect(order.indexOf("deployment.created")).toBeLessThan(order.indexOf("deployment.transitioned"));
    // The receiver's 200 is recorded just after it answered.
    const list = await waitFor(async () => {
      const res = await api.get(`/webhooks/${webhook.id}/deliveries`);
      return res.body.items.every((d: any) => d.status === "succeeded") ? res : null;
    }, { what: "every delivery recorded as succeeded" });
    expect(list.body.items.length).toBe(new Set(bodies.map((b) => b.id)).size);
    expect(list.body.items.every((d: any) => d.response_code === 200 && d.next_attempt_at === null && d.attempts === 1)).toBe(true);
  });

  test("a provisioning that rolls back: saga.compensated and the move to cancelled", async () => {
    const { api, rx } = await tenantWithHook(["deployment.transitioned", "saga.compensated", "saga.succeeded"]);
    const fault = await fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ operation: "droplets.create", mode: "error", status: 422, count: 1 }) });
    expect(fault.status).toBe(201);
    try {
      const created = await api.post("/deployments", { slug: uniq("rb"), provision: true });
      expect(created.status).toBe(202);
      const got = await waitFor(async () => (byType(rx.accepted(), "saga.compensated").length ? rx.accepted() : null), { timeoutMs: 30_000, what: "saga.compensated" });
      expect(byType(got, "saga.compensated")[0].data.saga).toMatchObject({ id: created.body.saga.id, status: "compensated", error: expect.any(String) });
      expect(byType(got, "saga.succeeded")).toEqual([]);
      await waitFor(async () => byType(rx.accepted(), "deployment.transitioned").some((b) => b.data.event.to_state === "cancelled"), { what: "the move to cancelled" });
      expect(rx.received.every((r) => r.verified)).toBe(true);
    } finally {
      await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
    }
  });

  test("runtime changes and invoices from their owners' events; an endpoint gets only the types it asked for", async () => {
    const { api, rx, tenant } = await tenantWithHook(["deployment.runtime_changed", "invoice.issued", "invoice.paid", "invoice.overdue"]);
    const id = (await api.post("/deployments", { slug: uniq("rt") })).body.deployment.id;
    const occurred_at = new Date().toISOString();
    const runtime = { status: "running", droplet_id: 42, ipv4: "203.0.113.9", hostname: null };
    // The contract's events, as lifecycle and billing emit them (twice: at least once upstream too).
    for (let i = 0; i < 2; i++) services.emit("deployments.runtime_changed", { deployment_id: id, tenant_id: tenant, runtime, occurred_at });
    const invoice = { id: "9d0c7c1e-1111-4a2b-8c3d-2e4f5a6b7c8d", tenant_id: tenant, deployment_id: id, status: "open", total_cents: 4900, currency: "USD", issued_at: occurred_at };
    services.emit("billing.invoice.issued", { invoice });
    services.emit("billing.invoice.paid", { invoice: { ...invoice, status: "paid", paid_at: occurred_at } });
    const got = await waitFor(async () => (rx.accepted().length >= 3 ? rx.accepted() : null), { what: "runtime and invoice webhooks" });
    await new Promise((r) => setTimeout(r, 500)); // room for a wrong extra delivery to show up
    expect(rx.accepted().map((b) => b.type).sort()).toEqual(["deployment.runtime_changed", "invoice.issued", "invoice.paid"]);
    expect(byType(got, "deployment.runtime_changed")[0].data).toEqual({ deployment_id: id, runtime, occurred_at });
    expect(byType(got, "invoice.paid")[0].data.invoice).toMatchObject({ id: invoice.id, status: "paid" });
    expect(rx.received.every((r) => r.verified)).toBe(true);
    // The watch journal has the runtime change too.
    const tok = await token({ tenant });
    const w = await sse(`${base}/deployments/${id}/watch`, { token: tok, lastEventId: "0" });
    await waitFor(async () => w.messages.some((m) => m.event === "deployment.runtime_changed"), { what: "the runtime line" });
    expect(w.messages.filter((m) => m.event === "deployment.runtime_changed")).toHaveLength(1);
    w.close();
  });

  test("the receiver answers 500 for a while, then 200: every event arrives, in order per deployment, none lost", async () => {
    const { api, rx, webhook } = await tenantWithHook(["deployment.created", "deployment.transitioned"]);
    let failing = true;
    rx.answerWith(() => (failing ? 500 : 200));
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) ids.push((await api.post("/deployments", { slug: uniq("r") })).body.deployment.id);
    for (const id of ids) for (const to of ["paused", "active", "paused", "active"]) expect((await api.post(`/deployments/${id}/transition`, { to_state: to })).status).toBe(200);
    await waitFor(async () => rx.received.length >= 6, { timeoutMs: 20_000, what: "failed attempts" });
    const pending = await api.get(`/webhooks/${webhook.id}/deliveries?status=pending`);
    expect(pending.body.items.length).toBeGreaterThan(0);
    // The first of each deployment was tried and waits for its retry; the later ones wait behind it, untried.
    expect(pending.body.items.find((d: any) => d.attempts > 0)).toMatchObject({ status: "pending", response_code: 500, error: "HTTP 500", next_attempt_at: expect.any(String) });
    expect(pending.body.items.filter((d: any) => d.attempts > 0).length).toBeLessThanOrEqual(2);
    failing = false;
    const accepted = await waitFor(async () => (rx.accepted().length >= 10 ? rx.accepted() : null), { timeoutMs: 30_000, what: "all 10 events" });
    expect(rx.received.every((r) => r.verified)).toBe(true);
    const unique = [...new Map(accepted.map((b) => [b.id, b])).values()];
    expect(unique).toHaveLength(10);
    for (const id of ids) {
      const mine = accepted.filter((b) => b.data.deployment.id === id);
      const eventIds = mine.map((b) => b.data.event.id);
      expect(eventIds).toEqual([...eventIds].sort((a, b) => a - b));
      expect(mine.map((b) => b.data.event.to_state)).toEqual(["active", "paused", "active", "paused", "active"]);
    }
    const all = await api.get(`/webhooks/${webhook.id}/deliveries?limit=200`);
    expect(all.body.items).toHaveLength(10);
    const retried = all.body.items.filter((d: any) => d.attempts > 1);
    expect(retried.length).toBeGreaterThan(0);
    expect(retried[0].history.map((h: any) => h.response_code)).toEqual([...Array(retried[0].attempts - 1).fill(500), 200]);
  }, 90_000);

  test("a delivery that never succeeds ends failed after WEBHOOK_MAX_ATTEMPTS, listed with status=failed", async () => {
    // A second webhooks node with a low bound, sharing the tables (and so the work) with the cluster's one.
    const few = await startNode(["webhooks"], { settings: { webhooks: { ...WEBHOOKS, maxAttempts: 3, retryBaseMs: 50, catchUpMs: 0 } } });
    try {
      const tenant = uniq("fail");
      const as = asTenant(tenant);
      const rx = await receiver();
      rx.answerWith(() => 503);
      const { webhook }: any = await few.call("v1.webhooks.create", { url: rx.url }, as);
      rx.trust(webhook.secret);
      const deployment = { id: "0b8f2a4c-5d6e-4f70-8a9b-0c1d2e3f4a5b", tenant_id: tenant, state: "active" };
      few.emit("deployments.created", { deployment, event: { id: 900_000_001, deployment_id: deployment.id, from_state: null, to_state: "active", occurred_at: new Date().toISOString() } });
      const failed: any = await waitFor(async () => {
        const page: any = await few.call("v1.webhooks.deliveries", { id: webhook.id, status: "failed" }, as);
        return page.items[0];
      }, { timeoutMs: 15_000, what: "the delivery to fail" });
      expect(failed).toMatchObject({ status: "failed", response_code: 503, next_attempt_at: null });
      expect(failed.attempts).toBeGreaterThanOrEqual(3);
      expect(failed.history).toHaveLength(failed.attempts);
      expect(rx.received).toHaveLength(failed.attempts);
      expect(rx.received.every((r) => r.verified && r.body.id === "evt_dep_900000001")).toBe(true);
      const asOperator: any = await few.call("v1.webhooks.deliveries", { id: webhook.id, status: "failed" }, { meta: { user: { sub: "op", tenant_id: null, roles: ["platform-admin"], operator: true } } });
      expect(asOperator.items.map((d: any) => d.id)).toEqual([failed.id]);
      // Listed for operators across every endpoint; tenants may not ask.
      const everywhere = await operator.get(`/webhooks/deliveries?status=failed&tenant_id=${tenant}`);
      expect(everywhere.status).toBe(200);
      expect(everywhere.body.items).toEqual([expect.objectContaining({ id: failed.id, webhook_id: webhook.id, tenant_id: tenant, status: "failed" })]);
      expect((await client(base, await token({ tenant })).get("/webhooks/deliveries?status=failed")).status).toBe(403);
    } finally {
      await few.stop();
    }
  });
});

describe("watch", () => {
  test("a provisioning's seven steps in order after the current view; a reconnect with Last-Event-ID misses nothing", async () => {
    const tenant = uniq("watch");
    const tok = await token({ tenant, sub: "wes" });
    const api = client(base, tok);
    const plain = await api.post("/deployments", { slug: uniq("w") });
    const id = plain.body.deployment.id;
    const first = await sse(`${base}/deployments/${id}/watch`, { token: tok });
    expect(first.status).toBe(200);
    expect(first.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const view = await waitFor(async () => first.messages[0], { what: "the current view" });
    expect(view.event).toBe("deployment");
    expect(JSON.parse(view.data)).toMatchObject({ deployment: { id, state: "active" }, events: [expect.objectContaining({ reason: "created" })] });

    // Cancel and provision again so the saga runs on a deployment the stream is already watching.
    expect((await api.post(`/deployments/${id}/transition`, { to_state: "cancelled" })).status).toBe(200);
    const created = await api.post("/deployments", { slug: uniq("p"), provision: true });
    const pid = created.body.deployment.id;
    // From the journal's start (Last-Event-ID: 0): the saga's first step can start before this stream connects, and
    // a line journaled before the connect is part of the current view, not streamed.
    const watcher = await sse(`${base}/deployments/${pid}/watch`, { token: tok, lastEventId: "0" });
    expect(watcher.status).toBe(200);
    const succeededSteps = () => watcher.messages.filter((m) => m.event === "saga.step.succeeded").map((m) => JSON.parse(m.data).step);
    await waitFor(async () => succeededSteps().length === 7 && watcher.messages.some((m) => m.event === "saga.succeeded"), { timeoutMs: 30_000, what: "seven steps on the stream" }).catch((err) => {
      throw new Error(`${err.message}; the stream had: ${watcher.messages.map((m) => `${m.id}:${m.event}`).join(", ")}`);
    });
    expect(succeededSteps()).toEqual(STEP_NAMES);
    // A step retried after a transient error (a loaded machine) starts twice: its first start keeps its place.
    const started = [...new Set(watcher.messages.filter((m) => m.event === "saga.step.started").map((m) => JSON.parse(m.data).step))];
    expect(started).toEqual(STEP_NAMES);
    const ids = watcher.messages.slice(1).map((m) => Number(m.id));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(new Set(ids).size).toBe(ids.length);
    expect(watcher.messages.some((m) => m.event === "deployment.transitioned" && JSON.parse(m.data).event.to_state === "active")).toBe(true);
    // Heartbeat comment lines (every 300 ms in this test; 15 s by default).
    await waitFor(async () => watcher.comments.length > 0, { what: "a comment line" });

    // The first stream saw the cancel as it happened.
    await waitFor(async () => first.messages.some((m) => m.event === "deployment.transitioned"), { what: "the cancel on the first stream" });
    first.close();

    // Reconnect from the middle: exactly what came after that id, nothing missed, nothing repeated.
    const cut = watcher.messages[4];
    const after = watcher.messages.slice(5).map((m) => [m.id, m.event]);
    const resumed = await sse(`${base}/deployments/${pid}/watch`, { token: tok, lastEventId: cut.id });
    await waitFor(async () => resumed.messages.length >= after.length + 1, { what: "the replay" });
    expect(resumed.messages[0].event).toBe("deployment");
    expect(resumed.messages[0].id).toBe(cut.id);
    expect(resumed.messages.slice(1, after.length + 1).map((m) => [m.id, m.event])).toEqual(after);
    // A transition while resumed arrives live with the next id.
    expect((await api.post(`/deployments/${pid}/transition`, { to_state: "paused" })).status).toBe(200);
    const live = await waitFor(async () => resumed.messages.find((m) => m.event === "deployment.transitioned" && JSON.parse(m.data).event.to_state === "paused"), { what: "the live move" });
    expect(Number(live.id)).toBeGreaterThan(Number(after[after.length - 1][0]));
    // The pause powers the droplet off through a power_off saga: its steps and the runtime changes stream too.
    const stopped = await waitFor(async () => resumed.messages.find((m) => m.event === "deployment.runtime_changed" && JSON.parse(m.data).runtime.status === "stopped"), { timeoutMs: 30_000, what: "runtime stopped on the stream" });
    expect(resumed.messages.some((m) => m.event === "saga.step.succeeded" && JSON.parse(m.data).kind === "power_off")).toBe(true);
    const resumedIds = resumed.messages.slice(1).map((m) => Number(m.id));
    expect(resumedIds).toEqual([...resumedIds].sort((a, b) => a - b));
    expect(Number(stopped.id)).toBeGreaterThan(Number(live.id));
    watcher.close();
    resumed.close();
  }, 60_000);

  test("scoped like GET /deployments/:id: another tenant's is 404, no token 401", async () => {
    const tok = await token({ tenant: uniq("own") });
    const id = (await client(base, tok).post("/deployments", { slug: uniq("s") })).body.deployment.id;
    const other = await sse(`${base}/deployments/${id}/watch`, { token: await token({ tenant: uniq("other") }) });
    expect(other.status).toBe(404);
    expect(other.error).toMatchObject({ code: 404, type: "NOT_FOUND" });
    expect((await sse(`${base}/deployments/${id}/watch`)).status).toBe(401);
    expect((await sse(`${base}/deployments/not-a-uuid/watch`, { token: tok })).status).toBe(404);
    const strict = await sse(`${base}/deployments/${id}/watch?since=3`, { token: tok });
    expect(strict.status).toBe(422);
    expect(strict.error).toMatchObject({ type: "VALIDATION_ERROR", data: [expect.objectContaining({ field: "since" })] });
    const op = await sse(`${base}/deployments/${id}/watch`, { token: await token({ roles: ["platform-admin"] }) });
    expect(op.status).toBe(200);
    op.close();
  });

  test("a gateway that stops ends its open streams instead of hanging on them", async () => {
    const lone = await startNode(["api", "deployments", "subscriptions", "webhooks"], { settings: { webhooks: { ...WEBHOOKS, catchUpMs: 0 } } });
    const tok = await token({ tenant: uniq("stop") });
    const id = (await client(apiUrl(lone), tok).post("/deployments", { slug: uniq("s") })).body.deployment.id;
    const w = await sse(`${apiUrl(lone)}/deployments/${id}/watch`, { token: tok });
    await waitFor(async () => w.messages[0], { what: "the view" });
    const t0 = Date.now();
    await lone.stop();
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  test("a cluster without the webhooks service answers 503 with retry-after, not 404", async () => {
    // deployments needs the catalog (subscriptions) to accept a create; everything but webhooks is here.
    const lone = await startNode(["api", "deployments", "subscriptions"]);
    try {
      const tok = await token({ tenant: uniq("lone") });
      const id = (await client(apiUrl(lone), tok).post("/deployments", { slug: uniq("l") })).body.deployment.id;
      const res = await sse(`${apiUrl(lone)}/deployments/${id}/watch`, { token: tok });
      expect(res.status).toBe(503);
      expect(res.headers.get("retry-after")).toBe("5");
      expect(res.error).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE" });
    } finally {
      await lone.stop();
    }
  });
});

test("attempts are counted by outcome (arcadia_webhook_attempts) when metrics are on", async () => {
  // The cluster's webhooks node shares the tables and would take the work: it steps aside for this test.
  await hooks.stop();
  const broker = new ServiceBroker({ ...brokerConfig({ ...process.env, TRANSPORTER: "", METRICS_PORT: "" }), logger: false, namespace: uniq("ns"), metrics: { enabled: true, reporter: [] } });
  broker.createService({ name: "webhooks", version: 1, mixins: [ALL_SERVICES.webhooks], settings: { ...WEBHOOKS, catchUpMs: 0 } });
  await broker.start();
  try {
    const tenant = uniq("metrics");
    const rx = await receiver();
    await broker.call("v1.webhooks.create", { url: rx.url }, asTenant(tenant));
    const deployment = { id: "7c9e6679-7425-40de-944b-e07fc1f90ae7", tenant_id: tenant, state: "active" };
    broker.emit("deployments.created", { deployment, event: { id: 900_000_002, deployment_id: deployment.id, from_state: null, to_state: "active", occurred_at: new Date().toISOString() } });
    await waitFor(async () => rx.accepted().length === 1, { what: "the delivery" });
    const counted = await waitFor(async () => (broker.metrics.getMetric("arcadia.webhook.attempts") as any)?.get({ outcome: "succeeded" })?.value, { what: "the counter" });
    expect(counted).toBe(1);
  } finally {
    await broker.stop();
    hooks = await startNode(["webhooks"], { nats: gateway.namespace, nodeID: "wh-webhooks", settings: { webhooks: WEBHOOKS } });
    await gateway.waitForServices(["v1.webhooks"], 15_000);
  }
});

describe("retention", () => {
  test("finished deliveries, their events and watch lines older than WEBHOOK_RETENTION_DAYS are swept; recent and pending ones stay", async () => {
    const { api, rx, webhook } = await tenantWithHook(["deployment.created"]);
    const a = (await api.post("/deployments", { slug: uniq("old") })).body.deployment.id;
    const b = (await api.post("/deployments", { slug: uniq("new") })).body.deployment.id;
    await waitFor(async () => rx.accepted().length >= 2, { what: "both deliveries" });
    const db = new Client({ connectionString: process.env.DATABASE_URL });
    await db.connect();
    try {
      await waitFor(async () => (await db.query("select count(*)::int as n from webhook_deliveries where endpoint_id = $1 and status = 'succeeded'", [webhook.id])).rows[0].n === 2, { what: "recorded" });
      // Age what belongs to deployment a by 31 days (the default retention is 30).
      await db.query("update webhook_deliveries set updated_at = now() - interval '31 days' where endpoint_id = $1 and order_key = $2", [webhook.id, a]);
      await db.query("update webhook_events set received_at = now() - interval '31 days' where deployment_id = $1", [a]);
      await db.query("update watch_events set created_at = now() - interval '31 days' where deployment_id = $1", [a]);
      await waitFor(async () => (await db.query("select count(*)::int as n from watch_events where deployment_id = $1", [a])).rows[0].n === 0, { what: "the sweep" });
      await waitFor(async () => (await db.query("select count(*)::int as n from webhook_events where deployment_id = $1", [a])).rows[0].n === 0, { what: "the old event gone" });
      const left = await api.get(`/webhooks/${webhook.id}/deliveries`);
      expect(left.body.items.map((d: any) => d.event_id)).toEqual([expect.stringMatching(/^evt_dep_/)]);
      expect((await db.query("select count(*)::int as n from webhook_events where deployment_id = $1", [b])).rows[0].n).toBe(1);
      expect((await db.query("select count(*)::int as n from watch_events where deployment_id = $1", [b])).rows[0].n).toBeGreaterThan(0);
      // Ids keep increasing after a sweep: the head stays.
      expect((await api.post(`/deployments/${a}/transition`, { to_state: "paused" })).status).toBe(200);
      const seq = await waitFor(async () => (await db.query("select seq from watch_events where deployment_id = $1", [a])).rows[0]?.seq, { what: "a new line" });
      expect(Number(seq)).toBeGreaterThan(1);
    } finally {
      await db.end();
    }
  });
});

describe("catch-up", () => {
  test("events that happen while no webhooks node runs (a provisioning, its moves, the saga's end) are delivered once one starts", async () => {
    const { api, rx } = await tenantWithHook();
    // The running node has started its feeds (its first catch-up sets the cursors; history before that is not replayed).
    const db = new Client({ connectionString: process.env.DATABASE_URL });
    await db.connect();
    try {
      await waitFor(async () => (await db.query("select count(*)::int as n from webhook_feed_cursors")).rows[0].n === 4, { what: "the catch-up cursors" });
    } finally {
      await db.end();
    }
    await hooks.stop();
    await waitFor(async () => !gateway.registry.services.has("v1.webhooks", "wh-webhooks"), { what: "the webhooks node to leave" });
    const created = await api.post("/deployments", { slug: uniq("cu"), provision: true });
    expect(created.status).toBe(202);
    const saga = await waitFor(async () => {
      const res = await api.get(`/sagas/${created.body.saga.id}`);
      return res.body.saga?.status === "succeeded" ? res.body.saga : null;
    }, { timeoutMs: 30_000, what: "the saga to succeed" });
    expect(rx.received).toHaveLength(0);
    hooks = await startNode(["webhooks"], { nats: gateway.namespace, nodeID: "wh-webhooks-2", settings: { webhooks: WEBHOOKS } });
    const got = await waitFor(async () => {
      const b = rx.accepted();
      return byType(b, "saga.succeeded").length && byType(b, "deployment.transitioned").length ? b : null;
    }, { timeoutMs: 30_000, what: "the caught-up webhooks" });
    expect(byType(got, "deployment.created")[0].data.deployment.id).toBe(created.body.deployment.id);
    expect(byType(got, "saga.succeeded")[0].data.saga).toMatchObject({ id: saga.id, status: "succeeded" });
    expect(byType(got, "deployment.transitioned").map((b) => b.data.event.to_state)).toEqual(["active"]);
    expect(rx.received.every((r) => r.verified)).toBe(true);
  }, 90_000);
});
