/** lib/digitalocean.ts against the simulator over real HTTP, including its fault injection. */
import { startSimulator, type Simulator } from "../sim/simulator";
import {
  DigitalOceanClient, DigitalOceanError, dollarsToCents, monthlyCostCents, publicIPv4, type CreateDropletInput,
} from "../lib/digitalocean";

const TOKEN = "do-test-token";
const DOMAIN = "example.com";
let sim: Simulator;
let client: DigitalOceanClient;

beforeAll(async () => {
  sim = await startSimulator({ port: 0, token: TOKEN, activeAfterMs: 150 });
  client = new DigitalOceanClient({ baseUrl: sim.url, token: TOKEN, baseBackoffMs: 10 });
});
afterAll(() => sim.close());
beforeEach(() => sim.reset());

async function control(method: string, path: string, body?: unknown) {
  const res = await fetch(`${sim.url}/v2/_sim/${path}`, {
    method, body: body === undefined ? undefined : JSON.stringify(body), headers: { "content-type": "application/json" },
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}
const state = async () => (await control("GET", "state")).body;
const fault = async (f: Record<string, unknown>) => {
  const r = await control("POST", "faults", f);
  expect(r.status).toBe(201);
  return r.body;
};

/** Polls until fn returns a value, or fails at the deadline. */
async function until<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("condition not met before the deadline");
    await new Promise((r) => setTimeout(r, 20));
  }
}

const input = (name: string, tag: string): CreateDropletInput =>
  ({ name, region: "nyc3", size: "s-1vcpu-1gb", image: "ubuntu-24-04-x64", tags: [tag] });

async function rejection(p: Promise<unknown>): Promise<DigitalOceanError> {
  const e = await p.then(() => { throw new Error("expected a rejection"); }, (err: unknown) => err);
  expect(e).toBeInstanceOf(DigitalOceanError);
  return e as DigitalOceanError;
}

