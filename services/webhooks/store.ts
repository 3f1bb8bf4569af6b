import { randomUUID } from "node:crypto";
import type { EntityManager } from "@mikro-orm/postgresql";
import { isoSql } from "../../lib/dto";
import type { Mapped, WebhookEnvelope } from "./events";

/*
 * The webhooks service's tables (migrations/Migration20261202008000_webhooks.ts), in SQL. Everything an event
 * causes — its webhook_events row, one delivery per interested endpoint, its watch line — commits in one
 * transaction, so an event that was taken in is never half-recorded and never lost afterwards. A batch of events
 * is one statement, webhooks_ingest (migrations/Migration20261202010000_webhooks_ingest.ts): one round trip and
 * one commit however many events it carries.
 */

export interface IngestResult {
  /** The envelope was new (not a repeat of an event already taken in). */
  fresh: boolean;
  deliveries: number;
  /** The watch line's sequence number, when one was journaled. */
  watchSeq: number | null;
  deploymentId: string | null;
}

/** The deployment whose head row an event is taken in under (its envelope's, else its watch line's). */
export const deploymentOf = (m: Mapped): string | null => m.envelope?.deployment_id ?? m.watch?.deployment_id ?? null;

/**
 * The argument of webhooks_ingest for a batch, as JSON text (built once; pure). `heads`: every deployment the
 * batch touches, sorted (the function locks them in that order), each with the first tenant its events name (a
 * head without a tenant gets it). `events`: in the batch's order; a watch line whose data is its envelope's data
 * (the same object: deployment events, runtime changes, finished sagas) is sent once, as the envelope's.
 */
export function ingestInput(batch: Mapped[]): string {
  const heads = new Map<string, string | null>();
  const events: string[] = [];
  for (const m of batch) {
    for (const [d, t] of [[m.envelope?.deployment_id, m.watch?.tenant_id ?? m.envelope?.tenant_id], [m.watch?.deployment_id, m.watch?.tenant_id ?? m.envelope?.tenant_id]] as const) {
      if (d && !heads.get(d)) heads.set(d, t ?? null);
    }
    const parts: string[] = [];
    const e = m.envelope;
    if (e) {
      const payload: WebhookEnvelope = { id: e.id, type: e.type, created_at: e.created_at, tenant_id: e.tenant_id, data: e.data };
      parts.push(
        `"e":${JSON.stringify({ id: e.id, type: e.type, tenant_id: e.tenant_id, deployment_id: e.deployment_id, dep_event_id: e.chain?.event_id ?? null, from_state: e.chain?.from_state ?? null, to_state: e.chain?.to_state ?? null, created_at: e.created_at, payload })}`,
      );
    }
    const w = m.watch;
    if (w) {
      const line = { deployment_id: w.deployment_id, type: w.type, dedupe_key: w.dedupe_key, ...(e && w.data === e.data ? {} : { data: w.data }) };
      parts.push(`"w":${JSON.stringify(line)}`);
    }
    events.push(`{${parts.join(",")}}`);
  }
  const headList = [...heads.keys()].sort().map((d) => ({ d, t: heads.get(d) ?? null }));
  return `{"heads":${JSON.stringify(headList)},"events":[${events.join(",")}]}`;
}

/**
 * Takes a batch of events in: one statement, one transaction (all or nothing). Results in the batch's order.
 * Events of one deployment are journaled in the batch's order.
 */
export async function ingestBatch(em: EntityManager, batch: Mapped[]): Promise<IngestResult[]> {
  if (!batch.length) return [];
  const rows = await em.execute<{ pos: number; fresh: boolean; deliveries: number; watch_seq: string | null }[]>(`select pos, fresh, deliveries, watch_seq from webhooks_ingest(?::jsonb)`, [ingestInput(batch)]);
  const out: IngestResult[] = batch.map((m) => ({ fresh: false, deliveries: 0, watchSeq: null, deploymentId: deploymentOf(m) }));
  for (const r of rows) {
    const o = out[r.pos - 1];
    o.fresh = !!r.fresh;
    o.deliveries = Number(r.deliveries);
    o.watchSeq = r.watch_seq == null ? null : Number(r.watch_seq);
  }
  return out;
}

