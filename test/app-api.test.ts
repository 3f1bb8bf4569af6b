import type { ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { actionFaults, apiUrl, client, http, newNamespace, startNode, token, uniq, waitFor } from "./helpers";
import { checkResponse } from "./openapi-check";

/*
 * SPEC §8–§9 for the app that calls us, over real PostgreSQL and NATS: a gateway node and a services node joined by
 * NATS. Idempotency keys, strict parameters, the deployment quota, the write rate limit, the OpenAPI check.
 */

let sim: Simulator;
let services: ServiceBroker;
let gateway: ServiceBroker;
let limited: ServiceBroker;
let base: string;
let limitedBase: string;
let pg: Client;
let operatorToken: string;
const faults = actionFaults();

/** Holds v1.deployments.create calls whose slug starts with "slow-" until released: a first request in flight. */
const gate = { reached: 0, open: null as null | (() => void), wait: Promise.resolve() };
const gateMiddleware = {
  name: "TestGate",
  localAction(next: (ctx: any) => Promise<unknown>, action: { name: string }) {
    if (action.name !== "v1.deployments.create") return next;
    return async (ctx: any) => {
      if (typeof ctx.params?.slug === "string" && ctx.params.slug.startsWith("slow-")) {
        gate.reached++;
        await gate.wait;
      }
      return next(ctx);
    };
  },
};

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 50 });
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  const ns = newNamespace();
  services = await startNode(["deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    nats: ns,
    middlewares: [faults.middleware, gateMiddleware],
    settings: { inventory: provider, dns: { ...provider, dnsDomain: "apps.arcadia.test" }, provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 5000, sweepMs: 300, leaseMs: 3000 } },
  });
  gateway = await startNode(["api"], { nats: ns, nodeID: "gateway" });
  // A second gateway node with a small write budget, for the rate-limit test (the limit is per node).
  limited = await startNode(["api"], { nats: ns, nodeID: "gateway-limited", settings: { api: { rateLimitWritesPerMin: 3 } } });
  for (const b of [gateway, limited]) await b.waitForServices(["v1.deployments", "v1.subscriptions", "v1.inventory", "v1.provisioning"], 15_000);
  base = apiUrl(gateway);
  limitedBase = apiUrl(limited);
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
  operatorToken = await token({ roles: ["platform-admin"], sub: "op-appapi" });
});
afterAll(async () => {
  await pg?.end();
  await limited?.stop();
  await gateway?.stop();
  await services?.stop();
  await sim?.close();
});
afterEach(() => faults.clear());

const store = () => (gateway.getLocalService("api") as any).idempotency as { now: () => Date; sweep(): Promise<number> };
const tenantToken = (tenant: string) => token({ tenant, roles: ["admin"] });
const post = (b: string, tok: string, path: string, body: unknown, key?: string) => http(b, "POST", path, { token: tok, body, headers: key ? { "idempotency-key": key } : {} });
const fieldsOf = (res: { body: any }) => (res.body.data ?? []).map((e: any) => e.field);

