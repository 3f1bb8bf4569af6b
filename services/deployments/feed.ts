import type { ServiceSchema } from "moleculer";
import { emOf } from "../../lib/db";
import type { ActionCtx } from "../../lib/access";
import { isoSql } from "../../lib/dto";
import { eventDto, type DeploymentDto } from "../deployments.service";

export interface EventsSinceParams {
  since: string;
  after_id?: number;
  limit?: number;
}
export interface EventsSinceResult {
  items: { deployment: DeploymentDto; event: ReturnType<typeof eventDto> }[];
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
      params: {
        since: { type: "date", convert: true },
        after_id: { type: "number", integer: true, min: 0, convert: true, optional: true },
        limit: { type: "number", integer: true, min: 1, max: 500, convert: true, optional: true },
      },
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
  },
};
