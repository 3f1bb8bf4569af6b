import { Migration } from "@mikro-orm/migrations";

/**
 * deployment_events doubles as the outbox of the deployments.created / deployments.transitioned events:
 * `published_at` is set once the event went out, and a sweep publishes what a crash left unpublished.
 */
export class Migration20261122000000_event_publishing extends Migration {
  override async up(): Promise<void> {
    // Events written before this migration were published when they happened.
    this.addSql(`alter table deployment_events add column published_at timestamptz(3) null`);
    this.addSql(`update deployment_events set published_at = occurred_at`);
    this.addSql(`create index deployment_events_unpublished_idx on deployment_events (id) where published_at is null`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index if exists deployment_events_unpublished_idx`);
    this.addSql(`alter table deployment_events drop column published_at`);
  }
}
