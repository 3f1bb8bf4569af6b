import { createRemoteJWKSet, jwtVerify, decodeProtectedHeader, type JWTVerifyGetKey, type JWTPayload } from "jose";
import { makeUser, type User } from "./access";
import { unauthorized } from "./errors";

export const DEV_JWT_SECRET = "arcadia-dev-secret-change-me-0123456789";

export interface AuthConfig {
  secret?: string;
  jwksUrl?: string;
  issuer?: string;
  audience?: string;
}

export function authConfigFromEnv(env = process.env): AuthConfig {
  const secret = env.AUTH_JWT_SECRET ?? (env.AUTH_JWKS_URL ? undefined : DEV_JWT_SECRET);
  if (secret === DEV_JWT_SECRET && env.NODE_ENV === "production") throw new Error("AUTH_JWT_SECRET or AUTH_JWKS_URL must be set in production");
  return { secret, jwksUrl: env.AUTH_JWKS_URL, issuer: env.AUTH_ISSUER || undefined, audience: env.AUTH_AUDIENCE || undefined };
}

/** Verifies arcadia-app's bearer tokens: HS256 with the shared secret, RS256/ES256 through the JWKS. */
export function createVerifier(cfg: AuthConfig) {
  const hmacKey = cfg.secret ? new TextEncoder().encode(cfg.secret) : undefined;
  const jwks: JWTVerifyGetKey | undefined = cfg.jwksUrl ? createRemoteJWKSet(new URL(cfg.jwksUrl)) : undefined;
  const options = { issuer: cfg.issuer, audience: cfg.audience };

  return async function verify(token: string): Promise<User> {
    let payload: JWTPayload;
    try {
      const { alg } = decodeProtectedHeader(token);
      if (alg === "HS256" && hmacKey) {
        ({ payload } = await jwtVerify(token, hmacKey, { ...options, algorithms: ["HS256"] }));
      } else if ((alg === "RS256" || alg === "ES256") && jwks) {
        ({ payload } = await jwtVerify(token, jwks, { ...options, algorithms: ["RS256", "ES256"] }));
      } else {
        throw new Error(`algorithm ${alg} is not accepted`);
      }
    } catch (err) {
      const code = (err as { code?: string }).code;
      throw unauthorized(code === "ERR_JWT_EXPIRED" ? "Token expired" : `Invalid token: ${(err as Error).message}`);
    }
    if (typeof payload.sub !== "string" || !payload.sub) throw unauthorized("Token has no sub");
    const tenant = payload.tenant_id;
    if (tenant !== undefined && tenant !== null && typeof tenant !== "string") throw unauthorized("tenant_id must be a string");
    const user = makeUser({ sub: payload.sub, tenant_id: (tenant as string | undefined) ?? null, roles: payload.roles as string[] });
    if (!user.operator && !user.tenant_id) throw unauthorized("Token has no tenant_id");
    return user;
  };
}
