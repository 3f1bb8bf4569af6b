/** `npm run sim`: serves the DigitalOcean simulator (docs/simulator.md) until interrupted. */
import { startSimulator } from "../sim/simulator";

async function main() {
  const port = Number(process.env.SIM_PORT ?? 3001);
  const host = process.env.SIM_HOST ?? "127.0.0.1";
  const sim = await startSimulator({ port, host });
  console.log(`DigitalOcean simulator listening on ${sim.url} (DO_API_URL=${sim.url})`);
  const stop = () => sim.close().then(() => process.exit(0), () => process.exit(1));
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
