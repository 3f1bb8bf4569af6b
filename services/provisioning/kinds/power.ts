import { isTransient, step, type SagaKind, type StepDef } from "../engine";
import { liveDroplets, observedRuntime, setRuntime, waitAction, type Ctx, type KindEnv, type RuntimeStatus } from "./common";

/*
 * power_off / power_on (SPEC §2, §7): forward only, every step idempotent; a failing step is retried with
 * backoff, then the saga ends `failed` with the runtime set to what the provider reports.
 *
 *   step                   forward
 *   set_runtime_<moving>   v1.deployments.setRuntime (stopping | starting)
 *   <type>_droplets        per live droplet (v1.inventory.forDeployment): skip when the provider already reports the
 *                          target status, else v1.inventory.dropletAction, then v1.inventory.getAction until completed
 *   update_inventory       v1.inventory.updateResource status ← what the provider reports (off | active)
 *   set_runtime_<done>     v1.deployments.setRuntime (stopped | running)
 */
export function powerSteps(type: "power_off" | "power_on"): StepDef<KindEnv>[] {
  const target = type === "power_off" ? "off" : "active";
  const [moving, done]: RuntimeStatus[] = type === "power_off" ? ["stopping", "stopped"] : ["starting", "running"];
  return [
    step(`set_runtime_${moving}`, "v1.deployments.setRuntime", async (ctx) => void (await setRuntime(ctx, moving))),
    step(`${type}_droplets`, "v1.inventory.dropletAction", (ctx) => actionsFor(ctx, type, (d) => d.status === target)),
    step("update_inventory", "v1.inventory.updateResource", async (ctx) => {
      const ids: string[] = [];
      for (const r of await liveDroplets(ctx)) {
        const { droplet } = await ctx.call("v1.inventory.getDroplet", { id: Number(r.external_id) });
        if (droplet.status !== target) throw new Error(`droplet ${r.external_id} is ${droplet.status}, not ${target}`);
        await ctx.call("v1.inventory.updateResource", { id: r.id, status: droplet.status });
        ids.push(r.id);
      }
      return { resource_ids: ids, status: target };
    }),
    step(`set_runtime_${done}`, "v1.deployments.setRuntime", async (ctx) => void (await setRuntime(ctx, done))),
  ];
}

function powerKind(type: "power_off" | "power_on"): SagaKind<KindEnv> {
  return {
    kind: type,
    onFailure: "forward",
    steps: powerSteps(type),
    async onEnd(ctx, status) {
      if (status === "failed") await setRuntime(ctx, await observedRuntime(ctx, "none"));
    },
  };
}

/**
 * One droplet action of `type` per live droplet not yet `done`. The action id is recorded (`action_<droplet id>`)
 * before it is waited on: a resumed step waits on that action instead of sending another (an errored one is sent
 * again, which is what a retry is for).
 */
export async function actionsFor(ctx: Ctx, type: "power_off" | "power_on" | "resize", done: (droplet: { status: string; size_slug: string }) => boolean, extra: Record<string, unknown> = {}) {
  const out: Record<string, unknown> = { ...(ctx.step.output ?? {}) };
  const ids: number[] = [];
  for (const r of await liveDroplets(ctx)) {
    const id = Number(r.external_id);
    ids.push(id);
    const { droplet } = await ctx.call("v1.inventory.getDroplet", { id });
    if (done(droplet)) continue;
    let actionId = typeof out[`action_${id}`] === "number" ? (out[`action_${id}`] as number) : null;
    if (actionId !== null) {
      const { action } = await ctx.call("v1.inventory.getAction", { id: actionId }).catch(() => ({ action: { status: "errored" } }));
      if (action.status === "errored") actionId = null;
    }
    // In doubt (a crash before the id was recorded, a lost answer): the provider's own list of the droplet's actions
    // tells whether one of this type is still under way — it is waited on, not sent again.
    const inFlight = async (): Promise<number | null> => {
      const { actions } = await ctx.call("v1.inventory.dropletActions", { id });
      const found = (actions as { id: number; type: string; status: string }[]).find((a) => a.type === type && a.status === "in-progress");
      return found ? found.id : null;
    };
    if (actionId === null) actionId = await inFlight();
    if (actionId === null) {
      try {
        actionId = (await ctx.call("v1.inventory.dropletAction", { id, type, ...extra })).action.id as number;
      } catch (err) {
        if (!isTransient(err) || (actionId = await inFlight()) === null) throw err;
      }
    }
    if (out[`action_${id}`] !== actionId) {
      out[`action_${id}`] = actionId;
      await ctx.recordIntent({ [`action_${id}`]: actionId });
    }
    await waitAction(ctx, actionId!);
  }
  return { ...out, droplet_ids: ids };
}

export const powerOff = powerKind("power_off");
export const powerOn = powerKind("power_on");
