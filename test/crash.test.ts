import { randomUUID } from "node:crypto";
import { Client } from "pg";
import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, asAdmin, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";
import { ensureBuilt, killAll, spawnNode, type NodeProcess } from "./processes";

/*
 * SPEC §6 "durable": a saga survives the crash of its node. The gateway, deployments, subscriptions, inventory
 * and dns run here (they stay up); the provisioning service runs in child processes (`dist/bin/start.js`) over
 * the machine's NATS and PostgreSQL, so it can be killed with SIGKILL mid-saga and resumed by another process.
 */

const DOMAIN = "apps.arcadia.test";
const LEASE_MS = 2000;
const FINAL = ["succeeded", "compensated", "compensation_failed"];

let sim: Simulator;
let gateway: ServiceBroker;
let base: string;
let ns: string;
let db: Client;
let operator: ReturnType<typeof client>;
let serial = 0;
/** The provisioning process the next crash scenario kills (each scenario starts its successor). */
let current: NodeProcess;

/** Which nodes sent step events for each saga (an event's ctx.nodeID is its sender). */
const stepSenders = new Map<string, Set<string>>();

/** Holds the first call of v1.deployments.activateProvisioned for an armed deployment until released. */
const gates = new Map<string, { entered: boolean; release: () => void; opened: Promise<void> }>();
function armGate(deploymentId: string) {
  let release!: () => void;
  const opened = new Promise<void>((r) => (release = r));
  const gate = { entered: false, release, opened };
  gates.set(deploymentId, gate);
  return gate;
}
const gateMiddleware = {
  name: "ActivationGate",
  localAction(next: (ctx: any) => Promise<unknown>, action: { name: string }) {
    if (action.name !== "v1.deployments.activateProvisioned") return next;
    return async (ctx: any) => {
      const gate = gates.get(ctx.params.id);
      if (gate && !gate.entered) {
        gate.entered = true;
        await gate.opened;
      }
      return next(ctx);
    };
  },
};

beforeAll(async () => {
  await ensureBuilt();
  sim = await startSimulator({ port: 0, activeAfterMs: 300, rateLimit: 1_000_000 });
  ns = newNamespace();
  const provider = { doApiUrl: sim.url, doToken: "test", doMaxRetries: 0, doBackoffMs: 5 };
  gateway = await startNode(["api", "deployments", "subscriptions", "inventory", "dns"], {
    nats: ns,
    nodeID: "crash-gateway",
    middlewares: [gateMiddleware],
    settings: { inventory: provider, dns: { ...provider, dnsDomain: DOMAIN } },
  });
  gateway.createService({
    name: "saga-watcher",
    events: {
      "provisioning.step.*"(ctx: any) {
        const set = stepSenders.get(ctx.params.saga_id) ?? new Set<string>();
        set.add(ctx.nodeID);
        stepSenders.set(ctx.params.saga_id, set);
      },
    },
  });
  base = apiUrl(gateway);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  current = await startProvisioning();
}, 90_000);

afterAll(async () => {
  await killAll();
  for (const g of gates.values()) g.release();
  await db?.end();
  await gateway?.stop();
  await sim?.close();
}, 30_000);

afterEach(async () => {
  await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
});

// ---- processes -------------------------------------------------------------------------------------------

function provisioningEnv(): Record<string, string> {
  return {
    SERVICES: "provisioning",
    TRANSPORTER: process.env.TEST_NATS_URL!,
    NAMESPACE: ns,
    DATABASE_URL: process.env.DATABASE_URL!,
    AUTH_JWT_SECRET: process.env.AUTH_JWT_SECRET!,
    DO_API_URL: sim.url,
    DO_TOKEN: "test",
    DNS_DOMAIN: DOMAIN,
    LOG_LEVEL: "warn",
    PROVISION_LEASE_MS: String(LEASE_MS),
    PROVISION_SWEEP_MS: "300",
    PROVISION_POLL_MS: "50",
    PROVISION_BACKOFF_MS: "200",
    PROVISION_STEP_MAX_ATTEMPTS: "6",
    PROVISION_ACTIVE_TIMEOUT_MS: "6000",
    COMPENSATION_ACK_TIMEOUT_MS: "3000",
    COMPENSATION_MAX_ATTEMPTS: "10",
  };
}

