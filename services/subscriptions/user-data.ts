/**
 * Filling a template version's cloud-init (SPEC §3). Pure functions: the catalog calls them when a template
 * version is written (to refuse a typo'd placeholder) and when a droplet's user_data is built.
 *
 * A placeholder is exactly `{{slug}}`, `{{hostname}}`, `{{llm_mode}}` or `{{tenant_id}}` (no spaces). Anything
 * else in braces is left as it is, so a cloud-init jinja template (`## template: jinja`, `{{ v1.region }}`)
 * keeps working; only a bare `{{word}}` that is not one of ours is refused when the template is written,
 * because it would reach the droplet literally.
 */

export const PLACEHOLDERS = ["slug", "hostname", "llm_mode", "tenant_id"] as const;
export type Placeholder = (typeof PLACEHOLDERS)[number];
export type UserDataValues = Record<Placeholder, string>;

/** DigitalOcean's limit on a droplet's user data. */
export const USER_DATA_MAX_BYTES = 64 * 1024;

const BARE = /\{\{([a-z_]+)\}\}/g;
const KNOWN = new Set<string>(PLACEHOLDERS);

/**
 * Characters a filled-in value may hold: what slugs, DNS names, llm modes and arcadia-app's tenant ids are made
 * of, starting with a letter or digit. No whitespace, quotes, braces, '$', '\' or '#': a value cannot end a
 * YAML scalar, start a YAML indicator or comment, expand in a shell line, or spell a placeholder.
 */
const SAFE_VALUE = /^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,252}$/;

export class UnsafeValueError extends Error {
  constructor(readonly placeholder: Placeholder) {
    super(`The value for {{${placeholder}}} must start with a letter or digit and hold only letters, digits and . _ : @ + - (at most 253 characters)`);
  }
}

/** Bare `{{word}}` placeholders that are not ours, in order of first appearance. */
export function unknownPlaceholders(template: string): string[] {
  const seen = new Set<string>();
  for (const m of template.matchAll(BARE)) if (!KNOWN.has(m[1])) seen.add(m[1]);
  return [...seen];
}

export function isSafeValue(value: string): boolean {
  return SAFE_VALUE.test(value);
}

/**
 * One pass over the template: each placeholder is replaced by its value and the result is never scanned again,
 * so a value that reads `{{tenant_id}}` stays that text instead of becoming another tenant's id.
 */
export function fillPlaceholders(template: string, values: UserDataValues): string {
  return template.replace(BARE, (whole, name: string) => (KNOWN.has(name) ? values[name as Placeholder] : whole));
}

/** The user_data a droplet is created with: values checked, placeholders filled. Throws UnsafeValueError. */
export function fillUserData(template: string, values: UserDataValues): string {
  for (const name of PLACEHOLDERS) if (!isSafeValue(values[name])) throw new UnsafeValueError(name);
  return fillPlaceholders(template, values);
}

export const byteLength = (s: string) => Buffer.byteLength(s, "utf8");