describe("idempotency keys", () => {
  test("a replay answers the first response again, same status and body, with Idempotent-Replayed, and does nothing more", async () => {
    const tenant = uniq("idem");
    const tok = await tenantToken(tenant);
    const key = uniq("key");
    const body = { slug: uniq("shop"), display_name: "Shop" };
    const first = await post(base, tok, "/deployments", body, key);
    expect(first.status).toBe(201);
    expect(first.headers.get("idempotent-replayed")).toBeNull();
    const again = await post(base, tok, "/deployments", { display_name: "Shop", slug: body.slug }, key); // same body, keys in another order
    expect(again.status).toBe(201);
    expect(again.headers.get("idempotent-replayed")).toBe("true");
    expect(again.body).toEqual(first.body);
    const listed = await http(base, "GET", "/deployments", { token: tok });
    expect(listed.body.items.map((d: any) => d.id)).toEqual([first.body.deployment.id]);
    const events = await pg.query("select count(*)::int as n from deployment_events where deployment_id = $1", [first.body.deployment.id]);
    expect(events.rows[0].n).toBe(1);
  });

  test("20 concurrent requests with one key create one deployment and one saga", async () => {
    const tenant = uniq("conc");
    const tok = await tenantToken(tenant);
    const key = uniq("key");
    const body = { slug: uniq("app"), provision: true };
    const answers = await Promise.all(Array.from({ length: 20 }, () => post(base, tok, "/deployments", body, key)));
    const statuses = answers.map((a) => a.status);
    expect(statuses.every((s) => s === 202 || s === 409)).toBe(true);
    const won = answers.filter((a) => a.status === 202);
    expect(won.length).toBeGreaterThanOrEqual(1);
    for (const a of won) expect(a.body).toEqual(won[0].body);
    for (const a of answers.filter((x) => x.status === 409)) expect(a.body.type).toBe("IDEMPOTENCY_IN_PROGRESS");
    const id = won[0].body.deployment.id;
    const rows = await pg.query("select id from deployments where tenant_id = $1", [tenant]);
    expect(rows.rows.map((r) => r.id)).toEqual([id]);
    const sagas = await pg.query("select id from sagas where deployment_id = $1", [id]);
    expect(sagas.rows.map((r) => r.id)).toEqual([won[0].body.saga.id]);
    // Once the first is done, every repeat is its replay.
    const later = await post(base, tok, "/deployments", body, key);
    expect(later.status).toBe(202);
    expect(later.headers.get("idempotent-replayed")).toBe("true");
    expect(later.body).toEqual(won[0].body);
    await waitFor(async () => ((await http(base, "GET", `/deployments/${id}`, { token: tok })).body.saga?.status === "succeeded" ? true : null), { timeoutMs: 30_000, what: "the saga to succeed" });
    expect((await pg.query("select count(*)::int as n from sagas where deployment_id = $1", [id])).rows[0].n).toBe(1);
  });

  test("the same key with another body, method or path is 422 IDEMPOTENCY_KEY_REUSED; another tenant's key is its own", async () => {
    const tok = await tenantToken(uniq("reuse"));
    const key = uniq("key");
    const first = await post(base, tok, "/deployments", { slug: uniq("a") }, key);
    expect(first.status).toBe(201);
    const otherBody = await post(base, tok, "/deployments", { slug: uniq("b") }, key);
    expect(otherBody.status).toBe(422);
    expect(otherBody.body).toMatchObject({ code: 422, type: "IDEMPOTENCY_KEY_REUSED" });
    const otherPath = await post(base, tok, `/deployments/${first.body.deployment.id}/transition`, { to_state: "paused" }, key);
    expect(otherPath.status).toBe(422);
    expect(otherPath.body.type).toBe("IDEMPOTENCY_KEY_REUSED");
    expect((await http(base, "GET", `/deployments/${first.body.deployment.id}`, { token: tok })).body.deployment.state).toBe("active");
    const elsewhere = await post(base, await tenantToken(uniq("other")), "/deployments", { slug: uniq("c") }, key);
    expect(elsewhere.status).toBe(201);
    expect(elsewhere.headers.get("idempotent-replayed")).toBeNull();
  });

  test("a repeat while the first is still being handled is 409 IDEMPOTENCY_IN_PROGRESS", async () => {
    const tok = await tenantToken(uniq("busy"));
    const key = uniq("key");
    const body = { slug: uniq("slow") };
    let open!: () => void;
    gate.wait = new Promise<void>((r) => (open = r));
    const before = gate.reached;
    const first = post(base, tok, "/deployments", body, key);
    try {
      await waitFor(async () => gate.reached > before, { what: "the first request to reach the action" });
      const repeat = await post(base, tok, "/deployments", body, key);
      expect(repeat.status).toBe(409);
      expect(repeat.body).toMatchObject({ code: 409, type: "IDEMPOTENCY_IN_PROGRESS" });
      expect(repeat.headers.get("retry-after")).toMatch(/^\d+$/);
    } finally {
      open();
      gate.wait = Promise.resolve();
    }
    const done = await first;
    expect(done.status).toBe(201);
    const replay = await post(base, tok, "/deployments", body, key);
    expect(replay.headers.get("idempotent-replayed")).toBe("true");
    expect(replay.body).toEqual(done.body);
  });

  test("after 24 h a key is free again (store clock), and the sweep deletes expired keys", async () => {
    const tok = await tenantToken(uniq("ttl"));
    const key = uniq("key");
    const body = { slug: uniq("old") };
    const first = await post(base, tok, "/deployments", body, key);
    expect(first.status).toBe(201);
    const s = store();
    const realNow = s.now;
    try {
      s.now = () => new Date(Date.now() + 23.9 * 3600_000);
      expect((await post(base, tok, "/deployments", body, key)).headers.get("idempotent-replayed")).toBe("true");
      s.now = () => new Date(Date.now() + 24 * 3600_000 + 60_000);
      // Runs again: the slug is now taken by the first one, and the answer names it.
      const rerun = await post(base, tok, "/deployments", body, key);
      expect(rerun.headers.get("idempotent-replayed")).toBeNull();
      expect(rerun.status).toBe(409);
      expect(rerun.body).toMatchObject({ type: "SLUG_TAKEN", data: { slug: body.slug, id: first.body.deployment.id } });
      const count = async () => (await pg.query("select count(*)::int as n from idempotency_keys where key = $1", [key])).rows[0].n;
      expect(await count()).toBe(1);
      s.now = () => new Date(Date.now() + 49 * 3600_000);
      expect(await s.sweep()).toBeGreaterThanOrEqual(1);
      expect(await count()).toBe(0);
    } finally {
      s.now = realNow;
    }
  });

  test("a 5xx is not saved: the retry with the same key runs again", async () => {
    const tok = await tenantToken(uniq("retry"));
    const key = uniq("key");
    const body = { slug: uniq("flaky") };
    faults.fail("v1.deployments.create", () => new Errors.MoleculerError("database down", 503, "SERVICE_UNAVAILABLE"), 1);
    const failed = await post(base, tok, "/deployments", body, key);
    expect(failed.status).toBe(503);
    const retried = await post(base, tok, "/deployments", body, key);
    expect(retried.status).toBe(201);
    expect(retried.headers.get("idempotent-replayed")).toBeNull();
    expect((await post(base, tok, "/deployments", body, key)).headers.get("idempotent-replayed")).toBe("true");
  });

  test("PATCH takes a key too: the repeat is the saved answer, not a second change", async () => {
    const key = uniq("key");
    const first = await http(base, "PATCH", "/addons/storage_50gb", { token: operatorToken, body: { name: "Storage, 50 GB" }, headers: { "idempotency-key": key } });
    expect(first.status).toBe(200);
    await http(base, "PATCH", "/addons/storage_50gb", { token: operatorToken, body: { name: "Storage (renamed)" } });
    const again = await http(base, "PATCH", "/addons/storage_50gb", { token: operatorToken, body: { name: "Storage, 50 GB" }, headers: { "idempotency-key": key } });
    expect(again.headers.get("idempotent-replayed")).toBe("true");
    expect(again.body).toEqual(first.body);
    expect((await http(base, "GET", "/addons", { token: operatorToken })).body.items.find((a: any) => a.code === "storage_50gb").name).toBe("Storage (renamed)");
    await http(base, "PATCH", "/addons/storage_50gb", { token: operatorToken, body: { name: "Storage, 50 GB" } });
  });

  test("without its database, a request with a key is 503 with retry-after; one without a key still runs", async () => {
    const broken = await startNode(["api"], { nats: (gateway as any).namespace, nodeID: "gateway-nodb", settings: { api: { idempotencyDatabaseUrl: "postgresql://postgres@127.0.0.1:1/none" } } });
    try {
      await broken.waitForServices(["v1.deployments"], 15_000);
      const b = apiUrl(broken);
      const tok = await tenantToken(uniq("nodb"));
      const res = await post(b, tok, "/deployments", { slug: uniq("n") }, uniq("key"));
      expect(res.status).toBe(503);
      expect(res.headers.get("retry-after")).toMatch(/^\d+$/);
      expect((await http(b, "GET", "/deployments", { token: tok })).body.items).toEqual([]);
      expect((await post(b, tok, "/deployments", { slug: uniq("n") })).status).toBe(201);
    } finally {
      await broken.stop();
    }
  });

  test("a key longer than 255 characters is 422 naming the header", async () => {
    const res = await post(base, await tenantToken(uniq("long")), "/deployments", { slug: uniq("x") }, "k".repeat(256));
    expect(res.status).toBe(422);
    expect(fieldsOf(res)).toEqual(["Idempotency-Key"]);
    expect((await post(base, await tenantToken(uniq("long")), "/deployments", { slug: uniq("x") }, "k".repeat(255))).status).toBe(201);
  });

  test("409 SLUG_TAKEN carries the existing deployment's id", async () => {
    const tok = await tenantToken(uniq("slug"));
    const slug = uniq("taken");
    const first = await post(base, tok, "/deployments", { slug });
    const second = await post(base, tok, "/deployments", { slug, provision: true });
    expect(second.status).toBe(409);
    expect(second.body).toMatchObject({ type: "SLUG_TAKEN", data: { slug, id: first.body.deployment.id } });
  });
});

