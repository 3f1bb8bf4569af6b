import type { ServiceSchema } from "moleculer";
import { Errors } from "moleculer";
import { requireOperator, type ActionCtx } from "../lib/access";
import { dollarsToCents, type Balance } from "../lib/digitalocean";
import { iso, type Page } from "../lib/dto";
import { DEPLOYMENT_STATES } from "../entities/deployment";
import { doClientFrom, provider } from "../lib/provider";

/**
 * Operator money views (SPEC §7, docs/billing.md): the provider's balance next to the platform's monthly recurring
 * revenue, and per-deployment margin (revenue − cloud cost). Billing owns no tables: everything comes from the
 * owning services' actions (`v1.subscriptions.listForRevenue`, `v1.deployments.list`, `v1.inventory.list`), called
 * with the operator's own identity, and from the provider's `GET /v2/customers/my/balance`.
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
        const [raw, subs] = await Promise.all([
          provider(() => this.doClient.getBalance() as Promise<Balance>),
          this.activeSubscriptions(ctx, undefined) as Promise<RevenueSubscription[]>,
        ]);
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
        const [deployments, resources, subs] = (await Promise.all([
          this.drain(ctx, "v1.deployments.list", { tenant_id: p.tenant_id, state: p.state, limit: PAGE }),
          this.drain(ctx, "v1.inventory.list", { tenant_id: p.tenant_id, limit: PAGE }),
          this.activeSubscriptions(ctx, p.tenant_id),
        ])) as [DeploymentRow[], ResourceRow[], RevenueSubscription[]];

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
        for (const s of subs) {
          if (!listed.has(s.deployment_id)) continue;
          const byCur = new Map([...monthlyCharges(s)].map(([c, v]) => [c, v.plan + v.addons]));
          revenue.set(s.deployment_id, { sub: s, byCur });
        }

        const items: MarginItem[] = [];
        for (const d of deployments) {
          const rev = revenue.get(d.id);
          const costs = cost.get(d.id) ?? new Map<string, { cents: number; resources: number }>();
          const currencies = [...new Set([...(rev?.byCur.keys() ?? []), ...costs.keys()])].sort();
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
              resources: c?.resources ?? 0, flags,
            });
          }
        }

        const totals = new Map<string, { currency: string; deployments: number; revenue_cents: number; cost_cents: number; margin_cents: number; margin_pct: number | null }>();
        for (const it of items) {
          const t = totals.get(it.currency) ?? totals.set(it.currency, { currency: it.currency, deployments: 0, revenue_cents: 0, cost_cents: 0, margin_cents: 0, margin_pct: null }).get(it.currency)!;
          t.deployments++;
          t.revenue_cents += it.revenue_cents;
          t.cost_cents += it.cost_cents;
          t.margin_cents += it.margin_cents;
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

    ready: {
      access: "public",
      visibility: "public",
      handler() {
        // Billing owns no tables (it reads through the other services), so it has no database of its own to fail.
        return { database: true };
      },
    },
  },

  methods: {
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
