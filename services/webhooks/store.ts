import { randomUUID } from "node:crypto";
import type { EntityManager } from "@mikro-orm/postgresql";
import { isoSql } from "../../lib/dto";
import type { Mapped, WebhookEnvelope } from "./events";

/*
 * The webhooks service's tables (migrations/Migration20261202008000_webhooks.ts), in SQL. Everything an event
 * causes — its webhook_events row, one delivery per interested endpoint, its watch line — commits in one
 * transaction, so an event that was taken in is never half-recorded and never lost afterwards.
 */

export interface IngestResult {
  /** The envelope was new (not a repeat of an event already taken in). */
  fresh: boolean;
  deliveries: number;
  /** The watch line's sequence number, when one was journaled. */
  watchSeq: number | null;
  deploymentId: string | null;
}

export async function ingest(em: EntityManager, m: Mapped): Promise<IngestResult> {
  const deploymentId = m.envelope?.deployment_id ?? m.watch?.deployment_id ?? null;
  return em.transactional(async (tx) => {
    let head: { seq: string; tenant_id: string | null } | undefined;
    if (deploymentId) {
      // The deployment's head row is its lock: ingests of one deployment serialise, so delivery order (seq) and
      // watch order are the order the events were taken in, and the watch sequence has no gaps or reorderings.
      const tenant = m.watch?.tenant_id ?? m.envelope?.tenant_id ?? null;
      await tx.execute(`insert into watch_heads (deployment_id, tenant_id, seq) values (?, ?, 0) on conflict (deployment_id) do nothing`, [deploymentId, tenant]);
      [head] = await tx.execute(`select seq, tenant_id from watch_heads where deployment_id = ? for update`, [deploymentId]);
      if (tenant && head && !head.tenant_id) await tx.execute(`update watch_heads set tenant_id = ? where deployment_id = ?`, [tenant, deploymentId]);
    }
    let fresh = false;
    let deliveries = 0;
    if (m.envelope) {
      const e = m.envelope;
      const body: WebhookEnvelope = { id: e.id, type: e.type, created_at: e.created_at, tenant_id: e.tenant_id, data: e.data };
      const inserted = await tx.execute(
        `insert into webhook_events (id, type, tenant_id, deployment_id, dep_event_id, from_state, to_state, payload, created_at) values (?, ?, ?, ?, ?, ?, ?, ?::jsonb, ?) on conflict (id) do nothing returning id`,
        [e.id, e.type, e.tenant_id, e.deployment_id, e.chain?.event_id ?? null, e.chain?.from_state ?? null, e.chain?.to_state ?? null, JSON.stringify(body), e.created_at],
      );
      fresh = inserted.length > 0;
      if (fresh) {
        // Endpoints that existed when the event happened, of its tenant or for all tenants, wanting its type.
        const rows = await tx.execute(
          `insert into webhook_deliveries (id, endpoint_id, event_id, order_key, event_at, dep_event_id, status, attempts, next_attempt_at, created_at, updated_at)
           select gen_random_uuid(), w.id, ?, ?, ?, ?, 'pending', 0, now(), now(), now() from webhook_endpoints w
           where w.deleted_at is null and (w.all_tenants or w.tenant_id = ?)
             and (jsonb_array_length(w.events) = 0 or w.events @> jsonb_build_array(?::text)) and w.inserted_at <= ?
           order by w.id returning id`,
          [e.id, e.deployment_id ?? e.id, e.created_at, e.chain?.event_id ?? null, e.tenant_id, e.type, e.created_at],
        );
        deliveries = rows.length;
      }
    }
    let watchSeq: number | null = null;
    if (m.watch && head) {
      const w = m.watch;
      const dup = await tx.execute(`select 1 from watch_events where deployment_id = ? and dedupe_key = ?`, [w.deployment_id, w.dedupe_key]);
      if (!dup.length) {
        watchSeq = Number(head.seq) + 1;
        await tx.execute(`insert into watch_events (deployment_id, seq, type, dedupe_key, data, created_at) values (?, ?, ?, ?, ?::jsonb, now())`, [w.deployment_id, watchSeq, w.type, w.dedupe_key, JSON.stringify(w.data)]);
        await tx.execute(`update watch_heads set seq = ? where deployment_id = ?`, [watchSeq, w.deployment_id]);
      }
    }
    return { fresh, deliveries, watchSeq, deploymentId };
  });
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
