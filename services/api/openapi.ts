/**
 * The OpenAPI 3.1 document of /api/v1, served at GET /api/v1/openapi.json.
 *
 * How it cannot drift from what we serve:
 * - every gateway alias has an entry here and every entry is an alias (test/openapi.test.ts checks both ways);
 * - query parameters and request bodies are generated from the actions' own fastest-validator `params`
 *   (services/api/openapi-params.ts), the declarations that validate the request (strictly: lib/validator.ts);
 * - responses are declared here once per route with every status it can answer; the test client
 *   (test/helpers.ts `http()`) validates every response the suite receives against this document with ajv.
 *
 * Adding a route: an alias in api.service.ts, a ROUTE_DOCS entry here (summary, success responses, any
 * extra error statuses), a component schema for what it returns.
 */
import { paramsToSchema } from "./openapi-params";

import type { Access } from "../../lib/access";

type Schema = Record<string, unknown>;
interface RouteDoc {
  summary: string;
  /** Success status → component name (or a schema). */
  responses?: Record<number, string | Schema>;
  /**
   * The earlier entry format (one success status), still read so entries written for it merge: `status` +
   * `response` become `responses`. `body` and `query` are not used: both come from the action's params.
   */
  status?: number;
  response?: string;
  body?: Schema;
  query?: Record<string, Schema>;
  /** Error statuses besides the ones every route of its kind answers (see `errorStatuses`). */
  errors?: number[];
  /** For routes whose action is not in ALL_SERVICES (the gateway's own): the params it takes. */
  params?: Record<string, unknown>;
  /** The success answer is a text/event-stream (the watch route), not JSON. */
  stream?: boolean;
  /** Request headers the route reads, as OpenAPI header parameters. */
  headers?: Schema[];
}

const str = { type: "string" };
const strOrNull = { type: ["string", "null"] };
const int = { type: "integer" };
const time = { type: "string", format: "date-time" };
const timeOrNull = { type: ["string", "null"], format: "date-time" };
const uuid = { type: "string", format: "uuid" };
const cents = { type: "integer" };
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });
const nullable = (name: string) => ({ oneOf: [ref(name), { type: "null" }] });
const obj = (props: Record<string, Schema>, required: string[] = Object.keys(props)): Schema => ({ type: "object", properties: props, required, additionalProperties: false });
const arr = (items: Schema) => ({ type: "array", items });
const list = (item: string) => obj({ items: arr(ref(item)), next_cursor: strOrNull });
const envelope = (key: string, item: string) => obj({ [key]: ref(item) });
const STATES = ["provisioning", "trial", "active", "paused", "past_due", "suspended", "cancelled", "archived"];
const SAGA_KINDS = ["provision", "power_off", "power_on", "decommission", "resize"];
const SAGA_STATUSES = ["running", "succeeded", "failed", "compensating", "compensated", "compensation_failed"];
const STEP_STATUSES = ["pending", "running", "succeeded", "failed", "compensating", "compensated", "compensation_failed", "skipped"];
const scalar = { type: ["string", "number", "integer", "boolean", "null"] };

