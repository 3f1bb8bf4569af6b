import { Validators, Errors } from "moleculer";
import { AccessMiddleware } from "./access";

/**
 * fastest-validator whose 422 names what is wrong ("The 'slug' field fails to match ...") instead of moleculer's
 * generic "Parameters validation error!". The field list stays in `data`.
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
      return AccessMiddleware.localAction(validate.call(this, handler, action), action);
    };
    return mw;
  }

  override compile(schema: any) {
    const check = super.compile(schema) as any;
    // Marked async so moleculer's middleware awaits it and our rejection reaches the caller unchanged.
    const wrapped = async (params: any, opts: any) => {
      const res = await check(params, opts);
      if (res === true) return true;
      const msg = (res as any[]).map((e) => e.message).join("; ");
      throw new Errors.ValidationError(msg || "Invalid parameters", "VALIDATION_ERROR", res);
    };
    (wrapped as any).async = true;
    return wrapped as any;
  }
}
