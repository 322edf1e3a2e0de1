/* Rate limit layer: reject mode with the retry-after hint, waiting in
 * arrival order on the paused clock, max wait, deadline awareness (also
 * through a real timeout layer), cancellation giving the token back, and
 * many calls on two workers. */
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

#include "bulwark/alloc.h"
#include "bulwark/rate_limit.h"
#include "bulwark/timeout.h"

typedef struct rfx {
  bw_runtime_t *rt;
  h5_backend_t *be;
  bw_service_t *inner, *svc;
  bw_layer_t *rl;
  h5_events_t ev;
  bw_event_hook_t *hook;
} rfx_t;

static rfx_t *rfx_new(bool paused, double rate, uint64_t burst, bw_rate_limit_mode_t mode,
                      uint64_t max_wait_ms) {
  rfx_t *f = calloc(1, sizeof *f);
  f->rt = h5_rt(paused, 2);
  f->be = calloc(1, sizeof *f->be);
  f->inner = h5_backend_svc(f->be);
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  o.name = "rl";
  o.rate_per_sec = rate;
  o.burst = burst;
  o.mode = mode;
  o.max_wait_ms = max_wait_ms;
  assert_null(bw_rate_limit_new(&f->rl, &o));
  f->svc = h5_stack(&f->rl, 1, f->inner);
  pthread_mutex_init(&f->ev.mu, NULL);
  assert_null(bw_event_hook_add(&f->hook, NULL, f->rl, h5_on_event, &f->ev));
  return f;
}

static void rfx_free(rfx_t *f) {
  bw_event_hook_remove(f->hook);
  bw_service_release(f->svc);
  bw_service_release(f->inner);
  bw_layer_release(f->rl);
  bw_runtime_free(f->rt);
  pthread_mutex_destroy(&f->ev.mu);
  free(f->be);
  free(f);
}

static void test_options(void **state) {
  (void)state;
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  assert_int_equal(o.mode, BW_RATE_LIMIT_WAIT);
  assert_int_equal(o.max_wait_ms, 5000);
  assert_int_equal(o.tokens_per_call, 1);
  bw_layer_t *l = NULL;
  bw_error_t *e = bw_rate_limit_new(&l, &o); /* rate not set */
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  o.rate_per_sec = 10;
  o.burst = 2;
  o.tokens_per_call = 3;
  e = bw_rate_limit_new(&l, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_null(l);
  o.tokens_per_call = 1;
  o.burst = 0; /* one second's worth */
  assert_null(bw_rate_limit_new(&l, &o));
  assert_true(bw_rate_limit_tokens(l, NULL) == 10.0);
  bw_layer_release(l);
}

static void test_reject_mode_hint(void **state) {
  (void)state;
  rfx_t *f = rfx_new(true, 10, 2, BW_RATE_LIMIT_REJECT, 0);
  h5_res_t r;
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_RATE_LIMITED);
  assert_int_equal(r.retry_after_ms, 100);
  assert_null(bw_runtime_advance(f->rt, 30));
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_RATE_LIMITED);
  assert_int_equal(r.retry_after_ms, 70);
  assert_null(bw_runtime_advance(f->rt, 70));
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  assert_int_equal(atomic_load(&f->be->calls), 3);
  assert_int_equal(h5_count_events(&f->ev, BW_EVENT_REJECTED), 2);
  assert_string_equal(f->ev.ev[0].reason, "rate_limited");
  assert_int_equal(f->ev.ev[0].delay_ns, 100 * MS_);
  char *text = NULL;
  size_t len = 0;
  assert_null(bw_metrics_prometheus_text(&text, &len));
  assert_non_null(strstr(text, "bulwark_rate_limit_tokens{rate_limit=\"rl\"}"));
  bw_metrics_text_free(text);
  rfx_free(f);
}

/* Waiters are served one token interval apart, first come first served. */
static void test_wait_mode_fifo(void **state) {
  (void)state;
  enum { N = 6 };
  rfx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_WAIT, 5000);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  h5_res_t r[N];
  h5_start_batch(r, N, f->svc, f->rt, 0);
  for (int i = 0; i < N; i++) {
    h5_wait(&r[i]);
    assert_int_equal(r[i].kind, BW_ERR_NONE);
    /* In arrival order, one token interval apart; the backend saw them in
     * that order too. */
    assert_int_equal(r[i].at_ns - t0, (uint64_t)i * 100 * MS_);
    assert_int_equal(r[i].resp, i);
  }
  for (int i = 0; i < N; i++) h5_free(&r[i]);
  assert_int_equal(h5_count_events(&f->ev, BW_EVENT_REJECTED), 0);
  rfx_free(f);
}

