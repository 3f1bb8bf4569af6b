import { PermanentStepError, isTransient, type KindContext, type StepContext } from "../engine";
import type { RuntimeStatus } from "../../../lib/lifecycle";

/** What the kinds' steps are configured with (the engine passes it through untouched). */
export interface KindEnv {
  /** How long to wait for a droplet to turn active (PROVISION_ACTIVE_TIMEOUT_MS). */
  activeTimeoutMs: number;
  /** How often a droplet or an action is polled (PROVISION_POLL_MS). */
  pollMs: number;
  /** How long to wait for a droplet action to complete (PROVISION_ACTION_TIMEOUT_MS). */
  actionTimeoutMs: number;
  /** Droplet size and image when the saga's input names none (DO_DEFAULT_SIZE, DO_DEFAULT_IMAGE). */
  defaultSize: string;
  defaultImage: string;
}
export type Ctx = StepContext<KindEnv>;
export type { RuntimeStatus };

/** Inventory's live row for a droplet (`v1.inventory.forDeployment`), as far as the steps need it. */
export interface LiveResource {
  id: string;
  kind: string;
  external_id: string;
  status: string;
  ipv4?: string | null;
}

/** The provider's 404 (inventory passes DigitalOcean's refusals on as 502 PROVIDER_ERROR with its status in data). */
export const isGone = (err: any) => err?.code === 404 || err?.data?.status === 404;

export const sagaTag = (sagaId: string) => `saga-${sagaId}`;
export const deploymentTag = (deploymentId: string) => `deployment-${deploymentId}`;

/** `v1.deployments.setRuntime` (idempotent). */
export async function setRuntime(ctx: KindContext<KindEnv>, status: RuntimeStatus, extra: { droplet_id?: number | null; ipv4?: string | null; hostname?: string | null } = {}) {
  await ctx.call("v1.deployments.setRuntime", { id: ctx.saga.deployment_id, status, ...extra });
}

/** The deployment's live droplets in inventory. */
export async function liveDroplets(ctx: KindContext<KindEnv>): Promise<LiveResource[]> {
  const { resources } = await ctx.call<{ resources: LiveResource[] }>("v1.inventory.forDeployment", { deployment_id: ctx.saga.deployment_id });
  return resources.filter((r) => (r.kind ?? "droplet") === "droplet" && r.status !== "destroyed");
}

/**
 * The droplets under a saga's tag, settled to one: `keep` (or, without it, the oldest) stays, any other is a
 * duplicate and goes. Null when the tag has none. A create sent by a node that then died can land after the
 * resumed node looked the tag up, so the wait step settles the tag again once its droplet is active.
 */
export async function settleTag(call: Ctx["call"], tag: string, keep?: number): Promise<number | null> {
  const { droplets } = await call("v1.inventory.dropletsByTag", { tag });
  if (!droplets.length) return null;
  const kept = keep ?? Math.min(...droplets.map((d: { id: number }) => d.id));
  for (const d of droplets) if (d.id !== kept) await call("v1.inventory.destroyDroplet", { id: d.id });
  return kept;
}

/** Polls a droplet action until it completes; errored or too slow is a step failure (the step is retried). */
export async function waitAction(ctx: Ctx, actionId: number): Promise<void> {
  const since = Date.now();
  for (;;) {
    try {
      const { action } = await ctx.call("v1.inventory.getAction", { id: actionId });
      if (action.status === "completed") return;
      if (action.status === "errored") throw new PermanentStepError(`droplet action ${actionId} (${action.type}) errored`);
    } catch (err) {
      if (!isTransient(err)) throw err;
    }
    if (Date.now() - since > ctx.env.actionTimeoutMs) throw new PermanentStepError(`droplet action ${actionId} not completed after ${ctx.env.actionTimeoutMs} ms`);
    await ctx.heartbeat();
    await ctx.sleep(ctx.env.pollMs);
  }
}

/**
 * What the deployment's droplets are, asked of the provider: running when any is active, stopped when all are off,
 * `empty` when none is left. Forward-only kinds that fail end with the runtime saying this, not what they aimed at.
 */
export async function observedRuntime(ctx: KindContext<KindEnv>, empty: RuntimeStatus): Promise<RuntimeStatus> {
  const rows = await liveDroplets(ctx);
  const statuses: string[] = [];
  for (const r of rows) {
    try {
      const { droplet } = await ctx.call("v1.inventory.getDroplet", { id: Number(r.external_id) });
      statuses.push(droplet.status);
    } catch (err: any) {
      if (!isGone(err)) throw err;
    }
  }
  if (!statuses.length) return empty;
  if (statuses.some((s) => s === "active" || s === "new")) return "running";
  return "stopped";
}
