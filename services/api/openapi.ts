/**
 * The OpenAPI 3.1 document of /api/v1, served at GET /api/v1/openapi.json. Every gateway alias has an entry
 * here (test/openapi.test.ts checks both ways), so the document cannot drift from the real routes.
 */
import type { Access } from "../../lib/access";

type Schema = Record<string, unknown>;
interface RouteDoc {
  summary: string;
  body?: Schema;
  query?: Record<string, Schema>;
  status: number;
  response: string;
  /** Served as text/event-stream (the watch route) instead of JSON. */
  stream?: boolean;
  /** Error statuses this route answers beyond the ones its access and path imply (status → description). */
  errors?: Record<string, string>;
}

const str = { type: "string" };
const int = { type: "integer" };
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const obj = (props: Record<string, Schema>, required: string[] = []): Schema => ({ type: "object", properties: props, required, additionalProperties: false });
const list = (item: string) => obj({ items: { type: "array", items: ref(item) }, next_cursor: { type: ["string", "null"] } }, ["items", "next_cursor"]);
const WEBHOOK_EVENTS = ["deployment.created", "deployment.transitioned", "deployment.runtime_changed", "saga.succeeded", "saga.failed", "saga.compensated", "saga.compensation_failed", "invoice.issued", "invoice.paid", "invoice.overdue"];
const DELIVERY_STATUSES = ["pending", "delivering", "succeeded", "failed", "cancelled"];
const WEBHOOK_ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /deployments/:id/watch": {
    summary: "Server-Sent Events: event `deployment` (the GET /deployments/:id view), then one message per deployment event, runtime change and saga step move (`event:` its type, `id:` the deployment's increasing journal sequence; send Last-Event-ID to resume), a comment line every 15 s",
    status: 200, response: "WatchStream", stream: true, errors: { "503": "The webhooks (watch) service is unreachable; retry-after" },
  },
  "POST /webhooks": {
    summary: "Register a webhook endpoint for your tenant (operators: all_tenants or tenant_id); the secret is in this answer only", status: 201, response: "WebhookCreated", errors: { "403": "all_tenants asked for by a non-operator" },
    body: obj({ url: { ...str, maxLength: 2048, description: "http or https; private, loopback and link-local addresses are refused unless WEBHOOK_ALLOW_PRIVATE=1" }, events: { type: "array", uniqueItems: true, items: { enum: WEBHOOK_EVENTS }, description: "absent or empty: every type" }, all_tenants: { type: "boolean", description: "operators only" }, tenant_id: { ...str, description: "operators only" } }, ["url"]),
  },
  "GET /webhooks": { summary: "Webhook endpoints, newest first (keyset pagination)", status: 200, response: "WebhookList", query: { limit: { ...int, minimum: 1, maximum: 200, default: 50 }, cursor: str, tenant_id: { ...str, description: "operators only" } } },
  "DELETE /webhooks/:id": { summary: "Remove a webhook endpoint; what was still to be sent to it is cancelled", status: 200, response: "WebhookEnvelope" },
  "GET /webhooks/:id/deliveries": {
    summary: "An endpoint's deliveries, newest first: status, attempts, last response code, next attempt, attempt history", status: 200, response: "DeliveryList",
    query: { status: { enum: DELIVERY_STATUSES }, limit: { ...int, minimum: 1, maximum: 200, default: 50 }, cursor: str },
  },
};
const STATES = ["provisioning", "trial", "active", "paused", "past_due", "suspended", "cancelled", "archived"];

