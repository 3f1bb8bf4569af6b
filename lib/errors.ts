import { Errors } from "moleculer";
import { UniqueConstraintViolationException, ForeignKeyConstraintViolationException, OptimisticLockError, CheckConstraintViolationException, ConnectionException } from "@mikro-orm/core";

const { MoleculerClientError } = Errors;

/** Client errors in moleculer-web's shape: {name, message, code, type, data}, code = HTTP status. */
export const notFound = (what: string, id?: string) =>
  new MoleculerClientError(id ? `${what} ${id} not found` : `${what} not found`, 404, "NOT_FOUND", id ? { id } : undefined);
export const conflict = (message: string, type = "CONFLICT", data?: unknown) => new MoleculerClientError(message, 409, type, data);
export const forbidden = (message = "Operators only (role platform-admin)") => new MoleculerClientError(message, 403, "FORBIDDEN");
export const unauthorized = (message = "Missing or invalid token", type = "INVALID_TOKEN") => new MoleculerClientError(message, 401, type);
export const invalid = (message: string, data?: unknown) => new Errors.ValidationError(message, "VALIDATION_ERROR", data as any);
export const invalidTransition = (from: string, to: string) =>
  new MoleculerClientError(`Cannot move a deployment from ${from} to ${to}`, 422, "INVALID_TRANSITION", { from, to });

/** The one place PostgreSQL/ORM failures become domain errors; callers pass what the conflict means to a client. */
export function mapDbError(err: unknown, onUnique?: () => Error): never {
  if (err instanceof UniqueConstraintViolationException) throw onUnique ? onUnique() : conflict("Already exists");
  if (err instanceof OptimisticLockError) throw conflict("The resource was changed concurrently; retry", "CONCURRENT_UPDATE");
  if (err instanceof ForeignKeyConstraintViolationException) throw invalid("A referenced record does not exist");
  if (err instanceof CheckConstraintViolationException) throw invalid("A value is out of range");
  throw err;
}

/*
 * Unavailability (SPEC §8): while the database or a service a request needs is unreachable the answer is
 * `503 SERVICE_UNAVAILABLE` with a `retry-after` header — never 500 (an unmapped driver error) or 404
 * (Moleculer's SERVICE_NOT_FOUND right after a node restarted). Services map database failures through
 * UnavailableMiddleware (every action, moleculer.config.ts); the gateway maps transport failures with toClientError.
 */
export const RETRY_AFTER_S = 5;
export const serviceUnavailable = (message = "A service this request needs is unavailable; retry shortly", retryAfter = RETRY_AFTER_S, data: Record<string, unknown> = {}) =>
  new Errors.MoleculerRetryableError(message, 503, "SERVICE_UNAVAILABLE", { retry_after: retryAfter, ...data });

/** Node socket errors that mean "could not reach it". */
const NET_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND", "EAI_AGAIN", "ECONNABORTED"]);
/** PostgreSQL SQLSTATEs that mean the server is going away, starting up, or out of connections. */
const PG_UNAVAILABLE = /^(0800[0-7]|57P0[1-4]|53300|53400)$/; // not 08P01 (protocol violation: a bad value, e.g. NUL)
/** pg / pg-pool / Kysely messages for a dead or unobtainable connection (they carry no code). */
const DB_MESSAGES = [
  "Connection terminated",
  "timeout exceeded when trying to connect",
  "Client was closed and is not queryable",
  "Client has encountered a connection error and is not queryable",
  "Cannot use a pool after calling end on the pool",
  "the database system is starting up",
  "the database system is shutting down",
  "the database system is in recovery mode",
  "Connection ended",
  "driver has already been destroyed",
];

/** Does this error (or what caused it) mean the database could not be reached? */
export function isDatabaseUnavailable(err: unknown): boolean {
  let e: any = err;
  for (let i = 0; e && i < 6; i++) {
    if (e instanceof ConnectionException) return true;
    const code = typeof e.code === "string" ? e.code : undefined;
    if (code && (NET_CODES.has(code) || PG_UNAVAILABLE.test(code))) return true;
    if (typeof e.sqlState === "string" && PG_UNAVAILABLE.test(e.sqlState)) return true;
    if (typeof e.message === "string" && DB_MESSAGES.some((m) => e.message.includes(m))) return true;
    e = e.cause ?? e.previous;
  }
  return false;
}

/** Moleculer's transport-level failures: the service is not (yet) discovered, its node died or went silent. */
const TRANSPORT_TYPES = new Set(["SERVICE_NOT_FOUND", "SERVICE_NOT_AVAILABLE", "REQUEST_TIMEOUT", "BAD_GATEWAY", "REQUEST_REJECTED", "SERVICE_UNAVAILABLE"]);
const databaseUnavailable = () => serviceUnavailable("The database is unavailable; retry shortly", RETRY_AFTER_S, { reason: "DATABASE_UNAVAILABLE" });

/** What the gateway answers for an error: unavailability as 503 with retry-after, everything else unchanged. */
export function toClientError(err: any): any {
  if (err?.code === 503 && err?.type === "SERVICE_UNAVAILABLE") return err;
  // moleculer-web's own ServiceUnavailableError (no endpoint for an alias right now) carries no type.
  if (err?.code === 503) return serviceUnavailable(undefined, RETRY_AFTER_S, { reason: err?.type ?? "NO_ENDPOINT" });
  if (TRANSPORT_TYPES.has(err?.type)) {
    return serviceUnavailable(`A service this request needs is unavailable (${String(err.type).toLowerCase()}); retry shortly`, RETRY_AFTER_S, { reason: err.type });
  }
  if (isDatabaseUnavailable(err)) return databaseUnavailable();
  return err;
}

/** Broker middleware: a database that cannot be reached answers 503 from every action, wherever it is thrown. */
export const UnavailableMiddleware = {
  name: "Unavailable",
  localAction(next: (ctx: any) => Promise<unknown>) {
    return (ctx: any) =>
      next(ctx).catch((err: unknown) => {
        if (isDatabaseUnavailable(err)) throw databaseUnavailable();
        throw err;
      });
  },
};
