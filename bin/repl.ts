import { ServiceBroker } from "moleculer";
import { brokerConfig } from "../moleculer.config";
import { replCommands, startRepl } from "../lib/repl-commands";

/**
 * `npm run repl`: joins the cluster over NATS (TRANSPORTER, default nats://127.0.0.1:4222) as a node without
 * services, with the operator commands added to moleculer-repl's own.
 */
async function main() {
  const env = { ...process.env, TRANSPORTER: process.env.TRANSPORTER || "nats://127.0.0.1:4222", LOG_LEVEL: process.env.LOG_LEVEL ?? "warn" };
  const broker = new ServiceBroker({ ...brokerConfig(env), nodeID: process.env.NODE_ID || `repl-${process.pid}`, replOptions: { customCommands: replCommands } as any });
  await broker.start();
  // Commands piped in run at once: wait until the cluster's services are known.
  await broker.waitForServices(["v1.deployments"], Number(process.env.REPL_DISCOVERY_MS ?? 10_000)).catch(() => console.error("warning: v1.deployments not discovered yet"));
  startRepl(broker);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
