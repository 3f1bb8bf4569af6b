import { randomUUID } from "node:crypto";
import { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { brokerConfig } from "../moleculer.config";
import { ALL_SERVICES } from "../services";
import { apiUrl, client, startNode, token, uniq, waitFor, asAdmin } from "./helpers";
import { dropletDifferences } from "../services/inventory.service";

/*
 * Drift (docs/drift.md) over real PostgreSQL and a simulator of our own. The database is shared with the other
 * suites: their live inventory and DNS rows show up here as ghosts (our simulator never heard of them), so every
 * assertion looks up its own entries by id. Droplets tagged by a saga are judged by the real provisioning service,
 * with sagas driven into each state through the simulator's faults.
 */
const DOMAIN = "apps.arcadia.test";
let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let pg: Client;
let op: ReturnType<typeof client>;
const OPERATOR_SUB = uniq("op-alice");

beforeAll(async () => {
  delete process.env.DNS_DOMAIN;
  sim = await startSimulator({ port: 0, activeAfterMs: 0, rateLimit: 1_000_000 });
  broker = await startNode(["api", "deployments", "inventory", "dns", "provisioning"], {
    settings: {
      inventory: { doApiUrl: sim.url, doBackoffMs: 10, driftCheckMs: 0 },
      dns: { doApiUrl: sim.url, doBackoffMs: 10 },
      // A droplet kept `new` holds its saga in wait_droplet_active for as long as a test needs it running; a rollback
      // that cannot delete the droplet gives up after two attempts.
      provisioning: { pollMs: 25, backoffMs: 10, stepMaxAttempts: 3, activeTimeoutMs: 60_000, compensationMaxAttempts: 2, compensationAckTimeoutMs: 2000 },
    },
  });
  base = apiUrl(broker);
  op = client(base, await token({ tenant: uniq("ops"), roles: ["platform-admin"], sub: OPERATOR_SUB }));
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
  await sim.close();
});


async function control(s: Simulator, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${s.url}/v2/_sim/${path}`, { method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} _sim/${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}
/** A droplet created behind the control plane's back. */
async function plant(body: Record<string, unknown> = {}, s = sim): Promise<{ id: number; name: string; status: string; size_slug: string; networks: any; tags: string[] }> {
  return (await control(s, "POST", "droplets", { name: uniq("stray"), region: "nyc3", ...body })).droplet;
}
async function doApi(method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${sim.url}/v2${path}`, { method, headers: { authorization: "Bearer dev-token", "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}
const publicIp = (d: { networks: any }) => d.networks.v4.find((n: any) => n.type === "public")?.ip_address ?? null;
/** Registers a planted droplet as the saga would: inventory agrees with the provider. */
async function registerPlanted(d: Awaited<ReturnType<typeof plant>>, tenant: string, extra: Record<string, unknown> = {}): Promise<any> {
  const { resource } = await broker.call<any, any>("v1.inventory.register", { external_id: String(d.id), name: d.name, region: "nyc3", size_slug: d.size_slug, ipv4: publicIp(d), status: d.status, tags: d.tags, tenant_id: tenant, ...extra }, asAdmin);
  return resource;
}
async function drift(): Promise<any> {
  const res = await op.get("/drift");
  expect(res.status).toBe(200);
  return res.body;
}
const all = (r: any): any[] => [...r.orphans, ...r.ghosts, ...r.mismatches];
const entry = (r: any, id: string) => all(r).find((e) => e.id === id);
const act = (body: Record<string, unknown>) => op.post("/drift/actions", body);
async function simDroplet(id: number): Promise<any> {
  return (await control(sim, "GET", "state")).droplets.find((d: any) => d.id === id);
}
async function actionRows(externalId: string | number) {
  const { rows } = await pg.query("select action, resource, entry_id, actor, result, tenant_id, deployment_id, resource_id, error, created_at from drift_actions where external_id = $1 order by created_at, id", [String(externalId)]);
  return rows;
}

/** Arms provider faults in our simulator (docs/simulator.md); `clearSimFaults` disarms them all. */
async function simFaults(...faults: Record<string, unknown>[]) {
  for (const f of faults) await control(sim, "POST", "faults", f);
}
const clearSimFaults = () => control(sim, "DELETE", "faults");
const DNS_REFUSED = { operation: "domains.records.create", mode: "error", status: 422, count: -1 };
const DELETE_FAILS = { operation: "droplets.delete", mode: "error", status: 500, count: -1 };
const NEVER_ACTIVE = { operation: "droplets.create", mode: "never_active", count: -1 };

/** A deployment created with `provision: true`: the real provisioning saga starts for it. */
async function provision(tenant: string): Promise<{ sagaId: string; deploymentId: string }> {
  const res = await client(base, await token({ tenant })).post("/deployments", { slug: uniq("app"), provision: true });
  expect(res.status).toBe(202);
  expect(res.body.saga.status).toBe("running");
  return { sagaId: res.body.saga.id, deploymentId: res.body.deployment.id };
}
async function sagaOf(id: string): Promise<any> {
  const res = await op.get(`/sagas/${id}`);
  expect(res.status).toBe(200);
  return res.body.saga;
}
const stepOf = (saga: any, name: string) => saga.steps.find((s: any) => s.name === name);
async function finished(id: string): Promise<any> {
  return waitFor(async () => {
    const saga = await sagaOf(id);
    return ["succeeded", "compensated", "compensation_failed"].includes(saga.status) ? saga : null;
  }, { timeoutMs: 20_000, what: `saga ${id} to finish` });
}
async function dropletsTagged(tag: string): Promise<any[]> {
  return (await control(sim, "GET", "state")).droplets.filter((d: any) => d.tags.includes(tag));
}

describe("access", () => {
  test("both routes are operators only: 403 for tenants (platform_admin included), 401 without a token", async () => {
    const tenant = uniq("acme");
    for (const roles of [["admin"], ["platform_admin"], []]) {
      const api = client(base, await token({ tenant, roles }));
      const get = await api.get("/drift");
      expect([roles, get.status, get.body.type]).toEqual([roles, 403, "FORBIDDEN"]);
      const post = await api.post("/drift/actions", { action: "destroy", external_id: "1" });
      expect([roles, post.status]).toEqual([roles, 403]);
    }
    expect((await client(base).get("/drift")).status).toBe(401);
    expect((await client(base).post("/drift/actions", { action: "destroy", external_id: "1" })).status).toBe(401);
  });
});

describe("GET /api/v1/drift", () => {
  test("the report's shape", async () => {
    const r = await drift();
    expect(r).toMatchObject({ orphans: expect.any(Array), ghosts: expect.any(Array), mismatches: expect.any(Array), in_flight: expect.any(Array), sources: { droplets: "ok", dns: "ok" }, dns_domain: DOMAIN });
    expect(new Date(r.checked_at).toISOString()).toBe(r.checked_at);
    expect(r.counts).toMatchObject({ orphans: r.orphans.length, ghosts: r.ghosts.length, mismatches: r.mismatches.length, total: all(r).length });
    expect(r.counts.by_resource.droplet.orphans + r.counts.by_resource.dns_record.orphans).toBe(r.orphans.length);
  });
});

describe("droplets", () => {
  test("an orphan droplet is reported; adopt registers it for the given tenant and it is no longer drift", async () => {
    const d = await plant({ tags: ["env:stray"], ipv4: "198.51.100.7" });
    const id = `orphan:droplet:${d.id}`;
    const before = entry(await drift(), id);
    expect(before).toMatchObject({
      kind: "orphan", resource: "droplet", external_id: String(d.id), tenant_id: null, deployment_id: null, resource_id: null, name: d.name,
      saga_id: null, differences: [{ field: "exists", provider: true, inventory: false }],
      at_provider: { id: d.id, ipv4: "198.51.100.7", status: "active", size_slug: "s-1vcpu-1gb", region: "nyc3", tags: ["env:stray"] }, in_inventory: null,
      fix: { actions: ["adopt", "destroy"] },
    });
    expect(before.fix.text).toMatch(/adopt/);

    // adopt needs a tenant
    const missing = await act({ action: "adopt", entry_id: id });
    expect([missing.status, missing.body.type]).toEqual([422, "VALIDATION_ERROR"]);
    expect(missing.body.message).toMatch(/tenant_id/);

    const tenant = uniq("acme");
    const res = await act({ action: "adopt", entry_id: id, tenant_id: tenant });
    expect(res.status).toBe(201);
    expect(res.body.action).toMatchObject({ action: "adopt", resource: "droplet", external_id: String(d.id), entry_id: id, actor: OPERATOR_SUB, tenant_id: tenant, result: "succeeded", error: null });
    expect(res.body.resource).toMatchObject({ external_id: String(d.id), tenant_id: tenant, status: "active", ipv4: "198.51.100.7", size_slug: "s-1vcpu-1gb", monthly_cost_cents: 600, deployment_id: null, destroyed_at: null });
    expect(res.body.action.resource_id).toBe(res.body.resource.id);

    const { rows } = await pg.query("select tenant_id, status, ipv4 from cloud_resources where external_id = $1", [String(d.id)]);
    expect(rows).toEqual([{ tenant_id: tenant, status: "active", ipv4: "198.51.100.7" }]);
    const tenantView = client(base, await token({ tenant }));
    expect((await tenantView.get("/inventory")).body.items.map((r: any) => r.external_id)).toEqual([String(d.id)]);

    const after = await drift();
    expect(all(after).filter((e) => e.external_id === String(d.id) && e.resource === "droplet")).toEqual([]);

    // Adopting again: not an orphan any more, refused and recorded as such.
    const again = await act({ action: "adopt", external_id: d.id, tenant_id: uniq("other") });
    expect([again.status, again.body.type]).toEqual([409, "NOT_AN_ORPHAN"]);
    expect(again.body.message).toMatch(/already in inventory/);
    expect((await actionRows(d.id)).map((r) => [r.action, r.result, r.actor])).toEqual([["adopt", "succeeded", OPERATOR_SUB], ["adopt", "rejected", OPERATOR_SUB]]);
  });

  test("adopt may link a deployment of that tenant, and refuses another tenant's", async () => {
    const tenant = uniq("acme");
    const api = client(base, await token({ tenant, roles: ["admin"] }));
    const created = await api.post("/deployments", { slug: uniq("shop"), display_name: "Shop" });
    expect(created.status).toBe(201);
    const dep = created.body.deployment.id;

    const d = await plant();
    const wrongTenant = await act({ action: "adopt", external_id: String(d.id), tenant_id: uniq("other"), deployment_id: dep });
    expect([wrongTenant.status, wrongTenant.body.type]).toEqual([422, "VALIDATION_ERROR"]);
    const unknownDep = await act({ action: "adopt", external_id: String(d.id), tenant_id: tenant, deployment_id: randomUUID() });
    expect([unknownDep.status, unknownDep.body.type]).toEqual([422, "VALIDATION_ERROR"]);
    expect(entry(await drift(), `orphan:droplet:${d.id}`)).toBeDefined();

    const res = await act({ action: "adopt", external_id: String(d.id), tenant_id: tenant, deployment_id: dep });
    expect(res.status).toBe(201);
    expect(res.body.resource).toMatchObject({ tenant_id: tenant, deployment_id: dep });
    expect(res.body.action).toMatchObject({ tenant_id: tenant, deployment_id: dep, result: "succeeded" });
    expect((await api.get(`/inventory?deployment_id=${dep}`)).body.items.map((r: any) => r.external_id)).toEqual([String(d.id)]);
  });

  test("droplets tagged saga-<id>: orphans once the saga no longer owns them, in flight while it runs", async () => {
    const tenant = uniq("acme");
    try {
      // A saga whose rollback failed: the DNS step is refused, and the provider will not delete the droplet.
      await simFaults(DNS_REFUSED, DELETE_FAILS);
      const failed = await provision(tenant);
      const failedSaga = await finished(failed.sagaId);
      expect(failedSaga.status).toBe("compensation_failed");
      expect(stepOf(failedSaga, "create_droplet")).toMatchObject({ status: "compensation_failed", compensation_attempts: 2 });
      await clearSimFaults();
      const [dFailed, ...moreFailed] = await dropletsTagged(`saga-${failed.sagaId}`);
      expect(dFailed).toBeDefined();
      expect(moreFailed).toEqual([]);

      // A compensated saga (its rollback destroyed its droplet), and a droplet with its tag that still runs (leaked,
      // e.g. a create that landed late), registered for the saga and marked destroyed.
      await simFaults(DNS_REFUSED);
      const rolledBack = await provision(tenant);
      expect((await finished(rolledBack.sagaId)).status).toBe("compensated");
      await clearSimFaults();
      expect(await dropletsTagged(`saga-${rolledBack.sagaId}`)).toEqual([]);
      const dRolledBack = await plant({ tags: [`saga-${rolledBack.sagaId}`] });
      const row = await registerPlanted(dRolledBack, tenant, { saga_id: rolledBack.sagaId, deployment_id: rolledBack.deploymentId });
      await broker.call("v1.inventory.markDestroyed", { id: row.id }, asAdmin);

      // A saga still running: its droplet stays `new`, so the saga waits in wait_droplet_active.
      await simFaults(NEVER_ACTIVE);
      const running = await provision(tenant);
      const waiting = await waitFor(async () => {
        const saga = await sagaOf(running.sagaId);
        return stepOf(saga, "wait_droplet_active").status === "running" ? saga : null;
      }, { what: "the saga waiting for its droplet" });
      await clearSimFaults();
      const [dRunning, ...moreRunning] = await dropletsTagged(`saga-${running.sagaId}`);
      expect(dRunning).toMatchObject({ id: stepOf(waiting, "create_droplet").output.droplet_id, status: "new" });
      expect(moreRunning).toEqual([]);

      // A saga the provisioning service has never heard of.
      const lost = randomUUID();
      const dLost = await plant({ tags: [`saga-${lost}`] });

      const r = await drift();
      expect(entry(r, `orphan:droplet:${dLost.id}`)).toMatchObject({ kind: "orphan", saga_id: lost, saga_status: "not_found", tenant_id: null, fix: { actions: ["adopt", "destroy"] } });
      expect(entry(r, `orphan:droplet:${dRunning.id}`)).toBeUndefined();
      expect(r.in_flight).toContainEqual({ resource: "droplet", external_id: String(dRunning.id), name: dRunning.name, saga_id: running.sagaId, saga_status: "running" });
      expect(entry(r, `orphan:droplet:${dRolledBack.id}`)).toMatchObject({
        saga_id: rolledBack.sagaId, saga_status: "compensated", tenant_id: tenant, deployment_id: rolledBack.deploymentId, resource_id: row.id,
        differences: [{ field: "status", provider: "active", inventory: "destroyed" }], in_inventory: { id: row.id, status: "destroyed" },
      });
      expect(entry(r, `orphan:droplet:${dRolledBack.id}`).fix.text).toMatch(/marked it destroyed/);
      const failedEntry = entry(r, `orphan:droplet:${dFailed.id}`);
      expect(failedEntry).toMatchObject({ saga_id: failed.sagaId, saga_status: "compensation_failed", tenant_id: tenant, deployment_id: failed.deploymentId, fix: { actions: ["destroy"] } });
      expect(failedEntry.fix.text).toContain(`/sagas/${failed.sagaId}/retry`);

      // The running saga's droplet is not ours to touch.
      const busy = await act({ action: "destroy", external_id: String(dRunning.id) });
      expect([busy.status, busy.body.type]).toEqual([409, "SAGA_IN_FLIGHT"]);
      expect(await simDroplet(dRunning.id)).toBeDefined();
      const pending = await act({ action: "adopt", external_id: String(dFailed.id), tenant_id: tenant });
      expect([pending.status, pending.body.type]).toEqual([409, "SAGA_COMPENSATION_PENDING"]);

      // destroy: gone at the provider, the destroyed row stays destroyed, the entry is resolved.
      const destroyed = await act({ action: "destroy", entry_id: `orphan:droplet:${dRolledBack.id}` });
      expect(destroyed.status).toBe(201);
      expect(destroyed.body.action).toMatchObject({ action: "destroy", actor: OPERATOR_SUB, result: "succeeded", resource_id: row.id, tenant_id: tenant });
      expect(await simDroplet(dRolledBack.id)).toBeUndefined();
      const destroyedLost = await act({ action: "destroy", entry_id: `orphan:droplet:${dLost.id}` });
      expect(destroyedLost.status).toBe(201);
      expect(await simDroplet(dLost.id)).toBeUndefined();
      const after = await drift();
      expect(entry(after, `orphan:droplet:${dRolledBack.id}`)).toBeUndefined();
      expect(entry(after, `orphan:droplet:${dLost.id}`)).toBeUndefined();
      const { rows } = await pg.query("select status from cloud_resources where id = $1", [row.id]);
      expect(rows[0].status).toBe("destroyed");

      // Destroying it twice: already gone.
      const twice = await act({ action: "destroy", external_id: String(dLost.id) });
      expect([twice.status, twice.body.type]).toEqual([409, "NOT_AN_ORPHAN"]);

      // Once the saga has finished, its droplet is drift after all: the droplet turns active, the DNS step is
      // refused, and the rollback cannot delete the droplet.
      await simFaults(DNS_REFUSED, DELETE_FAILS);
      await control(sim, "PATCH", `droplets/${dRunning.id}`, { status: "active" });
      expect((await finished(running.sagaId)).status).toBe("compensation_failed");
      await clearSimFaults();
      expect(await simDroplet(dRunning.id)).toBeDefined();
      const end = await drift();
      expect(entry(end, `orphan:droplet:${dRunning.id}`)).toMatchObject({ saga_id: running.sagaId, saga_status: "compensation_failed", tenant_id: tenant });
      expect(end.in_flight.map((f: any) => f.external_id)).not.toContain(String(dRunning.id));
    } finally {
      await clearSimFaults();
    }
  });

  test("destroy refuses a droplet that inventory knows as live", async () => {
    const d = await plant();
    const row = await registerPlanted(d, uniq("acme"));
    const res = await act({ action: "destroy", external_id: String(d.id) });
    expect([res.status, res.body.type]).toEqual([409, "NOT_AN_ORPHAN"]);
    expect(res.body.message).toContain(row.id);
    expect(res.body.data.drift_action_id).toEqual(expect.any(String));
    expect(await simDroplet(d.id)).toBeDefined();
  });

  test("a ghost: a live row whose droplet vanished; mark_destroyed resolves it", async () => {
    const tenant = uniq("acme");
    const dep = randomUUID();
    const d = await plant();
    const row = await registerPlanted(d, tenant, { deployment_id: dep });
    expect(entry(await drift(), `ghost:droplet:${d.id}`)).toBeUndefined();

    // Still at the provider: not a ghost.
    const early = await act({ action: "mark_destroyed", external_id: String(d.id) });
    expect([early.status, early.body.type]).toEqual([409, "NOT_A_GHOST"]);

    await control(sim, "DELETE", `droplets/${d.id}`);
    const ghost = entry(await drift(), `ghost:droplet:${d.id}`);
    expect(ghost).toMatchObject({
      kind: "ghost", resource: "droplet", external_id: String(d.id), tenant_id: tenant, deployment_id: dep, resource_id: row.id,
      differences: [{ field: "exists", provider: false, inventory: true }], at_provider: null, in_inventory: { id: row.id, status: "active" }, fix: { actions: ["mark_destroyed"] },
    });

    const wrong = await act({ action: "adopt", entry_id: ghost.id, tenant_id: tenant });
    expect([wrong.status, wrong.body.type]).toEqual([422, "VALIDATION_ERROR"]);
    expect(wrong.body.message).toMatch(/mark_destroyed/);

    const res = await act({ action: "mark_destroyed", entry_id: ghost.id });
    expect(res.status).toBe(201);
    expect(res.body.action).toMatchObject({ action: "mark_destroyed", actor: OPERATOR_SUB, result: "succeeded", resource_id: row.id, tenant_id: tenant, deployment_id: dep });
    expect(res.body.resource).toMatchObject({ id: row.id, status: "destroyed", deployment_id: dep });
    expect(res.body.resource.destroyed_at).not.toBeNull();
    expect(entry(await drift(), ghost.id)).toBeUndefined();

    const again = await act({ action: "mark_destroyed", entry_id: ghost.id });
    expect([again.status, again.body.type]).toEqual([409, "NOT_A_GHOST"]);
    expect((await actionRows(d.id)).map((r) => r.result)).toEqual(["rejected", "succeeded", "rejected"]);
  });

  test("a droplet powered off through a droplet action and off in inventory matches; powered on behind inventory's back it is a status mismatch", async () => {
    const d = await plant();
    const row = await registerPlanted(d, uniq("acme"));
    const { action } = await broker.call<any, any>("v1.inventory.dropletAction", { id: d.id, type: "power_off" }, asAdmin);
    await waitFor(async () => (await broker.call<any, any>("v1.inventory.getAction", { id: action.id }, asAdmin)).action.status === "completed", { what: "power_off" });
    expect((await simDroplet(d.id)).status).toBe("off");
    // Provider off, inventory still active: a status mismatch until inventory follows.
    expect(entry(await drift(), `mismatch:droplet:${d.id}`)?.differences).toEqual([{ field: "status", provider: "off", inventory: "active" }]);
    await broker.call("v1.inventory.updateResource", { id: row.id, status: "off" }, asAdmin);
    expect(entry(await drift(), `mismatch:droplet:${d.id}`)).toBeUndefined();

    const on = (await broker.call<any, any>("v1.inventory.dropletAction", { id: d.id, type: "power_on" }, asAdmin)).action;
    await waitFor(async () => (await broker.call<any, any>("v1.inventory.getAction", { id: on.id }, asAdmin)).action.status === "completed", { what: "power_on" });
    const m = entry(await drift(), `mismatch:droplet:${d.id}`);
    expect(m.differences).toEqual([{ field: "status", provider: "active", inventory: "off" }]);
  });

  test("dropletDifferences: off at both ends matches; any other status pair differs", () => {
    const d = (status: string) => ({ status, size_slug: "s-1vcpu-1gb", networks: { v4: [{ ip_address: "203.0.113.9", type: "public" }], v6: [] } }) as any;
    const r = (status: any) => ({ status, size_slug: "s-1vcpu-1gb", ipv4: "203.0.113.9" });
    expect(dropletDifferences(d("off"), r("off"))).toEqual([]);
    expect(dropletDifferences(d("active"), r("active"))).toEqual([]);
    expect(dropletDifferences(d("off"), r("active"))).toEqual([{ field: "status", provider: "off", inventory: "active" }]);
    expect(dropletDifferences(d("active"), r("off"))).toEqual([{ field: "status", provider: "active", inventory: "off" }]);
    expect(dropletDifferences(d("new"), r("off"))).toEqual([{ field: "status", provider: "new", inventory: "off" }]);
  });

  test("a mismatch: status, IP and size differ; sync copies the provider's values and re-prices", async () => {
    const d = await plant();
    const row = await registerPlanted(d, uniq("acme"));
    expect(row.monthly_cost_cents).toBe(600);
    expect(entry(await drift(), `mismatch:droplet:${d.id}`)).toBeUndefined();

    await control(sim, "PATCH", `droplets/${d.id}`, { status: "off", ipv4: "198.51.100.99", size: "s-2vcpu-4gb" });
    const m = entry(await drift(), `mismatch:droplet:${d.id}`);
    expect(m).toMatchObject({ kind: "mismatch", resource: "droplet", resource_id: row.id, fix: { actions: ["sync"] } });
    expect(m.differences).toEqual([
      { field: "ipv4", provider: "198.51.100.99", inventory: publicIp(d) },
      { field: "status", provider: "off", inventory: "active" },
      { field: "size_slug", provider: "s-2vcpu-4gb", inventory: "s-1vcpu-1gb" },
    ]);

    const res = await act({ action: "sync", entry_id: m.id });
    expect(res.status).toBe(201);
    expect(res.body.resource).toMatchObject({ id: row.id, status: "off", ipv4: "198.51.100.99", size_slug: "s-2vcpu-4gb", monthly_cost_cents: 2400 });
    expect(res.body.action.details.differences).toEqual(m.differences);
    expect(entry(await drift(), m.id)).toBeUndefined();
    const again = await act({ action: "sync", entry_id: m.id });
    expect([again.status, again.body.type]).toEqual([409, "NOT_A_MISMATCH"]);
  });
});

describe("DNS records", () => {
  const point = (t: { deployment_id: string; tenant_id: string; slug: string }, ipv4: string): Promise<any> => broker.call("v1.dns.point", { deployment_id: t.deployment_id, tenant_id: t.tenant_id, slug: t.slug, ipv4 }, asAdmin);
  const target = () => {
    const tenant_id = uniq("acme");
    const slug = uniq("shop");
    return { deployment_id: randomUUID(), tenant_id, slug, fqdn: `${slug}.${tenant_id}.${DOMAIN}` };
  };

  test("an A record nobody points is an orphan; destroy deletes it at the provider", async () => {
    const name = uniq("stray");
    const planted = await doApi("POST", `/domains/${DOMAIN}/records`, { type: "A", name, data: "198.51.100.50", ttl: 300 });
    expect(planted.status).toBe(201);
    // Other types are not tracked.
    const txt = await doApi("POST", `/domains/${DOMAIN}/records`, { type: "TXT", name, data: "hello" });
    const rid = planted.body.domain_record.id;
    const r = await drift();
    expect(entry(r, `orphan:dns_record:${rid}`)).toMatchObject({
      kind: "orphan", resource: "dns_record", external_id: String(rid), name: `${name}.${DOMAIN}`, tenant_id: null, deployment_id: null,
      at_provider: { id: rid, type: "A", data: "198.51.100.50", fqdn: `${name}.${DOMAIN}` }, in_inventory: null, fix: { actions: ["destroy"] },
    });
    expect(entry(r, `orphan:dns_record:${txt.body.domain_record.id}`)).toBeUndefined();

    const wrong = await act({ action: "adopt", entry_id: `orphan:dns_record:${rid}`, tenant_id: "x" });
    expect([wrong.status, wrong.body.type]).toEqual([422, "VALIDATION_ERROR"]);
    const notA = await act({ action: "destroy", resource: "dns_record", external_id: String(txt.body.domain_record.id) });
    expect([notA.status, notA.body.type]).toEqual([409, "NOT_AN_ORPHAN"]);

    const res = await act({ action: "destroy", entry_id: `orphan:dns_record:${rid}` });
    expect(res.status).toBe(201);
    expect(res.body.action).toMatchObject({ action: "destroy", resource: "dns_record", external_id: String(rid), actor: OPERATOR_SUB, result: "succeeded" });
    expect((await doApi("GET", `/domains/${DOMAIN}/records/${rid}`)).status).toBe(404);
    expect(entry(await drift(), `orphan:dns_record:${rid}`)).toBeUndefined();
  });

  test("a pointed name is not an orphan and cannot be destroyed through drift", async () => {
    const t = target();
    const { dns_record } = await point(t, "203.0.113.60");
    expect(entry(await drift(), `orphan:dns_record:${dns_record.provider_record_id}`)).toBeUndefined();
    const res = await act({ action: "destroy", entry_id: `orphan:dns_record:${dns_record.provider_record_id}` });
    expect([res.status, res.body.type]).toEqual([409, "NOT_AN_ORPHAN"]);
    expect(res.body.message).toContain(t.deployment_id);
    expect((await doApi("GET", `/domains/${DOMAIN}/records/${dns_record.provider_record_id}`)).status).toBe(200);
  });

  test("a pointed record deleted at the provider is a ghost; one changed there is a mismatch", async () => {
    const g = target();
    const ghostRec = (await point(g, "203.0.113.61")).dns_record;
    const m = target();
    const mismatchRec = (await point(m, "203.0.113.62")).dns_record;
    const before = await drift();
    expect(all(before).filter((e) => e.resource === "dns_record" && [g.deployment_id, m.deployment_id].includes(e.deployment_id))).toEqual([]);

    expect((await doApi("DELETE", `/domains/${DOMAIN}/records/${ghostRec.provider_record_id}`)).status).toBe(204);
    expect((await doApi("PATCH", `/domains/${DOMAIN}/records/${mismatchRec.provider_record_id}`, { data: "198.51.100.62" })).status).toBe(200);

    const r = await drift();
    expect(entry(r, `ghost:dns_record:${ghostRec.provider_record_id}`)).toMatchObject({
      kind: "ghost", resource: "dns_record", tenant_id: g.tenant_id, deployment_id: g.deployment_id, resource_id: ghostRec.id, name: g.fqdn,
      differences: [{ field: "exists", provider: false, inventory: true }], at_provider: null, in_inventory: { id: ghostRec.id, data: "203.0.113.61", status: "pointed" }, fix: { actions: [] },
    });
    expect(entry(r, `mismatch:dns_record:${mismatchRec.provider_record_id}`)).toMatchObject({
      kind: "mismatch", resource: "dns_record", tenant_id: m.tenant_id, deployment_id: m.deployment_id, name: m.fqdn,
      differences: [{ field: "data", provider: "198.51.100.62", inventory: "203.0.113.62" }], fix: { actions: [] },
    });
    // The changed record is claimed by its row: not also an orphan.
    expect(entry(r, `orphan:dns_record:${mismatchRec.provider_record_id}`)).toBeUndefined();
    // No drift action writes DNS besides destroying orphans.
    const res = await act({ action: "mark_destroyed", entry_id: `ghost:dns_record:${ghostRec.provider_record_id}` });
    expect([res.status, res.body.type]).toEqual([422, "VALIDATION_ERROR"]);

    // Pointing again (the fix the entry names) resolves both.
    await point(g, "203.0.113.61");
    await point(m, "203.0.113.62");
    const after = await drift();
    expect(all(after).filter((e) => e.resource === "dns_record" && [g.deployment_id, m.deployment_id].includes(e.deployment_id))).toEqual([]);
  });
});

describe("POST /api/v1/drift/actions validation", () => {
  test("bad bodies are 422 and are not recorded", async () => {
    const { rows: [{ n: before }] } = await pg.query("select count(*)::int as n from drift_actions");
    const cases: Record<string, unknown>[] = [
      {},
      { external_id: "1" },
      { action: "explode", external_id: "1" },
      { action: "destroy" },
      { action: "destroy", entry_id: "nonsense" },
      { action: "destroy", entry_id: "orphan:volume:1" },
      { action: "destroy", external_id: "abc" },
      { action: "destroy", entry_id: "orphan:droplet:1", external_id: "2" },
      { action: "destroy", entry_id: "orphan:droplet:1", resource: "dns_record" },
      { action: "mark_destroyed", entry_id: "orphan:droplet:1" },
      { action: "sync", entry_id: "ghost:droplet:1" },
      { action: "destroy", external_id: "1", tenant_id: "acme" },
      { action: "adopt", external_id: "1", tenant_id: "acme", deployment_id: "not-a-uuid" },
      { action: "sync", resource: "dns_record", external_id: "1" },
    ];
    for (const body of cases) {
      const res = await act(body);
      expect([body, res.status, res.body.type]).toEqual([body, 422, "VALIDATION_ERROR"]);
    }
    const { rows: [{ n: after }] } = await pg.query("select count(*)::int as n from drift_actions");
    expect(after).toBe(before);
  });

  test("an action on something absent everywhere is refused with the reason, and recorded", async () => {
    const missing = 2_000_000_000 + Math.floor(Math.random() * 1_000_000);
    for (const [action, type] of [["destroy", "NOT_AN_ORPHAN"], ["mark_destroyed", "NOT_A_GHOST"], ["sync", "NOT_A_MISMATCH"]] as const) {
      const res = await act({ action, external_id: String(missing) });
      expect([action, res.status, res.body.type]).toEqual([action, 409, type]);
    }
    const adopt = await act({ action: "adopt", external_id: String(missing), tenant_id: "acme" });
    expect([adopt.status, adopt.body.type]).toEqual([409, "NOT_AN_ORPHAN"]);
    const rows = await actionRows(missing);
    expect(rows.map((r) => [r.action, r.result, r.actor])).toEqual([
      ["destroy", "rejected", OPERATOR_SUB], ["mark_destroyed", "rejected", OPERATOR_SUB], ["sync", "rejected", OPERATOR_SUB], ["adopt", "rejected", OPERATOR_SUB],
    ]);
    expect(rows.map((r) => r.entry_id)).toEqual([`orphan:droplet:${missing}`, `ghost:droplet:${missing}`, `mismatch:droplet:${missing}`, `orphan:droplet:${missing}`]);
    for (const r of rows) {
      expect(r.error).toEqual(expect.any(String));
      expect(r.created_at).toBeInstanceOf(Date);
    }
  });
});

describe("periodic check", () => {
  let sim2: Simulator;
  let node: ServiceBroker;
  const received: { entries: any[]; checked_at: string; counts: any }[] = [];

  beforeAll(async () => {
    sim2 = await startSimulator({ port: 0, activeAfterMs: 0, rateLimit: 1_000_000 });
    node = new ServiceBroker({
      ...brokerConfig({ ...process.env, TRANSPORTER: "", METRICS_PORT: "" }),
      logger: false,
      namespace: uniq("ns"),
      nodeID: uniq("node"),
      metrics: { enabled: true, reporter: [] },
    });
    const withSettings = (name: string, settings: Record<string, unknown>) => ({ name: ALL_SERVICES[name].name, version: ALL_SERVICES[name].version, mixins: [ALL_SERVICES[name]], settings });
    node.createService(withSettings("inventory", { doApiUrl: sim2.url, doBackoffMs: 1, doMaxRetries: 0, driftCheckMs: 100 }));
    node.createService(withSettings("dns", { doApiUrl: sim2.url, doBackoffMs: 1 }));
    node.createService({ name: "drift-listener", events: { "inventory.drift.detected"(ctx: any) { received.push(ctx.params); } } });
    await node.start();
  });
  afterAll(async () => {
    await node.stop();
    await sim2.close();
  });

  const announced = (id: string) => received.filter((e) => e.entries.some((x) => x.id === id));

  test("emits inventory.drift.detected with the new entries only, and survives provider errors", async () => {
    const a = await plant({}, sim2);
    const first = await waitFor(async () => announced(`orphan:droplet:${a.id}`)[0], { what: "the first orphan announced" });
    expect(first.entries.find((e) => e.id === `orphan:droplet:${a.id}`)).toMatchObject({ kind: "orphan", resource: "droplet", external_id: String(a.id) });
    expect(new Date(first.checked_at).toISOString()).toBe(first.checked_at);

    const b = await plant({}, sim2);
    const second = await waitFor(async () => announced(`orphan:droplet:${b.id}`)[0], { what: "the second orphan announced" });
    expect(second.entries.map((e) => e.id)).not.toContain(`orphan:droplet:${a.id}`);

    // The provider fails for a while: the checks log and go on, and nothing is announced twice afterwards.
    const listsBefore = (await control(sim2, "GET", "state")).requests["droplets.list"] ?? 0;
    await control(sim2, "POST", "faults", { operation: "droplets.list", mode: "error", status: 500, count: -1 });
    await waitFor(async () => ((await control(sim2, "GET", "state")).requests["droplets.list"] ?? 0) >= listsBefore + 3, { what: "failing checks" });
    await control(sim2, "DELETE", "faults");
    const c = await plant({}, sim2);
    const third = await waitFor(async () => announced(`orphan:droplet:${c.id}`)[0], { what: "an orphan announced after the outage" });
    expect(third.entries.map((e) => e.id)).not.toEqual(expect.arrayContaining([`orphan:droplet:${a.id}`]));
    expect(announced(`orphan:droplet:${a.id}`)).toHaveLength(1);
    expect(announced(`orphan:droplet:${b.id}`)).toHaveLength(1);
  });

  test("sets the arcadia.drift.entries gauge by kind", async () => {
    const gauge = node.metrics.getMetric("arcadia.drift.entries")!;
    expect(gauge).toBeTruthy();
    await waitFor(async () => ((gauge.get({ kind: "orphan" }) as any)?.value ?? 0) >= 2, { what: "the orphan gauge" });
    for (const kind of ["ghost", "mismatch"]) expect(typeof (gauge.get({ kind }) as any)?.value).toBe("number");
  });

  test("runs never overlap", async () => {
    const svc: any = node.getLocalService({ name: "inventory", version: 1 });
    const original = svc.doClient.listDroplets.bind(svc.doClient);
    let running = 0;
    let most = 0;
    let calls = 0;
    svc.doClient.listDroplets = async (...args: unknown[]) => {
      running++;
      calls++;
      most = Math.max(most, running);
      try {
        await new Promise((r) => setTimeout(r, 350)); // longer than the 100 ms interval
        return await original(...args);
      } finally {
        running--;
      }
    };
    try {
      await waitFor(async () => calls >= 3, { what: "three slow checks" });
      expect(most).toBe(1);
    } finally {
      svc.doClient.listDroplets = original;
    }
  });
});
