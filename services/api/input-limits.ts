import { createGunzip, createInflate, createBrotliDecompress } from "node:zlib";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Transform } from "node:stream";
import { Errors } from "moleculer";

/*
 * SPEC §8 input limits, in one place, before anything parses deep: the gateway's only body reader
 * (moleculer-web's body parsers are off). A request is refused with a 4xx in moleculer-web's error shape, and
 * never reaches a service, when:
 * - its body is over MAX_BODY_BYTES (256 KB) — counted on the wire and again after decoding, so a small gzip
 *   bomb is refused too                                                           → 413 PAYLOAD_TOO_LARGE
 * - its Content-Encoding is not identity, gzip, deflate or br                      → 415 UNSUPPORTED_CONTENT_ENCODING
 * - it does not decode in the encoding it names                                    → 400 INVALID_CONTENT_ENCODING
 * - it is not JSON, or not a JSON object                                           → 422 VALIDATION_ERROR
 * - it nests deeper than MAX_DEPTH (32) — checked on the raw text by a linear scan, so 60,000 `[` never reach
 *   a recursive parser, validator or serialiser                                    → 422 VALIDATION_ERROR
 * - a string (or key) holds NUL, or a number is not finite (`1e400`, which JSON.parse turns into Infinity and
 *   the transporter into null)                                                     → 422 VALIDATION_ERROR naming it
 * - a path segment or query value holds NUL                                        → 422 VALIDATION_ERROR
 * - the URL's percent-encoding is malformed                                        → 400 INVALID_URL
 * A body with a Content-Type other than JSON is 415 UNSUPPORTED_MEDIA_TYPE.
 */

export const MAX_BODY_BYTES = 256 * 1024;
export const MAX_DEPTH = 32;

const { MoleculerClientError } = Errors;
const refuse = (code: number, type: string, message: string, data: unknown = null) => new MoleculerClientError(message, code, type, data);
const invalid = (message: string, data: unknown = null) => refuse(422, "VALIDATION_ERROR", message, data);

/** How deep the JSON text nests, scanning once and stopping as soon as it passes `max`. Strings are skipped. */
export function nestingDepthExceeds(text: string, max = MAX_DEPTH): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 92 /* \ */) i++;
      else if (c === 34 /* " */) inString = false;
    } else if (c === 34) inString = true;
    else if (c === 91 /* [ */ || c === 123 /* { */) {
      if (++depth > max) return true;
    } else if (c === 93 /* ] */ || c === 125 /* } */) depth--;
  }
  return false;
}

/**
 * The first value of a parsed body (depth already bounded) that a service must never see: a string or key
 * holding NUL, or a number that is not finite. Returns its path ("addons[0].qty") and why, or null.
 */
export function findForbiddenValue(value: unknown, path = ""): { field: string; reason: string } | null {
  if (typeof value === "string") return value.includes("\u0000") ? { field: path || "(body)", reason: "contains a NUL character" } : null;
  if (typeof value === "number") return Number.isFinite(value) ? null : { field: path || "(body)", reason: "is not a finite number" };
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const bad = findForbiddenValue(value[i], `${path}[${i}]`);
      if (bad) return bad;
    }
    return null;
  }
  if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      const field = path ? `${path}.${k}` : k;
      if (k.includes("\u0000")) return { field: field.replace(/\u0000/g, "\\u0000"), reason: "has a NUL character in its name" };
      const bad = findForbiddenValue(v, field);
      if (bad) return bad;
    }
  }
  return null;
}

/** Checks a raw JSON text against every rule above and parses it; throws the 4xx to answer. */
export function parseJsonBody(text: string): Record<string, unknown> {
  if (text.trim() === "") return {};
  if (nestingDepthExceeds(text)) throw invalid(`The request body nests deeper than ${MAX_DEPTH} levels`, { max_depth: MAX_DEPTH });
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw invalid("The request body must be a JSON object");
  }
  if (!body || typeof body !== "object" || Array.isArray(body)) throw invalid("The request body must be a JSON object");
  const bad = findForbiddenValue(body);
  if (bad) throw invalid(`The '${bad.field}' field ${bad.reason}`, [{ field: bad.field, message: bad.reason, type: "forbiddenValue" }]);
  return body as Record<string, unknown>;
}

