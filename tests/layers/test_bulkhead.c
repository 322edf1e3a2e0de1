/* Bulkhead: its permit core (permits.c, no runtime) and the layer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>

#include "support/layer_harness.h"

#include "layers/permits.h"

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
  int iters = (int)(20000 * lh_scale());
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

#include "bulwark/bulkhead.h"

/* f->layer is the bulkhead. */
static lh_fx_t *bfx_new(uint32_t max, uint32_t queue, uint64_t wait_ms, bool hold) {
  lh_fx_t *f = lh_fx_new(true, hold);
  bw_bulkhead_opts_t o;
  bw_bulkhead_opts_init(&o);
  o.name = "bh";
  o.max_concurrent = max;
  o.max_queue = queue;
  o.max_queue_wait_ms = wait_ms;
  bw_layer_t *bh = NULL;
  assert_null(bw_bulkhead_new(&bh, &o));
  lh_fx_stack(f, bh, true);
  return f;
}

/* Is the backend holding `call` (forwarded) or its child? */
static bool holding(lh_backend_t *be, bw_call_t *call) {
  bool yes = false;
  pthread_mutex_lock(&lh_mu);
  for (int j = 0; j < be->npending; j++)
    if (be->pending[j] == call || bw_call_parent(be->pending[j]) == call) yes = true;
  pthread_mutex_unlock(&lh_mu);
  return yes;
}

static void test_layer_limit_and_reject(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(2, 0, 0, true);
  lh_res_t r[3];
  lh_start(&r[0], f->svc, f->rt, 0);
  lh_start(&r[1], f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 2), 2);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 2);
  lh_start(&r[2], f->svc, f->rt, 0);
  lh_wait(&r[2]);
  assert_int_equal(r[2].kind, BW_ERR_BULKHEAD_FULL);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_REJECTED), 1);
  assert_string_equal(f->ev.ev[0].reason, "bulkhead_full");
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_finish_one(f->be, BW_ERR_CONNECT);
  lh_wait(&r[0]);
  lh_wait(&r[1]);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  assert_int_equal(r[0].kind + r[1].kind, BW_ERR_CONNECT); /* one ok, one failed */
  for (int i = 0; i < 3; i++) lh_free(&r[i]);
  lh_assert_metric("bulwark_bulkhead_limit{bulkhead=\"bh\"} 2");
  lh_fx_free(f);
}

/* The bulkhead's name is a label value: escaped. Before the fix a quote,
 * backslash or line feed in it went out as it was (and the name was cut
 * at 160 bytes). */
static void test_layer_name_escaped(void **state) {
  (void)state;
  bw_bulkhead_opts_t o;
  bw_bulkhead_opts_init(&o);
  char name[300];
  snprintf(name, sizeof name, "a\"b\\c\nd%0200d", 7);
  o.name = name;
  o.max_concurrent = 3;
  bw_layer_t *bh = NULL;
  assert_null(bw_bulkhead_new(&bh, &o));
  char want[400];
  snprintf(want, sizeof want, "bulwark_bulkhead_limit{bulkhead=\"a\\\"b\\\\c\\nd%0200d\"} 3\n", 7);
  lh_assert_metric(want);
  bw_layer_release(bh);
}

