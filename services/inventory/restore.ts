import type { Context } from "moleculer";
import { systemUser } from "../../lib/access";
import type { Action, DigitalOceanClient, Droplet } from "../../lib/digitalocean";
import { provider } from "../../lib/provider";

/** A droplet as it was before a move, as the resize saga's first step recorded it (the undo's input). */
export interface DropletSnapshot {
  droplet_id: number;
  resource_id: string | null;
  size_slug: string;
  status: string;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * The undo of a resize saga (`provisioning.compensate.inventory` op `restoreDroplets`): each droplet back to the
 * size and power state it had, inventory's size (and price) and status with it. Idempotent: what already matches
 * is left alone, so a re-sent request (an ack timeout while a provider action ran) does only what is left.
 */
export async function restoreDroplets(this: { doClient: DigitalOceanClient }, droplets: DropletSnapshot[], ctx: Context, opts: { pollMs?: number; timeoutMs?: number } = {}) {
  const client = this.doClient;
  const meta = { user: systemUser("provisioning") };
  const run = async (id: number, input: Parameters<DigitalOceanClient["dropletAction"]>[1]) => {
    // An action of this type already under way (an earlier request of this undo) is waited on, not sent again.
    const pending = (await provider(() => client.listDropletActions(id))).find((a: Action) => a.type === input.type && a.status === "in-progress");
    let action: Action = pending ?? (await provider(() => client.dropletAction(id, input)));
    const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
    while (action.status === "in-progress") {
      if (Date.now() > deadline) throw new Error(`droplet ${id}: ${input.type} not completed in time`);
      await sleep(opts.pollMs ?? 250);
      action = await provider(() => client.getAction(action.id));
    }
    if (action.status !== "completed") throw new Error(`droplet ${id}: ${input.type} ${action.status}`);
  };
  for (const s of droplets) {
    let d: Droplet = await provider(() => client.getDroplet(s.droplet_id));
    if (d.size_slug !== s.size_slug) {
      if (d.status !== "off") await run(s.droplet_id, { type: "power_off" });
      await run(s.droplet_id, { type: "resize", size: s.size_slug });
      d = await provider(() => client.getDroplet(s.droplet_id));
    }
    if (s.status === "active" && d.status !== "active") await run(s.droplet_id, { type: "power_on" });
    d = await provider(() => client.getDroplet(s.droplet_id));
    if (s.resource_id)
      await ctx.call("v1.inventory.updateResource", { id: s.resource_id, size_slug: d.size_slug, status: d.status === "active" ? "active" : "off" }, { meta });
  }
}
