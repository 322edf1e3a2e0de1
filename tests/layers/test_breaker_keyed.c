/* Keyed circuit breaker: one breaker per key (here the call's context
 * string, as a per-host key would be), isolation between keys, unkeyed
 * calls passing through, LRU eviction with a bounded number of keys, and
 * manual control per key. */
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

#include <stdio.h>

#include "bulwark/circuit_breaker.h"

static size_t key_of(bw_call_t *call, void *arg, char *buf, size_t len) {
  (void)arg;
  const char *k = bw_call_context(call);
  if (!k) return 0;
  snprintf(buf, len, "%s", k);
  return strlen(buf);
}

typedef struct kfx {
  bw_runtime_t *rt;
  h5_backend_t *be;
  bw_service_t *inner, *svc;
  bw_layer_t *kb;
} kfx_t;

static kfx_t *kfx_new(uint32_t max_keys) {
  kfx_t *f = calloc(1, sizeof *f);
  f->rt = h5_rt(true, 2);
  f->be = calloc(1, sizeof *f->be);
  f->inner = h5_backend_svc(f->be);
  bw_circuit_breaker_keyed_opts_t o;
  bw_circuit_breaker_keyed_opts_init(&o);
  assert_int_equal(o.max_keys, 1024);
  o.breaker.name = "per_host";
  o.breaker.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.breaker.consecutive_failures = 2;
  o.breaker.open_duration_ms = 1000;
  o.breaker.half_open_calls = 1;
  o.breaker.runtime = f->rt;
  o.key = key_of;
  o.max_keys = max_keys;
  assert_null(bw_circuit_breaker_keyed_new(&f->kb, &o));
  f->svc = h5_stack(&f->kb, 1, f->inner);
  return f;
}

static void kfx_free(kfx_t *f) {
  bw_service_release(f->svc);
  bw_service_release(f->inner);
  bw_layer_release(f->kb);
  bw_runtime_free(f->rt);
  free(f->be);
  free(f);
}

static bw_error_kind_t kcall(kfx_t *f, const char *key, bw_error_kind_t backend) {
  f->be->dflt = backend;
  h5_res_t r;
  memset(&r, 0, sizeof r);
  r.rt = f->rt;
  assert_null(bw_call_new(&r.call, f->svc, f->rt));
  bw_call_set_context(r.call, (void *)key);
  assert_null(bw_service_call(f->svc, r.call, h5_on_done, &r));
  h5_wait(&r);
  h5_free(&r);
  return r.kind;
}

static void test_keys_are_isolated(void **state) {
  (void)state;
  kfx_t *f = kfx_new(16);
  bw_breaker_state_t s;
  assert_false(bw_circuit_breaker_keyed_state(f->kb, "a.example", &s));
  assert_int_equal(kcall(f, "a.example", BW_ERR_CONNECT), BW_ERR_CONNECT);
  assert_int_equal(kcall(f, "a.example", BW_ERR_CONNECT), BW_ERR_CONNECT);
  assert_true(bw_circuit_breaker_keyed_state(f->kb, "a.example", &s));
  assert_int_equal(s, BW_BREAKER_OPEN);
  assert_int_equal(kcall(f, "a.example", BW_ERR_NONE), BW_ERR_CIRCUIT_OPEN);
  /* Another host is unaffected. */
  assert_int_equal(kcall(f, "b.example", BW_ERR_NONE), BW_ERR_NONE);
  assert_true(bw_circuit_breaker_keyed_state(f->kb, "b.example", &s));
  assert_int_equal(s, BW_BREAKER_CLOSED);
  /* No key: passes unguarded, makes no breaker. */
  for (int i = 0; i < 5; i++) assert_int_equal(kcall(f, NULL, BW_ERR_CONNECT), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_keyed_count(f->kb), 2);
  /* a.example recovers after its open duration. */
  assert_null(bw_runtime_advance(f->rt, 1000));
  assert_int_equal(kcall(f, "a.example", BW_ERR_NONE), BW_ERR_NONE);
  assert_true(bw_circuit_breaker_keyed_state(f->kb, "a.example", &s));
  assert_int_equal(s, BW_BREAKER_CLOSED);
  kfx_free(f);
}

