import { signatureHeader } from "./sign";
import { urlProblem } from "./url";
import type { AttemptOutcome } from "./store";

/**
 * One HTTP attempt: `POST url` with the stored envelope as the raw body and `Arcadia-Signature` over it. Only a
 * 2xx within the timeout counts; redirects are not followed (a redirect could point at a private address). The
 * address check runs again here because a name's DNS answer can change after registration.
 */
export async function attempt(url: string, secret: string, body: string, eventId: string, opts: { timeoutMs: number; allowPrivate: boolean }): Promise<AttemptOutcome> {
  const at = new Date();
  const t0 = Date.now();
  const problem = await urlProblem(url, { allowPrivate: opts.allowPrivate });
  if (problem) return { ok: false, code: null, error: problem, ms: 0, at };
  try {
    const res = await fetch(url, {
      method: "POST",
      redirect: "manual",
      signal: AbortSignal.timeout(opts.timeoutMs),
      headers: {
        "content-type": "application/json",
        "user-agent": "arcadia-webhooks/1",
        "arcadia-event-id": eventId,
        "arcadia-signature": signatureHeader(secret, body, Date.now() / 1000),
      },
      body,
    });
    // The answer's body is not used; read a little so the connection can be reused, without trusting its size.
    await res.body?.cancel().catch(() => undefined);
    const ok = res.status >= 200 && res.status < 300;
    return { ok, code: res.status, error: ok ? null : `HTTP ${res.status}`, ms: Date.now() - t0, at };
  } catch (err: any) {
    const timedOut = err?.name === "TimeoutError" || err?.name === "AbortError";
    return { ok: false, code: null, error: timedOut ? `no answer within ${opts.timeoutMs} ms` : (err?.cause?.code ?? err?.message ?? String(err)), ms: Date.now() - t0, at };
  }
}
