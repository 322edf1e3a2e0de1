/* Retry layer, backoff and budget, and retries nested in retries, on the
 * paused clock. */
#include <math.h>
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

/* Huge exponents saturate at UINT64_MAX; a zero base stays zero (0 times
 * an overflowed power is NaN, and converting NaN is undefined). */
static void test_backoff_saturates(void **state) {
  (void)state;
  uint64_t rng = 1;
  bw_backoff_t zero = {BW_BACKOFF_EXPONENTIAL, 0, 2.0, 0, BW_JITTER_NONE};
  assert_int_equal(bw_backoff_delay_ns(&zero, 2000, 0, &rng), 0);
  bw_backoff_t huge = {BW_BACKOFF_EXPONENTIAL, 1, 1e10, 0, BW_JITTER_NONE};
  assert_int_equal(bw_backoff_delay_ns(&huge, 2, 0, &rng), 10000000000ull);
  assert_true(bw_backoff_delay_ns(&huge, 3, 0, &rng) == UINT64_MAX);
  assert_true(bw_backoff_delay_ns(&huge, 100000, 0, &rng) == UINT64_MAX);
  huge.cap_ns = 5;
  assert_int_equal(bw_backoff_delay_ns(&huge, 3, 0, &rng), 5);
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

/* A delay that saturates (no cap) or a huge Retry-After hint (no cap on it)
 * is past any deadline: give up, do not wrap around and retry at once. */
static void test_deadline_with_huge_delays(void **state) {
  (void)state;
  bw_retry_opts_t o = opts_exp(5);
  o.backoff.base_ns = 1;
  o.backoff.multiplier = 1e10;
  o.backoff.cap_ns = 0;
  fixture_t fx;
  fx_init(&fx, &o, true);
  fx.f.fail_first = -1;
  h4_result_t r;
  uint64_t el;
  fx_call(&fx, &r, 60000, &el); /* delays 1 ns, 10 s, then UINT64_MAX ns */
  assert_int_equal(r.kind, BW_ERR_DEADLINE_EXCEEDED);
  assert_int_equal(atomic_load(&fx.f.calls), 3);
  assert_int_equal(el, 10001000000ull); /* (timers fire on 1 ms ticks) */
  bw_error_unref(r.err);
  fx_fini(&fx);

  o = opts_exp(5);
  o.max_retry_after_ms = 0; /* no cap */
  fx_init(&fx, &o, true);
  fx.f.fail_first = -1;
  fx.f.kind = BW_ERR_HTTP_STATUS;
  fx.f.detail = 503;
  fx.f.retry_after_ms = 18446744073710; /* * 1e6 wraps 64 bits */
  fx_call(&fx, &r, 60000, &el);
  assert_int_equal(r.kind, BW_ERR_DEADLINE_EXCEEDED);
  assert_int_equal(atomic_load(&fx.f.calls), 1);
  assert_int_equal(el, 0);
  bw_error_unref(r.err);
  fx_fini(&fx);
}

/* A retry layer inside another sees the same deadline: its deadline
 * give-up is final for the outer one's default predicate (it carries its
 * attempts' errors), as retries_exhausted is. Outer: 3 attempts, no delay;
 * inner: 3 attempts, 1 s apart; deadline 1.5 s: the inner layer tries at 0
 * and 1 s, then gives up, and the outer layer passes that up. */
static void test_nested_deadline_give_up_is_final(void **state) {
  (void)state;
  bw_retry_opts_t oo = opts_exp(3), io = opts_exp(3);
  oo.backoff.kind = io.backoff.kind = BW_BACKOFF_CONSTANT;
  oo.backoff.base_ns = 0;
  io.backoff.base_ns = 1000000000ull;
  fixture_t fx;
  fx_init(&fx, &oo, true);
  fx.f.fail_first = -1;
  bw_layer_t *l[2] = {fx.retry, NULL};
  assert_null(bw_retry_new(&l[1], &io));
  bw_service_release(fx.svc);
  assert_null(bw_stack_build(&fx.svc, NULL, l, 2, fx.leaf, NULL));
  h4_result_t r;
  uint64_t el;
  fx_call(&fx, &r, 1500, &el);
  assert_int_equal(r.kind, BW_ERR_DEADLINE_EXCEEDED);
  assert_int_equal(bw_error_related_count(r.err), 2);
  assert_int_equal(atomic_load(&fx.f.calls), 2);
  assert_int_equal(el, 1000000000ull);
  assert_int_equal(h4_count_events(&fx.evs, BW_EVENT_RETRY_SCHEDULED), 0); /* the outer's */
  bw_error_unref(r.err);
  bw_layer_release(l[1]);
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

  /* A tiny ratio allows no more retries than a small one (1/ratio past
   * int64 held, not wrapped to "1"); a huge reserve saturates. */
  bo.min_per_sec = 0;
  bo.retry_ratio = 1e-19;
  assert_null(bw_retry_budget_new(&b, &bo));
  for (int i = 0; i < 100; i++) bw_retry_budget_deposit(b, t);
  assert_false(bw_retry_budget_withdraw(b, t));
  bw_retry_budget_release(b);
  bo.min_per_sec = 4000000000u;
  bo.retry_ratio = 1e-9;
  assert_null(bw_retry_budget_new(&b, &bo));
  assert_true(bw_retry_budget_balance(b, t) > 1000000);
  assert_true(bw_retry_budget_withdraw(b, t));
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
      {BW_ERR_REDIS, 0, "ERR unknown subcommand BUSY", false},
      {BW_ERR_REDIS, 0, "redis: ERR BUSY", false},
      {BW_ERR_REDIS, 0, "BUSYGROUP exists", false},
      {BW_ERR_DEADLINE_EXCEEDED, 0, "upstream deadline", true},
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
  const double bad_mult[] = {NAN, INFINITY, 0.5};
  for (size_t i = 0; i < sizeof bad_mult / sizeof *bad_mult; i++) {
    bw_retry_opts_init(&o);
    o.backoff.multiplier = bad_mult[i];
    e = bw_retry_new(&l, &o);
    assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
    bw_error_unref(e);
  }
  assert_null(bw_retry_new(&l, NULL));
  assert_string_equal(bw_layer_kind(l), "retry");
  bw_layer_release(l);
}

/* ---- nested retries ------------------------------------------------------------- */

/* A leaf that counts its calls: calls 1..fail_first fail with TRANSPORT
 * ("leaf failure N"; fail_first -1: every call), later ones answer an int
 * holding N. Sync (answers inside the call) or async (answers 1 ms of
 * runtime clock later, from a timer, so every attempt crosses threads). */
typedef struct counted_leaf {
  atomic_int calls;
  int fail_first;
} counted_leaf_t;

typedef struct counted_state {
  counted_leaf_t *leaf;
  bw_call_t *call;
  int n;
} counted_state_t;

enum { LEAF_DELAY_MS = 1 };

static void counted_answer(counted_leaf_t *l, bw_call_t *call, int n) {
  if (l->fail_first < 0 || n <= l->fail_first)
    bw_call_complete(call, NULL, NULL, bw_error_new(BW_ERR_TRANSPORT, 0, "leaf failure %d", n));
  else
    bw_call_complete(call, h4_int(n), h4_resp_free, NULL);
}

static bw_error_t *counted_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  (void)call;
  counted_leaf_t *l = arg;
  int n = atomic_fetch_add(&l->calls, 1) + 1;
  if (l->fail_first < 0 || n <= l->fail_first)
    return bw_error_new(BW_ERR_TRANSPORT, 0, "leaf failure %d", n);
  *resp = h4_int(n);
  *rf = h4_resp_free;
  return NULL;
}

