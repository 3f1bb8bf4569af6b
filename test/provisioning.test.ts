import type { ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { STEPS } from "../services/provisioning.service";
import { actionFaults, apiUrl, client, startNode, token, uniq, waitFor } from "./helpers";

const DOMAIN = "apps.arcadia.test";
const STEP_NAMES = ["mark_deployment_provisioning", "create_droplet", "wait_droplet_active", "register_inventory", "link_deployment_resource", "point_deployment_dns", "activate_deployment"];
const TERMINAL = ["succeeded", "compensated", "compensation_failed"];

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let operator: ReturnType<typeof client>;
const faults = actionFaults();
const sagaEvents: { event: string; payload: any }[] = [];

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 100 });
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    middlewares: [faults.middleware],
    settings: {
      inventory: provider,
      dns: { ...provider, dnsDomain: DOMAIN },
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 1500, stepMaxAttempts: 3, compensationMaxAttempts: 4, compensationAckTimeoutMs: 3000, sweepMs: 300, leaseMs: 3000 },
    },
  });
  broker.createService({
    name: "saga-watcher",
    events: {
      "provisioning.**"(ctx: any) {
        sagaEvents.push({ event: ctx.eventName, payload: ctx.params });
      },
    },
  });
  base = apiUrl(broker);
  operator = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
});
afterAll(async () => {
  await broker.stop();
  await sim.close();
});
afterEach(async () => {
  faults.clear();
  await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
});

