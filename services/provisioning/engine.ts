import { randomUUID } from "node:crypto";
import type { ServiceBroker } from "moleculer";

type Logger = Pick<Console, "info" | "warn" | "error">;
import type { MikroORM, EntityManager } from "@mikro-orm/postgresql";
import { Saga, SagaStep, CompensationRequest, type StepStatus, type SagaStatus } from "../../entities/saga";
import { systemUser } from "../../lib/access";
import { iso } from "../../lib/dto";

/** A forward step: what it calls, and how it is undone (which owning service handles the compensation event). */
export interface StepDef {
  name: string;
  forward: string;
  compensation?: { owner: "deployments" | "inventory" | "dns"; op: string };
  run(ctx: StepContext): Promise<Record<string, unknown>>;
}

export interface StepContext {
  saga: Saga;
  /** Outputs of the steps before, by step name. */
  outputs: Record<string, Record<string, any>>;
  step: SagaStep;
  settings: EngineSettings;
  call<T = any>(action: string, params: Record<string, unknown>): Promise<T>;
  /** Persist part of the output before a side effect (the intent), so a resumed run can settle it. */
  recordIntent(output: Record<string, unknown>): Promise<void>;
  /** Keep the lease while a step waits. */
  heartbeat(): Promise<void>;
  sleep(ms: number): Promise<void>;
}

export interface EngineSettings {
  leaseMs: number;
  sweepMs: number;
  maxConcurrent: number;
  stepMaxAttempts: number;
  backoffMs: number;
  activeTimeoutMs: number;
  pollMs: number;
  compensationMaxAttempts: number;
  compensationAckTimeoutMs: number;
  dropletSize: string;
  dropletImage: string;
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
const backoff = (base: number, attempt: number) => Math.min(base * 2 ** Math.max(0, attempt - 1), 30_000);

/**
 * Drives provisioning sagas: one node at a time per saga (a lease in the sagas row), every step written as it
 * starts and ends, compensation requests through the outbox table. See README.md beside this file.
 */
export class SagaEngine {
  private readonly driving = new Set<string>();
  private readonly lost = new Set<string>();
  private readonly byName: Map<string, StepDef>;
  private sweepTimer?: NodeJS.Timeout;
  private stopped = false;
  private readonly user = systemUser("provisioning");

  constructor(
    private readonly broker: ServiceBroker,
    private readonly orm: () => MikroORM,
    private readonly steps: StepDef[],
    readonly settings: EngineSettings,
    private readonly logger: Logger,
    private readonly metrics: { sagaFinished(status: SagaStatus): void; stepFinished(step: string, status: StepStatus, seconds: number): void },
  ) {
    this.byName = new Map(steps.map((s) => [s.name, s]));
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
  }

  /** Creates the saga owned by this node and starts driving it. */
  async create(input: { deployment_id: string; tenant_id: string; slug: string; region: string; requested_by?: string; size?: string; image?: string; [k: string]: unknown }, requestId?: string): Promise<SagaDto> {
    const now = new Date();
    const em = this.em();
    const id = randomUUID();
    const saga = em.create(Saga, {
      id, deployment_id: input.deployment_id, tenant_id: input.tenant_id, status: "running",
      // The provision input names size and image (from the plan and template); the defaults stand in without them.
      input: { ...input, size: input.size ?? this.settings.dropletSize, image: input.image ?? this.settings.dropletImage },
      owner_node: this.node, lease_until: new Date(now.getTime() + this.settings.leaseMs), started_at: now, finished_at: null, error: null, updated_at: now,
    });
    const steps = this.steps.map((s, idx) =>
      em.create(SagaStep, { id: randomUUID(), saga_id: id, idx, name: s.name, status: "pending", attempts: 0, output: {}, compensation_attempts: 0, started_at: null, finished_at: null, error: null, compensation_error: null, compensated_at: null }),
    );
    await em.flush();
    // Ties the HTTP request that asked for it to the saga, whose own lines use the saga id as request id.
    this.logger.info({ request_id: requestId, saga_id: id, deployment_id: input.deployment_id }, "provisioning saga created");
    this.emit("provisioning.saga.started", saga);
    setImmediate(() => void this.drive(id));
    return sagaDto(saga, steps);
  }

