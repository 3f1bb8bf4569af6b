import type { ServiceBroker } from "moleculer";
import { API_ALIASES, PUBLIC_ALIASES } from "../services/api.service";
import { apiUrl, http, startNode } from "./helpers";

let broker: ServiceBroker;
let base: string;
beforeAll(async () => {
  // Every service, so the document reads each route's access from its action's declaration.
  broker = await startNode(["api", "deployments", "subscriptions", "inventory", "dns", "provisioning", "billing"]);
  base = apiUrl(broker);
});
afterAll(() => broker.stop());

const toOpenApi = (alias: string) => {
  const [method, path] = alias.split(" ");
  return { method: method.toLowerCase(), path: `/api/v1${path.replace(/:(\w+)/g, "{$1}")}` };
};

test("GET /api/v1/openapi.json is an OpenAPI 3.1 document served without a token", async () => {
  const res = await http(base, "GET", "/openapi.json");
  expect(res.status).toBe(200);
  expect(res.body.openapi).toBe("3.1.0");
  expect(res.body.components.securitySchemes.bearer).toMatchObject({ type: "http", scheme: "bearer" });
});

test("every gateway alias is documented, and every documented operation is a real alias", async () => {
  const doc = (await http(base, "GET", "/openapi.json")).body;
  const aliases = { ...PUBLIC_ALIASES, ...API_ALIASES };
  for (const [alias, action] of Object.entries(aliases)) {
    const { method, path } = toOpenApi(alias);
    expect({ alias, op: doc.paths[path]?.[method]?.operationId }).toEqual({ alias, op: action });
  }
  const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>).flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`));
  const real = Object.keys(aliases).map((a) => {
    const { method, path } = toOpenApi(a);
    return `${method.toUpperCase()} ${path}`;
  });
  expect(documented.sort()).toEqual(real.sort());
});

test("path parameters, bodies and operator-only responses are described", async () => {
  const doc = (await http(base, "GET", "/openapi.json")).body;
  const transition = doc.paths["/api/v1/deployments/{id}/transition"].post;
  expect(transition.parameters).toEqual([expect.objectContaining({ name: "id", in: "path", required: true }), expect.objectContaining({ name: "Idempotency-Key", in: "header" })]);
  expect(transition.requestBody.content["application/json"].schema.required).toEqual(["to_state"]);
  expect(doc.paths["/api/v1/sagas/{id}/retry"].post.responses["403"]).toBeDefined();
  expect(doc.paths["/api/v1/health"].get.security).toEqual([]);
});

test("who may call a route comes from the action's own access declaration", async () => {
  const doc = (await http(base, "GET", "/openapi.json")).body;
  const declared = new Map(broker.registry.getActionList({ withEndpoints: false } as any).map((a: any) => [a.name, a.action?.access]));
  for (const [alias, action] of Object.entries({ ...PUBLIC_ALIASES, ...API_ALIASES })) {
    const { method, path } = toOpenApi(alias);
    expect({ alias, access: doc.paths[path][method]["x-access"] }).toEqual({ alias, access: declared.get(action) });
  }
  expect(doc.paths["/api/v1/dashboard/margin"].get["x-access"]).toBe("operator");
  expect(doc.paths["/api/v1/deployments/{id}"].get["x-access"]).toBe("scoped");
});

test("the served document is a valid OpenAPI 3.1 document (checked against the specification's JSON schema)", async () => {
  const { Validator } = await import("@seriousme/openapi-schema-validator");
  const doc = (await http(base, "GET", "/openapi.json")).body;
  const res = await new Validator().validate(doc);
  expect({ valid: res.valid, errors: res.errors }).toEqual({ valid: true, errors: undefined });
  // The validator does refuse a broken one.
  expect((await new Validator().validate({ ...doc, paths: { "/x": { get: { responses: { "200": { content: 7 } } } } } })).valid).toBe(false);
});