export const ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /health": { summary: "Liveness", status: 200, response: "Health" },
  "GET /ready": { summary: "Readiness: database (every database-backed service), transporter, provider", status: 200, response: "Health" },
  "GET /openapi.json": { summary: "This document", status: 200, response: "Any" },
  "GET /deployments": {
    summary: "List deployments, newest first (keyset pagination)", status: 200, response: "DeploymentList",
    query: { state: { enum: STATES }, limit: { ...int, minimum: 1, maximum: 200, default: 50 }, cursor: str, tenant_id: { ...str, description: "operators only" } },
  },
  "POST /deployments": {
    summary: "Create a deployment (201); with provision: true, 202 with the provisioning saga", status: 201, response: "DeploymentCreated",
    body: obj({ slug: { ...str, pattern: "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$" }, display_name: str, region: str, state: { enum: ["active", "trial"] }, llm_mode: { enum: ["none", "shared", "byok"] }, billing_action_suspended: { type: "boolean" }, template_code: str, template_version: { type: ["string", "null"] }, tenant_id: { ...str, description: "operators only" }, provision: { type: "boolean" } }, ["slug"]),
  },
  "GET /deployments/:id": { summary: "A deployment with subscription (and addons), events (oldest first) and provisioning saga", status: 200, response: "DeploymentDetail" },
  "POST /deployments/:id/transition": { summary: "Move a deployment to another state (SPEC §2 table)", status: 200, response: "DeploymentEnvelope", body: obj({ to_state: { enum: STATES }, reason: str, notes: str }, ["to_state"]) },
  "POST /deployments/:id/subscribe": {
    summary: "Subscribe to a plan's newest version, addons snapshotted", status: 201, response: "SubscriptionEnvelope",
    body: obj({ plan_code: str, addons: { type: "array", items: obj({ code: str, qty: { ...int, minimum: 1 } }, ["code", "qty"]) } }, ["plan_code"]),
  },
  "POST /deployments/:id/subscription/addons": { summary: "Attach an addon (price and qty snapshotted)", status: 201, response: "SubscriptionEnvelope", body: obj({ code: str, qty: { ...int, minimum: 1 } }, ["code"]) },
  "POST /deployments/:id/subscription/plan": { summary: "Change plan version (newest of plan_code, or the given version)", status: 200, response: "SubscriptionEnvelope", body: obj({ plan_code: str, version: { ...int, minimum: 1 } }) },
  "GET /plans": { summary: "Plans with all versions", status: 200, response: "Any" },
  "POST /plans": { summary: "Create a plan (version 1)", status: 201, response: "Any", body: obj({ code: str, name: str, price_cents: { ...int, minimum: 0 }, currency: str }, ["code", "name", "price_cents"]) },
  "POST /plans/:code/versions": { summary: "New plan version (a price change)", status: 201, response: "Any", body: obj({ price_cents: { ...int, minimum: 0 }, currency: str }, ["price_cents"]) },
  "GET /addons": { summary: "Addons with live prices", status: 200, response: "Any" },
  "POST /addons": { summary: "Create an addon", status: 201, response: "Any", body: obj({ code: str, name: str, unit_price_cents: { ...int, minimum: 0 }, currency: str }, ["code", "name", "unit_price_cents"]) },
  "PATCH /addons/:code": { summary: "Change an addon's name or live price", status: 200, response: "Any", body: obj({ name: str, unit_price_cents: { ...int, minimum: 0 } }) },
  "GET /sagas/:id": { summary: "A provisioning saga with per-step progress", status: 200, response: "SagaEnvelope" },
  "POST /sagas/:id/retry": { summary: "Retry a compensation_failed saga", status: 202, response: "SagaEnvelope" },
  "GET /inventory": {
    summary: "Cloud resources", status: 200, response: "Any",
    query: { deployment_id: str, saga_id: str, status: str, include_destroyed: { type: "boolean" }, tenant_id: { ...str, description: "operators only" }, limit: int, cursor: str },
  },
  "GET /inventory/:id": { summary: "One cloud resource", status: 200, response: "Any" },
  "GET /billing/balance": { summary: "Provider balance (cents) and platform monthly recurring revenue per currency", status: 200, response: "Any" },
  "GET /dashboard/margin": { summary: "Revenue, cloud cost and margin per deployment and in total", status: 200, response: "Any", query: { tenant_id: str, state: { enum: STATES }, sort: { enum: ["margin", "margin_pct", "revenue", "cost"] }, order: { enum: ["asc", "desc"] } } },
  "GET /drift": { summary: "Provider vs inventory and DNS: orphans, ghosts, mismatches", status: 200, response: "Any" },
  "POST /drift/actions": {
    summary: "Act on a drift entry: adopt an orphan, destroy an orphan, mark a ghost destroyed, sync a mismatch", status: 201, response: "Any",
    body: obj({ action: { enum: ["adopt", "destroy", "mark_destroyed", "sync"] }, entry_id: str, external_id: str, resource: { enum: ["droplet", "dns_record"] }, tenant_id: str, deployment_id: str }, ["action"]),
  },
  ...WEBHOOK_ROUTE_DOCS,
};

const ERROR = obj({ name: str, message: str, code: int, type: { type: ["string", "null"] }, data: {} }, ["name", "message", "code"]);
const DEPLOYMENT = obj({
  id: { ...str, format: "uuid" }, tenant_id: str, slug: str, display_name: str, region: str, state: { enum: STATES }, state_since: { ...str, format: "date-time" },
  llm_mode: { enum: ["none", "shared", "byok"] }, billing_action_suspended: { type: "boolean" }, template_code: str, template_version: { type: ["string", "null"] },
  inserted_at: { ...str, format: "date-time" }, updated_at: { ...str, format: "date-time" },
});
const STEP = obj({ name: str, status: { enum: ["pending", "running", "succeeded", "failed", "compensating", "compensated", "compensation_failed", "skipped"] }, attempts: int, started_at: { type: ["string", "null"] }, finished_at: { type: ["string", "null"] }, error: { type: ["string", "null"] }, output: { type: "object" } });
const SAGA = obj({ id: str, deployment_id: str, status: { enum: ["running", "succeeded", "compensating", "compensated", "compensation_failed"] }, steps: { type: "array", items: STEP }, started_at: str, finished_at: { type: ["string", "null"] }, error: { type: ["string", "null"] } });

