import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { Errors } from "moleculer";
import { actionFaults, apiUrl, client, startNode, token, uniq, waitFor, asAdmin, asTenant, newNamespace } from "./helpers";
import { clockNow, freshMonth, setClock } from "./billing-clock";
import { clockFor } from "../services/billing/clock";

/*
 * The billing loop on the test clock over real PostgreSQL and NATS: two nodes (gateway + deployments +
 * subscriptions + billing, and a second billing node), never sleeping through days. Figures are worked out by
 * hand; the base month is always 31 days long and followed by a 30-day month (test/billing-clock.ts).
 */
let a: ServiceBroker;
let b: ServiceBroker;
let base: string;
let pg: Client;
let op: ReturnType<typeof client>;
const heard: { type: string; invoice: any; event_id: string }[] = [];
const T1 = uniq("bl-a");
const T2 = uniq("bl-b");
let t1: ReturnType<typeof client>;
let t2: ReturnType<typeof client>;
const plan = uniq("bl-plan"); // 4900 USD
const addon = uniq("bl-addon"); // 750 USD

const billing = { testClock: true, runMs: 0, eventSweepMs: 0 };
const faults = actionFaults();

beforeAll(async () => {
  const ns = newNamespace();
  a = await startNode(["api", "deployments", "subscriptions", "billing"], { nats: ns, settings: { billing }, middlewares: [faults.middleware] });
  // The second node also sweeps the invoice events' outbox.
  b = await startNode(["billing"], { nats: ns, settings: { billing: { ...billing, eventSweepMs: 300 } }, middlewares: [faults.middleware] });
  a.createService({
    name: "billing-listener",
    events: {
      "billing.invoice.*"(this: any, ctx: any) {
        heard.push({ type: ctx.eventName.split(".").pop(), invoice: ctx.params.invoice, event_id: ctx.params.event_id });
      },
    },
  });
  await a.waitForServices(["v1.billing", "billing-listener"]);
  await waitFor(async () => a.registry.getServiceList({ onlyAvailable: true }).filter((s: any) => s.fullName === "v1.billing").length >= 1 && b.registry.getServiceList({}).some((s: any) => s.fullName === "v1.deployments"), { what: "the cluster" });
  base = apiUrl(a);
  op = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  t1 = client(base, await token({ tenant: T1, roles: ["admin"] }));
  t2 = client(base, await token({ tenant: T2, roles: ["admin"] }));
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
  expect((await op.post("/plans", { code: plan, name: "Loop plan", price_cents: 4900 })).status).toBe(201);
  expect((await op.post("/addons", { code: addon, name: "Loop addon", unit_price_cents: 750 })).status).toBe(201);
});
afterAll(async () => {
  await pg?.end();
  await b?.stop();
  await a?.stop();
});

async function deployment(c: ReturnType<typeof client>, body: object = {}) {
  const res = await c.post("/deployments", { slug: uniq("d"), ...body });
  expect(res.status).toBe(201);
  return res.body.deployment as { id: string; tenant_id: string };
}
async function subscribe(c: ReturnType<typeof client>, id: string, addons: { code: string; qty: number }[] = [{ code: addon, qty: 2 }]) {
  const res = await c.post(`/deployments/${id}/subscribe`, { plan_code: plan, addons });
  expect(res.status).toBe(201);
  return res.body.subscription;
}
const invoicesOf = async (id: string, c = op) => {
  const res = await c.get(`/invoices?deployment_id=${id}&limit=200`);
  expect(res.status).toBe(200);
  return res.body.items as any[];
};
const stateOf = async (id: string) => (await op.get(`/deployments/${id}`)).body.deployment.state as string;
const amounts = (inv: any) => inv.lines.map((l: any) => [l.kind, l.code, l.qty, l.unit_price_cents, l.amount_cents]);

