/* Exactly once: timeout vs response in the same tick, cancel storms,
 * shutdown mid-call. Count completions; they must equal calls. */
#include <sched.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bulwark/retry.h"
#include "bulwark/timeout.h"
#include "h4_util.h"

typedef struct counted {
  atomic_int n;
  bw_error_kind_t kind;
} counted_t;

static atomic_int total;
static h4_wait_t g_wait;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  counted_t *c = arg;
  c->kind = bw_error_kind(err);
  atomic_fetch_add(&c->n, 1);
  atomic_fetch_add(&total, 1);
  h4_wait_post(&g_wait);
}

static bw_layer_t *mk_timeout(uint64_t ms) {
  bw_timeout_opts_t o;
  bw_timeout_opts_init(&o);
  o.timeout_ms = ms;
  bw_layer_t *l;
  assert_null(bw_timeout_new(&l, &o));
  return l;
}

static bw_layer_t *mk_retry(uint32_t attempts, uint64_t base_ms) {
  bw_retry_opts_t o;
  bw_retry_opts_init(&o);
  o.max_attempts = attempts;
  o.backoff.kind = BW_BACKOFF_CONSTANT;
  o.backoff.base_ns = base_ms * 1000000ull;
  o.backoff.jitter = BW_JITTER_NONE;
  bw_layer_t *l;
  assert_null(bw_retry_new(&l, &o));
  return l;
}

/* Timeout and response land on the same tick of the paused clock. */
static void test_same_tick(void **state) {
  int n = h4_scaled(400);
  bw_runtime_t *rt = h4_rt(true, 2);
  bw_service_t *sl = h4_sleeper();
  bw_layer_t *t = mk_timeout(200);
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, "same_tick", &t, 1, sl, NULL));
  h4_wait_init(&g_wait);
  atomic_store(&total, 0);
  atomic_store(&h4_resp_freed, 0);
  h4_sleep_req_t rq = {.delay_ns = 200000000ull};
  counted_t *cs = calloc((size_t)n, sizeof *cs);
  bw_call_t **calls = calloc((size_t)n, sizeof *calls);
  for (int i = 0; i < n; i++) {
    assert_null(bw_call_new(&calls[i], svc, rt));
    bw_call_set_request(calls[i], &rq, NULL);
    assert_null(h4_submit(svc, calls[i], on_done, &cs[i]));
  }
  assert_int_equal(h4_wait_for(&g_wait, n), n);
  int ok = 0, to = 0;
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&cs[i].n), 1);
    if (cs[i].kind == BW_ERR_NONE) ok++;
    else if (cs[i].kind == BW_ERR_TIMEOUT) to++;
    bw_call_free(calls[i]);
  }
  assert_int_equal(ok + to, n);
  bw_runtime_free(rt);
  assert_int_equal(atomic_load(&total), n);
  /* delivered responses were freed by bw_call_free (late ones with their
   * abandoned attempt; ASan/valgrind check those) */
  assert_true(atomic_load(&h4_resp_freed) >= ok);
  print_message("same tick: %d responses, %d timeouts\n", ok, to);
  free(cs);
  free(calls);
  bw_service_release(svc);
  bw_service_release(sl);
  bw_layer_release(t);
  h4_wait_fini(&g_wait);
}

/* Many threads cancel every call (twice each) while the calls complete. */
typedef struct storm {
  bw_call_t **calls;
  int n;
} storm_t;

static void *canceller(void *arg) {
  storm_t *s = arg;
  for (int round = 0; round < 2; round++)
    for (int i = 0; i < s->n; i++) bw_call_cancel(s->calls[i]);
  return NULL;
}

static void test_cancel_storm(void **state) {
  int n = h4_scaled(2000);
  bw_runtime_t *rt = h4_rt(false, 2);
  bw_service_t *sl = h4_sleeper();
  bw_layer_t *ls[2] = {mk_retry(3, 1), mk_timeout(5)};
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, NULL, ls, 2, sl, NULL));
  h4_wait_init(&g_wait);
  atomic_store(&total, 0);
  h4_sleep_req_t rqs[3] = {{.delay_ns = 0}, {.delay_ns = 1000000ull}, {.delay_ns = 8000000ull}};
  counted_t *cs = calloc((size_t)n, sizeof *cs);
  bw_call_t **calls = calloc((size_t)n, sizeof *calls);
  for (int i = 0; i < n; i++) {
    assert_null(bw_call_new(&calls[i], svc, rt));
    bw_call_set_request(calls[i], &rqs[i % 3], NULL);
  }
  storm_t s = {calls, n};
  pthread_t th[3];
  for (int i = 0; i < n; i++) assert_null(h4_submit(svc, calls[i], on_done, &cs[i]));
  for (int i = 0; i < 3; i++) pthread_create(&th[i], NULL, canceller, &s);
  for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
  assert_int_equal(h4_wait_for(&g_wait, n), n);
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&cs[i].n), 1);
    assert_true(cs[i].kind == BW_ERR_NONE || cs[i].kind == BW_ERR_CANCELLED ||
                cs[i].kind == BW_ERR_TIMEOUT || cs[i].kind == BW_ERR_RETRIES_EXHAUSTED);
    bw_call_free(calls[i]);
  }
  bw_runtime_free(rt);
  assert_int_equal(atomic_load(&total), n);
  free(cs);
  free(calls);
  bw_service_release(svc);
  bw_service_release(sl);
  bw_layer_release(ls[0]);
  bw_layer_release(ls[1]);
  h4_wait_fini(&g_wait);
}

