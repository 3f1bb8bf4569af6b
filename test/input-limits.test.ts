import { Errors } from "moleculer";
import { checkUrl, findForbiddenValue, nestingDepthExceeds, parseJsonBody, MAX_DEPTH } from "../services/api/input-limits";
import { isDatabaseUnavailable, toClientError } from "../lib/errors";
import { routedServices } from "../services/api/ready";
import { API_ALIASES } from "../services/api.service";

/** Pure parts of SPEC §8's input limits and of the 503 mapping: fast, no broker. */

const nest = (n: number) => "[".repeat(n) + "]".repeat(n);

describe("nesting depth on the raw text", () => {
  test("exactly the limit passes, one more fails, and 60,000 levels are refused without recursion", () => {
    expect(nestingDepthExceeds(nest(MAX_DEPTH))).toBe(false);
    expect(nestingDepthExceeds(nest(MAX_DEPTH + 1))).toBe(true);
    expect(nestingDepthExceeds("[".repeat(60_000))).toBe(true);
  });
  test("brackets inside strings, and escaped quotes, do not count", () => {
    expect(nestingDepthExceeds(JSON.stringify({ s: "[".repeat(1000) }))).toBe(false);
    expect(nestingDepthExceeds(JSON.stringify({ s: 'a\\"' + "{".repeat(100) }))).toBe(false);
    expect(nestingDepthExceeds(`{"s":"\\\\"${",[".repeat(0)}}`)).toBe(false);
  });
});

describe("parseJsonBody", () => {
  test("an object passes; empty is {}", () => {
    expect(parseJsonBody('{"a":[1,{"b":"c"}]}')).toEqual({ a: [1, { b: "c" }] });
    expect(parseJsonBody("")).toEqual({});
  });
  test.each([
    ["[1]", /JSON object/],
    ['"x"', /JSON object/],
    ["null", /JSON object/],
    ["{bad", /JSON object/],
    ['{"qty":1e400}', /'qty' field is not a finite number/],
    ['{"a":[{"qty":-1e999}]}', /'a\[0\]\.qty' field is not a finite number/],
    ['{"name":"a\\u0000b"}', /'name' field contains a NUL/],
    ['{"a\\u0000":1}', /NUL character in its name/],
    [`{"a":${nest(40)}}`, /deeper than 32/],
  ])("%s is a 422", (text, message) => {
    let err: any;
    try {
      parseJsonBody(text);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 422, type: "VALIDATION_ERROR" });
    expect(err.message).toMatch(message);
  });
  test("findForbiddenValue names nothing in clean data", () => {
    expect(findForbiddenValue({ a: [1, 2.5, "x", null, true, { b: -3 }] })).toBeNull();
  });
});

test("checkUrl: NUL in a segment or query value is 422, broken percent-encoding 400", () => {
  expect(() => checkUrl("/api/v1/deployments/abc?x=1")).not.toThrow();
  expect(() => checkUrl("/api/v1/deployments/a%00b")).toThrow(expect.objectContaining({ code: 422 }));
  expect(() => checkUrl("/api/v1/deployments?reason=%00")).toThrow(expect.objectContaining({ code: 422 }));
  expect(() => checkUrl("/api/v1/deployments?x=%E0%A4%A")).toThrow(expect.objectContaining({ code: 400, type: "INVALID_URL" }));
});

describe("unavailability is a 503 with retry-after, other failures are not", () => {
  test.each([
    Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5440"), { code: "ECONNREFUSED" }),
    new Error("Connection terminated unexpectedly"),
    new Error("timeout exceeded when trying to connect"),
    Object.assign(new Error("terminating connection due to administrator command"), { code: "57P01" }),
    Object.assign(new Error("the database system is starting up"), { code: "57P03" }),
    Object.assign(new Error("wrapped"), { cause: Object.assign(new Error("x"), { code: "08006" }) }),
  ])("database: %s", (err) => {
    expect(isDatabaseUnavailable(err)).toBe(true);
    expect(toClientError(err)).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE", data: { retry_after: 5, reason: "DATABASE_UNAVAILABLE" } });
  });
  test.each([new Errors.ServiceNotFoundError({ action: "v1.deployments.create" }), new Errors.ServiceNotAvailableError({ action: "v1.deployments.create" }), new Errors.RequestTimeoutError({ action: "v1.x.y" }), new (Errors.BrokerDisconnectedError as any)(), new Errors.MoleculerError("Service unavailable", 503)])("transport: %s", (err) => {
    expect(toClientError(err)).toMatchObject({ code: 503, type: "SERVICE_UNAVAILABLE", retryable: true });
  });
  test.each([
    Object.assign(new Error("invalid message format"), { code: "08P01" }),
    Object.assign(new Error('invalid byte sequence for encoding "UTF8": 0x00'), { code: "22021" }),
    Object.assign(new Error("duplicate key"), { code: "23505" }),
    new Errors.MoleculerClientError("nope", 404, "NOT_FOUND"),
  ])("not unavailability: %s", (err) => {
    expect(isDatabaseUnavailable(err)).toBe(false);
    expect(toClientError(err)).toBe(err);
  });
});

test("/ready depends on every service of the alias table, and dns", () => {
  const services = routedServices(API_ALIASES);
  for (const s of ["v1.deployments", "v1.subscriptions", "v1.inventory", "v1.dns", "v1.provisioning", "v1.billing"]) expect(services).toContain(s);
  expect(services).not.toContain("api");
});
