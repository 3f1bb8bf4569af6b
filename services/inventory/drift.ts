import { randomUUID } from "node:crypto";
import { LockMode } from "@mikro-orm/core";
import type { ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { Errors } from "moleculer";
import { CloudResource, type ResourceStatus } from "../../entities/cloud-resource";
import { DriftAction, DRIFT_ACTIONS, DRIFT_RESOURCES, type DriftActionName, type DriftActionResult, type DriftResource } from "../../entities/drift-action";
import { emOf } from "../../lib/db";
import { requireOperator, systemUser, type ActionCtx } from "../../lib/access";
import { conflict, invalid, mapDbError } from "../../lib/errors";
import { iso } from "../../lib/dto";
import { provider, providerError } from "../../lib/provider";
import { DigitalOceanError, monthlyCostCents, publicIPv4, type Droplet, type DomainRecord } from "../../lib/digitalocean";
import { dropletDto, resourceDto, UUID_PARAM, type ResourceDto } from "./common";

/*
 * Drift between the provider and our records (docs/drift.md): the `drift` report, the `driftAction` fixes
 * (recorded in drift_actions), the periodic check announcing `inventory.drift.detected`, and the
 * `arcadia.drift.entries` gauge. A mixin of the inventory service (inventory.service.ts), whose actions these
 * become (`v1.inventory.drift`, `v1.inventory.driftAction`). It relies on the host service for `doClient` and
 * `sizes` (set in its created()), `mutate` (a locked change of one cloud_resources row) and `orm` (DbMixin).
 */

const SAGA_TAG = /^saga-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/i;
/** A saga in these states still owns its droplet (creating, registering or rolling it back): not drift yet. */
const SAGA_IN_FLIGHT = new Set(["running", "compensating"]);
const DRIFT_ENTRY_ID = /^(orphan|ghost|mismatch):(droplet|dns_record):(.{1,255})$/;
const DRIFT_KINDS = ["orphan", "ghost", "mismatch"] as const;
export type DriftKind = (typeof DRIFT_KINDS)[number];
/** Which drift kind each action fixes. */
const ACTION_FIXES: Record<DriftActionName, DriftKind> = { adopt: "orphan", destroy: "orphan", mark_destroyed: "ghost", sync: "mismatch" };

export interface DriftDifference {
  field: string;
  provider: unknown;
  inventory: unknown;
}
export interface DriftEntry {
  /** Stable across checks: `<kind>:<resource>:<external_id>`. */
  id: string;
  kind: DriftKind;
  resource: DriftResource;
  /** The provider's id: droplet id, or domain record id (for a DNS ghost, the id our row remembers). */
  external_id: string;
  tenant_id: string | null;
  deployment_id: string | null;
  /** Our row: cloud_resources.id for droplets, dns_records.id for DNS records; null when we have none. */
  resource_id: string | null;
  /** Droplet name, or the record's fully qualified name. */
  name: string | null;
  /** For a droplet tagged `saga-<id>`: that saga and its status (null when it could not be asked). */
  saga_id: string | null;
  saga_status: string | null;
  differences: DriftDifference[];
  /** The provider's view and ours (null where that side has nothing). */
  at_provider: Record<string, unknown> | null;
  in_inventory: Record<string, unknown> | null;
  fix: { text: string; actions: DriftActionName[] };
}
export interface DriftReport {
  orphans: DriftEntry[];
  ghosts: DriftEntry[];
  mismatches: DriftEntry[];
  /** Droplets of sagas still running or compensating: not drift (the saga registers or destroys them). */
  in_flight: { resource: "droplet"; external_id: string; name: string; saga_id: string; saga_status: string }[];
  checked_at: string;
  counts: { orphans: number; ghosts: number; mismatches: number; total: number; in_flight: number; by_resource: Record<DriftResource, { orphans: number; ghosts: number; mismatches: number }> };
  /** `ok`, or why a side could not be checked (then its entries are missing from this report). */
  sources: { droplets: string; dns: string };
  dns_domain: string | null;
}
type CallFn = (action: string, params: Record<string, unknown>, opts?: Record<string, unknown>) => Promise<any>;
export interface DriftActionParams {
  action: DriftActionName;
  entry_id?: string;
  external_id?: string;
  resource?: DriftResource;
  tenant_id?: string;
  deployment_id?: string;
}
interface DriftTarget {
  resource: DriftResource;
  external_id: string;
  entry_id: string;
}
interface DriftOutcome {
  resource: ResourceDto | null;
  tenant_id: string | null;
  deployment_id: string | null;
  details: Record<string, unknown>;
}
interface SagaInfo {
  /** The saga's status; `not_found` when provisioning has no such saga; null when it could not be asked. */
  status: string | null;
  tenant_id: string | null;
  deployment_id: string | null;
}

export function driftActionDto(a: DriftAction) {
  return {
    id: a.id,
    action: a.action,
    resource: a.resource,
    external_id: a.external_id,
    entry_id: a.entry_id ?? null,
    actor: a.actor,
    tenant_id: a.tenant_id ?? null,
    deployment_id: a.deployment_id ?? null,
    resource_id: a.resource_id ?? null,
    result: a.result,
    error: a.error ?? null,
    details: a.details ?? {},
    created_at: iso(a.created_at),
  };
}
export type DriftActionDto = ReturnType<typeof driftActionDto>;
interface DnsRow {
  id: string;
  tenant_id: string;
  deployment_id: string;
  fqdn: string;
  domain: string;
  name: string;
  type: string;
  provider_record_id: number | null;
  data: string;
  status: "pointing" | "pointed" | "reverted";
  [k: string]: unknown;
}

export function sagaIdOf(tags: string[] | undefined): string | null {
  for (const t of tags ?? []) {
    const m = SAGA_TAG.exec(t);
    if (m) return m[1].toLowerCase();
  }
  return null;
}
const recordFqdn = (r: Pick<DomainRecord, "name">, domain: string) => (r.name === "@" || r.name === "" ? domain : `${r.name}.${domain}`).toLowerCase();
const recordDto = (r: DomainRecord, domain: string) => ({ id: r.id, type: r.type, name: r.name, fqdn: recordFqdn(r, domain), data: r.data, ttl: r.ttl });

/** Where a droplet at the provider and its live inventory row disagree: public IPv4, status, size. */
export function dropletDifferences(d: Droplet, r: Pick<CloudResource, "ipv4" | "status" | "size_slug">): DriftDifference[] {
  const out: DriftDifference[] = [];
  const ip = publicIPv4(d) ?? null;
  if (ip !== (r.ipv4 ?? null)) out.push({ field: "ipv4", provider: ip, inventory: r.ipv4 ?? null });
  if (d.status !== r.status) out.push({ field: "status", provider: d.status, inventory: r.status });
  const size = d.size_slug ?? (d.size as { slug?: string } | undefined)?.slug ?? null;
  if (size !== r.size_slug) out.push({ field: "size_slug", provider: size, inventory: r.size_slug });
  return out;
}

function emptyCounts() {
  return { orphans: 0, ghosts: 0, mismatches: 0 };
}
const errText = (err: unknown) => (err as Error)?.message ?? String(err);
/** A rejection that says what is wrong with the target; recorded with result `rejected`. */
const notDrift = (kind: DriftKind, message: string, data?: Record<string, unknown>) =>
  conflict(message, kind === "orphan" ? "NOT_AN_ORPHAN" : kind === "ghost" ? "NOT_A_GHOST" : "NOT_A_MISMATCH", data);

export const DriftMixin: Partial<ServiceSchema<any>> = {
  settings: {
    // Periodic drift check interval (DRIFT_CHECK_MS, default 60000; 0 turns it off). Resolved in created().
    driftCheckMs: undefined,
    // How long the drift check waits for another service (dns, provisioning) to answer.
    driftCallTimeoutMs: 10_000,
  },

  created() {
    const raw = this.settings.driftCheckMs ?? (process.env.DRIFT_CHECK_MS || undefined) ?? 60_000;
    const ms = Number(raw);
    if (!Number.isFinite(ms) || ms < 0) throw new Error(`DRIFT_CHECK_MS must be a number of milliseconds >= 0, got ${JSON.stringify(raw)}`);
    this.driftCheckMs = ms;
    // Entry ids reported by the previous periodic check: only entries not in it are announced.
    this.driftSeen = new Set<string>();
    this.driftRun = null;
    this.driftTimer = null;
    this.driftStopped = false;
    if (this.broker.isMetricsEnabled() && !this.broker.metrics.hasMetric("arcadia.drift.entries"))
      this.broker.metrics.register({ type: "gauge", name: "arcadia.drift.entries", labelNames: ["kind"], description: "Drift entries between the provider and inventory/DNS at the last check, by kind" });
  },

  started() {
    this.driftStopped = false;
    if (this.driftCheckMs > 0) this.scheduleDriftCheck();
  },

  async stopped() {
    // Runs before the DbMixin closes the ORM (Moleculer stops mixins in reverse): let a running check finish first.
    this.driftStopped = true;
    if (this.driftTimer) clearTimeout(this.driftTimer);
    this.driftTimer = null;
    await this.driftRun?.catch(() => undefined);
  },

  actions: {
    // ---- the provider against inventory and DNS (operators only) ----
    drift: {
      access: "operator",
      async handler(this: any, ctx: ActionCtx<Record<string, never>>): Promise<DriftReport> {
        const report: DriftReport = await this.computeDrift((a: string, p: Record<string, unknown>, o?: Record<string, unknown>) => ctx.call(a, p, o), emOf(ctx));
        this.setDriftGauge(report);
        return report;
      },
    },

    /** Fixes one drift entry: adopt/destroy an orphan, mark a ghost destroyed, sync a mismatch. Recorded in drift_actions. */
    driftAction: {
      access: "operator",
      params: {
        action: { type: "enum", values: DRIFT_ACTIONS },
        entry_id: { type: "string", min: 1, max: 300, optional: true },
        external_id: { type: "string", min: 1, max: 100, convert: true, optional: true },
        resource: { type: "enum", values: DRIFT_RESOURCES, optional: true },
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
        deployment_id: { ...UUID_PARAM, optional: true },
      },
      async handler(this: any, ctx: ActionCtx<DriftActionParams>) {
        const user = requireOperator(ctx);
        const p = ctx.params;
        const target = this.driftTarget(p);
        const call: CallFn = (a, params, o) => ctx.call(a, params, o);
        let outcome: DriftOutcome;
        try {
          outcome = await this.applyDriftAction(ctx, call, p.action, target, p);
        } catch (err: any) {
          // Bad input is not an attempt; a refusal (not that drift now) or a failure is, and is kept with its reason.
          if (err?.code === 422 || err?.code === 403 || err?.code === 401) throw err;
          const result: DriftActionResult = err?.code === 409 ? "rejected" : "failed";
          const row = await this.recordDriftAction(ctx, {
            action: p.action, resource: target.resource, external_id: target.external_id, entry_id: target.entry_id, actor: user.sub,
            tenant_id: p.tenant_id ?? null, deployment_id: p.deployment_id ?? null, resource_id: null, result, error: errText(err),
            details: { type: err?.type ?? null, code: err?.code ?? null, data: err?.data ?? null },
          }).catch((e: unknown) => {
            this.logger.error({ err: e }, "could not record a drift action");
            return null;
          });
          if (row && err && typeof err === "object") err.data = { ...(err.data ?? {}), drift_action_id: row.id };
          throw err;
        }
        const row = await this.recordDriftAction(ctx, {
          action: p.action, resource: target.resource, external_id: target.external_id, entry_id: target.entry_id, actor: user.sub,
          tenant_id: outcome.tenant_id ?? null, deployment_id: outcome.deployment_id ?? null, resource_id: outcome.resource?.id ?? null,
          result: "succeeded", error: null, details: outcome.details,
        });
        ctx.meta.$statusCode = 201;
        return { action: row, resource: outcome.resource ?? null };
      },
    },
  },

  methods: {
    /**
     * One comparison of the provider with inventory and DNS. Our side is read first and the provider second, so a
     * resource created in between appears at the provider without a row (and is then found to belong to a running
     * saga, or to have been registered meanwhile), never as a ghost.
     */
    async computeDrift(call: CallFn, em: EntityManager): Promise<DriftReport> {
      const checkedAt = new Date().toISOString();
      const opts = { timeout: this.settings.driftCallTimeoutMs };
      const live = await em.find(CloudResource, { provider: "digitalocean", status: { $ne: "destroyed" } } as any, { orderBy: { inserted_at: "asc", id: "asc" } as any });
      let dns: { domain: string; items: DnsRow[] } | null = null;
      let dnsSource = "ok";
      try {
        dns = await call("v1.dns.listAll", {}, opts);
      } catch (err) {
        dnsSource = `unavailable: ${errText(err)}`;
      }
      const droplets: Droplet[] = await provider(() => this.doClient.listDroplets());
      const records = new Map<string, DomainRecord[]>();
      if (dns) {
        try {
          // The zone the dns service writes to, plus any older zone a pointed row still lives in.
          const domains = new Set([dns.domain, ...dns.items.filter((r) => r.status === "pointed").map((r) => r.domain)]);
          for (const domain of domains) {
            const found: DomainRecord[] = await provider(() => this.doClient.listDomainRecords(domain, { type: "A" }));
            records.set(domain, found.filter((r) => r.type === "A"));
          }
        } catch (err) {
          dnsSource = `unavailable: ${errText(err)}`;
          dns = null;
        }
      }

      const orphans: DriftEntry[] = [];
      const ghosts: DriftEntry[] = [];
      const mismatches: DriftEntry[] = [];
      const inFlight: DriftReport["in_flight"] = [];

      // Droplets.
      const liveByExt = new Map<string, CloudResource>(live.map((r: CloudResource) => [r.external_id, r]));
      const atProvider = new Map<string, Droplet>(droplets.map((d) => [String(d.id), d]));
      const unknown = droplets.filter((d) => !liveByExt.has(String(d.id)));
      const rows: CloudResource[] = unknown.length ? await em.find(CloudResource, { provider: "digitalocean", external_id: { $in: unknown.map((d) => String(d.id)) } } as any) : [];
      const rowByExt = new Map<string, CloudResource>(rows.map((r) => [r.external_id, r]));
      const sagas: Map<string, SagaInfo> = await this.sagaStatuses(call, unknown.map((d) => sagaIdOf(d.tags)).filter((id): id is string => !!id));

      for (const d of unknown) {
        const ext = String(d.id);
        const row = rowByExt.get(ext);
        if (row && row.status !== "destroyed") continue; // registered while we were looking
        const sagaId = sagaIdOf(d.tags);
        const saga = sagaId ? sagas.get(sagaId) : undefined;
        if (sagaId && saga?.status && SAGA_IN_FLIGHT.has(saga.status)) {
          inFlight.push({ resource: "droplet", external_id: ext, name: d.name, saga_id: sagaId, saga_status: saga.status });
          continue;
        }
        let text = `Droplet ${ext} (${d.name}) runs at the provider ` + (row ? `but inventory marked it destroyed at ${iso(row.destroyed_at)}` : "with no inventory row");
        if (sagaId) {
          text += saga?.status
            ? `; it carries the tag of saga ${sagaId} (${saga.status}), which no longer owns it`
            : `; it carries the tag of saga ${sagaId}, whose status could not be checked (provisioning did not answer)`;
          if (saga?.status === "compensation_failed") text += `; retrying that saga (POST /api/v1/sagas/${sagaId}/retry) destroys it`;
        }
        text += ". Adopt it into inventory for a tenant (adopt: tenant_id required, deployment_id optional) or destroy it at the provider (destroy).";
        orphans.push({
          id: `orphan:droplet:${ext}`, kind: "orphan", resource: "droplet", external_id: ext,
          tenant_id: row?.tenant_id ?? saga?.tenant_id ?? null, deployment_id: row?.deployment_id ?? saga?.deployment_id ?? null,
          resource_id: row?.id ?? null, name: d.name, saga_id: sagaId, saga_status: sagaId ? (saga?.status ?? null) : null,
          differences: row ? [{ field: "status", provider: d.status, inventory: "destroyed" }] : [{ field: "exists", provider: true, inventory: false }],
          at_provider: dropletDto(d), in_inventory: row ? resourceDto(row) : null,
          fix: { text, actions: saga?.status === "compensation_failed" ? ["destroy"] : ["adopt", "destroy"] },
        });
      }
      for (const r of live as CloudResource[]) {
        const d = atProvider.get(r.external_id);
        const base = { resource: "droplet" as const, external_id: r.external_id, tenant_id: r.tenant_id, deployment_id: r.deployment_id ?? null, resource_id: r.id, name: r.name, saga_id: r.saga_id ?? null, saga_status: null, in_inventory: resourceDto(r) };
        if (!d) {
          ghosts.push({
            ...base, id: `ghost:droplet:${r.external_id}`, kind: "ghost", at_provider: null,
            differences: [{ field: "exists", provider: false, inventory: true }],
            fix: { text: `Droplet ${r.external_id} (${r.name}) is gone at the provider, but inventory still counts it as ${r.status}${r.deployment_id ? ` for deployment ${r.deployment_id}` : ""}. Mark it destroyed (mark_destroyed).`, actions: ["mark_destroyed"] },
          });
          continue;
        }
        const differences = dropletDifferences(d, r);
        if (differences.length)
          mismatches.push({
            ...base, id: `mismatch:droplet:${r.external_id}`, kind: "mismatch", at_provider: dropletDto(d), differences,
            fix: { text: `Inventory's ${differences.map((x) => x.field).join(", ")} of droplet ${r.external_id} differ from the provider's. Copy the provider's values into inventory (sync; a resize is re-priced).`, actions: ["sync"] },
          });
      }

      // DNS records (A records only; the dns service's zone for orphans).
      if (dns) {
        const claimed = new Set(dns.items.filter((r) => r.status === "pointed" || r.status === "pointing").map((r) => r.fqdn));
        const matched = new Set<number>();
        for (const row of dns.items) {
          if (row.status !== "pointed") continue; // `pointing` is a change in flight, `reverted` claims nothing
          const recs = records.get(row.domain) ?? [];
          const rec = (row.provider_record_id != null ? recs.find((x) => x.id === Number(row.provider_record_id)) : undefined) ?? recs.find((x) => recordFqdn(x, row.domain) === row.fqdn);
          const base = { resource: "dns_record" as const, tenant_id: row.tenant_id, deployment_id: row.deployment_id, resource_id: row.id, name: row.fqdn, saga_id: null, saga_status: null, in_inventory: row };
          if (!rec) {
            const ext = String(row.provider_record_id ?? row.fqdn);
            ghosts.push({
              ...base, id: `ghost:dns_record:${ext}`, kind: "ghost", external_id: ext, at_provider: null,
              differences: [{ field: "exists", provider: false, inventory: true }],
              fix: { text: `The A record ${row.fqdn} → ${row.data} of deployment ${row.deployment_id} is gone at the provider. Point the deployment's name again (v1.dns.point), or revert it if the deployment is gone; no drift action applies to DNS ghosts.`, actions: [] },
            });
            continue;
          }
          matched.add(rec.id);
          const differences: DriftDifference[] = [];
          if (rec.data !== row.data) differences.push({ field: "data", provider: rec.data, inventory: row.data });
          if (row.provider_record_id != null && rec.id !== Number(row.provider_record_id)) differences.push({ field: "provider_record_id", provider: rec.id, inventory: row.provider_record_id });
          if (recordFqdn(rec, row.domain) !== row.fqdn) differences.push({ field: "fqdn", provider: recordFqdn(rec, row.domain), inventory: row.fqdn });
          if (differences.length)
            mismatches.push({
              ...base, id: `mismatch:dns_record:${rec.id}`, kind: "mismatch", external_id: String(rec.id), at_provider: recordDto(rec, row.domain), differences,
              fix: { text: `The A record ${row.fqdn} at the provider differs from dns_records (${differences.map((x) => x.field).join(", ")}). Point the deployment again (v1.dns.point puts ${row.data} back) or correct the record at the provider; no drift action applies to DNS mismatches.`, actions: [] },
            });
        }
        for (const rec of records.get(dns.domain) ?? []) {
          if (matched.has(rec.id)) continue;
          const fqdn = recordFqdn(rec, dns.domain);
          if (claimed.has(fqdn)) continue;
          orphans.push({
            id: `orphan:dns_record:${rec.id}`, kind: "orphan", resource: "dns_record", external_id: String(rec.id), tenant_id: null, deployment_id: null, resource_id: null,
            name: fqdn, saga_id: null, saga_status: null, differences: [{ field: "exists", provider: true, inventory: false }], at_provider: recordDto(rec, dns.domain), in_inventory: null,
            fix: { text: `The A record ${fqdn} → ${rec.data} under ${dns.domain} is pointed by no deployment. Delete it at the provider (destroy), unless someone manages it by hand.`, actions: ["destroy"] },
          });
        }
      }

      const byId = (a: DriftEntry, b: DriftEntry) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
      orphans.sort(byId);
      ghosts.sort(byId);
      mismatches.sort(byId);
      const by_resource = { droplet: emptyCounts(), dns_record: emptyCounts() };
      for (const [list, key] of [[orphans, "orphans"], [ghosts, "ghosts"], [mismatches, "mismatches"]] as const) for (const e of list) by_resource[e.resource][key]++;
      return {
        orphans, ghosts, mismatches, in_flight: inFlight, checked_at: checkedAt,
        counts: { orphans: orphans.length, ghosts: ghosts.length, mismatches: mismatches.length, total: orphans.length + ghosts.length + mismatches.length, in_flight: inFlight.length, by_resource },
        sources: { droplets: "ok", dns: dnsSource },
        dns_domain: dns?.domain ?? null,
      };
    },

    /** Each saga's status by id, asked of the provisioning service (`not_found`: no such saga; null: no answer). */
    async sagaStatuses(call: CallFn, ids: string[]): Promise<Map<string, SagaInfo>> {
      const out = new Map<string, SagaInfo>();
      const unique = [...new Set(ids)];
      for (let i = 0; i < unique.length; i += 10)
        await Promise.all(
          unique.slice(i, i + 10).map(async (id) => {
            try {
              const { saga } = await call("v1.provisioning.get", { id }, { timeout: this.settings.driftCallTimeoutMs });
              out.set(id, { status: saga.status, tenant_id: saga.tenant_id ?? null, deployment_id: saga.deployment_id ?? null });
            } catch (err: any) {
              out.set(id, { status: err?.type === "NOT_FOUND" ? "not_found" : null, tenant_id: null, deployment_id: null });
            }
          }),
        );
      return out;
    },

    setDriftGauge(report: DriftReport) {
      if (!this.broker.isMetricsEnabled()) return;
      this.broker.metrics.set("arcadia.drift.entries", report.counts.orphans, { kind: "orphan" });
      this.broker.metrics.set("arcadia.drift.entries", report.counts.ghosts, { kind: "ghost" });
      this.broker.metrics.set("arcadia.drift.entries", report.counts.mismatches, { kind: "mismatch" });
    },

    /** The next periodic check, `driftCheckMs` after the previous one ended: runs never overlap. */
    scheduleDriftCheck() {
      if (this.driftStopped || !(this.driftCheckMs > 0)) return;
      this.driftTimer = setTimeout(() => {
        this.driftTimer = null;
        this.driftRun = this.runDriftCheck().finally(() => {
          this.driftRun = null;
          this.scheduleDriftCheck();
        });
      }, this.driftCheckMs);
      this.driftTimer.unref?.();
    },

    /** One periodic check: emits `inventory.drift.detected` with the entries the previous check did not report. */
    async runDriftCheck(): Promise<DriftEntry[]> {
      try {
        const meta = { user: systemUser("drift") };
        const call: CallFn = (a, p, o) => this.broker.call(a, p, { ...(o ?? {}), meta });
        const report: DriftReport = await this.computeDrift(call, this.orm.em.fork());
        this.setDriftGauge(report);
        const entries = [...report.orphans, ...report.ghosts, ...report.mismatches];
        const seen = new Set(entries.map((e) => e.id));
        // A side that could not be checked keeps what it had, so its entries are not announced again when it is back.
        if (report.sources.dns !== "ok") for (const id of this.driftSeen as Set<string>) if (id.includes(":dns_record:")) seen.add(id);
        const fresh = entries.filter((e) => !(this.driftSeen as Set<string>).has(e.id));
        this.driftSeen = seen;
        if (fresh.length) await this.broker.emit("inventory.drift.detected", { entries: fresh, checked_at: report.checked_at, counts: report.counts });
        return fresh;
      } catch (err) {
        this.logger.warn({ err }, "drift check failed; the next one runs as scheduled");
        return [];
      }
    },

    /** The action's target from `entry_id` or `external_id` (+ `resource`), checked against the action. */
    driftTarget(p: DriftActionParams): DriftTarget {
      let resource = p.resource;
      let ext = p.external_id === undefined ? undefined : String(p.external_id);
      let kind: DriftKind | undefined;
      if (p.entry_id !== undefined) {
        const m = DRIFT_ENTRY_ID.exec(p.entry_id);
        if (!m) throw invalid("'entry_id' must be an id from GET /drift: '<orphan|ghost|mismatch>:<droplet|dns_record>:<external id>'", [{ field: "entry_id", type: "format" }]);
        if (resource && resource !== m[2]) throw invalid(`'resource' ${resource} contradicts 'entry_id' ${p.entry_id}`, [{ field: "resource" }]);
        if (ext !== undefined && ext !== m[3]) throw invalid(`'external_id' ${ext} contradicts 'entry_id' ${p.entry_id}`, [{ field: "external_id" }]);
        kind = m[1] as DriftKind;
        resource = m[2] as DriftResource;
        ext = m[3];
      }
      if (ext === undefined) throw invalid("Give the drift entry's 'entry_id' (from GET /drift) or the target's 'external_id'", [{ field: "entry_id", type: "required" }]);
      resource ??= "droplet";
      const fixes = ACTION_FIXES[p.action];
      if (kind && kind !== fixes) {
        const fitting = (Object.keys(ACTION_FIXES) as DriftActionName[]).filter((a) => ACTION_FIXES[a] === kind);
        throw invalid(`'${p.action}' fixes ${fixes}s, but ${p.entry_id} is a ${kind}; a ${kind} is fixed by ${fitting.join(" or ")}`, [{ field: "action", type: "not_applicable" }]);
      }
      if (resource === "dns_record" && p.action !== "destroy")
        throw invalid(`'${p.action}' does not apply to DNS records: the one DNS fix is destroying an orphan record (destroy)`, [{ field: "action", type: "not_applicable" }]);
      if (resource === "droplet" && !/^\d{1,18}$/.test(ext)) throw invalid(`'${ext}' is not a droplet id (an integer)`, [{ field: "external_id" }]);
      if (resource === "dns_record" && !/^\d{1,18}$/.test(ext)) throw invalid(`'${ext}' is not a domain record id (an integer)`, [{ field: "external_id" }]);
      if (p.action === "adopt" && !p.tenant_id) throw invalid("'tenant_id' is required to adopt a droplet: the tenant it will belong to", [{ field: "tenant_id", type: "required" }]);
      if (p.action !== "adopt" && (p.tenant_id !== undefined || p.deployment_id !== undefined))
        throw invalid("'tenant_id' and 'deployment_id' are only for adopt", [{ field: p.tenant_id !== undefined ? "tenant_id" : "deployment_id", type: "not_applicable" }]);
      return { resource, external_id: ext, entry_id: p.entry_id ?? `${fixes}:${resource}:${ext}` };
    },

    async applyDriftAction(ctx: ActionCtx<DriftActionParams>, call: CallFn, action: DriftActionName, target: DriftTarget, p: DriftActionParams): Promise<DriftOutcome> {
      const id = Number(target.external_id);
      if (target.resource === "dns_record") return this.destroyOrphanRecord(call, id);
      if (action === "adopt") return this.adoptDroplet(ctx, call, id, p.tenant_id!, p.deployment_id);
      if (action === "destroy") return this.destroyOrphanDroplet(ctx, call, id);
      if (action === "mark_destroyed") return this.markGhostDestroyed(ctx, id);
      return this.syncMismatch(ctx, id);
    },

    /** The droplet, or null when the provider says 404. */
    async dropletOrNull(id: number): Promise<Droplet | null> {
      try {
        return await this.doClient.getDroplet(id);
      } catch (err) {
        if (err instanceof DigitalOceanError && err.status === 404) return null;
        throw providerError(err);
      }
    },

    /** A droplet tagged by a saga that still owns it is not ours to touch; nor is one whose saga cannot be asked. */
    async ensureSagaDone(call: CallFn, sagaId: string, dropletId: number, action: DriftActionName) {
      const saga: SagaInfo = (await this.sagaStatuses(call, [sagaId])).get(sagaId);
      if (!saga.status)
        throw new Errors.MoleculerRetryableError(`Cannot tell whether saga ${sagaId} still owns droplet ${dropletId}: the provisioning service did not answer`, 503, "SAGA_STATUS_UNKNOWN", { saga_id: sagaId });
      if (SAGA_IN_FLIGHT.has(saga.status))
        throw conflict(`Droplet ${dropletId} belongs to saga ${sagaId}, which is still ${saga.status}: the saga registers or destroys it itself`, "SAGA_IN_FLIGHT", { saga_id: sagaId, saga_status: saga.status });
      if (action === "adopt" && saga.status === "compensation_failed")
        throw conflict(`Droplet ${dropletId} is what saga ${sagaId} failed to roll back: retry the saga (POST /api/v1/sagas/${sagaId}/retry) or destroy the droplet; adopting it would let a later retry destroy it`, "SAGA_COMPENSATION_PENDING", { saga_id: sagaId, saga_status: saga.status });
      return saga;
    },

    /** The deployment exists and belongs to the tenant (asked of the deployments service). */
    async ensureDeployment(call: CallFn, deploymentId: string, tenantId: string) {
      let deployment: { id: string; tenant_id: string };
      try {
        ({ deployment } = await call("v1.deployments.find", { id: deploymentId }, { timeout: this.settings.driftCallTimeoutMs }));
      } catch (err: any) {
        if (err?.type === "NOT_FOUND") throw invalid(`Deployment ${deploymentId} does not exist`, [{ field: "deployment_id", type: "not_found" }]);
        throw err;
      }
      if (deployment.tenant_id !== tenantId) throw invalid(`Deployment ${deploymentId} belongs to tenant ${deployment.tenant_id}, not ${tenantId}`, [{ field: "deployment_id", type: "tenant_mismatch" }]);
    },

    async adoptDroplet(ctx: ActionCtx<DriftActionParams>, call: CallFn, id: number, tenantId: string, deploymentId?: string): Promise<DriftOutcome> {
      const d: Droplet | null = await this.dropletOrNull(id);
      if (!d) throw notDrift("orphan", `Droplet ${id} does not exist at the provider: there is nothing to adopt`, { external_id: String(id) });
      const sagaId = sagaIdOf(d.tags);
      const saga: SagaInfo | null = sagaId ? await this.ensureSagaDone(call, sagaId, id, "adopt") : null;
      if (deploymentId) await this.ensureDeployment(call, deploymentId, tenantId);
      const snap = dropletDto(d);
      const cost = d.size?.price_monthly != null ? monthlyCostCents(d.size) : ((await provider(() => this.sizes.monthlyCents(snap.size_slug))) ?? 0);
      let before: ResourceDto | null = null;
      let row!: CloudResource;
      try {
        await emOf(ctx).fork().transactional(async (tx) => {
          const em = tx as EntityManager;
          const now = new Date();
          const existing = await em.findOne(CloudResource, { provider: "digitalocean", external_id: String(id) }, { lockMode: LockMode.PESSIMISTIC_WRITE });
          if (existing && existing.status !== "destroyed")
            throw notDrift("orphan", `Droplet ${id} is already in inventory as resource ${existing.id} (tenant ${existing.tenant_id}): not an orphan`, { resource_id: existing.id, tenant_id: existing.tenant_id });
          const fields = {
            name: d.name, region: snap.region ?? "unknown", size_slug: snap.size_slug ?? "unknown", ipv4: snap.ipv4, status: d.status, tags: snap.tags,
            monthly_cost_cents: cost, currency: "USD", tenant_id: tenantId, deployment_id: deploymentId ?? null, saga_id: sagaId ?? existing?.saga_id ?? null,
            destroyed_at: null, updated_at: now,
          };
          if (existing) {
            // Marked destroyed while it kept running: the same row comes back to life, its history kept.
            before = resourceDto(existing);
            em.assign(existing, fields as any);
            row = existing;
          } else {
            row = em.create(CloudResource, { id: randomUUID(), provider: "digitalocean", kind: "droplet", external_id: String(id), inserted_at: now, ...fields } as any);
          }
          await em.flush();
        });
      } catch (err) {
        mapDbError(err, () => notDrift("orphan", `Droplet ${id} was registered meanwhile: not an orphan any more`));
      }
      const dto = resourceDto(row);
      ctx.emit(before ? "inventory.updated" : "inventory.registered", { resource: dto });
      if (deploymentId) ctx.emit("inventory.linked", { resource: dto });
      return { resource: dto, tenant_id: tenantId, deployment_id: deploymentId ?? null, details: { droplet: snap, previous: before, saga_id: sagaId, saga_status: saga?.status ?? null } };
    },

    async destroyOrphanDroplet(ctx: ActionCtx<DriftActionParams>, call: CallFn, id: number): Promise<DriftOutcome> {
      const d: Droplet | null = await this.dropletOrNull(id);
      if (!d) throw notDrift("orphan", `Droplet ${id} is already gone at the provider`, { external_id: String(id) });
      const row: CloudResource | null = await emOf(ctx).fork().findOne(CloudResource, { provider: "digitalocean", external_id: String(id) });
      if (row && row.status !== "destroyed")
        throw notDrift("orphan", `Droplet ${id} is in inventory as resource ${row.id} (tenant ${row.tenant_id}${row.deployment_id ? `, deployment ${row.deployment_id}` : ""}): not an orphan, and not destroyed through drift actions`, { resource_id: row.id, tenant_id: row.tenant_id });
      const sagaId = sagaIdOf(d.tags);
      const saga: SagaInfo | null = sagaId ? await this.ensureSagaDone(call, sagaId, id, "destroy") : null;
      const deleted: boolean = await provider(() => this.doClient.deleteDroplet(id));
      if (!deleted) throw notDrift("orphan", `Droplet ${id} is already gone at the provider`, { external_id: String(id) });
      return { resource: row ? resourceDto(row) : null, tenant_id: row?.tenant_id ?? null, deployment_id: row?.deployment_id ?? null, details: { droplet: dropletDto(d), saga_id: sagaId, saga_status: saga?.status ?? null } };
    },

    async markGhostDestroyed(ctx: ActionCtx<DriftActionParams>, id: number): Promise<DriftOutcome> {
      const row: CloudResource | null = await emOf(ctx).fork().findOne(CloudResource, { provider: "digitalocean", external_id: String(id) });
      if (!row) throw notDrift("ghost", `Droplet ${id} has no inventory row: not a ghost`, { external_id: String(id) });
      if (row.status === "destroyed") throw notDrift("ghost", `Resource ${row.id} (droplet ${id}) is already marked destroyed: not a ghost`, { resource_id: row.id });
      const d: Droplet | null = await this.dropletOrNull(id);
      if (d) throw notDrift("ghost", `Droplet ${id} still exists at the provider (${d.status}): not a ghost`, { resource_id: row.id, status: d.status });
      const before = resourceDto(row);
      const res = await this.mutate(ctx, { external_id: String(id) }, (r: CloudResource, now: Date) => {
        if (r.status === "destroyed") return false;
        r.status = "destroyed";
        r.destroyed_at = now;
        return "inventory.destroyed";
      });
      if (!res.changed) throw notDrift("ghost", `Resource ${row.id} (droplet ${id}) was marked destroyed meanwhile`, { resource_id: row.id });
      return { resource: res.resource, tenant_id: row.tenant_id, deployment_id: row.deployment_id ?? null, details: { previous: before } };
    },

    async syncMismatch(ctx: ActionCtx<DriftActionParams>, id: number): Promise<DriftOutcome> {
      const row: CloudResource | null = await emOf(ctx).fork().findOne(CloudResource, { provider: "digitalocean", external_id: String(id) });
      if (!row || row.status === "destroyed")
        throw notDrift("mismatch", `Droplet ${id} has no live inventory row: not a mismatch${row ? "" : " (if it runs at the provider it is an orphan: adopt or destroy it)"}`, { external_id: String(id) });
      const d: Droplet | null = await this.dropletOrNull(id);
      if (!d) throw notDrift("mismatch", `Droplet ${id} is gone at the provider: a ghost, not a mismatch (mark_destroyed)`, { resource_id: row.id });
      const differences = dropletDifferences(d, row);
      if (!differences.length) throw notDrift("mismatch", `Inventory already matches the provider for droplet ${id}`, { resource_id: row.id });
      const snap = dropletDto(d);
      const before = resourceDto(row);
      const res = await this.mutate(ctx, { external_id: String(id) }, (r: CloudResource) => {
        if (r.status === "destroyed") throw notDrift("mismatch", `Resource ${r.id} (droplet ${id}) was marked destroyed meanwhile`, { resource_id: r.id });
        if (!dropletDifferences(d, r).length) return false;
        // A resize is re-priced at the provider's price; an unchanged size keeps the row's price.
        if (snap.size_slug && snap.size_slug !== r.size_slug && d.size?.price_monthly != null) r.monthly_cost_cents = monthlyCostCents(d.size);
        r.ipv4 = snap.ipv4;
        r.status = d.status as ResourceStatus;
        if (snap.size_slug) r.size_slug = snap.size_slug;
        return "inventory.updated";
      });
      return { resource: res.resource, tenant_id: row.tenant_id, deployment_id: row.deployment_id ?? null, details: { differences, previous: before } };
    },

    /** Deletes an A record under the dns service's zone that no dns_records row points (pointed or pointing). */
    async destroyOrphanRecord(call: CallFn, id: number): Promise<DriftOutcome> {
      const { domain, items } = (await call("v1.dns.listAll", {}, { timeout: this.settings.driftCallTimeoutMs })) as { domain: string; items: DnsRow[] };
      let rec: DomainRecord;
      try {
        rec = await this.doClient.getDomainRecord(domain, id);
      } catch (err) {
        if (err instanceof DigitalOceanError && err.status === 404) throw notDrift("orphan", `Record ${id} does not exist under ${domain} at the provider`, { external_id: String(id), domain });
        throw providerError(err);
      }
      if (rec.type !== "A") throw notDrift("orphan", `Record ${id} is a ${rec.type} record: only A records under ${domain} are tracked`, { external_id: String(id), type: rec.type });
      const fqdn = recordFqdn(rec, domain);
      const owner = items.find((r) => r.fqdn === fqdn && (r.status === "pointed" || r.status === "pointing"));
      if (owner)
        throw notDrift("orphan", `${fqdn} is pointed for deployment ${owner.deployment_id} (dns record ${owner.id}, ${owner.status}): not an orphan`, { fqdn, deployment_id: owner.deployment_id });
      const deleted: boolean = await provider(() => this.doClient.deleteDomainRecord(domain, id));
      if (!deleted) throw notDrift("orphan", `Record ${id} is already gone at the provider`, { external_id: String(id), domain });
      return { resource: null, tenant_id: null, deployment_id: null, details: { record: recordDto(rec, domain), domain } };
    },

    async recordDriftAction(ctx: ActionCtx<unknown>, fields: Omit<DriftAction, "id" | "created_at">): Promise<DriftActionDto> {
      const em = emOf(ctx).fork();
      const row = em.create(DriftAction, { id: randomUUID(), ...fields, created_at: new Date() } as any);
      await em.flush();
      return driftActionDto(row);
    },
  },
};
