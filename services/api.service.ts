import type { Context, ServiceSchema } from "moleculer";
import ApiGateway from "moleculer-web";
import type { IncomingMessage, ServerResponse } from "node:http";
import { authConfigFromEnv, createVerifier } from "../lib/auth";
import type { Access, User } from "../lib/access";
import { openApiDocument } from "./api/openapi";
import { WATCH_ALIAS, WatchMixin } from "./api/watch";
import { inputLimits } from "./api/input-limits";
import { readiness, routedServices, watchTransporter } from "./api/ready";
import { toClientError, unauthorized, serviceUnavailable, RETRY_AFTER_S } from "../lib/errors";
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
        // One body reader enforcing SPEC §8's input limits (size, depth, encoding, NUL, non-finite numbers) before
        // anything parses deep: services/api/input-limits.ts.
        bodyParsers: false,
        use: [inputLimits],
        callOptions: { timeout: 30_000 },
        onBeforeCall(this: any, ctx: Context<unknown, Record<string, unknown>>, _route: unknown, req: Req) {
          (req as any).$startedAt = Date.now();
          // NATS is down: answer 503 now rather than after the request timeout (services/api/ready.ts).
          if (this.transporter?.down() && !Object.values(PUBLIC_ALIASES).includes((req as any).$action?.name)) throw serviceUnavailable("The message transport is reconnecting; retry shortly", RETRY_AFTER_S, { reason: "TRANSPORTER_DISCONNECTED" });
          this.logger.info({ request_id: ctx.requestID, method: req.method, url: req.url, action: (req as any).$action?.name }, "request");
        },
        onAfterCall(this: any, ctx: Context<unknown, Record<string, unknown>>, _route: unknown, req: Req, res: ServerResponse, data: unknown) {
          this.logger.info({ request_id: ctx.requestID, method: req.method, url: req.url, status: (ctx.meta.$statusCode as number) ?? res.statusCode, ms: Date.now() - ((req as any).$startedAt ?? Date.now()) }, "response");
          return recordSuccess(this.idempotency, req, (ctx.meta.$statusCode as number) ?? res.statusCode ?? 200, data).then(() => data);
        },
      },
    ],
    onError(this: any, req: Req, res: ServerResponse, err: any) {
      // Unreachable database or service (connection refused, pool timeout, not yet discovered, timed out): 503 + retry-after.
      err = toClientError(err);
      const status = Number.isInteger(err?.code) && err.code >= 400 && err.code < 600 ? err.code : 500;
      // Server faults are logged in full and answered without internals.
      const requestId = req.$ctx?.requestID;
      if (status >= 500 && status !== 503) this.logger.error({ request_id: requestId, err, url: req.url }, "request failed");
      else this.logger.info({ request_id: requestId, method: req.method, url: req.url, status, type: err?.type }, "response");
      const body =
        status >= 500 && status !== 503
          ? { name: "MoleculerError", message: "Internal server error", code: status, type: err?.type ?? "INTERNAL_ERROR", data: null }
          : { name: err.name, message: err.message, code: status, type: err.type ?? null, data: err.data ?? null };
      if (status === 503 || status === 429) res.setHeader("Retry-After", String(err.data?.retry_after ?? RETRY_AFTER_S));
      res.setHeader("Content-Type", "application/json; charset=utf-8");
      res.writeHead(status);
      res.end(JSON.stringify(body));
    },
  },

  created() {
    this.verify = createVerifier(this.settings.auth ?? authConfigFromEnv());
    // Requests Node's HTTP parser refuses before we see them (control characters in a header, headers over
    // 16 KB): answered in the API's error shape instead of a bare "400 Bad Request".
    this.server?.on("clientError", (err: NodeJS.ErrnoException, socket: import("node:net").Socket) => {
      if (!socket.writable) return socket.destroy();
      const [code, message] = err.code === "HPE_HEADER_OVERFLOW" ? [431, "Request headers are too large"] : [400, "The request could not be parsed"];
      const body = JSON.stringify({ name: "MoleculerClientError", message, code, type: code === 431 ? "HEADERS_TOO_LARGE" : "BAD_REQUEST", data: null });
      socket.end(`HTTP/1.1 ${code} ${code === 431 ? "Request Header Fields Too Large" : "Bad Request"}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
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
    this.transporter = watchTransporter(this.broker);
    this.idempotency.startSweep(Number(process.env.IDEMPOTENCY_SWEEP_MS ?? 3600_000), (err: Error) => this.logger.warn({ err: err.message }, "idempotency sweep failed"));
  },
  async stopped() {
    this.transporter?.stop();
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
        const { ok, checks } = await readiness(this.broker, ctx, routedServices(API_ALIASES), this.transporter?.down());
        if (!ok) {
          ctx.meta.$statusCode = 503;
          (ctx.meta as any).$responseHeaders = { "Retry-After": String(RETRY_AFTER_S) };
        }
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
    async authenticate(this: any, _ctx: Context, _route: unknown, req: Req, res: ServerResponse, alias: { action?: string }): Promise<User | null> {
      if (alias?.action && Object.values(PUBLIC_ALIASES).includes(alias.action)) return null;
      const header = req.headers.authorization;
      if (!header) throw new UnAuthorizedError(ERR_NO_TOKEN, null as any);
      // Huge, malformed or non-ASCII values are a bad token (401), never a server error.
      if (typeof header !== "string" || header.length > 8192 || !/^[\x21-\x7e ]+$/.test(header)) throw unauthorized("Malformed Authorization header");
      const m = /^bearer +([A-Za-z0-9_\-.=+/]+)$/i.exec(header.trim());
      if (!m) throw new UnAuthorizedError(ERR_NO_TOKEN, null as any);
      let user: User;
      try {
        user = await this.verify(m[1]);
      } catch (err) {
        if ((err as any)?.code === 401) throw err;
        throw unauthorized("Invalid token");
      }
      await this.writeLimit.check(req, res, user, m[1]);
      return user;
    },
  },
};

export default ApiService;
