import http from "node:http";
import type { AddressInfo } from "node:net";
import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { makeUser } from "../lib/access";
import { apiUrl, client, startNode, token, uniq, asAdmin } from "./helpers";

/*
 * The operator money views over real PostgreSQL and the simulator. Every figure below is worked out by hand from
 * what the test seeds; the seeded tenants are unique to this run, so other suites' rows only show up in the
 * cluster-wide MRR, which is checked against the database directly.
 */

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let pg: Client;
let op: ReturnType<typeof client>;

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 0 });
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "billing"], {
    settings: { inventory: { doApiUrl: sim.url, driftCheckMs: 0 }, billing: { doApiUrl: sim.url, runMs: 0 } },
  });
  base = apiUrl(broker);
  op = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
  await seed();
});
afterAll(async () => {
  await pg?.end();
  await broker?.stop();
  await sim?.close();
});


async function resource(tenant: string, monthly_cost_cents: number, deploymentId?: string): Promise<any> {
  const { resource: r } = (await broker.call("v1.inventory.register", {
    external_id: uniq("ext"), name: uniq("web"), region: "nyc3", size_slug: "s-1vcpu-1gb", status: "active", tenant_id: tenant, monthly_cost_cents,
  }, asAdmin)) as any;
  if (deploymentId) await broker.call("v1.inventory.link", { id: r.id, deployment_id: deploymentId }, asAdmin);
  return r;
}

// ---- the seeded world ----
const A = uniq("bill-a");
const B = uniq("bill-b");
const usdPlan = uniq("bill-usd"); // 4900 USD
const eurPlan = uniq("bill-eur"); // 1000 EUR
const d: Record<string, any> = {};

async function seed() {
  expect((await op.post("/plans", { code: usdPlan, name: "Billing USD", price_cents: 4900, currency: "USD" })).status).toBe(201);
  expect((await op.post("/plans", { code: eurPlan, name: "Billing EUR", price_cents: 1000, currency: "EUR" })).status).toBe(201);
  const a = client(base, await token({ tenant: A, roles: ["admin"] }));
  const b = client(base, await token({ tenant: B, roles: ["admin"] }));
  const create = async (c: typeof a, slug: string, body: object = {}) => {
    const res = await c.post("/deployments", { slug, ...body });
    expect(res.status).toBe(201);
    return res.body.deployment;
  };
  const subscribe = async (c: typeof a, id: string, body: object) => expect((await c.post(`/deployments/${id}/subscribe`, body)).status).toBe(201);

  const original = (await op.get("/addons")).body.items.find((x: any) => x.code === "storage_50gb").unit_price_cents;
  try {
    expect((await op.patch("/addons/storage_50gb", { unit_price_cents: 750 })).status).toBe(200);
    // alpha: plan 4900 + storage_50gb 2 × 750 (snapshot) = 6400 USD.
    d.alpha = await create(a, "alpha");
    await subscribe(a, d.alpha.id, { plan_code: usdPlan, addons: [{ code: "storage_50gb", qty: 2 }] });

    // The catalog price changes: alpha keeps 750, later subscribers pay 900.
    expect((await op.patch("/addons/storage_50gb", { unit_price_cents: 900 })).status).toBe(200);
    // beta: plan 4900 + storage_50gb 3 × 900 = 7600 USD, and no cloud resource.
    d.beta = await create(a, "beta");
    await subscribe(a, d.beta.id, { plan_code: usdPlan, addons: [{ code: "storage_50gb", qty: 3 }] });
    // delta (paused): plan 1000 EUR + storage_50gb 1 × 900 USD.
    d.delta = await create(a, "delta");
    await subscribe(a, d.delta.id, { plan_code: eurPlan, addons: [{ code: "storage_50gb", qty: 1 }] });
    expect((await a.post(`/deployments/${d.delta.id}/transition`, { to_state: "paused" })).status).toBe(200);
    d.delta.state = "paused";
  } finally {
    await op.patch("/addons/storage_50gb", { unit_price_cents: original });
  }
  // gamma: a droplet (1800) and no subscription.
  d.gamma = await create(a, "gamma");
  // epsilon (trial): neither revenue nor cost.
  d.epsilon = await create(a, "epsilon", { state: "trial" });
  // zeta (tenant B): plan 4900, a droplet 3000.
  d.zeta = await create(b, "zeta");
  await subscribe(b, d.zeta.id, { plan_code: usdPlan });

  // alpha's droplets: 600 + 1200 live, and a 2400 one that is destroyed and must not count.
  await resource(A, 600, d.alpha.id);
  await resource(A, 1200, d.alpha.id);
  const gone = await resource(A, 2400, d.alpha.id);
  await broker.call("v1.inventory.markDestroyed", { id: gone.id }, asAdmin);
  await resource(A, 1800, d.gamma.id);
  await resource(A, 600, d.delta.id);
  await resource(A, 500); // linked to no deployment
  await resource(B, 3000, d.zeta.id);
}

