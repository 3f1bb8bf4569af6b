import type { ServiceBroker } from "moleculer";
import { systemUser } from "./access";

/**
 * Operator commands for the Moleculer REPL (`npm run repl`, `npm start -- --repl`). They call the cluster's
 * actions as an operator and print plain tables, so `printf 'deployments\nquit\n' | npm run repl` is scriptable.
 */
type Row = Record<string, unknown>;

export function formatTable(rows: Row[], columns: string[]): string {
  if (!rows.length) return "(none)";
  const cell = (v: unknown) => (v === null || v === undefined ? "-" : typeof v === "object" ? JSON.stringify(v) : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (vals: string[]) => vals.map((v, i) => v.padEnd(widths[i])).join("  ").trimEnd();
  return [line(columns), line(widths.map((w) => "-".repeat(w))), ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join("\n");
}

const meta = { meta: { user: systemUser("repl") } };
const print = (s: string) => console.log(s);

async function guarded(fn: () => Promise<void>) {
  try {
    await fn();
  } catch (err) {
    const e = err as { message: string; code?: number; type?: string };
    print(`error: ${e.message}${e.type ? ` (${e.type})` : ""}`);
  }
}

export const replCommands = [
  {
    command: "deployments",
    description: "List deployments (newest first)",
    options: [
      { option: "--tenant <tenant>", description: "only this tenant" },
      { option: "--state <state>", description: "only this state" },
      { option: "--limit <n>", description: "at most n rows (default 50)" },
    ],
    action: (broker: ServiceBroker, args: { options: Row }) =>
      guarded(async () => {
        const o = args.options;
        const res = await broker.call<{ items: Row[] }, Row>("v1.deployments.list", { tenant_id: o.tenant, state: o.state, limit: o.limit ? Number(o.limit) : 50 }, meta);
        print(formatTable(res.items, ["id", "tenant_id", "slug", "state", "region", "state_since"]));
      }),
  },
  {
    command: "deployment <id>",
    description: "One deployment: state, subscription, events, saga steps",
    action: (broker: ServiceBroker, args: { id: string }) =>
      guarded(async () => {
        const r = await broker.call<any, Row>("v1.deployments.get", { id: args.id }, meta);
        const d = r.deployment;
        print(`deployment ${d.id}  ${d.tenant_id}/${d.slug}  state ${d.state} since ${d.state_since}  region ${d.region}`);
        const s = r.subscription;
        print(s ? `subscription ${s.plan_code} v${s.plan_version.version} ${s.plan_version.price_cents} ${s.plan_version.currency}/month, ${s.status}, addons: ${s.addons.map((a: any) => `${a.code}×${a.qty}@${a.unit_price_cents}`).join(", ") || "none"}` : "subscription: none");
        print("events:");
        print(formatTable(r.events, ["occurred_at", "from_state", "to_state", "reason", "actor"]));
        if (r.saga) {
          print(`saga ${r.saga.id}  ${r.saga.status}`);
          print(formatTable(r.saga.steps, ["name", "status", "attempts", "error"]));
        } else print("saga: none");
      }),
  },
  {
    command: "sagas",
    description: "List sagas of every kind (newest first)",
    options: [
      { option: "--status <status>", description: "running | succeeded | failed | compensating | compensated | compensation_failed" },
      { option: "--kind <kind>", description: "provision | power_off | power_on | decommission" },
    ],
    action: (broker: ServiceBroker, args: { options: Row }) =>
      guarded(async () => {
        const res = await broker.call<{ items: any[] }, Row>("v1.provisioning.list", { status: args.options.status, kind: args.options.kind }, meta);
        const rows = res.items.map((s) => ({ ...s, progress: `${s.steps.filter((st: any) => st.status === "succeeded").length}/${s.steps.length}` }));
        print(formatTable(rows, ["id", "kind", "deployment_id", "status", "progress", "started_at", "finished_at", "error"]));
      }),
  },
  {
    command: "saga <id>",
    description: "One saga's per-step progress",
    action: (broker: ServiceBroker, args: { id: string }) =>
      guarded(async () => {
        const { saga } = await broker.call<any, Row>("v1.provisioning.get", { id: args.id }, meta);
        print(`saga ${saga.id}  deployment ${saga.deployment_id}  ${saga.status}${saga.error ? `  error: ${saga.error}` : ""}`);
        print(formatTable(saga.steps.map((s: any) => ({ ...s, output: Object.keys(s.output).length ? s.output : null })), ["name", "status", "attempts", "started_at", "finished_at", "compensation_attempts", "error", "output"]));
      }),
  },
  {
    command: "drift",
    description: "Provider vs inventory: orphans, ghosts, mismatches",
    action: (broker: ServiceBroker) =>
      guarded(async () => {
        const r = await broker.call<any, Row>("v1.inventory.drift", {}, meta);
        const rows = [...(r.orphans ?? []), ...(r.ghosts ?? []), ...(r.mismatches ?? [])].map((e: any) => ({
          ...e,
          differs: (e.differences ?? []).map((d: any) => `${d.field}: ${d.provider ?? "-"} ≠ ${d.inventory ?? "-"}`).join("; ") || null,
          fix: typeof e.fix === "object" && e.fix ? (e.fix.text ?? e.fix.description ?? JSON.stringify(e.fix)) : e.fix,
        }));
        print(formatTable(rows, ["kind", "resource", "external_id", "tenant_id", "differs", "fix"]));
      }),
  },
  {
    command: "margin",
    description: "Revenue, cloud cost and margin per deployment and in total",
    options: [{ option: "--tenant <tenant>", description: "only this tenant" }],
    action: (broker: ServiceBroker, args: { options: Row }) =>
      guarded(async () => {
        const r = await broker.call<any, Row>("v1.billing.margin", { tenant_id: args.options.tenant }, meta);
        print(formatTable(r.items ?? [], ["tenant_id", "slug", "state", "currency", "revenue_cents", "cost_cents", "margin_cents", "margin_pct", "flags"]));
        print("totals:");
        print(formatTable(r.totals ?? [], ["currency", "revenue_cents", "cost_cents", "margin_cents", "margin_pct"]));
      }),
  },
  {
    command: "invoices",
    description: "List invoices (newest first)",
    options: [
      { option: "--tenant <tenant>", description: "only this tenant" },
      { option: "--status <status>", description: "open | paid | void" },
      { option: "--limit <n>", description: "at most n rows (default 50)" },
    ],
    action: (broker: ServiceBroker, args: { options: Row }) =>
      guarded(async () => {
        const o = args.options;
        const res = await broker.call<{ items: any[] }, Row>("v1.billing.listInvoices", { tenant_id: o.tenant, status: o.status, limit: o.limit ? Number(o.limit) : 50 }, meta);
        print(formatTable(res.items.map((i) => ({ ...i, period: i.period_start.slice(0, 7), total: `${i.total_cents} ${i.currency}` })), ["id", "tenant_id", "deployment_id", "period", "total", "status", "issued_at", "due_at", "paid_at"]));
      }),
  },
  {
    command: "billing <what>",
    description: "billing run: run billing now (period invoices, dunning, trial ends, retention) and print what it did",
    action: (broker: ServiceBroker, args: { what: string }) =>
      guarded(async () => {
        if (args.what !== "run") return print("usage: billing run");
        const r = await broker.call<any, Row>("v1.billing.run", {}, meta);
        print(`billing run at ${r.now}: ${r.invoices_issued} invoice(s) issued, ${r.moves.length} move(s)`);
        if (r.moves.length) print(formatTable(r.moves, ["deployment_id", "from", "to", "reason"]));
      }),
  },
  {
    command: "balance",
    description: "Provider balance and platform monthly recurring revenue",
    action: (broker: ServiceBroker) =>
      guarded(async () => {
        const r = await broker.call<any, Row>("v1.billing.balance", {}, meta);
        const flat = (o: any, prefix = ""): [string, unknown][] =>
          Object.entries(o ?? {}).flatMap(([k, v]) => (v && typeof v === "object" && !Array.isArray(v) ? flat(v, `${prefix}${k}.`) : [[`${prefix}${k}`, v] as [string, unknown]]));
        print(formatTable(flat(r).map(([key, value]) => ({ key, value })), ["key", "value"]));
      }),
  },
];

/**
 * Starts moleculer-repl (the broker needs `replOptions: {customCommands: replCommands}`). Node's REPL evaluates a
 * piped line before the previous async command has finished: queue them, so `printf 'a\nb\nquit\n' | npm run repl`
 * prints a's rows, then b's, then quits.
 */
export function startRepl(broker: ServiceBroker) {
  const server = broker.repl() as unknown as { eval: (...args: any[]) => void; removeAllListeners(e: string): void; on(e: string, fn: () => void): void };
  const evaluate = server.eval;
  let queue = Promise.resolve();
  server.eval = (cmd: string, context: unknown, file: string, cb: (...args: unknown[]) => void) => {
    queue = queue.then(() => new Promise<void>((done) => evaluate.call(server, cmd, context, file, (...args: unknown[]) => (cb(...args), done()))));
  };
  // The end of piped input closes the REPL at once; finish the queued commands before stopping.
  server.removeAllListeners("exit");
  server.on("exit", () => {
    void queue.then(() => broker.stop()).finally(() => process.exit(0));
  });
}