describe("droplets", () => {
  it("creates a droplet that turns active and gets a public IPv4, then deletes it", async () => {
    const created = await client.createDroplet({ ...input("web-1.acme", "saga:s1"), user_data: "#cloud-config\n" });
    const d = created.droplet;
    expect(d).toMatchObject({ name: "web-1.acme", status: "new", size_slug: "s-1vcpu-1gb", tags: ["saga:s1"],
      region: { slug: "nyc3" }, memory: 1024, vcpus: 1, disk: 25 });
    expect(Number.isInteger(d.id)).toBe(true);
    expect(publicIPv4(d)).toBeUndefined(); // no addresses until active, as on DO
    expect(created.links.actions[0]).toMatchObject({ rel: "create" });

    const active = await until(async () => { const x = await client.getDroplet(d.id); return x.status === "active" && x; });
    const ip = publicIPv4(active)!;
    expect(ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    expect(active.networks.v4.find((n) => n.type === "private")!.ip_address).not.toBe(ip);

    expect((await client.listDroplets()).map((x) => x.id)).toEqual([d.id]);
    expect(await client.deleteDroplet(d.id)).toBe(true);
    expect(await client.deleteDroplet(d.id)).toBe(false);
    const e = await rejection(client.getDroplet(d.id));
    expect(e).toMatchObject({ status: 404, id: "not_found", message: "The resource you were accessing could not be found.", transient: false });
    expect(e.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("rejects an invalid name with a 422 before sending anything", async () => {
    const e = await rejection(client.createDroplet(input("web_1", "t")));
    expect(e).toMatchObject({ status: 422, id: "unprocessable_entity", transient: false });
    expect((await state()).requests["droplets.create"]).toBeUndefined();
  });

  it("carries the simulator's 422 body for a droplet without a region", async () => {
    const { region: _, ...noRegion } = input("web-2", "t");
    const e = await rejection(client.createDroplet(noRegion as CreateDropletInput));
    expect(e).toMatchObject({ status: 422, id: "unprocessable_entity", message: "Region is required.", transient: false });
    expect(e.requestId).toBeDefined();
    expect((await state()).droplets).toHaveLength(0);
  });

  it("lists by tag across pages", async () => {
    for (let i = 0; i < 27; i++) await client.createDroplet(input(`p-${i}`, "saga:paged"));
    await client.createDroplet(input("other-1", "saga:other"));

    const tagged = await client.listDropletsByTag("saga:paged", { perPage: 5 });
    expect(tagged).toHaveLength(27);
    expect(new Set(tagged.map((d) => d.name))).toEqual(new Set(Array.from({ length: 27 }, (_, i) => `p-${i}`)));
    expect((await state()).requests["droplets.list"]).toBe(6);
    expect(await client.listDroplets({ perPage: 4 })).toHaveLength(28);

    const page = (await (await fetch(`${sim.url}/v2/droplets?tag_name=saga:paged&page=2&per_page=5`,
      { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { droplets: unknown[]; meta: unknown; links: { pages: unknown } };
    expect(page.droplets).toHaveLength(5);
    expect(page.meta).toEqual({ total: 27 });
    expect(page.links.pages).toEqual({
      first: `${sim.url}/v2/droplets?tag_name=saga%3Apaged&page=1&per_page=5`,
      prev: `${sim.url}/v2/droplets?tag_name=saga%3Apaged&page=1&per_page=5`,
      next: `${sim.url}/v2/droplets?tag_name=saga%3Apaged&page=3&per_page=5`,
      last: `${sim.url}/v2/droplets?tag_name=saga%3Apaged&page=6&per_page=5`,
    });
  });

  it("deletes droplets by tag", async () => {
    await client.createDroplet(input("a-1", "saga:a"));
    await client.createDroplet(input("a-2", "saga:a"));
    const keep = (await client.createDroplet(input("b-1", "saga:b"))).droplet;
    await client.deleteDropletsByTag("saga:a");
    expect(await client.listDropletsByTag("saga:a")).toEqual([]);
    expect((await client.listDroplets()).map((d) => d.id)).toEqual([keep.id]);
  });
});

describe("domain records", () => {
  it("creates, filters by type and fully qualified name, updates and deletes", async () => {
    const a = await client.createDomainRecord(DOMAIN, { type: "A", name: "shop.acme", data: "203.0.113.10", ttl: 300 });
    expect(a).toMatchObject({ type: "A", name: "shop.acme", data: "203.0.113.10", ttl: 300, priority: null });
    await client.createDomainRecord(DOMAIN, { type: "TXT", name: "shop.acme", data: "v=spf1 -all" });
    await client.createDomainRecord(DOMAIN, { type: "A", name: "blog.acme", data: "203.0.113.11" });

    const found = await client.listDomainRecords(DOMAIN, { type: "A", name: "shop.acme.example.com" });
    expect(found).toEqual([a]);
    expect(await client.listDomainRecords(DOMAIN, { type: "A" })).toHaveLength(2);
    expect(await client.listDomainRecords("other.example.org")).toEqual([]);

    const updated = await client.updateDomainRecord(DOMAIN, a.id, { data: "203.0.113.99" });
    expect(updated).toEqual({ ...a, data: "203.0.113.99" });
    expect(await client.getDomainRecord(DOMAIN, a.id)).toEqual(updated);

    expect(await client.deleteDomainRecord(DOMAIN, a.id)).toBe(true);
    expect(await client.deleteDomainRecord(DOMAIN, a.id)).toBe(false);
    expect(await client.listDomainRecords(DOMAIN, { name: "shop.acme.example.com", type: "A" })).toEqual([]);
    expect((await state()).domain_records.map((r: { name: string; domain: string }) => [r.domain, r.name]).sort())
      .toEqual([[DOMAIN, "blog.acme"], [DOMAIN, "shop.acme"]]);
  });

  it("paginates records and answers 422 and 404 with DO's body", async () => {
    for (let i = 0; i < 23; i++) await client.createDomainRecord(DOMAIN, { type: "A", name: `h${i}`, data: "203.0.113.1" });
    expect(await client.listDomainRecords(DOMAIN, { perPage: 10 })).toHaveLength(23);

    const bad = await rejection(client.createDomainRecord(DOMAIN, { type: "A", name: "x" } as never));
    expect(bad).toMatchObject({ status: 422, id: "unprocessable_entity", message: "Data is required." });
    const missing = await rejection(client.updateDomainRecord(DOMAIN, 1, { data: "203.0.113.2" }));
    expect(missing).toMatchObject({ status: 404, id: "not_found" });
  });
});

describe("sizes, balance, account", () => {
  it("lists sizes with monthly prices", async () => {
    const sizes = await client.listSizes();
    const cents = Object.fromEntries(sizes.map((s) => [s.slug, monthlyCostCents(s)]));
    expect(cents).toMatchObject({ "s-1vcpu-1gb": 600, "s-1vcpu-2gb": 1200, "s-2vcpu-4gb": 2400 });
  });

  it("reads the balance as decimal strings", async () => {
    await client.createDroplet(input("billed-1", "t"));
    const b = await client.getBalance();
    for (const k of ["month_to_date_balance", "account_balance", "month_to_date_usage"] as const) expect(b[k]).toMatch(/^-?\d+\.\d{2}$/);
    expect(dollarsToCents(b.month_to_date_usage)).toBeGreaterThan(0); // a droplet bills its first hour at once
    expect(Date.parse(b.generated_at)).not.toBeNaN();
    expect((await client.getAccount()).status).toBe("active");
  });

  it("converts dollar strings to cents exactly", () => {
    expect(dollarsToCents("12.34")).toBe(1234);
    expect(dollarsToCents("0.29")).toBe(29); // 0.29 * 100 = 28.999999999999996 in floats
    expect(dollarsToCents("1.15")).toBe(115);
    expect(dollarsToCents("5")).toBe(500);
    expect(dollarsToCents("0.1")).toBe(10);
    expect(dollarsToCents("-3.07")).toBe(-307);
    expect(dollarsToCents("1.005")).toBe(101);
    expect(dollarsToCents("-0.00")).toBe(0);
    expect(dollarsToCents("123456789.99")).toBe(12345678999);
    expect(() => dollarsToCents("12,34")).toThrow(TypeError);
    expect(() => dollarsToCents("")).toThrow(TypeError);
  });
});

describe("errors, retries and rate limits", () => {
  it("answers 401 with DO's body for a wrong token and for no token", async () => {
    const wrong = new DigitalOceanClient({ baseUrl: sim.url, token: "nope", baseBackoffMs: 10 });
    const e = await rejection(wrong.getAccount());
    expect(e).toMatchObject({ status: 401, id: "unauthorized", message: "Unable to authenticate you", transient: false });
    expect((await fetch(`${sim.url}/v2/account`)).status).toBe(401);
  });

  it("waits out a 429 with retry-after on create and resends it", async () => {
    await fault({ operation: "droplets.create", mode: "error", status: 429 });
    const started = Date.now();
    const { droplet } = await client.createDroplet(input("limited-1", "saga:429"));
    expect(Date.now() - started).toBeGreaterThanOrEqual(950);
    const s = await state();
    expect(s.requests["droplets.create"]).toBe(2);
    expect(s.droplets.map((d: { id: number }) => d.id)).toEqual([droplet.id]);
    expect(s.faults).toEqual([]);
  });

  it("retries reads on 5xx and gives up after maxRetries", async () => {
    const { droplet } = await client.createDroplet(input("flaky-1", "t"));
    await fault({ operation: "droplets.get", mode: "error", status: 503, count: 2 });
    expect((await client.getDroplet(droplet.id)).id).toBe(droplet.id);
    expect((await state()).requests["droplets.get"]).toBe(3);

    await fault({ operation: "droplets.get", mode: "error", count: -1 });
    const e = await rejection(client.getDroplet(droplet.id));
    expect(e).toMatchObject({ status: 500, id: "server_error", transient: true });
    expect((await state()).requests["droplets.get"]).toBe(3 + 4);
    expect((await control("DELETE", "faults")).status).toBe(204);
    expect((await client.getDroplet(droplet.id)).id).toBe(droplet.id);
  });

  it("never resends a create after a 5xx", async () => {
    await fault({ operation: "droplets.create", mode: "error", status: 500 });
    const e = await rejection(client.createDroplet(input("once-1", "saga:500")));
    expect(e).toMatchObject({ status: 500, id: "server_error", transient: true });
    const s = await state();
    expect(s.requests["droplets.create"]).toBe(1);
    expect(s.droplets).toEqual([]);
  });

  it("a lost create response is a transient network error; the droplet is found by its tag", async () => {
    await fault({ operation: "droplets.create", mode: "lose_response" });
    const e = await rejection(client.createDroplet(input("lost-1", "saga:lost")));
    expect(e).toMatchObject({ status: 0, id: "network_error", transient: true });
    expect((await state()).requests["droplets.create"]).toBe(1);
    const found = await client.listDropletsByTag("saga:lost");
    expect(found.map((d) => d.name)).toEqual(["lost-1"]);
  });

  it("a lost read response is retried", async () => {
    const { droplet } = await client.createDroplet(input("lostread-1", "t"));
    await fault({ operation: "droplets.get", mode: "lose_response" });
    expect((await client.getDroplet(droplet.id)).id).toBe(droplet.id);
    expect((await state()).requests["droplets.get"]).toBe(2);
  });

  it("never_active keeps a created droplet new", async () => {
    await fault({ operation: "droplets.create", mode: "never_active" });
    const stuck = (await client.createDroplet(input("stuck-1", "t"))).droplet;
    const normal = (await client.createDroplet(input("normal-1", "t"))).droplet;
    // created after the stuck one, so once it is active the stuck one is past activeAfterMs too
    await until(async () => (await client.getDroplet(normal.id)).status === "active");
    const d = await client.getDroplet(stuck.id);
    expect(d.status).toBe("new");
    expect(publicIPv4(d)).toBeUndefined();
  });

  it("delay slows a call down, and a timeout on a read is retried", async () => {
    await fault({ operation: "droplets.list", mode: "delay", delay_ms: 300 });
    const started = Date.now();
    expect(await client.listDroplets()).toEqual([]);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);

    const impatient = new DigitalOceanClient({ baseUrl: sim.url, token: TOKEN, baseBackoffMs: 10, timeoutMs: 150 });
    await fault({ operation: "domains.records.list", mode: "delay", delay_ms: 1000 });
    expect(await impatient.listDomainRecords(DOMAIN)).toEqual([]);
    expect((await state()).requests["domains.records.list"]).toBe(2);
  });

  it("a dead endpoint is a transient network error", async () => {
    const dead = new DigitalOceanClient({ baseUrl: "http://127.0.0.1:1", token: TOKEN, baseBackoffMs: 1, maxRetries: 1 });
    expect(await rejection(dead.listSizes())).toMatchObject({ status: 0, id: "network_error", transient: true });
  });

  it("reads ratelimit headers and waits out an exhausted window", async () => {
    await client.getAccount();
    expect(client.rateLimit).toMatchObject({ limit: 5000 });
    expect(client.rateLimit!.remaining).toBeLessThan(5000);
    expect(client.rateLimit!.reset).toBeGreaterThan(Date.now() / 1000);

    const tight = await startSimulator({ port: 0, token: TOKEN, rateLimit: 2, rateLimitWindowMs: 1000 });
    try {
      const c = new DigitalOceanClient({ baseUrl: tight.url, token: TOKEN, baseBackoffMs: 10 });
      await c.getAccount();
      await c.getAccount();
      expect(c.rateLimit).toMatchObject({ limit: 2, remaining: 0 });
      const raw = await fetch(`${tight.url}/v2/account`, { headers: { authorization: `Bearer ${TOKEN}` } });
      expect(raw.status).toBe(429);
      expect(Number(raw.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect(await raw.json()).toMatchObject({ id: "too_many_requests" });
      expect((await c.getAccount()).status).toBe("active");
      expect(c.rateLimit!.limit).toBe(2);
    } finally {
      await tight.close();
    }
  });
});

describe("simulator control API", () => {
  it("validates fault bodies and clears faults", async () => {
    expect((await control("POST", "faults", { operation: "droplets.explode", mode: "error" })).status).toBe(422);
    expect((await control("POST", "faults", { operation: "droplets.get", mode: "melt" })).status).toBe(422);
    expect((await control("POST", "faults", { operation: "droplets.get", mode: "never_active" })).status).toBe(422);
    expect((await control("POST", "faults", { operation: "droplets.get", mode: "error", count: 0 })).status).toBe(422);
    expect((await control("POST", "faults", { operation: "droplets.get", mode: "delay" })).status).toBe(422);
    const f = await fault({ operation: "domains.records.update", mode: "error", status: 502, count: -1 });
    expect(f).toMatchObject({ operation: "domains.records.update", mode: "error", status: 502, count: -1 });
    expect((await state()).faults).toHaveLength(1);
    expect((await control("DELETE", "faults")).status).toBe(204);
    expect((await state()).faults).toEqual([]);
  });

  it("plants, changes and removes droplets behind the API's back", async () => {
    const planted = await control("POST", "droplets", { name: "drift-1", tags: ["saga:drift"], ipv4: "198.51.100.7" });
    expect(planted.status).toBe(201);
    const id = planted.body.droplet.id;
    const d = await client.getDroplet(id);
    expect(d).toMatchObject({ status: "active", size_slug: "s-1vcpu-1gb", tags: ["saga:drift"] });
    expect(publicIPv4(d)).toBe("198.51.100.7");

    expect((await control("PATCH", `droplets/${id}`, { status: "off", size: "s-2vcpu-4gb", ipv4: "198.51.100.8" })).status).toBe(200);
    const changed = await client.getDroplet(id);
    expect(changed).toMatchObject({ status: "off", size_slug: "s-2vcpu-4gb", memory: 4096 });
    expect(publicIPv4(changed)).toBe("198.51.100.8");

    expect((await control("DELETE", `droplets/${id}`)).status).toBe(204);
    expect(await rejection(client.getDroplet(id))).toMatchObject({ status: 404 });
    expect((await control("DELETE", `droplets/${id}`)).status).toBe(404);
  });

  it("reset clears droplets, records, faults and counters", async () => {
    await client.createDroplet(input("r-1", "t"));
    await client.createDomainRecord(DOMAIN, { type: "A", name: "r", data: "203.0.113.1" });
    await fault({ operation: "droplets.get", mode: "error", count: -1 });
    expect([204, 200]).toContain((await control("POST", "reset")).status);
    expect(await state()).toEqual({ droplets: [], domain_records: [], faults: [], requests: {} });
  });
});
