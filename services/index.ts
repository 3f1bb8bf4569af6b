import type { ServiceSchema } from "moleculer";
import ApiService from "./api.service";
import DeploymentsService from "./deployments.service";
import SubscriptionsService from "./subscriptions.service";
import InventoryService from "./inventory.service";
import DnsService from "./dns.service";
import ProvisioningService from "./provisioning.service";
import BillingService from "./billing.service";
import WebhooksService from "./webhooks.service";

/** Every service a node can run; SERVICES=api,deployments picks some. */
export const ALL_SERVICES: Record<string, ServiceSchema> = {
  api: ApiService,
  deployments: DeploymentsService,
  subscriptions: SubscriptionsService,
  inventory: InventoryService,
  dns: DnsService,
  provisioning: ProvisioningService,
  billing: BillingService,
  webhooks: WebhooksService,
};

export function selectServices(list = process.env.SERVICES): ServiceSchema[] {
  const names = list ? list.split(",").map((s) => s.trim()).filter(Boolean) : Object.keys(ALL_SERVICES);
  const unknown = names.filter((n) => !ALL_SERVICES[n]);
  if (unknown.length) throw new Error(`Unknown service(s) in SERVICES: ${unknown.join(", ")} (known: ${Object.keys(ALL_SERVICES).join(", ")})`);
  return names.map((n) => ALL_SERVICES[n]);
}