static void test_max_wait_and_deadline(void **state) {
  (void)state;
  rfx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_WAIT, 250);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  h5_res_t a, b, c;
  h5_start(&a, f->svc, f->rt, 0);
  h5_wait(&a); /* token at once */
  h5_start(&b, f->svc, f->rt, 0);
  h5_wait(&b); /* +100 */
  assert_int_equal(b.at_ns - t0, 100 * MS_);
  /* Bucket: next slot at t0+200, now t0+100: 100 ms wait. A call whose
   * deadline is 50 ms away is refused at once, not after waiting. */
  uint64_t t1 = bw_runtime_now_ns(f->rt);
  h5_start(&c, f->svc, f->rt, 50);
  h5_wait(&c);
  assert_int_equal(c.kind, BW_ERR_RATE_LIMITED);
  assert_int_equal(c.at_ns, t1);
  assert_int_equal(c.retry_after_ms, 100);
  /* Reserve two more slots (+200, +300), then one that would need 300 ms
   * of waiting > max wait 250: refused at once with the hint. */
  h5_res_t w[3];
  h5_start_batch(w, 3, f->svc, f->rt, 0);
  h5_wait(&w[2]);
  assert_int_equal(w[2].kind, BW_ERR_RATE_LIMITED);
  assert_int_equal(w[2].retry_after_ms, 300);
  assert_int_equal(w[2].at_ns, t1);
  h5_wait(&w[0]);
  h5_wait(&w[1]);
  assert_int_equal(w[0].kind, BW_ERR_NONE);
  assert_int_equal(w[1].kind, BW_ERR_NONE);
  assert_int_equal(w[0].at_ns - t0, 200 * MS_);
  assert_int_equal(w[1].at_ns - t0, 300 * MS_);
  h5_free(&a);
  h5_free(&b);
  h5_free(&c);
  for (int i = 0; i < 3; i++) h5_free(&w[i]);
  rfx_free(f);
}

/* Through a real timeout layer: its deadline reaches the limiter. */
static void test_deadline_from_timeout_layer(void **state) {
  (void)state;
  rfx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_WAIT, 5000);
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 50;
  bw_layer_t *tl = NULL;
  assert_null(bw_timeout_new(&tl, &to));
  bw_layer_t *layers[2] = {tl, f->rl};
  bw_service_t *svc = h5_stack(layers, 2, f->inner);
  h5_res_t r;
  assert_int_equal(h5_call(svc, f->rt, &r), BW_ERR_NONE);
  uint64_t t1 = bw_runtime_now_ns(f->rt);
  assert_int_equal(h5_call(svc, f->rt, &r), BW_ERR_RATE_LIMITED);
  assert_int_equal(r.at_ns, t1);
  bw_service_release(svc);
  bw_layer_release(tl);
  rfx_free(f);
}

/* A waiting call that is cancelled gives its token back (real clock, one
 * token per 10 s, so nothing fires during the test). */
static void test_cancel_waiter_refunds(void **state) {
  (void)state;
  rfx_t *f = rfx_new(false, 0.1, 1, BW_RATE_LIMIT_WAIT, 60000);
  h5_res_t a, b;
  assert_int_equal(h5_call(f->svc, f->rt, &a), BW_ERR_NONE);
  h5_start(&b, f->svc, f->rt, 0);
  H5_UNTIL(bw_rate_limit_tokens(f->rl, NULL) < -0.5); /* b reserved the next token */
  assert_true(bw_rate_limit_tokens(f->rl, NULL) < -0.5);
  bw_call_cancel(b.call);
  h5_wait(&b);
  assert_int_equal(b.kind, BW_ERR_CANCELLED);
  double t = bw_rate_limit_tokens(f->rl, NULL);
  assert_true(t > -0.5 && t < 0.5);
  assert_int_equal(atomic_load(&f->be->calls), 1);
  h5_free(&b);
  rfx_free(f); /* the cancelled timer leaves nothing behind */
}

static void test_many_calls_two_workers(void **state) {
  (void)state;
  rfx_t *f = rfx_new(false, 1e8, 1000000, BW_RATE_LIMIT_REJECT, 0);
  int n = h5_scaled(20000);
  h5_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) h5_start(&r[i], f->svc, f->rt, 0);
  for (int i = 0; i < n; i++) {
    h5_wait(&r[i]);
    assert_int_equal(r[i].kind, BW_ERR_NONE);
    h5_free(&r[i]);
  }
  assert_int_equal(atomic_load(&f->be->calls), n);
  free(r);
  rfx_free(f);
}