export const ROUTE_DOCS: Record<string, RouteDoc> = {
  "GET /health": { summary: "Liveness", responses: { 200: "Health" }, params: {} },
  "GET /ready": { summary: "Readiness: every service the gateway routes to discovered and answering (its database; the provider for inventory), transporter connected; 503 names the failing checks", responses: { 200: "Ready", 503: "Ready" }, params: {} },
  "GET /openapi.json": { summary: "This document", responses: { 200: "OpenApiDocument" }, params: {} },
  "GET /deployments": { summary: "List deployments, newest first (keyset pagination)", responses: { 200: "DeploymentList" } },
  "POST /deployments": {
    summary: "Create a deployment (201); with provision: true, 202 with the provisioning saga. 409 SLUG_TAKEN (data.id: the existing deployment), QUOTA_EXCEEDED",
    responses: { 201: "DeploymentCreated", 202: "DeploymentWithSaga" }, errors: [403],
  },
  "GET /deployments/:id": { summary: "A deployment with subscription (and addons), events (oldest first) and its newest saga", responses: { 200: "DeploymentDetail" } },
  "POST /deployments/:id/transition": {
    summary: "Move a deployment to another state (SPEC §2 table): 200 with the lifecycle saga it started (null without a cloud effect). 403 BILLING_CONTROLLED {from, to}; 409 SUBSCRIPTION_REQUIRED, PAYMENT_REQUIRED",
    responses: { 200: "DeploymentMove" }, errors: [403],
  },
  "PATCH /deployments/:id": { summary: "Change display_name; billing_action_suspended (operators only: 403 for tenants)", responses: { 200: "DeploymentEnvelope" }, errors: [403] },
  "DELETE /deployments/:id": {
    summary: "Cancel (unless cancelled) and archive: 202 with the decommission saga; 200 with saga null when it has no cloud resources or is already archived. 409 PROVISIONING_IN_PROGRESS",
    responses: { 200: "DeploymentMove", 202: "DeploymentMove" },
  },
  "POST /deployments/:id/provision": {
    summary: "Provision an existing deployment without a live droplet (active, trial, cancelled): 202 with the provision saga. 409 ALREADY_PROVISIONED, PAYMENT_REQUIRED; 422 INVALID_TRANSITION",
    responses: { 202: "DeploymentMove" }, errors: [403],
  },
  "POST /deployments/:id/subscribe": { summary: "Subscribe to a plan's newest version, addons snapshotted", responses: { 201: "SubscriptionEnvelope" } },
  "POST /deployments/:id/subscription/addons": { summary: "Attach an addon (price and qty snapshotted)", responses: { 201: "SubscriptionEnvelope" } },
  "POST /deployments/:id/subscription/plan": { summary: "Change plan version (newest of plan_code, or the given version); another droplet size starts a resize saga (saga, else null)", responses: { 200: "SubscriptionChanged" } },
  "GET /plans": { summary: "Plans with all versions", responses: { 200: "PlanList" } },
  "POST /plans": { summary: "Create a plan (version 1); droplet_size (default DO_DEFAULT_SIZE) must be a size the provider offers", responses: { 201: "PlanEnvelope" } },
  "POST /plans/:code/versions": { summary: "The plan's next version (a price or size change); what is left out is carried over", responses: { 201: "PlanVersionEnvelope" } },
  "GET /templates": { summary: "Templates with all their versions (image, cloud-init user_data)", responses: { 200: "TemplateList" } },
  "POST /templates": { summary: "Create a template (version 1); user_data may use {{slug}}, {{hostname}}, {{llm_mode}}, {{tenant_id}}", responses: { 201: "TemplateEnvelope" } },
  "POST /templates/:code/versions": { summary: "The template's next version; what is left out is carried over", responses: { 201: "TemplateVersionEnvelope" } },
  "GET /addons": { summary: "Addons with live prices", responses: { 200: "AddonList" } },
  "POST /addons": { summary: "Create an addon", responses: { 201: "AddonEnvelope" } },
  "PATCH /addons/:code": { summary: "Change an addon's name or live price", responses: { 200: "AddonEnvelope" } },
  "GET /sagas": { summary: "Sagas of every kind, newest first (keyset pagination); filters status, kind, deployment_id, tenant_id", responses: { 200: "SagaList" } },
  "GET /sagas/:id": { summary: "A saga (any kind) with per-step progress", responses: { 200: "SagaEnvelope" } },
  "POST /sagas/:id/retry": { summary: "Retry a compensation_failed saga (compensates again) or a failed one (runs again from its failed step); 409 SAGA_NOT_RETRYABLE otherwise", responses: { 202: "SagaEnvelope" } },
  "GET /inventory": { summary: "Cloud resources (live; include_destroyed=true for destroyed ones too)", responses: { 200: "ResourceList" } },
  "GET /inventory/:id": { summary: "One cloud resource", responses: { 200: "ResourceEnvelope" } },
  "GET /billing/balance": { summary: "Provider balance (cents) and platform monthly recurring revenue per currency", responses: { 200: "Balance" }, errors: [502] },
  "GET /dashboard/margin": { summary: "Revenue, cloud cost and margin per deployment and in total", responses: { 200: "Margin" } },
  "GET /invoices": { summary: "Invoices, newest first (keyset pagination)", responses: { 200: "InvoiceList" } },
  "GET /invoices/:id": { summary: "One invoice with its lines", responses: { 200: "InvoiceEnvelope" } },
  "POST /invoices/:id/pay": { summary: "Mark an open invoice paid at the billing clock's now; 409 INVOICE_NOT_OPEN", responses: { 200: "InvoiceEnvelope" } },
  "POST /invoices/:id/void": { summary: "Void an open invoice; 409 INVOICE_NOT_OPEN", responses: { 200: "InvoiceEnvelope" } },
  "POST /billing/run": { summary: "Run billing now: period invoices, dunning, trial ends, retention", responses: { 200: "BillingRun" } },
  "GET /billing/clock": { summary: "The billing test clock (404 unless BILLING_TEST_CLOCK=1)", responses: { 200: "BillingClock" }, errors: [404] },
  "POST /billing/clock": { summary: "Move the test clock forward ({advance_days} or {now}; never backwards: 422), then run billing (404 unless BILLING_TEST_CLOCK=1)", responses: { 200: "BillingRun" }, errors: [404] },
  "GET /drift": { summary: "Provider vs inventory and DNS: orphans, ghosts, mismatches", responses: { 200: "DriftReport" } },
  "POST /drift/actions": { summary: "Act on a drift entry: adopt or destroy an orphan, mark a ghost destroyed, sync a mismatch", responses: { 201: "DriftActionResult" }, errors: [502] },
  "GET /deployments/:id/watch": {
    summary: "Server-Sent Events: event `deployment` (the GET /deployments/:id view) first, then one message per deployment event, runtime change and saga step move (`event:` its type, `id:` the deployment's increasing journal sequence), a comment line every 15 s",
    responses: { 200: "WatchStream" }, stream: true, params: { id: "string" },
    headers: [{ name: "Last-Event-ID", in: "header", required: false, description: "resume after this id: every message after it is sent, none missed", schema: { type: "string", pattern: "^[0-9]+$" } }],
  },
  "POST /webhooks": { summary: "Register a webhook endpoint for your tenant (operators: all_tenants or a tenant_id); its secret is in this answer only. URLs: http/https, no private, loopback or link-local addresses (422) unless WEBHOOK_ALLOW_PRIVATE=1", responses: { 201: "WebhookCreated" }, errors: [403] },
  "GET /webhooks": { summary: "Webhook endpoints, newest first (keyset pagination); never their secrets", responses: { 200: "WebhookList" } },
  "DELETE /webhooks/:id": { summary: "Remove a webhook endpoint; what it still had pending is cancelled", responses: { 200: "WebhookEnvelope" } },
  "GET /webhooks/deliveries": { summary: "Operators: deliveries of every endpoint, newest first; status=failed lists the ones given up on", responses: { 200: "OperatorDeliveryList" } },
  "GET /webhooks/:id/deliveries": { summary: "An endpoint's deliveries, newest first: status, attempts, last response code and error, next attempt, attempt history (status=failed: given up)", responses: { 200: "DeliveryList" } },
};

