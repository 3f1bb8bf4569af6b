import type { ServiceBroker } from "moleculer";
import { Errors } from "moleculer";
import { Client } from "pg";
import { startSimulator, type Simulator } from "../sim/simulator";
import { actionFaults, apiUrl, client, startNode, token, uniq, waitFor } from "./helpers";

/*
 * What is provisioned is what was sold (SPEC §3): plan sizes, templates, regions, over real PostgreSQL, the
 * simulator and a full set of services.
 */

const DOMAIN = "apps.arcadia.test";
const TERMINAL = ["succeeded", "failed", "compensated", "compensation_failed"];

let sim: Simulator;
let broker: ServiceBroker;
let base: string;
let op: ReturnType<typeof client>;
let pg: Client;
const faults = actionFaults();
const created: { id: string; tenant: string }[] = [];

beforeAll(async () => {
  sim = await startSimulator({ port: 0, activeAfterMs: 50 });
  const provider = { doApiUrl: sim.url, doMaxRetries: 0, doBackoffMs: 5 };
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning"], {
    middlewares: [faults.middleware],
    settings: {
      inventory: provider,
      dns: { ...provider, dnsDomain: DOMAIN },
      provisioning: { pollMs: 25, backoffMs: 10, activeTimeoutMs: 5000, stepMaxAttempts: 3, sweepMs: 300, leaseMs: 3000 },
    },
  });
  broker.createService({ name: "created-watcher", events: { "deployments.created"(ctx: any) { created.push({ id: ctx.params.deployment.id, tenant: ctx.params.deployment.tenant_id }); } } });
  base = apiUrl(broker);
  op = client(base, await token({ roles: ["platform-admin"], sub: "op" }));
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
  await sim.close();
});
afterEach(() => faults.clear());

const simState = async () => (await (await fetch(`${sim.url}/v2/_sim/state`)).json()) as { droplets: any[] };
const tenantApi = async (tenant = uniq("cat")) => ({ tenant, api: client(base, await token({ tenant, sub: "pat" })) });
const sagaCount = async (tenant: string) => Number((await pg.query("select count(*) as n from sagas where tenant_id = $1", [tenant])).rows[0].n);

async function settled(api: ReturnType<typeof client>, sagaId: string) {
  return waitFor(async () => {
    const res = await api.get(`/sagas/${sagaId}`);
    return TERMINAL.includes(res.body.saga?.status) ? res.body.saga : null;
  }, { timeoutMs: 30_000, what: `saga ${sagaId} to finish` });
}

