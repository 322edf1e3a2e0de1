/* The runtime clock: CLOCK_MONOTONIC, or a paused virtual clock for tests
 * (starts at 1 s, moves only by bw_runtime_advance or auto-advance when the
 * runtime is idle; see timer.c and the schedulers). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "runtime/rt.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <x86intrin.h>
#endif

static uint64_t clock_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#if defined(__x86_64__)
/* CLOCK_MONOTONIC costs ~25 ns through the vDSO on this kind of VM, and a
 * stack reads it for every call. Where the kernel itself keeps time with
 * the TSC (invariant, the current clocksource), each thread instead reads
 * CLOCK_MONOTONIC at most once per millisecond of TSC time (its anchor) and
 * extrapolates in between with the TSC rate measured once over the first
 * >= 20 ms: the error within a millisecond is a few ns (the rate is right
 * to about 1e-5), far below the timers' 1 ms resolution. Readings stay
 * monotonic per thread (a new anchor never goes below the last reading);
 * across threads they agree with CLOCK_MONOTONIC to well under 1 us. */
#define CAL_NS 20000000u  /* calibration window */
#define ANCHOR_NS 1000000u /* re-anchor after this much TSC time */

static pthread_once_t tsc_once = PTHREAD_ONCE_INIT;
static bool tsc_usable;
static uint64_t cal_tsc, cal_ns;        /* the calibration start (set once) */
static _Atomic uint64_t anchor_ticks;   /* ANCHOR_NS in ticks (stored before mult) */
static _Atomic uint64_t tsc_mult;       /* ns per tick << 32; 0: not yet */
static BW__TLS uint64_t tl_tsc, tl_ns, tl_last;

static bool tsc_clocksource(void) {
  FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "r");
  if (!f) return false;
  char buf[32] = {0};
  bool ok = fgets(buf, sizeof buf, f) && strcmp(buf, "tsc\n") == 0;
  fclose(f);
  return ok;
}

/* A CLOCK_MONOTONIC reading and the TSC at that moment, taken between two
 * TSC readings at most CAL_BRACKET ticks apart (a few us at any rate a TSC
 * runs at): a thread preempted in between would put the two ends of the
 * calibration out of step by the preemption (tens of ms on a busy machine,
 * a rate off by as much, every reading after that off with it). false: no
 * such reading in a few tries. */
#define CAL_BRACKET 20000u
static bool tsc_pair(uint64_t *tsc, uint64_t *ns) {
  for (int i = 0; i < 8; i++) {
    uint64_t t1 = __rdtsc();
    uint64_t c = clock_mono_ns();
    uint64_t t2 = __rdtsc();
    if (t2 - t1 < CAL_BRACKET) {
      *tsc = t1 + (t2 - t1) / 2;
      *ns = c;
      return true;
    }
  }
  return false;
}

static void tsc_init(void) {
  unsigned a, b, c, d;
  /* CPUID 0x80000007 EDX bit 8: invariant TSC */
  if (!__get_cpuid(0x80000007, &a, &b, &c, &d) || !(d & (1u << 8)) || !tsc_clocksource()) return;
  tsc_usable = tsc_pair(&cal_tsc, &cal_ns);
}

/* Once CAL_NS has passed since tsc_init: the TSC rate, published. */
static void tsc_calibrate(uint64_t ns) {
  pthread_once(&tsc_once, tsc_init);
  /* (ns may predate cal_ns: read before tsc_init ran) */
  if (!tsc_usable || ns < cal_ns || ns - cal_ns < CAL_NS) return;
  uint64_t t_end, ns_end;
  if (!tsc_pair(&t_end, &ns_end)) return; /* a later reading tries again */
  uint64_t ticks = t_end - cal_tsc;
  if (ticks == 0 || ns_end <= cal_ns) return;
  uint64_t mult = (uint64_t)(((unsigned __int128)(ns_end - cal_ns) << 32) / ticks);
  if (mult == 0) return;
  atomic_store_explicit(&anchor_ticks, (uint64_t)(((unsigned __int128)ANCHOR_NS << 32) / mult),
                        memory_order_relaxed);
  /* release: anchor_ticks is visible to whoever sees mult */
  uint64_t none = 0;
  atomic_compare_exchange_strong_explicit(&tsc_mult, &none, mult, memory_order_release,
                                          memory_order_relaxed);
}

uint64_t bw__mono_ns(void) {
  uint64_t mult = atomic_load_explicit(&tsc_mult, memory_order_acquire);
  if (!mult) {
    uint64_t ns = clock_mono_ns();
    tsc_calibrate(ns);
    return ns;
  }
  uint64_t t = __rdtsc();
  uint64_t dt = t - tl_tsc; /* huge if the TSC went back (never anchored, another core) */
  uint64_t anchor = atomic_load_explicit(&anchor_ticks, memory_order_relaxed);
  uint64_t ns;
  if (tl_tsc && dt < anchor) {
    ns = tl_ns + (uint64_t)(((unsigned __int128)dt * mult) >> 32);
  } else {
    /* New anchor: a clock reading bracketed by two TSC readings close
     * together (a preemption in between would shift every reading until
     * the next anchor); without one, the reading only. */
    ns = clock_mono_ns();
    tl_tsc = 0;
    for (int i = 0; i < 3; i++) {
      uint64_t t1 = __rdtsc();
      uint64_t c = clock_mono_ns();
      uint64_t t2 = __rdtsc();
      if (t2 - t1 < anchor / 1000) { /* within 1 us */
        tl_tsc = t1 + (t2 - t1) / 2;
        ns = tl_ns = c;
        break;
      }
    }
  }
  if (ns < tl_last) ns = tl_last;
  tl_last = ns;
  return ns;
}

bool bw__mono_uses_tsc(void) { return atomic_load_explicit(&tsc_mult, memory_order_relaxed) != 0; }
#else
uint64_t bw__mono_ns(void) { return clock_mono_ns(); }
bool bw__mono_uses_tsc(void) { return false; }
#endif

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
