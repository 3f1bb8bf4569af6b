import { LockMode } from "@mikro-orm/core";
import type { EntityManager } from "@mikro-orm/postgresql";
import { Context, Errors, type ServiceSchema } from "moleculer";
import { Deployment, DeploymentEvent, type DeploymentState } from "../../entities/deployment";
import { callAsSystem, currentUser, systemUser, visibleTo, type ActionCtx, type User } from "../../lib/access";
import { emOf } from "../../lib/db";
import { conflict, forbidden, invalid, invalidTransition, notFound } from "../../lib/errors";
import { hasLiveDroplet, lifecycleEffect, RUNTIME_STATUSES, runtimeWhile, type RuntimeStatus } from "../../lib/lifecycle";
import { factsNeeded, mayOverrideBilling, refuseMove, type MoveFacts } from "../../lib/move-rules";
import { insertSagaRequest, sagaForRequest, sweepRequests, type SagaKind, type SagaRequestRow, type StartDeps } from "./saga-requests";
import { provisionInput } from "./provision-input";
import { UUID } from "../../lib/params";
import { isoSql } from "../../lib/dto";
import { deploymentCols, deploymentRowDto } from "../deployments.service";

export type { MoveFacts };

/*
 * The lifecycle side of the deployments service (SPEC §2): who may move, what a move asks of the cloud (a
 * durable saga request, ./saga-requests.ts), runtime, and the DELETE / provision / PATCH routes. Mixed into
 * services/deployments.service.ts; design note in ./README.md.
 */

const num = (v: string | undefined, d: number) => (v === undefined || v === "" ? d : Number(v));

export interface SetRuntimeParams {
  id: string;
  status: RuntimeStatus;
  droplet_id?: number | null;
  ipv4?: string | null;
  hostname?: string | null;
}
export interface UpdateParams {
  id: string;
  display_name?: string;
  billing_action_suspended?: boolean;
}
export interface RuntimeChangedEvent {
  deployment_id: string;
  tenant_id: string;
  runtime: { status: RuntimeStatus; droplet_id: number | null; ipv4: string | null; hostname: string | null };
  occurred_at: string;
  /** deployment_runtime_events.id: the change's stable id (consumers dedupe by it; v1.deployments.runtimeSince). */
  event_id?: number;
}

/** The deployment fields a provision saga's input is built from (services/deployments/provision-input.ts). */
export interface DeploymentLike {
  id: string;
  tenant_id: string;
  slug: string;
  region: string;
  llm_mode: string;
  template_code: string;
  template_version: string | null;
}

/** The trial clock in one place: the billing clock's now (wall clock without a billing service) + TRIAL_DAYS. */
export async function trialEndsAt(ctx: ActionCtx<unknown>, days = num(process.env.TRIAL_DAYS, 14)): Promise<Date> {
  let now = new Date();
  try {
    const res = await callAsSystem<{ now: string }>(ctx, "deployments", "v1.billing.now", {}, { timeout: 5000 });
    now = new Date(res.now);
  } catch (err) {
    if (!(err instanceof Errors.ServiceNotFoundError)) throw err;
  }
  return new Date(now.getTime() + days * 86_400_000);
}

