import { execFileSync, spawn } from "node:child_process";
import type { ServiceBroker } from "moleculer";
import { startSimulator, type Simulator } from "../sim/simulator";
import { apiUrl, client, newNamespace, startNode, token, uniq, waitFor } from "./helpers";

/** `printf … | npm run repl` against a running cluster: the REPL is a separate process joining over NATS. */
let sim: Simulator;
let cluster: ServiceBroker;
let ns: string;
let api: ReturnType<typeof client>;
let tenant: string;

beforeAll(async () => {
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });
  sim = await startSimulator({ port: 0, activeAfterMs: 0 });
  ns = newNamespace();
  const provider = { doApiUrl: sim.url, doMaxRetries: 0 };
  cluster = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning", "billing"], {
    nats: ns,
    settings: { inventory: provider, dns: provider, billing: { ...provider, runMs: 0 }, provisioning: { pollMs: 25, backoffMs: 10 } },
  });
  tenant = uniq("repl");
  api = client(apiUrl(cluster), await token({ tenant, sub: "rita" }));
}, 120_000);
afterAll(async () => {
  await cluster.stop();
  await sim.close();
});

function repl(lines: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["dist/bin/repl.js"], { env: { ...process.env, TRANSPORTER: process.env.TEST_NATS_URL, NAMESPACE: ns, LOG_LEVEL: "warn" } });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    const timer = setTimeout(() => (child.kill("SIGKILL"), reject(new Error(`REPL did not quit; output so far:\n${out}`))), 30_000);
    child.on("exit", () => (clearTimeout(timer), resolve(out)));
    child.stdin.end([...lines, "quit", ""].join("\n"));
  });
}

test("deployments, deployment, sagas and saga print the cluster's rows", async () => {
  const plain = (await api.post("/deployments", { slug: "plain-one", state: "trial" })).body.deployment;
  await api.post(`/deployments/${plain.id}/subscribe`, { plan_code: "studio", addons: [{ code: "dedicated_ip", qty: 2 }] });
  const prov = await api.post("/deployments", { slug: "provisioned", provision: true });
  const sagaId = prov.body.saga.id;
  await waitFor(async () => (await api.get(`/sagas/${sagaId}`)).body.saga.status === "succeeded", { what: "saga to succeed" });

  const out = await repl([`deployments --tenant ${tenant}`, `deployment ${plain.id}`, "sagas --status succeeded", `saga ${sagaId}`]);
  const lines = out.split("\n");
  const row = (needle: string) => lines.find((l) => l.includes(needle) && !l.includes("deployment "));
  // deployments: both rows, newest first
  const listStart = lines.findIndex((l) => /^(mol \$ )?id\s+tenant_id\s+slug\s+state/.test(l));
  expect(listStart).toBeGreaterThanOrEqual(0);
  expect(lines[listStart + 2]).toMatch(new RegExp(`${prov.body.deployment.id}\\s+${tenant}\\s+provisioned\\s+active`));
  expect(lines[listStart + 3]).toMatch(new RegExp(`${plain.id}\\s+${tenant}\\s+plain-one\\s+trial`));
  // deployment: header, subscription with snapshot, the created event
  expect(out).toContain(`deployment ${plain.id}  ${tenant}/plain-one  state trial`);
  expect(out).toMatch(/subscription studio v\d+ \d+ USD\/month, active, addons: dedicated_ip×2@400/);
  expect(row("created")).toMatch(/-\s+trial\s+created\s+rita/);
  // sagas: ours among the succeeded, 7/7
  expect(row(sagaId)).toMatch(new RegExp(`${sagaId}\\s+provision\\s+${prov.body.deployment.id}\\s+succeeded\\s+7/7`));
  // saga: every step as a row
  expect(out).toContain(`saga ${sagaId}  deployment ${prov.body.deployment.id}  succeeded`);
  for (const step of ["mark_deployment_provisioning", "create_droplet", "wait_droplet_active", "register_inventory", "link_deployment_resource", "point_deployment_dns", "activate_deployment"]) {
    expect(lines.some((l) => new RegExp(`^${step}\\s+succeeded\\s+1\\s`).test(l))).toBe(true);
  }
  // margin: the subscribed one is in trial, so it earns nothing yet (money views count active, past_due and suspended
  // deployments only) and costs nothing in cloud; the provisioned one costs its droplet and earns nothing
  const revenue = 0;
  const planted = await (await fetch(`${sim.url}/v2/_sim/droplets`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: uniq("stray") }) })).json() as any;
  const money = (await repl([`margin --tenant ${tenant}`, "balance", "drift"])).split("\n");
  const marginRow = (slug: string) => money.find((l) => new RegExp(`^(mol \\$ )?${tenant}\\s+${slug}\\s`).test(l));
  expect(marginRow("plain-one")).toMatch(new RegExp(`trial\\s+USD\\s+${revenue}\\s+0\\s+${revenue}\\s+-\\s+\\[\\]`));
  expect(marginRow("provisioned")).toMatch(/active\s+USD\s+0\s+600\s+-600\s+-\s+\["cost_without_revenue"\]/);
  expect(money.find((l) => /^USD\s+\d+/.test(l))).toMatch(new RegExp(`^USD\\s+${revenue}\\s+600\\s+${revenue - 600}\\s`));
  expect(money.some((l) => /^provider\.currency\s+USD$/.test(l))).toBe(true);
  expect(money.some((l) => /^provider\.month_to_date_usage_cents\s+\d+$/.test(l))).toBe(true);
  expect(money.find((l) => l.includes(String(planted.droplet.id)))).toMatch(/^orphan\s+droplet\s+\d+/);

  // invoices and billing run: subscribing the active one issued its first invoice; a run right after issues none
  await api.post(`/deployments/${prov.body.deployment.id}/subscribe`, { plan_code: "studio" });
  const [inv] = (await api.get(`/invoices?deployment_id=${prov.body.deployment.id}`)).body.items;
  const billing = (await repl([`invoices --tenant ${tenant} --status open`, "billing run", "billing walk"])).split("\n");
  expect(billing.find((l) => l.includes(inv.id))).toMatch(new RegExp(`${inv.id}\\s+${tenant}\\s+${prov.body.deployment.id}\\s+\\d{4}-\\d\\d\\s+${inv.total_cents} USD\\s+open\\s`));
  expect(billing.some((l) => /billing run at \d{4}-\d\d-\d\dT.*: \d+ invoice\(s\) issued, \d+ move\(s\)/.test(l))).toBe(true);
  expect(billing.some((l) => l.includes("usage: billing run"))).toBe(true);

  // the standard commands stay: `nodes` lists the REPL's own node and the cluster's
  const nodes = await repl(["nodes"]);
  expect(nodes).toMatch(/repl-\d+/);
  expect(nodes).toContain(cluster.nodeID);
}, 60_000);
