import { ServiceBroker } from "moleculer";
import { brokerConfig } from "../moleculer.config";
import { migrate } from "../lib/db";
import { useEmbeddedPostgres } from "../lib/embedded-postgres";
import { selectServices } from "../services";
import { startSimulator } from "../sim/simulator";
import { replCommands, startRepl } from "../lib/repl-commands";

const DB_SERVICES = ["api", "deployments", "subscriptions", "inventory", "dns", "provisioning", "billing"];

/**
 * One node: the services named in SERVICES (all by default). Without DATABASE_URL it runs on the embedded
 * PostgreSQL, so `npm install && npm start` needs nothing else on the machine.
 */
async function main() {
  const services = selectServices();
  const needsDb = services.some((s) => DB_SERVICES.includes(s.name as string));
  const embedded = needsDb && !process.env.DATABASE_URL ? await useEmbeddedPostgres() : null;
  if (needsDb) await migrate();

  // Without a real provider the embedded mode brings its own DigitalOcean simulator.
  const needsProvider = services.some((s) => ["inventory", "dns", "provisioning", "billing"].includes(s.name as string));
  let sim: Awaited<ReturnType<typeof startSimulator>> | null = null;
  if (needsProvider && !process.env.DO_API_URL) {
    sim = await startSimulator({ port: Number(process.env.SIM_PORT ?? 3001), host: process.env.SIM_HOST ?? "127.0.0.1" });
    process.env.DO_API_URL = sim.url;
    // Simulated droplets boot in SIM_ACTIVE_AFTER_MS (1.5 s), not minutes: wait and poll on that scale.
    process.env.PROVISION_ACTIVE_TIMEOUT_MS ??= "30000";
    process.env.PROVISION_POLL_MS ??= "250";
  }

  const broker = new ServiceBroker({
    ...brokerConfig(),
    replOptions: { customCommands: replCommands } as any,
    stopped: async () => {
      await sim?.close();
      await embedded?.stop();
    },
  });
  services.forEach((s) => broker.createService(s));
  await broker.start();

  if (services.some((s) => s.name === "api")) {
    const port = process.env.PORT ?? 3000;
    const base = `http://127.0.0.1:${port}/api/v1`;
    console.log(`
arcadia-cloud is up${embedded ? ` (embedded PostgreSQL in ${embedded.dataDir})` : ""}: ${base}${sim ? `\n  DigitalOcean simulator: ${sim.url} (control API: ${sim.url}/v2/_sim/state)` : ""}
  get a token:   TOKEN=$(npm run --silent token -- --tenant acme --roles admin)
  first call:    curl -s -H "Authorization: Bearer $TOKEN" ${base}/deployments
  provision:     curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"slug":"shop","provision":true}' ${base}/deployments
  operator:      npm run --silent token -- --roles platform-admin
`);
  }
  if (process.argv.includes("--repl")) startRepl(broker);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
