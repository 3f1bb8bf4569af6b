import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, client, startNode, token, uniq, asAdmin, asTenant, allPages, waitFor } from "./helpers";

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let pg: Client;
let nextDroplet = 7_000_000;

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 0 });
  broker = await startNode(["api", "deployments", "inventory", "dns"], {
    settings: { inventory: { doApiUrl: sim.url, doBackoffMs: 10 }, dns: { doApiUrl: sim.url, doBackoffMs: 10 } },
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


function droplet(tenant: string, extra: Record<string, unknown> = {}) {
  return { external_id: String(nextDroplet++), name: uniq("web"), region: "nyc3", size_slug: "s-1vcpu-1gb", tenant_id: tenant, tags: ["saga:test"], ...extra };
}
async function register(params: Record<string, unknown>, opts: object = asAdmin): Promise<any> {
  return broker.call("v1.inventory.register", params, opts);
}
async function simState() {
  return (await fetch(`${sim.url}/v2/_sim/state`)).json() as Promise<{ requests: Record<string, number> }>;
}
async function rejection(p: Promise<unknown>): Promise<any> {
  return p.then(() => { throw new Error("expected a rejection"); }, (err: unknown) => err);
}

describe("register", () => {
  test("registering the same droplet twice keeps one row and updates its mutable fields", async () => {
    const tenant = uniq("acme");
    const d = droplet(tenant, { status: "new" });
    const first = await register(d);
    expect(first.created).toBe(true);
    expect(first.resource).toMatchObject({ provider: "digitalocean", kind: "droplet", external_id: d.external_id, status: "new", ipv4: null, tenant_id: tenant, deployment_id: null, destroyed_at: null, tags: ["saga:test"] });
    expect(new Date(first.resource.inserted_at).toISOString()).toBe(first.resource.inserted_at);

    const second = await register({ ...d, status: "active", ipv4: "203.0.113.7", tags: ["saga:test", "env:prod"] });
    expect(second.created).toBe(false);
    expect(second.resource).toMatchObject({ id: first.resource.id, status: "active", ipv4: "203.0.113.7", tags: ["saga:test", "env:prod"], inserted_at: first.resource.inserted_at });

    const { rows } = await pg.query("select id, status, ipv4, tags from cloud_resources where provider = 'digitalocean' and external_id = $1", [d.external_id]);
    expect(rows).toEqual([{ id: first.resource.id, status: "active", ipv4: "203.0.113.7", tags: ["saga:test", "env:prod"] }]);
  });

  test("concurrent registers of one droplet still make one row", async () => {
    const d = droplet(uniq("acme"));
    const results = await Promise.all(Array.from({ length: 5 }, () => register(d)));
    expect(new Set(results.map((r) => r.resource.id)).size).toBe(1);
    expect(results.filter((r) => r.created)).toHaveLength(1);
    const { rows } = await pg.query("select count(*)::int as n from cloud_resources where external_id = $1", [d.external_id]);
    expect(rows[0].n).toBe(1);
  });

  test("a numeric provider id is stored as text and found by it", async () => {
    const tenant = uniq("acme");
    const { resource } = await register({ ...droplet(tenant), external_id: 424242 });
    expect(resource.external_id).toBe("424242");
    const got: any = await broker.call("v1.inventory.get", { external_id: "424242" }, asAdmin);
    expect(got.resource.id).toBe(resource.id);
  });

  test("the monthly cost is the provider's size price in cents unless given", async () => {
    const res = await fetch(`${sim.url}/v2/sizes`, { headers: { authorization: "Bearer any" } });
    const { sizes } = (await res.json()) as { sizes: { slug: string; price_monthly: number }[] };
    const price = (slug: string) => Math.round(sizes.find((s) => s.slug === slug)!.price_monthly * 100);
    const tenant = uniq("acme");

    expect((await register(droplet(tenant))).resource).toMatchObject({ monthly_cost_cents: price("s-1vcpu-1gb"), currency: "USD" });
    expect(price("s-1vcpu-1gb")).toBe(600);
    expect((await register(droplet(tenant, { size_slug: "s-2vcpu-4gb" }))).resource.monthly_cost_cents).toBe(price("s-2vcpu-4gb"));
    expect((await register(droplet(tenant, { monthly_cost_cents: 1234 }))).resource.monthly_cost_cents).toBe(1234);

    // A resize re-prices the row on the next register.
    const d = droplet(tenant);
    await register(d);
    expect((await register({ ...d, size_slug: "s-1vcpu-2gb" })).resource).toMatchObject({ size_slug: "s-1vcpu-2gb", monthly_cost_cents: price("s-1vcpu-2gb") });

    const e = await rejection(register(droplet(tenant, { size_slug: "s-99vcpu-1tb" })));
    expect(e).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    expect(e.message).toMatch(/s-99vcpu-1tb/);
  });

  test("the size list is cached, not fetched for every register", async () => {
    const tenant = uniq("acme");
    await register(droplet(tenant)); // warms the cache if no earlier test did
    const before = (await simState()).requests["sizes.list"] ?? 0;
    expect(before).toBeGreaterThanOrEqual(1); // the counter does count size lists
    for (let i = 0; i < 4; i++) await register(droplet(tenant, { size_slug: i % 2 ? "s-1vcpu-2gb" : "s-1vcpu-1gb" }));
    expect((await simState()).requests["sizes.list"] ?? 0).toBe(before);
  });

  test("a provider failure is a retryable 503, and nothing is registered", async () => {
    const failing = await startSimulator({ port: 0, activeAfterMs: 0 });
    const node = await startNode(["inventory"], { settings: { inventory: { doApiUrl: failing.url, doBackoffMs: 1, doMaxRetries: 0 } } });
    try {
      await failing.close(); // nothing listens there any more
      const d = droplet(uniq("acme"));
      const e = await rejection(node.call("v1.inventory.register", d, asAdmin));
      expect(e).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
      const { rows } = await pg.query("select count(*)::int as n from cloud_resources where external_id = $1", [d.external_id]);
      expect(rows[0].n).toBe(0);
    } finally {
      await node.stop();
    }
  });

  test("a tenant may only register for itself, and a resource never changes tenant", async () => {
    const a = uniq("a");
    const e = await rejection(register(droplet(uniq("b")), asTenant(a)));
    expect(e).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    const d = droplet(a);
    expect((await register(d, asTenant(a))).created).toBe(true);
    expect(await rejection(register({ ...d, tenant_id: uniq("other") }))).toMatchObject({ code: 409, type: "RESOURCE_TENANT_MISMATCH" });
  });
});

describe("link, unlink, markDestroyed", () => {
  test("link is idempotent, refuses a second deployment, and unlink only undoes its own link", async () => {
    const tenant = uniq("acme");
    const { resource } = await register(droplet(tenant));
    const dep1 = randomUUID();
    const dep2 = randomUUID();

    const linked: any = await broker.call("v1.inventory.link", { id: resource.id, deployment_id: dep1 }, asAdmin);
    expect(linked).toMatchObject({ changed: true, resource: { id: resource.id, deployment_id: dep1 } });
    expect(await broker.call("v1.inventory.link", { id: resource.id, deployment_id: dep1 }, asAdmin)).toMatchObject({ changed: false, resource: { deployment_id: dep1 } });
    expect(await rejection(broker.call("v1.inventory.link", { id: resource.id, deployment_id: dep2 }, asAdmin))).toMatchObject({ code: 409, type: "ALREADY_LINKED" });

    expect(await broker.call("v1.inventory.unlink", { id: resource.id, deployment_id: dep2 }, asAdmin)).toMatchObject({ changed: false, resource: { deployment_id: dep1 } });
    expect(await broker.call("v1.inventory.unlink", { id: resource.id, deployment_id: dep1 }, asAdmin)).toMatchObject({ changed: true, resource: { deployment_id: null } });
    expect(await broker.call("v1.inventory.unlink", { id: resource.id }, asAdmin)).toMatchObject({ changed: false, resource: { deployment_id: null } });

    // By the provider's id too.
    expect(await broker.call("v1.inventory.link", { external_id: resource.external_id, deployment_id: dep2 }, asAdmin)).toMatchObject({ resource: { id: resource.id, deployment_id: dep2 } });
    const { rows } = await pg.query("select deployment_id from cloud_resources where id = $1", [resource.id]);
    expect(rows[0].deployment_id).toBe(dep2);
  });

  test("markDestroyed is idempotent and terminal, keeps the row's other fields, and hides it from the default list", async () => {
    const tenant = uniq("acme");
    const dep = randomUUID();
    const d = droplet(tenant, { status: "active", ipv4: "203.0.113.9", deployment_id: dep });
    const { resource } = await register(d);

    const first: any = await broker.call("v1.inventory.markDestroyed", { external_id: d.external_id }, asAdmin);
    expect(first).toMatchObject({ changed: true, resource: { id: resource.id, status: "destroyed", ipv4: "203.0.113.9", deployment_id: dep, monthly_cost_cents: 600 } });
    expect(first.resource.destroyed_at).not.toBeNull();
    const again: any = await broker.call("v1.inventory.markDestroyed", { id: resource.id }, asAdmin);
    expect(again).toMatchObject({ changed: false, resource: { status: "destroyed", destroyed_at: first.resource.destroyed_at } });

    // A late register (a retried step) does not bring it back.
    expect((await register({ ...d, status: "active" })).resource).toMatchObject({ status: "destroyed", destroyed_at: first.resource.destroyed_at });
    await broker.call("v1.inventory.unlink", { id: resource.id }, asAdmin);
    expect(await rejection(broker.call("v1.inventory.link", { id: resource.id, deployment_id: dep }, asAdmin))).toMatchObject({ code: 409, type: "RESOURCE_DESTROYED" });

    const api = client(base, await token({ tenant }));
    expect((await api.get("/inventory")).body.items.map((r: any) => r.id)).not.toContain(resource.id);
    expect((await api.get("/inventory?include_destroyed=true")).body.items.map((r: any) => r.id)).toContain(resource.id);
    expect((await api.get("/inventory?status=destroyed")).body.items.map((r: any) => r.id)).toEqual([resource.id]);
  });

  test("an unknown resource is 404, and a reference is required", async () => {
    expect(await rejection(broker.call("v1.inventory.markDestroyed", { id: randomUUID() }, asAdmin))).toMatchObject({ code: 404, type: "NOT_FOUND" });
    expect(await rejection(broker.call("v1.inventory.link", { external_id: "999999999", deployment_id: randomUUID() }, asAdmin))).toMatchObject({ code: 404 });
    expect(await rejection(broker.call("v1.inventory.markDestroyed", {}, asAdmin))).toMatchObject({ code: 422 });
  });

  test("another tenant's resource is 404 to link, unlink, destroy and get", async () => {
    const a = uniq("a");
    const { resource } = await register(droplet(a));
    const b = asTenant(uniq("b"));
    for (const [action, params] of [
      ["link", { id: resource.id, deployment_id: randomUUID() }],
      ["unlink", { id: resource.id }],
      ["markDestroyed", { id: resource.id }],
      ["get", { id: resource.id }],
    ] as const) {
      expect(await rejection(broker.call(`v1.inventory.${action}`, params, b))).toMatchObject({ code: 404, type: "NOT_FOUND" });
    }
    const { rows } = await pg.query("select status, deployment_id from cloud_resources where id = $1", [resource.id]);
    expect(rows[0]).toEqual({ status: "new", deployment_id: null });
    expect(await broker.call("v1.inventory.get", { id: resource.id }, asTenant(a))).toMatchObject({ resource: { id: resource.id } });
  });
});

describe("GET /api/v1/inventory", () => {
  test("a tenant sees only its own resources; another tenant's is 404 and never listed; operators see all", async () => {
    const a = uniq("a");
    const b = uniq("b");
    const ra = (await register(droplet(a))).resource;
    const rb = (await register(droplet(b))).resource;
    const apiA = client(base, await token({ tenant: a }));
    const apiB = client(base, await token({ tenant: b }));
    const op = client(base, await token({ tenant: uniq("ops"), roles: ["platform-admin"] }));

    const listA = await apiA.get("/inventory");
    expect(listA.status).toBe(200);
    expect(listA.body).toEqual({ items: [expect.objectContaining({ id: ra.id, tenant_id: a })], next_cursor: null });
    expect((await apiB.get("/inventory")).body.items.map((r: any) => r.id)).toEqual([rb.id]);
    expect((await apiA.get(`/inventory?tenant_id=${b}`)).body).toEqual({ items: [], next_cursor: null });

    expect((await apiA.get(`/inventory/${ra.id}`)).body.resource).toMatchObject({ id: ra.id, external_id: ra.external_id, monthly_cost_cents: 600 });
    const cross = await apiA.get(`/inventory/${rb.id}`);
    expect(cross.status).toBe(404);
    expect(cross.body).toMatchObject({ code: 404, type: "NOT_FOUND" });
    expect((await apiA.get("/inventory/not-a-uuid")).status).toBe(404);

    const all = (await op.get("/inventory?limit=200")).body.items.map((r: any) => r.id);
    expect(all).toEqual(expect.arrayContaining([ra.id, rb.id]));
    expect((await op.get(`/inventory?tenant_id=${b}`)).body.items.map((r: any) => r.id)).toEqual([rb.id]);
    // platform_admin (underscore) is an ordinary tenant user.
    const fake = client(base, await token({ tenant: a, roles: ["platform_admin"] }));
    expect((await fake.get(`/inventory?tenant_id=${b}`)).body.items).toEqual([]);
  });

  test("401 without a token; the internal actions have no route", async () => {
    expect((await client(base).get("/inventory")).status).toBe(401);
    const api = client(base, await token({ tenant: uniq("a"), roles: ["platform-admin"] }));
    for (const path of ["/inventory", "/inventory/register", "/inventory/link"]) expect((await api.post(path, droplet("x"))).status).toBe(404);
  });

  test("filters by deployment and status, and pages newest first without gaps or repeats", async () => {
    const tenant = uniq("acme");
    const dep = randomUUID();
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      // inserted_at has millisecond precision and ties page by id: each row gets its own millisecond, so "newest
      // first" is the order they were registered in (a first register is one statement and can take under 1 ms).
      const t = Date.now();
      while (Date.now() === t) await new Promise((r) => setImmediate(r));
      const { resource } = await register(droplet(tenant, { status: i < 2 ? "active" : "new", deployment_id: i % 3 === 0 ? dep : null }));
      ids.push(resource.id);
    }
    const api = client(base, await token({ tenant }));

    const byDep = (await api.get(`/inventory?deployment_id=${dep}`)).body.items.map((r: any) => r.id);
    expect(byDep).toEqual([ids[6], ids[3], ids[0]]);
    expect((await api.get("/inventory?status=active")).body.items.map((r: any) => r.id)).toEqual([ids[1], ids[0]]);
    expect((await api.get(`/inventory?status=active&deployment_id=${dep}`)).body.items.map((r: any) => r.id)).toEqual([ids[0]]);

    const { ids: seen, pages } = await allPages(api, "/inventory", 3);
    expect(pages).toBe(3);
    expect(seen).toEqual([...ids].reverse());

    for (const q of ["limit=201", "limit=0", "cursor=bogus", "status=exploded", "deployment_id=nope"]) {
      const res = await api.get(`/inventory?${q}`);
      expect([q, res.status, res.body.type]).toEqual([q, 422, "VALIDATION_ERROR"]);
    }
  });
});

describe("droplet actions, the catalog and moves (internal actions)", () => {
  // A node of its own: actions that stay in-progress for a while and a short catalog expiry.
  let asim: Simulator;
  let node: ServiceBroker;
  const ACTION_MS = 300;
  const TTL_MS = 400;
  const call = (action: string, params: Record<string, unknown> = {}, opts: object = asAdmin): Promise<any> => node.call(`v1.inventory.${action}`, params, opts);
  async function ctl(method: string, path: string, body?: unknown): Promise<any> {
    const res = await fetch(`${asim.url}/v2/_sim/${path}`, { method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    expect(res.ok).toBe(true);
    return text ? JSON.parse(text) : undefined;
  }
  const requests = async (op: string): Promise<number> => (await ctl("GET", "state")).requests[op] ?? 0;
  const simDroplet = async (id: number) => (await ctl("GET", "state")).droplets.find((d: any) => d.id === id);
  const plant = async (body: Record<string, unknown> = {}) => (await ctl("POST", "droplets", { name: uniq("mv"), region: "nyc3", ...body })).droplet as { id: number; size_slug: string };
  const until = (id: number) => waitFor(async () => {
    const { action } = await call("getAction", { id });
    return action.status !== "in-progress" && action;
  }, { what: `action ${id} to end` });

  beforeAll(async () => {
    asim = await startSimulator({ port: 0, activeAfterMs: 0, actionMs: ACTION_MS });
    node = await startNode(["inventory"], { settings: { inventory: { doApiUrl: asim.url, doBackoffMs: 5, catalogTtlMs: TTL_MS, driftCheckMs: 0 } } });
  });
  afterAll(async () => {
    await node.stop();
    await asim.close();
  });
  afterEach(() => ctl("DELETE", "faults"));

  test("power_off then power_on: the action runs in-progress, then completes, and the droplet follows", async () => {
    const d = await plant();
    const { action } = await call("dropletAction", { id: d.id, type: "power_off" });
    expect(action).toMatchObject({ id: expect.any(Number), status: "in-progress", type: "power_off", droplet_id: d.id, completed_at: null });
    expect((await call("getAction", { id: action.id })).action.status).toBe("in-progress");
    expect((await until(action.id)).status).toBe("completed");
    expect((await simDroplet(d.id)).status).toBe("off");
    const on = (await call("dropletAction", { id: d.id, type: "power_on" })).action;
    expect((await until(on.id)).status).toBe("completed");
    expect((await simDroplet(d.id)).status).toBe("active");
    const shut = (await call("dropletAction", { id: String(d.id), type: "shutdown" })).action; // ids convert from strings
    expect((await until(shut.id)).status).toBe("completed");
    expect((await simDroplet(d.id)).status).toBe("off");
  });

  test("dropletActions finds the action a lost response started", async () => {
    const d = await plant();
    await ctl("POST", "faults", { operation: "droplets.actions.create", mode: "lose_response" });
    expect(await rejection(call("dropletAction", { id: d.id, type: "power_off" }))).toMatchObject({ code: 503 });
    const { actions } = await call("dropletActions", { id: d.id });
    expect(actions[0]).toMatchObject({ type: "power_off", droplet_id: d.id });
    expect((await until(actions[0].id)).status).toBe("completed");
    expect((await simDroplet(d.id)).status).toBe("off");
  });

  test("resize of an off droplet changes its size at the provider; updateResource follows with the new price", async () => {
    const tenant = uniq("acme");
    const d = await plant({ status: "off", size: "s-1vcpu-1gb" });
    const { resource } = await call("register", { external_id: String(d.id), name: uniq("web"), region: "nyc3", size_slug: "s-1vcpu-1gb", status: "off", tenant_id: tenant });
    expect(resource.monthly_cost_cents).toBe(600);

    const { action } = await call("dropletAction", { id: d.id, type: "resize", size: "s-2vcpu-4gb", disk: true });
    expect(action).toMatchObject({ type: "resize", status: "in-progress" });
    expect((await until(action.id)).status).toBe("completed");
    expect(await simDroplet(d.id)).toMatchObject({ size_slug: "s-2vcpu-4gb", disk: 80 });

    const seen: any[] = [];
    const listener = node.createService({ name: uniq("listen"), events: { "inventory.updated": (ctx: any) => { seen.push(ctx.params.resource); } } });
    try {
      const up = await call("updateResource", { id: resource.id, size_slug: "s-2vcpu-4gb" });
      expect(up.resource).toMatchObject({ id: resource.id, size_slug: "s-2vcpu-4gb", status: "off", monthly_cost_cents: 2400 });
      const { rows } = await pg.query("select size_slug, monthly_cost_cents, status from cloud_resources where id = $1", [resource.id]);
      expect(rows).toEqual([{ size_slug: "s-2vcpu-4gb", monthly_cost_cents: 2400, status: "off" }]);
      await waitFor(async () => seen.some((r) => r.id === resource.id && r.monthly_cost_cents === 2400), { what: "inventory.updated" });

      const on = await call("updateResource", { id: resource.id, status: "active" });
      expect(on.resource).toMatchObject({ status: "active", size_slug: "s-2vcpu-4gb", monthly_cost_cents: 2400 });
      // The same values again change nothing.
      const { rows: [v1] } = await pg.query("select version from cloud_resources where id = $1", [resource.id]);
      const same = await call("updateResource", { id: resource.id, status: "active", size_slug: "s-2vcpu-4gb" });
      expect(same.resource.updated_at).toBe(on.resource.updated_at);
      const { rows: [v2] } = await pg.query("select version from cloud_resources where id = $1", [resource.id]);
      expect(v2.version).toBe(v1.version);
    } finally {
      await node.destroyService(listener);
    }
  });

  test("updateResource refuses an unknown size, a destroyed row, a bad status; an unknown id is 404; nothing changes", async () => {
    const tenant = uniq("acme");
    const { resource } = await call("register", droplet(tenant));
    const unknown = await rejection(call("updateResource", { id: resource.id, size_slug: "s-99vcpu-1tb" }));
    expect(unknown).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    expect(await rejection(call("updateResource", { id: resource.id, status: "destroyed" }))).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    expect(await rejection(call("updateResource", { id: randomUUID(), status: "off" }))).toMatchObject({ code: 404 });
    expect(await rejection(call("updateResource", { id: "not-a-uuid", status: "off" }))).toMatchObject({ code: 422 });
    const { rows } = await pg.query("select size_slug, status, monthly_cost_cents from cloud_resources where id = $1", [resource.id]);
    expect(rows).toEqual([{ size_slug: "s-1vcpu-1gb", status: "new", monthly_cost_cents: 600 }]);
    await call("markDestroyed", { id: resource.id });
    expect(await rejection(call("updateResource", { id: resource.id, status: "off" }))).toMatchObject({ code: 409, type: "RESOURCE_DESTROYED" });
  });

  test("dropletAction validates before asking the provider: a resize needs a known size, other types take none", async () => {
    const d = await plant({ status: "off" });
    const before = await requests("droplets.actions.create");
    expect(await rejection(call("dropletAction", { id: d.id, type: "resize" }))).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    expect(await rejection(call("dropletAction", { id: d.id, type: "resize", size: "s-99vcpu-1tb" }))).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    expect(await rejection(call("dropletAction", { id: d.id, type: "power_on", size: "s-1vcpu-1gb" }))).toMatchObject({ code: 422 });
    expect(await rejection(call("dropletAction", { id: d.id, type: "reboot" }))).toMatchObject({ code: 422 });
    expect(await requests("droplets.actions.create")).toBe(before);
  });

  test("DO's refusals are permanent provider errors carrying DO's status: resize of a running droplet, a gone droplet, a gone action", async () => {
    const running = await plant();
    const e = await rejection(call("dropletAction", { id: running.id, type: "resize", size: "s-2vcpu-2gb" }));
    expect(e).toMatchObject({ code: 502, type: "PROVIDER_ERROR", retryable: false, data: { status: 422, id: "unprocessable_entity" } });
    expect(e.message).toMatch(/powered off/);
    expect(await rejection(call("dropletAction", { id: 12345, type: "power_off" }))).toMatchObject({ code: 502, type: "PROVIDER_ERROR", data: { status: 404 } });
    expect(await rejection(call("getAction", { id: 12345 }))).toMatchObject({ code: 502, type: "PROVIDER_ERROR", data: { status: 404 } });
    expect((await simDroplet(running.id)).size_slug).toBe("s-1vcpu-1gb");
  });

  test("faults on droplets.actions.create: an error and a lost response are retryable 503s and never resent; action_errored ends errored; delay still works", async () => {
    const d = await plant();
    let before = await requests("droplets.actions.create");
    await ctl("POST", "faults", { operation: "droplets.actions.create", mode: "error", status: 500 });
    expect(await rejection(call("dropletAction", { id: d.id, type: "power_off" }))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
    expect(await requests("droplets.actions.create")).toBe(before + 1);
    expect((await simDroplet(d.id)).locked).toBe(false);

    before = await requests("droplets.actions.create");
    await ctl("POST", "faults", { operation: "droplets.actions.create", mode: "lose_response" });
    expect(await rejection(call("dropletAction", { id: d.id, type: "power_off" }))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
    expect(await requests("droplets.actions.create")).toBe(before + 1);
    // It was carried out all the same: the caller settles by reading the droplet.
    await waitFor(async () => (await call("getDroplet", { id: d.id })).droplet.status === "off", { what: "the lost power_off to land" });

    await ctl("POST", "faults", { operation: "droplets.actions.create", mode: "action_errored" });
    const errored = (await call("dropletAction", { id: d.id, type: "power_on" })).action;
    expect(errored.status).toBe("in-progress");
    expect((await until(errored.id)).status).toBe("errored");
    expect((await simDroplet(d.id)).status).toBe("off");

    await ctl("POST", "faults", { operation: "droplets.actions.create", mode: "delay", delay_ms: 200 });
    const started = Date.now();
    const slow = (await call("dropletAction", { id: d.id, type: "power_on" })).action;
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    expect((await until(slow.id)).status).toBe("completed");
    expect((await simDroplet(d.id)).status).toBe("active");
  });

  test("faults on actions.get: errors and lost responses are retried; past the retries a 503; delay still answers", async () => {
    const d = await plant();
    const { action } = await call("dropletAction", { id: d.id, type: "power_off" });
    let before = await requests("actions.get");
    await ctl("POST", "faults", { operation: "actions.get", mode: "error", status: 503, count: 2 });
    expect((await call("getAction", { id: action.id })).action.id).toBe(action.id);
    expect(await requests("actions.get")).toBe(before + 3);
    before = await requests("actions.get");
    await ctl("POST", "faults", { operation: "actions.get", mode: "lose_response" });
    expect((await call("getAction", { id: action.id })).action.id).toBe(action.id);
    expect(await requests("actions.get")).toBe(before + 2);
    await ctl("POST", "faults", { operation: "actions.get", mode: "error", status: 500, count: -1 });
    expect(await rejection(call("getAction", { id: action.id }))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
    await ctl("DELETE", "faults");
    await ctl("POST", "faults", { operation: "actions.get", mode: "delay", delay_ms: 200 });
    const started = Date.now();
    expect((await call("getAction", { id: action.id })).action.id).toBe(action.id);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    expect((await until(action.id)).status).toBe("completed");
  });

  test("regions and sizes come from the provider and are cached until INVENTORY_CATALOG_TTL_MS passes", async () => {
    const { regions } = await call("regions");
    const nyc3 = regions.find((r: any) => r.slug === "nyc3");
    expect(nyc3).toEqual({ slug: "nyc3", name: "New York 3", available: true, sizes: expect.arrayContaining(["s-1vcpu-1gb"]) });
    expect(regions.some((r: any) => !r.available)).toBe(true);
    const { sizes } = await call("sizes");
    expect(sizes.find((s: any) => s.slug === "s-2vcpu-4gb")).toMatchObject({ price_monthly: 24, vcpus: 2, memory: 4096, regions: expect.arrayContaining(["nyc3"]) });

    // Within the TTL: no further provider calls.
    const r0 = await requests("regions.list");
    const s0 = await requests("sizes.list");
    await Promise.all([call("regions"), call("regions"), call("sizes"), call("sizes")]);
    expect(await requests("regions.list")).toBe(r0);
    expect(await requests("sizes.list")).toBe(s0);
    // After it: fetched again (once).
    await waitFor(async () => { await call("regions"); return (await requests("regions.list")) > r0; }, { what: "the regions cache to expire" });
    await waitFor(async () => { await call("sizes"); return (await requests("sizes.list")) > s0; }, { what: "the sizes cache to expire" });
    expect(await requests("regions.list")).toBe(r0 + 1);
  });

  test("the catalog and actions are a retryable 503 while the provider is down", async () => {
    const down = await startSimulator({ port: 0, activeAfterMs: 0 });
    const n = await startNode(["inventory"], { settings: { inventory: { doApiUrl: down.url, doBackoffMs: 1, doMaxRetries: 0, driftCheckMs: 0 } } });
    try {
      await down.close();
      expect(await rejection(n.call("v1.inventory.regions", {}, asAdmin))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
      expect(await rejection(n.call("v1.inventory.sizes", {}, asAdmin))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
      expect(await rejection(n.call("v1.inventory.dropletAction", { id: 1, type: "power_on" }, asAdmin))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE" });
    } finally {
      await n.stop();
    }
  });

  test("forDeployment lists the deployment's live resources, oldest first", async () => {
    const tenant = uniq("acme");
    const dep = randomUUID();
    const a = (await call("register", droplet(tenant, { deployment_id: dep }))).resource;
    const b = (await call("register", droplet(tenant, { deployment_id: dep }))).resource;
    const gone = (await call("register", droplet(tenant, { deployment_id: dep }))).resource;
    await call("register", droplet(tenant, { deployment_id: randomUUID() }));
    await call("markDestroyed", { id: gone.id });
    const { resources } = await call("forDeployment", { deployment_id: dep });
    expect(resources.map((r: any) => r.id)).toEqual([a.id, b.id]);
    expect((await call("forDeployment", { deployment_id: randomUUID() })).resources).toEqual([]);
    expect(await rejection(call("forDeployment", { deployment_id: "x" }))).toMatchObject({ code: 422 });
  });

  test("destroyByTag deletes the tagged droplets at the provider and marks their rows destroyed; again is a no-op", async () => {
    const tenant = uniq("acme");
    const tag = `deployment-${randomUUID()}`;
    const one = await plant({ tags: [tag] });
    const two = await plant({ tags: [tag, "other"] });
    const keep = await plant({ tags: ["keep-me"] });
    const r1 = (await call("register", { ...droplet(tenant), external_id: String(one.id), tags: [tag] })).resource;
    const rKeep = (await call("register", { ...droplet(tenant), external_id: String(keep.id), tags: ["keep-me"] })).resource;
    const res = await call("destroyByTag", { tag });
    expect(res.droplet_ids.sort()).toEqual([one.id, two.id].sort());
    expect(res.resources.map((r: any) => [r.id, r.status])).toEqual([[r1.id, "destroyed"]]);
    const ids = (await ctl("GET", "state")).droplets.map((d: any) => d.id);
    expect(ids).toContain(keep.id);
    expect(ids).not.toContain(one.id);
    expect(ids).not.toContain(two.id);
    const { rows } = await pg.query("select id, status, destroyed_at is not null as gone from cloud_resources where id = any($1) order by status", [[r1.id, rKeep.id]]);
    expect(rows).toEqual([{ id: r1.id, status: "destroyed", gone: true }, { id: rKeep.id, status: "new", gone: false }]);
    expect(await call("destroyByTag", { tag })).toEqual({ droplet_ids: [], resources: [] });
  });

  test("destroyByTag whose delete fails is a retryable 503 and marks nothing", async () => {
    const tenant = uniq("acme");
    const tag = `saga-${randomUUID()}`;
    const d = await plant({ tags: [tag] });
    const row = (await call("register", { ...droplet(tenant), external_id: String(d.id), tags: [tag] })).resource;
    await ctl("POST", "faults", { operation: "droplets.delete", mode: "error", status: 500, count: -1 });
    expect(await rejection(call("destroyByTag", { tag }))).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
    expect((await call("get", { id: row.id })).resource.status).not.toBe("destroyed");
  });

  test("the internal actions are for operators and services only: a tenant gets 403", async () => {
    const tenant = uniq("acme");
    const d = await plant();
    for (const [action, params] of [
      ["dropletAction", { id: d.id, type: "power_off" }], ["getAction", { id: 1 }], ["dropletActions", { id: d.id }], ["regions", {}], ["sizes", {}], ["updateResource", { id: randomUUID(), status: "off" }],
      ["forDeployment", { deployment_id: randomUUID() }], ["destroyByTag", { tag: "x" }],
    ] as const) {
      expect([action, (await rejection(call(action, params, asTenant(tenant)))).code]).toEqual([action, 403]);
    }
    expect((await simDroplet(d.id)).locked).toBe(false);
  });
});
