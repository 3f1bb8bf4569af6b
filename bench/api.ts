import autocannon from "autocannon";
import { Client } from "pg";
import { migrate } from "../lib/db";
import { mintToken } from "../bin/token";
import { freshDatabase, startProcess, stopAll, waitForHttp } from "./lib";

/**
 * bench:api — 10,000 deployments over 100 tenants; GET /deployments/:id and the list route through the
 * gateway and a services node over NATS, against a bare node:http + pg server answering the same queries.
 */
const DB = process.env.BENCH_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/arcadia_bench";
const NATS = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";
const DURATION = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = 50;
const TENANTS = 100;
const PER_TENANT = 100;

async function seed() {
  await freshDatabase(DB);
  process.env.DATABASE_URL = DB;
  await migrate();
  const pg = new Client({ connectionString: DB });
  await pg.connect();
  await pg.query(`insert into deployments (id, tenant_id, slug, display_name, region, state, state_since, template_code, inserted_at, updated_at)
    select gen_random_uuid(), 'tenant-' || (i % ${TENANTS}), 'd-' || i, 'Deployment ' || i, 'nyc3', 'active', now(), 'arcadia-app',
           now() - (i || ' seconds')::interval, now()
    from generate_series(1, ${TENANTS * PER_TENANT}) i`);
  await pg.query(`insert into deployment_events (deployment_id, from_state, to_state, reason, actor, occurred_at)
    select id, null, 'active', 'created', 'bench', inserted_at from deployments`);
  await pg.query(`insert into subscriptions (id, deployment_id, tenant_id, plan_code, plan_version_id, status, current_period_start, current_period_end, inserted_at, updated_at)
    select gen_random_uuid(), id, tenant_id, 'studio', '00000000-0000-4000-8000-000000000102', 'active', date_trunc('month', now()), date_trunc('month', now()) + interval '1 month', now(), now()
    from deployments`);
  await pg.query("analyze");
  const rows = (await pg.query("select id, tenant_id from deployments")).rows as { id: string; tenant_id: string }[];
  await pg.end();
  return rows;
}

function run(title: string, url: string, pick: () => { path: string; headers: Record<string, string> }) {
  return new Promise<autocannon.Result>((resolve, reject) => {
    autocannon(
      { url, connections: CONNECTIONS, duration: DURATION, requests: [{ setupRequest: (req: any) => ({ ...req, ...pick() }) }] },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  }).then((r) => {
    const non2xx = r.non2xx + r.errors;
    console.log(`${title.padEnd(44)} ${r.requests.average.toFixed(0).padStart(7)} req/s   p50 ${String(r.latency.p50).padStart(4)} ms   p99 ${String(r.latency.p99).padStart(4)} ms${non2xx ? `   (${non2xx} non-2xx/errors!)` : ""}`);
    return r;
  });
}

async function main() {
  console.log(`seeding ${TENANTS * PER_TENANT} deployments over ${TENANTS} tenants…`);
  const rows = await seed();
  const tokens = new Map<string, string>();
  for (let t = 0; t < TENANTS; t++) tokens.set(`tenant-${t}`, await mintToken({ tenant: `tenant-${t}`, sub: "bench" }));
  const any = <T>(xs: T[]) => xs[Math.floor(Math.random() * xs.length)];

  const env = { DATABASE_URL: DB, TRANSPORTER: NATS, NAMESPACE: `bench-${process.pid}` };
  const children = [
    startProcess("services", "dist/bin/start.js", { ...env, SERVICES: "deployments,subscriptions", NODE_ID: "bench-services" }),
    startProcess("gateway", "dist/bin/start.js", { ...env, SERVICES: "api", NODE_ID: "bench-gateway", PORT: "3998" }),
    startProcess("bare", "dist/bench/bare-server.js", { DATABASE_URL: DB, BARE_PORT: "3999" }),
  ];
  try {
    await waitForHttp("http://127.0.0.1:3998/api/v1/health");
    await waitForHttp("http://127.0.0.1:3999/api/v1/deployments?tenant_id=x");
    // The gateway answers health before it has discovered the services node.
    const probe = rows[0];
    const auth = { authorization: `Bearer ${tokens.get(probe.tenant_id)}` };
    for (let i = 0; i < 100 && (await fetch(`http://127.0.0.1:3998/api/v1/deployments/${probe.id}`, { headers: auth })).status !== 200; i++) await new Promise((r) => setTimeout(r, 200));

    const byId = () => {
      const d = any(rows);
      return { path: `/api/v1/deployments/${d.id}`, headers: { authorization: `Bearer ${tokens.get(d.tenant_id)}` } };
    };
    const list = () => {
      const t = `tenant-${Math.floor(Math.random() * TENANTS)}`;
      return { path: `/api/v1/deployments?limit=50&tenant_id=${t}`, headers: { authorization: `Bearer ${tokens.get(t)}` } };
    };
    console.log(`autocannon: ${CONNECTIONS} connections, ${DURATION}s per run`);
    await run("warm-up", "http://127.0.0.1:3998", byId);
    const results: Record<string, [autocannon.Result, autocannon.Result]> = {};
    for (const [name, pick] of [["GET /deployments/:id", byId], ["GET /deployments (list, 50)", list]] as const) {
      const gw = await run(`gateway→NATS→services  ${name}`, "http://127.0.0.1:3998", pick);
      const bare = await run(`bare node:http + pg    ${name}`, "http://127.0.0.1:3999", pick);
      results[name] = [gw, bare];
    }
    console.log("\nsummary");
    for (const [name, [gw, bare]] of Object.entries(results)) {
      const ratio = gw.requests.average / bare.requests.average;
      const verdict = ratio >= 0.5 && gw.latency.p99 < 50 ? "meets target" : "BELOW target";
      console.log(`${name.padEnd(30)} throughput ratio ${(ratio * 100).toFixed(0)}% of bare, gateway p99 ${gw.latency.p99} ms  → ${verdict} (≥50%, p99 < 50 ms)`);
    }
  } finally {
    stopAll(children);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
