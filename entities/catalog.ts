import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

export const Plan = defineEntity({
  name: "Plan",
  tableName: "plans",
  properties: {
    code: p.string().primary(),
    name: p.string(),
    inserted_at: p.datetime(3),
  },
});
export type Plan = InferEntity<typeof Plan>;

/** Immutable: a price change is a new version, so subscribers keep the version they signed up to. */
export const PlanVersion = defineEntity({
  name: "PlanVersion",
  tableName: "plan_versions",
  properties: {
    id: p.uuid().primary(),
    plan_code: p.string(),
    version: p.integer(),
    price_cents: p.integer(),
    currency: p.string(),
    inserted_at: p.datetime(3),
  },
});
export type PlanVersion = InferEntity<typeof PlanVersion>;

export const Addon = defineEntity({
  name: "Addon",
  tableName: "addons",
  properties: {
    code: p.string().primary(),
    name: p.string(),
    unit_price_cents: p.integer(),
    currency: p.string(),
    inserted_at: p.datetime(3),
    updated_at: p.datetime(3),
  },
});
export type Addon = InferEntity<typeof Addon>;
