import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { NODE_HEAP_FLAGS } from "../bin/node-flags";
import { nodeArgs } from "../bench/lib";

/**
 * The heap flags of bin/node-flags.ts (issue 13, peak RSS per node) are the nodes' default wherever a node is
 * launched: `npm start`, the container and the benchmarks' child nodes must agree, or the bench would measure
 * something production does not run.
 */
const ROOT = path.resolve(__dirname, "..");

describe("node heap flags", () => {
  it("npm start, the Dockerfile and the benchmarks start a node with the same flags", () => {
    const pkg = JSON.parse(readFileSync(path.join(ROOT, "package.json"), "utf8"));
    expect(pkg.scripts.start).toBe(["node", ...NODE_HEAP_FLAGS, "dist/bin/start.js"].join(" "));
    const cmd = readFileSync(path.join(ROOT, "Dockerfile"), "utf8").split("\n").find((l) => l.startsWith("CMD "))!;
    expect(JSON.parse(cmd.slice(4))).toEqual(["node", ...NODE_HEAP_FLAGS, "dist/bin/start.js"]);
    expect(nodeArgs("dist/bin/start.js")).toEqual([...NODE_HEAP_FLAGS, "dist/bin/start.js"]);
    // the simulator and the bare server are not arcadia nodes
    expect(nodeArgs("dist/bin/sim.js")).toEqual(["dist/bin/sim.js"]);
  });

  it("this Node accepts them and bounds the heap by them", () => {
    const out = execFileSync(process.execPath, [...NODE_HEAP_FLAGS, "-e", "process.stdout.write(String(require('v8').getHeapStatistics().heap_size_limit))"], { encoding: "utf8" });
    const limitMb = Number(out) / 1048576;
    // 512 MB of old generation plus the young generation (3 × 16 MB of semi-space)
    expect(limitMb).toBeGreaterThanOrEqual(512);
    expect(limitMb).toBeLessThan(640);
  });
});
