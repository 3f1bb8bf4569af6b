import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";
import type { MikroORM, EntityManager } from "@mikro-orm/postgresql";
import { Saga, SagaStep, CompensationRequest, type StepStatus, type SagaStatus } from "../../entities/saga";
import { systemUser } from "../../lib/access";
import { conflict, invalid } from "../../lib/errors";
import { iso } from "../../lib/dto";
import { keysetBeforeWhere, pageOf } from "../../lib/pagination";

type Logger = Pick<Console, "debug" | "info" | "warn" | "error">;

/*
 * A generic saga engine: it knows steps, leases, retries and the compensation outbox, nothing of droplets or DNS.
 * A kind (services/provisioning/kinds/*.ts) is a list of steps; each step holds its forward call and its undo side
 * by side and returns what its undo needs (Medusa's createStep(invoke, compensate) → StepResponse(output,
 * compensateInput)). Design note: README.md beside this file.
 */

/** What a step produced, and the input its undo will be handed (null: nothing to undo). */
export class StepResponse {
  constructor(
    readonly output: Record<string, unknown> = {},
    readonly compensateInput?: Record<string, unknown> | null,
  ) {}
}

/**
 * A step's undo: the owning service (`provisioning.compensate.<owner>` event) and the operation it runs. `before`
 * gives the undo input known before the forward call, persisted with the step's `running` write, so an effect whose
 * answer was lost (a create in doubt) is still undone; a StepResponse's compensate input replaces it on success.
 */
export interface Undo<Env = any> {
  owner: string;
  op: string;
  before?: (ctx: StepContext<Env>) => Record<string, unknown>;
}

export interface StepDef<Env = any> {
  name: string;
  /** The action the step calls forward (documentation and tests; `invoke` makes the call). */
  forward: string;
  invoke(ctx: StepContext<Env>): Promise<StepResponse | Record<string, unknown> | void>;
  compensate?: Undo<Env>;
}

/** Builds a step: its forward side and, beside it, its undo. */
export function step<Env = any>(name: string, forward: string, invoke: StepDef<Env>["invoke"], compensate?: Undo<Env>): StepDef<Env> {
  return { name, forward, invoke, compensate };
}
export const undo = <Env = any>(owner: string, op: string, before?: Undo<Env>["before"]): Undo<Env> => ({ owner, op, before });

export interface SagaKind<Env = any> {
  kind: string;
  /**
   * `compensate`: a failed step rolls back what was done, in reverse (only transient errors are retried first).
   * `forward`: steps are idempotent; a failing step is retried with backoff, then the saga ends `failed`.
   */
  onFailure: "compensate" | "forward";
  steps: StepDef<Env>[];
  /** The saga's input as stored, defaults filled in at start (so every node drives the same saga). */
  prepare?(input: Record<string, any>, env: Env): Record<string, any>;
  /** Best effort when the saga ends other than succeeded (e.g. make the deployment's runtime tell the truth). */
  onEnd?(ctx: KindContext<Env>, status: SagaStatus): Promise<void>;
}

export interface KindContext<Env = any> {
  saga: Saga;
  input: Record<string, any>;
  env: Env;
  call<T = any>(action: string, params: Record<string, unknown>, opts?: { timeout?: number }): Promise<T>;
  logger: Logger;
  sleep(ms: number): Promise<void>;
}

export interface StepContext<Env = any> extends KindContext<Env> {
  /** Outputs of the steps before, by step name. */
  outputs: Record<string, Record<string, any>>;
  step: SagaStep;
  /** Persist part of the output (and, optionally, the undo input) before a side effect, so a resumed run can settle it. */
  recordIntent(output: Record<string, unknown>, compensateInput?: Record<string, unknown>): Promise<void>;
  /** Keep the lease while a step waits (throws once another node holds the saga). */
  heartbeat(): Promise<void>;
}

export interface EngineSettings {
  leaseMs: number;
  sweepMs: number;
  maxConcurrent: number;
  stepMaxAttempts: number;
  backoffMs: number;
  /** How often a compensation's confirmation is looked for. */
  pollMs: number;
  compensationMaxAttempts: number;
  compensationAckTimeoutMs: number;
}

export interface StartParams {
  id: string;
  kind: string;
  deployment_id: string;
  tenant_id: string;
  input: Record<string, any>;
  requested_by?: string;
}

/** A failure that retrying cannot fix. */
export class PermanentStepError extends Error {}
class LeaseLost extends Error {}

export function isTransient(err: any): boolean {
  if (err instanceof PermanentStepError) return false;
  if (err?.retryable === true) return true;
  return ["PROVIDER_UNAVAILABLE", "SERVICE_NOT_AVAILABLE", "SERVICE_NOT_FOUND", "REQUEST_TIMEOUT", "CONCURRENT_UPDATE"].includes(err?.type);
}

