import { Migration } from "@mikro-orm/migrations";

/**
 * Saga kinds (SPEC §7): every saga names its kind (existing ones are provisioning runs), may end `failed`
 * (forward-only kinds), keeps its creation order per deployment (`seq`, the one-at-a-time queue), and every step
 * keeps the input its undo needs beside its output (`compensate_input`).
 */
export class Migration20261202002000_saga_kinds extends Migration {
  override async up(): Promise<void> {
    this.addSql(`alter table sagas add column kind text not null default 'provision'`);
    this.addSql(`alter table sagas alter column kind drop default`);
    this.addSql(`alter table sagas drop constraint if exists sagas_status_check`);
    this.addSql(`alter table sagas add constraint sagas_status_check check (status in ('running','succeeded','failed','compensating','compensated','compensation_failed'))`);
    this.addSql(`create sequence sagas_seq`);
    this.addSql(`alter table sagas add column seq bigint`);
    this.addSql(`update sagas set seq = r.n from (select id, row_number() over (order by started_at, id) as n from sagas) r where r.id = sagas.id`);
    this.addSql(`select setval('sagas_seq', coalesce((select max(seq) from sagas), 0) + 1, false)`);
    this.addSql(`alter table sagas alter column seq set default nextval('sagas_seq'), alter column seq set not null`);
    this.addSql(`create index sagas_deployment_seq_idx on sagas (deployment_id, seq)`);
    this.addSql(`create index sagas_list_idx on sagas (started_at desc, id desc)`);
    this.addSql(`alter table saga_steps add column compensate_input jsonb null`);
    // What existed had one undo input per step implicitly (the payload the engine built): a compensating saga of the
    // old engine left behind gets the same input now, so its rollback finishes after the upgrade.
    this.addSql(`update saga_steps st set compensate_input = jsonb_strip_nulls(jsonb_build_object(
        'deployment_id', s.deployment_id, 'requested_by', s.input->>'requested_by',
        'tag', (select o.output->>'tag' from saga_steps o where o.saga_id = st.saga_id and o.name = 'create_droplet'),
        'droplet_id', (select (o.output->>'droplet_id')::bigint from saga_steps o where o.saga_id = st.saga_id and o.name = 'create_droplet'),
        'resource_id', (select o.output->>'resource_id' from saga_steps o where o.saga_id = st.saga_id and o.name = 'register_inventory')))
      from sagas s where s.id = st.saga_id and st.status in ('succeeded','running','failed','compensating','compensation_failed')
        and st.name in ('mark_deployment_provisioning','create_droplet','register_inventory','link_deployment_resource','point_deployment_dns')`);
  }

  override async down(): Promise<void> {
    this.addSql(`alter table saga_steps drop column compensate_input`);
    this.addSql(`drop index if exists sagas_list_idx`);
    this.addSql(`drop index if exists sagas_deployment_seq_idx`);
    this.addSql(`alter table sagas drop column seq`);
    this.addSql(`drop sequence if exists sagas_seq`);
    this.addSql(`alter table sagas drop constraint if exists sagas_status_check`);
    this.addSql(`alter table sagas add constraint sagas_status_check check (status in ('running','succeeded','compensating','compensated','compensation_failed'))`);
    this.addSql(`alter table sagas drop column kind`);
  }
}
