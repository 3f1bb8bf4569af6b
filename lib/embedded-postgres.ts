import { mkdirSync } from "node:fs";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import { useDatabase } from "./db";

/**
 * PostgreSQL for a machine with nothing installed: PGlite kept under ./.data (so a restart keeps the data),
 * served on a loopback port so the same postgresql driver works as against a real server.
 */
export async function startEmbeddedPostgres(opts: { dataDir?: string; port?: number } = {}) {
  const dataDir = opts.dataDir ?? process.env.EMBEDDED_PG_DIR ?? "./.data/pg";
  const port = opts.port ?? Number(process.env.EMBEDDED_PG_PORT ?? 54329);
  mkdirSync(dataDir, { recursive: true });
  const db = await PGlite.create(dataDir);
  const server = new PGLiteSocketServer({ db, port, host: "127.0.0.1", maxConnections: 8 });
  keepExchangesWhole((server as any).queryQueue);
  await server.start();
  return {
    url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
    dataDir,
    async stop() {
      await server.stop();
      await db.close();
    },
  };
}

/** Starts the embedded database and points this process at it (see `useDatabase` for what that sets). */
export async function useEmbeddedPostgres() {
  const pg = await startEmbeddedPostgres();
  useDatabase(pg.url, { embedded: true });
  return pg;
}

/*
 * Why the socket server's query queue is patched (found by the embedded-mode audit: a concurrent idempotent
 * replay answered 503 "portal \"\" does not exist" while 20 provisioning creates ran).
 *
 * pglite-socket 0.2.17 queues every protocol message of every connection on PGlite's one backend, and keeps a
 * connection's messages together only while the backend is inside an explicit transaction. An extended-protocol
 * query (Parse, Bind, Describe, Execute, Sync: what `pg` sends for any query with parameters) is several
 * messages, so two connections waiting in the queue (say two idempotency-store connections queued behind an ORM
 * transaction) get interleaved: B's Parse replaces A's unnamed statement before A's Bind, and A's Bind then runs
 * B's statement with A's parameters, or finds its portal gone. The patch pins the queue to a connection from its
 * first extended-protocol message through its Sync, as it already does for a transaction. It also keeps the queue
 * alive when a message throws (upstream returns with `processing` still set, which stops the database for good)
 * and unpins a connection that disconnects mid-exchange.
 */
const SYNC = 0x53; // 'S'
const EXTENDED = new Set([0x50, 0x42, 0x44, 0x45, 0x43, 0x48]); // Parse, Bind, Describe, Execute, Close, Flush

interface QueuedMessage {
  handlerId: number;
  message: Uint8Array;
  resolve(bytes: number): void;
  reject(err: unknown): void;
  onData(data: Uint8Array): void;
}
interface QueryQueue {
  queue: QueuedMessage[];
  processing: boolean;
  lastHandlerId: number | null;
  db: PGlite;
  processQueue(): Promise<void>;
  clearQueueForHandler(handlerId: number): void;
}

export function keepExchangesWhole(q: QueryQueue) {
  let pinned: number | null = null; // the connection in the middle of an extended-protocol exchange
  q.processQueue = async function processQueue(this: QueryQueue) {
    if (this.processing) return;
    this.processing = true;
    try {
      while (this.queue.length > 0) {
        const owner = pinned ?? (this.db.isInTransaction() ? this.lastHandlerId : null);
        const at = owner == null ? 0 : this.queue.findIndex((m) => m.handlerId === owner);
        if (at === -1) break; // the owner's next message has not arrived; its enqueue runs the queue again
        const [item] = this.queue.splice(at, 1);
        const type = item.message[0];
        if (EXTENDED.has(type)) pinned = item.handlerId;
        else if (type === SYNC && pinned === item.handlerId) pinned = null;
        let bytes = 0;
        try {
          await this.db.runExclusive(() => this.db.execProtocolRawStream(item.message, { onRawData: (d: Uint8Array) => ((bytes += d.length), item.onData(d)) }));
        } catch (err) {
          item.reject(err);
          continue;
        }
        this.lastHandlerId = item.handlerId;
        item.resolve(bytes);
      }
    } finally {
      this.processing = false;
    }
  };
  const clear = q.clearQueueForHandler;
  q.clearQueueForHandler = function (this: QueryQueue, handlerId: number) {
    clear.call(this, handlerId);
    if (pinned === handlerId) {
      pinned = null;
      setImmediate(() => void this.processQueue());
    }
  };
}
