import { Batcher } from "../lib/batch";

/** lib/batch: the coalescing behind the deployments outbox's publish marks. */
describe("Batcher", () => {
  test("what arrives while a flush is in flight goes out as the next batch, in order", async () => {
    const flushed: number[][] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const b = new Batcher<number>(async (items) => {
      flushed.push(items);
      if (flushed.length === 1) await gate;
    });
    const first = b.add(1);
    const rest = [2, 3, 4].map((n) => b.add(n));
    expect(flushed).toEqual([[1]]);
    expect(b.pending).toBe(3);
    release();
    await Promise.all([first, ...rest]);
    expect(flushed).toEqual([[1], [2, 3, 4]]);
    expect(b.pending).toBe(0);
  });

  test("a failed flush rejects every caller of its batch, and the next batch still goes", async () => {
    let calls = 0;
    const b = new Batcher<string>(async (items) => {
      calls++;
      if (items.includes("bad")) throw new Error("database down");
    });
    const bad = b.add("bad");
    const later = b.add("good");
    await expect(bad).rejects.toThrow("database down");
    await expect(later).resolves.toBeUndefined();
    expect(calls).toBe(2);
  });

  test("a batch holds at most `max` items", async () => {
    const sizes: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const b = new Batcher<number>(async (items) => {
      sizes.push(items.length);
      if (sizes.length === 1) await gate;
    }, 3);
    const all = [b.add(0), ...Array.from({ length: 7 }, (_, i) => b.add(i + 1))];
    release();
    await Promise.all(all);
    expect(sizes).toEqual([1, 3, 3, 1]);
  });
});