const row = (items: any[], name: string, currency = "USD") => items.find((i) => i.deployment_id === d[name].id && i.currency === currency);
/** What a deployment owes in open invoices of one currency, summed from GET /invoices (the margin view's other path). */
async function owed(name: string, currency = "USD"): Promise<number> {
  const res = await op.get(`/invoices?deployment_id=${d[name].id}&status=open&limit=200`);
  return res.body.items.filter((i: any) => i.currency === currency).reduce((t: number, i: any) => t + i.total_cents, 0);
}

describe("GET /dashboard/margin", () => {
  test("per deployment and in total, worked out by hand", async () => {
    const res = await op.get(`/dashboard/margin?tenant_id=${A}`);
    expect(res.status).toBe(200);
    const { items, totals, unattributed, next_cursor } = res.body;
    expect(next_cursor).toBeNull();
    // 5 deployments; delta has revenue in two currencies, so it has one row per currency.
    expect(items).toHaveLength(6);
    expect(items.every((i: any) => i.tenant_id === A)).toBe(true);

    // Subscribing issued a first (prorated) invoice each, open and not yet due.
    expect(await owed("alpha")).toBeGreaterThan(0);
    expect(row(items, "alpha")).toEqual({
      deployment_id: d.alpha.id, tenant_id: A, slug: "alpha", state: "active", subscription_id: expect.any(String), plan_code: usdPlan,
      // 4900 + 2 × 750 = 6400; 600 + 1200 = 1800 (the destroyed 2400 left out); 4600 / 6400 = 71.875 %.
      currency: "USD", revenue_cents: 6400, cost_cents: 1800, margin_cents: 4600, margin_pct: 71.88, resources: 2, flags: [],
      open_invoices_cents: await owed("alpha"), overdue_invoices_cents: 0,
    });
    // 4900 + 3 × 900 = 7600, nothing running it.
    expect(row(items, "beta")).toMatchObject({ revenue_cents: 7600, cost_cents: 0, margin_cents: 7600, margin_pct: 100, resources: 0, flags: ["revenue_without_cost"] });
    expect(row(items, "gamma")).toMatchObject({ subscription_id: null, plan_code: null, revenue_cents: 0, cost_cents: 1800, margin_cents: -1800, margin_pct: null, resources: 1, flags: ["cost_without_revenue"] });
    // Paused: no revenue (only active subscriptions of active, past_due and suspended deployments count), but its
    // first invoice (EUR, the plan's currency) is still owed; the USD droplet still costs. Never netted across currencies.
    expect(row(items, "delta", "EUR")).toMatchObject({ state: "paused", revenue_cents: 0, cost_cents: 0, margin_cents: 0, margin_pct: null, resources: 0, open_invoices_cents: await owed("delta", "EUR"), flags: ["cost_without_revenue", "multi_currency"] });
    expect(row(items, "delta", "USD")).toMatchObject({ state: "paused", revenue_cents: 0, cost_cents: 600, margin_cents: -600, margin_pct: null, resources: 1, open_invoices_cents: 0, flags: ["cost_without_revenue", "multi_currency"] });
    expect(row(items, "epsilon")).toMatchObject({ state: "trial", subscription_id: null, revenue_cents: 0, cost_cents: 0, margin_cents: 0, margin_pct: null, flags: [] });

    expect(totals).toEqual([
      { currency: "EUR", deployments: 1, revenue_cents: 0, cost_cents: 0, margin_cents: 0, margin_pct: null, open_invoices_cents: await owed("delta", "EUR"), overdue_invoices_cents: 0 },
      // 6400 + 7600 = 14000; 1800 + 1800 + 600 = 4200; 9800 / 14000 = 70 %.
      { currency: "USD", deployments: 5, revenue_cents: 14000, cost_cents: 4200, margin_cents: 9800, margin_pct: 70, open_invoices_cents: (await owed("alpha")) + (await owed("beta")), overdue_invoices_cents: 0 },
    ]);
    expect(unattributed).toEqual([{ currency: "USD", cost_cents: 500, resources: 1 }]);
  });

  test("default order is margin ascending (worst first); sort and order choose another figure", async () => {
    const get = async (q: string) => {
      const res = await op.get(`/dashboard/margin?tenant_id=${A}${q}`);
      expect(res.status).toBe(200);
      return res.body.items as any[];
    };
    const label = (i: any) => `${i.slug}/${i.currency}`;
    // epsilon and delta/EUR tie at 0: ties go by deployment id.
    const zeros = [["epsilon/USD", d.epsilon.id], ["delta/EUR", d.delta.id]].sort((x, y) => x[1].localeCompare(y[1])).map((x) => x[0]);
    expect((await get("")).map(label)).toEqual(["gamma/USD", "delta/USD", ...zeros, "alpha/USD", "beta/USD"]);
    expect((await get("&sort=margin&order=desc")).map((i) => i.margin_cents)).toEqual([7600, 4600, 0, 0, -600, -1800]);
    expect((await get("&sort=revenue&order=desc")).map((i) => i.revenue_cents)).toEqual([7600, 6400, 0, 0, 0, 0]);
    expect((await get("&sort=cost")).map((i) => i.cost_cents)).toEqual([0, 0, 0, 600, 1800, 1800]);
    // No percentage without revenue: those rows come last in either order.
    expect((await get("&sort=margin_pct&order=desc")).map((i) => i.margin_pct)).toEqual([100, 71.88, null, null, null, null]);
    expect((await get("&sort=margin_pct&order=asc")).map((i) => i.margin_pct)).toEqual([71.88, 100, null, null, null, null]);
    for (const q of ["&sort=profit", "&order=up", "&state=sleeping"]) {
      const res = await op.get(`/dashboard/margin?tenant_id=${A}${q}`);
      expect(res.status).toBe(422);
      expect(res.body.type).toBe("VALIDATION_ERROR");
    }
  });

  test("filters by deployment state and by tenant", async () => {
    const paused = (await op.get(`/dashboard/margin?tenant_id=${A}&state=paused`)).body;
    expect(paused.items.map((i: any) => `${i.slug}/${i.currency}`).sort()).toEqual(["delta/EUR", "delta/USD"]);
    expect(paused.totals).toEqual([
      { currency: "EUR", deployments: 1, revenue_cents: 0, cost_cents: 0, margin_cents: 0, margin_pct: null, open_invoices_cents: await owed("delta", "EUR"), overdue_invoices_cents: 0 },
      { currency: "USD", deployments: 1, revenue_cents: 0, cost_cents: 600, margin_cents: -600, margin_pct: null, open_invoices_cents: 0, overdue_invoices_cents: 0 },
    ]);
    const active = (await op.get(`/dashboard/margin?tenant_id=${A}&state=active&sort=revenue&order=desc`)).body;
    expect(active.items.map((i: any) => i.slug)).toEqual(["beta", "alpha", "gamma"]);
    expect(active.totals).toEqual([{ currency: "USD", deployments: 3, revenue_cents: 14000, cost_cents: 3600, margin_cents: 10400, margin_pct: 74.29, open_invoices_cents: (await owed("alpha")) + (await owed("beta")), overdue_invoices_cents: 0 }]);

    const b = (await op.get(`/dashboard/margin?tenant_id=${B}`)).body;
    // 4900 − 3000 = 1900; 1900 / 4900 = 38.775 %.
    expect(b.items).toEqual([expect.objectContaining({ deployment_id: d.zeta.id, slug: "zeta", revenue_cents: 4900, cost_cents: 3000, margin_cents: 1900, margin_pct: 38.78, flags: [] })]);
    expect(b.unattributed).toEqual([]);
    // Without a tenant filter every tenant is in, ours among them.
    const all = (await op.get("/dashboard/margin?sort=cost&order=desc")).body.items;
    expect(row(all, "zeta")).toMatchObject({ cost_cents: 3000 });
    expect(row(all, "alpha")).toMatchObject({ cost_cents: 1800 });
  });
});