/** A provisioning node in its own process; resolves once the gateway's registry lists it. */
async function startProvisioning(): Promise<NodeProcess> {
  const id = `prov-${++serial}-${uniq("p")}`;
  const p = spawnNode(id, provisioningEnv());
  await waitFor(
    async () => {
      if (!p.alive()) throw new Error(`${id} exited early:\n${p.output()}`);
      return gateway.registry.services.has("v1.provisioning", id);
    },
    { timeoutMs: 20_000, what: `${id} to join the cluster` },
  );
  return p;
}

/** kill -9, then what the heartbeat timeout would do later: the cluster stops routing calls to the dead node. */
async function crash(p: NodeProcess) {
  expect(p.alive()).toBe(true);
  expect(await p.kill9()).toBe("SIGKILL");
  gateway.registry.nodes.disconnected(p.id, true);
}

// ---- provider and database views -------------------------------------------------------------------------

const simFault = async (body: object) => {
  const r = await fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  expect(r.status).toBe(201);
};
type SimState = { droplets: any[]; domain_records: any[]; requests: Record<string, number> };
const simState = async () => (await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as SimState;
const requestsOf = async (op: string) => (await simState()).requests[op] ?? 0;
const dropletsTagged = async (tag: string) => (await simState()).droplets.filter((d) => d.tags.includes(tag));
const recordsFor = async (fqdn: string) => (await simState()).domain_records.filter((r) => `${r.name}.${r.domain}` === fqdn);

/** Reads the saga tables directly: the provisioning node answering the HTTP API may be the one just killed. */
async function stepRows(sagaId: string): Promise<{ name: string; status: string; attempts: number; output: any }[]> {
  return (await db.query("select name, status, attempts, output from saga_steps where saga_id = $1 order by idx", [sagaId])).rows;
}
async function step(sagaId: string, name: string) {
  return (await stepRows(sagaId)).find((s) => s.name === name)!;
}
async function sagaStatus(sagaId: string): Promise<string> {
  return (await db.query("select status from sagas where id = $1", [sagaId])).rows[0]?.status;
}

interface Provisioned {
  api: ReturnType<typeof client>;
  tenant: string;
  slug: string;
  deploymentId: string;
  sagaId: string;
  fqdn: string;
}
async function provision(tenant = uniq("crash")): Promise<Provisioned> {
  const api = client(base, await token({ tenant, sub: "pat" }));
  const slug = uniq("app");
  const res = await api.post("/deployments", { slug, provision: true });
  expect(res.status).toBe(202);
  expect(res.body.saga.status).toBe("running");
  return { api, tenant, slug, deploymentId: res.body.deployment.id, sagaId: res.body.saga.id, fqdn: `${slug}.${tenant}.${DOMAIN}` };
}

async function settled(sagaId: string, timeoutMs = 20_000) {
  return waitFor(async () => FINAL.includes(await sagaStatus(sagaId)) && sagaStatus(sagaId), { timeoutMs, intervalMs: 50, what: `saga ${sagaId} to finish` });
}

/** The state SPEC §6 promises after the saga ends, read through the HTTP API of the surviving cluster. */
async function expectOutcome(p: Provisioned, outcome: "succeeded" | "compensated") {
  await settled(p.sagaId);
  const saga = (await p.api.get(`/sagas/${p.sagaId}`)).body.saga;
  expect(saga.status).toBe(outcome);
  const got = (await p.api.get(`/deployments/${p.deploymentId}`)).body;
  const droplets = await dropletsTagged(`saga-${p.sagaId}`);
  const records = await recordsFor(p.fqdn);
  if (outcome === "succeeded") {
    for (const s of saga.steps) expect(s.status).toBe("succeeded");
    expect(got.deployment.state).toBe("active");
    expect(got.events.map((e: any) => e.to_state)).toEqual(["provisioning", "active"]);
    expect(droplets).toHaveLength(1);
    const ip = droplets[0].networks.v4.find((n: any) => n.type === "public").ip_address;
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ type: "A", data: ip });
    const inv = (await operator.get(`/inventory?saga_id=${p.sagaId}&include_destroyed=true`)).body.items;
    expect(inv).toHaveLength(1);
    expect(inv[0]).toMatchObject({ external_id: String(droplets[0].id), deployment_id: p.deploymentId, status: "active" });
  } else {
    expect(got.deployment.state).toBe("cancelled");
    expect(droplets).toEqual([]);
    expect(records).toEqual([]);
    const inv = (await operator.get(`/inventory?saga_id=${p.sagaId}&include_destroyed=true`)).body.items;
    for (const r of inv) expect(r).toMatchObject({ status: "destroyed", deployment_id: null });
  }
  return Object.fromEntries(saga.steps.map((s: any) => [s.name, s]));
}

