import type { StartParams } from "../provisioning.service";
import type { EntityManager } from "@mikro-orm/postgresql";
import { randomUUID } from "node:crypto";
import { systemUser } from "../../lib/access";
import { iso } from "../../lib/dto";

/*
 * Durable saga-start requests (SPEC §2 "a crash between a move and the start of its saga loses nothing"; design
 * note: ./README.md). A move with a cloud effect writes a row here in the transaction of its state change; the
 * row's id is the saga's id. After the commit the service calls v1.provisioning.start (idempotent by id); a sweep
 * re-sends what was not acknowledged. Requests of one deployment are started strictly in the order they were
 * written, and a newer one only after every older one was acknowledged, so the engine (which runs one
 * deployment's sagas in creation order) sees them in the order of the moves.
 */

export type SagaKind = "provision" | "power_off" | "power_on" | "decommission" | "resize";

export interface SagaRequestRow {
  id: string;
  deployment_id: string;
  tenant_id: string;
  kind: SagaKind;
  input: Record<string, unknown>;
  requested_by: string | null;
  created_at: Date | string;
}


/** Written inside the move's transaction (`em` is its transactional manager). Its id is the saga's id. */
export async function insertSagaRequest(
  em: EntityManager,
  r: { deployment_id: string; tenant_id: string; kind: SagaKind; input: Record<string, unknown>; requested_by: string | null },
  firstRetryMs: number,
): Promise<SagaRequestRow> {
  const id = randomUUID();
  await em.execute(
    `insert into deployment_saga_requests (id, deployment_id, tenant_id, kind, input, requested_by, created_at, next_attempt_at)
     values (?, ?, ?, ?, ?::jsonb, ?, now(), now() + (? || ' milliseconds')::interval)`,
    [id, r.deployment_id, r.tenant_id, r.kind, JSON.stringify(r.input), r.requested_by, String(firstRetryMs)],
  );
  return { id, ...r, created_at: new Date() };
}

/**
 * What a move answers for a saga whose start was not acknowledged in time: the saga as requested, under the id it
 * will have. It is `running` in the sense that it is owed and will run (the sweep starts it); its steps appear
 * once the engine has it (GET /sagas/:id is 404 until then).
 */
export function requestedSaga(r: SagaRequestRow) {
  return { id: r.id, kind: r.kind, deployment_id: r.deployment_id, tenant_id: r.tenant_id, status: "running", steps: [], started_at: iso(r.created_at), finished_at: null, error: null };
}

export interface StartDeps {
  em: EntityManager;
  /** ctx.call or broker.call */
  call: (action: string, params: unknown, opts: Record<string, unknown>) => Promise<any>;
  timeoutMs: number;
  retryMs: number;
  logger: { warn: (o: object, msg: string) => void; info: (o: object, msg: string) => void; error: (o: object, msg: string) => void };
  /** A request the engine refused as invalid (422): it will never start; the caller settles its deployment. */
  onRefused?: (r: SagaRequestRow, err: Error) => Promise<void>;
}

/**
 * Only a 422 means the engine looked at the request and will never run it; anything else (unreachable, timeout,
 * 5xx, a lost reply) is retried, since the saga may exist.
 */
export const refusedForGood = (err: any): boolean => err?.code === 422;

/**
 * Starts the deployment's unacknowledged requests in order, stopping at the first that fails. Returns the saga
 * each started request got (by request id); a request not in the map was not started and stays for the sweep.
 */
export async function startPending(deps: StartDeps, deploymentId: string, first?: SagaRequestRow): Promise<Map<string, unknown>> {
  const started = new Map<string, unknown>();
  // `first`: the deployment's first request, written with its row (a create): nothing older can be pending, so it
  // is started without reading the table. A newer move's request starts this one again first (idempotent by id).
  const rows: SagaRequestRow[] = first ? [first] : await deps.em.execute(
    `select id, deployment_id, tenant_id, kind, input, requested_by, created_at from deployment_saga_requests where deployment_id = ? and started_at is null order by seq`,
    [deploymentId],
  );
  for (const r of rows) {
    const params: StartParams = { id: r.id, kind: r.kind, deployment_id: r.deployment_id, tenant_id: r.tenant_id, input: r.input, ...(r.requested_by ? { requested_by: r.requested_by } : {}) };
    try {
      const res = await deps.call("v1.provisioning.start", params, { timeout: deps.timeoutMs, retries: 0, meta: { user: systemUser("deployments") } });
      started.set(r.id, res?.saga ?? res);
      await deps.em.execute(`update deployment_saga_requests set started_at = now(), attempts = attempts + 1, last_error = null where id = ? and started_at is null`, [r.id]);
    } catch (err) {
      const msg = (err as Error)?.message ?? String(err);
      if (refusedForGood(err)) {
        deps.logger.error({ saga_id: r.id, deployment_id: r.deployment_id, kind: r.kind, err: msg }, "saga start refused as invalid; not retried");
        await deps.em.execute(`update deployment_saga_requests set attempts = attempts + 1, last_error = ?, next_attempt_at = 'infinity' where id = ?`, [`refused: ${msg}`.slice(0, 2000), r.id]);
        await deps.onRefused?.(r, err as Error);
        continue; // it will never run: the next request does not wait behind it
      }
      deps.logger.warn({ saga_id: r.id, deployment_id: r.deployment_id, kind: r.kind, err: msg }, "saga start not acknowledged; the sweep re-sends it");
      await deps.em
        .execute(`update deployment_saga_requests set attempts = attempts + 1, last_error = ?, next_attempt_at = now() + (? || ' milliseconds')::interval where id = ?`, [msg.slice(0, 2000), String(deps.retryMs), r.id])
        .catch(() => undefined);
      break; // a newer request never overtakes an older one
    }
  }
  return started;
}

/** One sweep: claims deployments with requests due (skip locked: two nodes never claim the same rows) and starts them. */
export async function sweepRequests(deps: StartDeps, batch = 50): Promise<number> {
  const due: { deployment_id: string }[] = await deps.em.execute(
    `update deployment_saga_requests set next_attempt_at = now() + (? || ' milliseconds')::interval
     where id in (select id from deployment_saga_requests where started_at is null and next_attempt_at <= now() order by seq limit ? for update skip locked)
     returning deployment_id`,
    [String(deps.retryMs), batch],
  );
  const ids = [...new Set(due.map((d) => d.deployment_id))];
  for (const id of ids) await startPending(deps, id);
  return ids.length;
}

/**
 * The saga a move answers with: what start returned, or the requested saga when start did not answer (or the
 * database could not be asked after the commit: the move stands, the sweep takes it from here). `first`: the request
 * was written with the deployment itself (see startPending).
 */
export async function sagaForRequest(deps: StartDeps, request: SagaRequestRow, first = false) {
  try {
    const started = await startPending(deps, request.deployment_id, first ? request : undefined);
    if (started.has(request.id)) return started.get(request.id);
  } catch (err) {
    deps.logger.warn({ saga_id: request.id, deployment_id: request.deployment_id, err: (err as Error).message }, "saga start deferred to the sweep");
  }
  return requestedSaga(request);
}
