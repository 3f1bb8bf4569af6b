import { Migration } from "@mikro-orm/migrations";

/**
 * webhooks_ingest(batch jsonb): a batch of consumed events taken in by one statement (one round trip, one commit),
 * instead of a transaction of ~9 round trips per event (services/webhooks/README.md, "One statement per batch").
 * The caller (services/webhooks/store.ts `ingestInput`) builds the batch:
 *
 *   { "heads":  [{"d": deployment id, "t": tenant or null}, …]   -- every deployment of the batch, sorted by id
 *     "events": [{"e": envelope or null, "w": watch line or null}, …] }
 *   envelope:   {id, type, tenant_id, deployment_id, dep_event_id, from_state, to_state, created_at, payload}
 *   watch line: {deployment_id, type, dedupe_key, data}; no "data" means the envelope's payload.data (the same
 *               object, sent once)
 *
 * and gets one row per event, by its position (1-based): fresh (the envelope was new), deliveries (how many were
 * created), watch_seq (the line's number, when one was appended).
 *
 * Heads are locked first, in deployment id order, so two nodes' batches never wait on each other in a cycle; an
 * event's rows are then written under its deployment's lock (an event of one deployment is only ever inserted by
 * the holder of that lock). Events without a deployment (an invoice of none) are taken in after the others, by
 * id, for the same reason (two batches inserting the same new ids wait on each other in one order). Events of a
 * deployment are taken in in array order: the journal's order and its gap-free seq, and deliveries' seq.
 */
export class Migration20261202010000_webhooks_ingest extends Migration {
  override async up(): Promise<void> {
    this.addSql(`create or replace function webhooks_ingest(batch jsonb)
returns table (pos integer, fresh boolean, deliveries integer, watch_seq bigint)
language plpgsql as $fn$
declare
  h jsonb;
  r record;
  e jsonb;
  w jsonb;
  n integer;
  s bigint;
  head record;
  d text;
  -- Each head's seq as this batch moves it, {deployment id: seq}; written back once per head at the end.
  seqs jsonb := '{}';
  moved text[] := '{}';
begin
  -- The deployments' head rows are their locks: ingests of one deployment serialise. An existing head gets the
  -- tenant when it had none yet (a step line carries none; a later event of the deployment does).
  for h in select x from jsonb_array_elements(batch->'heads') x order by (x->>'d')::uuid loop
    insert into watch_heads (deployment_id, tenant_id, seq) values ((h->>'d')::uuid, h->>'t', 0) on conflict (deployment_id) do nothing;
    select wh.seq, wh.tenant_id into head from watch_heads wh where wh.deployment_id = (h->>'d')::uuid for update;
    if head.tenant_id is null and h->>'t' is not null then
      update watch_heads set tenant_id = h->>'t' where deployment_id = (h->>'d')::uuid;
    end if;
    seqs := seqs || jsonb_build_object((h->>'d')::uuid::text, head.seq);
  end loop;

  for r in select x.value as ev, x.ordinality::integer as i from jsonb_array_elements(batch->'events') with ordinality x
           order by (x.value->'e'->>'deployment_id' is null and x.value->'w' is null), -- deployments' events first, in order
                    case when x.value->'e'->>'deployment_id' is null and x.value->'w' is null then x.value->'e'->>'id' end,
                    x.ordinality loop
    e := r.ev->'e';
    w := r.ev->'w';
    pos := r.i;
    fresh := false;
    deliveries := 0;
    watch_seq := null;
    if e is not null and jsonb_typeof(e) = 'object' then
      insert into webhook_events (id, type, tenant_id, deployment_id, dep_event_id, from_state, to_state, payload, created_at)
        values (e->>'id', e->>'type', e->>'tenant_id', (e->>'deployment_id')::uuid, (e->>'dep_event_id')::bigint, e->>'from_state', e->>'to_state',
                e->'payload', (e->>'created_at')::timestamptz)
        on conflict (id) do nothing;
      fresh := found;
      if fresh then
        -- Endpoints that existed when the event happened, of its tenant or for all tenants, wanting its type.
        insert into webhook_deliveries (id, endpoint_id, event_id, order_key, event_at, dep_event_id, status, attempts, next_attempt_at, created_at, updated_at)
          select gen_random_uuid(), ep.id, e->>'id', coalesce(e->>'deployment_id', e->>'id'), (e->>'created_at')::timestamptz, (e->>'dep_event_id')::bigint,
                 'pending', 0, now(), now(), now()
          from webhook_endpoints ep
          where ep.deleted_at is null and (ep.all_tenants or ep.tenant_id = e->>'tenant_id')
            and (jsonb_array_length(ep.events) = 0 or ep.events @> jsonb_build_array(e->>'type'))
            and ep.inserted_at <= (e->>'created_at')::timestamptz
          order by ep.id;
        get diagnostics n = row_count;
        deliveries := n;
      end if;
    end if;
    if w is not null and jsonb_typeof(w) = 'object' then
      -- A repeat of the same move (a broadcast heard twice, a replay) is not journaled again.
      perform 1 from watch_events where deployment_id = (w->>'deployment_id')::uuid and dedupe_key = w->>'dedupe_key';
      if not found then
        d := (w->>'deployment_id')::uuid::text;
        s := (seqs->>d)::bigint + 1;
        if s is null then
          raise exception 'webhooks_ingest: deployment % is not in the batch''s heads', d;
        end if;
        seqs := seqs || jsonb_build_object(d, s);
        if not (d = any(moved)) then moved := moved || d; end if;
        insert into watch_events (deployment_id, seq, type, dedupe_key, data, created_at)
          values ((w->>'deployment_id')::uuid, s, w->>'type', w->>'dedupe_key', coalesce(w->'data', e->'payload'->'data'), now());
        watch_seq := s;
      end if;
    end if;
    return next;
  end loop;
  -- A head's seq is written once per batch (one row version per deployment, not one per line).
  update watch_heads wh set seq = (seqs->>(wh.deployment_id::text))::bigint where wh.deployment_id = any(moved::uuid[]);
end
$fn$`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop function if exists webhooks_ingest(jsonb)`);
  }
}
