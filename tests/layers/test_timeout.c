/* Timeout layer on the paused clock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bulwark/timeout.h"
#include "h4_util.h"

static bw_service_t *timeout_stack(bw_service_t *inner, uint64_t ms, bw_layer_t **lout) {
  bw_timeout_opts_t o;
  bw_timeout_opts_init(&o);
  assert_int_equal(o.timeout_ms, 30000);
  o.timeout_ms = ms;
  bw_layer_t *l;
  assert_null(bw_timeout_new(&l, &o));
  assert_string_equal(bw_layer_kind(l), "timeout");
  bw_service_t *s;
  assert_null(bw_stack_build(&s, NULL, &l, 1, inner, NULL));
  if (lout) *lout = l;
  else bw_layer_release(l);
  return s;
}

static void run_one(bw_runtime_t *rt, bw_service_t *svc, h4_sleep_req_t *rq, h4_result_t *r,
                    h4_wait_t *w, int expect_done, uint64_t *start_ns) {
  bw_call_t *c;
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, rq, NULL);
  r->free_in_cb = true;
  r->wait = w;
  r->rt = rt;
  *start_ns = bw_runtime_now_ns(rt);
  assert_null(h4_submit(svc, c, h4_on_done, r));
  assert_int_equal(h4_wait_for(w, expect_done), expect_done);
}

static void test_timeout_fires(void **state) {
  bw_runtime_t *rt = h4_rt(true, 2);
  bw_service_t *sl = h4_sleeper();
  bw_layer_t *tl;
  bw_service_t *svc = timeout_stack(sl, 200, &tl);
  h4_events_t evs = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook;
  assert_null(bw_event_hook_add(&hook, NULL, tl, h4_record_event, &evs));
  h4_wait_t w;
  h4_wait_init(&w);
  atomic_store(&h4_sleep_cancels, 0);
  atomic_store(&h4_resp_freed, 0);

  h4_sleep_req_t slow = {.delay_ns = 5000000000ull};
  h4_result_t r = {0};
  uint64_t t0;
  run_one(rt, svc, &slow, &r, &w, 1, &t0);
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  assert_int_equal(r.at_ns - t0, 200000000ull); /* exactly at the timeout */
  char buf[256];
  bw_error_format(r.err, buf, sizeof buf, 0);
  assert_non_null(strstr(buf, "no response within 200 ms"));
  assert_int_equal(bw_error_detail(r.err), 200);
  bw_error_unref(r.err);
  assert_int_equal(atomic_load(&h4_sleep_cancels), 1); /* the attempt was cancelled */
  assert_int_equal(h4_count_events(&evs, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(evs.ev[0].delay_ns, 200000000ull);

  /* fast answer: success, no timeout event, and the timer does not fire later */
  h4_sleep_req_t fast = {.delay_ns = 10000000ull};
  h4_result_t r2 = {0};
  run_one(rt, svc, &fast, &r2, &w, 2, &t0);
  assert_int_equal(r2.kind, BW_ERR_NONE);
  assert_int_equal(r2.at_ns - t0, 10000000ull);
  assert_int_equal(h4_count_events(&evs, BW_EVENT_TIMEOUT), 1);

  /* a failing inner call passes its error through */
  h4_sleep_req_t bad = {.delay_ns = 1000000ull, .fail = BW_ERR_CONNECT};
  h4_result_t r3 = {0};
  run_one(rt, svc, &bad, &r3, &w, 3, &t0);
  assert_int_equal(r3.kind, BW_ERR_CONNECT);
  bw_error_unref(r3.err);

  bw_event_hook_remove(hook);
  bw_service_release(svc);
  bw_service_release(sl);
  bw_layer_release(tl);
  bw_runtime_free(rt);
  assert_int_equal(atomic_load(&h4_resp_freed), 1);
  h4_wait_fini(&w);
}

/* Deadline flows inward: the leaf sees min(parent, timeout). */
static bw_error_t *remaining_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  int64_t *v = malloc(sizeof *v);
  *v = bw_call_remaining_ns(call);
  *resp = v;
  *rf = free;
  return NULL;
}

static void test_deadline_inward(void **state) {
  bw_runtime_t *rt = h4_rt(true, 1);
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = remaining_sync;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &fo));
  bw_service_t *svc = timeout_stack(leaf, 300, NULL);
  h4_wait_t w;
  h4_wait_init(&w);
  h4_result_t r = {.wait = &w, .rt = rt};
  bw_call_t *c;
  assert_null(bw_call_new(&c, svc, rt));
  assert_null(h4_submit(svc, c, h4_on_done, &r));
  assert_int_equal(h4_wait_for(&w, 1), 1);
  assert_int_equal(*(int64_t *)r.resp, 300000000);
  bw_call_free(c);

  h4_result_t r2 = {.wait = &w, .rt = rt};
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_timeout_ms(c, 100);
  assert_null(h4_submit(svc, c, h4_on_done, &r2));
  assert_int_equal(h4_wait_for(&w, 2), 2);
  assert_int_equal(*(int64_t *)r2.resp, 100000000);
  bw_call_free(c);

  bw_service_release(svc);
  bw_service_release(leaf);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

