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

/**
 * The SQL keyset condition for a cursor, for a list read newest first by (`timeCol` desc, `idCol` desc):
 * `(time, id) < (cursor time, cursor id)` with its arguments, or null without a cursor.
 */
export function keysetBefore(cursor: string | undefined, timeCol: string, idCol: string): { sql: string; args: unknown[] } | null {
  if (!cursor) return null;
  const c = decodeCursor(cursor);
  return { sql: `(${timeCol}, ${idCol}) < (?::timestamptz, ?::uuid)`, args: [c.insertedAt.toISOString(), c.id] };
}

/** The ORM form of keysetBefore, for `em.find` filters. */
export function keysetBeforeWhere(cursor: string | undefined, timeField: string): Record<string, unknown> | null {
  if (!cursor) return null;
  const c = decodeCursor(cursor);
  return { $or: [{ [timeField]: { $lt: c.insertedAt } }, { [timeField]: c.insertedAt, id: { $lt: c.id } }] };
}

/**
 * One page from `limit + 1` rows read in keyset order (the extra row says whether there is a next page), and the
 * cursor to the next page from the page's last row.
 */
export function pageOf<T>(rows: T[], limit: number, key: (row: T) => { time: Date | string; id: string }): { items: T[]; next_cursor: string | null } {
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  if (rows.length <= limit || !last) return { items, next_cursor: null };
  const k = key(last);
  return { items, next_cursor: encodeCursor(new Date(k.time), k.id) };
}