export function sagaDto(saga: Saga, steps: SagaStep[]) {
  return {
    id: saga.id,
    kind: saga.kind,
    deployment_id: saga.deployment_id,
    tenant_id: saga.tenant_id,
    status: saga.status,
    steps: [...steps].sort((a, b) => a.idx - b.idx).map((s) => ({
      name: s.name,
      status: s.status,
      attempts: s.attempts,
      started_at: iso(s.started_at),
      finished_at: iso(s.finished_at),
      error: s.error ?? null,
      output: s.output ?? {},
      compensation_attempts: s.compensation_attempts,
      compensation_error: s.compensation_error ?? null,
      compensated_at: iso(s.compensated_at),
    })),
    started_at: iso(saga.started_at),
    finished_at: iso(saga.finished_at),
    error: saga.error ?? null,
  };
}
export type SagaDto = ReturnType<typeof sagaDto>;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** The rows saga_create wrote, as the creator knows them (what a read back would return). */
export function createdState(
  p: StartParams, input: Record<string, any>, row: { r_seq: unknown; r_started_at: unknown }, stepIds: string[], steps: { name: string }[],
  owner: string | null, leaseMs: number,
): { saga: Saga; steps: SagaStep[] } {
  const started = new Date(row.r_started_at as any);
  const saga = {
    id: p.id, kind: p.kind, seq: row.r_seq == null ? null : Number(row.r_seq), deployment_id: p.deployment_id, tenant_id: p.tenant_id, input,
    status: "running", owner_node: owner, lease_until: owner ? new Date(Date.now() + leaseMs) : null, started_at: started, finished_at: null,
    error: null, updated_at: started,
  } as Saga;
  const rows = steps.map((s, idx) => ({
    id: stepIds[idx], saga_id: p.id, idx, name: s.name, status: "pending", attempts: 0, started_at: null, finished_at: null, error: null,
    output: {}, compensate_input: null, compensation_attempts: 0, compensation_error: null, compensated_at: null,
  }) as SagaStep);
  return { saga, steps: rows };
}

/** A step's succeeded write not yet sent: it goes with the next write of the saga (the next step's start, or the end). */
interface Done {
  step: SagaStep;
  patch: Partial<SagaStep>;
  seconds: number;
}
export const backoff = (base: number, attempt: number) => Math.min(base * 2 ** Math.max(0, attempt - 1), 30_000);

const OPEN = `('running','compensating')`;
/** True for saga `s` while an older saga of its deployment is still open: it waits its turn. */
const HELD = `exists (select 1 from sagas o where o.deployment_id = s.deployment_id and o.seq < s.seq and o.status in ${OPEN})`;
/**
 * Creating a saga, ending one (saga_create, saga_finish) and an operator retry take this per-deployment lock, so
 * the queue order and the hand-over never race. Keyed by the uuid's canonical text, as the two functions key it.
 */
const LOCK_DEPLOYMENT = `select pg_advisory_xact_lock(7207, hashtext(?::uuid::text))`;

/**
 * Drives sagas: one node at a time per saga (a lease in the sagas row), one saga at a time per deployment (in
 * creation order), every step written as it starts and ends, compensation requests through the outbox table.
 */
export class SagaEngine<Env = any> {
  private readonly driving = new Set<string>();
  private readonly lost = new Set<string>();
  private readonly leaseTimers = new Set<NodeJS.Timeout>();
  private readonly kinds: Map<string, { def: SagaKind<Env>; steps: Map<string, StepDef<Env>> }>;
  private sweepTimer?: NodeJS.Timeout;
  private stopped = false;
  private halted = false;
  private readonly user = systemUser("provisioning");

  constructor(
    private readonly broker: ServiceBroker,
    private readonly orm: () => MikroORM,
    kinds: SagaKind<Env>[],
    readonly settings: EngineSettings,
    readonly env: Env,
    private readonly logger: Logger,
    private readonly metrics: { sagaFinished(status: SagaStatus): void; stepFinished(step: string, status: StepStatus, seconds: number): void },
  ) {
    this.kinds = new Map(kinds.map((k) => [k.kind, { def: k, steps: new Map(k.steps.map((s) => [s.name, s])) }]));
  }

  get kindNames(): string[] {
    return [...this.kinds.keys()];
  }

  private get node() {
    return this.broker.nodeID;
  }
  private em(): EntityManager {
    return this.orm().em.fork() as EntityManager;
  }

  start() {
    const tick = () => {
      if (this.stopped) return;
      this.sweep()
        .catch((err) => this.logger.warn({ err: err.message }, "saga sweep failed"))
        .finally(() => {
          if (!this.stopped) this.sweepTimer = setTimeout(tick, this.settings.sweepMs);
        });
    };
    tick();
  }

