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
