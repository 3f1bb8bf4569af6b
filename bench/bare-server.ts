import { createServer } from "node:http";
import { Pool } from "pg";

/**
 * The yardstick for bench:api: node:http + pg answering the same queries as GET /deployments/:id
 * (deployment, its events, its subscription) and the tenant list, with no framework, auth or transport.
 */
const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
const port = Number(process.env.BARE_PORT ?? 3999);

createServer(async (req, res) => {
  try {
    const url = new URL(req.url!, "http://x");
    const m = url.pathname.match(/^\/api\/v1\/deployments\/([0-9a-f-]{36})$/);
    let body: unknown;
    if (m) {
      const [d, events, sub] = await Promise.all([
        pool.query("select * from deployments where id = $1", [m[1]]),
        pool.query("select * from deployment_events where deployment_id = $1 order by id", [m[1]]),
        pool.query("select * from subscriptions where deployment_id = $1", [m[1]]),
      ]);
      if (!d.rows[0]) {
        res.writeHead(404).end();
        return;
      }
      body = { deployment: d.rows[0], events: events.rows, subscription: sub.rows[0] ?? null, saga: null };
    } else if (url.pathname === "/api/v1/deployments") {
      const tenant = url.searchParams.get("tenant_id");
      const rows = await pool.query("select * from deployments where tenant_id = $1 order by inserted_at desc, id desc limit 51", [tenant]);
      body = { items: rows.rows.slice(0, 50), next_cursor: rows.rows.length > 50 ? "x" : null };
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(body));
  } catch (err) {
    res.writeHead(500).end(String(err));
  }
}).listen(port, "127.0.0.1");
