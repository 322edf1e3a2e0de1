/* Scheduler: stealing, fairness (yield, LIFO slot, global queue), tiny
 * local queues (overflow), eager vs lazy start, thread names, several
 * runtimes, metrics. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "bulwark/runtime.h"

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static bw_runtime_t *mk_opts(bw_runtime_opts_t *o) {
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, o));
  return rt;
}

static bw_runtime_t *mk(unsigned workers, uint32_t lqcap) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  o.local_queue_capacity = lqcap;
  return mk_opts(&o);
}

/* ---- helpers ---- */
typedef struct latch {
  atomic_long left;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} latch_t;

static void latch_init(latch_t *l, long n) {
  atomic_init(&l->left, n);
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
}
static void latch_hit(latch_t *l) {
  if (atomic_fetch_sub(&l->left, 1) == 1) {
    pthread_mutex_lock(&l->mu);
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
  }
}
static void latch_wait(latch_t *l) {
  pthread_mutex_lock(&l->mu);
  while (atomic_load(&l->left) > 0) pthread_cond_wait(&l->cv, &l->mu);
  pthread_mutex_unlock(&l->mu);
}

/* ---- stealing ---- */
/* Every task of the flood sits in one worker's local queue (it fits, so
 * nothing overflows to the inject queue): the only way another worker can
 * run one is to steal it. Tasks on the first worker wait (bounded, 10 s of
 * real time, for an overloaded machine) until another thread has run one. */
static atomic_int other_seen;
static pthread_t first_thread;
static atomic_int first_set;

static bw_poll_t spin_task(bw_task_t *self, void *arg) {
  (void)self;
  pthread_t me = pthread_self();
  int exp = 0;
  if (atomic_compare_exchange_strong(&first_set, &exp, 1)) {
    first_thread = me;
    atomic_store(&first_set, 2);
  }
  while (atomic_load(&first_set) != 2) sched_yield();
  if (!pthread_equal(me, first_thread)) {
    atomic_store(&other_seen, 1);
  } else {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do {
      sched_yield();
      clock_gettime(CLOCK_MONOTONIC, &b);
    } while (!atomic_load(&other_seen) && b.tv_sec - a.tv_sec < 10);
  }
  latch_hit(arg);
  return BW_READY;
}

typedef struct flood {
  latch_t *l;
  long n;
} flood_t;

static bw_poll_t flood_poll(bw_task_t *self, void *arg) {
  flood_t *f = arg;
  for (long i = 0; i < f->n; i++) assert_null(bw_spawn(bw_task_runtime(self), spin_task, f->l, NULL));
  return BW_READY;
}

static void test_stealing_happens(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(2, 256);
  latch_t l;
  latch_init(&l, 200);
  atomic_store(&other_seen, 0);
  atomic_store(&first_set, 0);
  flood_t f = {&l, 200}; /* fits the local queue: the other worker can only steal */
  assert_null(bw_spawn(rt, flood_poll, &f, NULL));
  latch_wait(&l);
  bw_runtime_metrics_t m;
  assert_null(bw_runtime_metrics(rt, &m));
  assert_true(m.steals > 0);
  assert_true(m.steal_operations > 0);
  assert_true(m.steals >= m.steal_operations);
  uint64_t s0, s1, p0, p1, d;
  assert_null(bw_runtime_worker_metrics(rt, 0, &s0, &d, &p0));
  assert_null(bw_runtime_worker_metrics(rt, 1, &s1, &d, &p1));
  assert_int_equal(s0 + s1, m.steals);
  assert_true(p0 > 0 && p1 > 0); /* both workers ran tasks */
  bw_error_t *e = bw_runtime_worker_metrics(rt, 2, &s0, &d, &p0);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_int_equal(m.workers, 2);
  bw_runtime_free(rt);
}

/* ---- fairness: a task yielding forever does not starve others ---- */
static atomic_int stop_flag;

static bw_poll_t yield_forever(bw_task_t *self, void *arg) {
  (void)arg;
  if (atomic_load(&stop_flag)) return BW_READY;
  return bw_task_yield(self);
}

static bw_poll_t set_stop(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  atomic_store(&stop_flag, 1);
  return BW_READY;
}

/* Yields 10 times (to the back of the queue each time), then sets stop:
 * it only finishes if the queue keeps moving. */
