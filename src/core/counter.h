/* A counter that many threads add to at once: one cache line per shard, a
 * thread always adding to its own shard, so concurrent adds do not fight
 * over one line. Reading sums the shards (relaxed: a statistic, not a
 * synchronisation point). Zeroed memory is a zero counter.
 *
 * Shards: the first BW__COUNTER_SHARDS - 1 threads to count each own one
 * shard alone and add with a plain load and store (no locked instruction:
 * on the call path there are several counters per call, and a locked add
 * costs as much as the rest of a counter's work several times over). A
 * thread's shard is given back when it exits (counter.c), so a process
 * that creates and joins threads keeps reusing them. Threads beyond those
 * share the last shard and add atomically. A reset (a relaxed store of 0
 * from another thread) may lose to a racing owner's add: counts taken
 * during a reset can survive it. */
#ifndef BW_CORE_COUNTER_H
#define BW_CORE_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

#define BW__COUNTER_SHARDS 8
#define BW__COUNTER_SHARED (BW__COUNTER_SHARDS - 1)

/* Padded rather than aligned (it lives inside heap objects that malloc
 * aligns to 16 only): shards 64 bytes apart never share a cache line, and
 * the leading pad keeps the first one off the fields before it. */
typedef struct bw__counter {
  char lead[64];
  struct {
    _Atomic uint64_t v;
    char pad[56];
  } shard[BW__COUNTER_SHARDS];
} bw__counter_t;

/* initial-exec: one %fs-relative load (see runtime/rt.h's BW__TLS). */
extern _Thread_local __attribute__((tls_model("initial-exec"))) unsigned bw__tl_shard_plus1;
unsigned bw__counter_shard_slow(void);

/* This thread's shard (assigned at its first use). */
static inline unsigned bw__counter_shard(void) {
  unsigned s = bw__tl_shard_plus1;
  return s ? s - 1 : bw__counter_shard_slow();
}

/* Add n to v, a slot in shard `shard` of this thread (bw__counter_shard). */
static inline void bw__shard_add(_Atomic uint64_t *v, unsigned shard, uint64_t n) {
  if (shard == BW__COUNTER_SHARED)
    atomic_fetch_add_explicit(v, n, memory_order_relaxed);
  else /* only this thread writes v */
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void bw__counter_add(bw__counter_t *c, uint64_t n) {
  unsigned s = bw__counter_shard();
  bw__shard_add(&c->shard[s].v, s, n);
}

static inline uint64_t bw__counter_sum(const bw__counter_t *c) {
  uint64_t s = 0;
  for (unsigned i = 0; i < BW__COUNTER_SHARDS; i++)
    s += atomic_load_explicit((_Atomic uint64_t *)&c->shard[i].v, memory_order_relaxed);
  return s;
}

#endif
