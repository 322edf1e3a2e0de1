/* Guards: nested block_on (both flavors, across runtimes), blocking in
 * place on a runtime thread, fork child, use after shutdown, reactor
 * thread. Each must be a clear error, never a hang or an abort. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bulwark/runtime.h"
#include "bulwark/sync.h"
#include "runtime/internal.h"

static bw_runtime_t *mk(bw_flavor_t f) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.flavor = f;
  o.worker_threads = 2;
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

static bw_poll_t noop(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  return BW_READY;
}

/* Inside a task: block_on on `arg` (a runtime) must fail NESTED_RUNTIME,
 * and so must bw_join_wait and bw_runtime_shutdown of our own runtime. */
typedef struct nest {
  bw_runtime_t *target;
  bw_error_kind_t got, got_join, got_shutdown, got_oneshot;
  char msg[512];
} nest_t;

static bw_poll_t nest_poll(bw_task_t *self, void *arg) {
  nest_t *n = arg;
  bw_error_t *e = bw_block_on(n->target, noop, NULL, NULL);
  n->got = bw_error_kind(e);
  bw_error_format(e, n->msg, sizeof n->msg, 0);
  bw_error_unref(e);
  bw_join_t *j;
  assert_null(bw_spawn(bw_task_runtime(self), noop, NULL, &j));
  e = bw_join_wait(j, NULL);
  n->got_join = bw_error_kind(e);
  bw_error_unref(e);
  bw_join_detach(j); /* not consumed by the failed wait */
  e = bw_runtime_shutdown(bw_task_runtime(self), BW_SHUTDOWN_CANCEL, 0);
  n->got_shutdown = bw_error_kind(e);
  bw_error_unref(e);
  bw_oneshot_t *ch;
  assert_null(bw_oneshot_new(&ch));
  e = bw_oneshot_recv_wait(ch, NULL);
  n->got_oneshot = bw_error_kind(e);
  bw_error_unref(e);
  bw_oneshot_close_sender(ch);
  bw_oneshot_close_receiver(ch);
  return BW_READY;
}

static void test_nested_block_on(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    for (int g = 0; g < 2; g++) {
      for (int same = 0; same < 2; same++) {
        bw_runtime_t *rt = mk((bw_flavor_t)f);
        bw_runtime_t *other = same ? rt : mk((bw_flavor_t)g);
        nest_t n = {.target = other};
        assert_null(bw_block_on(rt, nest_poll, &n, NULL));
        assert_int_equal(n.got, BW_ERR_NESTED_RUNTIME);
        assert_non_null(strstr(n.msg, "bw_spawn"));       /* says what to do */
        assert_non_null(strstr(n.msg, "runtime inside")); /* and why */
        assert_int_equal(n.got_join, BW_ERR_NESTED_RUNTIME);
        assert_int_equal(n.got_shutdown, BW_ERR_NESTED_RUNTIME);
        assert_int_equal(n.got_oneshot, BW_ERR_NESTED_RUNTIME);
        if (!same) bw_runtime_free(other);
        /* both runtimes still work afterwards */
        assert_null(bw_block_on(rt, noop, NULL, NULL));
        bw_runtime_free(rt);
      }
    }
  }
}

static void defer_fn(void *arg) { (void)arg; }

/* ---- fork child ---- */
static void test_fork_child(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f);
    assert_null(bw_block_on(rt, noop, NULL, NULL));
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      int bad = 0;
      bw_error_t *e = bw_spawn(rt, noop, NULL, NULL);
      if (bw_error_kind(e) != BW_ERR_FORKED) bad |= 1;
      bw_error_unref(e);
      e = bw_block_on(rt, noop, NULL, NULL);
      if (bw_error_kind(e) != BW_ERR_FORKED) {
        char m[256];
        bw_error_format(e, m, sizeof m, 0);
        fprintf(stderr, "child block_on: %s\n", m);
        bad |= 2;
      }
      bw_error_unref(e);
      bw_timer_t *t = NULL;
      e = bw_timer_new(rt, NULL, NULL, &t);
      if (!e) bad |= 4;
      bw_error_unref(e);
      e = bw_spawn_blocking(rt, NULL, NULL, NULL);
      if (!e) bad |= 8;
      bw_error_unref(e);
      e = bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0);
      if (bw_error_kind(e) != BW_ERR_FORKED) bad |= 16;
      bw_error_unref(e);
      if (bw__runtime_defer(rt, defer_fn, NULL) != -1) bad |= 32;
      bw_runtime_free(rt); /* leaks on purpose in the child; must not hang */
#ifndef BW_TSAN /* TSan cannot start threads in a fork child */
      /* a fresh runtime works in the child */
      bw_runtime_t *rt2 = NULL;
      e = bw_runtime_new(&rt2, NULL);
      if (e) bad |= 64;
      else if (bw_block_on(rt2, noop, NULL, NULL) != NULL) bad |= 128;
      bw_runtime_free(rt2);
#endif
      _exit(bad);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_null(bw_block_on(rt, noop, NULL, NULL)); /* parent unaffected */
    bw_runtime_free(rt);
  }
}

/* ---- use after shutdown ---- */
static void *job(void *arg) { return arg; }
static void timer_fn(bw_timer_t *t, void *arg) {
  (void)t;
  (void)arg;
}
static void op_fn(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)op;
  (void)loop;
}

