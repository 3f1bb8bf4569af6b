import type { Context } from "moleculer";
import { forbidden, unauthorized } from "./errors";

/** The small user the gateway puts on ctx.meta.user after verifying the token. */
export interface User {
  sub: string;
  tenant_id: string | null;
  roles: string[];
  operator: boolean;
}

export const OPERATOR_ROLE = "platform-admin";

/** An action's context as the services type it: the caller on meta.user, the ORM fork on locals (lib/db). */
export type ActionCtx<P> = Context<P, { user?: User; $statusCode?: number }, any>;

export function makeUser(claims: { sub: string; tenant_id?: string | null; roles?: string[] }): User {
  const roles = Array.isArray(claims.roles) ? claims.roles.filter((r) => typeof r === "string") : [];
  // Exactly the hyphenated spelling arcadia-app issues; "platform_admin" grants nothing.
  return { sub: claims.sub, tenant_id: claims.tenant_id ?? null, roles, operator: roles.includes(OPERATOR_ROLE) };
}

/** Internal callers (the provisioning saga) act as this operator-level system user. */
export const systemUser = (name: string): User => ({ sub: `system:${name}`, tenant_id: null, roles: [OPERATOR_ROLE], operator: true });

/**
 * Calls an internal action as the system user `name`, within the caller's request (request id, tracing). Not
 * `ctx.call(…, {meta: {user}})`: Moleculer merges a callee's meta back into the caller's, which would leave the
 * caller's context acting as the system user from then on.
 */
export function callAsSystem<T = unknown>(ctx: Context, name: string, action: string, params: object = {}, opts: { timeout?: number } = {}): Promise<T> {
  return ctx.broker.call(action, params, { ...opts, parentCtx: ctx, meta: { user: systemUser(name) } }) as Promise<T>;
}

export function currentUser(ctx: Context): User {
  const user = (ctx.meta as { user?: User }).user;
  if (!user || typeof user.sub !== "string") throw unauthorized("No authenticated user on this call", "NO_TOKEN");
  return user;
}

/**
 * Who may call an action, declared once on the action (`access: "operator"`) and enforced by AccessMiddleware;
 * the OpenAPI builder reads the same declaration. Row-level checks (another tenant's id → 404) stay where the
 * row is read.
 * - public: anyone, no user needed (health, readiness, the OpenAPI document)
 * - signed-in: any authenticated caller (the catalog)
 * - scoped: any authenticated caller, limited to its own tenant's rows by the handler
 * - operator: role platform-admin only (403 for everyone else)
 * - internal: service-to-service (visibility "public", never on HTTP); the caller must be a system user or an
 *   operator (403 otherwise)
 */
export const ACCESS_LEVELS = ["public", "signed-in", "scoped", "operator", "internal"] as const;
export type Access = (typeof ACCESS_LEVELS)[number];

/** Moleculer middleware: checks each local action's declared `access` before its handler runs. */
export const AccessMiddleware = {
  name: "Access",
  localAction(next: (ctx: Context) => Promise<unknown>, action: { name?: string; access?: Access }) {
    const access = action.access;
    if (!access || access === "public") return next;
    if (!ACCESS_LEVELS.includes(access)) throw new Error(`Action ${action.name} declares unknown access '${access}' (one of ${ACCESS_LEVELS.join(", ")})`);
    const needsOperator = access === "operator" || access === "internal";
    return function checkAccess(ctx: Context) {
      try {
        if (needsOperator) requireOperator(ctx);
        else currentUser(ctx);
      } catch (err) {
        return Promise.reject(err);
      }
      return next(ctx);
    };
  },
};

export function requireOperator(ctx: Context): User {
  const user = currentUser(ctx);
  if (!user.operator) throw forbidden();
  return user;
}

/**
 * The tenant a query must be limited to: null for operators (all tenants), the caller's own otherwise.
 * Objects outside it are reported as absent (404), never as forbidden.
 */
export function tenantScope(user: User): string | null {
  if (user.operator) return null;
  if (!user.tenant_id) throw unauthorized("Token has no tenant_id");
  return user.tenant_id;
}

/**
 * The tenant a list is limited to, given the `tenant_id` filter asked for: undefined = all tenants (an operator
 * without a filter); null = nothing (a tenant asking for another tenant's rows gets none, not someone else's).
 */
export function listTenant(user: User, requested?: string): string | undefined | null {
  const scope = tenantScope(user);
  if (scope && requested && requested !== scope) return null;
  return scope ?? requested;
}

export function visibleTo(user: User, tenantId: string): boolean {
  return user.operator || user.tenant_id === tenantId;
}

// Lets services declare `access` on an action with the type checked (moleculer's ActionSchema has no such field).
declare module "moleculer" {
  interface ActionSchema {
    access?: Access;
  }
}
