/* Chaos layer: seeded determinism and replay, first N / every Nth / rate /
 * predicate selection, injected error kinds, latency distributions on the
 * paused clock, replaced outcome, hang until the deadline or a cancel, and
 * switching on and off at run time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "support/layer_harness.h"

#include "bulwark/chaos.h"

/* f->layer is the chaos layer. */
static lh_fx_t *cfx_new(const bw_chaos_opts_t *o) {
  lh_fx_t *f = lh_fx_new(true, false);
  bw_layer_t *ch = NULL;
  assert_null(bw_chaos_new(&ch, o));
  lh_fx_stack(f, ch, true);
  return f;
}

static bw_chaos_opts_t base_opts(void) {
  bw_chaos_opts_t o;
  bw_chaos_opts_init(&o);
  o.rate = 0;
  return o;
}

static void test_defaults_and_validation(void **state) {
  (void)state;
  bw_chaos_opts_t o;
  bw_chaos_opts_init(&o);
  assert_true(o.enabled);
  assert_true(o.rate == 0.001);
  assert_int_equal(o.faults, BW_CHAOS_ERROR);
  assert_int_equal(o.error_kind, BW_ERR_INJECTED);
  bw_layer_t *l = NULL;
  bw_chaos_opts_t bad = o;
  bad.rate = 1.5;
  lh_expect_error(bw_chaos_new(&l, &bad), BW_ERR_INVALID_ARGUMENT);
  bad = o;
  bad.faults = BW_CHAOS_OUTCOME; /* no function */
  lh_expect_error(bw_chaos_new(&l, &bad), BW_ERR_INVALID_ARGUMENT);
  bad = o;
  bad.latency_dist = BW_CHAOS_LATENCY_UNIFORM;
  bad.latency_ms = 10;
  bad.latency_max_ms = 5;
  lh_expect_error(bw_chaos_new(&l, &bad), BW_ERR_INVALID_ARGUMENT);
  assert_null(l);
}

/* Same seed: the same calls chosen and the same latencies drawn; another
 * seed: a different choice. The rate is honoured. */
static void test_seeded_determinism(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.rate = 0.3;
  o.seed = 42;
  o.faults = BW_CHAOS_LATENCY;
  o.latency_dist = BW_CHAOS_LATENCY_UNIFORM;
  o.latency_ms = 10;
  o.latency_max_ms = 50;
  bw_layer_t *a = NULL, *b = NULL, *c = NULL;
  assert_null(bw_chaos_new(&a, &o));
  assert_null(bw_chaos_new(&b, &o));
  o.seed = 43;
  assert_null(bw_chaos_new(&c, &o));
  int chosen = 0, differ = 0;
  for (uint64_t k = 0; k < 10000; k++) {
    uint64_t la, lb, lc;
    bool ca = bw_chaos_decide(a, k, &la), cb = bw_chaos_decide(b, k, &lb);
    bool cc = bw_chaos_decide(c, k, &lc);
    assert_int_equal(ca, cb);
    assert_int_equal(la, lb);
    assert_true(la >= 10 * MS_ && la <= 50 * MS_);
    chosen += ca;
    differ += ca != cc;
  }
  assert_true(chosen > 2800 && chosen < 3200);
  assert_true(differ > 1000);
  bw_layer_release(a);
  bw_layer_release(b);
  bw_layer_release(c);
  /* Normal: never negative, mean near latency_ms. */
  o = base_opts();
  o.faults = BW_CHAOS_LATENCY;
  o.latency_dist = BW_CHAOS_LATENCY_NORMAL;
  o.latency_ms = 100;
  o.latency_stddev_ms = 20;
  assert_null(bw_chaos_new(&a, &o));
  double sum = 0;
  for (uint64_t k = 0; k < 10000; k++) {
    uint64_t l;
    (void)bw_chaos_decide(a, k, &l);
    sum += (double)l;
  }
  double mean_ms = sum / 10000 / 1e6;
  assert_true(mean_ms > 98 && mean_ms < 102);
  bw_layer_release(a);
}

