/* Retry layer, backoff and budget, on the paused clock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bulwark/retry.h"
#include "h4_util.h"

/* ---- backoff: exact sequences with seed 42 ----------------------------------- */

static void test_backoff_sequences(void **state) {
  static const uint64_t gold[4][6] = {
      {100000000ull, 200000000ull, 400000000ull, 800000000ull, 1000000000ull, 1000000000ull},
      {60701454ull, 177761905ull, 14554519ull, 321758199ull, 440430465ull, 647007953ull},
      {66130230ull, 128631665ull, 366345245ull, 785260654ull, 738897681ull, 631026875ull},
      {257988092ull, 277326833ull, 391006858ull, 531563089ull, 149778446ull, 133284130ull},
  };
  for (int j = 0; j < 4; j++) {
    bw_backoff_t b = {BW_BACKOFF_EXPONENTIAL, 100000000ull, 2.0, 1000000000ull, (bw_jitter_t)j};
    uint64_t rng = 42, prev = 0;
    for (uint32_t n = 1; n <= 6; n++) {
      uint64_t d = bw_backoff_delay_ns(&b, n, prev, &rng);
      assert_int_equal(d, gold[j][n - 1]);
      uint64_t full = 100000000ull << (n - 1);
      if (full > 1000000000ull) full = 1000000000ull;
      if (j == BW_JITTER_FULL) assert_true(d <= full);
      if (j == BW_JITTER_EQUAL) assert_true(d >= full / 2 && d <= full);
      if (j == BW_JITTER_DECORRELATED)
        assert_true(d >= 100000000ull && d <= 1000000000ull && d <= (prev ? prev : 100000000ull) * 3);
      prev = d;
    }
  }
  bw_backoff_t c = {BW_BACKOFF_CONSTANT, 7, 0, 0, BW_JITTER_NONE};
  bw_backoff_t l = {BW_BACKOFF_LINEAR, 10, 0, 35, BW_JITTER_NONE};
  uint64_t rng = 1;
  for (uint32_t n = 1; n < 5; n++) {
    assert_int_equal(bw_backoff_delay_ns(&c, n, 0, &rng), 7);
    assert_int_equal(bw_backoff_delay_ns(&l, n, 0, &rng), n * 10 > 35 ? 35 : n * 10);
  }
  bw_backoff_t m = {BW_BACKOFF_EXPONENTIAL, 1000, 1.5, 0, BW_JITTER_NONE};
  assert_int_equal(bw_backoff_delay_ns(&m, 3, 0, &rng), 2250);
}

/* ---- a flaky leaf: fails attempts <= fail_first with a chosen error ---------- */

typedef struct flaky {
  int fail_first; /* -1: always */
  bw_error_kind_t kind;
  int64_t detail;
  int64_t retry_after_ms;
  atomic_int calls;
} flaky_t;

static bw_error_t *flaky_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  flaky_t *f = arg;
  atomic_fetch_add(&f->calls, 1);
  int a = (int)bw_call_attempt(call);
  if (f->fail_first < 0 || a <= f->fail_first) {
    bw_error_hints_t h = {f->retry_after_ms};
    return bw_error_make(f->kind, f->detail, NULL, &h, NULL, 0, __FILE__, __LINE__,
                         "attempt %d failed", a);
  }
  *resp = h4_int(a);
  *rf = h4_resp_free;
  return NULL;
}

static bw_service_t *flaky_service(flaky_t *f) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = flaky_sync;
  o.arg = f;
  bw_service_t *s;
  assert_null(bw_service_from_fn(&s, &o));
  return s;
}

typedef struct fixture {
  bw_runtime_t *rt;
  flaky_t f;
  bw_service_t *leaf, *svc;
  bw_layer_t *retry;
  h4_events_t evs;
  bw_event_hook_t *hook;
  h4_wait_t w;
  int done;
} fixture_t;

static void fx_init(fixture_t *fx, const bw_retry_opts_t *o, bool paused) {
  memset(fx, 0, sizeof *fx);
  pthread_mutex_init(&fx->evs.mu, NULL);
  fx->rt = h4_rt(paused, 2);
  fx->f.kind = BW_ERR_TRANSPORT;
  fx->leaf = flaky_service(&fx->f);
  assert_null(bw_retry_new(&fx->retry, o));
  assert_null(bw_stack_build(&fx->svc, NULL, &fx->retry, 1, fx->leaf, NULL));
  assert_null(bw_event_hook_add(&fx->hook, NULL, fx->retry, h4_record_event, &fx->evs));
  h4_wait_init(&fx->w);
}

