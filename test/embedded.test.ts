import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Client, Pool } from "pg";
import { startEmbeddedPostgres } from "../lib/embedded-postgres";

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
    pg = await startEmbeddedPostgres({ dataDir: dir, port: 54000 + Math.floor(Math.random() * 900) });
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
