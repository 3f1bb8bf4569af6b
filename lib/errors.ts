import { Errors } from "moleculer";
import { UniqueConstraintViolationException, ForeignKeyConstraintViolationException, OptimisticLockError, CheckConstraintViolationException } from "@mikro-orm/core";

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