  async stop() {
    this.stopped = true;
    clearTimeout(this.sweepTimer);
    const deadline = Date.now() + 5000;
    while (this.driving.size && Date.now() < deadline) await sleep(20);
    // What is still driving after the grace period (a call that never returns) may write nothing more.
    this.halted = true;
    for (const t of this.leaseTimers) clearInterval(t);
    this.leaseTimers.clear();
  }

  /**
   * Creates a saga, idempotent by its id (a repeat returns the saga as it is now), and drives it here unless an
   * older saga of the same deployment is still open: then it is held (owned by nobody) until its turn comes.
   */
  async create(p: StartParams, requestId?: string): Promise<SagaDto> {
    const kind = this.kinds.get(p.kind);
    if (!kind) throw invalid(`Unknown saga kind '${p.kind}'`, [{ field: "kind", type: "enum" }]);
    const input = { ...(kind.def.prepare ? kind.def.prepare(p.input ?? {}, this.env) : p.input ?? {}), ...(p.requested_by ? { requested_by: p.requested_by } : {}) };
    // One round trip and one commit: the deployment's lock, the saga, its steps and the claim, in saga_create
    // (migrations/Migration20261202011000_saga_functions.ts; a function so the claim reads after the lock).
    const stepIds = kind.def.steps.map(() => randomUUID());
    const [row] = await this.em().execute<{ r_created: boolean; r_claimed: boolean; r_seq: string | null; r_started_at: Date | string }[]>(
      `select r_created, r_claimed, r_seq, r_started_at from saga_create(?::uuid, ?, ?::uuid, ?, ?::jsonb,
         array(select e from jsonb_array_elements_text(?::jsonb) with ordinality t(e, n) order by n)::uuid[],
         array(select e from jsonb_array_elements_text(?::jsonb) with ordinality t(e, n) order by n), ?, ?)`,
      // The arrays as JSON text: the driver would spread a JS array into separate parameters.
      [p.id, p.kind, p.deployment_id, p.tenant_id, JSON.stringify(input), JSON.stringify(stepIds), JSON.stringify(kind.def.steps.map((s) => s.name)), this.node, this.settings.leaseMs],
    );
    if (!row.r_created) {
      const found = (await this.get(p.id))!;
      if (found.saga.deployment_id !== p.deployment_id || found.saga.kind !== p.kind)
        throw conflict(`Saga ${p.id} exists for another deployment or kind`, "SAGA_ID_CONFLICT", { id: p.id });
      return sagaDto(found.saga, found.steps);
    }
    // The creator knows the rows it wrote: no read back, and the driver starts from them.
    const state = createdState(p, input, row, stepIds, kind.def.steps, row.r_claimed ? this.node : null, this.settings.leaseMs);
    // Ties the request that asked for it to the saga, whose own lines use the saga id as request id.
    this.logger.info({ request_id: requestId, saga_id: p.id, kind: p.kind, deployment_id: p.deployment_id, held: !row.r_claimed }, "saga created");
    this.emit("provisioning.saga.started", state.saga);
    const dto = sagaDto(state.saga, state.steps);
    if (row.r_claimed) setImmediate(() => void this.drive(p.id, state));
    return dto;
  }

  async get(id: string): Promise<{ saga: Saga; steps: SagaStep[] } | null> {
    return this.findWithSteps({ id });
  }

  /** Newest first, keyset over (started_at, id); filters by status, kind, deployment and tenant. */
  async list(f: { status?: SagaStatus; kind?: string; deployment_id?: string; tenant_id?: string; limit: number; cursor?: string }): Promise<{ items: SagaDto[]; next_cursor: string | null }> {
    const em = this.em();
    const where: Record<string, unknown> = {};
    for (const k of ["status", "kind", "deployment_id", "tenant_id"] as const) if (f[k]) where[k] = f[k];
    Object.assign(where, keysetBeforeWhere(f.cursor, "started_at"));
    const sagas = await em.find(Saga, where as any, { orderBy: [{ started_at: "desc" }, { id: "desc" }] as any, limit: f.limit + 1 });
    const page = pageOf(sagas, f.limit, (s) => ({ time: s.started_at, id: s.id }));
    const steps = page.items.length ? await em.find(SagaStep, { saga_id: { $in: page.items.map((s) => s.id) } }) : [];
    return { items: page.items.map((s) => sagaDto(s, steps.filter((st) => st.saga_id === s.id))), next_cursor: page.next_cursor };
  }

  async newestFor(deploymentId: string) {
    return this.findWithSteps({ deployment_id: deploymentId });
  }

  /** One saga (the newest matching) and its steps in order: two queries, on the GET /deployments/:id path too. */
  private async findWithSteps(where: { id: string } | { deployment_id: string }): Promise<{ saga: Saga; steps: SagaStep[] } | null> {
    const em = this.em();
    const saga = await em.findOne(Saga, where, { orderBy: { seq: "desc" } });
    if (!saga) return null;
    return { saga, steps: await em.find(SagaStep, { saga_id: saga.id }, { orderBy: { idx: "asc" } }) };
  }

