import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import type { ChildProcess } from "node:child_process";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { ServiceBroker } from "moleculer";
import { Client, Pool } from "pg";
import { brokerConfig } from "../moleculer.config";
import { migrate } from "../lib/db";
import { mintToken } from "../bin/token";
import { freshDatabase, startProcess, waitForHttp } from "./lib";
import type { PgProfile } from "./pg-profile";

/**
 * bench:saga — 500 provisioning sagas, 50 in flight, against the DigitalOcean simulator with no activation delay.
 * Gateway, services (deployments, subscriptions, inventory, dns), provisioning and the simulator each run as their
 * own process; the nodes talk over NATS and share one PostgreSQL database. The bench drives POST /deployments
 * {provision: true} over HTTP and learns each saga's end from the engine's `provisioning.saga.*` broadcasts (a small
 * broker of its own in the same namespace), falling back to GET /sagas/:id for a saga it has heard nothing about.
 *
 * The limit it compares against: PostgreSQL's single-row autocommit insert rate at the same concurrency, divided by
 * the commits one saga costs (xact_commit of the bench database over the run / sagas).
 *
 * Knobs: BENCH_SAGAS (500), BENCH_IN_FLIGHT (50), BENCH_WARMUP_SAGAS (50), PROVISION_POLL_MS (50),
 * BENCH_PROVISIONING_POOL (DB_POOL_MAX of the provisioning node only), BENCH_PROFILE=1 (preloads bench/pg-profile into
 * the nodes and prints, per saga, the statements each node sent, its connection checkouts, waits and hold times).
 */
const DB = process.env.BENCH_SAGA_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/arcadia_bench_saga";
const NATS = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";
const SAGAS = Number(process.env.BENCH_SAGAS ?? 500);
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 50);
const WARMUP = Number(process.env.BENCH_WARMUP_SAGAS ?? 50);
const TENANTS = 50;
const GW_PORT = 3988;
const SIM_PORT = 3989;
const COMMIT_PROBE_MS = 5000;
const TARGET = 0.4;
const POLL_MS = process.env.PROVISION_POLL_MS ?? "50";
const GW = `http://127.0.0.1:${GW_PORT}/api/v1`;
const SIM = `http://127.0.0.1:${SIM_PORT}`;
const TERMINAL = new Set(["succeeded", "compensated", "compensation_failed"]);
// An idle backend reports its statistics after at most 10 s (PGSTAT_IDLE_INTERVAL): wait that long after the warm-up.
const STATS_SETTLE_MS = 11_000;
// Whatever happens (a node that never answers, a pool that never drains), the bench ends.
const WATCHDOG_MS = Number(process.env.BENCH_WATCHDOG_MS ?? 360_000);
const PROFILE = process.env.BENCH_PROFILE === "1";
const PROVISIONING_POOL = process.env.BENCH_PROVISIONING_POOL;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------- child processes: memory and CPU ----------
interface Node { name: string; child: ChildProcess; peakRss: number; logLines: number }

function procStatus(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  try {
    for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
      const m = /^(Vm\w+):\s+(\d+) kB/.exec(line);
      if (m) out[m[1]] = Number(m[2]) * 1024;
    }
  } catch { /* gone */ }
  return out;
}
/** utime + stime of a process, in seconds. */
function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // fields 14 and 15, USER_HZ = 100
  } catch {
    return 0;
  }
}
/** CPU of every postgres process on the machine (the server is shared, so this is an upper bound for this bench). */
function postgresCpuSeconds(): number {
  let total = 0;
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, "utf8").trim() === "postgres") total += cpuSeconds(Number(d));
    } catch { /* gone */ }
  }
  return total;
}
const mb = (b: number) => `${(b / 1048576).toFixed(0)} MB`;

function spawnNode(name: string, script: string, env: Record<string, string>): Node {
  const node: Node = { name, child: startProcess(name, script, env), peakRss: 0, logLines: 0 };
  spawned.push(node);
  // Pino writes to stdout; a pipe nobody reads would eventually block the child.
  node.child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    for (const line of d.split("\n").filter(Boolean)) {
      if (++node.logLines <= 10) process.stderr.write(`[${name}] ${line.slice(0, 400)}\n`);
    }
  });
  node.child.on("exit", (code, signal) => {
    if (!stopping) process.stderr.write(`[${name}] exited early (code ${code}, signal ${signal})\n`);
  });
  return node;
}
let stopping = false;
const spawned: Node[] = [];
// No node outlives the bench, whichever way it ends.
process.on("exit", () => {
  for (const n of spawned) if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill("SIGKILL");
});