const tsNull = { type: ["string", "null"] };
const WEBHOOK = obj(
  { id: { ...str, format: "uuid" }, tenant_id: tsNull, all_tenants: { type: "boolean" }, url: str, events: { type: "array", items: { enum: WEBHOOK_EVENTS } }, created_by: str, inserted_at: { ...str, format: "date-time" } },
  ["id", "tenant_id", "all_tenants", "url", "events", "created_by", "inserted_at"],
);
const ATTEMPT = obj({ attempt: int, at: { ...str, format: "date-time" }, response_code: { type: ["integer", "null"] }, error: tsNull, duration_ms: int }, ["attempt", "at", "response_code", "error"]);
const DELIVERY = obj(
  {
    id: { ...str, format: "uuid" }, event_id: str, event_type: { enum: WEBHOOK_EVENTS }, status: { enum: DELIVERY_STATUSES }, attempts: int, response_code: { type: ["integer", "null"] }, error: tsNull,
    next_attempt_at: tsNull, created_at: { ...str, format: "date-time" }, delivered_at: tsNull, history: { type: "array", items: ATTEMPT },
  },
  ["id", "event_id", "event_type", "status", "attempts", "response_code", "error", "next_attempt_at", "created_at", "delivered_at", "history"],
);

/**
 * `accessOf(action)` is the action's own `access` declaration (read from the service registry, local or remote):
 * who may call a route is declared once, on the action, and this document shows the same thing the
 * AccessMiddleware enforces. An action not discovered yet is documented as signed-in.
 */
export function openApiDocument(aliases: Record<string, string>, accessOf: (action: string) => Access | undefined = () => undefined) {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const key of Object.keys(aliases)) {
    const doc = ROUTE_DOCS[key];
    if (!doc) continue;
    const access = accessOf(aliases[key]) ?? "signed-in";
    const [method, path] = key.split(" ");
    const oaPath = `/api/v1${path.replace(/:(\w+)/g, "{$1}")}`;
    const params = [
      ...[...path.matchAll(/:(\w+)/g)].map((m) => ({ name: m[1], in: "path", required: true, schema: str })),
      ...Object.entries(doc.query ?? {}).map(([name, schema]) => ({ name, in: "query", required: false, schema })),
    ];
    const errors: Record<string, unknown> = { "422": { description: "Invalid input (VALIDATION_ERROR) or transition (INVALID_TRANSITION)", content: { "application/json": { schema: ref("Error") } } } };
    if (access !== "public") errors["401"] = { description: "Missing or bad token", content: { "application/json": { schema: ref("Error") } } };
    if (access === "operator") errors["403"] = { description: "Operators only (platform-admin)", content: { "application/json": { schema: ref("Error") } } };
    if (path.includes(":")) errors["404"] = { description: "Absent or another tenant's", content: { "application/json": { schema: ref("Error") } } };
    for (const [status, description] of Object.entries(doc.errors ?? {})) errors[status] = { description, content: { "application/json": { schema: ref("Error") } } };
    (paths[oaPath] ??= {})[method.toLowerCase()] = {
      summary: doc.summary,
      operationId: aliases[key],
      "x-access": access,
      ...(access === "public" ? { security: [] } : {}),
      ...(params.length ? { parameters: params } : {}),
      ...(doc.body ? { requestBody: { required: true, content: { "application/json": { schema: doc.body } } } } : {}),
      responses: { [String(doc.status)]: { description: "OK", content: { [doc.stream ? "text/event-stream" : "application/json"]: { schema: ref(doc.response) } } }, ...errors },
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
        Webhook: WEBHOOK,
        WebhookCreated: obj({ webhook: { ...WEBHOOK, properties: { ...(WEBHOOK.properties as object), secret: { ...str, description: "shown once" } }, required: [...(WEBHOOK.required as string[]), "secret"] } }, ["webhook"]),
        WebhookEnvelope: obj({ webhook: ref("Webhook") }, ["webhook"]),
        WebhookList: list("Webhook"),
        Delivery: DELIVERY,
        DeliveryList: list("Delivery"),
        WatchStream: { type: "string", description: "text/event-stream: `event: <type>`, `id: <sequence>`, `data: <JSON>` messages and `:` comment lines" },
      },
    },
  };
}
