import type { ServiceBroker } from "moleculer";
import { apiUrl, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";
import { ensureBuilt, killAll, spawnNode, type NodeProcess } from "./processes";
import { startReceiver, type Receiver } from "./webhook-receiver";

/*
 * SPEC §9 "an event is never lost because a node or the endpoint was down": the webhooks service runs in a child
 * process (dist/bin/start.js) over the machine's NATS and PostgreSQL, and is killed with SIGKILL while a delivery is
 * in flight. Events keep happening while no webhooks node is up; a new process takes over the dead one's claims when
 * they expire and catches up on the deployment events it never heard. The receiver must end up with every event,
 * in order per deployment.
 */

let gateway: ServiceBroker;
let base: string;
let ns: string;
let rx: Receiver;
let serial = 0;

beforeAll(async () => {
  await ensureBuilt();
  ns = newNamespace();
  gateway = await startNode(["api", "deployments", "subscriptions"], { nats: ns, nodeID: "whc-gateway", settings: { deployments: { eventSweepMs: 500 } } });
  base = apiUrl(gateway);
  rx = await startReceiver();
}, 120_000);

afterAll(async () => {
  await killAll();
  await gateway?.stop();
  await rx?.close();
}, 30_000);

async function startWebhooks(): Promise<NodeProcess> {
  const id = `whc-${++serial}-${uniq("w")}`;
  const p = spawnNode(id, {
    SERVICES: "webhooks",
    TRANSPORTER: process.env.TEST_NATS_URL!,
    NAMESPACE: ns,
    DATABASE_URL: process.env.DATABASE_URL!,
    AUTH_JWT_SECRET: process.env.AUTH_JWT_SECRET!,
    LOG_LEVEL: "warn",
    WEBHOOK_ALLOW_PRIVATE: "1",
    WEBHOOK_RETRY_BASE_MS: "200",
    WEBHOOK_TIMEOUT_MS: "3000",
    WEBHOOK_CLAIM_MS: "4000",
    WEBHOOK_POLL_MS: "100",
    WEBHOOK_CATCHUP_MS: "500",
  });
  await waitFor(
    async () => {
      if (!p.alive()) throw new Error(`${id} exited early:\n${p.output()}`);
      return gateway.registry.services.has("v1.webhooks", id);
    },
    { timeoutMs: 30_000, what: `${id} to join the cluster` },
  );
  return p;
}

test("kill -9 of the webhooks node mid-delivery: every event arrives after a restart, in order per deployment", async () => {
  let first = await startWebhooks();
  const tenant = uniq("crash");
  const api = client(base, await token({ tenant, sub: "kim" }));
  const hook = await api.post("/webhooks", { url: rx.url, events: ["deployment.created", "deployment.transitioned"] });
  expect(hook.status).toBe(201);
  rx.trust(hook.body.webhook.secret);

  // 500 for the first three attempts, then the next request is held unanswered: the node dies while it waits.
  const held: (() => void)[] = [];
  let mode: "fail" | "hold" | "ok" = "fail";
  rx.answerWith(() => {
    if (mode === "fail" && rx.received.length >= 2) mode = "hold";
    return mode === "ok" ? 200 : 500;
  });
  const holding = rx.holdWhen(() => mode === "hold", (release) => held.push(release));

  const ids: string[] = [];
  for (let i = 0; i < 2; i++) ids.push((await api.post("/deployments", { slug: uniq("k") })).body.deployment.id);
  for (const id of ids) for (const to of ["paused", "active"]) expect((await api.post(`/deployments/${id}/transition`, { to_state: to })).status).toBe(200);

  await waitFor(async () => held.length > 0, { timeoutMs: 30_000, what: "a delivery in flight" });
  expect(await first.kill9()).toBe("SIGKILL");
  // What the heartbeat timeout does 15 s later: the cluster stops routing to the dead node.
  gateway.registry.nodes.disconnected(first.id, true);

  // While no webhooks node runs, more happens: these events are heard by no one.
  for (const id of ids) for (const to of ["paused", "active"]) expect((await api.post(`/deployments/${id}/transition`, { to_state: to })).status).toBe(200);
  mode = "ok";
  holding.stop();
  held.forEach((release) => release());

  first = await startWebhooks();
  const expected = new Map<string, string[]>();
  for (const id of ids) expected.set(id, (await api.get(`/deployments/${id}`)).body.events.map((e: any) => `evt_dep_${e.id}`));
  const total = [...expected.values()].reduce((n, l) => n + l.length, 0);
  expect(total).toBe(10);

  const firstSeen = () => [...new Map(rx.accepted().map((b) => [b.id, b])).values()];
  await waitFor(async () => firstSeen().length >= total, { timeoutMs: 60_000, intervalMs: 200, what: `all ${total} events at the receiver` });
  expect(rx.received.every((r) => r.verified)).toBe(true);
  for (const [id, eventIds] of expected) {
    const got = firstSeen().filter((b) => b.data.deployment.id === id).map((b) => b.id);
    expect(got).toEqual(eventIds);
  }
  // The one in flight at the kill came (at least) twice: same id, so receivers dedupe by it.
  const counts = new Map<string, number>();
  for (const r of rx.received) counts.set(r.body.id, (counts.get(r.body.id) ?? 0) + 1);
  expect(Math.max(...counts.values())).toBeGreaterThan(1);
  const deliveries = await api.get(`/webhooks/${hook.body.webhook.id}/deliveries?limit=200`);
  expect(deliveries.body.items).toHaveLength(total);
  expect(deliveries.body.items.every((d: any) => d.status === "succeeded")).toBe(true);
  expect(first.alive()).toBe(true);
}, 180_000);
