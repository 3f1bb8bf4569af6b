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

describe("droplet actions", () => {
  /** A droplet that is already active (planted), so actions are accepted at once. */
  async function activeDroplet(extra: Record<string, unknown> = {}) {
    const r = await control("POST", "droplets", { name: `act-${Math.random().toString(36).slice(2, 8)}`, region: "nyc3", tags: ["saga:act"], ...extra });
    expect(r.status).toBe(201);
    return r.body.droplet.id as number;
  }
  const done = (id: number) => until(async () => { const a = await client.getAction(id); return a.status !== "in-progress" && a; });

  it("powers a droplet off and on: 201 in-progress, then completed, and the status follows", async () => {
    const id = await activeDroplet();
    const off = await client.dropletAction(id, { type: "power_off" });
    expect(off).toMatchObject({ status: "in-progress", type: "power_off", resource_id: id, resource_type: "droplet", region_slug: "nyc3", completed_at: null });
    expect(Number.isInteger(off.id)).toBe(true);
    expect(Date.parse(off.started_at)).not.toBeNaN();
    expect(await client.getDroplet(id)).toMatchObject({ status: "active", locked: true }); // not off until the action ends
    const ended = await done(off.id);
    expect(ended).toMatchObject({ id: off.id, status: "completed", type: "power_off" });
    expect(Date.parse(ended.completed_at!)).toBeGreaterThanOrEqual(Date.parse(off.started_at));
    expect(await client.getDroplet(id)).toMatchObject({ status: "off", locked: false });
    expect((await state()).droplets.find((d: any) => d.id === id).status).toBe("off");

    const on = await client.dropletAction(id, { type: "power_on" });
    expect((await done(on.id)).status).toBe("completed");
    expect((await client.getDroplet(id)).status).toBe("active");

    const shut = await client.dropletAction(id, { type: "shutdown" });
    expect((await done(shut.id)).status).toBe("completed");
    expect((await client.getDroplet(id)).status).toBe("off");
  });

  it("power_on of an active droplet (and power_off of an off one) is accepted and completes, changing nothing", async () => {
    const id = await activeDroplet();
    const a = await client.dropletAction(id, { type: "power_on" });
    expect((await done(a.id)).status).toBe("completed");
    expect((await client.getDroplet(id)).status).toBe("active");
    const off = await activeDroplet({ status: "off" });
    const b = await client.dropletAction(off, { type: "power_off" });
    expect((await done(b.id)).status).toBe("completed");
    expect((await client.getDroplet(off)).status).toBe("off");
  });

  it("resizes an off droplet: size_slug and price change; the disk only with disk: true", async () => {
    const id = await activeDroplet({ status: "off", size: "s-1vcpu-1gb" });
    const a = await client.dropletAction(id, { type: "resize", size: "s-2vcpu-2gb" });
    expect(a).toMatchObject({ type: "resize", status: "in-progress" });
    expect((await client.getDroplet(id)).size_slug).toBe("s-1vcpu-1gb");
    expect((await done(a.id)).status).toBe("completed");
    const d = await client.getDroplet(id);
    expect(d).toMatchObject({ status: "off", size_slug: "s-2vcpu-2gb", memory: 2048, vcpus: 2, disk: 25, size: { price_monthly: 18 } });

    const b = await client.dropletAction(id, { type: "resize", size: "s-2vcpu-4gb", disk: true });
    expect((await done(b.id)).status).toBe("completed");
    expect(await client.getDroplet(id)).toMatchObject({ size_slug: "s-2vcpu-4gb", disk: 80 });
    // The disk never shrinks: a size with a smaller disk is refused now.
    const e = await rejection(client.dropletAction(id, { type: "resize", size: "s-2vcpu-2gb" }));
    expect(e).toMatchObject({ status: 422, id: "unprocessable_entity", message: "This size is not available because it has a smaller disk." });
    expect((await state()).droplets.find((x: any) => x.id === id).size_slug).toBe("s-2vcpu-4gb");
  });

  it("refuses with DO's 422 body: a running droplet's resize, an unknown size or type, a droplet with a pending action", async () => {
    const id = await activeDroplet();
    const running = await rejection(client.dropletAction(id, { type: "resize", size: "s-2vcpu-2gb" }));
    expect(running).toMatchObject({ status: 422, id: "unprocessable_entity", message: "Droplet must be powered off before it can be resized.", transient: false });
    expect(running.requestId).toMatch(/^[0-9a-f-]{36}$/);
    const off = await activeDroplet({ status: "off" });
    expect(await rejection(client.dropletAction(off, { type: "resize", size: "s-99vcpu-1tb" })))
      .toMatchObject({ status: 422, id: "unprocessable_entity", message: "You specified an invalid size for Droplet resize." });
    expect(await rejection(client.dropletAction(off, { type: "reboot_twice" } as never))).toMatchObject({ status: 422 });
    expect(await rejection(client.dropletAction(off, { type: "resize" } as never))).toMatchObject({ status: 422, message: "Size is required." });

    await client.dropletAction(id, { type: "power_off" });
    expect(await rejection(client.dropletAction(id, { type: "power_on" })))
      .toMatchObject({ status: 422, message: "Droplet already has a pending event." });
    // A droplet still being created is locked the same way.
    const booting = (await client.createDroplet(input("booting-1", "t"))).droplet;
    expect(await rejection(client.dropletAction(booting.id, { type: "power_off" }))).toMatchObject({ status: 422 });
    expect(await rejection(client.dropletAction(999, { type: "power_off" }))).toMatchObject({ status: 404, id: "not_found" });
    expect(await rejection(client.getAction(999))).toMatchObject({ status: 404, id: "not_found" });
    expect((await state()).droplets.find((x: any) => x.id === off).size_slug).toBe("s-1vcpu-1gb");
  });

  it("the create action of a droplet is readable and completes when the droplet is active", async () => {
    const created = await client.createDroplet(input("withaction-1", "t"));
    const actionId = created.links.actions[0].id;
    expect(await client.getAction(actionId)).toMatchObject({ type: "create", status: "in-progress", resource_id: created.droplet.id });
    expect((await done(actionId)).status).toBe("completed");
    expect((await client.getDroplet(created.droplet.id)).status).toBe("active");
  });

  it("lists a droplet's actions newest first, create action included", async () => {
    const id = await activeDroplet();
    const off = await client.dropletAction(id, { type: "power_off" });
    await done(off.id);
    const on = await client.dropletAction(id, { type: "power_on" });
    const list = await client.listDropletActions(id, { perPage: 1 });
    expect(list.map((x) => [x.id, x.type])).toEqual([[on.id, "power_on"], [off.id, "power_off"], [expect.any(Number), "create"]]);
    expect(list[0].status).toBe("in-progress");
    expect(await rejection(client.listDropletActions(424242))).toMatchObject({ status: 404 });
  });

  it("action_errored: accepted, then errored, the droplet unchanged", async () => {
    const id = await activeDroplet({ status: "off" });
    await fault({ operation: "droplets.actions.create", mode: "action_errored" });
    const a = await client.dropletAction(id, { type: "resize", size: "s-4vcpu-8gb" });
    expect(a.status).toBe("in-progress");
    expect((await done(a.id)).status).toBe("errored");
    expect(await client.getDroplet(id)).toMatchObject({ status: "off", size_slug: "s-1vcpu-1gb", locked: false });
    // Only the one action: the next one completes.
    const b = await client.dropletAction(id, { type: "power_on" });
    expect((await done(b.id)).status).toBe("completed");
    expect((await client.getDroplet(id)).status).toBe("active");
  });

  it("an action create is never resent after a 5xx or a lost response; a 429 is waited out", async () => {
    const id = await activeDroplet();
    await fault({ operation: "droplets.actions.create", mode: "error", status: 503 });
    expect(await rejection(client.dropletAction(id, { type: "power_off" }))).toMatchObject({ status: 503, transient: true });
    expect((await state()).requests["droplets.actions.create"]).toBe(1);
    expect((await client.getDroplet(id)).locked).toBe(false); // the error came before any work

    await fault({ operation: "droplets.actions.create", mode: "lose_response" });
    expect(await rejection(client.dropletAction(id, { type: "power_off" }))).toMatchObject({ status: 0, id: "network_error", transient: true });
    let s = await state();
    expect(s.requests["droplets.actions.create"]).toBe(2);
    // The lost one was carried out: the droplet goes off; settle by reading it, not by asking again.
    expect(s.actions.filter((x: any) => x.resource_id === id)).toHaveLength(1);
    await until(async () => (await client.getDroplet(id)).status === "off");

    await fault({ operation: "droplets.actions.create", mode: "error", status: 429 });
    const on = await client.dropletAction(id, { type: "power_on" });
    s = await state();
    expect(s.requests["droplets.actions.create"]).toBe(4);
    expect((await done(on.id)).status).toBe("completed");
  });

  it("reads of an action are retried on 5xx and lost responses, and can be delayed", async () => {
    const id = await activeDroplet();
    const a = await client.dropletAction(id, { type: "power_off" });
    await fault({ operation: "actions.get", mode: "error", status: 500, count: 2 });
    expect((await client.getAction(a.id)).id).toBe(a.id);
    expect((await state()).requests["actions.get"]).toBe(3);
    await fault({ operation: "actions.get", mode: "lose_response" });
    expect((await client.getAction(a.id)).id).toBe(a.id);
    expect((await state()).requests["actions.get"]).toBe(5);
    await fault({ operation: "actions.get", mode: "delay", delay_ms: 250 });
    const started = Date.now();
    await client.getAction(a.id);
    expect(Date.now() - started).toBeGreaterThanOrEqual(240);
    await fault({ operation: "actions.get", mode: "error", status: 404 });
    expect(await rejection(client.getAction(a.id))).toMatchObject({ status: 404, transient: false });
    expect((await state()).requests["actions.get"]).toBe(7);
  });

  it("delay on an action create slows it down and still starts the action", async () => {
    const id = await activeDroplet();
    await fault({ operation: "droplets.actions.create", mode: "delay", delay_ms: 250 });
    const started = Date.now();
    const a = await client.dropletAction(id, { type: "power_off" });
    expect(Date.now() - started).toBeGreaterThanOrEqual(240);
    expect((await done(a.id)).status).toBe("completed");
  });

  it("actions complete after SIM_ACTION_MS, independent of the boot delay", async () => {
    const slow = await startSimulator({ port: 0, token: TOKEN, activeAfterMs: 0, actionMs: 600 });
    try {
      const c = new DigitalOceanClient({ baseUrl: slow.url, token: TOKEN, baseBackoffMs: 10 });
      const { droplet } = await c.createDroplet(input("fast-boot", "t"));
      expect((await c.getDroplet(droplet.id)).status).toBe("active");
      const a = await c.dropletAction(droplet.id, { type: "power_off" });
      const started = Date.now();
      await until(async () => (await c.getAction(a.id)).status === "completed");
      expect(Date.now() - started).toBeGreaterThanOrEqual(400);
    } finally {
      await slow.close();
    }
  });
});

