import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import type { ChildProcess } from "node:child_process";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { brokerConfig } from "../moleculer.config";
import { migrate } from "../lib/db";
import { mintToken } from "../bin/token";
import { freshDatabase, Meter, pct, startProcess, table, waitForHttp, writeJson, type Window } from "./lib";
import type { PgProfile } from "./pg-profile";
import { describeProfile, nowUs, readProfile, type Span } from "./cpu-prof";

/**
 * bench:saga — what a saga costs, per unit of work (issue 13). Gateway, services (deployments, subscriptions,
 * inventory, dns), provisioning and the DigitalOcean simulator each run as their own process; the nodes talk over
 * NATS and share one PostgreSQL database. Two measured phases in one run:
 *   1. provision: BENCH_SAGAS creates with {provision: true} over HTTP, BENCH_IN_FLIGHT at a time; a unit is one saga.
 *   2. lifecycle: for every deployment phase 1 provisioned, a round trip — POST /deployments/:id/transition to
 *      `paused`, wait for its power_off saga, then to `active`, wait for its power_on saga; a unit is one round trip.
 * The bench learns a saga's end from the engine's `provisioning.saga.*` broadcasts (a small broker of its own in the
 * same namespace), falling back to GET /sagas/:id for a saga it has heard nothing about.
 *
 * Per phase it prints CPU ms per unit for every process (from /proc/<pid>/stat utime+stime: the nodes, the
 * simulator, the bench, the NATS server, PostgreSQL's backends serving the bench database and its shared server
 * processes) and in total; commits per unit (xact_commit of the bench database); peak RSS per node; units/s and
 * p50/p99. BENCH_JSON=file writes the same figures as JSON.
 *
 * Knobs: BENCH_SAGAS (500), BENCH_IN_FLIGHT (50), BENCH_WARMUP_SAGAS (50), PROVISION_POLL_MS (50),
 * BENCH_LIFECYCLE=0 (skip phase 2), BENCH_SERVICES (the services node's SERVICES), BENCH_BASELINE_CPU_MS (64: issue 13's starting CPU per saga; the target is half),
 * BENCH_JSON, BENCH_PROFILE=1 (preloads bench/pg-profile into the nodes: statements, checkouts and pool waits per
 * unit), BENCH_CPU_PROF=dir (runs the nodes under node --cpu-prof, profiles written to dir when they stop).
 */
const DB = process.env.BENCH_SAGA_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/arcadia_bench_saga";
const DB_NAME = new URL(DB).pathname.slice(1);
const NATS = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";
const SAGAS = Number(process.env.BENCH_SAGAS ?? 500);
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 50);
const WARMUP = Number(process.env.BENCH_WARMUP_SAGAS ?? 50);
const LIFECYCLE = process.env.BENCH_LIFECYCLE !== "0";
// The whole system as deployed: /ready (SPEC §8) needs every routed service, and billing and webhooks do real work per
// saga (the overdue check, event intake and the watch journal). BENCH_SERVICES overrides it.
const SERVICES = process.env.BENCH_SERVICES ?? "deployments,subscriptions,inventory,dns,billing,webhooks";
const BASELINE_CPU_MS = Number(process.env.BENCH_BASELINE_CPU_MS ?? 64);
const TARGET_COMMITS = 15;
const TARGET_RSS = 200 * 1048576;
const TENANTS = 50;
const GW_PORT = 3988;
const SIM_PORT = 3989;
const POLL_MS = process.env.PROVISION_POLL_MS ?? "50";
const GW = `http://127.0.0.1:${GW_PORT}/api/v1`;
const SIM = `http://127.0.0.1:${SIM_PORT}`;
const TERMINAL = new Set(["succeeded", "failed", "compensated", "compensation_failed"]);
// An idle backend reports its statistics after at most 10 s (PGSTAT_IDLE_INTERVAL): a phase's commits are read
// that long after it ends, and the idle background (sweeps, lease renewals) over that wait is measured separately.
const STATS_SETTLE_MS = 11_000;
// Whatever happens (a node that never answers, a pool that never drains), the bench ends.
const WATCHDOG_MS = Number(process.env.BENCH_WATCHDOG_MS ?? 600_000);
const PROFILE = process.env.BENCH_PROFILE === "1";
const CPU_PROF = process.env.BENCH_CPU_PROF;
const NODE_NAMES = ["gateway", "services", "provisioning", "sim"] as const;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const mb = (b: number) => `${(b / 1048576).toFixed(0)} MB`;
const ms = (x: number) => (Number.isFinite(x) ? `${x.toFixed(0)} ms` : "-");

