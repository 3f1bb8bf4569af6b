import { Errors, type ServiceSchema } from "moleculer";
import type { DeploymentState } from "../../entities/deployment";
import { SUBSCRIPTION_STATUSES } from "../../entities/subscription";
import type { ActionCtx } from "../../lib/access";
import { emOf } from "../../lib/db";
import { notBillable, subscriptionStatusFor } from "../../lib/lifecycle";
import type { DeploymentDto } from "../deployments.service";

/*
 * A subscription's status follows its deployment's state (SPEC §2 table, §3). deployments.transitioned is at least
 * once and, after the outbox sweep re-publishes, possibly out of order: each subscription keeps the id of the last
 * event it applied and ignores older ones. v1.subscriptions.setStatus is the sagas' direct way (decommission
 * cancels the subscription) and is idempotent.
 */

export type SubscriptionStatus = (typeof SUBSCRIPTION_STATUSES)[number];
export interface SetStatusParams {
  deployment_id: string;
  status: SubscriptionStatus;
}
interface TransitionedEvent {
  deployment: { id: string };
  event: { id: number; deployment_id: string; to_state: DeploymentState };
}

export const SubscriptionStatusMixin: Partial<ServiceSchema<any>> = {
  actions: {
    setStatus: {
      access: "internal",
      visibility: "public",
      params: { deployment_id: { type: "uuid" }, status: { type: "enum", values: SUBSCRIPTION_STATUSES } },
      async handler(this: any, ctx: ActionCtx<SetStatusParams>) {
        const p = ctx.params;
        await emOf(ctx).getConnection().execute(
          "update subscriptions set status = ?, updated_at = now(), version = version + 1 where deployment_id = ? and status <> ?",
          [p.status, p.deployment_id, p.status],
        );
        return { subscription: await this.readSubscription(emOf(ctx), "s.deployment_id = ?", [p.deployment_id]) };
      },
    },
  },

  events: {
    "deployments.transitioned": {
      async handler(this: any, ctx: { params: TransitionedEvent }) {
        const e = ctx.params?.event;
        if (!e || typeof e.id !== "number") return;
        const status = subscriptionStatusFor(e.to_state);
        if (!status) return;
        try {
          await this.applyEventStatus(e.deployment_id, status, e.id);
        } catch (err) {
          this.logger.warn({ deployment_id: e.deployment_id, event_id: e.id, err: (err as Error).message }, "subscription status not updated");
        }
      },
    },
  },

  methods: {
    /** Only an event newer than the last one applied moves the status (a re-published older one does nothing). */
    async applyEventStatus(deploymentId: string, status: SubscriptionStatus, eventId: number) {
      return this.orm.em.fork().getConnection().execute(
        `update subscriptions set status = ?, status_event_id = ?, updated_at = now(), version = version + 1
         where deployment_id = ? and (status_event_id is null or status_event_id < ?)`,
        [status, eventId, deploymentId, eventId],
      );
    },

    /** The deployment (scoped: another tenant's is 404) if it may be billed; 409 DEPLOYMENT_NOT_BILLABLE otherwise. */
    async billableDeployment(ctx: ActionCtx<unknown>, id: string): Promise<DeploymentDto> {
      const d: DeploymentDto = await this.deploymentFor(ctx, id);
      if (notBillable(d.state)) throw new Errors.MoleculerClientError(`Deployment ${d.id} is ${d.state}: it cannot be subscribed or billed`, 409, "DEPLOYMENT_NOT_BILLABLE", { state: d.state });
      return d;
    },
  },
};
