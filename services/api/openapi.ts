/**
 * The OpenAPI 3.1 document of /api/v1, served at GET /api/v1/openapi.json. Every gateway alias has an entry
 * here (test/openapi.test.ts checks both ways), so the document cannot drift from the real routes.
 */
type Schema = Record<string, unknown>;
interface RouteDoc {
  summary: string;
  access: "public" | "scoped" | "signed-in" | "operator";
  body?: Schema;
  query?: Record<string, Schema>;
  status: number;
  response: string;
}

const str = { type: "string" };
const int = { type: "integer" };
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const obj = (props: Record<string, Schema>, required: string[] = []): Schema => ({ type: "object", properties: props, required, additionalProperties: false });
const list = (item: string) => obj({ items: { type: "array", items: ref(item) }, next_cursor: { type: ["string", "null"] } }, ["items", "next_cursor"]);
const STATES = ["provisioning", "trial", "active", "paused", "past_due", "suspended", "cancelled", "archived"];

/** SPEC §8 input limits (services/api/input-limits.ts): every route's URL, and the body of every write. */
function inputLimitErrors(method: string): Record<string, unknown> {
  const e = (description: string) => ({ description, content: { "application/json": { schema: ref("Error") } } });
  const out: Record<string, unknown> = { "400": e("Malformed URL encoding (INVALID_URL); a body that does not decode (INVALID_CONTENT_ENCODING, INVALID_BODY)") };
  if (method !== "GET") {
    out["413"] = e("Body over 256 KB, before or after decoding (PAYLOAD_TOO_LARGE)");
    out["415"] = e("Unknown Content-Encoding (UNSUPPORTED_CONTENT_ENCODING) or a body that is not application/json (UNSUPPORTED_MEDIA_TYPE)");
  }
  return out;
}
/** 503 with Retry-After: the database or a service the route needs is unreachable; /ready: not ready. */
function unavailableError(key: string): Record<string, unknown> {
  if (key === "GET /health" || key === "GET /openapi.json") return {};
  const headers = { "Retry-After": { description: "Seconds to wait before retrying", schema: { type: "string" } } };
  if (key === "GET /ready") return { "503": { description: "A routed service is not discovered or does not answer, or the transporter is down", headers, content: { "application/json": { schema: ref("Health") } } } };
  return { "503": { description: "The database or a service this route needs is unreachable (SERVICE_UNAVAILABLE)", headers, content: { "application/json": { schema: ref("Error") } } } };
}