// ---------- child processes ----------
interface Node { name: string; child: ChildProcess; logLines: number }
let stopping = false;
const spawned: Node[] = [];
// No node outlives the bench, whichever way it ends.
process.on("exit", () => {
  for (const n of spawned) if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill("SIGKILL");
});

function spawnNode(name: string, script: string, env: Record<string, string>): Node {
  const node: Node = { name, child: startProcess(name, script, env), logLines: 0 };
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

async function stopNodes(nodes: Node[], timeoutMs = 10_000) {
  await Promise.all(nodes.map((n) => new Promise<void>((resolve) => {
    if (n.child.exitCode !== null || n.child.signalCode !== null) return resolve();
    const t = setTimeout(() => { n.child.kill("SIGKILL"); }, timeoutMs);
    n.child.once("exit", () => { clearTimeout(t); resolve(); });
    n.child.kill("SIGTERM");
  })));
}

// ---------- PostgreSQL counters (read from the `postgres` database, so reading them adds nothing to the bench's) ----------
interface DbStats { xact_commit: number; xact_rollback: number; tup_inserted: number; tup_updated: number; tup_deleted: number; next_xid: number; others: Map<string, number> }
async function dbStats(pg: Client): Promise<DbStats> {
  const { rows } = await pg.query(
    `select xact_commit::bigint, xact_rollback::bigint, tup_inserted::bigint, tup_updated::bigint, tup_deleted::bigint,
            pg_snapshot_xmax(pg_current_snapshot())::text::bigint as next_xid
     from pg_stat_database where datname = $1`,
    [DB_NAME],
  );
  const others = await pg.query("select datname, xact_commit::bigint as n from pg_stat_database where datname is not null and datname <> $1", [DB_NAME]);
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

// ---------- waiting for sagas ----------
interface SagaEnd { saga_id: string; status: string; error: string | null; kind?: string }
const waiters = new Map<string, (ev: SagaEnd) => void>();
const early = new Map<string, SagaEnd>();
let eventsSeen = 0;
let polls = 0;

function onSagaEvent(ev: SagaEnd) {
  if (!TERMINAL.has(ev.status)) return;
  eventsSeen++;
  const w = waiters.get(ev.saga_id);
  if (w) {
    waiters.delete(ev.saga_id);
    w(ev);
  } else early.set(ev.saga_id, ev); // finished before its answer reached us
}

/** The saga's end: its broadcast, or (if nothing arrives in 20 s) GET /sagas/:id once a second, up to 90 s. */
function terminal(sagaId: string, token: string): Promise<SagaEnd> {
  const known = early.get(sagaId);
  if (known) {
    early.delete(sagaId);
    return Promise.resolve(known);
  }
  return new Promise<SagaEnd>((resolve) => {
    let done = false;
    const finish = (ev: SagaEnd) => {
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
          // 404 until the engine has a requested saga; keep asking.
          const res = await fetch(`${GW}/sagas/${sagaId}`, { headers: { authorization: `Bearer ${token}` } });
          const body: any = await res.json();
          if (res.ok && TERMINAL.has(body.saga?.status)) return finish({ saga_id: sagaId, status: body.saga.status, error: body.saga.error, kind: body.saga.kind });
        } catch { /* try again */ }
        if (Date.now() > deadline) return finish({ saga_id: sagaId, status: "timeout", error: "no terminal state within 90 s" });
        await sleep(1000);
      }
    })();
  });
}