test("subscribing on the 15th of a 31-day month bills 17/31 of the plan and of each addon line, rounded half up", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const d = await deployment(t1);
  await subscribe(t1, d.id);
  const [inv] = await invoicesOf(d.id);
  // plan 4900 × 17/31 = 2687.10 → 2687; addon 750 × 2 × 17/31 = 822.58 → 823.
  expect(amounts(inv)).toEqual([["plan", plan, 1, 4900, 2687], ["addon", addon, 2, 750, 823]]);
  expect(inv).toMatchObject({
    tenant_id: T1, deployment_id: d.id, currency: "USD", total_cents: 3510, status: "open", paid_at: null,
    period_start: m.day(1, 0), period_end: m.day(1, 0, true), issued_at: m.day(15), due_at: m.day(22),
  });
  expect(Object.keys(inv).sort()).toEqual(["currency", "deployment_id", "due_at", "id", "issued_at", "lines", "paid_at", "period_end", "period_start", "status", "subscription_id", "tenant_id", "total_cents"]);
  expect((await t1.get(`/invoices/${inv.id}`)).body).toEqual({ invoice: inv });
  await waitFor(async () => heard.some((h) => h.type === "issued" && h.invoice.id === inv.id), { what: "billing.invoice.issued" });
  expect(heard.find((h) => h.invoice.id === inv.id)!.invoice).toEqual(inv);
  // The subscription's period follows the billing clock.
  const { subscription } = (await op.get(`/deployments/${d.id}`)).body;
  expect([subscription.current_period_start, subscription.current_period_end]).toEqual([m.day(1, 0), m.day(1, 0, true)]);
});

test("a month start issues one full invoice per billable subscription, none for paused, trial or cancelled; mid-period changes show next time only", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const active = await deployment(t1);
  const paused = await deployment(t1);
  const cancelled = await deployment(t1);
  for (const d of [active, paused, cancelled]) await subscribe(t1, d.id);
  expect((await t1.post(`/deployments/${paused.id}/transition`, { to_state: "paused" })).status).toBe(200);
  expect((await t1.post(`/deployments/${cancelled.id}/transition`, { to_state: "cancelled" })).status).toBe(200);
  // Mid-period: a new plan version (5900) and another addon; the first invoice is not touched.
  expect((await op.post(`/plans/${plan}/versions`, { price_cents: 5900 })).status).toBe(201);
  expect((await t1.post(`/deployments/${active.id}/subscription/plan`, { plan_code: plan })).status).toBe(200);
  expect((await t1.post(`/deployments/${active.id}/subscription/addons`, { code: "extra_backups", qty: 1 })).status).toBe(201);
  const extraBackups = (await op.get("/addons")).body.items.find((x: any) => x.code === "extra_backups").unit_price_cents;
  await setClock(op, m.day(25));
  const trial = await deployment(t1, { state: "trial" });
  await subscribe(t1, trial.id);
  expect(await invoicesOf(trial.id)).toEqual([]); // no invoice while in trial

  const first = (await invoicesOf(active.id))[0];
  expect(first.total_cents).toBe(3510);
  const run = await setClock(op, m.day(1, 0, true));
  const next = await invoicesOf(active.id);
  expect(next).toHaveLength(2);
  expect(next[1]).toEqual(first); // newest first; the first invoice is unchanged
  expect(next[0]).toMatchObject({ period_start: m.day(1, 0, true), issued_at: m.day(1, 0, true), total_cents: 5900 + 1500 + extraBackups, status: "open" });
  expect(amounts(next[0])).toEqual([["plan", plan, 1, 5900, 5900], ["addon", addon, 2, 750, 1500], ["addon", "extra_backups", 1, extraBackups, extraBackups]]);
  expect((await invoicesOf(paused.id)).length).toBe(1);
  expect((await invoicesOf(cancelled.id)).length).toBe(1);
  expect(await invoicesOf(trial.id)).toEqual([]);
  expect(run.invoices_issued).toBeGreaterThanOrEqual(1);
  // A repeat at the same instant issues nothing anywhere.
  expect((await op.post("/billing/run")).body).toMatchObject({ now: m.day(1, 0, true), invoices_issued: 0 });
  // The subscriptions' periods moved with the clock.
  expect((await op.get(`/deployments/${active.id}`)).body.subscription.current_period_start).toBe(m.day(1, 0, true));

  // Trial of 14 days from the 25th ends on the 8th (10:00) of the 30-day month: converted, billed 23/30 from that day.
  await setClock(op, m.day(8, 9, true));
  expect(await stateOf(trial.id)).toBe("trial");
  const conv = await setClock(op, m.day(8, 10, true));
  expect(conv.moves).toContainEqual({ deployment_id: trial.id, from: "trial", to: "active", reason: "trial_converted" });
  const [tinv] = await invoicesOf(trial.id);
  // It subscribed on the 25th, after the price change: 5900 × 23/30 = 4523.33 → 4523; 750 × 2 × 23/30 = 1150.
  expect(amounts(tinv)).toEqual([["plan", plan, 1, 5900, 4523], ["addon", addon, 2, 750, 1150]]);
  expect(tinv).toMatchObject({ total_cents: 4523 + 1150, period_start: m.day(1, 0, true), issued_at: m.day(8, 10, true) });
  const events = (await op.get(`/deployments/${trial.id}`)).body.events;
  expect(events[events.length - 1]).toMatchObject({ from_state: "trial", to_state: "active", reason: "trial_converted", actor: "system:billing" });
});

