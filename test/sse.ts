import { createParser, type EventSourceMessage } from "eventsource-parser";

/** A real SSE client over fetch: collects messages and comment lines until closed. */
export interface SseClient {
  status: number;
  headers: Headers;
  /** Body of a non-stream answer (an error), parsed. */
  error: any;
  messages: EventSourceMessage[];
  comments: string[];
  close(): void;
}

export async function openSse(url: string, opts: { token?: string; lastEventId?: string } = {}): Promise<SseClient> {
  const ac = new AbortController();
  const headers: Record<string, string> = { accept: "text/event-stream" };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.lastEventId !== undefined) headers["last-event-id"] = opts.lastEventId;
  const res = await fetch(url, { headers, signal: ac.signal });
  const client: SseClient = { status: res.status, headers: res.headers, error: null, messages: [], comments: [], close: () => ac.abort() };
  if (!res.headers.get("content-type")?.startsWith("text/event-stream")) {
    const text = await res.text();
    try {
      client.error = JSON.parse(text);
    } catch {
      client.error = text;
    }
    return client;
  }
  const parser = createParser({ onEvent: (m) => client.messages.push(m), onComment: (c) => client.comments.push(c) });
  void (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as any as AsyncIterable<Uint8Array>) parser.feed(decoder.decode(chunk, { stream: true }));
    } catch {
      /* closed */
    }
  })();
  return client;
}