export const ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /health": { summary: "Liveness", access: "public", status: 200, response: "Health" },
  "GET /ready": { summary: "Readiness: every service the gateway routes to discovered and answering (its database; the provider for inventory), transporter connected", access: "public", status: 200, response: "Health" },
  "GET /openapi.json": { summary: "This document", access: "public", status: 200, response: "Any" },
  "GET /deployments": {
    summary: "List deployments, newest first (keyset pagination)", access: "scoped", status: 200, response: "DeploymentList",
    query: { state: { enum: STATES }, limit: { ...int, minimum: 1, maximum: 200, default: 50 }, cursor: str, tenant_id: { ...str, description: "operators only" } },
  },
  "POST /deployments": {
    summary: "Create a deployment (201); with provision: true, 202 with the provisioning saga", access: "scoped", status: 201, response: "DeploymentCreated",
    body: obj({ slug: { ...str, pattern: "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" }, display_name: str, region: str, state: { enum: ["active", "trial"] }, llm_mode: { enum: ["none", "shared", "byok"] }, billing_action_suspended: { type: "boolean" }, template_code: str, template_version: { type: ["string", "null"] }, tenant_id: { ...str, description: "operators only" }, provision: { type: "boolean" } }, ["slug"]),
  },
  "GET /deployments/:id": { summary: "A deployment with subscription (and addons), events (oldest first) and provisioning saga", access: "scoped", status: 200, response: "DeploymentDetail" },
  "POST /deployments/:id/transition": { summary: "Move a deployment to another state (SPEC §2 table)", access: "scoped", status: 200, response: "DeploymentEnvelope", body: obj({ to_state: { enum: STATES }, reason: str, notes: str }, ["to_state"]) },
  "POST /deployments/:id/subscribe": {
    summary: "Subscribe to a plan's newest version, addons snapshotted", access: "scoped", status: 201, response: "SubscriptionEnvelope",
    body: obj({ plan_code: str, addons: { type: "array", items: obj({ code: str, qty: { ...int, minimum: 1 } }, ["code", "qty"]) } }, ["plan_code"]),
  },
  "POST /deployments/:id/subscription/addons": { summary: "Attach an addon (price and qty snapshotted)", access: "scoped", status: 201, response: "SubscriptionEnvelope", body: obj({ code: str, qty: { ...int, minimum: 1 } }, ["code"]) },
  "POST /deployments/:id/subscription/plan": { summary: "Change plan version (newest of plan_code, or the given version)", access: "scoped", status: 200, response: "SubscriptionEnvelope", body: obj({ plan_code: str, version: { ...int, minimum: 1 } }) },
  "GET /plans": { summary: "Plans with all versions", access: "signed-in", status: 200, response: "Any" },
  "POST /plans": { summary: "Create a plan (version 1)", access: "operator", status: 201, response: "Any", body: obj({ code: str, name: str, price_cents: { ...int, minimum: 0 }, currency: str }, ["code", "name", "price_cents"]) },
  "POST /plans/:code/versions": { summary: "New plan version (a price change)", access: "operator", status: 201, response: "Any", body: obj({ price_cents: { ...int, minimum: 0 }, currency: str }, ["price_cents"]) },
  "GET /addons": { summary: "Addons with live prices", access: "signed-in", status: 200, response: "Any" },
  "POST /addons": { summary: "Create an addon", access: "operator", status: 201, response: "Any", body: obj({ code: str, name: str, unit_price_cents: { ...int, minimum: 0 }, currency: str }, ["code", "name", "unit_price_cents"]) },
  "PATCH /addons/:code": { summary: "Change an addon's name or live price", access: "operator", status: 200, response: "Any", body: obj({ name: str, unit_price_cents: { ...int, minimum: 0 } }) },
  "GET /sagas/:id": { summary: "A provisioning saga with per-step progress", access: "scoped", status: 200, response: "SagaEnvelope" },
  "POST /sagas/:id/retry": { summary: "Retry a compensation_failed saga", access: "operator", status: 202, response: "SagaEnvelope" },
  "GET /inventory": {
    summary: "Cloud resources", access: "scoped", status: 200, response: "Any",
    query: { deployment_id: str, saga_id: str, status: str, include_destroyed: { type: "boolean" }, tenant_id: { ...str, description: "operators only" }, limit: int, cursor: str },
  },
  "GET /inventory/:id": { summary: "One cloud resource", access: "scoped", status: 200, response: "Any" },
  "GET /billing/balance": { summary: "Provider balance (cents) and platform monthly recurring revenue per currency", access: "operator", status: 200, response: "Any" },
  "GET /dashboard/margin": { summary: "Revenue, cloud cost and margin per deployment and in total", access: "operator", status: 200, response: "Any", query: { tenant_id: str, state: { enum: STATES }, sort: { enum: ["margin", "margin_pct", "revenue", "cost"] }, order: { enum: ["asc", "desc"] } } },
  "GET /drift": { summary: "Provider vs inventory and DNS: orphans, ghosts, mismatches", access: "operator", status: 200, response: "Any" },
  "POST /drift/actions": {
    summary: "Act on a drift entry: adopt an orphan, destroy an orphan, mark a ghost destroyed, sync a mismatch", access: "operator", status: 201, response: "Any",
    body: obj({ action: { enum: ["adopt", "destroy", "mark_destroyed", "sync"] }, entry_id: str, external_id: str, resource: { enum: ["droplet", "dns_record"] }, tenant_id: str, deployment_id: str }, ["action"]),
  },
};

