import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { ServiceBroker } from "moleculer";
import { SignJWT, exportJWK, generateKeyPair } from "jose";
import { apiUrl, client, http, startNode, token, uniq } from "./helpers";

let broker: ServiceBroker;
let base: string;

beforeAll(async () => {
  broker = await startNode(["api", "deployments", "subscriptions"]);
  base = apiUrl(broker);
});
afterAll(() => broker.stop());

describe("401 for missing or bad tokens", () => {
  test("no token, not bearer, garbage", async () => {
    for (const headers of [{} as Record<string, string>, { authorization: "Basic abc" }, { authorization: "Bearer not.a.jwt" }, { authorization: "Bearer " }]) {
      const res = await http(base, "GET", "/deployments", { headers });
      expect(res.status).toBe(401);
      expect(res.body).toMatchObject({ code: 401, name: expect.any(String), type: expect.any(String) });
    }
  });

  test("expired token", async () => {
    const expired = await new SignJWT({ tenant_id: "x", roles: [] }).setProtectedHeader({ alg: "HS256" }).setSubject("u").setIssuedAt(1_600_000_000).setExpirationTime(1_600_000_100).sign(new TextEncoder().encode(process.env.AUTH_JWT_SECRET));
    const res = await http(base, "GET", "/deployments", { token: expired });
    expect(res.status).toBe(401);
    expect(res.body.message).toMatch(/expired/i);
  });

  test("wrong signature", async () => {
    const res = await http(base, "GET", "/deployments", { token: await token({ tenant: "x", secret: "another-secret-of-sufficient-length-000" }) });
    expect(res.status).toBe(401);
  });

  test("unsigned (alg none) token", async () => {
    const b64 = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const none = `${b64({ alg: "none" })}.${b64({ sub: "u", tenant_id: "x", roles: ["platform-admin"] })}.`;
    expect((await http(base, "GET", "/deployments", { token: none })).status).toBe(401);
  });

  test("a token without tenant_id and without the operator role", async () => {
    expect((await http(base, "GET", "/deployments", { token: await token({ roles: ["admin"] }) })).status).toBe(401);
  });

  test("health needs no token; everything else does", async () => {
    expect((await http(base, "GET", "/health")).status).toBe(200);
    expect((await http(base, "GET", "/plans")).status).toBe(401);
    expect((await http(base, "GET", "/nope", { token: await token({ tenant: "x" }) })).status).toBe(404);
  });

  test("ready checks the database and the transporter, and is 503 while a routed service is not discovered", async () => {
    const res = await http(base, "GET", "/ready");
    // This node runs deployments and subscriptions only: the services its other routes need are missing.
    expect(res.status).toBe(503);
    expect(res.body).toMatchObject({ status: "unavailable", checks: { database: "ok", transporter: "ok", "v1.deployments": "ok", "v1.subscriptions": "ok", "v1.provisioning": "not discovered" } });
  });
});

describe("issuer and audience when set", () => {
  let strict: ServiceBroker;
  let strictBase: string;
  const secret = process.env.AUTH_JWT_SECRET!;
  beforeAll(async () => {
    strict = await startNode(["api", "deployments", "subscriptions"], { settings: { api: { auth: { secret, issuer: "https://id.arcadia.test", audience: "arcadia-cloud" } } } });
    strictBase = apiUrl(strict);
  });
  afterAll(() => strict.stop());

  test("right issuer and audience pass; wrong or missing ones are 401", async () => {
    const tenant = uniq("iss");
    const good = await token({ tenant, issuer: "https://id.arcadia.test", audience: "arcadia-cloud" });
    expect((await http(strictBase, "GET", "/deployments", { token: good })).status).toBe(200);
    for (const bad of [
      await token({ tenant, issuer: "https://evil.test", audience: "arcadia-cloud" }),
      await token({ tenant, issuer: "https://id.arcadia.test", audience: "someone-else" }),
      await token({ tenant }),
    ]) {
      expect((await http(strictBase, "GET", "/deployments", { token: bad })).status).toBe(401);
    }
  });
});

