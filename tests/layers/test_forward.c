/* Forwarding (service.c bw__call_forward): breaker, rate limit, bulkhead,
 * timeout and fallback (VALUE/FUNCTION) hand the call itself inward and
 * settle in a finish hook run once at delivery, innermost first.
 *
 * What is checked here, from the public API only:
 *   - the depth limit: stacks deeper than BW__DEPTH_MAX (32) fall back to
 *     child calls past it, and every layer still settles once (permits,
 *     breaker records), for answers and for cancels crossing the limit;
 *   - a built stack around a built stack (no forwarding into it): both
 *     record their own calls and events;
 *   - who answers an abort: a fallback outside a timeout answers the
 *     timeout, a fallback inside it does not (nor a caller's cancel);
 *   - a breaker inside a timeout counts the timeout as a failure and the
 *     caller's cancel as ignored;
 *   - abandoned calls (bw_call_free in flight) still return their permit,
 *     exactly once, even when the backend answers late;
 *   - a forwarding timeout whose inner answers during the start arms no
 *     timer and leaves no reference (no pool growth, no armed timer);
 *   - a late answer to a timed-out first attempt loses after retry has
 *     resumed the call for its next attempt (during the backoff, and while
 *     the next attempt runs), and its response is freed;
 *   - a second attempt's own timeout: the give-up error names the duration;
 *   - attempt 1's timer and its failure racing on two threads: one wins,
 *     the stale one never ends the resumed call.
 * Every time-dependent check runs on the paused clock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>

#include "support/layer_harness.h"

#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/rate_limit.h"
#include "bulwark/retry.h"
#include "bulwark/timeout.h"

/* runtime/internal.h (not included: it pulls in uv.h). While a hold is
 * out the paused clock moves only by bw_runtime_advance. */
void bw__runtime_clock_hold(bw_runtime_t *rt);
void bw__runtime_clock_release(bw_runtime_t *rt);

enum { DEPTH_MAX = 32 }; /* BW__DEPTH_MAX in service_internal.h */

/* ---- services ------------------------------------------------------------ */

/* A sync leaf (arg: sync_leaf_t): counts its calls, fails every
 * `fail_every`-th one (0: never), otherwise answers a static int. */
typedef struct sync_leaf {
  atomic_int calls;
  int fail_every;
  atomic_int fail_first; /* the first N calls fail (counted by calls) */
  _Atomic int64_t remaining_ns; /* bw_call_remaining_ns seen by the last call */
} sync_leaf_t;

static int leaf_value = 7;

static bw_error_t *leaf_fn(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  sync_leaf_t *l = arg;
  int n = atomic_fetch_add(&l->calls, 1) + 1;
  atomic_store(&l->remaining_ns, bw_call_remaining_ns(call));
  if ((l->fail_every && n % l->fail_every == 0) || n <= atomic_load(&l->fail_first))
    return bw_error_new(BW_ERR_TRANSPORT, 0, "leaf failure %d", n);
  *resp = &leaf_value; /* static: no allocation per call */
  *rf = NULL;
  return NULL;
}

static bw_service_t *sync_svc(sync_leaf_t *l) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = leaf_fn;
  o.arg = l;
  o.kind = "sync_leaf";
  bw_service_t *s = NULL;
  assert_null(bw_service_from_fn(&s, &o));
  return s;
}

/* A held backend that ignores cancels: it keeps a reference on each call
 * and answers only when the test says so (the answer then loses). */
typedef struct stubborn {
  atomic_int calls;
  bw_call_t *held[64];
  int nheld; /* under lh_mu */
} stubborn_t;

static void stubborn_fn(void *arg, bw_call_t *call) {
  stubborn_t *s = arg;
  atomic_fetch_add(&s->calls, 1);
  bw_call_ref(call);
  pthread_mutex_lock(&lh_mu);
  s->held[s->nheld++] = call;
  pthread_cond_broadcast(&lh_cv);
  pthread_mutex_unlock(&lh_mu);
}

static bw_service_t *stubborn_svc(stubborn_t *s) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = stubborn_fn; /* no cancel hook */
  o.arg = s;
  bw_service_t *svc = NULL;
  assert_null(bw_service_from_fn(&svc, &o));
  return svc;
}

static int stubborn_held(stubborn_t *s) {
  pthread_mutex_lock(&lh_mu);
  int h = s->nheld;
  pthread_mutex_unlock(&lh_mu);
  return h;
}

/* Wait until the backend holds n calls; returns how many it holds. */
static int stubborn_wait(stubborn_t *s, int n) {
  LH_UNTIL(stubborn_held(s) >= n);
  return stubborn_held(s);
}

/* Answer the oldest held call with success; returns whether it won. */
static bool stubborn_answer(stubborn_t *s) {
  pthread_mutex_lock(&lh_mu);
  assert_true(s->nheld > 0);
  bw_call_t *c = s->held[0];
  memmove(&s->held[0], &s->held[1], sizeof s->held[0] * (size_t)(s->nheld - 1));
  s->nheld--;
  pthread_mutex_unlock(&lh_mu);
  int *v = malloc(sizeof *v);
  *v = 99;
  bool won = bw_call_complete(c, v, free, NULL);
  bw_call_unref(c);
  return won;
}

/* ---- layers ---------------------------------------------------------------- */

static bw_layer_t *bulkhead(const char *name, uint32_t max, uint32_t queue) {
  bw_bulkhead_opts_t o;
  bw_bulkhead_opts_init(&o);
  o.name = name;
  o.max_concurrent = max;
  o.max_queue = queue;
  bw_layer_t *l = NULL;
  assert_null(bw_bulkhead_new(&l, &o));
  return l;
}

static bw_layer_t *timeout_ms(uint64_t ms) {
  bw_timeout_opts_t o;
  bw_timeout_opts_init(&o);
  o.timeout_ms = ms;
  bw_layer_t *l = NULL;
  assert_null(bw_timeout_new(&l, &o));
  return l;
}

static bw_layer_t *breaker(const char *name, bw_runtime_t *rt, uint32_t consecutive) {
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.name = name;
  o.runtime = rt;
  if (consecutive) {
    o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
    o.consecutive_failures = consecutive;
  }
  bw_layer_t *l = NULL;
  assert_null(bw_circuit_breaker_new(&l, &o));
  return l;
}

static bw_layer_t *rate_limit(const char *name) {
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  o.name = name;
  o.rate_per_sec = 1e6;
  o.burst = 1000000; /* the paused clock never refills: enough for the test */
  bw_layer_t *l = NULL;
  assert_null(bw_rate_limit_new(&l, &o));
  return l;
}

static const int fb_value = 4242;

static bool any_error(const bw_error_t *err, void *arg) {
  (void)arg;
  return err != NULL;
}

/* A VALUE fallback answering fb_value; any: for every error, cancels too
 * (the default predicate leaves BW_ERR_CANCELLED alone by itself). */
static bw_layer_t *fallback_pred(bool any) {
  bw_fallback_opts_t o;
  bw_fallback_opts_init(&o);
  o.kind = BW_FALLBACK_VALUE;
  if (any) o.predicate = any_error;
  o.value = &fb_value;
  o.value_len = sizeof fb_value;
  bw_layer_t *l = NULL;
  assert_null(bw_fallback_new(&l, &o));
  return l;
}
static bw_layer_t *fallback_value(void) { return fallback_pred(false); }

/* retry(attempts, constant backoff, no jitter) */
static bw_layer_t *retry_const(uint32_t attempts, uint64_t backoff_ms) {
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = attempts;
  ro.backoff.kind = BW_BACKOFF_CONSTANT;
  ro.backoff.base_ns = backoff_ms * MS_;
  ro.backoff.jitter = BW_JITTER_NONE;
  bw_layer_t *l = NULL;
  assert_null(bw_retry_new(&l, &ro));
  return l;
}

