/* Timers and the paused clock: deadline order, cancel, 100,000 at once,
 * sleeps of simulated seconds, bw_runtime_advance, timers from outside. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/runtime.h"

/* runtime/internal.h (not included: it pulls in uv.h). */
void bw__runtime_clock_hold(bw_runtime_t *rt);
void bw__runtime_clock_release(bw_runtime_t *rt);

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static bw_runtime_t *mk(bw_flavor_t f, bw_clock_mode_t clk) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.flavor = f;
  o.worker_threads = 2;
  o.clock = clk;
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

#define MS 1000000ull

/* ---- a task that sleeps 30 simulated seconds ---- */
typedef struct sleeper {
  uint64_t deadline;
  int polls;
} sleeper_t;

static bw_poll_t sleep_poll(bw_task_t *self, void *arg) {
  sleeper_t *s = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  if (!s->deadline) s->deadline = bw_runtime_now_ns(rt) + 30000 * MS;
  s->polls++;
  if (bw_task_sleep_until(self, s->deadline) == BW_PENDING) return BW_PENDING;
  assert_true(bw_runtime_now_ns(rt) >= s->deadline);
  return BW_READY;
}

static void test_sleep_paused(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, BW_CLOCK_PAUSED);
    assert_true(bw_runtime_clock_paused(rt));
    uint64_t t0 = bw_runtime_now_ns(rt);
    assert_int_equal(t0, 1000 * MS);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    sleeper_t s = {0};
    assert_null(bw_block_on(rt, sleep_poll, &s, NULL));
    clock_gettime(CLOCK_MONOTONIC, &b);
    uint64_t now = bw_runtime_now_ns(rt);
    assert_true(now >= t0 + 30000 * MS);
    assert_true(now <= t0 + 30001 * MS); /* jumped exactly to the timer */
    assert_int_equal(s.polls, 2);        /* no spurious wakeups */
    /* 30 simulated seconds took well under 5 real ones */
    assert_true((b.tv_sec - a.tv_sec) < 5);
    bw_runtime_free(rt);
  }
}

static void test_sleep_real(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_REAL);
  assert_false(bw_runtime_clock_paused(rt));
  bw_error_t *e = bw_runtime_advance(rt, 5);
  assert_int_equal(bw_error_kind(e), BW_ERR_NOT_ALLOWED);
  bw_error_unref(e);
  bw_runtime_free(rt);
}

/* ---- deadline order within one tick ---- */
typedef struct order {
  bw_timer_t *timers[64];
  int fired[64];
  atomic_int nfired;
  uint64_t deadlines[64];
  uint64_t fired_at[64];
  bw_runtime_t *rt;
  int step;
} order_t;

typedef struct tref {
  order_t *o;
  int i;
} tref_t;

static void order_cb(bw_timer_t *t, void *arg) {
  (void)t;
  tref_t *r = arg;
  int k = atomic_fetch_add(&r->o->nfired, 1);
  r->o->fired[k] = r->i;
  r->o->fired_at[r->i] = bw_runtime_now_ns(r->o->rt);
  assert_non_null(bw_runtime_current()); /* on a worker */
}

static tref_t refs[64];

/* Arms 64 timers with shuffled deadlines (some equal), cancels every 7th,
 * then sleeps past all of them. */
static bw_poll_t order_poll(bw_task_t *self, void *arg) {
  order_t *o = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  uint64_t base = bw_runtime_now_ns(rt);
  if (o->step == 0) {
    o->rt = rt;
    for (int i = 0; i < 64; i++) {
      refs[i] = (tref_t){o, i};
      assert_null(bw_timer_new(rt, order_cb, &refs[i], &o->timers[i]));
      /* deadlines 1..20 ms, permuted: (i*37 % 20) + 1 */
      o->deadlines[i] = base + (uint64_t)((i * 37) % 20 + 1) * MS;
      assert_null(bw_timer_arm(o->timers[i], o->deadlines[i]));
    }
    for (int i = 0; i < 64; i += 7) assert_true(bw_timer_cancel(o->timers[i]));
    assert_false(bw_timer_cancel(o->timers[0])); /* already cancelled */
    o->step = 1;
    o->deadlines[63] += 0;
  }
  if (bw_task_sleep_until(self, o->deadlines[1] + 100 * MS) == BW_PENDING) return BW_PENDING;
  return BW_READY;
}