const crashed: { p: Provisioned; outcome: "succeeded" | "compensated" }[] = [];

// ---- 1. kill -9 mid-saga, another process resumes ---------------------------------------------------------

describe("kill -9 of the provisioning node mid-saga; another process resumes it", () => {
  test("(a) the droplet create was sent, its answer still pending: the resumed step finds the droplet by tag", async () => {
    const before = await requestsOf("droplets.create");
    await simFault({ operation: "droplets.create", mode: "delay", delay_ms: 1000 });
    const p = await provision();
    await waitFor(async () => (await requestsOf("droplets.create")) > before, { what: "the create to reach the provider" });
    expect((await step(p.sagaId, "create_droplet")).status).toBe("running");
    await crash(current);
    current = await startProvisioning();

    const steps = await expectOutcome(p, "succeeded");
    crashed.push({ p, outcome: "succeeded" });
    expect(steps.create_droplet).toMatchObject({ attempts: 2, output: expect.objectContaining({ adopted: true }) });
    expect(await requestsOf("droplets.create")).toBe(before + 1);
  });

  test("(b) waiting for active: the resumed wait picks the droplet up once it is active", async () => {
    await simFault({ operation: "droplets.create", mode: "never_active" });
    const p = await provision();
    await waitFor(async () => (await step(p.sagaId, "wait_droplet_active")).status === "running", { what: "wait_droplet_active to run" });
    await crash(current);
    const [droplet] = await dropletsTagged(`saga-${p.sagaId}`);
    const patched = await fetch(`${sim.url}/v2/_sim/droplets/${droplet.id}`, { method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify({ status: "active" }) });
    expect(patched.status).toBe(200);
    current = await startProvisioning();

    const steps = await expectOutcome(p, "succeeded");
    crashed.push({ p, outcome: "succeeded" });
    expect(steps.create_droplet.attempts).toBe(1);
    expect(steps.wait_droplet_active.attempts).toBe(2);
  });

  test("(b') waiting for active, and the droplet never gets there: the resumed saga times out and rolls back", async () => {
    await simFault({ operation: "droplets.create", mode: "never_active" });
    const p = await provision();
    await waitFor(async () => (await step(p.sagaId, "wait_droplet_active")).status === "running", { what: "wait_droplet_active to run" });
    await crash(current);
    current = await startProvisioning();

    const steps = await expectOutcome(p, "compensated");
    crashed.push({ p, outcome: "compensated" });
    expect(steps.wait_droplet_active.status).toBe("failed");
    expect(steps.create_droplet.status).toBe("compensated");
  });

  test("(c) the A record create was sent, its answer still pending: the resumed point adopts the record", async () => {
    const before = await requestsOf("domains.records.create");
    await simFault({ operation: "domains.records.create", mode: "delay", delay_ms: 1000 });
    const p = await provision();
    await waitFor(async () => (await requestsOf("domains.records.create")) > before, { timeoutMs: 10_000, what: "the record create to reach the provider" });
    await crash(current);
    current = await startProvisioning();

    const steps = await expectOutcome(p, "succeeded");
    crashed.push({ p, outcome: "succeeded" });
    expect(steps.point_deployment_dns.attempts).toBe(2);
    expect(await requestsOf("domains.records.create")).toBe(before + 1);
  });

  test("(c') DNS pointed, activation in flight: the resumed saga activates once", async () => {
    const tenant = uniq("crash");
    // The deployment id is only known from the response; the gate is armed for it before the saga reaches activation.
    const p = await provision(tenant);
    const gate = armGate(p.deploymentId);
    await waitFor(async () => (await step(p.sagaId, "point_deployment_dns")).status === "succeeded" && gate.entered, { timeoutMs: 10_000, what: "DNS pointed and activation held" });
    expect((await step(p.sagaId, "activate_deployment")).status).toBe("running");
    await crash(current);
    gate.release(); // the dead node's activation call completes here; its answer goes nowhere
    current = await startProvisioning();

    const steps = await expectOutcome(p, "succeeded");
    crashed.push({ p, outcome: "succeeded" });
    expect(steps.point_deployment_dns.attempts).toBe(1);
    expect(steps.activate_deployment.attempts).toBe(2);
  });

  test("(d) mid-compensation (droplet delete in flight): the resumed saga finishes the rollback", async () => {
    await simFault({ operation: "domains.records.create", mode: "error", status: 422 });
    await simFault({ operation: "droplets.delete", mode: "delay", delay_ms: 1000 });
    const before = await requestsOf("droplets.delete");
    const p = await provision();
    await waitFor(async () => (await requestsOf("droplets.delete")) > before, { timeoutMs: 10_000, what: "the droplet delete to reach the provider" });
    expect(await sagaStatus(p.sagaId)).toBe("compensating");
    await crash(current);
    current = await startProvisioning();

    const steps = await expectOutcome(p, "compensated");
    crashed.push({ p, outcome: "compensated" });
    expect(steps.point_deployment_dns.status).toBe("failed");
    expect(steps.create_droplet.status).toBe("compensated");
    expect(steps.mark_deployment_provisioning.status).toBe("compensated");
  });

  test("after the crashes: every saga succeeded or was fully rolled back; one droplet per active deployment, none otherwise, at most one A record per name", async () => {
    expect(crashed.length).toBe(6);
    const state = await simState();
    for (const { p, outcome } of crashed) {
      expect(await sagaStatus(p.sagaId)).toBe(outcome);
      const droplets = state.droplets.filter((d) => d.tags.includes(`saga-${p.sagaId}`));
      expect(droplets).toHaveLength(outcome === "succeeded" ? 1 : 0);
      expect(state.domain_records.filter((r) => `${r.name}.${r.domain}` === p.fqdn)).toHaveLength(outcome === "succeeded" ? 1 : 0);
      // Each resumed saga was driven by the killed node and then by its successor.
      expect(stepSenders.get(p.sagaId)?.size).toBe(2);
    }
    expectOneRecordPerName(state);
  });
});

