import type { ServiceSchema } from "moleculer";
import { emOf } from "../../lib/db";
import type { ActionCtx } from "../../lib/access";
import { isoSql } from "../../lib/dto";
import { feedParams } from "../../lib/params";
import { invoiceEventId, readInvoices, type InvoiceDto } from "./invoices";
import { pgArray } from "../../lib/dto";

export interface InvoiceEventsSinceParams {
  since: string;
  /** Keyset: the `outbox_id` and `position` of the last item of the previous page. */
  after_id?: number;
  after_position?: number;
  limit?: number;
}
export interface InvoiceFeedItem {
  /** The invoice_events row and the invoice's 1-based position in it (one row names every invoice a statement touched). */
  outbox_id: number;
  position: number;
  type: "issued" | "paid" | "overdue";
  /** Wall-clock time the outbox row was written (not the billing clock). */
  occurred_at: string;
  /** `<invoice id>:<type>`, the same id the live billing.invoice.<type> event carries. */
  event_id: string;
  /** The invoice as it is now. */
  invoice: InvoiceDto;
}
export interface InvoiceEventsSinceResult {
  items: InvoiceFeedItem[];
  /** The keyset of the next page, null when this was the last (an invoice deleted since is skipped, not counted). */
  next: { after_id: number; after_position: number } | null;
}

/**
 * The invoice_events outbox read as a feed, one item per invoice and type, for consumers that must not miss a
 * billing.invoice.<type> event sent while none of their nodes was up (the webhooks catch-up). Items of rows written
 * at or after `since`, in (outbox id, position) order after the keyset.
 */
export const BillingFeedMixin: Partial<ServiceSchema> = {
  actions: {
    eventsSince: {
      visibility: "public",
      access: "internal",
      params: { ...feedParams(1000), after_position: { type: "number", integer: true, min: 0, convert: true, optional: true } },
      async handler(ctx: ActionCtx<InvoiceEventsSinceParams>): Promise<InvoiceEventsSinceResult> {
        const em = emOf(ctx);
        const p = ctx.params;
        const rows = await em.getConnection().execute(
          `select e.id, e.type, ${isoSql("e.occurred_at")} as occurred_at, x.invoice_id, x.position
           from invoice_events e cross join lateral unnest(e.invoice_ids) with ordinality as x(invoice_id, position)
           where e.occurred_at >= ? and (e.id, x.position) > (?, ?)
           order by e.id, x.position limit ?`,
          [p.since, p.after_id ?? 0, p.after_position ?? 0, p.limit ?? 200],
        );
        if (!rows.length) return { items: [], next: null };
        const last = rows[rows.length - 1];
        const next = rows.length < (p.limit ?? 200) ? null : { after_id: Number(last.id), after_position: Number(last.position) };
        const invoices = await readInvoices(em, "where i.id = any(?::uuid[])", [pgArray([...new Set(rows.map((r: any) => r.invoice_id as string))])]);
        const byId = new Map(invoices.map((i) => [i.id, i]));
        return {
          items: rows
            .filter((r: any) => byId.has(r.invoice_id))
            .map((r: any) => ({ outbox_id: Number(r.id), position: Number(r.position), type: r.type, occurred_at: r.occurred_at, event_id: invoiceEventId(r.type, r.invoice_id), invoice: byId.get(r.invoice_id)! })),
          next,
        };
      },
    },
  },
};