test("margin reads every page of deployments and resources (more than 200 of each)", async () => {
  // 205 deployments of one tenant: above the default quota (SPEC §9), which this test is not about.
  process.env.TENANT_MAX_DEPLOYMENTS = "1000";
  const C = uniq("bill-c");
  const created = async (i: number) =>
    ((await broker.call("v1.deployments.create", { slug: `p${i}`, tenant_id: C }, asAdmin)) as any).deployment;
  const deployments: any[] = [];
  for (let i = 0; i < 205; i += 25) deployments.push(...(await Promise.all(Array.from({ length: Math.min(25, 205 - i) }, (_, k) => created(i + k)))));
  // 205 resources of 1 cent each on the first deployment.
  const first = deployments[0];
  for (let i = 0; i < 205; i += 25)
    await Promise.all(Array.from({ length: Math.min(25, 205 - i) }, () => broker.call("v1.inventory.register", {
      external_id: uniq("ext"), name: uniq("web"), region: "nyc3", size_slug: "s-1vcpu-1gb", tenant_id: C, deployment_id: first.id, monthly_cost_cents: 1,
    }, asAdmin)));
  const res = await op.get(`/dashboard/margin?tenant_id=${C}&sort=cost&order=desc`);
  expect(res.status).toBe(200);
  expect(res.body.items).toHaveLength(205);
  expect(res.body.items[0]).toMatchObject({ deployment_id: first.id, cost_cents: 205, resources: 205, margin_cents: -205, flags: ["cost_without_revenue"] });
  expect(res.body.totals).toEqual([{ currency: "USD", deployments: 205, revenue_cents: 0, cost_cents: 205, margin_cents: -205, margin_pct: null, open_invoices_cents: 0, overdue_invoices_cents: 0 }]);
});

