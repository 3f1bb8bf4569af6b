import type { Context, ServiceBroker } from "moleculer";

/*
 * /ready (SPEC §8): 200 only when every service this gateway routes to has been discovered and answers its
 * `ready` action (its database; the provider too, for inventory), and the transporter is connected; 503 with
 * each failing check otherwise. The services come from the gateway's alias table, so a new route's service is
 * covered without touching this file; ALSO_NEEDED names services no alias calls but a route depends on.
 */

/** dns: no HTTP route calls it, but provisioning (POST /deployments with provision) cannot finish without it. */
export const ALSO_NEEDED = ["v1.dns"];
const READY_TIMEOUT_MS = 3000;

/** "v1.deployments.list" → "v1.deployments"; the gateway's own actions (api.*) are not dependencies. */
export function routedServices(aliases: Record<string, string>): string[] {
  const names = new Set<string>();
  for (const action of Object.values(aliases)) {
    const svc = action.slice(0, action.lastIndexOf("."));
    if (svc && svc !== "api") names.add(svc);
  }
  for (const s of ALSO_NEEDED) names.add(s);
  return [...names].sort();
}

export interface Readiness {
  ok: boolean;
  checks: Record<string, string>;
}

export async function readiness(broker: ServiceBroker, ctx: Context, services: string[], transporterDown = false): Promise<Readiness> {
  const checks: Record<string, string> = {};
  const transit = (broker as any).transit;
  const natsDown = transit && (!transit.connected || transporterDown);
  checks.transporter = natsDown ? "disconnected" : "ok";
  const available = new Set<string>(broker.registry.getServiceList({ onlyAvailable: true, skipInternal: true }).map((s: any) => s.fullName));
  await Promise.all(
    services.map(async (svc) => {
      if (!available.has(svc)) {
        checks[svc] = "not discovered";
        return;
      }
      try {
        const r = await ctx.call<{ database?: boolean; provider?: string }, object>(`${svc}.ready`, {}, { timeout: READY_TIMEOUT_MS, retries: 0 });
        if (r?.database === false) checks[svc] = "database failed";
        else if (typeof r?.provider === "string" && r.provider !== "ok") checks[svc] = `provider: ${r.provider}`;
        else checks[svc] = "ok";
      } catch (err) {
        checks[svc] = `failed: ${(err as Error).message}`.slice(0, 300);
      }
    }),
  );
  // Summaries: `database` over the services that answered or failed (not the undiscovered ones, which show
  // "not discovered" under their own name); `provider` is inventory's probe of the provider.
  const dbFailed = services.filter((svc) => checks[svc] !== "ok" && checks[svc] !== "not discovered" && !checks[svc].startsWith("provider"));
  checks.database = dbFailed.length ? `failed: ${dbFailed.join(", ")}` : services.some((s) => checks[s] === "ok" || checks[s].startsWith("provider")) ? "ok" : "no database service discovered";
  const inv = checks["v1.inventory"];
  if (inv === "ok") checks.provider = "ok";
  else if (inv?.startsWith("provider: ")) checks.provider = inv.slice("provider: ".length);
  return { ok: Object.values(checks).every((c) => c === "ok"), checks };
}

/**
 * Follows the NATS connection of this node (nats.js status events): while it is disconnected, a call would
 * sit in the client's reconnect buffer until the request timeout, so the gateway answers 503 at once instead,
 * and /ready says "disconnected". Moleculer's own `transit.connected` stays true through a reconnect.
 */
export function watchTransporter(broker: ServiceBroker): { down(): boolean; stop(): void } {
  let down = false;
  let stopped = false;
  let iter: AsyncIterable<{ type: string }> & { stop?: () => void } | undefined;
  const attach = async () => {
    // The client exists once the broker connected; a reconnect keeps the same client.
    for (let i = 0; !stopped && i < 600; i++) {
      const client = (broker as any).transit?.tx?.client;
      if (client && typeof client.status === "function") {
        iter = client.status();
        break;
      }
      await new Promise((r) => setTimeout(r, 100).unref());
    }
    if (!iter) return;
    for await (const s of iter) {
      if (s.type === "disconnect" || s.type === "reconnecting") down = true;
      else if (s.type === "reconnect") down = false;
    }
  };
  if ((broker as any).transit) attach().catch(() => undefined);
  return {
    down: () => down || (broker as any).transit?.tx?.client?.isClosed?.() === true,
    stop() {
      stopped = true;
      iter?.stop?.();
    },
  };
}
