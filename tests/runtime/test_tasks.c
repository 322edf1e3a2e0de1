/* Tasks: spawn/join/detach/abort inside and outside, wakers, yield,
 * block_on on both flavors, defer, exact completion counts. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/runtime.h"
#include "runtime/internal.h"

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static bw_runtime_t *mk(bw_flavor_t f, unsigned workers) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.flavor = f;
  o.worker_threads = workers;
  bw_runtime_t *rt = NULL;
  bw_error_t *e = bw_runtime_new(&rt, &o);
  assert_null(e);
  assert_non_null(rt);
  return rt;
}

/* ---- simple value task ---- */
static bw_poll_t ret_arg(bw_task_t *self, void *arg) {
  bw_task_set_output(self, arg, NULL, NULL);
  return BW_READY;
}

static void test_spawn_join_outside(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, 2);
    bw_join_t *j = NULL;
    assert_null(bw_spawn(rt, ret_arg, (void *)(uintptr_t)42, &j));
    if (f == BW_FLAVOR_CURRENT_THREAD) {
      /* a current-thread runtime runs tasks only inside block_on */
      void *v = NULL;
      assert_null(bw_block_on(rt, ret_arg, (void *)(uintptr_t)7, &v));
      assert_int_equal((uintptr_t)v, 7);
    }
    void *v = NULL;
    assert_null(bw_join_wait(j, &v));
    assert_int_equal((uintptr_t)v, 42);
    bw_runtime_free(rt);
  }
}

/* A parent task that spawns N children and joins them all (inside). */
typedef struct parent {
  int n, step;
  bw_join_t *joins[16];
  uintptr_t sum;
} parent_t;

static bw_poll_t parent_poll(bw_task_t *self, void *arg) {
  parent_t *p = arg;
  if (p->step == 0) {
    for (int i = 0; i < p->n; i++)
      assert_null(bw_spawn(bw_task_runtime(self), ret_arg, (void *)(uintptr_t)(i + 1), &p->joins[i]));
    p->step = 1;
  }
  while (p->step - 1 < p->n) {
    void *v = NULL;
    bw_error_t *e = NULL;
    if (bw_join_poll(p->joins[p->step - 1], self, &v, &e) == BW_PENDING) return BW_PENDING;
    assert_null(e);
    p->sum += (uintptr_t)v;
    p->step++;
  }
  bw_task_set_output(self, (void *)p->sum, NULL, NULL);
  return BW_READY;
}

static void test_spawn_join_inside(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, 2);
    parent_t p = {.n = 16};
    void *v = NULL;
    assert_null(bw_block_on(rt, parent_poll, &p, &v));
    assert_int_equal((uintptr_t)v, 16 * 17 / 2);
    bw_runtime_free(rt);
  }
}

/* ---- counting many tasks ---- */
typedef struct counter {
  atomic_long left;
  atomic_long drops;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} counter_t;

static void counter_init(counter_t *c, long n) {
  atomic_init(&c->left, n);
  atomic_init(&c->drops, 0);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->done = false;
}
static void counter_wait(counter_t *c) {
  pthread_mutex_lock(&c->mu);
  while (!c->done) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
}
static void counter_hit(counter_t *c) {
  if (atomic_fetch_sub(&c->left, 1) == 1) {
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
  }
}

static bw_poll_t dec_poll(bw_task_t *self, void *arg) {
  (void)self;
  counter_hit(arg);
  return BW_READY;
}

typedef struct spawner {
  counter_t *c;
  long n;
} spawner_t;

static bw_poll_t spawner_poll(bw_task_t *self, void *arg) {
  spawner_t *s = arg;
  for (long i = 0; i < s->n; i++) assert_null(bw_spawn(bw_task_runtime(self), dec_poll, s->c, NULL));
  return BW_READY;
}

static void test_million_tasks_exact(void **state) {
  (void)state;
  long n = (long)(1000000 * scale());
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, 2);
  counter_t c;
  counter_init(&c, 2 * n);
  /* half from inside a task (local queues), half from outside (inject) */
  spawner_t s = {&c, n};
  assert_null(bw_spawn(rt, spawner_poll, &s, NULL));
  for (long i = 0; i < n; i++) assert_null(bw_spawn(rt, dec_poll, &c, NULL));
  counter_wait(&c);
  assert_int_equal(atomic_load(&c.left), 0);
  bw_runtime_metrics_t m;
  assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_DRAIN, 0));
  assert_null(bw_runtime_metrics(rt, &m));
  assert_int_equal(m.tasks_spawned, (uint64_t)(2 * n + 1));
  assert_int_equal(m.tasks_completed, (uint64_t)(2 * n + 1));
  assert_int_equal(m.tasks_alive, 0);
  bw_runtime_free(rt);
}

