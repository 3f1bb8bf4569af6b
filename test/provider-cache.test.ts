/** lib/provider.ts caches: pure, with an injected clock (no provider, no waiting). */
import { catalogTtlMs, TtlCache } from "../lib/provider";

test("a value is reused until the TTL has passed, then fetched again", async () => {
  let now = 1_000;
  let loads = 0;
  const cache = new TtlCache(async () => ++loads, 300, () => now);
  expect(await cache.get()).toBe(1);
  now += 299;
  expect(await cache.get()).toBe(1);
  now += 1;
  expect(await cache.get()).toBe(2);
  cache.clear();
  expect(await cache.get()).toBe(3);
});

test("concurrent callers share one fetch, and a failed fetch is not cached", async () => {
  let loads = 0;
  let fail = true;
  const cache = new TtlCache(async () => {
    loads++;
    await new Promise((r) => setTimeout(r, 5));
    if (fail) throw new Error("provider down");
    return "ok";
  }, 60_000);
  const results = await Promise.allSettled([cache.get(), cache.get(), cache.get()]);
  expect(results.map((r) => r.status)).toEqual(["rejected", "rejected", "rejected"]);
  expect(loads).toBe(1);
  fail = false;
  expect(await cache.get()).toBe("ok");
  expect(await cache.get()).toBe("ok");
  expect(loads).toBe(2);
});

test("INVENTORY_CATALOG_TTL_MS sets the catalog expiry, default 300000", () => {
  expect(catalogTtlMs({})).toBe(300_000);
  expect(catalogTtlMs({ INVENTORY_CATALOG_TTL_MS: "1500" })).toBe(1500);
  expect(catalogTtlMs({ INVENTORY_CATALOG_TTL_MS: "0" })).toBe(0);
  expect(catalogTtlMs({ INVENTORY_CATALOG_TTL_MS: "soon" })).toBe(300_000);
  expect(catalogTtlMs({ INVENTORY_CATALOG_TTL_MS: "-5" })).toBe(300_000);
});
