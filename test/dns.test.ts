import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { dnsName, tenantLabel } from "../services/dns.service";
import { startNode, uniq, asAdmin, asTenant } from "./helpers";

const DOMAIN = "apps.arcadia.test"; // the service's default DNS_DOMAIN
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
let sim: Simulator;
let broker: ServiceBroker;
let pg: Client;

beforeAll(async () => {
  delete process.env.DNS_DOMAIN;
  sim = await startSimulator({ port: 0, activeAfterMs: 0 });
  broker = await startNode(["dns", "inventory"], { settings: { dns: { doApiUrl: sim.url, doBackoffMs: 10 }, inventory: { doApiUrl: sim.url } } });
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
  await sim.close();
});


interface SimRecord { id: number; domain: string; type: string; name: string; data: string }
async function simState(): Promise<{ domain_records: SimRecord[]; requests: Record<string, number> }> {
  return (await fetch(`${sim.url}/v2/_sim/state`)).json() as any;
}
/** The A records the provider holds for a fully qualified name. */
async function atProvider(fqdn: string): Promise<SimRecord[]> {
  return (await simState()).domain_records.filter((r) => r.type === "A" && `${r.name}.${r.domain}` === fqdn);
}
async function doApi(method: string, path: string, body?: unknown) {
  const res = await fetch(`${sim.url}/v2${path}`, { method, headers: { authorization: "Bearer dev-token", "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}
async function rejection(p: Promise<unknown>): Promise<any> {
  return p.then(() => { throw new Error("expected a rejection"); }, (err: unknown) => err);
}
function target(tenant = uniq("acme")) {
  const slug = uniq("shop");
  return { deployment_id: randomUUID(), tenant_id: tenant, slug, fqdn: `${slug}.${tenant}.${DOMAIN}` };
}
const point = (t: ReturnType<typeof target>, ipv4: string, opts: object = asAdmin): Promise<any> =>
  broker.call("v1.dns.point", { deployment_id: t.deployment_id, tenant_id: t.tenant_id, slug: t.slug, ipv4 }, opts);
const revert = (t: { deployment_id: string }, opts: object = asAdmin): Promise<any> => broker.call("v1.dns.revert", { deployment_id: t.deployment_id }, opts);

describe("naming scheme", () => {
  test("a tenant id that is a DNS label is used as it is", () => {
    expect(tenantLabel("acme")).toBe("acme");
    const id = randomUUID();
    expect(tenantLabel(id)).toBe(id);
    expect(dnsName("shop", "acme", DOMAIN)).toEqual({ name: "shop.acme", fqdn: `shop.acme.${DOMAIN}` });
  });

  test("any other id is sanitised and gets a hash of the original, so look-alikes never share a label", () => {
    const ids = ["Acme", "ACME", "acme.", "Acme Corp", "acme_corp", "acme--corp", "-acme", "__", "ünïcode", "x".repeat(100), "x".repeat(101), "a.b", "a-b"];
    const labels = ids.map(tenantLabel);
    for (const l of labels) expect(l).toMatch(LABEL);
    for (const l of labels) expect(l).not.toContain("--");
    expect(new Set([...labels, "acme"]).size).toBe(ids.length + 1);
    expect(tenantLabel("Acme Corp")).toMatch(/^acme-corp-[0-9a-f]{10}$/);
    expect(tenantLabel("__")).toMatch(/^t-[0-9a-f]{10}$/);
    expect(tenantLabel("x".repeat(100))).toHaveLength(63);
    expect(tenantLabel("a-b")).toBe("a-b");
    expect(tenantLabel("Acme")).toBe(tenantLabel("Acme")); // stable
  });
});

describe("point", () => {
  test("creates one A record at the provider and remembers that it created it", async () => {
    const t = target();
    const { dns_record, changed } = await point(t, "203.0.113.10");
    expect(changed).toBe(true);
    const [rec, ...more] = await atProvider(t.fqdn);
    expect(more).toEqual([]);
    expect(rec).toMatchObject({ data: "203.0.113.10", name: `${t.slug}.${t.tenant_id}` });
    expect(dns_record).toMatchObject({ fqdn: t.fqdn, domain: DOMAIN, name: `${t.slug}.${t.tenant_id}`, type: "A", data: "203.0.113.10", previous_data: null, created_by_us: true, status: "pointed", provider_record_id: rec.id, deployment_id: t.deployment_id, tenant_id: t.tenant_id });
    const { rows } = await pg.query("select status, provider_record_id::float8 as rid from dns_records where deployment_id = $1", [t.deployment_id]);
    expect(rows).toEqual([{ status: "pointed", rid: rec.id }]);
  });

  test("pointing the same name twice leaves one record at the provider", async () => {
    const t = target();
    await point(t, "203.0.113.11");
    const creates = (await simState()).requests["domains.records.create"];
    const again = await point(t, "203.0.113.11");
    expect(again.changed).toBe(false);
    expect(await atProvider(t.fqdn)).toHaveLength(1);
    const s = await simState();
    expect(s.requests["domains.records.create"]).toBe(creates);
    // Concurrent points of one name are queued, not raced into duplicates.
    const u = target();
    await Promise.all([point(u, "203.0.113.12"), point(u, "203.0.113.12"), point(u, "203.0.113.12")]);
    expect(await atProvider(u.fqdn)).toHaveLength(1);
  });

  test("a new address updates the record in place and keeps the one it replaced", async () => {
    const t = target();
    const first = await point(t, "203.0.113.20");
    const second = await point(t, "203.0.113.21");
    expect(second).toMatchObject({ changed: true, dns_record: { data: "203.0.113.21", previous_data: "203.0.113.20", created_by_us: false, status: "pointed", provider_record_id: first.dns_record.provider_record_id } });
    expect((await atProvider(t.fqdn)).map((r) => [r.id, r.data])).toEqual([[first.dns_record.provider_record_id, "203.0.113.21"]]);
  });

  test("a record that already exists at the provider is found by name and updated, not duplicated", async () => {
    const t = target();
    const planted = await doApi("POST", `/domains/${DOMAIN}/records`, { type: "A", name: `${t.slug}.${t.tenant_id}`, data: "198.51.100.5", ttl: 600 });
    expect(planted.status).toBe(201);
    // Another type under the same name is not ours to touch.
    await doApi("POST", `/domains/${DOMAIN}/records`, { type: "TXT", name: `${t.slug}.${t.tenant_id}`, data: "hello" });

    const { dns_record } = await point(t, "203.0.113.30");
    expect(dns_record).toMatchObject({ provider_record_id: planted.body.domain_record.id, previous_data: "198.51.100.5", previous_provider_record_id: planted.body.domain_record.id, created_by_us: false, data: "203.0.113.30" });
    expect((await atProvider(t.fqdn)).map((r) => [r.id, r.data])).toEqual([[planted.body.domain_record.id, "203.0.113.30"]]);

    await revert(t);
    expect((await atProvider(t.fqdn)).map((r) => [r.id, r.data])).toEqual([[planted.body.domain_record.id, "198.51.100.5"]]);
    expect((await simState()).domain_records.filter((r) => r.type === "TXT" && r.name === `${t.slug}.${t.tenant_id}`)).toHaveLength(1);
  });

  test("a lost create response is settled by name on retry: one record, still known as ours", async () => {
    const t = target();
    const f = await fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ operation: "domains.records.create", mode: "lose_response" }) });
    expect(f.status).toBe(201);
    const e = await rejection(point(t, "203.0.113.40"));
    expect(e).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", retryable: true });
    expect((await broker.call("v1.dns.get", { deployment_id: t.deployment_id }, asAdmin) as any).dns_record).toMatchObject({ status: "pointing", created_by_us: true });
    expect(await atProvider(t.fqdn)).toHaveLength(1); // the provider did create it

    const retried = await point(t, "203.0.113.40");
    expect(retried.dns_record).toMatchObject({ status: "pointed", created_by_us: true, data: "203.0.113.40" });
    expect(await atProvider(t.fqdn)).toHaveLength(1);
    await revert(t);
    expect(await atProvider(t.fqdn)).toEqual([]);
  });

  test("a name held by another deployment is 409; a tenant may only point its own names", async () => {
    const t = target();
    await point(t, "203.0.113.50");
    const other = { ...t, deployment_id: randomUUID() };
    expect(await rejection(point(other, "203.0.113.51"))).toMatchObject({ code: 409, type: "DNS_NAME_TAKEN" });
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["203.0.113.50"]);

    const mine = target();
    expect(await rejection(point(mine, "203.0.113.52", asTenant(uniq("intruder"))))).toMatchObject({ code: 422 });
    expect(await atProvider(mine.fqdn)).toEqual([]);
    expect((await point(mine, "203.0.113.52", asTenant(mine.tenant_id))).dns_record.status).toBe("pointed");

    // Once reverted, the name is free for another deployment.
    await revert(t);
    expect((await point(other, "203.0.113.51")).dns_record).toMatchObject({ deployment_id: other.deployment_id, created_by_us: true });
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["203.0.113.51"]);
  });

  test("invalid input is 422", async () => {
    const t = target();
    for (const bad of [{ ipv4: "300.1.1.1" }, { ipv4: "::1" }, { slug: "Bad_Slug" }, { deployment_id: "x" }]) {
      const e = await rejection(broker.call("v1.dns.point", { deployment_id: t.deployment_id, tenant_id: t.tenant_id, slug: t.slug, ipv4: "203.0.113.1", ...bad }, asAdmin));
      expect(e).toMatchObject({ code: 422 });
    }
    expect(await atProvider(t.fqdn)).toEqual([]);
  });
});