static bw_poll_t set_stop_after_yields(bw_task_t *self, void *arg) {
  int *polls = arg;
  if (++*polls <= 10) return bw_task_yield(self);
  atomic_store(&stop_flag, 1);
  return BW_READY;
}
static int stop_polls;

typedef struct yf {
  int step;
  bw_join_t *a, *b;
} yf_t;

static bw_poll_t yf_poll(bw_task_t *self, void *arg) {
  yf_t *y = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  if (y->step == 0) {
    assert_null(bw_spawn(rt, yield_forever, NULL, &y->a));
    assert_null(bw_spawn(rt, yield_forever, NULL, NULL));
    stop_polls = 0;
    assert_null(bw_spawn(rt, set_stop_after_yields, &stop_polls, &y->b));
    y->step = 1;
  }
  if (y->step == 1) {
    if (bw_join_poll(y->b, self, NULL, NULL) == BW_PENDING) return BW_PENDING;
    y->step = 2;
  }
  return bw_join_poll(y->a, self, NULL, NULL);
}

static void test_yield_forever_no_starvation(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(1, 0); /* one worker: everything on one queue */
  atomic_store(&stop_flag, 0);
  yf_t y = {0};
  assert_null(bw_block_on(rt, yf_poll, &y, NULL));
  assert_int_equal(atomic_load(&stop_flag), 1);
  bw_runtime_free(rt);
}

/* ---- the LIFO slot does not starve the queue: two tasks waking each
 * other forever (each wake lands in the LIFO slot) ---- */
typedef struct pingpair {
  bw_waker_t *_Atomic other[2];
  atomic_long rounds;
} pingpair_t;

typedef struct pp_arg {
  pingpair_t *p;
  int me;
} pp_arg_t;

static bw_poll_t pingpong_poll(bw_task_t *self, void *arg) {
  pp_arg_t *a = arg;
  pingpair_t *p = a->p;
  if (atomic_load(&stop_flag)) {
    bw_waker_t *o = atomic_exchange(&p->other[1 - a->me], NULL);
    if (o) bw_waker_wake(o);
    bw_waker_drop(atomic_exchange(&p->other[a->me], NULL));
    return BW_READY;
  }
  bw_waker_t *mine = bw_task_waker(self);
  bw_waker_drop(atomic_exchange(&p->other[a->me], mine));
  bw_waker_t *o = atomic_exchange(&p->other[1 - a->me], NULL);
  if (o) bw_waker_wake(o); /* from a worker: goes to the LIFO slot */
  atomic_fetch_add(&p->rounds, 1);
  return BW_PENDING;
}

typedef struct lifo_t {
  int step;
  pingpair_t p;
  pp_arg_t a[2];
  bw_join_t *j[3];
} lifo_test_t;

static bw_poll_t lifo_poll(bw_task_t *self, void *arg) {
  lifo_test_t *t = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  if (t->step == 0) {
    for (int i = 0; i < 2; i++) {
      t->a[i] = (pp_arg_t){&t->p, i};
      assert_null(bw_spawn(rt, pingpong_poll, &t->a[i], &t->j[i]));
    }
    stop_polls = 0;
    assert_null(bw_spawn(rt, set_stop_after_yields, &stop_polls, &t->j[2]));
    t->step = 1;
  }
  while (t->step - 1 < 3) {
    if (bw_join_poll(t->j[t->step - 1], self, NULL, NULL) == BW_PENDING) return BW_PENDING;
    t->step++;
  }
  return BW_READY;
}

static void test_lifo_does_not_starve(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(1, 0);
  atomic_store(&stop_flag, 0);
  lifo_test_t *t = calloc(1, sizeof *t);
  assert_null(bw_block_on(rt, lifo_poll, t, NULL));
  assert_int_equal(atomic_load(&stop_flag), 1);
  assert_int_equal(stop_polls, 11);
  assert_true(atomic_load(&t->p.rounds) > 10); /* the pair really ping-ponged */
  free(t);
  bw_runtime_free(rt);
}

/* ---- the global queue is checked even when the local queue never
 * empties: a remote spawn runs while local tasks yield forever ---- */
