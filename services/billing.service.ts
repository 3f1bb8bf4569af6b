import type { ServiceSchema } from "moleculer";
import { LockMode } from "@mikro-orm/core";
import { Errors } from "moleculer";
import { currentUser, listTenant, visibleTo, type ActionCtx } from "../lib/access";
import { dollarsToCents, type Balance } from "../lib/digitalocean";
import { iso, type Page } from "../lib/dto";
import { DbMixin, emOf } from "../lib/db";
import { conflict, invalid, notFound } from "../lib/errors";
import { keysetBefore, pageOf } from "../lib/pagination";
import { DEPLOYMENT_STATES } from "../entities/deployment";
import { Invoice, InvoiceLine, INVOICE_STATUSES, type InvoiceStatus } from "../entities/invoice";
import { doClientFrom, provider } from "../lib/provider";
import { BillingLoopMixin, type RunResult } from "./billing/loop";
import { BillingFeedMixin } from "./billing/feed";
import { invoiceDto, readInvoices, type InvoiceDto } from "./billing/invoices";
import { UUID, PAGE_PARAMS } from "../lib/params";

export type { RunResult, BillingMove } from "./billing/loop";
export type { InvoiceDto } from "./billing/invoices";
export type { InvoiceEventsSinceParams, InvoiceEventsSinceResult, InvoiceFeedItem } from "./billing/feed";
export interface ListInvoicesParams {
  deployment_id?: string;
  status?: InvoiceStatus;
  tenant_id?: string;
  limit?: number;
  cursor?: string;
}
export interface PayParams {
  id: string;
  reference?: string;
}
export interface MoveClockParams {
  advance_days?: number;
  now?: string;
}
/** v1.billing.overdue's answer (the lifecycle's 409 PAYMENT_REQUIRED). */
export interface OverdueResult {
  overdue: boolean;
  invoice_ids: string[];
}
/** SPEC §4: money views count active subscriptions of deployments in these states only. */
export const REVENUE_STATES = ["active", "past_due", "suspended"] as const;

/**
 * Billing (SPEC §4, docs/billing.md): invoices, payments, the billing clock and runs (services/billing/loop.ts), and
 * the operator money views — the provider's balance next to the platform's monthly recurring revenue, and
 * per-deployment margin. Subscription, deployment and inventory data come from the owning services' actions.
 */

export const MARGIN_SORTS = ["margin", "margin_pct", "revenue", "cost"] as const;
export type MarginSort = (typeof MARGIN_SORTS)[number];

/** What `v1.subscriptions.listForRevenue` returns per active subscription. */
export interface RevenueSubscription {
  subscription_id: string;
  deployment_id: string;
  tenant_id: string;
  plan_code: string;
  plan_version: { id: string; version: number; price_cents: number; currency: string };
  addons: { code: string; unit_price_cents: number; currency: string; qty: number }[];
}
interface DeploymentRow {
  id: string;
  tenant_id: string;
  slug: string;
  state: string;
}
interface ResourceRow {
  id: string;
  deployment_id: string | null;
  monthly_cost_cents: number;
  currency: string;
}
export interface MarginParams {
  tenant_id?: string;
  state?: string;
  sort?: MarginSort;
  order?: "asc" | "desc";
}
export interface MarginItem {
  deployment_id: string;
  tenant_id: string;
  slug: string;
  state: string;
  subscription_id: string | null;
  plan_code: string | null;
  currency: string;
  revenue_cents: number;
  cost_cents: number;
  margin_cents: number;
  margin_pct: number | null;
  resources: number;
  open_invoices_cents: number;
  overdue_invoices_cents: number;
  flags: string[];
}

const PAGE = 200;
/** Cloud cost is USD at DigitalOcean; a deployment with neither revenue nor cost is shown in it. */
const DEFAULT_CURRENCY = "USD";

/** margin / revenue in percent, 2 decimals, half away from zero; null when there is no revenue to divide by. */
export function marginPct(margin: number, revenue: number): number | null {
  if (revenue === 0) return null;
  const basisPoints = (margin * 10_000) / revenue;
  return (Math.sign(basisPoints) * Math.round(Math.abs(basisPoints))) / 100 || 0;
}

/** A subscription's monthly price per currency: the plan version's price plus Σ addon snapshot unit price × qty. */
export function monthlyCharges(s: RevenueSubscription): Map<string, { plan: number; addons: number }> {
  const out = new Map<string, { plan: number; addons: number }>();
  const at = (c: string) => out.get(c) ?? out.set(c, { plan: 0, addons: 0 }).get(c)!;
  at(s.plan_version.currency).plan += s.plan_version.price_cents;
  for (const a of s.addons) at(a.currency).addons += a.unit_price_cents * a.qty;
  return out;
}

