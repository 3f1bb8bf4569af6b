import { spawn, type ChildProcess } from "node:child_process";
import { Client } from "pg";

/** Shared by the benchmarks: a scratch database, child nodes, and waiting for ports. */
export async function freshDatabase(url: string) {
  const u = new URL(url);
  const admin = new Client({ connectionString: Object.assign(new URL(u), { pathname: "/postgres" }).toString() });
  await admin.connect();
  await admin.query(`drop database if exists "${u.pathname.slice(1)}" with (force)`);
  await admin.query(`create database "${u.pathname.slice(1)}"`);
  await admin.end();
}

export function startProcess(name: string, script: string, env: Record<string, string>): ChildProcess {
  const child = spawn(process.execPath, [script], { env: { ...process.env, LOG_LEVEL: "warn", ...env }, stdio: ["ignore", "pipe", "pipe"] });
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
export async function stopAll(children: ChildProcess[], graceMs = 5_000) {
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
