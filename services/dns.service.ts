import { createHash, randomUUID } from "node:crypto";
import { LockMode } from "@mikro-orm/core";
import type { ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { DnsRecord } from "../entities/dns-record";
import { DbMixin, emOf } from "../lib/db";
import { currentUser, requireOperator, systemUser, visibleTo, type ActionCtx } from "../lib/access";
import { compensationHandler } from "../lib/compensation";
import { conflict, invalid, mapDbError, notFound } from "../lib/errors";
import { iso } from "../lib/dto";
import type { DigitalOceanClient, DomainRecord } from "../lib/digitalocean";
import { doClientFrom, provider } from "../lib/provider";
import { UUID_PARAM, SLUG } from "../lib/params";

const IPV4 = "^(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)(\\.(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)){3}$";
const DOMAIN = /^(?=.{1,190}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * The DNS label that stands for a tenant in `<slug>.<tenant-label>.<DNS_DOMAIN>`.
 *
 * A tenant id that already is a plain DNS label (lowercase a-z, 0-9 and single '-', no '-' at either end,
 * at most 63 characters) is used as it is: tenant `acme` → `acme`. Any other id is sanitised (lowercased,
 * every character outside [a-z0-9-] becomes '-', runs of '-' collapse to one, '-' trimmed from both ends)
 * and gets '-' plus the first 10 hex digits of the SHA-256 of the *original* id appended, the whole cut to 63
 * characters: `Acme Corp` → `acme-corp-<hash>`, `ACME` → `acme-<hash>` (so it cannot take `acme`'s name),
 * and an id with nothing usable left (`__`) → `t-<hash>`. Two different tenants end up on the same label only
 * if a 40-bit hash collides or a tenant id literally is another id's hashed label; even then the unique fqdn
 * in dns_records makes the second point fail with 409 DNS_NAME_TAKEN instead of taking the first one's name.
 */
export function tenantLabel(tenantId: string): string {
  const sanitized = tenantId.toLowerCase().replace(/[^a-z0-9-]/g, "-").replace(/-{2,}/g, "-").replace(/^-+|-+$/g, "");
  if (sanitized && sanitized === tenantId && sanitized.length <= 63) return sanitized;
  const hash = createHash("sha256").update(tenantId, "utf8").digest("hex").slice(0, 10);
  const base = sanitized.slice(0, 63 - hash.length - 1).replace(/-+$/, "");
  return `${base || "t"}-${hash}`;
}

/** The A record name of a deployment, relative to the zone and fully qualified. */
export function dnsName(slug: string, tenantId: string, domain: string): { name: string; fqdn: string } {
  const name = `${slug}.${tenantLabel(tenantId)}`;
  return { name, fqdn: `${name}.${domain}`.toLowerCase() };
}

export interface PointParams {
  deployment_id: string;
  tenant_id: string;
  slug: string;
  ipv4: string;
}
export interface DeploymentRefParams {
  deployment_id: string;
}

/** A dns_records row as the hot path reads it (raw SQL: bigints as text, timestamps as Date). */
type DnsRow = Omit<DnsRecord, "provider_record_id" | "previous_provider_record_id"> & { provider_record_id: number | string | null; previous_provider_record_id: number | string | null };
const DNS_COLS = "id, tenant_id, deployment_id, fqdn, domain, record_name, type, provider_record_id, data, previous_data, previous_provider_record_id, created_by_us, status, inserted_at, updated_at, version";

export function dnsRecordDto(r: DnsRecord | DnsRow) {
  return {
    id: r.id,
    tenant_id: r.tenant_id,
    deployment_id: r.deployment_id,
    fqdn: r.fqdn,
    domain: r.domain,
    name: r.record_name,
    type: r.type,
    provider_record_id: r.provider_record_id == null ? null : Number(r.provider_record_id),
    data: r.data,
    previous_data: r.previous_data ?? null,
    previous_provider_record_id: r.previous_provider_record_id == null ? null : Number(r.previous_provider_record_id),
    created_by_us: r.created_by_us,
    status: r.status,
    inserted_at: iso(r.inserted_at),
    updated_at: iso(r.updated_at),
  };
}
export type DnsRecordDto = ReturnType<typeof dnsRecordDto>;

/** What our next change will replace, as observed at the provider (or as recorded by an unfinished point). */
interface Intent {
  previous_data: string | null;
  previous_provider_record_id: number | null;
  created_by_us: boolean;
}

/**
 * One A record per deployment (SPEC §5), kept with the value it replaced so the provisioning saga can revert it.
 * `point` and `revert` are idempotent and are for the saga (visibility "public": no HTTP route). The provider is
 * never called inside a database transaction: each provider call sits between two short transactions, the first
 * recording the intent (status `pointing`), the second the outcome.
 */
const DnsService: ServiceSchema<any> = {
  name: "dns",
  version: 1,
  mixins: [DbMixin([DnsRecord])],
  settings: {
    // The zone holding deployments' names; DNS_DOMAIN, default apps.arcadia.test (resolved in created()).
    dnsDomain: undefined,
    ttl: 300,
    doApiUrl: undefined,
    doToken: undefined,
  },

  created() {
    const domain = String(this.settings.dnsDomain ?? process.env.DNS_DOMAIN ?? "apps.arcadia.test").toLowerCase().replace(/\.$/, "");
    if (!DOMAIN.test(domain)) throw new Error(`DNS_DOMAIN ${JSON.stringify(domain)} is not a domain name`);
    this.domain = domain;
    this.doClient = doClientFrom(this.settings) as DigitalOceanClient;
    // Per-name queue: two points (or a point and a revert) of one name in this node never interleave.
    this.queues = new Map<string, Promise<unknown>>();
  },

  actions: {
    /**
     * Points `<slug>.<tenant-label>.<domain>` at `ipv4`. The provider is asked for an A record of that name first:
     * an existing one is updated (its old value kept in previous_data), none is created (created_by_us). Pointing
     * again at the same address changes nothing; at a new address it updates the record and keeps the address it
     * replaced, so revert undoes the last change.
     */
    point: {
      access: "scoped",
      visibility: "public",
      params: {
        deployment_id: UUID_PARAM,
        tenant_id: { type: "string", min: 1, max: 200 },
        slug: { type: "string", pattern: SLUG, messages: { stringPattern: "'slug' must be a lowercase DNS label" } },
        ipv4: { type: "string", pattern: IPV4, messages: { stringPattern: "'ipv4' must be an IPv4 address" } },
      },
      async handler(this: any, ctx: ActionCtx<PointParams>) {
        const user = currentUser(ctx);
        const p = ctx.params;
        if (!visibleTo(user, p.tenant_id)) throw invalid("'tenant_id' must be your own tenant", [{ field: "tenant_id" }]);
        const { name, fqdn } = dnsName(p.slug, p.tenant_id, this.domain);
        return this.serial(fqdn, () => this.point(ctx, p, name, fqdn));
      },
    },

    /**
     * Undoes the last point: deletes the record if that point created it, else restores the previous value.
     * A second revert, a deployment never pointed, or a record already gone at the provider: nothing to do.
     */
    revert: {
      access: "scoped",
      visibility: "public",
      params: { deployment_id: UUID_PARAM },
      async handler(this: any, ctx: ActionCtx<DeploymentRefParams>) {
        return this.onRecordOf(ctx, () => this.revert(ctx, ctx.params.deployment_id));
      },
    },

    /**
     * Decommission (SPEC §2 archived): the deployment's A record goes, at the provider (looked up by name: ours by
     * id or by our address) and here. Idempotent: a deployment without a record, or one already gone, is a no-op.
     */
    remove: {
      visibility: "public",
      access: "internal",
      params: { deployment_id: UUID_PARAM },
      async handler(this: any, ctx: ActionCtx<DeploymentRefParams>) {
        return this.onRecordOf(ctx, () => this.remove(ctx, ctx.params.deployment_id));
      },
    },

    /** A deployment's DNS name before it is pointed: cloud-init's {{hostname}} (services/deployments/provision-input.ts). */
    nameFor: {
      visibility: "public",
      access: "internal",
      params: { slug: { type: "string", pattern: SLUG, messages: { stringPattern: "'slug' must be a lowercase DNS label" } }, tenant_id: { type: "string", min: 1, max: 200 } },
      handler(this: any, ctx: ActionCtx<{ slug: string; tenant_id: string }>) {
        currentUser(ctx);
        return { fqdn: dnsName(ctx.params.slug, ctx.params.tenant_id, this.domain).fqdn };
      },
    },

    get: {
      access: "scoped",
      visibility: "public",
      params: { deployment_id: UUID_PARAM },
      async handler(ctx: ActionCtx<DeploymentRefParams>) {
        const user = currentUser(ctx);
        const row = await emOf(ctx).findOne(DnsRecord, { deployment_id: ctx.params.deployment_id });
        if (!row || !visibleTo(user, row.tenant_id)) throw notFound("DNS record of deployment", ctx.params.deployment_id);
        return { dns_record: dnsRecordDto(row) };
      },
    },

    /**
     * Every dns_records row, with the zone this service writes to: the inventory
     * service's drift check compares them with the provider (docs/drift.md). Operators and the system user only.
     */
    listAll: {
      access: "internal",
      visibility: "public",
      async handler(this: any, ctx: ActionCtx<Record<string, never>>) {
        const rows = await emOf(ctx).find(DnsRecord, {}, { orderBy: { inserted_at: "asc", id: "asc" } });
        return { domain: this.domain, items: rows.map(dnsRecordDto) };
      },
    },
  },

  events: {
    /** Rollback of a provisioning saga: restore the name's previous value, or delete the record we created. */
    "provisioning.compensate.dns": compensationHandler(async function (this: any, req, ctx) {
      await ctx.call("v1.dns.revert", { deployment_id: req.deployment_id }, { meta: { user: systemUser("provisioning") } });
    }),
  },

  methods: {
    /**
     * Runs `change` on a deployment's record, one change per name at a time (serial): another tenant's record is
     * 404, a deployment with no record is a no-op. Shared by revert and remove.
     */
    async onRecordOf(this: any, ctx: ActionCtx<DeploymentRefParams>, change: () => Promise<unknown>) {
      const user = currentUser(ctx);
      const row = await emOf(ctx).fork().findOne(DnsRecord, { deployment_id: ctx.params.deployment_id });
      if (row && !visibleTo(user, row.tenant_id)) throw notFound("DNS record of deployment", ctx.params.deployment_id);
      if (!row) return { dns_record: null, changed: false };
      return this.serial(row.fqdn, change);
    },

    async serial<T>(key: string, fn: () => Promise<T>): Promise<T> {
      const queues: Map<string, Promise<unknown>> = this.queues;
      const prev = queues.get(key) ?? Promise.resolve();
      const run = prev.then(fn, fn);
      const tail = run.catch(() => undefined);
      queues.set(key, tail);
      try {
        return await run;
      } finally {
        if (queues.get(key) === tail) queues.delete(key);
      }
    },

    /** A records of the name at the provider, ours (by id) first. */
    async lookup(fqdn: string, recordId: number | null): Promise<DomainRecord | undefined> {
      const client: DigitalOceanClient = this.doClient;
      const found = await provider(() => client.listDomainRecords(this.domain, { type: "A", name: fqdn }));
      return found.find((r) => recordId != null && r.id === Number(recordId)) ?? found[0];
    },

    async point(ctx: ActionCtx<PointParams>, p: PointParams, name: string, fqdn: string) {
      const client: DigitalOceanClient = this.doClient;
      // The deployment's row and the name's row in one read (the hot path: one autocommit statement, no ORM).
      const rows: DnsRow[] = await emOf(ctx).execute(`select ${DNS_COLS} from dns_records where deployment_id = ? or fqdn = ?`, [p.deployment_id, fqdn]);
      const row = rows.find((r) => r.deployment_id === p.deployment_id);
      const byName = rows.find((r) => r.fqdn === fqdn);
      if (byName && byName.deployment_id !== p.deployment_id && byName.status !== "reverted")
        throw conflict(`${fqdn} already points to another deployment`, "DNS_NAME_TAKEN", { fqdn, deployment_id: byName.deployment_id });
      if (row && row.tenant_id !== p.tenant_id) throw conflict(`Deployment ${p.deployment_id} has a DNS record of another tenant`, "DNS_TENANT_MISMATCH", { deployment_id: p.deployment_id });
      if (row && row.fqdn !== fqdn && row.status !== "reverted")
        throw conflict(`Deployment ${p.deployment_id} already points ${row.fqdn}; revert it first`, "DNS_NAME_MISMATCH", { fqdn: row.fqdn });

      // 1. What the provider holds now (never a transaction open across this call).
      const current = await this.lookup(fqdn, row?.provider_record_id ?? null);
      const ours = row && row.fqdn === fqdn;
      if (ours && row.status === "pointed" && row.data === p.ipv4 && current?.data === p.ipv4 && current.id === Number(row.provider_record_id))
        return { dns_record: dnsRecordDto(row), changed: false };

      // 2. The intent. An unfinished point to this address whose change is already visible keeps what it recorded
      //    (it made the change: created the record, or replaced previous_data); otherwise the observation decides.
      const resumed = ours && row.status === "pointing" && row.data === p.ipv4 && current?.data === p.ipv4;
      const intent: Intent = resumed
        ? { previous_data: row.previous_data ?? null, previous_provider_record_id: row.previous_provider_record_id == null ? null : Number(row.previous_provider_record_id), created_by_us: row.created_by_us }
        : current
          ? { previous_data: current.data, previous_provider_record_id: current.id, created_by_us: false }
          : { previous_data: null, previous_provider_record_id: null, created_by_us: true };
      await this.writeIntent(ctx, p, name, fqdn, current?.id ?? null, intent);

      // 3. The change at the provider: update the record found by name, or create it. Never a second record.
      let record: DomainRecord;
      if (current && current.data === p.ipv4) record = current;
      else if (current) record = await provider(() => client.updateDomainRecord(this.domain, current.id, { data: p.ipv4 }));
      else record = await provider(() => client.createDomainRecord(this.domain, { type: "A", name, data: p.ipv4, ttl: this.settings.ttl }));

      // 4. The outcome: one update of the row the intent wrote (its unique deployment_id is the row lock).
      const [saved]: DnsRow[] = await emOf(ctx).execute(
        `update dns_records set provider_record_id = ?, data = ?, status = 'pointed', updated_at = ?, version = version + 1 where deployment_id = ? returning ${DNS_COLS}`,
        [record.id, p.ipv4, new Date(), p.deployment_id],
      );
      if (!saved) throw notFound("DNS record of deployment", p.deployment_id);
      const dto = dnsRecordDto(saved);
      ctx.emit("dns.pointed", { dns_record: dto });
      return { dns_record: dto, changed: true };
    },

    /**
     * The intent of a point as one statement (was a transaction of five): a reverted row of another deployment
     * holding the name is deleted first (the insert reads the delete's count, so it runs after it), then the
     * deployment's row is inserted or updated. A live row of another deployment on the name fails the unique fqdn:
     * 409 DNS_NAME_TAKEN, as the locked check did.
     */
    async writeIntent(ctx: ActionCtx<unknown>, p: PointParams, name: string, fqdn: string, recordId: number | null, intent: Intent) {
      const now = new Date();
      try {
        await emOf(ctx).execute(
          `with gone as (delete from dns_records where fqdn = ? and deployment_id <> ? and status = 'reverted' returning 1)
           insert into dns_records (id, tenant_id, deployment_id, fqdn, domain, record_name, type, provider_record_id, data, previous_data,
             previous_provider_record_id, created_by_us, status, inserted_at, updated_at, version)
           select ?, ?, ?, ?, ?, ?, 'A', ?, ?, ?, ?, ?, 'pointing', ?, ?, 1 from (select count(*) from gone) g
           on conflict (deployment_id) do update set tenant_id = excluded.tenant_id, fqdn = excluded.fqdn, domain = excluded.domain,
             record_name = excluded.record_name, type = excluded.type, provider_record_id = excluded.provider_record_id, data = excluded.data,
             previous_data = excluded.previous_data, previous_provider_record_id = excluded.previous_provider_record_id,
             created_by_us = excluded.created_by_us, status = excluded.status, updated_at = excluded.updated_at, version = dns_records.version + 1`,
          [fqdn, p.deployment_id, randomUUID(), p.tenant_id, p.deployment_id, fqdn, this.domain, name, recordId, p.ipv4,
            intent.previous_data, intent.previous_provider_record_id, intent.created_by_us, now, now],
        );
      } catch (err) {
        mapDbError(err, () => conflict(`${fqdn} already points to another deployment`, "DNS_NAME_TAKEN", { fqdn }));
      }
    },

    async revert(ctx: ActionCtx<DeploymentRefParams>, deploymentId: string) {
      const client: DigitalOceanClient = this.doClient;
      const row = await emOf(ctx).fork().findOne(DnsRecord, { deployment_id: deploymentId });
      if (!row) return { dns_record: null, changed: false };
      if (row.status === "reverted") return { dns_record: dnsRecordDto(row), changed: false };

      // Only a record that still holds our address is ours to undo; one gone or changed by someone else is left alone.
      const found = await provider(() => client.listDomainRecords(row.domain, { type: "A", name: row.fqdn }));
      const ours = found.find((r) => r.id === Number(row.provider_record_id) && r.data === row.data) ?? found.find((r) => r.data === row.data);
      if (ours) {
        if (row.created_by_us) await provider(() => client.deleteDomainRecord(row.domain, ours.id)); // 404: already gone, fine
        else if (row.previous_data && row.previous_data !== ours.data)
          await provider(() => client.updateDomainRecord(row.domain, ours.id, { data: row.previous_data! }));
      }
      const saved = await this.write(ctx, deploymentId, row.fqdn, (r: DnsRecord | null, tx: EntityManager, now: Date) => {
        if (!r) throw notFound("DNS record of deployment", deploymentId);
        return tx.assign(r, { status: "reverted", updated_at: now } as any);
      });
      const dto = dnsRecordDto(saved);
      ctx.emit("dns.reverted", { dns_record: dto });
      return { dns_record: dto, changed: true };
    },

    async remove(ctx: ActionCtx<DeploymentRefParams>, deploymentId: string) {
      const client: DigitalOceanClient = this.doClient;
      const row = await emOf(ctx).fork().findOne(DnsRecord, { deployment_id: deploymentId });
      if (!row) return { dns_record: null, changed: false };
      const found = await provider(() => client.listDomainRecords(row.domain, { type: "A", name: row.fqdn }));
      for (const r of found.filter((r) => r.id === Number(row.provider_record_id) || r.data === row.data))
        await provider(() => client.deleteDomainRecord(row.domain, r.id)); // 404: already gone, fine
      const dto = dnsRecordDto(row);
      await emOf(ctx).fork().transactional(async (tx) => {
        await (tx as EntityManager).nativeDelete(DnsRecord, { deployment_id: deploymentId });
      });
      ctx.emit("dns.removed", { dns_record: dto });
      return { dns_record: dto, changed: true };
    },

    /**
     * One short transaction on the deployment's row (locked). A reverted row of another deployment holding the
     * same name is removed first, so a name freed by a revert can be pointed again.
     */
    async write(ctx: ActionCtx<unknown>, deploymentId: string, fqdn: string, apply: (r: DnsRecord | null, em: EntityManager, now: Date) => DnsRecord): Promise<DnsRecord> {
      try {
        return await emOf(ctx).fork().transactional(async (tx) => {
          const em = tx as EntityManager;
          const stale = await em.findOne(DnsRecord, { fqdn, deployment_id: { $ne: deploymentId } }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (stale) {
            if (stale.status !== "reverted") throw conflict(`${fqdn} already points to another deployment`, "DNS_NAME_TAKEN", { fqdn, deployment_id: stale.deployment_id });
            em.remove(stale);
            await em.flush();
          }
          const r = await em.findOne(DnsRecord, { deployment_id: deploymentId }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          const saved = apply(r, em, new Date());
          await em.flush();
          return saved;
        });
      } catch (err) {
        mapDbError(err, () => conflict(`${fqdn} already points to another deployment`, "DNS_NAME_TAKEN", { fqdn }));
      }
    },
  },
};

export default DnsService;
