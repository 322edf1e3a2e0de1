/* Shared harness of the layer tests; see layer_harness.h.
 *
 * Design: one process-wide mutex/cond (lh_mu/lh_cv) guards the backend's
 * pending list and signals every completion, so a test thread can wait for
 * "n calls pending" or "call done" without polling. Completion counters are
 * atomics as well so LH_UNTIL spins may read them without the lock. The
 * backend allocates responses with malloc (they are freed through the
 * call's response destructor). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "layer_harness.h"

#include "bulwark/alloc.h"
#include "bulwark/retry.h"
#include "bulwark/timeout.h"

double lh_scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

int lh_scaled(int n) {
  int v = (int)(n * lh_scale());
  return v < 1 ? 1 : v;
}

bw_runtime_t *lh_rt(bool paused, unsigned workers) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  if (paused) o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

pthread_mutex_t lh_mu = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t lh_cv = PTHREAD_COND_INITIALIZER;

static void resp_free(void *p) { free(p); }

static void backend_fn(void *arg, bw_call_t *call) {
  lh_backend_t *b = arg;
  int n = atomic_fetch_add(&b->calls, 1);
  if (b->hold) {
    pthread_mutex_lock(&lh_mu);
    b->pending[b->npending++] = call;
    pthread_cond_broadcast(&lh_cv);
    pthread_mutex_unlock(&lh_mu);
    return;
  }
  bw_error_kind_t k = n < b->nscript ? b->script[n] : b->dflt;
  if (k == BW_ERR_NONE) {
    int *v = malloc(sizeof *v);
    *v = n;
    bw_call_complete(call, v, resp_free, NULL);
  } else {
    bw_call_complete(call, NULL, NULL, bw_error_new(k, b->detail, "backend failure %d", n));
  }
}

static void backend_cancel(void *arg, bw_call_t *call) {
  lh_backend_t *b = arg;
  atomic_fetch_add(&b->cancels, 1);
  pthread_mutex_lock(&lh_mu);
  for (int i = 0; i < b->npending; i++)
    if (b->pending[i] == call) {
      b->pending[i] = b->pending[--b->npending];
      break;
    }
  pthread_mutex_unlock(&lh_mu);
}

bw_service_t *lh_backend_svc(lh_backend_t *b) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = backend_fn;
  o.cancel = backend_cancel;
  o.arg = b;
  bw_service_t *svc = NULL;
  assert_null(bw_service_from_fn(&svc, &o));
  return svc;
}

int lh_wait_pending(lh_backend_t *b, int n) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  pthread_mutex_lock(&lh_mu);
  while (b->npending < n)
    if (pthread_cond_timedwait(&lh_cv, &lh_mu, &ts) != 0) break;
  int got = b->npending;
  pthread_mutex_unlock(&lh_mu);
  return got;
}

void lh_finish_one(lh_backend_t *b, bw_error_kind_t k) {
  pthread_mutex_lock(&lh_mu);
  assert_true(b->npending > 0);
  bw_call_t *c = b->pending[0];
  memmove(&b->pending[0], &b->pending[1], sizeof b->pending[0] * (size_t)(b->npending - 1));
  b->npending--;
  pthread_mutex_unlock(&lh_mu);
  if (k == BW_ERR_NONE) bw_call_complete(c, NULL, NULL, NULL);
  else bw_call_complete(c, NULL, NULL, bw_error_new(k, b->detail, "held call failed"));
}

bool lh_finish_any(lh_backend_t *b) {
  pthread_mutex_lock(&lh_mu);
  if (b->npending == 0) {
    pthread_mutex_unlock(&lh_mu);
    return false;
  }
  bw_call_t *c = b->pending[--b->npending];
  pthread_mutex_unlock(&lh_mu);
  bw_call_complete(c, NULL, NULL, NULL);
  return true;
}

void lh_on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  lh_res_t *r = arg;
  r->kind = bw_error_kind(err);
  r->retry_after_ms = bw_error_retry_after_ms(err);
  r->injected = bw_error_is(err, BW_ERR_INJECTED);
  r->at_ns = bw_runtime_now_ns(r->rt);
  int *v = err ? NULL : bw_call_response(call);
  r->resp = v ? *v : -1;
  pthread_mutex_lock(&lh_mu);
  atomic_fetch_add(&r->done, 1);
  pthread_cond_broadcast(&lh_cv);
  pthread_mutex_unlock(&lh_mu);
}

static void start(lh_res_t *r, bw_service_t *svc, bw_runtime_t *rt, uint64_t timeout_ms,
                  void *ctx) {
  memset(r, 0, sizeof *r);
  r->rt = rt;
  assert_null(bw_call_new(&r->call, svc, rt));
  if (timeout_ms) bw_call_set_timeout_ms(r->call, timeout_ms);
  if (ctx) bw_call_set_context(r->call, ctx);
  assert_null(bw_service_call(svc, r->call, lh_on_done, r));
}

void lh_start(lh_res_t *r, bw_service_t *svc, bw_runtime_t *rt, uint64_t timeout_ms) {
  start(r, svc, rt, timeout_ms, NULL);
}

void lh_start_ctx(lh_res_t *r, bw_service_t *svc, bw_runtime_t *rt, void *ctx) {
  start(r, svc, rt, 0, ctx);
}

void lh_wait(lh_res_t *r) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  pthread_mutex_lock(&lh_mu);
  while (atomic_load(&r->done) == 0)
    if (pthread_cond_timedwait(&lh_cv, &lh_mu, &ts) != 0) break;
  pthread_mutex_unlock(&lh_mu);
  assert_int_equal(atomic_load(&r->done), 1);
}

int lh_wait_done(lh_res_t *r, int n, int want) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30;
  int d = 0;
  pthread_mutex_lock(&lh_mu);
  for (;;) {
    d = 0;
    for (int i = 0; i < n; i++) d += atomic_load(&r[i].done);
    if (d >= want || pthread_cond_timedwait(&lh_cv, &lh_mu, &ts) != 0) break;
  }
  pthread_mutex_unlock(&lh_mu);
  return d;
}

bw_error_kind_t lh_call_ctx(bw_service_t *svc, bw_runtime_t *rt, lh_res_t *r, void *ctx) {
  start(r, svc, rt, 0, ctx);
  lh_wait(r);
  lh_free(r);
  return r->kind;
}

bw_error_kind_t lh_call(bw_service_t *svc, bw_runtime_t *rt, lh_res_t *r) {
  return lh_call_ctx(svc, rt, r, NULL);
}

void lh_free(lh_res_t *r) {
  bw_call_free(r->call);
  r->call = NULL;
}

static void *storm_main(void *arg) {
  lh_storm_t *s = arg;
  for (int i = 0; i < s->n; i += 3) {
    bw_call_cancel(s->r[i].call);
    if (s->yield && i % 30 == 0) sched_yield();
  }
  return NULL;
}

void lh_storm_start(lh_storm_t *s, lh_res_t *r, int n, bool yield) {
  s->r = r;
  s->n = n;
  s->yield = yield;
  assert_int_equal(pthread_create(&s->th, NULL, storm_main, s), 0);
}

void lh_storm_join(lh_storm_t *s) { pthread_join(s->th, NULL); }

lh_tally_t lh_wait_tally(lh_res_t *r, int n) {
  lh_tally_t t;
  memset(&t, 0, sizeof t);
  for (int i = 0; i < n; i++) {
    lh_wait(&r[i]);
    assert_in_range(r[i].kind, 0, BW_ERR__MAX - 1);
    t.n[r[i].kind]++;
    lh_free(&r[i]);
  }
  return t;
}

void lh_expect_error(bw_error_t *e, bw_error_kind_t kind) {
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), kind);
  bw_error_unref(e);
}

void lh_assert_metric(const char *needle) {
  char *text = NULL;
  size_t len = 0;
  assert_null(bw_metrics_prometheus_text(&text, &len));
  assert_non_null(strstr(text, needle));
  bw_metrics_text_free(text);
}

void lh_on_event(const bw_event_t *ev, void *arg) {
  lh_events_t *e = arg;
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

int lh_count_events(lh_events_t *e, bw_event_type_t type) {
  pthread_mutex_lock(&e->mu);
  int c = 0;
  for (int i = 0; i < e->n; i++) c += e->ev[i].type == type;
  pthread_mutex_unlock(&e->mu);
  return c;
}

/* The response of a late answer: frees itself and counts. */
static void late_resp_free(void *p) {
  atomic_fetch_add(*(atomic_int **)p, 1);
  free(p);
}

