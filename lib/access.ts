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

export function currentUser(ctx: Context): User {
  const user = (ctx.meta as { user?: User }).user;
  if (!user || typeof user.sub !== "string") throw unauthorized("No authenticated user on this call", "NO_TOKEN");
  return user;
}

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
