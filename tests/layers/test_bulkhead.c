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

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic_limit),
      cmocka_unit_test(test_fifo_queue_bound_and_handoff),
      cmocka_unit_test(test_cancel_and_expire),
      cmocka_unit_test(test_set_limit),
      cmocka_unit_test(test_stress_threads),
  };
  return cmocka_run_group_tests_name("bulkhead", tests, NULL, NULL);
}
