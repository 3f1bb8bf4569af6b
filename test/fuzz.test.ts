import { gzipSync } from "node:zlib";
import { Client } from "pg";
import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { API_ALIASES } from "../services/api.service";
import { MAX_DEPTH } from "../services/api/input-limits";
import { migrate } from "../lib/db";
import { apiUrl, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * SPEC §8 input limits and "bad input changes nothing", fuzzed: every POST/PATCH/DELETE route of the gateway's
 * alias table (new routes are covered automatically) gets the hostile classes — deep nesting (60,000 `[`, and
 * 20,000 inside a field), bodies over 256 KB, bad and unknown Content-Encodings, NUL in strings, keys, path
 * segments and query values, non-finite numbers, huge strings, wrong types — plus randomised bodies from a fixed
 * seed, each carrying one hostile value somewhere. No answer may be 5xx, none may hang, every refusal is in the
 * moleculer-web error shape, and no table gains or loses a row. The Authorization header gets the same.
 *
 * "No table gains or loses a row" counts every table, so the suite runs on a database of its own (created and
 * migrated here, dropped after). In a full run the shared test database holds what the suites before this one
 * left: saga-start requests still to send, sagas to resume, subscriptions and invoices the billing run acts on. This
 * node's own background loops (the deployments saga-request sweep, the provisioning sweep, the billing run) take
 * those up while the requests run, and a suite that ended with work still in flight keeps writing there: rows that
 * none of these requests wrote, which made the counts differ although every request was refused (seen: a resize
 * saga with its plan change; creates with their events and sagas). On its own database every row is this suite's.
 */

const SEED = 0x5eed_2026;
/** mulberry32: a tiny seeded PRNG, so a failing body can be reproduced from the seed and its index. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let db: Client;
let opToken: string;
let tenantToken: string;
const ids: Record<string, string> = {};
let sharedDatabaseUrl: string | undefined;
let ownDatabase: { name: string; admin: string } | undefined;

/** A fresh database next to the shared one, migrated; process.env.DATABASE_URL points at it until afterAll. */
async function useOwnDatabase() {
  sharedDatabaseUrl = process.env.DATABASE_URL;
  const url = new URL(sharedDatabaseUrl!);
  const name = `${url.pathname.slice(1)}_fuzz`;
  const admin = Object.assign(new URL(url), { pathname: "/postgres" }).toString();
  const pg = new Client({ connectionString: admin });
  await pg.connect();
  try {
    await pg.query(`drop database if exists "${name}" with (force)`);
    await pg.query(`create database "${name}"`);
  } finally {
    await pg.end();
  }
  ownDatabase = { name, admin };
  process.env.DATABASE_URL = Object.assign(new URL(url), { pathname: `/${name}` }).toString();
  await migrate();
}

async function dropOwnDatabase() {
  if (sharedDatabaseUrl !== undefined) process.env.DATABASE_URL = sharedDatabaseUrl;
  if (!ownDatabase) return;
  const pg = new Client({ connectionString: ownDatabase.admin });
  await pg.connect();
  try {
    await pg.query(`drop database if exists "${ownDatabase.name}" with (force)`);
  } finally {
    await pg.end();
  }
}

/** Every field name any route knows, so random bodies hit real parameters with wrong values. */
const FIELDS = ["slug", "display_name", "region", "state", "provision", "llm_mode", "billing_action_suspended", "template_code", "template_version", "tenant_id", "plan_code", "addons", "code", "qty", "version", "to_state", "reason", "notes", "name", "price_cents", "currency", "unit_price_cents", "droplet_size", "image", "user_data", "action", "kind", "external_id", "resource_id", "url", "events", "reference", "advance_days", "now"];

const routes = Object.keys(API_ALIASES)
  .map((k) => {
    const [method, path] = k.split(" ");
    return { method, path };
  })
  .filter((r) => ["POST", "PATCH", "DELETE", "PUT"].includes(r.method));

/** A route's path with real ids, so requests get past the 404 and into validation. */
function fill(path: string): string {
  return path.replace(/:(\w+)/g, (_m, name: string) => {
    if (name === "code") return path.startsWith("/addons") ? "storage_50gb" : path.startsWith("/templates") ? "arcadia-app" : "studio";
    if (path.startsWith("/sagas")) return ids.saga ?? "00000000-0000-4000-8000-000000000000";
    if (path.startsWith("/invoices")) return ids.invoice ?? "00000000-0000-4000-8000-000000000000";
    if (path.startsWith("/webhooks")) return ids.webhook ?? "00000000-0000-4000-8000-000000000000";
    return ids.deployment;
  });
}

async function rowCounts(): Promise<Record<string, number>> {
  const tables = (await db.query("select table_name from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE' and table_name not like 'mikro_orm%' order by 1")).rows.map((r) => r.table_name as string);
  const out: Record<string, number> = {};
  for (const t of tables) out[t] = (await db.query(`select count(*)::int as n from "${t}"`)).rows[0].n;
  return out;
}

interface Sent {
  label: string;
  status: number;
  body: any;
  retryAfter: string | null;
}
const results: Sent[] = [];

async function send(label: string, method: string, path: string, opts: { raw?: string | Buffer; headers?: Record<string, string>; auth?: string | null } = {}): Promise<Sent> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.auth !== null) headers.authorization = opts.auth ?? `Bearer ${opToken}`;
  if (opts.raw !== undefined) headers["content-type"] ??= "application/json";
  let status = 0;
  let body: any = null;
  let retryAfter: string | null = null;
  try {
    const res = await fetch(base + path, { method, headers, body: opts.raw as any, signal: AbortSignal.timeout(15_000) });
    status = res.status;
    retryAfter = res.headers.get("retry-after");
    const text = await res.text();
    try {
      body = JSON.parse(text);
    } catch {
      body = text.slice(0, 200);
    }
  } catch (err) {
    // A hang (timeout) or a reset connection is a failure like a 5xx.
    status = -1;
    body = String((err as Error).message);
  }
  const sent = { label: `${method} ${path.slice(0, 80)} ${label}`, status, body, retryAfter };
  results.push(sent);
  return sent;
}

