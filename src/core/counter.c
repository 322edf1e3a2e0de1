/* Shard assignment for bw__counter_t (counter.h). */
#include "core/counter.h"

static atomic_uint next_shard;
static _Thread_local unsigned tl_shard_plus1; /* 0: not assigned yet */

unsigned bw__counter_shard(void) {
  if (!tl_shard_plus1)
    tl_shard_plus1 =
        atomic_fetch_add_explicit(&next_shard, 1, memory_order_relaxed) % BW__COUNTER_SHARDS + 1;
  return tl_shard_plus1 - 1;
}
