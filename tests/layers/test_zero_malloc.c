/* No malloc per call in steady state: 100,000 calls through the full stack
 * (fallback, total timeout, retry, circuit breaker, rate limit, bulkhead,
 * per-attempt timeout) counted by a replacement allocator. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bulwark/alloc.h"
#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/rate_limit.h"
#include "bulwark/retry.h"
#include "bulwark/timeout.h"
#include "h4_util.h"

static atomic_long n_alloc;
static void *c_malloc(size_t n) {
  atomic_fetch_add_explicit(&n_alloc, 1, memory_order_relaxed);
  return malloc(n);
}
static void *c_calloc(size_t a, size_t b) {
  atomic_fetch_add_explicit(&n_alloc, 1, memory_order_relaxed);
  return calloc(a, b);
}
static void *c_realloc(void *p, size_t n) {
  atomic_fetch_add_explicit(&n_alloc, 1, memory_order_relaxed);
  return realloc(p, n);
}

static int static_resp = 7;
static bw_error_t *ok_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  *resp = &static_resp; /* the user's response needs no allocation either */
  *rf = NULL;
  return NULL;
}

typedef struct chain {
  bw_service_t *svc;
  bw_runtime_t *rt;
  atomic_int *left;
  int steady_at;         /* left at which the steady state starts */
  atomic_long *steady;   /* the allocation count then */
  h4_wait_t *w;
  long ok;
} chain_t;

static void next(chain_t *ch);
static void chain_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  chain_t *ch = arg;
  if (!err && bw_call_response(call) == &static_resp) ch->ok++;
  bw_call_free(call);
  next(ch);
}
static void next(chain_t *ch) {
  int left = atomic_fetch_sub(ch->left, 1);
  if (left <= 0) {
    h4_wait_post(ch->w);
    return;
  }
  if (left == ch->steady_at) atomic_store(ch->steady, atomic_load(&n_alloc));
  bw_call_t *c;
  assert_null(bw_call_new(&c, ch->svc, ch->rt));
  assert_null(bw_service_call(ch->svc, c, chain_done, ch));
}

enum { CHAINS = 16 };
typedef struct starter {
  chain_t *ch;
  long before;
} starter_t;
/* Runs on a worker: snapshot the counter, then start every chain (so the
 * runtime's cost of reaching a worker from this thread is not counted). */
static void start_chains(void *arg) {
  starter_t *s = arg;
  s->before = atomic_load(&n_alloc);
  for (int i = 0; i < CHAINS; i++) next(&s->ch[i]);
}
/* Runs n calls in CHAINS chains; returns the allocation count before them,
 * and in *steady the count once the first tenth of them had started (the
 * chains' start burst is over: steady state). */
static long run_calls(bw_service_t *svc, bw_runtime_t *rt, int n, h4_wait_t *w, long *ok,
                      long *steady) {
  atomic_int left = n;
  atomic_long steady_count = 0;
  chain_t ch[CHAINS];
  int base = w->done;
  for (int i = 0; i < CHAINS; i++) ch[i] = (chain_t){svc, rt, &left, n - n / 10, &steady_count, w, 0};
  starter_t st = {ch, 0};
  h4_on_worker(rt, start_chains, &st);
  assert_int_equal(h4_wait_for(w, base + CHAINS), base + CHAINS);
  long s = 0;
  for (int i = 0; i < CHAINS; i++) s += ch[i].ok;
  *ok = s;
  if (steady) *steady = atomic_load(&steady_count);
  return st.before;
}

static void test_zero_malloc(void **state) {
  bw_allocator_t a = {c_malloc, c_calloc, c_realloc, free};
  assert_null(bw_set_allocator(&a));

  bw_runtime_t *rt = h4_rt(false, 2);
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = ok_sync;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &fo));

  bw_layer_t *l[7];
  bw_fallback_opts_t fbo;
  bw_fallback_opts_init(&fbo);
  fbo.kind = BW_FALLBACK_VALUE;
  fbo.value = "x";
  fbo.value_len = 1;
  assert_null(bw_fallback_new(&l[0], &fbo));
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 10000;
  to.scope = BW_TIMEOUT_SCOPE_TOTAL;
  assert_null(bw_timeout_new(&l[1], &to));
  bw_retry_budget_t *budget;
  assert_null(bw_retry_budget_new(&budget, NULL));
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.budget = budget;
  assert_null(bw_retry_new(&l[2], &ro));
  bw_retry_budget_release(budget);
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  assert_null(bw_circuit_breaker_new(&l[3], &bo));
  bw_rate_limit_opts_t rlo;
  bw_rate_limit_opts_init(&rlo);
  rlo.rate_per_sec = 1e9;
  rlo.burst = 1000000;
  assert_null(bw_rate_limit_new(&l[4], &rlo));
  bw_bulkhead_opts_t bho;
  bw_bulkhead_opts_init(&bho);
  bho.max_concurrent = 1024;
  assert_null(bw_bulkhead_new(&l[5], &bho));
  to.timeout_ms = 1000;
  to.scope = BW_TIMEOUT_SCOPE_PER_ATTEMPT;
  assert_null(bw_timeout_new(&l[6], &to));
  bw_stack_warnings_t warn;
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, "zero_malloc", l, 7, leaf, &warn));
  assert_int_equal(warn.count, 0);

  h4_wait_t w;
  h4_wait_init(&w);
  long ok;
  int warm = getenv("H4_ZM_WARM") ? atoi(getenv("H4_ZM_WARM")) : h4_scaled(50000);
  run_calls(svc, rt, warm, &w, &ok, NULL); /* warm the pools to their peak in-flight size */
  assert_int_equal(ok, warm);
  int n = getenv("H4_ZM_N") ? atoi(getenv("H4_ZM_N")) : h4_scaled(100000);
  long steady;
  long before = run_calls(svc, rt, n, &w, &ok, &steady);
  long after = atomic_load(&n_alloc);
  assert_int_equal(ok, n);
  print_message("allocations during %d calls: %ld (%ld after the first tenth)\n", n, after - before,
                after - steady);
  /* Pools (ours and the runtime's deferred-task cache) only grow to the
   * high-water mark of calls in flight plus small per-thread caches (at most
   * 4 calls per pool and thread, overflow goes back to the shared list), and
   * scheduling noise can still raise that mark by one now and then (three
   * allocations for a timeout node: call, timer): a handful per run, not
   * growing with n (measured: 1-27 per 100,000; 3-9 per 1,000,000 calls). */
  /* After the chains' start burst (which can catch objects in the other
   * worker's cache) it is 0 on an idle machine (1,000,000 calls: 9-12 in
   * all, all in the first tenth); a worker preempted while holding cached
   * objects (tests running in parallel) can still cost a few (2-6 seen). */
  assert_true(after - before <= 64);
  assert_int_equal(bw_stack_outcome_count(svc, BW_ERR_NONE), (uint64_t)n + (uint64_t)warm);

  bw_service_release(svc);
  for (int i = 0; i < 7; i++) bw_layer_release(l[i]);
  bw_service_release(leaf);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
  assert_null(bw_set_allocator(NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_zero_malloc)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