/** One request over a plain TCP socket with an Authorization value as raw bytes; its status and JSON body. */
async function rawSend(method: string, path: string, auth: Buffer): Promise<Sent> {
  const { connect } = await import("node:net");
  const url = new URL(base + path);
  const head = Buffer.concat([Buffer.from(`${method} ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\nAuthorization: `), auth, Buffer.from("\r\n\r\n{}")]);
  const text = await new Promise<string>((resolve) => {
    const chunks: Buffer[] = [];
    const sock = connect(Number(url.port), url.hostname, () => sock.end(head));
    sock.setTimeout(15_000, () => sock.destroy());
    sock.on("data", (c) => chunks.push(c));
    sock.on("close", () => resolve(Buffer.concat(chunks).toString()));
    sock.on("error", () => undefined);
  });
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? -1);
  // The body may come chunked: the JSON is between its first "{" and last "}".
  let body: any = text.slice(text.indexOf("\r\n\r\n") + 4);
  try {
    body = JSON.parse(body.slice(body.indexOf("{"), body.lastIndexOf("}") + 1));
  } catch {
    /* left as text */
  }
  const sent = { label: `${method} ${path.slice(0, 80)} raw auth ${JSON.stringify(auth.toString("latin1"))}`, status, body, retryAfter: null };
  results.push(sent);
  return sent;
}

const isErrorShape = (b: any) => b && typeof b === "object" && typeof b.name === "string" && typeof b.message === "string" && Number.isInteger(b.code) && "type" in b && "data" in b;

/** Expects a 4xx in the error shape (or, for classes a service may legitimately accept, any non-5xx). */
function bad(results: Sent[]) {
  return results.filter((r) => !(r.status >= 400 && r.status < 500 && isErrorShape(r.body) && r.body.code === r.status)).map((r) => `${r.label}: ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`);
}

beforeAll(async () => {
  await useOwnDatabase();
  sim = await startSimulator({ port: 0, activeAfterMs: 0 });
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning", "billing", "webhooks"], {
    settings: { inventory: { ...provider, driftCheckMs: 0 }, dns: provider, billing: provider },
  });
  base = apiUrl(broker);
  opToken = await token({ roles: ["platform-admin"], sub: "fuzz-op" });
  const tenant = uniq("fuzz");
  tenantToken = await token({ tenant, roles: ["admin"], sub: "fuzz-user" });
  db = new Client({ connectionString: process.env.DATABASE_URL });
  await db.connect();
  const created = await client(base, tenantToken).post("/deployments", { slug: uniq("fz") });
  expect(created.status).toBe(201);
  ids.deployment = created.body.deployment.id;
  await settled(ids.deployment);
}, 60_000);

/**
 * Waits until the start-up and seed work that no request of the tests does has written its rows, so `before` is
 * counted after it: the webhooks service's first catch-up creates its four feed cursors — deployment events,
 * runtime changes, finished sagas, invoice events — (its later runs only move
 * them), and the seed's `deployments.created` is published from the outbox and taken in by the webhooks service
 * and the watch feed (each writes its row from the event, after the create answered).
 */
