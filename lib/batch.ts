/**
 * Coalesces small writes that many concurrent calls make into one statement (issue 13: every autocommit statement
 * is a PostgreSQL commit). `add` resolves once a `flush` holding its item has succeeded, and rejects with that
 * flush's error: a caller still learns that its write failed. One flush is in flight at a time; what arrives
 * meanwhile is the next batch, so batches form under load and a lone call waits no longer than one statement.
 */
export class Batcher<T> {
  private queue: { item: T; resolve: () => void; reject: (err: unknown) => void }[] = [];
  private running = false;

  constructor(private readonly flush: (items: T[]) => Promise<void>, private readonly max = 500) {}

  add(item: T): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  /** Items waiting or in flight (for tests and metrics). */
  get pending(): number {
    return this.queue.length;
  }

  private async drain() {
    this.running = true;
    try {
      while (this.queue.length) {
        const batch = this.queue.splice(0, this.max);
        try {
          await this.flush(batch.map((b) => b.item));
          for (const b of batch) b.resolve();
        } catch (err) {
          for (const b of batch) b.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }
}
