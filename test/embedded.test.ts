import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { createServer, type AddressInfo } from "node:net";
import type { ServiceBroker } from "moleculer";
import { Client, Pool } from "pg";
import { migrate, useDatabase } from "../lib/db";
import { startEmbeddedPostgres } from "../lib/embedded-postgres";
import { startNode } from "./helpers";

/** A port nobody listens on now (the socket server takes a fixed port). */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/*
 * The embedded database (PGlite behind pglite-socket) has one backend for every connection. These check what the
 * embedded `npm start` relies on: connections never see each other's half-sent queries (lib/embedded-postgres.ts
 * keepExchangesWhole), and a transaction on one connection holds the others back without losing them.
 */
describe("embedded PostgreSQL (PGlite on a loopback socket)", () => {
  let pg: Awaited<ReturnType<typeof startEmbeddedPostgres>>;
  let dir: string;
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "arcadia-embedded-"));
    pg = await startEmbeddedPostgres({ dataDir: dir, port: await freePort() });
  });
  afterAll(async () => {
    await pg?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("keeps each connection's parameterised queries whole while several wait behind a transaction", async () => {
    const holder = new Client({ connectionString: pg.url });
    await holder.connect();
    const pools = [new Pool({ connectionString: pg.url, max: 3 }), new Pool({ connectionString: pg.url, max: 3 })];
    try {
      const failures: string[] = [];
      for (let round = 0; round < 5; round++) {
        await holder.query("begin");
        await holder.query("select 1");
        // These queue behind the open transaction (one backend), then all run once it commits.
        const queries = Array.from({ length: 60 }, async (_, i) => {
          const v = round * 1000 + i;
          try {
            const r = await pools[i % 2].query("select $1::int as v, $2::text as s", [v, `x${v}`]);
            if (r.rows[0]?.v !== v || r.rows[0]?.s !== `x${v}`) failures.push(`wrong row for ${v}: ${JSON.stringify(r.rows[0])}`);
          } catch (err) {
            failures.push(`${v}: ${(err as Error).message}`);
          }
        });
        await new Promise((r) => setTimeout(r, 50));
        await holder.query("commit");
        await Promise.all(queries);
      }
      expect(failures).toEqual([]);
    } finally {
      await holder.end();
      await Promise.all(pools.map((p) => p.end()));
    }
  });
});

/*
 * The outbox sweeps (deployment events, invoice events) emitted while holding their claiming transaction. Events
 * are local here, so the emit awaits billing's and webhooks' handlers, which need the node's one embedded pool
 * connection — the one the transaction holds: each handler waited DB_ACQUIRE_TIMEOUT_MS (5 s) and failed, and
 * every request of the node answered 503 meanwhile.
 */
describe("outbox sweeps on the embedded database", () => {
  let pg: Awaited<ReturnType<typeof startEmbeddedPostgres>>;
  let dir: string;
  let node: ServiceBroker;
  const saved = { url: process.env.DATABASE_URL, pool: process.env.DB_POOL_MAX };
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "arcadia-embedded-"));
    pg = await startEmbeddedPostgres({ dataDir: dir, port: await freePort() });
    useDatabase(pg.url, { embedded: true });
    await migrate();
    node = await startNode(["deployments", "billing", "webhooks"], {
      settings: { deployments: { eventSweepMs: 600_000 }, billing: { runMs: 0, eventSweepMs: 600_000 } },
    });
  }, 60_000);
  afterAll(async () => {
    await node?.stop();
    await pg?.stop();
    useDatabase(saved.url!, { embedded: false });
    if (saved.pool === undefined) delete process.env.DB_POOL_MAX;
    else process.env.DB_POOL_MAX = saved.pool;
    rmSync(dir, { recursive: true, force: true });
  });

  it("publishes a left-over deployment event to local handlers without stalling on its own connection", async () => {
    const db = new Client({ connectionString: pg.url });
    await db.connect();
    try {
      const id = randomUUID();
      await db.query(
        `insert into deployments (id, tenant_id, slug, display_name, region, state, state_since, llm_mode, billing_action_suspended, template_code, inserted_at, updated_at, trial_ends_at, runtime_status)
         values ($1, 'emb', 'emb1', 'emb1', 'nyc3', 'trial', now(), 'shared', false, 'arcadia-app', now(), now(), now() + interval '14 days', 'none')`,
        [id],
      );
      // Committed, then the node "crashed" before publishing: older than the sweep period, published_at null.
      await db.query(`insert into deployment_events (deployment_id, from_state, to_state, reason, actor, occurred_at) values ($1, null, 'trial', 'created', 'u', now() - interval '1 hour')`, [id]);
      const svc = node.getLocalService("v1.deployments") as any;
      const t0 = Date.now();
      expect(await svc.publishLeftovers()).toBe(1);
      expect(Date.now() - t0).toBeLessThan(3000);
      // Billing's handler took it in (it records trial dates), and the row is published.
      expect((await db.query("select state from billing_deployments where deployment_id = $1", [id])).rows).toEqual([{ state: "trial" }]);
      expect((await db.query("select published_at from deployment_events where deployment_id = $1", [id])).rows[0].published_at).not.toBeNull();
    } finally {
      await db.end();
    }
  });
});
