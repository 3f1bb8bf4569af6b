import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { verifySignature } from "../services/webhooks/sign";

export interface Received {
  at: number;
  status: number;
  signature: string | undefined;
  raw: string;
  body: any;
  verified: boolean;
}

/**
 * A loopback webhook receiver: verifies each request's Arcadia-Signature with the secrets it is given and answers
 * what `answer()` says (200 by default), recording everything.
 */
export async function startReceiver() {
  const secrets = new Set<string>();
  const received: Received[] = [];
  let answer: (body: any) => number = () => 200;
  let hold: { when: () => boolean; onHeld: (release: () => void) => void } | null = null;
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      const signature = req.headers["arcadia-signature"] as string | undefined;
      let body: any = null;
      try {
        body = JSON.parse(raw);
      } catch {
        /* recorded as is */
      }
      if (hold?.when()) {
        // Never answered while held (the sender may die waiting); recorded as a 0 status, not accepted.
        received.push({ at: Date.now(), status: 0, signature, raw, body, verified: [...secrets].some((s) => verifySignature(s, raw, signature)) });
        hold.onHeld(() => res.destroy());
        return;
      }
      const status = answer(body);
      received.push({ at: Date.now(), status, signature, raw, body, verified: [...secrets].some((s) => verifySignature(s, raw, signature)) });
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(status < 300 ? "ok" : "no");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`,
    received,
    trust: (secret: string) => secrets.add(secret),
    answerWith: (fn: (body: any) => number) => (answer = fn),
    /** Leaves requests unanswered while `when()` holds; `onHeld` gets a function that drops the connection. */
    holdWhen(when: () => boolean, onHeld: (release: () => void) => void) {
      hold = { when, onHeld };
      return { stop: () => (hold = null) };
    },
    /** What was accepted (2xx), one entry per event id. */
    accepted: () => received.filter((r) => r.status >= 200 && r.status < 300).map((r) => r.body),
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        // Keep-alive connections from the senders would otherwise hold the process open for a few seconds.
        server.closeAllConnections();
      }),
  };
}
export type Receiver = Awaited<ReturnType<typeof startReceiver>>;