describe("RS256 through a JWKS served on loopback", () => {
  let jwksServer: Server;
  let rsBroker: ServiceBroker;
  let rsBase: string;
  let privateKey: Awaited<ReturnType<typeof generateKeyPair>>["privateKey"];

  beforeAll(async () => {
    const pair = await generateKeyPair("RS256");
    privateKey = pair.privateKey;
    const jwk = { ...(await exportJWK(pair.publicKey)), kid: "k1", alg: "RS256", use: "sig" };
    jwksServer = createServer((_req, res) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, "127.0.0.1", r));
    const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/.well-known/jwks.json`;
    rsBroker = await startNode(["api", "deployments", "subscriptions"], { settings: { api: { auth: { jwksUrl } } } });
    rsBase = apiUrl(rsBroker);
  });
  afterAll(async () => {
    await rsBroker.stop();
    await new Promise((r) => jwksServer.close(r));
  });

  test("a token signed by the JWKS key is accepted; an HS256 token is not", async () => {
    const tenant = uniq("rs");
    const rs = await new SignJWT({ tenant_id: tenant, roles: ["admin"] }).setProtectedHeader({ alg: "RS256", kid: "k1" }).setSubject("rita").setIssuedAt().setExpirationTime("5m").sign(privateKey);
    const created = await http(rsBase, "POST", "/deployments", { token: rs, body: { slug: "rs" } });
    expect(created.status).toBe(201);
    expect(created.body.deployment.tenant_id).toBe(tenant);
    const other = await generateKeyPair("RS256");
    const forged = await new SignJWT({ tenant_id: tenant }).setProtectedHeader({ alg: "RS256", kid: "k1" }).setSubject("x").setExpirationTime("5m").sign(other.privateKey);
    expect((await http(rsBase, "GET", "/deployments", { token: forged })).status).toBe(401);
    expect((await http(rsBase, "GET", "/deployments", { token: await token({ tenant }) })).status).toBe(401);
  });
});

describe("tenancy", () => {
  test("another tenant's deployment is 404 for read, transition and subscription calls, never listed, and unchanged", async () => {
    const alice = client(base, await token({ tenant: uniq("alice") }));
    const mallory = client(base, await token({ tenant: uniq("mallory"), roles: ["admin"] }));
    const d = (await alice.post("/deployments", { slug: "private" })).body.deployment;
    await alice.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" });
    const before = (await alice.get(`/deployments/${d.id}`)).body;

    const attempts = [
      await mallory.get(`/deployments/${d.id}`),
      await mallory.post(`/deployments/${d.id}/transition`, { to_state: "paused" }),
      await mallory.post(`/deployments/${d.id}/subscribe`, { plan_code: "studio" }),
      await mallory.post(`/deployments/${d.id}/subscription/addons`, { code: "storage_50gb", qty: 1 }),
      await mallory.post(`/deployments/${d.id}/subscription/plan`, { plan_code: "scale" }),
    ];
    for (const res of attempts) {
      expect(res.status).toBe(404);
      expect(res.body).toMatchObject({ code: 404, type: "NOT_FOUND" });
    }
    expect((await mallory.get("/deployments")).body.items.map((x: any) => x.id)).not.toContain(d.id);
    expect((await mallory.get(`/deployments?tenant_id=${d.tenant_id}`)).body.items).toEqual([]);
    expect((await alice.get(`/deployments/${d.id}`)).body).toEqual(before);
  });

  test("platform-admin sees every tenant; platform_admin and no role are scoped", async () => {
    const tenant = uniq("own");
    const owner = client(base, await token({ tenant }));
    const d = (await owner.post("/deployments", { slug: "x" })).body.deployment;
    const operator = client(base, await token({ roles: ["platform-admin"] }));
    const underscore = client(base, await token({ tenant: uniq("u"), roles: ["platform_admin"] }));
    const noRole = client(base, await token({ tenant: uniq("n") }));

    expect((await operator.get(`/deployments/${d.id}`)).status).toBe(200);
    const filtered = (await operator.get(`/deployments?tenant_id=${tenant}`)).body.items;
    expect(filtered.map((x: any) => x.id)).toEqual([d.id]);
    expect((await operator.post(`/deployments/${d.id}/transition`, { to_state: "paused" })).body.deployment.state).toBe("paused");
    for (const c of [underscore, noRole]) {
      expect((await c.get(`/deployments/${d.id}`)).status).toBe(404);
      expect((await c.get(`/deployments?tenant_id=${tenant}`)).body.items).toEqual([]);
    }
  });

  test("a tenant cannot create in another tenant's name; an operator can", async () => {
    const mine = uniq("mine");
    const api = client(base, await token({ tenant: mine }));
    const res = await api.post("/deployments", { slug: "x", tenant_id: uniq("theirs") });
    expect(res.status).toBe(422);
    expect((await api.get("/deployments")).body.items).toEqual([]);
    const operator = client(base, await token({ roles: ["platform-admin"] }));
    expect((await operator.post("/deployments", { slug: "x" })).status).toBe(422);
    const made = await operator.post("/deployments", { slug: "x", tenant_id: mine });
    expect(made.status).toBe(201);
    expect((await api.get("/deployments")).body.items.map((x: any) => x.id)).toEqual([made.body.deployment.id]);
  });

  test("internal actions are not reachable over HTTP", async () => {
    const operator = await token({ roles: ["platform-admin"] });
    for (const path of ["/v1.deployments.find", "/deployments/find", "/subscriptions/forDeployment"]) {
      expect((await http(base, "GET", path, { token: operator })).status).toBe(404);
    }
  });
});