static void test_timer_order_and_cancel(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, BW_CLOCK_PAUSED);
    order_t *o = calloc(1, sizeof *o);
    assert_null(bw_block_on(rt, order_poll, o, NULL));
    int n = atomic_load(&o->nfired);
    assert_int_equal(n, 64 - 10); /* 0,7,...,63: 10 cancelled */
    for (int k = 0; k < n; k++) {
      int i = o->fired[k];
      assert_true(i % 7 != 0);
      /* fired within one tick of its deadline, never before */
      assert_true(o->fired_at[i] >= o->deadlines[i]);
      assert_true(o->fired_at[i] < o->deadlines[i] + 1 * MS);
      if (k > 0) assert_true(o->deadlines[o->fired[k - 1]] <= o->deadlines[i]);
    }
    for (int i = 0; i < 64; i++) bw_timer_free(o->timers[i]);
    free(o);
    bw_runtime_free(rt);
  }
}

/* ---- 100,000 timers at once ---- */
typedef struct many {
  bw_timer_t **timers;
  long n;
  atomic_long fired;
  uint64_t last_deadline_seen;
  int step;
} many_t;

static void many_cb(bw_timer_t *t, void *arg) {
  (void)t;
  atomic_fetch_add(&((many_t *)arg)->fired, 1);
}

static bw_poll_t many_poll(bw_task_t *self, void *arg) {
  many_t *m = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  static uint64_t end;
  if (m->step == 0) {
    uint64_t base = bw_runtime_now_ns(rt);
    for (long i = 0; i < m->n; i++) {
      assert_null(bw_timer_new(rt, many_cb, m, &m->timers[i]));
      assert_null(bw_timer_arm(m->timers[i], base + (uint64_t)(1 + i % 5000) * MS));
    }
    bw_runtime_metrics_t met;
    assert_null(bw_runtime_metrics(rt, &met));
    assert_int_equal(met.timers_armed, (uint64_t)m->n);
    /* cancel the odd ones */
    for (long i = 1; i < m->n; i += 2) assert_true(bw_timer_cancel(m->timers[i]));
    end = base + 6000 * MS;
    m->step = 1;
  }
  if (bw_task_sleep_until(self, end) == BW_PENDING) return BW_PENDING;
  return BW_READY;
}

static void test_100k_timers(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_PAUSED);
  many_t m = {0};
  m.n = (long)(100000 * scale());
  m.timers = calloc((size_t)m.n, sizeof *m.timers);
  assert_null(bw_block_on(rt, many_poll, &m, NULL));
  assert_int_equal(atomic_load(&m.fired), (m.n + 1) / 2);
  bw_runtime_metrics_t met;
  assert_null(bw_runtime_metrics(rt, &met));
  assert_int_equal(met.timers_armed, 0);
  for (long i = 0; i < m.n; i++) bw_timer_free(m.timers[i]);
  free(m.timers);
  bw_runtime_free(rt);
}

/* ---- advance from outside; timer armed from a non-worker thread ---- */
typedef struct adv {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int fired;
} adv_t;

static void adv_cb(bw_timer_t *t, void *arg) {
  (void)t;
  adv_t *a = arg;
  pthread_mutex_lock(&a->mu);
  a->fired++;
  pthread_cond_signal(&a->cv);
  pthread_mutex_unlock(&a->mu);
}

