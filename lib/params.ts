/**
 * Parameter schemas (fastest-validator) and patterns that several services declare, in one place so one rule
 * means the same thing on every action.
 */

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
export const UUID_PARAM = { type: "string", pattern: UUID.source, messages: { stringPattern: "'{field}' must be a UUID" } };

/** A deployment slug: a lowercase DNS label (SPEC §2). */
export const SLUG = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$";

/** A list route's paging (SPEC §8: every list takes `limit` ≤ 200 and `cursor`); see lib/pagination. */
export const PAGE_PARAMS = {
  limit: { type: "number", integer: true, min: 1, max: 200, convert: true, optional: true },
  cursor: { type: "string", max: 200, optional: true },
};

/**
 * Where a reader of an outbox feed is (the webhooks catch-up): rows written at or after `since`, after `after_id`
 * in id order, at most `limit` of them.
 */
export const feedParams = (maxLimit: number) => ({
  since: { type: "date", convert: true },
  after_id: { type: "number", integer: true, min: 0, convert: true, optional: true },
  limit: { type: "number", integer: true, min: 1, max: maxLimit, convert: true, optional: true },
});