async function settled(deploymentId: string) {
  await waitFor(
    async () => {
      const [r] = (
        await db.query(
          `select (select count(*)::int from webhook_feed_cursors) as cursors,
                  (select count(*)::int from deployment_events where deployment_id = $1 and published_at is null) as unpublished,
                  (select count(*)::int from webhook_events) as webhook_events,
                  (select count(*)::int from watch_events) as watch_events`,
          [deploymentId],
        )
      ).rows;
      return r.cursors === 4 && r.unpublished === 0 && r.webhook_events > 0 && r.watch_events > 0;
    },
    { timeoutMs: 30_000, what: "the webhooks catch-up's cursors and the seed's event taken in" },
  );
}

afterAll(async () => {
  await db?.end();
  await broker?.stop();
  await sim?.close();
  await dropOwnDatabase();
});

test("a full node is ready", async () => {
  const res = await fetch(`${base}/ready`);
  const body = await res.json();
  expect({ status: res.status, body }).toMatchObject({ status: 200, body: { status: "ok" } });
});

test("every write route refuses each hostile class with a 4xx in the error shape, and nothing is written", async () => {
  expect(routes.length).toBeGreaterThanOrEqual(8);
  const before = await rowCounts();
  const deep = "[".repeat(60_000) + "]".repeat(60_000);
  const deepInField = `{"display_name":${"[".repeat(20_000)}${"]".repeat(20_000)}}`;
  const justTooDeep = `{"a":${"[".repeat(MAX_DEPTH)}${"]".repeat(MAX_DEPTH)}}`;
  const classes: { label: string; raw?: string | Buffer; headers?: Record<string, string>; path?: (p: string) => string; expect?: number }[] = [
    { label: "60,000 nested [", raw: deep, expect: 422 },
    { label: "20,000 levels inside a field", raw: deepInField, expect: 422 },
    { label: `${MAX_DEPTH + 1} levels`, raw: justTooDeep, expect: 422 },
    { label: "60,000 nested objects (300 KB)", raw: '{"a":'.repeat(60_000) + "1" + "}".repeat(60_000), expect: 413 },
    { label: "body over 256 KB", raw: JSON.stringify({ display_name: "x".repeat(300 * 1024) }), expect: 413 },
    { label: "gzip bomb (1 MB of spaces)", raw: gzipSync(Buffer.from(" ".repeat(1 << 20))), headers: { "content-encoding": "gzip" }, expect: 413 },
    { label: "Content-Encoding gzip, body not gzip", raw: '{"display_name":"x"}', headers: { "content-encoding": "gzip" }, expect: 400 },
    { label: "unknown Content-Encoding", raw: '{"display_name":"x"}', headers: { "content-encoding": "x-made-up" }, expect: 415 },
    { label: "gzip of a deep body", raw: gzipSync(Buffer.from(deep)), headers: { "content-encoding": "gzip" }, expect: 422 },
    { label: "not JSON", raw: "{display_name: x", expect: 422 },
    { label: "a JSON array", raw: "[1,2,3]", expect: 422 },
    { label: "a JSON string", raw: '"hello"', expect: 422 },
    { label: "invalid UTF-8", raw: Buffer.from([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]), expect: 400 },
    { label: "text/plain", raw: '{"display_name":"x"}', headers: { "content-type": "text/plain" }, expect: 415 },
    { label: "NUL in a string", raw: '{"display_name":"a\\u0000b","reason":"x\\u0000","notes":"\\u0000","name":"n\\u0000","to_state":"active","slug":"ok"}', expect: 422 },
    { label: "NUL in a key", raw: '{"display\\u0000name":"a"}', expect: 422 },
    { label: "NUL deep in an array", raw: '{"addons":[{"code":"storage_50gb","qty":1},{"code":"x\\u0000"}]}', expect: 422 },
    { label: "1e400", raw: '{"qty":1e400,"code":"storage_50gb","price_cents":1e400,"unit_price_cents":-1e400}', expect: 422 },
    { label: "-1e400 in an array", raw: '{"addons":[{"code":"storage_50gb","qty":-1e400}]}', expect: 422 },
    { label: "NUL in a path segment", path: (p) => (p.includes(ids.deployment) ? p.replace(ids.deployment, `${ids.deployment}%00`) : `${p}%00`), raw: "{}", expect: 422 },
    { label: "NUL in a query value", path: (p) => `${p}?reason=%00`, raw: "{}", expect: 422 },
    { label: "malformed percent-encoding", path: (p) => `${p}?x=%E0%A4%A`, raw: "{}", expect: 400 },
  ];
  const sent: Sent[] = [];
  for (const r of routes) {
    const path = fill(r.path);
    for (const c of classes) {
      const s = await send(c.label, r.method, c.path ? c.path(path) : path, { raw: c.raw, headers: c.headers });
      sent.push(s);
      if (c.expect && s.status !== c.expect && s.status >= 0) s.label += ` (expected ${c.expect})`;
    }
  }
  expect(bad(sent)).toEqual([]);
  expect(sent.filter((s) => / \(expected \d+\)$/.test(s.label)).map((s) => `${s.label}: got ${s.status} ${s.body?.type}`)).toEqual([]);
  // Nothing reached a table.
  expect(await rowCounts()).toEqual(before);
}, 240_000);

