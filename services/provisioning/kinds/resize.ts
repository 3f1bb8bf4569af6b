import { StepResponse, step, undo, type SagaKind } from "../engine";
import { liveDroplets, observedRuntime, setRuntime, type Ctx, type KindEnv } from "./common";
import { actionsFor, powerSteps } from "./power";

/*
 * resize (SPEC §3): a plan change to another droplet size. Power off, resize, power on; inventory's size (and so its
 * monthly cost) follows. A failure anywhere puts every droplet back as it was — size and power — through the one
 * undo on the first step, which recorded what "as it was" is.
 *
 *   step                     forward                                            undo (owner: op ← input)
 *   snapshot_droplets        v1.inventory.forDeployment, getDroplet            inventory: restoreDroplets ← each droplet's size, status, row
 *   set_runtime_stopping     v1.deployments.setRuntime (stopping)              —
 *   power_off_droplets       dropletAction power_off, getAction                —
 *   resize_droplets          dropletAction resize {size}, getAction            —
 *   update_inventory_size    v1.inventory.updateResource size_slug             —
 *   set_runtime_starting     v1.deployments.setRuntime (starting)              —
 *   power_on_droplets        dropletAction power_on, getAction                 —
 *   update_inventory         v1.inventory.updateResource status active         —
 *   set_runtime_running      v1.deployments.setRuntime (running)               —
 *
 * Input: {size} (and `disk: true` to grow the disk too, which cannot be undone).
 */
const [setStopping, powerOffDroplets] = powerSteps("power_off");
const [setStarting, powerOnDroplets, updateStatus, setRunning] = powerSteps("power_on");

export const resize: SagaKind<KindEnv> = {
  kind: "resize",
  onFailure: "compensate",
  steps: [
    step("snapshot_droplets", "v1.inventory.forDeployment",
      async (ctx) => {
        const droplets = [];
        for (const r of await liveDroplets(ctx)) {
          const { droplet } = await ctx.call("v1.inventory.getDroplet", { id: Number(r.external_id) });
          droplets.push({ droplet_id: droplet.id as number, resource_id: r.id, size_slug: droplet.size_slug as string, status: droplet.status as string });
        }
        return new StepResponse({ droplet_ids: droplets.map((d) => d.droplet_id), sizes: droplets.map((d) => d.size_slug) }, { droplets });
      },
      undo("inventory", "restoreDroplets")),
    setStopping,
    powerOffDroplets,
    step("resize_droplets", "v1.inventory.dropletAction", async (ctx) => {
      const { size, disk } = ctx.input as { size: string; disk?: boolean };
      return actionsFor(ctx as Ctx, "resize", (d) => d.size_slug === size, { size, ...(disk ? { disk: true } : {}) });
    }),
    step("update_inventory_size", "v1.inventory.updateResource", async (ctx) => {
      const size = (ctx.input as { size: string }).size;
      const ids: string[] = [];
      for (const r of await liveDroplets(ctx)) {
        await ctx.call("v1.inventory.updateResource", { id: r.id, size_slug: size });
        ids.push(r.id);
      }
      return { resource_ids: ids, size_slug: size };
    }),
    setStarting,
    powerOnDroplets,
    updateStatus,
    setRunning,
  ],
  async onEnd(ctx, status) {
    if (status !== "succeeded") await setRuntime(ctx, await observedRuntime(ctx, "none"));
  },
};