  /** Claims open sagas nobody holds (lease expired, or held sagas whose turn has come) and drives them here. */
  async sweep(): Promise<number> {
    const room = this.settings.maxConcurrent - this.driving.size;
    if (room <= 0) return 0;
    const rows = await this.em().execute<{ id: string }[]>(
      `update sagas set owner_node = ?, lease_until = now() + (? || ' milliseconds')::interval
       where id in (select s.id from sagas s where s.status in ${OPEN} and (s.lease_until is null or s.lease_until < now()) and not ${HELD}
                    order by s.seq limit ? for update skip locked)
       returning id`,
      [this.node, String(this.settings.leaseMs), room],
    );
    for (const { id } of rows) {
      this.logger.info({ saga_id: id }, "driving saga");
      void this.drive(id);
    }
    return rows.length;
  }

  /** Extends this node's lease; false when another node holds the saga. */
  private async renew(id: string): Promise<void> {
    const rows = await this.em().execute(
      `update sagas set lease_until = now() + (? || ' milliseconds')::interval where id = ? and owner_node = ? returning id`,
      [String(this.settings.leaseMs), id, this.node],
    );
    if (!rows.length) throw new LeaseLost(id);
  }

  /**
   * Operator retry: a `compensation_failed` saga compensates again from the step that failed, a `failed` one runs
   * again from its failed step. It goes to the back of its deployment's queue (a newer open saga runs first).
   */
  async retry(id: string): Promise<boolean> {
    const em = this.em();
    const claimed = await em.transactional(async (tx) => {
      const [row] = await tx.execute(`select deployment_id, status from sagas where id = ?`, [id]);
      if (!row || !["compensation_failed", "failed"].includes(row.status)) return null;
      await tx.execute(LOCK_DEPLOYMENT, [row.deployment_id]);
      const to = row.status === "failed" ? "running" : "compensating";
      const rows = await tx.execute(
        `update sagas set status = ?, finished_at = null, owner_node = null, lease_until = null, seq = nextval('sagas_seq'), updated_at = now(), error = case when ? then null else error end
         where id = ? and status = ? returning id`,
        [to, to === "running", id, row.status],
      );
      if (!rows.length) return null;
      if (to === "running") {
        await tx.execute(`update saga_steps set status = 'pending', error = null, finished_at = null where saga_id = ? and status in ('failed','running')`, [id]);
      } else {
        await tx.execute(`update saga_steps set status = 'compensating' where saga_id = ? and status = 'compensation_failed'`, [id]);
        await tx.execute(`update saga_compensations set status = 'pending', attempts = 0, next_attempt_at = now() where saga_id = ? and status in ('failed','sent','pending')`, [id]);
      }
      const mine = await tx.execute(`update sagas s set owner_node = ?, lease_until = now() + (? || ' milliseconds')::interval where s.id = ? and not ${HELD} returning s.id`, [
        this.node, String(this.settings.leaseMs), id,
      ]);
      return { to, mine: mine.length > 0 };
    });
    if (!claimed) return false;
    const s = await this.get(id);
    if (s) this.emit(`provisioning.saga.${claimed.to === "running" ? "started" : "compensating"}`, s.saga);
    if (claimed.mine) setImmediate(() => void this.drive(id));
    return true;
  }

  /** An owning service's answer to a compensation request. Late or repeated answers change nothing. */
  async confirm(requestId: string, ok: boolean, error?: string): Promise<boolean> {
    const em = this.em();
    const req = await em.findOne(CompensationRequest, { id: requestId });
    if (!req || req.status !== "sent") return false;
    if (ok) {
      req.status = "confirmed";
      req.confirmed_at = new Date();
    } else {
      req.status = "failed";
      req.last_error = error ?? "compensation failed";
    }
    await em.flush();
    return true;
  }

  private kindContext(saga: Saga): KindContext<Env> {
    return {
      saga,
      input: saga.input ?? {},
      env: this.env,
      call: (action, params, opts) => this.broker.call(action, params, { meta: { user: this.user, saga_id: saga.id }, requestID: saga.id, ...(opts?.timeout ? { timeout: opts.timeout } : {}) }),
      logger: this.logger,
      sleep,
    };
  }

