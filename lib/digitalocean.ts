/**
 * DigitalOcean API v2 client for the paths the control plane uses (droplets, droplet actions,
 * actions, domain records, sizes, regions, balance, account). Reads are retried on 5xx and network errors; a droplet or record
 * create is never resent after a 5xx or a lost response, since DO has no idempotency key and
 * the first attempt may have been carried out: the caller settles by looking the droplet up by
 * its saga tag. A 429 means the request was not processed, so any request may wait it out.
 */

export interface DigitalOceanClientOptions {
  /** API root, e.g. https://api.digitalocean.com (a trailing /v2 is accepted). */
  baseUrl: string;
  token: string;
  /** Retries after the first attempt, for 429s and (idempotent requests only) 5xx/network errors. */
  maxRetries?: number;
  baseBackoffMs?: number;
  timeoutMs?: number;
  /** A 429 asking to wait longer than this is thrown instead of waited out. */
  maxRateLimitWaitMs?: number;
}

export interface RateLimit {
  limit: number;
  remaining: number;
  /** Unix time (seconds) at which the window resets. */
  reset: number;
}

export interface NetworkV4 { ip_address: string; netmask?: string; gateway?: string; type: "public" | "private" | string }

export interface Size {
  slug: string;
  memory: number;
  vcpus: number;
  disk: number;
  transfer: number;
  price_monthly: number;
  price_hourly: number;
  regions: string[];
  available: boolean;
  description?: string;
}

export interface Droplet {
  id: number;
  name: string;
  memory: number;
  vcpus: number;
  disk: number;
  locked: boolean;
  status: "new" | "active" | "off" | "archive" | string;
  created_at: string;
  features: string[];
  image: { id: number; slug: string | null; name: string; distribution: string; [k: string]: unknown };
  size: Size;
  size_slug: string;
  networks: { v4: NetworkV4[]; v6: { ip_address: string; type: string }[] };
  region: { slug: string; name: string; [k: string]: unknown };
  tags: string[];
  vpc_uuid?: string;
  [k: string]: unknown;
}

export interface CreateDropletInput {
  name: string;
  region: string;
  size: string;
  image: string | number;
  tags?: string[];
  user_data?: string;
}

export interface ActionLink { id: number; rel: string; href: string }
export interface CreateDropletResult { droplet: Droplet; links: { actions: ActionLink[] } }

export interface Region {
  slug: string;
  name: string;
  /** false: DO lists the region but takes no new droplets there. */
  available: boolean;
  /** Size slugs a droplet can be created with (or resized to) in this region. */
  sizes: string[];
  features: string[];
}

export const DROPLET_ACTION_TYPES = ["power_on", "power_off", "shutdown", "resize"] as const;
export type DropletActionType = (typeof DROPLET_ACTION_TYPES)[number];
/** What POST /v2/droplets/:id/actions takes for the types we use; `size`/`disk` only with resize. */
export type DropletActionInput =
  | { type: "power_on" | "power_off" | "shutdown" }
  | { type: "resize"; size: string; /** also grow the disk (permanent: a disk never shrinks) */ disk?: boolean };

export type ActionStatus = "in-progress" | "completed" | "errored";
/** DO's action object: the answer to a droplet action, and what GET /v2/actions/:id reports until it is done. */
export interface Action {
  id: number;
  status: ActionStatus;
  type: string;
  started_at: string;
  completed_at: string | null;
  resource_id: number;
  resource_type: string;
  region?: Region | null;
  region_slug: string | null;
}

export interface DomainRecord {
  id: number;
  type: string;
  /** Relative to the zone: "www", "foo.bar" or "@". */
  name: string;
  data: string;
  ttl: number;
  priority: number | null;
  port: number | null;
  weight: number | null;
  flags: number | null;
  tag: string | null;
}

export interface DomainRecordInput {
  type: string;
  name: string;
  data: string;
  ttl?: number;
  priority?: number | null;
  port?: number | null;
  weight?: number | null;
  flags?: number | null;
  tag?: string | null;
}

export interface Balance {
  month_to_date_balance: string;
  account_balance: string;
  month_to_date_usage: string;
  generated_at: string;
}

export interface Account {
  droplet_limit: number;
  email: string;
  uuid: string;
  status: string;
  [k: string]: unknown;
}