/* Cancels racing their call's start: the test thread submits calls that
 * never answer (so only the cancel ends them) from outside the runtime,
 * which moves each start to a worker, while another thread cancels each
 * call as soon as it is submitted; every fourth call is cancelled before
 * it is submitted at all. A cancel lost between the start's state store
 * and its read of the cancel flag would leave a call hanging for an hour:
 * every call must end once, cancelled. Through a stack too (a forwarded
 * call, marked while it starts). Run again with BULWARK_NO_MEMBARRIER=1
 * (tests/CMakeLists.txt): both orderings of set_running. */
typedef struct race {
  bw_call_t **calls;
  int n;
  atomic_int published;
} race_t;

static void *race_canceller(void *arg) {
  race_t *r = arg;
  for (int i = 0; i < r->n; i++) {
    while (atomic_load(&r->published) <= i) sched_yield();
    if (i % 4) bw_call_cancel(r->calls[i]);
  }
  return NULL;
}

static void cancel_races_start(bw_service_t *svc, int n) {
  bw_runtime_t *rt = h4_rt(false, 2);
  h4_wait_init(&g_wait);
  atomic_store(&total, 0);
  h4_sleep_req_t hang = {.delay_ns = 3600ull * 1000000000ull};
  counted_t *cs = calloc((size_t)n, sizeof *cs);
  race_t r = {calloc((size_t)n, sizeof(bw_call_t *)), n, 0};
  for (int i = 0; i < n; i++) {
    assert_null(bw_call_new(&r.calls[i], svc, rt));
    bw_call_set_request(r.calls[i], &hang, NULL);
  }
  pthread_t th;
  pthread_create(&th, NULL, race_canceller, &r);
  for (int i = 0; i < n; i++) {
    if (i % 4 == 0) bw_call_cancel(r.calls[i]); /* not started yet */
    assert_null(h4_submit(svc, r.calls[i], on_done, &cs[i]));
    atomic_store(&r.published, i + 1);
  }
  pthread_join(th, NULL);
  assert_int_equal(h4_wait_for(&g_wait, n), n);
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&cs[i].n), 1);
    assert_int_equal(cs[i].kind, BW_ERR_CANCELLED);
    bw_call_free(r.calls[i]);
  }
  bw_runtime_free(rt);
  assert_int_equal(atomic_load(&total), n);
  free(cs);
  free(r.calls);
  h4_wait_fini(&g_wait);
}

static void test_cancel_races_start(void **state) {
  int n = h4_scaled(2000);
  bw_service_t *sl = h4_sleeper();
  cancel_races_start(sl, n);
  bw_layer_t *t = mk_timeout(3600 * 1000);
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, NULL, &t, 1, sl, NULL));
  cancel_races_start(svc, n);
  bw_service_release(svc);
  bw_service_release(sl);
  bw_layer_release(t);
}

/* The runtime shuts down while calls wait on timers: in the leaf, in the
 * timeout, in retry backoff. Each completes once with runtime_shutdown. */
static void test_shutdown_mid_call(void **state) {
  int n = h4_scaled(300);
  bw_runtime_t *rt = h4_rt(false, 2);
  bw_service_t *sl = h4_sleeper();
  bw_layer_t *ls[2] = {mk_retry(5, 3600 * 1000), mk_timeout(3600 * 1000)};
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, NULL, ls, 2, sl, NULL));
  h4_wait_init(&g_wait);
  atomic_store(&total, 0);
  atomic_store(&h4_sleep_starts, 0);
  h4_sleep_req_t hang = {.delay_ns = 3600ull * 1000000000ull};
  h4_sleep_req_t fail = {.delay_ns = 0, .fail = BW_ERR_CONNECT}; /* then 1 h of backoff */
  counted_t *cs = calloc((size_t)n, sizeof *cs);
  bw_call_t **calls = calloc((size_t)n, sizeof *calls);
  for (int i = 0; i < n; i++) {
    assert_null(bw_call_new(&calls[i], svc, rt));
    bw_call_set_request(calls[i], i % 2 ? &hang : &fail, NULL);
    assert_null(h4_submit(svc, calls[i], on_done, &cs[i]));
  }
  for (int i = 0; i < 200000 && atomic_load(&h4_sleep_starts) < n; i++) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(atomic_load(&h4_sleep_starts), n);
  assert_int_equal(atomic_load(&total), 0);
  bw_runtime_free(rt);
  assert_int_equal(atomic_load(&total), n);
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&cs[i].n), 1);
    assert_int_equal(cs[i].kind, BW_ERR_RUNTIME_SHUTDOWN);
    bw_call_free(calls[i]);
  }
  free(cs);
  free(calls);
  bw_service_release(svc);
  bw_service_release(sl);
  bw_layer_release(ls[0]);
  bw_layer_release(ls[1]);
  h4_wait_fini(&g_wait);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_tick),
      cmocka_unit_test(test_cancel_storm),
      cmocka_unit_test(test_cancel_races_start),
      cmocka_unit_test(test_shutdown_mid_call),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
