import { Errors } from "moleculer";
import { invalid } from "../../lib/errors";
import { DAY_MS } from "./pricing";

/**
 * The one source of "now" for every billing date (SPEC §4): periods, trial ends, due dates, payments, dunning and
 * the cancellation time retention counts from. The wall clock, unless BILLING_TEST_CLOCK=1: then "now" is a row in
 * PostgreSQL (billing_clock), so every node reads the same instant, and it stands still until an operator moves it
 * forward (POST /billing/clock). Event occurred_at and lease expiries stay wall-clock.
 */
type Execute = (sql: string, args?: unknown[]) => Promise<any[]>;

export interface BillingClock {
  readonly test: boolean;
  now(): Promise<Date>;
  /** Test clock only: forward by days, or to an instant (never backwards: 422). */
  move(to: { advance_days?: number; now?: string }): Promise<Date>;
}

export function wallClock(): BillingClock {
  return {
    test: false,
    now: async () => new Date(),
    move: async () => {
      throw new Errors.MoleculerClientError("The billing clock is the wall clock (BILLING_TEST_CLOCK is not set)", 404, "NOT_FOUND");
    },
  };
}

export function testClock(execute: Execute): BillingClock {
  const read = async (): Promise<Date> => {
    const [row] = await execute("select now from billing_clock where id = 1");
    if (row) return new Date(row.now);
    // The first node to ask starts the shared clock at the wall clock's now; afterwards it only moves on request.
    await execute("insert into billing_clock (id, now) values (1, now()) on conflict (id) do nothing");
    return read();
  };
  return {
    test: true,
    now: read,
    async move(to) {
      if (to.advance_days !== undefined) {
        await read();
        const [row] = await execute("update billing_clock set now = now + (? * interval '1 millisecond') where id = 1 returning now", [Math.round(to.advance_days * DAY_MS)]);
        return new Date(row.now);
      }
      const target = new Date(to.now!);
      const current = await read();
      const [row] = await execute("update billing_clock set now = ?::timestamptz where id = 1 and now <= ?::timestamptz returning now", [target.toISOString(), target.toISOString()]);
      if (!row) throw invalid(`The billing clock never goes backwards: it is ${current.toISOString()}`, [{ field: "now", type: "backwards", actual: to.now, expected: `>= ${current.toISOString()}` }]);
      return new Date(row.now);
    },
  };
}

/** BILLING_TEST_CLOCK=1 selects the shared test clock; refused in production, where billing must follow real time. */
export function clockFor(enabled: boolean, execute: Execute, env = process.env): BillingClock {
  if (!enabled) return wallClock();
  if (env.NODE_ENV === "production") throw new Error("BILLING_TEST_CLOCK=1 is refused with NODE_ENV=production: billing dates must follow the wall clock");
  return testClock(execute);
}
