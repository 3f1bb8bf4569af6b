import { createHash } from "node:crypto";
import { PermanentStepError, StepResponse, isTransient, step, undo, type SagaKind } from "../engine";
import { deploymentTag, sagaTag, setRuntime, settleTag, type Ctx, type KindEnv } from "./common";

/*
 * provision (SPEC §7): a failure anywhere rolls everything back in reverse. Each step: its forward call, then its
 * undo (the owner that handles `provisioning.compensate.<owner>` and the op), and the undo's input.
 *
 *   step                          forward                              undo (owner: op ← input)
 *   mark_deployment_provisioning  v1.deployments.markProvisioning      deployments: cancel ← deployment, requester
 *   create_droplet                v1.inventory.createDroplet           inventory: destroyDroplets ← tag (+ droplet id)
 *   wait_droplet_active           v1.inventory.getDroplet              — (the droplet goes with create_droplet)
 *   register_inventory            v1.inventory.register                inventory: markDestroyed ← droplet id (+ resource id)
 *   link_deployment_resource      v1.inventory.link                    inventory: unlink ← resource id
 *   point_deployment_dns          v1.dns.point                         dns: revert ← deployment
 *   activate_deployment           v1.deployments.activateProvisioned   —
 *
 * Input: {slug, region, size?, image?, user_data?, template_code?, template_version?, requested_by?, target_state?}.
 */
export interface ProvisionInput {
  slug: string;
  region: string;
  size: string;
  image: string;
  user_data?: string | null;
  template_code?: string | null;
  template_version?: string | number | null;
  requested_by?: string;
  target_state?: "active" | "trial";
}

type P = Ctx & { input: ProvisionInput };

export const provision: SagaKind<KindEnv> = {
  kind: "provision",
  onFailure: "compensate",
  prepare: (input, env) => ({ ...input, size: input.size || env.defaultSize, image: input.image || env.defaultImage, user_data: input.user_data ?? null, target_state: input.target_state ?? "active" }),
  steps: [
    step("mark_deployment_provisioning", "v1.deployments.markProvisioning",
      async ({ call, saga }) => void (await call("v1.deployments.markProvisioning", { id: saga.deployment_id })),
      // The failure state is owned here: even a failed check rolls the deployment to cancelled (if still provisioning).
      undo("deployments", "cancel", ({ input }) => ({ requested_by: input.requested_by ?? null }))),

    step("create_droplet", "v1.inventory.createDroplet", createDroplet,
      undo("inventory", "destroyDroplets", ({ saga }) => ({ tag: sagaTag(saga.id) }))),

    step("wait_droplet_active", "v1.inventory.getDroplet", waitDropletActive),

    step("register_inventory", "v1.inventory.register",
      async ({ call, saga, input, outputs }) => {
        const d = outputs.create_droplet, a = outputs.wait_droplet_active;
        const { resource } = await call("v1.inventory.register", { external_id: String(d.droplet_id), name: d.name, region: input.region, size_slug: input.size,
          ipv4: a.ipv4, status: "active", tags: [d.tag, deploymentTag(saga.deployment_id)], tenant_id: saga.tenant_id, saga_id: saga.id });
        return new StepResponse({ resource_id: resource.id, monthly_cost_cents: resource.monthly_cost_cents }, { resource_id: resource.id, droplet_id: d.droplet_id });
      },
      undo("inventory", "markDestroyed", ({ outputs }) => ({ droplet_id: outputs.create_droplet.droplet_id }))),

    step("link_deployment_resource", "v1.inventory.link",
      async ({ call, saga, outputs }) => {
        const resourceId = outputs.register_inventory.resource_id;
        await call("v1.inventory.link", { id: resourceId, deployment_id: saga.deployment_id });
        return new StepResponse({}, { resource_id: resourceId });
      },
      undo("inventory", "unlink", ({ outputs }) => ({ resource_id: outputs.register_inventory.resource_id }))),

    step("point_deployment_dns", "v1.dns.point",
      async (ctx) => {
        const { call, saga, input, outputs } = ctx as P;
        const { dns_record } = await call("v1.dns.point", { deployment_id: saga.deployment_id, tenant_id: saga.tenant_id, slug: input.slug, ipv4: outputs.wait_droplet_active.ipv4 });
        await setRuntime(ctx, "running", { droplet_id: outputs.create_droplet.droplet_id, ipv4: outputs.wait_droplet_active.ipv4, hostname: dns_record.fqdn });
        return new StepResponse({ fqdn: dns_record.fqdn, record_id: dns_record.provider_record_id, ipv4: dns_record.data }, {});
      },
      undo("dns", "revert", () => ({}))),

    step("activate_deployment", "v1.deployments.activateProvisioned",
      // Sagas started before target_state existed end active, as they asked.
      async ({ call, saga, input }) =>
        void (await call("v1.deployments.activateProvisioned", { id: saga.deployment_id, actor: input.requested_by, to_state: input.target_state ?? "active" }))),
  ],
  // A rolled-back deployment has no droplet left.
  async onEnd(ctx, status) {
    if (status === "compensated") await setRuntime(ctx, "none", { droplet_id: null, ipv4: null, hostname: null });
  },
};