  async get(id: string): Promise<{ saga: Saga; steps: SagaStep[] } | null> {
    return this.findWithSteps({ id });
  }

  async list(status: SagaStatus | undefined, limit: number): Promise<SagaDto[]> {
    const em = this.em();
    const sagas = await em.find(Saga, status ? { status } : {}, { orderBy: { started_at: "desc" }, limit });
    const steps = sagas.length ? await em.find(SagaStep, { saga_id: { $in: sagas.map((s) => s.id) } }) : [];
    return sagas.map((s) => sagaDto(s, steps.filter((st) => st.saga_id === s.id)));
  }

  async newestFor(deploymentId: string) {
    return this.findWithSteps({ deployment_id: deploymentId });
  }

  /** One saga (the newest matching) and its steps in order: two queries, on the GET /deployments/:id path too. */
  private async findWithSteps(where: { id: string } | { deployment_id: string }): Promise<{ saga: Saga; steps: SagaStep[] } | null> {
    const em = this.em();
    const saga = await em.findOne(Saga, where, { orderBy: { started_at: "desc" } });
    if (!saga) return null;
    return { saga, steps: await em.find(SagaStep, { saga_id: saga.id }, { orderBy: { idx: "asc" } }) };
  }

  /** Claims sagas whose owner has gone (lease expired) and drives them here. */
  async sweep(): Promise<number> {
    const room = this.settings.maxConcurrent - this.driving.size;
    if (room <= 0) return 0;
    const rows = await this.em().execute<{ id: string }[]>(
      `update sagas set owner_node = ?, lease_until = now() + (? || ' milliseconds')::interval
       where id in (select id from sagas where status in ('running','compensating') and (lease_until is null or lease_until < now())
                    order by started_at limit ? for update skip locked)
       returning id`,
      [this.node, String(this.settings.leaseMs), room],
    );
    for (const { id } of rows) {
      this.logger.info({ saga_id: id }, "resuming saga");
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

  /** Operator retry of a saga whose compensation gave up. */
  async retry(id: string): Promise<boolean> {
    const em = this.em();
    const claimed = await em.transactional(async (tx) => {
      const rows = await tx.execute(
        `update sagas set status = 'compensating', finished_at = null, owner_node = ?, lease_until = now() + (? || ' milliseconds')::interval, updated_at = now()
         where id = ? and status = 'compensation_failed' returning id`,
        [this.node, String(this.settings.leaseMs), id],
      );
      if (!rows.length) return false;
      await tx.execute(`update saga_steps set status = 'compensating' where saga_id = ? and status = 'compensation_failed'`, [id]);
      await tx.execute(
        `update saga_compensations set status = 'pending', attempts = 0, next_attempt_at = now() where saga_id = ? and status in ('failed','sent','pending')`,
        [id],
      );
      return true;
    });
    if (claimed) {
      const s = await this.get(id);
      if (s) this.emit("provisioning.saga.compensating", s.saga);
      setImmediate(() => void this.drive(id));
    }
    return claimed;
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

  private async drive(id: string) {
    if (this.driving.has(id) || this.stopped) return;
    this.driving.add(id);
    const stopKeeping = this.keepLease(id);
    try {
      // Read once; forward steps keep the rows in memory up to date (every write goes through updateStep), so
      // only the rarer moves into and through compensation read them again.
      let state = await this.get(id);
      for (;;) {
        if (this.stopped || !state) return;
        this.checkLease(id);
        const { saga, steps } = state;
        if (saga.status === "running") {
          const next = steps.find((s) => s.status !== "succeeded" && s.status !== "skipped");
          if (!next) {
            await this.finish(saga, "succeeded");
            return;
          }
          if (next.status === "failed" || !(await this.runStep(saga, steps, next))) {
            await this.beginCompensation(saga.id);
            state = await this.get(id);
          }
        } else if (saga.status === "compensating") {
          if ((await this.compensateNext(saga, steps)) === "finished") return;
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
      if (busy) return;
      busy = true;
      this.renew(id)
        .catch((err) => {
          if (err instanceof LeaseLost) this.lost.add(id);
        })
        .finally(() => (busy = false));
    }, Math.max(10, Math.floor(this.settings.leaseMs / 3)));
    return () => {
      clearInterval(timer);
      this.lost.delete(id);
    };
  }

  /** Cheap check between waits: the background renewal found another owner. Writes are guarded anyway. */
  private checkLease(id: string) {
    if (this.lost.has(id)) throw new LeaseLost(id);
  }

  private async runStep(saga: Saga, all: SagaStep[], step: SagaStep): Promise<boolean> {
    const def = this.byName.get(step.name)!;
    const outputs = Object.fromEntries(all.map((s) => [s.name, s.output ?? {}]));
    for (;;) {
      const t0 = Date.now();
      await this.updateStep(step, { status: "running", attempts: step.attempts + 1, started_at: step.started_at ?? new Date(), error: null });
      this.emitStep("provisioning.step.started", saga, step);
      const ctx: StepContext = {
        saga, outputs, step, settings: this.settings,
        call: (action, params) => this.broker.call(action, params, { meta: { user: this.user, saga_id: saga.id }, requestID: saga.id }),
        recordIntent: async (output) => this.updateStep(step, { output: { ...step.output, ...output } }),
        heartbeat: async () => this.checkLease(saga.id),
        sleep,
      };
      try {
        const output = await def.run(ctx);
        await this.updateStep(step, { status: "succeeded", finished_at: new Date(), output: { ...step.output, ...output } });
        this.emitStep("provisioning.step.succeeded", saga, step);
        this.metrics.stepFinished(step.name, "succeeded", (Date.now() - t0) / 1000);
        return true;
      } catch (err: any) {
        if (err instanceof LeaseLost) throw err;
        const message = err?.message ?? String(err);
        if (isTransient(err) && step.attempts < this.settings.stepMaxAttempts) {
          this.logger.warn({ request_id: saga.id, saga_id: saga.id, deployment_id: saga.deployment_id, step: step.name, attempt: step.attempts, err: message }, "transient step failure; retrying");
          await this.updateStep(step, { error: message });
          await sleep(backoff(this.settings.backoffMs, step.attempts));
          continue;
        }
        await this.updateStep(step, { status: "failed", finished_at: new Date(), error: message });
        this.emitStep("provisioning.step.failed", saga, step);
        this.metrics.stepFinished(step.name, "failed", (Date.now() - t0) / 1000);
        return false;
      }
    }
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
  private async compensateNext(saga: Saga, steps: SagaStep[]): Promise<"continue" | "finished"> {
    const target = [...steps]
      .sort((a, b) => b.idx - a.idx)
      .find((s) => s.status === "succeeded" || s.status === "compensating" || s.status === "running" || (s.status === "failed" && !s.compensated_at && this.byName.get(s.name)?.compensation));
    if (!target) {
      await this.finish(saga, "compensated");
      return "finished";
    }
    const def = this.byName.get(target.name)!;
    if (!def.compensation) {
      // Nothing of its own to undo (the droplet it waited on is destroyed by create_droplet's compensation).
      await this.updateStep(target, target.status === "running" ? { status: "failed", finished_at: new Date(), compensated_at: new Date() } : { status: "compensated", compensated_at: new Date() });
      this.emitStep("provisioning.step.compensated", saga, target);
      return "continue";
    }

    const em = this.em();
    let req = await em.findOne(CompensationRequest, { saga_id: saga.id, step_name: target.name, status: { $ne: "confirmed" } });
    if (!req) {
      // The request and the step's move to `compensating` commit together: the request cannot be lost.
      await em.transactional(async (tx) => {
        const outputs = Object.fromEntries(steps.map((s) => [s.name, s.output ?? {}]));
        req = tx.create(CompensationRequest, {
          id: randomUUID(), saga_id: saga.id, step_name: target.name, owner: def.compensation!.owner, status: "pending", attempts: 0,
          payload: this.compensationPayload(saga, target.name, def.compensation!.op, outputs), next_attempt_at: new Date(), last_error: null, created_at: new Date(), confirmed_at: null,
        });
        const s = await tx.findOneOrFail(SagaStep, { id: target.id });
        if (s.status === "succeeded" || s.status === "running") s.status = s.status === "running" ? "failed" : "compensating";
      });
      Object.assign(target, (await this.get(saga.id))!.steps.find((s) => s.id === target.id));
      this.emitStep("provisioning.step.compensating", saga, target);
    }
    return this.deliver(saga, target, req!.id);
  }

  /** Sends one compensation request and waits for its confirmation, the ack timeout, or the next retry. */
  private async deliver(saga: Saga, step: SagaStep, requestId: string): Promise<"continue" | "finished"> {
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
      await this.finish(saga, "compensation_failed", `${step.name} compensation: ${error}`);
      return "finished";
    }
    fresh.status = "pending";
    fresh.last_error = error;
    fresh.next_attempt_at = new Date(Date.now() + backoff(this.settings.backoffMs, fresh.attempts));
    await e2.flush();
    await this.updateStep(step, { compensation_error: error });
    return "continue";
  }

  private compensationPayload(saga: Saga, step: string, op: string, outputs: Record<string, Record<string, any>>) {
    const created = outputs.create_droplet ?? {};
    return {
      saga_id: saga.id, step, op, deployment_id: saga.deployment_id, tenant_id: saga.tenant_id, requested_by: saga.input.requested_by ?? null,
      tag: created.tag ?? null, droplet_id: created.droplet_id ?? null,
      resource_id: outputs.register_inventory?.resource_id ?? null,
    };
  }

  /** Ends the saga and gives up the lease, in one statement that only the lease holder's can match. */
  private async finish(saga: Saga, status: SagaStatus, error?: string) {
    const now = new Date();
    const rows = await this.em().execute(
      `update sagas set status = ?, finished_at = ?, updated_at = ?, owner_node = null, lease_until = null, error = coalesce(?, error)
       where id = ? and owner_node = ? returning error`,
      [status, now, now, error ?? null, saga.id, this.node],
    );
    if (!rows.length) throw new LeaseLost(saga.id);
    Object.assign(saga, { status, finished_at: now, updated_at: now, error: rows[0].error });
    this.emit(`provisioning.saga.${status}`, saga);
    this.metrics.sagaFinished(status);
  }

  /**
   * One statement per step write, and only while this node holds the saga's lease: a node that lost it (and may
   * not know yet) cannot record anything, nor start a step's forward call, which comes after the `running` write.
   */
  private async updateStep(step: SagaStep, patch: Partial<SagaStep>) {
    const cols = Object.keys(patch) as (keyof SagaStep & string)[];
    const sets = cols.map((c) => (c === "output" ? "output = ?::jsonb" : `${c} = ?`)).join(", ");
    const values = cols.map((c) => (c === "output" ? JSON.stringify(patch.output) : patch[c]));
    const rows = await this.em().execute(
      `update saga_steps set ${sets} where id = ? and exists (select 1 from sagas where id = ? and owner_node = ?) returning id`,
      [...values, step.id, step.saga_id, this.node],
    );
    if (!rows.length) throw new LeaseLost(step.saga_id);
    Object.assign(step, patch);
  }

  private emit(event: string, saga: Saga) {
    this.logger.info({ request_id: saga.id, saga_id: saga.id, deployment_id: saga.deployment_id, status: saga.status, error: saga.error ?? undefined }, event);
    this.broker.broadcast(event, { saga_id: saga.id, deployment_id: saga.deployment_id, tenant_id: saga.tenant_id, status: saga.status, error: saga.error ?? null });
  }
  private emitStep(event: string, saga: Saga, step: SagaStep) {
    this.logger.info({ request_id: saga.id, saga_id: saga.id, deployment_id: saga.deployment_id, step: step.name, status: step.status, attempts: step.attempts, error: step.error ?? undefined }, event);
    this.broker.broadcast(event, { saga_id: saga.id, deployment_id: saga.deployment_id, step: step.name, status: step.status, attempts: step.attempts, error: step.error ?? null, output: step.output ?? {} });
  }
}
