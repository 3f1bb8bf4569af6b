import { createServer, type ServerResponse } from "node:http";
import { Pool } from "pg";
import { authConfigFromEnv, createVerifier } from "../lib/auth";
import { tenantScope, visibleTo, type User } from "../lib/access";
import { encodeCursor } from "../lib/pagination";

/**
 * The yardstick for bench:api: node:http + pg doing the same work as the gateway path, with no framework and no
 * transport in between. Same work means: the same bearer-token verification (lib/auth), the same tenant checks,
 * the same data read from PostgreSQL, and a byte-identical JSON body (bench/api.ts compares the two before timing):
 *   GET /api/v1/deployments/:id  the deployment (with trial_ends_at and runtime), its events, its subscription with
 *                                plan version, addons and plan changes, and its newest saga request not started yet
 *                                (the engine's sagas are not asked: provisioning is not part of the benchmark cluster)
 *   GET /api/v1/deployments      a tenant's newest page (limit, keyset cursor)
 * It is written the way a careful hand-written server would be: few round trips, rows shaped in SQL.
 */
const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: Number(process.env.DB_POOL_MAX ?? 10) });
const port = Number(process.env.BARE_PORT ?? 3999);
const verify = createVerifier(authConfigFromEnv());
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** ISO 8601 UTC with milliseconds, as Date#toISOString prints a timestamptz(3). */
const ISO = (col: string) => `to_char(${col} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const DEPLOYMENT = `select id, tenant_id, slug, display_name, region, state, ${ISO("state_since")} as state_since, llm_mode, billing_action_suspended,
  template_code, template_version, ${ISO("inserted_at")} as inserted_at, ${ISO("updated_at")} as updated_at, ${ISO("trial_ends_at")} as trial_ends_at,
  json_build_object('status', runtime_status, 'droplet_id', runtime_droplet_id::float8, 'ipv4', runtime_ipv4, 'hostname', runtime_hostname) as runtime from deployments`;
/** The newest saga request not started yet, shown as the deployment's saga (as GET /deployments/:id's statement in deployments.service reads it). */
const PENDING_SAGA = `select id, kind, deployment_id, tenant_id, 'running' as status, '[]'::json as steps, ${ISO("created_at")} as started_at, null as finished_at, null as error
  from deployment_saga_requests where deployment_id = $1 and started_at is null and next_attempt_at <> 'infinity' order by seq desc limit 1`;
const EVENTS = `select id::float8 as id, deployment_id, from_state, to_state, reason, actor, notes, ${ISO("occurred_at")} as occurred_at
  from deployment_events where deployment_id = $1 order by id`;
const SUBSCRIPTION = `select s.id, s.deployment_id, s.tenant_id, s.status, s.plan_code,
    json_build_object('id', v.id, 'plan_code', v.plan_code, 'version', v.version, 'price_cents', v.price_cents, 'currency', v.currency, 'droplet_size', v.droplet_size, 'inserted_at', ${ISO("v.inserted_at")}) as plan_version,
    ${ISO("s.current_period_start")} as current_period_start, ${ISO("s.current_period_end")} as current_period_end, ${ISO("s.trial_ends_at")} as trial_ends_at,
    coalesce((select json_agg(json_build_object('code', a.addon_code, 'unit_price_cents', a.unit_price_cents, 'currency', a.currency, 'qty', a.qty, 'attached_at', ${ISO("a.attached_at")})
      order by a.attached_at, a.addon_code) from subscription_addons a where a.subscription_id = s.id), '[]') as addons,
    coalesce((select json_agg(json_build_object('from_plan_version_id', c.from_plan_version_id, 'to_plan_version_id', c.to_plan_version_id, 'actor', c.actor, 'occurred_at', ${ISO("c.occurred_at")})
      order by c.occurred_at) from subscription_changes c where c.subscription_id = s.id), '[]') as plan_changes,
    ${ISO("s.inserted_at")} as inserted_at, ${ISO("s.updated_at")} as updated_at
  from subscriptions s join plan_versions v on v.id = s.plan_version_id where s.deployment_id = $1`;

function send(res: ServerResponse, status: number, body: unknown) {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8" }).end(JSON.stringify(body));
}
const notFound = (id: string) => ({ name: "MoleculerClientError", message: `Deployment ${id} not found`, code: 404, type: "NOT_FOUND", data: { id } });

async function authenticate(header: string | undefined): Promise<User> {
  const [scheme, token] = (header ?? "").split(" ");
  if (scheme?.toLowerCase() !== "bearer" || !token) throw Object.assign(new Error("Unauthorized"), { code: 401 });
  return verify(token);
}

createServer(async (req, res) => {
  try {
    const url = new URL(req.url!, "http://x");
    const m = url.pathname.match(/^\/api\/v1\/deployments\/([^/]+)$/);
    if (url.pathname === "/api/v1/health") return send(res, 200, { status: "ok" });
    if (!m && url.pathname !== "/api/v1/deployments") return send(res, 404, { code: 404 });
    const user = await authenticate(req.headers.authorization);
    if (m) {
      const id = m[1];
      if (!UUID.test(id)) return send(res, 404, notFound(id));
      const d = (await pool.query(`${DEPLOYMENT} where id = $1`, [id])).rows[0];
      if (!d || !visibleTo(user, d.tenant_id)) return send(res, 404, notFound(id));
      const [events, subs, pending] = await Promise.all([pool.query(EVENTS, [id]), pool.query(SUBSCRIPTION, [id]), pool.query(PENDING_SAGA, [id])]);
      const s = subs.rows[0];
      const subscription = s && (user.operator || s.tenant_id === user.tenant_id) ? s : null;
      return send(res, 200, { deployment: d, subscription, events: events.rows, saga: pending.rows[0] ?? null });
    }
    const limit = Math.min(200, Math.max(1, Number(url.searchParams.get("limit") ?? 50) || 50));
    const scope = tenantScope(user);
    const asked = url.searchParams.get("tenant_id");
    if (scope && asked && asked !== scope) return send(res, 200, { items: [], next_cursor: null });
    const tenant = scope ?? asked;
    const rows = (await pool.query(`${DEPLOYMENT}${tenant ? " where tenant_id = $2" : ""} order by inserted_at desc, id desc limit $1`, tenant ? [limit + 1, tenant] : [limit + 1])).rows;
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    send(res, 200, { items: page, next_cursor: rows.length > limit && last ? encodeCursor(new Date(last.inserted_at), last.id) : null });
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    send(res, code === 401 ? 401 : 500, { code: code === 401 ? 401 : 500, message: String((err as Error).message) });
  }
}).listen(port, "127.0.0.1");
