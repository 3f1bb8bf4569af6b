import { Migration } from "@mikro-orm/migrations";

/** The provisioning service's saga, step and compensation-outbox tables. */
export class Migration20261121030000_provisioning extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create table sagas (
      id uuid primary key,
      deployment_id uuid not null,
      tenant_id text not null,
      input jsonb not null,
      status text not null check (status in ('running','succeeded','compensating','compensated','compensation_failed')),
      owner_node text null,
      lease_until timestamptz(3) null,
      started_at timestamptz(3) not null,
      finished_at timestamptz(3) null,
      error text null,
      updated_at timestamptz(3) not null
    )`);
    this.addSql(`create index sagas_deployment_idx on sagas (deployment_id, started_at desc)`);
    this.addSql(`create index sagas_open_idx on sagas (lease_until) where status in ('running','compensating')`);
    this.addSql(`create table saga_steps (
      id uuid primary key,
      saga_id uuid not null references sagas (id) on delete cascade deferrable initially deferred,
      idx integer not null,
      name text not null,
      status text not null check (status in ('pending','running','succeeded','failed','compensating','compensated','compensation_failed','skipped')),
      attempts integer not null default 0,
      started_at timestamptz(3) null,
      finished_at timestamptz(3) null,
      error text null,
      output jsonb not null default '{}',
      compensation_attempts integer not null default 0,
      compensation_error text null,
      compensated_at timestamptz(3) null,
      constraint saga_steps_unique unique (saga_id, name)
    )`);
    this.addSql(`create table saga_compensations (
      id uuid primary key,
      saga_id uuid not null references sagas (id) on delete cascade deferrable initially deferred,
      step_name text not null,
      owner text not null,
      payload jsonb not null,
      status text not null check (status in ('pending','sent','confirmed','failed')),
      attempts integer not null default 0,
      next_attempt_at timestamptz(3) not null,
      last_error text null,
      created_at timestamptz(3) not null,
      confirmed_at timestamptz(3) null
    )`);
    this.addSql(`create index saga_compensations_saga_idx on saga_compensations (saga_id, step_name)`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists saga_compensations`);
    this.addSql(`drop table if exists saga_steps`);
    this.addSql(`drop table if exists sagas`);
  }
}