describe("strict parameters", () => {
  test("unknown query parameters and body fields are 422 VALIDATION_ERROR naming them, on every kind of route", async () => {
    const tok = await tenantToken(uniq("strict"));
    const op = operatorToken;
    const list = await http(base, "GET", "/deployments?slug=shop&region=fra1", { token: tok });
    expect(list.status).toBe(422);
    expect(list.body.type).toBe("VALIDATION_ERROR");
    expect(fieldsOf(list).sort()).toEqual(["region", "slug"]);
    expect(list.body.message).toContain("'slug'");

    const created = await post(base, tok, "/deployments", { slug: uniq("s"), colour: "blue" });
    expect(created.status).toBe(422);
    expect(fieldsOf(created)).toEqual(["colour"]);
    expect((await http(base, "GET", "/deployments", { token: tok })).body.items).toEqual([]);

    const ok = await post(base, tok, "/deployments", { slug: uniq("s") });
    const id = ok.body.deployment.id;
    const moved = await post(base, tok, `/deployments/${id}/transition`, { to_state: "paused", force: true });
    expect(moved.status).toBe(422);
    expect(fieldsOf(moved)).toEqual(["force"]);
    expect((await http(base, "GET", `/deployments/${id}?expand=all`, { token: tok })).status).toBe(422);
    expect(fieldsOf(await post(base, tok, `/deployments/${id}/subscribe`, { plan_code: "studio", coupon: "x" }))).toEqual(["coupon"]);
    // Actions that declare no params take none (checked at the gateway).
    const plans = await http(base, "GET", "/plans?active=true", { token: tok });
    expect(plans.status).toBe(422);
    expect(fieldsOf(plans)).toEqual(["active"]);
    expect(fieldsOf(await http(base, "GET", "/health?verbose=1"))).toEqual(["verbose"]);
    expect(fieldsOf(await http(base, "GET", "/inventory?bogus=1", { token: tok }))).toEqual(["bogus"]);
    expect(fieldsOf(await http(base, "GET", "/drift?deep=1", { token: op }))).toEqual(["deep"]);

    // A body over the limit is refused before anything runs, as documented (413).
    expect((await http(base, "POST", "/deployments", { token: tok, raw: JSON.stringify({ slug: uniq("big"), display_name: "x".repeat(300_000) }) })).status).toBe(413);

    // Path parameters merged into the params do not count as unknown.
    expect((await http(base, "GET", `/deployments/${id}`, { token: tok })).status).toBe(200);
    expect((await post(base, tok, `/deployments/${id}/transition`, { to_state: "paused" })).status).toBe(200);
    expect((await http(base, "PATCH", "/addons/storage_50gb", { token: op, body: { name: "Storage, 50 GB" } })).status).toBe(200);
  });
});