describe("revert", () => {
  test("after an update it restores the old address at the provider; a second revert does nothing", async () => {
    const t = target();
    const id = (await point(t, "203.0.113.60")).dns_record.provider_record_id;
    await point(t, "203.0.113.61");
    const first = await revert(t);
    expect(first).toMatchObject({ changed: true, dns_record: { status: "reverted" } });
    expect((await atProvider(t.fqdn)).map((r) => [r.id, r.data])).toEqual([[id, "203.0.113.60"]]);

    const updates = (await simState()).requests["domains.records.update"];
    const second = await revert(t);
    expect(second).toMatchObject({ changed: false, dns_record: { status: "reverted" } });
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["203.0.113.60"]);
    expect((await simState()).requests["domains.records.update"]).toBe(updates);
  });

  test("after a create it deletes the record at the provider; twice is a no-op", async () => {
    const t = target();
    await point(t, "203.0.113.70");
    expect(await atProvider(t.fqdn)).toHaveLength(1);
    expect((await revert(t)).changed).toBe(true);
    expect(await atProvider(t.fqdn)).toEqual([]);
    const deletes = (await simState()).requests["domains.records.delete"];
    expect((await revert(t)).changed).toBe(false);
    expect((await simState()).requests["domains.records.delete"]).toBe(deletes);
    const { rows } = await pg.query("select status from dns_records where deployment_id = $1", [t.deployment_id]);
    expect(rows).toEqual([{ status: "reverted" }]);
  });

  test("a record already gone at the provider counts as reverted", async () => {
    const t = target();
    const { dns_record } = await point(t, "203.0.113.80");
    expect((await doApi("DELETE", `/domains/${DOMAIN}/records/${dns_record.provider_record_id}`)).status).toBe(204);
    expect(await revert(t)).toMatchObject({ changed: true, dns_record: { status: "reverted" } });
    expect(await atProvider(t.fqdn)).toEqual([]);
  });

  test("a record someone else changed since is left alone", async () => {
    const t = target();
    const { dns_record } = await point(t, "203.0.113.90");
    await doApi("PATCH", `/domains/${DOMAIN}/records/${dns_record.provider_record_id}`, { data: "198.51.100.90" });
    expect((await revert(t)).dns_record.status).toBe("reverted");
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["198.51.100.90"]);
  });

  test("pointing again after a revert works, and a deployment never pointed reverts to nothing", async () => {
    const t = target();
    await point(t, "203.0.113.95");
    await revert(t);
    expect((await point(t, "203.0.113.96")).dns_record).toMatchObject({ status: "pointed", created_by_us: true, data: "203.0.113.96" });
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["203.0.113.96"]);
    expect(await revert({ deployment_id: randomUUID() })).toEqual({ dns_record: null, changed: false });
  });

  test("a name freed by another deployment's revert is taken over in one upsert (the reverted row goes)", async () => {
    const first = target();
    await point(first, "203.0.113.97");
    const second = { ...first, deployment_id: randomUUID() };
    await expect(point(second, "203.0.113.98")).rejects.toMatchObject({ code: 409, type: "DNS_NAME_TAKEN" });
    await revert(first);
    expect((await point(second, "203.0.113.98")).dns_record).toMatchObject({ deployment_id: second.deployment_id, status: "pointed", data: "203.0.113.98" });
    const rows = (await pg.query("select deployment_id, status from dns_records where fqdn = $1", [first.fqdn])).rows;
    expect(rows).toEqual([{ deployment_id: second.deployment_id, status: "pointed" }]);
  });
});