/** A provider amount ("12.34") as integer cents, exactly; anything else is the provider's fault (502). */
function cents(field: string, value: unknown): number {
  try {
    if (typeof value !== "string" && typeof value !== "number") throw new TypeError("not an amount");
    return dollarsToCents(String(value));
  } catch {
    throw new Errors.MoleculerError(`DigitalOcean: balance field '${field}' is not a decimal amount`, 502, "PROVIDER_ERROR", { provider: "digitalocean", field, value: value ?? null });
  }
}

const BillingService: ServiceSchema<any> = {
  name: "billing",
  version: 1,
  mixins: [DbMixin([Invoice, InvoiceLine]), BillingLoopMixin, BillingFeedMixin],
  settings: {
    // DigitalOcean API root and token; default to DO_API_URL / DO_TOKEN / the embedded simulator (lib/provider.ts).
    doApiUrl: undefined,
    doToken: undefined,
  },

  created() {
    this.doClient = doClientFrom(this.settings);
  },

  actions: {
    balance: {
      access: "operator",
      async handler(this: any, ctx: ActionCtx<unknown>) {
        const [raw, all, billable] = await Promise.all([
          provider(() => this.doClient.getBalance() as Promise<Balance>),
          this.activeSubscriptions(ctx, undefined) as Promise<RevenueSubscription[]>,
          Promise.all(REVENUE_STATES.map((state) => this.drain(ctx, "v1.deployments.list", { state, limit: PAGE }))) as Promise<DeploymentRow[][]>,
        ]);
        const counted = new Set(billable.flat().map((d) => d.id));
        const subs = all.filter((s) => counted.has(s.deployment_id));
        const mrr = new Map<string, { currency: string; mrr_cents: number; plans_cents: number; addons_cents: number; subscriptions: number }>();
        for (const s of subs) {
          for (const [currency, c] of monthlyCharges(s)) {
            const row = mrr.get(currency) ?? mrr.set(currency, { currency, mrr_cents: 0, plans_cents: 0, addons_cents: 0, subscriptions: 0 }).get(currency)!;
            row.plans_cents += c.plan;
            row.addons_cents += c.addons;
            row.mrr_cents += c.plan + c.addons;
            row.subscriptions++;
          }
        }
        return {
          provider: {
            name: "digitalocean",
            currency: "USD",
            month_to_date_balance_cents: cents("month_to_date_balance", raw?.month_to_date_balance),
            account_balance_cents: cents("account_balance", raw?.account_balance),
            month_to_date_usage_cents: cents("month_to_date_usage", raw?.month_to_date_usage),
            generated_at: raw?.generated_at && !Number.isNaN(Date.parse(raw.generated_at)) ? iso(raw.generated_at) : (raw?.generated_at ?? null),
          },
          revenue: {
            as_of: new Date().toISOString(),
            mrr: [...mrr.values()].sort((a, b) => a.currency.localeCompare(b.currency)),
          },
        };
      },
    },

    margin: {
      access: "operator",
      params: {
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        state: { type: "enum", values: DEPLOYMENT_STATES, optional: true },
        sort: { type: "enum", values: MARGIN_SORTS, optional: true },
        order: { type: "enum", values: ["asc", "desc"], optional: true },
      },
      async handler(this: any, ctx: ActionCtx<MarginParams>) {
        const p = ctx.params;
        const [deployments, resources, subs, owed] = (await Promise.all([
          this.drain(ctx, "v1.deployments.list", { tenant_id: p.tenant_id, state: p.state, limit: PAGE }),
          this.drain(ctx, "v1.inventory.list", { tenant_id: p.tenant_id, limit: PAGE }),
          this.activeSubscriptions(ctx, p.tenant_id),
          this.owedByDeployment(p.tenant_id),
        ])) as [DeploymentRow[], ResourceRow[], RevenueSubscription[], Map<string, Map<string, { open: number; overdue: number }>>];
        const revenueStates = new Set<string>(REVENUE_STATES);

        const listed = new Set(deployments.map((d) => d.id));
        // Live resources (destroyed ones are not listed) by deployment and currency; the rest is unattributed.
        const cost = new Map<string, Map<string, { cents: number; resources: number }>>();
        const unattributed = new Map<string, { currency: string; cost_cents: number; resources: number }>();
        for (const r of resources) {
          if (r.deployment_id && listed.has(r.deployment_id)) {
            const byCur = cost.get(r.deployment_id) ?? cost.set(r.deployment_id, new Map()).get(r.deployment_id)!;
            const c = byCur.get(r.currency) ?? byCur.set(r.currency, { cents: 0, resources: 0 }).get(r.currency)!;
            c.cents += r.monthly_cost_cents;
            c.resources++;
          } else if (!r.deployment_id || !p.state) {
            // Linked to nothing, or (with no state filter narrowing the list) to a deployment nobody knows.
            const u = unattributed.get(r.currency) ?? unattributed.set(r.currency, { currency: r.currency, cost_cents: 0, resources: 0 }).get(r.currency)!;
            u.cost_cents += r.monthly_cost_cents;
            u.resources++;
          }
        }
        const revenue = new Map<string, { sub: RevenueSubscription; byCur: Map<string, number> }>();
        const stateOf = new Map(deployments.map((d) => [d.id, d.state]));
        for (const s of subs) {
          if (!listed.has(s.deployment_id) || !revenueStates.has(stateOf.get(s.deployment_id)!)) continue;
          const byCur = new Map([...monthlyCharges(s)].map(([c, v]) => [c, v.plan + v.addons]));
          revenue.set(s.deployment_id, { sub: s, byCur });
        }

        const items: MarginItem[] = [];
        for (const d of deployments) {
          const rev = revenue.get(d.id);
          const costs = cost.get(d.id) ?? new Map<string, { cents: number; resources: number }>();
          const dues = owed.get(d.id) ?? new Map<string, { open: number; overdue: number }>();
          const currencies = [...new Set([...(rev?.byCur.keys() ?? []), ...costs.keys(), ...dues.keys()])].sort();
          if (!currencies.length) currencies.push(DEFAULT_CURRENCY);
          const totalRevenue = [...(rev?.byCur.values() ?? [])].reduce((a, b) => a + b, 0);
          const totalCost = [...costs.values()].reduce((a, b) => a + b.cents, 0);
          const flags: string[] = [];
          if (totalCost > 0 && totalRevenue === 0) flags.push("cost_without_revenue");
          if (totalRevenue > 0 && totalCost === 0) flags.push("revenue_without_cost");
          if (currencies.length > 1) flags.push("multi_currency");
          for (const currency of currencies) {
            const revenue_cents = rev?.byCur.get(currency) ?? 0;
            const c = costs.get(currency);
            const cost_cents = c?.cents ?? 0;
            const margin_cents = revenue_cents - cost_cents;
            items.push({
              deployment_id: d.id, tenant_id: d.tenant_id, slug: d.slug, state: d.state,
              subscription_id: rev?.sub.subscription_id ?? null, plan_code: rev?.sub.plan_code ?? null,
              currency, revenue_cents, cost_cents, margin_cents, margin_pct: marginPct(margin_cents, revenue_cents),
              resources: c?.resources ?? 0, open_invoices_cents: dues.get(currency)?.open ?? 0, overdue_invoices_cents: dues.get(currency)?.overdue ?? 0, flags,
            });
          }
        }

        const totals = new Map<string, { currency: string; deployments: number; revenue_cents: number; cost_cents: number; margin_cents: number; margin_pct: number | null; open_invoices_cents: number; overdue_invoices_cents: number }>();
        for (const it of items) {
          const t = totals.get(it.currency) ?? totals.set(it.currency, { currency: it.currency, deployments: 0, revenue_cents: 0, cost_cents: 0, margin_cents: 0, margin_pct: null, open_invoices_cents: 0, overdue_invoices_cents: 0 }).get(it.currency)!;
          t.deployments++;
          t.revenue_cents += it.revenue_cents;
          t.cost_cents += it.cost_cents;
          t.margin_cents += it.margin_cents;
          t.open_invoices_cents += it.open_invoices_cents;
          t.overdue_invoices_cents += it.overdue_invoices_cents;
        }
        for (const t of totals.values()) t.margin_pct = marginPct(t.margin_cents, t.revenue_cents);

        return {
          items: this.sortItems(items, p.sort ?? "margin", p.order ?? "asc"),
          totals: [...totals.values()].sort((a, b) => a.currency.localeCompare(b.currency)),
          unattributed: [...unattributed.values()].sort((a, b) => a.currency.localeCompare(b.currency)),
          as_of: new Date().toISOString(),
          next_cursor: null,
        };
      },
    },

    // ---- the clock ----
    now: {
      visibility: "public",
      access: "internal",
      async handler(this: any) {
        return { now: (await this.clock.now()).toISOString() };
      },
    },
    clock: {
      access: "operator",
      async handler(this: any, ctx: ActionCtx<unknown>) {
        this.requireTestClock();
        return { now: (await this.clock.now()).toISOString() };
      },
    },
    moveClock: {
      access: "operator",
      params: {
        advance_days: { type: "number", min: 0, max: 3660, optional: true },
        now: { type: "string", pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}(:\\d{2}(\\.\\d{1,3})?)?(Z|[+-]\\d{2}:\\d{2})$", optional: true, messages: { stringPattern: "'now' must be an ISO 8601 date-time with a zone, e.g. 2027-01-01T00:00:00Z" } },
      },
      async handler(this: any, ctx: ActionCtx<MoveClockParams>): Promise<RunResult> {
        this.requireTestClock();
        const p = ctx.params;
        if ((p.advance_days === undefined) === (p.now === undefined)) throw invalid("Give exactly one of 'advance_days' and 'now'", [{ field: p.now === undefined ? "advance_days" : "now", type: "required" }]);
        if (p.now !== undefined && Number.isNaN(Date.parse(p.now))) throw invalid("'now' is not a valid date-time", [{ field: "now", actual: p.now }]);
        await this.clock.move(p);
        return this.runBilling();
      },
    },
    run: {
      access: "operator",
      async handler(this: any, ctx: ActionCtx<unknown>): Promise<RunResult> {
        return this.runBilling();
      },
    },

    // ---- invoices ----
    listInvoices: {
      access: "scoped",
      params: {
        deployment_id: { type: "uuid", optional: true },
        status: { type: "enum", values: INVOICE_STATUSES, optional: true },
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        ...PAGE_PARAMS,
      },
      async handler(ctx: ActionCtx<ListInvoicesParams>): Promise<Page<InvoiceDto>> {
        const user = currentUser(ctx);
        const p = ctx.params;
        const limit = p.limit ?? 50;
        const tenant = listTenant(user, p.tenant_id);
        if (tenant === null) return { items: [], next_cursor: null };
        const conds: string[] = [];
        const args: unknown[] = [];
        if (tenant) conds.push("i.tenant_id = ?") && args.push(tenant);
        if (p.deployment_id) conds.push("i.deployment_id = ?") && args.push(p.deployment_id);
        if (p.status) conds.push("i.status = ?") && args.push(p.status);
        const after = keysetBefore(p.cursor, "i.issued_at", "i.id");
        if (after) conds.push(after.sql) && args.push(...after.args);
        const rows = await readInvoices(emOf(ctx), `${conds.length ? `where ${conds.join(" and ")}` : ""} order by i.issued_at desc, i.id desc limit ${limit + 1}`, args);
        return pageOf(rows, limit, (i) => ({ time: i.issued_at, id: i.id }));
      },
    },
    getInvoice: {
      access: "scoped",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        return { invoice: await this.visibleInvoice(ctx, ctx.params.id) };
      },
    },
    pay: {
      access: "operator",
      params: { id: { type: "string" }, reference: { type: "string", min: 1, max: 200, optional: true } },
      async handler(this: any, ctx: ActionCtx<PayParams>) {
        return this.closeInvoice(ctx, ctx.params.id, "paid", ctx.params.reference ?? null);
      },
    },
    voidInvoice: {
      access: "operator",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        return this.closeInvoice(ctx, ctx.params.id, "void", null);
      },
    },
    /** Internal (lifecycle): the deployment's open invoices past their due date, by the billing clock. */
    overdue: {
      visibility: "public",
      access: "internal",
      params: { deployment_id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string }>): Promise<OverdueResult> {
        if (!UUID.test(ctx.params.deployment_id)) return { overdue: false, invoice_ids: [] };
        const now: Date = await this.clock.now();
        const rows = await this.sql("select id from invoices where deployment_id = ? and status = 'open' and due_at <= ?::timestamptz order by due_at, id", [ctx.params.deployment_id, now.toISOString()]);
        return { overdue: rows.length > 0, invoice_ids: rows.map((r: any) => r.id) };
      },
    },
    /** Internal (subscriptions, after a subscribe commits): the first invoice, prorated; none while in trial. */
    issueInitial: {
      visibility: "public",
      access: "internal",
      params: { deployment_id: { type: "uuid" } },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string }>) {
        return { invoice: await this.issueFirst(ctx.params.deployment_id) };
      },
    },
  },

  methods: {
    requireTestClock(this: any) {
      if (!this.clock.test) throw notFound("The billing test clock (BILLING_TEST_CLOCK=1)");
    },
    async visibleInvoice(this: any, ctx: ActionCtx<unknown>, id: string): Promise<InvoiceDto> {
      const user = currentUser(ctx);
      if (!UUID.test(id)) throw notFound("Invoice", id);
      const [inv] = await readInvoices(emOf(ctx), "where i.id = ?", [id]);
      if (!inv || !visibleTo(user, inv.tenant_id)) throw notFound("Invoice", id);
      return inv;
    },
    /** pay / void: only an open invoice, under its row lock; then its deployment settles (a payment may restore it). */
    async closeInvoice(this: any, ctx: ActionCtx<unknown>, id: string, status: "paid" | "void", reference: string | null) {
      if (!UUID.test(id)) throw notFound("Invoice", id);
      const now: Date = await this.clock.now();
      const { invoice, eventId } = await emOf(ctx).transactional(async (tx) => {
        const inv = await tx.findOne(Invoice, { id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
        if (!inv) throw notFound("Invoice", id);
        if (inv.status !== "open") throw conflict(`Invoice ${id} is ${inv.status}, not open`, "INVOICE_NOT_OPEN", { id, status: inv.status });
        inv.status = status;
        if (status === "paid") inv.paid_at = now;
        else inv.voided_at = now;
        if (reference !== null) inv.payment_reference = reference;
        await tx.flush();
        // Once per invoice: only the one request that found it open under the lock gets here.
        const [ev] = status === "paid" ? await tx.execute("insert into invoice_events (type, invoice_ids) values ('paid', ?::uuid[]) returning id", [`{${id}}`]) : [];
        const lines = await tx.find(InvoiceLine, { invoice_id: id }, { orderBy: { position: "asc" } });
        return { invoice: invoiceDto(inv, lines), eventId: ev ? Number(ev.id) : null };
      });
      if (eventId !== null) await this.publish("paid", [{ outbox_id: eventId, invoice }]);
      // Nothing overdue left: past_due/suspended go back to active now rather than at the next run.
      await this.settle(invoice.deployment_id, now, { waitMs: 3000 }).catch((err: Error) => this.logger.warn({ err: err.message, deployment_id: invoice.deployment_id }, "settle after payment left to the next run"));
      return { invoice };
    },
    /** Open and overdue (by the billing clock) invoice totals per deployment and currency. */
    async owedByDeployment(this: any, tenantId?: string): Promise<Map<string, Map<string, { open: number; overdue: number }>>> {
      const now: Date = await this.clock.now();
      const rows = await this.sql(
        `select deployment_id, currency, sum(total_cents)::bigint as open, coalesce(sum(total_cents) filter (where due_at <= ?::timestamptz), 0)::bigint as overdue
         from invoices where status = 'open' ${tenantId ? "and tenant_id = ?" : ""} group by deployment_id, currency`,
        tenantId ? [now.toISOString(), tenantId] : [now.toISOString()],
      );
      const out = new Map<string, Map<string, { open: number; overdue: number }>>();
      for (const r of rows) (out.get(r.deployment_id) ?? out.set(r.deployment_id, new Map()).get(r.deployment_id)!).set(r.currency.trim(), { open: Number(r.open), overdue: Number(r.overdue) });
      return out;
    },
    /** Every page of a `{items, next_cursor}` list action, called as the current (operator) user. */
    async drain(ctx: ActionCtx<unknown>, action: string, params: Record<string, unknown>): Promise<unknown[]> {
      const query = Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined));
      const all: unknown[] = [];
      let cursor: string | null = null;
      do {
        const page: Page<unknown> = await ctx.call(action, cursor ? { ...query, cursor } : query);
        all.push(...page.items);
        cursor = page.next_cursor;
      } while (cursor);
      return all;
    },
    activeSubscriptions(ctx: ActionCtx<unknown>, tenantId: string | undefined): Promise<unknown[]> {
      return this.drain(ctx, "v1.subscriptions.listForRevenue", { tenant_id: tenantId, limit: 1000 });
    },
    /** By the chosen figure; a null margin_pct sorts last either way; ties by deployment id, then currency. */
    sortItems(items: MarginItem[], sort: MarginSort, order: "asc" | "desc"): MarginItem[] {
      const key = (it: MarginItem): number | null =>
        sort === "margin" ? it.margin_cents : sort === "margin_pct" ? it.margin_pct : sort === "revenue" ? it.revenue_cents : it.cost_cents;
      const dir = order === "desc" ? -1 : 1;
      return [...items].sort((a, b) => {
        const ka = key(a);
        const kb = key(b);
        if (ka === null || kb === null) {
          if (ka !== kb) return ka === null ? 1 : -1;
        } else if (ka !== kb) return (ka - kb) * dir;
        return a.deployment_id.localeCompare(b.deployment_id) || a.currency.localeCompare(b.currency);
      });
    },
  },
};

export default BillingService;
