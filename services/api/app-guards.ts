import { createHash } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Errors } from "moleculer";
import { RateLimiterMemory, RateLimiterRes } from "rate-limiter-flexible";
import type { User } from "../../lib/access";
import { IDEMPOTENCY_KEY_MAX, IdempotencyStore, bodyHash, idempotencyScope, isSaved, type Fingerprint } from "./idempotency";

/*
 * What the gateway does for the app that calls us (SPEC §9), kept out of api.service.ts: the write rate limit,
 * idempotency keys, and the strict-parameter check for actions that declare no parameters.
 */

const WRITE_METHODS = new Set(["POST", "PATCH", "PUT", "DELETE"]);
export const isWrite = (method?: string) => WRITE_METHODS.has(String(method).toUpperCase());

const { MoleculerClientError, MoleculerError } = Errors;

/**
 * Writes per tenant token per node (RATE_LIMIT_WRITES_PER_MIN, default 600, per fixed minute; 0 = off), keyed by
 * a hash of the token itself. Operator tokens are not limited. Counted after the token is verified, so a forged
 * token neither spends nor escapes anyone's budget.
 */
export class WriteRateLimit {
  private limiter: RateLimiterMemory | null;
  constructor(readonly perMinute: number) {
    this.limiter = perMinute > 0 ? new RateLimiterMemory({ points: perMinute, duration: 60 }) : null;
  }

  async check(req: IncomingMessage, res: ServerResponse, user: User, token: string): Promise<void> {
    if (!this.limiter || user.operator || !isWrite(req.method)) return;
    try {
      await this.limiter.consume(createHash("sha256").update(token).digest("base64url"));
    } catch (e) {
      if (!(e instanceof RateLimiterRes)) throw e;
      const retryAfter = Math.max(1, Math.ceil(e.msBeforeNext / 1000));
      res.setHeader("Retry-After", String(retryAfter));
      throw new MoleculerClientError(`Too many writes: at most ${this.perMinute} per minute per token`, 429, "RATE_LIMITED", { limit: this.perMinute, retry_after: retryAfter });
    }
  }
}

type Req = IncomingMessage & { $ctx?: any; $endpoint?: any; query?: Record<string, unknown>; body?: unknown; originalUrl?: string; $idem?: Fingerprint };

/** The body onError sends for a client error, so a replay of a saved error is byte for byte what was sent. */
const clientErrorBody = (err: any, status: number) => JSON.stringify({ name: err.name, message: err.message, code: status, type: err.type ?? null, data: err.data ?? null });

/**
 * Actions without a params schema are not validated at all, so the fastest-validator `$$strict` rule (lib/validator)
 * never sees them: reached over HTTP, they take no query parameters and no body fields.
 */
export function refuseParamsOfSchemalessAction(req: Req) {
  const action = req.$endpoint?.action;
  if (!action || (action.params && typeof action.params === "object")) return;
  // Who may call comes before what they sent (as in lib/validator): an operator route answers a tenant 403 itself.
  if (action.access === "operator" && !req.$ctx?.meta?.user?.operator) return;
  const body = req.body && typeof req.body === "object" && !Array.isArray(req.body) ? Object.keys(req.body) : [];
  const unknown = [...Object.keys(req.query ?? {}), ...body];
  if (unknown.length) {
    const data = unknown.map((name) => ({ type: "unknownParameter", field: name, message: `Unknown parameter '${name}': this route does not take it.` }));
    throw new Errors.ValidationError(data.map((d) => d.message).join("; "), "VALIDATION_ERROR", data as any);
  }
}

/**
 * Runs one action call (moleculer-web's callAction, which sends the answer) under the request's Idempotency-Key, if
 * it has one: a first request runs and its answer is saved (onAfterCall records a success before it is sent, see
 * `recordSuccess`); a repeat gets the saved answer with `Idempotent-Replayed: true`.
 */
export async function withIdempotency(store: IdempotencyStore, req: Req, res: ServerResponse, run: () => Promise<unknown>): Promise<unknown> {
  const header = req.headers["idempotency-key"];
  if (header === undefined || !isWrite(req.method)) return run();
  const key = Array.isArray(header) ? header.join(",") : header;
  if (!key.length || key.length > IDEMPOTENCY_KEY_MAX)
    throw new Errors.ValidationError(`The 'Idempotency-Key' header must be 1 to ${IDEMPOTENCY_KEY_MAX} characters`, "VALIDATION_ERROR", [{ type: "idempotencyKey", field: "Idempotency-Key", message: `1 to ${IDEMPOTENCY_KEY_MAX} characters` }] as any);
  const user = req.$ctx?.meta?.user as User | null;
  if (!user) return run();
  const f: Fingerprint = { scope: idempotencyScope(user), key, method: String(req.method).toUpperCase(), path: req.originalUrl ?? req.url ?? "", bodyHash: bodyHash(req.body) };

  let claim;
  try {
    claim = await store.claim(f);
  } catch (err) {
    res.setHeader("Retry-After", "5");
    throw new MoleculerError(`Idempotency keys are unavailable: ${(err as Error).message}`, 503, "SERVICE_UNAVAILABLE", null);
  }
  if (claim.kind === "reused") throw new MoleculerClientError("This Idempotency-Key was used with another method, path or body", 422, "IDEMPOTENCY_KEY_REUSED", { key });
  if (claim.kind === "in_progress") {
    res.setHeader("Retry-After", "1");
    throw new MoleculerClientError("A request with this Idempotency-Key is still being handled", 409, "IDEMPOTENCY_IN_PROGRESS", { key });
  }
  if (claim.kind === "replay") {
    res.setHeader("Content-Type", "application/json; charset=utf-8");
    res.setHeader("Idempotent-Replayed", "true");
    res.writeHead(claim.status);
    res.end(claim.body);
    return true;
  }

  req.$idem = f;
  try {
    return await run();
  } catch (err: any) {
    // The call timed out: the action may still be running, so its outcome is unknown. The claim stays in progress
    // (repeats are 409) until the lock timeout lets a repeat run again, rather than freeing the key at once.
    if (err?.type === "REQUEST_TIMEOUT") {
      req.$idem = undefined;
      throw err;
    }
    const status = Number.isInteger(err?.code) && err.code >= 400 && err.code < 600 ? err.code : 500;
    const settle = isSaved(status, err?.type) ? store.complete(f, status, clientErrorBody(err, status)) : store.release(f);
    await settle.catch(() => undefined);
    throw err;
  } finally {
    // A success that was not recorded (the store failed in onAfterCall) frees its key rather than blocking it.
    if (req.$idem) await store.release(f).catch(() => undefined);
  }
}

/** onAfterCall: the answer of an idempotent first request is saved before it is sent. */
export async function recordSuccess(store: IdempotencyStore, req: Req, status: number, data: unknown) {
  const f = req.$idem;
  if (!f) return;
  try {
    await store.complete(f, status, JSON.stringify(data));
    req.$idem = undefined;
  } catch {
    /* the finally of withIdempotency releases the key */
  }
}
