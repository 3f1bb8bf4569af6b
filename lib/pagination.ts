import { invalid } from "./errors";

/** Keyset cursor over (inserted_at desc, id desc): opaque to clients, stable under inserts. */
export function encodeCursor(insertedAt: Date, id: string): string {
  return Buffer.from(`${insertedAt.toISOString()}|${id}`).toString("base64url");
}

export function decodeCursor(cursor: string): { insertedAt: Date; id: string } {
  const [ts, id] = Buffer.from(cursor, "base64url").toString("utf8").split("|");
  const insertedAt = new Date(ts);
  if (!id || !/^[0-9a-f-]{36}$/i.test(id) || Number.isNaN(insertedAt.getTime())) throw invalid("cursor is not a cursor this API returned", [{ field: "cursor" }]);
  return { insertedAt, id };
}