/* A parent deadline shorter than the timeout arms the timer there. */
static void test_parent_deadline_shorter(void **state) {
  bw_runtime_t *rt = h4_rt(true, 2);
  bw_service_t *sl = h4_sleeper();
  bw_service_t *svc = timeout_stack(sl, 1000, NULL);
  h4_wait_t w;
  h4_wait_init(&w);
  h4_sleep_req_t slow = {.delay_ns = 5000000000ull};
  h4_result_t r = {.wait = &w, .rt = rt, .free_in_cb = true};
  bw_call_t *c;
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, &slow, NULL);
  bw_call_set_timeout_ms(c, 40);
  uint64_t t0 = bw_runtime_now_ns(rt);
  assert_null(h4_submit(svc, c, h4_on_done, &r));
  assert_int_equal(h4_wait_for(&w, 1), 1);
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  assert_int_equal(r.at_ns - t0, 40000000ull);
  char buf[256];
  bw_error_format(r.err, buf, sizeof buf, 0);
  assert_non_null(strstr(buf, "40 ms"));
  bw_error_unref(r.err);
  bw_service_release(svc);
  bw_service_release(sl);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

/* The caller cancels: the attempt is cancelled, one CANCELLED completion. */
static void test_cancel_through_timeout(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2) /* real clock: nothing may fire on its own */;
  bw_service_t *sl = h4_sleeper();
  bw_service_t *svc = timeout_stack(sl, 10000, NULL);
  h4_wait_t w;
  h4_wait_init(&w);
  atomic_store(&h4_sleep_cancels, 0);
  atomic_store(&h4_sleep_starts, 0);
  h4_sleep_req_t slow = {.delay_ns = 50000000000ull};
  h4_result_t r = {.wait = &w, .rt = rt};
  bw_call_t *c;
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, &slow, NULL);
  assert_null(h4_submit(svc, c, h4_on_done, &r));
  for (int i = 0; i < 100000 && atomic_load(&h4_sleep_starts) == 0; i++) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  bw_call_cancel(c);
  bw_call_cancel(c);
  assert_int_equal(h4_wait_for(&w, 1), 1);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  assert_int_equal(atomic_load(&r.completions), 1);
  bw_error_unref(r.err);
  bw_call_free(c);
  bw_runtime_free(rt); /* also proves no timer keeps anything alive */
  assert_int_equal(atomic_load(&h4_sleep_cancels), 1);
  assert_int_equal(atomic_load(&r.completions), 1);
  bw_service_release(svc);
  bw_service_release(sl);
  h4_wait_fini(&w);
}

static void test_bad_opts(void **state) {
  bw_timeout_opts_t o;
  bw_timeout_opts_init(&o);
  o.timeout_ms = 0;
  bw_layer_t *l = NULL;
  bw_error_t *e = bw_timeout_new(&l, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_null(bw_timeout_new(&l, NULL));
  bw_layer_release(l);
  o.timeout_ns = 1500;
  o.scope = BW_TIMEOUT_SCOPE_TOTAL;
  assert_null(bw_timeout_new(&l, &o));
  assert_int_equal(bw_layer_flags(l), BW_LAYER_TIMEOUT_TOTAL);
  bw_layer_release(l);
}

/* A huge timeout is a long one. Before the fix timeout_ms * 1e6 wrapped
 * (UINT64_MAX / 1e6 + 1 ms gave 448384 ns) and so did now + the timeout
 * (timeout_ns UINT64_MAX, or timeout_ms UINT64_MAX: a deadline in the
 * past): each timed out a 10 ms call at once. */
static void test_huge_timeout(void **state) {
  bw_runtime_t *rt = h4_rt(true, 2);
  bw_service_t *sl = h4_sleeper();
  h4_wait_t w;
  h4_wait_init(&w);
  h4_sleep_req_t rq = {.delay_ns = 10000000ull};
  for (int i = 0; i < 3; i++) {
    bw_timeout_opts_t o;
    bw_timeout_opts_init(&o);
    if (i == 0) o.timeout_ms = UINT64_MAX / 1000000 + 1;
    else if (i == 1) o.timeout_ms = UINT64_MAX;
    else o.timeout_ns = UINT64_MAX;
    bw_layer_t *l;
    assert_null(bw_timeout_new(&l, &o));
    bw_service_t *svc;
    assert_null(bw_stack_build(&svc, NULL, &l, 1, sl, NULL));
    h4_result_t r = {0};
    uint64_t t0;
    run_one(rt, svc, &rq, &r, &w, i + 1, &t0);
    assert_int_equal(r.kind, BW_ERR_NONE);
    assert_int_equal(r.at_ns - t0, 10000000ull);
    bw_service_release(svc);
    bw_layer_release(l);
  }
  bw_service_release(sl);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_timeout_fires),
      cmocka_unit_test(test_deadline_inward),
      cmocka_unit_test(test_parent_deadline_shorter),
      cmocka_unit_test(test_cancel_through_timeout),
      cmocka_unit_test(test_bad_opts),
      cmocka_unit_test(test_huge_timeout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