describe("remove (decommission)", () => {
  const remove = (t: { deployment_id: string }, opts: object = asAdmin): Promise<any> => broker.call("v1.dns.remove", { deployment_id: t.deployment_id }, opts);

  test("deletes the record at the provider (found by name) and here; twice, or never pointed, is a no-op", async () => {
    const t = target();
    await point(t, "203.0.113.70");
    expect(await atProvider(t.fqdn)).toHaveLength(1);
    const first = await remove(t);
    expect(first).toMatchObject({ changed: true, dns_record: { fqdn: t.fqdn, data: "203.0.113.70" } });
    expect(await atProvider(t.fqdn)).toEqual([]);
    expect((await pg.query("select count(*)::int as n from dns_records where deployment_id = $1", [t.deployment_id])).rows[0].n).toBe(0);
    expect(await remove(t)).toEqual({ dns_record: null, changed: false });
    expect(await remove(target())).toEqual({ dns_record: null, changed: false });
    // The name is free again for a new point.
    await point(t, "203.0.113.71");
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["203.0.113.71"]);
  });

  test("a record already deleted at the provider is removed here all the same", async () => {
    const t = target();
    await point(t, "203.0.113.72");
    const [rec] = await atProvider(t.fqdn);
    expect((await doApi("DELETE", `/domains/${DOMAIN}/records/${rec.id}`)).status).toBe(204);
    expect((await remove(t)).changed).toBe(true);
    expect((await pg.query("select count(*)::int as n from dns_records where deployment_id = $1", [t.deployment_id])).rows[0].n).toBe(0);
  });

  test("internal: a tenant cannot call it", async () => {
    const t = target();
    await point(t, "203.0.113.73");
    expect(await rejection(remove(t, asTenant(t.tenant_id)))).toMatchObject({ code: 403 });
    expect(await atProvider(t.fqdn)).toHaveLength(1);
  });
});

