/* Circuit breaker layer on a paused-clock runtime: transitions through the
 * layer, failure predicate, slow calls, half-open probe limits under
 * concurrency (no stampede, never stuck), timeouts counting as failures,
 * manual control, a breaker shared by two stacks, and a multi-thread run. */
#include <stdio.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "support/layer_harness.h"

#include "bulwark/alloc.h"
#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"

/* f->layer is the breaker. */
static lh_fx_t *fx_new(bw_circuit_breaker_opts_t *o, bool hold) {
  lh_fx_t *f = lh_fx_new(true, hold);
  o->runtime = f->rt;
  bw_layer_t *brk = NULL;
  assert_null(bw_circuit_breaker_new(&brk, o));
  lh_fx_stack(f, brk, true);
  return f;
}

static bw_circuit_breaker_opts_t consecutive_opts(uint32_t n) {
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.name = "test";
  o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.consecutive_failures = n;
  o.open_duration_ms = 1000;
  o.half_open_calls = 1;
  return o;
}

static void test_open_reject_half_open_close(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o = consecutive_opts(3);
  lh_fx_t *f = fx_new(&o, false);
  f->be->dflt = BW_ERR_CONNECT;
  lh_res_t r;
  for (int i = 0; i < 3; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_BREAKER_STATE), 1);
  /* Rejected without reaching the backend, with the retry-after hint. */
  assert_null(bw_runtime_advance(f->rt, 250));
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(r.retry_after_ms, 750);
  assert_int_equal(atomic_load(&f->be->calls), 3);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_REJECTED), 1);
  /* After the open duration: one probe; success closes. */
  assert_null(bw_runtime_advance(f->rt, 750));
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_HALF_OPEN);
  f->be->dflt = BW_ERR_NONE;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  /* open, half_open, closed */
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_BREAKER_STATE), 3);
  assert_int_equal(f->ev.ev[0].to, BW_BREAKER_OPEN);
  assert_string_equal(f->ev.ev[0].reason, "tripped");
  bw_breaker_stats_t s;
  assert_null(bw_circuit_breaker_stats(f->layer, &s));
  assert_int_equal(s.calls_rejected, 1);
  assert_int_equal(s.failures, 3);
  assert_int_equal(s.successes, 1);
  lh_fx_free(f);
}

static bool only_503(const bw_error_t *e, void *arg) {
  (void)arg;
  const bw_error_t *h = bw_error_find(e, BW_ERR_HTTP_STATUS);
  return h && bw_error_detail(h) == 503;
}

static void test_predicates(void **state) {
  (void)state;
  /* Default predicate: HTTP 500 counts, invalid_argument does not. */
  bw_circuit_breaker_opts_t o = consecutive_opts(2);
  lh_fx_t *f = fx_new(&o, false);
  lh_res_t r;
  f->be->dflt = BW_ERR_INVALID_ARGUMENT;
  for (int i = 0; i < 5; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_INVALID_ARGUMENT);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  f->be->dflt = BW_ERR_HTTP_STATUS;
  f->be->detail = 500;
  for (int i = 0; i < 2; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_HTTP_STATUS);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  lh_fx_free(f);
  /* Default: timeouts and transport errors count; 404 does not. */
  bw_error_t *e404 = bw_error_new(BW_ERR_HTTP_STATUS, 404, "not found");
  bw_error_t *e504 = bw_error_new(BW_ERR_HTTP_STATUS, 504, "gateway timeout");
  bw_error_t *eto = bw_error_new(BW_ERR_TIMEOUT, 0, "t");
  assert_false(bw_circuit_breaker_default_predicate(e404, NULL));
  assert_true(bw_circuit_breaker_default_predicate(e504, NULL));
  assert_true(bw_circuit_breaker_default_predicate(eto, NULL));
  assert_false(bw_circuit_breaker_default_predicate(bw_error_static(BW_ERR_CIRCUIT_OPEN), NULL));
  assert_false(bw_circuit_breaker_default_predicate(bw_error_static(BW_ERR_RATE_LIMITED), NULL));
  assert_false(bw_circuit_breaker_default_predicate(NULL, NULL));
  bw_error_unref(e404);
  bw_error_unref(e504);
  bw_error_unref(eto);
  /* A custom predicate. */
  o = consecutive_opts(1);
  o.predicate = only_503;
  f = fx_new(&o, false);
  f->be->dflt = BW_ERR_HTTP_STATUS;
  f->be->detail = 500;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_HTTP_STATUS);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  f->be->detail = 503;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_HTTP_STATUS);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  lh_fx_free(f);
}

