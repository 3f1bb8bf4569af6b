/** JSON shapes: timestamps as ISO 8601 UTC strings, everything else as stored. */
export const iso = (d: Date | string | null | undefined): string | null => (d == null ? null : new Date(d).toISOString());

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}