static void test_layer_fifo_queue(void **state) {
  (void)state;
  enum { Q = 4 };
  lh_fx_t *f = bfx_new(1, Q, 0, true);
  lh_res_t a, q[Q], extra;
  lh_start(&a, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  for (int i = 0; i < Q; i++) {
    lh_start(&q[i], f->svc, f->rt, 0);
    LH_UNTIL(bw_bulkhead_queued(f->layer) == (uint32_t)(i + 1)); /* arrival order */
    assert_int_equal(bw_bulkhead_queued(f->layer), i + 1);
  }
  lh_start(&extra, f->svc, f->rt, 0);
  lh_wait(&extra);
  assert_int_equal(extra.kind, BW_ERR_BULKHEAD_FULL);
  /* Each finished call hands its permit to the oldest waiter. */
  lh_finish_one(f->be, BW_ERR_NONE);
  for (int i = 0; i < Q; i++) {
    assert_int_equal(lh_wait_pending(f->be, 1), 1);
    assert_true(holding(f->be, q[i].call));
    assert_int_equal(bw_bulkhead_in_use(f->layer), 1);
    lh_finish_one(f->be, BW_ERR_NONE);
    lh_wait(&q[i]);
    assert_int_equal(q[i].kind, BW_ERR_NONE);
  }
  lh_wait(&a);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  lh_free(&a);
  lh_free(&extra);
  for (int i = 0; i < Q; i++) lh_free(&q[i]);
  lh_fx_free(f);
}

static void test_layer_queue_timeout(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(1, 4, 500, true);
  lh_res_t a, b, c;
  lh_start(&a, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  uint64_t t0 = bw_runtime_now_ns(f->rt);
  lh_start(&b, f->svc, f->rt, 0);
  lh_wait(&b); /* the paused clock jumps to the queue timer */
  assert_int_equal(b.kind, BW_ERR_BULKHEAD_FULL);
  assert_int_equal(b.at_ns - t0, 500 * MS_);
  /* A call whose deadline is nearer than the queue wait gives up then. */
  uint64_t t1 = bw_runtime_now_ns(f->rt);
  lh_start(&c, f->svc, f->rt, 200);
  lh_wait(&c);
  assert_int_equal(c.kind, BW_ERR_BULKHEAD_FULL);
  assert_int_equal(c.at_ns - t1, 200 * MS_);
  assert_int_equal(bw_bulkhead_queued(f->layer), 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 1);
  assert_int_equal(lh_count_events(&f->ev, BW_EVENT_REJECTED), 2);
  assert_string_equal(f->ev.ev[0].reason, "queue_timeout");
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_wait(&a);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  assert_int_equal(atomic_load(&f->be->calls), 1);
  lh_free(&a);
  lh_free(&b);
  lh_free(&c);
  lh_fx_free(f);
}

/* A huge max_queue_wait_ms waits as long as asked. Before the fix
 * UINT64_MAX / 1e6 - 1 ms made now + the wait wrap to a deadline in the
 * past: the queued call was rejected at once instead of getting the
 * permit when it came back. One worker: a timer that fired has finished
 * before the deferred completion below runs. */
static void test_layer_huge_queue_wait(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(1, 4, UINT64_MAX / 1000000 - 1, true);
  bw_runtime_free(f->rt);
  f->rt = lh_rt(true, 1);
  lh_res_t a, b;
  lh_start(&a, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  lh_start(&b, f->svc, f->rt, 0);
  LH_UNTIL(bw_bulkhead_queued(f->layer) == 1 || atomic_load(&b.done));
  bw_runtime_metrics_t m;
  LH_UNTIL(bw_runtime_metrics(f->rt, &m) == NULL && m.timers_armed == 0);
  assert_int_equal(m.timers_armed, 0);
  lh_finish_one(f->be, BW_ERR_NONE); /* a's permit goes to b */
  lh_wait(&a);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  lh_finish_one(f->be, BW_ERR_NONE);
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_NONE);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  lh_free(&a);
  lh_free(&b);
  lh_fx_free(f);
}

static void test_layer_cancel_queued_and_running(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(1, 4, 0, true);
  lh_res_t a, b;
  lh_start(&a, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  lh_start(&b, f->svc, f->rt, 0);
  LH_UNTIL(bw_bulkhead_queued(f->layer) == 1);
  bw_call_cancel(b.call);
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_CANCELLED);
  assert_int_equal(bw_bulkhead_queued(f->layer), 0);
  /* Cancel the running call: its permit comes back exactly once. */
  bw_call_cancel(a.call);
  lh_wait(&a);
  assert_int_equal(a.kind, BW_ERR_CANCELLED);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  assert_int_equal(atomic_load(&f->be->cancels), 1);
  assert_int_equal(atomic_load(&f->be->calls), 1); /* b never ran */
  lh_free(&a);
  lh_free(&b);
  /* Both permits usable again. */
  f->be->hold = false;
  lh_res_t c;
  assert_int_equal(lh_call(f->svc, f->rt, &c), BW_ERR_NONE);
  lh_fx_free(f);
}

static void test_layer_timeout_returns_permit(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(1, 0, 0, true);
  bw_service_t *svc = lh_fx_timeout(f, 100);
  for (int i = 0; i < 3; i++) {
    lh_res_t r;
    assert_int_equal(lh_call(svc, f->rt, &r), BW_ERR_TIMEOUT);
    LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
    assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  }
  assert_int_equal(atomic_load(&f->be->cancels), 3);
  lh_fx_free(f);
}

static void test_layer_set_limit(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(1, 8, 0, true);
  lh_res_t r[4];
  for (int i = 0; i < 4; i++) lh_start(&r[i], f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  LH_UNTIL(bw_bulkhead_queued(f->layer) == 3);
  assert_null(bw_bulkhead_set_limit(f->layer, 3));
  assert_int_equal(lh_wait_pending(f->be, 3), 3);
  assert_int_equal(bw_bulkhead_queued(f->layer), 1);
  assert_int_equal(bw_bulkhead_limit(f->layer), 3);
  lh_expect_error(bw_bulkhead_set_limit(f->layer, 0), BW_ERR_INVALID_ARGUMENT);
  for (int i = 0; i < 4; i++) {
    assert_true(lh_wait_pending(f->be, 1) >= 1);
    lh_finish_one(f->be, BW_ERR_NONE);
  }
  assert_int_equal(lh_wait_tally(r, 4).n[BW_ERR_NONE], 4);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  lh_fx_free(f);
}

/* Many concurrent calls on two workers through a small bulkhead with a
 * queue: every call completes once, permits all come back. */
static void test_layer_many_calls(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(4, 64, 0, false);
  int n = lh_scaled(20000);
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) lh_start(&r[i], f->svc, f->rt, 0);
  lh_tally_t t = lh_wait_tally(r, n);
  int ok = t.n[BW_ERR_NONE], full = t.n[BW_ERR_BULKHEAD_FULL];
  assert_int_equal(ok + full, n);
  assert_int_equal(atomic_load(&f->be->calls), ok);
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  assert_int_equal(bw_bulkhead_queued(f->layer), 0);
  free(r);
  lh_fx_free(f);
}

/* Cancel storm: calls queued and running while another thread cancels a
 * third of them and this one completes the backend's calls. Every call
 * completes exactly once and every permit comes back. */
static void test_layer_cancel_storm(void **state) {
  (void)state;
  lh_fx_t *f = bfx_new(2, 4096, 0, true);
  bw_runtime_free(f->rt);
  f->rt = lh_rt(false, 2); /* real clock */
  int n = lh_scaled(3000);
  if (n > 4000) n = 4000;
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < n; i++) lh_start(&r[i], f->svc, f->rt, 0);
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
  LH_UNTIL(bw_bulkhead_in_use(f->layer) == 0);
  assert_int_equal(bw_bulkhead_in_use(f->layer), 0);
  assert_int_equal(bw_bulkhead_queued(f->layer), 0);
  for (int i = 0; i < n; i++) lh_free(&r[i]);
  free(r);
  lh_fx_free(f);
}


/* retry(2 attempts, no backoff) over timeout(100 ms) over a bulkhead of 1
 * whose permit another call holds: attempt 1 (the call itself) queues, is
 * granted, and runs as the bulkhead's child. The backend answers it just
 * as the timeout fires (lh_answer_on_timeout); with one worker that
 * answer's callback runs after retry's finish hook resumed the call at its
 * own depth and queued attempt 2 behind attempt 1's permit. The late
 * callback must find the bulkhead's state to return the permit: before
 * the fix it took bw_call_state(call), retry's by then, and spun forever
 * on retry's memory as if it were the child slot's lock. */
static void test_layer_child_answer_after_retry_resumed(void **state) {
  (void)state;
  lh_resume_t *f = lh_resume_new();
  bw_bulkhead_opts_t bo;
  bw_bulkhead_opts_init(&bo);
  bo.max_concurrent = 1;
  bo.max_queue = 4;
  bw_layer_t *bh;
  assert_null(bw_bulkhead_new(&bh, &bo));
  lh_resume_build(f, 100, bh, NULL);
  bw_service_t *plain = lh_stack(&bh, 1, f->backend);

  lh_res_t a, b;
  lh_start(&a, plain, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1); /* a holds the permit */
  lh_start(&b, f->svc, f->rt, 0);
  LH_UNTIL(bw_bulkhead_queued(bh) == 1);
  assert_int_equal(bw_bulkhead_queued(bh), 1);
  lh_finish_one(f->be, BW_ERR_NONE); /* a's permit goes to b's attempt 1 */
  lh_wait(&a);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  assert_null(bw_runtime_advance(f->rt, 100));
  lh_wait(&b);
  assert_int_equal(b.kind, BW_ERR_NONE);
  assert_int_equal(b.resp, 2); /* attempt 2 answered */
  LH_UNTIL(atomic_load(&f->la.freed) == 1); /* attempt 1's answer, freed with its child */
  assert_int_equal(atomic_load(&f->la.freed), 1);
  LH_UNTIL(bw_bulkhead_in_use(bh) == 0);
  assert_int_equal(bw_bulkhead_in_use(bh), 0);
  assert_int_equal(bw_bulkhead_queued(bh), 0);
  assert_int_equal(atomic_load(&f->be->calls), 3);
  lh_free(&a);
  lh_free(&b);
  bw_service_release(plain);
  lh_resume_free(f);
}

/* bw__child_start on a call that an outer timeout has already ended, as a
 * permit grant, a rate limiter's timer or chaos's latency timer landing on
 * another thread just after the timeout's abort would: the abort sets no
 * cancel flag and the node's ops->cancel found no child to cancel. Before
 * the fix the child started anyway (the check was bw_call_is_cancelled)
 * and ran on the backend with nobody left to cancel it (a permit or a
 * connection held until the backend answered). Now no child is made. */
typedef struct late_st {
  bw__child_slot_t slot;
} late_st_t;
static bw_call_t *late_call;
static late_st_t *late_state;
static atomic_int late_children;

static void late_call_fn(bw_service_t *svc, bw_call_t *call) {
  (void)svc;
  late_state = bw_call_state(call);
  bw_call_ref(call); /* for the step that comes later */
  late_call = call;
}
static void late_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)svc;
  bw__child_slot_cancel(&((late_st_t *)bw_call_state(call))->slot, reason);
}
static void late_on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  (void)err;
  late_st_t *st = arg;
  bw__child_slot_clear(&st->slot);
  bw_call_complete_from_child(late_call, child);
  bw_call_free(child);
  atomic_fetch_add(&late_children, 1);
}
static const bw_service_ops_t late_ops = {
    .kind = "late", .call_state_size = sizeof(late_st_t), .call = late_call_fn, .cancel = late_cancel};

