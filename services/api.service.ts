import type { Context, ServiceSchema } from "moleculer";
import ApiGateway from "moleculer-web";
import type { IncomingMessage, ServerResponse } from "node:http";
import { authConfigFromEnv, createVerifier } from "../lib/auth";
import type { Access, User } from "../lib/access";
import { openApiDocument } from "./api/openapi";
import { WATCH_ALIAS, WatchMixin } from "./api/watch";
import { IdempotencyStore } from "./api/idempotency";
import { WriteRateLimit, recordSuccess, refuseParamsOfSchemalessAction, withIdempotency } from "./api/app-guards";

const { UnAuthorizedError, ERR_NO_TOKEN } = ApiGateway.Errors;

/** Every public route. Explicit, so nothing reaches HTTP by accident (mappingPolicy "restrict"). */
export const API_ALIASES: Record<string, string> = {
  "GET /deployments": "v1.deployments.list",
  "POST /deployments": "v1.deployments.create",
  "GET /deployments/:id": "v1.deployments.get",
  // A stream the gateway itself serves (services/api/watch.ts); the name is its operationId.
  [WATCH_ALIAS]: "api.watch",
  "POST /deployments/:id/transition": "v1.deployments.transition",
  "PATCH /deployments/:id": "v1.deployments.update",
  "DELETE /deployments/:id": "v1.deployments.remove",
  "POST /deployments/:id/provision": "v1.deployments.provision",
  "POST /deployments/:id/subscribe": "v1.subscriptions.subscribe",
  "POST /deployments/:id/subscription/addons": "v1.subscriptions.attachAddon",
  "POST /deployments/:id/subscription/plan": "v1.subscriptions.changePlan",
  "GET /plans": "v1.subscriptions.listPlans",
  "POST /plans": "v1.subscriptions.createPlan",
  "POST /plans/:code/versions": "v1.subscriptions.createPlanVersion",
  "GET /templates": "v1.subscriptions.listTemplates",
  "POST /templates": "v1.subscriptions.createTemplate",
  "POST /templates/:code/versions": "v1.subscriptions.createTemplateVersion",
  "GET /addons": "v1.subscriptions.listAddons",
  "POST /addons": "v1.subscriptions.createAddon",
  "PATCH /addons/:code": "v1.subscriptions.updateAddon",
  "GET /sagas": "v1.provisioning.list",
  "GET /sagas/:id": "v1.provisioning.get",
  "POST /sagas/:id/retry": "v1.provisioning.retry",
  "GET /inventory": "v1.inventory.list",
  "GET /inventory/:id": "v1.inventory.get",
  "GET /billing/balance": "v1.billing.balance",
  "GET /dashboard/margin": "v1.billing.margin",
  "GET /invoices": "v1.billing.listInvoices",
  "GET /invoices/:id": "v1.billing.getInvoice",
  "POST /invoices/:id/pay": "v1.billing.pay",
  "POST /invoices/:id/void": "v1.billing.voidInvoice",
  "POST /billing/run": "v1.billing.run",
  "GET /billing/clock": "v1.billing.clock",
  "POST /billing/clock": "v1.billing.moveClock",
  "GET /drift": "v1.inventory.drift",
  "POST /drift/actions": "v1.inventory.driftAction",
  "POST /webhooks": "v1.webhooks.create",
  "GET /webhooks": "v1.webhooks.list",
  "DELETE /webhooks/:id": "v1.webhooks.remove",
  "GET /webhooks/:id/deliveries": "v1.webhooks.deliveries",
  "GET /webhooks/deliveries": "v1.webhooks.allDeliveries",
};
export const PUBLIC_ALIASES: Record<string, string> = {
  "GET /health": "api.health",
  "GET /ready": "api.ready",
  "GET /openapi.json": "api.openapi",
};

type Req = IncomingMessage & { $ctx?: Context; headers: Record<string, string | undefined> };

