/* Rate limit layer: reject mode with the retry-after hint, waiting in
 * arrival order on the paused clock, max wait, deadline awareness (also
 * through a real timeout layer), cancellation giving the token back, and
 * many calls on two workers. */
#include <math.h>
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "support/layer_harness.h"


#include "bulwark/alloc.h"
#include "bulwark/rate_limit.h"

/* f->layer is the rate limiter. */
static lh_fx_t *rfx_new(bool paused, double rate, uint64_t burst, bw_rate_limit_mode_t mode,
                        uint64_t max_wait_ms) {
  lh_fx_t *f = lh_fx_new(paused, false);
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  o.name = "rl";
  o.rate_per_sec = rate;
  o.burst = burst;
  o.mode = mode;
  o.max_wait_ms = max_wait_ms;
  bw_layer_t *rl = NULL;
  assert_null(bw_rate_limit_new(&rl, &o));
  lh_fx_stack(f, rl, true);
  return f;
}

static void test_options(void **state) {
  (void)state;
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  assert_int_equal(o.mode, BW_RATE_LIMIT_WAIT);
  assert_int_equal(o.max_wait_ms, 5000);
  assert_int_equal(o.tokens_per_call, 1);
  bw_layer_t *l = NULL;
  lh_expect_error(bw_rate_limit_new(&l, &o), BW_ERR_INVALID_ARGUMENT); /* rate not set */
  o.rate_per_sec = 10;
  o.burst = 2;
  o.tokens_per_call = 3;
  lh_expect_error(bw_rate_limit_new(&l, &o), BW_ERR_INVALID_ARGUMENT);
  assert_null(l);
  o.tokens_per_call = 1;
  o.burst = 0; /* one second's worth */
  assert_null(bw_rate_limit_new(&l, &o));
  assert_true(bw_rate_limit_tokens(l, NULL) == 10.0);
  bw_layer_release(l);
}

/* Rates past 1e9/s, infinite or NaN are refused (before any conversion). */
static void test_rate_out_of_range(void **state) {
  (void)state;
  const double bad[] = {1e30, INFINITY, NAN, -1, 1.5e9};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    bw_rate_limit_opts_t o;
    bw_rate_limit_opts_init(&o);
    o.rate_per_sec = bad[i];
    bw_layer_t *l = NULL;
    lh_expect_error(bw_rate_limit_new(&l, &o), BW_ERR_INVALID_ARGUMENT);
    assert_null(l);
  }
}

/* A token costs whole nanoseconds rounded up: 7e8/s is 2 ns a token (never
 * the 1 ns of 1e9/s), while 1e9/3 per second stays 3 ns (no float noise). */
static void test_interval_rounds_up(void **state) {
  (void)state;
  const double rate[] = {7e8, 1e9 / 3};
  const uint64_t interval[] = {2, 3};
  for (int i = 0; i < 2; i++) {
    lh_fx_t *f = rfx_new(true, rate[i], 1, BW_RATE_LIMIT_REJECT, 0);
    lh_res_t r;
    assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
    assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_RATE_LIMITED);
    assert_int_equal(lh_count_events(&f->ev, BW_EVENT_REJECTED), 1);
    assert_int_equal(f->ev.ev[0].delay_ns, interval[i]);
    lh_fx_free(f);
  }
}

static void test_reject_mode_hint(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(true, 10, 2, BW_RATE_LIMIT_REJECT, 0);
  lh_res_t r;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_RATE_LIMITED);
  assert_int_equal(r.retry_after_ms, 100);
  assert_null(bw_runtime_advance(f->rt, 30));
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_RATE_LIMITED);
  assert_int_equal(r.retry_after_ms, 70);
  assert_null(bw_runtime_advance(f->rt, 70));
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(atomic_load(&f->be->calls), 3);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_REJECTED), 2);
  assert_string_equal(f->ev.ev[0].reason, "rate_limited");
  assert_int_equal(f->ev.ev[0].delay_ns, 100 * MS_);
  lh_assert_metric("bulwark_rate_limit_tokens{rate_limit=\"rl\"}");
  lh_fx_free(f);
}

/* Waiters are served one token interval apart, first come first served. */
static void test_wait_mode_fifo(void **state) {
  (void)state;
  enum { N = 6 };
  lh_fx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_WAIT, 5000);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_res_t r[N];
  lh_start_batch(r, N, f->svc, f->rt, 0);
  for (int i = 0; i < N; i++) {
    lh_wait(&r[i]);
    assert_int_equal(r[i].kind, BW_ERR_NONE);
    /* In arrival order, one token interval apart; the backend saw them in
     * that order too. */
    assert_int_equal(r[i].at_ns - t0, (uint64_t)i * 100 * MS_);
    assert_int_equal(r[i].resp, i);
  }
  for (int i = 0; i < N; i++) lh_free(&r[i]);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_REJECTED), 0);
  lh_fx_free(f);
}

