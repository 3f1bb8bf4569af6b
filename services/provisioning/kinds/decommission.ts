import { step, type SagaKind } from "../engine";
import { deploymentTag, isGone, liveDroplets, observedRuntime, setRuntime, type KindEnv } from "./common";

/*
 * decommission (SPEC §2 "archived", §7): forward only, every step idempotent; nothing of the deployment is left at
 * the provider. A failing step is retried with backoff, then the saga ends `failed` (runtime as observed).
 *
 *   step                      forward
 *   set_runtime_destroying    v1.deployments.setRuntime (destroying)
 *   destroy_droplets          v1.inventory.destroyByTag (deployment-<id>), v1.inventory.destroyDroplet per live
 *                             inventory row (droplets of older sagas), then v1.inventory.dropletsByTag must be empty
 *   remove_dns                v1.dns.remove (record deleted at the provider and locally)
 *   mark_inventory_destroyed  v1.inventory.markDestroyed per live row
 *   cancel_subscription       v1.subscriptions.setStatus cancelled
 *   set_runtime_destroyed     v1.deployments.setRuntime (destroyed)
 */
export const decommission: SagaKind<KindEnv> = {
  kind: "decommission",
  onFailure: "forward",
  steps: [
    step("set_runtime_destroying", "v1.deployments.setRuntime", async (ctx) => void (await setRuntime(ctx, "destroying"))),

    step("destroy_droplets", "v1.inventory.destroyByTag", async (ctx) => {
      const tag = deploymentTag(ctx.saga.deployment_id);
      await ctx.call("v1.inventory.destroyByTag", { tag });
      const ids: number[] = [];
      for (const r of await liveDroplets(ctx)) {
        const id = Number(r.external_id);
        ids.push(id);
        // Absent already (destroyed by tag, or by someone else) is what we want.
        await ctx.call("v1.inventory.destroyDroplet", { id }).catch((err: any) => {
          if (!isGone(err)) throw err;
        });
      }
      const { droplets } = await ctx.call("v1.inventory.dropletsByTag", { tag });
      if (droplets.length) throw new Error(`${droplets.length} droplet(s) tagged ${tag} still exist`);
      return { tag, droplet_ids: ids };
    }),

    step("remove_dns", "v1.dns.remove", async ({ call, saga }) => {
      const { dns_record, changed } = await call("v1.dns.remove", { deployment_id: saga.deployment_id });
      return { fqdn: dns_record?.fqdn ?? null, removed: changed };
    }),

    step("mark_inventory_destroyed", "v1.inventory.markDestroyed", async (ctx) => {
      const ids: string[] = [];
      for (const r of await liveDroplets(ctx)) {
        await ctx.call("v1.inventory.markDestroyed", { id: r.id });
        ids.push(r.id);
      }
      return { resource_ids: ids };
    }),

    step("cancel_subscription", "v1.subscriptions.setStatus", async (ctx) => {
      await ctx.call("v1.subscriptions.setStatus", { deployment_id: ctx.saga.deployment_id, status: "cancelled" });
      return {};
    }),

    // hostname is "its DNS name once pointed" (SPEC §2): remove_dns deleted the record, so nothing points there now.
    step("set_runtime_destroyed", "v1.deployments.setRuntime", async (ctx) => void (await setRuntime(ctx, "destroyed", { droplet_id: null, ipv4: null, hostname: null }))),
  ],
  async onEnd(ctx, status) {
    if (status === "failed") await setRuntime(ctx, await observedRuntime(ctx, "destroyed"));
  },
};
