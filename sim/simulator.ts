/**
 * A DigitalOcean API v2 look-alike for the embedded mode and the tests: the droplet, droplet
 * action, action, domain record, size, region, balance and account paths the control plane uses, with DO's bodies, statuses,
 * error shape, pagination and rate-limit headers, plus a control API under /v2/_sim/ for fault
 * injection and state inspection (see docs/simulator.md). State lives in memory only.
 */
import http from "node:http";
import { randomUUID } from "node:crypto";
import type { AddressInfo } from "node:net";

export const FAULT_OPERATIONS = [
  "droplets.create", "droplets.get", "droplets.list", "droplets.delete",
  "domains.records.list", "domains.records.create", "domains.records.update", "domains.records.delete",
  "droplets.actions.create", "droplets.actions.list", "actions.get",
] as const;
export type FaultOperation = (typeof FAULT_OPERATIONS)[number];
export const FAULT_MODES = ["error", "lose_response", "never_active", "action_errored", "delay"] as const;
export type FaultMode = (typeof FAULT_MODES)[number];

export interface SimFault {
  id: number;
  operation: FaultOperation;
  mode: FaultMode;
  status: number;
  /** Calls it was created to hit; -1 = until cleared. */
  count: number;
  /** Calls it still hits; the fault is removed when this reaches 0. */
  remaining: number;
  delay_ms: number;
  created_at: string;
}

export interface SimulatorOptions {
  port?: number;
  host?: string;
  token?: string;
  activeAfterMs?: number;
  /** How long a droplet action stays `in-progress` (default: activeAfterMs). */
  actionMs?: number;
  rateLimit?: number;
  rateLimitWindowMs?: number;
}

export interface Simulator {
  url: string;
  port: number;
  close(): Promise<void>;
  reset(): void;
}

// DO lists retired regions too, `available: false` with no sizes: they take no new droplets.
const REGION_LIST: { slug: string; name: string; available: boolean }[] = [
  { slug: "nyc1", name: "New York 1", available: true },
  { slug: "nyc2", name: "New York 2", available: false },
  { slug: "nyc3", name: "New York 3", available: true },
  { slug: "sfo1", name: "San Francisco 1", available: false },
  { slug: "sfo2", name: "San Francisco 2", available: false },
  { slug: "sfo3", name: "San Francisco 3", available: true },
  { slug: "ams2", name: "Amsterdam 2", available: false },
  { slug: "ams3", name: "Amsterdam 3", available: true },
  { slug: "fra1", name: "Frankfurt 1", available: true },
  { slug: "lon1", name: "London 1", available: true },
  { slug: "sgp1", name: "Singapore 1", available: true },
  { slug: "tor1", name: "Toronto 1", available: true },
  { slug: "blr1", name: "Bangalore 1", available: true },
  { slug: "syd1", name: "Sydney 1", available: true },
];
const REGIONS: Record<string, string> = Object.fromEntries(REGION_LIST.map((r) => [r.slug, r.name]));
/** Regions that take new droplets. */
const REGION_SLUGS = REGION_LIST.filter((r) => r.available).map((r) => r.slug);
const REGION_AVAILABLE = new Set(REGION_SLUGS);
// Not every size is offered everywhere: the largest one is not sold in syd1 (a case for region/size checks).
const NOT_OFFERED: Record<string, string[]> = { "s-4vcpu-8gb": ["syd1"] };
const offered = (size: string, region: string) => REGION_AVAILABLE.has(region) && !(NOT_OFFERED[size] ?? []).includes(region);

// DO bills hourly on a 672-hour month, capped at the monthly price.
const HOURS_PER_MONTH = 672;
const SIZES = [
  { slug: "s-1vcpu-512mb-10gb", memory: 512, vcpus: 1, disk: 10, transfer: 0.5, price_monthly: 4 },
  { slug: "s-1vcpu-1gb", memory: 1024, vcpus: 1, disk: 25, transfer: 1, price_monthly: 6 },
  { slug: "s-1vcpu-2gb", memory: 2048, vcpus: 1, disk: 50, transfer: 2, price_monthly: 12 },
  { slug: "s-2vcpu-2gb", memory: 2048, vcpus: 2, disk: 60, transfer: 3, price_monthly: 18 },
  { slug: "s-2vcpu-4gb", memory: 4096, vcpus: 2, disk: 80, transfer: 4, price_monthly: 24 },
  { slug: "s-4vcpu-8gb", memory: 8192, vcpus: 4, disk: 160, transfer: 5, price_monthly: 48 },
].map((s) => ({
  ...s,
  price_hourly: Math.round((s.price_monthly / HOURS_PER_MONTH) * 1e5) / 1e5,
  regions: REGION_SLUGS.filter((r) => offered(s.slug, r)),
  available: true,
  description: "Basic",
}));
type Size = (typeof SIZES)[number];