const ERROR_TEXT: Record<number, string> = {
  401: "Missing or bad token",
  403: "Not allowed (operators only, or an operator-only field or move)",
  404: "Absent or another tenant's",
  409: "Conflict (e.g. SLUG_TAKEN, QUOTA_EXCEEDED, IDEMPOTENCY_IN_PROGRESS)",
  422: "Invalid input: VALIDATION_ERROR naming the field or unknown parameter, INVALID_TRANSITION, IDEMPOTENCY_KEY_REUSED",
  400: "Malformed URL encoding (INVALID_URL), or a body that does not decode in its Content-Encoding or as UTF-8 (INVALID_CONTENT_ENCODING, INVALID_BODY)",
  413: "The body is over 256 KB, on the wire or decoded (PAYLOAD_TOO_LARGE)",
  415: "Unknown Content-Encoding (UNSUPPORTED_CONTENT_ENCODING) or a body that is not application/json (UNSUPPORTED_MEDIA_TYPE)",
  429: "Too many writes for this token (RATE_LIMITED); retry after the Retry-After header's seconds",
  502: "The provider answered something we could not use",
  503: "A service or the database the request needs is unreachable (SERVICE_UNAVAILABLE); Retry-After",
};

const isWrite = (method: string) => ["POST", "PATCH", "PUT", "DELETE"].includes(method);

