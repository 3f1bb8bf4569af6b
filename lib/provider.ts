import { Errors } from "moleculer";
import { DigitalOceanClient, DigitalOceanError, monthlyCostCents, type Size } from "./digitalocean";

/** Service settings that override the DigitalOcean environment (tests point them at a simulator). */
export interface ProviderSettings {
  doApiUrl?: string;
  doToken?: string;
  doMaxRetries?: number;
  doBackoffMs?: number;
}

/**
 * The DigitalOcean client a service uses: settings first, then DO_API_URL / DO_TOKEN, then the embedded
 * simulator's default address. Read when the service is created, not when the module loads, so a starter that
 * sets DO_API_URL after importing the services is honoured.
 */
export function doClientFrom(settings: ProviderSettings, env: NodeJS.ProcessEnv = process.env): DigitalOceanClient {
  return new DigitalOceanClient({
    baseUrl: settings.doApiUrl ?? env.DO_API_URL ?? `http://127.0.0.1:${env.SIM_PORT || 3001}`,
    token: settings.doToken ?? env.DO_TOKEN ?? "dev-token",
    maxRetries: settings.doMaxRetries,
    baseBackoffMs: settings.doBackoffMs,
  });
}

/**
 * A provider failure as a Moleculer error: transient ones (network, 429, 5xx) are 503 PROVIDER_UNAVAILABLE and
 * retryable, permanent ones 502 PROVIDER_ERROR. `data` carries DO's status, error id and request id.
 */
export function providerError(err: unknown): Error {
  if (!(err instanceof DigitalOceanError)) return err as Error;
  const data = { provider: "digitalocean", status: err.status, id: err.id, request_id: err.requestId ?? null, request: err.request ?? null, transient: err.transient };
  const message = `DigitalOcean: ${err.message}`;
  return err.transient
    ? new Errors.MoleculerRetryableError(message, 503, "PROVIDER_UNAVAILABLE", data)
    : new Errors.MoleculerError(message, 502, "PROVIDER_ERROR", data);
}

/** Runs a provider call, turning its failure into a Moleculer error. */
export async function provider<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw providerError(err);
  }
}

/** How long the provider's catalog (sizes, regions) is reused: INVENTORY_CATALOG_TTL_MS, default 5 minutes. */
export function catalogTtlMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.INVENTORY_CATALOG_TTL_MS);
  return env.INVENTORY_CATALOG_TTL_MS !== undefined && env.INVENTORY_CATALOG_TTL_MS !== "" && Number.isFinite(v) && v >= 0 ? v : 5 * 60_000;
}

/**
 * One value fetched at most once per `ttlMs`; concurrent callers share one fetch, and a failed fetch is not
 * cached (the next call tries again). `now` is injectable so expiry can be tested without waiting.
 */
export class TtlCache<T> {
  private cached?: { at: number; value: T };
  private inflight?: Promise<T>;

  constructor(private readonly load: () => Promise<T>, private readonly ttlMs: number, private readonly now: () => number = Date.now) {}

  async get(): Promise<T> {
    if (this.cached && this.now() - this.cached.at < this.ttlMs) return this.cached.value;
    this.inflight ??= this.load()
      .then((value) => {
        this.cached = { at: this.now(), value };
        return value;
      })
      .finally(() => {
        this.inflight = undefined;
      });
    return this.inflight;
  }

  /** Forget the cached value (the next get fetches). */
  clear(): void {
    this.cached = undefined;
  }
}

/** The provider's size list, fetched at most once per `ttlMs` (sizes and prices change rarely). */
export class SizeCache {
  private readonly cache: TtlCache<{ list: Size[]; bySlug: Map<string, Size> }>;

  constructor(client: DigitalOceanClient, ttlMs = 5 * 60_000, now: () => number = Date.now) {
    this.cache = new TtlCache(async () => {
      const list = await client.listSizes();
      return { list, bySlug: new Map(list.map((s) => [s.slug, s])) };
    }, ttlMs, now);
  }

  async list(): Promise<Size[]> {
    return (await this.cache.get()).list;
  }

  async get(slug: string): Promise<Size | undefined> {
    return (await this.cache.get()).bySlug.get(slug);
  }

  /** Monthly price of a size in cents, or undefined for a size the provider does not list. */
  async monthlyCents(slug: string): Promise<number | undefined> {
    const size = await this.get(slug);
    return size ? monthlyCostCents(size) : undefined;
  }
}