interface PageLinks { pages?: { first?: string; prev?: string; next?: string; last?: string } }

export class DigitalOceanError extends Error {
  /** 0 when no HTTP answer arrived (network error, dropped connection, timeout). */
  readonly status: number;
  readonly id: string;
  readonly requestId?: string;
  /** Worth retrying later: network errors, 429 and 5xx. */
  readonly transient: boolean;
  /** "METHOD /path" of the failed call, for logs (the message is DO's own). */
  request?: string;

  constructor(status: number, id: string, message: string, requestId?: string, options?: { cause?: unknown; request?: string }) {
    super(message, options);
    this.request = options?.request;
    this.name = "DigitalOceanError";
    this.status = status;
    this.id = id;
    this.requestId = requestId;
    this.transient = status === 0 || status === 429 || status >= 500;
  }
}

// DO's droplet name rule: hostname characters (letters, digits, dots, hyphens), alphanumeric ends.
const DROPLET_NAME = /^[a-zA-Z0-9]([a-zA-Z0-9.-]*[a-zA-Z0-9])?$/;

export function isValidDropletName(name: string): boolean {
  return name.length <= 255 && DROPLET_NAME.test(name);
}

export function publicIPv4(droplet: Pick<Droplet, "networks">): string | undefined {
  return droplet.networks?.v4?.find((n) => n.type === "public")?.ip_address;
}

export function monthlyCostCents(size: Pick<Size, "price_monthly">): number {
  return Math.round(size.price_monthly * 100);
}