/**
 * Whether a failed batch is worth taking in again one event at a time: the server refused the statement (one
 * event's bad value — say a deployment id that is not a UUID — fails the whole batch), as opposed to the database
 * being unreachable, shutting down or out of resources, where every event would fail again.
 */
export function splitAfter(err: any): boolean {
  return !!err?.severity && typeof err.code === "string" && !/^(08|53|57|58)/.test(err.code);
}

export interface Claimed {
  id: string;
  seq: number;
  attempts: number;
  claim_id: string;
  url: string;
  secret: string;
  event_id: string;
  body: string;
}

/**
 * Claims up to `limit` deliveries that are due: pending ones whose time has come, and ones a node claimed and did
 * not finish within its lease (it died). The claim counts as an attempt, so a delivery that kills its node each
 * time still ends. `skip locked` lets several webhooks nodes claim side by side.
 *
 * Order per endpoint and deployment: a delivery waits while one that comes before it — by (event time, deployment
 * event id, seq) — is still pending or in flight. Events can be taken in out of order (two webhooks nodes, a
 * repeat from the outbox sweep or the catch-up), so a deployment event also waits until the deployment's chain
 * before it is complete: the nearest earlier deployment event taken in must end in the state this one starts from.
 * Only events we never heard of can break that chain, and the catch-up brings those; after `orderWaitMs` a
 * delivery goes anyway rather than wait forever on an event that will not come.
 */
export async function claim(em: EntityManager, limit: number, leaseMs: number, orderWaitMs: number): Promise<Claimed[]> {
  const claimId = randomUUID();
  const rows = await em.execute<{ id: string }[]>(
    `update webhook_deliveries d set status = 'delivering', claim_id = ?, claimed_until = now() + (? || ' milliseconds')::interval, attempts = d.attempts + 1, updated_at = now()
     from (select c.id from webhook_deliveries c join webhook_events ce on ce.id = c.event_id
           where ((c.status = 'pending' and c.next_attempt_at <= now()) or (c.status = 'delivering' and c.claimed_until < now()))
             and not exists (select 1 from webhook_deliveries e
                             where e.endpoint_id = c.endpoint_id and e.order_key = c.order_key and e.status in ('pending','delivering')
                               and (e.event_at, coalesce(e.dep_event_id, 0), e.seq) < (c.event_at, coalesce(c.dep_event_id, 0), c.seq))
             and (ce.dep_event_id is null or c.created_at < now() - (? || ' milliseconds')::interval
                  or coalesce((select pe.to_state from webhook_events pe where pe.deployment_id = ce.deployment_id and pe.dep_event_id < ce.dep_event_id
                               order by pe.dep_event_id desc limit 1), ce.from_state) is not distinct from ce.from_state)
           order by c.seq limit ? for update of c skip locked) pick
     where d.id = pick.id
     returning d.id`,
    [claimId, String(leaseMs), String(orderWaitMs), limit],
  );
  if (!rows.length) return [];
  const full = await em.execute(
    `select d.id, d.seq, d.attempts, d.claim_id, w.url, w.secret, d.event_id, e.payload::text as body
     from webhook_deliveries d join webhook_endpoints w on w.id = d.endpoint_id join webhook_events e on e.id = d.event_id
     where d.id in (${rows.map(() => "?").join(",")}) order by d.seq`,
    rows.map((r) => r.id),
  );
  return full.map((r: any) => ({ ...r, seq: Number(r.seq) }));
}

export interface AttemptOutcome {
  ok: boolean;
  code: number | null;
  error: string | null;
  ms: number;
  at: Date;
}