static void fx_fini(fixture_t *fx) {
  bw_event_hook_remove(fx->hook);
  bw_service_release(fx->svc);
  bw_service_release(fx->leaf);
  bw_layer_release(fx->retry);
  bw_runtime_free(fx->rt);
  h4_wait_fini(&fx->w);
  pthread_mutex_destroy(&fx->evs.mu);
}

/* One call; returns the result (err kept in r->err). */
static void fx_call(fixture_t *fx, h4_result_t *r, uint64_t timeout_ms, uint64_t *elapsed) {
  memset(r, 0, sizeof *r);
  r->wait = &fx->w;
  r->rt = fx->rt;
  r->free_in_cb = true;
  bw_call_t *c;
  assert_null(bw_call_new(&c, fx->svc, fx->rt));
  if (timeout_ms) bw_call_set_timeout_ms(c, timeout_ms);
  uint64_t t0 = bw_runtime_now_ns(fx->rt);
  assert_null(h4_submit(fx->svc, c, h4_on_done, r));
  fx->done++;
  assert_int_equal(h4_wait_for(&fx->w, fx->done), fx->done);
  if (elapsed) *elapsed = r->at_ns - t0;
}

static bw_retry_opts_t opts_exp(uint32_t attempts) {
  bw_retry_opts_t o;
  bw_retry_opts_init(&o);
  assert_int_equal(o.max_attempts, 3);
  o.max_attempts = attempts;
  o.backoff.kind = BW_BACKOFF_EXPONENTIAL;
  o.backoff.base_ns = 100000000ull;
  o.backoff.multiplier = 2;
  o.backoff.jitter = BW_JITTER_NONE;
  return o;
}

static void test_retry_then_success(void **state) {
  bw_retry_opts_t o = opts_exp(3);
  fixture_t fx;
  fx_init(&fx, &o, true);
  fx.f.fail_first = 2;
  h4_result_t r;
  uint64_t el;
  fx_call(&fx, &r, 0, &el);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(el, 300000000ull); /* 100 ms + 200 ms of backoff */
  assert_int_equal(atomic_load(&fx.f.calls), 3);
  assert_int_equal(h4_count_events(&fx.evs, BW_EVENT_ATTEMPT_FAILED), 2);
  assert_int_equal(h4_count_events(&fx.evs, BW_EVENT_RETRY_SCHEDULED), 2);
  assert_int_equal(fx.evs.ev[1].type, BW_EVENT_RETRY_SCHEDULED);
  assert_int_equal(fx.evs.ev[1].delay_ns, 100000000ull);
  assert_int_equal(fx.evs.ev[1].attempt, 2);
  assert_int_equal(fx.evs.ev[3].delay_ns, 200000000ull);
  assert_int_equal(fx.evs.err_kind[1], BW_ERR_TRANSPORT);
  fx_fini(&fx);
}

static void test_give_up_chain(void **state) {
  bw_retry_opts_t o = opts_exp(3);
  fixture_t fx;
  fx_init(&fx, &o, true);
  fx.f.fail_first = -1;
  h4_result_t r;
  uint64_t el;
  fx_call(&fx, &r, 0, &el);
  assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
  assert_int_equal(el, 300000000ull);
  assert_int_equal(bw_error_related_count(r.err), 3);
  for (size_t i = 0; i < 3; i++) {
    char m[64];
    snprintf(m, sizeof m, "attempt %zu failed", i + 1);
    assert_string_equal(bw_error_message(bw_error_related(r.err, i)), m);
  }
  assert_int_equal(bw_error_kind(bw_error_cause(r.err)), BW_ERR_TRANSPORT);
  assert_true(bw_error_is(r.err, BW_ERR_TRANSPORT));
  char buf[512];
  bw_error_format(r.err, buf, sizeof buf, 0);
  assert_non_null(strstr(buf, "gave up after 3 attempts"));
  assert_non_null(strstr(buf, "attempt 3 failed"));
  assert_int_equal(h4_count_events(&fx.evs, BW_EVENT_GIVE_UP), 1);
  bw_error_unref(r.err);

  /* not retryable: passed up unchanged after one attempt */
  fx.f.kind = BW_ERR_INVALID_ARGUMENT;
  atomic_store(&fx.f.calls, 0);
  fx_call(&fx, &r, 0, &el);
  assert_int_equal(r.kind, BW_ERR_INVALID_ARGUMENT);
  assert_int_equal(atomic_load(&fx.f.calls), 1);
  assert_int_equal(el, 0);
  bw_error_unref(r.err);
  fx_fini(&fx);
}

