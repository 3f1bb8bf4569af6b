import type { BrokerOptions } from "moleculer";
import { ClearValidator } from "./lib/validator";
import { LogContextMiddleware } from "./lib/log-context";
import { UnavailableMiddleware } from "./lib/errors";

/**
 * Broker settings shared by every node. NATS when TRANSPORTER is set, in-process otherwise;
 * Prometheus metrics only when METRICS_PORT is set.
 */
export function brokerConfig(env = process.env): BrokerOptions {
  const metricsPort = env.METRICS_PORT ? Number(env.METRICS_PORT) : undefined;
  return {
    namespace: env.NAMESPACE ?? "arcadia",
    nodeID: env.NODE_ID || undefined,
    transporter: env.TRANSPORTER ? { type: "NATS", options: natsOptions(env.TRANSPORTER) } : undefined,
    serializer: "JSON",
    logger: env.LOG_LEVEL === "silent" ? false : { type: "Pino", options: { level: env.LOG_LEVEL ?? "info", pino: { options: { base: { node: env.NODE_ID } } } } },
    requestTimeout: 15_000,
    // A node that died without saying goodbye (kill -9) is dropped after 15 s instead of Moleculer's 30 s.
    heartbeatInterval: 5,
    heartbeatTimeout: 15,
    retryPolicy: { enabled: false },
    validator: new ClearValidator(),
    // Access (lib/access.ts) is enforced through the validator, so it runs before parameter validation.
    // UnavailableMiddleware: a database that cannot be reached answers 503 SERVICE_UNAVAILABLE from any action (lib/errors.ts).
    middlewares: [LogContextMiddleware, UnavailableMiddleware],
    metrics: metricsPort
      ? { enabled: true, reporter: [{ type: "Prometheus", options: { port: metricsPort, path: "/metrics" } }] }
      : { enabled: false },
    tracing: { enabled: false },
  };
}

export default brokerConfig();

/**
 * NATS client settings so a node rides out a NATS restart of any length and rejoins by itself: reconnect for
 * ever, every 500 ms (nats.js adds jitter); a node started while NATS is down waits for it instead of exiting;
 * a server that stopped answering is noticed within ~15 s by pings, not by the OS's TCP timeout.
 */
export function natsOptions(url: string) {
  return {
    url,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    pingInterval: 5000,
    maxPingOut: 3,
  };
}
