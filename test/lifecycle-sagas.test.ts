import { Client } from "pg";
import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";
import { ensureBuilt, killAll, spawnNode, type NodeProcess } from "./processes";

/*
 * SPEC §2 "What a move does to the cloud and the subscription", end to end over real PostgreSQL, NATS and the
 * simulator: the gateway, deployments, subscriptions, inventory and dns run here; the saga engine runs in child
 * processes (dist/bin/start.js) so it can be absent (the start-request sweep), and killed with SIGKILL right
 * after a move commits.
 */

const DOMAIN = "apps.arcadia.test";
const FINAL = ["succeeded", "failed", "compensated", "compensation_failed"];

let sim: Simulator;
let gateway: ServiceBroker;
let base: string;
let ns: string;
let db: Client;
let operator: ReturnType<typeof client>;
let serial = 0;
let engine: NodeProcess | null = null;

function engineEnv(): Record<string, string> {
  return {
    SERVICES: "provisioning", TRANSPORTER: process.env.TEST_NATS_URL!, NAMESPACE: ns, DATABASE_URL: process.env.DATABASE_URL!,
    AUTH_JWT_SECRET: process.env.AUTH_JWT_SECRET!, DO_API_URL: sim.url, DO_TOKEN: "test", DNS_DOMAIN: DOMAIN, LOG_LEVEL: "warn",
    PROVISION_LEASE_MS: "2000", PROVISION_SWEEP_MS: "300", PROVISION_POLL_MS: "50", PROVISION_BACKOFF_MS: "100",
    PROVISION_STEP_MAX_ATTEMPTS: "6", PROVISION_ACTIVE_TIMEOUT_MS: "10000", COMPENSATION_ACK_TIMEOUT_MS: "3000", COMPENSATION_MAX_ATTEMPTS: "10",
  };
}
async function startEngine(): Promise<NodeProcess> {
  const id = `lc-prov-${++serial}-${uniq("p")}`;
  const p = spawnNode(id, engineEnv());
  await waitFor(async () => {
    if (!p.alive()) throw new Error(`${id} exited early:\n${p.output()}`);
    return gateway.registry.services.has("v1.provisioning", id);
  }, { timeoutMs: 30_000, what: `${id} to join the cluster` });
  return p;
}
async function crashEngine() {
  if (!engine) return;
  expect(await engine.kill9()).toBe("SIGKILL");
  gateway.registry.nodes.disconnected(engine.id, true);
  engine = null;
}

beforeAll(async () => {
  await ensureBuilt();
  sim = await startSimulator({ port: 0, activeAfterMs: 200, rateLimit: 1_000_000 });
  ns = newNamespace();
  const provider = { doApiUrl: sim.url, doToken: "test", doMaxRetries: 0, doBackoffMs: 5 };
  gateway = await startNode(["api", "deployments", "subscriptions", "inventory", "dns"], {
    nats: ns,
    nodeID: "lc-gateway",
    settings: { inventory: provider, dns: { ...provider, dnsDomain: DOMAIN }, deployments: { sagaRequestSweepMs: 300, sagaStartTimeoutMs: 2000 } },
  });
  base = apiUrl(gateway);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
}, 120_000);
afterAll(async () => {
  await killAll();
  await db?.end();
  await gateway?.stop();
  await sim?.close();
}, 30_000);

// ---- views: the provider, the API, the database --------------------------------------------------------

