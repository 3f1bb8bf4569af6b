import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

export const RESOURCE_PROVIDERS = ["digitalocean"] as const;
export const RESOURCE_KINDS = ["droplet"] as const;
/** DigitalOcean's droplet statuses plus our terminal `destroyed` (set by markDestroyed, never by the provider). */
export const RESOURCE_STATUSES = ["new", "active", "off", "archive", "destroyed"] as const;
export type ResourceStatus = (typeof RESOURCE_STATUSES)[number];

/** One row per provider resource (SPEC §5). Unique by (provider, external_id), so registering twice is one row. */
export const CloudResource = defineEntity({
  name: "CloudResource",
  tableName: "cloud_resources",
  properties: {
    id: p.uuid().primary(),
    provider: p.string().$type<(typeof RESOURCE_PROVIDERS)[number]>(),
    kind: p.string().$type<(typeof RESOURCE_KINDS)[number]>(),
    // The provider's id as text (DO droplet ids are integers, other providers use strings).
    external_id: p.string(),
    name: p.string(),
    region: p.string(),
    size_slug: p.string(),
    ipv4: p.string().nullable(),
    status: p.string().$type<ResourceStatus>(),
    tags: p.array<string>(),
    monthly_cost_cents: p.integer(),
    currency: p.string(),
    tenant_id: p.string(),
    // Plain ids, no ORM relations: deployments belong to another service.
    deployment_id: p.uuid().nullable(),
    saga_id: p.string().nullable(),
    inserted_at: p.datetime(3),
    updated_at: p.datetime(3),
    destroyed_at: p.datetime(3).nullable(),
    version: p.integer().version(),
  },
});
export type CloudResource = InferEntity<typeof CloudResource>;
