import type { Pool, PoolClient } from "pg";

/*
 * Why a node stopped serving for good after a few PostgreSQL outages (issue 8, item 3).
 *
 * MikroORM 7 runs its SQL through Kysely's PostgresDialect on a `pg` Pool. Kysely's controlled transaction
 * (`startTransaction().execute()`, `commit()`, `rollback()`) releases its pooled client only after `begin`,
 * `commit` or `rollback` succeeded. When the server goes away mid-transaction, `commit` fails, MikroORM's
 * `rollback` fails too, and nobody ever calls `client.release()`: pg-pool still counts the dead client as
 * checked out. Each outage leaks the clients that had a transaction open; once `max` are leaked the pool is
 * "full" forever and, with pg-pool's default `connectionTimeoutMillis: 0`, every later acquire waits in its
 * queue forever — an idle process, connected to NATS, whose every database call times out
 * (test/faults.test.ts reproduces it: 0 queries succeed after the first outage without this module).
 *
 * The fix, applied to the Pool MikroORM creates (driverOptions.onPoolCreated):
 * - a client that errors or ends while checked out is released at once with the error, so pg-pool drops it and
 *   opens a fresh one for the next acquire; the holder's own late `release()` becomes a no-op (pg-pool throws on
 *   a double release);
 * - a bounded wait for a connection (`connectionTimeoutMillis`): a caller gets an error it can answer 503 with,
 *   never an endless wait;
 * - TCP keepalive, so a connection whose peer vanished without a FIN is noticed;
 * - idle clients that break are dropped by pg-pool itself (its idle listener); MikroORM logs the error.
 */

export interface PoolSettings {
  /** Longest wait for a connection (a new one, or a free one when the pool is at max). */
  connectionTimeoutMillis: number;
  idleTimeoutMillis: number;
  keepAlive: boolean;
  keepAliveInitialDelayMillis: number;
}

export function poolSettings(env = process.env): PoolSettings {
  return {
    connectionTimeoutMillis: Number(env.DB_ACQUIRE_TIMEOUT_MS ?? 5000),
    idleTimeoutMillis: Number(env.DB_IDLE_TIMEOUT_MS ?? 10_000),
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
  };
}

const hardened = new WeakSet<Pool>();

/** Makes a pg Pool drop clients that break while checked out (see above). Idempotent. */
export function hardenPool(pool: Pool): Pool {
  if (hardened.has(pool)) return pool;
  hardened.add(pool);
  const connect = pool.connect.bind(pool) as () => Promise<PoolClient>;
  (pool as any).connect = (cb?: (err: Error | undefined, client?: PoolClient, done?: (e?: Error) => void) => void) => {
    const p = connect().then((client) => {
      const release = client.release;
      let released = false;
      const onBroken = (err?: Error) => finish(err ?? new Error("Connection ended"));
      const finish = (err?: Error | boolean) => {
        if (released) return;
        released = true;
        client.removeListener("error", onBroken);
        client.removeListener("end", onBroken);
        release.call(client, err as any);
      };
      client.on("error", onBroken);
      client.on("end", onBroken);
      client.release = finish as PoolClient["release"];
      return client;
    });
    if (!cb) return p;
    p.then(
      (client) => cb(undefined, client, client.release),
      (err) => cb(err),
    );
    return undefined;
  };
  return pool;
}