static void *late_answer_main(void *arg) {
  lh_late_answer_t *la = arg;
  pthread_mutex_lock(&lh_mu);
  bw_call_t *c = la->be->npending > 0 ? la->be->pending[--la->be->npending] : NULL;
  pthread_mutex_unlock(&lh_mu);
  if (c) {
    atomic_int **resp = malloc(sizeof *resp);
    *resp = &la->freed;
    bw_call_complete(c, resp, late_resp_free, NULL);
  }
  return NULL;
}

void lh_answer_on_timeout(const bw_event_t *ev, void *arg) {
  lh_late_answer_t *la = arg;
  if (ev->type != BW_EVENT_TIMEOUT || atomic_exchange(&la->fired, 1)) return;
  la->be->hold = false; /* read by the backend on this worker from now on */
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, late_answer_main, la), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
}

/* runtime/internal.h (not included: it pulls in uv.h) */
void bw__runtime_clock_hold(bw_runtime_t *rt);
void bw__runtime_clock_release(bw_runtime_t *rt);

lh_resume_t *lh_resume_new(void) {
  lh_resume_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->rt = lh_rt(true, 1);
  bw__runtime_clock_hold(f->rt);
  f->be = calloc(1, sizeof *f->be);
  assert_non_null(f->be);
  f->be->hold = true;
  f->backend = lh_backend_svc(f->be);
  f->la.be = f->be;
  return f;
}

