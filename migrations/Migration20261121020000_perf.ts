import { Migration } from "@mikro-orm/migrations";

/**
 * Indexes the read paths were missing. GET /deployments/:id reads a subscription's plan changes by
 * subscription_id (ordered by occurred_at); without this index every such read, and every cascade delete of a
 * subscription, is a sequential scan of subscription_changes (0.9 ms at 10k rows, growing with the table).
 * subscription_addons is already covered by its (subscription_id, addon_code) unique constraint.
 */
export class Migration20261121020000_perf extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create index subscription_changes_subscription_idx on subscription_changes (subscription_id, occurred_at)`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index if exists subscription_changes_subscription_idx`);
  }
}