const ApiService: ServiceSchema<any> = {
  name: "api",
  mixins: [ApiGateway, WatchMixin],
  settings: {
    port: Number(process.env.PORT ?? 3000),
    // Request and response lines are logged by the route hooks with the request id (see lib/log-context.ts).
    logRequest: null,
    logResponse: null,
    ip: process.env.HOST ?? "0.0.0.0",
    // Actions return plain data; moleculer-web's default 404/422/... error shape is the API's error shape.
    routes: [
      {
        path: "/api/v1",
        authentication: true,
        mappingPolicy: "restrict",
        aliases: { ...PUBLIC_ALIASES, ...API_ALIASES, [WATCH_ALIAS](this: any, req: any, res: any, next: any) { this.watchAlias(req, res, next); } },
        bodyParsers: { json: { strict: true, limit: "256kb" }, urlencoded: false },
        callOptions: { timeout: 30_000 },
        onBeforeCall(this: any, ctx: Context<unknown, Record<string, unknown>>, _route: unknown, req: Req) {
          (req as any).$startedAt = Date.now();
          this.logger.info({ request_id: ctx.requestID, method: req.method, url: req.url, action: (req as any).$action?.name }, "request");
        },
        onAfterCall(this: any, ctx: Context<unknown, Record<string, unknown>>, _route: unknown, req: Req, res: ServerResponse, data: unknown) {
          this.logger.info({ request_id: ctx.requestID, method: req.method, url: req.url, status: (ctx.meta.$statusCode as number) ?? res.statusCode, ms: Date.now() - ((req as any).$startedAt ?? Date.now()) }, "response");
          return recordSuccess(this.idempotency, req, (ctx.meta.$statusCode as number) ?? res.statusCode ?? 200, data).then(() => data);
        },
      },
    ],
    onError(this: any, req: Req, res: ServerResponse, err: any) {
      // A body that is not a JSON object is invalid input like any other: 422 VALIDATION_ERROR, not body-parser's 400.
      if (err?.type === "entity.parse.failed") err = { name: "ValidationError", message: "The request body must be a JSON object", code: 422, type: "VALIDATION_ERROR", data: null };
      const status = Number.isInteger(err?.code) && err.code >= 400 && err.code < 600 ? err.code : 500;
      // Server faults are logged in full and answered without internals.
      const requestId = req.$ctx?.requestID;
      if (status >= 500) this.logger.error({ request_id: requestId, err, url: req.url }, "request failed");
      else this.logger.info({ request_id: requestId, method: req.method, url: req.url, status, type: err?.type }, "response");
      const body =
        status >= 500 && !["SERVICE_NOT_AVAILABLE", "SERVICE_NOT_FOUND", "REQUEST_TIMEOUT"].includes(err?.type)
          ? { name: "MoleculerError", message: "Internal server error", code: status, type: err?.type ?? "INTERNAL_ERROR", data: null }
          : { name: err.name, message: err.message, code: status, type: err.type ?? null, data: err.data ?? null };
      res.setHeader("Content-Type", "application/json; charset=utf-8");
      res.writeHead(status);
      res.end(JSON.stringify(body));
    },
  },

  created() {
    this.verify = createVerifier(this.settings.auth ?? authConfigFromEnv());
    // SPEC §9 (services/api/app-guards.ts): write rate limit per tenant token, idempotency keys in PostgreSQL.
    this.writeLimit = new WriteRateLimit(Number(this.settings.rateLimitWritesPerMin ?? process.env.RATE_LIMIT_WRITES_PER_MIN ?? 600));
    this.idempotency = new IdempotencyStore({
      url: this.settings.idempotencyDatabaseUrl ?? process.env.DATABASE_URL,
      ttlMs: Number(process.env.IDEMPOTENCY_TTL_MS ?? 24 * 3600_000),
      lockTimeoutMs: Number(process.env.IDEMPOTENCY_LOCK_TIMEOUT_MS ?? 120_000),
      poolMax: Number(process.env.IDEMPOTENCY_POOL_MAX ?? 5),
    });
  },
  started() {
    this.idempotency.startSweep(Number(process.env.IDEMPOTENCY_SWEEP_MS ?? 3600_000), (err: Error) => this.logger.warn({ err: err.message }, "idempotency sweep failed"));
  },
  async stopped() {
    await this.idempotency.close();
  },

  actions: {
    // moleculer-web's own management actions: never routed over HTTP here (no aliases), operators only otherwise.
    listAliases: { access: "internal" },
    addRoute: { access: "internal" },
    removeRoute: { access: "internal" },
    openapi: {
      access: "public",
      handler(this: any) {
        const declared = new Map<string, Access | undefined>(
          this.broker.registry.getActionList({ withEndpoints: false }).map((a: { name: string; action?: { access?: Access } }) => [a.name, a.action?.access]),
        );
        return openApiDocument({ ...PUBLIC_ALIASES, ...API_ALIASES }, (name) => declared.get(name));
      },
    },
    health: {
      access: "public",
      handler(this: any) {
        return { status: "ok", node: this.broker.nodeID, uptime_s: Math.round(process.uptime()) };
      },
    },
    ready: {
      access: "public",
      async handler(this: any, ctx: Context<unknown, { $statusCode?: number }>) {
        const checks: Record<string, string> = {};
        checks.transporter = !this.broker.transit || this.broker.transit.connected ? "ok" : "disconnected";
        // Every database-backed service this cluster runs answers for its own connection; inventory also for the provider.
        const answers = await Promise.all(
          this.readyActions().map((a: string) =>
            ctx.call<{ database: boolean; provider?: string }, object>(a, {}, { timeout: 3000 }).catch((e: Error) => ({ database: false, error: e.message })),
          ),
        );
        const dbs = answers.map((r: any) => (r.database ? "ok" : `failed${r.error ? `: ${r.error}` : ""}`));
        checks.database = !dbs.length ? "no database service discovered" : (dbs.find((d: string) => d !== "ok") ?? "ok");
        const providers = answers.map((r: any) => r.provider).filter((p: unknown): p is string => typeof p === "string");
        if (providers.length) checks.provider = providers.find((p: string) => p !== "ok") ?? "ok";
        const ok = Object.values(checks).every((c) => c === "ok");
        if (!ok) ctx.meta.$statusCode = 503;
        return { status: ok ? "ok" : "unavailable", checks };
      },
    },
  },

  methods: {
    /** moleculer-web's callAction behind the strict-parameter check and the request's Idempotency-Key. */
    callAction(this: any, route: unknown, actionName: string, req: Req, res: ServerResponse, params: unknown, isStream: boolean) {
      refuseParamsOfSchemalessAction(req as any);
      return withIdempotency(this.idempotency, req as any, res, () => (ApiGateway as any).methods.callAction.call(this, route, actionName, req, res, params, isStream));
    },
    readyActions(this: any): string[] {
      const running = new Set<string>(this.broker.registry.getServiceList({ onlyAvailable: true }).map((s: { fullName: string }) => s.fullName));
      return ["v1.deployments", "v1.subscriptions", "v1.inventory", "v1.dns", "v1.provisioning", "v1.billing", "v1.webhooks"].filter((s) => running.has(s)).map((s) => `${s}.ready`);
    },
    async authenticate(this: any, _ctx: Context, _route: unknown, req: Req, res: ServerResponse, alias: { action?: string }): Promise<User | null> {
      if (alias?.action && Object.values(PUBLIC_ALIASES).includes(alias.action)) return null;
      const header = req.headers.authorization;
      if (!header) throw new UnAuthorizedError(ERR_NO_TOKEN, null as any);
      const [scheme, token] = header.split(" ");
      if (scheme?.toLowerCase() !== "bearer" || !token) throw new UnAuthorizedError(ERR_NO_TOKEN, null as any);
      const user: User = await this.verify(token);
      await this.writeLimit.check(req, res, user, token);
      return user;
    },
  },
};

export default ApiService;