static void test_retry_after(void **state) {
  bw_retry_opts_t o = opts_exp(2);
  o.max_retry_after_ms = 1000;
  fixture_t fx;
  fx_init(&fx, &o, true);
  fx.f.fail_first = 1;
  fx.f.kind = BW_ERR_HTTP_STATUS;
  fx.f.detail = 503;
  fx.f.retry_after_ms = 700;
  h4_result_t r;
  uint64_t el;
  fx_call(&fx, &r, 0, &el);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(el, 700000000ull); /* the hint, not the 100 ms backoff */
  fx.f.retry_after_ms = 5000;         /* capped at 1000 */
  fx_call(&fx, &r, 0, &el);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(el, 1000000000ull);
  fx_fini(&fx);
}

static void test_deadline_aware(void **state) {
  bw_retry_opts_t o = opts_exp(10);
  o.backoff.kind = BW_BACKOFF_CONSTANT;
  fixture_t fx;
  fx_init(&fx, &o, true);
  fx.f.fail_first = -1;
  h4_result_t r;
  uint64_t el;
  fx_call(&fx, &r, 250, &el); /* attempts at 0, 100, 200; 300 would miss 250 */
  assert_int_equal(r.kind, BW_ERR_DEADLINE_EXCEEDED);
  assert_int_equal(el, 200000000ull);
  assert_int_equal(atomic_load(&fx.f.calls), 3);
  assert_int_equal(bw_error_related_count(r.err), 3);
  bw_error_unref(r.err);
  fx_fini(&fx);
}

static void test_budget_runs_dry(void **state) {
  bw_retry_budget_opts_t bo;
  bw_retry_budget_opts_init(&bo);
  assert_int_equal(bo.ttl_ms, 10000);
  assert_int_equal(bo.min_per_sec, 10);
  bo.min_per_sec = 1; /* reserve: 10 retries */
  bw_retry_budget_t *b;
  assert_null(bw_retry_budget_new(&b, &bo));
  bw_retry_opts_t o = opts_exp(2);
  o.backoff.kind = BW_BACKOFF_CONSTANT;
  o.backoff.base_ns = 0;
  o.budget = b;
  fixture_t fx;
  fx_init(&fx, &o, true);
  bw_retry_budget_release(b); /* the layer holds it */
  fx.f.fail_first = -1;
  /* model of tower's TpsBudget: deposit 1 per call, withdraw 5, reserve 50 */
  int64_t sum = 0;
  int exp_retries = 0, exp_dry = 0, got_dry = 0, got_exhausted = 0;
  for (int i = 0; i < 40; i++) {
    sum += 1;
    if (sum + 50 >= 5) {
      sum -= 5;
      exp_retries++;
    } else {
      exp_dry++;
    }
    h4_result_t r;
    fx_call(&fx, &r, 0, NULL);
    if (r.kind == BW_ERR_BUDGET_EXHAUSTED) got_dry++;
    else if (r.kind == BW_ERR_RETRIES_EXHAUSTED) got_exhausted++;
    bw_error_unref(r.err);
  }
  assert_true(exp_dry > 0);
  assert_int_equal(got_dry, exp_dry);
  assert_int_equal(got_exhausted, exp_retries);
  assert_int_equal(atomic_load(&fx.f.calls), 40 + exp_retries);
  fx_fini(&fx);

  /* budget unit: window expiry restores the reserve */
  assert_null(bw_retry_budget_new(&b, &bo));
  uint64_t t = 1000000000ull;
  int n = 0;
  while (bw_retry_budget_withdraw(b, t)) n++;
  assert_int_equal(n, 10);
  assert_int_equal(bw_retry_budget_balance(b, t), 0);
  t += 11000000000ull;
  assert_int_equal(bw_retry_budget_balance(b, t), 10);
  bw_retry_budget_release(b);
}

/* 10,000 synchronous failures must loop, not nest. */
static void test_many_sync_failures(void **state) {
  int n = 10000;
  bw_retry_opts_t o = opts_exp((uint32_t)n);
  o.backoff.kind = BW_BACKOFF_CONSTANT;
  o.backoff.base_ns = 0;
  fixture_t fx;
  fx_init(&fx, &o, true);
  bw_event_hook_remove(fx.hook); /* 30,000 events: don't record */
  fx.hook = NULL;
  fx.f.fail_first = -1;
  h4_result_t r;
  fx_call(&fx, &r, 0, NULL);
  assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
  assert_int_equal(bw_error_related_count(r.err), (size_t)n);
  assert_int_equal(atomic_load(&fx.f.calls), n);
  bw_error_unref(r.err);
  fx_fini(&fx);
}