describe("GET /billing/balance", () => {
  test("the provider balance in integer cents, next to the MRR of active subscriptions per currency", async () => {
    // 20 droplets of s-4vcpu-8gb ($48/month, $0.07143/hour at the simulator's 672-hour month) created half an hour
    // ago: one started hour each, so month-to-date usage is 20 × 0.07143 = $1.4286 → "1.43" → 143 cents.
    const createdAt = new Date(Date.now() - 30 * 60_000).toISOString();
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${sim.url}/v2/_sim/droplets`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: `bill-${i}`, size: "s-4vcpu-8gb", created_at: createdAt }) });
      expect(res.status).toBe(201);
    }
    const res = await op.get("/billing/balance");
    expect(res.status).toBe(200);
    const simBalance = (await (await fetch(`${sim.url}/v2/customers/my/balance`, { headers: { authorization: "Bearer dev-token" } })).json()) as Record<string, string>;
    expect(simBalance).toMatchObject({ month_to_date_usage: "1.43", month_to_date_balance: "1.43", account_balance: "0.00" });
    expect(res.body.provider).toEqual({
      name: "digitalocean", currency: "USD",
      month_to_date_balance_cents: 143, account_balance_cents: 0, month_to_date_usage_cents: 143,
      generated_at: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/),
    });

    // MRR is cluster-wide: compare with the database, summed here independently of the service — active
    // subscriptions of deployments in active, past_due or suspended only.
    const { rows } = await pg.query(`
      with counted as (
        select s.* from subscriptions s join deployments d on d.id = s.deployment_id
        where s.status = 'active' and d.state in ('active', 'past_due', 'suspended')
      ), charges as (
        select s.id, pv.currency, pv.price_cents as plan, 0 as addons
          from counted s join plan_versions pv on pv.id = s.plan_version_id
        union all
        select s.id, sa.currency, 0, sa.unit_price_cents * sa.qty
          from counted s join subscription_addons sa on sa.subscription_id = s.id
      )
      select currency, sum(plan + addons)::int as mrr_cents, sum(plan)::int as plans_cents, sum(addons)::int as addons_cents,
             count(distinct id)::int as subscriptions
        from charges group by currency order by currency`);
    expect(res.body.revenue.mrr).toEqual(rows);
    // Our own seed is in there: USD 6400 + 7600 + 4900 (3 subscriptions); paused delta is not.
    const usd = res.body.revenue.mrr.find((m: any) => m.currency === "USD");
    expect(usd.mrr_cents).toBeGreaterThanOrEqual(18900);
    expect(usd.subscriptions).toBeGreaterThanOrEqual(3);
    expect(new Date(res.body.revenue.as_of).toISOString()).toBe(res.body.revenue.as_of);
  });

  test("the seeded tenants' share of MRR, by hand, through the internal action", async () => {
    const { items } = (await broker.call("v1.subscriptions.listForRevenue", { tenant_id: A }, asAdmin)) as any;
    // alpha and beta; delta's subscription is paused with its deployment (SPEC §2), so it earns nothing.
    expect(items).toHaveLength(2);
    expect(items.find((s: any) => s.deployment_id === d.delta.id)).toBeUndefined();
    const alpha = items.find((s: any) => s.deployment_id === d.alpha.id);
    expect(alpha).toMatchObject({ tenant_id: A, status: "active", plan_version: { price_cents: 4900, currency: "USD" }, addons: [{ code: "storage_50gb", unit_price_cents: 750, currency: "USD", qty: 2 }] });
    // Paging by cursor returns the same set.
    const p1 = (await broker.call("v1.subscriptions.listForRevenue", { tenant_id: A, limit: 1 }, asAdmin)) as any;
    const p2 = (await broker.call("v1.subscriptions.listForRevenue", { tenant_id: A, limit: 1, cursor: p1.next_cursor }, asAdmin)) as any;
    expect(p2.next_cursor).toBeNull();
    expect([...p1.items, ...p2.items].map((s: any) => s.subscription_id).sort()).toEqual(items.map((s: any) => s.subscription_id).sort());
    const tenant = { meta: { user: makeUser({ sub: "x", tenant_id: A, roles: ["admin"] }) } };
    await expect(broker.call("v1.subscriptions.listForRevenue", {}, tenant)).rejects.toMatchObject({ code: 403 });
  });

  test("provider failures map to 503 (transient) and 502 (permanent or unreadable)", async () => {
    let reply: { status: number; body: unknown } = { status: 500, body: { id: "server_error", message: "boom" } };
    const fake = http.createServer((_req, res) => {
      res.writeHead(reply.status, { "content-type": "application/json" });
      res.end(JSON.stringify(reply.body));
    });
    await new Promise<void>((r) => fake.listen(0, "127.0.0.1", r));
    const node = await startNode(["deployments", "subscriptions", "billing"], { settings: { billing: { doApiUrl: `http://127.0.0.1:${(fake.address() as AddressInfo).port}`, doMaxRetries: 0, runMs: 0 } } });
    const balance = () => node.call("v1.billing.balance", {}, asAdmin).then(() => { throw new Error("expected a rejection"); }, (e: any) => e);
    try {
      expect(await balance()).toMatchObject({ code: 503, type: "PROVIDER_UNAVAILABLE", data: { status: 500 } });
      reply = { status: 401, body: { id: "unauthorized", message: "Unable to authenticate you" } };
      expect(await balance()).toMatchObject({ code: 502, type: "PROVIDER_ERROR", data: { status: 401, id: "unauthorized" } });
      reply = { status: 200, body: { month_to_date_balance: "12.34", account_balance: "n/a", month_to_date_usage: "12.34", generated_at: "2026-01-01T00:00:00Z" } };
      expect(await balance()).toMatchObject({ code: 502, type: "PROVIDER_ERROR", data: { field: "account_balance" } });
      // Exact decimal strings, negative credit included.
      reply = { status: 200, body: { month_to_date_balance: "-10.05", account_balance: "1234.5", month_to_date_usage: "0.07", generated_at: "2026-01-01T00:00:00Z" } };
      expect(((await node.call("v1.billing.balance", {}, asAdmin)) as any).provider).toEqual({
        name: "digitalocean", currency: "USD", month_to_date_balance_cents: -1005, account_balance_cents: 123450, month_to_date_usage_cents: 7, generated_at: "2026-01-01T00:00:00.000Z",
      });
    } finally {
      await node.stop();
      await new Promise((r) => fake.close(r));
    }
  });
});

