/**
 * V8 heap flags every arcadia node is started with: `npm start`, the Dockerfile's CMD and the benchmarks' child
 * nodes (bench/lib.ts `startProcess`) use exactly these (test/node-flags.test.ts checks that they agree).
 *
 * Why (issue 13, peak RSS per node ≤ 200 MB): under load a node's heap holds little — after a full GC the services
 * node keeps ~44 MB live after 300 sagas, ~40 MB before them — but Node 24's V8 sizes the heap from the machine's
 * memory, not from what it holds. On a machine with a few GB it lets the young generation grow to 2 × 64 MB of
 * semi-space and the old generation to 4× its live size between full GCs (the growing factor is highest when the
 * heap limit is ≥ 2 GB), so RSS reached 317 MB (services) and 250 MB (provisioning) in a 300-saga run while the
 * heap stayed mostly garbage. That memory is garbage collected late, not leaked, so the fix is the heap's size:
 *   --max-semi-space-size=16  the semi-space V8 used on 64-bit before Node 24 (young generation 2 × 16 MB): in the
 *                             same run ~1 ms more scavenging per saga in the services node; 8 would save 16 MB
 *                             more for ~4 ms of scavenging per saga.
 *   --max-old-space-size=512  a heap limit under 2 GB lowers V8's growing factor (to ~1.4 at 512 MB), so the old
 *                             generation is collected at ~1.4× its live size instead of 4×; it is also a ceiling: a
 *                             node that truly needs more than 512 MB of heap fails with an out-of-memory error
 *                             rather than swapping, and an operator may raise it (NODE_OPTIONS, or these flags).
 */
export const NODE_HEAP_FLAGS: readonly string[] = ["--max-semi-space-size=16", "--max-old-space-size=512"];