test("(e) kill -9 during a power-off (the action sent, its end awaited): the resumed saga waits on that action and sends no other", async () => {
  const p = await provision();
  await expectOutcome(p, "succeeded");
  const [droplet] = await dropletsTagged(`saga-${p.sagaId}`);
  await simFault({ operation: "actions.get", mode: "delay", delay_ms: 1500, count: -1 });
  const id = randomUUID();
  const meta = asAdmin;
  const started = await gateway.call<any, any>("v1.provisioning.start", { id, kind: "power_off", deployment_id: p.deploymentId, tenant_id: p.tenant, input: {} }, meta);
  expect(started.saga).toMatchObject({ id, kind: "power_off" });
  await waitFor(async () => {
    const s = await step(id, "power_off_droplets");
    return s.status === "running" && s.output[`action_${droplet.id}`];
  }, { timeoutMs: 15_000, what: "the power-off action to be sent and recorded" });
  await crash(current);
  await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
  current = await startProvisioning();

  await settled(id);
  expect(await sagaStatus(id)).toBe("succeeded");
  expect((await step(id, "power_off_droplets")).attempts).toBe(2);
  expect((await simState()).droplets.find((d) => d.id === droplet.id).status).toBe("off");
  const { actions } = await gateway.call<any, any>("v1.inventory.dropletActions", { id: droplet.id }, meta);
  expect(actions.filter((a: any) => a.type === "power_off")).toHaveLength(1);
  const inv = (await operator.get(`/inventory?deployment_id=${p.deploymentId}`)).body.items;
  expect(inv.map((r: any) => r.status)).toEqual(["off"]);
}, 60_000);

