/* Helpers shared by the runtime tests; see rt_helpers.h.
 *
 * Design: the allocators are process-wide (bw_set_allocator), so their
 * counters are plain seq_cst atomics read by the test thread after the
 * workers that allocate have been joined or shut down. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "bulwark/alloc.h"
#include "rt_helpers.h"

double rh_scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void rh_spin_ms(unsigned ms) {
  for (uint64_t end = mono_ms() + ms; mono_ms() < end;) {
  }
}

int rh_scaled(int n) {
  int r = (int)(n * rh_scale());
  return r < 10 ? 10 : r;
}

void rh_counter_init(rh_counter_t *c) {
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->value = 0;
}

void rh_counter_destroy(rh_counter_t *c) {
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
}

void rh_counter_add(rh_counter_t *c, long d) {
  pthread_mutex_lock(&c->mu);
  c->value += d;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

long rh_counter_get(rh_counter_t *c) {
  pthread_mutex_lock(&c->mu);
  long v = c->value;
  pthread_mutex_unlock(&c->mu);
  return v;
}

bool rh_counter_wait(rh_counter_t *c, long want) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += RH_WAIT_MS / 1000;
  pthread_mutex_lock(&c->mu);
  int rc = 0;
  while (c->value < want && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  bool ok = c->value >= want;
  pthread_mutex_unlock(&c->mu);
  return ok;
}

/* ---- counting allocator ------------------------------------------------ */
atomic_long rh_live, rh_total;
atomic_int rh_fail_all;

static void *c_malloc(size_t n) {
  if (atomic_load(&rh_fail_all)) return NULL;
  atomic_fetch_add(&rh_live, 1);
  atomic_fetch_add(&rh_total, 1);
  return malloc(n);
}
static void *c_calloc(size_t k, size_t n) {
  if (atomic_load(&rh_fail_all)) return NULL;
  atomic_fetch_add(&rh_live, 1);
  atomic_fetch_add(&rh_total, 1);
  return calloc(k, n);
}
static void *c_realloc(void *p, size_t n) {
  if (atomic_load(&rh_fail_all)) return NULL;
  if (!p) {
    atomic_fetch_add(&rh_live, 1);
    atomic_fetch_add(&rh_total, 1);
  }
  return realloc(p, n);
}
static void c_free(void *p) {
  if (p) atomic_fetch_sub(&rh_live, 1);
  free(p);
}

int rh_count_setup(void **state) {
  (void)state;
  atomic_store(&rh_live, 0);
  atomic_store(&rh_total, 0);
  atomic_store(&rh_fail_all, 0);
  bw_allocator_t a = {c_malloc, c_calloc, c_realloc, c_free};
  assert_null(bw_set_allocator(&a));
  return 0;
}

int rh_count_teardown(void **state) {
  (void)state;
  long l = atomic_load(&rh_live);
  assert_null(bw_set_allocator(NULL));
  assert_int_equal(l, 0); /* nothing leaked */
  return 0;
}

bw_runtime_t *rh_runtime(unsigned workers) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

bw_runtime_t *rh_rt;

int rh_rt_setup(void **state) {
  rh_count_setup(state);
  rh_rt = rh_runtime(2);
  return 0;
}

int rh_rt_teardown(void **state) {
  bw_runtime_free(rh_rt);
  rh_rt = NULL;
  return rh_count_teardown(state);
}

/* ---- failing allocator ------------------------------------------------- */
static atomic_long alloc_budget = -1; /* < 0: unlimited */

static bool take_budget(void) {
  long b = atomic_load(&alloc_budget);
  while (b >= 0) {
    if (b == 0) return false;
    if (atomic_compare_exchange_weak(&alloc_budget, &b, b - 1)) return true;
  }
  return true;
}
static void *f_malloc(size_t n) { return take_budget() ? malloc(n) : NULL; }
static void *f_calloc(size_t c, size_t n) { return take_budget() ? calloc(c, n) : NULL; }
static void *f_realloc(void *p, size_t n) { return take_budget() ? realloc(p, n) : NULL; }

void rh_use_failing_allocator(long budget) {
  static const bw_allocator_t a = {f_malloc, f_calloc, f_realloc, free};
  atomic_store(&alloc_budget, budget);
  assert_null(bw_set_allocator(&a));
}

void rh_restore_allocator(void) {
  assert_null(bw_set_allocator(NULL));
  atomic_store(&alloc_budget, -1);
}
