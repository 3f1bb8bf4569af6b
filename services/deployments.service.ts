import { randomUUID } from "node:crypto";
import { LockMode, UniqueConstraintViolationException } from "@mikro-orm/core";
import type { ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { Errors } from "moleculer";
import { Deployment, DeploymentEvent, DEPLOYMENT_STATES, LLM_MODES, type DeploymentState } from "../entities/deployment";
import { DbMixin, emOf, onEmbeddedDatabase } from "../lib/db";
import { currentUser, listTenant, systemUser, visibleTo, type ActionCtx } from "../lib/access";
import { compensationHandler } from "../lib/compensation";
import { conflict, forbidden, invalid, invalidTransition, mapDbError, notFound } from "../lib/errors";
import { canTransition } from "../lib/lifecycle";
import { keysetBefore, pageOf } from "../lib/pagination";
import { iso, isoSql, pgArray, type Page } from "../lib/dto";
import { Batcher } from "../lib/batch";
import { logFields } from "../lib/log-context";
import { DeploymentFeedMixin } from "./deployments/feed";
import { LifecycleMixin, type MoveFacts } from "./deployments/lifecycle";
import { requestedSaga, type SagaRequestRow } from "./deployments/saga-requests";
import { admitCreate, existingSlugId, slugTaken } from "./deployments/admission";
import { checkCreate } from "./deployments/provision-input";
import { ResizeRequestMixin } from "./deployments/resize";
import { TEMPLATE_VERSION } from "./subscriptions/catalog";
import { UUID, SLUG, PAGE_PARAMS } from "../lib/params";


export interface CreateParams {
  slug: string;
  display_name?: string;
  region?: string;
  state?: "active" | "trial";
  llm_mode?: (typeof LLM_MODES)[number];
  billing_action_suspended?: boolean;
  template_code?: string;
  template_version?: string | number | null;
  tenant_id?: string;
  provision?: boolean;
  /** Subscribe in the same request (SPEC §3); the answer then includes `subscription` (docs/catalog.md). */
  plan_code?: string;
  addons?: { code: string; qty: number }[];
}
export interface ListParams {
  state?: DeploymentState;
  limit?: number;
  cursor?: string;
  tenant_id?: string;
}
export interface IdParams {
  id: string;
}
export interface TransitionParams extends IdParams {
  to_state: DeploymentState;
  reason?: string;
  notes?: string;
  /** Saga moves only: the user who asked for the provisioning, recorded as the event's actor. */
  actor?: string;
}

/**
 * The deployment's DTO, from its entity (ORM paths) or from a row of `deploymentCols()` (the raw-SQL read paths,
 * whose timestamps PostgreSQL already gives as ISO text: not parsed again, which was most of a list's mapping time).
 */
export function deploymentDto(d: Deployment | DeploymentRow) {
  const t = (v: Date | string | null | undefined) => (typeof v === "string" ? v : iso(v));
  return {
    id: d.id,
    tenant_id: d.tenant_id,
    slug: d.slug,
    display_name: d.display_name,
    region: d.region,
    state: d.state,
    state_since: t(d.state_since),
    llm_mode: d.llm_mode,
    billing_action_suspended: d.billing_action_suspended,
    template_code: d.template_code ?? null,
    template_version: d.template_version ?? null,
    inserted_at: t(d.inserted_at),
    updated_at: t(d.updated_at),
    trial_ends_at: t(d.trial_ends_at),
    runtime: { status: d.runtime_status, droplet_id: d.runtime_droplet_id == null ? null : Number(d.runtime_droplet_id), ipv4: d.runtime_ipv4 ?? null, hostname: d.runtime_hostname ?? null },
  };
}
/** What a raw read of `deploymentCols()` returns: the entity's fields, timestamps as ISO text. */
type DeploymentRow = { [K in keyof Deployment]: Deployment[K] extends Date | null | undefined ? string | null : Deployment[K] };
export type DeploymentDto = ReturnType<typeof deploymentDto>;

/** The columns a raw read gives `deploymentRowDto`, timestamps as ISO text computed by PostgreSQL; `t`: a table alias. */
export const deploymentCols = (t = "") => {
  const c = (n: string) => `${t ? `${t}.` : ""}${n}`;
  return `${c("id")}, ${c("tenant_id")}, ${c("slug")}, ${c("display_name")}, ${c("region")}, ${c("state")}, ${isoSql(c("state_since"))} as state_since, ${c("llm_mode")}, ${c("billing_action_suspended")}, ${c("template_code")}, ${c("template_version")}, ${isoSql(c("inserted_at"))} as inserted_at, ${isoSql(c("updated_at"))} as updated_at,
    ${isoSql(c("trial_ends_at"))} as trial_ends_at, ${c("runtime_status")}, ${c("runtime_droplet_id")}, ${c("runtime_ipv4")}, ${c("runtime_hostname")}`;
};

/** A row read with deploymentCols as the DTO, without the ORM (hydration was most of the hot paths' CPU): the same `deploymentDto`. */
export function deploymentRowDto(r: any): DeploymentDto {
  return deploymentDto(r as DeploymentRow);
}

export function eventDto(e: DeploymentEvent) {
  return {
    id: Number(e.id),
    deployment_id: e.deployment_id,
    from_state: e.from_state ?? null,
    to_state: e.to_state,
    reason: e.reason,
    actor: e.actor,
    notes: e.notes ?? null,
    occurred_at: iso(e.occurred_at),
  };
}

const DeploymentsService: ServiceSchema<any> = {
  name: "deployments",
  version: 1,
  mixins: [DbMixin([Deployment, DeploymentEvent]), LifecycleMixin, ResizeRequestMixin, DeploymentFeedMixin],
  settings: {
    defaultRegion: process.env.DEFAULT_REGION ?? "nyc3",
    defaultTemplate: process.env.DEFAULT_TEMPLATE ?? "arcadia-app",
    // How often (and how old) unpublished events are looked for; 0 turns the sweep off.
    eventSweepMs: Number(process.env.DEPLOYMENT_EVENTS_SWEEP_MS ?? 5_000),
  },

  actions: {
    create: {
      access: "scoped",
      params: {
        slug: { type: "string", pattern: SLUG, messages: { stringPattern: "'slug' must be a lowercase DNS label (a-z, 0-9, '-', at most 63 characters, no leading or trailing '-')" } },
        display_name: { type: "string", min: 1, max: 200, optional: true },
        region: { type: "string", pattern: "^[a-z0-9-]{2,32}$", optional: true },
        state: { type: "enum", values: ["active", "trial"], optional: true, messages: { enumValue: "'state' may only be 'active' or 'trial' at creation" } },
        llm_mode: { type: "enum", values: LLM_MODES, optional: true },
        billing_action_suspended: { type: "boolean", optional: true },
        template_code: { type: "string", min: 1, max: 100, optional: true },
        template_version: TEMPLATE_VERSION,
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        provision: { type: "boolean", optional: true },
        plan_code: { type: "string", min: 1, max: 64, optional: true },
        addons: { type: "array", optional: true, max: 50, items: { type: "object", strict: true, props: { code: { type: "string", min: 1, max: 64 }, qty: { type: "number", integer: true, min: 1, max: 100_000 } } } },
      },
      async handler(this: any, ctx: ActionCtx<CreateParams>) {
        const user = currentUser(ctx);
        const p = ctx.params;
        const tenantId = user.operator ? (p.tenant_id ?? user.tenant_id) : user.tenant_id;
        if (!tenantId) throw invalid("'tenant_id' is required for a token without a tenant", [{ field: "tenant_id", type: "required" }]);
        if (!user.operator && p.tenant_id && p.tenant_id !== user.tenant_id) throw invalid("'tenant_id' must be your own tenant", [{ field: "tenant_id" }]);
        if (p.billing_action_suspended !== undefined && !user.operator) throw forbidden("'billing_action_suspended' is set by operators only");
        const region = p.region ?? this.settings.defaultRegion;
        const templateCode = p.template_code ?? this.settings.defaultTemplate;
        const templateVersion = p.template_version == null ? null : String(p.template_version);
        // Catalog and region first: a create that names something that does not exist writes and starts nothing.
        await checkCreate(ctx, { region, template_code: templateCode, template_version: templateVersion, plan_code: p.plan_code, addons: p.addons, tenant_id: tenantId, provision: p.provision });

        const now = new Date();
        const state: DeploymentState = p.provision ? "provisioning" : (p.state ?? "active");
        const id = randomUUID();
        // With provision: true the saga's input is built before the transaction; its request commits with the row.
        const input = p.provision ? await this.provisionInputFor(ctx, { id, tenant_id: tenantId, slug: p.slug, region, llm_mode: p.llm_mode ?? "shared", template_code: templateCode, template_version: templateVersion }, p.state ?? "active", p.plan_code, true) : null;
        const trialEnds = state === "trial" ? await this.trialEndsAt(ctx) : null;
        let deployment!: Deployment;
        let event!: DeploymentEvent;
        let request: SagaRequestRow | null = null;
        try {
          await emOf(ctx).transactional(async (em) => {
            await admitCreate(em as EntityManager, tenantId, p.slug);
            deployment = em.create(Deployment, {
              id,
              tenant_id: tenantId,
              slug: p.slug,
              display_name: p.display_name ?? p.slug,
              region,
              state,
              state_since: now,
              llm_mode: p.llm_mode ?? "shared",
              billing_action_suspended: p.billing_action_suspended ?? false,
              template_code: templateCode,
              template_version: templateVersion,
              inserted_at: now,
              updated_at: now,
              trial_ends_at: trialEnds,
              runtime_status: "none",
            } as any);
            event = em.create(DeploymentEvent, {
              deployment_id: deployment.id, from_state: null, to_state: state, reason: "created", actor: user.sub, notes: null, occurred_at: now,
            } as any);
            await em.flush();
            if (input) request = await this.requestSaga(em, deployment, "provision", input, user.sub);
          });
        } catch (err) {
          const takenBy = err instanceof UniqueConstraintViolationException ? await existingSlugId(emOf(ctx), tenantId, p.slug).catch(() => null) : null;
          mapDbError(err, () => slugTaken(p.slug, takenBy));
        }
        const dto = deploymentDto(deployment);
        const subscribed = p.plan_code ? { subscription: await this.subscribeCreated(ctx, dto, p) } : {};
        await this.publish(ctx, "deployments.created", { deployment: dto, event: eventDto(event) });

        if (!p.provision) {
          ctx.meta.$statusCode = 201;
          return { deployment: dto, ...subscribed };
        }
        // No fallback: the request row owns the start now (the sweep re-sends it); nothing here may undo the saga.
        const saga = await this.sagaOf(ctx, request!, true);
        ctx.meta.$statusCode = 202;
        return { deployment: dto, saga, ...subscribed };
      },
    },

    list: {
      access: "scoped",
      params: {
        state: { type: "enum", values: DEPLOYMENT_STATES, optional: true },
        ...PAGE_PARAMS,
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
      },
      async handler(ctx: ActionCtx<ListParams>): Promise<Page<DeploymentDto>> {
        const user = currentUser(ctx);
        const p = ctx.params;
        const limit = p.limit ?? 50;
        const tenant = listTenant(user, p.tenant_id);
        if (tenant === null) return { items: [], next_cursor: null };
        const conds: string[] = [];
        const args: unknown[] = [];
        if (tenant) conds.push("tenant_id = ?") && args.push(tenant);
        if (p.state) conds.push("state = ?") && args.push(p.state);
        const after = keysetBefore(p.cursor, "inserted_at", "id");
        if (after) conds.push(after.sql) && args.push(...after.args);
        const where = conds.length ? `where ${conds.join(" and ")}` : "";
        const rows: DeploymentDto[] = await this.readDeployments(emOf(ctx), `${where} order by inserted_at desc, id desc limit ${limit + 1}`, args);
        return pageOf(rows, limit, (d) => ({ time: d.inserted_at!, id: d.id }));
      },
    },

    get: {
      access: "scoped",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<IdParams>) {
        const id = ctx.params.id;
        const user = currentUser(ctx);
        if (!UUID.test(id)) throw notFound("Deployment", id);
        // One statement reads the deployment, its events and its newest saga request not started yet (issue 13: a
        // round trip each before); the other services' parts are asked meanwhile, and dropped when the deployment
        // is not the caller's to see (both are reads, scoped again by their owners).
        const [[row], subscription, saga] = await Promise.all([
          emOf(ctx).execute(`select ${deploymentCols("d")},
              coalesce((select json_agg(json_build_object('id', e.id, 'deployment_id', e.deployment_id, 'from_state', e.from_state, 'to_state', e.to_state, 'reason', e.reason,
                  'actor', e.actor, 'notes', e.notes, 'occurred_at', ${isoSql("e.occurred_at")}) order by e.id) from deployment_events e where e.deployment_id = d.id), '[]') as events,
              (select json_build_object('id', r.id, 'deployment_id', r.deployment_id, 'tenant_id', r.tenant_id, 'kind', r.kind, 'created_at', ${isoSql("r.created_at")})
                 from deployment_saga_requests r where r.deployment_id = d.id and r.started_at is null and r.next_attempt_at <> 'infinity' order by r.seq desc limit 1) as pending
            from deployments d where d.id = ?`, [id]),
          ctx.call("v1.subscriptions.forDeployment", { deployment_id: id }).catch((err: unknown) => err),
          this.sagaFor(ctx, id).catch((err: unknown) => err),
        ]);
        if (!row || !visibleTo(user, row.tenant_id)) throw notFound("Deployment", id);
        if (subscription instanceof Error) throw subscription;
        if (saga instanceof Error) throw saga;
        // A requested saga not yet started is newer than any the engine has: it is the one shown.
        const pending = row.pending ? requestedSaga(row.pending) : null;
        return { deployment: deploymentRowDto(row), subscription, events: (row.events as DeploymentEvent[]).map(eventDto), saga: pending ?? saga };
      },
    },

    /** For other services: the deployment if the caller may see it, else 404. */
    find: {
      access: "scoped",
      visibility: "public",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<IdParams>) {
        return { deployment: await this.findVisible(ctx, ctx.params.id) };
      },
    },

    transition: {
      access: "scoped",
      params: {
        id: { type: "string" },
        to_state: { type: "enum", values: DEPLOYMENT_STATES },
        reason: { type: "string", min: 1, max: 200, optional: true },
        notes: { type: "string", max: 2000, optional: true, nullable: true },
      },
      async handler(this: any, ctx: ActionCtx<TransitionParams>) {
        return this.transition(ctx, ctx.params, false);
      },
    },

    /** Saga step mark_deployment_provisioning: the deployment exists, is visible and is still provisioning. */
    markProvisioning: {
      access: "internal",
      visibility: "public",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<IdParams>) {
        const d = await this.findVisible(ctx, ctx.params.id);
        if (d.state !== "provisioning") throw new Errors.MoleculerError(`Deployment ${d.id} is ${d.state}, not provisioning`, 409, "NOT_PROVISIONING", { state: d.state });
        return { deployment: d };
      },
    },

    /** Saga step activate_deployment: the one move out of provisioning besides the rollback. Idempotent. */
    activateProvisioned: {
      access: "internal",
      visibility: "public",
      params: { id: { type: "string" }, actor: { type: "string", optional: true }, to_state: { type: "enum", values: ["active", "trial"], optional: true } },
      async handler(this: any, ctx: ActionCtx<IdParams & { actor?: string; to_state?: "active" | "trial" }>) {
        // Only out of provisioning (a repeat on the activated deployment changes nothing); checked on the locked row.
        const to = ctx.params.to_state ?? "active";
        const guard = (state: DeploymentState) => {
          if (state !== "provisioning" && state !== to) throw new Errors.MoleculerError(`Deployment ${ctx.params.id} is ${state}, not provisioning`, 409, "NOT_PROVISIONING", { state });
        };
        return this.transition(ctx, { id: ctx.params.id, to_state: to, reason: "provisioned", actor: ctx.params.actor }, true, guard);
      },
    },

    /** Internal (billing runs): the deployments with these ids, in one query instead of pages of 200. */
    byIds: {
      access: "internal",
      visibility: "public",
      params: { ids: { type: "array", items: "uuid", max: 5000 } },
      async handler(this: any, ctx: ActionCtx<{ ids: string[] }>): Promise<{ items: DeploymentDto[] }> {
        return { items: ctx.params.ids.length ? await this.readDeployments(emOf(ctx), "where id = any(?::uuid[])", [`{${ctx.params.ids.join(",")}}`]) : [] };
      },
    },
  },

  events: {
    /** Rollback of a provisioning saga: a deployment still provisioning ends cancelled. */
    "provisioning.compensate.deployments": compensationHandler(async function (this: any, req, ctx) {
      const ectx = ctx as unknown as ActionCtx<unknown>;
      ectx.locals.em = this.orm.em.fork();
      (ectx.meta as any).user = systemUser("provisioning");
      const d = await emOf(ectx).findOne(Deployment, { id: req.deployment_id });
      if (!d || d.state !== "provisioning") return;
      const actor = typeof req.requested_by === "string" ? req.requested_by : undefined;
      await this.transition(ectx, { id: req.deployment_id, to_state: "cancelled", reason: "provisioning_failed", notes: `saga ${req.saga_id}`, actor }, true);
    }),
  },

  /*
   * Events are at least once: deployment_events is their outbox. The normal path publishes right after the commit
   * and marks the row; the sweep publishes rows a crash left unmarked (consumers dedupe by event.id).
   */
  started() {
    // The publish marks of concurrent moves share one statement (lib/batch.ts): one commit per batch, not per event.
    this.publishMarks = new Batcher<number>((ids) =>
      this.orm.em.fork().getConnection().execute("update deployment_events set published_at = now() where id = any(?::bigint[]) and published_at is null", [pgArray(ids)]).then(() => undefined),
    );
    const every = Number(this.settings.eventSweepMs);
    if (every > 0) this.eventSweep = setInterval(() => this.publishLeftovers().catch((err: Error) => this.logger.warn({ err: err.message }, "event sweep failed")), every);
  },
  stopped() {
    clearInterval(this.eventSweep);
  },

  methods: {
    /**
     * The subscribe half of a create with plan_code. The deployment (with its created event and saga request) has
     * committed but nothing about it is published or started yet: if subscribing fails, the deployment row goes
     * (its event and request with it, by cascade), so a failed create leaves nothing behind.
     */
    async subscribeCreated(ctx: ActionCtx<unknown>, d: DeploymentDto, p: CreateParams) {
      try {
        const res = (await ctx.call("v1.subscriptions.subscribe", { id: d.id, plan_code: p.plan_code, ...(p.addons ? { addons: p.addons } : {}) })) as { subscription: unknown };
        return res.subscription;
      } catch (err) {
        await emOf(ctx).getConnection().execute("delete from deployments where id = ?", [d.id])
          .catch((e: Error) => this.logger.error({ ...logFields(ctx), deployment_id: d.id, err: e.message }, "could not remove the deployment of a failed create"));
        throw err;
      }
    },

    dto: (d: Deployment) => deploymentDto(d),
    eventDto: (e: DeploymentEvent) => eventDto(e),

    async publish(ctx: ActionCtx<unknown>, name: string, payload: { deployment: DeploymentDto; event: ReturnType<typeof eventDto> }) {
      const e = payload.event;
      this.logger.info({ ...logFields(ctx), deployment_id: e.deployment_id, tenant_id: payload.deployment.tenant_id, from_state: e.from_state, to_state: e.to_state, actor: e.actor }, name);
      await ctx.emit(name, payload);
      // Not awaited: the mark only spares the sweep a re-send (consumers dedupe by event id), so the move's caller
      // does not wait for it, and a mark that fails leaves the row to the sweep instead of failing a committed move.
      this.publishMarks.add(payload.event.id).catch((err: Error) => this.logger.warn({ event_id: payload.event.id, err: err.message }, "publish mark failed; the sweep will re-send"));
    },

    /** Unpublished events older than the sweep period: claimed with skip locked so two nodes never send one twice. */
    async publishLeftovers(): Promise<number> {
      const em = this.orm.em.fork();
      // On the embedded database the emit below (local handlers, awaited) needs the one connection the open
      // transaction holds: each handler timed out, stalling every request for seconds. One node owns that
      // database, so there the rows are swept without the claiming transaction (at least once either way).
      const sweep = async (tx: any) => {
        const rows = await tx.execute(
          `select e.id, e.deployment_id, e.from_state, e.to_state, e.reason, e.actor, e.notes, ${isoSql("e.occurred_at")} as occurred_at
           from deployment_events e where e.published_at is null and e.occurred_at < now() - (? || ' milliseconds')::interval
           order by e.id limit 100 for update skip locked`,
          [String(this.settings.eventSweepMs)],
        );
        for (const row of rows) {
          const event = eventDto(row);
          const [deployment] = await this.readDeployments(tx, "where id = ?", [event.deployment_id]);
          if (deployment) await this.broker.emit(event.from_state === null ? "deployments.created" : "deployments.transitioned", { deployment, event });
          await tx.execute("update deployment_events set published_at = now() where id = ?", [event.id]);
        }
        return rows.length;
      };
      return onEmbeddedDatabase() ? sweep(em) : em.transactional(sweep);
    },

    /**
     * The hot read paths (GET /deployments, GET /deployments/:id) read rows straight into DTOs: they never
     * write, and MikroORM's hydration was most of their CPU (README: Benchmarks).
     */
    async readDeployments(em: EntityManager, tail: string, args: unknown[]): Promise<DeploymentDto[]> {
      const rows = await em.execute(`select ${deploymentCols()} from deployments ${tail}`, args);
      return rows.map(deploymentRowDto);
    },

    /** The deployment if the caller may see it; 404 when it is absent or another tenant's. */
    async findVisible(ctx: ActionCtx<unknown>, id: string): Promise<DeploymentDto> {
      const user = currentUser(ctx);
      if (!UUID.test(id)) throw notFound("Deployment", id);
      const [d] = await this.readDeployments(emOf(ctx), "where id = ?", [id]);
      if (!d || !visibleTo(user, d.tenant_id)) throw notFound("Deployment", id);
      return d;
    },

    /**
     * The state change, its event and (when the move has a cloud effect) its saga request commit together under a
     * row lock, so the event log stays a chain and no move loses its saga. Who may move (lib/move-rules.ts) needs
     * facts from other services: they are looked up before the transaction, for the state read then; if the state
     * changed meanwhile, it is done again.
     */
    async transition(ctx: ActionCtx<unknown>, p: TransitionParams, bySaga: boolean, guard?: (state: DeploymentState) => void) {
      const user = currentUser(ctx);
      if (!UUID.test(p.id)) throw notFound("Deployment", p.id);
      for (let attempt = 0; ; attempt++) {
        // A saga's move needs no facts: unless the trial clock is asked (before the transaction), the row is only
        // read locked, in the transaction (one read of deployments instead of two per move).
        const seen: DeploymentDto | null = bySaga && p.to_state !== "trial" ? null : await this.findVisible(ctx, p.id);
        const facts: MoveFacts = bySaga || !seen ? {} : await this.moveFacts(ctx, seen, p.to_state);
        const trialEnds = p.to_state === "trial" && seen && !seen.trial_ends_at ? await this.trialEndsAt(ctx) : null;
        const moved = await emOf(ctx).transactional(async (em) => {
          const d = await em.findOne(Deployment, { id: p.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (!d || !visibleTo(user, d.tenant_id)) throw notFound("Deployment", p.id);
          guard?.(d.state);
          if (d.state === p.to_state) return { d, changes: [], request: null };
          if (!canTransition(d.state, p.to_state, bySaga)) throw invalidTransition(d.state, p.to_state);
          if (seen && d.state !== seen.state) return null; // the facts were for another state: look again
          if (!bySaga) this.checkMove(d.state, p.to_state, user, facts);
          const event = this.recordMove(em, d, p.to_state, { reason: p.reason ?? "manual", actor: (bySaga && p.actor) || user.sub, notes: p.notes ?? null });
          if (trialEnds && !d.trial_ends_at) d.trial_ends_at = trialEnds;
          const request = await this.requestEffect(em, d, event.from_state!, user.sub);
          await em.flush();
          if ((d as any).__runtimeChanged) await this.noteRuntime(em, d);
          return { d, changes: [event], request };
        });
        if (!moved && attempt < 5) continue;
        if (!moved) throw conflict("The deployment was changed concurrently; retry", "CONCURRENT_UPDATE");
        return this.afterMove(ctx, moved.d, moved.changes, moved.request);
      }
    },

    /** The provisioning saga's view of a deployment; null when provisioning is not part of this cluster. */
    async sagaFor(ctx: ActionCtx<unknown>, deploymentId: string) {
      try {
        return await ctx.call("v1.provisioning.forDeployment", { deployment_id: deploymentId });
      } catch (err) {
        if (err instanceof Errors.ServiceNotFoundError) return null;
        throw err;
      }
    },
  },
};

export default DeploymentsService;
