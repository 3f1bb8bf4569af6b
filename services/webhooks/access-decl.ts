/*
 * Until lib/access.ts (the lead's AccessMiddleware) declares it: the `access` property every action carries.
 * Delete this file once main's declaration is merged (a duplicate with the same type is harmless meanwhile).
 */
declare module "moleculer" {
  interface ActionSchema {
    access?: "public" | "signed-in" | "scoped" | "operator" | "internal";
  }
}
export {};