const simFault = (body: object) => fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) }).then((r) => expect(r.status).toBe(201));
const simState = async () => (await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as { droplets: any[]; domain_records: any[] };
const dropletsTagged = async (tag: string) => (await simState()).droplets.filter((d) => d.tags.includes(tag));
const recordsFor = async (fqdn: string) => (await simState()).domain_records.filter((r) => `${r.name}.${r.domain}` === fqdn);

async function provision() {
  const tenant = uniq("prov");
  const api = client(base, await token({ tenant, sub: "pat" }));
  const slug = uniq("app");
  const res = await api.post("/deployments", { slug, provision: true });
  expect(res.status).toBe(202);
  expect(res.body.deployment.state).toBe("provisioning");
  expect(res.body.saga).toMatchObject({ deployment_id: res.body.deployment.id, status: "running" });
  expect(res.body.saga.steps.map((s: any) => s.name)).toEqual(STEP_NAMES);
  return { api, tenant, slug, deployment: res.body.deployment, sagaId: res.body.saga.id as string, fqdn: `${slug}.${tenant}.${DOMAIN}` };
}

async function settled(api: ReturnType<typeof client>, sagaId: string, timeoutMs = 20_000) {
  return waitFor(async () => {
    const res = await api.get(`/sagas/${sagaId}`);
    expect(res.status).toBe(200);
    return TERMINAL.includes(res.body.saga.status) ? res.body.saga : null;
  }, { timeoutMs, what: `saga ${sagaId} to finish` });
}

const stepsOf = (saga: any) => Object.fromEntries(saga.steps.map((s: any) => [s.name, s]));

async function expectRolledBack(p: Awaited<ReturnType<typeof provision>>, saga: any) {
  expect(saga.status).toBe("compensated");
  expect(saga.finished_at).not.toBeNull();
  expect(saga.error).toEqual(expect.any(String));
  const got = (await p.api.get(`/deployments/${p.deployment.id}`)).body;
  expect(got.deployment.state).toBe("cancelled");
  // The saga's moves are recorded with the user who asked for the provisioning.
  expect(got.events.at(-1)).toMatchObject({ from_state: "provisioning", to_state: "cancelled", reason: "provisioning_failed", actor: "pat" });
  expect(got.saga.id).toBe(saga.id);
  expect(await dropletsTagged(`saga-${saga.id}`)).toEqual([]);
  expect(await recordsFor(p.fqdn)).toEqual([]);
  const inventory = (await operator.get(`/inventory?deployment_id=${p.deployment.id}&include_destroyed=true`)).body.items;
  for (const r of inventory) expect(r.status).toBe("destroyed");
  const all = (await operator.get(`/inventory?saga_id=${saga.id}&include_destroyed=true`)).body.items;
  for (const r of all) {
    expect(r.status).toBe("destroyed");
    expect(r.deployment_id).toBeNull();
  }
  return stepsOf(saga);
}

test("the step list is the SPEC's, each naming its forward action", () => {
  expect(STEPS.map((s) => s.name)).toEqual(STEP_NAMES);
  for (const s of STEPS) expect(s.forward).toMatch(/^v1\.\w+\.\w+$/);
});

test("happy path: active, one droplet, one linked inventory row, one A record with the droplet's IP", async () => {
  const p = await provision();
  const saga = await settled(p.api, p.sagaId);
  expect(saga.status).toBe("succeeded");
  for (const s of saga.steps) {
    expect(s.status).toBe("succeeded");
    expect(s.attempts).toBeGreaterThanOrEqual(1);
    expect(s.started_at).not.toBeNull();
    expect(s.finished_at).not.toBeNull();
  }
  const steps = stepsOf(saga);
  const droplets = await dropletsTagged(`saga-${saga.id}`);
  expect(droplets).toHaveLength(1);
  expect(steps.create_droplet.output.droplet_id).toBe(droplets[0].id);
  // Tagged by its saga and its deployment; with no size or image in the input, the DO_DEFAULT_* ones.
  expect(droplets[0].tags).toEqual(expect.arrayContaining([`saga-${saga.id}`, `deployment-${p.deployment.id}`]));
  expect(droplets[0]).toMatchObject({ size_slug: "s-1vcpu-1gb" });
  expect(saga.kind).toBe("provision");
  const ip = droplets[0].networks.v4.find((n: any) => n.type === "public").ip_address;
  expect(steps.wait_droplet_active.output.ipv4).toBe(ip);
  const records = await recordsFor(p.fqdn);
  expect(records).toHaveLength(1);
  expect(records[0]).toMatchObject({ type: "A", data: ip });
  expect(steps.point_deployment_dns.output).toMatchObject({ fqdn: p.fqdn, record_id: records[0].id, ipv4: ip });

  const got = (await p.api.get(`/deployments/${p.deployment.id}`)).body;
  expect(got.deployment.state).toBe("active");
  expect(got.events.map((e: any) => [e.to_state, e.actor])).toEqual([["provisioning", "pat"], ["active", "pat"]]);
  expect(got.saga).toMatchObject({ id: saga.id, status: "succeeded" });
  const inv = (await p.api.get(`/inventory?deployment_id=${p.deployment.id}`)).body.items;
  expect(inv).toHaveLength(1);
  expect(inv[0]).toMatchObject({ external_id: String(droplets[0].id), ipv4: ip, deployment_id: p.deployment.id, tenant_id: p.tenant, status: "active", monthly_cost_cents: 600 });

  const mine = sagaEvents.filter((e) => e.payload.saga_id === saga.id).map((e) => e.event);
  expect(mine[0]).toBe("provisioning.saga.started");
  expect(mine).toContain("provisioning.step.succeeded");
  expect(mine.at(-1)).toBe("provisioning.saga.succeeded");
  // Another tenant sees neither the saga nor the deployment.
  const stranger = client(base, await token({ tenant: uniq("x") }));
  expect((await stranger.get(`/sagas/${saga.id}`)).status).toBe(404);
});

test("a lost create response is settled by tag: one droplet, saga succeeds", async () => {
  await simFault({ operation: "droplets.create", mode: "lose_response" });
  const p = await provision();
  const saga = await settled(p.api, p.sagaId);
  expect(saga.status).toBe("succeeded");
  expect(stepsOf(saga).create_droplet.output.adopted).toBe(true);
  expect(await dropletsTagged(`saga-${saga.id}`)).toHaveLength(1);
});

describe("a failure at each step rolls everything back", () => {
  test("mark_deployment_provisioning", async () => {
    faults.fail("v1.deployments.markProvisioning", () => new Errors.MoleculerError("deployments refused", 409, "NOT_PROVISIONING"));
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.mark_deployment_provisioning).toMatchObject({ status: "failed", error: expect.stringContaining("deployments refused") });
    for (const n of STEP_NAMES.slice(1)) expect(steps[n].status).toBe("skipped");
  });

  test("create_droplet: the provider refuses", async () => {
    await simFault({ operation: "droplets.create", mode: "error", status: 422, count: -1 });
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.create_droplet.status).toBe("failed");
    expect(steps.create_droplet.attempts).toBe(1);
    expect(steps.mark_deployment_provisioning.status).toBe("compensated");
    expect(steps.wait_droplet_active.status).toBe("skipped");
  });

  test("create_droplet: response lost, then a later step fails — the droplet found by tag is destroyed", async () => {
    await simFault({ operation: "droplets.create", mode: "lose_response" });
    await simFault({ operation: "domains.records.create", mode: "error", status: 422, count: -1 });
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.create_droplet).toMatchObject({ status: "compensated", output: expect.objectContaining({ adopted: true }) });
    expect(steps.point_deployment_dns.status).toBe("failed");
  });

  test("wait_droplet_active: a droplet that never turns active times out", async () => {
    await simFault({ operation: "droplets.create", mode: "never_active", count: -1 });
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.wait_droplet_active.status).toBe("failed");
    expect(steps.create_droplet.status).toBe("compensated");
    expect(steps.register_inventory.status).toBe("skipped");
  });

  test("register_inventory", async () => {
    faults.fail("v1.inventory.register", () => new Errors.MoleculerError("inventory database down", 500, "DB_DOWN"));
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.register_inventory.status).toBe("failed");
    expect(steps.wait_droplet_active.status).toBe("compensated");
    expect(steps.create_droplet.status).toBe("compensated");
  });

  test("link_deployment_resource", async () => {
    faults.fail("v1.inventory.link", () => new Errors.MoleculerError("link refused", 409, "ALREADY_LINKED"));
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.link_deployment_resource.status).toBe("failed");
    expect(steps.register_inventory.status).toBe("compensated");
  });

  test("point_deployment_dns: the provider keeps failing (transient, retried, then failed)", async () => {
    await simFault({ operation: "domains.records.create", mode: "error", status: 500, count: -1 });
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.point_deployment_dns.status).toBe("failed");
    expect(steps.point_deployment_dns.attempts).toBe(3);
    expect(steps.link_deployment_resource.status).toBe("compensated");
  });

  test("activate_deployment: DNS pointed, then activation fails — the record is removed again", async () => {
    faults.fail("v1.deployments.activateProvisioned", () => new Errors.MoleculerError("activation refused", 409, "REFUSED"));
    const p = await provision();
    const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
    expect(steps.activate_deployment.status).toBe("failed");
    expect(steps.point_deployment_dns.status).toBe("compensated");
    expect(steps.point_deployment_dns.output.record_id).toEqual(expect.any(Number));
  });
});

