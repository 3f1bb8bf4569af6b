/**
 * Fidelity check: dots-wrapper, a third-party DigitalOcean client written against the real API,
 * drives the simulator through the calls the control plane makes and gets DO-shaped answers.
 */
import { createApiClient } from "dots-wrapper";
import { startSimulator, type Simulator } from "../sim/simulator";

const TOKEN = "fidelity-token";
let sim: Simulator;
let dots: ReturnType<typeof createApiClient>;

beforeAll(async () => {
  sim = await startSimulator({ port: 0, token: TOKEN, activeAfterMs: 100 });
  dots = createApiClient({ endpoint: `${sim.url}/v2`, token: TOKEN, requestTimeoutInMs: 5000 });
});
afterAll(() => sim.close());

async function until<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("condition not met before the deadline");
    await new Promise((r) => setTimeout(r, 20));
  }
}

it("creates, reads, lists by tag and deletes droplets", async () => {
  const created = await dots.droplet.createDroplet({
    name: "fidelity-1", region: "fra1", size: "s-1vcpu-2gb", image: "ubuntu-24-04-x64", tags: ["saga:fid"],
  });
  expect(created.status).toBe(202);
  const id = created.data.droplet.id;
  expect(created.data.droplet).toMatchObject({ name: "fidelity-1", status: "new", size_slug: "s-1vcpu-2gb", tags: ["saga:fid"] });
  await dots.droplet.createDroplet({ name: "fidelity-2", region: "fra1", size: "s-1vcpu-1gb", image: "ubuntu-24-04-x64", tags: ["saga:fid"] });
  await dots.droplet.createDroplet({ name: "unrelated", region: "fra1", size: "s-1vcpu-1gb", image: "ubuntu-24-04-x64", tags: ["saga:x"] });

  const active = await until(async () => {
    const { data } = await dots.droplet.getDroplet({ droplet_id: id });
    return data.droplet.status === "active" && data.droplet;
  });
  expect(active.networks.v4.find((n) => n.type === "public")?.ip_address).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
  expect(active.size.price_monthly).toBe(12);

  const page1 = await dots.droplet.listDroplets({ tag_name: "saga:fid", per_page: 1 });
  expect(page1.data.droplets).toHaveLength(1);
  expect(page1.data.meta?.total).toBe(2);
  expect(page1.data.links?.pages?.next).toContain("page=2");
  const all = await dots.droplet.listDroplets({ tag_name: "saga:fid" });
  expect(all.data.droplets.map((d) => d.name).sort()).toEqual(["fidelity-1", "fidelity-2"]);

  expect((await dots.droplet.deleteDroplet({ droplet_id: id })).status).toBe(204);
  await expect(dots.droplet.getDroplet({ droplet_id: id })).rejects.toMatchObject({
    response: { status: 404, data: { id: "not_found" } },
  });
  expect((await dots.droplet.deleteDropletsByTag({ tag_name: "saga:fid" })).status).toBe(204);
  const left = await dots.droplet.listDroplets({});
  expect(left.data.droplets.map((d) => d.name)).toEqual(["unrelated"]);
});

it("creates, lists, updates and deletes domain records", async () => {
  const domain_name = "example.com";
  const created = await dots.domain.createDomainRecord({ domain_name, type: "A", name: "fid.acme", data: "203.0.113.5", ttl: 60 });
  expect(created.status).toBe(201);
  const record = created.data.domain_record;
  expect(record).toMatchObject({ type: "A", name: "fid.acme", data: "203.0.113.5", ttl: 60 });

  const listed = await dots.domain.listDomainRecords({ domain_name, type: "A", name: "fid.acme.example.com" });
  expect(listed.data.domain_records.map((r) => r.id)).toEqual([record.id]);

  const updated = await dots.domain.updateDomainRecord({ domain_name, domain_record_id: record.id, type: "A", data: "203.0.113.6" });
  expect(updated.data.domain_record).toMatchObject({ id: record.id, name: "fid.acme", data: "203.0.113.6" });
  const got = await dots.domain.getDomainRecord({ domain_name, domain_record_id: record.id });
  expect(got.data.domain_record.data).toBe("203.0.113.6");

  expect((await dots.domain.deleteDomainRecord({ domain_name, domain_record_id: record.id })).status).toBe(204);
  expect((await dots.domain.listDomainRecords({ domain_name })).data.domain_records).toEqual([]);
});

