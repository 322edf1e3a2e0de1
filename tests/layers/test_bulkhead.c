/* Bulkhead: its permit core (permits.c, no runtime) and the layer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>

#include "layers/permits.h"

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

typedef struct rec {
  bw__permit_waiter_t w;
  int granted, expired, order;
} rec_t;

static int grant_seq;
static void on_grant(bw__permit_waiter_t *w, void *arg) {
  rec_t *r = arg;
  assert_ptr_equal(&r->w, w);
  r->granted++;
  r->order = ++grant_seq;
}
static void on_expire(bw__permit_waiter_t *w) { ((rec_t *)w->arg)->expired++; }

static void rec_init(rec_t *r, uint64_t deadline) {
  *r = (rec_t){0};
  r->w.grant = on_grant;
  r->w.arg = r;
  r->w.deadline_ns = deadline;
}

static void test_basic_limit(void **state) {
  (void)state;
  bw__permits_t p;
  assert_int_equal(bw__permits_init(&p, 0, 0), -1);
  assert_int_equal(bw__permits_init(&p, 2, 0), 0);
  assert_int_equal(bw__permits_try_acquire(&p), BW__PERMITS_OK);
  assert_int_equal(bw__permits_try_acquire(&p), BW__PERMITS_OK);
  assert_int_equal(bw__permits_try_acquire(&p), BW__PERMITS_EFULL);
  rec_t r;
  rec_init(&r, UINT64_MAX);
  assert_int_equal(bw__permits_acquire(&p, &r.w), BW__PERMITS_EFULL); /* no queue */
  assert_int_equal(bw__permits_in_use(&p), 2);
  bw__permits_release(&p);
  assert_int_equal(bw__permits_in_use(&p), 1);
  assert_int_equal(bw__permits_acquire(&p, &r.w), BW__PERMITS_OK);
  bw__permits_release(&p);
  bw__permits_release(&p);
  assert_int_equal(bw__permits_in_use(&p), 0);
  bw__permits_destroy(&p);
}

static void test_fifo_queue_bound_and_handoff(void **state) {
  (void)state;
  bw__permits_t p;
  assert_int_equal(bw__permits_init(&p, 1, 3), 0);
  assert_int_equal(bw__permits_try_acquire(&p), BW__PERMITS_OK);
  rec_t r[5];
  grant_seq = 0;
  for (int i = 0; i < 3; i++) {
    rec_init(&r[i], UINT64_MAX);
    assert_int_equal(bw__permits_acquire(&p, &r[i].w), BW__PERMITS_QUEUED);
  }
  rec_init(&r[3], UINT64_MAX);
  assert_int_equal(bw__permits_acquire(&p, &r[3].w), BW__PERMITS_EFULL);
  assert_int_equal(bw__permits_queued(&p), 3);
  /* No barging while others queue. */
  assert_int_equal(bw__permits_try_acquire(&p), BW__PERMITS_EFULL);
  /* Each release hands the permit to the oldest waiter. */
  for (int i = 0; i < 3; i++) {
    bw__permits_release(&p);
    assert_int_equal(r[i].granted, 1);
    assert_int_equal(r[i].order, i + 1);
    assert_int_equal(bw__permits_in_use(&p), 1);
    if (i + 1 < 3) assert_int_equal(r[i + 1].granted, 0);
  }
  assert_int_equal(bw__permits_queued(&p), 0);
  /* Granted waiters cannot be cancelled: the caller then owns a permit. */
  assert_false(bw__permits_cancel(&p, &r[0].w));
  bw__permits_release(&p);
  assert_int_equal(bw__permits_in_use(&p), 0);
  bw__permits_destroy(&p);
}

