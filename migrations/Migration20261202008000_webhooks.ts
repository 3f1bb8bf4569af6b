import { Migration } from "@mikro-orm/migrations";

/**
 * The webhooks service's tables: endpoints, the events it received (deduped by their stable id), one delivery
 * row per endpoint and event (its outbox), and the watch journal (a per-deployment sequence of everything
 * GET /deployments/:id/watch streams, so Last-Event-ID resumes from durable, ordered ids).
 */
export class Migration20261202008000_webhooks extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create table webhook_endpoints (
      id uuid primary key,
      tenant_id text null,
      all_tenants boolean not null default false,
      url text not null,
      events jsonb not null default '[]',
      secret text not null,
      created_by text not null,
      inserted_at timestamptz(3) not null,
      deleted_at timestamptz(3) null,
      check (all_tenants = (tenant_id is null))
    )`);
    this.addSql(`create index webhook_endpoints_tenant_idx on webhook_endpoints (tenant_id, inserted_at desc, id desc) where deleted_at is null`);
    this.addSql(`create table webhook_events (
      id text primary key,
      type text not null,
      tenant_id text not null,
      deployment_id uuid null,
      -- For deployment events: their deployment_events id and move, so deliveries follow the deployment's chain.
      dep_event_id bigint null,
      from_state text null,
      to_state text null,
      payload jsonb not null,
      created_at timestamptz(3) not null,
      received_at timestamptz(3) not null default now()
    )`);
    this.addSql(`create index webhook_events_chain_idx on webhook_events (deployment_id, dep_event_id) where dep_event_id is not null`);
    this.addSql(`create table webhook_deliveries (
      id uuid primary key,
      seq bigserial not null unique,
      endpoint_id uuid not null references webhook_endpoints (id) deferrable initially deferred,
      event_id text not null references webhook_events (id) deferrable initially deferred,
      order_key text not null,
      -- When the event happened; with dep_event_id and seq, the order deliveries of one endpoint and deployment go in.
      event_at timestamptz(3) not null,
      dep_event_id bigint null,
      status text not null check (status in ('pending','delivering','succeeded','failed','cancelled')),
      attempts integer not null default 0,
      next_attempt_at timestamptz(3) null,
      claim_id uuid null,
      claimed_until timestamptz(3) null,
      last_response_code integer null,
      last_error text null,
      history jsonb not null default '[]',
      created_at timestamptz(3) not null,
      updated_at timestamptz(3) not null,
      delivered_at timestamptz(3) null,
      constraint webhook_deliveries_once unique (endpoint_id, event_id)
    )`);
    this.addSql(`create index webhook_deliveries_open_idx on webhook_deliveries (seq) where status in ('pending','delivering')`);
    this.addSql(`create index webhook_deliveries_order_idx on webhook_deliveries (endpoint_id, order_key, seq) where status in ('pending','delivering')`);
    this.addSql(`create index webhook_deliveries_endpoint_idx on webhook_deliveries (endpoint_id, seq desc)`);
    this.addSql(`create table watch_heads (
      deployment_id uuid primary key,
      tenant_id text null,
      seq bigint not null default 0
    )`);
    this.addSql(`create table watch_events (
      deployment_id uuid not null,
      seq bigint not null,
      type text not null,
      dedupe_key text not null,
      data jsonb not null,
      created_at timestamptz(3) not null,
      primary key (deployment_id, seq),
      constraint watch_events_once unique (deployment_id, dedupe_key)
    )`);
    this.addSql(`create table webhook_feed_cursors (
      source text primary key,
      position timestamptz(3) not null
    )`);
  }

  override async down(): Promise<void> {
    for (const t of ["webhook_feed_cursors", "watch_events", "watch_heads", "webhook_deliveries", "webhook_events", "webhook_endpoints"]) this.addSql(`drop table if exists ${t}`);
  }
}