static void counted_fire(bw_timer_t *t, void *arg) {
  counted_state_t *st = arg;
  bw_call_t *call = st->call;
  counted_answer(st->leaf, call, st->n);
  bw_timer_free(t); /* allowed in its own callback */
  bw_call_unref(call); /* the timer's */
}

/* No cancel hook: nothing cancels these calls (no timeout in the stacks). */
static void counted_async(void *arg, bw_call_t *call) {
  counted_leaf_t *l = arg;
  counted_state_t *st = bw_call_state(call);
  st->leaf = l;
  st->call = call;
  st->n = atomic_fetch_add(&l->calls, 1) + 1;
  bw_runtime_t *rt = bw_call_runtime(call);
  bw_timer_t *t = NULL;
  bw_error_t *e = bw_timer_new(rt, counted_fire, st, &t);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  bw_call_ref(call); /* the timer's */
  e = bw_timer_arm(t, bw_runtime_now_ns(rt) + LEAF_DELAY_MS * 1000000ull);
  if (e) {
    bw_timer_free(t);
    bw_call_unref(call);
    bw_call_complete(call, NULL, NULL, e);
  }
}

static bw_service_t *counted_service(counted_leaf_t *l, bool async) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  if (async) {
    o.async = counted_async;
    o.call_state_size = sizeof(counted_state_t);
  } else {
    o.sync = counted_sync;
  }
  o.arg = l;
  o.kind = "counted";
  bw_service_t *s;
  assert_null(bw_service_from_fn(&s, &o));
  return s;
}

