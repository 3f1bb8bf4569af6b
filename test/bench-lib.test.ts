import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { categoryOf, selfTimeByCategory } from "../bench/cpu-prof";
import { classifyPgTitle, CLK_TCK, cpuSeconds, listenerPid, memoryOf, Meter, pct, PostgresCpuMeter, table } from "../bench/lib";

/** The measuring parts of the benchmarks (bench/lib.ts): what they read from /proc and how they print it. */
describe("bench lib", () => {
  test("a PostgreSQL process title tells a backend of the bench database from the rest", () => {
    const db = "arcadia_bench_saga";
    expect(classifyPgTitle("postgres: 15/main: postgres arcadia_bench_saga 127.0.0.1(59032) idle", db)).toBe("backends");
    expect(classifyPgTitle("postgres: 15/main: postgres arcadia_bench_saga 127.0.0.1(59032) UPDATE", db)).toBe("backends");
    expect(classifyPgTitle("postgres: postgres arcadia_bench_saga [local] idle in transaction", db)).toBe("backends");
    expect(classifyPgTitle("postgres: 15/main: postgres arcadia_bench_saga_other 127.0.0.1(1) idle", db)).toBe("other_backends");
    expect(classifyPgTitle("postgres: 15/main: postgres arcadia_test_x ::1(5) idle", db)).toBe("other_backends");
    // Two words, no host: helper processes of the server.
    expect(classifyPgTitle("postgres: 15/main: background writer ", db)).toBe("server");
    expect(classifyPgTitle("postgres: 15/main: walwriter ", db)).toBe("server");
    expect(classifyPgTitle("postgres: 15/main: autovacuum launcher ", db)).toBe("server");
    expect(classifyPgTitle("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", db)).toBe("server");
  });

  test("percentiles and the table", () => {
    const xs = Array.from({ length: 100 }, (_, i) => i + 1);
    expect(pct(xs, 0.5)).toBe(50);
    expect(pct(xs, 0.99)).toBe(99);
    expect(pct(xs, 1)).toBe(100);
    expect(pct([], 0.5)).toBeNaN();
    expect(table([["", "a"], ["long name", 1.5], ["x", "22"]]).split("\n")).toEqual([`${" ".repeat(14)}a`, "long name   1.5", "x            22"]);
  });

  test("process CPU and memory come from /proc", () => {
    expect(CLK_TCK).toBeGreaterThan(0);
    expect(cpuSeconds(process.pid)).toBeGreaterThan(0);
    expect(cpuSeconds(2 ** 30)).toBeNaN();
    const m = memoryOf(process.pid);
    expect(m.rss).toBeGreaterThan(1 << 20);
    expect(m.hwm).toBeGreaterThanOrEqual(m.rss);
  });

  test("the listener of a port is found by its socket", async () => {
    const server = createServer();
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    const comm = require("node:fs").readFileSync(`/proc/${process.pid}/comm`, "utf8").trim();
    try {
      expect(listenerPid(comm, port)).toBe(process.pid);
    } finally {
      server.close();
    }
    expect(listenerPid("no-such-program", port)).toBeUndefined();
  });

  test("a window counts the CPU spent inside it, and PostgreSQL's backends of the database", async () => {
    const url = process.env.DATABASE_URL!;
    const pgMeter = new PostgresCpuMeter(new URL(url).pathname.slice(1), Number(new URL(url).port || 5432));
    expect(pgMeter.postmaster).toBeGreaterThan(0);
    const meter = new Meter({ self: process.pid }, { databaseUrl: url, sampleMs: 20 });
    meter.start();
    const until = Date.now() + 300;
    while (Date.now() < until); // busy: ~0.3 s of CPU
    const w = meter.stop();
    expect(w.seconds).toBeGreaterThan(0.25);
    expect(w.cpu.self).toBeGreaterThan(0.1);
    expect(w.cpu.bench).toBeCloseTo(w.cpu.self, 5); // the bench is this process too
    expect(w.peakRss.self).toBeGreaterThan(1 << 20);
    expect(w.postgres.backends).toBeGreaterThanOrEqual(0);
  });
});

describe("bench cpu-prof", () => {
  test("self time goes to the package, our file, Node's module or V8's bucket", () => {
    expect(categoryOf("file:///w/node_modules/@mikro-orm/core/entity/EntityFactory.js", "create")).toBe("@mikro-orm/core");
    expect(categoryOf("file:///w/node_modules/a/node_modules/pg/lib/client.js", "query")).toBe("pg");
    expect(categoryOf("file:///w/dist/services/provisioning/engine.js", "drive")).toBe("ours: services/provisioning/engine.js");
    expect(categoryOf("node:internal/deps/undici/undici", "fetch")).toBe("node:undici");
    expect(categoryOf("node:internal/streams/writable", "write")).toBe("node:streams");
    expect(categoryOf("node:net", "connect")).toBe("node:net");
    expect(categoryOf("", "(garbage collector)")).toBe("(garbage collector)");
    expect(categoryOf("", "writeBuffer")).toBe("(native) writeBuffer");
  });

  test("a sample's interval is counted inside the window it starts in; idle is left out", () => {
    const profile = {
      nodes: [
        { id: 1, callFrame: { functionName: "(idle)", url: "" } },
        { id: 2, callFrame: { functionName: "f", url: "file:///w/node_modules/pg/x.js" } },
        { id: 3, callFrame: { functionName: "g", url: "file:///w/dist/lib/db.js" } },
      ],
      startTime: 1000,
      endTime: 9000,
      // samples at 2000 (pg), 4000 (ours), 5000 (idle), 8000 (pg); each lasts until the next
      samples: [2, 3, 1, 2],
      timeDeltas: [1000, 2000, 1000, 3000],
    };
    expect(Object.fromEntries(selfTimeByCategory(profile))).toEqual({ pg: 2, "ours: lib/db.js": 1 });
    expect(Object.fromEntries(selfTimeByCategory(profile, 3000, 9000))).toEqual({ "ours: lib/db.js": 1 });
  });
});