test("both views are for operators only: 403 for tenant admins and 'platform_admin', 401 without a token", async () => {
  const admin = client(base, await token({ tenant: A, roles: ["admin"] }));
  const underscore = client(base, await token({ tenant: uniq("t"), roles: ["platform_admin"] }));
  const anonymous = client(base);
  for (const path of ["/billing/balance", "/dashboard/margin", `/dashboard/margin?tenant_id=${A}`]) {
    for (const c of [admin, underscore]) {
      const res = await c.get(path);
      expect(res.status).toBe(403);
      expect(res.body).toMatchObject({ code: 403, type: "FORBIDDEN" });
    }
    expect((await anonymous.get(path)).status).toBe(401);
  }
  // The internal action is not routed over HTTP.
  expect((await op.get("/billing/ready")).status).toBe(404);
});

test("the gateway's ready check counts billing's database", async () => {
  const res = await fetch(base + "/ready");
  // dns and provisioning are not in this cluster, so it is not ready as a whole; billing itself answers.
  expect(res.status).toBe(503);
  expect(await res.json()).toMatchObject({ status: "unavailable", checks: { database: "ok", "v1.billing": "ok", "v1.dns": "not discovered" } });
  expect(await broker.call("v1.billing.ready")).toEqual({ database: true });
});
