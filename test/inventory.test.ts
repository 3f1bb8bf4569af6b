import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, client, startNode, token, uniq, asAdmin, asTenant, allPages } from "./helpers";

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