const RECORD_TYPES = ["A", "AAAA", "CAA", "CNAME", "MX", "NS", "SOA", "SRV", "TXT"];
// DO's droplet hostname rule: letters, digits, dots and hyphens, alphanumeric at both ends.
const DROPLET_NAME = /^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$/;

interface SimDroplet {
  id: number;
  name: string;
  region: string;
  size: Size;
  image: string | number;
  /** As sent on create (null: none); DO never renders it, _sim/state does. */
  userData: string | null;
  /** GB. A resize without `disk: true` keeps it; with it, it becomes the new size's disk (and never shrinks). */
  disk: number;
  tags: string[];
  createdMs: number;
  ipv4: string;
  privateIpv4: string;
  neverActive: boolean;
  /** The droplet action still running on it (DO locks the droplet meanwhile). */
  pendingAction?: SimAction;
  /** Set by the control API; overrides the time-based new→active transition. */
  status?: string;
}

export interface SimDomainRecord {
  id: number;
  type: string;
  name: string;
  data: string;
  priority: number | null;
  port: number | null;
  ttl: number;
  weight: number | null;
  flags: number | null;
  tag: string | null;
}

class HttpError extends Error {
  constructor(readonly status: number, readonly id: string, message: string) { super(message); }
}
const notFound = () => new HttpError(404, "not_found", "The resource you were accessing could not be found.");

export const DROPLET_ACTION_TYPES = ["power_on", "power_off", "shutdown", "resize"] as const;
interface SimAction {
  id: number;
  type: string;
  dropletId: number;
  region: string;
  startedMs: number;
  /** When it ends (Infinity: never, e.g. the create action of a never_active droplet). */
  doneMs: number;
  /** Its outcome once done. */
  outcome: "completed" | "errored";
  /** Applied to the droplet when it completes (not when it errors). */
  effect?: (d: SimDroplet) => void;
  settled: boolean;
}
const unprocessable = (message: string) => new HttpError(422, "unprocessable_entity", message);

const ERROR_IDS: Record<number, [string, string]> = {
  400: ["bad_request", "The request could not be understood."],
  401: ["unauthorized", "Unable to authenticate you"],
  403: ["forbidden", "You do not have access for the attempted action."],
  404: ["not_found", "The resource you were accessing could not be found."],
  422: ["unprocessable_entity", "The request could not be processed."],
  429: ["too_many_requests", "API Rate limit exceeded."],
  500: ["server_error", "Server was unable to give you a response."],
  502: ["bad_gateway", "Bad gateway."],
  503: ["service_unavailable", "The service is currently unavailable."],
  504: ["gateway_timeout", "Gateway timeout."],
};

interface Reply { status: number; body?: unknown; headers?: Record<string, string> }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v);
const isObj = (v: unknown): v is Record<string, any> => typeof v === "object" && v !== null && !Array.isArray(v);

