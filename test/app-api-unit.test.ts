import { bodyHash, canonicalJson, idempotencyScope, isSaved } from "../services/api/idempotency";
import { paramsToSchema, ruleToSchema } from "../services/api/openapi-params";
import { errorStatuses } from "../services/api/openapi";
import { unknownParamErrors } from "../lib/validator";
import { makeUser } from "../lib/access";

describe("idempotency (pure parts)", () => {
  test("one body whatever the key order; another value is another body", () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { y: 2, x: 1 }], c: null } })).toBe('{"a":{"c":null,"d":[1,{"x":1,"y":2}]},"b":1}');
    expect(bodyHash({ a: 1, b: 2 })).toBe(bodyHash({ b: 2, a: 1 }));
    expect(bodyHash({ a: 1 })).not.toBe(bodyHash({ a: "1" }));
    expect(bodyHash(undefined)).toBe(bodyHash({}));
  });
  test("a tenant token's keys are its tenant's; an operator's are the operator's", () => {
    expect(idempotencyScope(makeUser({ sub: "u1", tenant_id: "acme", roles: ["admin"] }))).toBe("tenant:acme");
    expect(idempotencyScope(makeUser({ sub: "op", tenant_id: "acme", roles: ["platform-admin"] }))).toBe("operator:op");
  });
  test("5xx and input refused before running are not saved; other answers are", () => {
    expect(isSaved(201, null)).toBe(true);
    expect(isSaved(409, "SLUG_TAKEN")).toBe(true);
    expect(isSaved(422, "INVALID_TRANSITION")).toBe(true);
    expect(isSaved(422, "VALIDATION_ERROR")).toBe(false);
    expect(isSaved(503, "SERVICE_UNAVAILABLE")).toBe(false);
    expect(isSaved(500, null)).toBe(false);
  });
});

describe("strict parameters", () => {
  test("fastest-validator's forbidden-keys error becomes one error per unknown key, naming it", () => {
    const out = unknownParamErrors([{ type: "objectStrict", field: undefined, actual: "slug, region" }, { type: "required", field: "x", message: "m" }]);
    expect(out.map((e) => [e.type, e.field])).toEqual([["unknownParameter", "slug"], ["unknownParameter", "region"], ["required", "x"]]);
  });
});

describe("OpenAPI from fastest-validator params", () => {
  test("rules become JSON Schema: types, bounds, patterns, enums, nullable, shorthand, nested objects", () => {
    expect(ruleToSchema({ type: "string", min: 1, max: 5, pattern: "^a" })).toEqual({ type: "string", minLength: 1, maxLength: 5, pattern: "^a" });
    expect(ruleToSchema({ type: "number", integer: true, min: 1, max: 200, convert: true })).toEqual({ type: "integer", minimum: 1, maximum: 200 });
    expect(ruleToSchema({ type: "enum", values: ["a", "b"], nullable: true })).toEqual({ enum: ["a", "b", null] });
    expect(ruleToSchema({ type: "string", nullable: true })).toEqual({ type: ["string", "null"] });
    expect(ruleToSchema("uuid")).toEqual({ type: "string", format: "uuid" });
    expect(ruleToSchema("string|optional")).toEqual({ type: "string" });
    expect(ruleToSchema({ type: "array", items: { type: "object", props: { code: "string", qty: { type: "number", optional: true } } } })).toEqual({
      type: "array",
      items: { type: "object", properties: { code: { type: "string" }, qty: { type: "number" } }, required: ["code"], additionalProperties: true },
    });
  });
  test("params become a strict object schema without the path parameters; optional ones are not required", () => {
    expect(paramsToSchema({ id: "string", to_state: { type: "enum", values: ["x"] }, notes: { type: "string", optional: true } }, true, ["id"])).toEqual({
      type: "object", properties: { to_state: { enum: ["x"] }, notes: { type: "string" } }, required: ["to_state"], additionalProperties: false,
    });
  });
  test("error statuses follow the route's kind", () => {
    expect(errorStatuses("GET", "/health", { summary: "", responses: {} }, "public")).toEqual([400, 422, 503]);
    expect(errorStatuses("GET", "/deployments/:id", { summary: "", responses: {} }, "scoped")).toEqual([400, 401, 404, 422, 503]);
    expect(errorStatuses("POST", "/sagas/:id/retry", { summary: "", responses: {} }, "operator")).toEqual([400, 401, 403, 404, 409, 413, 415, 422, 429, 503]);
  });
});
