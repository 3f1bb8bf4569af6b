import { randomUUID } from "node:crypto";
import type { ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { DbMixin, emOf } from "../lib/db";
import { currentUser, listTenant, systemUser, visibleTo, type ActionCtx } from "../lib/access";
import { forbidden, invalid, notFound } from "../lib/errors";
import { keysetBefore, pageOf } from "../lib/pagination";
import type { Page } from "../lib/dto";
import { WEBHOOK_EVENT_TYPES, fromDeploymentEvent, fromInvoiceEvent, fromRuntimeChanged, fromSagaEvent, fromStepEvent, type Mapped } from "./webhooks/events";
import { claim, deliveryCols, deliveryDto, deploymentOf, endpointCols, endpointDto, ingestBatch, record, splitAfter, sweepRetention, type Claimed, type DeliveryDto, type IngestResult, type WebhookDto } from "./webhooks/store";
import { newSecret, retryDelayMs } from "./webhooks/sign";
import { urlProblem } from "./webhooks/url";
import { attempt } from "./webhooks/deliver";
import { UUID, PAGE_PARAMS } from "../lib/params";

/*
 * Outbound webhooks and the watch journal (SPEC §9). Design, guarantees and what each source event is:
 * services/webhooks/README.md.
 */

const num = (v: string | undefined, d: number) => (v === undefined || v === "" ? d : Number(v));
const SAGA_FINAL = ["succeeded", "failed", "compensated", "compensation_failed"];
/** The catch-up's sources, each with its cursor row in webhook_feed_cursors (README). */
const FEEDS = ["deployments", "runtime", "sagas", "invoices"];

export interface CreateWebhookParams {
  url: string;
  events?: string[];
  all_tenants?: boolean;
  tenant_id?: string;
}
export interface ListWebhooksParams {
  limit?: number;
  cursor?: string;
  tenant_id?: string;
}
export interface DeliveriesParams {
  id: string;
  status?: string;
  limit?: number;
  cursor?: string;
}
/** Answers of the watch actions the gateway calls (services/api/watch.ts). */
export interface WatchOpenResult {
  view: unknown;
  head: number;
}
export interface WatchEventsResult {
  items: { seq: number; type: string; data: unknown }[];
}
export type { WebhookDto, DeliveryDto };

function settingsFrom(env = process.env) {
  return {
    allowPrivate: env.WEBHOOK_ALLOW_PRIVATE === "1",
    retryBaseMs: num(env.WEBHOOK_RETRY_BASE_MS, 30_000),
    maxAttempts: num(env.WEBHOOK_MAX_ATTEMPTS, 12),
    timeoutMs: num(env.WEBHOOK_TIMEOUT_MS, 10_000),
    // A claim outlives the attempt's timeout; a node that died holding one loses it after this.
    claimMs: num(env.WEBHOOK_CLAIM_MS, 30_000),
    pollMs: num(env.WEBHOOK_POLL_MS, 1_000),
    batch: num(env.WEBHOOK_BATCH, 20),
    catchUpMs: num(env.WEBHOOK_CATCHUP_MS, 10_000),
    catchUpMarginMs: num(env.WEBHOOK_CATCHUP_MARGIN_MS, 60_000),
    // How long a deployment event's delivery waits for an earlier event of its deployment that was not heard yet.
    orderWaitMs: num(env.WEBHOOK_ORDER_WAIT_MS, 60_000),
    // Finished deliveries, their events and watch lines are kept this long (0: forever), swept this often.
    retentionMs: num(env.WEBHOOK_RETENTION_DAYS, 30) * 86_400_000,
    retentionSweepMs: num(env.WEBHOOK_RETENTION_SWEEP_MS, 3_600_000),
    // At most this many events per ingest statement (a catch-up backlog goes in several).
    ingestBatch: Math.max(1, num(env.WEBHOOK_INGEST_BATCH, 500)),
  };
}
type Settings = ReturnType<typeof settingsFrom>;

/** An event waiting for the next ingest batch, and who waits for it. */
interface Queued {
  m: Mapped;
  source: string;
  strict: boolean;
  resolve(): void;
  reject(err: unknown): void;
}

const WebhooksService: ServiceSchema<any> = {
  name: "webhooks",
  version: 1,
  mixins: [DbMixin([])],
  settings: {},

  actions: {
    create: {
      access: "scoped",
      params: {
        url: { type: "string", min: 1, max: 2048 },
        events: { type: "array", items: { type: "enum", values: WEBHOOK_EVENT_TYPES as unknown as string[] }, unique: true, optional: true },
        all_tenants: { type: "boolean", optional: true },
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
      },
      async handler(this: any, ctx: ActionCtx<CreateWebhookParams>) {
        const user = currentUser(ctx);
        const p = ctx.params;
        if (!user.operator && p.all_tenants) throw forbidden("'all_tenants' is for operators only (role platform-admin)");
        if (!user.operator && p.tenant_id && p.tenant_id !== user.tenant_id) throw invalid("'tenant_id' must be your own tenant", [{ field: "tenant_id" }]);
        if (p.all_tenants && p.tenant_id) throw invalid("'all_tenants' cannot be combined with 'tenant_id'", [{ field: "all_tenants" }]);
        const tenantId = p.all_tenants ? null : (p.tenant_id ?? user.tenant_id);
        if (!p.all_tenants && !tenantId) throw invalid("'tenant_id' (or 'all_tenants': true) is required for a token without a tenant", [{ field: "tenant_id", type: "required" }]);
        const problem = await urlProblem(p.url, { allowPrivate: this.cfg.allowPrivate });
        if (problem) throw invalid(problem, [{ field: "url", type: "url" }]);
        const secret = newSecret();
        const id = randomUUID();
        const [row] = await emOf(ctx).execute(
          `insert into webhook_endpoints (id, tenant_id, all_tenants, url, events, secret, created_by, inserted_at) values (?, ?, ?, ?, ?::jsonb, ?, ?, now()) returning ${endpointCols}`,
          [id, tenantId, !!p.all_tenants, p.url, JSON.stringify(p.events ?? []), secret, user.sub],
        );
        ctx.meta.$statusCode = 201;
        // The secret is in this answer only: no read returns it, and nothing logs it.
        return { webhook: { ...endpointDto(row), secret } };
      },
    },

    list: {
      access: "scoped",
      params: {
        ...PAGE_PARAMS,
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
      },
      async handler(ctx: ActionCtx<ListWebhooksParams>): Promise<Page<WebhookDto>> {
        const user = currentUser(ctx);
        const p = ctx.params;
        const limit = p.limit ?? 50;
        const tenant = listTenant(user, p.tenant_id);
        if (tenant === null) return { items: [], next_cursor: null };
        const conds = ["deleted_at is null"];
        const args: unknown[] = [];
        if (tenant) conds.push("tenant_id = ?") && args.push(tenant);
        const after = keysetBefore(p.cursor, "inserted_at", "id");
        if (after) conds.push(after.sql) && args.push(...after.args);
        const rows = await emOf(ctx).execute(`select ${endpointCols} from webhook_endpoints where ${conds.join(" and ")} order by inserted_at desc, id desc limit ${limit + 1}`, args);
        return pageOf(rows.map(endpointDto), limit, (w) => ({ time: w.inserted_at, id: w.id }));
      },
    },

    remove: {
      access: "scoped",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        const em = emOf(ctx);
        const found = await this.visibleEndpoint(em, ctx, ctx.params.id);
        await em.transactional(async (tx) => {
          await tx.execute(`update webhook_endpoints set deleted_at = now() where id = ? and deleted_at is null`, [found.id]);
          // What was still to be sent to it is not sent any more.
          await tx.execute(`update webhook_deliveries set status = 'cancelled', next_attempt_at = null, updated_at = now() where endpoint_id = ? and status in ('pending','delivering')`, [found.id]);
        });
        return { webhook: found };
      },
    },

    deliveries: {
      access: "scoped",
      params: {
        id: { type: "string" },
        status: { type: "enum", values: ["pending", "delivering", "succeeded", "failed", "cancelled"], optional: true },
        ...PAGE_PARAMS,
      },
      async handler(this: any, ctx: ActionCtx<DeliveriesParams>): Promise<Page<DeliveryDto>> {
        const em = emOf(ctx);
        const endpoint = await this.visibleEndpoint(em, ctx, ctx.params.id);
        const p = ctx.params;
        const limit = p.limit ?? 50;
        const conds = ["d.endpoint_id = ?"];
        const args: unknown[] = [endpoint.id];
        if (p.status) conds.push("d.status = ?") && args.push(p.status);
        if (p.cursor) {
          const seq = Buffer.from(p.cursor, "base64url").toString("utf8");
          if (!/^\d{1,18}$/.test(seq)) throw invalid("cursor is not a cursor this API returned", [{ field: "cursor" }]);
          conds.push("d.seq < ?") && args.push(seq);
        }
        const rows = await em.execute(`select ${deliveryCols} from webhook_deliveries d join webhook_events e on e.id = d.event_id where ${conds.join(" and ")} order by d.seq desc limit ${limit + 1}`, args);
        const page = rows.slice(0, limit);
        const last = page[page.length - 1];
        return { items: page.map(deliveryDto), next_cursor: rows.length > limit && last ? Buffer.from(String(last.seq)).toString("base64url") : null };
      },
    },

    /** Operators: deliveries of every endpoint, newest first — `status=failed` lists the ones given up on. */
    allDeliveries: {
      access: "operator",
      params: {
        status: { type: "enum", values: ["pending", "delivering", "succeeded", "failed", "cancelled"], optional: true },
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        ...PAGE_PARAMS,
      },
      async handler(this: any, ctx: ActionCtx<{ status?: string; tenant_id?: string; limit?: number; cursor?: string }>): Promise<Page<DeliveryDto & { webhook_id: string; tenant_id: string }>> {
        const p = ctx.params;
        const limit = p.limit ?? 50;
        const conds = ["true"];
        const args: unknown[] = [];
        if (p.status) conds.push("d.status = ?") && args.push(p.status);
        if (p.tenant_id) conds.push("e.tenant_id = ?") && args.push(p.tenant_id);
        if (p.cursor) {
          const seq = Buffer.from(p.cursor, "base64url").toString("utf8");
          if (!/^\d{1,18}$/.test(seq)) throw invalid("cursor is not a cursor this API returned", [{ field: "cursor" }]);
          conds.push("d.seq < ?") && args.push(seq);
        }
        const rows = await emOf(ctx).execute(
          `select ${deliveryCols}, d.endpoint_id, e.tenant_id from webhook_deliveries d join webhook_events e on e.id = d.event_id where ${conds.join(" and ")} order by d.seq desc limit ${limit + 1}`,
          args,
        );
        const page = rows.slice(0, limit);
        const last = page[page.length - 1];
        return {
          items: page.map((r: any) => ({ ...deliveryDto(r), webhook_id: r.endpoint_id, tenant_id: r.tenant_id })),
          next_cursor: rows.length > limit && last ? Buffer.from(String(last.seq)).toString("base64url") : null,
        };
      },
    },

    /** For the gateway's watch route: the deployment's view (scoped like GET /deployments/:id) and its journal head. */
    watchOpen: {
      visibility: "public",
      access: "scoped",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ id: string }>): Promise<WatchOpenResult> {
        // Head first, then the view: the view is at least as new as the head, so nothing after the head is missed.
        const [h] = await emOf(ctx).execute(`select seq from watch_heads where deployment_id = ?`, [UUID.test(ctx.params.id) ? ctx.params.id : "00000000-0000-0000-0000-000000000000"]);
        const view = await ctx.call("v1.deployments.get", { id: ctx.params.id });
        return { view, head: Number(h?.seq ?? 0) };
      },
    },

    /** The deployment's watch lines after `after`, in order. */
    watchEvents: {
      visibility: "public",
      access: "scoped",
      params: { deployment_id: { type: "string" }, after: { type: "number", integer: true, min: 0, convert: true }, limit: { type: "number", integer: true, min: 1, max: 500, convert: true, optional: true } },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string; after: number; limit?: number }>): Promise<WatchEventsResult> {
        const user = currentUser(ctx);
        const id = ctx.params.deployment_id;
        if (!UUID.test(id)) throw notFound("Deployment", id);
        const em = emOf(ctx);
        const [head] = await em.execute(`select tenant_id from watch_heads where deployment_id = ?`, [id]);
        if (!head) {
          await ctx.call("v1.deployments.find", { id });
          return { items: [] };
        }
        if (head.tenant_id ? !visibleTo(user, head.tenant_id) : !(await ctx.call("v1.deployments.find", { id }))) throw notFound("Deployment", id);
        const rows = await em.execute(`select seq, type, data from watch_events where deployment_id = ? and seq > ? order by seq limit ?`, [id, ctx.params.after, ctx.params.limit ?? 200]);
        return { items: rows.map((r: any) => ({ seq: Number(r.seq), type: r.type, data: r.data })) };
      },
    },
  },

  events: {
    "deployments.created"(this: any, ctx: any) {
      return this.take(fromDeploymentEvent(ctx.params), "deployments.created");
    },
    "deployments.transitioned"(this: any, ctx: any) {
      return this.take(fromDeploymentEvent(ctx.params), "deployments.transitioned");
    },
    "deployments.runtime_changed"(this: any, ctx: any) {
      return this.take(fromRuntimeChanged(ctx.params), "deployments.runtime_changed");
    },
    "provisioning.saga.*"(this: any, ctx: any) {
      return this.take(fromSagaEvent(ctx.eventName.slice("provisioning.saga.".length), ctx.params), ctx.eventName);
    },
    "provisioning.step.*"(this: any, ctx: any) {
      return this.take(fromStepEvent(ctx.eventName.slice("provisioning.step.".length), ctx.params), ctx.eventName);
    },
    "billing.invoice.issued"(this: any, ctx: any) {
      return this.take(fromInvoiceEvent("issued", ctx.params), ctx.eventName);
    },
    "billing.invoice.paid"(this: any, ctx: any) {
      return this.take(fromInvoiceEvent("paid", ctx.params), ctx.eventName);
    },
    "billing.invoice.overdue"(this: any, ctx: any) {
      return this.take(fromInvoiceEvent("overdue", ctx.params), ctx.eventName);
    },
  },

  methods: {
    /**
     * Queues an event for the next batch (see `flush`); resolves once it was taken in, or dropped. Never rejects,
     * unless `strict` (the catch-up: its cursor must not move past an event that was not taken in).
     */
    take(this: any, m: Mapped, source: string, strict = false): Promise<void> {
      if (!m.envelope && !m.watch) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        this.intake.push({ m, source, strict, resolve, reject });
        if (!this.flushing && !this.flushScheduled) {
          // Events that arrive in the same turn of the event loop go in one batch.
          this.flushScheduled = true;
          setImmediate(() => {
            this.flushScheduled = false;
            void this.track(this.flush());
          });
        }
      });
    },

    /**
     * Takes the queued events in, batch after batch, one batch in flight per node: what arrives while a batch is
     * in flight is the next batch, so batches grow with the load and each costs one statement and one commit.
     * The queue is first come, first served and a batch keeps its order, so events of one deployment are
     * journaled in the order they arrived (a saga's step events come from one emitter in order, and every
     * webhooks node hears a broadcast in that order). After each commit: one wake-up of the delivery loop, one
     * `webhooks.watch.appended` per deployment that got lines.
     */
    async flush(this: any): Promise<void> {
      if (this.flushing) return;
      this.flushing = true;
      try {
        while (this.intake.length) {
          const batch: Queued[] = this.intake.splice(0, this.cfg.ingestBatch);
          try {
            await this.ingestQueued(batch);
          } catch (err: any) {
            // Not the database (ingestQueued handles that): still, nobody waits forever and the queue goes on.
            this.logger.warn({ events: batch.length, err: err?.message }, "webhook events: batch follow-up failed");
            for (const q of batch) (q.strict ? q.reject(err) : q.resolve());
          }
        }
      } finally {
        this.flushing = false;
      }
    },

    /** One batch: one statement; if the server refused it (one bad event fails all), each event alone. */
    async ingestQueued(this: any, batch: Queued[]): Promise<void> {
      let results: IngestResult[];
      try {
        results = await ingestBatch(this.orm.em.fork(), batch.map((q) => q.m));
      } catch (err: any) {
        if (batch.length > 1 && splitAfter(err)) {
          for (const q of batch) await this.ingestQueued([q]);
          return;
        }
        // The catch-up takes them in later from the sources' feeds; see README.
        this.logger.warn(
          { events: batch.length, sources: [...new Set(batch.map((q) => q.source))], event_ids: batch.map((q) => q.m.envelope?.id).filter(Boolean).slice(0, 20), deployment_id: batch.length === 1 ? deploymentOf(batch[0].m) : undefined, err: err?.message },
          "webhook events not taken in",
        );
        for (const q of batch) (q.strict ? q.reject(err) : q.resolve());
        return;
      }
      const appended = new Map<string, number>();
      let deliveries = 0;
      for (const r of results) {
        deliveries += r.deliveries;
        if (r.watchSeq !== null && r.deploymentId && r.watchSeq > (appended.get(r.deploymentId) ?? 0)) appended.set(r.deploymentId, r.watchSeq);
      }
      // The gateways re-read a woken deployment's journal from where each stream is: one message per deployment
      // carrying its newest seq wakes them as well as one per line.
      for (const [deploymentId, seq] of appended) this.broker.broadcast("webhooks.watch.appended", { deployment_id: deploymentId, seq });
      if (deliveries) this.kick();
      for (const q of batch) q.resolve();
    },

    async visibleEndpoint(this: any, em: EntityManager, ctx: ActionCtx<unknown>, id: string): Promise<WebhookDto> {
      const user = currentUser(ctx);
      if (!UUID.test(id)) throw notFound("Webhook", id);
      const [row] = await em.execute(`select ${endpointCols} from webhook_endpoints where id = ? and deleted_at is null`, [id]);
      if (!row || !(user.operator || (row.tenant_id && row.tenant_id === user.tenant_id))) throw notFound("Webhook", id);
      return endpointDto(row);
    },

    /** Background work the stop waits for, so nothing queries the database after the pool closed. */
    track<T>(this: any, p: Promise<T>): Promise<T> {
      this.background.add(p);
      const done = () => this.background.delete(p);
      p.then(done, done);
      return p;
    },

    kick(this: any) {
      setImmediate(() => void this.pump());
    },

    /** Claims and sends until nothing is due; one loop per node at a time. */
    async pump(this: any): Promise<void> {
      if (this.stoppedFlag || this.holdDeliveries > 0) return; // the catch-up kicks again when it is done
      if (this.pumping) {
        this.pumpAgain = true;
        return;
      }
      this.pumping = true;
      try {
        do {
          this.pumpAgain = false;
          const batch: Claimed[] = await claim(this.orm.em.fork(), this.cfg.batch, this.cfg.claimMs, this.cfg.orderWaitMs);
          if (!batch.length) break;
          await Promise.all(batch.map((d) => this.send(d)));
          // A delivery that went out may have been holding back the next one of its deployment.
          this.pumpAgain = true;
        } while (this.pumpAgain && !this.stoppedFlag && !(this.holdDeliveries > 0));
      } catch (err: any) {
        this.logger.warn({ err: err?.message }, "webhook delivery loop failed; retrying on the next tick");
      } finally {
        this.pumping = false;
      }
    },

    async send(this: any, d: Claimed) {
      const cfg: Settings = this.cfg;
      this.inFlight.add(d.id);
      try {
        const outcome = await attempt(d.url, d.secret, d.body, d.event_id, { timeoutMs: cfg.timeoutMs, allowPrivate: cfg.allowPrivate });
        const status = await record(this.orm.em.fork(), d, outcome, { maxAttempts: cfg.maxAttempts, delayMs: retryDelayMs(d.attempts, cfg.retryBaseMs) });
        const level = outcome.ok ? "debug" : status === "failed" ? "warn" : "info";
        if (this.metricsOn && status) this.broker.metrics.increment("arcadia.webhook.attempts", { outcome: status === "pending" ? "retry" : status });
        this.logger[level]({ delivery_id: d.id, event_id: d.event_id, attempt: d.attempts, response_code: outcome.code, error: outcome.error ?? undefined, status }, "webhook delivery attempt");
      } finally {
        this.inFlight.delete(d.id);
      }
    },

    /**
     * What the live events may have missed (no webhooks node up, a database blip), from each source's durable feed
     * since its cursor (minus the margin): deployment events (the deployment_events outbox), runtime changes (the
     * deployment_runtime_events outbox), finished sagas (the sagas table, keyset by finished_at/id) and invoice
     * events (billing's invoice_events outbox, one item per invoice). Every feed is read to its end, page by page;
     * known ids are skipped. What is new is taken in oldest first while this node's delivery loop waits, so the
     * deliveries of a backlog go out in order per deployment. A cursor only moves after everything up to it was
     * taken in; a feed that cannot be read now (its service is not in the cluster) is skipped, its cursor kept.
     */
    async catchUp(this: any): Promise<void> {
      const em: EntityManager = this.orm.em.fork();
      const cursors = new Map<string, string>((await em.execute(`select source, position from webhook_feed_cursors`)).map((r: any) => [r.source, new Date(r.position).toISOString()]));
      if (!cursors.has("deployments")) {
        // First start: history before the service existed is not replayed.
        await em.execute(`insert into webhook_feed_cursors (source, position) select s, now() from unnest(?::text[]) s on conflict do nothing`, [`{${FEEDS.join(",")}}`]);
        return;
      }
      // A feed added after the service's first start begins where that upgrade found it.
      const missing = FEEDS.filter((f) => !cursors.has(f));
      if (missing.length) {
        await em.execute(`insert into webhook_feed_cursors (source, position) select s, now() from unnest(?::text[]) s on conflict do nothing`, [`{${missing.join(",")}}`]);
        return this.catchUp();
      }
      const fresh: Mapped[] = [];
      const newest = new Map<string, string>();
      const margin = this.cfg.catchUpMarginMs;
      const sinceOf = (f: string) => new Date(new Date(cursors.get(f)!).getTime() - margin).toISOString();
      for (const feed of FEEDS) {
        try {
          const got = await this.readFeed(feed, sinceOf(feed));
          fresh.push(...got.fresh);
          if (got.newest) newest.set(feed, got.newest);
        } catch (err: any) {
          // That service is not up now (or failed): its cursor stays, the next tick reads the same window; the other
          // feeds go on.
          const absent = err?.type === "SERVICE_NOT_FOUND" || err?.type === "SERVICE_NOT_AVAILABLE";
          this.logger[absent ? "debug" : "warn"]({ feed, err: err?.message }, "webhook catch-up feed not read");
        }
      }
      if (fresh.length) {
        // Oldest first (stable: a feed's own order breaks ties), with deliveries held until all is in.
        const at = (m: Mapped) => Date.parse(m.envelope!.created_at);
        const ordered = fresh.map((m, i) => ({ m, i })).sort((a, b) => at(a.m) - at(b.m) || a.i - b.i).map((x) => x.m);
        this.holdDeliveries = (this.holdDeliveries ?? 0) + 1;
        try {
          // All queued at once (the queue keeps their order and batches them); every one is waited for before the
          // deliveries go and the cursors move, and the first failure is the catch-up's.
          const settled = await Promise.allSettled(ordered.map((m) => this.take(m, "catch-up", true)));
          const failed = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
          if (failed) throw failed.reason;
        } finally {
          this.holdDeliveries--;
          this.kick();
        }
      }
      for (const [feed, position] of newest) await em.execute(`update webhook_feed_cursors set position = greatest(position, ?) where source = ?`, [position, feed]);
    },

    /**
     * One feed read to its end from `since`: the events not taken in yet (mapped) and the newest source time seen.
     * The feeds' actions are internal; the catch-up calls them as the system user.
     */
    async readFeed(this: any, feed: string, since: string): Promise<{ fresh: Mapped[]; newest: string | null }> {
      const meta = { meta: { user: systemUser("webhooks") } };
      const fresh: Mapped[] = [];
      let newest: string | null = null;
      const seen = (t: string | null | undefined) => {
        if (t && (!newest || Date.parse(t) > Date.parse(newest))) newest = t;
      };
      const page = 200;
      if (feed === "deployments") {
        for (let afterId = 0; !this.stoppedFlag; ) {
          const { items } = await this.broker.call("v1.deployments.eventsSince", { since, after_id: afterId, limit: page }, meta);
          if (!items.length) break;
          fresh.push(...(await this.unknown(items.map((it: any) => fromDeploymentEvent(it)))));
          items.forEach((it: any) => seen(it.event.occurred_at));
          afterId = items[items.length - 1].event.id;
          if (items.length < page) break;
        }
      } else if (feed === "runtime") {
        for (let afterId = 0; !this.stoppedFlag; ) {
          const { items } = await this.broker.call("v1.deployments.runtimeSince", { since, after_id: afterId, limit: page }, meta);
          if (!items.length) break;
          fresh.push(...(await this.unknown(items.map((it: any) => fromRuntimeChanged(it)))));
          items.forEach((it: any) => seen(it.occurred_at));
          afterId = items[items.length - 1].event_id;
          if (items.length < page) break;
        }
      } else if (feed === "sagas") {
        for (let after: object = {}; !this.stoppedFlag; ) {
          const res = await this.broker.call("v1.provisioning.finishedSince", { since, ...after, limit: page }, meta);
          fresh.push(...(await this.unknown(res.items.filter((s: any) => SAGA_FINAL.includes(s.status)).map((s: any) => fromSagaEvent(s.status, s)))));
          res.items.forEach((s: any) => seen(s.finished_at));
          if (!res.next) break;
          after = res.next;
        }
      } else if (feed === "invoices") {
        for (let after: object = {}; !this.stoppedFlag; ) {
          const res = await this.broker.call("v1.billing.eventsSince", { since, ...after, limit: page }, meta);
          fresh.push(...(await this.unknown(res.items.map((it: any) => fromInvoiceEvent(it.type, it)))));
          res.items.forEach((it: any) => seen(it.occurred_at));
          if (!res.next) break;
          after = res.next;
        }
      }
      return { fresh, newest };
    },

    /** The mapped events (with an envelope) whose ids were not taken in yet. */
    async unknown(this: any, mapped: Mapped[]): Promise<Mapped[]> {
      const withIds = mapped.filter((m) => m.envelope);
      if (!withIds.length) return [];
      const ids = [...new Set(withIds.map((m) => m.envelope!.id))];
      const known = new Set((await this.orm.em.fork().execute(`select id from webhook_events where id = any(?::text[])`, [`{${ids.map((i) => `"${i}"`).join(",")}}`])).map((r: any) => r.id));
      const out = new Map<string, Mapped>();
      for (const m of withIds) if (!known.has(m.envelope!.id) && !out.has(m.envelope!.id)) out.set(m.envelope!.id, m);
      return [...out.values()];
    },
  },

  created() {
    this.inFlight = new Set<string>();
    this.background = new Set<Promise<unknown>>();
    this.intake = [] as Queued[];
    this.flushing = false;
    this.flushScheduled = false;
    this.holdDeliveries = 0;
    this.metricsOn = this.broker.isMetricsEnabled();
    if (this.metricsOn) this.broker.metrics.register({ type: "counter", name: "arcadia.webhook.attempts", labelNames: ["outcome"], description: "Webhook delivery attempts by outcome: succeeded, retry (will be tried again), failed (given up)" });
  },
  async started(this: any) {
    this.cfg = { ...settingsFrom(), ...this.settings };
    this.stoppedFlag = false;
    this.pollTimer = setInterval(() => void this.pump(), this.cfg.pollMs);
    if (this.cfg.catchUpMs > 0) {
      const tick = () =>
        this.track(this.catchUp())
          .catch((err: Error) => this.logger.warn({ err: err.message }, "webhook catch-up failed"))
          .finally(() => {
            if (!this.stoppedFlag) this.catchUpTimer = setTimeout(tick, this.cfg.catchUpMs);
          });
      this.catchUpTimer = setTimeout(tick, Math.min(1000, this.cfg.catchUpMs));
    }
    if (this.cfg.retentionMs > 0 && this.cfg.retentionSweepMs > 0) {
      this.retentionTimer = setInterval(
        () => void this.track(sweepRetention(this.orm.em.fork(), this.cfg.retentionMs)).catch((err: Error) => this.logger.warn({ err: err.message }, "webhook retention sweep failed")),
        this.cfg.retentionSweepMs,
      );
    }
    this.kick();
  },
  async stopped(this: any) {
    this.stoppedFlag = true;
    clearInterval(this.pollTimer);
    clearInterval(this.retentionTimer);
    clearTimeout(this.catchUpTimer);
    // Attempts in flight finish (at most the timeout) so their outcome is recorded rather than left to the lease.
    const deadline = Date.now() + this.cfg.timeoutMs + 1000;
    while ((this.inFlight.size || this.pumping || this.background.size) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  },
};

export default WebhooksService;
