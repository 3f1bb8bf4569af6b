import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

export const SAGA_STATUSES = ["running", "succeeded", "failed", "compensating", "compensated", "compensation_failed"] as const;
/** A saga in one of these is done: the next saga of its deployment may run. */
export const TERMINAL_SAGA_STATUSES = ["succeeded", "failed", "compensated", "compensation_failed"] as const;
export type SagaStatus = (typeof SAGA_STATUSES)[number];
export const STEP_STATUSES = ["pending", "running", "succeeded", "failed", "compensating", "compensated", "compensation_failed", "skipped"] as const;
export type StepStatus = (typeof STEP_STATUSES)[number];

/**
 * One saga run of some kind (provision, power_off, …). `owner_node`/`lease_until` make sure one node drives it at a
 * time; `seq` is its place in its deployment's queue (one saga of a deployment runs at a time, in `seq` order).
 */
export const Saga = defineEntity({
  name: "Saga",
  tableName: "sagas",
  properties: {
    id: p.uuid().primary(),
    kind: p.string(),
    seq: p.bigint("number").nullable(),
    deployment_id: p.uuid(),
    tenant_id: p.string(),
    input: p.json<Record<string, any>>(),
    status: p.string().$type<SagaStatus>(),
    owner_node: p.string().nullable(),
    lease_until: p.datetime(3).nullable(),
    started_at: p.datetime(3),
    finished_at: p.datetime(3).nullable(),
    error: p.text().nullable(),
    updated_at: p.datetime(3),
  },
});
export type Saga = InferEntity<typeof Saga>;

export const SagaStep = defineEntity({
  name: "SagaStep",
  tableName: "saga_steps",
  properties: {
    id: p.uuid().primary(),
    saga_id: p.uuid(),
    idx: p.integer(),
    name: p.string(),
    status: p.string().$type<StepStatus>(),
    attempts: p.integer(),
    started_at: p.datetime(3).nullable(),
    finished_at: p.datetime(3).nullable(),
    error: p.text().nullable(),
    output: p.json<Record<string, any>>(),
    /** What the step's undo needs (its StepResponse's compensate input); null = nothing to undo. */
    compensate_input: p.json<Record<string, any>>().nullable(),
    compensation_attempts: p.integer(),
    compensation_error: p.text().nullable(),
    compensated_at: p.datetime(3).nullable(),
  },
});
export type SagaStep = InferEntity<typeof SagaStep>;

/**
 * Transactional outbox of compensation requests: written in the transaction that marks the step
 * `compensating`, delivered as an event until the owning service confirms it (see services/provisioning/README.md).
 */
export const CompensationRequest = defineEntity({
  name: "CompensationRequest",
  tableName: "saga_compensations",
  properties: {
    id: p.uuid().primary(),
    saga_id: p.uuid(),
    step_name: p.string(),
    owner: p.string(),
    payload: p.json<Record<string, any>>(),
    status: p.string().$type<"pending" | "sent" | "confirmed" | "failed">(),
    attempts: p.integer(),
    next_attempt_at: p.datetime(3),
    last_error: p.text().nullable(),
    created_at: p.datetime(3),
    confirmed_at: p.datetime(3).nullable(),
  },
});
export type CompensationRequest = InferEntity<typeof CompensationRequest>;
