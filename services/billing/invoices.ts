import { randomUUID } from "node:crypto";
import type { EntityManager } from "@mikro-orm/postgresql";
import { CompiledQuery } from "kysely";
import { iso } from "../../lib/dto";
import type { InvoiceDraft, InvoiceLineDraft } from "./pricing";

/** SPEC §4's invoice, exactly; used for ORM entities and raw-SQL rows alike. */
export interface InvoiceDto {
  id: string;
  tenant_id: string;
  deployment_id: string;
  subscription_id: string;
  period_start: string;
  period_end: string;
  currency: string;
  lines: InvoiceLineDraft[];
  total_cents: number;
  status: "open" | "paid" | "void";
  issued_at: string;
  due_at: string;
  paid_at: string | null;
}

interface InvoiceRowLike {
  id: string;
  tenant_id: string;
  deployment_id: string;
  subscription_id: string;
  period_start: Date | string;
  period_end: Date | string;
  currency: string;
  total_cents: number | string;
  status: string;
  issued_at: Date | string;
  due_at: Date | string;
  paid_at?: Date | string | null;
}

export function invoiceDto(r: InvoiceRowLike, lines: InvoiceLineDraft[]): InvoiceDto {
  return {
    id: r.id,
    tenant_id: r.tenant_id,
    deployment_id: r.deployment_id,
    subscription_id: r.subscription_id,
    period_start: iso(r.period_start)!,
    period_end: iso(r.period_end)!,
    currency: r.currency.trim(),
    lines: lines.map((l) => ({ kind: l.kind, code: l.code, description: l.description, qty: Number(l.qty), unit_price_cents: Number(l.unit_price_cents), amount_cents: Number(l.amount_cents) })),
    total_cents: Number(r.total_cents),
    status: r.status as InvoiceDto["status"],
    issued_at: iso(r.issued_at)!,
    due_at: iso(r.due_at)!,
    paid_at: iso(r.paid_at ?? null),
  };
}

/** Invoice rows with their lines (in position order) in one query; `tail` is the where/order/limit part. */
export async function readInvoices(em: EntityManager, tail: string, args: unknown[]): Promise<InvoiceDto[]> {
  const rows = await em.getConnection().execute(
    `select i.*, (select coalesce(json_agg(json_build_object('kind', l.kind, 'code', l.code, 'description', l.description, 'qty', l.qty,
              'unit_price_cents', l.unit_price_cents, 'amount_cents', l.amount_cents) order by l.position), '[]') from invoice_lines l where l.invoice_id = i.id) as lines
     from invoices i ${tail}`,
    args,
  );
  return rows.map((r: any) => invoiceDto(r, typeof r.lines === "string" ? JSON.parse(r.lines) : r.lines));
}


/**
 * A statement with bound parameters ($1, $2, …) on the ORM's own pool. MikroORM's execute() inlines parameters into
 * the SQL text; for a bulk write carrying a megabyte of JSON, binding it is cheaper for both sides.
 */
async function bound(em: EntityManager, sql: string, params: unknown[]): Promise<any[]> {
  const res = await (em.getConnection().getClient() as any).executeQuery(CompiledQuery.raw(sql, params));
  return res.rows;
}

/** An invoice event to publish: the invoice and the outbox row that names it. */
export interface IssuedInvoice {
  outbox_id: number;
  invoice: InvoiceDto;
}
/** Each event happens once per invoice and type, so this id is what consumers dedupe re-sends by. */
export const invoiceEventId = (type: string, invoiceId: string) => `${invoiceId}:${type}`;

/**
 * Writes invoices and their lines in one statement each chunk; (subscription_id, period_start) is unique, so a
 * draft another node (or an earlier run) already wrote is skipped by the database, and only invoices this call
 * really inserted come back (with the id of the `issued` outbox row naming them) — whatever runs overlap.
 */
export async function insertInvoices(em: EntityManager, drafts: InvoiceDraft[], issuedAt: Date, dueAt: Date, chunk = 2000): Promise<IssuedInvoice[]> {
  const out: IssuedInvoice[] = [];
  for (let i = 0; i < drafts.length; i += chunk) {
    const part = drafts.slice(i, i + chunk).map((d) => ({ ...d, id: randomUUID(), lines: d.lines.map((l, position) => ({ ...l, position })) }));
    const rows = await bound(em,
      `with src as (
         select * from json_to_recordset($1::json) as x(id uuid, tenant_id text, deployment_id uuid, subscription_id uuid, period_start timestamptz, period_end timestamptz, currency text, total_cents integer, lines json)
       ), ins as (
         insert into invoices (id, tenant_id, deployment_id, subscription_id, period_start, period_end, currency, total_cents, status, issued_at, due_at)
         select id, tenant_id, deployment_id, subscription_id, period_start, period_end, currency, total_cents, 'open', $2::timestamptz, $3::timestamptz from src
         on conflict (subscription_id, period_start) do nothing
         returning id
       ), lines as (
         insert into invoice_lines (invoice_id, position, kind, code, description, qty, unit_price_cents, amount_cents)
         select s.id, l.position, l.kind, l.code, l.description, l.qty, l.unit_price_cents, l.amount_cents
         from src s join ins on ins.id = s.id
         cross join lateral json_to_recordset(s.lines) as l(position integer, kind text, code text, description text, qty integer, unit_price_cents integer, amount_cents integer)
       ), ev as (
         insert into invoice_events (type, invoice_ids) select 'issued', array_agg(id) from ins having count(*) > 0 returning id
       )
       select ins.id as invoice_id, (select id from ev) as outbox_id from ins`,
      [JSON.stringify(part), issuedAt.toISOString(), dueAt.toISOString()],
    );
    const byId = new Map(part.map((d) => [d.id, d]));
    for (const r of rows) {
      const d = byId.get(r.invoice_id)!;
      out.push({ outbox_id: Number(r.outbox_id), invoice: invoiceDto({ ...d, status: "open", issued_at: issuedAt, due_at: dueAt, paid_at: null }, d.lines) });
    }
  }
  return out;
}
