import { randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";
import { ServiceBroker, type ServiceSchema } from "moleculer";
import { brokerConfig } from "../moleculer.config";
import { ALL_SERVICES } from "../services";
import { mintToken } from "../bin/token";
import { makeUser, systemUser } from "../lib/access";
import { checkResponse } from "./openapi-check";

export const uniq = (prefix = "t") => `${prefix}-${randomUUID().slice(0, 8)}`;
export const ADMIN = systemUser("test");
/** Call options for broker.call as the operator-level system user, or as a tenant's admin. */
export const asAdmin = { meta: { user: ADMIN } };
export const asTenant = (tenant: string) => ({ meta: { user: makeUser({ sub: uniq("user"), tenant_id: tenant, roles: ["admin"] }) } });

/**
 * A real broker running the named services. With `nats: true` it joins the machine's NATS under a namespace
 * private to this test run, so several brokers in one test form a cluster and other runs stay out.
 */
export async function startNode(names: string[], opts: { nats?: boolean | string; nodeID?: string; settings?: Record<string, Record<string, unknown>>; middlewares?: any[] } = {}) {
  const namespace = typeof opts.nats === "string" ? opts.nats : undefined;
  const config = brokerConfig({ ...process.env, TRANSPORTER: opts.nats ? process.env.TEST_NATS_URL : "", METRICS_PORT: "" });
  const broker = new ServiceBroker({
    ...config,
    logger: false,
    namespace: namespace ?? uniq("ns"),
    nodeID: opts.nodeID ?? uniq("node"),
    middlewares: [...(config.middlewares ?? []), ...(opts.middlewares ?? [])],
  });
  for (const name of names) {
    const schema: ServiceSchema = ALL_SERVICES[name];
    const extra = { ...(name === "api" ? { port: 0, ip: "127.0.0.1" } : {}), ...(opts.settings?.[name] ?? {}) };
    broker.createService(Object.keys(extra).length ? { name: schema.name, version: schema.version, mixins: [schema], settings: extra } : schema);
  }
  try {
    await broker.start();
  } catch (err) {
    // A half-started broker would stay on NATS and keep jest from exiting.
    await broker.stop().catch(() => undefined);
    throw err;
  }
  return broker;
}

export const newNamespace = () => uniq("ns");

export function apiUrl(broker: ServiceBroker): string {
  const api = broker.getLocalService("api") as unknown as { server: { address(): AddressInfo } };
  return `http://127.0.0.1:${api.server.address().port}/api/v1`;
}

export function token(opts: { tenant?: string; roles?: string[]; sub?: string; ttl?: string; secret?: string; issuer?: string; audience?: string } = {}) {
  return mintToken({ sub: opts.sub ?? uniq("user"), ...opts });
}

export interface HttpResult<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export async function http<T = any>(base: string, method: string, path: string, opts: { token?: string; body?: unknown; raw?: string; headers?: Record<string, string> } = {}): Promise<HttpResult<T>> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined;
  if (opts.raw !== undefined) body = opts.raw;
  else if (opts.body !== undefined) body = JSON.stringify(opts.body);
  if (body !== undefined) headers["content-type"] ??= "application/json";
  const res = await fetch(base + path, { method, headers, body });
  const text = await res.text();
  let parsed: any = text;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    /* not JSON: left as text for the assertion to show */
  }
  // Every response the suite receives is held against GET /openapi.json (test/openapi-check.ts): a mismatch fails the test.
  await checkResponse(base, method, path, res.status, res.headers.get("content-type"), parsed);
  return { status: res.status, body: parsed, headers: res.headers };
}

/** A client bound to one base URL and token. */
export function client(base: string, tok?: string) {
  return {
    get: <T = any>(path: string) => http<T>(base, "GET", path, { token: tok }),
    post: <T = any>(path: string, body?: unknown) => http<T>(base, "POST", path, { token: tok, body: body ?? {} }),
    patch: <T = any>(path: string, body?: unknown) => http<T>(base, "PATCH", path, { token: tok, body: body ?? {} }),
  };
}

/** Waits on a condition, never on the clock alone. */
export async function waitFor<T>(fn: () => Promise<T | undefined | null | false>, { timeoutMs = 15_000, intervalMs = 50, what = "condition" } = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Fault injection for our own actions, as the simulator's control API does for the provider: the named action
 * really runs unless a fault is armed, and then fails the next `count` calls with the given error.
 */
export function actionFaults() {
  const armed = new Map<string, { count: number; error: () => Error; after?: boolean }>();
  /** Every call that reached the action (faulted or not), for tests that count deliveries. */
  const calls: { action: string; params: any; at: number }[] = [];
  return {
    calls,
    middleware: {
      name: "TestActionFaults",
      localAction(next: (ctx: any) => Promise<unknown>, action: { name: string }) {
        return async (ctx: any) => {
          calls.push({ action: action.name, params: ctx.params, at: Date.now() });
          const f = armed.get(action.name);
          if (f && f.count !== 0) {
            f.count--;
            // lose: the action really runs, then its answer is lost (as the simulator's lose_response does).
            if (f.after) await next(ctx);
            throw f.error();
          }
          return next(ctx);
        };
      },
    },
    fail(action: string, error: () => Error, count = -1) {
      armed.set(action, { count, error });
    },
    lose(action: string, error: () => Error, count = -1) {
      armed.set(action, { count, error, after: true });
    },
    clear() {
      armed.clear();
    },
  };
}

/** Follows next_cursor from the first page to the last, checking each page's size; the ids in order and the page count. */
export async function allPages(api: ReturnType<typeof client>, path: string, limit: number): Promise<{ ids: string[]; pages: number }> {
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const res: HttpResult = await api.get(`${path}${path.includes("?") ? "&" : "?"}limit=${limit}${cursor ? `&cursor=${cursor}` : ""}`);
    if (res.status !== 200 || res.body.items.length > limit) throw new Error(`page ${pages + 1} of ${path}: ${res.status} ${JSON.stringify(res.body).slice(0, 200)}`);
    ids.push(...res.body.items.map((r: { id: string }) => r.id));
    cursor = res.body.next_cursor;
    pages++;
  } while (cursor);
  return { ids, pages };
}