static void test_slow_calls_through_layer(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window_size = 2;
  o.minimum_calls = 2;
  o.slow_call_duration_ms = 100;
  o.slow_call_rate_threshold = 50;
  lh_fx_t *f = fx_new(&o, true);
  lh_res_t a, b;
  lh_start(&a, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  assert_null(bw_runtime_advance(f->rt, 150)); /* the held call is now slow */
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_wait(&a);
  assert_int_equal(a.kind, BW_ERR_NONE);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  lh_start(&b, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  lh_finish_one(f->be, BW_ERR_NONE); /* fast */
  lh_wait(&b);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN); /* 1 of 2 slow */
  bw_breaker_stats_t s;
  assert_null(bw_circuit_breaker_stats(f->layer, &s));
  assert_int_equal(s.slow_calls, 1);
  lh_free(&a);
  lh_free(&b);
  lh_fx_free(f);
}

/* Many concurrent callers when the breaker half-opens: exactly N probes
 * reach the backend, the rest are rejected; cancelled probes give their
 * slot back; successful probes close it. */
static void test_half_open_probe_limit(void **state) {
  (void)state;
  enum { CALLERS = 40, PROBES = 3 };
  bw_circuit_breaker_opts_t o = consecutive_opts(1);
  o.half_open_calls = PROBES;
  lh_fx_t *f = fx_new(&o, true);
  assert_null(bw_circuit_breaker_force(f->layer, BW_BREAKER_OPEN));
  assert_null(bw_runtime_advance(f->rt, 1000));
  static lh_res_t r[CALLERS];
  for (int i = 0; i < CALLERS; i++) lh_start(&r[i], f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, PROBES), PROBES);
  /* Every other caller is rejected (starts from this thread are deferred
   * to the workers, so wait for all of them to have run). */
  assert_int_equal(lh_wait_done(r, CALLERS, CALLERS - PROBES), CALLERS - PROBES);
  for (int i = 0; i < CALLERS; i++)
    if (atomic_load(&r[i].done)) assert_int_equal(r[i].kind, BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(atomic_load(&f->be->calls), PROBES);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_HALF_OPEN);
  /* Cancel every probe's caller: the slots come back. */
  int probes_seen = 0;
  for (int i = 0; i < CALLERS; i++) {
    if (!atomic_load(&r[i].done)) {
      bw_call_t *c = r[i].call;
      bool is_probe = false;
      pthread_mutex_lock(&lh_mu);
      for (int j = 0; j < f->be->npending; j++)
        if (f->be->pending[j] == c || bw_call_parent(f->be->pending[j]) == c) is_probe = true; /* forwarded: the call itself */
      pthread_mutex_unlock(&lh_mu);
      if (is_probe) {
        bw_call_cancel(c);
        lh_wait(&r[i]);
        assert_int_equal(r[i].kind, BW_ERR_CANCELLED);
        probes_seen++;
      }
    }
  }
  assert_int_equal(probes_seen, PROBES);
  for (int i = 0; i < CALLERS; i++) lh_wait(&r[i]);
  for (int i = 0; i < CALLERS; i++) lh_free(&r[i]);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_HALF_OPEN);
  assert_int_equal(lh_wait_pending(f->be, 0), 0);
  /* The callers saw CANCELLED at once; the probes' own completions (which
   * give the slots back) follow on the workers. */
  bw_breaker_stats_t s;
  for (long spin = 0;; spin++) {
    assert_null(bw_circuit_breaker_stats(f->layer, &s));
    if (s.half_open_in_flight == 0 || spin > 200000000L) break;
    sched_yield();
  }
  assert_int_equal(s.half_open_in_flight, 0);
  assert_int_equal(s.ignored, PROBES);
  /* Fresh probes are admitted again (not stuck); all succeed -> closed. */
  for (int i = 0; i < CALLERS; i++) lh_start(&r[i], f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, PROBES), PROBES);
  assert_int_equal(lh_wait_done(r, CALLERS, CALLERS - PROBES), CALLERS - PROBES);
  assert_int_equal(atomic_load(&f->be->calls), 2 * PROBES);
  for (int i = 0; i < PROBES; i++) lh_finish_one(f->be, BW_ERR_NONE);
  for (int i = 0; i < CALLERS; i++) lh_wait(&r[i]);
  int ok = 0, rej = 0;
  for (int i = 0; i < CALLERS; i++) {
    ok += r[i].kind == BW_ERR_NONE;
    rej += r[i].kind == BW_ERR_CIRCUIT_OPEN;
    lh_free(&r[i]);
  }
  assert_int_equal(ok, PROBES);
  assert_int_equal(rej, CALLERS - PROBES);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  lh_fx_free(f);
}

