import autocannon from "autocannon";
import { Client } from "pg";
import { migrate } from "../lib/db";
import { mintToken } from "../bin/token";
import { freshDatabase, Meter, startProcess, stopAll, table, waitForHttp, writeJson, type Window } from "./lib";

/**
 * bench:api — 10,000 deployments over 100 tenants; GET /deployments/:id and the list route through the
 * gateway and a services node over NATS, against a bare node:http + pg server doing the same work (token
 * verification, tenant checks, the same rows, a byte-identical body: checked before timing). Both servers are warmed
 * up. Per route it prints, for our stack and the bare server side by side: requests/s and the throughput ratio,
 * p50/p99, and the CPU ms per request of every process (from /proc/<pid>/stat utime+stime: gateway, services, the
 * bare server, PostgreSQL's backends of the bench database and its server processes, nats-server, autocannon), and
 * the CPU other programs took meanwhile, since on a 2-core machine that alone can halve a figure. Targets (issue 13):
 * ratio ≥ 75%, our CPU (gateway + services) ≤ 1.2 ms per request. BENCH_JSON=file writes the figures as JSON.
 */
const DB = process.env.BENCH_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/arcadia_bench";
const NATS = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";
const DURATION = Number(process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = 50;
const TENANTS = 100;
const PER_TENANT = 100;
const TARGET_RATIO = 0.75;
const TARGET_OURS_MS = 1.2;

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
  // What POST /deployments/:id/subscribe leaves behind: the initial plan change, and an addon on every third.
  await pg.query(`insert into subscription_changes (id, subscription_id, from_plan_version_id, to_plan_version_id, actor, occurred_at)
    select gen_random_uuid(), id, null, plan_version_id, 'bench', inserted_at from subscriptions`);
  await pg.query(`insert into subscription_addons (id, subscription_id, addon_code, unit_price_cents, currency, qty, attached_at)
    select gen_random_uuid(), id, 'extra_backups', 500, 'USD', 1, inserted_at from subscriptions where get_byte(uuid_send(id), 15) % 3 = 0`);
  await pg.query("analyze");
  const rows = (await pg.query("select id, tenant_id from deployments")).rows as { id: string; tenant_id: string }[];
  await pg.end();
  return rows;
}

type Pick = () => { path: string; headers: Record<string, string> };
interface Run { title: string; result: autocannon.Result; w: Window; requests: number }