static void test_lru_eviction(void **state) {
  (void)state;
  kfx_t *f = kfx_new(3);
  bw_breaker_state_t s;
  assert_int_equal(kcall(f, "k1", BW_ERR_NONE), BW_ERR_NONE);
  assert_int_equal(kcall(f, "k2", BW_ERR_NONE), BW_ERR_NONE);
  assert_int_equal(kcall(f, "k3", BW_ERR_NONE), BW_ERR_NONE);
  assert_int_equal(kcall(f, "k1", BW_ERR_NONE), BW_ERR_NONE); /* k1 recent again */
  assert_int_equal(kcall(f, "k4", BW_ERR_NONE), BW_ERR_NONE); /* evicts k2 */
  assert_int_equal(bw_circuit_breaker_keyed_count(f->kb), 3);
  assert_false(bw_circuit_breaker_keyed_state(f->kb, "k2", &s));
  assert_true(bw_circuit_breaker_keyed_state(f->kb, "k1", &s));
  assert_true(bw_circuit_breaker_keyed_state(f->kb, "k3", &s));
  assert_true(bw_circuit_breaker_keyed_state(f->kb, "k4", &s));
  /* Many distinct keys never grow it past the bound. */
  char key[32];
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "host-%d", i);
    assert_int_equal(kcall(f, key, BW_ERR_NONE), BW_ERR_NONE);
  }
  assert_int_equal(bw_circuit_breaker_keyed_count(f->kb), 3);
  kfx_free(f);
}

static void test_force_per_key(void **state) {
  (void)state;
  kfx_t *f = kfx_new(8);
  assert_null(bw_circuit_breaker_keyed_force(f->kb, "down", BW_BREAKER_FORCED_OPEN));
  assert_int_equal(kcall(f, "down", BW_ERR_NONE), BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(kcall(f, "up", BW_ERR_NONE), BW_ERR_NONE);
  assert_null(bw_circuit_breaker_keyed_force(f->kb, "down", BW_BREAKER_CLOSED));
  assert_int_equal(kcall(f, "down", BW_ERR_NONE), BW_ERR_NONE);
  bw_error_t *e = bw_circuit_breaker_keyed_force(f->kb, "down", BW_BREAKER_HALF_OPEN);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  /* A plain breaker is not keyed and vice versa. */
  assert_int_equal(bw_circuit_breaker_keyed_count(NULL), 0);
  e = bw_circuit_breaker_force(f->kb, BW_BREAKER_OPEN);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  /* No key function: refused. */
  bw_circuit_breaker_keyed_opts_t o;
  bw_circuit_breaker_keyed_opts_init(&o);
  bw_layer_t *l = NULL;
  e = bw_circuit_breaker_keyed_new(&l, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  kfx_free(f);
}

/* Two workers, many keys, a small bound: evictions race with calls in
 * flight; every call completes once and nothing leaks. */
static const char *const KEYS[] = {"h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"};

static void test_many_calls_evicting(void **state) {
  (void)state;
  kfx_t *f = kfx_new(3);
  int n = h5_scaled(10000);
  h5_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < 4096; i++) f->be->script[i] = i % 5 == 0 ? BW_ERR_CONNECT : BW_ERR_NONE;
  f->be->nscript = 4096;
  for (int i = 0; i < n; i++) {
    r[i].rt = f->rt;
    assert_null(bw_call_new(&r[i].call, f->svc, f->rt));
    bw_call_set_context(r[i].call, (void *)KEYS[i % 8]);
    assert_null(bw_service_call(f->svc, r[i].call, h5_on_done, &r[i]));
  }
  int ok = 0, bad = 0;
  for (int i = 0; i < n; i++) {
    h5_wait(&r[i]);
    ok += r[i].kind == BW_ERR_NONE;
    bad += r[i].kind == BW_ERR_CONNECT || r[i].kind == BW_ERR_CIRCUIT_OPEN;
    h5_free(&r[i]);
  }
  assert_int_equal(ok + bad, n);
  assert_true(bw_circuit_breaker_keyed_count(f->kb) <= 3);
  free(r);
  kfx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_keys_are_isolated),
      cmocka_unit_test(test_lru_eviction),
      cmocka_unit_test(test_force_per_key),
      cmocka_unit_test(test_many_calls_evicting),
  };
  return cmocka_run_group_tests_name("breaker_keyed", tests, NULL, NULL);
}
