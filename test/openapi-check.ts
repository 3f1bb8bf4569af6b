import Ajv2020 from "ajv/dist/2020";
import addFormats from "ajv-formats";
import type { ValidateFunction } from "ajv";

/*
 * The response check behind test/helpers.ts http(): every HTTP response a test receives from the gateway is
 * validated with ajv (JSON Schema 2020-12, as OpenAPI 3.1 uses) against the document the gateway serves at
 * GET /api/v1/openapi.json. A route or status the document does not list, or a body its schema refuses, throws —
 * failing the test — with the route, the status and the schema path, so a new route cannot go undocumented.
 * A path the document does not know must be answered 404 in the error shape (unknown routes).
 */

interface Loaded {
  ajv: Ajv2020;
  doc: any;
  routes: { method: string; template: string; re: RegExp; params: number }[];
  compiled: Map<string, ValidateFunction>;
}
let loaded: Promise<Loaded> | null = null;

const escapePointer = (s: string) => s.replace(/~/g, "~0").replace(/\//g, "~1");

async function load(base: string): Promise<Loaded> {
  const res = await fetch(`${base}/openapi.json`);
  if (res.status !== 200) throw new Error(`GET ${base}/openapi.json answered ${res.status}`);
  const doc: any = await res.json();
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, "openapi.json");
  const routes = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([template, ops]) =>
    Object.keys(ops).map((method) => ({
      method: method.toUpperCase(),
      template,
      re: new RegExp(`^${template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{\w+\}/g, "[^/]+")}$`),
      params: (template.match(/\{/g) ?? []).length,
    })),
  );
  return { ajv, doc, routes, compiled: new Map() };
}

function validator(l: Loaded, pointer: string): ValidateFunction {
  let v = l.compiled.get(pointer);
  if (!v) l.compiled.set(pointer, (v = l.ajv.compile({ $ref: `openapi.json#${pointer}` })));
  return v;
}

export async function checkResponse(base: string, method: string, path: string, status: number, contentType: string | null, body: unknown): Promise<void> {
  if (!/\/api\/v1$/.test(base)) return; // not the gateway (the simulator, a webhook receiver)
  if (!loaded) loaded = load(base).catch((err) => ((loaded = null), Promise.reject(err)));
  const l = await loaded;
  const pathname = "/api/v1" + path.split("?")[0];
  const m = method.toUpperCase();
  const route = l.routes.filter((r) => r.method === m && r.re.test(pathname)).sort((a, b) => a.params - b.params)[0];
  const where = `${m} ${route?.template ?? pathname}`;
  let pointer: string;
  if (!route) {
    if (status !== 404) throw new Error(`OpenAPI: ${m} ${pathname} answered ${status}, but the document has no such operation (add it to services/api/openapi.ts ROUTE_DOCS)`);
    pointer = "/components/schemas/Error";
  } else {
    const op = l.doc.paths[route.template][m.toLowerCase()];
    const resp = op.responses[String(status)];
    if (!resp) throw new Error(`OpenAPI: ${where} answered ${status}, which the document does not list (it lists ${Object.keys(op.responses).join(", ")}); body: ${JSON.stringify(body).slice(0, 300)}`);
    const media = Object.keys(resp.content ?? {});
    if (!media.includes("application/json")) {
      if (!media.some((t) => contentType?.startsWith(t))) throw new Error(`OpenAPI: ${where} ${status} answered content-type ${contentType}, the document lists ${media.join(", ") || "no content"}`);
      return;
    }
    pointer = `/paths/${escapePointer(route.template)}/${m.toLowerCase()}/responses/${status}/content/application~1json/schema`;
  }
  // OPENAPI_SEEN=<file>: which operation and status each response exercised (to see what the suite covers).
  if (process.env.OPENAPI_SEEN) require("node:fs").appendFileSync(process.env.OPENAPI_SEEN, `${where} ${status}\n`);
  const validate = validator(l, pointer);
  if (!validate(body)) {
    const errs = (validate.errors ?? []).slice(0, 8).map((e) => `${e.instancePath || "(body)"} ${e.message}${e.params && Object.keys(e.params).length ? ` ${JSON.stringify(e.params)}` : ""} [schema ${e.schemaPath}]`);
    throw new Error(`OpenAPI: ${where} → ${status} does not match #${pointer}:\n  ${errs.join("\n  ")}\n  body: ${JSON.stringify(body).slice(0, 600)}`);
  }
}