test("trials: an unsubscribed one expires, an early conversion bills from its own day", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(1));
  const lapsed = await deployment(t1, { state: "trial" });
  const early = await deployment(t1, { state: "trial" });
  await subscribe(t1, early.id, []);
  await setClock(op, m.day(10));
  // The tenant converts on the 10th: 22 days of 31 → 5900 × 22/31 = 4187.10 → 4187 (the plan's newest version, 5900).
  expect((await t1.post(`/deployments/${early.id}/transition`, { to_state: "active" })).status).toBe(200);
  const [inv] = await waitFor(async () => {
    const items = await invoicesOf(early.id);
    return items.length ? items : null;
  }, { what: "the first invoice after an early conversion" });
  expect(amounts(inv)).toEqual([["plan", plan, 1, 5900, 4187]]);
  expect(inv.issued_at).toBe(m.day(10));
  const run = await setClock(op, m.day(15));
  expect(run.moves).toContainEqual({ deployment_id: lapsed.id, from: "trial", to: "cancelled", reason: "trial_expired" });
  expect(run.moves.filter((mv) => mv.deployment_id === early.id)).toEqual([]);
  expect(await invoicesOf(early.id)).toHaveLength(1);
});

test("an unpaid invoice walks active → past_due → suspended → cancelled on the configured days; paused waits for the cancel day", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const d = await deployment(t1);
  const paused = await deployment(t1);
  await subscribe(t1, d.id);
  await subscribe(t1, paused.id);
  expect((await t1.post(`/deployments/${paused.id}/transition`, { to_state: "paused" })).status).toBe(200);
  const [inv] = await invoicesOf(d.id);
  expect(inv.due_at).toBe(m.day(22));
  const moved = (r: Awaited<ReturnType<typeof setClock>>) => r.moves.filter((mv) => mv.deployment_id === d.id || mv.deployment_id === paused.id);

  expect(moved(await setClock(op, m.day(22, 9)))).toEqual([]);
  expect((await a.call("v1.billing.overdue", { deployment_id: d.id }, asAdmin))).toEqual({ overdue: false, invoice_ids: [] });
  expect(moved(await setClock(op, m.day(22)))).toEqual([{ deployment_id: d.id, from: "active", to: "past_due", reason: "invoice_overdue" }]);
  expect((await a.call("v1.billing.overdue", { deployment_id: d.id }, asAdmin))).toEqual({ overdue: true, invoice_ids: [inv.id] });
  await waitFor(async () => heard.some((h) => h.type === "overdue" && h.invoice.id === inv.id), { what: "billing.invoice.overdue" });
  // due + 14 days = the 5th of the next month; the month start billed both again in between (still owed).
  expect(moved(await setClock(op, m.day(5, 9, true)))).toEqual([]);
  expect(moved(await setClock(op, m.day(5, 10, true)))).toEqual([{ deployment_id: d.id, from: "past_due", to: "suspended", reason: "payment_overdue" }]);
  expect((await invoicesOf(d.id)).length).toBe(2);
  expect(await stateOf(paused.id)).toBe("paused");
  // due + 30 days = the 21st of the next month: both cancelled, reason unpaid.
  expect(moved(await setClock(op, m.day(21, 9, true)))).toEqual([]);
  const last = moved(await setClock(op, m.day(21, 10, true)));
  expect(last).toEqual(expect.arrayContaining([
    { deployment_id: d.id, from: "suspended", to: "cancelled", reason: "unpaid" },
    { deployment_id: paused.id, from: "paused", to: "cancelled", reason: "unpaid" },
  ]));
  expect(last).toHaveLength(2);
  const events = (await op.get(`/deployments/${d.id}`)).body.events.slice(1);
  expect(events.map((e: any) => [e.from_state, e.to_state, e.reason, e.actor])).toEqual([
    ["active", "past_due", "invoice_overdue", "system:billing"],
    ["past_due", "suspended", "payment_overdue", "system:billing"],
    ["suspended", "cancelled", "unpaid", "system:billing"],
  ]);
  // Repeats change nothing.
  expect(moved((await op.post("/billing/run")).body)).toEqual([]);

  // Retention: archived CANCELLED_RETENTION_DAYS (30) after the billing-clock time of the cancellation.
  const cancelledAt = new Date(m.day(21, 10, true));
  const before = new Date(cancelledAt.getTime() + 30 * 86_400_000 - 3_600_000).toISOString();
  expect(moved(await setClock(op, before))).toEqual([]);
  const archived = moved(await setClock(op, new Date(cancelledAt.getTime() + 30 * 86_400_000).toISOString()));
  expect(archived).toEqual(expect.arrayContaining([
    { deployment_id: d.id, from: "cancelled", to: "archived", reason: "retention_expired" },
    { deployment_id: paused.id, from: "cancelled", to: "archived", reason: "retention_expired" },
  ]));
});

