import autocannon from "autocannon";
import { readdirSync, readFileSync } from "node:fs";
import { Client } from "pg";
import { migrate } from "../lib/db";
import { mintToken } from "../bin/token";
import { freshDatabase, startProcess, stopAll, waitForHttp } from "./lib";

/**
 * bench:api — 10,000 deployments over 100 tenants; GET /deployments/:id and the list route through the
 * gateway and a services node over NATS, against a bare node:http + pg server doing the same work (token
 * verification, tenant checks, the same rows, a byte-identical body: checked before timing). Both servers are warmed
 * up; the CPU each process spent per request is printed with every run, and so is the CPU other programs on the
 * machine took meanwhile, since on a 2-core machine that alone can halve a figure.
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

/** CPU seconds (user + system) a process has used, and the whole machine's busy CPU seconds; 0 where /proc is absent. */
const TICK = 100;
function cpuOf(pid: number | undefined): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) / TICK;
  } catch {
    return 0;
  }
}
/** CPU seconds used so far by every process with this command name (PostgreSQL backends, nats-server). */
function cpuOfCommand(name: string): number {
  let sum = 0;
  try {
    for (const pid of readdirSync("/proc")) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
        if (stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")) === name) sum += cpuOf(Number(pid));
      } catch {
        /* gone */
      }
    }
  } catch {
    /* no /proc */
  }
  return sum;
}
function machineBusy(): number {
  try {
    const [, ...f] = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / TICK; // user nice system irq softirq steal
  } catch {
    return 0;
  }
}

type Pick = () => { path: string; headers: Record<string, string> };
function run(title: string, url: string, pick: Pick, pids: Record<string, number | undefined> = {}, duration = DURATION) {
  const own = { bench: process.pid, ...pids };
  const sample = () => ({ ...Object.fromEntries(Object.entries(own).map(([k, p]) => [k, cpuOf(p)])), postgres: cpuOfCommand("postgres"), nats: cpuOfCommand("nats-server") });
  const before = sample();
  const busy0 = machineBusy();
  return new Promise<autocannon.Result>((resolve, reject) => {
    autocannon(
      { url, connections: CONNECTIONS, duration, requests: [{ setupRequest: (req: any) => ({ ...req, ...pick() }) }] },
      (err, res) => (err ? reject(err) : resolve(res)),
    );
  }).then((r) => {
    const non2xx = r.non2xx + r.errors;
    const after = sample();
    const spent = Object.fromEntries(Object.entries(after).map(([k, t]) => [k, t - before[k as keyof typeof before]]));
    const ours = Object.values(spent).reduce((a, b) => a + b, 0);
    const others = Math.max(0, machineBusy() - busy0 - ours);
    const perReq = Object.entries(spent)
      .map(([k, t]) => `${k} ${((t * 1000) / Math.max(1, r.requests.total)).toFixed(2)}`)
      .join(", ");
    console.log(`${title.padEnd(44)} ${r.requests.average.toFixed(0).padStart(7)} req/s   p50 ${String(r.latency.p50).padStart(4)} ms   p99 ${String(r.latency.p99).padStart(4)} ms${non2xx ? `   (${non2xx} non-2xx/errors!)` : ""}`);
    if (busy0) console.log(`${"".padEnd(44)} CPU ms/request: ${perReq}; other programs on the machine ${((others / r.duration) * 100).toFixed(0)}% of a core`);
    return r;
  });
}

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
  const pids = { gateway: children[1].pid, services: children[0].pid };
  const barePids = { bare: children[2].pid };
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
    console.log(`autocannon: ${CONNECTIONS} connections, ${DURATION}s per run, after a warm-up of each server`);
    const warm = Math.max(2, Math.round(DURATION / 4));
    for (const pick of [byId, list]) {
      await run("warm-up gateway", "http://127.0.0.1:3998", pick, {}, warm);
      await run("warm-up bare", "http://127.0.0.1:3999", pick, {}, warm);
    }
    const results: Record<string, [autocannon.Result, autocannon.Result]> = {};
    for (const [name, pick] of [["GET /deployments/:id", byId], ["GET /deployments (list, 50)", list]] as const) {
      const gw = await run(`gateway→NATS→services  ${name}`, "http://127.0.0.1:3998", pick, pids);
      const bare = await run(`bare node:http + pg    ${name}`, "http://127.0.0.1:3999", pick, barePids);
      results[name] = [gw, bare];
    }
    console.log("\nsummary");
    for (const [name, [gw, bare]] of Object.entries(results)) {
      const ratio = gw.requests.average / bare.requests.average;
      const verdict = ratio >= 0.5 && gw.latency.p99 < 50 ? "meets target" : "BELOW target";
      console.log(`${name.padEnd(30)} throughput ratio ${(ratio * 100).toFixed(0)}% of bare, gateway p99 ${gw.latency.p99} ms  → ${verdict} (≥50%, p99 < 50 ms)`);
    }
    if (mismatch) console.log("(the answers differed: see the WARNING above)");
  } finally {
    await stopAll(children);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
