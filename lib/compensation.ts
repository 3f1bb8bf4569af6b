import type { Context, ServiceBroker } from "moleculer";
import { systemUser } from "./access";

/** What the provisioning saga asks an owning service to undo (an event `provisioning.compensate.<owner>`). */
export interface CompensationRequestEvent {
  request_id: string;
  saga_id: string;
  step: string;
  op: string;
  deployment_id: string;
  tenant_id: string;
  [key: string]: unknown;
}

/**
 * Event handler for an owning service: runs the (idempotent) undo, then confirms back to the orchestrator with
 * the outcome. A lost event or confirmation is resent by the orchestrator's outbox, so handlers may run twice.
 */
export function compensationHandler(undo: (this: any, req: CompensationRequestEvent, ctx: Context) => Promise<unknown>) {
  return async function (this: { broker: ServiceBroker; logger: any }, ctx: Context<CompensationRequestEvent>) {
    const req = ctx.params;
    const meta = { user: systemUser(`compensation:${req.step}`) };
    let ok = true;
    let error: string | undefined;
    try {
      await undo.call(this, req, ctx);
    } catch (err) {
      ok = false;
      error = (err as Error).message;
      this.logger.warn({ request_id: req.saga_id, saga_id: req.saga_id, deployment_id: req.deployment_id, step: req.step, err: error }, "compensation failed");
    }
    try {
      await ctx.call("v1.provisioning.confirmCompensation", { request_id: req.request_id, ok, error }, { meta });
    } catch (err) {
      // The orchestrator resends unconfirmed requests; losing this confirmation only costs a repeat.
      this.logger.warn({ request_id: req.saga_id, saga_id: req.saga_id, deployment_id: req.deployment_id, step: req.step, err: (err as Error).message }, "could not confirm compensation");
    }
  };
}
