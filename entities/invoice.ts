import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

export const INVOICE_STATUSES = ["open", "paid", "void"] as const;
export type InvoiceStatus = (typeof INVOICE_STATUSES)[number];
export const INVOICE_LINE_KINDS = ["plan", "addon"] as const;

/**
 * One invoice per subscription per calendar month (UTC): `period_start` is always the month's first instant and
 * (subscription_id, period_start) is unique in the database, so overlapping runs cannot bill a period twice.
 * A first (prorated) invoice has the same period; its lines say how many days they bill.
 */
export const Invoice = defineEntity({
  name: "Invoice",
  tableName: "invoices",
  properties: {
    id: p.uuid().primary(),
    tenant_id: p.string(),
    deployment_id: p.uuid(),
    subscription_id: p.uuid(),
    period_start: p.datetime(3),
    period_end: p.datetime(3),
    currency: p.string(),
    total_cents: p.integer(),
    status: p.string().$type<InvoiceStatus>(),
    // Billing-clock times (services/billing/clock.ts), not wall-clock.
    issued_at: p.datetime(3),
    due_at: p.datetime(3),
    paid_at: p.datetime(3).nullable(),
    voided_at: p.datetime(3).nullable(),
    payment_reference: p.string().nullable(),
    inserted_at: p.datetime(3),
  },
});
export type Invoice = InferEntity<typeof Invoice>;

export const InvoiceLine = defineEntity({
  name: "InvoiceLine",
  tableName: "invoice_lines",
  properties: {
    invoice_id: p.uuid().primary(),
    position: p.integer().primary(),
    kind: p.string().$type<(typeof INVOICE_LINE_KINDS)[number]>(),
    code: p.string(),
    description: p.string(),
    qty: p.integer(),
    unit_price_cents: p.integer(),
    amount_cents: p.integer(),
  },
});
export type InvoiceLine = InferEntity<typeof InvoiceLine>;