/* Retries what the default predicate retries, looking through a retry
 * layer's give-up (BW_ERR_RETRIES_EXHAUSTED) to the error that made it:
 * the default predicate stops at that kind and never retries it. */
static bool look_through(const bw_error_t *err, void *arg) {
  (void)arg;
  while (err && bw_error_kind(err) == BW_ERR_RETRIES_EXHAUSTED) err = bw_error_cause(err);
  return err && bw_retry_default_predicate(err, NULL);
}

static bw_layer_t *retry_const_ms(uint32_t attempts, uint64_t ms, bw_retry_predicate pred) {
  bw_retry_opts_t o;
  bw_retry_opts_init(&o);
  o.max_attempts = attempts;
  o.backoff.kind = BW_BACKOFF_CONSTANT;
  o.backoff.base_ns = ms * 1000000ull;
  o.backoff.jitter = BW_JITTER_NONE;
  o.predicate = pred;
  bw_layer_t *l;
  assert_null(bw_retry_new(&l, &o));
  return l;
}

enum { OUTER_ATTEMPTS = 2, OUTER_BACKOFF_MS = 100, INNER_ATTEMPTS = 3, INNER_BACKOFF_MS = 10 };

/* retry(2 attempts, 100 ms) around retry(3 attempts, 10 ms) around a
 * counted leaf, built two ways: one stack with both retry layers (its
 * order check warns: attempts multiply), or the inner retry in a stack of
 * its own that is the outer stack's service (no forwarding into it: the
 * outer attempts are child calls; the order check sees one list only and
 * says nothing). */
typedef struct nested {
  bw_runtime_t *rt;
  counted_leaf_t leaf;
  bw_service_t *base, *inner, *svc; /* inner: NULL for one stack */
  bw_layer_t *outer_l, *inner_l;
  h4_events_t outer_ev, inner_ev;
  bw_event_hook_t *outer_hook, *inner_hook;
  h4_wait_t w;
} nested_t;

static void nested_init(nested_t *n, bool one_stack, bool async, int fail_first,
                        bw_retry_predicate outer_pred) {
  memset(n, 0, sizeof *n);
  n->rt = h4_rt(true, 2);
  n->leaf.fail_first = fail_first;
  n->base = counted_service(&n->leaf, async);
  n->outer_l = retry_const_ms(OUTER_ATTEMPTS, OUTER_BACKOFF_MS, outer_pred);
  n->inner_l = retry_const_ms(INNER_ATTEMPTS, INNER_BACKOFF_MS, NULL);
  bw_stack_warnings_t w;
  if (one_stack) {
    bw_layer_t *l[] = {n->outer_l, n->inner_l};
    assert_null(bw_stack_build(&n->svc, NULL, l, 2, n->base, &w));
    assert_int_equal(w.count, 1);
    assert_int_equal(w.items[0].code, BW_STACK_WARN_NESTED_RETRY);
    assert_int_equal(w.items[0].outer, 0);
    assert_int_equal(w.items[0].inner, 1);
  } else {
    assert_null(bw_stack_build(&n->inner, NULL, &n->inner_l, 1, n->base, &w));
    assert_int_equal(w.count, 0);
    assert_null(bw_stack_build(&n->svc, NULL, &n->outer_l, 1, n->inner, &w));
    assert_int_equal(w.count, 0);
  }
  pthread_mutex_init(&n->outer_ev.mu, NULL);
  pthread_mutex_init(&n->inner_ev.mu, NULL);
  assert_null(bw_event_hook_add(&n->outer_hook, NULL, n->outer_l, h4_record_event, &n->outer_ev));
  assert_null(bw_event_hook_add(&n->inner_hook, NULL, n->inner_l, h4_record_event, &n->inner_ev));
  h4_wait_init(&n->w);
}