/* ---- detach and abort ---- */
static void drop_count(void *arg) { atomic_fetch_add(&((counter_t *)arg)->drops, 1); }

static bw_poll_t pending_forever(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  return BW_PENDING; /* nobody will wake it */
}

static atomic_int never_ran;
static bw_poll_t mark_ran(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  atomic_store(&never_ran, 1);
  return BW_READY;
}

static void test_abort_before_start(void **state) {
  (void)state;
  /* current-thread: nothing runs outside block_on, so abort is surely first */
  bw_runtime_t *rt = mk(BW_FLAVOR_CURRENT_THREAD, 1);
  counter_t c;
  counter_init(&c, 1);
  bw_task_spec_t spec = {mark_ran, NULL, drop_count, "x"};
  spec.arg = &c;
  bw_join_t *j = NULL;
  atomic_store(&never_ran, 0);
  assert_null(bw_spawn_ex(rt, &spec, &j));
  bw_join_abort(j);
  void *v;
  assert_null(bw_block_on(rt, ret_arg, NULL, &v)); /* drives the cancellation */
  bw_error_t *e = bw_join_wait(j, &v);
  assert_int_equal(bw_error_kind(e), BW_ERR_CANCELLED);
  bw_error_unref(e);
  assert_int_equal(atomic_load(&never_ran), 0);
  assert_int_equal(atomic_load(&c.drops), 1);
  bw_runtime_free(rt);
}

static void test_abort_pending_and_detach(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, 2);
  counter_t c;
  counter_init(&c, 1);
  bw_task_spec_t spec = {pending_forever, &c, drop_count, "p"};
  bw_join_t *j = NULL;
  assert_null(bw_spawn_ex(rt, &spec, &j));
  bw_join_abort(j);
  bw_join_abort(j); /* idempotent */
  bw_error_t *e = bw_join_wait(j, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_CANCELLED);
  bw_error_unref(e);
  assert_int_equal(atomic_load(&c.drops), 1);
  /* detached task still runs */
  counter_t c2;
  counter_init(&c2, 1);
  assert_null(bw_spawn(rt, dec_poll, &c2, &j));
  bw_join_detach(j);
  counter_wait(&c2);
  bw_runtime_free(rt);
}

/* ---- shutdown with pending tasks: joiners see RUNTIME_SHUTDOWN, drops run ---- */
static void test_shutdown_pending(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, 2);
    counter_t c;
    counter_init(&c, 1);
    bw_join_t *j[8];
    for (int i = 0; i < 8; i++) {
      bw_task_spec_t spec = {pending_forever, &c, drop_count, "p"};
      assert_null(bw_spawn_ex(rt, &spec, &j[i]));
    }
    assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0));
    for (int i = 0; i < 8; i++) {
      bw_error_t *e = bw_join_wait(j[i], NULL);
      assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
      bw_error_unref(e);
    }
    assert_int_equal(atomic_load(&c.drops), 8);
    bw_join_t *x = NULL;
    bw_error_t *e = bw_spawn(rt, ret_arg, NULL, &x);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    assert_null(x);
    bw_error_unref(e);
    e = bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
    bw_runtime_free(rt);
  }
}

/* A join handle kept past bw_runtime_free still works (orphaned pool). */
static void test_join_after_free(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, 1);
  bw_join_t *j = NULL;
  assert_null(bw_spawn(rt, pending_forever, NULL, &j));
  bw_runtime_free(rt);
  bw_error_t *e = bw_join_wait(j, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  bw_error_unref(e);
}

/* ---- wakers: wake from another thread; wake while running runs once more ---- */
typedef struct wk {
  bw_waker_t *w;
  atomic_int polls;
  atomic_int in_poll;
  atomic_int overlap;
  int target;
} wk_t;

static bw_poll_t self_waking(bw_task_t *self, void *arg) {
  wk_t *k = arg;
  if (atomic_fetch_add(&k->in_poll, 1) != 0) atomic_store(&k->overlap, 1);
  int n = atomic_fetch_add(&k->polls, 1) + 1;
  /* wake ourselves several times while running: must yield ONE extra poll */
  bw_waker_t *w = bw_task_waker(self);
  if (n < k->target) {
    bw_waker_wake_by_ref(w);
    bw_waker_wake_by_ref(w);
  }
  bw_waker_drop(w);
  atomic_fetch_sub(&k->in_poll, 1);
  return n >= k->target ? BW_READY : BW_PENDING;
}

