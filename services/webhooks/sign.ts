import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";

/*
 * Pure parts of webhook delivery: the signature (SPEC §9 `Arcadia-Signature`), its check (what a receiver
 * does; the README shows the same in a few lines), secrets and the retry schedule. Unit-tested in
 * test/webhooks-sign.test.ts.
 */

/** `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the endpoint's secret>`. */
export function signatureHeader(secret: string, rawBody: string, unixSeconds: number): string {
  const t = Math.floor(unixSeconds);
  const v1 = createHmac("sha256", secret).update(`${t}.${rawBody}`).digest("hex");
  return `t=${t},v1=${v1}`;
}

/**
 * A receiver's check: the header parses, one of its v1 values matches (constant-time compare), and `t` is within
 * `toleranceS` of `nowS` (a replayed old request fails). Several v1 values are allowed so a secret can rotate.
 */
export function verifySignature(secret: string, rawBody: string, header: string | undefined | null, nowS = Date.now() / 1000, toleranceS = 300): boolean {
  if (!header) return false;
  const parts = header.split(",").map((p) => p.trim().split("="));
  const t = Number(parts.find(([k]) => k === "t")?.[1]);
  const sigs = parts.filter(([k, v]) => k === "v1" && typeof v === "string").map(([, v]) => v);
  if (!Number.isInteger(t) || !sigs.length || Math.abs(nowS - t) > toleranceS) return false;
  const expected = Buffer.from(createHmac("sha256", secret).update(`${t}.${rawBody}`).digest("hex"));
  return sigs.some((s) => {
    const got = Buffer.from(s);
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

/** A new endpoint secret: 32 random bytes, prefixed so it is recognisable in a config file. */
export const newSecret = () => `whsec_${randomBytes(32).toString("base64url")}`;

export const MAX_RETRY_DELAY_MS = 6 * 60 * 60 * 1000;

/** Delay before the attempt after `attempts` failed ones: base, 2×base, 4×base, … capped at 6 h. */
export function retryDelayMs(attempts: number, baseMs: number): number {
  const n = Math.max(1, attempts);
  return Math.min(baseMs * 2 ** Math.min(n - 1, 40), MAX_RETRY_DELAY_MS);
}