static bw_breaker_stats_t stats_of(bw_layer_t *b) {
  bw_breaker_stats_t s;
  assert_null(bw_circuit_breaker_stats(b, &s));
  return s;
}

/* Timers armed now in rt (no cmocka assert: also used on workers). */
static uint64_t timers_armed(bw_runtime_t *rt) {
  bw_runtime_metrics_t m;
  bw_error_t *e = bw_runtime_metrics(rt, &m);
  if (e) {
    bw_error_unref(e);
    return UINT64_MAX;
  }
  return m.timers_armed;
}

/* Paused runtimes here never auto-advance: a held call would otherwise let
 * the clock jump to the next timer (a timeout) while the test thread is
 * still looking. Time moves by bw_runtime_advance only. */
static bw_runtime_t *held_rt(void) {
  bw_runtime_t *rt = lh_rt(true, 2);
  bw__runtime_clock_hold(rt);
  return rt;
}
static void rt_free(bw_runtime_t *rt) {
  bw__runtime_clock_release(rt);
  bw_runtime_free(rt);
}
static lh_fx_t *held_fx(void) {
  lh_fx_t *f = lh_fx_new(true, true);
  bw__runtime_clock_hold(f->rt);
  return f;
}
static void fx_free(lh_fx_t *f) {
  bw__runtime_clock_release(f->rt);
  lh_fx_free(f);
}

static void release_all(bw_layer_t **l, int n) {
  for (int i = 0; i < n; i++) bw_layer_release(l[i]);
}

/* Move the held clock to 1 ms before a 50 ms timeout (nothing fires),
 * then onto it, and wait for r. */
static void fire_50ms(bw_runtime_t *rt, lh_res_t *r) {
  /* the timer is armed after the backend got the call: wait for it */
  LH_UNTIL(timers_armed(rt) == 1);
  assert_int_equal(timers_armed(rt), 1);
  assert_null(bw_runtime_advance(rt, 49));
  assert_int_equal(atomic_load(&r->done), 0);
  assert_null(bw_runtime_advance(rt, 1));
  lh_wait(r);
}

/* ---- 1. deep stacks: the depth limit ---------------------------------------- */

enum { DEEP = DEPTH_MAX + 8 }; /* 40 layers: 8 past the limit */

/* 40 bulkheads (2 permits each, queues) around a sync service: 1,000 calls
 * started at once all succeed (some queue, some forward, the nodes past
 * the depth limit use child calls) and every permit comes back. */
static void test_deep_bulkheads(void **state) {
  (void)state;
  bw_runtime_t *rt = held_rt();
  sync_leaf_t leaf = {0};
  bw_service_t *inner = sync_svc(&leaf);
  bw_layer_t *bh[DEEP];
  char name[32];
  for (int i = 0; i < DEEP; i++) {
    snprintf(name, sizeof name, "fwd_deep_%02d", i);
    bh[i] = bulkhead(name, 2, 1024);
  }
  bw_service_t *svc = lh_stack(bh, DEEP, inner);
  enum { N = 1000 };
  lh_res_t *r = calloc(N, sizeof *r);
  assert_non_null(r);
  for (int i = 0; i < N; i++) lh_start(&r[i], svc, rt, 0);
  int wrong = 0;
  for (int i = 0; i < N; i++) {
    lh_wait(&r[i]);
    wrong += r[i].kind != BW_ERR_NONE || r[i].resp != leaf_value;
  }
  assert_int_equal(wrong, 0);
  assert_int_equal(atomic_load(&leaf.calls), N);
  /* Finish hooks and the child callbacks past the limit all ran before the
   * callbacks above: every permit is back already. */
  for (int i = 0; i < DEEP; i++) {
    assert_int_equal(bw_bulkhead_in_use(bh[i]), 0);
    assert_int_equal(bw_bulkhead_queued(bh[i]), 0);
  }
  for (int i = 0; i < N; i++) lh_free(&r[i]);
  free(r);
  /* Still usable: the whole limit of the innermost (child-path) bulkhead. */
  lh_res_t one;
  assert_int_equal(lh_call(svc, rt, &one), BW_ERR_NONE);
  bw_service_release(svc);
  bw_service_release(inner);
  release_all(bh, DEEP);
  rt_free(rt);
}

/* 40 bulkheads around a held backend: while calls are held each bulkhead
 * (forwarding ones and those past the limit) holds one permit per call; a
 * caller's cancel crossing the limit returns the permit of every layer
 * once, and the backend's attempt is cancelled. */
static void test_deep_cancel_across_limit(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  bw_layer_t *bh[DEEP];
  char name[32];
  for (int i = 0; i < DEEP; i++) {
    snprintf(name, sizeof name, "fwd_deepc_%02d", i);
    bh[i] = bulkhead(name, 8, 0);
  }
  bw_service_t *svc = lh_stack(bh, DEEP, f->inner);
  lh_res_t r[3];
  for (int i = 0; i < 3; i++) lh_start(&r[i], svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 3), 3);
  for (int i = 0; i < DEEP; i++) assert_int_equal(bw_bulkhead_in_use(bh[i]), 3);

  bw_call_cancel(r[1].call);
  lh_wait(&r[1]);
  assert_int_equal(r[1].kind, BW_ERR_CANCELLED);
  LH_UNTIL(atomic_load(&f->be->cancels) == 1);
  assert_int_equal(atomic_load(&f->be->cancels), 1);
  for (int i = 0; i < DEEP; i++) {
    LH_UNTIL(bw_bulkhead_in_use(bh[i]) == 2);
    assert_int_equal(bw_bulkhead_in_use(bh[i]), 2);
  }
  assert_int_equal(lh_wait_pending(f->be, 2), 2);

  lh_finish_one(f->be, BW_ERR_NONE);
  lh_finish_one(f->be, BW_ERR_CONNECT);
  lh_wait(&r[0]);
  lh_wait(&r[2]);
  assert_int_equal(r[0].kind + r[2].kind, BW_ERR_CONNECT); /* one ok, one failed */
  for (int i = 0; i < DEEP; i++) assert_int_equal(bw_bulkhead_in_use(bh[i]), 0);
  for (int i = 0; i < 3; i++) lh_free(&r[i]);
  assert_int_equal(atomic_load(&f->be->calls), 3);
  bw_service_release(svc);
  release_all(bh, DEEP);
  fx_free(f);
}

/* 40 mixed layers (every forwarding kind, 8 of each) around a sync
 * service: every call succeeds, every breaker records each call exactly
 * once as a success, every permit comes back and no timer is left. */
static void test_deep_mixed(void **state) {
  (void)state;
  bw_runtime_t *rt = held_rt();
  sync_leaf_t leaf = {0};
  bw_service_t *inner = sync_svc(&leaf);
  bw_layer_t *l[DEEP];
  bw_layer_t *bh[DEEP / 5], *br[DEEP / 5];
  char name[32];
  for (int i = 0; i < DEEP; i++) {
    snprintf(name, sizeof name, "fwd_mix_%02d", i);
    switch (i % 5) {
    case 0: l[i] = br[i / 5] = breaker(name, rt, 0); break;
    case 1: l[i] = rate_limit(name); break;
    case 2: l[i] = bh[i / 5] = bulkhead(name, 1024, 0); break;
    case 3: l[i] = timeout_ms(10000); break;
    default: l[i] = fallback_value(); break;
    }
  }
  bw_service_t *svc = lh_stack(l, DEEP, inner);
  enum { N = 1000 };
  lh_res_t *r = calloc(N, sizeof *r);
  assert_non_null(r);
  for (int i = 0; i < N; i++) lh_start(&r[i], svc, rt, 0);
  int wrong = 0;
  for (int i = 0; i < N; i++) {
    lh_wait(&r[i]);
    wrong += r[i].kind != BW_ERR_NONE || r[i].resp != leaf_value;
    /* the leaf answered: no fallback was used anywhere */
    wrong += bw_call_fallback_error(r[i].call) != NULL;
    lh_free(&r[i]);
  }
  free(r);
  assert_int_equal(wrong, 0);
  assert_int_equal(atomic_load(&leaf.calls), N);
  for (int i = 0; i < DEEP / 5; i++) {
    assert_int_equal(bw_bulkhead_in_use(bh[i]), 0);
    bw_breaker_stats_t s = stats_of(br[i]);
    assert_int_equal(s.state, BW_BREAKER_CLOSED);
    assert_int_equal(s.successes, N);
    assert_int_equal(s.failures, 0);
    assert_int_equal(s.ignored, 0);
    assert_int_equal(s.calls_permitted, N);
  }
  assert_int_equal(timers_armed(rt), 0);
  bw_service_release(svc);
  bw_service_release(inner);
  release_all(l, DEEP);
  rt_free(rt);
}