/* A timeout outside the breaker cancels the probe with its timeout error:
 * that counts as a failure, so the breaker re-opens (and with a growth
 * factor, for longer). */
static void test_timeout_counts_and_growth(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o = consecutive_opts(1);
  o.open_duration_multiplier = 2;
  o.max_open_duration_ms = 3000;
  lh_fx_t *f = fx_new(&o, true);
  bw_service_t *svc = lh_fx_timeout(f, 100);
  lh_res_t r;
  assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_TIMEOUT); /* clock jumps 100 ms */
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  uint64_t expect_ms[] = {1000, 2000, 3000, 3000};
  for (int i = 0; i < 4; i++) {
    assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_CIRCUIT_OPEN);
    assert_int_equal(r.retry_after_ms, (int64_t)expect_ms[i]);
    assert_null(bw_runtime_advance(f->rt, expect_ms[i]));
    assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_TIMEOUT); /* the probe times out */
    assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  }
  assert_int_equal(atomic_load(&f->be->cancels), 5);
  lh_fx_free(f);
}

static void test_force_disable_and_events(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o = consecutive_opts(1);
  lh_fx_t *f = fx_new(&o, false);
  lh_res_t r;
  assert_null(bw_circuit_breaker_force(f->layer, BW_BREAKER_FORCED_OPEN));
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(r.retry_after_ms, 0);
  assert_null(bw_runtime_advance(f->rt, 3600 * 1000));
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_FORCED_OPEN);
  assert_null(bw_circuit_breaker_force(f->layer, BW_BREAKER_DISABLED));
  f->be->dflt = BW_ERR_CONNECT;
  for (int i = 0; i < 5; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_DISABLED);
  assert_null(bw_circuit_breaker_force(f->layer, BW_BREAKER_FORCED_CLOSED));
  for (int i = 0; i < 5; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_FORCED_CLOSED);
  assert_null(bw_circuit_breaker_force(f->layer, BW_BREAKER_CLOSED));
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  lh_expect_error(bw_circuit_breaker_force(f->layer, BW_BREAKER_HALF_OPEN),
                  BW_ERR_INVALID_ARGUMENT);
  /* forced_open, disabled, forced_closed, closed (manual) + open (tripped) */
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_BREAKER_STATE), 5);
  assert_string_equal(f->ev.ev[0].reason, "manual");
  /* Not a breaker. */
  lh_expect_error(bw_circuit_breaker_force(NULL, BW_BREAKER_OPEN), BW_ERR_INVALID_ARGUMENT);
  /* The state gauge is exported. */
  lh_assert_metric("bulwark_breaker_state{breaker=\"test\"} 1");
  lh_fx_free(f);
}