/* A run through the layer replays exactly after bw_chaos_restart. */
static void test_replay_through_layer(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.rate = 0.5;
  o.seed = 7;
  lh_fx_t *f = cfx_new(&o);
  bw_error_kind_t first[40];
  lh_res_t r;
  int injected = 0;
  for (int i = 0; i < 40; i++) {
    first[i] = lh_call(f->svc, f->rt, &r);
    injected += first[i] == BW_ERR_INJECTED;
    assert_int_equal(first[i] == BW_ERR_INJECTED, bw_chaos_decide(f->layer, (uint64_t)i, NULL));
  }
  assert_true(injected > 5 && injected < 35);
  assert_int_equal(bw_chaos_injected(f->layer), (uint64_t)injected);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_CHAOS_INJECTED), injected);
  bw_chaos_restart(f->layer);
  for (int i = 0; i < 40; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), first[i]);
  assert_int_equal(atomic_load(&f->be->calls), 2 * (40 - injected));
  lh_fx_free(f);
}

static void test_first_n_and_every_nth(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.first_n = 3;
  o.error_kind = BW_ERR_TRANSPORT; /* marked as injected by default */
  lh_fx_t *f = cfx_new(&o);
  lh_res_t r;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_TRANSPORT);
    assert_true(r.injected);
  }
  for (int i = 0; i < 5; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  lh_fx_free(f);
  o = base_opts();
  o.every_nth = 3;
  o.error_kind = BW_ERR_HTTP_STATUS;
  o.error_detail = 503;
  o.error_mark_injected = false;
  f = cfx_new(&o);
  for (int i = 1; i <= 9; i++) {
    bw_error_kind_t k = lh_call(f->svc, f->rt, &r);
    assert_int_equal(k, i % 3 == 0 ? BW_ERR_HTTP_STATUS : BW_ERR_NONE);
    if (k) assert_false(r.injected);
  }
  lh_fx_free(f);
}

static bool pick_ctx(bw_call_t *call, void *arg) {
  (void)arg;
  return bw_call_context(call) != NULL;
}

static void test_predicate_and_switch(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.predicate = pick_ctx;
  lh_fx_t *f = cfx_new(&o);
  lh_res_t r;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(lh_call_ctx(f->svc, f->rt, &r, &r), BW_ERR_INJECTED);
  /* Off: nothing injected, no sequence numbers taken. */
  bw_chaos_set_enabled(f->layer, false);
  assert_false(bw_chaos_enabled(f->layer));
  uint64_t seen = bw_chaos_seen(f->layer);
  assert_int_equal(lh_call_ctx(f->svc, f->rt, &r, &r), BW_ERR_NONE);
  assert_int_equal(bw_chaos_seen(f->layer), seen);
  bw_chaos_set_enabled(f->layer, true);
  assert_true(bw_chaos_enabled(f->layer));
  lh_fx_free(f);
}

static void test_latency_on_paused_clock(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.first_n = 1000;
  o.faults = BW_CHAOS_LATENCY;
  o.latency_dist = BW_CHAOS_LATENCY_UNIFORM;
  o.latency_ms = 100;
  o.latency_max_ms = 300;
  o.seed = 99;
  lh_fx_t *f = cfx_new(&o);
  for (uint64_t k = 0; k < 5; k++) {
    uint64_t want;
    assert_true(bw_chaos_decide(f->layer, k, &want));
    uint64_t t0 = bw_runtime_now_ns(f->rt);
    lh_res_t r;
    assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE); /* then the backend answers */
    /* The runtime's timers tick in whole milliseconds. */
    assert_true(r.at_ns - t0 >= want && r.at_ns - t0 < want + MS_);
  }
  assert_int_equal(atomic_load(&f->be->calls), 5);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_CHAOS_INJECTED), 5);
  assert_string_equal(f->ev.ev[0].reason, "latency");
  lh_fx_free(f);
  /* Latency then an error. */
  o = base_opts();
  o.first_n = 1;
  o.faults = BW_CHAOS_LATENCY | BW_CHAOS_ERROR;
  o.latency_ms = 250;
  f = cfx_new(&o);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_res_t r;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_INJECTED);
  assert_int_equal(r.at_ns - t0, 250 * MS_);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  lh_fx_free(f);
}