  private async drive(id: string, known?: { saga: Saga; steps: SagaStep[] }) {
    if (this.driving.has(id) || this.stopped) return;
    this.driving.add(id);
    const stopKeeping = this.keepLease(id);
    // The last step's succeeded write, held back to go with the saga's next write (see runStep).
    let done: Done | undefined;
    try {
      // Read once (the creator hands its rows over instead); forward steps keep the rows in memory up to date
      // (every write goes through writeSteps), so only the rarer moves into and through compensation read them again.
      let state = known ?? (await this.get(id));
      const kind = state && this.kinds.get(state.saga.kind);
      if (state && !kind) {
        this.logger.error({ saga_id: id, kind: state.saga.kind }, "this node does not know the saga's kind");
        return;
      }
      for (;;) {
        if (this.stopped || !state || !kind) {
          if (done && state) await this.settle(state.saga, done);
          return;
        }
        this.checkLease(id);
        const { saga, steps } = state;
        if (saga.status === "running") {
          const next = steps.find((s) => s.status !== "succeeded" && s.status !== "skipped" && s !== done?.step);
          if (!next) {
            await this.finish(saga, "succeeded", undefined, done);
            return;
          }
          if (next.status === "failed" && done) await this.settle(saga, done);
          const ran = next.status === "failed" ? false : await this.runStep(kind.def, saga, steps, next, done);
          done = ran || undefined;
          if (!ran) {
            if (kind.def.onFailure === "forward") {
              await this.end(kind.def, saga, "failed", `${next.name}: ${next.error}`);
              return;
            }
            await this.beginCompensation(saga.id);
            state = await this.get(id);
          }
        } else if (saga.status === "compensating") {
          if ((await this.compensateNext(kind, saga, steps)) === "finished") return;
          state = await this.get(id);
        } else {
          return;
        }
      }
    } catch (err) {
      if (err instanceof LeaseLost) this.logger.warn({ saga_id: id }, "lease lost; another node drives this saga");
      else this.logger.error({ saga_id: id, err }, "saga driver failed; the sweep will resume it");
    } finally {
      stopKeeping();
      this.driving.delete(id);
    }
  }

  /**
   * Renews the lease in the background while this node drives the saga. A step's forward call (a slow provider
   * create, a backoff sleep) can outlast the lease; without this, another node's sweep claims the saga and runs the
   * same step again while the first call is still in flight (a second droplet for one saga).
   */
  private keepLease(id: string): () => void {
    let busy = false;
    const timer = setInterval(() => {
      // A stopped engine holds nothing: the sweep of another node takes its sagas over once their lease lapses.
      if (busy || this.halted) return;
      busy = true;
      this.renew(id)
        .catch((err) => {
          if (err instanceof LeaseLost) this.lost.add(id);
        })
        .finally(() => (busy = false));
    }, Math.max(10, Math.floor(this.settings.leaseMs / 3)));
    this.leaseTimers.add(timer);
    return () => {
      clearInterval(timer);
      this.leaseTimers.delete(timer);
      this.lost.delete(id);
    };
  }

  /** Cheap check between waits: the background renewal found another owner. Writes are guarded anyway. */
  private checkLease(id: string) {
    if (this.lost.has(id)) throw new LeaseLost(id);
  }