static bw_poll_t spawn_yielders(bw_task_t *self, void *arg) {
  (void)arg;
  for (int i = 0; i < 4; i++) assert_null(bw_spawn(bw_task_runtime(self), yield_forever, NULL, NULL));
  return BW_READY;
}

static void test_global_queue_fairness(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(1, 0);
  atomic_store(&stop_flag, 0);
  bw_join_t *j;
  assert_null(bw_spawn(rt, spawn_yielders, NULL, &j));
  assert_null(bw_join_wait(j, NULL));
  /* the worker's local queue now never empties; this goes to inject */
  assert_null(bw_spawn(rt, set_stop, NULL, &j));
  assert_null(bw_join_wait(j, NULL));
  assert_int_equal(atomic_load(&stop_flag), 1);
  bw_runtime_free(rt);
}

/* ---- tiny local queues (capacity 4): overflow to inject loses nothing ---- */
typedef struct many {
  latch_t *l;
  long n;
} many_t;

static bw_poll_t quick(bw_task_t *self, void *arg) {
  (void)self;
  latch_hit(arg);
  return BW_READY;
}

static bw_poll_t many_poll(bw_task_t *self, void *arg) {
  many_t *m = arg;
  for (long i = 0; i < m->n; i++) assert_null(bw_spawn(bw_task_runtime(self), quick, m->l, NULL));
  return BW_READY;
}

static void test_tiny_queue_overflow(void **state) {
  (void)state;
  long n = (long)(200000 * scale());
  bw_runtime_t *rt = mk(2, 4);
  latch_t l;
  latch_init(&l, 4 * n);
  many_t m = {&l, n};
  for (int i = 0; i < 4; i++) assert_null(bw_spawn(rt, many_poll, &m, NULL));
  latch_wait(&l);
  assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_DRAIN, 0));
  bw_runtime_metrics_t met;
  assert_null(bw_runtime_metrics(rt, &met));
  assert_int_equal(met.tasks_completed, (uint64_t)(4 * n + 4));
  assert_int_equal(met.tasks_alive, 0);
  assert_int_equal(met.local_queue_depth, 0);
  assert_int_equal(met.global_queue_depth, 0);
  bw_runtime_free(rt);
}

/* ---- eager vs lazy start; thread names ---- */
static int count_threads_named(const char *prefix) {
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  struct dirent *e;
  int n = 0;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[300], comm[64] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    if (fgets(comm, sizeof comm, f) && strncmp(comm, prefix, strlen(prefix)) == 0) n++;
    fclose(f);
  }
  closedir(d);
  return n;
}

/* Threads joined by bw_runtime_free: pthread_join returns when the thread
 * has exited, but the kernel removes its /proc entry a moment later, so a
 * loaded machine can still list it: poll (bounded) until none is. */
static int count_joined_threads_named(const char *prefix) {
  int n = count_threads_named(prefix);
  for (int i = 0; n != 0 && i < 5000; i++) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    n = count_threads_named(prefix);
  }
  return n;
}

static bw_poll_t noop(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  return BW_READY;
}

static void test_eager_vs_lazy(void **state) {
  (void)state;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  o.thread_name_prefix = "eagr";
  bw_runtime_t *rt = mk_opts(&o); /* default: eager */
  assert_int_equal(count_threads_named("eagr-w"), 2);
  assert_int_equal(count_threads_named("eagr-w0"), 1);
  assert_int_equal(count_threads_named("eagr-w1"), 1);
  bw_runtime_free(rt);
  assert_int_equal(count_joined_threads_named("eagr-w"), 0); /* joined */

  o.thread_name_prefix = "lazy";
  o.worker_start = BW_START_LAZY;
  rt = mk_opts(&o);
  assert_int_equal(count_threads_named("lazy-"), 0); /* no thread before work */
  bw_runtime_metrics_t m;
  assert_null(bw_runtime_metrics(rt, &m));
  assert_int_equal(m.workers, 2);
  assert_null(bw_block_on(rt, noop, NULL, NULL));
  assert_int_equal(count_threads_named("lazy-w"), 2);
  assert_null(bw_runtime_metrics(rt, &m));
  assert_int_equal(m.blocking_threads_live, 0); /* blocking pool: lazy */
  bw_runtime_free(rt);

  /* eager blocking pool: its threads exist when new returns */
  bw_runtime_opts_init(&o);
  o.worker_threads = 1;
  o.max_blocking_threads = 3;
  o.blocking_start = BW_START_EAGER;
  o.thread_name_prefix = "eb";
  rt = mk_opts(&o);
  assert_null(bw_runtime_metrics(rt, &m));
  assert_int_equal(m.blocking_threads_live, 3);
  assert_int_equal(count_threads_named("eb-w"), 1);
  bw_runtime_free(rt);
  assert_int_equal(count_joined_threads_named("eb-"), 0);
}