static void free_int(void *p) { free(p); }
static void *answer_42(bw_call_t *call, void *arg, bw_destroy_fn *fr) {
  (void)call;
  (void)arg;
  int *v = malloc(sizeof *v);
  *v = 42;
  *fr = free_int;
  return v;
}

static void test_outcome_and_hang(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.first_n = 1;
  o.faults = BW_CHAOS_OUTCOME;
  o.outcome = answer_42;
  lh_fx_t *f = cfx_new(&o);
  lh_res_t r;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(r.resp, 42);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(r.resp, 0); /* the backend's first call */
  lh_fx_free(f);
  /* Hang until the deadline; without one, until cancelled. */
  o = base_opts();
  o.first_n = 2;
  o.faults = BW_CHAOS_HANG;
  f = cfx_new(&o);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_start(&r, f->svc, f->rt, 300);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  assert_int_equal(r.at_ns - t0, 300 * MS_);
  lh_free(&r);
  lh_start(&r, f->svc, f->rt, 0);
  LH_UNTIL(bw_chaos_seen(f->layer) == 2);
  assert_int_equal(atomic_load(&r.done), 0);
  bw_call_cancel(r.call);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  lh_free(&r);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  lh_fx_free(f);
}

/* Cancel during injected latency: the call ends at once, the backend is
 * never called, nothing leaks. */
static void test_cancel_during_latency(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.first_n = 1;
  o.faults = BW_CHAOS_LATENCY;
  o.latency_ms = 3600 * 1000;
  lh_fx_t *f = cfx_new(&o);
  bw_runtime_t *real = lh_rt(false, 2); /* real clock: the hour never passes */
  lh_res_t r;
  lh_start(&r, f->svc, real, 0);
  LH_UNTIL(bw_chaos_seen(f->layer) == 1);
  bw_call_cancel(r.call);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  lh_free(&r);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  lh_fx_free(f);
  bw_runtime_free(real);
}


/* retry(2 attempts, no backoff) over timeout(100 ms) over chaos (choosing
 * nothing: each call goes to the backend as chaos's child). Attempt 1 is
 * the call itself, forwarded to chaos. The backend answers it just as the
 * timeout fires (lh_answer_on_timeout); with one worker that answer's
 * callback runs after the timeout's abort, where retry's finish hook
 * resumed the call at its own depth and ran attempt 2. The late callback
 * must still find chaos's state: before the fix it took
 * bw_call_state(call), which was retry's by then, and spun forever on
 * retry's memory as if it were the child slot's lock. */
static void test_child_answer_after_retry_resumed(void **state) {
  (void)state;
  lh_resume_t *f = lh_resume_new();
  bw_chaos_opts_t co = base_opts();
  bw_layer_t *ch;
  assert_null(bw_chaos_new(&ch, &co));
  lh_resume_build(f, 100, ch, NULL);

  lh_res_t r;
  lh_start(&r, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1); /* attempt 1: chaos's child */
  assert_null(bw_runtime_advance(f->rt, 100));
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(r.resp, 1); /* attempt 2 answered */
  LH_UNTIL(atomic_load(&f->la.freed) == 1); /* attempt 1's answer, freed with its child */
  assert_int_equal(atomic_load(&f->la.freed), 1);
  assert_int_equal(atomic_load(&f->be->calls), 2);
  lh_free(&r);
  lh_resume_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_and_validation),
      cmocka_unit_test(test_seeded_determinism),
      cmocka_unit_test(test_replay_through_layer),
      cmocka_unit_test(test_first_n_and_every_nth),
      cmocka_unit_test(test_predicate_and_switch),
      cmocka_unit_test(test_latency_on_paused_clock),
      cmocka_unit_test(test_outcome_and_hang),
      cmocka_unit_test(test_cancel_during_latency),
      cmocka_unit_test(test_child_answer_after_retry_resumed),
  };
  return cmocka_run_group_tests_name("chaos", tests, NULL, NULL);
}