const ERROR = obj({ name: str, message: str, code: int, type: { type: ["string", "null"] }, data: {} }, ["name", "message", "code"]);
const DEPLOYMENT = obj({
  id: { ...str, format: "uuid" }, tenant_id: str, slug: str, display_name: str, region: str, state: { enum: STATES }, state_since: { ...str, format: "date-time" },
  llm_mode: { enum: ["none", "shared", "byok"] }, billing_action_suspended: { type: "boolean" }, template_code: str, template_version: { type: ["string", "null"] },
  inserted_at: { ...str, format: "date-time" }, updated_at: { ...str, format: "date-time" },
});
const STEP = obj({ name: str, status: { enum: ["pending", "running", "succeeded", "failed", "compensating", "compensated", "compensation_failed", "skipped"] }, attempts: int, started_at: { type: ["string", "null"] }, finished_at: { type: ["string", "null"] }, error: { type: ["string", "null"] }, output: { type: "object" } });
const SAGA = obj({ id: str, deployment_id: str, status: { enum: ["running", "succeeded", "compensating", "compensated", "compensation_failed"] }, steps: { type: "array", items: STEP }, started_at: str, finished_at: { type: ["string", "null"] }, error: { type: ["string", "null"] } });

export function openApiDocument(aliases: Record<string, string>) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const key of Object.keys(aliases)) {
    const doc = ROUTE_DOCS[key];
    if (!doc) continue;
    const [method, path] = key.split(" ");
    const oaPath = `/api/v1${path.replace(/:(\w+)/g, "{$1}")}`;
    const params = [
      ...[...path.matchAll(/:(\w+)/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: str })),
      ...Object.entries(doc.query ?? {}).map(([name, schema]) => ({ name, in: "query", required: false, schema })),
    ];
    const errors: Record<string, unknown> = { "422": { description: "Invalid input (VALIDATION_ERROR) or transition (INVALID_TRANSITION)", content: { "application/json": { schema: ref("Error") } } } };
    if (doc.access !== "public") errors["401"] = { description: "Missing or bad token", content: { "application/json": { schema: ref("Error") } } };
    if (doc.access === "operator") errors["403"] = { description: "Operators only (platform-admin)", content: { "application/json": { schema: ref("Error") } } };
    if (path.includes(":")) errors["404"] = { description: "Absent or another tenant's", content: { "application/json": { schema: ref("Error") } } };
    Object.assign(errors, inputLimitErrors(method), unavailableError(key));
    (paths[oaPath] ??= {})[method.toLowerCase()] = {
      summary: doc.summary,
      operationId: aliases[key],
      "x-access": doc.access,
      ...(doc.access === "public" ? { security: [] } : {}),
      ...(params.length ? { parameters: params } : {}),
      ...(doc.body ? { requestBody: { required: true, content: { "application/json": { schema: doc.body } } } } : {}),
      responses: { [String(doc.status)]: { description: "OK", content: { "application/json": { schema: ref(doc.response) } } }, ...errors },
    };
  }
  return {
    openapi: "3.1.0",
    info: { title: "arcadia-cloud control plane", version: "1", description: "Deployments, subscriptions, cloud resources, DNS and provisioning. Errors: {name, message, code, type, data}." },
    servers: [{ url: "/" }],
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT", description: "arcadia-app token: sub, tenant_id, roles (platform-admin = operator)" } },
      schemas: {
        Any: { type: "object" },
        Error: ERROR,
        Health: obj({ status: str, checks: { type: "object" } }),
        Deployment: DEPLOYMENT,
        Saga: SAGA,
        DeploymentEnvelope: obj({ deployment: ref("Deployment") }, ["deployment"]),
        DeploymentCreated: obj({ deployment: ref("Deployment"), saga: ref("Saga") }, ["deployment"]),
        DeploymentList: list("Deployment"),
        DeploymentDetail: obj({ deployment: ref("Deployment"), subscription: { type: ["object", "null"] }, events: { type: "array", items: { type: "object" } }, saga: { oneOf: [ref("Saga"), { type: "null" }] } }, ["deployment", "subscription", "events", "saga"]),
        SubscriptionEnvelope: obj({ subscription: { type: "object" } }, ["subscription"]),
        SagaEnvelope: obj({ saga: ref("Saga") }, ["saga"]),
      },
    },
  };
}
