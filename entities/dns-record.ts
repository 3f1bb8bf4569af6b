import { defineEntity, p, type InferEntity } from "@mikro-orm/core";

/**
 * `pointing`: an intent written before the provider call (what we saw and what we are about to do), so a retry
 * after a crash or a lost response can tell our own change from someone else's. `pointed`: the provider holds
 * `data`. `reverted`: the change was undone (previous value restored, or the record we created deleted).
 */
export const DNS_STATUSES = ["pointing", "pointed", "reverted"] as const;
export type DnsStatus = (typeof DNS_STATUSES)[number];

/** The A record of one deployment (SPEC §5) and what it replaced, so the change can be reverted. */
export const DnsRecord = defineEntity({
  name: "DnsRecord",
  tableName: "dns_records",
  properties: {
    id: p.uuid().primary(),
    tenant_id: p.string(),
    deployment_id: p.uuid(),
    fqdn: p.string(),
    domain: p.string(),
    // Relative to the zone, as DigitalOcean stores it: "<slug>.<tenant-label>".
    record_name: p.string(),
    type: p.string(),
    provider_record_id: p.bigint("number").nullable(),
    // The IPv4 this deployment points (or, while `pointing`, is about to point) the name at.
    data: p.string(),
    // What the record held before our last change; null when we created it.
    previous_data: p.string().nullable(),
    previous_provider_record_id: p.bigint("number").nullable(),
    // Our last change created the record, so reverting it deletes the record.
    created_by_us: p.boolean(),
    status: p.string().$type<DnsStatus>(),
    inserted_at: p.datetime(3),
    updated_at: p.datetime(3),
    version: p.integer().version(),
  },
});
export type DnsRecord = InferEntity<typeof DnsRecord>;
