import type { ServiceBroker } from "moleculer";
import { apiUrl, client, startNode, token, uniq } from "./helpers";
import { currentMonthUtc } from "../services/subscriptions.service";

let broker: ServiceBroker;
let base: string;
let op: ReturnType<typeof client>;

beforeAll(async () => {
  broker = await startNode(["api", "deployments", "subscriptions"]);
  base = apiUrl(broker);
  op = client(base, await token({ roles: ["platform-admin"], sub: "operator" }));
});
afterAll(() => broker.stop());

async function tenantWithDeployment() {
  const api = client(base, await token({ tenant: uniq("sub"), sub: "carol" }));
  const d = (await api.post("/deployments", { slug: uniq("d") })).body.deployment;
  return { api, d };
}

test("the demo catalog has plan studio and addon storage_50gb at 750 cents", async () => {
  const api = client(base, await token({ tenant: uniq("cat") }));
  const plans = (await api.get("/plans")).body.items;
  expect(plans.find((p: any) => p.code === "studio")).toMatchObject({ code: "studio", latest_version: { version: expect.any(Number), currency: "USD" } });
  const addons = await api.get("/addons");
  expect(addons.status).toBe(200);
  expect(addons.body.items.map((a: any) => a.code)).toContain("storage_50gb");
});

test("subscribe binds the newest plan version for the current UTC month and snapshots addons", async () => {
  const { api, d } = await tenantWithDeployment();
  // A new studio version appears before the subscription: subscribing takes it.
  const newest = (await op.post("/plans/studio/versions", { price_cents: 5200 })).body.plan_version;
  const res = await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio", addons: [{ code: "dedicated_ip", qty: 2 }] });
  expect(res.status).toBe(201);
  const s = res.body.subscription;
  const month = currentMonthUtc();
  expect(s).toMatchObject({ deployment_id: d.id, status: "active", plan_code: "studio", plan_version: { id: newest.id, price_cents: 5200 } });
  expect(s.current_period_start).toBe(month.start.toISOString());
  expect(s.current_period_end).toBe(month.end.toISOString());
  expect(s.addons).toEqual([expect.objectContaining({ code: "dedicated_ip", qty: 2, unit_price_cents: 400, currency: "USD" })]);
  const again = await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" });
  expect(again.status).toBe(409);
  expect(again.body.type).toBe("ALREADY_SUBSCRIBED");
  expect((await api.get(`/deployments/${d.id}`)).body.subscription.id).toBe(s.id);
});

