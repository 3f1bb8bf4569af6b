import { createRemoteJWKSet, jwtVerify, decodeJwt, decodeProtectedHeader, type JWTVerifyGetKey, type JWTPayload } from "jose";
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

export interface VerifierOptions {
  /** Verified tokens kept, keyed by the whole token string (signature included); 0 turns the cache off. */
  cacheSize?: number;
  /** The longest a verified token is trusted without verifying it again (a JWKS key rotation takes this long). */
  cacheTtlMs?: number;
  now?: () => number;
}

/**
 * Verifies arcadia-app's bearer tokens: HS256 with the shared secret, RS256/ES256 through the JWKS.
 *
 * A client sends the same token on every request until it expires, and verifying it is most of the gateway's
 * per-request CPU (an HMAC or an RSA/ECDSA check plus claim parsing). So a verified token's user is kept in a
 * small bounded cache keyed by the exact token, until the earliest of its `exp` and `cacheTtlMs`: a cache hit
 * is a token byte-for-byte identical to one whose signature was checked, and an expired token is never served
 * from it. Only successes are cached.
 */
export function createVerifier(cfg: AuthConfig, opts: VerifierOptions = {}) {
  const hmacKey = cfg.secret ? new TextEncoder().encode(cfg.secret) : undefined;
  const jwks: JWTVerifyGetKey | undefined = cfg.jwksUrl ? createRemoteJWKSet(new URL(cfg.jwksUrl)) : undefined;
  const options = { issuer: cfg.issuer, audience: cfg.audience };
  const now = opts.now ?? Date.now;
  const cacheSize = opts.cacheSize ?? Number(process.env.AUTH_CACHE_SIZE ?? 10_000);
  const cacheTtlMs = opts.cacheTtlMs ?? Number(process.env.AUTH_CACHE_TTL_MS ?? 60_000);
  const cache = new Map<string, { user: User; until: number }>();

  return async function verify(token: string): Promise<User> {
    const hit = cache.get(token);
    if (hit) {
      if (hit.until > now()) return hit.user;
      cache.delete(token);
    }
    const user = await verifyFully(token);
    if (cacheSize > 0 && cacheTtlMs > 0) {
      const exp = decodeExp(token);
      const until = Math.min(now() + cacheTtlMs, exp === undefined ? Infinity : exp * 1000);
      if (until > now()) {
        // Oldest first out: Map keeps insertion order.
        if (cache.size >= cacheSize) cache.delete(cache.keys().next().value!);
        cache.set(token, { user, until });
      }
    }
    return user;
  };

  async function verifyFully(token: string): Promise<User> {
    let payload: JWTPayload;
    const verifyOptions = { ...options, currentDate: new Date(now()) };
    try {
      const { alg } = decodeProtectedHeader(token);
      if (alg === "HS256" && hmacKey) {
        ({ payload } = await jwtVerify(token, hmacKey, { ...verifyOptions, algorithms: ["HS256"] }));
      } else if ((alg === "RS256" || alg === "ES256") && jwks) {
        ({ payload } = await jwtVerify(token, jwks, { ...verifyOptions, algorithms: ["RS256", "ES256"] }));
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
  }
}

/** The `exp` claim of a token already verified (so its payload is well-formed JSON). */
function decodeExp(token: string): number | undefined {
  try {
    const exp = decodeJwt(token).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}