static void test_use_after_shutdown(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_t *rt = mk((bw_flavor_t)f);
    assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0));
    bw_error_t *e = bw_spawn(rt, noop, NULL, NULL);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
    e = bw_block_on(rt, noop, NULL, NULL);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
    bw_join_t *j = (bw_join_t *)1;
    e = bw_spawn_blocking(rt, job, NULL, &j);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    assert_null(j);
    bw_error_unref(e);
    bw_timer_t *t = NULL;
    e = bw_timer_new(rt, timer_fn, NULL, &t);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
    e = bw_runtime_add_background(rt, "x", noop, NULL, NULL);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
    e = bw_runtime_advance(rt, 1);
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
    assert_int_equal(bw__runtime_defer(rt, defer_fn, NULL), -1);
    bw__reactor_op_t op = {NULL, op_fn};
    assert_int_equal(bw__reactor_submit(rt, &op), -1);
    bw_runtime_metrics_t m;
    assert_null(bw_runtime_metrics(rt, &m)); /* metrics still readable */
    bw_runtime_free(rt);
  }
}

/* ---- blocking on the reactor thread ---- */
typedef struct io_probe {
  bw__reactor_op_t op;
  bw_runtime_t *rt;
  bw_error_kind_t got;
  bool on_loop;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} io_probe_t;

static void probe_fn(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  io_probe_t *p = (io_probe_t *)op;
  bw_error_t *e = bw_block_on(p->rt, noop, NULL, NULL);
  p->got = bw_error_kind(e);
  bw_error_unref(e);
  p->on_loop = bw__reactor_on_loop(p->rt);
  pthread_mutex_lock(&p->mu);
  p->done = true;
  pthread_cond_signal(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

static void test_block_on_reactor_thread(void **state) {
  (void)state;
  bw_runtime_t *rt = mk(BW_FLAVOR_MULTI_THREAD);
  io_probe_t p = {.op = {NULL, probe_fn}, .rt = rt};
  pthread_mutex_init(&p.mu, NULL);
  pthread_cond_init(&p.cv, NULL);
  assert_false(bw__reactor_on_loop(rt));
  assert_int_equal(bw__reactor_submit(rt, &p.op), 0);
  pthread_mutex_lock(&p.mu);
  while (!p.done) pthread_cond_wait(&p.cv, &p.mu);
  pthread_mutex_unlock(&p.mu);
  assert_int_equal(p.got, BW_ERR_NESTED_RUNTIME);
  assert_true(p.on_loop);
  bw_runtime_free(rt);
}

/* ---- out-of-range options ---- */
static void test_bad_options(void **state) {
  (void)state;
  bw_runtime_opts_t o;
  bw_runtime_t *rt = NULL;
  bw_runtime_opts_init(&o);
  o.worker_threads = 100000;
  bw_error_t *e = bw_runtime_new(&rt, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_runtime_opts_init(&o);
  o.clock = (bw_clock_mode_t)7;
  e = bw_runtime_new(&rt, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_runtime_opts_init(&o);
  o.worker_start = (bw_start_t)5;
  e = bw_runtime_new(&rt, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_runtime_opts_init(&o);
  o.thread_name_prefix = "much-too-long-prefix";
  e = bw_runtime_new(&rt, &o);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_null(rt);
  rt = mk(BW_FLAVOR_MULTI_THREAD);
  e = bw_runtime_shutdown(rt, (bw_shutdown_mode_t)9, 0);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_timer_arm(NULL, 0);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_spawn_blocking(rt, NULL, NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_runtime_metrics(rt, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_false(bw_timer_cancel(NULL));
  bw_timer_free(NULL);
  assert_null(bw_runtime_current());
  assert_null(bw_task_current());
  bw_runtime_free(rt);
}

/* ---- out of memory: every allocation point of new/spawn/block_on fails
 * in turn; each must give an error (or work), never crash or leak ---- */
#include "bulwark/alloc.h"
static atomic_long fail_at; /* fail the n-th allocation from now; <0: never */
static void *f_malloc(size_t n) {
  if (atomic_fetch_sub(&fail_at, 1) == 0) return NULL;
  return malloc(n);
}
static void *f_calloc(size_t c, size_t n) {
  if (atomic_fetch_sub(&fail_at, 1) == 0) return NULL;
  return calloc(c, n);
}
static void *f_realloc(void *p, size_t n) {
  if (atomic_fetch_sub(&fail_at, 1) == 0) return NULL;
  return realloc(p, n);
}

static void test_out_of_memory(void **state) {
  (void)state;
  bw_allocator_t a = {f_malloc, f_calloc, f_realloc, free};
  atomic_store(&fail_at, -1000000000L);
  assert_null(bw_set_allocator(&a));
  int ok = 0, failed = 0;
  for (long n = 0; n < 40; n++) {
    for (int f = 0; f < 2; f++) {
      bw_runtime_opts_t o;
      bw_runtime_opts_init(&o);
      o.flavor = (bw_flavor_t)f;
      o.worker_threads = 2;
      bw_runtime_t *rt = NULL;
      atomic_store(&fail_at, n);
      bw_error_t *e = bw_runtime_new(&rt, &o);
      if (e) {
        assert_null(rt);
        assert_int_equal(bw_error_kind(e), BW_ERR_OUT_OF_MEMORY);
        bw_error_unref(e);
        failed++;
        continue;
      }
      e = bw_block_on(rt, noop, NULL, NULL);
      if (e) {
        failed++;
        bw_error_unref(e);
      } else {
        ok++;
      }
      atomic_store(&fail_at, -1000000000L);
      bw_runtime_free(rt);
    }
  }
  atomic_store(&fail_at, -1000000000L);
  assert_null(bw_set_allocator(NULL));
  assert_true(ok > 0 && failed > 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_nested_block_on),
      cmocka_unit_test(test_fork_child),
      cmocka_unit_test(test_use_after_shutdown),
      cmocka_unit_test(test_block_on_reactor_thread),
      cmocka_unit_test(test_bad_options),
      cmocka_unit_test(test_out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
