import { defineEntity, p, type InferEntity } from "@mikro-orm/core";
import type { RuntimeStatus } from "../lib/lifecycle";

export const DEPLOYMENT_STATES = ["provisioning", "trial", "active", "paused", "past_due", "suspended", "cancelled", "archived"] as const;
export type DeploymentState = (typeof DEPLOYMENT_STATES)[number];
export const LLM_MODES = ["none", "shared", "byok"] as const;

export const Deployment = defineEntity({
  name: "Deployment",
  tableName: "deployments",
  properties: {
    id: p.uuid().primary(),
    tenant_id: p.string(),
    slug: p.string(),
    display_name: p.string(),
    region: p.string(),
    state: p.string().$type<DeploymentState>(),
    state_since: p.datetime(3),
    llm_mode: p.string().$type<(typeof LLM_MODES)[number]>(),
    billing_action_suspended: p.boolean(),
    template_code: p.string(),
    template_version: p.string().nullable(),
    inserted_at: p.datetime(3),
    updated_at: p.datetime(3),
    /** Set when it enters trial: the billing clock's now + TRIAL_DAYS. */
    trial_ends_at: p.datetime(3).nullable(),
    /** Its droplet as the sagas last reported it (v1.deployments.setRuntime); `none` = no live droplet linked. */
    runtime_status: p.string().$type<RuntimeStatus>(),
    runtime_droplet_id: p.bigint("number").nullable(),
    runtime_ipv4: p.string().nullable(),
    runtime_hostname: p.string().nullable(),
    // Optimistic lock as a second line behind the row lock taken by transitions.
    version: p.integer().version(),
  },
});
export type Deployment = InferEntity<typeof Deployment>;

export const DeploymentEvent = defineEntity({
  name: "DeploymentEvent",
  tableName: "deployment_events",
  properties: {
    id: p.bigint("number").primary().autoincrement(),
    deployment_id: p.uuid(),
    from_state: p.string().$type<DeploymentState>().nullable(),
    to_state: p.string().$type<DeploymentState>(),
    reason: p.string(),
    actor: p.string(),
    notes: p.text().nullable(),
    occurred_at: p.datetime(3),
    /** Set once deployments.created / deployments.transitioned went out (the table is the events' outbox). */
    published_at: p.datetime(3).nullable(),
  },
});
export type DeploymentEvent = InferEntity<typeof DeploymentEvent>;

/** deployment_saga_requests (durable saga-start requests) is read and written with SQL: services/deployments/saga-requests.ts. */