/* ---- 2. a built stack around a built stack ---------------------------------- */

static void test_stack_in_stack(void **state) {
  (void)state;
  bw_runtime_t *rt = held_rt();
  sync_leaf_t leaf = {.fail_every = 2};
  bw_service_t *base = sync_svc(&leaf);
  /* inner stack: fallback, timeout, bulkhead around a leaf failing every
   * second call; outer stack: bulkhead, breaker, timeout around it. */
  bw_layer_t *bh_in = bulkhead("fwd_sis_in", 64, 0), *bh_out = bulkhead("fwd_sis_out", 64, 0);
  bw_layer_t *fb = fallback_value(), *t_in = timeout_ms(5000), *t_out = timeout_ms(9000);
  bw_layer_t *br = breaker("fwd_sis_br", rt, 0);
  bw_layer_t *in_l[] = {fb, t_in, bh_in};
  bw_layer_t *out_l[] = {bh_out, br, t_out};
  bw_service_t *inner = NULL, *outer = NULL;
  assert_null(bw_stack_build(&inner, "fwd_inner", in_l, 3, base, NULL));
  assert_null(bw_stack_build(&outer, "fwd_outer", out_l, 3, inner, NULL));
  lh_events_t ev = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook = NULL;
  assert_null(bw_event_hook_add(&hook, NULL, fb, lh_on_event, &ev));

  enum { N = 64, M = 10 };
  int via_fb = 0, wrong = 0;
  for (int i = 0; i < N; i++) {
    lh_res_t r;
    lh_start(&r, outer, rt, 0);
    lh_wait(&r);
    const bw_error_t *fe = bw_call_fallback_error(r.call);
    if (fe) {
      via_fb++;
      wrong += bw_error_kind(fe) != BW_ERR_TRANSPORT || r.resp != fb_value;
    } else {
      wrong += r.resp != leaf_value;
    }
    wrong += r.kind != BW_ERR_NONE;
    lh_free(&r);
  }
  assert_int_equal(wrong, 0);
  assert_int_equal(via_fb, N / 2);
  /* calls on the inner stack directly count there only */
  for (int i = 0; i < M; i++) {
    lh_res_t r;
    assert_int_equal(lh_call(inner, rt, &r), BW_ERR_NONE);
  }
  assert_int_equal(atomic_load(&leaf.calls), N + M);
  assert_int_equal(bw_stack_call_count(outer), N);
  assert_int_equal(bw_stack_outcome_count(outer, BW_ERR_NONE), N);
  assert_int_equal(bw_stack_call_count(inner), N + M);
  assert_int_equal(bw_stack_outcome_count(inner, BW_ERR_NONE), N + M);
  assert_int_equal(bw_histogram_count(bw_stack_latency(inner)), N + M);
  /* the fallback's events belong to the inner stack, position 0 */
  assert_int_equal(bw_stack_event_count(inner, 0, BW_EVENT_FALLBACK_USED), (N + M) / 2);
  assert_int_equal(bw_stack_event_count(outer, 0, BW_EVENT_FALLBACK_USED), 0);
  assert_int_equal(lh_count_events(&ev, BW_EVENT_FALLBACK_USED), (N + M) / 2);
  /* the outer breaker saw the fallback's answers: successes only */
  bw_breaker_stats_t s = stats_of(br);
  assert_int_equal(s.successes, N);
  assert_int_equal(s.failures, 0);
  assert_int_equal(bw_bulkhead_in_use(bh_in), 0);
  assert_int_equal(bw_bulkhead_in_use(bh_out), 0);
  assert_int_equal(timers_armed(rt), 0);

  bw_event_hook_remove(hook);
  pthread_mutex_destroy(&ev.mu);
  bw_service_release(outer);
  bw_service_release(inner);
  bw_service_release(base);
  bw_layer_t *all[] = {bh_in, bh_out, fb, t_in, t_out, br};
  release_all(all, 6);
  rt_free(rt);
}

/* ---- 3. fallback and timeout: who answers an abort -------------------------- */

/* fallback outside timeout(50 ms) around a backend that never answers: the
 * timeout is answered by the fallback, the attempt is cancelled. The
 * fallback's predicate takes every error, so only the abort depth keeps it
 * from answering the caller's own cancel. */
