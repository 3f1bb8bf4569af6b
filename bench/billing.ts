import { ServiceBroker } from "moleculer";
import { Client } from "pg";
import { loadavg } from "node:os";
import { migrate } from "../lib/db";
import { systemUser } from "../lib/access";
import { brokerConfig } from "../moleculer.config";
import { ALL_SERVICES } from "../services";
import { freshDatabase } from "./lib";

/**
 * bench:billing — BENCH_SUBS (10,000) billable subscriptions over BENCH_TENANTS (100) tenants, each with last
 * month's invoice, and one billing run at the first instant of the new month (test clock): the run's time and
 * invoices/s. In the same process, the floor: one INSERT … SELECT (with CTEs) writing the same invoice and line
 * rows straight from the subscription tables, and the ratio run ÷ floor (target ≤ 3). The run is one broker with
 * deployments, subscriptions and billing in process, so it measures billing's own work (reads through the owning
 * services' actions, drafts, the bulk insert, the issued events), not the transporter.
 */
const DB = process.env.BENCH_DATABASE_URL ?? "postgresql://postgres@127.0.0.1:5432/arcadia_bench_billing";
const SUBS = Number(process.env.BENCH_SUBS ?? 10_000);
const TENANTS = Number(process.env.BENCH_TENANTS ?? 100);
const PERIOD = new Date(Date.UTC(2031, 0, 1)); // the month the run bills; last month is December 2030

async function seed(pg: Client) {
  const prev = new Date(Date.UTC(2030, 11, 1)).toISOString();
  await pg.query(`insert into deployments (id, tenant_id, slug, display_name, region, state, state_since, template_code, inserted_at, updated_at)
    select gen_random_uuid(), 'tenant-' || (i % ${TENANTS}), 'd-' || i, 'Deployment ' || i, 'nyc3', 'active', now(), 'arcadia-app', now() - (i || ' seconds')::interval, now()
    from generate_series(1, ${SUBS}) i`);
  await pg.query(`insert into subscriptions (id, deployment_id, tenant_id, plan_code, plan_version_id, status, current_period_start, current_period_end, started_at, inserted_at, updated_at)
    select gen_random_uuid(), id, tenant_id, 'studio', '00000000-0000-4000-8000-000000000102', 'active', $1::timestamptz, $1::timestamptz + interval '1 month', $1::timestamptz, now(), now() from deployments`, [prev]);
  // An addon on every third subscription, two on every fifth (like bench:api's seed).
  await pg.query(`insert into subscription_addons (id, subscription_id, addon_code, unit_price_cents, currency, qty, attached_at)
    select gen_random_uuid(), id, 'extra_backups', 500, 'USD', 1, now() from subscriptions where get_byte(uuid_send(id), 15) % 3 = 0`);
  await pg.query(`insert into subscription_addons (id, subscription_id, addon_code, unit_price_cents, currency, qty, attached_at)
    select gen_random_uuid(), id, 'storage_50gb', 750, 'USD', 2, now() from subscriptions where get_byte(uuid_send(id), 14) % 5 = 0`);
  // Last month's invoice (paid), so the run issues exactly one full invoice per subscription.
  await pg.query(`insert into invoices (id, tenant_id, deployment_id, subscription_id, period_start, period_end, currency, total_cents, status, issued_at, due_at, paid_at)
    select gen_random_uuid(), tenant_id, deployment_id, id, $1::timestamptz, $1::timestamptz + interval '1 month', 'USD', 4900, 'paid', $1::timestamptz, $1::timestamptz + interval '7 days', $1::timestamptz from subscriptions`, [prev]);
  await pg.query("insert into billing_clock (id, now) values (1, $1::timestamptz - interval '1 hour')", [PERIOD.toISOString()]);
  await pg.query("analyze");
}

/** The same invoice and line rows as the run writes, in one statement, from the tables directly. */
const FLOOR_SQL = `
  with subs as (
    select s.id, s.tenant_id, s.deployment_id, s.plan_code, pl.name as plan_name, v.version, v.price_cents, v.currency, gen_random_uuid() as invoice_id
    from subscriptions s join plan_versions v on v.id = s.plan_version_id join plans pl on pl.code = v.plan_code join deployments d on d.id = s.deployment_id
    where s.status = 'active' and d.state in ('active', 'past_due', 'suspended')
  ), adds as (
    select a.subscription_id, a.addon_code, ad.name, a.unit_price_cents, a.qty, a.currency,
           row_number() over (partition by a.subscription_id order by a.attached_at, a.addon_code) as position
    from subscription_addons a join addons ad on ad.code = a.addon_code
  ), inv as (
    insert into invoices (id, tenant_id, deployment_id, subscription_id, period_start, period_end, currency, total_cents, status, issued_at, due_at)
    select s.invoice_id, s.tenant_id, s.deployment_id, s.id, $1::timestamptz, $1::timestamptz + interval '1 month', s.currency,
           s.price_cents + coalesce((select sum(a.unit_price_cents * a.qty) from adds a where a.subscription_id = s.id and a.currency = s.currency), 0),
           'open', $1::timestamptz, $1::timestamptz + interval '7 days'
    from subs s
    on conflict (subscription_id, period_start) do nothing
    returning id
  )
  insert into invoice_lines (invoice_id, position, kind, code, description, qty, unit_price_cents, amount_cents)
  select s.invoice_id, 0, 'plan', s.plan_code, s.plan_name || ' (version ' || s.version || '), ' || to_char($1::timestamptz at time zone 'UTC', 'YYYY-MM-DD'), 1, s.price_cents, s.price_cents
  from subs s join inv on inv.id = s.invoice_id
  union all
  select s.invoice_id, a.position, 'addon', a.addon_code, a.name || ' × ' || a.qty, a.qty, a.unit_price_cents, a.unit_price_cents * a.qty
  from subs s join inv on inv.id = s.invoice_id join adds a on a.subscription_id = s.id and a.currency = s.currency`;

