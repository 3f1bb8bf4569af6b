import { Errors, type ServiceSchema } from "moleculer";
import { CloudResource, RESOURCE_STATUSES, type ResourceStatus } from "../../entities/cloud-resource";
import { emOf } from "../../lib/db";
import { requireOperator, type ActionCtx } from "../../lib/access";
import { conflict, invalid } from "../../lib/errors";
import { DROPLET_ACTION_TYPES, type Action, type DropletActionInput, type DropletActionType, type Droplet, type Region, type Size } from "../../lib/digitalocean";
import { provider } from "../../lib/provider";
import { resourceDto, UUID_PARAM, type ResourceDto } from "./common";

/*
 * The inventory's provider-facing internal actions for power and resize moves and for the catalog (SPEC §6):
 * droplet actions and their polling, the regions and sizes catalog (cached), updating a resource after a move,
 * a deployment's live resources, and destroy-by-tag. All are internal (service to service, never on HTTP).
 * Provider failures go through lib/provider.ts: transient (network, 429, 5xx) → 503 PROVIDER_UNAVAILABLE,
 * retryable; anything else DO refuses (4xx) → 502 PROVIDER_ERROR, not retryable, with DO's status and id in
 * `data` (so a caller can tell a 404 droplet from a 422 refusal).
 */

export interface DropletActionParams {
  id: number;
  type: DropletActionType;
  /** resize only: the new size slug. */
  size?: string;
  /** resize only: grow the disk too (permanent). */
  disk?: boolean;
}
export interface ActionDto {
  id: number;
  status: Action["status"];
  type: string;
  droplet_id: number;
  started_at: string | null;
  completed_at: string | null;
}
export interface UpdateResourceParams {
  id: string;
  status?: Exclude<ResourceStatus, "destroyed">;
  size_slug?: string;
}
export interface RegionDto { slug: string; name: string; available: boolean; sizes: string[] }
export type SizeDto = Pick<Size, "slug" | "price_monthly" | "price_hourly" | "memory" | "vcpus" | "disk" | "transfer" | "regions" | "available" | "description">;
export interface DestroyByTagResult {
  /** Droplets that carried the tag at the provider just before the delete. */
  droplet_ids: number[];
  /** Live inventory rows of those droplets (or carrying the tag), now marked destroyed. */
  resources: ResourceDto[];
}

export const actionDto = (a: Action): ActionDto => ({
  id: a.id, status: a.status, type: a.type, droplet_id: a.resource_id, started_at: a.started_at ?? null, completed_at: a.completed_at ?? null,
});
export const regionDto = (r: Region): RegionDto => ({ slug: r.slug, name: r.name, available: r.available, sizes: [...(r.sizes ?? [])] });
export const sizeDto = (s: Size): SizeDto => ({
  slug: s.slug, price_monthly: s.price_monthly, price_hourly: s.price_hourly, memory: s.memory, vcpus: s.vcpus, disk: s.disk,
  transfer: s.transfer, regions: [...(s.regions ?? [])], available: s.available, description: s.description,
});

const LIVE_STATUSES = RESOURCE_STATUSES.filter((s) => s !== "destroyed");

