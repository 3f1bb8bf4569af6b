import type { IncomingMessage, ServerResponse } from "node:http";
import { Errors, type Context, type ServiceSchema } from "moleculer";
import { createSession } from "better-sse";
import type { WatchEventsResult, WatchOpenResult } from "../webhooks.service";

/*
 * GET /api/v1/deployments/:id/watch — Server-Sent Events through the gateway (SPEC §9 "Watching").
 *
 * moleculer-web 0.11 lets an alias be a function `(req, res, next)` that owns the response; authentication runs
 * before it like for any alias (ctx.meta.user). better-sse writes the stream (headers, `event:`/`id:`/`data:`
 * framing, the keep-alive comment). The lines themselves live in the webhooks service's watch journal
 * (a per-deployment sequence in PostgreSQL), read with v1.webhooks.watchEvents: the SSE id is that sequence
 * number, so Last-Event-ID resumes exactly after the last line a client saw, from any gateway node.
 * `webhooks.watch.appended` (a broadcast, crossing NATS) wakes the streams of that deployment at once; a slow poll
 * covers a lost wake-up.
 */

export const WATCH_ALIAS = "GET /deployments/:id/watch";

type Req = IncomingMessage & { $ctx: Context<unknown, { user?: unknown }>; $params: { id: string }; headers: Record<string, string | undefined> };
type Wake = () => void;

export const WatchMixin: Partial<ServiceSchema> = {
  settings: {
    watchHeartbeatMs: Number(process.env.WATCH_HEARTBEAT_MS ?? 15_000),
    watchPollMs: Number(process.env.WATCH_POLL_MS ?? 5_000),
  } as Record<string, unknown>,

  created() {
    this.watchers = new Map<string, Set<Wake>>();
    this.watchResponses = new Set<ServerResponse>();
  },
  started() {
    // moleculer-web's stopped() waits for server.close(), which waits for every open stream: end them first
    // (whatever order the lifecycle hooks run in). Clients reconnect, with Last-Event-ID, to another gateway.
    const server = this.server;
    if (!server) return;
    const close = server.close.bind(server);
    server.close = (cb?: (err?: Error) => void) => {
      for (const res of this.watchResponses) res.end();
      return close(cb);
    };
  },

  actions: {
    /**
     * Not called: the route is the function alias above. This declaration is what the access gate and the
     * OpenAPI document read for GET /deployments/:id/watch (its operationId); scoping itself is v1.webhooks.watchOpen's.
     */
    watch: {
      visibility: "public",
      access: "scoped",
      handler() {
        throw new Errors.MoleculerClientError("Watch a deployment with GET /api/v1/deployments/:id/watch (text/event-stream)", 404, "NOT_FOUND");
      },
    },
  },

  events: {
    "webhooks.watch.appended"(this: any, ctx: Context<{ deployment_id: string }>) {
      for (const wake of this.watchers.get(ctx.params.deployment_id) ?? []) wake();
    },
  },

  methods: {
    /** The alias handler: errors before the stream starts go to moleculer-web's error answer (404, 401, 503). */
    watchAlias(this: any, req: Req, res: ServerResponse, next: (err?: unknown) => void) {
      this.watchStream(req, res).catch((err: any) => {
        if (res.headersSent) return void res.end();
        // The webhooks (or deployments) service not being reachable is 503 with retry-after, never a 404.
        if (["SERVICE_NOT_FOUND", "SERVICE_NOT_AVAILABLE", "REQUEST_TIMEOUT"].includes(err?.type)) {
          res.setHeader("retry-after", "5");
          return next(new Errors.MoleculerError(`Watching is unavailable right now: ${err.message}`, 503, "SERVICE_UNAVAILABLE", null));
        }
        next(err);
      });
    },

    async watchStream(this: any, req: Req, res: ServerResponse) {
      const id = req.$params.id;
      // The route takes no query parameters; like every route, it names the ones it does not know (422).
      const unknown = Object.keys((req as any).query ?? {});
      if (unknown.length) {
        const data = unknown.map((name) => ({ type: "unknownParameter", field: name, message: `Unknown parameter '${name}': this route does not take it.` }));
        throw new Errors.ValidationError(data.map((d) => d.message).join("; "), "VALIDATION_ERROR", data as any);
      }
      const meta = { user: req.$ctx.meta.user };
      const call = <T>(action: string, params: object) => this.broker.call(action, params, { meta, requestID: req.$ctx.requestID }) as Promise<T>;
      // Scoped like GET /deployments/:id: another tenant's id is 404 before any byte of the stream is sent.
      const opened = await call<WatchOpenResult>("v1.webhooks.watchOpen", { id });
      const lastHeader = req.headers["last-event-id"];
      const resumeFrom = lastHeader !== undefined && /^\d{1,15}$/.test(lastHeader.trim()) ? Number(lastHeader.trim()) : null;
      const session = await createSession(req, res, { keepAlive: this.settings.watchHeartbeatMs, retry: 2000, trustClientEventId: false, headers: { "x-accel-buffering": "no" } });

      // The current view first. On a fresh stream it carries the journal head as its id (what it already shows);
      // on a resume it repeats the client's own id, so the client's position does not move.
      let after = resumeFrom ?? opened.head;
      session.push(opened.view, "deployment", String(after));

      let busy = false;
      let again = false;
      let closed = false;
      const pump = async () => {
        if (busy) return void (again = true);
        busy = true;
        try {
          do {
            again = false;
            const { items } = await call<WatchEventsResult>("v1.webhooks.watchEvents", { deployment_id: id, after, limit: 200 });
            for (const it of items) {
              if (closed) return;
              session.push(it.data, it.type, String(it.seq));
              after = it.seq;
            }
            if (items.length === 200) again = true;
          } while (again && !closed);
        } catch (err: any) {
          this.logger.debug({ deployment_id: id, err: err?.message }, "watch read failed; retrying on the next wake-up");
        } finally {
          busy = false;
        }
      };
      const wake: Wake = () => void pump();
      const set: Set<Wake> = this.watchers.get(id) ?? new Set();
      set.add(wake);
      this.watchers.set(id, set);
      const poll = setInterval(wake, this.settings.watchPollMs);
      this.watchResponses.add(res);
      session.once("disconnected", () => {
        closed = true;
        this.watchResponses.delete(res);
        clearInterval(poll);
        set.delete(wake);
        if (!set.size) this.watchers.delete(id);
      });
      await pump();
    },
  },
};
