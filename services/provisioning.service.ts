import type { ServiceSchema } from "moleculer";
import { Saga, SagaStep, CompensationRequest, SAGA_STATUSES, type SagaStatus, type StepStatus } from "../entities/saga";
import { DbMixin } from "../lib/db";
import { currentUser, visibleTo, type ActionCtx } from "../lib/access";
import { conflict, invalid, notFound } from "../lib/errors";
import { isoSql } from "../lib/dto";
import { SagaEngine, sagaDto, type EngineSettings, type SagaKind, type StartParams } from "./provisioning/engine";
import { KINDS, type KindEnv } from "./provisioning/kinds";
import { UUID_PARAM, PAGE_PARAMS } from "../lib/params";

/*
 * The saga orchestrator (SPEC §7): one engine (./provisioning/engine.ts) drives every kind; each kind is a list of
 * steps in ./provisioning/kinds/ (provision, power_off, power_on, decommission), every step holding its forward call
 * and its undo side by side. Design notes: ./provisioning/README.md.
 */
export { KINDS };
export const STEPS = KINDS.find((k) => k.kind === "provision")!.steps;
export type { SagaDto, StartParams } from "./provisioning/engine";


const num = (v: string | undefined, d: number) => (v === undefined || v === "" ? d : Number(v));

/**
 * Read when the service starts, not when the module loads: bin/start.ts adjusts some for the embedded simulator.
 * One flat settings object (tests set it per broker) feeds the engine's settings and the kinds' environment.
 */
function settingsOf(overrides: Record<string, any>, env = process.env): { engine: EngineSettings; kinds: KindEnv } {
  const pollMs = overrides.pollMs ?? num(env.PROVISION_POLL_MS, 1_000);
  return {
    engine: {
      leaseMs: overrides.leaseMs ?? num(env.PROVISION_LEASE_MS, 15_000),
      sweepMs: overrides.sweepMs ?? num(env.PROVISION_SWEEP_MS, 5_000),
      maxConcurrent: overrides.maxConcurrent ?? num(env.PROVISION_CONCURRENCY, 100),
      stepMaxAttempts: overrides.stepMaxAttempts ?? num(env.PROVISION_STEP_MAX_ATTEMPTS, 5),
      backoffMs: overrides.backoffMs ?? num(env.PROVISION_BACKOFF_MS, 500),
      pollMs,
      compensationMaxAttempts: overrides.compensationMaxAttempts ?? num(env.COMPENSATION_MAX_ATTEMPTS, 5),
      compensationAckTimeoutMs: overrides.compensationAckTimeoutMs ?? num(env.COMPENSATION_ACK_TIMEOUT_MS, 10_000),
    },
    kinds: {
      activeTimeoutMs: overrides.activeTimeoutMs ?? num(env.PROVISION_ACTIVE_TIMEOUT_MS, 180_000),
      pollMs,
      actionTimeoutMs: overrides.actionTimeoutMs ?? num(env.PROVISION_ACTION_TIMEOUT_MS, 120_000),
      defaultSize: overrides.defaultSize ?? env.DO_DEFAULT_SIZE ?? "s-1vcpu-1gb",
      defaultImage: overrides.defaultImage ?? env.DO_DEFAULT_IMAGE ?? "ubuntu-24-04-x64",
    },
  };
}

export interface FinishedSinceParams {
  since: string;
  after_finished_at?: string;
  after_id?: string;
  limit?: number;
}
export interface FinishedSaga {
  id: string;
  kind: string;
  deployment_id: string;
  tenant_id: string;
  status: SagaStatus;
  error: string | null;
  finished_at: string;
}
export interface FinishedSinceResult {
  items: FinishedSaga[];
  /** The keyset of the next page; null when this page was the last. */
  next: { after_finished_at: string; after_id: string } | null;
}

interface ListParams {
  status?: SagaStatus;
  kind?: string;
  deployment_id?: string;
  tenant_id?: string;
  limit?: number;
  cursor?: string;
}

