import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, client, startNode, token, uniq, waitFor } from "./helpers";

/* SPEC §3: a plan change whose new version has another droplet_size resizes the live droplet (resize saga). */

const TERMINAL = ["succeeded", "failed", "compensated", "compensation_failed"];
let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let op: ReturnType<typeof client>;

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 50, actionMs: 400 } as any);
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning", "billing"], {
    settings: {
      inventory: { ...provider, driftCheckMs: 0 },
      dns: provider,
      billing: provider,
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 10_000, actionTimeoutMs: 10_000, stepMaxAttempts: 3, sweepMs: 300, leaseMs: 3000, compensationAckTimeoutMs: 15_000 },
    },
  });
  base = apiUrl(broker);
  op = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
});
afterAll(async () => {
  await broker.stop();
  await sim.close();
});
afterEach(() => fetch(`${sim.url}/v2/_sim/faults`, { method: "DELETE" }));

const simState = async () => (await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as { droplets: any[]; requests: Record<string, number> };
async function settled(api: ReturnType<typeof client>, sagaId: string) {
  return waitFor(async () => {
    const res = await api.get(`/sagas/${sagaId}`);
    return TERMINAL.includes(res.body.saga?.status) ? res.body.saga : null;
  }, { timeoutMs: 40_000, what: `saga ${sagaId}` });
}

async function provisioned(plan: string) {
  const tenant = uniq("rs");
  const api = client(base, await token({ tenant, sub: "rita" }));
  const res = await api.post("/deployments", { slug: uniq("app"), provision: true, plan_code: plan });
  expect(res.status).toBe(202);
  expect((await settled(api, res.body.saga.id)).status).toBe("succeeded");
  const id = res.body.deployment.id as string;
  const droplet = async () => (await simState()).droplets.find((d) => d.tags.includes(`deployment-${id}`));
  return { api, tenant, id, droplet };
}
const cost = async (id: string) => (await op.get("/dashboard/margin")).body.items.find((i: any) => i.deployment_id === id).cost_cents;

test("an upgrade and a downgrade each resize the live droplet, and inventory's size and the margin view's cost follow", async () => {
  const d = await provisioned("starter");
  expect((await d.droplet()).size_slug).toBe("s-1vcpu-1gb");
  expect(await cost(d.id)).toBe(600);

  const up = await d.api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "scale" });
  expect(up.status).toBe(200);
  expect(up.body.subscription.plan_version.droplet_size).toBe("s-4vcpu-8gb");
  expect(up.body.saga).toMatchObject({ kind: "resize", deployment_id: d.id });
  const saga = await settled(d.api, up.body.saga.id);
  expect(saga.status).toBe("succeeded");
  expect(saga.steps.map((s: any) => s.name).slice(0, 2)).toEqual(["hold_plan_change", "snapshot_droplets"]);
  expect(saga.steps[0].output).toEqual({ plan_change: up.body.subscription.plan_version.id });
  expect(await d.droplet()).toMatchObject({ size_slug: "s-4vcpu-8gb", status: "active" });
  const inv = (await d.api.get(`/inventory?deployment_id=${d.id}`)).body.items;
  expect(inv).toEqual([expect.objectContaining({ size_slug: "s-4vcpu-8gb", monthly_cost_cents: 4800, status: "active" })]);
  expect(await cost(d.id)).toBe(4800);

  const down = await d.api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "starter" });
  expect((await settled(d.api, down.body.saga.id)).status).toBe("succeeded");
  expect(await d.droplet()).toMatchObject({ size_slug: "s-1vcpu-1gb", status: "active" });
  expect(await cost(d.id)).toBe(600);
  const got = (await d.api.get(`/deployments/${d.id}`)).body;
  expect(got.deployment.runtime.status).toBe("running");
  expect(got.subscription.plan_changes.map((c: any) => c.actor)).toEqual(["rita", "rita", "rita"]);
});

test("a resize whose action errors ends with the old size, the droplet running and the plan change reverted (recorded)", async () => {
  const d = await provisioned("starter");
  const before = (await simState()).requests["droplets.actions.create"] ?? 0;
  const res = await d.api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "studio" });
  expect(res.body.saga.kind).toBe("resize");
  // The power-off is under way (it takes SIM_ACTION_MS): the next action, the resize, errors.
  await waitFor(async () => ((await simState()).requests["droplets.actions.create"] ?? 0) > before, { intervalMs: 10, what: "the power-off action" });
  const f = await fetch(`${sim.url}/v2/_sim/faults`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ operation: "droplets.actions.create", mode: "action_errored", count: 1 }) });
  expect(f.status).toBe(201);
  const saga = await settled(d.api, res.body.saga.id);
  expect(saga.status).toBe("compensated");
  const steps = Object.fromEntries(saga.steps.map((x: any) => [x.name, x]));
  expect(steps.resize_droplets.status).toBe("failed");
  expect(steps.hold_plan_change.status).toBe("compensated");
  expect(await d.droplet()).toMatchObject({ size_slug: "s-1vcpu-1gb", status: "active" });
  const sub = (await d.api.get(`/deployments/${d.id}`)).body.subscription;
  expect(sub.plan_code).toBe("starter");
  expect(sub.plan_version.droplet_size).toBe("s-1vcpu-1gb");
  expect(sub.plan_changes.map((c: any) => c.actor)).toEqual(["rita", "rita", "system:provisioning"]);
  expect(sub.plan_changes.at(-1).to_plan_version_id).toBe(sub.plan_changes[0].to_plan_version_id);
  const inv = (await d.api.get(`/inventory?deployment_id=${d.id}`)).body.items;
  expect(inv).toEqual([expect.objectContaining({ size_slug: "s-1vcpu-1gb", monthly_cost_cents: 600, status: "active" })]);
});

test("a plan change that keeps the size, or a deployment without a droplet, starts no resize", async () => {
  const d = await provisioned("starter");
  const v = await op.post("/plans/starter/versions", { price_cents: 2100 });
  expect(v.body.plan_version.droplet_size).toBe("s-1vcpu-1gb");
  const same = await d.api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "starter" });
  expect(same.status).toBe(200);
  expect(same.body.saga).toBeNull();
  const plain = (await d.api.post("/deployments", { slug: uniq("plain"), plan_code: "starter" })).body.deployment;
  const moved = await d.api.post(`/deployments/${plain.id}/subscription/plan`, { plan_code: "scale" });
  expect(moved.status).toBe(200);
  expect(moved.body.saga).toBeNull();
});

test("a paused deployment is resized and stays off (a power_off follows the resize)", async () => {
  const d = await provisioned("starter");
  const paused = await d.api.post(`/deployments/${d.id}/transition`, { to_state: "paused" });
  expect(paused.status).toBe(200);
  if (paused.body.saga) expect((await settled(d.api, paused.body.saga.id)).status).toBe("succeeded");
  expect((await d.droplet()).status).toBe("off");
  const res = await d.api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "studio" });
  expect((await settled(d.api, res.body.saga.id)).status).toBe("succeeded");
  // The power_off requested after the resize is the deployment's newest saga once it has run.
  await waitFor(async () => {
    const got = (await d.api.get(`/deployments/${d.id}`)).body;
    return got.saga?.kind === "power_off" && got.saga.status === "succeeded";
  }, { timeoutMs: 40_000, what: "the power_off after the resize" });
  expect(await d.droplet()).toMatchObject({ size_slug: "s-2vcpu-4gb", status: "off" });
  expect((await d.api.get(`/inventory?deployment_id=${d.id}`)).body.items).toEqual([expect.objectContaining({ size_slug: "s-2vcpu-4gb", status: "off" })]);
});