static void test_cancel_and_expire(void **state) {
  (void)state;
  bw__permits_t p;
  assert_int_equal(bw__permits_init(&p, 1, 10), 0);
  assert_int_equal(bw__permits_try_acquire(&p), 0);
  rec_t a, b, c, d;
  rec_init(&a, 100);
  rec_init(&b, 300);
  rec_init(&c, 200);
  rec_init(&d, UINT64_MAX);
  assert_int_equal(bw__permits_acquire(&p, &a.w), BW__PERMITS_QUEUED);
  assert_int_equal(bw__permits_acquire(&p, &b.w), BW__PERMITS_QUEUED);
  assert_int_equal(bw__permits_acquire(&p, &c.w), BW__PERMITS_QUEUED);
  assert_int_equal(bw__permits_acquire(&p, &d.w), BW__PERMITS_QUEUED);
  assert_int_equal(bw__permits_expire(&p, 99, on_expire), 100);
  assert_int_equal(a.expired, 0);
  assert_int_equal(bw__permits_expire(&p, 200, on_expire), 300);
  assert_int_equal(a.expired, 1);
  assert_int_equal(c.expired, 1);
  assert_int_equal(b.expired, 0);
  assert_true(bw__permits_cancel(&p, &b.w));
  assert_false(bw__permits_cancel(&p, &b.w)); /* once */
  assert_int_equal(bw__permits_expire(&p, 1000, on_expire), UINT64_MAX);
  assert_int_equal(bw__permits_queued(&p), 1);
  bw__permits_release(&p);
  assert_int_equal(d.granted, 1);
  assert_int_equal(a.granted + b.granted + c.granted, 0);
  assert_int_equal(b.expired, 0);
  bw__permits_release(&p);
  /* Empty queue, free permit: a new waiter gets it at once. */
  assert_int_equal(bw__permits_acquire(&p, &a.w), BW__PERMITS_OK);
  bw__permits_release(&p);
  bw__permits_destroy(&p);
}

static void test_set_limit(void **state) {
  (void)state;
  bw__permits_t p;
  assert_int_equal(bw__permits_init(&p, 2, 10), 0);
  assert_int_equal(bw__permits_try_acquire(&p), 0);
  assert_int_equal(bw__permits_try_acquire(&p), 0);
  rec_t r[3];
  for (int i = 0; i < 3; i++) {
    rec_init(&r[i], UINT64_MAX);
    assert_int_equal(bw__permits_acquire(&p, &r[i].w), BW__PERMITS_QUEUED);
  }
  bw__permits_set_limit(&p, 4); /* two waiters get in now */
  assert_int_equal(r[0].granted + r[1].granted + r[2].granted, 2);
  assert_int_equal(r[2].granted, 0);
  assert_int_equal(bw__permits_in_use(&p), 4);
  bw__permits_set_limit(&p, 1); /* lower: nobody is kicked out */
  assert_int_equal(bw__permits_in_use(&p), 4);
  for (int i = 0; i < 3; i++) bw__permits_release(&p);
  assert_int_equal(r[2].granted, 0); /* 1 in use, limit 1 */
  bw__permits_release(&p);
  assert_int_equal(r[2].granted, 1);
  bw__permits_release(&p);
  assert_int_equal(bw__permits_in_use(&p), 0);
  bw__permits_destroy(&p);
}

/* Stress: threads acquire (queueing when full), hold briefly, release.
 * The number in use never exceeds the limit and every waiter is granted. */
typedef struct {
  bw__permits_t *p;
  _Atomic int *inside, *max_inside;
  int iters;
  _Atomic int granted_flag;
  _Atomic int refused;
} worker_t;

static void stress_grant(bw__permit_waiter_t *w, void *arg) {
  (void)w;
  worker_t *k = arg;
  atomic_store_explicit(&k->granted_flag, 1, memory_order_release);
}

static void *stress(void *arg) {
  worker_t *k = arg;
  for (int i = 0; i < k->iters; i++) {
    bw__permit_waiter_t w = {0};
    w.grant = stress_grant;
    w.arg = k;
    w.deadline_ns = UINT64_MAX;
    atomic_store(&k->granted_flag, 0);
    int rc = bw__permits_acquire(k->p, &w);
    if (rc == BW__PERMITS_EFULL) {
      atomic_fetch_add(&k->refused, 1);
      continue;
    }
    if (rc == BW__PERMITS_QUEUED)
      while (!atomic_load_explicit(&k->granted_flag, memory_order_acquire)) sched_yield();
    int now = atomic_fetch_add(k->inside, 1) + 1;
    int m = atomic_load(k->max_inside);
    while (now > m && !atomic_compare_exchange_weak(k->max_inside, &m, now)) {
    }
    atomic_fetch_sub(k->inside, 1);
    bw__permits_release(k->p);
  }
  return NULL;
}

