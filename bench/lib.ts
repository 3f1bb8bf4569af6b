import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { Client } from "pg";
import { NODE_HEAP_FLAGS } from "../bin/node-flags";

/** Shared by the benchmarks: a scratch database, child nodes, waiting for ports, and what processes cost. */
export async function freshDatabase(url: string) {
  const u = new URL(url);
  const admin = new Client({ connectionString: Object.assign(new URL(u), { pathname: "/postgres" }).toString() });
  await admin.connect();
  await admin.query(`drop database if exists "${u.pathname.slice(1)}" with (force)`);
  await admin.query(`create database "${u.pathname.slice(1)}"`);
  await admin.end();
}

/** Node's arguments for a child: an arcadia node (dist/bin/start.js) gets the heap flags production uses (bin/node-flags.ts). */
export function nodeArgs(script: string): string[] {
  return script.endsWith("bin/start.js") ? [...NODE_HEAP_FLAGS, script] : [script];
}

export function startProcess(name: string, script: string, env: Record<string, string>): ChildProcess {
  // BENCH_CPU_PROF=dir: the node runs under --cpu-prof (not allowed in NODE_OPTIONS), its profile written to dir on exit.
  const prof = process.env.BENCH_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const child = spawn(process.execPath, [...prof, ...nodeArgs(script)], { env: { ...process.env, LOG_LEVEL: "warn", ...env }, stdio: ["ignore", "pipe", "pipe"] });
  child.stderr!.on("data", (d) => process.stderr.write(`[${name}] ${d}`));
  return child;
}