async function stopNodes(nodes: Node[], timeoutMs = 10_000) {
  await Promise.all(nodes.map((n) => new Promise<void>((resolve) => {
    if (n.child.exitCode !== null || n.child.signalCode !== null) return resolve();
    const t = setTimeout(() => { n.child.kill("SIGKILL"); }, timeoutMs);
    n.child.once("exit", () => { clearTimeout(t); resolve(); });
    n.child.kill("SIGTERM");
  })));
}

// ---------- PostgreSQL counters ----------
interface DbStats { xact_commit: number; xact_rollback: number; tup_inserted: number; tup_updated: number; tup_deleted: number; next_xid: number; others: Map<string, number> }
async function dbStats(pg: Client): Promise<DbStats> {
  const { rows } = await pg.query(
    `select xact_commit::bigint, xact_rollback::bigint, tup_inserted::bigint, tup_updated::bigint, tup_deleted::bigint,
            pg_snapshot_xmax(pg_current_snapshot())::text::bigint as next_xid
     from pg_stat_database where datname = current_database()`,
  );
  const others = await pg.query("select datname, xact_commit::bigint as n from pg_stat_database where datname is not null and datname <> current_database()");
  return {
    ...(Object.fromEntries(Object.entries(rows[0]).map(([k, v]) => [k, Number(v)])) as Omit<DbStats, "others">),
    others: new Map(others.rows.map((r) => [r.datname as string, Number(r.n)])),
  };
}
/** Commits in the other databases between two snapshots (a database dropped meanwhile counts for nothing). */
function otherCommits(before: DbStats, after: DbStats) {
  let n = 0;
  for (const [db, c] of after.others) n += Math.max(0, c - (before.others.get(db) ?? 0));
  return n;
}

/** Single-row autocommit inserts from `clients` concurrent connections for `ms`: PostgreSQL's commit rate here. */
async function commitRate(clients: number, ms: number) {
  const pool = new Pool({ connectionString: DB, max: clients });
  try {
    await pool.query("create table if not exists bench_commit_probe (id bigserial primary key, client int not null, n int not null, at timestamptz not null default now())");
    // Open every connection first. Another workload may hold most of max_connections: retry, never leave one checked out.
    for (let attempt = 1; ; attempt++) {
      const got = await Promise.allSettled(Array.from({ length: clients }, () => pool.connect()));
      got.forEach((g) => g.status === "fulfilled" && g.value.release());
      const failed = got.find((g): g is PromiseRejectedResult => g.status === "rejected");
      if (!failed) break;
      if (attempt === 5) throw new Error(`PostgreSQL refused ${clients} connections for the commit probe: ${failed.reason?.message ?? failed.reason}`);
      await sleep(2000);
    }
    let commits = 0;
    const t0 = performance.now();
    const deadline = t0 + ms;
    await Promise.all(Array.from({ length: clients }, async (_, c) => {
      for (let n = 0; performance.now() < deadline; n++) {
        await pool.query("insert into bench_commit_probe (client, n) values ($1, $2)", [c, n]);
        commits++;
      }
    }));
    const seconds = (performance.now() - t0) / 1000;
    return { commits, seconds, rate: commits / seconds };
  } finally {
    await pool.end();
  }
}

// ---------- the saga driver ----------
interface SagaEvent { saga_id: string; status: string; error: string | null }
const waiters = new Map<string, (ev: SagaEvent) => void>();
const early = new Map<string, SagaEvent>();
let eventsSeen = 0;
let polls = 0;

function onSagaEvent(ev: SagaEvent) {
  if (!TERMINAL.has(ev.status)) return;
  eventsSeen++;
  const w = waiters.get(ev.saga_id);
  if (w) {
    waiters.delete(ev.saga_id);
    w(ev);
  } else early.set(ev.saga_id, ev); // finished before its 202 reached us
}

