import { Migration20261121000000_foundation } from "./Migration20261121000000_foundation";
import { Migration20261121010000_inventory_dns } from "./Migration20261121010000_inventory_dns";
import { Migration20261121030000_provisioning } from "./Migration20261121030000_provisioning";
import { Migration20261121020000_perf } from "./Migration20261121020000_perf";
import { Migration20261121040000_drift } from "./Migration20261121040000_drift";
import { Migration20261122000000_event_publishing } from "./Migration20261122000000_event_publishing";
import { Migration20261202002000_saga_kinds } from "./Migration20261202002000_saga_kinds";
import { Migration20261202003000_lifecycle } from "./Migration20261202003000_lifecycle";
import { Migration20261202005000_billing } from "./Migration20261202005000_billing";
import { Migration20261202006000_catalog } from "./Migration20261202006000_catalog";
import { Migration20261202007000_idempotency } from "./Migration20261202007000_idempotency";
import { Migration20261202008000_webhooks } from "./Migration20261202008000_webhooks";
import { Migration20261202009500_feeds } from "./Migration20261202009500_feeds";
import { Migration20261202010000_webhooks_ingest } from "./Migration20261202010000_webhooks_ingest";
import { Migration20261202011000_saga_functions } from "./Migration20261202011000_saga_functions";

/** Every migration, in order. Listed explicitly so compiled and test runs load the same set without globbing. */
export const migrationsList = [
  { name: "Migration20261121000000_foundation", class: Migration20261121000000_foundation },
  { name: "Migration20261121010000_inventory_dns", class: Migration20261121010000_inventory_dns },
  { name: "Migration20261121020000_perf", class: Migration20261121020000_perf },
  { name: "Migration20261121030000_provisioning", class: Migration20261121030000_provisioning },
  { name: "Migration20261121040000_drift", class: Migration20261121040000_drift },
  { name: "Migration20261122000000_event_publishing", class: Migration20261122000000_event_publishing },
  { name: "Migration20261202002000_saga_kinds", class: Migration20261202002000_saga_kinds },
  { name: "Migration20261202003000_lifecycle", class: Migration20261202003000_lifecycle },
  { name: "Migration20261202005000_billing", class: Migration20261202005000_billing },
  { name: "Migration20261202006000_catalog", class: Migration20261202006000_catalog },
  { name: "Migration20261202007000_idempotency", class: Migration20261202007000_idempotency },
  { name: "Migration20261202008000_webhooks", class: Migration20261202008000_webhooks },
  { name: "Migration20261202009500_feeds", class: Migration20261202009500_feeds },
  { name: "Migration20261202010000_webhooks_ingest", class: Migration20261202010000_webhooks_ingest },
  { name: "Migration20261202011000_saga_functions", class: Migration20261202011000_saga_functions },
];