export const LifecycleMixin: Partial<ServiceSchema<any>> = {
  settings: {
    // How long a move waits for v1.provisioning.start before answering with the requested saga (the sweep starts it).
    sagaStartTimeoutMs: num(process.env.SAGA_START_TIMEOUT_MS, 5_000),
    // How often unacknowledged saga requests are re-sent; 0 turns the sweep off.
    sagaRequestSweepMs: num(process.env.SAGA_REQUEST_SWEEP_MS, 5_000),
  },

  actions: {
    /** Internal (the sagas): what the deployment's droplet is doing. Emits deployments.runtime_changed when it changed. */
    setRuntime: {
      access: "internal",
      visibility: "public",
      params: {
        id: { type: "string" },
        status: { type: "enum", values: RUNTIME_STATUSES },
        droplet_id: { type: "number", integer: true, min: 0, optional: true, nullable: true },
        ipv4: { type: "string", max: 64, optional: true, nullable: true },
        hostname: { type: "string", max: 255, optional: true, nullable: true },
      },
      async handler(this: any, ctx: ActionCtx<SetRuntimeParams>) {
        const p = ctx.params;
        if (!UUID.test(p.id)) throw notFound("Deployment", p.id);
        // One statement (was a transaction of five): the update locks the row and changes it only when the runtime
        // differs, and the same statement writes the change's outbox row (deployment_runtime_events), dated after
        // the deployment's last move as noteRuntime dates it. No row back: unchanged (a retry) or absent.
        const now = new Date();
        const set: [string, unknown][] = [["runtime_status", p.status]];
        if (p.droplet_id !== undefined) set.push(["runtime_droplet_id", p.droplet_id]);
        if (p.ipv4 !== undefined) set.push(["runtime_ipv4", p.ipv4]);
        if (p.hostname !== undefined) set.push(["runtime_hostname", p.hostname]);
        const type = (c: string) => (c === "runtime_droplet_id" ? "bigint" : "text");
        const [row] = await emOf(ctx).execute(
          `with upd as (
             update deployments set ${set.map(([c]) => `${c} = ?`).join(", ")}, updated_at = ?, version = version + 1
             where id = ? and (${set.map(([c]) => c).join(", ")}, true) is distinct from (${set.map(([c]) => `cast(? as ${type(c)})`).join(", ")}, true)
             returning *),
           ev as (insert into deployment_runtime_events (deployment_id, tenant_id, status, droplet_id, ipv4, hostname, occurred_at)
             select id, tenant_id, runtime_status, runtime_droplet_id, runtime_ipv4, runtime_hostname, greatest(cast(? as timestamptz), state_since + interval '1 millisecond') from upd
             returning id, occurred_at)
           select ${deploymentCols("upd")}, ev.id as event_id, ${isoSql("ev.occurred_at")} as event_at from upd, ev`,
          [...set.map(([, v]) => v), now, p.id, ...set.map(([, v]) => v), now],
        );
        if (!row) return { deployment: await this.findVisible(ctx, p.id) };
        const { event_id, event_at, ...cols } = row as any;
        const deployment = deploymentRowDto(cols);
        const payload: RuntimeChangedEvent = { deployment_id: deployment.id, tenant_id: deployment.tenant_id, runtime: deployment.runtime, occurred_at: event_at, event_id: Number(event_id) };
        await ctx.emit("deployments.runtime_changed", payload);
        return { deployment };
      },
    },

    /** POST /deployments/:id/provision (SPEC §2): an existing deployment without a live droplet gets one. */
    provision: {
      access: "scoped",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        const user = currentUser(ctx);
        for (let attempt = 0; attempt < 5; attempt++) {
          const seen = await this.findVisible(ctx, ctx.params.id);
          this.checkProvisionable(seen.state, seen.runtime.status);
          const target: "active" | "trial" = seen.state === "trial" ? "trial" : "active";
          const facts = await this.moveFacts(ctx, seen, target);
          const input = await this.provisionInputFor(ctx, seen, target);
          const moved = await emOf(ctx).transactional(async (em) => {
            const d = await em.findOne(Deployment, { id: seen.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
            if (!d || !visibleTo(user, d.tenant_id)) throw notFound("Deployment", seen.id);
            this.checkProvisionable(d.state, d.runtime_status);
            if (d.state !== seen.state) return null;
            if (d.state !== target) this.checkMove(d.state, target, user, facts);
            const event = this.recordMove(em, d, "provisioning", { reason: "provision_requested", actor: user.sub, notes: null });
            const request = await this.requestSaga(em, d, "provision", input, user.sub);
            await em.flush();
            return { d, event, request };
          });
          if (!moved) continue;
          const res = await this.afterMove(ctx, moved.d, [moved.event], moved.request);
          ctx.meta.$statusCode = 202;
          return res;
        }
        throw conflict("The deployment was changed concurrently; retry", "CONCURRENT_UPDATE");
      },
    },

    /**
     * DELETE /deployments/:id: cancel (unless cancelled) and archive in one transaction — two events — and
     * decommission what it runs. 202 with the saga, 200 with saga null when it has no cloud resources.
     */
    remove: {
      access: "scoped",
      params: { id: { type: "string" } },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        const user = currentUser(ctx);
        const seen = await this.findVisible(ctx, ctx.params.id);
        if (seen.state === "archived") return { deployment: seen, saga: null };
        const moved = await emOf(ctx).transactional(async (em) => {
          const d = await em.findOne(Deployment, { id: seen.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (!d || !visibleTo(user, d.tenant_id)) throw notFound("Deployment", seen.id);
          if (d.state === "archived") return { d, events: [], request: null };
          if (d.state === "provisioning") throw conflict("The deployment is being provisioned; delete it once its saga has finished", "PROVISIONING_IN_PROGRESS", { state: d.state });
          const events: DeploymentEvent[] = [];
          if (d.state !== "cancelled") events.push(this.recordMove(em, d, "cancelled", { reason: "deleted", actor: user.sub, notes: null }));
          events.push(this.recordMove(em, d, "archived", { reason: "deleted", actor: user.sub, notes: null }));
          const request = await this.requestEffect(em, d, "cancelled", user.sub);
          await em.flush();
          if ((d as any).__runtimeChanged) await this.noteRuntime(em, d);
          return { d, events, request };
        });
        const res = await this.afterMove(ctx, moved.d, moved.events, moved.request);
        ctx.meta.$statusCode = res.saga ? 202 : 200;
        return res;
      },
    },

    /** PATCH /deployments/:id: display_name; billing_action_suspended by operators only. */
    update: {
      access: "scoped",
      params: {
        id: { type: "string" },
        display_name: { type: "string", min: 1, max: 200, optional: true },
        billing_action_suspended: { type: "boolean", optional: true },
      },
      async handler(this: any, ctx: ActionCtx<UpdateParams>) {
        const user = currentUser(ctx);
        const p = ctx.params;
        if (!UUID.test(p.id)) throw notFound("Deployment", p.id);
        // Scoping first: another tenant's id is 404 whatever the body says.
        await this.findVisible(ctx, p.id);
        if (p.billing_action_suspended !== undefined && !mayOverrideBilling(user)) throw forbidden("'billing_action_suspended' is set by operators only");
        if (p.display_name === undefined && p.billing_action_suspended === undefined) throw invalid("Nothing to change: give 'display_name' and/or 'billing_action_suspended'");
        const d = await emOf(ctx).transactional(async (em) => {
          const d = await em.findOne(Deployment, { id: p.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (!d || !visibleTo(user, d.tenant_id)) throw notFound("Deployment", p.id);
          if (p.display_name !== undefined) d.display_name = p.display_name;
          if (p.billing_action_suspended !== undefined) d.billing_action_suspended = p.billing_action_suspended;
          d.updated_at = new Date();
          await em.flush();
          return d;
        });
        return { deployment: this.dto(d) };
      },
    },
  },

  methods: {
    runtimeOf(d: Deployment) {
      return { status: d.runtime_status, droplet_id: d.runtime_droplet_id == null ? null : Number(d.runtime_droplet_id), ipv4: d.runtime_ipv4 ?? null, hostname: d.runtime_hostname ?? null };
    },

    /**
     * The runtime change's outbox row (deployment_runtime_events), in the transaction that changed the runtime, after
     * the flush: consumers that missed the live event read it through v1.deployments.runtimeSince. A move's change is
     * dated after its event (the same millisecond would order it first: webhook deliveries go by time), and both
     * changes one move can make (rollback reset, then the lifecycle effect) are one row with the final runtime.
     */
    async noteRuntime(em: EntityManager, d: Deployment) {
      const at = new Date(Math.max(Date.now(), d.state_since ? new Date(d.state_since).getTime() + 1 : 0));
      const r = this.runtimeOf(d);
      const [row] = await em.execute(
        `insert into deployment_runtime_events (deployment_id, tenant_id, status, droplet_id, ipv4, hostname, occurred_at) values (?, ?, ?, ?, ?, ?, ?) returning id`,
        [d.id, d.tenant_id, r.status, r.droplet_id, r.ipv4, r.hostname, at],
      );
      (d as any).__runtimeEvent = { id: Number(row.id), occurred_at: at.toISOString() };
    },

    async emitRuntime(ctx: ActionCtx<unknown>, d: Deployment) {
      const noted = (d as any).__runtimeEvent as { id: number; occurred_at: string } | undefined;
      const payload: RuntimeChangedEvent = { deployment_id: d.id, tenant_id: d.tenant_id, runtime: this.runtimeOf(d), occurred_at: noted?.occurred_at ?? new Date().toISOString(), ...(noted ? { event_id: noted.id } : {}) };
      await ctx.emit("deployments.runtime_changed", payload);
    },

    /** 409 with a live droplet (any state), 422 from a state that cannot be provisioned. */
    checkProvisionable(state: DeploymentState, runtime: RuntimeStatus) {
      if (hasLiveDroplet(runtime)) throw conflict("The deployment already runs on a live droplet", "ALREADY_PROVISIONED", { state, runtime_status: runtime });
      if (!["active", "trial", "cancelled"].includes(state)) throw invalidTransition(state, "provisioning");
    },

    /** The facts lib/move-rules needs for this move, asked of their owners as the system user. */
    async moveFacts(ctx: ActionCtx<unknown>, d: { id: string; state: DeploymentState }, to: DeploymentState): Promise<MoveFacts> {
      const need = factsNeeded(d.state, to, currentUser(ctx));
      const facts: MoveFacts = {};
      const ask = async (action: string, params: object) => {
        try {
          return await callAsSystem(ctx, "deployments", action, params);
        } catch (err) {
          if (err instanceof Errors.ServiceNotFoundError) return null; // that service is not part of this cluster
          throw err;
        }
      };
      if (need.subscription) facts.hasSubscription = !!(await ask("v1.subscriptions.forDeployment", { deployment_id: d.id }));
      if (need.overdue) facts.overdue = !!((await ask("v1.billing.overdue", { deployment_id: d.id })) as { overdue?: boolean } | null)?.overdue;
      return facts;
    },

    checkMove(from: DeploymentState, to: DeploymentState, user: User, facts: MoveFacts) {
      const r = refuseMove(from, to, user, facts);
      if (r) throw new Errors.MoleculerClientError(r.message, r.status, r.type, r.data);
    },

    /** One move and its event on a locked row (the caller flushes). */
    recordMove(em: EntityManager, d: Deployment, to: DeploymentState, e: { reason: string; actor: string; notes: string | null }): DeploymentEvent {
      const now = new Date();
      const event = em.create(DeploymentEvent, { deployment_id: d.id, from_state: d.state, to_state: to, reason: e.reason, actor: e.actor, notes: e.notes, occurred_at: now } as any);
      // A rolled-back provisioning destroyed its droplet before undoing mark_deployment_provisioning (reverse order).
      if (d.state === "provisioning" && to === "cancelled" && d.runtime_status !== "none") {
        Object.assign(d, { runtime_status: "none", runtime_droplet_id: null, runtime_ipv4: null, runtime_hostname: null });
        (d as any).__runtimeChanged = true;
      }
      d.state = to;
      d.state_since = now;
      d.updated_at = now;
      return event;
    },

    /** The lifecycle saga a move from `from` to the row's state needs, requested in the move's transaction. */
    async requestEffect(em: EntityManager, d: Deployment, from: DeploymentState, requestedBy: string): Promise<SagaRequestRow | null> {
      const effect = lifecycleEffect(from, d.state, d.runtime_status);
      if (effect === "none") return null;
      d.runtime_status = runtimeWhile(effect);
      (d as any).__runtimeChanged = true;
      const input = { from_state: from, to_state: d.state, droplet_id: d.runtime_droplet_id == null ? null : Number(d.runtime_droplet_id), slug: d.slug, requested_by: requestedBy };
      return this.requestSaga(em, d, effect, input, requestedBy);
    },

    requestSaga(em: EntityManager, d: { id: string; tenant_id: string }, kind: SagaKind, input: Record<string, unknown>, requestedBy: string): Promise<SagaRequestRow> {
      return insertSagaRequest(em, { deployment_id: d.id, tenant_id: d.tenant_id, kind, input, requested_by: requestedBy }, this.settings.sagaStartTimeoutMs + this.settings.sagaRequestSweepMs);
    },

    /** After the commit: the events out (in order), the runtime change, the saga started. */
    async afterMove(ctx: ActionCtx<unknown>, d: Deployment, events: DeploymentEvent[], request: SagaRequestRow | null) {
      const dto = this.dto(d);
      // The move has committed: a failed publication is the events sweep's to repeat, not the client's error.
      for (const e of events)
        await this.publish(ctx, "deployments.transitioned", { deployment: dto, event: this.eventDto(e) }).catch((err: Error) =>
          this.logger.warn({ deployment_id: d.id, event_id: Number(e.id), err: err.message }, "event left for the sweep"),
        );
      if ((d as any).__runtimeChanged) await this.emitRuntime(ctx, d).catch((err: Error) => this.logger.warn({ err: err.message }, "runtime_changed not sent"));
      const saga = request ? await this.sagaOf(ctx, request) : null;
      return { deployment: dto, saga };
    },

    startDeps(em: EntityManager, ctx?: ActionCtx<unknown>): StartDeps {
      // Started as the system user (saga-requests adds meta.user); with the request's ctx as parent for tracing.
      const call = (a: string, p: unknown, o: any) => this.broker.call(a, p, ctx ? { ...o, parentCtx: ctx } : o);
      return { em, call, timeoutMs: this.settings.sagaStartTimeoutMs, retryMs: Math.max(this.settings.sagaRequestSweepMs, 1000), logger: this.logger, onRefused: (r: SagaRequestRow, err: Error) => this.settleRefused(r, err) };
    },

    /** The saga of a committed request: started now if the engine answers, else the requested saga (README). */
    async sagaOf(ctx: ActionCtx<unknown>, request: SagaRequestRow, first = false) {
      return sagaForRequest(this.startDeps(emOf(ctx), ctx), request, first);
    },

    /**
     * A provision request the engine refused as invalid will never run: the deployment must not wait in
     * provisioning for it, so it moves to cancelled as a rollback would (reason provisioning_refused). A refused
     * lifecycle request changes no state; runtime keeps what the move set and the next move recomputes from it.
     */
    async settleRefused(r: SagaRequestRow, err: Error) {
      if (r.kind !== "provision") return;
      const ctx = Context.create(this.broker, undefined as any, {}, { meta: { user: systemUser("deployments") } }) as unknown as ActionCtx<unknown>;
      ctx.locals.em = this.orm.em.fork();
      const d = await this.findVisible(ctx, r.deployment_id).catch(() => null);
      if (d?.state !== "provisioning") return;
      await this.transition(ctx, { id: r.deployment_id, to_state: "cancelled", reason: "provisioning_refused", notes: `saga ${r.id}: ${err.message}`.slice(0, 2000), actor: r.requested_by ?? undefined }, true).catch((e: Error) =>
        this.logger.error({ deployment_id: r.deployment_id, err: e.message }, "could not cancel a deployment whose provisioning was refused"),
      );
    },

    trialEndsAt(ctx: ActionCtx<unknown>) {
      return trialEndsAt(ctx);
    },

    /**
     * The provision saga's input (services/deployments/provision-input.ts): size, image and user_data from
     * v1.subscriptions.dropletSpec, the region checked against that size. `planCode`: the plan a create subscribes
     * to in the same request (its subscription does not exist yet when the input is built).
     */
    async provisionInputFor(ctx: ActionCtx<unknown>, d: DeploymentLike, target: "active" | "trial", planCode?: string, creating = false) {
      return provisionInput(ctx, d, target, planCode, creating);
    },
  },

  started(this: any) {
    const every = Number(this.settings.sagaRequestSweepMs);
    if (every > 0)
      this.sagaRequestSweep = setInterval(() => {
        if (this.sweeping) return;
        this.sweeping = true;
        sweepRequests(this.startDeps(this.orm.em.fork()))
          .catch((err: Error) => this.logger.warn({ err: err.message }, "saga request sweep failed"))
          .finally(() => (this.sweeping = false));
      }, every);
  },
  stopped(this: any) {
    clearInterval(this.sagaRequestSweep);
  },
};