/* ---- several runtimes: a task on rt1 awaits a task on rt2 ---- */
typedef struct cross {
  bw_runtime_t *other;
  bw_join_t *j;
  bw_runtime_t *seen_on;
} cross_t;

static bw_poll_t on_other(bw_task_t *self, void *arg) {
  cross_t *c = arg;
  c->seen_on = bw_runtime_current();
  bw_task_set_output(self, (void *)(uintptr_t)99, NULL, NULL);
  return BW_READY;
}

static bw_poll_t cross_poll(bw_task_t *self, void *arg) {
  cross_t *c = arg;
  if (!c->j) assert_null(bw_spawn(c->other, on_other, c, &c->j));
  void *v = NULL;
  bw_error_t *e = NULL;
  if (bw_join_poll(c->j, self, &v, &e) == BW_PENDING) return BW_PENDING;
  assert_null(e);
  bw_task_set_output(self, v, NULL, NULL);
  return BW_READY;
}

static void test_two_runtimes(void **state) {
  (void)state;
  bw_runtime_t *a = mk(2, 0), *b = mk(1, 0);
  cross_t c = {.other = b};
  void *v = NULL;
  assert_null(bw_block_on(a, cross_poll, &c, &v));
  assert_int_equal((uintptr_t)v, 99);
  assert_ptr_equal(c.seen_on, b);
  /* shutting one down leaves the other working */
  bw_runtime_free(b);
  c = (cross_t){.other = a};
  assert_null(bw_block_on(a, cross_poll, &c, &v));
  assert_int_equal((uintptr_t)v, 99);
  bw_runtime_free(a);
}

/* ---- drain shutdown finishes running work ---- */
typedef struct slow {
  int polls;
  atomic_int *finished;
} slow_t;

static bw_poll_t slow_poll(bw_task_t *self, void *arg) {
  slow_t *s = arg;
  if (++s->polls < 50) return bw_task_yield(self);
  atomic_fetch_add(s->finished, 1);
  return BW_READY;
}

static bw_poll_t never_done(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  return BW_PENDING;
}

static void test_drain_shutdown(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_opts_t o;
    bw_runtime_opts_init(&o);
    o.flavor = (bw_flavor_t)f;
    o.worker_threads = 2;
    bw_runtime_t *rt = mk_opts(&o);
    atomic_int finished = 0;
    slow_t s[20];
    for (int i = 0; i < 20; i++) {
      s[i] = (slow_t){0, &finished};
      assert_null(bw_spawn(rt, slow_poll, &s[i], NULL));
    }
    /* drain runs everything (a current-thread runtime is driven by the
     * shutting-down thread) */
    assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_DRAIN, 10000));
    assert_int_equal(atomic_load(&finished), 20);
    bw_runtime_free(rt);
  }
  /* a task that never finishes: drain times out, then it is cancelled */
  bw_runtime_t *rt = mk(2, 0);
  bw_join_t *j;
  assert_null(bw_spawn(rt, never_done, NULL, &j));
  bw_error_t *e = bw_runtime_shutdown(rt, BW_SHUTDOWN_DRAIN, 20);
  assert_int_equal(bw_error_kind(e), BW_ERR_TIMEOUT);
  bw_error_unref(e);
  e = bw_join_wait(j, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  bw_error_unref(e);
  bw_runtime_free(rt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stealing_happens),
      cmocka_unit_test(test_yield_forever_no_starvation),
      cmocka_unit_test(test_lifo_does_not_starve),
      cmocka_unit_test(test_global_queue_fairness),
      cmocka_unit_test(test_tiny_queue_overflow),
      cmocka_unit_test(test_eager_vs_lazy),
      cmocka_unit_test(test_two_runtimes),
      cmocka_unit_test(test_drain_shutdown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