/* Cancel storm on the real clock: waiting calls cancelled by another thread
 * while their timers fire. Each call completes once; cancelled waiters'
 * tokens come back, so no reservation is left over at the end. */
typedef struct storm {
  h5_res_t *r;
  int n;
} storm_t;

static void *canceller(void *arg) {
  storm_t *s = arg;
  for (int i = 0; i < s->n; i += 3) bw_call_cancel(s->r[i].call);
  return NULL;
}

static void test_cancel_storm(void **state) {
  (void)state;
  rfx_t *f = rfx_new(false, 4000, 1, BW_RATE_LIMIT_WAIT, 10000);
  int n = h5_scaled(600);
  h5_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) h5_start(&r[i], f->svc, f->rt, 0);
  storm_t s = {r, n};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, canceller, &s), 0);
  pthread_join(th, NULL);
  assert_int_equal(h5_wait_done(r, n, n), n);
  int ok = 0, cancelled = 0;
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&r[i].done), 1);
    ok += r[i].kind == BW_ERR_NONE;
    cancelled += r[i].kind == BW_ERR_CANCELLED;
    h5_free(&r[i]);
  }
  assert_int_equal(ok + cancelled, n);
  assert_int_equal(atomic_load(&f->be->calls), ok);
  assert_true(bw_rate_limit_tokens(f->rl, NULL) > -1.5);
  free(r);
  rfx_free(f);
}


/* Counting allocator: rejections in a burst that share one retry-after hint
 * allocate nothing (the error is shared, calls are pooled). */
static atomic_long n_allocs;
static void *c_malloc(size_t n) { atomic_fetch_add(&n_allocs, 1); return malloc(n); }
static void *c_calloc(size_t a, size_t b) { atomic_fetch_add(&n_allocs, 1); return calloc(a, b); }
static void *c_realloc(void *p, size_t n) { atomic_fetch_add(&n_allocs, 1); return realloc(p, n); }

/* Calls chained from completion callbacks, so every call starts on a worker
 * (as in a server), not deferred from this thread. */
typedef struct chain {
  bw_service_t *svc;
  bw_runtime_t *rt;
  int left, wrong;
  atomic_int done;
} chain_t;

static void chain_next(chain_t *c);
static void chain_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  chain_t *c = arg;
  if (bw_error_kind(err) != BW_ERR_RATE_LIMITED || bw_error_retry_after_ms(err) != 100) c->wrong++;
  bw_call_free(call);
  if (--c->left > 0) {
    chain_next(c);
  } else {
    pthread_mutex_lock(&h5_mu);
    atomic_store(&c->done, 1);
    pthread_cond_broadcast(&h5_cv);
    pthread_mutex_unlock(&h5_mu);
  }
}
static void chain_next(chain_t *c) {
  bw_call_t *call = NULL;
  if (bw_call_new(&call, c->svc, c->rt) || bw_service_call(c->svc, call, chain_done, c)) abort();
}
static void chain_run(chain_t *c) {
  chain_next(c);
  H5_UNTIL(atomic_load(&c->done));
  assert_int_equal(atomic_load(&c->done), 1);
}

static void test_rejections_do_not_allocate(void **state) {
  (void)state;
  rfx_t *f = rfx_new(true, 10, 1, BW_RATE_LIMIT_REJECT, 0);
  h5_res_t r;
  assert_int_equal(h5_call(f->svc, f->rt, &r), BW_ERR_NONE);
  chain_t warm = {f->svc, f->rt, 200, 0, 0};
  chain_run(&warm);
  int n = h5_scaled(5000);
  chain_t c = {f->svc, f->rt, n, 0, 0};
  long before = atomic_load(&n_allocs);
  chain_run(&c);
  long allocs = atomic_load(&n_allocs) - before;
  assert_int_equal(c.wrong, 0);
  /* The first call of the chain starts from this thread (one deferral). */
  assert_true(allocs <= 2);
  rfx_free(f);
}

int main(void) {
  bw_allocator_t a = {c_malloc, c_calloc, c_realloc, free};
  if (bw_set_allocator(&a) != NULL) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rejections_do_not_allocate),
      cmocka_unit_test(test_options),
      cmocka_unit_test(test_reject_mode_hint),
      cmocka_unit_test(test_wait_mode_fifo),
      cmocka_unit_test(test_max_wait_and_deadline),
      cmocka_unit_test(test_deadline_from_timeout_layer),
      cmocka_unit_test(test_cancel_waiter_refunds),
      cmocka_unit_test(test_many_calls_two_workers),
      cmocka_unit_test(test_cancel_storm),
  };
  return cmocka_run_group_tests_name("rate_limit", tests, NULL, NULL);
}