test("paying at past_due and at suspended brings the deployment back to active at once; a paid invoice is not open", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const d = await deployment(t1);
  await subscribe(t1, d.id);
  const [inv] = await invoicesOf(d.id);
  await setClock(op, m.day(23));
  expect(await stateOf(d.id)).toBe("past_due");
  expect((await t1.post(`/invoices/${inv.id}/pay`, {})).status).toBe(403);
  const paid = await op.post(`/invoices/${inv.id}/pay`, { reference: "ch_123" });
  expect(paid.status).toBe(200);
  expect(paid.body.invoice).toMatchObject({ id: inv.id, status: "paid", paid_at: m.day(23) });
  expect((await op.get(`/invoices/${inv.id}`)).body.invoice).toEqual(paid.body.invoice); // the ORM and the raw read agree
  expect(await stateOf(d.id)).toBe("active");
  const events = (await op.get(`/deployments/${d.id}`)).body.events;
  expect(events[events.length - 1]).toMatchObject({ from_state: "past_due", to_state: "active", reason: "payment_received", actor: "system:billing" });
  expect(await waitFor(async () => heard.find((h) => h.type === "paid" && h.invoice.id === inv.id), { what: "billing.invoice.paid" })).toMatchObject({ invoice: { status: "paid" } });
  const again = await op.post(`/invoices/${inv.id}/pay`, {});
  expect(again.status).toBe(409);
  expect(again.body).toMatchObject({ code: 409, type: "INVOICE_NOT_OPEN", data: { id: inv.id, status: "paid" } });
  expect((await op.post(`/invoices/${inv.id}/void`)).body.type).toBe("INVOICE_NOT_OPEN");

  // Next month's invoice unpaid until suspension, then voided: nothing overdue, back to active.
  await setClock(op, m.day(1, 0, true));
  const [next] = await invoicesOf(d.id);
  expect(next.period_start).toBe(m.day(1, 0, true));
  await setClock(op, m.day(23, 0, true)); // due the 8th + 14 days = the 22nd
  expect(await stateOf(d.id)).toBe("suspended");
  expect((await t1.post(`/invoices/${next.id}/void`)).status).toBe(403);
  const voided = await op.post(`/invoices/${next.id}/void`);
  expect(voided.body.invoice).toMatchObject({ status: "void", paid_at: null });
  expect(await stateOf(d.id)).toBe("active");
  expect((await op.get(`/invoices?deployment_id=${d.id}&status=void`)).body.items.map((i: any) => i.id)).toEqual([next.id]);
});

