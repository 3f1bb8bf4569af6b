import { createHmac } from "node:crypto";
import { signatureHeader, verifySignature, retryDelayMs, newSecret, MAX_RETRY_DELAY_MS } from "../services/webhooks/sign";
import { blockedRange, urlProblem } from "../services/webhooks/url";
import { fromDeploymentEvent, fromRuntimeChanged, fromSagaEvent, fromStepEvent, fromInvoiceEvent, wants } from "../services/webhooks/events";

/* The pure parts of webhooks: signature, retry schedule, URL rules, event mapping. */

describe("Arcadia-Signature", () => {
  const secret = "whsec_test";
  const body = '{"id":"evt_1","type":"deployment.created"}';

  test("is t=<unix s>,v1=<hex HMAC-SHA256 of '<t>.<raw body>'>", () => {
    const h = signatureHeader(secret, body, 1_800_000_000.7);
    const expected = createHmac("sha256", secret).update(`1800000000.${body}`).digest("hex");
    expect(h).toBe(`t=1800000000,v1=${expected}`);
  });

  test("verifies the same body and secret, and nothing else", () => {
    const now = 1_800_000_000;
    const h = signatureHeader(secret, body, now);
    expect(verifySignature(secret, body, h, now)).toBe(true);
    expect(verifySignature("other", body, h, now)).toBe(false);
    expect(verifySignature(secret, body + " ", h, now)).toBe(false);
    expect(verifySignature(secret, body, h.replace("t=1800000000", "t=1800000001"), now)).toBe(false);
    expect(verifySignature(secret, body, undefined, now)).toBe(false);
    expect(verifySignature(secret, body, "garbage", now)).toBe(false);
  });

  test("refuses an old timestamp (replay) beyond the tolerance", () => {
    const h = signatureHeader(secret, body, 1_800_000_000);
    expect(verifySignature(secret, body, h, 1_800_000_000 + 301)).toBe(false);
    expect(verifySignature(secret, body, h, 1_800_000_000 + 299)).toBe(true);
  });

  test("secrets are random and recognisable", () => {
    const a = newSecret();
    expect(a).toMatch(/^whsec_[A-Za-z0-9_-]{43}$/);
    expect(newSecret()).not.toBe(a);
  });
});

test("retries: base, doubling, capped at 6 h", () => {
  expect([1, 2, 3, 4].map((n) => retryDelayMs(n, 30_000))).toEqual([30_000, 60_000, 120_000, 240_000]);
  expect(retryDelayMs(11, 30_000)).toBe(MAX_RETRY_DELAY_MS);
  expect(retryDelayMs(100, 30_000)).toBe(MAX_RETRY_DELAY_MS);
  // 12 attempts at the defaults span 14.5 h (30 s … 256 min, then 6 h).
  const total = Array.from({ length: 11 }, (_, i) => retryDelayMs(i + 1, 30_000)).reduce((a, b) => a + b, 0);
  expect(total / 3_600_000).toBeCloseTo(14.5, 1);
});

describe("webhook URLs", () => {
  test.each([
    ["127.0.0.1", "loopback"], ["10.1.2.3", "private"], ["192.168.0.1", "private"], ["172.16.5.5", "private"],
    ["169.254.169.254", "linkLocal"], ["::1", "loopback"], ["fe80::1", "linkLocal"], ["fd00:ec2::254", "uniqueLocal"],
    ["::ffff:127.0.0.1", "loopback"], ["::ffff:169.254.169.254", "linkLocal"], ["0.0.0.0", "unspecified"], ["224.0.0.1", "multicast"],
  ])("%s is refused (%s)", (ip, range) => expect(blockedRange(ip)).toBe(range));

  test.each(["8.8.8.8", "203.0.114.1", "2606:4700:4700::1111"])("%s is public", (ip) => expect(blockedRange(ip)).toBeNull());

  test("scheme, IP literals and resolved names", async () => {
    const resolve = async (h: string) => (h === "internal.example" ? ["10.0.0.5"] : h === "mixed.example" ? ["8.8.8.8", "127.0.0.1"] : ["8.8.4.4"]);
    const check = (u: string, allowPrivate = false) => urlProblem(u, { allowPrivate, resolve });
    expect(await check("ftp://8.8.8.8/x")).toMatch(/http or https/);
    expect(await check("not a url")).toMatch(/absolute URL/);
    expect(await check("http://169.254.169.254/latest/meta-data")).toMatch(/linkLocal/);
    expect(await check("http://[::1]:8080/")).toMatch(/loopback/);
    expect(await check("http://2130706433/")).toMatch(/loopback/); // 127.0.0.1 as one number
    expect(await check("https://internal.example/hook")).toMatch(/private/);
    expect(await check("https://mixed.example/hook")).toMatch(/loopback/);
    expect(await check("https://hooks.example/hook")).toBeNull();
    expect(await check("http://127.0.0.1:9/x", true)).toBeNull();
    expect(await check("ftp://127.0.0.1/x", true)).toMatch(/http or https/);
    expect(await urlProblem("https://nx.invalid/", { allowPrivate: false, resolve: async () => Promise.reject(new Error("ENOTFOUND")) })).toMatch(/does not resolve/);
  });
});

