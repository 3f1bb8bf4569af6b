import { randomUUID } from "node:crypto";
import { LockMode } from "@mikro-orm/core";
import { Errors, type ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { Addon, Plan, PlanVersion, Template, TemplateVersion } from "../entities/catalog";
import { Subscription, SubscriptionAddon, SubscriptionChange } from "../entities/subscription";
import { DbMixin, emOf } from "../lib/db";
import { callAsSystem, currentUser, visibleTo, type ActionCtx } from "../lib/access";
import { conflict, invalid, mapDbError, notFound } from "../lib/errors";
import { iso, isoSql, type Page } from "../lib/dto";
import { subscriptionStatusFor } from "../lib/lifecycle";
import type { DeploymentDto } from "./deployments.service";
import { CatalogMixin, DEFAULT_SIZE, checkSize } from "./subscriptions/catalog";
import { SubscriptionStatusMixin } from "./subscriptions/status";
import { ResizeRevertMixin, resizeAfterPlanChange } from "./subscriptions/resize";
import { UUID } from "../lib/params";

/** What billing is told of a subscription (v1.subscriptions.billable). */
export interface BillableSubscription {
  subscription_id: string;
  deployment_id: string;
  tenant_id: string;
  status: string;
  plan_code: string;
  plan_name: string;
  plan_version: { id: string; version: number; price_cents: number; currency: string };
  addons: { code: string; name: string; unit_price_cents: number; currency: string; qty: number }[];
  /** Billing-clock time of subscribing (null for subscriptions older than billing). */
  started_at: string | null;
  current_period_start: string;
  inserted_at: string;
}
export interface BillableParams {
  statuses?: ("active" | "paused" | "cancelled")[];
  deployment_ids?: string[];
  limit?: number;
  cursor?: string;
}

const CODE = { type: "string", pattern: "^[a-z0-9][a-z0-9_-]{0,62}$", messages: { stringPattern: "'{field}' must be a lowercase code (a-z, 0-9, '_', '-')" } };
const CENTS = { type: "number", integer: true, min: 0, max: 100_000_000 };
const CURRENCY = { type: "string", pattern: "^[A-Z]{3}$", messages: { stringPattern: "'currency' must be an ISO 4217 code such as USD" } };
const QTY = { type: "number", integer: true, min: 1, max: 100_000 };
const SIZE = { type: "string", pattern: "^[a-z0-9][a-z0-9-]{0,63}$", optional: true, messages: { stringPattern: "'droplet_size' must be a DigitalOcean size slug such as s-2vcpu-4gb" } };

export interface SubscribeParams {
  id: string;
  plan_code: string;
  addons?: { code: string; qty: number }[];
}
export interface AttachAddonParams {
  id: string;
  code: string;
  qty: number;
}
export interface ChangePlanParams {
  id: string;
  plan_code?: string;
  version?: number;
}
export interface CreatePlanParams {
  code: string;
  name: string;
  price_cents: number;
  currency?: string;
  droplet_size?: string;
}
export interface CreatePlanVersionParams {
  code: string;
  price_cents?: number;
  currency?: string;
  droplet_size?: string;
}
export interface CreateAddonParams {
  code: string;
  name: string;
  unit_price_cents: number;
  currency?: string;
}
export interface UpdateAddonParams {
  code: string;
  name?: string;
  unit_price_cents?: number;
}

/** The current calendar month in UTC: [first day 00:00, first day of next month 00:00). */
export function currentMonthUtc(now = new Date()): { start: Date; end: Date } {
  return { start: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1)), end: new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1)) };
}

const planVersionDto = (v: PlanVersion) => ({ id: v.id, plan_code: v.plan_code, version: v.version, price_cents: v.price_cents, currency: v.currency, droplet_size: v.droplet_size, inserted_at: iso(v.inserted_at) });
const addonDto = (a: Addon) => ({ code: a.code, name: a.name, unit_price_cents: a.unit_price_cents, currency: a.currency, updated_at: iso(a.updated_at) });