  /**
   * Runs one step; on success returns its succeeded write unsent (the caller sends it with the saga's next write:
   * the next step's `running` write or the saga's end), on failure false. `done`, the step before's succeeded
   * write, goes out with this step's `running` write, as one statement.
   *
   * The `running` write is sent when the step first needs it: before its first forward call (`ctx.call`), at its
   * first recordIntent (which it then carries), or when it ends without calling anything. Every forward call
   * waits for it, so it is durable (and the lease checked) before any side effect, as crash recovery requires.
   */
  private async runStep(kind: SagaKind<Env>, saga: Saga, all: SagaStep[], step: SagaStep, done?: Done): Promise<Done | false> {
    const def = this.kinds.get(kind.kind)!.steps.get(step.name)!;
    const outputs = Object.fromEntries(all.map((s) => [s.name, s.output ?? {}]));
    if (done) outputs[done.step.name] = (done.patch.output ?? done.step.output ?? {}) as Record<string, any>;
    // Forward-only kinds retry every failure (their steps are idempotent); compensating kinds only transient ones.
    const retryAll = kind.onFailure === "forward";
    let pending = done;
    for (let tries = 1; ; tries++) {
      const t0 = Date.now();
      const base = this.kindContext(saga);
      let running: Promise<void> | undefined;
      let intent: { output?: Record<string, unknown>; compensateInput?: Record<string, unknown> } = {};
      const begin = () =>
        (running ??= (async () => {
          // Only when there is one (an empty `before` still makes the undo input non-null: the step is undoable).
          const ci = before || intent.compensateInput ? { ...(before ?? {}), ...(intent.compensateInput ?? {}) } : null;
          const patch: Partial<SagaStep> = {
            status: "running", attempts: step.attempts + 1, started_at: step.started_at ?? new Date(), error: null,
            ...(intent.output ? { output: { ...step.output, ...intent.output } } : {}),
            ...(ci ? { compensate_input: { ...(step.compensate_input ?? {}), ...ci } } : {}),
          };
          const prev = pending;
          await this.writeSteps([...(prev ? [prev] : []), { step, patch }]);
          pending = undefined;
          if (prev) this.stepSucceeded(saga, prev);
          this.emitStep("provisioning.step.started", saga, step);
        })());
      const ctx: StepContext<Env> = {
        ...base,
        call: async (action, params, opts) => {
          await begin();
          return base.call(action, params, opts);
        },
        outputs, step,
        recordIntent: async (output, compensateInput) => {
          if (!running) {
            // Not started yet: the intent rides on the `running` write (durable when this returns, as before).
            intent = { output: { ...(intent.output ?? {}), ...output }, compensateInput: compensateInput ? { ...(intent.compensateInput ?? {}), ...compensateInput } : intent.compensateInput };
            return begin();
          }
          await running;
          await this.updateStep(step, { output: { ...step.output, ...output }, ...(compensateInput ? { compensate_input: { ...(step.compensate_input ?? {}), ...compensateInput } } : {}) });
        },
        heartbeat: async () => this.checkLease(saga.id),
      };
      const before = def.compensate?.before?.(ctx);
      try {
        const res = await def.invoke(ctx);
        await begin();
        const response = res instanceof StepResponse ? res : new StepResponse((res ?? {}) as Record<string, unknown>);
        const output = { ...step.output, ...response.output };
        // As Medusa's StepResponse: without an explicit compensate input, the undo gets the output.
        const compensateInput = !def.compensate ? null : response.compensateInput === undefined ? { ...(step.compensate_input ?? {}), ...response.output } : response.compensateInput;
        return { step, patch: { status: "succeeded", finished_at: new Date(), output, compensate_input: compensateInput }, seconds: (Date.now() - t0) / 1000 };
      } catch (err: any) {
        if (err instanceof LeaseLost) throw err;
        // The step failed before or while starting: its `running` write first (a failure of that write itself,
        // the same rejection, ends the driver here as it always did).
        await begin();
        const message = err?.message ?? String(err);
        if ((retryAll || isTransient(err)) && tries < this.settings.stepMaxAttempts) {
          this.logger.warn({ request_id: saga.id, saga_id: saga.id, deployment_id: saga.deployment_id, step: step.name, attempt: tries, err: message }, "step failed; retrying");
          await this.updateStep(step, { error: message });
          await sleep(backoff(this.settings.backoffMs, tries));
          this.checkLease(saga.id);
          continue;
        }
        await this.updateStep(step, { status: "failed", finished_at: new Date(), error: message });
        this.emitStep("provisioning.step.failed", saga, step);
        this.metrics.stepFinished(step.name, "failed", (Date.now() - t0) / 1000);
        return false;
      }
    }
  }

  /** A held-back succeeded write sent on its own (the driver stops, or the next step is not run). */
  private async settle(saga: Saga, done: Done) {
    await this.writeSteps([done]);
    this.stepSucceeded(saga, done);
  }

  /** After a succeeded write landed. */
  private stepSucceeded(saga: Saga, done: Done) {
    this.emitStep("provisioning.step.succeeded", saga, done.step);
    this.metrics.stepFinished(done.step.name, "succeeded", done.seconds);
  }

  private async beginCompensation(sagaId: string) {
    const em = this.em();
    await em.transactional(async (tx) => {
      const saga = await tx.findOneOrFail(Saga, { id: sagaId });
      const failed = await tx.findOne(SagaStep, { saga_id: sagaId, status: "failed" }, { orderBy: { idx: "asc" } });
      saga.status = "compensating";
      saga.error = failed ? `${failed.name}: ${failed.error}` : saga.error;
      saga.updated_at = new Date();
      const pending = await tx.find(SagaStep, { saga_id: sagaId, status: "pending" });
      for (const s of pending) s.status = "skipped";
    });
    const s = await this.get(sagaId);
    if (s) this.emit("provisioning.saga.compensating", s.saga);
  }