/* Cancel during backoff (real clock, long backoff: nothing fires by itself). */
static void test_cancel_in_backoff(void **state) {
  bw_retry_opts_t o = opts_exp(5);
  o.backoff.base_ns = 60ull * 1000000000ull;
  fixture_t fx;
  fx_init(&fx, &o, false);
  fx.f.fail_first = -1;
  h4_result_t r = {.wait = &fx.w, .rt = fx.rt};
  bw_call_t *c;
  assert_null(bw_call_new(&c, fx.svc, fx.rt));
  assert_null(h4_submit(fx.svc, c, h4_on_done, &r));
  for (int i = 0; i < 100000 && h4_count_events(&fx.evs, BW_EVENT_RETRY_SCHEDULED) == 0; i++) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  bw_call_cancel(c);
  assert_int_equal(h4_wait_for(&fx.w, 1), 1);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  bw_error_unref(r.err);
  bw_call_free(c);
  assert_int_equal(atomic_load(&fx.f.calls), 1);
  fx_fini(&fx);
  assert_int_equal(atomic_load(&r.completions), 1);
}

static bw_error_t *mk(bw_error_kind_t k, int64_t detail, const char *msg) {
  return bw_error_make(k, detail, NULL, NULL, NULL, 0, __FILE__, __LINE__, "%s", msg);
}

static void test_default_predicate(void **state) {
  struct {
    bw_error_kind_t k;
    int64_t d;
    const char *m;
    bool want;
  } cases[] = {
      {BW_ERR_TIMEOUT, 0, "t", true},          {BW_ERR_TRANSPORT, 7, "x", true},
      {BW_ERR_CONNECT, 0, "x", true},          {BW_ERR_DNS, 0, "x", true},
      {BW_ERR_HTTP_STATUS, 429, "x", true},    {BW_ERR_HTTP_STATUS, 502, "x", true},
      {BW_ERR_HTTP_STATUS, 503, "x", true},    {BW_ERR_HTTP_STATUS, 504, "x", true},
      {BW_ERR_HTTP_STATUS, 500, "x", false},   {BW_ERR_HTTP_STATUS, 404, "x", false},
      {BW_ERR_REDIS, 0, "LOADING Redis is loading", true},
      {BW_ERR_REDIS, 0, "BUSY script", true},  {BW_ERR_REDIS, 0, "TRYAGAIN", true},
      {BW_ERR_REDIS, 0, "redis: MASTERDOWN link down", true},
      {BW_ERR_REDIS, 0, "ERR wrong type", false},
      {BW_ERR_CIRCUIT_OPEN, 0, "x", false},    {BW_ERR_BULKHEAD_FULL, 0, "x", false},
      {BW_ERR_INVALID_ARGUMENT, 0, "x", false}, {BW_ERR_CANCELLED, 0, "x", false},
      {BW_ERR_RETRIES_EXHAUSTED, 0, "x", false}, {BW_ERR_RUNTIME_SHUTDOWN, 0, "x", false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    bw_error_t *e = mk(cases[i].k, cases[i].d, cases[i].m);
    assert_int_equal(bw_retry_default_predicate(e, NULL), cases[i].want);
    bw_error_unref(e);
  }
  /* chaos-injected wrapper is looked through */
  bw_error_t *e = bw_error_wrap(mk(BW_ERR_CONNECT, 0, "x"), BW_ERR_INJECTED, 0, "chaos");
  assert_true(bw_retry_default_predicate(e, NULL));
  bw_error_unref(e);
  /* a timeout wrapping a cancel is still a timeout */
  e = bw_error_wrap(mk(BW_ERR_CANCELLED, 0, "x"), BW_ERR_TIMEOUT, 0, "t");
  assert_true(bw_retry_default_predicate(e, NULL));
  bw_error_unref(e);
}

static void test_bad_opts(void **state) {
  bw_retry_opts_t o;
  bw_retry_opts_init(&o);
  o.max_attempts = 0;
  bw_layer_t *l = NULL;
  bw_error_t *e = bw_retry_new(&l, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_null(bw_retry_new(&l, NULL));
  assert_string_equal(bw_layer_kind(l), "retry");
  bw_layer_release(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backoff_sequences),  cmocka_unit_test(test_retry_then_success),
      cmocka_unit_test(test_give_up_chain),      cmocka_unit_test(test_retry_after),
      cmocka_unit_test(test_deadline_aware),     cmocka_unit_test(test_budget_runs_dry),
      cmocka_unit_test(test_many_sync_failures), cmocka_unit_test(test_cancel_in_backoff),
      cmocka_unit_test(test_default_predicate),  cmocka_unit_test(test_bad_opts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
