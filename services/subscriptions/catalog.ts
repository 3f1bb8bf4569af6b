import { randomUUID } from "node:crypto";
import { LockMode } from "@mikro-orm/core";
import type { ServiceSchema } from "moleculer";
import type { EntityManager } from "@mikro-orm/postgresql";
import { Addon, PlanVersion, Template, TemplateVersion } from "../../entities/catalog";
import { Subscription } from "../../entities/subscription";
import { emOf } from "../../lib/db";
import { callAsSystem, currentUser, visibleTo, type ActionCtx } from "../../lib/access";
import { conflict, invalid, mapDbError, notFound } from "../../lib/errors";
import { iso } from "../../lib/dto";
import { LLM_MODES } from "../../entities/deployment";
import { PLACEHOLDERS, USER_DATA_MAX_BYTES, byteLength, fillPlaceholders, isSafeValue, unknownPlaceholders, type Placeholder } from "./user-data";

/*
 * The template half of the catalog (SPEC §3) and what a droplet is built from: `dropletSpec` (the provisioning
 * request's size, image and user_data) and `validateCreate` (what deployments.create checks before it writes).
 * A mixin of the subscriptions service, which owns the catalog (SPEC §1). Decisions: docs/catalog.md.
 */

export const CODE = { type: "string", pattern: "^[a-z0-9][a-z0-9_-]{0,62}$", messages: { stringPattern: "'{field}' must be a lowercase code (a-z, 0-9, '_', '-')" } };
/** A DigitalOcean image slug (`ubuntu-24-04-x64`) or the numeric id of a custom image or snapshot. */
const IMAGE = { type: "string", pattern: "^[a-z0-9][a-z0-9._-]{0,99}$", messages: { stringPattern: "'image' must be a DigitalOcean image slug such as ubuntu-24-04-x64, or an image id" } };
const USER_DATA = { type: "string", max: USER_DATA_MAX_BYTES, optional: true, nullable: true };
/** Template versions are numbered 1, 2, … like plan versions; a deployment names one as the string "2" (or 2). */
export const TEMPLATE_VERSION = {
  type: "multi",
  optional: true,
  nullable: true,
  rules: [
    { type: "string", pattern: "^[1-9][0-9]{0,8}$", messages: { stringPattern: "'template_version' must be a template version number such as 2" } },
    { type: "number", integer: true, min: 1, max: 999_999_999 },
  ],
};
const ADDONS = { type: "array", optional: true, max: 50, items: { type: "object", strict: true, props: { code: { type: "string", min: 1, max: 64 }, qty: { type: "number", integer: true, min: 1, max: 100_000 } } } };

export const DEFAULT_SIZE = () => process.env.DO_DEFAULT_SIZE || "s-1vcpu-1gb";

export interface CreateTemplateParams {
  code: string;
  name?: string;
  image: string;
  user_data?: string | null;
}
export interface CreateTemplateVersionParams {
  code: string;
  image?: string;
  user_data?: string | null;
}
/** v1.subscriptions.dropletSpec: what a deployment's droplet is built from (SPEC §3 "What is provisioned is what was sold"). */
export interface DropletSpecParams {
  deployment_id: string;
  slug: string;
  tenant_id: string;
  llm_mode: string;
  hostname: string;
  template_code: string;
  template_version?: string | number | null;
  /** Without a subscription yet: the plan the deployment is about to subscribe to (a create with plan_code). */
  plan_code?: string;
  /** The deployment is being created (its row is not committed yet): it has no subscription to look up. */
  creating?: boolean;
}
export interface DropletSpec {
  size: string;
  image: string;
  user_data: string | null;
  template_code: string;
  /** The version used, as a string: the one asked for, or the newest when the deployment named none. */
  template_version: string;
}
/** v1.subscriptions.validateCreate: what a deployment create names, checked before anything is written. */
export interface ValidateCreateParams {
  template_code: string;
  template_version?: string | number | null;
  plan_code?: string;
  addons?: { code: string; qty: number }[];
  /** Given when the create provisions: it must be safe to put in the template's user_data. */
  tenant_id?: string;
}
export interface ValidateCreateResult {
  /** The size a droplet would have now: the plan's newest version's, or the default without a plan. */
  size: string;
  template_code: string;
  template_version: string;
}

export const templateVersionDto = (v: TemplateVersion) => ({
  id: v.id, template_code: v.template_code, version: v.version, image: v.image, user_data: v.user_data ?? null, inserted_at: iso(v.inserted_at),
});
function templateDto(t: Template, versions: TemplateVersion[]) {
  const sorted = [...versions].sort((a, b) => a.version - b.version);
  return { code: t.code, name: t.name, latest_version: sorted.length ? templateVersionDto(sorted[sorted.length - 1]) : null, versions: sorted.map(templateVersionDto), inserted_at: iso(t.inserted_at) };
}

