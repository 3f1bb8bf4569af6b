import { randomUUID } from "node:crypto";
import type { ServiceSchema } from "moleculer";
import { systemUser, type User } from "../../lib/access";
import type { Page } from "../../lib/dto";
import type { DeploymentState } from "../../entities/deployment";
import type { DeploymentDto } from "../deployments.service";
import { onEmbeddedDatabase } from "../../lib/db";
import { clockFor, type BillingClock } from "./clock";
import { planMoves, type BillingPolicy, type PlannedMove } from "./dunning";
import { insertInvoices, invoiceEventId, readInvoices, type InvoiceDto, type IssuedInvoice } from "./invoices";
import { pgArray } from "../../lib/dto";
import { DAY_MS, draftInvoice, periodOf, type BillableSubscription, type InvoiceDraft } from "./pricing";

/**
 * The billing loop (SPEC §4) as a mixin of the billing service: the clock, the run (period invoices, overdue
 * events, dunning, trial ends, retention), first invoices, the settle of one deployment under its lease, what
 * billing observes of deployments, and the invoice events' outbox. docs/billing.md explains the decisions.
 */
export interface BillingMove {
  deployment_id: string;
  from: DeploymentState;
  to: DeploymentState;
  reason: PlannedMove["reason"];
}
export interface RunResult {
  now: string;
  invoices_issued: number;
  moves: BillingMove[];
}
/** What billing has seen of a deployment, in billing-clock times (billing_deployments). */
interface Observation {
  deployment_id: string;
  state: string | null;
  last_event_id: number | null;
  trial_ends_at: Date | null;
  converted_at: Date | null;
  cancelled_at: Date | null;
}
type Deployment = DeploymentDto & { trial_ends_at?: string | null };

/** Deployments whose active subscription is invoiced; trial, paused and cancelled ones are not. */
export const BILLED_STATES: ReadonlySet<string> = new Set(["active", "past_due", "suspended"]);
/** States billing may move a deployment out of. */
const WATCHED: ReadonlySet<string> = new Set(["trial", "active", "past_due", "suspended", "paused", "cancelled"]);
/** Listed in full every run (few, and some have neither a subscription nor an invoice: trials, cancelled ones). */
const LISTED_STATES: DeploymentState[] = ["trial", "past_due", "suspended", "paused", "cancelled"];
const BILLING_USER: User = systemUser("billing");
/** How many deployments one run settles at once (each is a handful of queries and one or two calls). */
const SETTLE_CONCURRENCY = 8;
const asBilling = { meta: { user: BILLING_USER } };
const num = (v: string | undefined, dflt: number) => (v === undefined || v === "" ? dflt : Number(v));
const date = (v: unknown): Date | null => (v == null ? null : new Date(v as string));

