import { lookup } from "node:dns/promises";
import ipaddr from "ipaddr.js";

/*
 * Which webhook URLs we POST to (SPEC §9): http/https only, and never to a private, loopback, link-local
 * (169.254.169.254, the cloud metadata address, included), unique-local, multicast or otherwise reserved address,
 * IPv4 or IPv6 (IPv4-mapped IPv6 addresses are judged as the IPv4 they carry) — unless WEBHOOK_ALLOW_PRIVATE=1.
 * The host is resolved and every address it resolves to must pass: a public name pointing at 10.0.0.5 is
 * refused too. The check runs at registration and again before each delivery (a name can be re-pointed).
 */

/** Null when the address is a public unicast one, else the range ipaddr.js puts it in ("loopback", "linkLocal", …). */
export function blockedRange(address: string): string | null {
  if (!ipaddr.isValid(address)) return "invalid";
  let ip = ipaddr.parse(address);
  if (ip.kind() === "ipv6" && (ip as ipaddr.IPv6).isIPv4MappedAddress()) ip = (ip as ipaddr.IPv6).toIPv4Address();
  const range = ip.range();
  return range === "unicast" ? null : range;
}

export type Resolver = (host: string) => Promise<string[]>;
export const systemResolver: Resolver = async (host) => (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);

/** Null when the URL may be used, else why not (a sentence for the 422). */
export async function urlProblem(raw: string, opts: { allowPrivate: boolean; resolve?: Resolver }): Promise<string | null> {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return "'url' is not an absolute URL";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return "'url' must use http or https";
  if (opts.allowPrivate) return null;
  const host = url.hostname.replace(/^\[|\]$/g, "");
  let addresses: string[];
  if (ipaddr.isValid(host)) addresses = [host];
  else {
    try {
      addresses = await (opts.resolve ?? systemResolver)(host);
    } catch {
      return `'url' host ${host} does not resolve`;
    }
  }
  if (!addresses.length) return `'url' host ${host} does not resolve`;
  for (const a of addresses) {
    const range = blockedRange(a);
    if (range) return `'url' resolves to a ${range} address (${a}); only public addresses are allowed`;
  }
  return null;
}
