import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, chmodSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";

/*
 * A private PostgreSQL cluster and a private nats-server for tests that stop, crash and restart them
 * (test/faults.test.ts). Both run on spare ports picked here — never the machine's 5432/4222 — and are stopped
 * by their pid in the test's afterAll, even when the test failed.
 */

/** PostgreSQL's server binaries: PG_BIN, else the newest /usr/lib/postgresql/<v>/bin, else the PATH. */
export function pgBin(): string {
  if (process.env.PG_BIN) return process.env.PG_BIN;
  const root = "/usr/lib/postgresql";
  if (existsSync(root)) {
    const versions = execFileSync("ls", [root]).toString().split("\n").filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) if (existsSync(path.join(root, v, "bin", "pg_ctl"))) return path.join(root, v, "bin");
  }
  return "";
}
export const NATS_SERVER = process.env.NATS_SERVER_BIN ?? "/usr/sbin/nats-server";

/** What the fault suite needs from the machine, or why it cannot run. */
export function infraMissing(): string | null {
  const bin = pgBin();
  if (!existsSync(path.join(bin, "initdb")) || !existsSync(path.join(bin, "pg_ctl"))) return `initdb/pg_ctl not found (set PG_BIN; looked in ${bin || "/usr/lib/postgresql/*/bin"})`;
  if (!existsSync(NATS_SERVER)) return `nats-server not found at ${NATS_SERVER} (set NATS_SERVER_BIN)`;
  return null;
}

/** A port nothing listens on right now, never one of the machine's shared services. */
export async function sparePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = createServer();
      srv.once("error", reject);
      srv.listen(0, "127.0.0.1", () => {
        const p = (srv.address() as { port: number }).port;
        srv.close(() => resolve(p));
      });
    });
    if (port !== 5432 && port !== 4222) return port;
  }
}

const isRoot = () => process.getuid?.() === 0;

/** Runs a PostgreSQL binary; as `postgres` when we are root (initdb and pg_ctl refuse to run as root). */
function pgRun(cmd: string, args: string[]): string {
  const bin = path.join(pgBin(), cmd);
  const [file, argv] = isRoot() ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, args];
  return execFileSync(file, argv, { stdio: ["ignore", "pipe", "pipe"], timeout: 60_000 }).toString();
}

export interface PrivatePostgres {
  port: number;
  /** postgresql://postgres@127.0.0.1:<port>/<db> */
  url(db?: string): string;
  /** `pg_ctl stop -m immediate`: a crash, every connection cut. */
  crash(): void;
  start(): void;
  running(): boolean;
  /** Stops the server by its pid (whatever state it is in) and removes the data directory. */
  destroy(): void;
}

export async function startPostgres(): Promise<PrivatePostgres> {
  const port = await sparePort();
  const dir = mkdtempSync(path.join(tmpdir(), "arcadia-pg-"));
  chmodSync(dir, 0o777);
  const data = path.join(dir, "data");
  const log = path.join(dir, "pg.log");
  if (isRoot()) execFileSync("chown", ["postgres", dir]);
  pgRun("initdb", ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"]);
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`;
  const pg: PrivatePostgres = {
    port,
    url: (db = "postgres") => `postgresql://postgres@127.0.0.1:${port}/${db}`,
    crash() {
      pgRun("pg_ctl", ["-D", data, "stop", "-m", "immediate", "-w"]);
    },
    start() {
      pgRun("pg_ctl", ["-D", data, "-o", opts, "-l", log, "-w", "-t", "60", "start"]);
    },
    running() {
      return existsSync(path.join(data, "postmaster.pid"));
    },
    destroy() {
      try {
        const pid = Number(readFileSync(path.join(data, "postmaster.pid"), "utf8").split("\n")[0]);
        if (pid > 0) {
          process.kill(pid, "SIGQUIT");
          // Wait for the postmaster to go before removing its directory (it writes there while it exits).
          const deadline = Date.now() + 10_000;
          while (Date.now() < deadline) {
            try {
              process.kill(pid, 0);
            } catch {
              break;
            }
            Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
          }
        }
      } catch {
        /* not running */
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  pg.start();
  return pg;
}

export interface PrivateNats {
  port: number;
  url: string;
  /** SIGKILL by pid: every connection cut at once. */
  kill(): Promise<void>;
  start(): Promise<void>;
  destroy(): Promise<void>;
}

export async function startNats(): Promise<PrivateNats> {
  const port = await sparePort();
  const dir = mkdtempSync(path.join(tmpdir(), "arcadia-nats-"));
  let child: ChildProcess | null = null;
  const nats: PrivateNats = {
    port,
    url: `nats://127.0.0.1:${port}`,
    async kill() {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const gone = new Promise<void>((r) => c.once("exit", () => r()));
      c.kill("SIGKILL");
      await gone;
      child = null;
    },
    async start() {
      const c = spawn(NATS_SERVER, ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], { stdio: ["ignore", "ignore", "pipe"] });
      child = c;
      // Ready when the port accepts connections.
      const deadline = Date.now() + 15_000;
      for (;;) {
        if (c.exitCode !== null) throw new Error(`nats-server exited with ${c.exitCode}`);
        const up = await new Promise<boolean>((resolve) => {
          const s = require("node:net").connect(port, "127.0.0.1");
          s.once("connect", () => (s.destroy(), resolve(true)));
          s.once("error", () => resolve(false));
        });
        if (up) return;
        if (Date.now() > deadline) throw new Error("nats-server did not start");
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async destroy() {
      await nats.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await nats.start();
  return nats;
}