static void test_advance_and_remote_arm(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_REAL);
  adv_t a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  bw_timer_t *t;
  assert_null(bw_timer_new(rt, adv_cb, &a, &t));
  /* real clock, armed from this (non-worker) thread, 5 ms ahead */
  assert_null(bw_timer_arm(t, bw_runtime_now_ns(rt) + 5 * MS));
  pthread_mutex_lock(&a.mu);
  while (a.fired < 1) pthread_cond_wait(&a.cv, &a.mu);
  pthread_mutex_unlock(&a.mu);
  /* re-arm and free before it fires: never fires */
  assert_null(bw_timer_arm(t, bw_runtime_now_ns(rt) + 3600 * 1000 * MS));
  bw_timer_free(t);
  bw_runtime_free(rt);

  rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_PAUSED);
  assert_null(bw_timer_new(rt, adv_cb, &a, &t));
  a.fired = 0;
  assert_null(bw_timer_arm(t, bw_runtime_now_ns(rt) + 10 * MS));
  /* auto-advance: nothing else to do, so time jumps and it fires */
  pthread_mutex_lock(&a.mu);
  while (a.fired < 1) pthread_cond_wait(&a.cv, &a.mu);
  pthread_mutex_unlock(&a.mu);
  uint64_t before = bw_runtime_now_ns(rt);
  assert_null(bw_runtime_advance(rt, 250));
  assert_int_equal(bw_runtime_now_ns(rt), before + 250 * MS);
  bw_timer_free(t);
  bw_runtime_free(rt);
}

/* A timer that frees itself from its own callback. */
static void self_free_cb(bw_timer_t *t, void *arg) {
  bw_timer_free(t);
  adv_cb(NULL, arg);
}

static void test_free_inside_callback(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_PAUSED);
  adv_t a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  bw_timer_t *t;
  assert_null(bw_timer_new(rt, self_free_cb, &a, &t));
  assert_null(bw_timer_arm(t, bw_runtime_now_ns(rt) + 1000 * MS));
  pthread_mutex_lock(&a.mu);
  while (a.fired < 1) pthread_cond_wait(&a.cv, &a.mu);
  pthread_mutex_unlock(&a.mu);
  bw_runtime_free(rt);
}

/* Timers pending at shutdown never fire; arming after shutdown fails. */
static void test_timers_at_shutdown(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_REAL);
  adv_t a = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  bw_timer_t *t;
  assert_null(bw_timer_new(rt, adv_cb, &a, &t));
  assert_null(bw_timer_arm(t, bw_runtime_now_ns(rt) + 3600 * 1000 * MS));
  assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0));
  assert_false(bw_timer_cancel(t));
  bw_error_t *e = bw_timer_arm(t, 0);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  bw_error_unref(e);
  assert_int_equal(a.fired, 0);
  bw_timer_free(t);
  bw_runtime_free(rt);
}

/* Same tick: the first timer's callback frees / cancels / re-arms the
 * second, which was already taken out of the wheel in the same batch (a
 * timeout racing its response). No self-deadlock; a freed or cancelled
 * timer does not fire; a re-armed one fires once, later. */
typedef struct pair {
  bw_timer_t *a, *b;
  int mode; /* 0 free b, 1 cancel b, 2 re-arm b */
  atomic_int a_fired, b_fired;
  bool cancel_result;
  uint64_t b_fired_at;
  bw_runtime_t *rt;
} pair_t;

static void pair_b(bw_timer_t *t, void *arg) {
  (void)t;
  pair_t *p = arg;
  p->b_fired_at = bw_runtime_now_ns(p->rt);
  atomic_fetch_add(&p->b_fired, 1);
}

static void pair_a(bw_timer_t *t, void *arg) {
  (void)t;
  pair_t *p = arg;
  atomic_fetch_add(&p->a_fired, 1);
  if (p->mode == 0) {
    bw_timer_free(p->b);
    p->b = NULL;
  } else if (p->mode == 1) {
    p->cancel_result = bw_timer_cancel(p->b);
  } else {
    assert_null(bw_timer_arm(p->b, bw_runtime_now_ns(p->rt) + 50 * MS));
  }
}