  /** Undoes the latest step that still needs it; "finished" when the saga reached a final state. */
  private async compensateNext(kind: { def: SagaKind<Env>; steps: Map<string, StepDef<Env>> }, saga: Saga, steps: SagaStep[]): Promise<"continue" | "finished"> {
    const undoable = (s: SagaStep) => !!kind.steps.get(s.name)?.compensate && s.compensate_input != null;
    const target = [...steps]
      .sort((a, b) => b.idx - a.idx)
      .find((s) => s.status === "succeeded" || s.status === "compensating" || s.status === "running" || (s.status === "failed" && !s.compensated_at && undoable(s)));
    if (!target) {
      await this.end(kind.def, saga, "compensated");
      return "finished";
    }
    const def = kind.steps.get(target.name)!;
    if (!undoable(target) && target.status !== "compensating") {
      // Nothing of its own to undo (e.g. a wait: what it waited on goes with the step that made it).
      await this.updateStep(target, target.status === "running" ? { status: "failed", finished_at: new Date(), compensated_at: new Date() } : { status: "compensated", compensated_at: new Date() });
      this.emitStep("provisioning.step.compensated", saga, target);
      return "continue";
    }

    const em = this.em();
    let req = await em.findOne(CompensationRequest, { saga_id: saga.id, step_name: target.name, status: { $ne: "confirmed" } });
    if (!req) {
      // The request and the step's move to `compensating` commit together: the request cannot be lost.
      await em.transactional(async (tx) => {
        req = tx.create(CompensationRequest, {
          id: randomUUID(), saga_id: saga.id, step_name: target.name, owner: def.compensate!.owner, status: "pending", attempts: 0,
          payload: { ...(target.compensate_input ?? {}), saga_id: saga.id, kind: saga.kind, step: target.name, op: def.compensate!.op, deployment_id: saga.deployment_id, tenant_id: saga.tenant_id },
          next_attempt_at: new Date(), last_error: null, created_at: new Date(), confirmed_at: null,
        });
        const s = await tx.findOneOrFail(SagaStep, { id: target.id });
        if (s.status === "succeeded" || s.status === "running") s.status = s.status === "running" ? "failed" : "compensating";
      });
      Object.assign(target, (await this.get(saga.id))!.steps.find((s) => s.id === target.id));
      this.emitStep("provisioning.step.compensating", saga, target);
    }
    return this.deliver(kind.def, saga, target, req!.id);
  }

  /** Sends one compensation request and waits for its confirmation, the ack timeout, or the next retry. */
  private async deliver(kind: SagaKind<Env>, saga: Saga, step: SagaStep, requestId: string): Promise<"continue" | "finished"> {
    const em = this.em();
    const req = await em.findOneOrFail(CompensationRequest, { id: requestId });
    if (req.status === "pending") {
      const wait = req.next_attempt_at.getTime() - Date.now();
      if (wait > 0) {
        await sleep(Math.min(wait, this.settings.leaseMs / 3));
        return "continue";
      }
      req.status = "sent";
      req.attempts += 1;
      req.next_attempt_at = new Date(Date.now() + this.settings.compensationAckTimeoutMs);
      await em.flush();
      await this.updateStep(step, { compensation_attempts: step.compensation_attempts + 1 });
      const payload = { ...req.payload, request_id: req.id, attempt: req.attempts };
      this.broker.emit(`provisioning.compensate.${req.owner}`, payload);
    }
    // Wait for the owner's confirmation (it may land on another provisioning node: poll the row).
    const deadline = req.next_attempt_at.getTime();
    let current = req;
    while (current.status === "sent" && Date.now() < deadline) {
      await sleep(Math.min(this.settings.pollMs, 100));
      this.checkLease(saga.id);
      current = await this.em().findOneOrFail(CompensationRequest, { id: requestId });
    }
    if (current.status === "confirmed") {
      const wasFailed = step.status === "failed";
      await this.updateStep(step, { status: wasFailed ? "failed" : "compensated", compensated_at: new Date(), compensation_error: null, ...(wasFailed ? {} : { finished_at: step.finished_at }) });
      this.emitStep("provisioning.step.compensated", saga, step);
      this.metrics.stepFinished(`${step.name}:compensation`, "compensated", 0);
      return "continue";
    }
    // Failed, or no answer in time (the owner may be down): retry with backoff up to the bound.
    const error = current.status === "failed" ? (current.last_error ?? "compensation failed") : `no confirmation from ${current.owner} within ${this.settings.compensationAckTimeoutMs} ms`;
    const e2 = this.em();
    const fresh = await e2.findOneOrFail(CompensationRequest, { id: requestId });
    if (fresh.status === "confirmed") return "continue";
    if (fresh.attempts >= this.settings.compensationMaxAttempts) {
      fresh.status = "failed";
      fresh.last_error = error;
      await e2.flush();
      await this.updateStep(step, { status: "compensation_failed", compensation_error: error });
      this.emitStep("provisioning.step.compensation_failed", saga, step);
      await this.end(kind, saga, "compensation_failed", `${step.name} compensation: ${error}`);
      return "finished";
    }
    fresh.status = "pending";
    fresh.last_error = error;
    fresh.next_attempt_at = new Date(Date.now() + backoff(this.settings.backoffMs, fresh.attempts));
    await e2.flush();
    await this.updateStep(step, { compensation_error: error });
    return "continue";
  }

  /** The kind's last word (best effort), then the end. */
  private async end(kind: SagaKind<Env>, saga: Saga, status: SagaStatus, error?: string) {
    if (kind.onEnd) {
      this.checkLease(saga.id);
      await kind.onEnd(this.kindContext(saga), status).catch((err) => this.logger.warn({ saga_id: saga.id, err: err?.message }, "saga end hook failed"));
    }
    await this.finish(saga, status, error);
  }

