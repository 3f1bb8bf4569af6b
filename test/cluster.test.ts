import type { ServiceBroker } from "moleculer";
import { apiUrl, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";

/** The gateway and the services on separate brokers joined through the machine's NATS. */
let gateway: ServiceBroker;
let servicesA: ServiceBroker;
let servicesB: ServiceBroker;
let base: string;
const events: { name: string; payload: any }[] = [];

beforeAll(async () => {
  const ns = newNamespace();
  const settings = { deployments: { eventSweepMs: 300 } };
  servicesA = await startNode(["deployments", "subscriptions"], { nats: ns, nodeID: "services-a", settings });
  servicesB = await startNode(["deployments"], { nats: ns, nodeID: "services-b", settings });
  gateway = await startNode(["api"], { nats: ns, nodeID: "gateway" });
  gateway.createService({
    name: "listener",
    events: {
      "deployments.created"(ctx: any) {
        events.push({ name: ctx.eventName, payload: ctx.params });
      },
      "deployments.transitioned"(ctx: any) {
        events.push({ name: ctx.eventName, payload: ctx.params });
      },
    },
  });
  await gateway.waitForServices(["v1.deployments", "v1.subscriptions", "listener"], 10_000);
  await servicesA.waitForServices(["listener"], 10_000);
  base = apiUrl(gateway);
}, 30_000);
afterAll(async () => {
  await gateway.stop();
  await servicesB.stop();
  await servicesA.stop();
});

test("the gateway answers the same calls with the services on other nodes", async () => {
  expect(gateway.transit?.connected).toBe(true);
  expect(gateway.getLocalService("v1.deployments")).toBeFalsy();
  const tenant = uniq("nats");
  const api = client(base, await token({ tenant, sub: "nina" }));
  const created = await api.post("/deployments", { slug: "over-nats", state: "trial" });
  expect(created.status).toBe(201);
  const id = created.body.deployment.id;
  const refused = await api.post(`/deployments/${id}/transition`, { to_state: "paused" });
  expect(refused.status).toBe(422);
  expect(refused.body).toMatchObject({ type: "INVALID_TRANSITION", data: { from: "trial", to: "paused" } });
  // Converting a trial needs a subscription (SPEC §2): without one 409, after subscribing 200.
  expect((await api.post(`/deployments/${id}/transition`, { to_state: "active", reason: "converted" })).body.type).toBe("SUBSCRIPTION_REQUIRED");
  const sub = await api.post(`/deployments/${id}/subscribe`, { plan_code: "studio", addons: [{ code: "storage_50gb", qty: 3 }] });
  expect(sub.status).toBe(201);
  expect((await api.post(`/deployments/${id}/transition`, { to_state: "active", reason: "converted" })).status).toBe(200);
  const got = await api.get(`/deployments/${id}`);
  expect(got.body.deployment.state).toBe("active");
  expect(got.body.subscription.addons[0]).toMatchObject({ code: "storage_50gb", qty: 3 });
  expect(got.body.events.map((e: any) => e.to_state)).toEqual(["trial", "active"]);
  expect((await api.post("/deployments", { slug: "bad slug" })).status).toBe(422);
  expect((await client(base, await token({ tenant: uniq("other") })).get(`/deployments/${id}`)).status).toBe(404);
  expect((await client(base).get("/deployments")).status).toBe(401);
  const ready = await api.get("/ready");
  expect(ready.body).toMatchObject({ status: "unavailable", checks: { transporter: "ok", database: "ok", "v1.deployments": "ok", "v1.inventory": "not discovered" } });

  const mine = () => events.filter((e) => e.payload.deployment.id === id);
  await waitFor(async () => mine().length >= 2, { what: "both deployment events" });
  expect(mine().map((e) => e.name)).toEqual(["deployments.created", "deployments.transitioned"]);
  expect(mine()[1].payload.event).toMatchObject({ from_state: "trial", to_state: "active", reason: "converted", actor: "nina" });
});

test("50 concurrent transitions spread over two deployments nodes still leave a chain", async () => {
  // An operator: past_due and back are billing-controlled moves (tenants get 403).
  const api = client(base, await token({ tenant: uniq("race"), roles: ["platform-admin"] }));
  const id = (await api.post("/deployments", { slug: "race" })).body.deployment.id;
  const targets = ["paused", "active", "past_due", "active", "cancelled", "active"];
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) => api.post(`/deployments/${id}/transition`, { to_state: targets[i % targets.length] })));
  expect(results.every((r) => r.status === 200 || r.status === 422)).toBe(true);
  const { events: log, deployment } = (await api.get(`/deployments/${id}`)).body;
  expect(log.length).toBeGreaterThan(2);
  for (let i = 1; i < log.length; i++) expect(log[i].from_state).toBe(log[i - 1].to_state);
  expect(log.at(-1).to_state).toBe(deployment.state);
});

test("an event whose publication a crash interrupted is published by the sweep", async () => {
  const { Client } = await import("pg");
  const pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
  try {
    const api = client(base, await token({ tenant: uniq("outbox") }));
    const id = (await api.post("/deployments", { slug: "outbox" })).body.deployment.id;
    await api.post(`/deployments/${id}/transition`, { to_state: "paused" });
    const mine = () => events.filter((e) => e.payload.deployment.id === id);
    await waitFor(async () => mine().length >= 2, { what: "both events" });
    const rows = async () => (await pg.query("select id, published_at from deployment_events where deployment_id = $1 order by id", [id])).rows;
    // The mark follows the publication without the move waiting for it.
    await waitFor(async () => (await rows()).every((r) => r.published_at !== null), { what: "both rows marked published" });

    // As if the node died between the commit and the publication of the transition.
    const transition = (await rows())[1];
    await pg.query("update deployment_events set published_at = null where id = $1", [transition.id]);
    await waitFor(async () => mine().length >= 3, { what: "the republished event" });
    const again = mine()[2];
    expect(again.name).toBe("deployments.transitioned");
    expect(again.payload.event).toMatchObject({ id: Number(transition.id), from_state: "active", to_state: "paused" });
    expect(again.payload.deployment.state).toBe("paused");
    await waitFor(async () => (await rows())[1].published_at !== null, { what: "the row marked published" });
    expect(mine().filter((e) => e.payload.event.id === Number(transition.id))).toHaveLength(2);
  } finally {
    await pg.end();
  }
});
