/* Chaos layer: seeded determinism and replay, first N / every Nth / rate /
 * predicate selection, injected error kinds, latency distributions on the
 * paused clock, replaced outcome, hang until the deadline or a cancel, and
 * switching on and off at run time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

/* ---- harness (same block in each H5 layer test) ------------------------------- */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/layer.h"
#include "bulwark/metrics.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"

static inline __attribute__((unused)) double h5_scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}
static inline __attribute__((unused)) int h5_scaled(int n) {
  int v = (int)(n * h5_scale());
  return v < 1 ? 1 : v;
}

#define MS_ (UINT64_C(1000000))

static inline __attribute__((unused)) bw_runtime_t *h5_rt(bool paused, unsigned workers) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  if (paused) o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

/* One mutex/cond for every completion in the test binary. */
static pthread_mutex_t h5_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t h5_cv = PTHREAD_COND_INITIALIZER;

/* The backend: async function service. HOLD keeps calls pending until the
 * test completes them; otherwise each call completes at once with the
 * scripted kind for its number (BW_ERR_NONE = success, past the script:
 * `dflt`). */
typedef struct h5_backend {
  bool hold;
  bw_error_kind_t script[4096];
  int nscript;
  bw_error_kind_t dflt;
  int64_t detail;
  atomic_int calls, cancels;
  bw_call_t *pending[4096];
  int npending; /* under h5_mu */
} h5_backend_t;

static inline __attribute__((unused)) void h5_resp_free(void *p) { free(p); }

static inline __attribute__((unused)) void h5_backend_fn(void *arg, bw_call_t *call) {
  h5_backend_t *b = arg;
  int n = atomic_fetch_add(&b->calls, 1);
  if (b->hold) {
    pthread_mutex_lock(&h5_mu);
    b->pending[b->npending++] = call;
    pthread_cond_broadcast(&h5_cv);
    pthread_mutex_unlock(&h5_mu);
    return;
  }
  bw_error_kind_t k = n < b->nscript ? b->script[n] : b->dflt;
  if (k == BW_ERR_NONE) {
    int *v = malloc(sizeof *v);
    *v = n;
    bw_call_complete(call, v, h5_resp_free, NULL);
  } else {
    bw_call_complete(call, NULL, NULL, bw_error_new(k, b->detail, "backend failure %d", n));
  }
}

static inline __attribute__((unused)) void h5_backend_cancel(void *arg, bw_call_t *call) {
  h5_backend_t *b = arg;
  atomic_fetch_add(&b->cancels, 1);
  pthread_mutex_lock(&h5_mu);
  for (int i = 0; i < b->npending; i++)
    if (b->pending[i] == call) {
      b->pending[i] = b->pending[--b->npending];
      break;
    }
  pthread_mutex_unlock(&h5_mu);
}

static inline __attribute__((unused)) bw_service_t *h5_backend_svc(h5_backend_t *b) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = h5_backend_fn;
  o.cancel = h5_backend_cancel;
  o.arg = b;
  bw_service_t *svc = NULL;
  assert_null(bw_service_from_fn(&svc, &o));
  return svc;
}

/* Wait (real time, 30 s safety) until the backend holds n pending calls. */
static inline __attribute__((unused)) int h5_wait_pending(h5_backend_t *b, int n) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  pthread_mutex_lock(&h5_mu);
  while (b->npending < n)
    if (pthread_cond_timedwait(&h5_cv, &h5_mu, &ts) != 0) break;
  int got = b->npending;
  pthread_mutex_unlock(&h5_mu);
  return got;
}

/* Complete the oldest pending call (kind NONE = success). */
static inline __attribute__((unused)) void h5_finish_one(h5_backend_t *b, bw_error_kind_t k) {
  pthread_mutex_lock(&h5_mu);
  assert_true(b->npending > 0);
  bw_call_t *c = b->pending[0];
  memmove(&b->pending[0], &b->pending[1], sizeof b->pending[0] * (size_t)(b->npending - 1));
  b->npending--;
  pthread_mutex_unlock(&h5_mu);
  if (k == BW_ERR_NONE) bw_call_complete(c, NULL, NULL, NULL);
  else bw_call_complete(c, NULL, NULL, bw_error_new(k, b->detail, "held call failed"));
}

/* A call from the test thread and its recorded completion. */
typedef struct h5_res {
  bw_call_t *call;
  bw_runtime_t *rt;
  atomic_int done;
  bw_error_kind_t kind;
  int64_t retry_after_ms;
  bool injected;
  uint64_t at_ns;
  int resp;
} h5_res_t;