static void test_bad_options(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.failure_rate_threshold = 0;
  bw_layer_t *l = NULL;
  bw_error_t *e = bw_circuit_breaker_new(&l, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  assert_null(l);
  bw_error_unref(e);
  assert_null(bw_circuit_breaker_new(&l, NULL)); /* defaults */
  assert_int_equal(bw_circuit_breaker_state(l), BW_BREAKER_CLOSED);
  bw_layer_release(l);
}

static void test_shared_between_stacks(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o = consecutive_opts(2);
  lh_fx_t *f = fx_new(&o, false);
  lh_backend_t *be2 = calloc(1, sizeof *be2);
  bw_service_t *inner2 = lh_backend_svc(be2);
  bw_service_t *svc2 = lh_stack(&f->layer, 1, inner2);
  lh_res_t r;
  f->be->dflt = BW_ERR_CONNECT;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(lh_call(svc2, f->rt, &r), BW_ERR_CIRCUIT_OPEN); /* the other stack */
  assert_int_equal(atomic_load(&be2->calls), 0);
  bw_service_release(svc2);
  bw_service_release(inner2);
  free(be2);
  lh_fx_free(f);
}

/* Many calls from two workers through one breaker, random outcomes: every
 * call completes exactly once and the accounting adds up. */
static void test_many_calls_two_workers(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window_size = 20;
  o.minimum_calls = 10;
  o.open_duration_ms = 1;
  o.half_open_calls = 2;
  lh_fx_t *f = fx_new(&o, false);
  int n = lh_scaled(20000);
  for (int i = 0; i < 4096; i++) f->be->script[i] = (i * 7919) % 3 == 0 ? BW_ERR_CONNECT : BW_ERR_NONE;
  f->be->nscript = 4096;
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) {
    lh_start(&r[i], f->svc, f->rt, 0);
    if (i % 64 == 63) bw_runtime_advance(f->rt, 1);
  }
  lh_tally_t t = lh_wait_tally(r, n);
  int ok = t.n[BW_ERR_NONE], fail = t.n[BW_ERR_CONNECT], rej = t.n[BW_ERR_CIRCUIT_OPEN];
  assert_int_equal(ok + fail + rej, n);
  bw_breaker_stats_t s;
  assert_null(bw_circuit_breaker_stats(f->layer, &s));
  assert_int_equal(s.calls_rejected, (uint64_t)rej);
  assert_int_equal(s.calls_permitted, (uint64_t)(ok + fail));
  assert_int_equal(atomic_load(&f->be->calls), ok + fail);
  free(r);
  lh_fx_free(f);
}

/* Time-based window through the layer on the paused clock: failures age
 * out of the window; within it the rate trips the breaker. */
static void test_time_window_through_layer(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_TIME;
  o.window_ms = 10000;
  o.window_buckets = 10;
  o.minimum_calls = 4;
  o.failure_rate_threshold = 50;
  lh_fx_t *f = fx_new(&o, false);
  lh_res_t r;
  f->be->dflt = BW_ERR_CONNECT;
  for (int i = 0; i < 3; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED); /* under minimum */
  assert_null(bw_runtime_advance(f->rt, 11000)); /* they leave the window */
  f->be->dflt = BW_ERR_NONE;
  for (int i = 0; i < 3; i++) assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_NONE);
  f->be->dflt = BW_ERR_CONNECT;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT); /* 1 of 4 */
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  assert_null(bw_runtime_advance(f->rt, 3000));
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT); /* 2 of 5 */
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_CLOSED);
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_CONNECT); /* 3 of 6 = 50% */
  assert_int_equal(bw_circuit_breaker_state(f->layer), BW_BREAKER_OPEN);
  bw_breaker_stats_t s;
  assert_null(bw_circuit_breaker_stats(f->layer, &s));
  assert_int_equal(s.failures, 6);
  lh_fx_free(f);
}

/* Counting allocator: a burst of rejections by an open breaker allocates
 * nothing (rejections sharing a retry-after hint share one error; calls are
 * pooled). Calls are chained from completion callbacks so each starts on a
 * worker, as in a server. */