test("two billing nodes running the same period start at once issue each invoice once and make each move once", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(15));
  const ds = [];
  for (let i = 0; i < 12; i++) ds.push(await deployment(t2));
  for (const d of ds) await subscribe(t2, d.id, []);
  const ids = ds.map((d) => d.id);
  const clock = (a.getLocalService("v1.billing") as any).clock;
  // Both nodes run at the first of next month, when every subscription is due a full invoice, and on the 22nd of
  // this month (due date of the first invoices) every deployment is due a move — the 22nd comes first.
  await clock.move({ now: m.day(22) });
  const runOn = (broker: ServiceBroker) => broker.call("v1.billing.run", {}, { ...asAdmin, nodeID: broker.nodeID }) as Promise<any>;
  const [ra, rb] = await Promise.all([runOn(a), runOn(b)]);
  const mine = (r: any) => r.moves.filter((mv: any) => ids.includes(mv.deployment_id));
  expect(mine(ra).length + mine(rb).length).toBe(12);
  await clock.move({ now: m.day(1, 0, true) });
  const [ra2, rb2] = await Promise.all([runOn(a), runOn(b)]);
  expect(ra2.invoices_issued + rb2.invoices_issued).toBeGreaterThanOrEqual(12);
  const counts = await pg.query("select subscription_id, period_start, count(*)::int as n from invoices where deployment_id = any($1::uuid[]) group by 1, 2", [ids]);
  expect(counts.rows).toHaveLength(24); // first invoice + next month's, each once
  expect(counts.rows.every((r) => r.n === 1)).toBe(true);
  const lines = await pg.query("select count(*)::int as n from invoice_lines l join invoices i on i.id = l.invoice_id where i.deployment_id = any($1::uuid[])", [ids]);
  expect(lines.rows[0].n).toBe(24);
  const moves = await pg.query("select deployment_id, count(*)::int as n from deployment_events where deployment_id = any($1::uuid[]) and to_state = 'past_due' group by 1", [ids]);
  expect(moves.rows).toHaveLength(12);
  expect(moves.rows.every((r) => r.n === 1)).toBe(true);
  // Every invoice is named by exactly one `issued` outbox row.
  const issued = await pg.query("select x, count(*)::int as n from invoice_events e cross join unnest(e.invoice_ids) x join invoices i on i.id = x where i.deployment_id = any($1::uuid[]) and e.type = 'issued' group by x", [ids]);
  expect(issued.rows).toHaveLength(24);
  expect(issued.rows.every((r) => r.n === 1)).toBe(true);
});

test("a lost first-invoice call loses nothing: the next run issues it, prorated from the subscribe day", async () => {
  const m = await freshMonth(op);
  await setClock(op, m.day(20));
  const d = await deployment(t1);
  faults.fail("v1.billing.issueInitial", () => new Errors.MoleculerRetryableError("billing node lost", 503, "SERVICE_UNAVAILABLE"));
  try {
    await subscribe(t1, d.id);
  } finally {
    faults.clear();
  }
  expect(await invoicesOf(d.id)).toEqual([]);
  await setClock(op, m.day(24));
  const [inv] = await invoicesOf(d.id);
  // From the 20th: 12 of 31 days, at the plan's newest price (5900 since the month-start test above). 5900 × 12/31 = 2283.87 → 2284; 750 × 2 × 12/31 = 580.65 → 581.
  expect(amounts(inv)).toEqual([["plan", plan, 1, 5900, 2284], ["addon", addon, 2, 750, 581]]);
  expect(inv.issued_at).toBe(m.day(24));
});