void lh_resume_build(lh_resume_t *f, uint64_t timeout_ms, bw_layer_t *layer, bw_service_t *inner) {
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 2;
  ro.backoff = (bw_backoff_t){.kind = BW_BACKOFF_CONSTANT, .base_ns = 0};
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = timeout_ms;
  assert_null(bw_retry_new(&f->l[0], &ro));
  assert_null(bw_timeout_new(&f->l[1], &to));
  f->l[2] = layer;
  f->svc = lh_stack(f->l, 3, inner ? inner : f->backend);
  assert_null(bw_event_hook_add(&f->hook, NULL, f->l[1], lh_answer_on_timeout, &f->la));
}

void lh_resume_free(lh_resume_t *f) {
  bw_event_hook_remove(f->hook);
  bw_service_release(f->svc);
  for (int i = 0; i < 3; i++) bw_layer_release(f->l[i]);
  bw_service_release(f->backend);
  bw__runtime_clock_release(f->rt);
  bw_runtime_free(f->rt);
  free(f->be);
  free(f);
}

bw_service_t *lh_stack(bw_layer_t **layers, size_t n, bw_service_t *inner) {
  bw_service_t *s = NULL;
  assert_null(bw_stack_build(&s, NULL, layers, n, inner, NULL));
  return s;
}

uint64_t lh_real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

typedef struct batch {
  lh_res_t *r;
  int n;
  bw_service_t *svc;
  bw_runtime_t *rt;
  uint64_t timeout_ms;
} batch_t;

static bw_poll_t batch_poll(bw_task_t *self, void *arg) {
  (void)self;
  batch_t *b = arg;
  for (int i = 0; i < b->n; i++) {
    memset(&b->r[i], 0, sizeof b->r[i]);
    b->r[i].rt = b->rt;
    if (bw_call_new(&b->r[i].call, b->svc, b->rt) != NULL) abort();
    if (b->timeout_ms) bw_call_set_timeout_ms(b->r[i].call, b->timeout_ms);
    if (bw_service_call(b->svc, b->r[i].call, lh_on_done, &b->r[i]) != NULL) abort();
  }
  return BW_READY;
}

void lh_start_batch(lh_res_t *r, int n, bw_service_t *svc, bw_runtime_t *rt,
                    uint64_t timeout_ms) {
  batch_t b = {r, n, svc, rt, timeout_ms};
  assert_null(bw_block_on(rt, batch_poll, &b, NULL));
}

lh_fx_t *lh_fx_new(bool paused, bool hold) {
  lh_fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->rt = lh_rt(paused, 2);
  f->be = calloc(1, sizeof *f->be);
  assert_non_null(f->be);
  f->be->hold = hold;
  f->inner = lh_backend_svc(f->be);
  pthread_mutex_init(&f->ev.mu, NULL);
  return f;
}

void lh_fx_stack(lh_fx_t *f, bw_layer_t *layer, bool events) {
  f->layer = layer;
  f->svc = lh_stack(&f->layer, 1, f->inner);
  if (events) assert_null(bw_event_hook_add(&f->hook, NULL, f->layer, lh_on_event, &f->ev));
}