static void test_stress_threads(void **state) {
  (void)state;
  enum { THREADS = 6 };
  bw__permits_t p;
  assert_int_equal(bw__permits_init(&p, 2, THREADS), 0);
  _Atomic int inside = 0, max_inside = 0;
  worker_t k[THREADS];
  pthread_t th[THREADS];
  int iters = (int)(20000 * scale());
  if (iters < 200) iters = 200;
  for (int i = 0; i < THREADS; i++) {
    k[i] = (worker_t){.p = &p, .inside = &inside, .max_inside = &max_inside, .iters = iters};
    assert_int_equal(pthread_create(&th[i], NULL, stress, &k[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  assert_true(atomic_load(&max_inside) <= 2);
  for (int i = 0; i < THREADS; i++) assert_int_equal(atomic_load(&k[i].refused), 0);
  assert_int_equal(bw__permits_in_use(&p), 0);
  assert_int_equal(bw__permits_queued(&p), 0);
  bw__permits_destroy(&p);
}

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

#include "bulwark/bulkhead.h"
#include "bulwark/timeout.h"

typedef struct bfx {
  bw_runtime_t *rt;
  h5_backend_t *be;
  bw_service_t *inner, *svc;
  bw_layer_t *bh;
  h5_events_t ev;
  bw_event_hook_t *hook;
} bfx_t;

static bfx_t *bfx_new(uint32_t max, uint32_t queue, uint64_t wait_ms, bool hold) {
  bfx_t *f = calloc(1, sizeof *f);
  f->rt = h5_rt(true, 2);
  f->be = calloc(1, sizeof *f->be);
  f->be->hold = hold;
  f->inner = h5_backend_svc(f->be);
  bw_bulkhead_opts_t o;
  bw_bulkhead_opts_init(&o);
  o.name = "bh";
  o.max_concurrent = max;
  o.max_queue = queue;
  o.max_queue_wait_ms = wait_ms;
  assert_null(bw_bulkhead_new(&f->bh, &o));
  f->svc = h5_stack(&f->bh, 1, f->inner);
  pthread_mutex_init(&f->ev.mu, NULL);
  assert_null(bw_event_hook_add(&f->hook, NULL, f->bh, h5_on_event, &f->ev));
  return f;
}

static void bfx_free(bfx_t *f) {
  bw_event_hook_remove(f->hook);
  bw_service_release(f->svc);
  bw_service_release(f->inner);
  bw_layer_release(f->bh);
  bw_runtime_free(f->rt);
  pthread_mutex_destroy(&f->ev.mu);
  free(f->be);
  free(f);
}

/* Is the backend holding the child of `call`? */
static bool holding(h5_backend_t *be, bw_call_t *call) {
  bool yes = false;
  pthread_mutex_lock(&h5_mu);
  for (int j = 0; j < be->npending; j++)
    if (bw_call_parent(be->pending[j]) == call) yes = true;
  pthread_mutex_unlock(&h5_mu);
  return yes;
}

static void test_layer_limit_and_reject(void **state) {
  (void)state;
  bfx_t *f = bfx_new(2, 0, 0, true);
  h5_res_t r[3];
  h5_start(&r[0], f->svc, f->rt, 0);
  h5_start(&r[1], f->svc, f->rt, 0);
  assert_int_equal(h5_wait_pending(f->be, 2), 2);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 2);
  h5_start(&r[2], f->svc, f->rt, 0);
  h5_wait(&r[2]);
  assert_int_equal(r[2].kind, BW_ERR_BULKHEAD_FULL);
  assert_int_equal(h5_count_events(&f->ev, BW_EVENT_REJECTED), 1);
  assert_string_equal(f->ev.ev[0].reason, "bulkhead_full");
  h5_finish_one(f->be, BW_ERR_NONE);
  h5_finish_one(f->be, BW_ERR_CONNECT);
  h5_wait(&r[0]);
  h5_wait(&r[1]);
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  assert_int_equal(r[0].kind + r[1].kind, BW_ERR_CONNECT); /* one ok, one failed */
  for (int i = 0; i < 3; i++) h5_free(&r[i]);
  char *text = NULL;
  size_t len = 0;
  assert_null(bw_metrics_prometheus_text(&text, &len));
  assert_non_null(strstr(text, "bulwark_bulkhead_limit{bulkhead=\"bh\"} 2"));
  bw_metrics_text_free(text);
  bfx_free(f);
}

static void test_layer_fifo_queue(void **state) {
  (void)state;
  enum { Q = 4 };
  bfx_t *f = bfx_new(1, Q, 0, true);
  h5_res_t a, q[Q], extra;
  h5_start(&a, f->svc, f->rt, 0);
  assert_int_equal(h5_wait_pending(f->be, 1), 1);
  for (int i = 0; i < Q; i++) {
    h5_start(&q[i], f->svc, f->rt, 0);
    H5_UNTIL(bw_bulkhead_queued(f->bh) == (uint32_t)(i + 1)); /* arrival order */
    assert_int_equal(bw_bulkhead_queued(f->bh), i + 1);
  }
  h5_start(&extra, f->svc, f->rt, 0);
  h5_wait(&extra);
  assert_int_equal(extra.kind, BW_ERR_BULKHEAD_FULL);
  /* Each finished call hands its permit to the oldest waiter. */
  h5_finish_one(f->be, BW_ERR_NONE);
  for (int i = 0; i < Q; i++) {
    assert_int_equal(h5_wait_pending(f->be, 1), 1);
    assert_true(holding(f->be, q[i].call));
    assert_int_equal(bw_bulkhead_in_use(f->bh), 1);
    h5_finish_one(f->be, BW_ERR_NONE);
    h5_wait(&q[i]);
    assert_int_equal(q[i].kind, BW_ERR_NONE);
  }
  h5_wait(&a);
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  h5_free(&a);
  h5_free(&extra);
  for (int i = 0; i < Q; i++) h5_free(&q[i]);
  bfx_free(f);
}

static void test_layer_queue_timeout(void **state) {
  (void)state;
  bfx_t *f = bfx_new(1, 4, 500, true);
  h5_res_t a, b, c;
  h5_start(&a, f->svc, f->rt, 0);
  assert_int_equal(h5_wait_pending(f->be, 1), 1);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  h5_start(&b, f->svc, f->rt, 0);
  h5_wait(&b); /* the paused clock jumps to the queue timer */
  assert_int_equal(b.kind, BW_ERR_BULKHEAD_FULL);
  assert_int_equal(b.at_ns - t0, 500 * MS_);
  /* A call whose deadline is nearer than the queue wait gives up then. */
  uint64_t t1 = bw_runtime_now_ns(f->rt);
  h5_start(&c, f->svc, f->rt, 200);
  h5_wait(&c);
  assert_int_equal(c.kind, BW_ERR_BULKHEAD_FULL);
  assert_int_equal(c.at_ns - t1, 200 * MS_);
  assert_int_equal(bw_bulkhead_queued(f->bh), 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 1);
  assert_int_equal(h5_count_events(&f->ev, BW_EVENT_REJECTED), 2);
  assert_string_equal(f->ev.ev[0].reason, "queue_timeout");
  h5_finish_one(f->be, BW_ERR_NONE);
  h5_wait(&a);
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  assert_int_equal(atomic_load(&f->be->calls), 1);
  h5_free(&a);
  h5_free(&b);
  h5_free(&c);
  bfx_free(f);
}

static void test_layer_cancel_queued_and_running(void **state) {
  (void)state;
  bfx_t *f = bfx_new(1, 4, 0, true);
  h5_res_t a, b;
  h5_start(&a, f->svc, f->rt, 0);
  assert_int_equal(h5_wait_pending(f->be, 1), 1);
  h5_start(&b, f->svc, f->rt, 0);
  H5_UNTIL(bw_bulkhead_queued(f->bh) == 1);
  bw_call_cancel(b.call);
  h5_wait(&b);
  assert_int_equal(b.kind, BW_ERR_CANCELLED);
  assert_int_equal(bw_bulkhead_queued(f->bh), 0);
  /* Cancel the running call: its permit comes back exactly once. */
  bw_call_cancel(a.call);
  h5_wait(&a);
  assert_int_equal(a.kind, BW_ERR_CANCELLED);
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  assert_int_equal(atomic_load(&f->be->cancels), 1);
  assert_int_equal(atomic_load(&f->be->calls), 1); /* b never ran */
  h5_free(&a);
  h5_free(&b);
  /* Both permits usable again. */
  f->be->hold = false;
  h5_res_t c;
  assert_int_equal(h5_call(f->svc, f->rt, &c), BW_ERR_NONE);
  bfx_free(f);
}

static void test_layer_timeout_returns_permit(void **state) {
  (void)state;
  bfx_t *f = bfx_new(1, 0, 0, true);
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 100;
  bw_layer_t *tl = NULL;
  assert_null(bw_timeout_new(&tl, &to));
  bw_layer_t *layers[2] = {tl, f->bh};
  bw_service_t *svc = h5_stack(layers, 2, f->inner);
  for (int i = 0; i < 3; i++) {
    h5_res_t r;
    assert_int_equal(h5_call(svc, f->rt, &r), BW_ERR_TIMEOUT);
    H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
    assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  }
  assert_int_equal(atomic_load(&f->be->cancels), 3);
  bw_service_release(svc);
  bw_layer_release(tl);
  bfx_free(f);
}

static void test_layer_set_limit(void **state) {
  (void)state;
  bfx_t *f = bfx_new(1, 8, 0, true);
  h5_res_t r[4];
  for (int i = 0; i < 4; i++) h5_start(&r[i], f->svc, f->rt, 0);
  assert_int_equal(h5_wait_pending(f->be, 1), 1);
  H5_UNTIL(bw_bulkhead_queued(f->bh) == 3);
  assert_null(bw_bulkhead_set_limit(f->bh, 3));
  assert_int_equal(h5_wait_pending(f->be, 3), 3);
  assert_int_equal(bw_bulkhead_queued(f->bh), 1);
  assert_int_equal(bw_bulkhead_limit(f->bh), 3);
  bw_error_t *e = bw_bulkhead_set_limit(f->bh, 0);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  for (int i = 0; i < 4; i++) {
    assert_true(h5_wait_pending(f->be, 1) >= 1);
    h5_finish_one(f->be, BW_ERR_NONE);
  }
  for (int i = 0; i < 4; i++) {
    h5_wait(&r[i]);
    assert_int_equal(r[i].kind, BW_ERR_NONE);
    h5_free(&r[i]);
  }
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  bfx_free(f);
}

/* Many concurrent calls on two workers through a small bulkhead with a
 * queue: every call completes once, permits all come back. */
static void test_layer_many_calls(void **state) {
  (void)state;
  bfx_t *f = bfx_new(4, 64, 0, false);
  int n = h5_scaled(20000);
  h5_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) h5_start(&r[i], f->svc, f->rt, 0);
  int ok = 0, full = 0;
  for (int i = 0; i < n; i++) {
    h5_wait(&r[i]);
    ok += r[i].kind == BW_ERR_NONE;
    full += r[i].kind == BW_ERR_BULKHEAD_FULL;
    h5_free(&r[i]);
  }
  assert_int_equal(ok + full, n);
  assert_int_equal(atomic_load(&f->be->calls), ok);
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  assert_int_equal(bw_bulkhead_queued(f->bh), 0);
  free(r);
  bfx_free(f);
}


/* Cancel storm: calls queued and running while another thread cancels a
 * third of them and this one completes the backend's calls. Every call
 * completes exactly once and every permit comes back. */
typedef struct storm {
  h5_res_t *r;
  int n;
} storm_t;

static void *canceller(void *arg) {
  storm_t *s = arg;
  for (int i = 0; i < s->n; i += 3) {
    bw_call_cancel(s->r[i].call);
    if (i % 30 == 0) sched_yield();
  }
  return NULL;
}

static bool finish_any(h5_backend_t *be) {
  pthread_mutex_lock(&h5_mu);
  if (be->npending == 0) {
    pthread_mutex_unlock(&h5_mu);
    return false;
  }
  bw_call_t *c = be->pending[--be->npending];
  pthread_mutex_unlock(&h5_mu);
  bw_call_complete(c, NULL, NULL, NULL);
  return true;
}

static void test_layer_cancel_storm(void **state) {
  (void)state;
  bfx_t *f = bfx_new(2, 4096, 0, true);
  bw_runtime_free(f->rt);
  f->rt = h5_rt(false, 2); /* real clock */
  int n = h5_scaled(3000);
  if (n > 4000) n = 4000;
  h5_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) h5_start(&r[i], f->svc, f->rt, 0);
  storm_t s = {r, n};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, canceller, &s), 0);
  uint64_t end = h5_real_ms() + 60000;
  while (h5_wait_done(r, n, 0) < n && h5_real_ms() < end)
    if (!finish_any(f->be)) sched_yield();
  pthread_join(th, NULL);
  assert_int_equal(h5_wait_done(r, n, n), n);
  int ok = 0, cancelled = 0;
  for (int i = 0; i < n; i++) {
    assert_int_equal(atomic_load(&r[i].done), 1);
    ok += r[i].kind == BW_ERR_NONE;
    cancelled += r[i].kind == BW_ERR_CANCELLED;
  }
  assert_int_equal(ok + cancelled, n);
  H5_UNTIL(bw_bulkhead_in_use(f->bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->bh), 0);
  assert_int_equal(bw_bulkhead_queued(f->bh), 0);
  for (int i = 0; i < n; i++) h5_free(&r[i]);
  free(r);
  bfx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic_limit),
      cmocka_unit_test(test_fifo_queue_bound_and_handoff),
      cmocka_unit_test(test_cancel_and_expire),
      cmocka_unit_test(test_set_limit),
      cmocka_unit_test(test_stress_threads),
      cmocka_unit_test(test_layer_limit_and_reject),
      cmocka_unit_test(test_layer_fifo_queue),
      cmocka_unit_test(test_layer_queue_timeout),
      cmocka_unit_test(test_layer_cancel_queued_and_running),
      cmocka_unit_test(test_layer_timeout_returns_permit),
      cmocka_unit_test(test_layer_set_limit),
      cmocka_unit_test(test_layer_many_calls),
      cmocka_unit_test(test_layer_cancel_storm),
  };
  return cmocka_run_group_tests_name("bulkhead", tests, NULL, NULL);
}
