import { Migration } from "@mikro-orm/migrations";

/** The inventory service's log of operator actions on drift (docs/drift.md). */
export class Migration20261121040000_drift extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create table drift_actions (
      id uuid primary key,
      action text not null check (action in ('adopt','destroy','mark_destroyed','sync')),
      resource text not null check (resource in ('droplet','dns_record')),
      external_id text not null,
      entry_id text null,
      actor text not null,
      tenant_id text null,
      deployment_id uuid null,
      resource_id uuid null,
      result text not null check (result in ('succeeded','rejected','failed')),
      error text null,
      details jsonb not null default '{}',
      created_at timestamptz(3) not null
    )`);
    this.addSql(`create index drift_actions_newest_idx on drift_actions (created_at desc, id desc)`);
    this.addSql(`create index drift_actions_target_idx on drift_actions (resource, external_id, created_at desc)`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists drift_actions`);
  }
}