/** What every route of its kind can answer, besides its own `errors`. */
export function errorStatuses(method: string, path: string, doc: RouteDoc, access: Access): number[] {
  // 400: malformed URL percent-encoding (any route); for writes also a body that does not decode (services/api/input-limits.ts).
  const s = new Set<number>([400, 422, 503]);
  if (access !== "public") s.add(401);
  if (access === "operator") s.add(403);
  if (path.includes(":")) s.add(404);
  if (isWrite(method) && access !== "public") [409, 429].forEach((c) => s.add(c));
  // The gateway's body reader refuses before anything runs: a body over 256 KB, an unknown Content-Encoding.
  if (isWrite(method)) [413, 415].forEach((c) => s.add(c));
  (doc.errors ?? []).forEach((c) => s.add(c));
  return [...s].sort();
}

/** The declarations (fastest-validator params, access) of every action a node can run, by full name (v1.deployments.create). */
function actionDefs(): Map<string, { params?: Record<string, unknown>; access?: Access }> {
  // Required lazily: services/index imports the api service, which imports this file.
  const { ALL_SERVICES } = require("../index") as typeof import("../index");
  const out = new Map<string, { params?: Record<string, unknown>; access?: Access }>();
  const collect = (schema: any, into: Record<string, any>) => {
    for (const m of schema.mixins ?? []) collect(m, into);
    Object.assign(into, schema.actions ?? {});
    return into;
  };
  for (const schema of Object.values(ALL_SERVICES) as any[]) {
    const full = `${schema.version ? `v${schema.version}.` : ""}${schema.name}`;
    for (const [name, def] of Object.entries(collect(schema, {}))) out.set(`${full}.${name}`, typeof def === "object" && def ? { params: (def as any).params, access: (def as any).access } : {});
  }
  return out;
}

const IDEMPOTENCY_HEADER = {
  name: "Idempotency-Key", in: "header", required: false,
  description: "Stripe-style: the same key, method, path and body within 24 h answers the first response again (header Idempotent-Replayed: true)",
  schema: { type: "string", minLength: 1, maxLength: 255 },
};

/**
 * `accessOf(action)` is the action's own `access` declaration (read from the service registry, local or remote):
 * who may call a route is declared once, on the action, and this document shows the same thing the
 * AccessMiddleware enforces. Without it (an action not discovered yet) the action's declaration in
 * services/index.ts is used; failing that, signed-in.
 */