bw_service_t *lh_fx_timeout(lh_fx_t *f, uint64_t timeout_ms) {
  assert_null(f->timed);
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = timeout_ms;
  assert_null(bw_timeout_new(&f->timeout, &to));
  bw_layer_t *layers[2] = {f->timeout, f->layer};
  f->timed = lh_stack(layers, 2, f->inner);
  return f->timed;
}

void lh_fx_free(lh_fx_t *f) {
  if (f->timed) bw_service_release(f->timed);
  if (f->timeout) bw_layer_release(f->timeout);
  if (f->hook) bw_event_hook_remove(f->hook);
  bw_service_release(f->svc);
  bw_service_release(f->inner);
  bw_layer_release(f->layer);
  bw_runtime_free(f->rt);
  pthread_mutex_destroy(&f->ev.mu);
  free(f->be);
  free(f);
}

static atomic_long n_allocs;
static _Atomic(bw_runtime_t *) slow_rt;
static _Atomic uint64_t slow_ns;

/* lh_slow_worker_allocs: spin on allocations made on rt's workers. */
static void maybe_slow(void) {
  uint64_t ns = atomic_load_explicit(&slow_ns, memory_order_relaxed);
  if (!ns || bw_runtime_current() != atomic_load_explicit(&slow_rt, memory_order_relaxed)) return;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  do clock_gettime(CLOCK_MONOTONIC, &b);
  while ((uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec < ns);
}

static void *count_malloc(size_t n) {
  atomic_fetch_add(&n_allocs, 1);
  maybe_slow();
  return malloc(n);
}
static void *count_calloc(size_t a, size_t b) {
  atomic_fetch_add(&n_allocs, 1);
  maybe_slow();
  return calloc(a, b);
}
static void *count_realloc(void *p, size_t n) {
  atomic_fetch_add(&n_allocs, 1);
  maybe_slow();
  return realloc(p, n);
}

void lh_slow_worker_allocs(bw_runtime_t *rt, uint64_t ns) {
  atomic_store(&slow_rt, ns ? rt : NULL);
  atomic_store(&slow_ns, ns);
}

int lh_count_allocs_install(void) {
  bw_allocator_t a = {count_malloc, count_calloc, count_realloc, free};
  return bw_set_allocator(&a) == NULL ? 0 : -1;
}

long lh_allocs(void) { return atomic_load(&n_allocs); }

typedef struct chain {
  bw_service_t *svc;
  bw_runtime_t *rt;
  int left, wrong;
  bw_error_kind_t kind;
  int64_t retry_after_ms;
  atomic_int done;
} chain_t;

static void chain_next(chain_t *c);
static void chain_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  chain_t *c = arg;
  if (bw_error_kind(err) != c->kind || bw_error_retry_after_ms(err) != c->retry_after_ms)
    c->wrong++;
  bw_call_free(call);
  if (--c->left > 0) {
    chain_next(c);
  } else {
    pthread_mutex_lock(&lh_mu);
    atomic_store(&c->done, 1);
    pthread_cond_broadcast(&lh_cv);
    pthread_mutex_unlock(&lh_mu);
  }
}
static void chain_next(chain_t *c) {
  bw_call_t *call = NULL;
  if (bw_call_new(&call, c->svc, c->rt) || bw_service_call(c->svc, call, chain_done, c)) abort();
}

/* n chained calls; returns how many did not fail as expected. */
static int reject_chain(bw_service_t *svc, bw_runtime_t *rt, int n, bw_error_kind_t kind,
                        int64_t retry_after_ms) {
  chain_t c = {.svc = svc, .rt = rt, .left = n, .kind = kind, .retry_after_ms = retry_after_ms};
  chain_next(&c);
  LH_UNTIL(atomic_load(&c.done));
  /* Not done after 30 s: a worker may still use c, so do not return. */
  if (!atomic_load(&c.done)) abort();
  return c.wrong;
}

void lh_assert_rejections_do_not_allocate(bw_service_t *svc, bw_runtime_t *rt,
                                          bw_error_kind_t kind, int64_t retry_after_ms) {
  (void)reject_chain(svc, rt, 200, kind, retry_after_ms); /* warm-up */
  int n = lh_scaled(5000);
  long before = lh_allocs();
  int wrong = reject_chain(svc, rt, n, kind, retry_after_ms);
  long allocs = lh_allocs() - before;
  assert_int_equal(wrong, 0);
  /* Not per rejection (that would be n): the call and task pools can still
   * grow by a few objects when the chain's calls move between the two
   * workers' caches (up to 4 per pool and thread) after the warm-up. */
  assert_true(allocs <= 16);
}