static void test_max_wait_and_deadline(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_WAIT, 250);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_res_t a, b, c;
  lh_start(&a, f->svc, f->rt, 0);
  lh_wait(&a); /* token at once */
  lh_start(&b, f->svc, f->rt, 0);
  lh_wait(&b); /* +100 */
  assert_int_equal(b.at_ns - t0, 100 * MS_);
  /* Bucket: next slot at t0+200, now t0+100: 100 ms wait. A call whose
   * deadline is 50 ms away is refused at once, not after waiting. */
  uint64_t t1 = bw_runtime_now_ns(f->rt);
  lh_start(&c, f->svc, f->rt, 50);
  lh_wait(&c);
  assert_int_equal(c.kind, BW_ERR_RATE_LIMITED);
  assert_int_equal(c.at_ns, t1);
  assert_int_equal(c.retry_after_ms, 100);
  /* Reserve two more slots (+200, +300), then one that would need 300 ms
   * of waiting > max wait 250: refused at once with the hint. */
  lh_res_t w[3];
  lh_start_batch(w, 3, f->svc, f->rt, 0);
  lh_wait(&w[2]);
  assert_int_equal(w[2].kind, BW_ERR_RATE_LIMITED);
  assert_int_equal(w[2].retry_after_ms, 300);
  assert_int_equal(w[2].at_ns, t1);
  lh_wait(&w[0]);
  lh_wait(&w[1]);
  assert_int_equal(w[0].kind, BW_ERR_NONE);
  assert_int_equal(w[1].kind, BW_ERR_NONE);
  assert_int_equal(w[0].at_ns - t0, 200 * MS_);
  assert_int_equal(w[1].at_ns - t0, 300 * MS_);
  lh_free(&a);
  lh_free(&b);
  lh_free(&c);
  for (int i = 0; i < 3; i++) lh_free(&w[i]);
  lh_fx_free(f);
}

/* Through a real timeout layer: its deadline reaches the limiter. */
static void test_deadline_from_timeout_layer(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_WAIT, 5000);
  bw_service_t *svc = lh_fx_timeout(f, 50);
  lh_res_t r;
  assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_NONE);
  uint64_t t1 = bw_runtime_now_ns(f->rt);
  assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_RATE_LIMITED);
  assert_int_equal(r.at_ns, t1);
  lh_fx_free(f);
}

/* A waiting call that is cancelled gives its token back (real clock, one
 * token per 10 s, so nothing fires during the test). */
static void test_cancel_waiter_refunds(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(false, 0.1, 1, BW_RATE_LIMIT_WAIT, 60000);
  lh_res_t a, b;
  assert_int_equal(lh_call(f->svc, f->rt, &a), BW_ERR_NONE);
  lh_start(&b, f->svc, f->rt, 0);
  LH_UNTIL(bw_rate_limit_tokens(f->layer, NULL) < -0.5); /* b reserved the next token */
  assert_true(bw_rate_limit_tokens(f->layer, NULL) < -0.5);
  bw_call_cancel(b.call);
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_CANCELLED);
  double t = bw_rate_limit_tokens(f->layer, NULL);
  assert_true(t > -0.5 && t < 0.5);
  assert_int_equal(atomic_load(&f->be->calls), 1);
  lh_free(&b);
  lh_fx_free(f); /* the cancelled timer leaves nothing behind */
}

static void test_many_calls_two_workers(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(false, 1e8, 1000000, BW_RATE_LIMIT_REJECT, 0);
  int n = lh_scaled(20000);
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) lh_start(&r[i], f->svc, f->rt, 0);
  assert_int_equal(lh_wait_tally(r, n).n[BW_ERR_NONE], n);
  assert_int_equal(atomic_load(&f->be->calls), n);
  free(r);
  lh_fx_free(f);
}

/* Cancel storm on the real clock: waiting calls cancelled by another thread
 * while their timers fire. Each call completes once; cancelled waiters'
 * tokens come back, so no reservation is left over at the end. */
static void test_cancel_storm(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(false, 4000, 1, BW_RATE_LIMIT_WAIT, 10000);
  int n = lh_scaled(600);
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) lh_start(&r[i], f->svc, f->rt, 0);
  lh_storm_t s;
  lh_storm_start(&s, r, n, false);
  lh_storm_join(&s);
  assert_int_equal(lh_wait_done(r, n, n), n);
  lh_tally_t t = lh_wait_tally(r, n);
  int ok = t.n[BW_ERR_NONE], cancelled = t.n[BW_ERR_CANCELLED];
  assert_int_equal(ok + cancelled, n);
  /* every success reached the backend once; a cancel may still win after
   * its call got there (it then completes CANCELLED), never before */
  int reached = atomic_load(&f->be->calls);
  assert_true(reached >= ok && reached <= n);
  assert_true(bw_rate_limit_tokens(f->layer, NULL) > -1.5);
  free(r);
  lh_fx_free(f);
}

