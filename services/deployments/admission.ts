import type { EntityManager } from "@mikro-orm/postgresql";
import { conflict } from "../../lib/errors";

/** SPEC §9: deployments not archived per tenant, whoever creates them. */
export const tenantMaxDeployments = () => Number(process.env.TENANT_MAX_DEPLOYMENTS ?? 50);

export const slugTaken = (slug: string, id: string | null) => conflict(`Slug '${slug}' is already used by this tenant`, "SLUG_TAKEN", { slug, id });

/**
 * Admission of a new deployment, inside the create transaction (before the insert): a transaction-scoped advisory
 * lock on the tenant serialises its creates, so the count cannot be raced past the quota by concurrent creates
 * (on any node); then a taken slug is `409 SLUG_TAKEN` with the existing deployment's `id` (a retried create finds
 * what the first one made), and a full tenant `409 QUOTA_EXCEEDED`.
 */
export async function admitCreate(em: EntityManager, tenantId: string, slug: string, max = tenantMaxDeployments()): Promise<void> {
  await em.execute("select pg_advisory_xact_lock(hashtextextended('deployments-quota:' || ?, 0))", [tenantId]);
  const [row] = await em.execute(
    "select (select id from deployments where tenant_id = ? and slug = ?) as existing, (select count(*)::int from deployments where tenant_id = ? and state <> 'archived') as live",
    [tenantId, slug, tenantId],
  );
  if (row.existing) throw slugTaken(slug, row.existing);
  if (row.live >= max) throw conflict(`Tenant ${tenantId} already has ${row.live} deployments (at most ${max} not archived)`, "QUOTA_EXCEEDED", { tenant_id: tenantId, limit: max, count: row.live });
}

/** The id behind a slug whose insert lost a race the lock did not cover (a unique violation): for SLUG_TAKEN. */
export async function existingSlugId(em: EntityManager, tenantId: string, slug: string): Promise<string | null> {
  const [row] = await em.fork().execute("select id from deployments where tenant_id = ? and slug = ?", [tenantId, slug]);
  return row?.id ?? null;
}