test("a compensation that fails twice then succeeds", async () => {
  await simFault({ operation: "droplets.create", mode: "never_active", count: -1 });
  await simFault({ operation: "droplets.delete", mode: "error", status: 500, count: 2 });
  const p = await provision();
  const steps = await expectRolledBack(p, await settled(p.api, p.sagaId));
  expect(steps.create_droplet).toMatchObject({ status: "compensated", compensation_attempts: 3 });
});

test("a compensation that keeps failing ends compensation_failed; an operator retries it after the fault clears", async () => {
  await simFault({ operation: "droplets.create", mode: "never_active", count: -1 });
  await simFault({ operation: "droplets.delete", mode: "error", status: 500, count: -1 });
  const p = await provision();
  const failed = await settled(p.api, p.sagaId);
  expect(failed.status).toBe("compensation_failed");
  expect(stepsOf(failed).create_droplet).toMatchObject({ status: "compensation_failed", compensation_attempts: 4, compensation_error: expect.any(String) });
  expect(await dropletsTagged(`saga-${failed.id}`)).toHaveLength(1);
  expect((await p.api.get(`/deployments/${p.deployment.id}`)).body.deployment.state).toBe("provisioning");

  expect((await p.api.post(`/sagas/${failed.id}/retry`)).status).toBe(403);
  await fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" });
  const retried = await operator.post(`/sagas/${failed.id}/retry`);
  expect(retried.status).toBe(202);
  expect(retried.body.saga.status).toBe("compensating");
  await expectRolledBack(p, await settled(p.api, p.sagaId));
  expect((await operator.post(`/sagas/${failed.id}/retry`)).status).toBe(409);
});

test("/ready checks the database, the transporter and the provider", async () => {
  const ready = await client(base).get("/ready");
  // Every check of this cluster passes; billing (routed to by /billing/*) is not part of it, so it is not ready.
  expect(ready.status).toBe(503);
  expect(ready.body).toMatchObject({ status: "unavailable", checks: { database: "ok", transporter: "ok", provider: "ok", "v1.billing": "not discovered" } });

  // A cluster whose provider does not answer is not ready.
  const closed = await startNode(["api", "inventory"], { settings: { inventory: { doApiUrl: "http://127.0.0.1:9", doMaxRetries: 0 } } });
  try {
    const res = await client(apiUrl(closed)).get("/ready");
    expect(res.status).toBe(503);
    expect(res.body.status).toBe("unavailable");
    expect(res.body.checks).toMatchObject({ database: "ok", transporter: "ok", provider: expect.stringMatching(/^failed: /) });
  } finally {
    await closed.stop();
  }
});
