/* A counter that many threads add to at once: one cache line per shard, a
 * thread always adding to its own shard (threads are given shards round
 * robin), so concurrent adds do not fight over one line. Reading sums the
 * shards (relaxed: a statistic, not a synchronisation point). Zeroed memory
 * is a zero counter. */
#ifndef BW_CORE_COUNTER_H
#define BW_CORE_COUNTER_H

#include <stdatomic.h>
#include <stdint.h>

#define BW__COUNTER_SHARDS 8

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

/* This thread's shard (assigned at its first use). */
unsigned bw__counter_shard(void);

static inline void bw__counter_add(bw__counter_t *c, uint64_t n) {
  atomic_fetch_add_explicit(&c->shard[bw__counter_shard()].v, n, memory_order_relaxed);
}

static inline uint64_t bw__counter_sum(const bw__counter_t *c) {
  uint64_t s = 0;
  for (unsigned i = 0; i < BW__COUNTER_SHARDS; i++)
    s += atomic_load_explicit((_Atomic uint64_t *)&c->shard[i].v, memory_order_relaxed);
  return s;
}

#endif