function expectOneRecordPerName(state: SimState) {
  const byName = new Map<string, number>();
  for (const r of state.domain_records.filter((r) => r.type === "A")) byName.set(`${r.name}.${r.domain}`, (byName.get(`${r.name}.${r.domain}`) ?? 0) + 1);
  expect([...byName].filter(([, n]) => n > 1)).toEqual([]);
}

// ---- 2. two provisioning nodes, 50 sagas ---------------------------------------------------------------

test("two provisioning processes drive 50 sagas together, each saga by exactly one of them, each step once", async () => {
  const second = await startProvisioning();
  const nodes = [current.id, second.id];
  // A slow provider: a few creates take longer than the lease. The node that sent them still owns their sagas.
  await simFault({ operation: "droplets.create", mode: "delay", delay_ms: LEASE_MS + 1500, count: 5 });
  const sagas: Provisioned[] = [];
  for (let batch = 0; batch < 5; batch++) {
    const tenant = uniq("pair");
    sagas.push(...(await Promise.all(Array.from({ length: 10 }, () => provision(tenant)))));
  }
  const ids = sagas.map((s) => s.sagaId);
  await waitFor(
    async () => {
      const open = (await db.query("select count(*)::int as n from sagas where id = any($1) and status not in ('succeeded','compensated','compensation_failed')", [ids])).rows[0].n;
      return open === 0;
    },
    { timeoutMs: 60_000, intervalMs: 200, what: "all 50 sagas to finish" },
  );
  expect(current.alive() && second.alive()).toBe(true);

  const statuses = (await db.query("select status, count(*)::int as n from sagas where id = any($1) group by status", [ids])).rows;
  expect(statuses).toEqual([{ status: "succeeded", n: 50 }]);
  const deployments = (await db.query("select state, count(*)::int as n from deployments where id = any($1) group by state", [sagas.map((s) => s.deploymentId)])).rows;
  expect(deployments).toEqual([{ state: "active", n: 50 }]);

  // At the provider: exactly one droplet per saga tag, exactly one A record per deployment name.
  const state = await simState();
  const dropletCounts = sagas.map((s) => state.droplets.filter((d) => d.tags.includes(`saga-${s.sagaId}`)).length);
  expect(dropletCounts.filter((n) => n !== 1)).toEqual([]);
  const recordCounts = sagas.map((s) => state.domain_records.filter((r) => `${r.name}.${r.domain}` === s.fqdn).length);
  expect(recordCounts.filter((n) => n !== 1)).toEqual([]);
  expectOneRecordPerName(state);

  // In the saga tables: every step ran once (a step driven twice, by a second node or a resumed one, shows attempts 2).
  const steps = (await db.query("select saga_id, name, status, attempts, error from saga_steps where saga_id = any($1) order by saga_id, idx", [ids])).rows;
  expect(steps).toHaveLength(50 * 7);
  expect(steps.filter((s) => s.status !== "succeeded" || s.attempts !== 1).map((s) => `${s.saga_id} ${s.name}: ${s.status}, attempts ${s.attempts}${s.error ? `, ${s.error}` : ""}`)).toEqual([]);

  // Every saga's step events came from one node, and both nodes drove some.
  const drivers = sagas.map((s) => [...(stepSenders.get(s.sagaId) ?? [])]);
  expect(drivers.filter((d) => d.length !== 1)).toEqual([]);
  for (const n of nodes) expect(drivers.some((d) => d[0] === n)).toBe(true);
}, 90_000);