describe("the catalog", () => {
  test("the demo plans run on their own sizes and the arcadia-app template uses all four placeholders", async () => {
    const { api } = await tenantApi();
    const plans = (await api.get("/plans")).body.items;
    const size = (code: string) => plans.find((p: any) => p.code === code).versions[0].droplet_size;
    expect([size("starter"), size("studio"), size("scale")]).toEqual(["s-1vcpu-1gb", "s-2vcpu-4gb", "s-4vcpu-8gb"]);
    const templates = await api.get("/templates");
    expect(templates.status).toBe(200);
    const app = templates.body.items.find((t: any) => t.code === "arcadia-app");
    expect(app.versions[0]).toMatchObject({ version: 1, image: "ubuntu-24-04-x64" });
    for (const p of ["slug", "hostname", "llm_mode", "tenant_id"]) expect(app.versions[0].user_data).toContain(`{{${p}}}`);
    expect(app.latest_version.version).toBe(app.versions.at(-1).version);
  });

  test("catalog writes are operators' only: 403 for a tenant, and nothing is written", async () => {
    const { api } = await tenantApi();
    const code = uniq("tp");
    for (const [path, body] of [
      ["/plans", { code, name: "X", price_cents: 100 }],
      ["/plans/studio/versions", { price_cents: 1 }],
      ["/templates", { code, image: "ubuntu-24-04-x64" }],
      ["/templates/arcadia-app/versions", { image: "debian-12-x64" }],
    ] as const) {
      const res = await api.post(path, body);
      expect({ path, status: res.status }).toEqual({ path, status: 403 });
    }
    expect((await api.get("/plans")).body.items.some((p: any) => p.code === code)).toBe(false);
    expect((await api.get("/templates")).body.items.some((t: any) => t.code === code)).toBe(false);
  });

  test("a plan version carries over what is left out; sizes are checked against the provider; versions never change", async () => {
    const code = uniq("pl");
    const v1 = await op.post("/plans", { code, name: "Pro", price_cents: 9900, droplet_size: "s-2vcpu-2gb" });
    expect(v1.status).toBe(201);
    expect(v1.body.plan.latest_version).toMatchObject({ version: 1, price_cents: 9900, currency: "USD", droplet_size: "s-2vcpu-2gb" });
    const v2 = await op.post(`/plans/${code}/versions`, { price_cents: 10900 });
    expect(v2.body.plan_version).toMatchObject({ version: 2, price_cents: 10900, droplet_size: "s-2vcpu-2gb" });
    const v3 = await op.post(`/plans/${code}/versions`, { droplet_size: "s-4vcpu-8gb" });
    expect(v3.body.plan_version).toMatchObject({ version: 3, price_cents: 10900, droplet_size: "s-4vcpu-8gb" });

    const bad = await op.post(`/plans/${code}/versions`, { droplet_size: "s-64vcpu-1tb" });
    expect(bad.status).toBe(422);
    expect(bad.body.type).toBe("VALIDATION_ERROR");
    expect(bad.body.data).toEqual([expect.objectContaining({ field: "droplet_size" })]);
    expect((await op.post(`/plans/${code}/versions`, {})).status).toBe(422);
    expect((await op.post("/plans", { code: uniq("pl"), name: "Bad", price_cents: 1, droplet_size: "huge" })).status).toBe(422);
    // Without a size the plan runs on the default one.
    const dflt = await op.post("/plans", { code: uniq("pl"), name: "Default", price_cents: 1 });
    expect(dflt.body.plan.latest_version.droplet_size).toBe(process.env.DO_DEFAULT_SIZE || "s-1vcpu-1gb");

    const plan = (await op.get("/plans")).body.items.find((p: any) => p.code === code);
    expect(plan.versions.map((v: any) => [v.version, v.price_cents, v.droplet_size])).toEqual([[1, 9900, "s-2vcpu-2gb"], [2, 10900, "s-2vcpu-2gb"], [3, 10900, "s-4vcpu-8gb"]]);
    expect(plan.versions[0]).toEqual(v1.body.plan.versions[0]);
  });

  test("a template version carries over what is left out, and earlier versions stay as they were", async () => {
    const code = uniq("tpl");
    const t = await op.post("/templates", { code, image: "ubuntu-24-04-x64", user_data: "#cloud-config\nhostname: {{slug}}\n" });
    expect(t.status).toBe(201);
    expect(t.body.template).toMatchObject({ code, name: code, latest_version: { version: 1, image: "ubuntu-24-04-x64", user_data: "#cloud-config\nhostname: {{slug}}\n" } });
    const v2 = await op.post(`/templates/${code}/versions`, { image: "debian-12-x64" });
    expect(v2.status).toBe(201);
    expect(v2.body.template_version).toMatchObject({ template_code: code, version: 2, image: "debian-12-x64", user_data: "#cloud-config\nhostname: {{slug}}\n" });
    const v3 = await op.post(`/templates/${code}/versions`, { user_data: "#cloud-config\nfqdn: {{hostname}}\n" });
    expect(v3.body.template_version).toMatchObject({ version: 3, image: "debian-12-x64", user_data: "#cloud-config\nfqdn: {{hostname}}\n" });

    const listed = (await op.get("/templates")).body.items.find((x: any) => x.code === code);
    expect(listed.versions).toEqual([t.body.template.versions[0], v2.body.template_version, v3.body.template_version]);
    expect(listed.latest_version).toEqual(v3.body.template_version);

    expect((await op.post("/templates", { code, image: "ubuntu-24-04-x64" })).status).toBe(409);
    expect((await op.post(`/templates/${uniq("none")}/versions`, { image: "ubuntu-24-04-x64" })).status).toBe(404);
    const empty = await op.post(`/templates/${code}/versions`, {});
    expect(empty.status).toBe(422);
    const typo = await op.post(`/templates/${code}/versions`, { user_data: "hostname: {{slugg}}" });
    expect(typo.status).toBe(422);
    expect(typo.body.data).toEqual([expect.objectContaining({ field: "user_data", actual: ["slugg"] })]);
    expect((await op.post("/templates", { code: uniq("tpl"), image: "Not An Image" })).status).toBe(422);
    expect((await op.get("/templates")).body.items.find((x: any) => x.code === code).versions).toHaveLength(3);
  });
});