static inline __attribute__((unused)) void h5_on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  h5_res_t *r = arg;
  r->kind = bw_error_kind(err);
  r->retry_after_ms = bw_error_retry_after_ms(err);
  r->injected = bw_error_is(err, BW_ERR_INJECTED);
  r->at_ns = bw_runtime_now_ns(r->rt);
  int *v = err ? NULL : bw_call_response(call);
  r->resp = v ? *v : -1;
  pthread_mutex_lock(&h5_mu);
  atomic_fetch_add(&r->done, 1);
  pthread_cond_broadcast(&h5_cv);
  pthread_mutex_unlock(&h5_mu);
}

/* Start a call; timeout_ms 0: no deadline. */
static inline __attribute__((unused)) void h5_start(h5_res_t *r, bw_service_t *svc, bw_runtime_t *rt, uint64_t timeout_ms) {
  memset(r, 0, sizeof *r);
  r->rt = rt;
  assert_null(bw_call_new(&r->call, svc, rt));
  if (timeout_ms) bw_call_set_timeout_ms(r->call, timeout_ms);
  assert_null(bw_service_call(svc, r->call, h5_on_done, r));
}

static inline __attribute__((unused)) void h5_wait(h5_res_t *r) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  pthread_mutex_lock(&h5_mu);
  while (atomic_load(&r->done) == 0)
    if (pthread_cond_timedwait(&h5_cv, &h5_mu, &ts) != 0) break;
  pthread_mutex_unlock(&h5_mu);
  assert_int_equal(atomic_load(&r->done), 1);
}

/* Wait until at least `want` of the n results are done; returns how many. */
static inline __attribute__((unused)) int h5_wait_done(h5_res_t *r, int n, int want) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  int d = 0;
  pthread_mutex_lock(&h5_mu);
  for (;;) {
    d = 0;
    for (int i = 0; i < n; i++) d += atomic_load(&r[i].done);
    if (d >= want || pthread_cond_timedwait(&h5_cv, &h5_mu, &ts) != 0) break;
  }
  pthread_mutex_unlock(&h5_mu);
  return d;
}

/* Run one call to completion; returns its kind. */
static inline __attribute__((unused)) bw_error_kind_t h5_call(bw_service_t *svc, bw_runtime_t *rt, h5_res_t *r) {
  h5_start(r, svc, rt, 0);
  h5_wait(r);
  bw_call_free(r->call);
  r->call = NULL;
  return r->kind;
}

static inline __attribute__((unused)) void h5_free(h5_res_t *r) {
  bw_call_free(r->call);
  r->call = NULL;
}

/* Recorded events of one layer. */
typedef struct h5_events {
  pthread_mutex_t mu;
  int n;
  struct {
    bw_event_type_t type;
    int from, to;
    const char *reason;
    uint64_t delay_ns;
  } ev[512];
} h5_events_t;

static inline __attribute__((unused)) void h5_on_event(const bw_event_t *ev, void *arg) {
  h5_events_t *e = arg;
  pthread_mutex_lock(&e->mu);
  if (e->n < 512) {
    e->ev[e->n].type = ev->type;
    e->ev[e->n].from = ev->from_state;
    e->ev[e->n].to = ev->to_state;
    e->ev[e->n].reason = ev->reason;
    e->ev[e->n].delay_ns = ev->delay_ns;
    e->n++;
  }
  pthread_mutex_unlock(&e->mu);
}

static inline __attribute__((unused)) int h5_count_events(h5_events_t *e, bw_event_type_t type) {
  pthread_mutex_lock(&e->mu);
  int c = 0;
  for (int i = 0; i < e->n; i++) c += e->ev[i].type == type;
  pthread_mutex_unlock(&e->mu);
  return c;
}

static inline __attribute__((unused)) bw_service_t *h5_stack(bw_layer_t **layers, size_t n, bw_service_t *inner) {
  bw_service_t *s = NULL;
  assert_null(bw_stack_build(&s, NULL, layers, n, inner, NULL));
  return s;
}
/* Spin (yielding, no sleep) until expr holds or 30 s of real time pass. */
static inline __attribute__((unused)) uint64_t h5_real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
#define H5_UNTIL(expr)                                                   \
  do {                                                                   \
    uint64_t h5_end_ = h5_real_ms() + 30000;                             \
    while (!(expr) && h5_real_ms() < h5_end_) sched_yield();             \
  } while (0)

/* Start n calls from inside one task on a worker, so they all reach the
 * stack in this order before the paused clock can move. */