/** A template's user_data is refused when it is too large or names a placeholder that does not exist. */
function checkUserData(userData: string | null | undefined) {
  if (userData == null) return;
  if (byteLength(userData) > USER_DATA_MAX_BYTES) throw invalid(`'user_data' is larger than ${USER_DATA_MAX_BYTES} bytes (DigitalOcean's limit)`, [{ field: "user_data", type: "stringMax" }]);
  const unknown = unknownPlaceholders(userData);
  if (unknown.length)
    throw invalid(`'user_data' names unknown placeholder${unknown.length > 1 ? "s" : ""} ${unknown.map((u) => `{{${u}}}`).join(", ")}; known: ${PLACEHOLDERS.map((p) => `{{${p}}}`).join(", ")}`, [{ field: "user_data", actual: unknown }]);
}

/** The template version a deployment names; null/absent = the newest. 422 naming the field that is wrong. */
export async function resolveTemplate(em: EntityManager, code: string, version: string | number | null | undefined): Promise<TemplateVersion> {
  // One statement (a create and its provision input each resolve): the template and its version, or the newest.
  const [row] = await em.execute(
    `select t.code, v.id, v.template_code, v.version, v.image, v.user_data, v.inserted_at from templates t
     left join lateral (select * from template_versions where template_code = t.code ${version == null ? "" : "and version = ?"} order by version desc limit 1) v on true
     where t.code = ?`,
    version == null ? [code] : [Number(version), code],
  );
  if (!row) throw invalid(`Unknown template '${code}'`, [{ field: "template_code", actual: code }]);
  if (row.id == null) throw invalid(`Template '${code}' has no version ${version ?? ""}`.trim(), [{ field: "template_version", actual: version ?? null }]);
  return { id: row.id, template_code: row.template_code, version: Number(row.version), image: row.image, user_data: row.user_data ?? null, inserted_at: new Date(row.inserted_at) } as TemplateVersion;
}

/** A size slug the provider offers (through inventory's cached size list), else 422 naming `droplet_size`. */
export async function checkSize(ctx: ActionCtx<unknown>, slug: string): Promise<void> {
  const { sizes } = await callAsSystem<{ sizes: { slug: string; available?: boolean }[] }>(ctx, "subscriptions", "v1.inventory.sizes");
  const size = sizes.find((s) => s.slug === slug);
  if (!size || size.available === false) throw invalid(`The provider offers no size '${slug}'`, [{ field: "droplet_size", actual: slug }]);
}