static void test_wake_while_running(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, 2);
    wk_t k = {.target = 100};
    assert_null(bw_block_on(rt, self_waking, &k, NULL));
    assert_int_equal(atomic_load(&k.polls), 100);
    assert_int_equal(atomic_load(&k.overlap), 0);
    bw_runtime_free(rt);
  }
}

static bw_poll_t wait_for_thread(bw_task_t *self, void *arg) {
  wk_t *k = arg;
  int n = atomic_fetch_add(&k->polls, 1);
  if (n == 0) {
    __atomic_store_n(&k->w, bw_task_waker(self), __ATOMIC_RELEASE);
    return BW_PENDING;
  }
  return BW_READY;
}

static void *waker_thread(void *arg) {
  wk_t *k = arg;
  bw_waker_t *w;
  while (!(w = __atomic_load_n(&k->w, __ATOMIC_ACQUIRE))) sched_yield();
  bw_waker_wake(w);
  return NULL;
}

static void test_wake_from_other_thread(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f, 2);
    wk_t k = {0};
    pthread_t th;
    pthread_create(&th, NULL, waker_thread, &k);
    assert_null(bw_block_on(rt, wait_for_thread, &k, NULL));
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&k.polls), 2);
    bw_runtime_free(rt);
  }
}

/* ---- defer ---- */
static void defer_fn(void *arg) {
  counter_t *c = arg;
  assert_non_null(bw_runtime_current());
  counter_hit(c);
}

static void test_defer(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD, 2);
  counter_t c;
  counter_init(&c, 100);
  for (int i = 0; i < 100; i++) assert_int_equal(bw__runtime_defer(rt, defer_fn, &c), 0);
  counter_wait(&c);
  bw_runtime_free(rt);
}

/* ---- defers made on a worker: its own ring (runtime/worker.c) ---- */
typedef struct ring_run {
  bw_runtime_t *rt;
  int n;               /* defers to make from the task */
  atomic_int ran[600]; /* times each ran */
  atomic_int off_worker;
  counter_t done;
} ring_run_t;
typedef struct ring_item {
  ring_run_t *r;
  int i;
} ring_item_t;
static ring_item_t ring_items[600];

static void ring_fn(void *arg) {
  ring_item_t *it = arg;
  if (bw_runtime_current() != it->r->rt) atomic_fetch_add(&it->r->off_worker, 1);
  atomic_fetch_add(&it->r->ran[it->i], 1);
  counter_hit(&it->r->done);
}
static bw_poll_t ring_fill(bw_task_t *self, void *arg) {
  (void)self;
  ring_run_t *r = arg;
  for (int i = 0; i < r->n; i++) {
    ring_items[i] = (ring_item_t){r, i};
    if (bw__runtime_defer(r->rt, ring_fn, &ring_items[i]) != 0) fail_msg("defer %d refused", i);
  }
  return BW_READY;
}

/* More defers than the ring holds (256): the rest go to tasks; every one
 * runs exactly once, on a worker, and the metrics count them as tasks. */
static void test_defer_from_worker_exactly_once(void **state) {
  (void)state;
  static ring_run_t r;
  memset(&r, 0, sizeof r);
  r.rt = mk(BW_FLAVOR_MULTI_THREAD, 2);
  r.n = 600;
  counter_init(&r.done, r.n);
  assert_null(bw_spawn(r.rt, ring_fill, &r, NULL));
  counter_wait(&r.done);
  for (int i = 0; i < r.n; i++) assert_int_equal(atomic_load(&r.ran[i]), 1);
  assert_int_equal(atomic_load(&r.off_worker), 0);
  assert_null(bw_runtime_shutdown(r.rt, BW_SHUTDOWN_DRAIN, 0));
  bw_runtime_metrics_t m;
  assert_null(bw_runtime_metrics(r.rt, &m));
  assert_int_equal(m.tasks_spawned, m.tasks_completed);
  assert_true(m.tasks_spawned >= (uint64_t)r.n + 1);
  bw_runtime_free(r.rt);
}

/* A function that defers itself again and again must not starve the
 * worker's tasks: on a 1-worker runtime a task spawned beside it still
 * runs and stops the chain long before the safety limit. */