export const ProviderActionsMixin: Partial<ServiceSchema<any>> = {
  // Uses the service's doClient, sizes (SizeCache) and regionCache (TtlCache<Region[]>), made in its created().
  actions: {
    /** Starts power_on / power_off / shutdown / resize on a droplet; poll getAction for its end. Never resent. */
    dropletAction: {
      visibility: "public",
      access: "internal",
      params: {
        id: { type: "number", integer: true, positive: true, convert: true },
        type: { type: "enum", values: DROPLET_ACTION_TYPES },
        size: { type: "string", min: 1, max: 100, optional: true },
        disk: { type: "boolean", optional: true },
      },
      async handler(this: any, ctx: ActionCtx<DropletActionParams>) {
        requireOperator(ctx);
        const p = ctx.params;
        let input: DropletActionInput;
        if (p.type === "resize") {
          if (!p.size) throw invalid("A resize needs 'size'", [{ field: "size", type: "required" }]);
          // Checked against the cached catalog first: an unknown size is the caller's mistake, not a provider fault.
          const size: Size | undefined = await provider(() => this.sizes.get(p.size!) as Promise<Size | undefined>);
          if (!size) throw invalid(`Unknown size '${p.size}': the provider lists no such size`, [{ field: "size", type: "unknown_size" }]);
          input = { type: "resize", size: p.size, ...(p.disk !== undefined ? { disk: p.disk } : {}) };
        } else {
          if (p.size !== undefined || p.disk !== undefined)
            throw invalid(`'size' and 'disk' go with type resize only`, [{ field: p.size !== undefined ? "size" : "disk", type: "forbidden" }]);
          input = { type: p.type };
        }
        const action: Action = await provider(() => this.doClient.dropletAction(p.id, input));
        return { action: actionDto(action) };
      },
    },

    /** An action's current state: `in-progress` until it is `completed` or `errored`. */
    getAction: {
      visibility: "public",
      access: "internal",
      params: { id: { type: "number", integer: true, positive: true, convert: true } },
      async handler(this: any, ctx: ActionCtx<{ id: number }>) {
        requireOperator(ctx);
        return { action: actionDto(await provider(() => this.doClient.getAction(ctx.params.id) as Promise<Action>)) };
      },
    },

    /** A droplet's actions, newest first: finds the action a lost dropletAction response started. */
    dropletActions: {
      visibility: "public",
      access: "internal",
      params: { id: { type: "number", integer: true, positive: true, convert: true } },
      async handler(this: any, ctx: ActionCtx<{ id: number }>) {
        requireOperator(ctx);
        const actions: Action[] = await provider(() => this.doClient.listDropletActions(ctx.params.id));
        return { actions: actions.map(actionDto) };
      },
    },

    /** After a move: the row's status and/or size; a size change re-prices it from the provider's size list. */
    updateResource: {
      visibility: "public",
      access: "internal",
      params: {
        id: UUID_PARAM,
        status: { type: "enum", values: LIVE_STATUSES, optional: true },
        size_slug: { type: "string", min: 1, max: 100, optional: true },
      },
      async handler(this: any, ctx: ActionCtx<UpdateResourceParams>) {
        requireOperator(ctx);
        const p = ctx.params;
        // The price lookup is a provider call: made before, never inside, the transaction.
        let cost: number | undefined;
        if (p.size_slug !== undefined) {
          cost = await provider(() => this.sizes.monthlyCents(p.size_slug!) as Promise<number | undefined>);
          if (cost === undefined) throw invalid(`Unknown size '${p.size_slug}': the provider lists no price for it`, [{ field: "size_slug", type: "unknown_size" }]);
        }
        const { resource } = await this.mutate(ctx, { id: p.id }, (r: CloudResource) => {
          if (r.status === "destroyed") throw conflict(`Cloud resource ${r.id} is destroyed`, "RESOURCE_DESTROYED", { id: r.id });
          let changed = false;
          if (p.status !== undefined && r.status !== p.status) { r.status = p.status; changed = true; }
          if (p.size_slug !== undefined && (r.size_slug !== p.size_slug || r.monthly_cost_cents !== cost)) {
            r.size_slug = p.size_slug;
            r.monthly_cost_cents = cost!;
            changed = true;
          }
          return changed ? "inventory.updated" : false;
        });
        return { resource };
      },
    },

    /** A deployment's live resources (destroyed ones are history), oldest first. */
    forDeployment: {
      visibility: "public",
      access: "internal",
      params: { deployment_id: UUID_PARAM },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string }>) {
        requireOperator(ctx);
        const rows = await emOf(ctx).find(CloudResource, { deployment_id: ctx.params.deployment_id, status: { $ne: "destroyed" } } as any,
          { orderBy: [{ inserted_at: "asc" }, { id: "asc" }] as any });
        return { resources: rows.map(resourceDto) };
      },
    },

    /** The provider's regions (available or not, with the sizes each offers), cached. */
    regions: {
      visibility: "public",
      access: "internal",
      async handler(this: any) {
        const regions: Region[] = await provider(() => this.regionCache.get());
        return { regions: regions.map(regionDto) };
      },
    },

    /** The provider's sizes with their prices, cached (the same cache register uses for monthly costs). */
    sizes: {
      visibility: "public",
      access: "internal",
      async handler(this: any) {
        const sizes: Size[] = await provider(() => this.sizes.list());
        return { sizes: sizes.map(sizeDto) };
      },
    },

    /**
     * Destroys every droplet carrying `tag` at the provider (idempotent: none left is success) and marks their
     * live inventory rows destroyed. Fails retryable if some survive the delete.
     */
    destroyByTag: {
      visibility: "public",
      access: "internal",
      params: { tag: { type: "string", min: 1, max: 255 } },
      async handler(this: any, ctx: ActionCtx<{ tag: string }>): Promise<DestroyByTagResult> {
        requireOperator(ctx);
        const tag = ctx.params.tag;
        const before: Droplet[] = await provider(() => this.doClient.listDropletsByTag(tag));
        if (before.length) await provider(() => this.doClient.deleteDropletsByTag(tag));
        const left: Droplet[] = before.length ? await provider(() => this.doClient.listDropletsByTag(tag)) : [];
        if (left.length)
          throw providerRetryable(`${left.length} droplet(s) tagged ${tag} still exist after the delete`, { tag, droplet_ids: left.map((d) => d.id) });
        const ids = before.map((d) => String(d.id));
        const rows = await emOf(ctx).find(CloudResource, {
          provider: "digitalocean", status: { $ne: "destroyed" },
          $or: [...(ids.length ? [{ external_id: { $in: ids } }] : []), { tags: { $contains: [tag] } }],
        } as any);
        const resources: ResourceDto[] = [];
        for (const r of rows) {
          const res = await this.mutate(ctx, { id: r.id }, (x: CloudResource, now: Date) => {
            if (x.status === "destroyed") return false;
            x.status = "destroyed";
            x.destroyed_at = now;
            return "inventory.destroyed";
          });
          resources.push(res.resource);
        }
        return { droplet_ids: before.map((d) => d.id), resources };
      },
    },
  },
};

// Same type as a transient provider failure: the caller retries later.
const providerRetryable = (message: string, data: Record<string, unknown>) =>
  new Errors.MoleculerRetryableError(`DigitalOcean: ${message}`, 503, "PROVIDER_UNAVAILABLE", { provider: "digitalocean", transient: true, ...data });