test("invoice events are at least once: an event a crash left unpublished is sent by the outbox sweep", async () => {
  const d = await deployment(t1);
  await subscribe(t1, d.id);
  const [inv] = await invoicesOf(d.id);
  const sent = () => heard.filter((h) => h.type === "issued" && h.invoice.id === inv.id).length;
  const published = async () => (await pg.query("select published_at from invoice_events where $1 = any(invoice_ids) and type = 'issued'", [inv.id])).rows[0].published_at !== null;
  await waitFor(async () => sent() >= 1 && (await published()), { what: "the first billing.invoice.issued, marked published" });
  const before = sent();
  // As if the node died between the commit and the publish.
  await pg.query("update invoice_events set published_at = null where $1 = any(invoice_ids) and type = 'issued'", [inv.id]);
  await waitFor(async () => sent() > before, { timeoutMs: 20_000, what: "the sweep to send it again" });
  const again = heard.filter((h) => h.type === "issued" && h.invoice.id === inv.id);
  expect(again[again.length - 1].invoice).toEqual(inv);
  expect(again[again.length - 1].event_id).toBe(again[0].event_id); // the same event: consumers dedupe by event_id
  expect(again[0].event_id).toBe(`${inv.id}:issued`);
  await waitFor(async () => (await pg.query("select published_at from invoice_events where $1 = any(invoice_ids) and type = 'issued'", [inv.id])).rows[0].published_at !== null, { what: "marked published" });
});