/** The saga's end: its broadcast, or (if nothing arrives in 10 s) GET /sagas/:id once a second, up to 90 s. */
function terminal(sagaId: string, token: string): Promise<SagaEvent> {
  const known = early.get(sagaId);
  if (known) {
    early.delete(sagaId);
    return Promise.resolve(known);
  }
  return new Promise<SagaEvent>((resolve) => {
    let done = false;
    const finish = (ev: SagaEvent) => {
      if (done) return;
      done = true;
      waiters.delete(sagaId);
      resolve(ev);
    };
    waiters.set(sagaId, finish);
    (async () => {
      await sleep(20_000);
      const deadline = Date.now() + 70_000;
      while (!done) {
        polls++;
        try {
          const res = await fetch(`${GW}/sagas/${sagaId}`, { headers: { authorization: `Bearer ${token}` } });
          const body: any = await res.json();
          if (res.ok && TERMINAL.has(body.saga?.status)) return finish({ saga_id: sagaId, status: body.saga.status, error: body.saga.error });
        } catch { /* try again */ }
        if (Date.now() > deadline) return finish({ saga_id: sagaId, status: "timeout", error: "no terminal state within 90 s" });
        await sleep(1000);
      }
    })();
  });
}

interface Outcome { i: number; ok: boolean; status: string; error?: string; postMs: number; sagaMs: number; totalMs: number; sagaId?: string }

async function runSagas(prefix: string, count: number, inFlight: number, tokens: string[]): Promise<{ outcomes: Outcome[]; seconds: number }> {
  const outcomes: Outcome[] = [];
  let next = 0;
  const t0 = performance.now();
  const one = async (i: number): Promise<Outcome> => {
    const t = i % TENANTS;
    const token = tokens[t];
    const start = performance.now();
    let res: Response;
    let body: any;
    try {
      res = await fetch(`${GW}/deployments`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ slug: `${prefix}-${i}`, provision: true }),
      });
      body = await res.json();
    } catch (err) {
      return { i, ok: false, status: "http_error", error: String(err), postMs: performance.now() - start, sagaMs: 0, totalMs: performance.now() - start };
    }
    const accepted = performance.now();
    if (res.status !== 202 || !body?.saga?.id) {
      return { i, ok: false, status: `http_${res.status}`, error: JSON.stringify(body).slice(0, 300), postMs: accepted - start, sagaMs: 0, totalMs: accepted - start };
    }
    const ev = await terminal(body.saga.id, token);
    const end = performance.now();
    return { i, ok: ev.status === "succeeded", status: ev.status, error: ev.error ?? undefined, postMs: accepted - start, sagaMs: end - accepted, totalMs: end - start, sagaId: body.saga.id };
  };
  await Promise.all(Array.from({ length: inFlight }, async () => {
    while (next < count) outcomes.push(await one(next++));
  }));
  return { outcomes, seconds: (performance.now() - t0) / 1000 };
}

function pct(xs: number[], q: number) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}
const ms = (x: number) => `${x.toFixed(0)} ms`;

