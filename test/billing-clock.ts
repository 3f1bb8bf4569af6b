import type { client } from "./helpers";

/**
 * The billing test clock in tests: it never goes backwards and is shared by every suite of a run, so each
 * timeline starts at a month chosen ahead of wherever the clock is — a 31-day month followed by a 30-day one, so
 * the hand-worked figures stay the same whichever month it is.
 */
type Api = ReturnType<typeof client>;

export async function clockNow(op: Api): Promise<Date> {
  const res = await op.get("/billing/clock");
  if (res.status !== 200) throw new Error(`GET /billing/clock: ${res.status} ${JSON.stringify(res.body)}`);
  return new Date(res.body.now);
}

/** The first day of a 31-day month followed by a 30-day month (March, May, August, October), at least a month ahead. */
export async function freshMonth(op: Api): Promise<{ year: number; month: number; day: (d: number, hh?: number, nextMonth?: boolean) => string }> {
  const now = await clockNow(op);
  let y = now.getUTCFullYear();
  let m = now.getUTCMonth() + 2; // skip the current month: the clock may be anywhere in it
  for (;;) {
    const mm = ((m % 12) + 12) % 12;
    const yy = y + Math.floor(m / 12);
    if ([2, 4, 7, 9].includes(mm)) {
      const day = (d: number, hh = 10, nextMonth = false) => new Date(Date.UTC(yy, mm + (nextMonth ? 1 : 0), d, hh)).toISOString();
      return { year: yy, month: mm, day };
    }
    m++;
  }
}

export async function setClock(op: Api, iso: string) {
  const res = await op.post("/billing/clock", { now: iso });
  if (res.status !== 200) throw new Error(`POST /billing/clock ${iso}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body as { now: string; invoices_issued: number; moves: { deployment_id: string; from: string; to: string; reason: string }[] };
}
