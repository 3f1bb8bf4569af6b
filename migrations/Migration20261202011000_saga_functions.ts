import { Migration } from "@mikro-orm/migrations";

/**
 * The saga engine's two transactions that take the deployment's advisory lock (create, finish) as plpgsql
 * functions: one round trip, one commit each, instead of begin, lock, 2–3 statements, commit. They must be
 * functions, not a CTE: the lock has to come before the snapshot the claim's "not held" test reads, and a
 * plpgsql statement (volatile function, read committed) takes a fresh snapshot after the lock, where a single
 * CTE statement would test against a snapshot older than the lock. The lock key is hashtext(deployment_id::text),
 * the canonical text of the uuid, as the engine's retry takes it.
 */
export class Migration20261202011000_saga_functions extends Migration {
  override async up(): Promise<void> {
    // Inserts the saga and its steps and, when no older saga of its deployment is open, claims it for p_node.
    this.addSql(`create or replace function saga_create(p_id uuid, p_kind text, p_deployment uuid, p_tenant text, p_input jsonb,
        p_step_ids uuid[], p_step_names text[], p_node text, p_lease_ms integer)
      returns table (r_created boolean, r_claimed boolean, r_seq bigint, r_started_at timestamptz)
      language plpgsql volatile as $fn$
      declare v_seq bigint; v_started timestamptz;
      begin
        perform pg_advisory_xact_lock(7207, hashtext(p_deployment::text));
        insert into sagas (id, kind, deployment_id, tenant_id, input, status, owner_node, lease_until, started_at, finished_at, error, updated_at)
          values (p_id, p_kind, p_deployment, p_tenant, p_input, 'running', null, null, now(), null, null, now())
          on conflict (id) do nothing
          returning sagas.seq, sagas.started_at into v_seq, v_started;
        if not found then
          return query select false, false, null::bigint, null::timestamptz;
          return;
        end if;
        insert into saga_steps (id, saga_id, idx, name, status, attempts, output, compensation_attempts)
          select u.sid, p_id, (u.ord - 1)::integer, u.sname, 'pending', 0, '{}'::jsonb, 0
          from unnest(p_step_ids, p_step_names) with ordinality as u(sid, sname, ord);
        -- Inside the deployment's lock every older saga is committed: held or not is decided here, once.
        update sagas s set owner_node = p_node, lease_until = now() + p_lease_ms * interval '1 millisecond'
          where s.id = p_id
            and not exists (select 1 from sagas o where o.deployment_id = s.deployment_id and o.seq < s.seq and o.status in ('running','compensating'));
        return query select true, found, v_seq, v_started;
      end
      $fn$`);
    // Ends the saga (only the lease holder's call matches), optionally with its last step's succeeded write, and
    // hands the next saga of the deployment whose turn it is to p_node, all in one transaction under the lock.
    this.addSql(`create or replace function saga_finish(p_id uuid, p_deployment uuid, p_node text, p_status text, p_error text,
        p_now timestamptz, p_lease_ms integer, p_step uuid, p_step_finished timestamptz, p_step_output jsonb, p_step_compensate jsonb)
      returns table (r_ok boolean, r_error text, r_next uuid)
      language plpgsql volatile as $fn$
      declare v_error text; v_next uuid;
      begin
        perform pg_advisory_xact_lock(7207, hashtext(p_deployment::text));
        update sagas set status = p_status, finished_at = p_now, updated_at = p_now, owner_node = null, lease_until = null, error = coalesce(p_error, sagas.error)
          where sagas.id = p_id and sagas.owner_node = p_node
          returning sagas.error into v_error;
        if not found then
          return query select false, null::text, null::uuid;
          return;
        end if;
        if p_step is not null then
          update saga_steps set status = 'succeeded', finished_at = p_step_finished, output = p_step_output, compensate_input = p_step_compensate
            where saga_steps.id = p_step and saga_steps.saga_id = p_id;
        end if;
        update sagas set owner_node = p_node, lease_until = now() + p_lease_ms * interval '1 millisecond'
          where sagas.id = (select s.id from sagas s where s.deployment_id = p_deployment and s.status in ('running','compensating')
                              and (s.lease_until is null or s.lease_until < now())
                              and not exists (select 1 from sagas o where o.deployment_id = s.deployment_id and o.seq < s.seq and o.status in ('running','compensating'))
                            order by s.seq limit 1 for update skip locked)
          returning sagas.id into v_next;
        return query select true, v_error, v_next;
      end
      $fn$`);
  }

  override async down(): Promise<void> {
    this.addSql(`drop function if exists saga_finish(uuid, uuid, text, text, text, timestamptz, integer, uuid, timestamptz, jsonb, jsonb)`);
    this.addSql(`drop function if exists saga_create(uuid, text, uuid, text, jsonb, uuid[], text[], text, integer)`);
  }
}
