import { daysInPeriod, daysLeft, draftInvoice, periodOf, prorate, utcDay, type BillableSubscription } from "../services/billing/pricing";
import { dunningMoves, planMoves, type BillingPolicy } from "../services/billing/dunning";

/* The billing arithmetic and the dunning ladder as pure functions: every figure here is worked out by hand. */

const at = (s: string) => new Date(s);
const policy: BillingPolicy = { suspendAfterDays: 14, cancelAfterDays: 30, retentionDays: 30 };

describe("periods and days", () => {
  test("a period is the calendar month in UTC, end exclusive", () => {
    expect(periodOf(at("2026-12-15T23:59:59.999Z"))).toEqual({ start: at("2026-12-01T00:00:00Z"), end: at("2027-01-01T00:00:00Z") });
    expect(periodOf(at("2027-02-01T00:00:00Z"))).toEqual({ start: at("2027-02-01T00:00:00Z"), end: at("2027-03-01T00:00:00Z") });
    expect(daysInPeriod(periodOf(at("2027-02-10T00:00:00Z")))).toBe(28);
    expect(daysInPeriod(periodOf(at("2028-02-10T00:00:00Z")))).toBe(29);
    expect(utcDay(at("2026-12-15T18:30:00Z"))).toEqual(at("2026-12-15T00:00:00Z"));
  });
  test("days_left counts the subscribe day (UTC) through the period's last day", () => {
    const dec = periodOf(at("2026-12-01T00:00:00Z"));
    expect(daysLeft(at("2026-12-15T10:00:00Z"), dec)).toBe(17);
    expect(daysLeft(at("2026-12-01T00:00:00Z"), dec)).toBe(31);
    expect(daysLeft(at("2026-12-31T23:59:59Z"), dec)).toBe(1);
    expect(daysLeft(at("2027-02-28T12:00:00Z"), periodOf(at("2027-02-01T00:00:00Z")))).toBe(1);
  });
});

describe("prorate", () => {
  test("round(cents × days / days_in_period), halves up, in integers", () => {
    expect(prorate(4900, 17, 31)).toBe(2687); // 2687.09
    expect(prorate(1500, 17, 31)).toBe(823); // 822.58
    expect(prorate(1, 15, 30)).toBe(1); // 0.5 → 1
    expect(prorate(3, 5, 30)).toBe(1); // 0.5 → 1
    expect(prorate(1, 14, 30)).toBe(0); // 0.47
    expect(prorate(4900, 31, 31)).toBe(4900);
    expect(prorate(0, 10, 30)).toBe(0);
    expect(prorate(100_000_000 * 100_000, 30, 31)).toBe(Math.round((1e13 * 30) / 31)); // large amounts stay exact
  });
  test("refuses fractions and negatives", () => {
    expect(() => prorate(1.5, 1, 30)).toThrow(RangeError);
    expect(() => prorate(-1, 1, 30)).toThrow(RangeError);
  });
});

describe("draftInvoice", () => {
  const sub: BillableSubscription = {
    subscription_id: "s", deployment_id: "d", tenant_id: "t", status: "active", plan_code: "studio", plan_name: "Studio",
    plan_version: { id: "v", version: 2, price_cents: 4900, currency: "USD" },
    addons: [{ code: "storage_50gb", name: "Storage, 50 GB", unit_price_cents: 750, currency: "USD", qty: 2 }, { code: "eur_thing", name: "EUR thing", unit_price_cents: 100, currency: "EUR", qty: 1 }],
    started_at: null, current_period_start: "2026-12-01T00:00:00.000Z", inserted_at: "2026-12-15T00:00:00.000Z",
  };
  test("prorated from the subscribe day: plan and each addon line rounded on their own", () => {
    const { draft, skipped } = draftInvoice(sub, periodOf(at("2026-12-15T00:00:00Z")), at("2026-12-15T09:00:00Z"));
    expect(draft.period_start).toEqual(at("2026-12-01T00:00:00Z"));
    expect(draft.period_end).toEqual(at("2027-01-01T00:00:00Z"));
    expect(draft.lines.map((l) => [l.kind, l.code, l.qty, l.unit_price_cents, l.amount_cents])).toEqual([["plan", "studio", 1, 4900, 2687], ["addon", "storage_50gb", 2, 750, 823]]);
    expect(draft.total_cents).toBe(3510);
    expect(draft.currency).toBe("USD");
    expect(draft.lines[0].description).toContain("2026-12-15 – 2026-12-31, 17/31 days");
    expect(skipped).toEqual(["eur_thing"]);
  });
  test("in full without a start", () => {
    const { draft } = draftInvoice(sub, periodOf(at("2027-01-01T00:00:00Z")));
    expect(draft.lines.map((l) => l.amount_cents)).toEqual([4900, 1500]);
    expect(draft.total_cents).toBe(6400);
  });
});