describe("create-time checks", () => {
  test("a template or version that does not exist is 422 naming the field, and nothing is created", async () => {
    const { api, tenant } = await tenantApi();
    const cases = [
      [{ template_code: "no-such-template" }, "template_code"],
      [{ template_code: "arcadia-app", template_version: "999" }, "template_version"],
      [{ template_code: "arcadia-app", template_version: "1.2.0" }, "template_version"],
      [{ plan_code: "no-such-plan" }, "plan_code"],
      [{ plan_code: "studio", addons: [{ code: "no-such-addon", qty: 1 }] }, "addons"],
    ] as const;
    for (const [body, field] of cases) {
      const res = await api.post("/deployments", { slug: uniq("d"), provision: true, ...body });
      expect({ body, status: res.status, type: res.body.type }).toEqual({ body, status: 422, type: "VALIDATION_ERROR" });
      expect({ body, fields: [...new Set(res.body.data.map((d: any) => d.field))] }).toEqual({ body, fields: [field] });
    }
    expect((await api.get("/deployments")).body.items).toEqual([]);
    expect(await sagaCount(tenant)).toBe(0);
  });

  test("an unknown and an unavailable region are 422 naming region: no deployment, no saga, no droplet", async () => {
    const { api, tenant } = await tenantApi();
    const before = (await simState()).droplets.length;
    for (const region of ["mars1", "nyc2"]) {
      for (const provision of [true, false]) {
        const res = await api.post("/deployments", { slug: uniq("r"), region, provision, plan_code: "studio" });
        expect({ region, provision, status: res.status, type: res.body.type }).toEqual({ region, provision, status: 422, type: "VALIDATION_ERROR" });
        expect(res.body.data[0]).toMatchObject({ field: "region", actual: region });
      }
    }
    expect((await api.get("/deployments")).body.items).toEqual([]);
    expect((await simState()).droplets.length).toBe(before);
    expect(await sagaCount(tenant)).toBe(0);
  });

  test("a provider that does not answer the region check is 503, and nothing is created", async () => {
    const closed = await startNode(["api", "deployments", "subscriptions", "inventory", "dns"], { settings: { inventory: { doApiUrl: "http://127.0.0.1:9", doMaxRetries: 0 } } });
    try {
      const tenant = uniq("down");
      const api = client(apiUrl(closed), await token({ tenant }));
      for (const provision of [true, false]) {
        const res = await api.post("/deployments", { slug: uniq("d"), provision });
        expect({ provision, status: res.status }).toEqual({ provision, status: 503 });
      }
      expect(Number((await pg.query("select count(*) as n from deployments where tenant_id = $1", [tenant])).rows[0].n)).toBe(0);
    } finally {
      await closed.stop();
    }
  });

  test("a tenant id that cannot be put into user_data is 422 naming tenant_id when the create provisions", async () => {
    const tenant = "Acme Corp";
    const res = await op.post("/deployments", { slug: uniq("t"), tenant_id: tenant, provision: true });
    expect(res.status).toBe(422);
    expect(res.body.data).toEqual([expect.objectContaining({ field: "tenant_id" })]);
    expect(Number((await pg.query("select count(*) as n from deployments where tenant_id = $1", [tenant])).rows[0].n)).toBe(0);
    // A template that does not use {{tenant_id}} can be provisioned for it.
    const code = uniq("tpl");
    await op.post("/templates", { code, image: "ubuntu-24-04-x64", user_data: "#cloud-config\nhostname: {{slug}}\n" });
    const ok = await op.post("/deployments", { slug: uniq("t"), tenant_id: tenant, template_code: code, provision: true });
    expect(ok.status).toBe(202);
    expect((await settled(op, ok.body.saga.id)).status).toBe("succeeded");
  });

  test("a subscribe that fails after the deployment was written leaves nothing: no deployment, event, saga or droplet", async () => {
    const { api, tenant } = await tenantApi();
    const slug = uniq("s");
    const before = (await simState()).droplets.length;
    faults.fail("v1.subscriptions.subscribe", () => new Errors.MoleculerRetryableError("subscriptions down", 503, "SERVICE_NOT_AVAILABLE"), 1);
    const res = await api.post("/deployments", { slug, provision: true, plan_code: "studio" });
    expect(res.status).toBe(503);
    expect((await api.get("/deployments")).body.items).toEqual([]);
    expect(Number((await pg.query("select count(*) as n from deployments where tenant_id = $1", [tenant])).rows[0].n)).toBe(0);
    expect(await sagaCount(tenant)).toBe(0);
    expect((await simState()).droplets.length).toBe(before);
    // The slug is free again, and the next try goes through.
    const again = await api.post("/deployments", { slug, plan_code: "studio" });
    expect(again.status).toBe(201);
    expect(again.body.subscription).toMatchObject({ deployment_id: again.body.deployment.id, plan_code: "studio", status: "active" });
    await waitFor(async () => created.some((c) => c.id === again.body.deployment.id), { what: "deployments.created of the second try" });
    // The failed first try was never announced.
    expect(created.filter((c) => c.tenant === tenant).map((c) => c.id)).toEqual([again.body.deployment.id]);
  });
});