export function openApiDocument(aliases: Record<string, string>, accessOf: (action: string) => Access | undefined = () => undefined) {
  const defs = actionDefs();
  const paths: Record<string, Record<string, unknown>> = {};
  for (const [key, action] of Object.entries(aliases)) {
    const doc = ROUTE_DOCS[key];
    if (!doc) continue;
    const [method, path] = key.split(" ");
    const oaPath = `/api/v1${path.replace(/:(\w+)/g, "{$1}")}`;
    const pathNames = [...path.matchAll(/:(\w+)/g)].map((m) => m[1]);
    const declared = (doc.params ?? defs.get(action)?.params ?? {}) as Record<string, any>;
    const access: Access = accessOf(action) ?? defs.get(action)?.access ?? "signed-in";
    const input = paramsToSchema(declared, true, pathNames) as { properties: Record<string, Schema>; required: string[] };
    const pathParams = pathNames.map((name) => ({ name, in: "path", required: true, schema: declared[name] ? (paramsToSchema({ [name]: declared[name] }) as any).properties[name] : str }));
    const queryParams =
      method === "GET"
        ? Object.entries(input.properties).map(([name, schema]) => ({ name, in: "query", required: input.required.includes(name), schema }))
        : [];
    const body = method !== "GET" && Object.keys(input.properties).length ? input : null;
    const responses: Record<string, unknown> = {};
    for (const [status, schema] of Object.entries(doc.responses ?? (doc.status && doc.response ? { [doc.status]: doc.response } : {}))) {
      const replayed = isWrite(method) && Number(status) < 300 ? { headers: { "Idempotent-Replayed": { schema: { const: "true" }, description: "present when this is the saved answer of an earlier request with the same Idempotency-Key" } } } : {};
      const type = doc.stream && Number(status) < 300 ? "text/event-stream" : "application/json";
      responses[status] = { description: Number(status) < 300 ? "OK" : ERROR_TEXT[Number(status)] ?? "Error", ...replayed, content: { [type]: { schema: typeof schema === "string" ? ref(schema) : schema } } };
    }
    for (const status of errorStatuses(method, path, doc, access)) {
      if (responses[status]) continue;
      const headers = status === 429 || status === 503 ? { "Retry-After": { schema: int, description: "seconds" } } : undefined;
      responses[status] = { description: ERROR_TEXT[status] ?? "Error", ...(headers ? { headers } : {}), content: { "application/json": { schema: ref("Error") } } };
    }
    (paths[oaPath] ??= {})[method.toLowerCase()] = {
      summary: doc.summary,
      operationId: action,
      "x-access": access,
      ...(access === "public" ? { security: [] } : {}),
      parameters: [...pathParams, ...queryParams, ...(doc.headers ?? []), ...(isWrite(method) ? [IDEMPOTENCY_HEADER] : [])],
      ...(body ? { requestBody: { required: body.required.length > 0, content: { "application/json": { schema: body } } } } : {}),
      responses,
    };
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "arcadia-cloud control plane",
      version: "1",
      description:
        "Deployments, subscriptions, cloud resources, DNS and sagas. Errors: {name, message, code, type, data}. Unknown query parameters and body fields are 422 VALIDATION_ERROR naming them. Writes take an Idempotency-Key header; tenant tokens are rate limited on writes (429 with Retry-After).",
    },
    servers: [{ url: "/" }],
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT", description: "arcadia-app token: sub, tenant_id, roles (platform-admin = operator)" } },
      schemas: SCHEMAS,
    },
  };
}

const DEPLOYMENT = obj({
  id: uuid, tenant_id: str, slug: str, display_name: str, region: str, state: { enum: STATES }, state_since: time,
  llm_mode: { enum: ["none", "shared", "byok"] }, billing_action_suspended: { type: "boolean" }, template_code: str, template_version: strOrNull,
  inserted_at: time, updated_at: time, trial_ends_at: timeOrNull,
  runtime: obj({ status: { enum: ["none", "starting", "running", "stopping", "stopped", "destroying", "destroyed"] }, droplet_id: { type: ["integer", "null"] }, ipv4: strOrNull, hostname: strOrNull }),
});
const EVENT = obj({ id: int, deployment_id: uuid, from_state: { enum: [...STATES, null] }, to_state: { enum: STATES }, reason: str, actor: str, notes: strOrNull, occurred_at: time });
const STEP = obj(
  {
    name: str, status: { enum: STEP_STATUSES }, attempts: int, started_at: timeOrNull, finished_at: timeOrNull, error: strOrNull,
    output: { type: "object", description: "what the step produced: droplet id and tag, IP, DNS record id, action id", additionalProperties: { anyOf: [scalar, arr(scalar)] } },
    compensation_attempts: int, compensation_error: strOrNull, compensated_at: timeOrNull,
  },
  ["name", "status", "attempts", "started_at", "finished_at", "error", "output"],
);
const SAGA = obj(
  // A string, not an enum: kinds are lists registered with the engine (a new kind is a new list), these are today's.
  { id: uuid, kind: { type: "string", description: `the saga's kind: ${SAGA_KINDS.join(", ")}`, examples: SAGA_KINDS }, deployment_id: uuid, tenant_id: str, status: { enum: SAGA_STATUSES }, steps: arr(ref("Step")), started_at: time, finished_at: timeOrNull, error: strOrNull },
  ["id", "kind", "deployment_id", "tenant_id", "status", "steps", "started_at", "finished_at", "error"],
);
const PLAN_VERSION = obj({ id: uuid, plan_code: str, version: int, price_cents: cents, currency: str, droplet_size: { ...str, description: "the DigitalOcean size a deployment on this version runs on" }, inserted_at: time });
const TEMPLATE_VERSION = obj({ id: uuid, template_code: str, version: int, image: str, user_data: strOrNull, inserted_at: time });
const SUBSCRIPTION = obj({
  id: uuid, deployment_id: uuid, tenant_id: str, status: { enum: ["active", "paused", "cancelled"] }, plan_code: str, plan_version: ref("PlanVersion"),
  current_period_start: time, current_period_end: time, trial_ends_at: timeOrNull,
  addons: arr(obj({ code: str, unit_price_cents: cents, currency: str, qty: int, attached_at: time })),
  plan_changes: arr(obj({ from_plan_version_id: { type: ["string", "null"], format: "uuid" }, to_plan_version_id: uuid, actor: str, occurred_at: time })),
  inserted_at: time, updated_at: time,
});
const RESOURCE = obj({
  id: uuid, provider: { enum: ["digitalocean"] }, kind: { enum: ["droplet"] }, external_id: str, name: str, region: str, size_slug: strOrNull, ipv4: strOrNull,
  status: { enum: ["new", "active", "off", "archive", "destroyed"] }, tags: arr(str), monthly_cost_cents: cents, currency: str, tenant_id: str,
  deployment_id: { type: ["string", "null"], format: "uuid" }, saga_id: strOrNull, inserted_at: time, updated_at: time, destroyed_at: timeOrNull,
});
const FLAGS = { enum: ["cost_without_revenue", "revenue_without_cost", "multi_currency"] };
const DRIFT_ENTRY = obj({
  id: str, kind: { enum: ["orphan", "ghost", "mismatch"] }, resource: { enum: ["droplet", "dns_record"] }, external_id: str, tenant_id: strOrNull,
  deployment_id: strOrNull, resource_id: strOrNull, name: strOrNull, saga_id: strOrNull, saga_status: strOrNull,
  differences: arr(obj({ field: str, provider: scalar, inventory: scalar })),
  at_provider: { description: "the provider's view: a droplet or a domain record", oneOf: [ref("ProviderDroplet"), ref("ProviderRecord"), { type: "null" }] },
  in_inventory: { description: "our row: a cloud resource or a DNS record", oneOf: [ref("Resource"), ref("DnsRecord"), { type: "null" }] },
  fix: obj({ text: str, actions: arr({ enum: ["adopt", "destroy", "mark_destroyed", "sync"] }) }),
});
const COUNTS3 = obj({ orphans: int, ghosts: int, mismatches: int });