typedef struct h5_batch {
  h5_res_t *r;
  int n;
  bw_service_t *svc;
  bw_runtime_t *rt;
  uint64_t timeout_ms;
} h5_batch_t;
static inline __attribute__((unused)) bw_poll_t h5_batch_poll(bw_task_t *self, void *arg) {
  (void)self;
  h5_batch_t *b = arg;
  for (int i = 0; i < b->n; i++) {
    memset(&b->r[i], 0, sizeof b->r[i]);
    b->r[i].rt = b->rt;
    if (bw_call_new(&b->r[i].call, b->svc, b->rt) != NULL) abort();
    if (b->timeout_ms) bw_call_set_timeout_ms(b->r[i].call, b->timeout_ms);
    if (bw_service_call(b->svc, b->r[i].call, h5_on_done, &b->r[i]) != NULL) abort();
  }
  return BW_READY;
}
static inline __attribute__((unused)) void h5_start_batch(h5_res_t *r, int n, bw_service_t *svc,
                                                          bw_runtime_t *rt, uint64_t timeout_ms) {
  h5_batch_t b = {r, n, svc, rt, timeout_ms};
  assert_null(bw_block_on(rt, h5_batch_poll, &b, NULL));
}
/* ---- end of harness ----------------------------------------------------------- */

#include "bulwark/chaos.h"

typedef struct cfx {
  bw_runtime_t *rt;
  h5_backend_t *be;
  bw_service_t *inner, *svc;
  bw_layer_t *ch;
  h5_events_t ev;
  bw_event_hook_t *hook;
} cfx_t;

static cfx_t *cfx_new(const bw_chaos_opts_t *o) {
  cfx_t *f = calloc(1, sizeof *f);
  f->rt = h5_rt(true, 2);
  f->be = calloc(1, sizeof *f->be);
  f->inner = h5_backend_svc(f->be);
  assert_null(bw_chaos_new(&f->ch, o));
  f->svc = h5_stack(&f->ch, 1, f->inner);
  pthread_mutex_init(&f->ev.mu, NULL);
  assert_null(bw_event_hook_add(&f->hook, NULL, f->ch, h5_on_event, &f->ev));
  return f;
}

static void cfx_free(cfx_t *f) {
  bw_event_hook_remove(f->hook);
  bw_service_release(f->svc);
  bw_service_release(f->inner);
  bw_layer_release(f->ch);
  bw_runtime_free(f->rt);
  pthread_mutex_destroy(&f->ev.mu);
  free(f->be);
  free(f);
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
  bw_error_t *e = bw_chaos_new(&l, &bad);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bad = o;
  bad.faults = BW_CHAOS_OUTCOME; /* no function */
  e = bw_chaos_new(&l, &bad);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bad = o;
  bad.latency_dist = BW_CHAOS_LATENCY_UNIFORM;
  bad.latency_ms = 10;
  bad.latency_max_ms = 5;
  e = bw_chaos_new(&l, &bad);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
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
  cfx_t *f = cfx_new(&o);
  bw_error_kind_t first[40];
  h5_res_t r;
  int injected = 0;
  for (int i = 0; i < 40; i++) {
    first[i] = h5_call(f->svc, f->rt, &r);
    injected += first[i] == BW_ERR_INJECTED;
    assert_int_equal(first[i] == BW_ERR_INJECTED, bw_chaos_decide(f->ch, (uint64_t)i, NULL));
  }
  assert_true(injected > 5 && injected < 35);
  assert_int_equal(bw_chaos_injected(f->ch), (uint64_t)injected);
  assert_int_equal(h5_count_events(&f->ev, BW_EVENT_CHAOS_INJECTED), injected);
  bw_chaos_restart(f->ch);
  for (int i = 0; i < 40; i++) assert_int_equal(h5_call(f->svc, f->rt, &r), first[i]);
  assert_int_equal(atomic_load(&f->be->calls), 2 * (40 - injected));
  cfx_free(f);
}

static void test_first_n_and_every_nth(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.first_n = 3;
  o.error_kind = BW_ERR_TRANSPORT; /* marked as injected by default */
  cfx_t *f = cfx_new(&o);
  h5_res_t r;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_TRANSPORT);
    assert_true(r.injected);
  }
  for (int i = 0; i < 5; i++) assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  cfx_free(f);
  o = base_opts();
  o.every_nth = 3;
  o.error_kind = BW_ERR_HTTP_STATUS;
  o.error_detail = 503;
  o.error_mark_injected = false;
  f = cfx_new(&o);
  for (int i = 1; i <= 9; i++) {
    bw_error_kind_t k = h5_call(f->svc, f->rt, &r);
    assert_int_equal(k, i % 3 == 0 ? BW_ERR_HTTP_STATUS : BW_ERR_NONE);
    if (k) assert_false(r.injected);
  }
  cfx_free(f);
}

