import type { ServiceSchema } from "moleculer";
import { emOf } from "../../lib/db";
import type { ActionCtx } from "../../lib/access";
import { isoSql } from "../../lib/dto";
import { feedParams } from "../../lib/params";
import { eventDto, type DeploymentDto } from "../deployments.service";
import type { RuntimeChangedEvent } from "./lifecycle";

export interface EventsSinceParams {
  since: string;
  after_id?: number;
  limit?: number;
}
export interface EventsSinceResult {
  items: { deployment: DeploymentDto; event: ReturnType<typeof eventDto> }[];
}
export interface RuntimeSinceParams {
  since: string;
  after_id?: number;
  limit?: number;
}
/** Each item is the deployments.runtime_changed payload the change was (or would have been) broadcast with. */
export interface RuntimeSinceResult {
  items: (RuntimeChangedEvent & { event_id: number })[];
}

/**
 * The deployment_events outbox read as a feed, for consumers that must not miss an event emitted while none of
 * their nodes was up (the webhooks service's catch-up): events that occurred at or after `since`, by id, each with
 * the deployment as it is now — the same `{deployment, event}` payload as deployments.created/transitioned.
 */
export const DeploymentFeedMixin: Partial<ServiceSchema> = {
  actions: {
    eventsSince: {
      visibility: "public",
      access: "internal",
      params: feedParams(500),
      async handler(this: any, ctx: ActionCtx<EventsSinceParams>): Promise<EventsSinceResult> {
        const em = emOf(ctx);
        const rows = await em.getConnection().execute(
          `select id, deployment_id, from_state, to_state, reason, actor, notes, ${isoSql("occurred_at")} as occurred_at from deployment_events
           where occurred_at >= ? and id > ? order by id limit ?`,
          [ctx.params.since, ctx.params.after_id ?? 0, ctx.params.limit ?? 200],
        );
        if (!rows.length) return { items: [] };
        const ids = [...new Set(rows.map((r: any) => r.deployment_id))];
        const deployments: DeploymentDto[] = await this.readDeployments(em, `where id in (${ids.map(() => "?").join(",")})`, ids);
        const byId = new Map(deployments.map((d) => [d.id, d]));
        return { items: rows.filter((r: any) => byId.has(r.deployment_id)).map((r: any) => ({ deployment: byId.get(r.deployment_id)!, event: eventDto(r) })) };
      },
    },

    /**
     * The runtime changes outbox (deployment_runtime_events, written in the transaction of the change) as a feed:
     * changes that occurred at or after `since`, in id order after `after_id`. Paged by the caller with after_id.
     */
    runtimeSince: {
      visibility: "public",
      access: "internal",
      params: feedParams(500),
      async handler(ctx: ActionCtx<RuntimeSinceParams>): Promise<RuntimeSinceResult> {
        const rows = await emOf(ctx).getConnection().execute(
          `select id, deployment_id, tenant_id, status, droplet_id, ipv4, hostname, ${isoSql("occurred_at")} as occurred_at from deployment_runtime_events
           where occurred_at >= ? and id > ? order by id limit ?`,
          [ctx.params.since, ctx.params.after_id ?? 0, ctx.params.limit ?? 200],
        );
        return {
          items: rows.map((r: any) => ({
            deployment_id: r.deployment_id,
            tenant_id: r.tenant_id,
            runtime: { status: r.status, droplet_id: r.droplet_id == null ? null : Number(r.droplet_id), ipv4: r.ipv4 ?? null, hostname: r.hostname ?? null },
            occurred_at: r.occurred_at,
            event_id: Number(r.id),
          })),
        };
      },
    },
  },
};