static int late_rc;
static bw_poll_t late_start_poll(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  late_rc = bw__child_start(late_call, &late_state->slot, late_on_child, late_state);
  return BW_READY;
}

static void test_child_start_after_outer_timeout(void **state) {
  (void)state;
  lh_fx_t *f = lh_fx_new(true, true);
  bw_layer_t *late = NULL;
  assert_null(bw_layer_new(&late, &late_ops, NULL));
  lh_fx_stack(f, late, false);
  bw_service_t *svc = lh_fx_timeout(f, 100);
  lh_res_t r;
  lh_start(&r, svc, f->rt, 0);
  lh_wait(&r); /* the paused clock jumps to the timeout */
  assert_int_equal(r.kind, BW_ERR_TIMEOUT);
  assert_non_null(late_call);
  assert_null(bw_block_on(f->rt, late_start_poll, NULL, NULL));
  assert_int_equal(late_rc, -1);
  assert_int_equal(atomic_load(&f->be->calls), 0); /* nothing reached the backend */
  assert_int_equal(atomic_load(&late_children), 0);
  bw_call_unref(late_call);
  late_call = NULL;
  lh_free(&r);
  lh_fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic_limit),
      cmocka_unit_test(test_fifo_queue_bound_and_handoff),
      cmocka_unit_test(test_cancel_and_expire),
      cmocka_unit_test(test_set_limit),
      cmocka_unit_test(test_stress_threads),
      cmocka_unit_test(test_layer_limit_and_reject),
      cmocka_unit_test(test_layer_name_escaped),
      cmocka_unit_test(test_layer_fifo_queue),
      cmocka_unit_test(test_layer_queue_timeout),
      cmocka_unit_test(test_layer_huge_queue_wait),
      cmocka_unit_test(test_layer_cancel_queued_and_running),
      cmocka_unit_test(test_layer_timeout_returns_permit),
      cmocka_unit_test(test_layer_set_limit),
      cmocka_unit_test(test_layer_many_calls),
      cmocka_unit_test(test_layer_cancel_storm),
      cmocka_unit_test(test_layer_child_answer_after_retry_resumed),
      cmocka_unit_test(test_child_start_after_outer_timeout),
  };
  return cmocka_run_group_tests_name("bulkhead", tests, NULL, NULL);
}
