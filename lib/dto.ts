/** JSON shapes: timestamps as ISO 8601 UTC strings, everything else as stored. */
export const iso = (d: Date | string | null | undefined): string | null => (d == null ? null : new Date(d).toISOString());

/** The same ISO 8601 UTC text computed by PostgreSQL, for reads that skip the ORM (timestamptz(3) columns). */
export const isoSql = (column: string) => `to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/**
 * A PostgreSQL array literal for one bound parameter (`= any(?::uuid[])`, `?::text[]`): the driver would spread a JS
 * array into separate parameters. Every element is quoted, backslashes and quotes escaped, so any text is safe.
 */
export const pgArray = (values: readonly (string | number)[]) => `{${values.map((v) => `"${String(v).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`).join(",")}}`;

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}
