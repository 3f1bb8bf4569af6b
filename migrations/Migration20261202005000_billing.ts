import { Migration } from "@mikro-orm/migrations";

/**
 * Billing's tables (SPEC §4, docs/billing.md): invoices and their lines, the invoice events' outbox, the shared
 * test clock, what billing observed of each deployment (billing-clock times of trial, conversion and
 * cancellation), per-deployment move leases and the log of the moves billing made. Also `subscriptions.started_at`:
 * the billing-clock time of subscribing, which a first invoice is prorated from.
 */
export class Migration20261202005000_billing extends Migration {
  override async up(): Promise<void> {
    // One row, only used with BILLING_TEST_CLOCK=1: every node reads the same "now", which stands still between moves.
    this.addSql(`create table billing_clock (
      id smallint primary key default 1 check (id = 1),
      now timestamptz(3) not null
    )`);
    this.addSql(`create table invoices (
      id uuid primary key,
      tenant_id text not null,
      deployment_id uuid not null,
      subscription_id uuid not null,
      period_start timestamptz(3) not null,
      period_end timestamptz(3) not null,
      currency char(3) not null,
      total_cents integer not null check (total_cents >= 0),
      status text not null default 'open' check (status in ('open','paid','void')),
      issued_at timestamptz(3) not null,
      due_at timestamptz(3) not null,
      paid_at timestamptz(3) null,
      voided_at timestamptz(3) null,
      payment_reference text null,
      overdue_at timestamptz(3) null,
      inserted_at timestamptz(3) not null default now(),
      constraint invoices_subscription_period_unique unique (subscription_id, period_start)
    )`);
    this.addSql(`create index invoices_list_idx on invoices (issued_at desc, id desc)`);
    this.addSql(`create index invoices_tenant_list_idx on invoices (tenant_id, issued_at desc, id desc)`);
    this.addSql(`create index invoices_deployment_idx on invoices (deployment_id, issued_at desc, id desc)`);
    this.addSql(`create index invoices_open_idx on invoices (deployment_id, due_at) where status = 'open'`);
    this.addSql(`create table invoice_lines (
      invoice_id uuid not null references invoices (id) on delete cascade deferrable initially deferred,
      position smallint not null,
      kind text not null check (kind in ('plan','addon')),
      code text not null,
      description text not null,
      qty integer not null check (qty > 0),
      unit_price_cents integer not null check (unit_price_cents >= 0),
      amount_cents integer not null check (amount_cents >= 0),
      primary key (invoice_id, position)
    )`);
    // The outbox of billing.invoice.{issued,paid,overdue}, published at least once. Each happens once per invoice (the
    // insert, the open → paid move under the row lock, overdue_at set once); one row names every invoice a statement
    // touched, so a month start's 10,000 invoices cost a handful of outbox rows, not 10,000.
    this.addSql(`create table invoice_events (
      id bigserial primary key,
      type text not null check (type in ('issued','paid','overdue')),
      invoice_ids uuid[] not null,
      occurred_at timestamptz(3) not null default now(),
      published_at timestamptz(3) null
    )`);
    this.addSql(`create index invoice_events_unpublished_idx on invoice_events (id) where published_at is null`);
    this.addSql(`create table billing_deployments (
      deployment_id uuid primary key,
      state text null,
      last_event_id bigint null,
      trial_ends_at timestamptz(3) null,
      converted_at timestamptz(3) null,
      cancelled_at timestamptz(3) null,
      updated_at timestamptz(3) not null default now()
    )`);
    // A billing node decides and makes a deployment's moves only while it holds that deployment's lease.
    this.addSql(`create table billing_locks (
      deployment_id uuid primary key,
      holder text not null,
      expires_at timestamptz(3) not null
    )`);
    this.addSql(`create table billing_moves (
      id bigserial primary key,
      deployment_id uuid not null,
      from_state text not null,
      to_state text not null,
      reason text not null,
      at timestamptz(3) not null,
      node text not null,
      occurred_at timestamptz(3) not null default now()
    )`);
    this.addSql(`create index billing_moves_deployment_idx on billing_moves (deployment_id, id)`);
    this.addSql(`alter table subscriptions add column started_at timestamptz(3) null`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table subscriptions drop column if exists started_at`);
    for (const t of ["billing_moves", "billing_locks", "billing_deployments", "invoice_events", "invoice_lines", "invoices", "billing_clock"]) this.addSql(`drop table if exists ${t}`);
  }
}