  /**
   * Ends the saga and gives up the lease, and, under the deployment's lock, hands the next held saga of the
   * deployment to this node: one call of saga_finish (one transaction, one commit), whose end of the saga only the
   * lease holder's call can match. `done` (the last step's succeeded write) commits with it.
   */
  private async finish(saga: Saga, status: SagaStatus, error?: string, done?: Done) {
    const now = new Date();
    const json = (v: unknown) => (v == null ? null : JSON.stringify(v));
    const [row] = await this.em().execute<{ r_ok: boolean; r_error: string | null; r_next: string | null }[]>(
      `select r_ok, r_error, r_next from saga_finish(?::uuid, ?::uuid, ?, ?, ?, ?::timestamptz, ?, ?::uuid, ?::timestamptz, ?::jsonb, ?::jsonb)`,
      [
        saga.id, saga.deployment_id, this.node, status, error ?? null, now, this.settings.leaseMs,
        done?.step.id ?? null, done?.patch.finished_at ?? null, json(done?.patch.output ?? {}), json(done?.patch.compensate_input),
      ],
    );
    if (!row?.r_ok) throw new LeaseLost(saga.id);
    if (done) {
      Object.assign(done.step, done.patch);
      this.stepSucceeded(saga, done);
    }
    Object.assign(saga, { status, finished_at: now, updated_at: now, error: row.r_error });
    this.emit(`provisioning.saga.${status}`, saga);
    this.metrics.sagaFinished(status);
    if (row.r_next) setImmediate(() => void this.drive(row.r_next as string));
  }

  /** One statement for a step write, and only while this node holds the saga's lease (see writeSteps). */
  private async updateStep(step: SagaStep, patch: Partial<SagaStep>) {
    await this.writeSteps([{ step, patch }]);
  }

  /**
   * Step writes of one saga in one statement (a step's succeeded write with the next step's `running` write), and
   * only while this node holds the saga's lease: every update is guarded by the same lease row, so all land or
   * none. A node that lost the lease (and may not know yet) cannot record anything, nor start a step's forward
   * call, which waits for the `running` write.
   */
  private async writeSteps(writes: { step: SagaStep; patch: Partial<SagaStep> }[]) {
    // A stopped engine records nothing more: it no longer renews its leases, so another node may own the saga now.
    if (this.halted) throw new LeaseLost(writes[0].step.saga_id);
    const sagaId = writes[0].step.saga_id;
    const json = (c: string) => c === "output" || c === "compensate_input";
    const params: unknown[] = [sagaId, this.node];
    const updates = writes.map(({ step, patch }, i) => {
      const cols = Object.keys(patch) as (keyof SagaStep & string)[];
      const sets = cols.map((c) => (json(c) ? `${c} = ?::jsonb` : `${c} = ?`)).join(", ");
      params.push(...cols.map((c) => (json(c) ? (patch[c] == null ? null : JSON.stringify(patch[c])) : patch[c])), step.id, sagaId);
      return `w${i} as (update saga_steps set ${sets} where id = ? and saga_id = ? and exists (select 1 from lease) returning 1)`;
    });
    const count = writes.map((_, i) => `(select count(*) from w${i})`).join(" + ");
    const [row] = await this.em().execute(
      `with lease as (select 1 from sagas where id = ? and owner_node = ?), ${updates.join(", ")} select (${count})::int as n`,
      params,
    );
    if (Number(row?.n) !== writes.length) throw new LeaseLost(sagaId);
    for (const { step, patch } of writes) Object.assign(step, patch);
  }

  private emit(event: string, saga: Saga) {
    this.logger.info({ request_id: saga.id, saga_id: saga.id, kind: saga.kind, deployment_id: saga.deployment_id, status: saga.status, error: saga.error ?? undefined }, event);
    this.broker.broadcast(event, { saga_id: saga.id, kind: saga.kind, deployment_id: saga.deployment_id, tenant_id: saga.tenant_id, status: saga.status, error: saga.error ?? null });
  }
  /** Step events log at debug: several per step on the hot path, and the broadcast carries them for whoever follows. */
  private emitStep(event: string, saga: Saga, step: SagaStep) {
    this.logger.debug({ request_id: saga.id, saga_id: saga.id, kind: saga.kind, deployment_id: saga.deployment_id, step: step.name, status: step.status, attempts: step.attempts, error: step.error ?? undefined }, event);
    this.broker.broadcast(event, { saga_id: saga.id, kind: saga.kind, deployment_id: saga.deployment_id, tenant_id: saga.tenant_id, step: step.name, status: step.status, attempts: step.attempts, error: step.error ?? null, output: step.output ?? {} });
  }
}
