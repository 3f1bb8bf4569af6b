/**
 * fastest-validator rules → JSON Schema (2020-12, as OpenAPI 3.1 uses), so the document's query parameters and
 * request bodies come from the very `params` declarations the actions validate with and cannot drift from them.
 */
type Schema = Record<string, unknown>;
type Rule = string | Record<string, any> | Rule[];

function shorthand(rule: string): Record<string, any> {
  const [type, ...flags] = rule.split("|");
  const r: Record<string, any> = { type };
  for (const f of flags) {
    const [k, v] = f.split(":");
    r[k] = v === undefined ? true : v === "true" ? true : v === "false" ? false : Number.isNaN(Number(v)) ? v : Number(v);
  }
  return r;
}

export const normalizeRule = (rule: Rule): Record<string, any> => (typeof rule === "string" ? shorthand(rule) : Array.isArray(rule) ? { type: "multi", rules: rule } : rule);

const nullable = (s: Schema, yes: boolean): Schema => {
  if (!yes) return s;
  if (Array.isArray(s.enum)) return { ...s, enum: [...(s.enum as unknown[]), null] };
  if (typeof s.type === "string") return { ...s, type: [s.type, "null"] };
  return { anyOf: [s, { type: "null" }] };
};

export function ruleToSchema(input: Rule): Schema {
  const r = normalizeRule(input);
  let s: Schema;
  switch (r.type) {
    case "string":
      s = { type: "string" };
      if (r.min !== undefined) s.minLength = r.min;
      if (r.max !== undefined) s.maxLength = r.max;
      if (r.length !== undefined) s.minLength = s.maxLength = r.length;
      if (r.pattern !== undefined) s.pattern = r.pattern instanceof RegExp ? r.pattern.source : String(r.pattern);
      if (r.enum) s.enum = r.enum;
      break;
    case "uuid":
      s = { type: "string", format: "uuid" };
      break;
    case "email":
      s = { type: "string", format: "email" };
      break;
    case "url":
      s = { type: "string", format: "uri" };
      break;
    case "date":
      s = { type: "string", format: "date-time" };
      break;
    case "enum":
      s = { enum: [...r.values] };
      break;
    case "equal":
      s = { const: r.value };
      break;
    case "boolean":
      s = { type: "boolean" };
      break;
    case "number":
      s = { type: r.integer ? "integer" : "number" };
      if (r.min !== undefined) s.minimum = r.min;
      if (r.max !== undefined) s.maximum = r.max;
      if (r.positive) s.exclusiveMinimum = 0;
      break;
    case "array":
      s = { type: "array", ...(r.items ? { items: ruleToSchema(r.items) } : {}) };
      if (r.min !== undefined) s.minItems = r.min;
      if (r.max !== undefined) s.maxItems = r.max;
      if (r.length !== undefined) s.minItems = s.maxItems = r.length;
      if (r.enum) s.items = { enum: r.enum };
      break;
    case "object":
      // fastest-validator checks nested objects strictly only when they say so (the root is strict: lib/validator).
      s = r.props || r.properties ? paramsToSchema(r.props ?? r.properties, r.strict === true) : { type: "object" };
      break;
    case "multi":
      s = { anyOf: (r.rules as Rule[]).map(ruleToSchema) };
      break;
    default:
      s = {};
  }
  if (r.default !== undefined && typeof r.default !== "function") s.default = r.default;
  return nullable(s, !!r.nullable);
}

const isOptional = (rule: Rule) => {
  const r = normalizeRule(rule);
  return !!(r.optional || r.default !== undefined);
};

/** An action's params (or a nested object's props) as an object schema; keys starting with `$$` are options. */
export function paramsToSchema(params: Record<string, Rule>, strict = (params as any).$$strict !== false, omit: string[] = []): Schema {
  const properties: Record<string, Schema> = {};
  const required: string[] = [];
  for (const [name, rule] of Object.entries(params)) {
    if (name.startsWith("$") || omit.includes(name)) continue;
    properties[name] = ruleToSchema(rule);
    if (!isOptional(rule)) required.push(name);
  }
  return { type: "object", properties, required, additionalProperties: !strict };
}
