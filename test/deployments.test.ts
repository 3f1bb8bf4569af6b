import type { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { DEPLOYMENT_STATES, type DeploymentState } from "../entities/deployment";
import { TRANSITIONS } from "../lib/lifecycle";
import { apiUrl, client, http, startNode, token, uniq, allPages } from "./helpers";

let broker: ServiceBroker;
let base: string;
let pg: Client;

beforeAll(async () => {
  broker = await startNode(["api", "deployments", "subscriptions"]);
  base = apiUrl(broker);
  pg = new Client({ connectionString: process.env.DATABASE_URL });
  await pg.connect();
});
afterAll(async () => {
  await pg.end();
  await broker.stop();
});

/** The shortest path of allowed moves from a fresh `active` deployment to each state. */
const PATH_TO: Record<Exclude<DeploymentState, "provisioning" | "trial">, DeploymentState[]> = {
  active: [],
  paused: ["paused"],
  past_due: ["past_due"],
  suspended: ["past_due", "suspended"],
  cancelled: ["cancelled"],
  archived: ["cancelled", "archived"],
};

async function deploymentIn(api: ReturnType<typeof client>, state: DeploymentState) {
  if (state === "trial") return (await api.post("/deployments", { slug: uniq("d"), state: "trial" })).body.deployment;
  const created = await api.post("/deployments", { slug: uniq("d") });
  expect(created.status).toBe(201);
  for (const to of PATH_TO[state as keyof typeof PATH_TO]) {
    const r = await api.post(`/deployments/${created.body.deployment.id}/transition`, { to_state: to });
    expect(r.status).toBe(200);
  }
  return (await api.get(`/deployments/${created.body.deployment.id}`)).body.deployment;
}

describe("create", () => {
  test("201 with the deployment in active and a `created` event from null", async () => {
    const tenant = uniq("acme");
    const api = client(base, await token({ tenant, sub: "alice" }));
    const res = await api.post("/deployments", { slug: "shop", display_name: "Shop", region: "fra1", template_version: "1.2.0" });
    expect(res.status).toBe(201);
    const d = res.body.deployment;
    expect(d).toMatchObject({ tenant_id: tenant, slug: "shop", display_name: "Shop", region: "fra1", state: "active", llm_mode: "shared", billing_action_suspended: false, template_version: "1.2.0" });
    expect(new Date(d.inserted_at).toISOString()).toBe(d.inserted_at);
    const got = await api.get(`/deployments/${d.id}`);
    expect(got.status).toBe(200);
    expect(got.body.subscription).toBeNull();
    expect(got.body.saga).toBeNull();
    expect(got.body.events).toEqual([expect.objectContaining({ from_state: null, to_state: "active", reason: "created", actor: "alice" })]);
  });

  test("trial is the only other initial state", async () => {
    const api = client(base, await token({ tenant: uniq("acme") }));
    expect((await api.post("/deployments", { slug: uniq("d"), state: "trial" })).body.deployment.state).toBe("trial");
    for (const state of ["paused", "provisioning", "cancelled", "bogus"]) {
      const res = await api.post("/deployments", { slug: uniq("d"), state });
      expect(res.status).toBe(422);
      expect(res.body).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
      expect(res.body.message).toMatch(/state/);
    }
  });

  test("slug is unique per tenant (409) but free across tenants", async () => {
    const a = client(base, await token({ tenant: uniq("a") }));
    const b = client(base, await token({ tenant: uniq("b") }));
    expect((await a.post("/deployments", { slug: "same" })).status).toBe(201);
    const dup = await a.post("/deployments", { slug: "same" });
    expect(dup.status).toBe(409);
    expect(dup.body).toMatchObject({ name: "MoleculerClientError", code: 409, type: "SLUG_TAKEN" });
    expect((await b.post("/deployments", { slug: "same" })).status).toBe(201);
  });

  test.each([
    [{}, /slug/],
    [{ slug: "Bad_Slug" }, /slug/],
    [{ slug: "-lead" }, /slug/],
    [{ slug: "a".repeat(64) }, /slug/],
    [{ slug: 42 }, /slug/],
    [{ slug: "ok", llm_mode: "gpt" }, /llm_mode/],
    [{ slug: "ok", billing_action_suspended: "yes" }, /billing_action_suspended/],
    [{ slug: "ok", display_name: "" }, /display_name/],
  ])("422 VALIDATION_ERROR naming the field for %j", async (body, field) => {
    const tenant = uniq("v");
    const api = client(base, await token({ tenant }));
    const res = await api.post("/deployments", body);
    expect(res.status).toBe(422);
    expect(res.body).toMatchObject({ name: "ValidationError", code: 422, type: "VALIDATION_ERROR" });
    expect(res.body.message).toMatch(field);
    expect((await api.get("/deployments")).body.items).toEqual([]);
  });

  test.each(["{slug:", "null", "5", '"x"'])("a body that is not a JSON object (%s) is 422 VALIDATION_ERROR and creates nothing", async (raw) => {
    const tenant = uniq("v");
    const tok = await token({ tenant });
    const res = await http(base, "POST", "/deployments", { token: tok, raw });
    expect(res.status).toBe(422);
    expect(res.body).toMatchObject({ code: 422, type: "VALIDATION_ERROR", message: "The request body must be a JSON object" });
    expect((await client(base, tok).get("/deployments")).body.items).toEqual([]);
  });

  test("an unknown enum value is named in the message with the allowed ones", async () => {
    const api = client(base, await token({ tenant: uniq("v") }));
    const res = await api.post("/deployments", { slug: "ok", llm_mode: "gpt" });
    expect(res.body.message).toBe("The 'llm_mode' field must be one of: none, shared, byok (got 'gpt').");
  });
});

describe("transitions follow the SPEC table", () => {
  // Transcribed from SPEC §2 independently of lib/lifecycle.ts.
  const SPEC_ALLOWED = new Set([
    "trial>active", "trial>cancelled", "active>paused", "active>past_due", "active>cancelled", "paused>active", "paused>cancelled",
    "past_due>active", "past_due>suspended", "past_due>cancelled", "suspended>active", "suspended>cancelled", "cancelled>active", "cancelled>archived",
  ]);
  const cases: [DeploymentState, DeploymentState, boolean][] = [];
  for (const from of DEPLOYMENT_STATES.filter((s) => s !== "provisioning"))
    for (const to of DEPLOYMENT_STATES.filter((s) => s !== from)) cases.push([from, to, SPEC_ALLOWED.has(`${from}>${to}`)]);

  test("the service's table is the SPEC's", () => {
    const implemented = DEPLOYMENT_STATES.filter((s) => s !== "provisioning").flatMap((from) => TRANSITIONS[from].map((to) => `${from}>${to}`));
    expect(new Set(implemented)).toEqual(SPEC_ALLOWED);
    expect(TRANSITIONS.provisioning).toEqual(["active", "trial", "cancelled"]);
  });

  test.each(cases)("%s → %s allowed=%s", async (from, to, allowed) => {
    // An operator may make every move of the table (tenants' limits: test/lifecycle-moves.test.ts).
    const api = client(base, await token({ tenant: uniq("tr"), sub: "bob", roles: ["platform-admin"] }));
    const d = await deploymentIn(api, from);
    // Converting a trial needs a subscription (SPEC §2).
    if (from === "trial") expect((await api.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" })).status).toBe(201);
    expect(d.state).toBe(from);
    const before = (await api.get(`/deployments/${d.id}`)).body.events.length;
    const res = await api.post(`/deployments/${d.id}/transition`, { to_state: to, reason: "test", notes: "n" });
    const after = (await api.get(`/deployments/${d.id}`)).body;
    if (allowed) {
      expect(res.status).toBe(200);
      expect(res.body.deployment.state).toBe(to);
      expect(after.events).toHaveLength(before + 1);
      expect(after.events.at(-1)).toMatchObject({ from_state: from, to_state: to, reason: "test", notes: "n", actor: "bob" });
    } else {
      expect(res.status).toBe(422);
      expect(res.body).toMatchObject({ code: 422, type: "INVALID_TRANSITION", data: { from, to } });
      expect(after.deployment.state).toBe(from);
      expect(after.events).toHaveLength(before);
    }
  });

  test("a transition to the current state succeeds and records nothing", async () => {
    const api = client(base, await token({ tenant: uniq("tr") }));
    const d = await deploymentIn(api, "paused");
    const before = (await api.get(`/deployments/${d.id}`)).body;
    const res = await api.post(`/deployments/${d.id}/transition`, { to_state: "paused" });
    expect(res.status).toBe(200);
    const after = (await api.get(`/deployments/${d.id}`)).body;
    expect(after.events).toEqual(before.events);
    expect(after.deployment.state_since).toBe(before.deployment.state_since);
  });

  test("manual moves out of provisioning are refused, even for operators", async () => {
    const tenant = uniq("prov");
    const api = client(base, await token({ tenant }));
    const op = client(base, await token({ roles: ["platform-admin"] }));
    const d = (await api.post("/deployments", { slug: uniq("d") })).body.deployment;
    // No saga runs in this suite: put the row in provisioning directly to check the refusal.
    await pg.query("update deployments set state = 'provisioning' where id = $1", [d.id]);
    for (const to of ["active", "cancelled"]) {
      for (const c of [api, op]) {
        const res = await c.post(`/deployments/${d.id}/transition`, { to_state: to });
        expect(res.status).toBe(422);
        expect(res.body).toMatchObject({ type: "INVALID_TRANSITION", data: { from: "provisioning", to } });
      }
    }
  });

  test("bad transition bodies are 422 VALIDATION_ERROR", async () => {
    const api = client(base, await token({ tenant: uniq("tr") }));
    const d = await deploymentIn(api, "active");
    for (const body of [{}, { to_state: "gone" }, { to_state: "paused", reason: 5 }]) {
      const res = await api.post(`/deployments/${d.id}/transition`, body);
      expect(res.status).toBe(422);
      expect(res.body.type).toBe("VALIDATION_ERROR");
    }
    expect((await api.get(`/deployments/${d.id}`)).body.events).toHaveLength(1);
  });

  test("50 concurrent transition requests leave the event log a chain", async () => {
    const api = client(base, await token({ tenant: uniq("race"), roles: ["platform-admin"] }));
    const d = await deploymentIn(api, "active");
    const targets: DeploymentState[] = ["paused", "active", "past_due", "suspended", "active", "paused", "cancelled", "active"];
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => api.post(`/deployments/${d.id}/transition`, { to_state: targets[i % targets.length] })));
    for (const r of results) expect([200, 422]).toContain(r.status);
    const { events, deployment } = (await api.get(`/deployments/${d.id}`)).body;
    const moved = results.filter((r) => r.status === 200).length;
    expect(events.length).toBeGreaterThan(1);
    expect(events.length).toBeLessThanOrEqual(moved + 1);
    for (let i = 1; i < events.length; i++) {
      expect(events[i].from_state).toBe(events[i - 1].to_state);
      expect(TRANSITIONS[events[i].from_state as DeploymentState]).toContain(events[i].to_state);
    }
    expect(events.at(-1).to_state).toBe(deployment.state);
  });
});

describe("list", () => {
  test("newest first, keyset pages, state filter", async () => {
    const api = client(base, await token({ tenant: uniq("list") }));
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) ids.push((await api.post("/deployments", { slug: `d${i}`, state: i % 2 ? "trial" : "active" })).body.deployment.id);
    const { ids: seen, pages } = await allPages(api, "/deployments", 3);
    expect(pages).toBe(3);
    expect(seen).toEqual([...ids].reverse());
    const trials = (await api.get("/deployments?state=trial")).body.items;
    expect(trials.map((d: any) => d.id)).toEqual([ids[5], ids[3], ids[1]]);
  });

  test("bad query parameters are 422", async () => {
    const api = client(base, await token({ tenant: uniq("list") }));
    // An empty cursor is the first page (clients send cursor=${next_cursor ?? ""}).
    const first = await api.get("/deployments?cursor=");
    expect(first.status).toBe(200);
    for (const q of ["limit=0", "limit=201", "limit=abc", "state=nope", "cursor=garbage"]) {
      const res = await api.get(`/deployments?${q}`);
      expect(res.status).toBe(422);
      expect(res.body.type).toBe("VALIDATION_ERROR");
    }
  });
});
