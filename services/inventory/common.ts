import type { CloudResource } from "../../entities/cloud-resource";
import { iso } from "../../lib/dto";
import { publicIPv4, type Droplet } from "../../lib/digitalocean";

/*
 * What the inventory service (inventory.service.ts) and its drift mixin (drift.ts) both use: param rules, the
 * action context type and the resource/droplet DTOs. It imports neither file, so importing it makes no cycle.
 */

export { UUID, UUID_PARAM } from "../../lib/params";

/** A droplet as the saga needs it: id, status, public IPv4, placement and tags. */
export function dropletDto(d: Droplet) {
  return { id: d.id, name: d.name, status: d.status, ipv4: publicIPv4(d) ?? null, region: (d as any).region?.slug ?? null, size_slug: (d as any).size_slug ?? null, tags: d.tags ?? [] };
}

export function resourceDto(r: CloudResource) {
  return {
    id: r.id,
    provider: r.provider,
    kind: r.kind,
    external_id: r.external_id,
    name: r.name,
    region: r.region,
    size_slug: r.size_slug,
    ipv4: r.ipv4 ?? null,
    status: r.status,
    tags: [...(r.tags ?? [])],
    monthly_cost_cents: r.monthly_cost_cents,
    currency: r.currency,
    tenant_id: r.tenant_id,
    deployment_id: r.deployment_id ?? null,
    saga_id: r.saga_id ?? null,
    inserted_at: iso(r.inserted_at),
    updated_at: iso(r.updated_at),
    destroyed_at: iso(r.destroyed_at),
  };
}
export type ResourceDto = ReturnType<typeof resourceDto>;