test("an attached addon keeps its snapshot when the live price changes", async () => {
  const reset = await op.patch("/addons/storage_50gb", { unit_price_cents: 750 });
  expect(reset.status).toBe(200);
  const { api, d } = await tenantWithDeployment();
  expect((await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" })).status).toBe(201);
  const attached = await api.post(`/deployments/${d.id}/subscription/addons`, { code: "storage_50gb", qty: 50 });
  expect(attached.status).toBe(201);
  expect(attached.body.subscription.addons).toEqual([expect.objectContaining({ code: "storage_50gb", unit_price_cents: 750, qty: 50 })]);

  const changed = await op.patch("/addons/storage_50gb", { unit_price_cents: 990 });
  expect(changed.body.addon.unit_price_cents).toBe(990);
  const after = (await api.get(`/deployments/${d.id}`)).body.subscription;
  expect(after.addons).toEqual([expect.objectContaining({ code: "storage_50gb", unit_price_cents: 750, qty: 50 })]);
  // A new subscriber pays the live price.
  const other = await tenantWithDeployment();
  const fresh = await other.api.post(`/deployments/${other.d.id}/subscribe`, { plan_code: "studio", addons: [{ code: "storage_50gb", qty: 1 }] });
  expect(fresh.body.subscription.addons[0].unit_price_cents).toBe(990);
  await op.patch("/addons/storage_50gb", { unit_price_cents: 750 });
});

test("a price change is a new plan version and leaves existing subscribers where they are; change of plan version is recorded", async () => {
  const code = uniq("plan").replace("-", "_");
  expect((await op.post("/plans", { code, name: "Test plan", price_cents: 1000, currency: "EUR" })).status).toBe(201);
  const { api, d } = await tenantWithDeployment();
  const sub = (await api.post(`/deployments/${d.id}/subscribe`, { plan_code: code })).body.subscription;
  expect(sub.plan_version).toMatchObject({ version: 1, price_cents: 1000, currency: "EUR" });
  const v2 = await op.post(`/plans/${code}/versions`, { price_cents: 1200 });
  expect(v2.status).toBe(201);
  expect(v2.body.plan_version).toMatchObject({ version: 2, price_cents: 1200, currency: "EUR" });
  expect((await api.get(`/deployments/${d.id}`)).body.subscription.plan_version.version).toBe(1);

  const moved = await api.post(`/deployments/${d.id}/subscription/plan`, { plan_code: code });
  expect(moved.status).toBe(200);
  expect(moved.body.subscription.plan_version).toMatchObject({ version: 2, price_cents: 1200 });
  const back = await api.post(`/deployments/${d.id}/subscription/plan`, { version: 1 });
  expect(back.body.subscription.plan_version.version).toBe(1);
  const changes = (await api.get(`/deployments/${d.id}`)).body.subscription.plan_changes;
  expect(changes.map((c: any) => c.to_plan_version_id)).toEqual([sub.plan_version.id, v2.body.plan_version.id, sub.plan_version.id]);
  expect(changes[1]).toMatchObject({ from_plan_version_id: sub.plan_version.id, actor: "carol" });

  const unknown = await api.post(`/deployments/${d.id}/subscription/plan`, { version: 9 });
  expect(unknown.status).toBe(422);
});

test("bad subscription bodies are 422 and change nothing", async () => {
  const { api, d } = await tenantWithDeployment();
  const bodies = [
    {},
    { plan_code: "nope" },
    { plan_code: "studio", addons: [{ code: "nope", qty: 1 }] },
    { plan_code: "studio", addons: [{ code: "storage_50gb", qty: 0 }] },
    { plan_code: "studio", addons: [{ code: "storage_50gb", qty: 1 }, { code: "storage_50gb", qty: 2 }] },
    { plan_code: "studio", addons: "storage_50gb" },
  ];
  for (const body of bodies) {
    const res = await api.post(`/deployments/${d.id}/subscribe`, body);
    expect(res.status).toBe(422);
    expect(res.body.type).toBe("VALIDATION_ERROR");
    expect(res.body.message.length).toBeGreaterThan(5);
  }
  expect((await api.get(`/deployments/${d.id}`)).body.subscription).toBeNull();
  expect((await api.post(`/deployments/${d.id}/subscription/addons`, { code: "storage_50gb", qty: 1 })).status).toBe(404);
});

test("catalog writes are for operators only", async () => {
  const admin = client(base, await token({ tenant: uniq("t"), roles: ["admin"] }));
  const underscore = client(base, await token({ tenant: uniq("t"), roles: ["platform_admin"] }));
  for (const c of [admin, underscore]) {
    expect((await c.post("/plans", { code: uniq("p").replace("-", "_"), name: "x", price_cents: 1 })).status).toBe(403);
    expect((await c.post("/plans/studio/versions", { price_cents: 1 })).status).toBe(403);
    expect((await c.post("/addons", { code: uniq("a").replace("-", "_"), name: "x", unit_price_cents: 1 })).status).toBe(403);
    const patch = await c.patch("/addons/storage_50gb", { unit_price_cents: 1 });
    expect(patch.status).toBe(403);
    expect(patch.body).toMatchObject({ code: 403, type: "FORBIDDEN" });
  }
  const addons = (await admin.get("/addons")).body.items;
  expect(addons.find((a: any) => a.code === "storage_50gb").unit_price_cents).not.toBe(1);
  const dup = await op.post("/addons", { code: "storage_50gb", name: "dup", unit_price_cents: 1 });
  expect(dup.status).toBe(409);
  expect((await op.post("/plans/nope/versions", { price_cents: 1 })).status).toBe(404);
  expect((await op.post("/addons", { code: "Bad Code", name: "x", unit_price_cents: -1 })).status).toBe(422);
});