typedef struct pair_task {
  pair_t *p;
  uint64_t end;
} pair_task_t;

static bw_poll_t pair_poll(bw_task_t *self, void *arg) {
  pair_task_t *pt = arg;
  pair_t *p = pt->p;
  if (!pt->end) {
    uint64_t now = bw_runtime_now_ns(p->rt);
    assert_null(bw_timer_new(p->rt, pair_a, p, &p->a));
    assert_null(bw_timer_new(p->rt, pair_b, p, &p->b));
    assert_null(bw_timer_arm(p->a, now + 10 * MS));
    assert_null(bw_timer_arm(p->b, now + 10 * MS)); /* same tick, after a */
    pt->end = now + 200 * MS;
  }
  return bw_task_sleep_until(self, pt->end);
}

static void test_same_tick_interplay(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    for (int mode = 0; mode < 3; mode++) {
      bw_runtime_t *rt = mk((bw_flavor_t)f, BW_CLOCK_PAUSED);
      pair_t p = {.mode = mode, .rt = rt};
      pair_task_t pt = {&p, 0};
      uint64_t t0 = bw_runtime_now_ns(rt);
      assert_null(bw_block_on(rt, pair_poll, &pt, NULL));
      assert_int_equal(atomic_load(&p.a_fired), 1);
      if (mode == 0) {
        assert_int_equal(atomic_load(&p.b_fired), 0);
        assert_null(p.b);
      } else if (mode == 1) {
        assert_true(p.cancel_result); /* it was pending: now it never fires */
        assert_int_equal(atomic_load(&p.b_fired), 0);
      } else {
        assert_int_equal(atomic_load(&p.b_fired), 1);
        assert_true(p.b_fired_at >= t0 + 60 * MS);
      }
      bw_timer_free(p.a);
      bw_timer_free(p.b);
      bw_runtime_free(rt);
    }
  }
}

/* ---- a remote arm right after a clock hold ends ---- */
static atomic_int remote_fires;

static void count_fire(bw_timer_t *t, void *arg) {
  (void)t;
  (void)arg;
  atomic_fetch_add(&remote_fires, 1);
}

static uint64_t real_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One round of the two tests below: let the paused clock go (hold then
 * release), wait 0-40 us of real time (by i), arm t 5 ms ahead from this
 * thread (not a worker) and wait up to 2 s of real time for it to fire. */
static bool arm_after_hold_release_fires(bw_runtime_t *rt, bw_timer_t *t, int i) {
  int before = atomic_load(&remote_fires);
  bw__runtime_clock_hold(rt);
  bw__runtime_clock_release(rt);
  uint64_t until = real_ns() + (uint64_t)(i % 400) * 100u;
  while (real_ns() < until) {
  }
  assert_null(bw_timer_arm(t, bw_runtime_now_ns(rt) + 5 * MS));
  uint64_t limit = real_ns() + 2000 * MS;
  while (atomic_load(&remote_fires) == before && real_ns() < limit) sched_yield();
  return atomic_load(&remote_fires) != before;
}

/* A paused runtime whose workers are parked; a thread that is not a worker
 * ends a clock hold (which kicks a worker) and arms a timer just after, as
 * the Redis client's loop does on a refused reconnect. The clock must
 * still move to the timer. Regression: a worker kicked by the release
 * scanned the wheels before the arm and published its park after it, so
 * the arm kicked nobody and the timer waited forever (about 1 in 5,000
 * arms at these spacings; the real-time spin between release and arm
 * sweeps 0-40 us so that some arms land in that window). Each fire takes
 * microseconds; 2 s of real time is only the safety limit. */