async function call(method: string, path: string, token: string, body: unknown): Promise<{ status: number; body: any; error?: string }> {
  try {
    const res = await fetch(`${GW}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json().catch(() => null) };
  } catch (err) {
    return { status: 0, body: null, error: String(err) };
  }
}

/** `count` jobs, `inFlight` at a time. */
async function pool<T>(count: number, inFlight: number, one: (i: number) => Promise<T>): Promise<{ outcomes: T[]; seconds: number }> {
  const outcomes: T[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, async () => {
    while (next < count) outcomes.push(await one(next++));
  }));
  return { outcomes, seconds: (performance.now() - t0) / 1000 };
}

// ---------- phase 1: provisioning ----------
interface Provisioned { i: number; ok: boolean; status: string; error?: string; postMs: number; sagaMs: number; totalMs: number; sagaId?: string; deploymentId?: string; tenant: number }

function runProvision(prefix: string, count: number, tokens: string[]) {
  return pool<Provisioned>(count, IN_FLIGHT, async (i) => {
    const tenant = i % TENANTS;
    const start = performance.now();
    const res = await call("POST", "/deployments", tokens[tenant], { slug: `${prefix}-${i}`, provision: true });
    const accepted = performance.now();
    const base = { i, tenant, postMs: accepted - start, deploymentId: res.body?.deployment?.id as string | undefined };
    if (res.status !== 202 || !res.body?.saga?.id) {
      return { ...base, ok: false, status: res.status ? `http_${res.status}` : "http_error", error: res.error ?? JSON.stringify(res.body).slice(0, 300), sagaMs: 0, totalMs: accepted - start };
    }
    const ev = await terminal(res.body.saga.id, tokens[tenant]);
    const end = performance.now();
    return { ...base, ok: ev.status === "succeeded", status: ev.status, error: ev.error ?? undefined, sagaMs: end - accepted, totalMs: end - start, sagaId: res.body.saga.id };
  });
}

// ---------- phase 2: lifecycle round trips ----------
interface RoundTrip { ok: boolean; status: string; error?: string; offAnswerMs: number; offMs: number; onAnswerMs: number; onMs: number; totalMs: number; sagas: number }

/** One move and its saga: the transition's answer, then the saga's end. */
async function move(d: Provisioned, to: string, kind: string, tokens: string[]) {
  const token = tokens[d.tenant];
  const t0 = performance.now();
  const res = await call("POST", `/deployments/${d.deploymentId}/transition`, token, { to_state: to });
  const answered = performance.now();
  if (res.status !== 200) return { ok: false, status: res.status ? `${kind}: http_${res.status}` : `${kind}: http_error`, error: res.error ?? JSON.stringify(res.body).slice(0, 300), answerMs: answered - t0, sagaMs: 0, sagas: 0 };
  if (!res.body?.saga?.id) return { ok: false, status: `${kind}: no saga`, error: `transition to ${to} answered ${JSON.stringify(Object.keys(res.body ?? {}))} without a saga (lifecycle sagas not in this build, or no live droplet)`, answerMs: answered - t0, sagaMs: 0, sagas: 0 };
  const ev = await terminal(res.body.saga.id, token);
  const ok = ev.status === "succeeded";
  return { ok, status: ok ? "succeeded" : `${kind}: ${ev.status}`, error: ev.error ?? undefined, answerMs: answered - t0, sagaMs: performance.now() - answered, sagas: 1 };
}

function runRoundTrips(deployments: Provisioned[], tokens: string[]) {
  return pool<RoundTrip>(deployments.length, IN_FLIGHT, async (i) => {
    const d = deployments[i];
    const t0 = performance.now();
    const off = await move(d, "paused", "power_off", tokens);
    const fail = { onAnswerMs: 0, onMs: 0 };
    if (!off.ok) return { ...fail, ok: false, status: off.status, error: off.error, offAnswerMs: off.answerMs, offMs: off.sagaMs, totalMs: performance.now() - t0, sagas: off.sagas };
    const on = await move(d, "active", "power_on", tokens);
    return { ok: on.ok, status: on.status, error: on.error, offAnswerMs: off.answerMs, offMs: off.sagaMs, onAnswerMs: on.answerMs, onMs: on.sagaMs, totalMs: performance.now() - t0, sagas: 2 };
  });
}

// ---------- figures ----------
interface PhaseFigures {
  phase: string;
  unit: string;
  units: number;
  sagas: number;
  failures: number;
  failure_samples: string[];
  seconds: number;
  units_per_second: number;
  /** CPU ms per unit, per process, and in total (total = every row; postgres_other_databases is not in it). */
  cpu_ms_per_unit: Record<string, number>;
  /** Share of one core each process used over the phase. */
  cpu_share_of_core: Record<string, number>;
  commits_per_unit: number;
  commits: number;
  idle_commits_in_settle: number;
  write_transactions_per_unit: number;
  rollbacks: number;
  rows_per_unit: { inserted: number; updated: number; deleted: number };
  peak_rss_bytes: Record<string, number>;
  hwm_bytes: Record<string, number>;
  latency_ms: Record<string, { p50: number; p99: number; max: number }>;
  machine: { load_before: number; load_after: number; other_programs_share_of_core: number; postgres_other_databases_ms_per_unit: number; other_database_commits: number };
}

function figures(phase: string, unit: string, units: number, sagas: number, w: Window, before: DbStats, after: DbStats, idleCommitsPerSecond: number,
  failures: { status: string; error?: string }[], latency: Record<string, number[]>, load: [number, number]): PhaseFigures {
  const per = (x: number) => x / Math.max(1, units);
  const procs: Record<string, number> = {
    gateway: w.cpu.gateway, services: w.cpu.services, provisioning: w.cpu.provisioning, simulator: w.cpu.sim, bench: w.cpu.bench,
    nats: w.cpu.nats ?? 0, postgres_backends: w.postgres.backends, postgres_server: w.postgres.server,
  };
  const total = Object.values(procs).reduce((a, b) => a + b, 0);
  const all: [string, number][] = [...Object.entries(procs), ["total", total]];
  const cpuMs = Object.fromEntries(all.map(([k, s]) => [k, per(s * 1000)]));
  const share = Object.fromEntries(all.map(([k, s]) => [k, s / w.seconds]));
  const commits = after.xact_commit - before.xact_commit;
  return {
    phase, unit, units, sagas,
    failures: failures.length,
    failure_samples: [...new Set(failures.map((f) => `${f.status}: ${f.error ?? ""}`))].slice(0, 5),
    seconds: w.seconds,
    units_per_second: units / w.seconds,
    cpu_ms_per_unit: cpuMs,
    cpu_share_of_core: share,
    commits_per_unit: per(commits),
    commits,
    idle_commits_in_settle: idleCommitsPerSecond * (STATS_SETTLE_MS / 1000),
    write_transactions_per_unit: per(after.next_xid - before.next_xid),
    rollbacks: after.xact_rollback - before.xact_rollback,
    rows_per_unit: { inserted: per(after.tup_inserted - before.tup_inserted), updated: per(after.tup_updated - before.tup_updated), deleted: per(after.tup_deleted - before.tup_deleted) },
    peak_rss_bytes: { gateway: w.peakRss.gateway, services: w.peakRss.services, provisioning: w.peakRss.provisioning, simulator: w.peakRss.sim },
    hwm_bytes: { gateway: w.hwm.gateway, services: w.hwm.services, provisioning: w.hwm.provisioning, simulator: w.hwm.sim },
    latency_ms: Object.fromEntries(Object.entries(latency).map(([k, xs]) => [k, { p50: pct(xs, 0.5), p99: pct(xs, 0.99), max: pct(xs, 1) }])),
    machine: {
      load_before: load[0], load_after: load[1],
      other_programs_share_of_core: w.otherPrograms / w.seconds,
      postgres_other_databases_ms_per_unit: per(w.postgres.other_backends * 1000),
      other_database_commits: otherCommits(before, after),
    },
  };
}

const CPU_ROWS: [string, string][] = [
  ["gateway", "gateway"], ["services", "services"], ["provisioning", "provisioning"], ["simulator", "simulator"], ["bench", "bench (driver)"],
  ["nats", "nats-server"], ["postgres_backends", "postgres backends"], ["postgres_server", "postgres server processes"], ["total", "total"],
];

function printTable(phases: PhaseFigures[]) {
  const col = (f: PhaseFigures) => `${f.phase} (per ${f.unit})`;
  const lat = (f: PhaseFigures, k: string) => (f.latency_ms[k] ? `${ms(f.latency_ms[k].p50)} / ${ms(f.latency_ms[k].p99)}` : "-");
  const rows: (string | number)[][] = [["", ...phases.map(col)]];
  rows.push(["units", ...phases.map((f) => (f.units === f.sagas ? `${f.units} ${f.unit}s` : `${f.units} ${f.unit}s (${f.sagas} sagas)`))]);
  rows.push(["CPU ms per unit (share of a core)", ...phases.map(() => "")]);
  for (const [k, label] of CPU_ROWS) rows.push([`  ${label}`, ...phases.map((f) => `${f.cpu_ms_per_unit[k].toFixed(1)} (${(f.cpu_share_of_core[k] * 100).toFixed(0)}%)`)]);
  rows.push(["commits per unit", ...phases.map((f) => f.commits_per_unit.toFixed(1))]);
  rows.push(["  writes (xids, cluster-wide)", ...phases.map((f) => f.write_transactions_per_unit.toFixed(1))]);
  rows.push(["  rows inserted / updated", ...phases.map((f) => `${f.rows_per_unit.inserted.toFixed(1)} / ${f.rows_per_unit.updated.toFixed(1)}`)]);
  for (const n of ["gateway", "services", "provisioning", "simulator"]) rows.push([`peak RSS ${n}`, ...phases.map((f) => mb(f.peak_rss_bytes[n]))]);
  rows.push([`throughput`, ...phases.map((f) => `${f.units_per_second.toFixed(1)} ${f.unit}s/s`)]);
  const latencyKeys = [...new Set(phases.flatMap((f) => Object.keys(f.latency_ms)))];
  for (const k of latencyKeys) rows.push([`${k} p50 / p99`, ...phases.map((f) => lat(f, k))]);
  rows.push(["failures", ...phases.map((f) => String(f.failures))]);
  rows.push(["wall time", ...phases.map((f) => `${f.seconds.toFixed(1)} s`)]);
  console.log(`\n${table(rows)}`);
  for (const f of phases) if (f.failures) console.log(`  ${f.phase} failures: ${f.failure_samples.join(" | ")}`);
}

async function main() {
  const wall0 = performance.now();
  const namespace = `bench-saga-${process.pid}`;
  console.log(`bench:saga — ${SAGAS} provisioning sagas${LIFECYCLE ? ` then ${SAGAS} lifecycle round trips (paused → active)` : ""}, ${IN_FLIGHT} in flight, ${TENANTS} tenants; simulator SIM_ACTIVE_AFTER_MS=0, PROVISION_POLL_MS=${POLL_MS}`);
  console.log(`  nodes: gateway (api) | services (${SERVICES}) | provisioning | simulator — NATS ${NATS} namespace ${namespace}, ${DB}`);

  await freshDatabase(DB);
  process.env.DATABASE_URL = DB;
  await migrate();
  const tokens = await Promise.all(Array.from({ length: TENANTS }, (_, t) => mintToken({ tenant: `tenant-${t}`, sub: "bench" })));

  const common: Record<string, string> = { DATABASE_URL: DB, TRANSPORTER: NATS, NAMESPACE: namespace };
  const profileDir = PROFILE ? mkdtempSync(join(tmpdir(), "bench-saga-profile-")) : "";
  const nodeOptions = [
    process.env.NODE_OPTIONS ?? "",
    PROFILE ? `--require ${join(__dirname, "pg-profile.js")}` : "",
    // BENCH_CPU_PROF: bench/lib startProcess passes --cpu-prof on the command line (Node refuses it in NODE_OPTIONS).
  ].filter(Boolean).join(" ");
  const instrumented: Record<string, string> = { ...(nodeOptions ? { NODE_OPTIONS: nodeOptions } : {}), ...(PROFILE ? { PG_PROFILE_DIR: profileDir } : {}) };
  const provider = { DO_API_URL: SIM, DO_TOKEN: "bench-token", DNS_DOMAIN: "apps.bench.test" };
  const nodes: Node[] = [
    spawnNode("sim", "dist/bin/sim.js", { SIM_PORT: String(SIM_PORT), SIM_ACTIVE_AFTER_MS: "0", SIM_TOKEN: "bench-token", SIM_RATE_LIMIT: "10000000" }),
    spawnNode("services", "dist/bin/start.js", { ...common, ...provider, ...instrumented, SERVICES, NODE_ID: "bench-saga-services" }),
    spawnNode("provisioning", "dist/bin/start.js", { ...common, ...provider, ...instrumented, SERVICES: "provisioning", NODE_ID: "bench-saga-provisioning", PROVISION_POLL_MS: POLL_MS }),
    spawnNode("gateway", "dist/bin/start.js", { ...common, ...instrumented, SERVICES: "api", NODE_ID: "bench-saga-gateway", PORT: String(GW_PORT) }),
  ];
  const byName = (name: string) => nodes.find((n) => n.name === name)!;
  const meter = new Meter(Object.fromEntries(NODE_NAMES.map((n) => [n, byName(n).child.pid])), { databaseUrl: DB, natsUrl: NATS });
  console.log(`  ${meter.describe()}`);

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
  // Statistics are read from the `postgres` database: the bench's own reads add no commits to the bench database.
  const stats = new Client({ connectionString: Object.assign(new URL(DB), { pathname: "/postgres" }).toString() });
  const pg = new Client({ connectionString: DB });
  const profileCut = () => { if (PROFILE) for (const n of nodes) if (n.name !== "sim") n.child.kill("SIGUSR2"); };
  try {
    await broker.start();
    await stats.connect();
    await pg.connect();
    await waitForHttp(`${SIM}/v2/_sim/state`);
    await waitForHttp(`${GW}/health`);
    await broker.waitForServices([...SERVICES.split(",").map((n) => `v1.${n.trim()}`), "v1.provisioning", "api"], 30_000);
    for (let i = 0; ; i++) {
      const r = await fetch(`${GW}/ready`);
      if (r.status === 200) break;
      if (i > 150) throw new Error(`gateway not ready: ${r.status} ${await r.text()}`);
      await sleep(200);
    }

    // Warm-up of both phases (JIT, pools, discovery on every node), then an empty simulator for the measured run.
    const warm = await runProvision("w", WARMUP, tokens);
    const warmFailed = warm.outcomes.filter((o) => !o.ok);
    let warmNote = `warm-up: ${WARMUP} sagas in ${warm.seconds.toFixed(1)} s${warmFailed.length ? `, ${warmFailed.length} FAILED: ${warmFailed.slice(0, 3).map((o) => `${o.status} ${o.error}`).join("; ")}` : ""}`;
    if (LIFECYCLE) {
      const wl = await runRoundTrips(warm.outcomes.filter((o) => o.ok), tokens);
      const wlFailed = wl.outcomes.filter((o) => !o.ok);
      warmNote += `; ${wl.outcomes.length} round trips in ${wl.seconds.toFixed(1)} s${wlFailed.length ? `, ${wlFailed.length} FAILED: ${[...new Set(wlFailed.map((o) => `${o.status} ${o.error}`))].slice(0, 2).join("; ")}` : ""}`;
    }
    console.log(`${warmNote}; simulator reset`);
    if ((await fetch(`${SIM}/v2/_sim/reset`, { method: "POST" })).status !== 204) throw new Error("simulator reset failed");

    // Settle (every backend has reported), then an idle window of the same length: the commits the nodes make
    // when nothing is asked of them (sweeps, polls), which a phase's figure includes for its own settle.
    await sleep(STATS_SETTLE_MS);
    const idle0 = await dbStats(stats);
    await sleep(STATS_SETTLE_MS);
    const idle1 = await dbStats(stats);
    const idleRate = (idle1.xact_commit - idle0.xact_commit) / (STATS_SETTLE_MS / 1000);
    console.log(`idle: the nodes commit ${idleRate.toFixed(1)}/s with nothing to do (${(idle1.xact_commit - idle0.xact_commit)} in ${STATS_SETTLE_MS / 1000} s)`);

    const phases: PhaseFigures[] = [];
    eventsSeen = 0;
    polls = 0;

    // ---------- phase 1: provisioning ----------
    let before = idle1;
    let load0 = loadavg()[0];
    const spans: Span[] = [];
    profileCut(); // the warm-up's profile ends here
    meter.start();
    let fromUs = nowUs();
    const prov = await runProvision("s", SAGAS, tokens);
    let w = meter.stop();
    spans.push({ name: "provision phase", unit: "saga", units: SAGAS, fromUs, toUs: nowUs() });
    let load1 = loadavg()[0];
    await sleep(STATS_SETTLE_MS);
    let after = await dbStats(stats);
    const provFailed = prov.outcomes.filter((o) => !o.ok);
    const ended = prov.outcomes.filter((o) => o.sagaId && TERMINAL.has(o.status));
    phases.push(figures("provision", "saga", SAGAS, SAGAS, w, before, after, idleRate, provFailed,
      { "saga (202 → end)": ended.map((o) => o.sagaMs), "POST /deployments → 202": prov.outcomes.map((o) => o.postMs), "request → saga end": ended.map((o) => o.totalMs) },
      [load0, load1]));

    // ---------- phase 2: lifecycle round trips ----------
    const provisioned = prov.outcomes.filter((o) => o.ok && o.deploymentId).sort((a, b) => a.i - b.i);
    let trips: RoundTrip[] = [];
    if (LIFECYCLE && provisioned.length) {
      before = after;
      load0 = loadavg()[0];
      profileCut(); // the provision phase's profile ends here
      meter.start();
      fromUs = nowUs();
      const rt = await runRoundTrips(provisioned, tokens);
      w = meter.stop();
      spans.push({ name: "lifecycle phase", unit: "round trip", units: rt.outcomes.length, fromUs, toUs: nowUs() });
      load1 = loadavg()[0];
      await sleep(STATS_SETTLE_MS);
      after = await dbStats(stats);
      trips = rt.outcomes;
      const okTrips = trips.filter((o) => o.ok);
      phases.push(figures("lifecycle", "round trip", trips.length, trips.reduce((a, o) => a + o.sagas, 0), w, before, after, idleRate, trips.filter((o) => !o.ok),
        {
          "round trip (paused → active, both sagas)": okTrips.map((o) => o.totalMs),
          "power_off saga (200 → end)": okTrips.map((o) => o.offMs),
          "power_on saga (200 → end)": okTrips.map((o) => o.onMs),
          "POST /transition → 200": okTrips.flatMap((o) => [o.offAnswerMs, o.onAnswerMs]),
        },
        [load0, load1]));
    }

    // ---------- figures ----------
    printTable(phases);
    const prov1 = phases[0];
    const totalTarget = BASELINE_CPU_MS / 2;
    const peakRss = Math.max(...phases.flatMap((f) => Object.entries(f.peak_rss_bytes).filter(([k]) => k !== "simulator").map(([, v]) => v)));
    console.log(`\ntargets (issue 13, provisioning): CPU per saga ${prov1.cpu_ms_per_unit.total.toFixed(1)} ms vs ≤ ${totalTarget} ms (half of ${BASELINE_CPU_MS}) → ${prov1.cpu_ms_per_unit.total <= totalTarget ? "met" : "NOT met"}; ` +
      `commits per saga ${prov1.commits_per_unit.toFixed(1)} vs ≤ ${TARGET_COMMITS} → ${prov1.commits_per_unit <= TARGET_COMMITS ? "met" : "NOT met"}; ` +
      `peak RSS per node ${mb(peakRss)} vs ≤ ${mb(TARGET_RSS)} → ${peakRss <= TARGET_RSS ? "met" : "NOT met"}`);
    for (const f of phases) {
      console.log(`${f.phase}: commits include ≈${(f.idle_commits_in_settle / Math.max(1, f.units)).toFixed(2)} per ${f.unit} of idle background over the ${STATS_SETTLE_MS / 1000} s settle; ` +
        `${f.rollbacks} rollbacks; VmHWM ${Object.entries(f.hwm_bytes).map(([k, v]) => `${k} ${mb(v)}`).join(", ")}`);
      console.log(`${"".padEnd(f.phase.length)}  machine: load ${f.machine.load_before.toFixed(1)} → ${f.machine.load_after.toFixed(1)} on ${availableParallelism()} cores; other programs ${(f.machine.other_programs_share_of_core * 100).toFixed(0)}% of a core; ` +
        `backends of other databases ${f.machine.postgres_other_databases_ms_per_unit.toFixed(1)} ms per ${f.unit}, ${f.machine.other_database_commits} commits (not in the total: another workload shares the machine if these are high)`);
    }
    console.log(`saga ends heard as events: ${eventsSeen} (GET /sagas/:id polls: ${polls})`);

    stopping = true;
    await stopNodes(nodes.filter((n) => n.name !== "sim"));
    if (PROFILE) printProfiles(profileDir, phases);
    if (CPU_PROF) printCpuProfiles(CPU_PROF, nodes, spans);

    // ---------- checks ----------
    const state: any = await (await fetch(`${SIM}/v2/_sim/state`)).json();
    const droplets: any[] = state.droplets;
    const db = (await pg.query(`select (select count(*) from sagas s join deployments d on d.id = s.deployment_id where d.slug like 's-%' and s.status = 'succeeded')::int as sagas_ok,
                                      (select count(*) from deployments where slug like 's-%' and state = 'active')::int as active`)).rows[0];
    const problems: string[] = [];
    const lifecycleOk = trips.filter((o) => o.ok).length;
    const expectedSagas = prov1.units + (LIFECYCLE ? 2 * provisioned.length : 0);
    if (provFailed.length) problems.push(`${provFailed.length} provisioning sagas did not succeed`);
    if (LIFECYCLE && lifecycleOk !== provisioned.length) problems.push(`${provisioned.length - lifecycleOk} round trips did not succeed`);
    if (droplets.length !== SAGAS) problems.push(`simulator holds ${droplets.length} droplets, expected ${SAGAS}`);
    if (droplets.filter((d) => d.status === "active").length !== SAGAS) problems.push(`${droplets.filter((d) => d.status !== "active").length} droplets are not active`);
    if (db.sagas_ok !== expectedSagas) problems.push(`database has ${db.sagas_ok} succeeded sagas, expected ${expectedSagas}`);
    if (db.active !== SAGAS) problems.push(`database has ${db.active} active deployments, expected ${SAGAS}`);
    console.log(`\ncheck: ${SAGAS - provFailed.length}/${SAGAS} provisioned${LIFECYCLE ? `, ${lifecycleOk}/${provisioned.length} round trips` : ""}; simulator holds ${droplets.length} droplets (${droplets.filter((d) => d.status === "active").length} active); ` +
      `database: ${db.sagas_ok} succeeded sagas, ${db.active} active deployments → ${problems.length ? `FAILED: ${problems.join("; ")}` : "ok"}`);
    console.log(`(total bench time ${((performance.now() - wall0) / 1000).toFixed(0)} s)`);
    writeJson({
      bench: "saga",
      at: new Date().toISOString(),
      config: { sagas: SAGAS, in_flight: IN_FLIGHT, warmup: WARMUP, tenants: TENANTS, provision_poll_ms: Number(POLL_MS), cores: availableParallelism(), settle_ms: STATS_SETTLE_MS },
      idle_commits_per_second: idleRate,
      phases: Object.fromEntries(phases.map((f) => [f.phase, f])),
      targets: { cpu_ms_per_saga: totalTarget, commits_per_saga: TARGET_COMMITS, peak_rss_bytes: TARGET_RSS },
      events_heard: eventsSeen,
      polls,
      problems,
    });
    if (problems.length) process.exitCode = 1;
  } finally {
    stopping = true;
    await broker.stop().catch(() => undefined);
    await stats.end().catch(() => undefined);
    await pg.end().catch(() => undefined);
    await stopNodes(nodes);
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  }
}

/**
 * Per unit, per node and phase: statements, connection checkouts, and what the pool allows (BENCH_PROFILE=1).
 * pg-profile writes `<node>.<n>.json` at each cut: 0 is the warm-up, 1 the provision phase, 2 the lifecycle phase.
 */
function printProfiles(dir: string, phases: PhaseFigures[]) {
  phases.forEach((f, idx) => {
    console.log(`\nprofile, ${f.phase} phase (per ${f.unit}; statement = one round trip to PostgreSQL):`);
    for (const file of readdirSync(dir).filter((x) => x.endsWith(`.${idx + 1}.json`)).sort()) {
      const p: PgProfile = JSON.parse(readFileSync(join(dir, file), "utf8"));
      const stmts = Object.entries(p.statements).sort((a, b) => b[1].n - a[1].n);
      const total = stmts.reduce((a, [, v]) => a + v.n, 0);
      if (!total) continue;
      const per = (x: number) => x / Math.max(1, f.units);
      const meanMs = stmts.reduce((a, [, v]) => a + v.totalMs, 0) / total;
      console.log(`  ${p.node.replace("bench-saga-", "").padEnd(12)} ${per(total).toFixed(1)} statements, ${per(p.checkouts).toFixed(1)} connection checkouts; statement mean ${meanMs.toFixed(1)} ms; pool wait mean ${(p.waitMs.total / Math.max(1, p.checkouts)).toFixed(1)} ms (p99 ${p.waitMs.p99.toFixed(0)} ms)`);
      console.log(`  ${"".padEnd(12)} connection held ${per(p.holdMs.total).toFixed(0)} ms per ${f.unit}; pool of ${p.poolMax} busy ${((p.holdMs.total / 1000 / p.seconds / p.poolMax) * 100).toFixed(0)}%; event-loop delay p99 ${p.eventLoopDelayMs.p99.toFixed(0)} ms`);
      console.log(`  ${"".padEnd(12)} ${stmts.slice(0, Number(process.env.BENCH_PROFILE_TOP ?? 9)).map(([k, v]) => `${k} ${per(v.n).toFixed(1)}`).join(", ")}`);
    }
  });
}

/** BENCH_CPU_PROF=dir: where each node's CPU went in each phase, from its --cpu-prof profile (bench/cpu-prof). */
function printCpuProfiles(dir: string, nodes: Node[], spans: Span[]) {
  console.log(`\nCPU profiles (self time by package or file, per unit; ${dir}):`);
  for (const n of nodes) {
    const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile") && f.split(".")[3] === String(n.child.pid));
    if (!file) {
      if (n.name !== "sim") console.log(`  ${n.name}: no profile written (pid ${n.child.pid})`);
      continue;
    }
    console.log(`  ${n.name}: ${join(dir, file)}`);
    console.log(describeProfile(n.name, readProfile(join(dir, file)), spans).join("\n"));
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
