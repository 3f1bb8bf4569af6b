import type { ServiceSchema } from "moleculer";
import { Saga, SagaStep, CompensationRequest, type SagaStatus, type StepStatus } from "../entities/saga";
import { DbMixin } from "../lib/db";
import { currentUser, requireOperator, visibleTo, type ActionCtx } from "../lib/access";
import { conflict, notFound } from "../lib/errors";
import { SagaEngine, PermanentStepError, isTransient, sagaDto, type StepDef, type StepContext, type EngineSettings } from "./provisioning/engine";

/*
 * The provisioning saga (SPEC §6). Each step names the action it calls forward and the owning service that
 * undoes it when a later step fails; compensation runs in reverse order. Design notes: ./provisioning/README.md.
 *
 *   step                        forward action                     compensation (event → owner)
 *   mark_deployment_provisioning v1.deployments.markProvisioning   deployments: cancel (→ cancelled)
 *   create_droplet              v1.inventory.createDroplet         inventory: destroyDroplets (by saga tag)
 *   wait_droplet_active         v1.inventory.getDroplet            — (the droplet goes with create_droplet)
 *   register_inventory          v1.inventory.register              inventory: markDestroyed
 *   link_deployment_resource    v1.inventory.link                  inventory: unlink
 *   point_deployment_dns        v1.dns.point                       dns: revert
 *   activate_deployment         v1.deployments.activateProvisioned —
 */
export const STEPS: StepDef[] = [
  { name: "mark_deployment_provisioning", forward: "v1.deployments.markProvisioning", compensation: { owner: "deployments", op: "cancel" },
    run: async ({ call, saga }) => (await call("v1.deployments.markProvisioning", { id: saga.deployment_id }), {}) },
  { name: "create_droplet", forward: "v1.inventory.createDroplet", compensation: { owner: "inventory", op: "destroyDroplets" },
    run: createDroplet },
  { name: "wait_droplet_active", forward: "v1.inventory.getDroplet",
    run: waitDropletActive },
  { name: "register_inventory", forward: "v1.inventory.register", compensation: { owner: "inventory", op: "markDestroyed" },
    run: async ({ call, saga, outputs }) => {
      const d = outputs.create_droplet, a = outputs.wait_droplet_active;
      const { resource } = await call("v1.inventory.register", { external_id: String(d.droplet_id), name: d.name, region: saga.input.region, size_slug: saga.input.size,
        ipv4: a.ipv4, status: "active", tags: [d.tag], tenant_id: saga.tenant_id, saga_id: saga.id });
      return { resource_id: resource.id, monthly_cost_cents: resource.monthly_cost_cents };
    } },
  { name: "link_deployment_resource", forward: "v1.inventory.link", compensation: { owner: "inventory", op: "unlink" },
    run: async ({ call, saga, outputs }) => (await call("v1.inventory.link", { id: outputs.register_inventory.resource_id, deployment_id: saga.deployment_id }), {}) },
  { name: "point_deployment_dns", forward: "v1.dns.point", compensation: { owner: "dns", op: "revert" },
    run: async ({ call, saga, outputs }) => {
      const { dns_record } = await call("v1.dns.point", { deployment_id: saga.deployment_id, tenant_id: saga.tenant_id, slug: saga.input.slug, ipv4: outputs.wait_droplet_active.ipv4 });
      return { fqdn: dns_record.fqdn, record_id: dns_record.provider_record_id, ipv4: dns_record.data };
    } },
  { name: "activate_deployment", forward: "v1.deployments.activateProvisioned",
    run: async ({ call, saga }) => (await call("v1.deployments.activateProvisioned", { id: saga.deployment_id, actor: saga.input.requested_by }), {}) },
];

/** Provider has no idempotency key: the intent (tag) is recorded first, and the tag is asked before any create. */
async function createDroplet({ call, saga, recordIntent }: StepContext) {
  const tag = `saga-${saga.id}`;
  const name = `${saga.input.slug}-${saga.id.slice(0, 8)}`;
  await recordIntent({ tag, name });
  const adopt = async () => {
    const kept = await settleTag(call, tag);
    return kept === null ? null : { tag, name, droplet_id: kept, adopted: true };
  };
  const found = await adopt();
  if (found) return found;
  try {
    const { droplet } = await call("v1.inventory.createDroplet", { name, region: saga.input.region, size: saga.input.size, image: saga.input.image, tags: [tag] });
    return { tag, name, droplet_id: droplet.id };
  } catch (err) {
    // In doubt (e.g. the response was lost): the provider decides whether the droplet exists.
    if (isTransient(err)) {
      const settled = await adopt();
      if (settled) return settled;
    }
    throw err;
  }
}

/**
 * The droplets under a saga's tag, settled to one: `keep` (or, without it, the oldest) stays, any other is a
 * duplicate and goes. Null when the tag has none. A create sent by a node that then died can land after the
 * resumed node looked the tag up, so the wait step settles the tag again once its droplet is active.
 */
async function settleTag(call: StepContext["call"], tag: string, keep?: number): Promise<number | null> {
  const { droplets } = await call("v1.inventory.dropletsByTag", { tag });
  if (!droplets.length) return null;
  const kept = keep ?? Math.min(...droplets.map((d: { id: number }) => d.id));
  for (const d of droplets) if (d.id !== kept) await call("v1.inventory.destroyDroplet", { id: d.id });
  return kept;
}

async function waitDropletActive({ call, outputs, step, settings, heartbeat, sleep }: StepContext) {
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
    if (Date.now() - since > settings.activeTimeoutMs) throw new PermanentStepError(`droplet ${id} not active after ${settings.activeTimeoutMs} ms`);
    await heartbeat();
    await sleep(settings.pollMs);
  }
}

