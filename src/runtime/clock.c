/* The runtime clock: CLOCK_MONOTONIC, or a paused virtual clock for tests
 * (starts at 1 s, moves only by bw_runtime_advance or auto-advance when the
 * runtime is idle; see timer.c and the schedulers). */
#include <time.h>

#include "runtime/rt.h"

uint64_t bw__mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bw_runtime_now_ns(const bw_runtime_t *rt) {
  if (rt && rt->paused) return atomic_load_explicit(&rt->paused_now_ns, memory_order_relaxed);
  return bw__mono_ns();
}

uint64_t bw__rt_now_ms(const bw_runtime_t *rt) { return bw_runtime_now_ns(rt) / 1000000u; }

bool bw_runtime_clock_paused(const bw_runtime_t *rt) { return rt && rt->paused; }

bw_error_t *bw_runtime_advance(bw_runtime_t *rt, uint64_t ms) {
  bw_error_t *e = bw__rt_check(rt, "bw_runtime_advance");
  if (e) return e;
  if (!rt->paused)
    return bw_error_new(BW_ERR_NOT_ALLOWED, 0,
                        "bw_runtime_advance: the runtime's clock is real; create it with "
                        "opts.clock = BW_CLOCK_PAUSED to move time by hand");
  atomic_fetch_add_explicit(&rt->paused_now_ns, ms * 1000000u, memory_order_relaxed);
  if (bw__ctx.rt == rt) {
    /* on a worker / the block_on thread: fire what is due right here */
    for (unsigned i = 0; i < rt->nwheels; i++) bw__wheel_fire(rt, i);
  } else {
    for (unsigned i = 0; i < rt->nwheels; i++) {
      if (rt->ct)
        bw__ct_kick(rt);
      else
        bw__sched_kick(rt, i);
    }
  }
  return NULL;
}

/* The paused clock's auto-advance waits while rt->inhibit > 0 (timer.c's
 * bw__clock_try_advance reads it with acquire, pairing with these acq_rel
 * updates). Releasing the last hold kicks an idle worker so the clock can
 * move again. */
void bw__runtime_clock_hold(bw_runtime_t *rt) {
  atomic_fetch_add_explicit(&rt->inhibit, 1, memory_order_acq_rel);
}

void bw__runtime_clock_release(bw_runtime_t *rt) {
  if (atomic_fetch_sub_explicit(&rt->inhibit, 1, memory_order_acq_rel) == 1 && rt->paused &&
      atomic_load_explicit(&rt->state, memory_order_acquire) != BW__RT_SHUTDOWN) {
    if (rt->ct)
      bw__ct_kick(rt);
    else
      bw__sched_kick(rt, 0);
  }
}
