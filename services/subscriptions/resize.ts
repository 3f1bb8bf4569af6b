import { randomUUID } from "node:crypto";
import { LockMode } from "@mikro-orm/core";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { ServiceSchema } from "moleculer";
import { PlanVersion } from "../../entities/catalog";
import { Subscription, SubscriptionChange } from "../../entities/subscription";
import { callAsSystem, systemUser, type ActionCtx } from "../../lib/access";
import { compensationHandler } from "../../lib/compensation";

/*
 * A plan change whose new version has another droplet_size resizes the deployment's live droplets (SPEC §3) through
 * a `resize` saga (services/provisioning/kinds/resize.ts), requested from the deployments service like every saga
 * of a deployment (v1.deployments.requestResize: durable, ordered with its moves). When the saga fails it rolls
 * the droplets back and then asks for the plan change to be undone (`provisioning.compensate.subscriptions`, op
 * `revertPlanChange`): the subscription moves back to the version it was on, recorded as a plan change by
 * `system:provisioning`. docs/catalog.md.
 */

export interface PlanChange {
  subscription_id: string;
  from_plan_version_id: string;
  to_plan_version_id: string;
}

/**
 * After a committed plan change: the resize saga when the size moves (null when it does not, or when the
 * deployment has no droplet). If the request cannot be made, the plan change is reverted and the error thrown:
 * what is sold and what runs never part.
 */
export async function resizeAfterPlanChange(ctx: ActionCtx<unknown>, em: EntityManager, s: Subscription, from: PlanVersion, to: PlanVersion, requestedBy: string): Promise<unknown> {
  if (from.droplet_size === to.droplet_size) return null;
  const change: PlanChange = { subscription_id: s.id, from_plan_version_id: from.id, to_plan_version_id: to.id };
  try {
    const { saga } = await callAsSystem<{ saga: unknown }>(ctx, "subscriptions", "v1.deployments.requestResize", {
      id: s.deployment_id, input: { size: to.droplet_size, from_size: from.droplet_size, plan_change: change }, requested_by: requestedBy,
    });
    return saga;
  } catch (err) {
    await revertPlanChange(em.fork(), change, requestedBy);
    throw err;
  }
}

/** Moves the subscription back to `from` if it is still on `to` (a later change stays), recorded. Idempotent. */
export async function revertPlanChange(em: EntityManager, c: PlanChange, actor: string): Promise<boolean> {
  return em.transactional(async (tx) => {
    const s = await tx.findOne(Subscription, { id: c.subscription_id }, { lockMode: LockMode.PESSIMISTIC_WRITE });
    if (!s || s.plan_version_id !== c.to_plan_version_id) return false;
    const from = await tx.findOneOrFail(PlanVersion, { id: c.from_plan_version_id });
    const now = new Date();
    tx.create(SubscriptionChange, { id: randomUUID(), subscription_id: s.id, from_plan_version_id: s.plan_version_id, to_plan_version_id: from.id, actor, occurred_at: now });
    s.plan_code = from.plan_code;
    s.plan_version_id = from.id;
    s.updated_at = now;
    await tx.flush();
    return true;
  });
}

export const ResizeRevertMixin: Partial<ServiceSchema> = {
  events: {
    "provisioning.compensate.subscriptions": compensationHandler(async function (this: any, req) {
      if (req.op !== "revertPlanChange") throw new Error(`unknown subscriptions compensation '${req.op}'`);
      await revertPlanChange(this.orm.em.fork(), req as unknown as PlanChange, systemUser("provisioning").sub);
    }),
  },
};