it("reads sizes, the balance and the account", async () => {
  const sizes = await dots.size.listSizes({});
  expect(sizes.data.sizes.find((s) => s.slug === "s-2vcpu-4gb")?.price_monthly).toBe(24);
  const balance = await dots.customer.getBalance();
  expect(balance.data).toEqual({
    month_to_date_balance: expect.stringMatching(/^\d+\.\d{2}$/),
    account_balance: "0.00",
    month_to_date_usage: expect.stringMatching(/^\d+\.\d{2}$/),
    generated_at: expect.any(String),
  });
  const account = await dots.account.getAccount();
  expect(account.data.account.status).toBe("active");
});

it("powers off, resizes and powers on a droplet through droplet actions, polling the global actions endpoint", async () => {
  const created = await dots.droplet.createDroplet({ name: "fidelity-act", region: "ams3", size: "s-1vcpu-1gb", image: "ubuntu-24-04-x64", tags: ["saga:act"] });
  const id = created.data.droplet.id;
  await until(async () => (await dots.droplet.getDroplet({ droplet_id: id })).data.droplet.status === "active");
  const finished = (actionId: number) => until(async () => {
    const { data } = await dots.action.getAction({ action_id: actionId });
    return data.action.status !== "in-progress" && data.action;
  });

  const off = await dots.droplet.powerOffDroplet({ droplet_id: id });
  expect(off.status).toBe(201);
  expect(off.data.action).toMatchObject({ status: "in-progress", type: "power_off", resource_id: id, resource_type: "droplet", region_slug: "ams3" });
  expect((await finished(off.data.action.id)).status).toBe("completed");
  expect((await dots.droplet.getDroplet({ droplet_id: id })).data.droplet.status).toBe("off");

  const resize = await dots.droplet.resizeDroplet({ droplet_id: id, size: "s-2vcpu-4gb", disk: true });
  expect(resize.status).toBe(201);
  expect(resize.data.action.type).toBe("resize");
  expect((await finished(resize.data.action.id)).status).toBe("completed");
  expect((await dots.droplet.getDroplet({ droplet_id: id })).data.droplet).toMatchObject({ size_slug: "s-2vcpu-4gb", disk: 80, status: "off" });

  const on = await dots.droplet.powerOnDroplet({ droplet_id: id });
  expect((await finished(on.data.action.id)).status).toBe("completed");
  const shut = await dots.droplet.shutdownDroplet({ droplet_id: id });
  expect((await finished(shut.data.action.id)).status).toBe("completed");
  expect((await dots.droplet.getDroplet({ droplet_id: id })).data.droplet.status).toBe("off");

  await expect(dots.droplet.resizeDroplet({ droplet_id: id, size: "s-64vcpu-1tb" })).rejects.toMatchObject({
    response: { status: 422, data: { id: "unprocessable_entity", message: expect.any(String), request_id: expect.any(String) } },
  });
  await expect(dots.action.getAction({ action_id: 1 })).rejects.toMatchObject({ response: { status: 404, data: { id: "not_found" } } });
});

it("lists regions with availability and the sizes each offers", async () => {
  const { data, status } = await dots.region.listRegions({ per_page: 200 });
  expect(status).toBe(200);
  const fra1 = data.regions.find((r) => r.slug === "fra1")!;
  expect(fra1).toMatchObject({ name: "Frankfurt 1", available: true });
  expect(fra1.sizes).toContain("s-1vcpu-1gb");
  expect(data.regions.some((r) => !r.available && r.sizes.length === 0)).toBe(true);
  const paged = await dots.region.listRegions({ per_page: 3 });
  expect(paged.data.regions).toHaveLength(3);
  expect(paged.data.meta?.total).toBe(data.regions.length);
});
