/*
 * What the webhooks service makes of the events it consumes (SPEC §9; the owning services' at-least-once events): each becomes at most one
 * webhook event (an envelope with a stable id, so a repeat of the source event is recognised and dropped) and/or
 * one entry of the deployment's watch journal. Pure: unit-tested in test/webhooks-sign.test.ts.
 */

export const WEBHOOK_EVENT_TYPES = [
  "deployment.created",
  "deployment.transitioned",
  "deployment.runtime_changed",
  "saga.succeeded",
  "saga.failed",
  "saga.compensated",
  "saga.compensation_failed",
  "invoice.issued",
  "invoice.paid",
  "invoice.overdue",
] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/** The body POSTed to an endpoint (SPEC §9). */
export interface WebhookEnvelope {
  id: string;
  type: WebhookEventType;
  created_at: string;
  tenant_id: string;
  data: Record<string, unknown>;
}

/** One line of a deployment's watch stream; its `seq` (the SSE id) is given when it is journaled. */
export interface WatchEntry {
  deployment_id: string;
  tenant_id: string | null;
  type: string;
  /** Recognises a repeat of the same move (broadcasts reach every webhooks node). */
  dedupe_key: string;
  data: Record<string, unknown>;
}

export interface Mapped {
  envelope?: WebhookEnvelope & { deployment_id: string | null; chain?: { event_id: number; from_state: string | null; to_state: string } };
  watch?: WatchEntry;
}

const isoOr = (v: unknown, fallback: Date) => (typeof v === "string" && !Number.isNaN(Date.parse(v)) ? new Date(v).toISOString() : fallback.toISOString());

/** deployments.created / deployments.transitioned `{deployment, event}`: the event id is deployment_events.id. */
export function fromDeploymentEvent(payload: any, now = new Date()): Mapped {
  const { deployment, event } = payload ?? {};
  if (!deployment?.id || !deployment?.tenant_id || event?.id == null) return {};
  const type: WebhookEventType = event.from_state == null ? "deployment.created" : "deployment.transitioned";
  const created_at = isoOr(event.occurred_at, now);
  const data = { deployment, event };
  return {
    envelope: { id: `evt_dep_${event.id}`, type, created_at, tenant_id: deployment.tenant_id, deployment_id: deployment.id, data, chain: { event_id: Number(event.id), from_state: event.from_state ?? null, to_state: event.to_state } },
    watch: { deployment_id: deployment.id, tenant_id: deployment.tenant_id, type, dedupe_key: `dep:${event.id}`, data },
  };
}

/**
 * deployments.runtime_changed `{deployment_id, tenant_id, runtime, occurred_at, event_id}` (live, and the same
 * payload from v1.deployments.runtimeSince): the id is the change's deployment_runtime_events row. A payload without
 * `event_id` (an emitter older than that outbox) gets an id derived from its content.
 */
export function fromRuntimeChanged(payload: any, now = new Date()): Mapped {
  const { deployment_id, tenant_id, runtime, occurred_at, event_id } = payload ?? {};
  if (!deployment_id || !tenant_id || !runtime?.status) return {};
  const created_at = isoOr(occurred_at, now);
  const key = event_id != null && Number.isInteger(Number(event_id)) ? String(Number(event_id)) : `${deployment_id}_${Date.parse(created_at)}_${runtime.status}`;
  const data = { deployment_id, runtime, occurred_at: created_at };
  return {
    envelope: { id: `evt_rt_${key}`, type: "deployment.runtime_changed", created_at, tenant_id, deployment_id, data },
    watch: { deployment_id, tenant_id, type: "deployment.runtime_changed", dedupe_key: `rt:${key}`, data },
  };
}

const SAGA_WEBHOOK_STATUSES = ["succeeded", "failed", "compensated", "compensation_failed"];

/**
 * provisioning.saga.<status> `{saga_id, kind?, deployment_id, tenant_id, status, error}` (and a SagaDto from the
 * catch-up, which has `id` instead of `saga_id`). Finished statuses are webhooks; every status is a watch line.
 */
export function fromSagaEvent(status: string, payload: any, now = new Date()): Mapped {
  const sagaId = payload?.saga_id ?? payload?.id;
  const deploymentId = payload?.deployment_id;
  if (!sagaId || !deploymentId) return {};
  const saga = { id: sagaId, kind: payload.kind ?? "provision", deployment_id: deploymentId, tenant_id: payload.tenant_id ?? null, status, error: payload.error ?? null };
  const out: Mapped = { watch: { deployment_id: deploymentId, tenant_id: saga.tenant_id, type: `saga.${status}`, dedupe_key: `saga:${sagaId}:${status}`, data: { saga } } };
  if (SAGA_WEBHOOK_STATUSES.includes(status) && saga.tenant_id) {
    out.envelope = { id: `evt_saga_${sagaId}_${status}`, type: `saga.${status}` as WebhookEventType, created_at: isoOr(payload.finished_at, now), tenant_id: saga.tenant_id, deployment_id: deploymentId, data: { saga } };
  }
  return out;
}

/** provisioning.step.<status> `{saga_id, kind?, deployment_id, tenant_id?, step, status, attempts, error, output}`: a watch line only. */
export function fromStepEvent(status: string, payload: any): Mapped {
  const { saga_id, deployment_id, step } = payload ?? {};
  if (!saga_id || !deployment_id || !step) return {};
  const attempts = Number(payload.attempts ?? 0);
  const data = { saga_id, kind: payload.kind ?? "provision", step, status, attempts, error: payload.error ?? null, output: payload.output ?? {} };
  return { watch: { deployment_id, tenant_id: payload.tenant_id ?? null, type: `saga.step.${status}`, dedupe_key: `step:${saga_id}:${step}:${status}:${attempts}`, data } };
}

/**
 * billing.invoice.<issued|paid|overdue> `{invoice, event_id}` live, or a v1.billing.eventsSince item `{type, invoice,
 * occurred_at, event_id}` from the catch-up: one webhook event per invoice and kind either way.
 */
export function fromInvoiceEvent(kind: "issued" | "paid" | "overdue", payload: any, now = new Date()): Mapped {
  const invoice = payload?.invoice;
  if (!invoice?.id || !invoice?.tenant_id) return {};
  const at = kind === "paid" ? invoice.paid_at : kind === "issued" ? invoice.issued_at : payload?.occurred_at;
  return {
    envelope: { id: `evt_inv_${invoice.id}_${kind}`, type: `invoice.${kind}`, created_at: isoOr(at, now), tenant_id: invoice.tenant_id, deployment_id: invoice.deployment_id ?? null, data: { invoice } },
  };
}

/** An endpoint wants an event when it lists no types (all) or lists this one. */
export const wants = (events: string[], type: string) => !events.length || events.includes(type);