const simState = async () => (await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as { droplets: any[]; domain_records: any[] };
const dropletsOf = async (deploymentId: string) => (await simState()).droplets.filter((d) => d.tags.includes(`deployment-${deploymentId}`));
const recordsFor = async (fqdn: string) => (await simState()).domain_records.filter((r) => `${r.name}.${r.domain}` === fqdn);
const inventoryOf = async (deploymentId: string) => (await operator.get(`/inventory?deployment_id=${deploymentId}&include_destroyed=true`)).body.items;
const sagaStatus = async (id: string) => (await operator.get(`/sagas/${id}`)).body?.saga?.status;
const requestRow = async (id: string) => (await db.query("select started_at, attempts from deployment_saga_requests where id = $1", [id])).rows[0];

interface Provisioned {
  api: ReturnType<typeof client>;
  tenant: string;
  id: string;
  fqdn: string;
}
async function provisioned(): Promise<Provisioned> {
  const tenant = uniq("lcs");
  const api = client(base, await token({ tenant, sub: "pat" }));
  const slug = uniq("app");
  const res = await api.post("/deployments", { slug, provision: true });
  expect(res.status).toBe(202);
  const id = res.body.deployment.id;
  await finished(res.body.saga.id, "succeeded");
  expect((await api.post(`/deployments/${id}/subscribe`, { plan_code: "studio" })).status).toBe(201);
  return { api, tenant, id, fqdn: `${slug}.${tenant}.${DOMAIN}` };
}
async function finished(sagaId: string, status = "succeeded", timeoutMs = 40_000) {
  const got = await waitFor(async () => {
    const s = await sagaStatus(sagaId);
    return FINAL.includes(s) && s;
  }, { timeoutMs, what: `saga ${sagaId} to finish` });
  expect(got).toBe(status);
}

/** SPEC §2 table, per state: droplet status at the provider, runtime, inventory status, subscription status. */
const TABLE: Record<string, { droplet: string; runtime: string; inventory: string; subscription: string }> = {
  active: { droplet: "active", runtime: "running", inventory: "active", subscription: "active" },
  trial: { droplet: "active", runtime: "running", inventory: "active", subscription: "active" },
  past_due: { droplet: "active", runtime: "running", inventory: "active", subscription: "active" },
  paused: { droplet: "off", runtime: "stopped", inventory: "off", subscription: "paused" },
  suspended: { droplet: "off", runtime: "stopped", inventory: "off", subscription: "active" },
  cancelled: { droplet: "off", runtime: "stopped", inventory: "off", subscription: "cancelled" },
};
async function expectInLine(p: Provisioned, state: string) {
  const view = async () => (await p.api.get(`/deployments/${p.id}`)).body;
  if (state === "archived") {
    await waitFor(async () => (await view()).subscription?.status === "cancelled" && (await view()).deployment.runtime.status === "destroyed", { timeoutMs: 20_000, what: "archived in line" });
    expect(await dropletsOf(p.id)).toEqual([]);
    expect(await recordsFor(p.fqdn)).toEqual([]);
    expect((await view()).deployment.runtime).toEqual({ status: "destroyed", droplet_id: null, ipv4: null, hostname: null });
    const inv = await inventoryOf(p.id);
    expect(inv.length).toBeGreaterThan(0);
    for (const r of inv) expect(r.destroyed_at).not.toBeNull();
    return;
  }
  const want = TABLE[state];
  await waitFor(async () => {
    const v = await view();
    return v.deployment.state === state && v.deployment.runtime.status === want.runtime && v.subscription?.status === want.subscription;
  }, { timeoutMs: 20_000, what: `${p.id} in line with ${state}` });
  const droplets = await dropletsOf(p.id);
  expect(droplets.map((d) => d.status)).toEqual([want.droplet]);
  const records = await recordsFor(p.fqdn);
  expect(records).toHaveLength(1);
  expect(records[0].data).toBe(droplets[0].networks.v4.find((n: any) => n.type === "public").ip_address);
  const live = (await inventoryOf(p.id)).filter((r: any) => !r.destroyed_at);
  expect(live.map((r: any) => r.status)).toEqual([want.inventory]);
  const v = await view();
  expect(v.deployment.runtime).toMatchObject({ droplet_id: droplets[0].id, ipv4: records[0].data });
}
async function move(p: Provisioned, c: ReturnType<typeof client>, to: string) {
  const res = await c.post(`/deployments/${p.id}/transition`, { to_state: to });
  expect(res.status).toBe(200);
  if (res.body.saga) await finished(res.body.saga.id);
  return res.body;
}

// ---- the tests -------------------------------------------------------------------------------------------

describe("lifecycle sagas (SPEC §2, §7)", () => {
  test("with no engine up a provisioning create answers 202 and stays provisioning; once the engine starts, the sweep starts its saga and it ends active", async () => {
    expect(engine).toBeNull();
    const api = client(base, await token({ tenant: uniq("sweep") }));
    const res = await api.post("/deployments", { slug: uniq("app"), provision: true });
    expect(res.status).toBe(202);
    expect(res.body.deployment.state).toBe("provisioning");
    const sagaId = res.body.saga.id;
    await waitFor(async () => (await requestRow(sagaId)).attempts >= 2, { what: "the sweep to re-send the start" });
    expect((await requestRow(sagaId)).started_at).toBeNull();
    expect((await api.get(`/deployments/${res.body.deployment.id}`)).body.deployment.state).toBe("provisioning");
    engine = await startEngine();
    await finished(sagaId);
    expect((await requestRow(sagaId)).started_at).not.toBeNull();
    const d = (await api.get(`/deployments/${res.body.deployment.id}`)).body.deployment;
    expect(d).toMatchObject({ state: "active", runtime: { status: "running" } });
    expect(await dropletsOf(d.id)).toHaveLength(1);
  }, 120_000);

  test("after each move of the table: droplet, DNS record, inventory row, runtime and subscription as SPEC §2 says; archive leaves nothing", async () => {
    const p = await provisioned();
    await expectInLine(p, "active");
    await move(p, p.api, "paused");
    await expectInLine(p, "paused");
    await move(p, p.api, "active");
    await expectInLine(p, "active");
    await move(p, operator, "past_due");
    await expectInLine(p, "past_due");
    await move(p, operator, "suspended");
    await expectInLine(p, "suspended");
    await move(p, operator, "active");
    await expectInLine(p, "active");
    await move(p, p.api, "cancelled");
    await expectInLine(p, "cancelled");
    await move(p, p.api, "active");
    await expectInLine(p, "active");
    await move(p, p.api, "cancelled");
    const archived = await move(p, p.api, "archived");
    expect(archived.saga).toMatchObject({ kind: "decommission" });
    await expectInLine(p, "archived");
  }, 240_000);

  test("DELETE of a running deployment: 202 with the decommission saga, nothing left at the provider; DELETE again is 200", async () => {
    const p = await provisioned();
    const tok = await token({ tenant: p.tenant });
    const del = await fetch(`${base}/deployments/${p.id}`, { method: "DELETE", headers: { authorization: `Bearer ${tok}` } });
    expect(del.status).toBe(202);
    const body: any = await del.json();
    expect(body.deployment).toMatchObject({ state: "archived", runtime: { status: "destroying" } });
    await finished(body.saga.id);
    await expectInLine(p, "archived");
    const again = await fetch(`${base}/deployments/${p.id}`, { method: "DELETE", headers: { authorization: `Bearer ${tok}` } });
    expect(again.status).toBe(200);
    expect(((await again.json()) as any).saga).toBeNull();
  }, 120_000);

  test("a pause and a resume sent back to back end with the droplet running", async () => {
    const p = await provisioned();
    const pause = await p.api.post(`/deployments/${p.id}/transition`, { to_state: "paused" });
    const resume = await p.api.post(`/deployments/${p.id}/transition`, { to_state: "active" });
    expect([pause.body.saga?.kind, resume.body.saga?.kind]).toEqual(["power_off", "power_on"]);
    await finished(pause.body.saga.id);
    await finished(resume.body.saga.id);
    await expectInLine(p, "active");
  }, 120_000);

  test("a kill -9 of the engine right after a move commits ends in line with the state", async () => {
    const p = await provisioned();
    // The engine dies before the move: its start cannot be answered, the move commits with its request.
    await crashEngine();
    const res = await p.api.post(`/deployments/${p.id}/transition`, { to_state: "paused" });
    expect(res.status).toBe(200);
    expect(res.body.deployment.runtime.status).toBe("stopping");
    expect((await requestRow(res.body.saga.id)).started_at).toBeNull();
    engine = await startEngine();
    await finished(res.body.saga.id);
    await expectInLine(p, "paused");
    // And right after the answer: the saga may or may not have started; either way it ends in line.
    const resume = await p.api.post(`/deployments/${p.id}/transition`, { to_state: "active" });
    await crashEngine();
    engine = await startEngine();
    await finished(resume.body.saga.id);
    await expectInLine(p, "active");
  }, 180_000);

  test("provisioning a plain deployment and a rolled-back one through POST /deployments/:id/provision", async () => {
    const tenant = uniq("reprov");
    const api = client(base, await token({ tenant }));
    const plain = (await api.post("/deployments", { slug: uniq("app") })).body.deployment;
    const res = await api.post(`/deployments/${plain.id}/provision`);
    expect(res.status).toBe(202);
    await finished(res.body.saga.id);
    expect((await api.get(`/deployments/${plain.id}`)).body.deployment).toMatchObject({ state: "active", runtime: { status: "running" } });
    expect((await api.post(`/deployments/${plain.id}/provision`)).body.type).toBe("ALREADY_PROVISIONED");

    await fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ operation: "droplets.create", mode: "error", status: 422, count: -1 }) });
    const failed = await api.post("/deployments", { slug: uniq("app"), provision: true });
    await finished(failed.body.saga.id, "compensated");
    const rolledBack = (await api.get(`/deployments/${failed.body.deployment.id}`)).body.deployment;
    expect(rolledBack).toMatchObject({ state: "cancelled", runtime: { status: "none" } });
    await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
    const again = await api.post(`/deployments/${rolledBack.id}/provision`);
    expect(again.status).toBe(202);
    await finished(again.body.saga.id);
    expect((await api.get(`/deployments/${rolledBack.id}`)).body.deployment).toMatchObject({ state: "active", runtime: { status: "running" } });
    expect(await dropletsOf(rolledBack.id)).toHaveLength(1);
  }, 180_000);
});