/** Records one attempt, if the claim is still ours: succeeded, back to pending with its next time, or failed for good. */
export async function record(em: EntityManager, d: Claimed, o: AttemptOutcome, next: { maxAttempts: number; delayMs: number }): Promise<string | null> {
  const entry = JSON.stringify([{ attempt: d.attempts, at: o.at.toISOString(), response_code: o.code, error: o.error, duration_ms: o.ms }]);
  const status = o.ok ? "succeeded" : d.attempts >= next.maxAttempts ? "failed" : "pending";
  const rows = await em.execute(
    `update webhook_deliveries set status = ?, last_response_code = ?, last_error = ?, history = history || ?::jsonb, claim_id = null, claimed_until = null, updated_at = now(),
       next_attempt_at = case when ? = 'pending' then now() + (? || ' milliseconds')::interval else null end,
       delivered_at = case when ? = 'succeeded' then now() else null end
     where id = ? and claim_id = ? and status = 'delivering' returning status`,
    [status, o.code, o.error, entry, status, String(next.delayMs), status, d.id, d.claim_id],
  );
  return rows[0]?.status ?? null;
}

/**
 * Forgets what is older than `retentionMs`: finished deliveries (succeeded, failed, cancelled), events no delivery
 * refers to any more, watch lines, and endpoints deleted that long ago. In batches, so one sweep never holds
 * many locks. `watch_heads` stay, so a deployment's watch ids keep increasing.
 */
export async function sweepRetention(em: EntityManager, retentionMs: number, batch = 1000): Promise<number> {
  const cutoff = new Date(Date.now() - retentionMs);
  let removed = 0;
  const run = async (sql: string) => {
    for (let i = 0; i < 100; i++) {
      const rows = await em.execute(sql, [cutoff, batch]);
      removed += rows.length;
      if (rows.length < batch) return;
    }
  };
  await run(`delete from webhook_deliveries where id in (select id from webhook_deliveries where status in ('succeeded','failed','cancelled') and updated_at < ? limit ?) returning id`);
  await run(`delete from webhook_events where id in (select e.id from webhook_events e where e.received_at < ? and not exists (select 1 from webhook_deliveries d where d.event_id = e.id) limit ?) returning id`);
  await run(`delete from watch_events where (deployment_id, seq) in (select deployment_id, seq from watch_events where created_at < ? limit ?) returning seq`);
  await run(`delete from webhook_endpoints where id in (select w.id from webhook_endpoints w where w.deleted_at < ? and not exists (select 1 from webhook_deliveries d where d.endpoint_id = w.id) limit ?) returning id`);
  return removed;
}

// ---- reads -------------------------------------------------------------------------------------------------

export const endpointCols = `id, tenant_id, all_tenants, url, events, created_by, ${isoSql("inserted_at")} as inserted_at`;

export function endpointDto(r: any) {
  return { id: r.id, tenant_id: r.tenant_id ?? null, all_tenants: !!r.all_tenants, url: r.url, events: r.events ?? [], created_by: r.created_by, inserted_at: r.inserted_at };
}
export type WebhookDto = ReturnType<typeof endpointDto>;

export const deliveryCols = `d.id, d.seq, d.event_id, e.type as event_type, d.status, d.attempts, d.last_response_code, d.last_error, d.history,
  ${isoSql("d.next_attempt_at")} as next_attempt_at, ${isoSql("d.created_at")} as created_at, ${isoSql("d.delivered_at")} as delivered_at`;

export function deliveryDto(r: any) {
  return {
    id: r.id,
    event_id: r.event_id,
    event_type: r.event_type,
    status: r.status,
    attempts: r.attempts,
    response_code: r.last_response_code ?? null,
    error: r.last_error ?? null,
    next_attempt_at: r.status === "pending" ? (r.next_attempt_at ?? null) : null,
    created_at: r.created_at,
    delivered_at: r.delivered_at ?? null,
    history: r.history ?? [],
  };
}
export type DeliveryDto = ReturnType<typeof deliveryDto>;