async function main() {
  await freshDatabase(DB);
  process.env.DATABASE_URL = DB;
  await migrate();
  const pg = new Client({ connectionString: DB });
  await pg.connect();
  const t = Date.now();
  await seed(pg);
  console.log(`seeded ${SUBS} subscriptions over ${TENANTS} tenants in ${Date.now() - t} ms`);

  const config = brokerConfig({ ...process.env, TRANSPORTER: "", METRICS_PORT: "", LOG_LEVEL: process.env.LOG_LEVEL ?? "warn" });
  const broker = new ServiceBroker({ ...config, nodeID: "bench-billing" });
  broker.createService(ALL_SERVICES.deployments);
  broker.createService(ALL_SERVICES.subscriptions);
  broker.createService({ name: "billing", version: 1, mixins: [ALL_SERVICES.billing], settings: { testClock: true, runMs: 0, eventSweepMs: 0 } });
  await broker.start();
  const meta = { meta: { user: systemUser("bench") } };
  try {
    // Warm-up an hour before the month starts: nothing to issue, every read path exercised once.
    const warm = (await broker.call("v1.billing.run", {}, meta)) as any;
    if (warm.invoices_issued !== 0) throw new Error(`warm-up issued ${warm.invoices_issued} invoices`);
    await pg.query("update billing_clock set now = $1", [PERIOD.toISOString()]);

    const load0 = loadavg()[0];
    const t0 = process.hrtime.bigint();
    const run = (await broker.call("v1.billing.run", {}, meta)) as any;
    const runMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const counted = await pg.query("select count(*)::int as n, sum(total_cents)::bigint as cents, (select count(*)::int from invoice_lines l join invoices i on i.id = l.invoice_id where i.period_start = $1) as lines from invoices where period_start = $1", [PERIOD.toISOString()]);
    const { n, cents, lines } = counted.rows[0];
    if (run.invoices_issued !== SUBS || n !== SUBS) throw new Error(`the run issued ${run.invoices_issued} (rows: ${n}), expected ${SUBS}`);

    // The floor: the same rows, written by PostgreSQL alone.
    await pg.query("delete from invoices where period_start = $1", [PERIOD.toISOString()]);
    await pg.query("vacuum analyze invoices");
    await pg.query("vacuum analyze invoice_lines");
    const f0 = process.hrtime.bigint();
    await pg.query(FLOOR_SQL, [PERIOD.toISOString()]);
    const floorMs = Number(process.hrtime.bigint() - f0) / 1e6;
    const floor = (await pg.query("select count(*)::int as n, sum(total_cents)::bigint as cents, (select count(*)::int from invoice_lines l join invoices i on i.id = l.invoice_id where i.period_start = $1) as lines from invoices where period_start = $1", [PERIOD.toISOString()])).rows[0];
    if (floor.n !== n || floor.lines !== lines || String(floor.cents) !== String(cents)) throw new Error(`the floor wrote ${floor.n} invoices / ${floor.lines} lines / ${floor.cents} cents, the run ${n} / ${lines} / ${cents}`);

    const ratio = runMs / floorMs;
    console.log(`period-start run: ${run.invoices_issued} invoices, ${lines} lines, ${cents} cents in ${runMs.toFixed(0)} ms = ${((run.invoices_issued / runMs) * 1000).toFixed(0)} invoices/s`);
    console.log(`floor (one INSERT … SELECT, same rows): ${floorMs.toFixed(0)} ms = ${((n / floorMs) * 1000).toFixed(0)} invoices/s`);
    console.log(`run / floor = ${ratio.toFixed(2)}× (target ≤ 3×: ${ratio <= 3 ? "met" : "NOT met"}); 1-minute load average ${load0.toFixed(2)} → ${loadavg()[0].toFixed(2)}`);
  } finally {
    await broker.stop();
    await pg.end();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