const WEBHOOK_EVENTS = ["deployment.created", "deployment.transitioned", "deployment.runtime_changed", "saga.succeeded", "saga.failed", "saga.compensated", "saga.compensation_failed", "invoice.issued", "invoice.paid", "invoice.overdue"];
const WEBHOOK_PROPS = { id: uuid, tenant_id: strOrNull, all_tenants: { type: "boolean" }, url: str, events: arr({ enum: WEBHOOK_EVENTS }), created_by: str, inserted_at: time };
const DELIVERY = obj({
  id: uuid, event_id: str, event_type: { enum: WEBHOOK_EVENTS }, status: { enum: ["pending", "delivering", "succeeded", "failed", "cancelled"] }, attempts: int,
  response_code: { type: ["integer", "null"] }, error: strOrNull, next_attempt_at: timeOrNull, created_at: time, delivered_at: timeOrNull,
  history: arr(obj({ attempt: int, at: time, response_code: { type: ["integer", "null"] }, error: strOrNull, duration_ms: int })),
});

const SCHEMAS: Record<string, Schema> = {
  Webhook: obj(WEBHOOK_PROPS),
  WebhookCreated: obj({ webhook: obj({ ...WEBHOOK_PROPS, secret: { ...str, description: "shown once: no other answer contains it" } }) }),
  WebhookEnvelope: envelope("webhook", "Webhook"),
  WebhookList: list("Webhook"),
  Delivery: DELIVERY,
  DeliveryList: list("Delivery"),
  OperatorDelivery: { ...DELIVERY, properties: { ...(DELIVERY.properties as object), webhook_id: uuid, tenant_id: str }, required: [...(DELIVERY.required as string[]), "webhook_id", "tenant_id"] },
  OperatorDeliveryList: list("OperatorDelivery"),
  WatchStream: { type: "string", description: "text/event-stream: messages `event: <type>`, `id: <sequence>`, `data: <JSON>`, and `:` comment lines" },
  Error: obj({
    name: str, message: str, code: { type: "integer", minimum: 400, maximum: 599 }, type: strOrNull,
    data: {
      description: "details: the fields refused (VALIDATION_ERROR: one entry per field, `field` naming it), {from, to} (INVALID_TRANSITION), {slug, id} (SLUG_TAKEN), {tenant_id, limit, count} (QUOTA_EXCEEDED), {limit, retry_after} (RATE_LIMITED), …",
      oneOf: [
        { type: "null" },
        arr({ type: "object", properties: { type: str, field: str, message: str } }),
        { type: "object", not: { type: "array" } },
      ],
    },
  }),
  Health: obj({ status: { const: "ok" }, node: str, uptime_s: int }),
  Ready: obj({ status: { enum: ["ok", "unavailable"] }, checks: { type: "object", properties: { transporter: str, database: str, provider: str }, required: ["transporter", "database"], additionalProperties: str } }),
  OpenApiDocument: { type: "object", properties: { openapi: { const: "3.1.0" }, info: { type: "object" }, paths: { type: "object" }, components: { type: "object" } }, required: ["openapi", "info", "paths", "components"] },
  Deployment: DEPLOYMENT,
  DeploymentEvent: EVENT,
  Step: STEP,
  Saga: SAGA,
  DeploymentEnvelope: obj({ deployment: ref("Deployment") }),
  // `subscription` when the create carried plan_code (docs/catalog.md).
  DeploymentCreated: obj({ deployment: ref("Deployment"), subscription: ref("Subscription") }, ["deployment"]),
  DeploymentWithSaga: obj({ deployment: ref("Deployment"), saga: ref("Saga"), subscription: ref("Subscription") }, ["deployment", "saga"]),
  DeploymentMove: obj({ deployment: ref("Deployment"), saga: nullable("Saga") }),
  DeploymentList: list("Deployment"),
  DeploymentDetail: obj({ deployment: ref("Deployment"), subscription: nullable("Subscription"), events: arr(ref("DeploymentEvent")), saga: nullable("Saga") }),
  PlanVersion: PLAN_VERSION,
  Plan: obj({ code: str, name: str, latest_version: nullable("PlanVersion"), versions: arr(ref("PlanVersion")) }),
  Addon: obj({ code: str, name: str, unit_price_cents: cents, currency: str, updated_at: time }),
  Subscription: SUBSCRIPTION,
  SubscriptionEnvelope: envelope("subscription", "Subscription"),
  SubscriptionChanged: obj({ subscription: ref("Subscription"), saga: nullable("Saga") }),
  PlanList: list("Plan"),
  PlanEnvelope: envelope("plan", "Plan"),
  PlanVersionEnvelope: envelope("plan_version", "PlanVersion"),
  TemplateVersion: TEMPLATE_VERSION,
  Template: obj({ code: str, name: str, latest_version: nullable("TemplateVersion"), versions: arr(ref("TemplateVersion")), inserted_at: time }),
  TemplateList: list("Template"),
  TemplateEnvelope: envelope("template", "Template"),
  TemplateVersionEnvelope: envelope("template_version", "TemplateVersion"),
  AddonList: list("Addon"),
  AddonEnvelope: envelope("addon", "Addon"),
  SagaEnvelope: envelope("saga", "Saga"),
  SagaList: list("Saga"),
  Resource: RESOURCE,
  ResourceList: list("Resource"),
  ResourceEnvelope: envelope("resource", "Resource"),
  Balance: obj({
    provider: obj({ name: { const: "digitalocean" }, currency: str, month_to_date_balance_cents: cents, account_balance_cents: cents, month_to_date_usage_cents: cents, generated_at: strOrNull }),
    revenue: obj({ as_of: time, mrr: arr(obj({ currency: str, mrr_cents: cents, plans_cents: cents, addons_cents: cents, subscriptions: int })) }),
  }),
  Margin: obj({
    items: arr(obj({
      deployment_id: uuid, tenant_id: str, slug: str, state: { enum: STATES }, subscription_id: strOrNull, plan_code: strOrNull, currency: str,
      revenue_cents: cents, cost_cents: cents, margin_cents: cents, margin_pct: { type: ["number", "null"] }, resources: int,
      open_invoices_cents: cents, overdue_invoices_cents: cents, flags: arr(FLAGS),
    })),
    totals: arr(obj({ currency: str, deployments: int, revenue_cents: cents, cost_cents: cents, margin_cents: cents, margin_pct: { type: ["number", "null"] }, open_invoices_cents: cents, overdue_invoices_cents: cents })),
    unattributed: arr(obj({ currency: str, cost_cents: cents, resources: int })),
    as_of: time,
    next_cursor: { type: "null" },
  }),
  InvoiceLine: obj({ kind: { enum: ["plan", "addon"] }, code: str, description: str, qty: { type: "integer", minimum: 1 }, unit_price_cents: { type: "integer", minimum: 0 }, amount_cents: { type: "integer", minimum: 0 } }),
  Invoice: obj({
    id: uuid, tenant_id: str, deployment_id: uuid, subscription_id: uuid, period_start: time, period_end: time, currency: { type: "string", pattern: "^[A-Z]{3}$" },
    lines: arr(ref("InvoiceLine")), total_cents: { type: "integer", minimum: 0 }, status: { enum: ["open", "paid", "void"] }, issued_at: time, due_at: time, paid_at: timeOrNull,
  }),
  InvoiceEnvelope: envelope("invoice", "Invoice"),
  InvoiceList: list("Invoice"),
  BillingClock: obj({ now: time }),
  BillingRun: obj({ now: time, invoices_issued: { type: "integer", minimum: 0 }, moves: arr(obj({ deployment_id: uuid, from: { enum: STATES }, to: { enum: STATES }, reason: str })) }),
  DriftEntry: DRIFT_ENTRY,
  ProviderDroplet: obj({ id: int, name: str, status: str, ipv4: strOrNull, region: strOrNull, size_slug: strOrNull, tags: arr(str) }),
  ProviderRecord: obj({ id: int, type: str, name: str, fqdn: str, data: str, ttl: { type: ["integer", "null"] } }),
  DnsRecord: obj({
    id: uuid, tenant_id: str, deployment_id: uuid, fqdn: str, domain: str, name: str, type: str, provider_record_id: { type: ["integer", "null"] }, data: str,
    previous_data: strOrNull, previous_provider_record_id: { type: ["integer", "null"] }, created_by_us: { type: "boolean" }, status: { enum: ["pointing", "pointed", "reverted"] },
    inserted_at: time, updated_at: time,
  }),
  DriftReport: obj({
    orphans: arr(ref("DriftEntry")), ghosts: arr(ref("DriftEntry")), mismatches: arr(ref("DriftEntry")),
    in_flight: arr(obj({ resource: { const: "droplet" }, external_id: str, name: str, saga_id: str, saga_status: str })),
    checked_at: time,
    counts: obj({ orphans: int, ghosts: int, mismatches: int, total: int, in_flight: int, by_resource: obj({ droplet: COUNTS3, dns_record: COUNTS3 }) }),
    sources: obj({ droplets: str, dns: str }),
    dns_domain: strOrNull,
  }),
  DriftAction: obj({
    id: uuid, action: { enum: ["adopt", "destroy", "mark_destroyed", "sync"] }, resource: { enum: ["droplet", "dns_record"] }, external_id: str, entry_id: strOrNull, actor: str,
    tenant_id: strOrNull, deployment_id: strOrNull, resource_id: strOrNull, result: { enum: ["succeeded", "rejected", "failed"] }, error: strOrNull,
    details: {
      type: "object", description: "what the action did (the droplet, the row before, the saga) or why it was refused (type, code, data)",
      properties: {
        droplet: ref("ProviderDroplet"), record: ref("ProviderRecord"), domain: str, previous: { oneOf: [ref("Resource"), { type: "null" }] }, saga_id: strOrNull, saga_status: strOrNull,
        differences: arr(obj({ field: str, provider: scalar, inventory: scalar })), type: strOrNull, code: { type: ["integer", "null"] }, data: { type: ["object", "array", "null"] },
      },
      additionalProperties: false,
    },
    created_at: time,
  }),
  DriftActionResult: obj({ action: ref("DriftAction"), resource: nullable("Resource") }),
};