/** What the droplet was built from (SPEC §3, docs/catalog.md), in the create_droplet step's output; user_data by its digest. */
function built(input: ProvisionInput) {
  return {
    region: input.region, size: input.size, image: input.image, template_code: input.template_code ?? null,
    template_version: input.template_version == null ? null : String(input.template_version),
    user_data_sha256: input.user_data ? createHash("sha256").update(input.user_data).digest("hex") : null,
  };
}

/** Provider has no idempotency key: the intent (tag) is recorded first, and the tag is asked before any create. */
async function createDroplet(ctx: Ctx) {
  const { call, saga, input, recordIntent } = ctx as P;
  const tag = sagaTag(saga.id);
  const name = `${input.slug}-${saga.id.slice(0, 8)}`;
  await recordIntent({ tag, name });
  await setRuntime(ctx, "starting");
  const adopt = async () => {
    const kept = await settleTag(call, tag);
    return kept === null ? null : new StepResponse({ tag, name, droplet_id: kept, adopted: true, ...built(input) }, { tag, droplet_id: kept });
  };
  const found = await adopt();
  if (found) return found;
  try {
    const { droplet } = await call("v1.inventory.createDroplet", {
      name, region: input.region, size: input.size, image: input.image, tags: [tag, deploymentTag(saga.deployment_id)], ...(input.user_data ? { user_data: input.user_data } : {}),
    });
    return new StepResponse({ tag, name, droplet_id: droplet.id, ...built(input) }, { tag, droplet_id: droplet.id });
  } catch (err) {
    // In doubt (e.g. the response was lost): the provider decides whether the droplet exists.
    if (isTransient(err)) {
      const settled = await adopt();
      if (settled) return settled;
    }
    throw err;
  }
}

async function waitDropletActive({ call, outputs, step, env, heartbeat, sleep }: Ctx) {
  const id = outputs.create_droplet.droplet_id;
  const since = (step.started_at ?? new Date()).getTime();
  for (;;) {
    try {
      const { droplet } = await call("v1.inventory.getDroplet", { id });
      if (droplet.status === "active" && droplet.ipv4) {
        await settleTag(call, outputs.create_droplet.tag, id);
        return { status: droplet.status, ipv4: droplet.ipv4 };
      }
    } catch (err) {
      if (!isTransient(err)) throw err;
    }
    if (Date.now() - since > env.activeTimeoutMs) throw new PermanentStepError(`droplet ${id} not active after ${env.activeTimeoutMs} ms`);
    await heartbeat();
    await sleep(env.pollMs);
  }
}
