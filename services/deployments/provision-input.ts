import { Errors } from "moleculer";
import { callAsSystem, currentUser, type ActionCtx } from "../../lib/access";
import { invalid } from "../../lib/errors";
import type { DropletSpec, DropletSpecParams, ValidateCreateParams, ValidateCreateResult } from "../subscriptions/catalog";

/*
 * What a deployment's droplet is built from, seen from the deployments service (SPEC §3, docs/catalog.md):
 * the checks a create makes before it writes anything, and the provisioning request's input.
 */

/** The provision saga's input (`services/provisioning/kinds/provision.ts` reads it); the engine falls back to its defaults for absent size/image. */
export interface ProvisionInput {
  slug: string;
  region: string;
  size: string;
  image: string;
  user_data: string | null;
  template_code: string;
  template_version: string;
  requested_by: string;
  target_state: "active" | "trial";
}

interface Region {
  slug: string;
  name: string;
  available: boolean;
  sizes: string[];
}

// The deployments service has checked who the caller is; the catalog, DNS and provider facts it needs are
// internal actions, asked as the system user.
const ask = <T>(ctx: ActionCtx<unknown>, action: string, params: object = {}) => callAsSystem<T>(ctx, "deployments", action, params);

/**
 * The region must be one the provider lists, `available`, and offering the size the droplet will have; else
 * 422 VALIDATION_ERROR naming `region`. `required: false` (a create that does not provision) lets a cluster
 * without an inventory service at all skip the check; a provider that does not answer is 503 either way.
 */
export async function checkRegion(ctx: ActionCtx<unknown>, region: string, size: string, required = true): Promise<void> {
  let regions: Region[];
  try {
    ({ regions } = await ask<{ regions: Region[] }>(ctx, "v1.inventory.regions"));
  } catch (err) {
    if (!required && err instanceof Errors.ServiceNotFoundError) return;
    throw err;
  }
  const r = regions.find((x) => x.slug === region);
  if (!r) throw invalid(`Unknown region '${region}'; the provider offers ${regions.filter((x) => x.available).map((x) => x.slug).join(", ")}`, [{ field: "region", type: "unknown", actual: region }]);
  if (!r.available) throw invalid(`Region '${region}' is not available for new droplets`, [{ field: "region", type: "unavailable", actual: region }]);
  if (!r.sizes.includes(size)) throw invalid(`Region '${region}' does not offer size '${size}'`, [{ field: "region", type: "size_not_offered", actual: region, size }]);
}

export interface CreateCheck {
  region: string;
  template_code: string;
  template_version?: string | number | null;
  plan_code?: string;
  addons?: { code: string; qty: number }[];
  tenant_id: string;
  provision?: boolean;
}

/**
 * deployments.create's checks, before its transaction: template (and version), plan and addons, then the region
 * against the size the droplet would get. A create that fails here writes nothing and starts nothing.
 */
export async function checkCreate(ctx: ActionCtx<unknown>, p: CreateCheck): Promise<ValidateCreateResult> {
  const params: ValidateCreateParams = { template_code: p.template_code, template_version: p.template_version ?? null, plan_code: p.plan_code, addons: p.addons };
  if (p.provision) params.tenant_id = p.tenant_id;
  const checked = await ask<ValidateCreateResult>(ctx, "v1.subscriptions.validateCreate", params);
  await checkRegion(ctx, p.region, checked.size, !!p.provision);
  return checked;
}

interface DeploymentLike {
  id: string;
  tenant_id: string;
  slug: string;
  region: string;
  llm_mode: string;
  template_code: string;
  template_version: string | null;
}

/**
 * The provisioning request's input: size, image and filled-in user_data from v1.subscriptions.dropletSpec (the
 * template version resolved now when the deployment names none, so the saga records which one it used), the
 * region checked against that size. Every start of a provision saga builds its input here. `planCode`: a create
 * that subscribes in the same request builds the input before its subscription exists; the plan's newest version
 * (the one the subscribe will bind) gives the size. `creating`: the create's own call, for a deployment not committed
 * yet, so dropletSpec skips the subscription look-up.
 */
export async function provisionInput(ctx: ActionCtx<unknown>, d: DeploymentLike, targetState: "active" | "trial" = "active", planCode?: string, creating = false): Promise<ProvisionInput> {
  const user = currentUser(ctx);
  const { fqdn } = await ask<{ fqdn: string }>(ctx, "v1.dns.nameFor", { slug: d.slug, tenant_id: d.tenant_id });
  const params: DropletSpecParams = {
    deployment_id: d.id, slug: d.slug, tenant_id: d.tenant_id, llm_mode: d.llm_mode, hostname: fqdn, template_code: d.template_code, template_version: d.template_version,
    ...(planCode ? { plan_code: planCode } : {}), ...(creating ? { creating: true } : {}),
  };
  const spec = await ask<DropletSpec>(ctx, "v1.subscriptions.dropletSpec", params);
  await checkRegion(ctx, d.region, spec.size);
  return {
    slug: d.slug, region: d.region, size: spec.size, image: spec.image, user_data: spec.user_data,
    template_code: spec.template_code, template_version: spec.template_version, requested_by: user.sub, target_state: targetState,
  };
}