static void test_remote_arm_after_hold_release(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, BW_CLOCK_PAUSED);
  bw_timer_t *t = NULL;
  assert_null(bw_timer_new(rt, count_fire, NULL, &t));
  int n = (int)(20000 * scale());
  for (int i = 0; i < n; i++) {
    if (!arm_after_hold_release_fires(rt, t, i)) fail_msg("arm %d of %d never fired", i, n);
  }
  bw_timer_free(t);
  bw_runtime_free(rt);
}

/* ---- the same on a current-thread runtime ---- */

/* The block_on task of the test below: stays pending (so the calling thread
 * keeps driving the runtime: its timers, its idle waits) until `stop`. Under
 * mu so that a stop between the check and the waker's store is not lost. */
typedef struct ct_driver {
  pthread_mutex_t mu;
  bool stop;
  bw_waker_t *waker;
  bw_runtime_t *rt;
} ct_driver_t;

static bw_poll_t ct_driver_poll(bw_task_t *self, void *arg) {
  ct_driver_t *d = arg;
  pthread_mutex_lock(&d->mu);
  bool stop = d->stop;
  if (!stop) {
    bw_waker_drop(d->waker);
    d->waker = bw_task_waker(self);
  }
  pthread_mutex_unlock(&d->mu);
  return stop ? BW_READY : BW_PENDING;
}

static void *ct_driver_main(void *arg) {
  ct_driver_t *d = arg;
  bw_error_t *e = bw_block_on(d->rt, ct_driver_poll, d, NULL);
  if (e) {
    bw_error_unref(e);
    return (void *)1;
  }
  return NULL;
}

/* test_remote_arm_after_hold_release on the current-thread flavor: a
 * thread drives the runtime (inside bw_block_on, its task pending, nothing
 * else to run), this thread ends a clock hold (which kicks the driver) and
 * arms a timer just after. The clock must still move to the timer. The
 * driver's idle path is the same as a worker's park was: the auto-advance
 * (bw__clock_try_advance) scans the wheel, then idle_wait publishes
 * parked_until_ms and sleeps; an arm landing between the scan and the
 * publish saw 0 there, kicked nobody, and the paused clock (which never
 * moves while the driver sleeps) left the timer waiting forever. The
 * previous fire, run on the driver just before this thread arms again, is
 * a second way into the same window. */
static void test_ct_remote_arm_after_hold_release(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_CURRENT_THREAD, BW_CLOCK_PAUSED);
  ct_driver_t d = {.mu = PTHREAD_MUTEX_INITIALIZER, .rt = rt};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, ct_driver_main, &d), 0);
  bw_timer_t *t = NULL;
  assert_null(bw_timer_new(rt, count_fire, NULL, &t));
  int n = (int)(20000 * scale());
  int lost = -1;
  for (int i = 0; i < n && lost < 0; i++) {
    if (!arm_after_hold_release_fires(rt, t, i)) lost = i;
  }
  /* stop the driver first, so that a failure does not leave it running */
  pthread_mutex_lock(&d.mu);
  d.stop = true;
  bw_waker_t *w = d.waker;
  d.waker = NULL;
  pthread_mutex_unlock(&d.mu);
  if (w) bw_waker_wake(w);
  void *ret = NULL;
  pthread_join(th, &ret);
  assert_null(ret);
  bw_timer_free(t);
  bw_runtime_free(rt);
  pthread_mutex_destroy(&d.mu);
  if (lost >= 0) fail_msg("arm %d of %d never fired", lost, n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sleep_paused),
      cmocka_unit_test(test_sleep_real),
      cmocka_unit_test(test_timer_order_and_cancel),
      cmocka_unit_test(test_100k_timers),
      cmocka_unit_test(test_advance_and_remote_arm),
      cmocka_unit_test(test_free_inside_callback),
      cmocka_unit_test(test_timers_at_shutdown),
      cmocka_unit_test(test_same_tick_interplay),
      cmocka_unit_test(test_remote_arm_after_hold_release),
      cmocka_unit_test(test_ct_remote_arm_after_hold_release),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
