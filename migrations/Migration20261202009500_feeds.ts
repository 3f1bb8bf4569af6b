import { Migration } from "@mikro-orm/migrations";

/**
 * Feeds for consumers that must not miss an event broadcast while none of their nodes ran (the webhooks catch-up,
 * services/webhooks/README.md): deployments' runtime changes get an outbox row of their own, written in the same
 * transaction as the runtime update; finished sagas and billing's invoice_events are read by time, so both get an
 * index for their feed's keyset.
 */
export class Migration20261202009500_feeds extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create table deployment_runtime_events (
      id bigserial primary key,
      deployment_id uuid not null references deployments (id) on delete cascade,
      tenant_id text not null,
      status text not null,
      droplet_id bigint null,
      ipv4 text null,
      hostname text null,
      occurred_at timestamptz(3) not null
    )`);
    this.addSql(`create index deployment_runtime_events_time_idx on deployment_runtime_events (occurred_at, id)`);
    this.addSql(`create index deployment_runtime_events_deployment_idx on deployment_runtime_events (deployment_id, id)`);
    this.addSql(`create index sagas_finished_idx on sagas (finished_at, id) where finished_at is not null`);
    this.addSql(`create index invoice_events_time_idx on invoice_events (occurred_at, id)`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop index if exists invoice_events_time_idx`);
    this.addSql(`drop index if exists sagas_finished_idx`);
    this.addSql(`drop table if exists deployment_runtime_events`);
  }
}
