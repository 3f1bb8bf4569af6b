import { LockMode } from "@mikro-orm/core";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { ServiceSchema } from "moleculer";
import { Deployment } from "../../entities/deployment";
import { emOf } from "../../lib/db";
import { notFound } from "../../lib/errors";
import { hasLiveDroplet, wantsPower } from "../../lib/lifecycle";
import type { ActionCtx } from "../../lib/access";
import type { SagaRequestRow } from "./saga-requests";

/** v1.deployments.requestResize: what the subscriptions service asks after a plan change to another size. */
export interface RequestResizeParams {
  id: string;
  /** The resize saga's input: {size, plan_change: {subscription_id, from_plan_version_id, to_plan_version_id}}. */
  input: { size: string; [k: string]: unknown };
  requested_by: string;
}

/*
 * A plan change to another droplet size (SPEC §3) resizes the deployment's live droplets through a `resize` saga.
 * It is requested here, like every other saga of a deployment, so it is durable (services/deployments/README.md:
 * saga-start requests) and ordered with the deployment's moves. The resize kind powers the droplets on at the end;
 * a deployment whose state wants them off (paused, suspended, cancelled) gets a power_off requested right after it.
 */
export const ResizeRequestMixin: Partial<ServiceSchema> = {
  actions: {
    requestResize: {
      visibility: "public",
      access: "internal",
      params: { id: "uuid", input: { type: "object", props: { size: { type: "string", min: 1, max: 100 } } }, requested_by: { type: "string", min: 1, max: 200 } },
      async handler(this: any, ctx: ActionCtx<RequestResizeParams>) {
        const p = ctx.params;
        const requests = await emOf(ctx).transactional(async (em: EntityManager) => {
          const d = await em.findOne(Deployment, { id: p.id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (!d) throw notFound("Deployment", p.id);
          // No droplet (and none being made): the next provisioning takes the new size from the plan.
          if (!hasLiveDroplet(d.runtime_status) && d.state !== "provisioning") return [];
          const rows: SagaRequestRow[] = [await this.requestSaga(em, d, "resize", p.input, p.requested_by)];
          if (wantsPower(d.state) === false) rows.push(await this.requestSaga(em, d, "power_off", { from_state: d.state, to_state: d.state, slug: d.slug, requested_by: p.requested_by }, p.requested_by));
          return rows;
        });
        return { saga: requests.length ? await this.sagaOf(ctx, requests[0]) : null };
      },
    },
  },
};
