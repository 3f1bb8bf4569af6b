import { Migration } from "@mikro-orm/migrations";

/**
 * Inventory (cloud_resources) and DNS (dns_records). deployment_id is a plain column without a foreign key:
 * deployments belong to another service, which may live in another database one day (as subscriptions do).
 */
export class Migration20261121010000_inventory_dns extends Migration {
  override async up(): Promise<void> {
    // inventory service
    this.addSql(`create table cloud_resources (
      id uuid primary key,
      provider text not null,
      kind text not null,
      external_id text not null,
      name text not null,
      region text not null,
      size_slug text not null,
      ipv4 text null,
      status text not null,
      tags text[] not null default '{}',
      monthly_cost_cents integer not null check (monthly_cost_cents >= 0),
      currency char(3) not null,
      tenant_id text not null,
      deployment_id uuid null,
      saga_id text null,
      inserted_at timestamptz(3) not null,
      updated_at timestamptz(3) not null,
      destroyed_at timestamptz(3) null,
      version integer not null default 1,
      constraint cloud_resources_provider_external_unique unique (provider, external_id)
    )`);
    this.addSql(`create index cloud_resources_newest_idx on cloud_resources (inserted_at desc, id desc)`);
    this.addSql(`create index cloud_resources_tenant_newest_idx on cloud_resources (tenant_id, inserted_at desc, id desc)`);
    this.addSql(`create index cloud_resources_deployment_idx on cloud_resources (deployment_id) where deployment_id is not null`);
    this.addSql(`create index cloud_resources_saga_idx on cloud_resources (saga_id) where saga_id is not null`);

    // dns service
    this.addSql(`create table dns_records (
      id uuid primary key,
      tenant_id text not null,
      deployment_id uuid not null,
      fqdn text not null,
      domain text not null,
      record_name text not null,
      type text not null default 'A' check (type in ('A')),
      provider_record_id bigint null,
      data text not null,
      previous_data text null,
      previous_provider_record_id bigint null,
      created_by_us boolean not null default false,
      status text not null check (status in ('pointing','pointed','reverted')),
      inserted_at timestamptz(3) not null,
      updated_at timestamptz(3) not null,
      version integer not null default 1,
      constraint dns_records_fqdn_unique unique (fqdn),
      constraint dns_records_deployment_unique unique (deployment_id)
    )`);
    this.addSql(`create index dns_records_tenant_idx on dns_records (tenant_id)`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop table if exists dns_records`);
    this.addSql(`drop table if exists cloud_resources`);
  }
}