describe("get and tenant scope", () => {
  test("another tenant's record is 404 to get and revert", async () => {
    const t = target();
    await point(t, "203.0.113.99");
    const b = asTenant(uniq("b"));
    expect(await rejection(broker.call("v1.dns.get", { deployment_id: t.deployment_id }, b))).toMatchObject({ code: 404, type: "NOT_FOUND" });
    expect(await rejection(revert(t, b))).toMatchObject({ code: 404, type: "NOT_FOUND" });
    expect((await atProvider(t.fqdn)).map((r) => r.data)).toEqual(["203.0.113.99"]);
    expect(await broker.call("v1.dns.get", { deployment_id: t.deployment_id }, asTenant(t.tenant_id))).toMatchObject({ dns_record: { fqdn: t.fqdn, status: "pointed" } });
    expect(await rejection(broker.call("v1.dns.get", { deployment_id: randomUUID() }, asAdmin))).toMatchObject({ code: 404 });
  });

  test("the zone follows settings.dnsDomain", async () => {
    const node = await startNode(["dns"], { settings: { dns: { doApiUrl: sim.url, dnsDomain: "Apps.Example.ORG." } } });
    try {
      const t = target();
      const { dns_record } = await node.call<any, any>("v1.dns.point", { deployment_id: t.deployment_id, tenant_id: t.tenant_id, slug: t.slug, ipv4: "203.0.113.7" }, asAdmin);
      expect(dns_record).toMatchObject({ domain: "apps.example.org", fqdn: `${t.slug}.${t.tenant_id}.apps.example.org` });
      expect((await simState()).domain_records.filter((r) => r.domain === "apps.example.org" && r.name === `${t.slug}.${t.tenant_id}`)).toHaveLength(1);
    } finally {
      await node.stop();
    }
  });
});
