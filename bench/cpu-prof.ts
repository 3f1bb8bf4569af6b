import { readFileSync } from "node:fs";

/**
 * Where a node's CPU goes, from a `node --cpu-prof` profile: self time grouped by package (node_modules), our own
 * compiled file (dist/…), Node's built-in module, or V8's own buckets (garbage collector, program). bench:saga
 * (BENCH_CPU_PROF=dir) prints it per node and phase, per unit of work; `node dist/bench/cpu-prof.js file…` prints
 * whole profiles. Profile timestamps are µs of the monotonic clock, the same clock as process.hrtime, so a phase
 * recorded with hrtime in the bench selects its samples in another process's profile.
 */
export interface Span { name: string; unit: string; units: number; fromUs: number; toUs: number }
interface Profile {
  nodes: { id: number; callFrame: { functionName: string; url: string } }[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export const nowUs = () => Number(process.hrtime.bigint() / 1000n);

/** The bucket a function's self time goes to. */
export function categoryOf(url: string, functionName: string): string {
  if (!url) {
    if (functionName === "(garbage collector)") return "(garbage collector)";
    if (functionName === "(idle)") return "(idle)";
    if (functionName === "(program)") return "(program: V8 and native code)";
    return `(native) ${functionName || "anonymous"}`;
  }
  const nm = url.lastIndexOf("/node_modules/");
  if (nm >= 0) {
    const rest = url.slice(nm + "/node_modules/".length).split("/");
    return rest[0].startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0];
  }
  if (url.startsWith("node:")) {
    const parts = url.slice(5).split("/");
    if (parts[0] === "internal") return `node:${parts[1] === "deps" ? parts[2] : parts[1]}`;
    return `node:${parts[0]}`;
  }
  const dist = url.indexOf("/dist/");
  if (dist >= 0) return `ours: ${url.slice(dist + 6)}`;
  return url.replace(/^file:\/\//, "");
}

/** Self time (ms) per category over [fromUs, toUs) of the profile; idle left out. */
export function selfTimeByCategory(p: Profile, fromUs = -Infinity, toUs = Infinity): Map<string, number> {
  const cat = new Map<number, string>(p.nodes.map((n) => [n.id, categoryOf(n.callFrame.url, n.callFrame.functionName)]));
  const out = new Map<string, number>();
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i];
    // A sample's time is the interval up to the next sample.
    const dt = i + 1 < p.timeDeltas.length ? p.timeDeltas[i + 1] : 0;
    if (t < fromUs || t >= toUs || dt <= 0) continue;
    const c = cat.get(p.samples[i])!;
    if (c === "(idle)") continue;
    out.set(c, (out.get(c) ?? 0) + dt / 1000);
  }
  return out;
}

export function readProfile(file: string): Profile {
  return JSON.parse(readFileSync(file, "utf8"));
}

/** Lines for one node: per span, the top categories in ms per unit and their share of the node's busy time. */
export function describeProfile(node: string, p: Profile, spans: Span[], top = 12): string[] {
  const lines: string[] = [];
  for (const s of spans) {
    const by = selfTimeByCategory(p, s.fromUs, s.toUs);
    const busy = [...by.values()].reduce((a, b) => a + b, 0);
    if (!busy) {
      lines.push(`  ${node}, ${s.name}: no samples in the phase`);
      continue;
    }
    const per = Math.max(1, s.units);
    lines.push(`  ${node}, ${s.name}: ${(busy / per).toFixed(1)} ms sampled per ${s.unit}`);
    for (const [c, ms] of [...by].sort((a, b) => b[1] - a[1]).slice(0, top)) {
      lines.push(`    ${(ms / per).toFixed(2).padStart(7)} ms  ${((ms / busy) * 100).toFixed(0).padStart(3)}%  ${c}`);
    }
  }
  return lines;
}

if (require.main === module) {
  const files = process.argv.slice(2);
  if (!files.length) {
    console.error("usage: node dist/bench/cpu-prof.js <file.cpuprofile>…");
    process.exit(2);
  }
  for (const f of files) {
    const p = readProfile(f);
    console.log(describeProfile(f, p, [{ name: "whole profile", unit: "run", units: 1, fromUs: -Infinity, toUs: Infinity }], 25).join("\n"));
  }
}