export const BillingLoopMixin: Partial<ServiceSchema<any>> = {
  settings: {
    testClock: process.env.BILLING_TEST_CLOCK === "1",
    runMs: num(process.env.BILLING_RUN_MS, 60_000),
    invoiceDueDays: num(process.env.INVOICE_DUE_DAYS, 7),
    trialDays: num(process.env.TRIAL_DAYS, 14),
    suspendAfterDays: num(process.env.DUNNING_SUSPEND_AFTER_DAYS, 14),
    cancelAfterDays: num(process.env.DUNNING_CANCEL_AFTER_DAYS, 30),
    retentionDays: num(process.env.CANCELLED_RETENTION_DAYS, 30),
    eventSweepMs: num(process.env.BILLING_EVENTS_SWEEP_MS, 5_000),
    leaseMs: num(process.env.BILLING_LEASE_MS, 30_000),
  },

  created() {
    // Refused before anything starts: a production node must never bill on a movable clock.
    this.clock = clockFor(Boolean(this.settings.testClock), (q, a) => this.sql(q, a)) as BillingClock;
    this.policy = { suspendAfterDays: this.settings.suspendAfterDays, cancelAfterDays: this.settings.cancelAfterDays, retentionDays: this.settings.retentionDays } as BillingPolicy;
  },
  started() {
    const every = Number(this.settings.runMs);
    if (every > 0) this.runTimer = setInterval(() => void this.scheduledRun(), every);
    const sweep = Number(this.settings.eventSweepMs);
    if (sweep > 0) this.sweepTimer = setInterval(() => this.publishLeftovers().catch((err: Error) => this.logger.warn({ err: err.message }, "invoice event sweep failed")), sweep);
  },
  stopped() {
    clearInterval(this.runTimer);
    clearInterval(this.sweepTimer);
  },

  events: {
    "deployments.created": {
      handler(this: any, ctx: any) {
        return this.observe(ctx.params).catch((err: Error) => this.logger.warn({ err: err.message }, "billing could not record a deployment event"));
      },
    },
    "deployments.transitioned": {
      handler(this: any, ctx: any) {
        return this.observe(ctx.params).catch((err: Error) => this.logger.warn({ err: err.message }, "billing could not record a deployment event"));
      },
    },
  },

  methods: {
    sql(this: any, query: string, args: unknown[] = []): Promise<any[]> {
      return this.orm.em.getConnection().execute(query, args);
    },
    callAsBilling(this: any, action: string, params: object) {
      return this.broker.call(action, params, asBilling);
    },

    async scheduledRun(this: any) {
      if (this.running) return;
      this.running = true;
      try {
        const r: RunResult = await this.runBilling();
        if (r.invoices_issued || r.moves.length) this.logger.info({ invoices_issued: r.invoices_issued, moves: r.moves.length, now: r.now }, "billing run");
      } catch (err) {
        this.logger.warn({ err: (err as Error).message }, "billing run failed; the next one retries");
      } finally {
        this.running = false;
      }
    },

    /** Every page of a list action, as billing's system user. */
    async drainAsBilling(this: any, action: string, params: Record<string, unknown>): Promise<any[]> {
      const all: any[] = [];
      let cursor: string | null = null;
      do {
        const page: Page<any> = await this.callAsBilling(action, cursor ? { ...params, cursor } : params);
        all.push(...page.items);
        cursor = page.next_cursor;
      } while (cursor);
      return all;
    },

    /**
     * One billing run at the clock's now. Safe to repeat and to run on several nodes at once: invoices are
     * unique per subscription and period in the database, and a deployment's moves are decided and made only
     * under its lease, from its state read after taking it.
     */
    async runBilling(this: any): Promise<RunResult> {
      const now: Date = await this.clock.now();
      // Subscriptions' periods follow the clock; nothing below reads them, so it runs beside the reads.
      const periods = this.callAsBilling("v1.subscriptions.advancePeriods", { now: now.toISOString() }).catch((err: Error) => this.logger.warn({ err: err.message }, "subscription periods not advanced"));
      const [lists, subs, owing] = await Promise.all([
        Promise.all(LISTED_STATES.map((state) => this.drainAsBilling("v1.deployments.list", { state, limit: 200 }))),
        this.drainAsBilling("v1.subscriptions.billable", { limit: 5000 }) as Promise<BillableSubscription[]>,
        this.sql("select distinct deployment_id from invoices where status = 'open'"),
        periods,
      ]);
      const deployments = new Map<string, Deployment>((lists.flat() as Deployment[]).map((d) => [d.id, d]));
      // The (many) deployments with a subscription or an open invoice are read by id, 5000 to a call.
      const byId = [...new Set([...subs.map((s) => s.deployment_id), ...owing.map((r: any) => r.deployment_id as string)])].filter((id) => !deployments.has(id));
      for (let i = 0; i < byId.length; i += 5000) {
        for (const d of (await this.callAsBilling("v1.deployments.byIds", { ids: byId.slice(i, i + 5000) })).items as Deployment[]) if (WATCHED.has(d.state)) deployments.set(d.id, d);
      }
      const subByDeployment = new Map(subs.map((s) => [s.deployment_id, s]));

      // What billing has not observed yet it records now, at first sight: a trial's end, a cancellation's time.
      await this.firstSight([...deployments.values()], now);
      const watch = [...deployments.values()].filter((d) => d.state === "trial" || d.state === "cancelled" || BILLED_STATES.has(d.state));
      const obs: Map<string, Observation> = await this.observations(watch.map((d) => d.id));

      // Period invoices, and any first invoice a lost call left out.
      const billed = subs.filter((s) => BILLED_STATES.has(deployments.get(s.deployment_id)?.state ?? ""));
      const drafts = await this.draftsFor(billed, obs, now);
      const issued: IssuedInvoice[] = await this.issue(drafts, now);

      // Overdue events (once per invoice), then the moves.
      await this.markOverdue(now);
      const dues = new Map<string, Date>((await this.sql("select deployment_id, min(due_at) as due from invoices where status = 'open' group by deployment_id")).map((r: any) => [r.deployment_id, new Date(r.due)]));
      // Deployments whose dates imply a move (by the lists just read) are settled, a few at a time, each afresh.
      const due = [...deployments.values()].filter((d) => {
        const o = obs.get(d.id);
        return planMoves({
          state: d.state, billingActionSuspended: d.billing_action_suspended, now, oldestOpenDueAt: dues.get(d.id) ?? null,
          trialEndsAt: date(d.trial_ends_at) ?? o?.trial_ends_at ?? null, subscribed: subByDeployment.has(d.id), cancelledAt: o?.cancelled_at ?? null,
        }, this.policy).length > 0;
      });
      const settled: BillingMove[][] = new Array(due.length);
      let next = 0;
      await Promise.all(Array.from({ length: Math.min(SETTLE_CONCURRENCY, due.length) }, async () => {
        for (let i = next++; i < due.length; i = next++) settled[i] = (await this.settle(due[i].id, now)).moves;
      }));
      return { now: now.toISOString(), invoices_issued: issued.length, moves: settled.flat() };
    },

    /** Drafts of the invoices the given billable subscriptions still lack at `now`. */
    async draftsFor(this: any, subs: BillableSubscription[], obs: Map<string, Observation>, now: Date): Promise<InvoiceDraft[]> {
      if (!subs.length) return [];
      const current = periodOf(now);
      const have = new Map<string, boolean>(
        (await this.sql("select subscription_id, bool_or(period_start = ?::timestamptz) as current from invoices where subscription_id = any(?::uuid[]) group by subscription_id", [current.start.toISOString(), pgArray(subs.map((s) => s.subscription_id))]))
          .map((r: any) => [r.subscription_id, r.current]),
      );
      const drafts: InvoiceDraft[] = [];
      for (const s of subs) {
        const hasCurrent = have.get(s.subscription_id);
        if (hasCurrent === undefined) {
          const anchor = this.firstAnchor(s, obs.get(s.deployment_id), now);
          const first = periodOf(anchor);
          drafts.push(this.draft(s, first, anchor));
          if (first.start.getTime() < current.start.getTime()) drafts.push(this.draft(s, current));
        } else if (!hasCurrent) drafts.push(this.draft(s, current));
      }
      return drafts;
    },
    draft(this: any, s: BillableSubscription, period: ReturnType<typeof periodOf>, from?: Date): InvoiceDraft {
      const { draft, skipped } = draftInvoice(s, period, from);
      if (skipped.length) this.logger.warn({ subscription_id: s.subscription_id, addons: skipped }, "addons priced in another currency than the plan are not invoiced");
      return draft;
    },
    /**
     * Where a first invoice starts: the conversion of a trial (the run records trial_ends_at, a tenant's early
     * conversion the clock's now), else the subscribe day; never before the subscribe day.
     */
    firstAnchor(s: BillableSubscription, o: Observation | undefined, now: Date): Date {
      // started_at is the billing clock's; a subscription written without it falls back to its (wall-clock) insert time.
      const started = date(s.started_at) ?? new Date(Math.max(date(s.current_period_start)!.getTime(), date(s.inserted_at)!.getTime()));
      const trialEnd = o?.converted_at ?? (o?.trial_ends_at ? new Date(Math.min(o.trial_ends_at.getTime(), now.getTime())) : null);
      return trialEnd && trialEnd.getTime() > started.getTime() ? trialEnd : started;
    },

    async issue(this: any, drafts: InvoiceDraft[], now: Date): Promise<IssuedInvoice[]> {
      if (!drafts.length) return [];
      const due = new Date(now.getTime() + this.settings.invoiceDueDays * DAY_MS);
      const issued: IssuedInvoice[] = await insertInvoices(this.orm.em.fork(), drafts, now, due);
      await this.publish("issued", issued);
      return issued;
    },

    /** The first invoice of a deployment's subscription, if it is billable now and has none yet. */
    async issueFirst(this: any, deploymentId: string): Promise<InvoiceDto | null> {
      const now: Date = await this.clock.now();
      // The subscription first: most activations have none (no plan yet), and then the deployment is not read.
      const [sub] = (await this.callAsBilling("v1.subscriptions.billable", { deployment_ids: [deploymentId], limit: 1 })).items as BillableSubscription[];
      if (!sub) return null;
      const { deployment } = (await this.callAsBilling("v1.deployments.find", { id: deploymentId })) as { deployment: Deployment };
      if (!BILLED_STATES.has(deployment.state)) return null;
      const [{ n }] = await this.sql("select count(*)::int as n from invoices where subscription_id = ?", [sub.subscription_id]);
      if (n > 0) return null;
      const drafts = await this.draftsFor([sub], await this.observations([deploymentId]), now);
      const issued: IssuedInvoice[] = await this.issue(drafts, now);
      return issued[0]?.invoice ?? null;
    },

    /** Open invoices past due_at get overdue_at (once: a concurrent run's update finds it set) and one event each. */
    async markOverdue(this: any, now: Date) {
      const rows = await this.sql(
        `with o as (
           update invoices set overdue_at = ?::timestamptz where status = 'open' and due_at <= ?::timestamptz and overdue_at is null returning id
         ), ev as (
           insert into invoice_events (type, invoice_ids) select 'overdue', array_agg(id) from o having count(*) > 0 returning id
         )
         select o.id as invoice_id, (select id from ev) as outbox_id from o`,
        [now.toISOString(), now.toISOString()],
      );
      if (!rows.length) return;
      const invoices: InvoiceDto[] = await readInvoices(this.orm.em.fork(), "where i.id = any(?::uuid[])", [pgArray(rows.map((r: any) => r.invoice_id))]);
      const byId = new Map(invoices.map((i) => [i.id, i]));
      await this.publish("overdue", rows.map((r: any) => ({ outbox_id: Number(r.outbox_id), invoice: byId.get(r.invoice_id)! })));
    },

    /**
     * Brings one deployment to the state its billing dates imply, one move at a time, each decided from its state
     * read afresh. Only the holder of the deployment's lease (billing_locks, a row the database gives to one node
     * at a time) decides and moves, so overlapping runs make each move once.
     */
    async settle(this: any, deploymentId: string, now?: Date, opts: { waitMs?: number } = {}): Promise<{ moves: BillingMove[] }> {
      const holder = `${this.broker.nodeID}:${randomUUID()}`;
      const deadline = Date.now() + (opts.waitMs ?? 0);
      while (!(await this.lease(deploymentId, holder))) {
        if (Date.now() >= deadline) return { moves: [] };
        await new Promise((r) => setTimeout(r, 100));
      }
      const moves: BillingMove[] = [];
      try {
        now ??= await this.clock.now();
        for (let step = 0; step < 4; step++) {
          const { deployment: d } = (await this.callAsBilling("v1.deployments.find", { id: deploymentId })) as { deployment: Deployment };
          await this.firstSight([d], now);
          const o: Observation | undefined = (await this.observations([d.id])).get(d.id);
          const [due] = await this.sql("select min(due_at) as due from invoices where deployment_id = ? and status = 'open'", [d.id]);
          const subscribed = d.state === "trial" ? ((await this.callAsBilling("v1.subscriptions.billable", { deployment_ids: [d.id], limit: 1 })).items.length > 0) : true;
          const trialEndsAt = date(d.trial_ends_at) ?? o?.trial_ends_at ?? null;
          const [next] = planMoves({ state: d.state, billingActionSuspended: d.billing_action_suspended, now: now!, oldestOpenDueAt: date(due?.due), trialEndsAt, subscribed, cancelledAt: o?.cancelled_at ?? null }, this.policy);
          if (!next) break;
          // A conversion by the run bills from the trial's end, whenever the run gets to it.
          if (next.reason === "trial_converted") await this.sql("update billing_deployments set converted_at = coalesce(converted_at, ?::timestamptz) where deployment_id = ?", [trialEndsAt!.toISOString(), d.id]);
          try {
            await this.callAsBilling("v1.deployments.transition", { id: d.id, to_state: next.to, reason: next.reason });
          } catch (err) {
            this.logger.warn({ deployment_id: d.id, from: d.state, to: next.to, err: (err as Error).message }, "billing move refused");
            break;
          }
          await this.sql("insert into billing_moves (deployment_id, from_state, to_state, reason, at, node) values (?, ?, ?, ?, ?::timestamptz, ?)", [d.id, d.state, next.to, next.reason, now!.toISOString(), this.broker.nodeID]);
          moves.push({ deployment_id: d.id, from: d.state, to: next.to, reason: next.reason });
          if (next.reason === "trial_converted") await this.issueFirst(d.id);
        }
      } finally {
        await this.sql("delete from billing_locks where deployment_id = ? and holder = ?", [deploymentId, holder]).catch(() => undefined);
      }
      return { moves };
    },
    async lease(this: any, deploymentId: string, holder: string): Promise<boolean> {
      const rows = await this.sql(
        `insert into billing_locks (deployment_id, holder, expires_at) values (?, ?, now() + ? * interval '1 millisecond')
         on conflict (deployment_id) do update set holder = excluded.holder, expires_at = excluded.expires_at where billing_locks.expires_at < now()
         returning holder`,
        [deploymentId, holder, this.settings.leaseMs],
      );
      return rows.length === 1;
    },

    async observations(this: any, ids: string[]): Promise<Map<string, Observation>> {
      if (!ids.length) return new Map();
      const rows = await this.sql("select * from billing_deployments where deployment_id = any(?::uuid[])", [pgArray(ids)]);
      return new Map(rows.map((r: any) => [r.deployment_id, { ...r, last_event_id: r.last_event_id == null ? null : Number(r.last_event_id), trial_ends_at: date(r.trial_ends_at), converted_at: date(r.converted_at), cancelled_at: date(r.cancelled_at) }]));
    },
    /** Trials and cancellations billing has not observed through events get their billing-clock time now. */
    async firstSight(this: any, deployments: Deployment[], now: Date) {
      const rows = deployments
        .filter((d) => d.state === "trial" || d.state === "cancelled")
        .map((d) => ({ deployment_id: d.id, state: d.state, trial_ends_at: d.state === "trial" ? new Date(now.getTime() + this.settings.trialDays * DAY_MS).toISOString() : null, cancelled_at: d.state === "cancelled" ? now.toISOString() : null }));
      if (!rows.length) return;
      await this.sql(
        `insert into billing_deployments (deployment_id, state, trial_ends_at, cancelled_at)
         select deployment_id, state, trial_ends_at, cancelled_at from json_to_recordset(?::json) as x(deployment_id uuid, state text, trial_ends_at timestamptz, cancelled_at timestamptz)
         on conflict (deployment_id) do update set
           state = excluded.state,
           trial_ends_at = coalesce(billing_deployments.trial_ends_at, excluded.trial_ends_at),
           cancelled_at = case when billing_deployments.state = 'cancelled' and billing_deployments.cancelled_at is not null then billing_deployments.cancelled_at else excluded.cancelled_at end,
           updated_at = now()
         where billing_deployments.state is distinct from excluded.state
            or (excluded.state = 'trial' and billing_deployments.trial_ends_at is null)
            or (excluded.state = 'cancelled' and billing_deployments.cancelled_at is null)`,
        [JSON.stringify(rows)],
      );
    },

    /**
     * deployments.created / deployments.transitioned (at least once, possibly late): the billing-clock time of a
     * move into trial, out of trial and into cancelled. Older or repeated events (by event id) change nothing.
     */
    async observe(this: any, payload: { deployment: Deployment; event: { id: number; from_state: string | null; to_state: string } }) {
      const { deployment: d, event: e } = payload;
      // A subscription taken while provisioning (a create with provision and plan_code) got no invoice then (not
      // billable yet): its first one, prorated from the subscribe day, is issued as the saga activates it, not at
      // the next run. issueFirst does nothing when the subscription has an invoice already (a repeated event).
      if (e.from_state === "provisioning" && BILLED_STATES.has(e.to_state)) await this.issueFirst(d.id);
      // Only moves into or out of trial and cancelled carry a billing date; the rest cost billing no write.
      if (![e.from_state, e.to_state].some((s) => s === "trial" || s === "cancelled")) return;
      const now: Date = await this.clock.now();
      const trialEnds = e.to_state === "trial" ? (date(d.trial_ends_at) ?? new Date(now.getTime() + this.settings.trialDays * DAY_MS)) : null;
      const converted = e.from_state === "trial" && e.to_state === "active";
      const rows = await this.sql(
        `insert into billing_deployments (deployment_id, state, last_event_id, trial_ends_at, converted_at, cancelled_at)
         values (?, ?, ?, ?::timestamptz, ?::timestamptz, ?::timestamptz)
         on conflict (deployment_id) do update set
           state = excluded.state,
           last_event_id = excluded.last_event_id,
           trial_ends_at = coalesce(excluded.trial_ends_at, billing_deployments.trial_ends_at),
           converted_at = coalesce(billing_deployments.converted_at, excluded.converted_at),
           cancelled_at = case when excluded.state <> 'cancelled' then null
                               when billing_deployments.state = 'cancelled' and billing_deployments.cancelled_at is not null then billing_deployments.cancelled_at
                               else excluded.cancelled_at end,
           updated_at = now()
         where billing_deployments.last_event_id is null or billing_deployments.last_event_id < excluded.last_event_id
         returning deployment_id`,
        [d.id, e.to_state, e.id, trialEnds?.toISOString() ?? null, converted ? now.toISOString() : null, e.to_state === "cancelled" ? now.toISOString() : null],
      );
      // A tenant's early conversion bills from its day; a conversion by the run issued its invoice already.
      if (rows.length && converted) await this.issueFirst(d.id);
    },

    /** Sends billing.invoice.<type> {invoice, event_id} for the given invoices and marks their outbox rows published. */
    async publish(this: any, type: "issued" | "paid" | "overdue", items: IssuedInvoice[]) {
      if (!items.length) return;
      await Promise.all(items.map((it) => this.broker.emit(`billing.invoice.${type}`, { invoice: it.invoice, event_id: invoiceEventId(type, it.invoice.id) })));
      await this.sql("update invoice_events set published_at = now() where id = any(?::bigint[]) and published_at is null", [pgArray([...new Set(items.map((i) => i.outbox_id))])]);
    },
    /** Outbox rows a crash left unpublished (older than a sweep period), claimed with skip locked. */
    async publishLeftovers(this: any): Promise<number> {
      // Embedded database: no emit inside the claiming transaction (see deployments' publishLeftovers).
      const em = this.orm.em.fork();
      const sweep = async (tx: any) => {
        const rows = await tx.execute(
          `select id, type, invoice_ids from invoice_events where published_at is null and occurred_at < now() - (? * interval '1 millisecond') order by id limit 10 for update skip locked`,
          [this.settings.eventSweepMs],
        );
        if (!rows.length) return 0;
        const ids = (r: any): string[] => (Array.isArray(r.invoice_ids) ? r.invoice_ids : String(r.invoice_ids).replace(/[{}]/g, "").split(",").filter(Boolean));
        const invoices: InvoiceDto[] = await readInvoices(tx, "where i.id = any(?::uuid[])", [pgArray(rows.flatMap(ids))]);
        const byId = new Map(invoices.map((i) => [i.id, i]));
        for (const r of rows) for (const id of ids(r)) if (byId.has(id)) await this.broker.emit(`billing.invoice.${r.type}`, { invoice: byId.get(id), event_id: invoiceEventId(r.type, id) });
        await tx.execute("update invoice_events set published_at = now() where id = any(?::bigint[])", [pgArray(rows.map((r: any) => r.id))]);
        return rows.length;
      };
      return onEmbeddedDatabase() ? sweep(em) : em.transactional(sweep);
    },
  },
};