describe("limits", () => {
  const withQuota = async <T>(n: number, fn: () => Promise<T>) => {
    const prev = process.env.TENANT_MAX_DEPLOYMENTS;
    process.env.TENANT_MAX_DEPLOYMENTS = String(n);
    try {
      return await fn();
    } finally {
      if (prev === undefined) delete process.env.TENANT_MAX_DEPLOYMENTS;
      else process.env.TENANT_MAX_DEPLOYMENTS = prev;
    }
  };

  test("at most TENANT_MAX_DEPLOYMENTS not archived per tenant, whoever creates them: 409 QUOTA_EXCEEDED", async () => {
    const tenant = uniq("quota");
    const tok = await tenantToken(tenant);
    await withQuota(3, async () => {
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await post(base, tok, "/deployments", { slug: uniq("q") });
        expect(r.status).toBe(201);
        ids.push(r.body.deployment.id);
      }
      const over = await post(base, tok, "/deployments", { slug: uniq("q") });
      expect(over.status).toBe(409);
      expect(over.body).toMatchObject({ type: "QUOTA_EXCEEDED", data: { tenant_id: tenant, limit: 3, count: 3 } });
      const byOperator = await post(base, operatorToken, "/deployments", { slug: uniq("q"), tenant_id: tenant });
      expect(byOperator.status).toBe(409);
      expect(byOperator.body.type).toBe("QUOTA_EXCEEDED");
      // A cancelled deployment still counts; an archived one does not.
      expect((await post(base, tok, `/deployments/${ids[0]}/transition`, { to_state: "cancelled" })).status).toBe(200);
      expect((await post(base, tok, "/deployments", { slug: uniq("q") })).status).toBe(409);
      expect((await post(base, tok, `/deployments/${ids[0]}/transition`, { to_state: "archived" })).status).toBe(200);
      expect((await post(base, tok, "/deployments", { slug: uniq("q") })).status).toBe(201);
    });
  });

  test("the quota holds under concurrent creates", async () => {
    const tenant = uniq("quotac");
    const tok = await tenantToken(tenant);
    await withQuota(5, async () => {
      const answers = await Promise.all(Array.from({ length: 14 }, () => post(base, tok, "/deployments", { slug: uniq("c") })));
      expect(answers.filter((a) => a.status === 201)).toHaveLength(5);
      expect(answers.filter((a) => a.status === 409 && a.body.type === "QUOTA_EXCEEDED")).toHaveLength(9);
    });
    expect((await pg.query("select count(*)::int as n from deployments where tenant_id = $1", [tenant])).rows[0].n).toBe(5);
  });

  test("writes per tenant token are limited per node: 429 with retry-after; reads and operator tokens are not", async () => {
    const tok = await tenantToken(uniq("rate"));
    for (let i = 0; i < 3; i++) expect((await post(limitedBase, tok, "/deployments", { slug: uniq("r") })).status).toBe(201);
    const limitedRes = await post(limitedBase, tok, "/deployments", { slug: uniq("r") });
    expect(limitedRes.status).toBe(429);
    expect(limitedRes.body).toMatchObject({ code: 429, type: "RATE_LIMITED" });
    const retryAfter = Number(limitedRes.headers.get("retry-after"));
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect((await http(limitedBase, "GET", "/deployments", { token: tok })).status).toBe(200);
    // The limit is per node and per token.
    expect((await post(base, tok, "/deployments", { slug: uniq("r") })).status).toBe(201);
    expect((await post(limitedBase, await tenantToken(uniq("rate2")), "/deployments", { slug: uniq("r") })).status).toBe(201);
    for (let i = 0; i < 5; i++) expect((await post(limitedBase, operatorToken, "/deployments", { slug: uniq("r"), tenant_id: uniq("opt") })).status).toBe(201);
  });
});