/* One call to completion: its result in r (err referenced, the call freed
 * after its response was read into *resp_val, -1 if none), the runtime
 * clock time it took in *elapsed_ns. */
static void nested_call(nested_t *n, h4_result_t *r, int *resp_val, uint64_t *elapsed_ns) {
  memset(r, 0, sizeof *r);
  r->wait = &n->w;
  r->rt = n->rt;
  bw_call_t *c;
  assert_null(bw_call_new(&c, n->svc, n->rt));
  uint64_t t0 = bw_runtime_now_ns(n->rt);
  assert_null(h4_submit(n->svc, c, h4_on_done, r));
  assert_int_equal(h4_wait_for(&n->w, 1), 1);
  *elapsed_ns = r->at_ns - t0;
  *resp_val = r->resp ? *(int *)r->resp : -1;
  bw_call_free(c);
}

/* Frees everything; the runtime goes first, so that no callback can come
 * after this: r's completion count is final. */
static void nested_fini(nested_t *n, h4_result_t *r) {
  bw_event_hook_remove(n->outer_hook);
  bw_event_hook_remove(n->inner_hook);
  bw_runtime_free(n->rt);
  assert_int_equal(atomic_load(&r->completions), 1);
  bw_error_unref(r->err);
  bw_service_release(n->svc);
  bw_service_release(n->inner);
  bw_service_release(n->base);
  bw_layer_release(n->outer_l);
  bw_layer_release(n->inner_l);
  pthread_mutex_destroy(&n->outer_ev.mu);
  pthread_mutex_destroy(&n->inner_ev.mu);
  h4_wait_fini(&n->w);
}

/* Every attempt fails with a retryable error and the outer retry looks
 * through the inner one's give-up: 2 x 3 = 6 leaf calls, one callback,
 * with the outer give-up (2 attempts) whose cause and related errors are
 * the inner give-ups (3 attempts each), and the time is every backoff:
 * 10 + 10, then 100, then 10 + 10 ms (plus 1 ms per async answer). */
static void test_nested_retry_multiplies(void **state) {
  (void)state;
  for (int form = 0; form < 4; form++) {
    bool one_stack = form & 1, async = form & 2;
    nested_t n;
    nested_init(&n, one_stack, async, -1, look_through);
    h4_result_t r;
    int resp;
    uint64_t el;
    nested_call(&n, &r, &resp, &el);
    assert_int_equal(atomic_load(&n.leaf.calls), OUTER_ATTEMPTS * INNER_ATTEMPTS);
    assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
    assert_int_equal(resp, -1);
    uint64_t want_ms = OUTER_ATTEMPTS * (INNER_ATTEMPTS - 1) * INNER_BACKOFF_MS +
                       (OUTER_ATTEMPTS - 1) * OUTER_BACKOFF_MS +
                       (async ? OUTER_ATTEMPTS * INNER_ATTEMPTS * LEAF_DELAY_MS : 0);
    assert_int_equal(el, want_ms * 1000000ull);
    char buf[1024];
    bw_error_format(r.err, buf, sizeof buf, 0);
    assert_non_null(strstr(buf, "gave up after 2 attempts"));
    assert_non_null(strstr(buf, "gave up after 3 attempts"));
    assert_non_null(strstr(buf, "leaf failure 6"));
    assert_int_equal(bw_error_related_count(r.err), OUTER_ATTEMPTS);
    for (size_t i = 0; i < OUTER_ATTEMPTS; i++) {
      const bw_error_t *inner = bw_error_related(r.err, i);
      assert_int_equal(bw_error_kind(inner), BW_ERR_RETRIES_EXHAUSTED);
      assert_int_equal(bw_error_related_count(inner), INNER_ATTEMPTS);
      char m[64];
      snprintf(m, sizeof m, "leaf failure %zu", i * INNER_ATTEMPTS + INNER_ATTEMPTS);
      assert_string_equal(bw_error_message(bw_error_cause(inner)), m);
    }
    assert_ptr_equal(bw_error_cause(r.err), bw_error_related(r.err, OUTER_ATTEMPTS - 1));
    assert_true(bw_error_is(r.err, BW_ERR_TRANSPORT));
    assert_int_equal(h4_count_events(&n.inner_ev, BW_EVENT_GIVE_UP), OUTER_ATTEMPTS);
    assert_int_equal(h4_count_events(&n.inner_ev, BW_EVENT_RETRY_SCHEDULED),
                     OUTER_ATTEMPTS * (INNER_ATTEMPTS - 1));
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_RETRY_SCHEDULED), OUTER_ATTEMPTS - 1);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_GIVE_UP), 1);
    nested_fini(&n, &r);
  }
}