/* Counting allocator: rejections in a burst that share one retry-after hint
 * allocate nothing (the error is shared, calls are pooled). Calls are chained
 * from completion callbacks, so every call starts on a worker (as in a
 * server), not deferred from this thread. */
static void test_rejections_do_not_allocate(void **state) {
  (void)state;
  lh_fx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_REJECT, 0);
  lh_res_t r;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  lh_assert_rejections_do_not_allocate(f->svc, f->rt, BW_ERR_RATE_LIMITED, 100);
  lh_fx_free(f);
}

/* A late answer to an attempt that waited for its token (so went through
 * a child) arrives after an outer retry resumed the call at its own depth:
 * the child's callback must find the rate limit's state, not retry's (it
 * used to take bw_call_state(call), retry's by then, and spin on retry's
 * memory as if it were the child slot's lock). As test_bulkhead's
 * test_layer_child_answer_after_retry_resumed. */
static void test_child_answer_after_retry_resumed(void **state) {
  (void)state;
  lh_resume_t *f = lh_resume_new();
  bw_rate_limit_opts_t ro;
  bw_rate_limit_opts_init(&ro);
  ro.rate_per_sec = 1;
  ro.burst = 1;
  ro.mode = BW_RATE_LIMIT_WAIT;
  bw_layer_t *rl;
  assert_null(bw_rate_limit_new(&rl, &ro));
  lh_resume_build(f, 2000, rl, NULL);
  bw_service_t *plain = lh_stack(&rl, 1, f->backend);

  lh_res_t a, b;
  lh_start(&a, plain, f->rt, 0); /* takes the one token */
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_wait(&a);
  lh_start(&b, f->svc, f->rt, 0); /* attempt 1 waits 1 s for a token */
  LH_UNTIL(bw_rate_limit_tokens(rl, NULL) < -0.5); /* (its start runs on the worker) */
  assert_null(bw_runtime_advance(f->rt, 1000));
  assert_int_equal(lh_wait_pending(f->be, 1), 1); /* started through a child */
  assert_null(bw_runtime_advance(f->rt, 1000)); /* the timeout; attempt 2 has its token */
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_NONE);
  assert_int_equal(b.resp, 2); /* attempt 2 answered */
  LH_UNTIL(atomic_load(&f->la.freed) == 1); /* attempt 1's answer, freed with its child */
  assert_int_equal(atomic_load(&f->la.freed), 1);
  assert_int_equal(atomic_load(&f->be->calls), 3);
  lh_free(&a);
  lh_free(&b);
  bw_service_release(plain);
  lh_resume_free(f);
}

/* The layer's name is escaped in its gauge's labels (quotes, backslashes
 * and line feeds broke the exposition; long names lost the closing quote). */
static void test_name_escaped_in_metrics(void **state) {
  (void)state;
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  char name[300];
  snprintf(name, sizeof name, "a\"b\\c\nd%0200d", 7);
  o.name = name;
  o.rate_per_sec = 10;
  o.burst = 5;
  bw_layer_t *rl = NULL;
  assert_null(bw_rate_limit_new(&rl, &o));
  char want[400];
  snprintf(want, sizeof want, "bulwark_rate_limit_tokens{rate_limit=\"a\\\"b\\\\c\\nd%0200d\"} 5\n", 7);
  lh_assert_metric(want);
  bw_layer_release(rl);
}

int main(void) {
  if (lh_count_allocs_install() != 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rejections_do_not_allocate),
      cmocka_unit_test(test_options),
      cmocka_unit_test(test_rate_out_of_range),
      cmocka_unit_test(test_interval_rounds_up),
      cmocka_unit_test(test_reject_mode_hint),
      cmocka_unit_test(test_wait_mode_fifo),
      cmocka_unit_test(test_max_wait_and_deadline),
      cmocka_unit_test(test_deadline_from_timeout_layer),
      cmocka_unit_test(test_cancel_waiter_refunds),
      cmocka_unit_test(test_many_calls_two_workers),
      cmocka_unit_test(test_cancel_storm),
      cmocka_unit_test(test_child_answer_after_retry_resumed),
      cmocka_unit_test(test_name_escaped_in_metrics),
  };
  return cmocka_run_group_tests_name("rate_limit", tests, NULL, NULL);
}