async function main() {
  const wall0 = performance.now();
  const namespace = `bench-saga-${process.pid}`;
  console.log(`bench:saga — ${SAGAS} sagas, ${IN_FLIGHT} in flight, ${TENANTS} tenants; simulator SIM_ACTIVE_AFTER_MS=0, PROVISION_POLL_MS=${POLL_MS}`);
  console.log(`  nodes: gateway (api) | services (deployments,subscriptions,inventory,dns) | provisioning | simulator — NATS ${NATS} namespace ${namespace}, ${DB}`);

  await freshDatabase(DB);
  process.env.DATABASE_URL = DB;
  await migrate();
  // The limit, measured before the nodes start (their pools would take connections from the same max_connections):
  // PostgreSQL's single-row commit rate at the same concurrency.
  const probe = await commitRate(IN_FLIGHT, COMMIT_PROBE_MS);
  {
    const pg = new Client({ connectionString: DB });
    await pg.connect();
    const settings = (await pg.query("select name, setting from pg_settings where name in ('synchronous_commit','fsync','commit_delay','wal_sync_method') order by name")).rows;
    await pg.end();
    console.log(`PostgreSQL single-row commit rate: ${probe.rate.toFixed(0)} commits/s (${IN_FLIGHT} clients, pg Pool max ${IN_FLIGHT}, autocommit insert, ${probe.seconds.toFixed(1)} s; ${settings.map((s) => `${s.name}=${s.setting}`).join(", ")})`);
  }
  const tokens = await Promise.all(Array.from({ length: TENANTS }, (_, t) => mintToken({ tenant: `tenant-${t}`, sub: "bench" })));

  const common: Record<string, string> = { DATABASE_URL: DB, TRANSPORTER: NATS, NAMESPACE: namespace };
  const profileDir = PROFILE ? mkdtempSync(join(tmpdir(), "bench-saga-profile-")) : "";
  const profiled: Record<string, string> = PROFILE ? { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ""} --require ${join(__dirname, "pg-profile.js")}`.trim(), PG_PROFILE_DIR: profileDir } : {};
  const provider = { DO_API_URL: SIM, DO_TOKEN: "bench-token", DNS_DOMAIN: "apps.bench.test" };
  const nodes: Node[] = [
    spawnNode("sim", "dist/bin/sim.js", { SIM_PORT: String(SIM_PORT), SIM_ACTIVE_AFTER_MS: "0", SIM_TOKEN: "bench-token", SIM_RATE_LIMIT: "10000000" }),
    spawnNode("services", "dist/bin/start.js", { ...common, ...provider, ...profiled, SERVICES: "deployments,subscriptions,inventory,dns", NODE_ID: "bench-saga-services" }),
    spawnNode("provisioning", "dist/bin/start.js", { ...common, ...provider, ...profiled, SERVICES: "provisioning", NODE_ID: "bench-saga-provisioning", PROVISION_POLL_MS: POLL_MS,
      ...(PROVISIONING_POOL ? { DB_POOL_MAX: PROVISIONING_POOL } : {}) }),
    spawnNode("gateway", "dist/bin/start.js", { ...common, ...profiled, SERVICES: "api", NODE_ID: "bench-saga-gateway", PORT: String(GW_PORT) }),
  ];
  const cfg = brokerConfig({ ...process.env, ...common, NODE_ID: "bench-saga-driver", LOG_LEVEL: "silent", METRICS_PORT: "" });
  const broker = new ServiceBroker(cfg);
  broker.createService({
    name: "saga-bench-watch",
    events: {
      "provisioning.saga.*"(ctx: any) {
        onSagaEvent({ ...ctx.params, status: ctx.params.status ?? String(ctx.eventName).split(".").pop() });
      },
    },
  });
  const pg = new Client({ connectionString: DB });
  let sampler: NodeJS.Timeout | undefined;
  try {
    await broker.start();
    await pg.connect();
    await waitForHttp(`${SIM}/v2/_sim/state`);
    await waitForHttp(`${GW}/health`);
    await broker.waitForServices(["v1.deployments", "v1.subscriptions", "v1.inventory", "v1.dns", "v1.provisioning", "api"], 30_000);
    for (let i = 0; ; i++) {
      const r = await fetch(`${GW}/ready`);
      if (r.status === 200) break;
      if (i > 150) throw new Error(`gateway not ready: ${r.status} ${await r.text()}`);
      await sleep(200);
    }

    // Warm-up (JIT, pools, discovery on every node), then an empty simulator for the measured run.
    const warm = await runSagas("w", WARMUP, IN_FLIGHT, tokens);
    const warmFailed = warm.outcomes.filter((o) => !o.ok);
    console.log(`warm-up: ${WARMUP} sagas in ${warm.seconds.toFixed(1)} s (${(WARMUP / warm.seconds).toFixed(1)}/s)${warmFailed.length ? `, ${warmFailed.length} FAILED: ${warmFailed.slice(0, 3).map((o) => `${o.status} ${o.error}`).join("; ")}` : ""}; simulator reset`);
    const warmEnd = Date.now();
    if ((await fetch(`${SIM}/v2/_sim/reset`, { method: "POST" })).status !== 204) throw new Error("simulator reset failed");

    const settle = STATS_SETTLE_MS - (Date.now() - warmEnd);
    if (settle > 0) await sleep(settle);

    // ---------- the measured run ----------
    const before = await dbStats(pg);
    const load0 = loadavg()[0];
    eventsSeen = 0;
    polls = 0;
    if (PROFILE) for (const n of nodes) if (n.name !== "sim") n.child.kill("SIGUSR2"); // zero the profiles
    const cpu0 = new Map(nodes.map((n) => [n.name, cpuSeconds(n.child.pid!)]));
    const pgCpu0 = postgresCpuSeconds();
    const benchCpu0 = process.cpuUsage();
    for (const n of nodes) n.peakRss = procStatus(n.child.pid!).VmRSS ?? 0;
    sampler = setInterval(() => {
      for (const n of nodes) n.peakRss = Math.max(n.peakRss, procStatus(n.child.pid!).VmRSS ?? 0);
    }, 200);
    const run = await runSagas("s", SAGAS, IN_FLIGHT, tokens);
    clearInterval(sampler);
    const cpu = new Map(nodes.map((n) => [n.name, cpuSeconds(n.child.pid!) - cpu0.get(n.name)!]));
    const pgCpu = postgresCpuSeconds() - pgCpu0;
    const benchCpuU = process.cpuUsage(benchCpu0);
    const load1 = loadavg()[0];
    const hwm = new Map(nodes.map((n) => [n.name, procStatus(n.child.pid!).VmHWM ?? 0]));

    // Stop the arcadia nodes (the simulator stays up for the check): a backend reports its statistics on exit.
    stopping = true;
    await stopNodes(nodes.filter((n) => n.name !== "sim"));
    await sleep(300);
    const after = await dbStats(pg);

    // ---------- figures ----------
    const ok = run.outcomes.filter((o) => o.ok);
    const failed = run.outcomes.filter((o) => !o.ok);
    const rate = SAGAS / run.seconds;
    const commits = after.xact_commit - before.xact_commit;
    const perSaga = commits / SAGAS;
    const writeXacts = after.next_xid - before.next_xid;
    const limit = probe.rate / perSaga;
    const ratio = rate / limit;
    const sagaMs = run.outcomes.filter((o) => o.sagaId && TERMINAL.has(o.status)).map((o) => o.sagaMs);
    const totalMs = run.outcomes.filter((o) => o.sagaId && TERMINAL.has(o.status)).map((o) => o.totalMs);
    const postMs = run.outcomes.map((o) => o.postMs);

    console.log(`\nrun: ${SAGAS} sagas in ${run.seconds.toFixed(1)} s`);
    console.log(`  throughput                  ${rate.toFixed(1)} sagas/s`);
    console.log(`  saga time (202 → terminal)  p50 ${ms(pct(sagaMs, 0.5))}   p99 ${ms(pct(sagaMs, 0.99))}   max ${ms(pct(sagaMs, 1))}`);
    console.log(`  POST /deployments → 202     p50 ${ms(pct(postMs, 0.5))}   p99 ${ms(pct(postMs, 0.99))}   (request sent → terminal: p50 ${ms(pct(totalMs, 0.5))}, p99 ${ms(pct(totalMs, 0.99))})`);
    console.log(`  failures                    ${failed.length}${failed.length ? `  (${[...new Set(failed.map((f) => `${f.status}: ${f.error}`))].slice(0, 5).join(" | ")})` : ""}`);
    console.log(`  database commits per saga   ${perSaga.toFixed(1)}  (xact_commit +${commits} / ${SAGAS}; counts every statement run outside a transaction — reads included — as one commit, plus ${(after.xact_rollback - before.xact_rollback)} rollbacks)`);
    console.log(`    of which writes           ${(writeXacts / SAGAS).toFixed(1)}  (transaction ids assigned cluster-wide / ${SAGAS}: the commits that wrote something)`);
    console.log(`    rows per saga             ${((after.tup_inserted - before.tup_inserted) / SAGAS).toFixed(1)} inserted, ${((after.tup_updated - before.tup_updated) / SAGAS).toFixed(1)} updated`);
    console.log(`  peak memory (RSS) per node  ${nodes.map((n) => `${n.name} ${mb(n.peakRss)} (VmHWM ${mb(hwm.get(n.name)!)})`).join(", ")}`);
    console.log(`  CPU during the run          ${nodes.map((n) => `${n.name} ${((cpu.get(n.name)! / run.seconds) * 100).toFixed(0)}%`).join(", ")}, bench ${(((benchCpuU.user + benchCpuU.system) / 1e6 / run.seconds) * 100).toFixed(0)}%, postgres (all processes) ${((pgCpu / run.seconds) * 100).toFixed(0)}% of one core (${availableParallelism()} cores)`);
    console.log(`  machine                     load average ${load0.toFixed(1)} → ${load1.toFixed(1)} on ${availableParallelism()} cores; other databases on this server committed ${otherCommits(before, after)} transactions during the run (another workload shares the machine if these are high)`);
    console.log(`  saga ends heard as events   ${eventsSeen} / ${SAGAS} (GET /sagas/:id polls: ${polls})`);

    console.log(`\nlimit: ${probe.rate.toFixed(0)} commits/s ÷ ${perSaga.toFixed(1)} commits/saga = ${limit.toFixed(1)} sagas/s`);
    console.log(`measured / limit = ${rate.toFixed(1)} / ${limit.toFixed(1)} = ${(ratio * 100).toFixed(0)}%  → ${ratio >= TARGET ? "meets target" : "BELOW target"} (≥ ${TARGET * 100}%)`);

    if (PROFILE) printProfiles(profileDir, run.seconds);

    // ---------- checks ----------
    const state: any = await (await fetch(`${SIM}/v2/_sim/state`)).json();
    const droplets: any[] = state.droplets;
    const db = (await pg.query(`select (select count(*) from sagas s join deployments d on d.id = s.deployment_id where d.slug like 's-%' and s.status = 'succeeded')::int as sagas_ok,
                                      (select count(*) from deployments where slug like 's-%' and state = 'active')::int as active`)).rows[0];
    const problems: string[] = [];
    if (ok.length !== SAGAS) problems.push(`${SAGAS - ok.length} sagas did not succeed`);
    if (droplets.length !== SAGAS) problems.push(`simulator holds ${droplets.length} droplets, expected ${SAGAS}`);
    if (db.sagas_ok !== SAGAS) problems.push(`database has ${db.sagas_ok} succeeded sagas, expected ${SAGAS}`);
    if (db.active !== SAGAS) problems.push(`database has ${db.active} active deployments, expected ${SAGAS}`);
    console.log(`\ncheck: ${ok.length}/${SAGAS} sagas succeeded, simulator holds ${droplets.length} droplets (${droplets.filter((d) => d.status === "active").length} active), database: ${db.sagas_ok} succeeded sagas, ${db.active} active deployments → ${problems.length ? `FAILED: ${problems.join("; ")}` : "ok"}`);
    console.log(`(total bench time ${((performance.now() - wall0) / 1000).toFixed(0)} s)`);
    if (problems.length) process.exitCode = 1;
  } finally {
    clearInterval(sampler);
    stopping = true;
    await broker.stop().catch(() => undefined);
    await pg.end().catch(() => undefined);
    await stopNodes(nodes);
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  }
}

/** Per saga, per node: statements, connection checkouts, and what the pool allows (BENCH_PROFILE=1). */
function printProfiles(dir: string, runSeconds: number) {
  console.log(`
profile (per saga, measured run; statement = one round trip to PostgreSQL):`);
  for (const f of readdirSync(dir).sort()) {
    const p: PgProfile = JSON.parse(readFileSync(join(dir, f), "utf8"));
    const stmts = Object.entries(p.statements).sort((a, b) => b[1].n - a[1].n);
    const total = stmts.reduce((a, [, v]) => a + v.n, 0);
    if (!total) continue;
    const holdPerSaga = p.holdMs.total / SAGAS;
    const all = stmts.flatMap(([, v]) => [v]);
    const meanMs = all.reduce((a, v) => a + v.totalMs, 0) / total;
    console.log(`  ${p.node.replace("bench-saga-", "").padEnd(12)} ${(total / SAGAS).toFixed(1)} statements, ${(p.checkouts / SAGAS).toFixed(1)} connection checkouts; statement mean ${meanMs.toFixed(1)} ms; pool wait mean ${(p.waitMs.total / Math.max(1, p.checkouts)).toFixed(1)} ms (p99 ${p.waitMs.p99.toFixed(0)} ms)`);
    console.log(`  ${"".padEnd(12)} connection held ${holdPerSaga.toFixed(0)} ms/saga → pool of ${p.poolMax} saturates at ${((p.poolMax * 1000) / holdPerSaga).toFixed(1)} sagas/s (pool busy ${((p.holdMs.total / 1000 / runSeconds / p.poolMax) * 100).toFixed(0)}% of the run); event-loop delay p99 ${p.eventLoopDelayMs.p99.toFixed(0)} ms`);
    console.log(`  ${"".padEnd(12)} ${stmts.slice(0, 9).map(([k, v]) => `${k} ${(v.n / SAGAS).toFixed(1)}`).join(", ")}`);
  }
}

setTimeout(() => {
  console.error(`bench:saga did not finish in ${WATCHDOG_MS / 1000} s; stopping`);
  process.exit(1);
}, WATCHDOG_MS).unref();

main().then(
  () => process.exit(process.exitCode ?? 0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
