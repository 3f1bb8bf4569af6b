/**
 * Pure billing arithmetic (SPEC §4): calendar-month periods in UTC, proration by days, invoice lines. Integer
 * cents only; rounding is half up, done in integers so no float ever touches money.
 */
import type { BillableSubscription } from "../subscriptions.service";

export type { BillableSubscription };
export const DAY_MS = 86_400_000;

export interface Period {
  start: Date;
  end: Date; // exclusive: the first instant of the next month
}

/** The calendar month (UTC) holding `at`. */
export function periodOf(at: Date): Period {
  return { start: new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1)), end: new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1)) };
}

/** 00:00 UTC of the day holding `at`. */
export function utcDay(at: Date): Date {
  return new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate()));
}

export const daysInPeriod = (p: Period) => Math.round((p.end.getTime() - p.start.getTime()) / DAY_MS);

/** Days billed when billing starts at `from`: its UTC day through the period's last day, both counted. */
export function daysLeft(from: Date, p: Period): number {
  const start = Math.max(utcDay(from).getTime(), p.start.getTime());
  return Math.max(0, Math.round((p.end.getTime() - start) / DAY_MS));
}

/** round(cents × days / ofDays), halves up, in exact integer arithmetic (cents ≥ 0). */
export function prorate(cents: number, days: number, ofDays: number): number {
  if (!Number.isInteger(cents) || cents < 0 || !Number.isInteger(days) || !Number.isInteger(ofDays) || ofDays <= 0) throw new RangeError("prorate takes non-negative integer cents and days");
  if (days >= ofDays) return cents;
  const num = cents * days;
  return Math.floor((2 * num + ofDays) / (2 * ofDays));
}

export interface InvoiceLineDraft {
  kind: "plan" | "addon";
  code: string;
  description: string;
  qty: number;
  unit_price_cents: number;
  amount_cents: number;
}
export interface InvoiceDraft {
  subscription_id: string;
  deployment_id: string;
  tenant_id: string;
  period_start: Date;
  period_end: Date;
  currency: string;
  total_cents: number;
  lines: InvoiceLineDraft[];
}

const ymd = (d: Date) => d.toISOString().slice(0, 10);

/**
 * The invoice of one subscription for one period: in full, or (`from` given) prorated from `from`'s UTC day to
 * the period's end. Lines use the plan version's price and the addons' snapshots. An invoice has one currency,
 * the plan's: an addon priced in another currency is left out (`skipped`) rather than added across currencies.
 */
export function draftInvoice(s: BillableSubscription, period: Period, from?: Date): { draft: InvoiceDraft; skipped: string[] } {
  const ofDays = daysInPeriod(period);
  const days = from ? daysLeft(from, period) : ofDays;
  const first = new Date(period.end.getTime() - days * DAY_MS);
  const span = `${ymd(first)} – ${ymd(new Date(period.end.getTime() - DAY_MS))}${days < ofDays ? `, ${days}/${ofDays} days` : ""}`;
  const currency = s.plan_version.currency;
  const lines: InvoiceLineDraft[] = [
    { kind: "plan", code: s.plan_code, description: `${s.plan_name} (version ${s.plan_version.version}), ${span}`, qty: 1, unit_price_cents: s.plan_version.price_cents, amount_cents: prorate(s.plan_version.price_cents, days, ofDays) },
  ];
  const skipped: string[] = [];
  for (const a of s.addons) {
    if (a.currency !== currency) {
      skipped.push(a.code);
      continue;
    }
    lines.push({ kind: "addon", code: a.code, description: `${a.name} × ${a.qty}, ${span}`, qty: a.qty, unit_price_cents: a.unit_price_cents, amount_cents: prorate(a.unit_price_cents * a.qty, days, ofDays) });
  }
  return {
    draft: { subscription_id: s.subscription_id, deployment_id: s.deployment_id, tenant_id: s.tenant_id, period_start: period.start, period_end: period.end, currency, total_cents: lines.reduce((t, l) => t + l.amount_cents, 0), lines },
    skipped,
  };
}