describe("event mapping", () => {
  const deployment = { id: "6f1c1e0e-2c57-4b0b-9a55-0f2a4f1c9d11", tenant_id: "acme", state: "active" };
  test("deployment events: stable id from the deployment_events row, created vs transitioned", () => {
    const created = fromDeploymentEvent({ deployment, event: { id: 7, from_state: null, to_state: "active", occurred_at: "2026-12-02T06:00:00.000Z" } });
    expect(created.envelope).toMatchObject({ id: "evt_dep_7", type: "deployment.created", tenant_id: "acme", created_at: "2026-12-02T06:00:00.000Z", deployment_id: deployment.id });
    expect(created.watch).toMatchObject({ deployment_id: deployment.id, type: "deployment.created", dedupe_key: "dep:7" });
    const moved = fromDeploymentEvent({ deployment, event: { id: 8, from_state: "active", to_state: "paused" } });
    expect(moved.envelope?.type).toBe("deployment.transitioned");
    expect(fromDeploymentEvent({})).toEqual({});
  });
  test("the same source event maps to the same id (repeats are recognised)", () => {
    const p = { deployment_id: deployment.id, tenant_id: "acme", runtime: { status: "running" }, occurred_at: "2026-12-02T06:00:00.000Z" };
    expect(fromRuntimeChanged(p).envelope!.id).toBe(fromRuntimeChanged({ ...p }).envelope!.id);
    expect(fromRuntimeChanged({ ...p, runtime: { status: "stopped" } }).envelope!.id).not.toBe(fromRuntimeChanged(p).envelope!.id);
  });
  test("a runtime change with its outbox row id (live or from v1.deployments.runtimeSince) is evt_rt_<row id>", () => {
    const p = { deployment_id: deployment.id, tenant_id: "acme", runtime: { status: "running" }, occurred_at: "2026-12-02T06:00:00.000Z", event_id: 42 };
    const m = fromRuntimeChanged(p);
    expect(m.envelope).toMatchObject({ id: "evt_rt_42", type: "deployment.runtime_changed", created_at: "2026-12-02T06:00:00.000Z", deployment_id: deployment.id });
    expect(m.watch).toMatchObject({ dedupe_key: "rt:42" });
    // Two changes to the same status in the same millisecond are two events.
    expect(fromRuntimeChanged({ ...p, event_id: 43 }).envelope!.id).toBe("evt_rt_43");
  });
  test("sagas: finished statuses are webhooks, every status a watch line; steps are watch lines only", () => {
    const ok = fromSagaEvent("succeeded", { saga_id: "s1", deployment_id: deployment.id, tenant_id: "acme", status: "succeeded" });
    expect(ok.envelope).toMatchObject({ id: "evt_saga_s1_succeeded", type: "saga.succeeded" });
    expect(ok.envelope!.data).toEqual({ saga: expect.objectContaining({ id: "s1", kind: "provision" }) });
    expect(fromSagaEvent("started", { saga_id: "s1", deployment_id: deployment.id, tenant_id: "acme" }).envelope).toBeUndefined();
    const step = fromStepEvent("succeeded", { saga_id: "s1", deployment_id: deployment.id, step: "create_droplet", attempts: 1 });
    expect(step).toEqual({ watch: expect.objectContaining({ type: "saga.step.succeeded", dedupe_key: "step:s1:create_droplet:succeeded:1" }) });
  });
  test("invoices", () => {
    const m = fromInvoiceEvent("paid", { invoice: { id: "i1", tenant_id: "acme", deployment_id: deployment.id, paid_at: "2026-12-03T00:00:00.000Z" } });
    expect(m.envelope).toMatchObject({ id: "evt_inv_i1_paid", type: "invoice.paid", created_at: "2026-12-03T00:00:00.000Z" });
    // A v1.billing.eventsSince item: the same id as the live event; an overdue is dated by its outbox row.
    const item = { outbox_id: 3, position: 2, type: "overdue", occurred_at: "2026-12-04T00:00:00.000Z", event_id: "i1:overdue", invoice: { id: "i1", tenant_id: "acme", deployment_id: deployment.id } };
    expect(fromInvoiceEvent("overdue", item).envelope).toMatchObject({ id: "evt_inv_i1_overdue", type: "invoice.overdue", created_at: "2026-12-04T00:00:00.000Z", deployment_id: deployment.id });
  });
  test("an endpoint with no types wants all", () => {
    expect(wants([], "invoice.paid")).toBe(true);
    expect(wants(["deployment.created"], "invoice.paid")).toBe(false);
  });
});

test("the README's verification snippet accepts our signatures and refuses tampering", () => {
  const readme = require("node:fs").readFileSync(require("node:path").join(__dirname, "../README.md"), "utf8") as string;
  const block = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]).find((b) => b.includes("function verifyArcadiaSignature"));
  expect(block).toBeDefined();
  const verify = new Function("require", `${block}\nreturn verifyArcadiaSignature;`)(require) as (raw: string, header: unknown, secret: string) => boolean;
  const secret = newSecret();
  const raw = JSON.stringify({ id: "evt_dep_1", type: "deployment.created", created_at: new Date().toISOString(), tenant_id: "acme", data: {} });
  const header = signatureHeader(secret, raw, Date.now() / 1000);
  expect(verify(raw, header, secret)).toBe(true);
  expect(verify(raw.replace("acme", "evil"), header, secret)).toBe(false);
  expect(verify(raw, header, newSecret())).toBe(false);
  expect(verify(raw, signatureHeader(secret, raw, Date.now() / 1000 - 3600), secret)).toBe(false);
  expect(verify(raw, undefined, secret)).toBe(false);
});
