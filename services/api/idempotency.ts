import { createHash } from "node:crypto";
import { Pool } from "pg";
import type { User } from "../../lib/access";

/**
 * Idempotency keys with Stripe's semantics (SPEC §9), stored in PostgreSQL table `idempotency_keys` (owned by the
 * gateway layer, shared by every gateway node through this small pool of its own).
 *
 * - Scope: a tenant token's `tenant:<tenant_id>`; an operator token's `operator:<sub>` (operators act for every
 *   tenant, so their keys are theirs, not a tenant's).
 * - Fingerprint: method, path (with its query string) and a SHA-256 of the canonical JSON body (keys sorted).
 * - The claim is one `insert … on conflict do nothing`: of any number of concurrent requests with one key exactly
 *   one runs; the others see its row (`409 IDEMPOTENCY_IN_PROGRESS` while it runs, the saved answer after).
 * - Saved answers: everything the action answered except 5xx (retryable: the claim is released, the next try runs
 *   again) and `422 VALIDATION_ERROR` (refused before anything ran, as Stripe does not save requests that failed
 *   validation). Saved answers are replayed for 24 h (`IDEMPOTENCY_TTL_MS`), then the key is free again; a sweep
 *   deletes expired rows.
 * - A claim whose node died mid-request would block its key: after `IDEMPOTENCY_LOCK_TIMEOUT_MS` (default 120 s,
 *   well past the gateway's 30 s call timeout) a repeat may take it over and run.
 */
export const IDEMPOTENCY_KEY_MAX = 255;

export interface Fingerprint {
  scope: string;
  key: string;
  method: string;
  path: string;
  bodyHash: string;
}

export type Claim =
  | { kind: "owner" }
  | { kind: "replay"; status: number; body: string }
  | { kind: "in_progress" }
  | { kind: "reused" };

export function idempotencyScope(user: User): string {
  return user.operator || !user.tenant_id ? `operator:${user.sub}` : `tenant:${user.tenant_id}`;
}

/** JSON with object keys sorted, so `{a,b}` and `{b,a}` are one body. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (v && typeof v === "object") {
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v ?? null);
}

export const bodyHash = (body: unknown) => createHash("sha256").update(canonicalJson(body ?? {})).digest("hex");

/** Which answers are saved as the key's answer (see the header comment). */
export function isSaved(status: number, type: string | null | undefined): boolean {
  if (status >= 500) return false;
  if (status === 422 && type === "VALIDATION_ERROR") return false;
  return true;
}

export class IdempotencyStore {
  private pool: Pool | null = null;
  /** The store's clock: tests replace it to step past the 24 h without sleeping. */
  now: () => Date = () => new Date();
  private sweepTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly opts: { url?: string; ttlMs: number; lockTimeoutMs: number; poolMax: number },
  ) {}

  private db(): Pool {
    if (!this.opts.url) throw new Error("DATABASE_URL is not set: idempotency keys need PostgreSQL");
    // Errors of idle clients (a database restart) must not crash the gateway; the next query reconnects.
    this.pool ??= new Pool({ connectionString: this.opts.url, max: this.opts.poolMax, connectionTimeoutMillis: 10_000 }).on("error", () => undefined);
    return this.pool;
  }

  async claim(f: Fingerprint): Promise<Claim> {
    const now = this.now();
    const expiredBefore = new Date(now.getTime() - this.opts.ttlMs);
    const staleBefore = new Date(now.getTime() - this.opts.lockTimeoutMs);
    const db = this.db();
    // The key is ours when nobody holds it, or the row there has expired, or its claim was abandoned.
    const { rows } = await db.query(
      `insert into idempotency_keys (scope, key, method, path, body_hash, created_at, locked_at)
       values ($1, $2, $3, $4, $5, $6, $6)
       on conflict (scope, key) do update set method = excluded.method, path = excluded.path, body_hash = excluded.body_hash,
         created_at = excluded.created_at, locked_at = excluded.locked_at, response_status = null, response_body = null
       where idempotency_keys.created_at < $7
          or (idempotency_keys.response_status is null and idempotency_keys.locked_at < $8
              and idempotency_keys.method = excluded.method and idempotency_keys.path = excluded.path and idempotency_keys.body_hash = excluded.body_hash)
       returning scope`,
      [f.scope, f.key, f.method, f.path, f.bodyHash, now, expiredBefore, staleBefore],
    );
    if (rows.length) return { kind: "owner" };
    const existing = await db.query(`select method, path, body_hash, response_status, response_body from idempotency_keys where scope = $1 and key = $2`, [f.scope, f.key]);
    const row = existing.rows[0];
    // Deleted between the two statements (released or swept): try once more.
    if (!row) return this.claim(f);
    if (row.method !== f.method || row.path !== f.path || row.body_hash !== f.bodyHash) return { kind: "reused" };
    if (row.response_status == null) return { kind: "in_progress" };
    return { kind: "replay", status: row.response_status, body: row.response_body };
  }

  async complete(f: Fingerprint, status: number, body: string): Promise<void> {
    await this.db().query(`update idempotency_keys set response_status = $3, response_body = $4, locked_at = null where scope = $1 and key = $2 and response_status is null`, [f.scope, f.key, status, body]);
  }

  /** The first request's answer is not to be kept: the key is free for a retry. */
  async release(f: Fingerprint): Promise<void> {
    await this.db().query(`delete from idempotency_keys where scope = $1 and key = $2 and response_status is null`, [f.scope, f.key]);
  }

  async sweep(): Promise<number> {
    const res = await this.db().query(`delete from idempotency_keys where created_at < $1`, [new Date(this.now().getTime() - this.opts.ttlMs)]);
    return res.rowCount ?? 0;
  }

  startSweep(everyMs: number, onError: (err: Error) => void) {
    if (everyMs > 0 && this.opts.url) {
      this.sweepTimer = setInterval(() => this.sweep().catch(onError), everyMs);
      this.sweepTimer.unref();
    }
  }

  async close() {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    const pool = this.pool;
    this.pool = null;
    await pool?.end().catch(() => undefined);
  }
}