export async function startSimulator(opts: SimulatorOptions = {}): Promise<Simulator> {
  const env = process.env;
  const token = opts.token ?? (env.SIM_TOKEN || undefined);
  const activeAfterMs = opts.activeAfterMs ?? Number(env.SIM_ACTIVE_AFTER_MS ?? 1500);
  const actionMs = opts.actionMs ?? Number(env.SIM_ACTION_MS ?? activeAfterMs);
  const rateLimit = opts.rateLimit ?? Number(env.SIM_RATE_LIMIT ?? 5000);
  const windowMs = opts.rateLimitWindowMs ?? 3_600_000;

  let droplets = new Map<number, SimDroplet>();
  let domains = new Map<string, Map<number, SimDomainRecord>>();
  let actions = new Map<number, SimAction>();
  /** Droplet actions not yet ended: the only ones settleActions looks at. */
  let unsettled = new Set<SimAction>();
  let faults: SimFault[] = [];
  let requests: Record<string, number> = {};
  // Ids start from the clock so a restarted simulator never hands out an id a persisted database already knows.
  let nextDropletId = Math.floor(Date.now() / 1000) * 10;
  let nextRecordId = Math.floor(Date.now() / 1000) * 10;
  let nextActionId = Math.floor(Date.now() / 1000) * 10;
  let nextFaultId = 1;
  let window = { start: Date.now(), used: 0 };

  function reset() {
    droplets = new Map();
    domains = new Map();
    actions = new Map();
    unsettled = new Set();
    faults = [];
    requests = {};
    window = { start: Date.now(), used: 0 };
  }

  // Addresses come from the droplet id so they are stable and unique within a run.
  const publicIp = (n: number) => `203.0.${(n >> 8) & 255}.${n & 255}`;
  const privateIp = (n: number) => `10.108.${(n >> 8) & 255}.${n & 255}`;

  /** Ends the actions whose time has come, applying their effect: called before every request is handled. */
  function settleActions() {
    const now = Date.now();
    for (const a of unsettled) {
      if (a.doneMs > now) continue;
      a.settled = true;
      unsettled.delete(a);
      const d = droplets.get(a.dropletId);
      if (d?.pendingAction === a) d.pendingAction = undefined;
      if (a.outcome === "completed" && d) a.effect?.(d);
    }
  }
  const pending = (d: SimDroplet) => d.pendingAction !== undefined;

  function actionView(a: SimAction) {
    const done = a.settled || a.doneMs <= Date.now();
    const at = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");
    return { id: a.id, status: done ? a.outcome : "in-progress", type: a.type, started_at: at(a.startedMs),
      completed_at: done ? at(a.doneMs) : null, resource_id: a.dropletId, resource_type: "droplet",
      region: regionView(a.region), region_slug: a.region };
  }

  function statusOf(d: SimDroplet) {
    return d.status ?? (d.neverActive || Date.now() - d.createdMs < activeAfterMs ? "new" : "active");
  }

  /** POST /v2/droplets/:id/actions: what DO accepts, refuses (422) and what the action does when it completes. */
  function startAction(d: SimDroplet, body: unknown, errored: boolean): SimAction {
    if (!isObj(body)) throw unprocessable("The request body must be a JSON object.");
    const type = body.type;
    if (typeof type !== "string" || !type) throw unprocessable("Type is required.");
    if (!(DROPLET_ACTION_TYPES as readonly string[]).includes(type)) throw unprocessable(`'${type}' is not a valid action type.`);
    const status = statusOf(d);
    // DO locks a droplet while an action (or its creation) is in progress and refuses another one.
    if (status === "new" || pending(d)) throw unprocessable("Droplet already has a pending event.");
    let effect: SimAction["effect"];
    if (type === "power_on") effect = (x) => { x.status = "active"; };
    else if (type === "power_off" || type === "shutdown") effect = (x) => { x.status = "off"; };
    else {
      const size = SIZES.find((s) => s.slug === body.size);
      if (typeof body.size !== "string" || !body.size) throw unprocessable("Size is required.");
      if (!size) throw unprocessable("You specified an invalid size for Droplet resize.");
      if (body.disk !== undefined && typeof body.disk !== "boolean") throw unprocessable("Disk must be a boolean.");
      if (!offered(size.slug, d.region)) throw unprocessable("The size you selected is not available in this Droplet's region.");
      // A droplet has to be powered off before a resize (we model DO's rule strictly: no implicit power-off).
      if (status !== "off") throw unprocessable("Droplet must be powered off before it can be resized.");
      // Disk never shrinks: a size with a smaller disk than the droplet's is refused.
      if (size.disk < d.disk) throw unprocessable("This size is not available because it has a smaller disk.");
      const disk = body.disk === true;
      effect = (x) => { x.size = size; if (disk) x.disk = size.disk; };
    }
    const now = Date.now();
    const a: SimAction = { id: nextActionId++, type, dropletId: d.id, region: d.region, startedMs: now, doneMs: now + actionMs,
      outcome: errored ? "errored" : "completed", effect, settled: false };
    actions.set(a.id, a);
    unsettled.add(a);
    d.pendingAction = a;
    return a;
  }

  function dropletView(d: SimDroplet) {
    const status = statusOf(d);
    const hasIp = status !== "new"; // like DO, a droplet gets its addresses once it is up
    return {
      id: d.id,
      name: d.name,
      memory: d.size.memory,
      vcpus: d.size.vcpus,
      disk: d.disk,
      locked: pending(d),
      status,
      kernel: null,
      created_at: new Date(d.createdMs).toISOString().replace(/\.\d{3}Z$/, "Z"),
      features: ["droplet_agent", "private_networking"],
      backup_ids: [],
      next_backup_window: null,
      snapshot_ids: [],
      image: imageView(d.image),
      volume_ids: [],
      size: d.size,
      size_slug: d.size.slug,
      networks: {
        v4: hasIp
          ? [
              { ip_address: d.ipv4, netmask: "255.255.240.0", gateway: d.ipv4.replace(/\.\d+$/, ".1"), type: "public" },
              { ip_address: d.privateIpv4, netmask: "255.255.0.0", gateway: "10.108.0.1", type: "private" },
            ]
          : [],
        v6: [],
      },
      region: regionView(d.region),
      tags: d.tags,
      vpc_uuid: "5a4981aa-9653-4bd1-bef5-d6bff52042e4",
    };
  }

  function regionView(slug: string) {
    return { slug, name: REGIONS[slug] ?? slug, sizes: SIZES.filter((s) => offered(s.slug, slug)).map((s) => s.slug), available: REGION_AVAILABLE.has(slug),
      features: ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"] };
  }

  function imageView(image: string | number) {
    const slug = typeof image === "string" ? image : null;
    return { id: typeof image === "number" ? image : 129211873, name: slug ?? `image-${image}`,
      distribution: slug?.split("-")[0] ?? "Unknown", slug, public: slug !== null, regions: REGION_SLUGS,
      type: "base", min_disk_size: 7, size_gigabytes: 2.36, created_at: "2024-04-25T00:00:00Z",
      description: "", status: "available", tags: [], error_message: "" };
  }

  function addDroplet(b: Record<string, any>, neverActive: boolean, status?: string): SimDroplet {
    const id = nextDropletId++;
    const size = SIZES.find((s) => s.slug === b.size)!;
    const d: SimDroplet = {
      id, name: b.name, region: b.region, size, image: b.image, userData: typeof b.user_data === "string" ? b.user_data : null,
      disk: size.disk, tags: Array.isArray(b.tags) ? [...new Set<string>(b.tags.map(String))] : [],
      createdMs: Date.now(), ipv4: publicIp(id), privateIpv4: privateIp(id), neverActive, status,
    };
    droplets.set(id, d);
    // The create action, readable at GET /v2/actions/:id like DO's; it completes when the droplet is active.
    const createAction = id + 2000000000;
    actions.set(createAction, { id: createAction, type: "create", dropletId: id, region: d.region, startedMs: d.createdMs,
      doneMs: neverActive ? Infinity : d.createdMs + activeAfterMs, outcome: "completed", settled: false });
    return d;
  }

  function validateDroplet(b: unknown, defaults?: Record<string, unknown>): Record<string, any> {
    if (!isObj(b)) throw unprocessable("The request body must be a JSON object.");
    const v = { ...defaults, ...b };
    if (typeof v.name !== "string" || !v.name) throw unprocessable("Name is required.");
    if (!DROPLET_NAME.test(v.name)) throw unprocessable("Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)");
    if (typeof v.region !== "string" || !v.region) throw unprocessable("Region is required.");
    if (!REGIONS[v.region]) throw unprocessable("You specified an invalid region for Droplet creation.");
    if (!REGION_AVAILABLE.has(v.region)) throw unprocessable(`The region ${v.region} is not available for Droplet creation.`);
    if (typeof v.size !== "string" || !v.size) throw unprocessable("Size is required.");
    if (!SIZES.some((s) => s.slug === v.size)) throw unprocessable("You specified an invalid size for Droplet creation.");
    if (!offered(v.size, v.region)) throw unprocessable("The size you selected is not available in this region.");
    if ((typeof v.image !== "string" || !v.image) && !isInt(v.image)) throw unprocessable("Image is required.");
    if (v.user_data != null && typeof v.user_data !== "string") throw unprocessable("User data must be a string.");
    if (typeof v.user_data === "string" && Buffer.byteLength(v.user_data) > 64 * 1024) throw unprocessable("User data is limited to 64 KiB.");
    if (v.tags != null && (!Array.isArray(v.tags) || v.tags.some((t: unknown) => typeof t !== "string" || !/^[\w:.-]{1,255}$/.test(t))))
      throw unprocessable("Tags must be strings of letters, digits, colons, dashes, dots and underscores.");
    return v;
  }

  function records(domain: string) {
    const key = domain.toLowerCase();
    let m = domains.get(key);
    if (!m) domains.set(key, (m = new Map())); // any domain is accepted, as if it were already in the account
    return m;
  }

  // DO stores names relative to the zone ("www", "@"); accept a fully qualified one too.
  function relativeName(name: string, domain: string) {
    const n = name.toLowerCase().replace(/\.$/, "");
    const d = domain.toLowerCase();
    if (n === d) return "@";
    return n.endsWith(`.${d}`) ? n.slice(0, -d.length - 1) : n;
  }
  const fqdn = (r: SimDomainRecord, domain: string) => (r.name === "@" ? domain : `${r.name}.${domain}`).toLowerCase();

  function applyRecord(r: SimDomainRecord, b: Record<string, any>, domain: string) {
    if (b.type !== undefined) {
      if (typeof b.type !== "string" || !RECORD_TYPES.includes(b.type.toUpperCase())) throw unprocessable("Type is not a valid record type.");
      r.type = b.type.toUpperCase();
    }
    if (b.name !== undefined) {
      if (typeof b.name !== "string" || !b.name) throw unprocessable("Name is required.");
      r.name = relativeName(b.name, domain);
    }
    if (b.data !== undefined) {
      if (typeof b.data !== "string" || !b.data) throw unprocessable("Data is required.");
      r.data = b.data;
    }
    if (b.ttl !== undefined && b.ttl !== null) {
      if (!isInt(b.ttl) || b.ttl < 30) throw unprocessable("TTL must be an integer of at least 30.");
      r.ttl = b.ttl;
    }
    for (const k of ["priority", "port", "weight", "flags"] as const) if (b[k] !== undefined) r[k] = b[k] === null ? null : Number(b[k]);
    if (b.tag !== undefined) r.tag = b.tag;
    if (r.type === "A" && !/^\d{1,3}(\.\d{1,3}){3}$/.test(r.data)) throw unprocessable("Data needs to be an IPv4 address for an A record.");
  }

  function paginate(url: URL, key: string, items: unknown[]): Reply {
    const perPage = Math.min(200, Math.max(1, Number(url.searchParams.get("per_page")) || 20));
    const lastPage = Math.max(1, Math.ceil(items.length / perPage));
    const page = Math.max(1, Number(url.searchParams.get("page")) || 1);
    const link = (p: number) => {
      const u = new URL(url);
      u.searchParams.set("page", String(p));
      u.searchParams.set("per_page", String(perPage));
      return u.toString();
    };
    const pages: Record<string, string> = {};
    if (page > 1) Object.assign(pages, { first: link(1), prev: link(Math.min(page - 1, lastPage)) });
    if (page < lastPage) Object.assign(pages, { next: link(page + 1), last: link(lastPage) });
    return { status: 200, body: { [key]: items.slice((page - 1) * perPage, page * perPage), links: { pages }, meta: { total: items.length } } };
  }

  function balance() {
    const now = Date.now();
    const monthStart = new Date(now);
    monthStart.setUTCDate(1);
    monthStart.setUTCHours(0, 0, 0, 0);
    let usage = 0;
    for (const d of droplets.values()) {
      // A droplet bills its first hour as soon as it exists (even in the millisecond it was created).
      const hours = Math.max(1, Math.ceil((now - Math.max(d.createdMs, monthStart.getTime())) / 3_600_000));
      usage += Math.min(d.size.price_monthly, hours * d.size.price_hourly);
    }
    const usd = (n: number) => n.toFixed(2);
    return { month_to_date_balance: usd(usage), account_balance: "0.00", month_to_date_usage: usd(usage),
      generated_at: new Date(now).toISOString().replace(/\.\d{3}Z$/, "Z") };
  }

  /** The public API: returns the operation name (for faults and counters) and the work to do. */
  function route(method: string, parts: string[], url: URL): { op: string; run: (body: unknown, fault?: SimFault) => Reply } | undefined {
    const [res, a, b, c] = parts;
    const n = parts.length;
    if (res === "droplets") {
      if (n === 1 && method === "POST") return { op: "droplets.create", run: (body, fault) => {
        const v = validateDroplet(body);
        const d = addDroplet(v, fault?.mode === "never_active");
        return { status: 202, body: { droplet: dropletView(d), links: { actions: [
          { id: 2000000000 + d.id, rel: "create", href: `${url.origin}/v2/actions/${2000000000 + d.id}` }] } } };
      } };
      if (n === 1 && method === "GET") return { op: "droplets.list", run: () => {
        const tag = url.searchParams.get("tag_name");
        const name = url.searchParams.get("name");
        const list = [...droplets.values()].filter((d) => (!tag || d.tags.includes(tag)) && (!name || d.name === name));
        return paginate(url, "droplets", list.map(dropletView));
      } };
      if (n === 1 && method === "DELETE") return { op: "droplets.delete", run: () => {
        const tag = url.searchParams.get("tag_name");
        if (!tag) throw unprocessable("tag_name is required.");
        for (const d of [...droplets.values()]) if (d.tags.includes(tag)) droplets.delete(d.id);
        return { status: 204 };
      } };
      if (n === 3 && b === "actions" && method === "POST") return { op: "droplets.actions.create", run: (body, fault) => {
        const d = /^\d+$/.test(a) ? droplets.get(Number(a)) : undefined;
        if (!d) throw notFound();
        const act = startAction(d, body, fault?.mode === "action_errored");
        return { status: 201, body: { action: actionView(act) } };
      } };
      if (n === 3 && b === "actions" && method === "GET") return { op: "droplets.actions.list", run: () => {
        const d = /^\d+$/.test(a) ? droplets.get(Number(a)) : undefined;
        if (!d) throw notFound();
        const list = [...actions.values()].filter((x) => x.dropletId === d.id).sort((x, y) => y.startedMs - x.startedMs || y.id - x.id);
        return paginate(url, "actions", list.map(actionView));
      } };
      if (n === 2 && (method === "GET" || method === "DELETE")) return { op: method === "GET" ? "droplets.get" : "droplets.delete", run: () => {
        const d = droplets.get(Number(a));
        if (!d || !/^\d+$/.test(a)) throw notFound();
        if (method === "GET") return { status: 200, body: { droplet: dropletView(d) } };
        droplets.delete(d.id);
        return { status: 204 };
      } };
      return undefined;
    }
    if (res === "domains" && n >= 3 && b === "records") {
      const domain = a.toLowerCase();
      const all = records(domain);
      if (n === 3 && method === "GET") return { op: "domains.records.list", run: () => {
        const type = url.searchParams.get("type")?.toUpperCase();
        const name = url.searchParams.get("name")?.toLowerCase().replace(/\.$/, "");
        const list = [...all.values()].filter((r) => (!type || r.type === type) && (!name || fqdn(r, domain) === name));
        return paginate(url, "domain_records", list);
      } };
      if (n === 3 && method === "POST") return { op: "domains.records.create", run: (body) => {
        if (!isObj(body)) throw unprocessable("The request body must be a JSON object.");
        for (const k of ["type", "name", "data"]) if (body[k] == null || body[k] === "") throw unprocessable(`${k[0].toUpperCase()}${k.slice(1)} is required.`);
        const r: SimDomainRecord = { id: nextRecordId, type: "A", name: "", data: "", priority: null, port: null, ttl: 1800, weight: null, flags: null, tag: null };
        applyRecord(r, body, domain);
        nextRecordId++;
        all.set(r.id, r);
        return { status: 201, body: { domain_record: r } };
      } };
      if (n === 4) {
        const op = method === "GET" ? "domains.records.get" : method === "DELETE" ? "domains.records.delete"
          : method === "PATCH" || method === "PUT" ? "domains.records.update" : undefined;
        if (!op) return undefined;
        return { op, run: (body) => {
          const r = all.get(Number(c));
          if (!r || !/^\d+$/.test(c)) throw notFound();
          if (method === "GET") return { status: 200, body: { domain_record: r } };
          if (method === "DELETE") { all.delete(r.id); return { status: 204 }; }
          if (!isObj(body)) throw unprocessable("The request body must be a JSON object.");
          const next = { ...r };
          applyRecord(next, body, domain); // validate on a copy so a bad update changes nothing
          Object.assign(r, next);
          return { status: 200, body: { domain_record: r } };
        } };
      }
      return undefined;
    }
    if (res === "actions" && n === 2 && method === "GET") return { op: "actions.get", run: () => {
      const act = /^\d+$/.test(a) ? actions.get(Number(a)) : undefined;
      if (!act) throw notFound();
      return { status: 200, body: { action: actionView(act) } };
    } };
    if (n === 1 && method === "GET" && res === "sizes") return { op: "sizes.list", run: () => paginate(url, "sizes", SIZES) };
    if (n === 1 && method === "GET" && res === "regions") return { op: "regions.list", run: () => paginate(url, "regions", REGION_LIST.map((r) => regionView(r.slug))) };
    if (n === 3 && method === "GET" && res === "customers" && a === "my" && b === "balance") return { op: "balance.get", run: () => ({ status: 200, body: balance() }) };
    if (n === 1 && method === "GET" && res === "account") return { op: "account.get", run: () => ({ status: 200, body: { account: {
      droplet_limit: 1000, floating_ip_limit: 10, volume_limit: 100, email: "sim@example.com",
      uuid: "b6fr89dbf6d9156cace5f3c78dc9851d957381ef", email_verified: true, status: "active", status_message: "",
      team: { uuid: "5df3e3004a17e242b7c20ca6c9fc25b701a47ece", name: "Simulated team" } } } }) };
    return undefined;
  }

  function takeFault(op: string): SimFault | undefined {
    const f = faults.find((x) => x.operation === op);
    if (f && f.remaining > 0 && --f.remaining === 0) faults = faults.filter((x) => x !== f);
    return f;
  }

  function control(method: string, parts: string[], body: unknown): Reply {
    const [what, id] = parts;
    const n = parts.length;
    if (n === 1 && what === "state" && method === "GET")
      return { status: 200, body: {
        // As the API renders them, plus what DO never shows back: the user data given on create.
        droplets: [...droplets.values()].map((d) => ({ ...dropletView(d), user_data: d.userData })),
        actions: [...actions.values()].filter((x) => x.type !== "create").map(actionView),
        domain_records: [...domains].flatMap(([domain, m]) => [...m.values()].map((r) => ({ domain, ...r }))),
        faults, requests } };
    if (n === 1 && what === "reset" && method === "POST") { reset(); return { status: 204 }; }
    if (n === 1 && what === "faults" && method === "DELETE") { faults = []; return { status: 204 }; }
    if (n === 1 && what === "faults" && method === "GET") return { status: 200, body: { faults } };
    if (n === 1 && what === "faults" && method === "POST") {
      if (!isObj(body)) throw unprocessable("The request body must be a JSON object.");
      const { operation, mode, status = 500, count = 1, delay_ms = 0 } = body;
      if (!FAULT_OPERATIONS.includes(operation)) throw unprocessable(`operation must be one of ${FAULT_OPERATIONS.join(", ")}.`);
      if (!FAULT_MODES.includes(mode)) throw unprocessable(`mode must be one of ${FAULT_MODES.join(", ")}.`);
      if (mode === "never_active" && operation !== "droplets.create") throw unprocessable("never_active applies to droplets.create only.");
      if (mode === "action_errored" && operation !== "droplets.actions.create") throw unprocessable("action_errored applies to droplets.actions.create only.");
      if (!isInt(status) || status < 400 || status > 599) throw unprocessable("status must be an integer from 400 to 599.");
      if (!isInt(count) || (count < 1 && count !== -1)) throw unprocessable("count must be a positive integer or -1.");
      if (!isInt(delay_ms) || delay_ms < 0 || delay_ms > 600_000) throw unprocessable("delay_ms must be an integer from 0 to 600000.");
      if (mode === "delay" && body.delay_ms === undefined) throw unprocessable("delay_ms is required with mode delay.");
      const f: SimFault = { id: nextFaultId++, operation, mode, status, count, remaining: count, delay_ms, created_at: new Date().toISOString() };
      faults.push(f);
      return { status: 201, body: f };
    }
    if (what === "droplets" && n === 1 && method === "POST") {
      const v = validateDroplet(body, { region: "nyc1", size: "s-1vcpu-1gb", image: "ubuntu-24-04-x64" });
      const d = addDroplet(v, false, typeof v.status === "string" ? v.status : "active");
      if (typeof v.ipv4 === "string") d.ipv4 = v.ipv4;
      if (typeof v.created_at === "string" && !Number.isNaN(Date.parse(v.created_at))) d.createdMs = Date.parse(v.created_at);
      return { status: 201, body: { droplet: dropletView(d) } };
    }
    if (what === "droplets" && n === 2) {
      const d = droplets.get(Number(id));
      if (!d) throw notFound();
      if (method === "DELETE") { droplets.delete(d.id); return { status: 204 }; }
      if (method === "PATCH") {
        if (!isObj(body)) throw unprocessable("The request body must be a JSON object.");
        if (body.size !== undefined) {
          const size = SIZES.find((s) => s.slug === body.size);
          if (!size) throw unprocessable("Unknown size.");
          d.size = size;
          d.disk = size.disk;
        }
        if (typeof body.status === "string") d.status = body.status;
        if (typeof body.ipv4 === "string") d.ipv4 = body.ipv4;
        if (typeof body.name === "string") d.name = body.name;
        if (Array.isArray(body.tags)) d.tags = body.tags.map(String);
        return { status: 200, body: { droplet: dropletView(d) } };
      }
    }
    throw notFound();
  }

  function rateLimitHeaders(res: http.ServerResponse): boolean {
    const now = Date.now();
    if (now - window.start >= windowMs) window = { start: now, used: 0 };
    const resetMs = window.start + windowMs;
    const allowed = window.used < rateLimit;
    if (allowed) window.used++;
    res.setHeader("ratelimit-limit", String(rateLimit));
    res.setHeader("ratelimit-remaining", String(rateLimit - window.used));
    res.setHeader("ratelimit-reset", String(Math.ceil(resetMs / 1000)));
    if (!allowed) res.setHeader("retry-after", String(Math.max(1, Math.ceil((resetMs - now) / 1000))));
    return allowed;
  }

  function send(res: http.ServerResponse, reply: Reply) {
    if (res.destroyed) return;
    for (const [k, v] of Object.entries(reply.headers ?? {})) res.setHeader(k, v);
    if (reply.body === undefined) { res.writeHead(reply.status).end(); return; }
    const text = JSON.stringify(reply.body);
    res.writeHead(reply.status, { "content-type": "application/json; charset=utf-8", "content-length": Buffer.byteLength(text) }).end(text);
  }

  const errorReply = (status: number, requestId: string, id?: string, message?: string): Reply => {
    const [defId, defMessage] = ERROR_IDS[status] ?? [status >= 500 ? "server_error" : "error", "The request failed."];
    return { status, body: { id: id ?? defId, message: message ?? defMessage, request_id: requestId } };
  };

  async function readBody(req: http.IncomingMessage): Promise<unknown> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString("utf8").trim();
    return text ? JSON.parse(text) : undefined;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse) {
    const requestId = randomUUID();
    const method = req.method ?? "GET";
    const url = new URL(req.url ?? "/", `http://${req.headers.host ?? "localhost"}`);
    const parts = url.pathname.split("/").filter(Boolean);
    let body: unknown;
    try {
      body = await readBody(req);
    } catch {
      return send(res, errorReply(400, requestId, "bad_request", "The request body is not valid JSON."));
    }
    if (parts[0] !== "v2") return send(res, errorReply(404, requestId));
    settleActions();
    if (parts[1] === "_sim") {
      try {
        return send(res, control(method, parts.slice(2), body));
      } catch (e) {
        if (e instanceof HttpError) return send(res, errorReply(e.status, requestId, e.id, e.message));
        throw e;
      }
    }

    const auth = req.headers.authorization ?? "";
    const bearer = /^Bearer\s+(\S+)$/i.exec(auth)?.[1];
    if (!bearer || (token !== undefined && bearer !== token)) return send(res, errorReply(401, requestId));
    if (!rateLimitHeaders(res)) return send(res, errorReply(429, requestId));

    const r = route(method, parts.slice(1), url);
    if (!r) return send(res, errorReply(404, requestId));
    requests[r.op] = (requests[r.op] ?? 0) + 1;
    const fault = takeFault(r.op);
    if (fault?.mode === "delay") await sleep(fault.delay_ms);
    if (fault?.mode === "error") {
      const reply = errorReply(fault.status, requestId);
      if (fault.status === 429) reply.headers = { "retry-after": "1" };
      return send(res, reply);
    }
    let reply: Reply;
    try {
      reply = r.run(body, fault);
    } catch (e) {
      if (!(e instanceof HttpError)) throw e;
      reply = errorReply(e.status, requestId, e.id, e.message);
    }
    if (fault?.mode === "lose_response") { req.socket.destroy(); return; }
    send(res, reply);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!res.headersSent) send(res, errorReply(500, randomUUID(), "server_error", String(e?.message ?? e)));
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 0, opts.host ?? "127.0.0.1", () => { server.off("error", reject); resolve(); });
  });
  const { port, address } = server.address() as AddressInfo;
  const host = address.includes(":") ? `[${address}]` : address === "0.0.0.0" ? "127.0.0.1" : address;
  return {
    url: `http://${host}:${port}`,
    port,
    reset,
    close: () => new Promise<void>((resolve, reject) => {
      server.close((e) => (e ? reject(e) : resolve()));
      server.closeAllConnections();
    }),
  };
}