export async function waitForHttp(url: string, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const res = await fetch(url);
      if (res.status < 500) return;
    } catch {
      /* not listening yet */
    }
    if (Date.now() > deadline) throw new Error(`${url} did not answer in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Stops the child nodes and waits until they are gone (SIGKILL after `graceMs`): a node left running would keep
 * its NATS subscriptions and pool open, and a node busy draining a run would steal CPU from the next one.
 */
export async function stopAll(children: ChildProcess[], graceMs = process.env.BENCH_CPU_PROF ? 30_000 : 5_000) {
  await Promise.all(
    children.map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
      c.kill("SIGTERM");
      const timer = setTimeout(() => c.kill("SIGKILL"), graceMs);
      await exited;
      clearTimeout(timer);
    }),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Process CPU and memory, from /proc (Linux). Elsewhere every figure reads 0 and the benches say so.
// ---------------------------------------------------------------------------------------------------------------

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (`getconf CLK_TCK`; 100 where getconf is absent). */
export const CLK_TCK = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

export const hasProc = (() => {
  try {
    readFileSync("/proc/self/stat");
    return true;
  } catch {
    return false;
  }
})();

/** utime + stime of a process (all its threads), in seconds; NaN when it is gone. */
export function cpuSeconds(pid: number | undefined): number {
  if (!pid) return NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / CLK_TCK; // fields 14 (utime) and 15 (stime)
  } catch {
    return NaN;
  }
}

/** VmRSS and VmHWM (peak RSS over the process's life) in bytes; 0 when it is gone. */
export function memoryOf(pid: number | undefined): { rss: number; hwm: number } {
  const out = { rss: 0, hwm: 0 };
  if (!pid) return out;
  try {
    for (const line of readFileSync(`/proc/${pid}/status`, "utf8").split("\n")) {
      const m = /^(VmRSS|VmHWM):\s+(\d+) kB/.exec(line);
      if (m) out[m[1] === "VmRSS" ? "rss" : "hwm"] = Number(m[2]) * 1024;
    }
  } catch {
    /* gone */
  }
  return out;
}

/** The whole machine's busy CPU seconds (user nice system irq softirq steal, all cores). */
export function machineBusySeconds(): number {
  try {
    const [, ...f] = readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).map(Number);
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / CLK_TCK;
  } catch {
    return 0;
  }
}

const commOf = (pid: number | string) => {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return "";
  }
};
const pidsNamed = (comm: string) => {
  try {
    return readdirSync("/proc").filter((d) => /^\d+$/.test(d) && commOf(d) === comm).map(Number);
  } catch {
    return [];
  }
};

/** Socket inodes listening on a TCP port (IPv4 and IPv6). */
function listeningInodes(port: number): Set<string> {
  const out = new Set<string>();
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  for (const f of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    try {
      for (const line of readFileSync(f, "utf8").split("\n").slice(1)) {
        const c = line.trim().split(/\s+/);
        if (c.length > 9 && c[1].endsWith(`:${hex}`) && c[3] === "0A") out.add(c[9]);
      }
    } catch {
      /* no IPv6, or no /proc */
    }
  }
  return out;
}

/**
 * The pid of the process named `comm` that listens on `port`: by its sockets when /proc/<pid>/fd is readable,
 * else the only process of that name, else the one whose command line names the port. Undefined when not found.
 */
export function listenerPid(comm: string, port: number): number | undefined {
  const candidates = pidsNamed(comm);
  const inodes = listeningInodes(port);
  for (const pid of candidates) {
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m && inodes.has(m[1])) return pid;
      }
    } catch {
      /* not ours to read */
    }
  }
  // Only the parent of a forking server holds the listening socket; without /proc/<pid>/fd fall back to names.
  const roots = candidates.filter((pid) => commOf(ppidOf(pid)) !== comm);
  if (roots.length === 1) return roots[0];
  return roots.find((pid) => {
    try {
      return new RegExp(`(^|\\D)${port}(\\D|$)`).test(readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0/g, " "));
    } catch {
      return false;
    }
  });
}
function ppidOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return 0;
  }
}
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export type PgProcessKind = keyof PgCpu;
/**
 * What a child of the postmaster is, from the title PostgreSQL gives it: a client backend reads
 * `postgres: <cluster>: <user> <database> <host>(<port>) <activity>`; everything else (checkpointer, background
 * writer, WAL writer, autovacuum, …) is a server process shared by every database.
 */
export function classifyPgTitle(title: string, database: string): PgProcessKind {
  const m = /^postgres: (?:.*?: )?\S+ (\S+) (?:\[local\]|\S+\(\d+\))(?: |$)/.exec(title);
  if (!m) return "server";
  return m[1] === database ? "backends" : "other_backends";
}

export interface PgCpu {
  /** Backends serving the bench database. */
  backends: number;
  /** The postmaster and its helper processes (WAL writer, checkpointer, …): shared by every database on the server. */
  server: number;
  /** Backends serving other databases (other work on the same server). */
  other_backends: number;
}

/**
 * PostgreSQL CPU over a window, split by who it served. Backends come and go (pools open connections as load
 * rises), and a process's CPU vanishes from /proc when it exits, so the postmaster's children are sampled every
 * `sampleMs` while the window is open: a backend that starts inside the window counts from zero, one that exits
 * counts up to its last sample.
 */
export class PostgresCpuMeter {
  private kinds = new Map<number, PgProcessKind>();
  private base = new Map<number, number>();
  private last = new Map<number, number>();
  readonly postmaster: number | undefined;

  constructor(private database: string, port: number) {
    this.postmaster = listenerPid("postgres", port);
  }

  private kindOf(pid: number): PgProcessKind {
    let k = this.kinds.get(pid);
    if (!k) {
      let title = "";
      try {
        title = readFileSync(`/proc/${pid}/cmdline`, "utf8").replace(/\0+$/, "").replace(/\0/g, " ");
      } catch {
        /* gone */
      }
      this.kinds.set(pid, (k = pid === this.postmaster ? "server" : classifyPgTitle(title, this.database)));
    }
    return k;
  }

  private pids() {
    return this.postmaster ? [this.postmaster, ...childrenOf(this.postmaster)] : [];
  }

  start() {
    this.base.clear();
    this.last.clear();
    for (const pid of this.pids()) {
      const t = cpuSeconds(pid);
      if (!Number.isNaN(t)) {
        this.kindOf(pid);
        this.base.set(pid, t);
        this.last.set(pid, t);
      }
    }
  }

  sample() {
    for (const pid of this.pids()) {
      const t = cpuSeconds(pid);
      if (Number.isNaN(t)) continue;
      this.kindOf(pid);
      if (!this.base.has(pid)) this.base.set(pid, 0); // started inside the window
      this.last.set(pid, t);
    }
  }

  result(): PgCpu {
    const out: PgCpu = { backends: 0, server: 0, other_backends: 0 };
    for (const [pid, t] of this.last) out[this.kinds.get(pid)!] += Math.max(0, t - (this.base.get(pid) ?? t));
    return out;
  }
}

/** What one measured window cost: CPU seconds per named process, PostgreSQL split, peak RSS, the machine. */
export interface Window {
  seconds: number;
  /** CPU seconds per named process (the bench itself is `bench`; `nats` is the NATS server when found). */
  cpu: Record<string, number>;
  postgres: PgCpu;
  /** Highest VmRSS seen while the window was open (sampled), bytes. */
  peakRss: Record<string, number>;
  /** VmHWM at the end of the window (peak RSS over the process's whole life), bytes. */
  hwm: Record<string, number>;
  /** Busy CPU seconds of the whole machine, and the part no process measured here accounts for. */
  machineBusy: number;
  otherPrograms: number;
}

/**
 * Reads /proc/<pid>/stat (utime + stime) of every named process at the start and the end of a window, samples RSS
 * and PostgreSQL's processes every `sampleMs` in between. The sampling itself is counted in `bench`.
 */
export class Meter {
  private pg: PostgresCpuMeter;
  private timer: NodeJS.Timeout | undefined;
  private t0 = 0;
  private cpu0: Record<string, number> = {};
  private busy0 = 0;
  private peak: Record<string, number> = {};
  private sampleMs: number;
  readonly natsPid: number | undefined;

  constructor(
    private pids: Record<string, number | undefined>,
    opts: { databaseUrl: string; natsUrl?: string; sampleMs?: number },
  ) {
    this.sampleMs = opts.sampleMs ?? 250;
    const db = new URL(opts.databaseUrl);
    this.pg = new PostgresCpuMeter(db.pathname.slice(1), Number(db.port || 5432));
    if (opts.natsUrl) {
      const n = new URL(opts.natsUrl);
      this.natsPid = listenerPid("nats-server", Number(n.port || 4222));
    }
  }

  /** Who is measured, for the bench's header. */
  describe(): string {
    if (!hasProc) return "no /proc on this machine: CPU and memory figures read 0";
    const pm = this.pg.postmaster ? `postgres postmaster pid ${this.pg.postmaster}` : "postgres not found (its CPU reads 0)";
    const nats = this.natsPid ? `nats-server pid ${this.natsPid}` : "nats-server not found (its CPU reads 0)";
    return `CPU from /proc/<pid>/stat utime+stime (CLK_TCK ${CLK_TCK}); ${pm}; ${nats}`;
  }

  private all(): Record<string, number | undefined> {
    return { ...this.pids, bench: process.pid, ...(this.natsPid ? { nats: this.natsPid } : {}) };
  }

  start() {
    this.t0 = performance.now();
    this.cpu0 = Object.fromEntries(Object.entries(this.all()).map(([k, pid]) => [k, cpuSeconds(pid)]));
    this.busy0 = machineBusySeconds();
    this.peak = Object.fromEntries(Object.entries(this.pids).map(([k, pid]) => [k, memoryOf(pid).rss]));
    this.pg.start();
    this.timer = setInterval(() => {
      for (const [k, pid] of Object.entries(this.pids)) this.peak[k] = Math.max(this.peak[k], memoryOf(pid).rss);
      this.pg.sample();
    }, this.sampleMs);
    this.timer.unref();
  }

  stop(): Window {
    clearInterval(this.timer);
    this.pg.sample();
    const seconds = (performance.now() - this.t0) / 1000;
    const cpu: Record<string, number> = {};
    for (const [k, pid] of Object.entries(this.all())) {
      const d = cpuSeconds(pid) - this.cpu0[k];
      cpu[k] = Number.isFinite(d) ? d : 0;
    }
    const postgres = this.pg.result();
    const ours = Object.values(cpu).reduce((a, b) => a + b, 0) + postgres.backends + postgres.server;
    const machineBusy = machineBusySeconds() - this.busy0;
    return {
      seconds,
      cpu,
      postgres,
      peakRss: { ...this.peak },
      hwm: Object.fromEntries(Object.entries(this.pids).map(([k, pid]) => [k, memoryOf(pid).hwm])),
      machineBusy,
      otherPrograms: Math.max(0, machineBusy - ours),
    };
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------------------------

export function pct(xs: number[], q: number) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
}

/** A left-aligned first column and right-aligned others. */
export function table(rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  return cells.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("   ").trimEnd()).join("\n");
}

/** BENCH_JSON=file: the figures as JSON as well. */
export function writeJson(figures: unknown) {
  const file = process.env.BENCH_JSON;
  if (!file) return;
  // Three decimals are more than any of these figures can tell; NaN (no samples) becomes null.
  const round = (_k: string, v: unknown) => (typeof v === "number" && !Number.isInteger(v) ? Math.round(v * 1000) / 1000 : v);
  writeFileSync(file, JSON.stringify(figures, round, 2) + "\n");
  console.log(`figures written to ${file}`);
}
