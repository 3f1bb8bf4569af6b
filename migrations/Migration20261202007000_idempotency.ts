import { Migration } from "@mikro-orm/migrations";

/**
 * Idempotency keys (SPEC §9), owned by the gateway layer (services/api/idempotency.ts) and shared by every gateway
 * node. One row per (scope, key): scope is the tenant (`tenant:<id>`) or, for operator tokens, the operator
 * (`operator:<sub>`). `response_status` null = the first request is still being handled.
 */
export class Migration20261202007000_idempotency extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create table idempotency_keys (
      scope text not null,
      key varchar(255) not null,
      method varchar(10) not null,
      path text not null,
      body_hash char(64) not null,
      created_at timestamptz(3) not null,
      locked_at timestamptz(3) null,
      response_status integer null,
      response_body text null,
      primary key (scope, key)
    )`);
    this.addSql(`create index idempotency_keys_created_at_idx on idempotency_keys (created_at)`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists idempotency_keys`);
  }
}