describe("the droplet is what was sold", () => {
  const CUSTOM_USER_DATA = "#cloud-config\nhostname: {{slug}}\nwrite_files:\n  - path: /etc/app.env\n    content: |\n      TENANT={{tenant_id}}\n      HOST={{hostname}}\n      LLM={{llm_mode}}\n";

  test("two plans × two templates: size from the plan, image and filled-in user_data from the template, in one request each", async () => {
    const custom = uniq("tpl");
    expect((await op.post("/templates", { code: custom, name: "Custom", image: "debian-12-x64", user_data: CUSTOM_USER_DATA })).status).toBe(201);
    const app = (await op.get("/templates")).body.items.find((t: any) => t.code === "arcadia-app").latest_version;
    const cases = [
      { plan: "starter", size: "s-1vcpu-1gb", template: "arcadia-app", image: app.image, userData: app.user_data, llm: "shared", region: "fra1" },
      { plan: "scale", size: "s-4vcpu-8gb", template: custom, image: "debian-12-x64", userData: CUSTOM_USER_DATA, llm: "byok", region: "ams3" },
      { plan: "studio", size: "s-2vcpu-4gb", template: custom, image: "debian-12-x64", userData: CUSTOM_USER_DATA, llm: "none", region: "nyc3" },
      { plan: "scale", size: "s-4vcpu-8gb", template: "arcadia-app", image: app.image, userData: app.user_data, llm: "byok", region: "lon1" },
    ];
    const { api, tenant } = await tenantApi();
    const started = [];
    for (const c of cases) {
      const slug = uniq("app");
      const res = await api.post("/deployments", { slug, region: c.region, llm_mode: c.llm, template_code: c.template, provision: true, plan_code: c.plan, addons: [{ code: "dedicated_ip", qty: 1 }] });
      expect(res.status).toBe(202);
      expect(res.body.subscription).toMatchObject({ deployment_id: res.body.deployment.id, plan_code: c.plan, plan_version: { droplet_size: c.size }, addons: [expect.objectContaining({ code: "dedicated_ip" })] });
      started.push({ ...c, slug, res });
    }
    for (const c of started) {
      const saga = await settled(api, c.res.body.saga.id);
      expect(saga.status).toBe("succeeded");
      const fqdn = `${c.slug}.${tenant}.${DOMAIN}`;
      const droplets = (await simState()).droplets.filter((d) => d.tags.includes(`saga-${saga.id}`));
      expect(droplets).toHaveLength(1);
      const d = droplets[0];
      expect({ size: d.size_slug, image: d.image.slug, region: d.region.slug }).toEqual({ size: c.size, image: c.image, region: c.region });
      const expected = c.userData.replaceAll("{{slug}}", c.slug).replaceAll("{{hostname}}", fqdn).replaceAll("{{llm_mode}}", c.llm).replaceAll("{{tenant_id}}", tenant);
      expect(d.user_data).toBe(expected);
      expect(d.user_data).not.toMatch(/\{\{(slug|hostname|llm_mode|tenant_id)\}\}/);
      const step = saga.steps.find((s: any) => s.name === "create_droplet");
      expect(step.output).toMatchObject({ size: c.size, image: c.image, region: c.region, template_code: c.template, template_version: expect.stringMatching(/^\d+$/) });
      // The saga's recorded input names the template version it resolved (the deployment named none).
      const input = (await pg.query("select input from sagas where id = $1", [saga.id])).rows[0].input;
      expect(input).toMatchObject({ size: c.size, image: c.image, template_code: c.template, template_version: step.output.template_version, user_data: expected });
      const got = (await api.get(`/deployments/${c.res.body.deployment.id}`)).body;
      expect(got.deployment).toMatchObject({ state: "active", template_code: c.template, template_version: null });
      expect(got.subscription.plan_code).toBe(c.plan);
      const inv = (await api.get(`/inventory?deployment_id=${c.res.body.deployment.id}`)).body.items;
      expect(inv).toEqual([expect.objectContaining({ size_slug: c.size })]);
    }
  });

  test("a deployment that names a template version keeps it after newer versions appear", async () => {
    const code = uniq("tpl");
    await op.post("/templates", { code, image: "ubuntu-22-04-x64", user_data: "#cloud-config\nhostname: {{slug}}\n" });
    await op.post(`/templates/${code}/versions`, { image: "ubuntu-24-04-x64", user_data: "#cloud-config\nfqdn: {{hostname}}\n" });
    const { api } = await tenantApi();
    const slug = uniq("pin");
    const res = await api.post("/deployments", { slug, template_code: code, template_version: 1, provision: true });
    expect(res.status).toBe(202);
    expect(res.body.deployment.template_version).toBe("1");
    expect(res.body.subscription).toBeUndefined();
    const saga = await settled(api, res.body.saga.id);
    expect(saga.status).toBe("succeeded");
    const [d] = (await simState()).droplets.filter((x) => x.tags.includes(`saga-${saga.id}`));
    // No subscription yet: the default size.
    expect({ size: d.size_slug, image: d.image.slug, user_data: d.user_data }).toEqual({ size: process.env.DO_DEFAULT_SIZE || "s-1vcpu-1gb", image: "ubuntu-22-04-x64", user_data: `#cloud-config\nhostname: ${slug}\n` });
  });
});
