import { SignJWT } from "jose";
import { parseArgs } from "node:util";
import { DEV_JWT_SECRET } from "../lib/auth";

/** `npm run token -- --tenant <id> [--roles admin,platform-admin] [--sub <user>] [--ttl 12h]`: a dev token with arcadia-app's claims. */
export async function mintToken(opts: { tenant?: string; roles?: string[]; sub?: string; ttl?: string; secret?: string; issuer?: string; audience?: string }) {
  let jwt = new SignJWT({ tenant_id: opts.tenant, roles: opts.roles ?? [] })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(opts.sub ?? "dev-user")
    .setIssuedAt()
    .setExpirationTime(opts.ttl ?? "12h");
  const issuer = opts.issuer ?? process.env.AUTH_ISSUER;
  const audience = opts.audience ?? process.env.AUTH_AUDIENCE;
  if (issuer) jwt = jwt.setIssuer(issuer);
  if (audience) jwt = jwt.setAudience(audience);
  return jwt.sign(new TextEncoder().encode(opts.secret ?? process.env.AUTH_JWT_SECRET ?? DEV_JWT_SECRET));
}

if (require.main === module) {
  const { values } = parseArgs({ options: { tenant: { type: "string" }, roles: { type: "string" }, sub: { type: "string" }, ttl: { type: "string" } } });
  const roles = values.roles ? values.roles.split(",").map((r) => r.trim()).filter(Boolean) : [];
  if (!values.tenant && !roles.includes("platform-admin")) {
    console.error("usage: npm run token -- --tenant <id> [--roles admin,platform-admin] [--sub <user>] [--ttl 12h]");
    process.exit(2);
  }
  mintToken({ tenant: values.tenant, roles, sub: values.sub, ttl: values.ttl }).then((t) => console.log(t));
}
