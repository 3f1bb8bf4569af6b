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
    /** The DigitalOcean size slug a deployment on this version runs on (a size change is a new version too). */
    droplet_size: p.string(),
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

/** A template names what a deployment runs: its versions say which image boots and which cloud-init installs it. */
export const Template = defineEntity({
  name: "Template",
  tableName: "templates",
  properties: {
    code: p.string().primary(),
    name: p.string(),
    inserted_at: p.datetime(3),
  },
});
export type Template = InferEntity<typeof Template>;

/** Immutable like plan versions: a deployment names (or is resolved to) one version, and that never changes under it. */
export const TemplateVersion = defineEntity({
  name: "TemplateVersion",
  tableName: "template_versions",
  properties: {
    id: p.uuid().primary(),
    template_code: p.string(),
    version: p.integer(),
    image: p.string(),
    /** cloud-init with {{slug}}, {{hostname}}, {{llm_mode}} and {{tenant_id}} filled in at provisioning. */
    user_data: p.text().nullable(),
    inserted_at: p.datetime(3),
  },
});
export type TemplateVersion = InferEntity<typeof TemplateVersion>;