/** One autocannon run with every process's CPU read from /proc before and after (lib Meter). */
function run(title: string, url: string, pick: Pick, meter: Meter, duration = DURATION): Promise<Run> {
  meter.start();
  return new Promise<autocannon.Result>((resolve, reject) => {
    autocannon(
      { url, connections: CONNECTIONS, duration, requests: [{ setupRequest: (req: any) => ({ ...req, ...pick() }) }] },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  }).then((r) => {
    const w = meter.stop();
    const non2xx = r.non2xx + r.errors;
    console.log(`${title.padEnd(50)} ${r.requests.average.toFixed(0).padStart(7)} req/s   p50 ${String(r.latency.p50).padStart(4)} ms   p99 ${String(r.latency.p99).padStart(4)} ms${non2xx ? `   (${non2xx} non-2xx/errors!)` : ""}`);
    return { title, result: r, w, requests: Math.max(1, r.requests.total) };
  });
}
const perRequest = (r: Run, seconds: number) => (seconds * 1000) / r.requests;
/** CPU ms per request of one process of a run (0 for a process that is not part of it). */
const msPer = (r: Run, name: string) => perRequest(r, r.w.cpu[name] ?? 0);
const pgPer = (r: Run) => perRequest(r, r.w.postgres.backends + r.w.postgres.server);

/** The two servers must give the same answers, else the comparison is not like-for-like. */
async function sameAnswers(picks: Pick[]): Promise<string | null> {
  for (const pick of picks) {
    const { path, headers } = pick();
    const [a, b] = await Promise.all(
      ["http://127.0.0.1:3998", "http://127.0.0.1:3999"].map(async (base) => {
        const res = await fetch(base + path, { headers });
        return `${res.status} ${await res.text()}`;
      }),
    );
    if (a !== b) return `${path}\n  gateway: ${a.slice(0, 400)}\n  bare:    ${b.slice(0, 400)}`;
  }
  return null;
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
  const meter = new Meter({ gateway: children[1].pid, services: children[0].pid, bare: children[2].pid }, { databaseUrl: DB, natsUrl: NATS });
  try {
    await waitForHttp("http://127.0.0.1:3998/api/v1/health");
    await waitForHttp("http://127.0.0.1:3999/api/v1/health");
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
    const mismatch = await sameAnswers([...Array.from({ length: 30 }, () => byId), ...Array.from({ length: 10 }, () => list)]);
    if (mismatch) console.log(`WARNING: the gateway and the bare server answer differently, so they do not do the same work:\n${mismatch}`);
    console.log(`autocannon: ${CONNECTIONS} connections, ${DURATION}s per run, after a warm-up of each server; ${meter.describe()}`);
    const warm = Math.max(2, Math.round(DURATION / 4));
    for (const pick of [byId, list]) {
      await run("warm-up gateway", "http://127.0.0.1:3998", pick, meter, warm);
      await run("warm-up bare", "http://127.0.0.1:3999", pick, meter, warm);
    }
    const results: [string, Run, Run][] = [];
    for (const [name, pick] of [["GET /deployments/:id", byId], ["GET /deployments (list, 50)", list]] as const) {
      const gw = await run(`gateway→NATS→services  ${name}`, "http://127.0.0.1:3998", pick, meter);
      const bare = await run(`bare node:http + pg    ${name}`, "http://127.0.0.1:3999", pick, meter);
      results.push([name, gw, bare]);
    }
    printSummary(results);
    if (mismatch) console.log("(the answers differed: see the WARNING above)");
  } finally {
    await stopAll(children);
  }
}

/** What one run cost per request, by process (JSON and the table). */
function costOf(r: Run) {
  const ours = msPer(r, "gateway") + msPer(r, "services");
  const cpu = {
    gateway: msPer(r, "gateway"), services: msPer(r, "services"), ours_gateway_plus_services: ours, bare: msPer(r, "bare"),
    postgres: pgPer(r), nats: msPer(r, "nats"), autocannon: msPer(r, "bench"),
  };
  const total = cpu.gateway + cpu.services + cpu.bare + cpu.postgres + cpu.nats + cpu.autocannon;
  return {
    requests_per_second: r.result.requests.average,
    requests: r.result.requests.total,
    non_2xx_or_errors: r.result.non2xx + r.result.errors,
    latency_ms: { p50: r.result.latency.p50, p99: r.result.latency.p99 },
    cpu_ms_per_request: { ...cpu, total },
    other_programs_share_of_core: r.w.otherPrograms / r.w.seconds,
    postgres_other_databases_ms_per_request: perRequest(r, r.w.postgres.other_backends),
  };
}

function printSummary(results: [string, Run, Run][]) {
  const figures = results.map(([name, gw, bare]) => ({ route: name, ours: costOf(gw), bare: costOf(bare), ratio: gw.result.requests.average / Math.max(1, bare.result.requests.average) }));
  const rows: (string | number)[][] = [["", ...figures.flatMap((f) => [`${f.route}: ours`, "bare"])]];
  const both = (label: string, get: (c: ReturnType<typeof costOf>) => string) => rows.push([label, ...figures.flatMap((f) => [get(f.ours), get(f.bare)])]);
  both("requests/s", (c) => c.requests_per_second.toFixed(0));
  rows.push(["throughput ratio (ours / bare)", ...figures.flatMap((f) => [`${(f.ratio * 100).toFixed(0)}%`, ""])]);
  both("latency p50 / p99", (c) => `${c.latency_ms.p50} / ${c.latency_ms.p99} ms`);
  rows.push(["CPU ms per request", ...figures.flatMap(() => ["", ""])]);
  const ms = (x: number) => x.toFixed(2);
  both("  gateway", (c) => ms(c.cpu_ms_per_request.gateway));
  both("  services", (c) => ms(c.cpu_ms_per_request.services));
  both("  ours (gateway + services)", (c) => ms(c.cpu_ms_per_request.ours_gateway_plus_services));
  both("  bare server", (c) => ms(c.cpu_ms_per_request.bare));
  both("  postgres (backends + server)", (c) => ms(c.cpu_ms_per_request.postgres));
  both("  nats-server", (c) => ms(c.cpu_ms_per_request.nats));
  both("  autocannon (bench)", (c) => ms(c.cpu_ms_per_request.autocannon));
  both("  total", (c) => ms(c.cpu_ms_per_request.total));
  both("other programs (share of a core)", (c) => `${(c.other_programs_share_of_core * 100).toFixed(0)}%`);
  both("non-2xx / errors", (c) => String(c.non_2xx_or_errors));
  console.log(`\nsummary (same run)\n${table(rows)}\n`);
  for (const f of figures) {
    const ours = f.ours.cpu_ms_per_request.ours_gateway_plus_services;
    const met = f.ratio >= TARGET_RATIO && ours <= TARGET_OURS_MS;
    console.log(`${f.route.padEnd(28)} ratio ${(f.ratio * 100).toFixed(0)}% (≥ ${TARGET_RATIO * 100}%), our CPU ${ours.toFixed(2)} ms/request (≤ ${TARGET_OURS_MS}; bare ${f.bare.cpu_ms_per_request.bare.toFixed(2)}) → ${met ? "meets target" : "BELOW target"}`);
  }
  writeJson({ bench: "api", at: new Date().toISOString(), config: { connections: CONNECTIONS, seconds: DURATION, tenants: TENANTS, deployments: TENANTS * PER_TENANT }, targets: { ratio: TARGET_RATIO, ours_cpu_ms_per_request: TARGET_OURS_MS }, routes: figures });
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