describe("the OpenAPI check of the test client", () => {
  test("is on: a body the document refuses, or a status it does not list, fails with the route and the schema path", async () => {
    const tok = await tenantToken(uniq("oa"));
    const created = await post(base, tok, "/deployments", { slug: uniq("oa") });
    const id = created.body.deployment.id;
    const good = await http(base, "GET", `/deployments/${id}`, { token: tok });
    await expect(checkResponse(base, "GET", `/deployments/${id}`, 200, "application/json", good.body)).resolves.toBeUndefined();
    const bad = { ...good.body, deployment: { ...good.body.deployment, surprise: 1 } };
    await expect(checkResponse(base, "GET", `/deployments/${id}`, 200, "application/json", bad)).rejects.toThrow(/GET \/api\/v1\/deployments\/\{id\} → 200 does not match[\s\S]*\/deployment[\s\S]*additionalProperties/);
    await expect(checkResponse(base, "GET", `/deployments/${id}`, 418, "application/json", {})).rejects.toThrow(/answered 418, which the document does not list/);
    await expect(checkResponse(base, "GET", "/nowhere", 200, "application/json", {})).rejects.toThrow(/no such operation/);
  });

  test("every documented response status of a write includes 401, 409, 422, 429 and 503 in the error shape", async () => {
    const doc = (await http(base, "GET", "/openapi.json")).body;
    const op = doc.paths["/api/v1/deployments"].post;
    expect(Object.keys(op.responses).sort()).toEqual(["201", "202", "400", "401", "403", "409", "413", "415", "422", "429", "503"]);
    expect(op.responses["409"].content["application/json"].schema).toEqual({ $ref: "#/components/schemas/Error" });
    expect(op.requestBody.content["application/json"].schema).toMatchObject({ additionalProperties: false, required: ["slug"] });
    expect(doc.paths["/api/v1/deployments"].get.parameters.map((p: any) => p.name).sort()).toEqual(["cursor", "limit", "state", "tenant_id"]);
    expect(doc.paths["/api/v1/ready"].get.responses["503"].content["application/json"].schema).toEqual({ $ref: "#/components/schemas/Ready" });
  });
});