describe("regions", () => {
  it("lists regions, some unavailable (with no sizes), each with the sizes it offers", async () => {
    const regions = await client.listRegions();
    expect(regions.length).toBeGreaterThanOrEqual(10);
    const bySlug = Object.fromEntries(regions.map((r) => [r.slug, r]));
    expect(bySlug.nyc3).toMatchObject({ name: "New York 3", available: true, features: expect.arrayContaining(["ipv6"]) });
    expect(bySlug.nyc3.sizes).toEqual(expect.arrayContaining(["s-1vcpu-1gb", "s-4vcpu-8gb"]));
    const unavailable = regions.filter((r) => !r.available);
    expect(unavailable.length).toBeGreaterThanOrEqual(1);
    for (const r of unavailable) expect(r.sizes).toEqual([]);
    expect(bySlug.syd1.sizes).not.toContain("s-4vcpu-8gb");
    const sizes = await client.listSizes();
    expect(sizes.find((s) => s.slug === "s-4vcpu-8gb")!.regions).not.toContain("syd1");
  });

  it("refuses a droplet in an unavailable region or with a size its region does not offer", async () => {
    const regions = await client.listRegions();
    const gone = regions.find((r) => !r.available)!;
    expect(await rejection(client.createDroplet({ ...input("nowhere-1", "t"), region: gone.slug }))).toMatchObject({ status: 422, id: "unprocessable_entity" });
    expect(await rejection(client.createDroplet({ ...input("big-1", "t"), region: "syd1", size: "s-4vcpu-8gb" }))).toMatchObject({ status: 422 });
    expect((await state()).droplets).toEqual([]);
  });

  it("_sim/state shows a droplet's status, size_slug, image and user_data as created", async () => {
    await client.createDroplet({ ...input("state-1", "t"), user_data: "#cloud-config\nruncmd: [echo hi]\n" });
    await client.createDroplet(input("state-2", "t"));
    const [a, b] = (await state()).droplets;
    expect(a).toMatchObject({ name: "state-1", status: "new", size_slug: "s-1vcpu-1gb", image: { slug: "ubuntu-24-04-x64" }, user_data: "#cloud-config\nruncmd: [echo hi]\n" });
    expect(b).toMatchObject({ name: "state-2", user_data: null });
    // DO never renders user data back.
    expect((await client.getDroplet(a.id)).user_data).toBeUndefined();
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
    expect((await control("POST", "faults", { operation: "droplets.create", mode: "action_errored" })).status).toBe(422);
    expect((await control("POST", "faults", { operation: "actions.get", mode: "delay", delay_ms: 10 })).status).toBe(201);
    expect((await control("DELETE", "faults")).status).toBe(204);
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
    expect(await state()).toEqual({ droplets: [], actions: [], domain_records: [], faults: [], requests: {} });
  });
});