static bool pick_ctx(bw_call_t *call, void *arg) {
  (void)arg;
  return bw_call_context(call) != NULL;
}

static void test_predicate_and_switch(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.predicate = pick_ctx;
  cfx_t *f = cfx_new(&o);
  h5_res_t r;
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  memset(&r, 0, sizeof r);
  r.rt = f->rt;
  assert_null(bw_call_new(&r.call, f->svc, f->rt));
  bw_call_set_context(r.call, &r);
  assert_null(bw_service_call(f->svc, r.call, h5_on_done, &r));
  h5_wait(&r);
  assert_int_equal(r.kind, BW_ERR_INJECTED);
  h5_free(&r);
  /* Off: nothing injected, no sequence numbers taken. */
  bw_chaos_set_enabled(f->ch, false);
  assert_false(bw_chaos_enabled(f->ch));
  uint64_t seen = bw_chaos_seen(f->ch);
  memset(&r, 0, sizeof r);
  r.rt = f->rt;
  assert_null(bw_call_new(&r.call, f->svc, f->rt));
  bw_call_set_context(r.call, &r);
  assert_null(bw_service_call(f->svc, r.call, h5_on_done, &r));
  h5_wait(&r);
  assert_int_equal(r.kind, BW_ERR_NONE);
  h5_free(&r);
  assert_int_equal(bw_chaos_seen(f->ch), seen);
  bw_chaos_set_enabled(f->ch, true);
  assert_true(bw_chaos_enabled(f->ch));
  cfx_free(f);
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
  cfx_t *f = cfx_new(&o);
  for (uint64_t k = 0; k < 5; k++) {
    uint64_t want;
    assert_true(bw_chaos_decide(f->ch, k, &want));
    uint64_t t0 = bw_runtime_now_ns(f->rt);
    h5_res_t r;
    assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE); /* then the backend answers */
    /* The runtime's timers tick in whole milliseconds. */
    assert_true(r.at_ns - t0 >= want && r.at_ns - t0 < want + MS_);
  }
  assert_int_equal(atomic_load(&f->be->calls), 5);
  assert_int_equal(h5_count_events(&f->ev, BW_EVENT_CHAOS_INJECTED), 5);
  assert_string_equal(f->ev.ev[0].reason, "latency");
  cfx_free(f);
  /* Latency then an error. */
  o = base_opts();
  o.first_n = 1;
  o.faults = BW_CHAOS_LATENCY | BW_CHAOS_ERROR;
  o.latency_ms = 250;
  f = cfx_new(&o);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  h5_res_t r;
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_INJECTED);
  assert_int_equal(r.at_ns - t0, 250 * MS_);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  cfx_free(f);
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
  cfx_t *f = cfx_new(&o);
  h5_res_t r;
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(r.resp, 42);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(r.resp, 0); /* the backend's first call */
  cfx_free(f);
  /* Hang until the deadline; without one, until cancelled. */
  o = base_opts();
  o.first_n = 2;
  o.faults = BW_CHAOS_HANG;
  f = cfx_new(&o);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  h5_start(&r, f->svc, f->rt, 300);
  h5_wait(&r);
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  assert_int_equal(r.at_ns - t0, 300 * MS_);
  h5_free(&r);
  h5_start(&r, f->svc, f->rt, 0);
  H5_UNTIL(bw_chaos_seen(f->ch) == 2);
  assert_int_equal(atomic_load(&r.done), 0);
  bw_call_cancel(r.call);
  h5_wait(&r);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  h5_free(&r);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  cfx_free(f);
}

/* Cancel during injected latency: the call ends at once, the backend is
 * never called, nothing leaks. */
static void test_cancel_during_latency(void **state) {
  (void)state;
  bw_chaos_opts_t o = base_opts();
  o.first_n = 1;
  o.faults = BW_CHAOS_LATENCY;
  o.latency_ms = 3600 * 1000;
  cfx_t *f = cfx_new(&o);
  bw_runtime_t *real = h5_rt(false, 2); /* real clock: the hour never passes */
  h5_res_t r;
  h5_start(&r, f->svc, real, 0);
  H5_UNTIL(bw_chaos_seen(f->ch) == 1);
  bw_call_cancel(r.call);
  h5_wait(&r);
  assert_int_equal(r.kind, BW_ERR_CANCELLED);
  h5_free(&r);
  assert_int_equal(atomic_load(&f->be->calls), 0);
  cfx_free(f);
  bw_runtime_free(real);
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
  };
  return cmocka_run_group_tests_name("chaos", tests, NULL, NULL);
}
