/**
 * Preloaded into a node by `BENCH_PROFILE=1 npm run bench:saga` (node --require): counts the PostgreSQL statements a
 * node sends (by kind and table), their round-trip time, how long calls wait for a pooled connection and hold it,
 * and the event-loop delay. SIGUSR2 cuts: the counters so far go to $PG_PROFILE_DIR/<NODE_ID>.<n>.json (n = 0, 1, …)
 * and start again from zero (the bench cuts as each measured phase starts); the last part is written when the
 * process exits. Patches the `pg` copies the project and MikroORM load.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { monitorEventLoopDelay } from "node:perf_hooks";

export interface PgProfile {
  node: string;
  poolMax: number;
  seconds: number;
  statements: Record<string, { n: number; totalMs: number; p50: number; p99: number }>;
  checkouts: number;
  waitMs: { total: number; p50: number; p99: number };
  holdMs: { total: number; p50: number; p99: number };
  eventLoopDelayMs: { p50: number; p99: number; max: number };
}

const dir = process.env.PG_PROFILE_DIR;
const node = process.env.NODE_ID || `pid-${process.pid}`;
const loop = monitorEventLoopDelay({ resolution: 1 });
let started = performance.now();
let kinds = new Map<string, number[]>();
let waits: number[] = [];
let holds: number[] = [];

function reset() {
  started = performance.now();
  kinds = new Map();
  waits = [];
  holds = [];
  loop.reset();
}

function kindOf(text: string): string {
  const t = text.trim().toLowerCase();
  const w = t.split(/\s+/);
  const table = (s: string | undefined) => (s ?? "-").replace(/"/g, "").replace(/\(.*$/, "");
  if (w[0] === "insert" || w[0] === "delete") return `${w[0]} ${table(w[2])}`;
  if (w[0] === "update") return `update ${table(w[1])}`;
  if (w[0] === "select" || w[0] === "with") return `select ${table(/ from "?(\w+)"?/.exec(t)?.[1])}`;
  return w[0];
}

const sorted = (xs: number[]) => Float64Array.from(xs).sort();
const pct = (s: Float64Array, q: number) => (s.length ? s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] : 0);
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

function patch(pg: any) {
  if (!pg?.Client || pg.Client.prototype.__profiled) return;
  pg.Client.prototype.__profiled = true;
  const query = pg.Client.prototype.query;
  pg.Client.prototype.query = function (this: any, config: any, values?: any, cb?: any) {
    const text = typeof config === "string" ? config : config?.text;
    if (!text || typeof values === "function" || typeof cb === "function" || typeof config?.submit === "function") return query.apply(this, arguments as any);
    const kind = kindOf(text);
    const t0 = performance.now();
    const p = query.apply(this, arguments as any);
    const done = () => {
      let xs = kinds.get(kind);
      if (!xs) kinds.set(kind, (xs = []));
      xs.push(performance.now() - t0);
    };
    p?.then?.(done, done);
    return p;
  };
  const connect = pg.Pool.prototype.connect;
  pg.Pool.prototype.connect = function (this: any, cb?: any) {
    if (cb) return connect.apply(this, arguments as any);
    const t0 = performance.now();
    return connect.apply(this, arguments as any).then((client: any) => {
      const t1 = performance.now();
      waits.push(t1 - t0);
      const release = client.release;
      client.release = function (...args: any[]) {
        holds.push(performance.now() - t1);
        return release.apply(this, args);
      };
      return client;
    });
  };
}

if (dir) {
  for (const p of [join(__dirname, "../../node_modules/pg"), join(__dirname, "../../node_modules/@mikro-orm/postgresql/node_modules/pg")]) {
    try {
      patch(require(p));
    } catch {
      /* that copy is not installed */
    }
  }
  loop.enable();
  let part = 0;
  const write = () => {
    const w = sorted(waits);
    const h = sorted(holds);
    const profile: PgProfile = {
      node,
      poolMax: Number(process.env.DB_POOL_MAX ?? 10),
      seconds: (performance.now() - started) / 1000,
      statements: Object.fromEntries([...kinds].map(([k, xs]) => {
        const s = sorted(xs);
        return [k, { n: xs.length, totalMs: sum(xs), p50: pct(s, 0.5), p99: pct(s, 0.99) }];
      })),
      checkouts: waits.length,
      waitMs: { total: sum(waits), p50: pct(w, 0.5), p99: pct(w, 0.99) },
      holdMs: { total: sum(holds), p50: pct(h, 0.5), p99: pct(h, 0.99) },
      eventLoopDelayMs: { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
    };
    writeFileSync(join(dir, `${node}.${part++}.json`), JSON.stringify(profile));
  };
  process.on("SIGUSR2", () => {
    write();
    reset();
  });
  process.on("exit", write);
}