/** "12.34" → 1234, "-0.5" → -50, exactly (no float); a third decimal rounds half away from zero. */
export function dollarsToCents(amount: string): number {
  const m = /^\s*([+-])?(\d*)(?:\.(\d*))?\s*$/.exec(amount);
  if (!m || (!m[2] && !m[3])) throw new TypeError(`not a decimal amount: ${JSON.stringify(amount)}`);
  const frac = (m[3] ?? "").padEnd(3, "0");
  let cents = BigInt(m[2] || "0") * 100n + BigInt(frac.slice(0, 2));
  if (frac[2] >= "5") cents += 1n;
  const n = Number(m[1] === "-" ? -cents : cents);
  return n === 0 ? 0 : n; // no -0
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Query = Record<string, string | number | undefined>;
interface RequestOptions { query?: Query; body?: unknown; /** resend after 5xx/network errors */ idempotent: boolean }

export class DigitalOceanClient {
  readonly baseUrl: string;
  /** From the last response's ratelimit-* headers. */
  rateLimit?: RateLimit;
  private readonly token: string;
  private readonly maxRetries: number;
  private readonly baseBackoffMs: number;
  private readonly timeoutMs: number;
  private readonly maxRateLimitWaitMs: number;

  constructor(opts: DigitalOceanClientOptions) {
    this.baseUrl = opts.baseUrl.replace(/\/+$/, "").replace(/\/v2$/, "");
    this.token = opts.token;
    this.maxRetries = opts.maxRetries ?? 3;
    this.baseBackoffMs = opts.baseBackoffMs ?? 500;
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.maxRateLimitWaitMs = opts.maxRateLimitWaitMs ?? 60_000;
  }

  // --- droplets

  async createDroplet(input: CreateDropletInput): Promise<CreateDropletResult> {
    if (typeof input.name !== "string" || !isValidDropletName(input.name))
      throw new DigitalOceanError(422, "unprocessable_entity", `Invalid droplet name ${JSON.stringify(input.name)}: only hostname characters (a-z, A-Z, 0-9, . and -) are allowed.`);
    return this.request<CreateDropletResult>("POST", "/v2/droplets", { body: input, idempotent: false });
  }

  async getDroplet(id: number): Promise<Droplet> {
    return (await this.request<{ droplet: Droplet }>("GET", `/v2/droplets/${id}`, { idempotent: true })).droplet;
  }

  listDroplets(opts: { perPage?: number } = {}): Promise<Droplet[]> {
    return this.paginate<Droplet>("/v2/droplets", "droplets", {}, opts.perPage);
  }

  listDropletsByTag(tag: string, opts: { perPage?: number } = {}): Promise<Droplet[]> {
    return this.paginate<Droplet>("/v2/droplets", "droplets", { tag_name: tag }, opts.perPage);
  }

  /** true if deleted now, false if it was already gone (404). */
  async deleteDroplet(id: number): Promise<boolean> {
    return this.deleteGone(`/v2/droplets/${id}`);
  }

  async deleteDropletsByTag(tag: string): Promise<void> {
    await this.request("DELETE", "/v2/droplets", { query: { tag_name: tag }, idempotent: true });
  }

  /**
   * Starts an action on a droplet (DO answers 201 with it `in-progress`); poll getAction until it is `completed`
   * or `errored`. Never resent after a 5xx or a lost response: a power or resize action that may have been
   * accepted is settled by reading the droplet (its status or size), not by asking twice.
   */
  async dropletAction(id: number, input: DropletActionInput): Promise<Action> {
    return (await this.request<{ action: Action }>("POST", `/v2/droplets/${id}/actions`, { body: input, idempotent: false })).action;
  }

  /** The droplet's actions, newest first (DO's order): how a caller finds the action a lost response started. */
  listDropletActions(id: number, opts: { perPage?: number } = {}): Promise<Action[]> {
    return this.paginate<Action>(`/v2/droplets/${id}/actions`, "actions", {}, opts.perPage);
  }

  async getAction(id: number): Promise<Action> {
    return (await this.request<{ action: Action }>("GET", `/v2/actions/${id}`, { idempotent: true })).action;
  }

  // --- domain records

  /** `name` is the fully qualified name (DO's filter), e.g. "app.acme.example.com". */
  listDomainRecords(domain: string, filter: { type?: string; name?: string; perPage?: number } = {}): Promise<DomainRecord[]> {
    return this.paginate<DomainRecord>(`/v2/domains/${encodeURIComponent(domain)}/records`, "domain_records",
      { type: filter.type, name: filter.name }, filter.perPage);
  }

  async getDomainRecord(domain: string, id: number): Promise<DomainRecord> {
    return (await this.request<{ domain_record: DomainRecord }>("GET", `/v2/domains/${encodeURIComponent(domain)}/records/${id}`, { idempotent: true })).domain_record;
  }

  async createDomainRecord(domain: string, input: DomainRecordInput): Promise<DomainRecord> {
    return (await this.request<{ domain_record: DomainRecord }>("POST", `/v2/domains/${encodeURIComponent(domain)}/records`,
      { body: input, idempotent: false })).domain_record;
  }

  async updateDomainRecord(domain: string, id: number, patch: Partial<DomainRecordInput>): Promise<DomainRecord> {
    return (await this.request<{ domain_record: DomainRecord }>("PATCH", `/v2/domains/${encodeURIComponent(domain)}/records/${id}`,
      { body: patch, idempotent: true })).domain_record;
  }

  /** true if deleted now, false if it was already gone (404). */
  deleteDomainRecord(domain: string, id: number): Promise<boolean> {
    return this.deleteGone(`/v2/domains/${encodeURIComponent(domain)}/records/${id}`);
  }

  // --- account

  listSizes(): Promise<Size[]> {
    return this.paginate<Size>("/v2/sizes", "sizes", {}, 200);
  }

  listRegions(): Promise<Region[]> {
    return this.paginate<Region>("/v2/regions", "regions", {}, 200);
  }

  getBalance(): Promise<Balance> {
    return this.request<Balance>("GET", "/v2/customers/my/balance", { idempotent: true });
  }

  async getAccount(): Promise<Account> {
    return (await this.request<{ account: Account }>("GET", "/v2/account", { idempotent: true })).account;
  }

  // --- transport

  private async deleteGone(path: string): Promise<boolean> {
    try {
      await this.request("DELETE", path, { idempotent: true });
      return true;
    } catch (e) {
      if (e instanceof DigitalOceanError && e.status === 404) return false;
      throw e;
    }
  }

  private async paginate<T>(path: string, key: string, query: Query, perPage = 200): Promise<T[]> {
    const items: T[] = [];
    let next: string | undefined = this.url(path, { ...query, page: 1, per_page: perPage });
    const seen = new Set<string>();
    while (next && !seen.has(next)) {
      seen.add(next);
      const page: Record<string, unknown> & { links?: PageLinks } = await this.request("GET", next, { idempotent: true });
      items.push(...((page[key] as T[]) ?? []));
      const link = page.links?.pages?.next;
      // Follow DO's absolute link on our own base URL, so a proxy or a simulator on 0.0.0.0 still works.
      next = link ? this.url(new URL(link).pathname.replace(/^.*?(?=\/v2\/)/, "") + new URL(link).search) : undefined;
    }
    return items;
  }

  private url(path: string, query: Query = {}): string {
    const u = new URL(path.startsWith("http") ? path : this.baseUrl + path);
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== "") u.searchParams.set(k, String(v));
    return u.toString();
  }

  private backoff(attempt: number): number {
    return this.baseBackoffMs * 2 ** attempt + Math.random() * this.baseBackoffMs;
  }

  private async request<T = unknown>(method: string, path: string, opts: RequestOptions): Promise<T> {
    const url = this.url(path, opts.query);
    for (let attempt = 0; ; attempt++) {
      const canRetry = attempt < this.maxRetries;
      let res: Response;
      try {
        res = await fetch(url, {
          method,
          headers: {
            authorization: `Bearer ${this.token}`,
            accept: "application/json",
            ...(opts.body !== undefined ? { "content-type": "application/json" } : {}),
          },
          body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
      } catch (e) {
        const err = new DigitalOceanError(0, "network_error", describe(e), undefined, { cause: e, request: `${method} ${path}` });
        if (opts.idempotent && canRetry) { await sleep(this.backoff(attempt)); continue; }
        throw err;
      }
      this.readRateLimit(res.headers);

      let text: string;
      try {
        text = await res.text();
      } catch (e) {
        // The answer was cut off mid-body: as uncertain as no answer at all.
        if (opts.idempotent && canRetry) { await sleep(this.backoff(attempt)); continue; }
        throw new DigitalOceanError(0, "network_error", describe(e), undefined, { cause: e, request: `${method} ${path}` });
      }
      if (res.ok) return (text ? JSON.parse(text) : undefined) as T;

      const err = toError(res.status, text, method, path);
      if (res.status === 429 && canRetry) {
        const wait = this.rateLimitWait(res.headers, attempt);
        if (wait <= this.maxRateLimitWaitMs) { await sleep(wait); continue; }
      }
      if (res.status >= 500 && opts.idempotent && canRetry) { await sleep(this.backoff(attempt)); continue; }
      throw err;
    }
  }

  private rateLimitWait(h: Headers, attempt: number): number {
    const retryAfter = h.get("retry-after");
    if (retryAfter !== null) {
      const secs = Number(retryAfter);
      if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
      const date = Date.parse(retryAfter);
      if (!Number.isNaN(date)) return Math.max(0, date - Date.now());
    }
    const reset = Number(h.get("ratelimit-reset"));
    if (h.get("ratelimit-reset") && Number.isFinite(reset)) return Math.max(0, reset * 1000 - Date.now());
    return this.backoff(attempt);
  }

  private readRateLimit(h: Headers) {
    const limit = h.get("ratelimit-limit");
    const remaining = h.get("ratelimit-remaining");
    const reset = h.get("ratelimit-reset");
    if (limit !== null && remaining !== null && reset !== null)
      this.rateLimit = { limit: Number(limit), remaining: Number(remaining), reset: Number(reset) };
  }
}

function toError(status: number, text: string, method: string, path: string): DigitalOceanError {
  let body: { id?: unknown; message?: unknown; request_id?: unknown } = {};
  try {
    body = JSON.parse(text) ?? {};
  } catch {
    // a proxy's HTML error page: keep a snippet as the message
  }
  const id = typeof body.id === "string" ? body.id : status >= 500 ? "server_error" : `http_${status}`;
  const message = typeof body.message === "string" ? body.message : text.slice(0, 200) || `HTTP ${status}`;
  const requestId = typeof body.request_id === "string" ? body.request_id : undefined;
  return new DigitalOceanError(status, id, message, requestId, { request: `${method} ${path}` });
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: unknown }).cause;
    return cause instanceof Error ? `${e.message} (${cause.message})` : e.message;
  }
  return String(e);
}