const SubscriptionsService: ServiceSchema<any> = {
  name: "subscriptions",
  version: 1,
  mixins: [DbMixin([Plan, PlanVersion, Addon, Subscription, SubscriptionAddon, SubscriptionChange, Template, TemplateVersion]), SubscriptionStatusMixin, CatalogMixin, ResizeRevertMixin],

  actions: {
    // ---- catalog ----
    listPlans: {
      access: "signed-in",
      async handler(this: any, ctx: ActionCtx<unknown>) {
        const em = emOf(ctx);
        const [plans, versions] = await Promise.all([em.find(Plan, {}, { orderBy: { code: "asc" } }), em.find(PlanVersion, {}, { orderBy: { version: "asc" } })]);
        return { items: plans.map((p) => this.planDto(p, versions.filter((v) => v.plan_code === p.code))), next_cursor: null };
      },
    },
    listAddons: {
      access: "signed-in",
      async handler(ctx: ActionCtx<unknown>) {
        const addons = await emOf(ctx).find(Addon, {}, { orderBy: { code: "asc" } });
        return { items: addons.map(addonDto), next_cursor: null };
      },
    },
    createPlan: {
      access: "operator",
      params: { code: CODE, name: { type: "string", min: 1, max: 200 }, price_cents: CENTS, currency: { ...CURRENCY, optional: true }, droplet_size: SIZE },
      async handler(this: any, ctx: ActionCtx<CreatePlanParams>) {
        const p = ctx.params;
        if (p.droplet_size !== undefined) await checkSize(ctx, p.droplet_size);
        const now = new Date();
        const em = emOf(ctx);
        const plan = em.create(Plan, { code: p.code, name: p.name, inserted_at: now });
        const version = em.create(PlanVersion, { id: randomUUID(), plan_code: p.code, version: 1, price_cents: p.price_cents, currency: p.currency ?? "USD", droplet_size: p.droplet_size ?? DEFAULT_SIZE(), inserted_at: now });
        try {
          await em.flush();
        } catch (err) {
          mapDbError(err, () => conflict(`Plan '${p.code}' already exists`, "PLAN_EXISTS", { code: p.code }));
        }
        ctx.meta.$statusCode = 201;
        return { plan: this.planDto(plan, [version]) };
      },
    },
    createPlanVersion: {
      access: "operator",
      params: { code: { type: "string" }, price_cents: { ...CENTS, optional: true }, currency: { ...CURRENCY, optional: true }, droplet_size: SIZE },
      async handler(ctx: ActionCtx<CreatePlanVersionParams>) {
        const p = ctx.params;
        if (p.price_cents === undefined && p.droplet_size === undefined && p.currency === undefined) throw invalid("Nothing to change: give 'price_cents' and/or 'droplet_size'");
        // Checked before the lock is taken: the provider's size list is a call to another service.
        if (p.droplet_size !== undefined) await checkSize(ctx, p.droplet_size);
        try {
          const version = await emOf(ctx).transactional(async (em) => {
            // Lock the plan so two concurrent price changes get versions n+1 and n+2, not a unique violation.
            const plan = await em.findOne(Plan, { code: p.code }, { lockMode: LockMode.PESSIMISTIC_WRITE });
            if (!plan) throw notFound("Plan", p.code);
            const latest = await em.findOne(PlanVersion, { plan_code: p.code }, { orderBy: { version: "desc" } });
            // What the body leaves out is carried over from the newest version.
            const v = em.create(PlanVersion, {
              id: randomUUID(), plan_code: p.code, version: (latest?.version ?? 0) + 1, price_cents: p.price_cents ?? latest!.price_cents, currency: p.currency ?? latest?.currency ?? "USD",
              droplet_size: p.droplet_size ?? latest?.droplet_size ?? DEFAULT_SIZE(), inserted_at: new Date(),
            });
            await em.flush();
            return v;
          });
          ctx.meta.$statusCode = 201;
          return { plan_version: planVersionDto(version) };
        } catch (err) {
          mapDbError(err);
        }
      },
    },
    createAddon: {
      access: "operator",
      params: { code: CODE, name: { type: "string", min: 1, max: 200 }, unit_price_cents: CENTS, currency: { ...CURRENCY, optional: true } },
      async handler(ctx: ActionCtx<CreateAddonParams>) {
        const p = ctx.params;
        const now = new Date();
        const addon = emOf(ctx).create(Addon, { code: p.code, name: p.name, unit_price_cents: p.unit_price_cents, currency: p.currency ?? "USD", inserted_at: now, updated_at: now });
        try {
          await emOf(ctx).flush();
        } catch (err) {
          mapDbError(err, () => conflict(`Addon '${p.code}' already exists`, "ADDON_EXISTS", { code: p.code }));
        }
        ctx.meta.$statusCode = 201;
        return { addon: addonDto(addon) };
      },
    },
    updateAddon: {
      access: "operator",
      params: { code: { type: "string" }, name: { type: "string", min: 1, max: 200, optional: true }, unit_price_cents: { ...CENTS, optional: true } },
      async handler(ctx: ActionCtx<UpdateAddonParams>) {
        const p = ctx.params;
        if (p.name === undefined && p.unit_price_cents === undefined) throw invalid("Nothing to change: give 'name' and/or 'unit_price_cents'");
        const em = emOf(ctx);
        const addon = await em.findOne(Addon, { code: p.code });
        if (!addon) throw notFound("Addon", p.code);
        if (p.name !== undefined) addon.name = p.name;
        if (p.unit_price_cents !== undefined) addon.unit_price_cents = p.unit_price_cents;
        addon.updated_at = new Date();
        await em.flush();
        return { addon: addonDto(addon) };
      },
    },

    // ---- subscriptions ----
    subscribe: {
      access: "scoped",
      params: {
        id: { type: "string" },
        plan_code: { type: "string", min: 1, max: 64 },
        addons: { type: "array", optional: true, max: 50, items: { type: "object", strict: true, props: { code: { type: "string", min: 1, max: 64 }, qty: QTY } } },
      },
      async handler(this: any, ctx: ActionCtx<SubscribeParams>) {
        const user = currentUser(ctx);
        const deployment = await this.billableDeployment(ctx, ctx.params.id);
        const p = ctx.params;
        const codes = (p.addons ?? []).map((a) => a.code);
        if (new Set(codes).size !== codes.length) throw invalid("Each addon may appear once in 'addons'", [{ field: "addons" }]);
        const now = new Date();
        const billingNow = await this.billingNow(ctx);
        const period = currentMonthUtc(billingNow);
        const em = emOf(ctx);
        try {
          const sub = await em.transactional(async (tx) => {
            const version = await this.newestVersion(tx, p.plan_code);
            const addons = await this.addonsByCode(tx, codes);
            const s = tx.create(Subscription, {
              id: randomUUID(), deployment_id: deployment.id, tenant_id: deployment.tenant_id, plan_code: version.plan_code, plan_version_id: version.id, status: subscriptionStatusFor(deployment.state) ?? "active",
              current_period_start: period.start, current_period_end: period.end,
              trial_ends_at: deployment.state === "trial" ? (deployment.trial_ends_at ? new Date(deployment.trial_ends_at) : period.end) : null, started_at: billingNow, inserted_at: now, updated_at: now,
            } as any);
            for (const a of p.addons ?? []) this.snapshotAddon(tx, s.id, addons.get(a.code)!, a.qty, now);
            tx.create(SubscriptionChange, { id: randomUUID(), subscription_id: s.id, from_plan_version_id: null, to_plan_version_id: version.id, actor: user.sub, occurred_at: now });
            await tx.flush();
            return s;
          });
          // Billing issues the first invoice; a lost call loses nothing (every billing run issues missing ones).
          await callAsSystem(ctx, "subscriptions", "v1.billing.issueInitial", { deployment_id: deployment.id }).catch((err: Error) => this.logger.warn({ err: err.message, deployment_id: deployment.id }, "first invoice left to the next billing run"));
          ctx.meta.$statusCode = 201;
          return { subscription: await this.subscriptionDto(em, sub) };
        } catch (err) {
          mapDbError(err, () => conflict(`Deployment ${deployment.id} already has a subscription`, "ALREADY_SUBSCRIBED", { deployment_id: deployment.id }));
        }
      },
    },
    attachAddon: {
      access: "scoped",
      params: { id: { type: "string" }, code: { type: "string", min: 1, max: 64 }, qty: { ...QTY, optional: true } },
      async handler(this: any, ctx: ActionCtx<AttachAddonParams>) {
        await this.billableDeployment(ctx, ctx.params.id);
        const p = ctx.params;
        const em = emOf(ctx);
        const sub = await this.subscriptionOf(em, ctx.params.id);
        const addon = (await this.addonsByCode(em, [p.code])).get(p.code)!;
        this.snapshotAddon(em, sub.id, addon, p.qty ?? 1, new Date());
        try {
          await em.flush();
        } catch (err) {
          mapDbError(err, () => conflict(`Addon '${p.code}' is already attached`, "ADDON_ALREADY_ATTACHED", { code: p.code }));
        }
        ctx.meta.$statusCode = 201;
        return { subscription: await this.subscriptionDto(em, sub) };
      },
    },
    changePlan: {
      access: "scoped",
      params: { id: { type: "string" }, plan_code: { type: "string", min: 1, max: 64, optional: true }, version: { type: "number", integer: true, min: 1, optional: true } },
      async handler(this: any, ctx: ActionCtx<ChangePlanParams>) {
        const user = currentUser(ctx);
        await this.billableDeployment(ctx, ctx.params.id);
        const p = ctx.params;
        if (p.plan_code === undefined && p.version === undefined) throw invalid("Give 'plan_code' and/or 'version'");
        const em = emOf(ctx);
        let moved: { from: PlanVersion; to: PlanVersion } | null = null;
        const sub = await em.transactional(async (tx) => {
          const s = await tx.findOne(Subscription, { deployment_id: p.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (!s) throw notFound("Subscription for deployment", p.id);
          const planCode = p.plan_code ?? s.plan_code;
          const target = p.version === undefined ? await this.newestVersion(tx, planCode) : await tx.findOne(PlanVersion, { plan_code: planCode, version: p.version });
          if (!target) throw invalid(`Plan '${planCode}' has no version ${p.version}`, [{ field: "version" }]);
          if (target.id === s.plan_version_id) return s;
          moved = { from: await tx.findOneOrFail(PlanVersion, { id: s.plan_version_id }), to: target };
          tx.create(SubscriptionChange, { id: randomUUID(), subscription_id: s.id, from_plan_version_id: s.plan_version_id, to_plan_version_id: target.id, actor: user.sub, occurred_at: new Date() });
          s.plan_code = target.plan_code;
          s.plan_version_id = target.id;
          s.updated_at = new Date();
          await tx.flush();
          return s;
        });
        // Another droplet size: the live droplet follows through a resize saga (services/subscriptions/resize.ts).
        const m = moved as { from: PlanVersion; to: PlanVersion } | null;
        const saga = m ? await resizeAfterPlanChange(ctx, em, sub, m.from, m.to, user.sub) : null;
        return { subscription: await this.subscriptionDto(em, sub), saga };
      },
    },
    forDeployment: {
      access: "scoped",
      visibility: "public",
      params: { deployment_id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string }>) {
        const user = currentUser(ctx);
        if (!UUID.test(ctx.params.deployment_id)) return null;
        const s = await this.readSubscription(emOf(ctx), "s.deployment_id = ?", [ctx.params.deployment_id]);
        return s && visibleTo(user, s.tenant_id) ? s : null;
      },
    },
    /**
     * Internal, operators only (the billing service): every `active` subscription with what it is billed at — its
     * plan version's price and currency and its addons at their snapshotted unit price and qty — optionally for
     * one tenant. Keyset-paginated by subscription id (`cursor` = the previous page's `next_cursor`).
     */
    listForRevenue: {
      access: "internal",
      visibility: "public",
      params: {
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        limit: { type: "number", integer: true, min: 1, max: 1000, convert: true, optional: true },
        cursor: { type: "uuid", optional: true },
      },
      async handler(ctx: ActionCtx<{ tenant_id?: string; limit?: number; cursor?: string }>) {
        const p = ctx.params;
        const limit = p.limit ?? 500;
        const em = emOf(ctx);
        const where: Record<string, unknown> = { status: "active" };
        if (p.tenant_id) where.tenant_id = p.tenant_id;
        if (p.cursor) where.id = { $gt: p.cursor };
        const rows = await em.find(Subscription, where as any, { orderBy: { id: "asc" }, limit: limit + 1 });
        const page = rows.slice(0, limit);
        const ids = page.map((s) => s.id);
        const versionIds = [...new Set(page.map((s) => s.plan_version_id))];
        const [versions, addons] = await Promise.all([
          versionIds.length ? em.find(PlanVersion, { id: { $in: versionIds } }) : [],
          ids.length ? em.find(SubscriptionAddon, { subscription_id: { $in: ids } }, { orderBy: { attached_at: "asc", addon_code: "asc" } }) : [],
        ]);
        const versionById = new Map(versions.map((v) => [v.id, v]));
        const addonsBySub = new Map<string, SubscriptionAddon[]>();
        for (const a of addons) {
          const list = addonsBySub.get(a.subscription_id);
          if (list) list.push(a);
          else addonsBySub.set(a.subscription_id, [a]);
        }
        const items = page.map((s) => {
          const v = versionById.get(s.plan_version_id)!;
          return {
            subscription_id: s.id,
            deployment_id: s.deployment_id,
            tenant_id: s.tenant_id,
            status: s.status,
            plan_code: s.plan_code,
            plan_version: { id: v.id, version: v.version, price_cents: v.price_cents, currency: v.currency },
            trial_ends_at: iso(s.trial_ends_at),
            addons: (addonsBySub.get(s.id) ?? []).map((a) => ({ code: a.addon_code, unit_price_cents: a.unit_price_cents, currency: a.currency, qty: a.qty })),
          };
        });
        return { items, next_cursor: rows.length > limit && page.length ? page[page.length - 1].id : null };
      },
    },
    /** Internal (billing): subscriptions with their plan version price and addon snapshots, in one query per page. */
    billable: {
      visibility: "public",
      access: "internal",
      params: {
        statuses: { type: "array", items: { type: "enum", values: ["active", "paused", "cancelled"] }, optional: true },
        deployment_ids: { type: "array", items: "uuid", max: 1000, optional: true },
        limit: { type: "number", integer: true, min: 1, max: 5000, optional: true },
        cursor: { type: "uuid", optional: true },
      },
      async handler(ctx: ActionCtx<BillableParams>): Promise<Page<BillableSubscription>> {
        const p = ctx.params;
        const limit = p.limit ?? 1000;
        const conds = ["s.status = any(?::text[])"];
        const args: unknown[] = [`{${(p.statuses ?? ["active"]).join(",")}}`];
        if (p.deployment_ids) conds.push("s.deployment_id = any(?::uuid[])") && args.push(`{${p.deployment_ids.join(",")}}`);
        if (p.cursor) conds.push("s.id > ?") && args.push(p.cursor);
        const rows = await emOf(ctx).getConnection().execute(
          `select s.id as subscription_id, s.deployment_id, s.tenant_id, s.status, s.plan_code, pl.name as plan_name,
             json_build_object('id', v.id, 'version', v.version, 'price_cents', v.price_cents, 'currency', v.currency) as plan_version,
             (select coalesce(json_agg(json_build_object('code', a.addon_code, 'name', ad.name, 'unit_price_cents', a.unit_price_cents, 'currency', a.currency, 'qty', a.qty) order by a.attached_at, a.addon_code), '[]')
                from subscription_addons a join addons ad on ad.code = a.addon_code where a.subscription_id = s.id) as addons,
             ${isoSql("s.started_at")} as started_at, ${isoSql("s.current_period_start")} as current_period_start, ${isoSql("s.inserted_at")} as inserted_at
           from subscriptions s join plan_versions v on v.id = s.plan_version_id join plans pl on pl.code = v.plan_code
           where ${conds.join(" and ")} order by s.id limit ${limit + 1}`,
          args,
        );
        const page = rows.slice(0, limit) as BillableSubscription[];
        return { items: page, next_cursor: rows.length > limit ? page[page.length - 1].subscription_id : null };
      },
    },
    /** Internal (billing): subscriptions whose period has ended move to the billing clock's current month. */
    advancePeriods: {
      visibility: "public",
      access: "internal",
      params: { now: { type: "string" } },
      async handler(ctx: ActionCtx<{ now: string }>) {
        const period = currentMonthUtc(new Date(ctx.params.now));
        const res = await emOf(ctx).getConnection().execute(
          "update subscriptions set current_period_start = ?::timestamptz, current_period_end = ?::timestamptz, updated_at = now(), version = version + 1 where current_period_end <= ?::timestamptz",
          [period.start.toISOString(), period.end.toISOString(), period.start.toISOString()], "run");
        return { updated: (res as any).affectedRows ?? 0 };
      },
    },
  },

  methods: {
    /** The billing clock's now (SPEC §3: periods follow it); the wall clock on a cluster without billing. */
    async billingNow(ctx: ActionCtx<unknown>): Promise<Date> {
      try {
        // broker.call, not ctx.call: a system user in a child call's meta would be merged back into this request's.
        return new Date(((await callAsSystem<{ now: string }>(ctx, "subscriptions", "v1.billing.now"))).now);
      } catch (err) {
        if (err instanceof Errors.ServiceNotFoundError) return new Date();
        throw err;
      }
    },
    /** Scoping goes through the deployments service: another tenant's deployment is a 404 here too. */
    async deploymentFor(ctx: ActionCtx<unknown>, id: string): Promise<DeploymentDto> {
      const res = (await ctx.call("v1.deployments.find", { id })) as { deployment: DeploymentDto };
      return res.deployment;
    },
    async newestVersion(em: EntityManager, planCode: string): Promise<PlanVersion> {
      const v = await em.findOne(PlanVersion, { plan_code: planCode }, { orderBy: { version: "desc" } });
      if (!v) throw invalid(`Unknown plan '${planCode}'`, [{ field: "plan_code", actual: planCode }]);
      return v;
    },
    async addonsByCode(em: EntityManager, codes: string[]): Promise<Map<string, Addon>> {
      const found = codes.length ? await em.find(Addon, { code: { $in: codes } }) : [];
      const byCode = new Map(found.map((a) => [a.code, a]));
      const missing = codes.filter((c) => !byCode.has(c));
      if (missing.length) throw invalid(`Unknown addon${missing.length > 1 ? "s" : ""} ${missing.map((c) => `'${c}'`).join(", ")}`, [{ field: "addons", actual: missing }]);
      return byCode;
    },
    snapshotAddon(em: EntityManager, subscriptionId: string, addon: Addon, qty: number, now: Date) {
      return em.create(SubscriptionAddon, { id: randomUUID(), subscription_id: subscriptionId, addon_code: addon.code, unit_price_cents: addon.unit_price_cents, currency: addon.currency, qty, attached_at: now });
    },
    async subscriptionOf(em: EntityManager, deploymentId: string): Promise<Subscription> {
      const s = await em.findOne(Subscription, { deployment_id: deploymentId });
      if (!s) throw notFound("Subscription for deployment", deploymentId);
      return s;
    },
    subscriptionDto(em: EntityManager, s: Subscription) {
      return this.readSubscription(em, "s.id = ?", [s.id]);
    },
    /**
     * A subscription with its plan version, snapshotted addons and plan changes in one query: it is on the
     * GET /deployments/:id path, where one round trip instead of four matters (README: Benchmarks).
     */
    async readSubscription(em: EntityManager, where: string, args: unknown[]) {
      const [r] = await em.getConnection().execute(
        `select s.id, s.deployment_id, s.tenant_id, s.status, s.plan_code,
           json_build_object('id', v.id, 'plan_code', v.plan_code, 'version', v.version, 'price_cents', v.price_cents, 'currency', v.currency, 'droplet_size', v.droplet_size, 'inserted_at', ${isoSql("v.inserted_at")}) as plan_version,
           ${isoSql("s.current_period_start")} as current_period_start, ${isoSql("s.current_period_end")} as current_period_end, ${isoSql("s.trial_ends_at")} as trial_ends_at,
           (select coalesce(json_agg(json_build_object('code', a.addon_code, 'unit_price_cents', a.unit_price_cents, 'currency', a.currency, 'qty', a.qty, 'attached_at', ${isoSql("a.attached_at")})
                    order by a.attached_at, a.addon_code), '[]') from subscription_addons a where a.subscription_id = s.id) as addons,
           (select coalesce(json_agg(json_build_object('from_plan_version_id', c.from_plan_version_id, 'to_plan_version_id', c.to_plan_version_id, 'actor', c.actor, 'occurred_at', ${isoSql("c.occurred_at")})
                    order by c.occurred_at), '[]') from subscription_changes c where c.subscription_id = s.id) as plan_changes,
           ${isoSql("s.inserted_at")} as inserted_at, ${isoSql("s.updated_at")} as updated_at
         from subscriptions s join plan_versions v on v.id = s.plan_version_id
         where ${where}`,
        args,
      );
      return r ? { ...r, trial_ends_at: r.trial_ends_at ?? null } : null;
    },
    planDto(plan: Plan, versions: PlanVersion[]) {
      const sorted = [...versions].sort((a, b) => a.version - b.version);
      const latest = sorted[sorted.length - 1];
      return { code: plan.code, name: plan.name, latest_version: latest ? planVersionDto(latest) : null, versions: sorted.map(planVersionDto) };
    },
  },
};

export default SubscriptionsService;