typedef struct chain {
  bw_runtime_t *rt;
  atomic_bool stop;
  long links;
  counter_t done;
} chain_t;
#define CHAIN_LIMIT 10000000L
static bw_poll_t chain_stopper(bw_task_t *self, void *arg) {
  (void)self;
  atomic_store(&((chain_t *)arg)->stop, true);
  return BW_READY;
}
static void chain_link(void *arg) {
  chain_t *c = arg;
  /* spawned from inside the chain: it can only run if the worker leaves
   * the ring for its queues now and then */
  if (++c->links == 1000) assert_null(bw_spawn(c->rt, chain_stopper, c, NULL));
  if (atomic_load(&c->stop) || c->links >= CHAIN_LIMIT ||
      bw__runtime_defer(c->rt, chain_link, c) != 0)
    counter_hit(&c->done);
}
static bw_poll_t chain_start(bw_task_t *self, void *arg) {
  (void)self;
  chain_t *c = arg;
  assert_int_equal(bw__runtime_defer(c->rt, chain_link, c), 0);
  return BW_READY;
}

static void test_defer_chain_does_not_starve_tasks(void **state) {
  (void)state;
  static chain_t c;
  memset(&c, 0, sizeof c);
  c.rt = mk(BW_FLAVOR_MULTI_THREAD, 1);
  counter_init(&c.done, 1);
  assert_null(bw_spawn(c.rt, chain_start, &c, NULL));
  counter_wait(&c.done);
  assert_true(atomic_load(&c.stop));
  assert_true(c.links < CHAIN_LIMIT);
  bw_runtime_free(c.rt);
}

/* ---- a non-worker thread spawning on several runtimes in turn (its
 * allocation cache moves between them; freeing one must not break it) ---- */
static void test_remote_spawn_alternating(void **state) {
  (void)state;
  bw_runtime_t *a = mk(BW_FLAVOR_MULTI_THREAD, 1), *b = mk(BW_FLAVOR_MULTI_THREAD, 1);
  counter_t c;
  counter_init(&c, 2 * 300 * 3);
  for (int round = 0; round < 300; round++) {
    for (int k = 0; k < 3; k++) assert_null(bw_spawn(a, dec_poll, &c, NULL));
    for (int k = 0; k < 3; k++) assert_null(bw_spawn(b, dec_poll, &c, NULL));
  }
  counter_wait(&c);
  bw_runtime_free(a); /* this thread's cache may point into a: forgotten */
  counter_t c2;
  counter_init(&c2, 100);
  for (int k = 0; k < 100; k++) assert_null(bw_spawn(b, dec_poll, &c2, NULL));
  counter_wait(&c2);
  bw_runtime_t *d = mk(BW_FLAVOR_MULTI_THREAD, 1);
  counter_t c3;
  counter_init(&c3, 100);
  for (int k = 0; k < 100; k++) assert_null(bw_spawn(d, dec_poll, &c3, NULL));
  counter_wait(&c3);
  bw_runtime_free(b);
  bw_runtime_free(d);
}

/* ---- arguments ---- */
static void test_bad_args(void **state) {
  (void)state;
  bw_runtime_t *rt = NULL;
  bw_error_t *e = bw_runtime_new(NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.local_queue_capacity = 3;
  e = bw_runtime_new(&rt, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  assert_null(rt);
  bw_error_unref(e);
  bw_runtime_opts_init(&o);
  o.flavor = (bw_flavor_t)9;
  e = bw_runtime_new(&rt, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_spawn(NULL, ret_arg, NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  rt = mk(BW_FLAVOR_MULTI_THREAD, 1);
  e = bw_spawn(rt, NULL, NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_block_on(rt, NULL, NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_runtime_free(rt);
  bw_runtime_free(NULL);
  bw_waker_drop(NULL);
  bw_join_detach(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_spawn_join_outside),
      cmocka_unit_test(test_spawn_join_inside),
      cmocka_unit_test(test_million_tasks_exact),
      cmocka_unit_test(test_abort_before_start),
      cmocka_unit_test(test_abort_pending_and_detach),
      cmocka_unit_test(test_shutdown_pending),
      cmocka_unit_test(test_join_after_free),
      cmocka_unit_test(test_wake_while_running),
      cmocka_unit_test(test_wake_from_other_thread),
      cmocka_unit_test(test_defer),
      cmocka_unit_test(test_defer_from_worker_exactly_once),
      cmocka_unit_test(test_defer_chain_does_not_starve_tasks),
      cmocka_unit_test(test_remote_spawn_alternating),
      cmocka_unit_test(test_bad_args),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