static void test_fallback_outside_timeout(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  bw_layer_t *l[] = {fallback_pred(true), timeout_ms(50)};
  bw_service_t *svc = lh_stack(l, 2, f->inner);
  lh_events_t ev = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook = NULL;
  assert_null(bw_event_hook_add(&hook, svc, NULL, lh_on_event, &ev));

  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_res_t r;
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  fire_50ms(f->rt, &r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(r.resp, fb_value);
  assert_int_equal(r.at_ns - t0, 50 * MS_); /* exactly at the timeout */
  const bw_error_t *fe = bw_call_fallback_error(r.call);
  assert_non_null(fe);
  assert_int_equal(bw_error_kind(fe), BW_ERR_TIMEOUT);
  assert_int_equal(bw_error_detail(fe), 50);
  assert_int_equal(atomic_load(&f->be->cancels), 1); /* the attempt was cancelled */
  assert_int_equal(lh_count_events(&ev, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(lh_count_events(&ev, BW_EVENT_FALLBACK_USED), 1);
  assert_int_equal(bw_stack_event_count(svc, 1, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(bw_stack_event_count(svc, 0, BW_EVENT_FALLBACK_USED), 1);
  lh_free(&r);

  /* the caller's own cancel is not answered by the fallback (whatever
   * its predicate says) */
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  bw_call_cancel(r.call);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  assert_null(bw_call_fallback_error(r.call));
  assert_int_equal(lh_count_events(&ev, BW_EVENT_FALLBACK_USED), 1);
  assert_int_equal(atomic_load(&f->be->cancels), 2);
  lh_free(&r);
  assert_int_equal(timers_armed(f->rt), 0);

  bw_event_hook_remove(hook);
  pthread_mutex_destroy(&ev.mu);
  bw_service_release(svc);
  release_all(l, 2);
  fx_free(f);
}

/* timeout(50 ms) outside fallback: the fallback answers the backend's own
 * failure, but not the timeout's abort from outside it. */
static void test_fallback_inside_timeout(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  bw_layer_t *l[] = {timeout_ms(50), fallback_value()};
  bw_service_t *svc = lh_stack(l, 2, f->inner);
  lh_events_t ev = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook = NULL;
  assert_null(bw_event_hook_add(&hook, svc, NULL, lh_on_event, &ev));

  /* a failure from inside: answered */
  lh_res_t r;
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  lh_finish_one(f->be, BW_ERR_CONNECT);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(r.resp, fb_value);
  assert_non_null(bw_call_fallback_error(r.call));
  assert_int_equal(bw_error_kind(bw_call_fallback_error(r.call)), BW_ERR_CONNECT);
  lh_free(&r);

  /* the timeout from outside: not answered */
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  fire_50ms(f->rt, &r);
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  assert_int_equal(r.resp, -1);
  assert_int_equal(r.at_ns - t0, 50 * MS_); /* exactly at the timeout */
  assert_null(bw_call_fallback_error(r.call));
  assert_int_equal(bw_error_detail(bw_call_error(r.call)), 50);
  assert_int_equal(atomic_load(&f->be->cancels), 1);
  assert_int_equal(lh_count_events(&ev, BW_EVENT_FALLBACK_USED), 1); /* the first call's */
  assert_int_equal(lh_count_events(&ev, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(bw_stack_outcome_count(svc, BW_ERR_TIMEOUT), 1);
  assert_int_equal(bw_stack_outcome_count(svc, BW_ERR_NONE), 1);
  lh_free(&r);
  assert_int_equal(timers_armed(f->rt), 0);

  bw_event_hook_remove(hook);
  pthread_mutex_destroy(&ev.mu);
  bw_service_release(svc);
  release_all(l, 2);
  fx_free(f);
}

/* ---- 4. breaker inside a timeout ------------------------------------------------ */

static void test_breaker_inside_timeout(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  bw_layer_t *br = breaker("fwd_brk_t", f->rt, 1);
  bw_layer_t *l[] = {timeout_ms(50), br};
  bw_service_t *svc = lh_stack(l, 2, f->inner);

  /* the caller's cancel: ignored, not a failure (the breaker stays closed) */
  lh_res_t r;
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  bw_call_cancel(r.call);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  lh_free(&r);
  bw_breaker_stats_t s = stats_of(br);
  assert_int_equal(s.state, BW_BREAKER_CLOSED);
  assert_int_equal(s.ignored, 1);
  assert_int_equal(s.failures, 0);
  assert_int_equal(s.successes, 0);

  /* the timeout from outside: a failure, which opens it (threshold 1) */
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  fire_50ms(f->rt, &r);
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  lh_free(&r);
  s = stats_of(br);
  assert_int_equal(s.state, BW_BREAKER_OPEN);
  assert_int_equal(s.failures, 1);
  assert_int_equal(s.ignored, 1);
  assert_int_equal(atomic_load(&f->be->cancels), 2);

  /* open: rejected without reaching the backend */
  assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(atomic_load(&f->be->calls), 2);
  assert_int_equal(stats_of(br).calls_rejected, 1);
  assert_int_equal(timers_armed(f->rt), 0);

  bw_service_release(svc);
  release_all(l, 2);
  fx_free(f);
}

/* ---- 5. abandoned calls ----------------------------------------------------- */

/* bw_call_free in flight through a forwarding bulkhead: the attempt is
 * cancelled, the callback never runs, the permit comes back (once). */
static void test_abandon_returns_permit(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  lh_fx_stack(f, bulkhead("fwd_abandon", 1, 0), false);
  lh_res_t a;
  lh_start(&a, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 1);
  lh_free(&a); /* abandon */
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  assert_int_equal(atomic_load(&f->be->cancels), 1);
  assert_int_equal(lh_wait_pending(f->be, 0), 0);
  assert_int_equal(atomic_load(&a.done), 0); /* no callback for an abandoned call */

  /* exactly one permit: one call runs, the next is rejected */
  lh_res_t b, c;
  lh_start(&b, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  assert_int_equal(lh_call(f->svc, f->rt, &c), BW_ERR_BULKHEAD_FULL);
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_NONE);
  lh_free(&b);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  fx_free(f);
}

/* The same through timeout + bulkhead around a backend that ignores the
 * cancel and answers late: the permit comes back at the abandon, the late
 * answer loses and returns nothing twice, the timeout's timer is gone. */
static void test_abandon_late_answer(void **state) {
  (void)state;
  bw_runtime_t *rt = held_rt();
  stubborn_t sb = {0};
  bw_service_t *be = stubborn_svc(&sb);
  bw_layer_t *bh = bulkhead("fwd_abandon_late", 1, 1);
  bw_layer_t *l[] = {timeout_ms(60000), bh};
  bw_service_t *svc = lh_stack(l, 2, be);

  lh_res_t a, q;
  lh_start(&a, svc, rt, 0);
  assert_int_equal(stubborn_wait(&sb, 1), 1);
  assert_int_equal(bw_bulkhead_in_use(bh), 1);
  /* the timeout's, while it waits (armed once the start handed it on, so
   * possibly just after the backend got the call) */
  LH_UNTIL(timers_armed(rt) == 1);
  assert_int_equal(timers_armed(rt), 1);
  lh_start(&q, svc, rt, 0);
  LH_UNTIL(bw_bulkhead_queued(bh) == 1);
  assert_int_equal(bw_bulkhead_queued(bh), 1);
  lh_free(&q); /* abandon the queued one: it leaves the queue */
  LH_UNTIL(bw_bulkhead_queued(bh) == 0);
  assert_int_equal(bw_bulkhead_queued(bh), 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 1);

  lh_free(&a); /* abandon the running one */
  LH_UNTIL(bw_bulkhead_in_use(bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  LH_UNTIL(timers_armed(rt) == 0);
  assert_int_equal(timers_armed(rt), 0);
  assert_false(stubborn_answer(&sb)); /* too late: the abandon won */
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  assert_int_equal(atomic_load(&a.done) + atomic_load(&q.done), 0);
  assert_int_equal(atomic_load(&sb.calls), 1); /* the queued call never ran */

  /* exactly one permit afterwards */
  lh_res_t b, c;
  lh_start(&b, svc, rt, 0);
  assert_int_equal(stubborn_wait(&sb, 1), 1);
  assert_int_equal(bw_bulkhead_in_use(bh), 1);
  lh_start(&c, svc, rt, 0);
  LH_UNTIL(bw_bulkhead_queued(bh) == 1);
  assert_true(stubborn_answer(&sb));
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_NONE);
  assert_int_equal(b.resp, 99);
  assert_int_equal(stubborn_wait(&sb, 1), 1); /* c got the permit */
  assert_int_equal(bw_bulkhead_in_use(bh), 1);
  assert_true(stubborn_answer(&sb));
  lh_wait(&c);
  assert_int_equal(c.kind, BW_ERR_NONE);
  lh_free(&b);
  lh_free(&c);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  assert_int_equal(timers_armed(rt), 0);

  bw_service_release(svc);
  bw_service_release(be);
  release_all(l, 2);
  rt_free(rt);
}

/* Cancel storm through forwarding layers: another thread cancels every
 * third call while the calls start (some between a layer's admission and
 * its hand-off), this one answers the rest. Every call completes once, the
 * breaker records successes and (cancels as) ignored only, every permit
 * and timer is gone. */
static void test_cancel_storm(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  bw_layer_t *br = breaker("fwd_storm_br", f->rt, 0), *bh = bulkhead("fwd_storm_bh", 4096, 0);
  bw_layer_t *l[] = {br, timeout_ms(60000), bh};
  bw_service_t *svc = lh_stack(l, 3, f->inner);
  int n = lh_scaled(3000);
  if (n > 4000) n = 4000; /* the backend holds at most 4096 */
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  assert_non_null(r);
  for (int i = 0; i < n; i++) lh_start(&r[i], svc, f->rt, 0);
  lh_storm_t s;
  lh_storm_start(&s, r, n, true);
  uint64_t end = lh_real_ms() + 60000;
  while (lh_wait_done(r, n, 0) < n && lh_real_ms() < end)
    if (!lh_finish_any(f->be)) sched_yield();
  lh_storm_join(&s);
  assert_int_equal(lh_wait_done(r, n, n), n);
  int ok = 0, cancelled = 0;
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&r[i].done), 1);
    ok += r[i].kind == BW_ERR_NONE;
    cancelled += r[i].kind == BW_ERR_CANCELLED;
  }
  assert_int_equal(ok + cancelled, n);
  LH_UNTIL(bw_bulkhead_in_use(bh) == 0 && timers_armed(f->rt) == 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  assert_int_equal(timers_armed(f->rt), 0);
  /* A call cancelled before its start never reaches the breaker; one that
   * reached the backend was admitted, so its cancel is recorded. */
  bw_breaker_stats_t st = stats_of(br);
  int reached = atomic_load(&f->be->calls);
  assert_int_equal(st.successes, ok);
  assert_int_equal(st.failures, 0);
  assert_true(st.ignored <= (uint64_t)cancelled);
  assert_true((uint64_t)(reached - ok) <= st.ignored);
  for (int i = 0; i < n; i++) lh_free(&r[i]);
  free(r);
  bw_service_release(svc);
  release_all(l, 3);
  fx_free(f);
}

/* The same storm over a backend that answers inside the start chain, every
 * other attempt failing so that retry resumes the call: a start chain that
 * won its own call unmarks it without a hand-off check (end_mark), and a
 * cancel racing it either won first (and handed off) or lost. Every call
 * completes once; permits and timers are all given back. */
static void test_cancel_storm_sync_answers(void **state) {
  (void)state;
  lh_fx_t *f = lh_fx_new(false, false);
  for (int i = 0; i < 4096; i += 2) f->be->script[i] = BW_ERR_TRANSPORT;
  f->be->nscript = 4096;
  bw_layer_t *bh = bulkhead("fwd_sstorm_bh", 4096, 0);
  bw_layer_t *l[] = {retry_const(3, 0), timeout_ms(60000), bh};
  bw_service_t *svc = lh_stack(l, 3, f->inner);
  int n = lh_scaled(1500);
  if (n > 1500) n = 1500; /* at most two attempts each: within the script */
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  assert_non_null(r);
  for (int i = 0; i < n; i++) lh_start(&r[i], svc, f->rt, 0);
  lh_storm_t s; /* while the workers start them */
  lh_storm_start(&s, r, n, false);
  lh_storm_join(&s);
  assert_int_equal(lh_wait_done(r, n, n), n);
  /* Concurrent calls share the backend's script: one may draw three
   * failures and give up. A cancel that lost to a failed first attempt
   * still stops retry from going on (bw__call_resume): that call ends
   * with the attempt's error. */
  int ok = 0;
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&r[i].done), 1);
    bw_error_kind_t k = r[i].kind;
    ok += k == BW_ERR_NONE;
    if (i % 3 != 0) assert_true(k == BW_ERR_NONE || k == BW_ERR_RETRIES_EXHAUSTED);
    else assert_true(k == BW_ERR_NONE || k == BW_ERR_CANCELLED || k == BW_ERR_RETRIES_EXHAUSTED || k == BW_ERR_TRANSPORT);
  }
  assert_true(ok > 0);
  LH_UNTIL(bw_bulkhead_in_use(bh) == 0 && timers_armed(f->rt) == 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  assert_int_equal(timers_armed(f->rt), 0);
  for (int i = 0; i < n; i++) lh_free(&r[i]);
  free(r);
  bw_service_release(svc);
  release_all(l, 3);
  lh_fx_free(f);
}

/* A cancel from another thread that wins while the start chain is still
 * inside the backend (which answers in place, after spinning until the
 * cancel or 2 ms): the chain's own answer loses, so start() must take
 * the hand-off and deliver the cancel (end_mark); it failed every run with
 * end_mark skipping the hand-off check. */
static atomic_int spin_calls;
static bw_error_t *spin_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  atomic_fetch_add(&spin_calls, 1);
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do clock_gettime(CLOCK_MONOTONIC, &t);
  while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 2000000 &&
         !bw_call_is_cancelled(call));
  *resp = &leaf_value;
  *rf = NULL;
  return NULL;
}

static void test_cancel_during_sync_answer(void **state) {
  (void)state;
  bw_runtime_t *rt = lh_rt(false, 2);
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = spin_sync;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &fo));
  bw_layer_t *bh = bulkhead("fwd_spin_bh", 4096, 0);
  bw_layer_t *l[] = {timeout_ms(60000), bh};
  bw_service_t *svc = lh_stack(l, 2, leaf);
  enum { N = 300 };
  lh_res_t r[N];
  memset(r, 0, sizeof r);
  int cancelled = 0;
  for (int i = 0; i < N; i++) {
    int before = atomic_load(&spin_calls);
    lh_start(&r[i], svc, rt, 0);
    /* cancel once the backend has the call (its answer is under way) */
    LH_UNTIL(atomic_load(&spin_calls) > before);
    bw_call_cancel(r[i].call);
    lh_wait(&r[i]);
    assert_true(r[i].kind == BW_ERR_NONE || r[i].kind == BW_ERR_CANCELLED);
    cancelled += r[i].kind == BW_ERR_CANCELLED;
    lh_free(&r[i]);
  }
  assert_true(cancelled > 0); /* the window was hit */
  LH_UNTIL(bw_bulkhead_in_use(bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  bw_service_release(svc);
  bw_service_release(leaf);
  release_all(l, 2);
  bw_runtime_free(rt);
}

/* ---- 6. timeout over a synchronous answer: no timer, no reference -------------- */

/* CHAINS chains of calls, each call started from the previous one's
 * callback (on a worker, as in a server); several chains so that one
 * chain's callback looks at the timers while another's call is in flight. */
enum { CHAINS = 4 };
typedef struct chains {
  bw_service_t *svc;
  bw_runtime_t *rt;
  atomic_int left, ok, finished;
  atomic_ullong armed_seen; /* timers armed, summed over every callback */
  long allocs_before;
} chains_t;

static void chain_next(chains_t *c);
static void chain_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  chains_t *c = arg;
  if (!err && bw_call_response(call) == &leaf_value) atomic_fetch_add(&c->ok, 1);
  atomic_fetch_add(&c->armed_seen, timers_armed(c->rt));
  bw_call_free(call);
  chain_next(c);
}
static void chain_next(chains_t *c) {
  if (atomic_fetch_sub(&c->left, 1) <= 0) {
    pthread_mutex_lock(&lh_mu);
    atomic_fetch_add(&c->finished, 1);
    pthread_cond_broadcast(&lh_cv);
    pthread_mutex_unlock(&lh_mu);
    return;
  }
  bw_call_t *call = NULL;
  if (bw_call_new(&call, c->svc, c->rt) || bw_service_call(c->svc, call, chain_done, c)) abort();
}
static bw_poll_t chains_start(bw_task_t *self, void *arg) {
  (void)self;
  chains_t *c = arg;
  c->allocs_before = lh_allocs();
  for (int i = 0; i < CHAINS; i++) chain_next(c);
  return BW_READY;
}

/* n calls in CHAINS chains; returns the allocations made meanwhile. */
static long run_chains(bw_service_t *svc, bw_runtime_t *rt, int n, chains_t *c) {
  memset(c, 0, sizeof *c);
  c->svc = svc;
  c->rt = rt;
  atomic_store(&c->left, n);
  assert_null(bw_block_on(rt, chains_start, c, NULL));
  LH_UNTIL(atomic_load(&c->finished) == CHAINS);
  if (atomic_load(&c->finished) != CHAINS) abort(); /* a worker may still use c */
  return lh_allocs() - c->allocs_before;
}

static void test_timeout_sync_no_timer(void **state) {
  (void)state;
  bw_runtime_t *rt = held_rt();
  sync_leaf_t leaf = {0};
  bw_service_t *inner = sync_svc(&leaf);
  bw_layer_t *br = breaker("fwd_sync_br", rt, 0), *bh = bulkhead("fwd_sync_bh", CHAINS, 0);
  bw_layer_t *l[] = {timeout_ms(30000), br, bh};
  bw_service_t *svc = lh_stack(l, 3, inner);

  /* the forwarded call carries the timeout's deadline inward (the paused
   * clock does not move during a call) */
  lh_res_t r;
  assert_int_equal(lh_call(svc, rt, &r), BW_ERR_NONE);
  assert_int_equal(atomic_load(&leaf.remaining_ns), (int64_t)30000 * (int64_t)MS_);
  /* a caller's shorter deadline wins */
  lh_start(&r, svc, rt, 20);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(atomic_load(&leaf.remaining_ns), (int64_t)20 * (int64_t)MS_);
  lh_free(&r);

  chains_t c;
  (void)run_chains(svc, rt, 200, &c); /* warm the pools */
  assert_int_equal(atomic_load(&c.ok), 200);
  enum { N = 10000 };
  long allocs = run_chains(svc, rt, N, &c);
  assert_int_equal(atomic_load(&c.ok), N);
  /* no timer is armed for a call answered during its start (sampled in
   * every callback while the other chains' calls are in flight) */
  assert_int_equal(atomic_load(&c.armed_seen), 0);
  /* A timer reference left behind would keep each call out of its pool
   * (one allocation per call); pools only grow to the calls in flight plus
   * per-thread caches (test_zero_malloc.c allows 64 for noise). */
  assert_true(allocs <= 64);
  assert_int_equal(atomic_load(&leaf.calls), N + 200 + 2);
  assert_int_equal(timers_armed(rt), 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  assert_int_equal(stats_of(br).successes, N + 200 + 2);
  /* nothing outstanding: everything can go at once */
  bw_service_release(svc);
  bw_service_release(inner);
  release_all(l, 3);
  rt_free(rt);
}

/* What forwarding changes on the shared call for its inner nodes (the
 * timeout's deadline, retry's attempt number) is undone before the caller
 * sees it, and the call still names the service it was made for. Also after
 * a failed first attempt taken back by retry (resume) and retried. */
static void test_caller_sees_own_call(void **state) {
  (void)state;
  bw_runtime_t *rt = held_rt();
  sync_leaf_t leaf = {0};
  bw_service_t *inner = sync_svc(&leaf);
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 3;
  ro.backoff.kind = BW_BACKOFF_CONSTANT;
  ro.backoff.base_ns = 0;
  ro.backoff.jitter = BW_JITTER_NONE;
  bw_layer_t *retry;
  assert_null(bw_retry_new(&retry, &ro));
  bw_layer_t *l[] = {retry, timeout_ms(30000), bulkhead("fwd_own_bh", 4, 0)};
  bw_service_t *svc = lh_stack(l, 3, inner);
  for (int fail_first = 0; fail_first <= 2; fail_first++) {
    atomic_store(&leaf.fail_first, fail_first);
    atomic_store(&leaf.calls, 0);
    lh_res_t r;
    lh_start(&r, svc, rt, 0);
    lh_wait(&r);
    assert_int_equal(r.kind, BW_ERR_NONE);
    assert_int_equal(atomic_load(&leaf.calls), fail_first + 1);
    assert_ptr_equal(bw_call_service(r.call), svc);
    assert_int_equal(bw_call_deadline_ns(r.call), 0);
    assert_int_equal(bw_call_attempt(r.call), 0);
    lh_free(&r);
  }
  assert_int_equal(bw_bulkhead_in_use(l[2]), 0);
  bw_service_release(svc);
  bw_service_release(inner);
  release_all(l, 3);
  rt_free(rt);
}

/* Control for the above: the same timeout over a backend that holds the
 * call does arm its timer, and disarms it when the answer comes. */
static void test_timeout_async_arms_timer(void **state) {
  (void)state;
  lh_fx_t *f = held_fx();
  bw_layer_t *bh = bulkhead("fwd_async_bh", 4, 0);
  bw_layer_t *l[] = {timeout_ms(30000), bh};
  bw_service_t *svc = lh_stack(l, 2, f->inner);
  lh_res_t r;
  lh_start(&r, svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  LH_UNTIL(timers_armed(f->rt) == 1);
  assert_int_equal(timers_armed(f->rt), 1);
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  lh_free(&r);
  assert_int_equal(timers_armed(f->rt), 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  bw_service_release(svc);
  release_all(l, 2);
  fx_free(f);
}

/* ---- 7. retry resuming a forwarded call ------------------------------------- */

/* The stack of this section and the next: retry(attempts, constant
 * backoff) over timeout(50 ms) over a stubborn backend, on a held paused
 * runtime; the stack's events recorded in ev when `events`. */
typedef struct resume_fx {
  bw_runtime_t *rt;
  stubborn_t sb;
  bw_service_t *be, *svc;
  bw_layer_t *l[2];
  lh_events_t ev;
  bw_event_hook_t *hook;
} resume_fx_t;

static void resume_fx_init(resume_fx_t *f, uint32_t attempts, uint64_t backoff_ms, bool events) {
  memset(f, 0, sizeof *f);
  f->rt = held_rt();
  f->be = stubborn_svc(&f->sb);
  f->l[0] = retry_const(attempts, backoff_ms);
  f->l[1] = timeout_ms(50);
  f->svc = lh_stack(f->l, 2, f->be);
  pthread_mutex_init(&f->ev.mu, NULL);
  if (events) assert_null(bw_event_hook_add(&f->hook, f->svc, NULL, lh_on_event, &f->ev));
}

static void resume_fx_fini(resume_fx_t *f) {
  bw_event_hook_remove(f->hook);
  pthread_mutex_destroy(&f->ev.mu);
  bw_service_release(f->svc);
  bw_service_release(f->be);
  release_all(f->l, 2);
  rt_free(f->rt);
}

/* retry(2 attempts, 20 ms backoff) over timeout(50 ms) over a backend that
 * ignores the cancel and answers late. The first attempt is the call itself
 * (forwarded); the timeout aborts it, retry's finish hook makes it RUNNING
 * again (bw__call_resume) and waits. The backend's late answer to the
 * aborted first attempt, given during that wait, must lose: it is not the
 * outcome of the retried call (before the fix it won, the caller got it
 * and the backoff timer then fired on a finished call). The second attempt
 * answers the caller. */
static void test_retry_late_answer_after_resume(void **state) {
  (void)state;
  resume_fx_t f;
  resume_fx_init(&f, 2, 20, true);
  bw_runtime_t *rt = f.rt;
  bw_service_t *svc = f.svc;

  lh_res_t r;
  lh_start(&r, svc, rt, 0);
  assert_int_equal(stubborn_wait(&f.sb, 1), 1);
  LH_UNTIL(timers_armed(rt) == 1); /* the timeout's */
  assert_int_equal(timers_armed(rt), 1);
  assert_null(bw_runtime_advance(rt, 50));
  /* the timeout fired, retry scheduled attempt 2 and armed its backoff
   * (after resuming the call) */
  LH_UNTIL(lh_count_events(&f.ev, BW_EVENT_RETRY_SCHEDULED) == 1 && timers_armed(rt) == 1);
  assert_int_equal(lh_count_events(&f.ev, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(timers_armed(rt), 1);
  assert_int_equal(atomic_load(&r.done), 0);

  assert_false(stubborn_answer(&f.sb)); /* attempt 1's late answer loses */
  assert_int_equal(atomic_load(&r.done), 0);

  assert_null(bw_runtime_advance(rt, 20)); /* the backoff ends: attempt 2 */
  assert_int_equal(stubborn_wait(&f.sb, 1), 1);
  assert_true(stubborn_answer(&f.sb));
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(r.resp, 99);
  assert_int_equal(atomic_load(&f.sb.calls), 2);
  lh_free(&r);
  LH_UNTIL(timers_armed(rt) == 0);
  assert_int_equal(timers_armed(rt), 0);

  resume_fx_fini(&f);
}

/* ---- 8. a per-attempt timeout's leftovers after retry resumed the call -------- */

/* Responses whose destroy function counts: a late answer that loses must
 * be freed (once), the winning one too (with the call that carries it). */
static atomic_int late_freed;
static void counted_free(void *p) {
  atomic_fetch_add(&late_freed, 1);
  free(p);
}

/* Take the held call at index i (the backend keeps the order it got them). */
static bw_call_t *stubborn_take(stubborn_t *s, int i) {
  pthread_mutex_lock(&lh_mu);
  assert_true(i < s->nheld);
  bw_call_t *c = s->held[i];
  memmove(&s->held[i], &s->held[i + 1], sizeof s->held[0] * (size_t)(s->nheld - i - 1));
  s->nheld--;
  pthread_mutex_unlock(&lh_mu);
  return c;
}

/* Answer c (taken from the backend) with an int `v` whose destroy counts,
 * drop the backend's reference; returns whether the answer won. */
static bool answer_counted(bw_call_t *c, int v) {
  int *p = malloc(sizeof *p);
  *p = v;
  bool won = bw_call_complete(c, p, counted_free, NULL);
  bw_call_unref(c);
  return won;
}

/* Busy-wait ns of real time (sweeps the interleaving of two threads). */
static void spin_ns(uint64_t ns) {
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  do clock_gettime(CLOCK_MONOTONIC, &b);
  while ((uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec < ns);
}

/* Bring a call on retry(20 ms backoff) + timeout(50 ms) over `sb` to its
 * second attempt: attempt 1 (the caller's call itself, forwarded) times
 * out at +50 ms and is held on by the backend, retry resumes the call and
 * backs off, attempt 2 (a child) reaches the backend at +70 ms with its
 * own timeout armed. Returns the time the call started. */
static uint64_t to_second_attempt(bw_runtime_t *rt, bw_service_t *svc, stubborn_t *sb,
                                  lh_events_t *ev, lh_res_t *r) {
  uint64_t t0 = bw_runtime_now_ns(rt);
  lh_start(r, svc, rt, 0);
  assert_int_equal(stubborn_wait(sb, 1), 1);
  LH_UNTIL(timers_armed(rt) == 1); /* attempt 1's timeout */
  assert_int_equal(timers_armed(rt), 1);
  assert_null(bw_runtime_advance(rt, 50));
  LH_UNTIL(lh_count_events(ev, BW_EVENT_RETRY_SCHEDULED) == 1 && timers_armed(rt) == 1);
  assert_int_equal(lh_count_events(ev, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(timers_armed(rt), 1); /* the backoff */
  assert_null(bw_runtime_advance(rt, 20));
  assert_int_equal(stubborn_wait(sb, 2), 2);
  LH_UNTIL(timers_armed(rt) == 1); /* attempt 2's timeout */
  assert_int_equal(timers_armed(rt), 1);
  pthread_mutex_lock(&lh_mu);
  bool first_is_call = sb->held[0] == r->call && sb->held[1] != r->call;
  pthread_mutex_unlock(&lh_mu);
  assert_true(first_is_call); /* attempt 1 was the call itself, attempt 2 a child */
  assert_int_equal(atomic_load(&r->done), 0);
  return t0;
}

/* retry(3, 20 ms) + timeout(50 ms) over a backend that ignores cancels.
 * Attempt 1's late answer (a success, with a response) arrives while
 * attempt 2 is running: it must lose (it names generation 0 of a call now
 * in generation 1), its response must be freed at once, and it must not
 * disturb attempt 2 (whose timeout stays armed). Attempt 2's answer is the
 * caller's result, delivered once. test_retry_late_answer_after_resume
 * covers the same answer during the backoff, before attempt 2 exists. */
static void test_retry_late_answer_during_next_attempt(void **state) {
  (void)state;
  resume_fx_t f;
  resume_fx_init(&f, 3, 20, true);
  bw_runtime_t *rt = f.rt;
  bw_service_t *svc = f.svc;
  atomic_store(&late_freed, 0);

  lh_res_t r;
  uint64_t t0 = to_second_attempt(rt, svc, &f.sb, &f.ev, &r);

  assert_false(answer_counted(stubborn_take(&f.sb, 0), 1)); /* attempt 1, late */
  assert_int_equal(atomic_load(&late_freed), 1);          /* freed by the loser */
  assert_int_equal(atomic_load(&r.done), 0);
  assert_int_equal(timers_armed(rt), 1); /* attempt 2's timeout still armed */

  assert_null(bw_runtime_advance(rt, 49)); /* 1 ms before attempt 2's timeout */
  assert_true(answer_counted(stubborn_take(&f.sb, 0), 2));
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(r.resp, 2);
  assert_int_equal(r.at_ns - t0, 119 * MS_);
  assert_int_equal(atomic_load(&late_freed), 1); /* attempt 2's is the caller's now */
  LH_UNTIL(timers_armed(rt) == 0);
  assert_int_equal(timers_armed(rt), 0);
  /* nothing left to fire: the callback stays at one */
  assert_null(bw_runtime_advance(rt, 1000));
  assert_int_equal(atomic_load(&r.done), 1);
  assert_int_equal(atomic_load(&f.sb.calls), 2);
  assert_int_equal(lh_count_events(&f.ev, BW_EVENT_TIMEOUT), 1);
  assert_int_equal(lh_count_events(&f.ev, BW_EVENT_ATTEMPT_FAILED), 1);
  assert_int_equal(lh_count_events(&f.ev, BW_EVENT_GIVE_UP), 0);
  lh_free(&r);
  /* with the call's memory, once (the worker that ran the callback may
   * still hold its in-flight reference for a moment) */
  LH_UNTIL(atomic_load(&late_freed) == 2);
  assert_int_equal(atomic_load(&late_freed), 2);

  resume_fx_fini(&f);
}

/* The same stack with 2 attempts, and attempt 2 also times out: the caller
 * gets retry's give-up once, at +120 ms, and its error says the timeout's
 * duration for both attempts (attempt 2's timeout runs on a child, not on
 * the resumed call: same text). Both attempts answer late afterwards: both
 * lose, both responses are freed, the callback stays at one. */
static void test_retry_second_attempt_times_out(void **state) {
  (void)state;
  resume_fx_t f;
  resume_fx_init(&f, 2, 20, true);
  bw_runtime_t *rt = f.rt;
  bw_service_t *svc = f.svc;
  atomic_store(&late_freed, 0);

  lh_res_t r;
  uint64_t t0 = to_second_attempt(rt, svc, &f.sb, &f.ev, &r);
  assert_null(bw_runtime_advance(rt, 49));
  assert_int_equal(atomic_load(&r.done), 0);
  assert_null(bw_runtime_advance(rt, 1)); /* attempt 2's timeout */
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
  assert_int_equal(r.at_ns - t0, 120 * MS_);
  const bw_error_t *e = bw_call_error(r.call);
  char buf[512];
  bw_error_format(e, buf, sizeof buf, 0);
  assert_non_null(strstr(buf, "gave up after 2 attempts"));
  assert_non_null(strstr(buf, "no response within 50 ms"));
  const bw_error_t *cause = bw_error_cause(e); /* the last attempt's */
  assert_int_equal(bw_error_kind(cause), BW_ERR_TIMEOUT);
  assert_int_equal(bw_error_detail(cause), 50);
  assert_string_equal(bw_error_message(cause), "no response within 50 ms");
  assert_int_equal(bw_error_related_count(e), 2);
  for (size_t i = 0; i < 2; i++) {
    const bw_error_t *a = bw_error_related(e, i);
    assert_int_equal(bw_error_kind(a), BW_ERR_TIMEOUT);
    assert_string_equal(bw_error_message(a), "no response within 50 ms");
  }

  assert_int_equal(stubborn_held(&f.sb), 2);
  assert_false(answer_counted(stubborn_take(&f.sb, 0), 1)); /* attempt 1 */
  assert_false(answer_counted(stubborn_take(&f.sb, 0), 2)); /* attempt 2 */
  assert_int_equal(atomic_load(&late_freed), 2);
  LH_UNTIL(timers_armed(rt) == 0);
  assert_int_equal(timers_armed(rt), 0);
  assert_null(bw_runtime_advance(rt, 1000));
  assert_int_equal(atomic_load(&r.done), 1);
  assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
  assert_int_equal(atomic_load(&f.sb.calls), 2);
  assert_int_equal(lh_count_events(&f.ev, BW_EVENT_TIMEOUT), 2);
  assert_int_equal(lh_count_events(&f.ev, BW_EVENT_GIVE_UP), 1);
  lh_free(&r);
  assert_int_equal(atomic_load(&late_freed), 2);

  resume_fx_fini(&f);
}

/* The answerer of the test below: a task that keeps one worker to itself
 * (it blocks on a condition variable; everything else runs on the other
 * worker) and completes the call it is handed there when told to: that
 * completion, and the delivery that follows inline (finish hooks, retry's
 * resume, attempt 2's start), run on that worker, in parallel with the
 * other worker's timers. */
typedef struct answerer {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int go;          /* 1: answer `call` now; -1: return */
  bw_call_t *call; /* the backend's reference, dropped here */
  bw_error_t *err; /* made on the test thread (allocations on workers are slowed) */
  int won;         /* -1 until answered, then 0/1 */
} answerer_t;

static bw_poll_t answerer_poll(bw_task_t *self, void *arg) {
  (void)self;
  answerer_t *a = arg;
  pthread_mutex_lock(&a->mu);
  for (;;) {
    while (a->go == 0) pthread_cond_wait(&a->cv, &a->mu);
    if (a->go < 0) break;
    a->go = 0;
    bw_call_t *c = a->call;
    bw_error_t *e = a->err;
    pthread_mutex_unlock(&a->mu);
    bool won = bw_call_complete(c, NULL, NULL, e);
    bw_call_unref(c);
    pthread_mutex_lock(&a->mu);
    a->won = won;
    pthread_cond_broadcast(&a->cv);
  }
  pthread_mutex_unlock(&a->mu);
  return BW_READY;
}

/* Hand c to the answerer with a retryable error; wait for its verdict. */
static bool answerer_answer(answerer_t *a, bw_call_t *c, uint64_t after_ns) {
  bw_error_t *e = bw_error_new(BW_ERR_TRANSPORT, 0, "attempt 1 failed");
  spin_ns(after_ns);
  pthread_mutex_lock(&a->mu);
  a->call = c;
  a->err = e;
  a->won = -1;
  a->go = 1;
  pthread_cond_broadcast(&a->cv);
  while (a->won < 0) pthread_cond_wait(&a->cv, &a->mu);
  bool won = a->won;
  pthread_mutex_unlock(&a->mu);
  return won;
}

static void answerer_stop(answerer_t *a) {
  pthread_mutex_lock(&a->mu);
  a->go = -1;
  pthread_cond_broadcast(&a->cv);
  pthread_mutex_unlock(&a->mu);
}

/* Attempt 1's timer and attempt 1's own failure land together, on two
 * workers: this thread moves the clock onto the timeout (one worker fires
 * it) and, 0-25 us later, has the other worker answer attempt 1 with a
 * retryable error. Either may win; no backoff, so the winner's finish
 * makes retry resume the call and start attempt 2 at once. The loser is
 * stale: a late answer, or a timer that read `live` before the answer's
 * finish cleared it and aborts a call that is already running attempt 2
 * in its next generation (bw__call_abort from inside the resuming node
 * loses there). On odd rounds the timer's error takes 300 us to make
 * (between its `live` check and its abort) so that the second kind comes
 * up often: about one round in five here (counted with a print in
 * timeout.c), none without the slowdown. Whatever the order: exactly one
 * of them wins (a TIMEOUT event exactly when the answer lost), attempt 2
 * runs, and its answer is the caller's, once. With service.c's generation
 * fence for aborts (win_any) switched off, this fails in every run, also
 * at tsan's BW_TEST_SCALE of 0.05 (20 rounds). */
static void test_retry_stale_timer_races_answer(void **state) {
  (void)state;
  resume_fx_t f;
  resume_fx_init(&f, 3, 0, false);
  bw_runtime_t *rt = f.rt;
  bw_service_t *svc = f.svc;
  atomic_store(&late_freed, 0);
  answerer_t a = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .won = -1};
  bw_join_t *aj = NULL;
  assert_null(bw_spawn(rt, answerer_poll, &a, &aj));
  int n = lh_scaled(400), answer_won = 0;
  for (int i = 0; i < n; i++) {
    lh_res_t r;
    lh_start(&r, svc, rt, 0);
    assert_int_equal(stubborn_wait(&f.sb, 1), 1);
    LH_UNTIL(timers_armed(rt) == 1);
    assert_int_equal(timers_armed(rt), 1);
    bw_call_t *c = stubborn_take(&f.sb, 0);
    assert_ptr_equal(c, r.call); /* attempt 1: the call itself */
    lh_slow_worker_allocs(rt, i % 2 ? 300000 : 0);
    assert_null(bw_runtime_advance(rt, 50)); /* kicks a worker to fire it */
    answer_won += answerer_answer(&a, c, (uint64_t)(i / 2 % 64) * 400u);
    assert_int_equal(stubborn_wait(&f.sb, 1), 1); /* attempt 2 */
    lh_slow_worker_allocs(rt, 0);
    assert_true(answer_counted(stubborn_take(&f.sb, 0), 2));
    lh_wait(&r);
    assert_int_equal(r.kind, BW_ERR_NONE);
    assert_int_equal(r.resp, 2);
    LH_UNTIL(timers_armed(rt) == 0);
    assert_int_equal(timers_armed(rt), 0);
    assert_int_equal(atomic_load(&r.done), 1);
    lh_free(&r);
    LH_UNTIL(atomic_load(&late_freed) == i + 1); /* with the call's memory */
    assert_int_equal(atomic_load(&late_freed), i + 1);
    assert_int_equal(atomic_load(&f.sb.calls), 2 * (i + 1));
    /* the events are counted before the callback runs */
    assert_int_equal(bw_stack_event_count(svc, 1, BW_EVENT_TIMEOUT), (uint64_t)(i + 1 - answer_won));
  }
  answerer_stop(&a);
  assert_null(bw_join_wait(aj, NULL));
  pthread_mutex_destroy(&a.mu);
  pthread_cond_destroy(&a.cv);
  assert_int_equal(bw_stack_event_count(svc, 0, BW_EVENT_RETRY_SCHEDULED), (uint64_t)n);
  assert_int_equal(bw_stack_event_count(svc, 0, BW_EVENT_GIVE_UP), 0);
  assert_int_equal(bw_stack_outcome_count(svc, BW_ERR_NONE), (uint64_t)n);
  print_message("attempt 1's answer won %d of %d, its timer the others\n", answer_won, n);
  resume_fx_fini(&f);
}

int main(void) {
  if (lh_count_allocs_install() != 0) return 1; /* before any bulwark object */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_deep_bulkheads),
      cmocka_unit_test(test_deep_cancel_across_limit),
      cmocka_unit_test(test_deep_mixed),
      cmocka_unit_test(test_stack_in_stack),
      cmocka_unit_test(test_fallback_outside_timeout),
      cmocka_unit_test(test_fallback_inside_timeout),
      cmocka_unit_test(test_breaker_inside_timeout),
      cmocka_unit_test(test_abandon_returns_permit),
      cmocka_unit_test(test_abandon_late_answer),
      cmocka_unit_test(test_cancel_storm),
      cmocka_unit_test(test_cancel_storm_sync_answers),
      cmocka_unit_test(test_cancel_during_sync_answer),
      cmocka_unit_test(test_timeout_sync_no_timer),
      cmocka_unit_test(test_timeout_async_arms_timer),
      cmocka_unit_test(test_caller_sees_own_call),
      cmocka_unit_test(test_retry_late_answer_after_resume),
      cmocka_unit_test(test_retry_late_answer_during_next_attempt),
      cmocka_unit_test(test_retry_second_attempt_times_out),
      cmocka_unit_test(test_retry_stale_timer_races_answer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