const num = (v: string | undefined, d: number) => (v === undefined || v === "" ? d : Number(v));

/** Read when the service starts, not when the module loads: bin/start.ts adjusts some for the embedded simulator. */
function engineSettings(overrides: Partial<EngineSettings>, env = process.env): EngineSettings {
  return {
    leaseMs: num(env.PROVISION_LEASE_MS, 15_000),
    sweepMs: num(env.PROVISION_SWEEP_MS, 5_000),
    maxConcurrent: num(env.PROVISION_CONCURRENCY, 100),
    stepMaxAttempts: num(env.PROVISION_STEP_MAX_ATTEMPTS, 5),
    backoffMs: num(env.PROVISION_BACKOFF_MS, 500),
    activeTimeoutMs: num(env.PROVISION_ACTIVE_TIMEOUT_MS, 180_000),
    pollMs: num(env.PROVISION_POLL_MS, 1_000),
    compensationMaxAttempts: num(env.COMPENSATION_MAX_ATTEMPTS, 5),
    compensationAckTimeoutMs: num(env.COMPENSATION_ACK_TIMEOUT_MS, 10_000),
    dropletSize: env.DO_DEFAULT_SIZE ?? "s-1vcpu-1gb",
    dropletImage: env.DO_DEFAULT_IMAGE ?? "ubuntu-24-04-x64",
    ...overrides,
  };
}

const ProvisioningService: ServiceSchema<any> = {
  name: "provisioning",
  version: 1,
  mixins: [DbMixin([Saga, SagaStep, CompensationRequest])],
  // Overrides of the environment's values (see engineSettings); tests set them per broker.
  settings: {},

  actions: {
    start: {
      access: "scoped",
      visibility: "public",
      params: { deployment_id: "uuid", tenant_id: "string", slug: "string", region: "string", requested_by: { type: "string", optional: true } },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string; tenant_id: string; slug: string; region: string; requested_by?: string }>) {
        return this.engine.create(ctx.params, ctx.requestID);
      },
    },
    get: {
      access: "scoped",
      params: { id: "string" },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        return { saga: await this.visibleSaga(ctx, ctx.params.id) };
      },
    },
    retry: {
      access: "operator",
      params: { id: "string" },
      async handler(this: any, ctx: ActionCtx<{ id: string }>) {
        const saga = await this.visibleSaga(ctx, ctx.params.id);
        if (!(await this.engine.retry(saga.id))) throw conflict(`Saga ${saga.id} is ${saga.status}; only compensation_failed sagas can be retried`, "SAGA_NOT_RETRYABLE", { status: saga.status });
        ctx.meta.$statusCode = 202;
        return { saga: await this.visibleSaga(ctx, saga.id) };
      },
    },
    /** Operators' overview (REPL `sagas`): newest first, optionally by status. */
    list: {
      access: "operator",
      visibility: "public",
      params: { status: { type: "enum", values: ["running", "succeeded", "compensating", "compensated", "compensation_failed"], optional: true }, limit: { type: "number", integer: true, min: 1, max: 200, convert: true, optional: true } },
      async handler(this: any, ctx: ActionCtx<{ status?: SagaStatus; limit?: number }>) {
        return { items: await this.engine.list(ctx.params.status, ctx.params.limit ?? 50), next_cursor: null };
      },
    },
    forDeployment: {
      access: "scoped",
      visibility: "public",
      params: { deployment_id: "string" },
      async handler(this: any, ctx: ActionCtx<{ deployment_id: string }>) {
        const user = currentUser(ctx);
        const found = await this.engine.newestFor(ctx.params.deployment_id);
        return found && visibleTo(user, found.saga.tenant_id) ? sagaDto(found.saga, found.steps) : null;
      },
    },
    confirmCompensation: {
      access: "internal",
      visibility: "public",
      params: { request_id: "uuid", ok: "boolean", error: { type: "string", optional: true } },
      async handler(this: any, ctx: ActionCtx<{ request_id: string; ok: boolean; error?: string }>) {
        return { accepted: await this.engine.confirm(ctx.params.request_id, ctx.params.ok, ctx.params.error) };
      },
    },
  },

  methods: {
    async visibleSaga(ctx: ActionCtx<unknown>, id: string) {
      const user = currentUser(ctx);
      if (!/^[0-9a-f-]{36}$/i.test(id)) throw notFound("Saga", id);
      const found = await this.engine.get(id);
      if (!found || !visibleTo(user, found.saga.tenant_id)) throw notFound("Saga", id);
      return sagaDto(found.saga, found.steps);
    },
  },

  created() {
    const metricsOn = this.broker.isMetricsEnabled();
    if (metricsOn) {
      this.broker.metrics.register({ type: "counter", name: "arcadia.sagas.finished", labelNames: ["status"], description: "Provisioning sagas by outcome" });
      this.broker.metrics.register({ type: "histogram", name: "arcadia.saga.step.duration", labelNames: ["step", "status"], unit: "second", description: "Saga step durations", buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180] } as any);
    }
    this.metricsSink = {
      sagaFinished: (status: SagaStatus) => metricsOn && this.broker.metrics.increment("arcadia.sagas.finished", { status }),
      stepFinished: (step: string, status: StepStatus, seconds: number) => metricsOn && this.broker.metrics.observe("arcadia.saga.step.duration", seconds, { step, status }),
    };
  },
  async started() {
    this.engine = new SagaEngine(this.broker, () => this.orm, STEPS, engineSettings(this.settings), this.logger, this.metricsSink);
    this.engine.start();
  },
  async stopped() {
    await this.engine?.stop();
  },
};

export default ProvisioningService;