describe("the dunning ladder", () => {
  const due = at("2027-01-08T00:00:00Z");
  const day = (n: number) => new Date(due.getTime() + n * 86_400_000);
  test("active: past due from due_at, suspended 14 days later (through past_due), cancelled 30 days after due_at", () => {
    expect(dunningMoves("active", due, day(-0.001), policy)).toEqual([]);
    expect(dunningMoves("active", due, day(0), policy)).toEqual([{ to: "past_due", reason: "invoice_overdue" }]);
    expect(dunningMoves("past_due", due, day(13.9), policy)).toEqual([]);
    expect(dunningMoves("past_due", due, day(14), policy)).toEqual([{ to: "suspended", reason: "payment_overdue" }]);
    expect(dunningMoves("active", due, day(20), policy)).toEqual([{ to: "past_due", reason: "invoice_overdue" }, { to: "suspended", reason: "payment_overdue" }]);
    expect(dunningMoves("suspended", due, day(29), policy)).toEqual([]);
    expect(dunningMoves("suspended", due, day(30), policy)).toEqual([{ to: "cancelled", reason: "unpaid" }]);
    expect(dunningMoves("active", due, day(45), policy)).toEqual([{ to: "cancelled", reason: "unpaid" }]);
  });
  test("nothing overdue: back to active; paused waits for the cancel day", () => {
    expect(dunningMoves("past_due", null, day(3), policy)).toEqual([{ to: "active", reason: "payment_received" }]);
    expect(dunningMoves("suspended", day(10), day(3), policy)).toEqual([{ to: "active", reason: "payment_received" }]);
    expect(dunningMoves("active", null, day(3), policy)).toEqual([]);
    expect(dunningMoves("paused", due, day(20), policy)).toEqual([]);
    expect(dunningMoves("paused", due, day(30), policy)).toEqual([{ to: "cancelled", reason: "unpaid" }]);
    expect(dunningMoves("cancelled", due, day(40), policy)).toEqual([]);
  });
  test("trials, retention and the override", () => {
    const base = { billingActionSuspended: false, now: day(0), oldestOpenDueAt: null, trialEndsAt: null, subscribed: false, cancelledAt: null };
    expect(planMoves({ ...base, state: "trial", trialEndsAt: day(1) }, policy)).toEqual([]);
    expect(planMoves({ ...base, state: "trial", trialEndsAt: day(0), subscribed: true }, policy)).toEqual([{ to: "active", reason: "trial_converted" }]);
    expect(planMoves({ ...base, state: "trial", trialEndsAt: day(-1) }, policy)).toEqual([{ to: "cancelled", reason: "trial_expired" }]);
    expect(planMoves({ ...base, state: "cancelled", cancelledAt: day(-29.9) }, policy)).toEqual([]);
    expect(planMoves({ ...base, state: "cancelled", cancelledAt: day(-30) }, policy)).toEqual([{ to: "archived", reason: "retention_expired" }]);
    expect(planMoves({ ...base, state: "active", oldestOpenDueAt: day(-40), billingActionSuspended: true }, policy)).toEqual([]);
    expect(planMoves({ ...base, state: "trial", trialEndsAt: day(-1), billingActionSuspended: true }, policy)).toEqual([]);
  });
});