test("wrong types in every known field, and huge strings, are refused by the services; nothing is written", async () => {
  const before = await rowCounts();
  const wrong: unknown[] = [{ nested: { a: [1, { b: null }] } }, [[], [{}]], true, -1, 1e308, 0.5, "", null, "x".repeat(100_000), ["a"]];
  const sent: Sent[] = [];
  for (const r of routes) {
    const path = fill(r.path);
    for (let i = 0; i < wrong.length; i++) {
      const body: Record<string, unknown> = {};
      for (const f of FIELDS) body[f] = wrong[(i + f.length) % wrong.length];
      for (const tok of [opToken, tenantToken]) sent.push(await send(`wrong types #${i}`, r.method, path, { raw: JSON.stringify(body), auth: `Bearer ${tok}` }));
    }
  }
  expect(sent.filter((s) => s.status < 0 || s.status >= 500).map((s) => `${s.label}: ${s.status} ${JSON.stringify(s.body).slice(0, 300)}`)).toEqual([]);
  expect(bad(sent)).toEqual([]);
  expect(await rowCounts()).toEqual(before);
}, 240_000);

test("wrong types in each route's own fields (so strict parameters do not refuse them first): refused, nothing written", async () => {
  // The body above carries every known field, so each route refuses it for its unknown ones before any type is
  // looked at; here each route gets only the parameters its action declares (less the path's), all wrong at once.
  const actions = new Map<string, Record<string, unknown>>(broker.registry.getActionList({ withEndpoints: false } as any).map((a: any) => [a.name, a.action?.params ?? {}]));
  const wrong: unknown[] = [{ nested: { a: [1, { b: null }] } }, [[], [{}]], -1, 1e308, 0.5, "", "x".repeat(100_000), ["a"], "\u00e9".repeat(70), -1e-9];
  const before = await rowCounts();
  const sent: Sent[] = [];
  let reached = 0;
  for (const [alias, action] of Object.entries(API_ALIASES)) {
    const [method, route] = alias.split(" ");
    if (!["POST", "PATCH", "DELETE", "PUT"].includes(method)) continue;
    const inPath = new Set([...route.matchAll(/:(\w+)/g)].map((m) => m[1]));
    const own = Object.keys(actions.get(action) ?? {}).filter((f) => !f.startsWith("$$") && !inPath.has(f));
    if (!own.length) continue;
    reached++;
    for (let i = 0; i < wrong.length; i++) {
      const body: Record<string, unknown> = {};
      for (const f of own) body[f] = wrong[(i + f.length) % wrong.length];
      for (const tok of [opToken, tenantToken]) sent.push(await send(`own fields wrong #${i} ${JSON.stringify(Object.keys(body))}`, method, fill(route), { raw: JSON.stringify(body), auth: `Bearer ${tok}` }));
    }
  }
  expect(reached).toBeGreaterThanOrEqual(8);
  expect(bad(sent)).toEqual([]);
  expect(sent.filter((s) => Array.isArray(s.body?.data) && s.body.data.some((e: any) => e?.type === "unknownParameter")).map((s) => s.label)).toEqual([]);
  expect(await rowCounts()).toEqual(before);
}, 240_000);