static void test_rejections_do_not_allocate(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o = consecutive_opts(1);
  lh_fx_t *f = fx_new(&o, false);
  assert_null(bw_circuit_breaker_force(f->layer, BW_BREAKER_OPEN));
  lh_assert_rejections_do_not_allocate(f->svc, f->rt, BW_ERR_CIRCUIT_OPEN, 1000);
  lh_fx_free(f);
}

/* A late answer to an attempt the breaker passed on through a child (its
 * inner service is a built stack: no forwarding) arrives after an outer
 * retry resumed the call at its own depth: the child's callback must find
 * the breaker's state, not retry's (it used to take bw_call_state(call),
 * retry's by then, and spin on retry's memory as if it were the child
 * slot's lock). As test_bulkhead's test_layer_child_answer_after_retry_resumed. */
static void test_child_answer_after_retry_resumed(void **state) {
  (void)state;
  lh_resume_t *f = lh_resume_new();
  bw_bulkhead_opts_t ibo; /* (a layer that does not act on the deadline) */
  bw_bulkhead_opts_init(&ibo);
  bw_layer_t *il;
  assert_null(bw_bulkhead_new(&il, &ibo));
  bw_service_t *inner = lh_stack(&il, 1, f->backend); /* a built stack: the breaker uses a child */
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  bw_layer_t *brk;
  assert_null(bw_circuit_breaker_new(&brk, &bo));
  lh_resume_build(f, 100, brk, inner);

  lh_res_t b;
  lh_start(&b, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1); /* attempt 1, through the child */
  assert_null(bw_runtime_advance(f->rt, 100));    /* its timeout */
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_NONE);
  assert_int_equal(b.resp, 1); /* the backend's second call: attempt 2 */
  LH_UNTIL(atomic_load(&f->la.freed) == 1); /* attempt 1's answer, freed with its child */
  assert_int_equal(atomic_load(&f->la.freed), 1);
  assert_int_equal(atomic_load(&f->be->calls), 2);
  bw_breaker_stats_t st;
  LH_UNTIL(bw_circuit_breaker_stats(brk, &st) == NULL &&
           st.successes + st.failures + st.ignored == 2);
  assert_null(bw_circuit_breaker_stats(brk, &st));
  assert_int_equal(st.calls_permitted, 2);
  assert_int_equal(st.successes + st.failures + st.ignored, 2); /* each recorded once */
  lh_free(&b);
  bw_service_release(inner);
  bw_layer_release(il);
  lh_resume_free(f);
}

/* The breaker's name is escaped in its gauge's labels. */
static void test_name_escaped_in_metrics(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  char name[300];
  snprintf(name, sizeof name, "a\"b\\c\nd%0200d", 7);
  o.name = name;
  bw_layer_t *b = NULL;
  assert_null(bw_circuit_breaker_new(&b, &o));
  char want[400];
  snprintf(want, sizeof want, "bulwark_breaker_state{breaker=\"a\\\"b\\\\c\\nd%0200d\"} 0\n", 7);
  lh_assert_metric(want);
  bw_layer_release(b);
}

int main(void) {
  if (lh_count_allocs_install() != 0) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rejections_do_not_allocate),
      cmocka_unit_test(test_open_reject_half_open_close),
      cmocka_unit_test(test_predicates),
      cmocka_unit_test(test_slow_calls_through_layer),
      cmocka_unit_test(test_time_window_through_layer),
      cmocka_unit_test(test_half_open_probe_limit),
      cmocka_unit_test(test_timeout_counts_and_growth),
      cmocka_unit_test(test_force_disable_and_events),
      cmocka_unit_test(test_bad_options),
      cmocka_unit_test(test_shared_between_stacks),
      cmocka_unit_test(test_many_calls_two_workers),
      cmocka_unit_test(test_child_answer_after_retry_resumed),
      cmocka_unit_test(test_name_escaped_in_metrics),
  };
  return cmocka_run_group_tests_name("circuit_breaker", tests, NULL, NULL);
}