const ProvisioningService: ServiceSchema<any> = {
  name: "provisioning",
  version: 1,
  mixins: [DbMixin([Saga, SagaStep, CompensationRequest])],
  // Overrides of the environment's values (see settingsOf); tests set them per broker. `kinds`: extra SagaKinds.
  settings: {},

  actions: {
    /**
     * Starts a saga of a registered kind: idempotent by `id` (the caller's durable request id; a repeat returns the
     * saga as it is) and held until every older saga of the deployment is finished (SPEC §2, §7).
     */
    start: {
      // Scoped: deployments asks on behalf of the caller; a tenant may only start its own tenant's sagas.
      access: "scoped",
      visibility: "public",
      params: {
        id: UUID_PARAM,
        kind: { type: "string", min: 1, max: 64 },
        deployment_id: UUID_PARAM,
        tenant_id: { type: "string", min: 1, max: 200 },
        input: { type: "object", optional: true },
        requested_by: { type: "string", optional: true },
      },
      async handler(this: any, ctx: ActionCtx<StartParams>) {
        const p = ctx.params;
        if (!visibleTo(currentUser(ctx), p.tenant_id)) throw invalid("'tenant_id' must be your own tenant", [{ field: "tenant_id" }]);
        const saga = await this.engine.create({ id: p.id, kind: p.kind, deployment_id: p.deployment_id, tenant_id: p.tenant_id, input: p.input ?? {}, requested_by: p.requested_by }, ctx.requestID);
        return { saga };
      },
    },
    get: {
      access: "scoped",
      params: { id: "string" },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        return { saga: await this.visibleSaga(ctx, ctx.params.id) };
      },
    },
    /** Operators: a compensation_failed saga compensates again, a failed one runs again (202); else 409. */
    retry: {
      access: "operator",
      params: { id: "string" },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        const saga = await this.visibleSaga(ctx, ctx.params.id);
        if (!(await this.engine.retry(saga.id)))
          throw conflict(`Saga ${saga.id} is ${saga.status}; only failed and compensation_failed sagas can be retried`, "SAGA_NOT_RETRYABLE", { status: saga.status });
        ctx.meta.$statusCode = 202;
        return { saga: await this.visibleSaga(ctx, saga.id) };
      },
    },
    /** GET /sagas (operators; REPL `sagas`): newest first, keyset cursor, filters. */
    list: {
      access: "operator",
      params: {
        status: { type: "enum", values: SAGA_STATUSES, optional: true },
        kind: { type: "string", min: 1, max: 64, optional: true },
        deployment_id: { ...UUID_PARAM, optional: true },
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        ...PAGE_PARAMS,
      },
      async handler(this: any, ctx: ActionCtx<ListParams>) {
        const { limit, cursor, ...filters } = ctx.params;
        return this.engine.list({ ...filters, limit: limit ?? 50, cursor: cursor || undefined });
      },
    },
    /** The deployment's newest saga (any kind), or null. */
    forDeployment: {
      access: "scoped",
      visibility: "public",
      params: { deployment_id: "string" },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string }>) {
        const user = currentUser(ctx);
        const found = await this.engine.newestFor(ctx.params.deployment_id);
        return found && visibleTo(user, found.saga.tenant_id) ? sagaDto(found.saga, found.steps) : null;
      },
    },
    /**
     * Internal feed (the webhooks catch-up): finished sagas — those with finished_at, whatever their status — that
     * finished at or after `since`, in (finished_at, id) order after the keyset `after_finished_at`/`after_id`. A
     * complete read, page by page, where GET /sagas newest first would be bounded. A retried saga appears again with
     * its new status and time.
     */
    finishedSince: {
      access: "internal",
      visibility: "public",
      params: {
        since: { type: "date", convert: true },
        after_finished_at: { type: "date", convert: true, optional: true },
        after_id: { ...UUID_PARAM, optional: true },
        limit: { type: "number", integer: true, min: 1, max: 500, convert: true, optional: true },
      },
      async handler(this: any, ctx: ActionCtx<FinishedSinceParams>): Promise<FinishedSinceResult> {
        const p = ctx.params;
        const limit = p.limit ?? 200;
        const after = p.after_finished_at && p.after_id ? [p.after_finished_at, p.after_id] : [p.since, "00000000-0000-0000-0000-000000000000"];
        const rows = await this.orm.em.fork().execute(
          `select id, kind, deployment_id, tenant_id, status, error, ${isoSql("finished_at")} as finished_at from sagas
           where finished_at is not null and finished_at >= ? and (finished_at, id) > (?, ?::uuid)
           order by finished_at, id limit ?`,
          [p.since, ...after, limit],
        );
        const items = rows.map((r: any) => ({ id: r.id, kind: r.kind, deployment_id: r.deployment_id, tenant_id: r.tenant_id, status: r.status, error: r.error ?? null, finished_at: r.finished_at }));
        const last = items[items.length - 1];
        return { items, next: items.length < limit ? null : { after_finished_at: last.finished_at, after_id: last.id } };
      },
    },
    confirmCompensation: {
      access: "internal",
      visibility: "public",
      params: { request_id: "uuid", ok: "boolean", error: { type: "string", optional: true } },
      async handler(this: any, ctx: ActionCtx<{ request_id: string; ok: boolean; error?: string }>) {
        return { accepted: await this.engine.confirm(ctx.params.request_id, ctx.params.ok, ctx.params.error) };
      },
    },
  },

  methods: {
    async visibleSaga(ctx: ActionCtx<unknown>, id: string) {
      const user = currentUser(ctx);
      if (!/^[0-9a-f-]{36}$/i.test(id)) throw notFound("Saga", id);
      const found = await this.engine.get(id);
      if (!found || !visibleTo(user, found.saga.tenant_id)) throw notFound("Saga", id);
      return sagaDto(found.saga, found.steps);
    },
  },

  created() {
    const metricsOn = this.broker.isMetricsEnabled();
    if (metricsOn) {
      this.broker.metrics.register({ type: "counter", name: "arcadia.sagas.finished", labelNames: ["status"], description: "Provisioning sagas by outcome" });
      this.broker.metrics.register({ type: "histogram", name: "arcadia.saga.step.duration", labelNames: ["step", "status"], unit: "second", description: "Saga step durations", buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180] } as any);
    }
    this.metricsSink = {
      sagaFinished: (status: SagaStatus) => metricsOn && this.broker.metrics.increment("arcadia.sagas.finished", { status }),
      stepFinished: (step: string, status: StepStatus, seconds: number) => metricsOn && this.broker.metrics.observe("arcadia.saga.step.duration", seconds, { step, status }),
    };
  },
  async started() {
    const { engine, kinds } = settingsOf(this.settings);
    const extra: SagaKind<KindEnv>[] = this.settings.kinds ?? [];
    this.engine = new SagaEngine<KindEnv>(this.broker, () => this.orm, [...KINDS, ...extra], engine, kinds, this.logger, this.metricsSink);
    this.engine.start();
  },
  async stopped() {
    await this.engine?.stop();
  },
};

export default ProvisioningService;