export const CatalogMixin: Partial<ServiceSchema> = {
  actions: {
    listTemplates: {
      access: "signed-in",
      async handler(ctx: ActionCtx<unknown>) {
        currentUser(ctx);
        const em = emOf(ctx);
        const [templates, versions] = await Promise.all([em.find(Template, {}, { orderBy: { code: "asc" } }), em.find(TemplateVersion, {}, { orderBy: { version: "asc" } })]);
        return { items: templates.map((t) => templateDto(t, versions.filter((v) => v.template_code === t.code))), next_cursor: null };
      },
    },
    createTemplate: {
      access: "operator",
      params: { code: CODE, name: { type: "string", min: 1, max: 200, optional: true }, image: IMAGE, user_data: USER_DATA },
      async handler(ctx: ActionCtx<CreateTemplateParams>) {
        const p = ctx.params;
        checkUserData(p.user_data);
        const now = new Date();
        const em = emOf(ctx);
        const template = em.create(Template, { code: p.code, name: p.name ?? p.code, inserted_at: now });
        const version = em.create(TemplateVersion, { id: randomUUID(), template_code: p.code, version: 1, image: p.image, user_data: p.user_data ?? null, inserted_at: now });
        try {
          await em.flush();
        } catch (err) {
          mapDbError(err, () => conflict(`Template '${p.code}' already exists`, "TEMPLATE_EXISTS", { code: p.code }));
        }
        ctx.meta.$statusCode = 201;
        return { template: templateDto(template, [version]) };
      },
    },
    /** The next version; what the body leaves out is carried over from the newest one. */
    createTemplateVersion: {
      access: "operator",
      params: { code: { type: "string", min: 1, max: 64 }, image: { ...IMAGE, optional: true }, user_data: USER_DATA },
      async handler(ctx: ActionCtx<CreateTemplateVersionParams>) {
        const p = ctx.params;
        if (p.image === undefined && p.user_data === undefined) throw invalid("Nothing to change: give 'image' and/or 'user_data'");
        checkUserData(p.user_data);
        try {
          const version = await emOf(ctx).transactional(async (em) => {
            // The template row is the lock: two concurrent writes get versions n+1 and n+2.
            const template = await em.findOne(Template, { code: p.code }, { lockMode: LockMode.PESSIMISTIC_WRITE });
            if (!template) throw notFound("Template", p.code);
            const latest = await em.findOne(TemplateVersion, { template_code: p.code }, { orderBy: { version: "desc" } });
            const v = em.create(TemplateVersion, {
              id: randomUUID(), template_code: p.code, version: (latest?.version ?? 0) + 1,
              image: p.image ?? latest!.image, user_data: p.user_data === undefined ? (latest?.user_data ?? null) : p.user_data, inserted_at: new Date(),
            });
            await em.flush();
            return v;
          });
          ctx.meta.$statusCode = 201;
          return { template_version: templateVersionDto(version) };
        } catch (err) {
          mapDbError(err);
        }
      },
    },

    /**
     * What a deployment's droplet is built from (SPEC §3): its plan version's size (DO_DEFAULT_SIZE without a
     * subscription), its template version's image and user_data with the placeholders filled in. A null
     * template_version resolves to the newest now, and the answer names the version used so the saga records it.
     */
    dropletSpec: {
      visibility: "public",
      access: "internal",
      params: {
        deployment_id: "uuid",
        slug: { type: "string", min: 1, max: 63 },
        tenant_id: { type: "string", min: 1, max: 200 },
        llm_mode: { type: "enum", values: LLM_MODES },
        hostname: { type: "string", min: 1, max: 253 },
        template_code: { type: "string", min: 1, max: 100 },
        template_version: TEMPLATE_VERSION,
        plan_code: { type: "string", min: 1, max: 64, optional: true },
        creating: { type: "boolean", optional: true },
      },
      async handler(ctx: ActionCtx<DropletSpecParams>): Promise<DropletSpec> {
        const user = currentUser(ctx);
        const p = ctx.params;
        if (!visibleTo(user, p.tenant_id)) throw notFound("Deployment", p.deployment_id);
        const em = emOf(ctx);
        const [sub, template] = await Promise.all([p.creating ? null : em.findOne(Subscription, { deployment_id: p.deployment_id }), resolveTemplate(em, p.template_code, p.template_version)]);
        const planVersion = sub
          ? await em.findOne(PlanVersion, { id: sub.plan_version_id })
          : p.plan_code ? await em.findOne(PlanVersion, { plan_code: p.plan_code }, { orderBy: { version: "desc" } }) : null;
        let userData: string | null = null;
        if (template.user_data != null) {
          const values: Record<Placeholder, string> = { slug: p.slug, hostname: p.hostname, llm_mode: p.llm_mode, tenant_id: p.tenant_id };
          // Only the placeholders this template uses must be safe to paste into it.
          for (const name of PLACEHOLDERS)
            if (template.user_data.includes(`{{${name}}}`) && !isSafeValue(values[name]))
              throw invalid(`'${name}' ${JSON.stringify(values[name])} cannot be put into template '${template.template_code}' version ${template.version}: it must start with a letter or digit and hold only letters, digits and . _ : @ + -`, [{ field: name }]);
          userData = fillPlaceholders(template.user_data, values);
          if (byteLength(userData) > USER_DATA_MAX_BYTES)
            throw invalid(`Template '${template.template_code}' version ${template.version} is larger than ${USER_DATA_MAX_BYTES} bytes once filled in`, [{ field: "template_code" }]);
        }
        return { size: planVersion?.droplet_size ?? DEFAULT_SIZE(), image: template.image, user_data: userData, template_code: template.template_code, template_version: String(template.version) };
      },
    },

    /** Everything a create names in the catalog, checked at once: template (and version), plan, addons. */
    validateCreate: {
      visibility: "public",
      access: "internal",
      params: {
        template_code: { type: "string", min: 1, max: 100 },
        template_version: TEMPLATE_VERSION,
        plan_code: { type: "string", min: 1, max: 64, optional: true },
        addons: ADDONS,
        tenant_id: { type: "string", min: 1, max: 200, optional: true },
      },
      async handler(ctx: ActionCtx<ValidateCreateParams>): Promise<ValidateCreateResult> {
        currentUser(ctx);
        const p = ctx.params;
        const em = emOf(ctx);
        if (p.addons?.length && !p.plan_code) throw invalid("'addons' needs 'plan_code': addons are attached to a subscription", [{ field: "addons" }]);
        const codes = (p.addons ?? []).map((a) => a.code);
        if (new Set(codes).size !== codes.length) throw invalid("Each addon may appear once in 'addons'", [{ field: "addons" }]);
        const template = await resolveTemplate(em, p.template_code, p.template_version);
        if (p.tenant_id !== undefined && template.user_data?.includes("{{tenant_id}}") && !isSafeValue(p.tenant_id))
          throw invalid(`Tenant '${p.tenant_id}' cannot be put into template '${template.template_code}': a tenant id in user_data must start with a letter or digit and hold only letters, digits and . _ : @ + -`, [{ field: "tenant_id" }]);
        let size = DEFAULT_SIZE();
        if (p.plan_code) {
          const version = await em.findOne(PlanVersion, { plan_code: p.plan_code }, { orderBy: { version: "desc" } });
          if (!version) throw invalid(`Unknown plan '${p.plan_code}'`, [{ field: "plan_code", actual: p.plan_code }]);
          size = version.droplet_size;
          const found = codes.length ? await em.find(Addon, { code: { $in: codes } }) : [];
          const missing = codes.filter((c) => !found.some((a) => a.code === c));
          if (missing.length) throw invalid(`Unknown addon${missing.length > 1 ? "s" : ""} ${missing.map((c) => `'${c}'`).join(", ")}`, [{ field: "addons", actual: missing }]);
        }
        return { size, template_code: template.template_code, template_version: String(template.version) };
      },
    },
  },
};
