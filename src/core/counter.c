/* Shard ownership for bw__counter_t (counter.h). */
#include <pthread.h>

#include "core/counter.h"

_Thread_local __attribute__((tls_model("initial-exec"))) unsigned bw__tl_shard_plus1;

/* Bit i set: owned shard i is free. The acq_rel on taking and giving back
 * a bit orders a previous owner's last plain store before the next owner's
 * first load. */
static atomic_uint free_shards = (1u << BW__COUNTER_SHARED) - 1;
static pthread_key_t exit_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void give_back(void *v) {
  unsigned shard = (unsigned)(uintptr_t)v - 1;
  atomic_fetch_or_explicit(&free_shards, 1u << shard, memory_order_acq_rel);
}
static void make_key(void) { pthread_key_create(&exit_key, give_back); }

unsigned bw__counter_shard_slow(void) {
  pthread_once(&key_once, make_key);
  unsigned free = atomic_load_explicit(&free_shards, memory_order_relaxed);
  unsigned shard = BW__COUNTER_SHARED;
  while (free) {
    unsigned i = (unsigned)__builtin_ctz(free);
    if (atomic_compare_exchange_weak_explicit(&free_shards, &free, free & ~(1u << i),
                                              memory_order_acq_rel, memory_order_relaxed)) {
      shard = i;
      /* non-NULL: the key's destructor runs when this thread exits */
      pthread_setspecific(exit_key, (void *)(uintptr_t)(i + 1));
      break;
    }
  }
  bw__tl_shard_plus1 = shard + 1;
  return shard;
}
