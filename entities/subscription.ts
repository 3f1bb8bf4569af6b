import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

export const SUBSCRIPTION_STATUSES = ["active", "paused", "cancelled"] as const;

export const Subscription = defineEntity({
  name: "Subscription",
  tableName: "subscriptions",
  properties: {
    id: p.uuid().primary(),
    deployment_id: p.uuid(),
    // Copied from the deployment at subscribe time so tenant scoping needs no cross-service join.
    tenant_id: p.string(),
    plan_code: p.string(),
    plan_version_id: p.uuid(),
    status: p.string().$type<(typeof SUBSCRIPTION_STATUSES)[number]>(),
    current_period_start: p.datetime(3),
    current_period_end: p.datetime(3),
    trial_ends_at: p.datetime(3).nullable(),
    // The billing clock's now when it was subscribed: a first invoice is prorated from its UTC day.
    started_at: p.datetime(3).nullable(),
    inserted_at: p.datetime(3),
    updated_at: p.datetime(3),
    /** The deployment event whose state `status` follows; older (re-published) events are ignored. */
    status_event_id: p.bigint("number").nullable(),
    version: p.integer().version(),
  },
});
export type Subscription = InferEntity<typeof Subscription>;

/** Price and quantity are snapshots taken at attach time: catalog changes never reprice a subscriber. */
export const SubscriptionAddon = defineEntity({
  name: "SubscriptionAddon",
  tableName: "subscription_addons",
  properties: {
    id: p.uuid().primary(),
    subscription_id: p.uuid(),
    addon_code: p.string(),
    unit_price_cents: p.integer(),
    currency: p.string(),
    qty: p.integer(),
    attached_at: p.datetime(3),
  },
});
export type SubscriptionAddon = InferEntity<typeof SubscriptionAddon>;

/** The record of every plan-version move (up/down grade or price change). */
export const SubscriptionChange = defineEntity({
  name: "SubscriptionChange",
  tableName: "subscription_changes",
  properties: {
    id: p.uuid().primary(),
    subscription_id: p.uuid(),
    from_plan_version_id: p.uuid().nullable(),
    to_plan_version_id: p.uuid(),
    actor: p.string(),
    occurred_at: p.datetime(3),
  },
});
export type SubscriptionChange = InferEntity<typeof SubscriptionChange>;
