import { Validators, Errors } from "moleculer";
import { AccessMiddleware } from "./access";

/**
 * Keys the gateway itself may put into ctx.params besides the body, query and path parameters (moleculer-web's
 * `passReqResToParams`): allowed by every strict schema so they never count as unknown parameters.
 */
const GATEWAY_PARAMS = { $req: { type: "any", optional: true }, $res: { type: "any", optional: true } };

/** One error per unknown key, each naming it, instead of fastest-validator's single "forbidden keys" line. */
export function unknownParamErrors(res: any[]): any[] {
  return res.flatMap((e) =>
    e?.type === "objectStrict" && !e.field
      ? String(e.actual)
          .split(", ")
          .filter(Boolean)
          .map((name) => ({ type: "unknownParameter", field: name, message: `Unknown parameter '${name}': this route does not take it.` }))
      : [e],
  );
}

/**
 * fastest-validator whose 422 names what is wrong ("The 'slug' field fails to match ...") instead of moleculer's
 * generic "Parameters validation error!". The field list stays in `data`.
 *
 * Strict parameters (SPEC §8): every action's params schema is compiled with `$$strict: true`, so a body field or
 * query parameter the action does not declare is 422 VALIDATION_ERROR naming it (`data[].field`). One rule for
 * every action; an action that must take arbitrary keys says `$$strict: false` in its own params. Events keep
 * their schemas as written (payloads grow; consumers ignore what they do not know).
 */
export class ClearValidator extends Validators.Fastest {
  constructor() {
    // fastest-validator's own enum message prints the allowed list where the rejected value belongs.
    super({ messages: { enumValue: "The '{field}' field must be one of: {expected} (got '{actual}')." } } as any);
  }

  /**
   * Who may call comes before what they sent: a tenant posting a bad body to an operator route gets 403, not a
   * 422 that describes the route. Moleculer runs its internal Validator outside every user middleware, so the
   * access gate (lib/access.ts AccessMiddleware, the one place it is enforced) is composed here, around the
   * parameter check, for every action.
   */
  override middleware(broker: any) {
    const mw = super.middleware(broker) as any;
    const validate = mw.localAction;
    mw.localAction = function (handler: any, action: any) {
      // Strict parameters: the action's params compiled with $$strict (see the class comment).
      const params = action.params;
      const strict = params && typeof params === "object" && !("$$strict" in params) ? { ...action, params: { $$strict: true, ...GATEWAY_PARAMS, ...params } } : action;
      return AccessMiddleware.localAction(validate.call(this, handler, strict), action);
    };
    return mw;
  }

  override compile(schema: any) {
    const check = super.compile(schema) as any;
    // Marked async so moleculer's middleware awaits it and our rejection reaches the caller unchanged.
    const wrapped = async (params: any, opts: any) => {
      const res = await check(params, opts);
      if (res === true) return true;
      const errors = unknownParamErrors(res as any[]);
      const msg = errors.map((e) => e.message).join("; ");
      throw new Errors.ValidationError(msg || "Invalid parameters", "VALIDATION_ERROR", errors as any);
    };
    (wrapped as any).async = true;
    return wrapped as any;
  }
}