test("randomised bodies from a fixed seed, each with one hostile value somewhere: no 5xx, no hang, nothing written", async () => {
  const rand = prng(SEED);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)];
  const hostile = [() => '"a\\u0000b"', () => "1e400", () => "-1e999", () => "[".repeat(MAX_DEPTH + 1 + Math.floor(rand() * 500)) + "]".repeat(0) /* unclosed */, () => `${"[".repeat(40)}${"]".repeat(40)}`];
  const scalar = () =>
    pick([() => JSON.stringify(uniq(pick(["s", "slug", "ü", "\u{1F600}"]))), () => String(Math.floor(rand() * 1e6) - 5e5), () => String(rand()), () => "true", () => "null", () => '""', () => JSON.stringify("x".repeat(Math.floor(rand() * 2000)))])();
  /** A random JSON text as a string, so the hostile value can sit anywhere (JSON.stringify would turn 1e400 into null). */
  const value = (depth: number, slot: { left: boolean }): string => {
    if (slot.left && rand() < 0.15) {
      slot.left = false;
      return pick(hostile)();
    }
    if (depth > 4 || rand() < 0.5) return scalar();
    if (rand() < 0.5) return `[${Array.from({ length: Math.floor(rand() * 4) }, () => value(depth + 1, slot)).join(",")}]`;
    return `{${Array.from({ length: 1 + Math.floor(rand() * 4) }, () => `${JSON.stringify(pick(FIELDS))}:${value(depth + 1, slot)}`).join(",")}}`;
  };
  const before = await rowCounts();
  const sent: Sent[] = [];
  for (let i = 0; i < 240; i++) {
    const r = routes[i % routes.length];
    const slot = { left: true };
    const fields = Array.from({ length: 1 + Math.floor(rand() * 6) }, () => `${JSON.stringify(pick(FIELDS))}:${value(1, slot)}`);
    if (slot.left) fields.splice(Math.floor(rand() * (fields.length + 1)), 0, `${JSON.stringify(pick(FIELDS))}:${pick(hostile)()}`);
    const raw = `{${fields.join(",")}}`;
    sent.push(await send(`random #${i} (seed ${SEED})`, r.method, fill(r.path), { raw, auth: `Bearer ${rand() < 0.5 ? opToken : tenantToken}` }));
  }
  expect(bad(sent)).toEqual([]);
  expect(await rowCounts()).toEqual(before);
}, 240_000);

test("the Authorization header: huge, malformed, non-ASCII — 401 on every write route, never 500", async () => {
  const before = await rowCounts();
  const headers = [
    "Bearer " + "a".repeat(12_000),
    "Bearer " + "a.b.c".repeat(1500),
    "Bearer",
    "Bearer ",
    "bearer  x",
    "Basic dXNlcjpwYXNz",
    "Bearer a.b",
    "Bearer ...",
    "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
    "Bearer \u00e9\u00e8\u00ff",
    `Bearer ${opToken}x`,
    `Bearer ${opToken.split(".").slice(0, 2).join(".")}.${"A".repeat(43)}`,
    "Bearer " + Buffer.from('{"alg":"HS256"').toString("base64url") + ".e30.x",
    " " .repeat(100),
  ];
  const sent: Sent[] = [];
  for (const r of routes) for (const h of headers) sent.push(await send(`auth ${JSON.stringify(h.slice(0, 30))}`, r.method, fill(r.path), { raw: "{}", auth: h }));
  // Bytes fetch refuses to send (control characters, raw UTF-8, a bare CR-less tab), over a plain socket.
  const rawValues = [Buffer.from("Bearer tok\x01en", "latin1"), Buffer.from("Bearer t\u00f6k\u20ac\u{1F600}", "utf8"), Buffer.from("Bearer \t\tabc", "latin1")];
  const raw: Sent[] = [];
  for (const r of routes.slice(0, 4)) for (const v of rawValues) raw.push(await rawSend(r.method, fill(r.path), v));
  // Node's HTTP parser refuses a control character in a header before the gateway sees it: 400, in the error shape.
  expect(raw.filter((s) => !(s.status === 401 || (s.status === 400 && s.label.includes("\\u0001")))).map((s) => `${s.label}: ${s.status}`)).toEqual([]);
  expect(bad(raw)).toEqual([]);
  // Over 16 KB of headers: 431 from the parser, in the error shape.
  const huge = await rawSend("POST", "/deployments", Buffer.from("Bearer " + "a".repeat(20_000)));
  expect(huge).toMatchObject({ status: 431, body: { code: 431, type: "HEADERS_TOO_LARGE" } });
  expect(sent.filter((s) => s.status !== 401).map((s) => `${s.label}: ${s.status} ${JSON.stringify(s.body).slice(0, 200)}`)).toEqual([]);
  expect(bad(sent)).toEqual([]);
  expect(await rowCounts()).toEqual(before);
}, 240_000);

test("after all of it the node still serves", async () => {
  expect(results.length).toBeGreaterThan(500);
  expect((await client(base, tenantToken).get(`/deployments/${ids.deployment}`)).status).toBe(200);
});