describe("access", () => {
  test("tenants cannot run billing or read or move the clock (403); the clock never goes backwards (422)", async () => {
    expect((await t1.post("/billing/run")).status).toBe(403);
    expect((await t1.get("/billing/clock")).status).toBe(403);
    expect((await t1.post("/billing/clock", { advance_days: 1 })).status).toBe(403);
    const now = await clockNow(op);
    const back = await op.post("/billing/clock", { now: new Date(now.getTime() - 1000).toISOString() });
    expect(back.status).toBe(422);
    expect(back.body.type).toBe("VALIDATION_ERROR");
    expect((await clockNow(op)).getTime()).toBe(now.getTime());
    expect((await op.post("/billing/clock", {})).status).toBe(422);
    expect((await op.post("/billing/clock", { advance_days: 1, now: now.toISOString() })).status).toBe(422);
    expect((await op.post("/billing/clock", { advance_days: -1 })).status).toBe(422);
    const fwd = await op.post("/billing/clock", { advance_days: 1 });
    expect(fwd.status).toBe(200);
    expect(fwd.body.now).toBe(new Date(now.getTime() + 86_400_000).toISOString());
    expect(Array.isArray(fwd.body.moves) && typeof fwd.body.invoices_issued === "number").toBe(true);
  });

  test("the internal actions billing adds or uses refuse tenants (403) and are not on HTTP", async () => {
    const tenantCall = asTenant(T1);
    for (const [action, params] of [
      ["v1.billing.now", {}], ["v1.billing.overdue", { deployment_id: "00000000-0000-4000-8000-000000000000" }], ["v1.billing.issueInitial", { deployment_id: "00000000-0000-4000-8000-000000000000" }],
      ["v1.subscriptions.billable", {}], ["v1.subscriptions.advancePeriods", { now: new Date().toISOString() }], ["v1.deployments.byIds", { ids: [] }],
    ] as const) {
      await expect(a.call(action, params, tenantCall)).rejects.toMatchObject({ code: 403 });
    }
    expect((await op.get("/billing/now")).status).toBe(404);
  });

  test("two payments and a void of one invoice at once: one wins, the others are 409 INVOICE_NOT_OPEN", async () => {
    const d = await deployment(t1);
    await subscribe(t1, d.id);
    const [inv] = await invoicesOf(d.id);
    const answers = await Promise.all([op.post(`/invoices/${inv.id}/pay`, { reference: "a" }), op.post(`/invoices/${inv.id}/pay`, { reference: "b" }), op.post(`/invoices/${inv.id}/void`)]);
    expect(answers.map((r) => r.status).sort()).toEqual([200, 409, 409]);
    expect(answers.filter((r) => r.status === 409).every((r) => r.body.type === "INVOICE_NOT_OPEN")).toBe(true);
    // The void can win the race too: then nothing was paid, and no `paid` event may exist.
    const payWon = answers.findIndex((r) => r.status === 200) < 2;
    expect((await pg.query("select count(*)::int as n from invoice_events where $1 = any(invoice_ids) and type = 'paid'", [inv.id])).rows[0].n).toBe(payWon ? 1 : 0);
    expect((await pg.query("select status from invoices where id = $1", [inv.id])).rows[0].status).toBe(payWon ? "paid" : "void");
    expect((await op.post("/invoices/00000000-0000-4000-8000-000000000000/pay", {})).status).toBe(404);
  });

  test("another tenant's invoices are 404 and never listed", async () => {
    const d = await deployment(t1);
    await subscribe(t1, d.id);
    const [inv] = await invoicesOf(d.id, t1);
    expect((await t2.get(`/invoices/${inv.id}`)).status).toBe(404);
    expect((await t2.get(`/invoices/${inv.id}`)).body.type).toBe("NOT_FOUND");
    expect(await invoicesOf(d.id, t2)).toEqual([]);
    expect((await t2.get(`/invoices?tenant_id=${T1}`)).body.items).toEqual([]);
    const mine = (await t1.get("/invoices?limit=200")).body.items;
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((i: any) => i.tenant_id === T1)).toBe(true);
    expect((await t1.get("/invoices/not-a-uuid")).status).toBe(404);
    expect((await t1.get("/invoices?status=overdue")).status).toBe(422);
    expect((await t1.get("/invoices?limit=201")).status).toBe(422);
  });

  test("GET /invoices pages newest first with a keyset cursor", async () => {
    const all = (await op.get(`/invoices?tenant_id=${T1}&limit=200`)).body.items.map((i: any) => i.id);
    expect(all.length).toBeGreaterThan(5);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const res: any = await op.get(`/invoices?tenant_id=${T1}&limit=3${cursor ? `&cursor=${cursor}` : ""}`);
      expect(res.body.items.length).toBeLessThanOrEqual(3);
      seen.push(...res.body.items.map((i: any) => i.id));
      cursor = res.body.next_cursor;
    } while (cursor);
    expect(seen).toEqual(all);
    const issued = (await op.get(`/invoices?tenant_id=${T1}&limit=200`)).body.items.map((i: any) => i.issued_at);
    expect([...issued].sort().reverse()).toEqual(issued);
  });

  test("without BILLING_TEST_CLOCK the clock routes are 404 and v1.billing.now is the wall clock", async () => {
    const wall = await startNode(["api", "billing"], { settings: { billing: { testClock: false, runMs: 0, eventSweepMs: 0 } } });
    try {
      const w = client(apiUrl(wall), await token({ roles: ["platform-admin"] }));
      expect((await w.get("/billing/clock")).status).toBe(404);
      expect((await w.post("/billing/clock", { advance_days: 1 })).status).toBe(404);
      const { now } = (await wall.call("v1.billing.now", {}, asAdmin)) as { now: string };
      expect(Math.abs(Date.parse(now) - Date.now())).toBeLessThan(5000);
    } finally {
      await wall.stop();
    }
  });

  test("the test clock is refused with NODE_ENV=production", async () => {
    expect(() => clockFor(true, async () => [], { NODE_ENV: "production" })).toThrow(/refused/);
    expect(clockFor(false, async () => [], { NODE_ENV: "production" }).test).toBe(false);
  });
});
