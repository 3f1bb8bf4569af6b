import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

/** What an operator may do about a drift entry (docs/drift.md). */
export const DRIFT_ACTIONS = ["adopt", "destroy", "mark_destroyed", "sync"] as const;
export type DriftActionName = (typeof DRIFT_ACTIONS)[number];
export const DRIFT_RESOURCES = ["droplet", "dns_record"] as const;
export type DriftResource = (typeof DRIFT_RESOURCES)[number];
/** `succeeded`: done; `rejected`: refused because the target was not (or no longer) that kind of drift; `failed`: the provider or a service failed. */
export const DRIFT_ACTION_RESULTS = ["succeeded", "rejected", "failed"] as const;
export type DriftActionResult = (typeof DRIFT_ACTION_RESULTS)[number];

/**
 * The inventory service's audit log of operator fixes for drift between the provider and our records: who (the
 * token's `sub`), what (action, resource, external id, the drift entry id), the outcome, and when. Rejected and
 * failed attempts are recorded too.
 */
export const DriftAction = defineEntity({
  name: "DriftAction",
  tableName: "drift_actions",
  properties: {
    id: p.uuid().primary(),
    action: p.string().$type<DriftActionName>(),
    resource: p.string().$type<DriftResource>(),
    // The provider's id of the target: droplet id, or domain record id.
    external_id: p.string(),
    entry_id: p.string().nullable(),
    actor: p.string(),
    tenant_id: p.string().nullable(),
    deployment_id: p.uuid().nullable(),
    // Our cloud_resources row the action created or changed, if any.
    resource_id: p.uuid().nullable(),
    result: p.string().$type<DriftActionResult>(),
    error: p.text().nullable(),
    // What was found and done: the provider's view before the action, the row before/after, the error type.
    details: p.json<Record<string, unknown>>(),
    created_at: p.datetime(3),
  },
});
export type DriftAction = InferEntity<typeof DriftAction>;
