import type { Context, Middleware } from "moleculer";

/**
 * Structured logs that say which request, deployment and saga a line concerns. The request id is Moleculer's
 * `ctx.requestID` (the gateway takes X-Request-ID or makes one; the saga uses its saga id), which follows a call
 * across nodes; ids come from the params and meta of the call.
 */
export function logFields(ctx: Context<any, any>): Record<string, unknown> {
  const p = (ctx.params ?? {}) as Record<string, unknown>;
  const m = (ctx.meta ?? {}) as Record<string, unknown>;
  const fields: Record<string, unknown> = { request_id: ctx.requestID, action: ctx.action?.name ?? ctx.eventName };
  const deployment = p.deployment_id ?? (ctx.action?.name?.startsWith("v1.deployments.") ? p.id : undefined);
  if (deployment) fields.deployment_id = deployment;
  const saga = m.saga_id ?? p.saga_id;
  if (saga) fields.saga_id = saga;
  return fields;
}

export const LogContextMiddleware: Middleware = {
  name: "LogContext",
  localAction(next: (ctx: Context) => Promise<unknown>) {
    return async function logContext(this: unknown, ctx: Context) {
      try {
        return await next(ctx);
      } catch (err: any) {
        const logger = (ctx.service as any)?.logger ?? ctx.broker.logger;
        const server = !Number.isInteger(err?.code) || err.code >= 500;
        logger[server ? "error" : "debug"]({ ...logFields(ctx), err: { message: err?.message, type: err?.type, code: err?.code } }, "action failed");
        throw err;
      }
    };
  },
} as Middleware;
