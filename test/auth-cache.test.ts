import { createVerifier } from "../lib/auth";
import { mintToken } from "../bin/token";

/** The gateway's verified-token cache (lib/auth.ts): faster repeats, never a looser check. */
const secret = "cache-test-secret-0123456789-0123456789";
const at = (ms: number) => () => ms;
const t0 = Date.now();

test("a repeated token is served from the cache; a token that differs in one byte is verified (and refused)", async () => {
  const verify = createVerifier({ secret }, { now: at(t0) });
  const token = await mintToken({ tenant: "acme", secret, ttl: "1h" });
  const first = await verify(token);
  expect(first).toMatchObject({ tenant_id: "acme", operator: false });
  expect(await verify(token)).toBe(first);
  const tampered = token.slice(0, -2) + (token.endsWith("AA") ? "BB" : "AA");
  await expect(verify(tampered)).rejects.toMatchObject({ code: 401 });
});

test("an expired token is refused even though it was cached while valid", async () => {
  let now = Date.now();
  const verify = createVerifier({ secret }, { now: () => now });
  const token = await mintToken({ tenant: "acme", secret, ttl: "10s" });
  await verify(token);
  now += 11_000;
  await expect(verify(token)).rejects.toMatchObject({ code: 401, message: "Token expired" });
});

test("entries live at most cacheTtlMs, and the cache is bounded (oldest out)", async () => {
  let now = Date.now();
  const verify = createVerifier({ secret }, { now: () => now, cacheTtlMs: 1_000, cacheSize: 2 });
  const [a, b, c] = await Promise.all(["a", "b", "c"].map((t) => mintToken({ tenant: t, secret, ttl: "1h" })));
  const ua = await verify(a);
  now += 1_500;
  const ua2 = await verify(a);
  expect(ua2).not.toBe(ua); // verified again after the TTL
  expect(ua2).toEqual(ua);
  const ub = await verify(b);
  await verify(c); // a is the oldest of three in a cache of two
  expect(await verify(b)).toBe(ub);
  expect(await verify(a)).not.toBe(ua2);
});

test("cacheSize 0 turns the cache off", async () => {
  const verify = createVerifier({ secret }, { cacheSize: 0 });
  const token = await mintToken({ tenant: "acme", secret, ttl: "1h" });
  expect(await verify(token)).not.toBe(await verify(token));
});