/** Path segments and query values: percent-decoded, NUL refused. */
export function checkUrl(url: string): void {
  let decoded: string;
  try {
    decoded = decodeURIComponent(url.replace(/\+/g, " "));
  } catch {
    throw refuse(400, "INVALID_URL", "The URL's percent-encoding is malformed");
  }
  if (decoded.includes("\u0000")) throw invalid("A path segment or query value contains a NUL character");
}

function decoderFor(encoding: string): Transform | null {
  switch (encoding) {
    case "gzip":
    case "x-gzip":
      return createGunzip();
    case "deflate":
      return createInflate();
    case "br":
      return createBrotliDecompress();
    default:
      return null;
  }
}

/** Reads the body, decoding it and counting bytes on both sides of the decoder; never more than the limit. */
function readBody(req: IncomingMessage): Promise<string> {
  const encoding = String(req.headers["content-encoding"] ?? "identity").trim().toLowerCase();
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) return Promise.reject(refuse(413, "PAYLOAD_TOO_LARGE", `The request body is over ${MAX_BODY_BYTES / 1024} KB`, { max_bytes: MAX_BODY_BYTES }));
  const decoder = encoding === "identity" || encoding === "" ? null : decoderFor(encoding);
  if (encoding !== "identity" && encoding !== "" && !decoder)
    return Promise.reject(refuse(415, "UNSUPPORTED_CONTENT_ENCODING", `Content-Encoding '${encoding.slice(0, 40)}' is not supported (identity, gzip, deflate, br)`));

  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let wire = 0;
    let decoded = 0;
    let done = false;
    const fail = (err: Error) => {
      if (done) return;
      done = true;
      req.unpipe?.();
      decoder?.destroy();
      // Drain what is left so the client gets our answer instead of a reset.
      req.resume();
      reject(err);
    };
    const tooLarge = () => fail(refuse(413, "PAYLOAD_TOO_LARGE", `The request body is over ${MAX_BODY_BYTES / 1024} KB`, { max_bytes: MAX_BODY_BYTES }));
    const sink = decoder ?? req;
    req.on("data", (c: Buffer) => {
      wire += c.length;
      if (wire > MAX_BODY_BYTES) tooLarge();
    });
    req.on("error", (e) => fail(refuse(400, "INVALID_BODY", `The request body could not be read: ${e.message}`)));
    if (decoder) {
      decoder.on("error", () => fail(refuse(400, "INVALID_CONTENT_ENCODING", `The request body is not valid ${encoding}`)));
      req.pipe(decoder);
    }
    sink.on("data", (c: Buffer) => {
      if (done) return;
      decoded += c.length;
      if (decoded > MAX_BODY_BYTES) return tooLarge();
      chunks.push(c);
    });
    sink.on("end", () => {
      if (done) return;
      done = true;
      const buf = Buffer.concat(chunks);
      // Invalid UTF-8 would turn into U+FFFD silently; refuse it instead.
      const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });
      try {
        resolve(text.decode(buf));
      } catch {
        reject(refuse(400, "INVALID_BODY", "The request body is not valid UTF-8"));
      }
    });
  });
}

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;

/**
 * moleculer-web route middleware (connect style): the route's one body reader and URL check. Sets req.body to the
 * parsed object, or passes the refusal to the gateway's onError.
 */
export function inputLimits(req: IncomingMessage & { body?: unknown }, _res: ServerResponse, next: (err?: unknown) => void): void {
  (async () => {
    checkUrl(req.url ?? "/");
    const method = req.method ?? "GET";
    if (method === "GET" || method === "HEAD" || method === "OPTIONS") {
      req.resume();
      req.body = {};
      return;
    }
    const text = await readBody(req);
    const type = req.headers["content-type"];
    if (text.trim() !== "" && type && !JSON_TYPE.test(type)) throw refuse(415, "UNSUPPORTED_MEDIA_TYPE", "The request body must be application/json");
    req.body = parseJsonBody(text);
  })().then(
    () => next(),
    (err) => next(err),
  );
}
