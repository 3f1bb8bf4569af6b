import { randomUUID } from "node:crypto";
import { LockMode, UniqueConstraintViolationException } from "@mikro-orm/core";
import type { ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { CloudResource, RESOURCE_KINDS, RESOURCE_PROVIDERS, RESOURCE_STATUSES, type ResourceStatus } from "../entities/cloud-resource";
import { DriftAction } from "../entities/drift-action";
import { DbMixin, emOf } from "../lib/db";
import { currentUser, listTenant, requireOperator, systemUser, visibleTo, type ActionCtx } from "../lib/access";
import { conflict, invalid, mapDbError, notFound } from "../lib/errors";
import { keysetBeforeWhere, pageOf } from "../lib/pagination";
import { pgArray, type Page } from "../lib/dto";
import { catalogTtlMs, doClientFrom, provider, SizeCache, TtlCache } from "../lib/provider";
import type { CreateDropletInput, CreateDropletResult, Droplet, Region } from "../lib/digitalocean";
import { compensationHandler } from "../lib/compensation";
import { dropletDto, resourceDto, UUID, UUID_PARAM, type ResourceDto } from "./inventory/common";
import { DriftMixin } from "./inventory/drift";
import { ProviderActionsMixin } from "./inventory/provider-actions";
import { restoreDroplets, type DropletSnapshot } from "./inventory/restore";
import { PAGE_PARAMS } from "../lib/params";

// Shared DTOs (services/inventory/common.ts) and the drift feature's exports (services/inventory/drift.ts), re-exported from here.
export { dropletDto, resourceDto, type ResourceDto } from "./inventory/common";
export { driftActionDto, dropletDifferences, sagaIdOf } from "./inventory/drift";
export { actionDto, regionDto, sizeDto } from "./inventory/provider-actions";
export type { ActionDto, DestroyByTagResult, DropletActionParams, RegionDto, SizeDto, UpdateResourceParams } from "./inventory/provider-actions";
export type { DriftActionDto, DriftActionParams, DriftDifference, DriftEntry, DriftKind, DriftReport } from "./inventory/drift";

const IPV4 = "^(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)(\\.(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)){3}$";
/** Statuses a provider reports; `destroyed` is ours and only markDestroyed sets it. */
const LIVE_STATUSES = RESOURCE_STATUSES.filter((s) => s !== "destroyed");

const REF_PARAMS = {
  id: { ...UUID_PARAM, optional: true },
  external_id: { type: "string", min: 1, max: 100, convert: true, optional: true },
  provider: { type: "enum", values: RESOURCE_PROVIDERS, optional: true },
};

export interface ResourceRef {
  /** Our id, or the provider's id (with `provider`, default digitalocean). */
  id?: string;
  external_id?: string;
  provider?: (typeof RESOURCE_PROVIDERS)[number];
}
export interface RegisterParams {
  provider?: (typeof RESOURCE_PROVIDERS)[number];
  kind?: (typeof RESOURCE_KINDS)[number];
  external_id: string;
  name: string;
  region: string;
  size_slug: string;
  ipv4?: string | null;
  status?: Exclude<ResourceStatus, "destroyed">;
  tags?: string[];
  /** Without it, the provider's monthly price of `size_slug`. */
  monthly_cost_cents?: number;
  currency?: string;
  tenant_id: string;
  deployment_id?: string | null;
  saga_id?: string | null;
}
export interface LinkParams extends ResourceRef {
  deployment_id: string;
}
export interface UnlinkParams extends ResourceRef {
  /** When given, unlink only if the resource is linked to this deployment. */
  deployment_id?: string;
}
export interface ListParams {
  tenant_id?: string;
  deployment_id?: string;
  saga_id?: string;
  status?: ResourceStatus;
  include_destroyed?: boolean;
  limit?: number;
  cursor?: string;
}

/**
 * Inventory of provider resources (SPEC §5). `list` and `get` are the tenant-scoped HTTP reads; `register`,
 * `link`, `unlink` and `markDestroyed` are for the provisioning saga (visibility "public": callable by other
 * services, never routed over HTTP), and are idempotent so a retried step changes nothing twice. The droplet
 * calls and the saga's compensation handler are here too; power/resize actions, the catalog (regions, sizes),
 * updateResource, forDeployment and destroyByTag come from ProviderActionsMixin (services/inventory/provider-actions.ts); drift (`drift`, `driftAction`, the periodic check)
 * comes from DriftMixin (services/inventory/drift.ts, docs/drift.md).
 */
const InventoryService: ServiceSchema<any> = {
  name: "inventory",
  version: 1,
  // DriftMixin first: Moleculer runs created/started hooks in this order and stopped in reverse, so the drift
  // check starts after the DbMixin opened the ORM and is stopped (a running check awaited) before it closes it.
  mixins: [DriftMixin, ProviderActionsMixin, DbMixin([CloudResource, DriftAction])],
  settings: {
    // DigitalOcean API root and token; default to DO_API_URL / DO_TOKEN / the embedded simulator (lib/provider.ts).
    doApiUrl: undefined,
    doToken: undefined,
    // How long the provider's catalog (sizes with their prices, regions) is reused; undefined:
    // INVENTORY_CATALOG_TTL_MS (default 300000). `sizesTtlMs` is its older name.
    catalogTtlMs: undefined,
  },

  created() {
    this.doClient = doClientFrom(this.settings);
    const ttl = this.settings.catalogTtlMs ?? this.settings.sizesTtlMs ?? catalogTtlMs();
    this.sizes = new SizeCache(this.doClient, ttl);
    this.regionCache = new TtlCache<Region[]>(() => this.doClient.listRegions(), ttl);
    // /ready asks once, without the client's retries: a provider that does not answer now is not ready.
    this.probeClient = doClientFrom({ ...this.settings, doMaxRetries: 0 });
  },

  actions: {
    /** For the gateway's /ready: the database (as every DB service) and the provider answering with our token. */
    ready: {
      access: "public",
      visibility: "public",
      async handler(this: any) {
        const provider = await this.probeClient.getAccount().then(
          () => "ok",
          (err: Error) => `failed: ${err.message}`,
        );
        return { database: await this.dbReady(), provider };
      },
    },

    /** Idempotent by (provider, external_id): a second register returns the same row with mutable fields updated. */
    register: {
      access: "scoped",
      visibility: "public",
      params: {
        provider: { type: "enum", values: RESOURCE_PROVIDERS, optional: true },
        kind: { type: "enum", values: RESOURCE_KINDS, optional: true },
        external_id: { type: "string", min: 1, max: 100, convert: true },
        name: { type: "string", min: 1, max: 255 },
        region: { type: "string", min: 1, max: 64 },
        size_slug: { type: "string", min: 1, max: 100 },
        ipv4: { type: "string", pattern: IPV4, optional: true, nullable: true },
        status: { type: "enum", values: LIVE_STATUSES, optional: true },
        tags: { type: "array", items: { type: "string", min: 1, max: 255 }, max: 100, optional: true },
        monthly_cost_cents: { type: "number", integer: true, min: 0, max: 100_000_000, optional: true },
        currency: { type: "string", pattern: "^[A-Z]{3}$", optional: true },
        tenant_id: { type: "string", min: 1, max: 200 },
        deployment_id: { ...UUID_PARAM, optional: true, nullable: true },
        saga_id: { type: "string", min: 1, max: 200, optional: true, nullable: true },
      },
      async handler(this: any, ctx: ActionCtx<RegisterParams>) {
        const user = currentUser(ctx);
        const p = ctx.params;
        if (!visibleTo(user, p.tenant_id)) throw invalid("'tenant_id' must be your own tenant", [{ field: "tenant_id" }]);
        // The price lookup is a provider call: made before, never inside, the transaction.
        let cost = p.monthly_cost_cents;
        if (cost === undefined) {
          cost = await provider(() => this.sizes.monthlyCents(p.size_slug) as Promise<number | undefined>);
          if (cost === undefined) throw invalid(`Unknown size '${p.size_slug}': the provider lists no price for it`, [{ field: "size_slug", type: "unknown_size" }]);
        }
        const input = { ...p, monthly_cost_cents: cost, provider: p.provider ?? "digitalocean" };
        // The saga's first register is one statement; a repeat (the row exists) takes the locked compare-and-update below.
        const inserted = await this.insertNew(ctx, input).catch((err: Error) => mapDbError(err));
        if (inserted) {
          const dto = resourceDto(inserted);
          ctx.emit("inventory.registered", { resource: dto });
          return { resource: dto, created: true };
        }
        // A concurrent register of the same resource loses the insert race once, then updates the winner's row.
        for (let attempt = 0; ; attempt++) {
          try {
            const { row, created, changed } = await emOf(ctx).fork().transactional((em) => this.upsert(em as EntityManager, input));
            const dto = resourceDto(row);
            if (created || changed) ctx.emit(created ? "inventory.registered" : "inventory.updated", { resource: dto });
            return { resource: dto, created };
          } catch (err) {
            if (attempt === 0 && err instanceof UniqueConstraintViolationException) continue;
            mapDbError(err);
          }
        }
      },
    },

    /** Links a resource to a deployment. Linking again to the same deployment changes nothing. */
    link: {
      access: "scoped",
      visibility: "public",
      params: { ...REF_PARAMS, deployment_id: UUID_PARAM },
      async handler(this: any, ctx: ActionCtx<LinkParams>) {
        // The saga's link (by id, of an unlinked live resource the caller may see) is one update ... returning; any
        // other case (a repeat, a conflict, an external_id) is decided on the locked row below, as before.
        if (ctx.params.id && UUID.test(ctx.params.id)) {
          const user = currentUser(ctx);
          const [row] = await emOf(ctx).execute(
            `update cloud_resources set deployment_id = ?, updated_at = ?, version = version + 1
             where id = ? and deployment_id is null and status <> 'destroyed'${user.operator ? "" : " and tenant_id = ?"} returning *`,
            [ctx.params.deployment_id, new Date(), ctx.params.id, ...(user.operator ? [] : [user.tenant_id])],
          );
          if (row) {
            const dto = resourceDto(row as CloudResource);
            ctx.emit("inventory.linked", { resource: dto });
            return { resource: dto, changed: true };
          }
        }
        return this.mutate(ctx, ctx.params, (r: CloudResource) => {
          if (r.deployment_id === ctx.params.deployment_id) return false;
          if (r.deployment_id) throw conflict(`Cloud resource ${r.id} is linked to deployment ${r.deployment_id}; unlink it first`, "ALREADY_LINKED", { id: r.id, deployment_id: r.deployment_id });
          if (r.status === "destroyed") throw conflict(`Cloud resource ${r.id} is destroyed`, "RESOURCE_DESTROYED", { id: r.id });
          r.deployment_id = ctx.params.deployment_id;
          return "inventory.linked";
        });
      },
    },

    /** Clears the deployment link; a no-op when there is none (or, with `deployment_id`, when it is another one). */
    unlink: {
      access: "scoped",
      visibility: "public",
      params: { ...REF_PARAMS, deployment_id: { ...UUID_PARAM, optional: true } },
      async handler(this: any, ctx: ActionCtx<UnlinkParams>) {
        return this.mutate(ctx, ctx.params, (r: CloudResource) => {
          if (!r.deployment_id) return false;
          if (ctx.params.deployment_id && r.deployment_id !== ctx.params.deployment_id) return false;
          r.deployment_id = null;
          return "inventory.unlinked";
        });
      },
    },

    /** Status `destroyed` and `destroyed_at`, once; everything else (the link included) is kept for history. */
    markDestroyed: {
      access: "scoped",
      visibility: "public",
      params: REF_PARAMS,
      async handler(this: any, ctx: ActionCtx<ResourceRef>) {
        return this.mutate(ctx, ctx.params, (r: CloudResource, now: Date) => {
          if (r.status === "destroyed" && r.destroyed_at) return false;
          r.status = "destroyed";
          r.destroyed_at = now;
          return "inventory.destroyed";
        });
      },
    },

    list: {
      access: "scoped",
      params: {
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        deployment_id: { ...UUID_PARAM, optional: true },
        saga_id: { type: "string", min: 1, max: 200, optional: true },
        status: { type: "enum", values: RESOURCE_STATUSES, optional: true },
        include_destroyed: { type: "boolean", convert: true, optional: true },
        ...PAGE_PARAMS,
      },
      async handler(ctx: ActionCtx<ListParams>): Promise<Page<ResourceDto>> {
        const user = currentUser(ctx);
        const p = ctx.params;
        const limit = p.limit ?? 50;
        const tenant = listTenant(user, p.tenant_id);
        if (tenant === null) return { items: [], next_cursor: null };
        const where: Record<string, unknown> = {};
        if (tenant) where.tenant_id = tenant;
        if (p.deployment_id) where.deployment_id = p.deployment_id;
        if (p.saga_id) where.saga_id = p.saga_id;
        if (p.status) where.status = p.status;
        // Destroyed resources are history: listed only when asked for.
        else if (!p.include_destroyed) where.status = { $ne: "destroyed" };
        Object.assign(where, keysetBeforeWhere(p.cursor, "inserted_at"));
        const rows = await emOf(ctx).find(CloudResource, where as any, { orderBy: [{ inserted_at: "desc" }, { id: "desc" }] as any, limit: limit + 1 });
        const page = pageOf(rows, limit, (r) => ({ time: r.inserted_at, id: r.id }));
        return { items: page.items.map(resourceDto), next_cursor: page.next_cursor };
      },
    },

    get: {
      access: "scoped",
      params: { id: { type: "string", optional: true }, external_id: REF_PARAMS.external_id, provider: REF_PARAMS.provider },
      async handler(this: any, ctx: ActionCtx<ResourceRef>) {
        const user = currentUser(ctx);
        const r = await this.findRef(emOf(ctx), ctx.params);
        if (!r || !visibleTo(user, r.tenant_id)) throw notFound("Cloud resource", ctx.params.id ?? ctx.params.external_id);
        return { resource: resourceDto(r) };
      },
    },

    // ---- the provider side: droplets, for the provisioning saga (operators and the system user only) ----
    createDroplet: {
      access: "internal",
      visibility: "public",
      params: {
        name: { type: "string", min: 1, max: 255 },
        region: { type: "string", min: 1, max: 64 },
        size: { type: "string", min: 1, max: 100 },
        image: { type: "string", min: 1, max: 200 },
        tags: { type: "array", items: "string", max: 50, optional: true },
        user_data: { type: "string", max: 65_536, optional: true },
      },
      async handler(this: any, ctx: ActionCtx<CreateDropletInput>) {
        // Never retried here: a create in doubt is settled by the caller looking the saga's tag up.
        const res = await provider(() => this.doClient.createDroplet(ctx.params) as Promise<CreateDropletResult>);
        return { droplet: dropletDto(res.droplet) };
      },
    },
    getDroplet: {
      access: "internal",
      visibility: "public",
      params: { id: { type: "number", integer: true, convert: true } },
      async handler(this: any, ctx: ActionCtx<{ id: number }>) {
        return { droplet: dropletDto(await provider(() => this.doClient.getDroplet(ctx.params.id) as Promise<Droplet>)) };
      },
    },
    dropletsByTag: {
      access: "internal",
      visibility: "public",
      params: { tag: { type: "string", min: 1, max: 255 } },
      async handler(this: any, ctx: ActionCtx<{ tag: string }>) {
        const droplets: Droplet[] = await provider(() => this.doClient.listDropletsByTag(ctx.params.tag));
        return { droplets: droplets.map(dropletDto) };
      },
    },
    destroyDroplet: {
      access: "internal",
      visibility: "public",
      params: { id: { type: "number", integer: true, convert: true } },
      async handler(this: any, ctx: ActionCtx<{ id: number }>) {
        return { destroyed: await provider(() => this.doClient.deleteDroplet(ctx.params.id) as Promise<boolean>) };
      },
    },
  },

  events: {
    /** Rollback of a provisioning saga: destroy its droplets (by tag), mark the resource destroyed, unlink it. */
    "provisioning.compensate.inventory": compensationHandler(async function (this: any, req, ctx) {
      const meta = { user: systemUser("provisioning") };
      const ref = req.resource_id ? { id: req.resource_id } : req.droplet_id ? { external_id: String(req.droplet_id) } : null;
      const ignoreAbsent = (err: any) => {
        if (err?.code !== 404) throw err;
      };
      if (req.op === "destroyDroplets") {
        if (!req.tag) return;
        const tag = req.tag as string;
        await provider(() => this.doClient.deleteDropletsByTag(tag));
        const left: Droplet[] = await provider(() => this.doClient.listDropletsByTag(tag));
        if (left.length) throw new Error(`${left.length} droplet(s) tagged ${tag} still exist`);
        // Rows registered for these droplets are gone with them.
        if (req.droplet_id) await ctx.call("v1.inventory.markDestroyed", { external_id: String(req.droplet_id) }, { meta }).catch(ignoreAbsent);
      } else if (req.op === "markDestroyed") {
        if (ref) await ctx.call("v1.inventory.markDestroyed", ref, { meta }).catch(ignoreAbsent);
      } else if (req.op === "unlink") {
        if (ref) await ctx.call("v1.inventory.unlink", { ...ref, deployment_id: req.deployment_id }, { meta }).catch(ignoreAbsent);
      } else if (req.op === "restoreDroplets") {
        await restoreDroplets.call(this, req.droplets as DropletSnapshot[], ctx); // a resize saga's undo
      } else {
        throw new Error(`unknown inventory compensation '${req.op}'`);
      }
    }),
  },

  methods: {
    async findRef(em: EntityManager, ref: ResourceRef, lock = false): Promise<CloudResource | null> {
      const opts = lock ? { lockMode: LockMode.PESSIMISTIC_WRITE } : {};
      if (ref.id) return UUID.test(ref.id) ? em.findOne(CloudResource, { id: ref.id }, opts) : null;
      if (ref.external_id) return em.findOne(CloudResource, { provider: ref.provider ?? "digitalocean", external_id: String(ref.external_id) }, opts);
      throw invalid("Give the resource's 'id' or its 'external_id'", [{ field: "id", type: "required" }]);
    },

    /** A resource not registered yet, inserted in one statement; null when (provider, external_id) exists. */
    async insertNew(ctx: ActionCtx<unknown>, p: RegisterParams & { monthly_cost_cents: number; provider: string }): Promise<CloudResource | null> {
      const now = new Date();
      const [row] = await emOf(ctx).execute(
        `insert into cloud_resources (id, provider, kind, external_id, name, region, size_slug, ipv4, status, tags, monthly_cost_cents, currency,
           tenant_id, deployment_id, saga_id, inserted_at, updated_at, destroyed_at, version)
         values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?::text[], ?, ?, ?, ?, ?, ?, ?, null, 1)
         on conflict (provider, external_id) do nothing returning *`,
        [randomUUID(), p.provider, p.kind ?? "droplet", String(p.external_id), p.name, p.region, p.size_slug, p.ipv4 ?? null, p.status ?? "new",
          pgArray(p.tags ?? []), p.monthly_cost_cents, p.currency ?? "USD", p.tenant_id, p.deployment_id ?? null, p.saga_id ?? null, now, now],
      );
      return (row as CloudResource | undefined) ?? null;
    },

    async upsert(em: EntityManager, p: RegisterParams & { monthly_cost_cents: number; provider: string }) {
      const now = new Date();
      const existing = await em.findOne(CloudResource, { provider: p.provider as any, external_id: p.external_id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
      if (!existing) {
        const row = em.create(CloudResource, {
          id: randomUUID(),
          provider: p.provider,
          kind: p.kind ?? "droplet",
          external_id: p.external_id,
          name: p.name,
          region: p.region,
          size_slug: p.size_slug,
          ipv4: p.ipv4 ?? null,
          status: p.status ?? "new",
          tags: p.tags ?? [],
          monthly_cost_cents: p.monthly_cost_cents,
          currency: p.currency ?? "USD",
          tenant_id: p.tenant_id,
          deployment_id: p.deployment_id ?? null,
          saga_id: p.saga_id ?? null,
          inserted_at: now,
          updated_at: now,
          destroyed_at: null,
        } as any);
        await em.flush();
        return { row, created: true, changed: true };
      }
      if (existing.tenant_id !== p.tenant_id)
        throw conflict(`Resource ${p.provider}/${p.external_id} is registered to another tenant`, "RESOURCE_TENANT_MISMATCH", { provider: p.provider, external_id: p.external_id });
      const patch: Partial<CloudResource> = { name: p.name, region: p.region, size_slug: p.size_slug, monthly_cost_cents: p.monthly_cost_cents };
      if (p.ipv4 !== undefined) patch.ipv4 = p.ipv4;
      if (p.tags !== undefined) patch.tags = p.tags;
      if (p.currency !== undefined) patch.currency = p.currency;
      if (p.saga_id !== undefined) patch.saga_id = p.saga_id;
      if (p.deployment_id !== undefined) patch.deployment_id = p.deployment_id;
      // destroyed is terminal: a late register (a retried step) does not bring a resource back.
      if (p.status !== undefined && existing.status !== "destroyed") patch.status = p.status;
      const changed = Object.entries(patch).some(([k, v]) => JSON.stringify((existing as any)[k] ?? null) !== JSON.stringify(v ?? null));
      if (changed) {
        em.assign(existing, { ...patch, updated_at: now } as any);
        await em.flush();
      }
      return { row: existing, created: false, changed };
    },

    /** Loads the resource under a row lock, applies `change` (false: nothing to do; else the event to emit), commits. */
    async mutate(ctx: ActionCtx<ResourceRef>, ref: ResourceRef, change: (r: CloudResource, now: Date) => string | false) {
      const user = currentUser(ctx);
      let event: string | false = false;
      let row!: CloudResource;
      try {
        await emOf(ctx).fork().transactional(async (em) => {
          const r = await this.findRef(em, ref, true);
          if (!r || !visibleTo(user, r.tenant_id)) throw notFound("Cloud resource", ref.id ?? ref.external_id);
          const now = new Date();
          event = change(r, now);
          if (event) {
            r.updated_at = now;
            await em.flush();
          }
          row = r;
        });
      } catch (err) {
        mapDbError(err);
      }
      const dto = resourceDto(row);
      if (event) ctx.emit(event, { resource: dto });
      return { resource: dto, changed: !!event };
    },
  },
};

export default InventoryService;