/* The same with the leaf's 4th call answering: that is the first inner
 * attempt of the second outer attempt, and its answer is the caller's
 * (the int 4) after 10 + 10 + 100 ms of backoff; 4 leaf calls, one
 * callback. */
static void test_nested_retry_success_on_fourth(void **state) {
  (void)state;
  for (int form = 0; form < 4; form++) {
    bool one_stack = form & 1, async = form & 2;
    nested_t n;
    nested_init(&n, one_stack, async, 3, look_through);
    h4_result_t r;
    int resp;
    uint64_t el;
    nested_call(&n, &r, &resp, &el);
    assert_int_equal(r.kind, BW_ERR_NONE);
    assert_int_equal(resp, 4);
    assert_int_equal(atomic_load(&n.leaf.calls), 4);
    uint64_t want_ms = (INNER_ATTEMPTS - 1) * INNER_BACKOFF_MS + OUTER_BACKOFF_MS +
                       (async ? 4 * LEAF_DELAY_MS : 0);
    assert_int_equal(el, want_ms * 1000000ull);
    assert_int_equal(h4_count_events(&n.inner_ev, BW_EVENT_GIVE_UP), 1);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_ATTEMPT_FAILED), 1);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_RETRY_SCHEDULED), 1);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_GIVE_UP), 0);
    nested_fini(&n, &r);
  }
}

/* With the default predicate on the outer retry the attempts do NOT
 * multiply: the inner give-up is BW_ERR_RETRIES_EXHAUSTED, which the
 * default never retries (retry.h, "never:"), so the outer retry passes it
 * up unchanged after one attempt: 3 leaf calls, the inner layer's error. */
static void test_nested_retry_default_predicate(void **state) {
  (void)state;
  for (int form = 0; form < 4; form++) {
    bool one_stack = form & 1, async = form & 2;
    nested_t n;
    nested_init(&n, one_stack, async, -1, NULL);
    h4_result_t r;
    int resp;
    uint64_t el;
    nested_call(&n, &r, &resp, &el);
    assert_int_equal(atomic_load(&n.leaf.calls), INNER_ATTEMPTS);
    assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
    char buf[512];
    bw_error_format(r.err, buf, sizeof buf, 0);
    assert_non_null(strstr(buf, "gave up after 3 attempts"));
    assert_null(strstr(buf, "gave up after 1 attempt"));
    assert_int_equal(bw_error_related_count(r.err), INNER_ATTEMPTS);
    uint64_t want_ms = (INNER_ATTEMPTS - 1) * INNER_BACKOFF_MS + (async ? INNER_ATTEMPTS * LEAF_DELAY_MS : 0);
    assert_int_equal(el, want_ms * 1000000ull);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_ATTEMPT_FAILED), 1);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_RETRY_SCHEDULED), 0);
    assert_int_equal(h4_count_events(&n.outer_ev, BW_EVENT_GIVE_UP), 0);
    nested_fini(&n, &r);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backoff_sequences),  cmocka_unit_test(test_retry_then_success),
      cmocka_unit_test(test_backoff_saturates),  cmocka_unit_test(test_deadline_with_huge_delays),
      cmocka_unit_test(test_nested_deadline_give_up_is_final),
      cmocka_unit_test(test_give_up_chain),      cmocka_unit_test(test_retry_after),
      cmocka_unit_test(test_deadline_aware),     cmocka_unit_test(test_budget_runs_dry),
      cmocka_unit_test(test_many_sync_failures), cmocka_unit_test(test_cancel_in_backoff),
      cmocka_unit_test(test_default_predicate),  cmocka_unit_test(test_bad_opts),
      cmocka_unit_test(test_nested_retry_multiplies),
      cmocka_unit_test(test_nested_retry_success_on_fourth),
      cmocka_unit_test(test_nested_retry_default_predicate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
