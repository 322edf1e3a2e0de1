/* Blocking pool: lazy start, cap, queueing, keep-alive exit, eager start,
 * cancel, shutdown with queued and running jobs, timeout, names. No fixed
 * sleeps: every wait is on a condition with a generous upper bound. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/alloc.h"
#include "core/alloc.h"
#include "runtime/blocking.h"
#include "support/rt_helpers.h"

/* ---- jobs -------------------------------------------------------------- */
typedef struct tjob {
  bw__blocking_job_t job;
  int id;
  atomic_int ran, cancelled;
  rh_counter_t *done;    /* +1 when run or cancelled */
  rh_counter_t *gate;    /* if set, run waits until gate >= 1 */
  rh_counter_t *entered;
  int *order;           /* run order log (single thread pools only) */
  atomic_int *order_n;
} tjob_t;

static atomic_int running_now, running_max;

static void job_run(void *arg) {
  tjob_t *j = arg;
  int r = atomic_fetch_add(&running_now, 1) + 1;
  int m = atomic_load(&running_max);
  while (r > m && !atomic_compare_exchange_weak(&running_max, &m, r)) {
  }
  if (j->entered) rh_counter_add(j->entered, 1);
  if (j->gate) (void)rh_counter_wait(j->gate, 1); /* no cmocka asserts off the main thread */
  if (j->order) j->order[atomic_fetch_add(j->order_n, 1)] = j->id;
  atomic_fetch_add(&j->ran, 1);
  atomic_fetch_sub(&running_now, 1);
  if (j->done) rh_counter_add(j->done, 1);
}

static void job_cancelled(void *arg) {
  tjob_t *j = arg;
  atomic_fetch_add(&j->cancelled, 1);
  if (j->done) rh_counter_add(j->done, 1);
}

static void tjob_init(tjob_t *j, int id, rh_counter_t *done) {
  memset(j, 0, sizeof *j);
  j->job.run = job_run;
  j->job.cancelled = job_cancelled;
  j->job.arg = j;
  j->id = id;
  j->done = done;
}

static bw__blocking_opts_t opts_lazy(unsigned max, uint64_t keep_alive_ms) {
  bw__blocking_opts_t o;
  memset(&o, 0, sizeof o);
  o.max_threads = max;
  o.keep_alive_ms = keep_alive_ms;
  o.name_prefix = "tst";
  return o;
}

static bw__blocking_pool_t *new_pool(unsigned max, uint64_t keep_alive_ms) {
  bw__blocking_pool_t *p = NULL;
  bw__blocking_opts_t o = opts_lazy(max, keep_alive_ms);
  assert_int_equal(bw__blocking_pool_new(&p, &o), 0);
  return p;
}

/* The counters of a test that holds a job at a gate. */
typedef struct gated {
  rh_counter_t done, gate, entered;
} gated_t;

static void gated_init(gated_t *g) {
  rh_counter_init(&g->done);
  rh_counter_init(&g->gate);
  rh_counter_init(&g->entered);
}
static void gated_destroy(gated_t *g) {
  rh_counter_destroy(&g->done);
  rh_counter_destroy(&g->gate);
  rh_counter_destroy(&g->entered);
}
/* j bumps g->entered when it starts, then waits until g->gate >= 1. */
static void tjob_hold(tjob_t *j, gated_t *g) {
  j->gate = &g->gate;
  j->entered = &g->entered;
}

static bw__blocking_metrics_t metrics(bw__blocking_pool_t *p) {
  bw__blocking_metrics_t m;
  bw__blocking_pool_metrics(p, &m);
  return m;
}

/* ---- tests ------------------------------------------------------------ */

static void test_lazy_start(void **state) {
  (void)state;
  bw__blocking_pool_t *p = new_pool(4, 10000);
  assert_int_equal(metrics(p).live, 0);
  assert_int_equal(metrics(p).threads_started, 0);
  rh_counter_t done;
  rh_counter_init(&done);
  tjob_t j;
  tjob_init(&j, 1, &done);
  assert_int_equal(bw__blocking_pool_submit(p, &j.job), 0);
  assert_true(rh_counter_wait(&done, 1));
  assert_int_equal(atomic_load(&j.ran), 1);
  assert_int_equal(metrics(p).threads_started, 1);
  assert_int_equal(bw__blocking_pool_shutdown(p, BW__BLOCKING_FOREVER), 0);
  assert_int_equal(metrics(p).live, 0);
  assert_int_equal(bw__blocking_pool_submit(p, &j.job), -ESHUTDOWN);
  bw__blocking_pool_free(p);
  rh_counter_destroy(&done);
}

static void test_cap_many_jobs(void **state) {
  (void)state;
  int n = (int)(10000 * rh_scale());
  if (n < 500) n = 500;
  bw__blocking_pool_t *p = new_pool(8, 10000);
  rh_counter_t done;
  rh_counter_init(&done);
  tjob_t *jobs = bw__malloc((size_t)n * sizeof *jobs);
  assert_non_null(jobs);
  atomic_store(&running_now, 0);
  atomic_store(&running_max, 0);
  for (int i = 0; i < n; i++) {
    tjob_init(&jobs[i], i, &done);
    assert_int_equal(bw__blocking_pool_submit(p, &jobs[i].job), 0);
    bw__blocking_metrics_t m = metrics(p);
    assert_true(m.live <= 8);
  }
  assert_true(rh_counter_wait(&done, n));
  for (int i = 0; i < n; i++) assert_int_equal(atomic_load(&jobs[i].ran), 1);
  bw__blocking_metrics_t m = metrics(p);
  assert_true(m.threads_started <= 8);
  assert_true(m.threads_started >= 1);
  assert_true(atomic_load(&running_max) <= 8);
  assert_int_equal(bw__blocking_pool_shutdown(p, BW__BLOCKING_FOREVER), 0);
  m = metrics(p);
  assert_int_equal(m.jobs_run, (uint64_t)n);
  assert_int_equal(m.jobs_cancelled, 0);
  bw__blocking_pool_free(p);
  bw__free(jobs);
  rh_counter_destroy(&done);
}

static void test_queueing_fifo(void **state) {
  (void)state;
  bw__blocking_pool_t *p = new_pool(1, 10000);
  gated_t g;
  gated_init(&g);
  int order[6];
  atomic_int order_n = 0;
  tjob_t j[6];
  for (int i = 0; i < 6; i++) {
    tjob_init(&j[i], i, &g.done);
    j[i].order = order;
    j[i].order_n = &order_n;
  }
  tjob_hold(&j[0], &g);
  assert_int_equal(bw__blocking_pool_submit(p, &j[0].job), 0);
  assert_true(rh_counter_wait(&g.entered, 1)); /* the only thread is busy */
  for (int i = 1; i < 6; i++) assert_int_equal(bw__blocking_pool_submit(p, &j[i].job), 0);
  bw__blocking_metrics_t m = metrics(p);
  assert_int_equal(m.queued, 5);
  assert_int_equal(m.live, 1);
  assert_int_equal(m.running, 1);
  rh_counter_add(&g.gate, 1);
  assert_true(rh_counter_wait(&g.done, 6));
  for (int i = 0; i < 6; i++) assert_int_equal(order[i], i);
  assert_int_equal(metrics(p).threads_started, 1);
  bw__blocking_pool_free(p);
  gated_destroy(&g);
}

static void test_keep_alive_exit(void **state) {
  (void)state;
  bw__blocking_pool_t *p = new_pool(4, 20);
  rh_counter_t done;
  rh_counter_init(&done);
  tjob_t j[2];
  tjob_init(&j[0], 0, &done);
  tjob_init(&j[1], 1, &done);
  assert_int_equal(bw__blocking_pool_submit(p, &j[0].job), 0);
  assert_true(rh_counter_wait(&done, 1));
  /* The idle thread must exit by itself after ~20 ms; wait on the exit
   * signal, bounded generously. */
  assert_int_equal(bw__blocking_pool_wait_live(p, 0, RH_WAIT_MS), 0);
  bw__blocking_metrics_t m = metrics(p);
  assert_int_equal(m.live, 0);
  assert_int_equal(m.threads_exited, 1);
  /* Work after the exit starts a fresh thread. */
  assert_int_equal(bw__blocking_pool_submit(p, &j[1].job), 0);
  assert_true(rh_counter_wait(&done, 2));
  assert_int_equal(metrics(p).threads_started, 2);
  bw__blocking_pool_free(p);
  rh_counter_destroy(&done);
}

static void test_eager_start(void **state) {
  (void)state;
  bw__blocking_pool_t *p;
  bw__blocking_opts_t o = opts_lazy(4, 1);
  o.eager = true;
  assert_int_equal(bw__blocking_pool_new(&p, &o), 0);
  assert_int_equal(metrics(p).live, 4); /* all running when new returns */
  rh_counter_t done;
  rh_counter_init(&done);
  tjob_t j[100];
  for (int i = 0; i < 100; i++) {
    tjob_init(&j[i], i, &done);
    assert_int_equal(bw__blocking_pool_submit(p, &j[i].job), 0);
  }
  assert_true(rh_counter_wait(&done, 100));
  /* Keep-alive (1 ms) does not apply to eager threads: still 4, none exited. */
  bw__blocking_metrics_t m = metrics(p);
  assert_int_equal(m.threads_started, 4);
  assert_int_equal(m.threads_exited, 0);
  assert_int_equal(bw__blocking_pool_wait_live(p, 3, 50), -ETIMEDOUT);
  assert_int_equal(bw__blocking_pool_shutdown(p, BW__BLOCKING_FOREVER), 0);
  assert_int_equal(metrics(p).threads_exited, 4);
  bw__blocking_pool_free(p);
  rh_counter_destroy(&done);
}

static void test_cancel_before_start(void **state) {
  (void)state;
  bw__blocking_pool_t *p = new_pool(1, 10000);
  gated_t g;
  gated_init(&g);
  tjob_t a, b, c;
  tjob_init(&a, 0, &g.done);
  tjob_init(&b, 1, &g.done);
  tjob_init(&c, 2, &g.done);
  tjob_hold(&a, &g);
  assert_int_equal(bw__blocking_pool_submit(p, &a.job), 0);
  assert_true(rh_counter_wait(&g.entered, 1));
  assert_int_equal(bw__blocking_pool_submit(p, &b.job), 0);
  assert_int_equal(bw__blocking_pool_submit(p, &c.job), 0);
  assert_true(bw__blocking_pool_cancel(p, &b.job));
  assert_false(bw__blocking_pool_cancel(p, &b.job)); /* already cancelled */
  assert_false(bw__blocking_pool_cancel(p, &a.job)); /* running */
  assert_int_equal(metrics(p).queued, 1);
  rh_counter_add(&g.gate, 1);
  assert_true(rh_counter_wait(&g.done, 2));
  assert_false(bw__blocking_pool_cancel(p, &c.job)); /* finished */
  assert_int_equal(bw__blocking_pool_shutdown(p, BW__BLOCKING_FOREVER), 0);
  assert_int_equal(atomic_load(&a.ran), 1);
  assert_int_equal(atomic_load(&b.ran) + atomic_load(&b.cancelled), 0); /* no callback */
  assert_int_equal(atomic_load(&c.ran), 1);
  assert_int_equal(metrics(p).jobs_cancelled, 1);
  bw__blocking_pool_free(p);
  gated_destroy(&g);
}

typedef struct shutdown_arg {
  bw__blocking_pool_t *p;
  uint64_t timeout_ms;
  int rc;
} shutdown_arg_t;

static void *shutdown_thread(void *arg) {
  shutdown_arg_t *s = arg;
  s->rc = bw__blocking_pool_shutdown(s->p, s->timeout_ms);
  return NULL;
}

static void test_shutdown_queued_and_running(void **state) {
  (void)state;
  enum { RUNNING = 2, QUEUED = 10 };
  bw__blocking_pool_t *p = new_pool(RUNNING, 10000);
  gated_t g;
  gated_init(&g);
  rh_counter_t cancelled_cnt;
  rh_counter_init(&cancelled_cnt);
  tjob_t j[RUNNING + QUEUED];
  for (int i = 0; i < RUNNING + QUEUED; i++) {
    tjob_init(&j[i], i, i < RUNNING ? &g.done : &cancelled_cnt);
    if (i < RUNNING) {
      tjob_hold(&j[i], &g);
    }
    assert_int_equal(bw__blocking_pool_submit(p, &j[i].job), 0);
    if (i == RUNNING - 1) assert_true(rh_counter_wait(&g.entered, RUNNING));
  }
  assert_int_equal(metrics(p).queued, QUEUED);
  shutdown_arg_t s = {p, BW__BLOCKING_FOREVER, 1};
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, shutdown_thread, &s), 0);
  /* Queued jobs get `cancelled` first; running ones hold shutdown up. */
  assert_true(rh_counter_wait(&cancelled_cnt, QUEUED));
  assert_int_equal(rh_counter_get(&g.done), 0);
  tjob_t late;
  tjob_init(&late, 99, &g.done);
  assert_int_equal(bw__blocking_pool_submit(p, &late.job), -ESHUTDOWN);
  rh_counter_add(&g.gate, 1);
  pthread_join(th, NULL);
  assert_int_equal(s.rc, 0);
  for (int i = 0; i < RUNNING + QUEUED; i++) {
    /* nothing lost silently: each job either ran or was cancelled, once */
    assert_int_equal(atomic_load(&j[i].ran) + atomic_load(&j[i].cancelled), 1);
    assert_int_equal(atomic_load(&j[i].ran), i < RUNNING ? 1 : 0);
  }
  bw__blocking_metrics_t m = metrics(p);
  assert_int_equal(m.live, 0);
  assert_int_equal(m.jobs_run, RUNNING);
  assert_int_equal(m.jobs_cancelled, QUEUED);
  assert_int_equal(atomic_load(&late.ran) + atomic_load(&late.cancelled), 0);
  bw__blocking_pool_free(p);
  gated_destroy(&g);
  rh_counter_destroy(&cancelled_cnt);
}

static void test_shutdown_timeout_abandons(void **state) {
  (void)state;
  uint64_t alive_before = bw__blocking_pools_alive();
  bw__blocking_pool_t *p = new_pool(1, 10000);
  assert_int_equal(bw__blocking_pools_alive(), alive_before + 1);
  gated_t g;
  gated_init(&g);
  tjob_t a;
  tjob_init(&a, 0, &g.done);
  tjob_hold(&a, &g);
  assert_int_equal(bw__blocking_pool_submit(p, &a.job), 0);
  assert_true(rh_counter_wait(&g.entered, 1));
  assert_int_equal(bw__blocking_pool_shutdown(p, 20), -ETIMEDOUT);
  bw__blocking_pool_free(p); /* thread is detached, frees the pool later */
  rh_counter_add(&g.gate, 1);
  assert_true(rh_counter_wait(&g.done, 1));
  /* The detached thread drops the last reference right after its job. */
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (bw__blocking_pools_alive() != alive_before) {
    sched_yield();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true(t1.tv_sec - t0.tv_sec < RH_WAIT_MS / 1000);
  }
  assert_int_equal(atomic_load(&a.ran), 1);
  gated_destroy(&g);
}

/* Jobs that submit more jobs, check their thread's name and refuse to shut
 * the pool down from inside. */
typedef struct nest {
  bw__blocking_job_t job, child;
  bw__blocking_pool_t *p;
  rh_counter_t *done;
  char name[16];
  int shutdown_rc, child_ran, submit_rc;
} nest_t;

static void nest_child(void *arg) {
  nest_t *n = arg;
  n->child_ran = 1;
  rh_counter_add(n->done, 1);
}

static void nest_parent(void *arg) {
  nest_t *n = arg;
  pthread_getname_np(pthread_self(), n->name, sizeof n->name);
  n->shutdown_rc = bw__blocking_pool_shutdown(n->p, 0);
  n->child.run = nest_child;
  n->child.arg = n;
  n->submit_rc = bw__blocking_pool_submit(n->p, &n->child);
  rh_counter_add(n->done, 1);
}

static void test_nested_submit_and_names(void **state) {
  (void)state;
  bw__blocking_pool_t *p;
  bw__blocking_opts_t o = opts_lazy(1, 10000);
  o.name_prefix = "averyveryverylongprefix";
  assert_int_equal(bw__blocking_pool_new(&p, &o), 0);
  rh_counter_t done;
  rh_counter_init(&done);
  nest_t n;
  memset(&n, 0, sizeof n);
  n.p = p;
  n.done = &done;
  n.job.run = nest_parent;
  n.job.arg = &n;
  assert_false(bw__blocking_on_pool_thread());
  assert_int_equal(bw__blocking_pool_submit(p, &n.job), 0);
  assert_true(rh_counter_wait(&done, 2));
  assert_int_equal(n.shutdown_rc, -EDEADLK);
  assert_int_equal(n.submit_rc, 0);
  assert_int_equal(n.child_ran, 1);
  assert_true(strlen(n.name) <= 15);
  assert_string_equal(n.name, "averyveryver-b0"); /* cut to 15 chars */
  bw__blocking_pool_free(p);
  rh_counter_destroy(&done);
}

static void test_bad_args(void **state) {
  (void)state;
  bw__blocking_pool_t *p = (void *)1;
  bw__blocking_opts_t o = opts_lazy(0, 0);
  assert_int_equal(bw__blocking_pool_new(&p, &o), -EINVAL);
  assert_null(p);
  assert_int_equal(bw__blocking_pool_new(&p, NULL), -EINVAL);
  assert_int_equal(bw__blocking_pool_new(NULL, &o), -EINVAL);
  bw__blocking_pool_free(NULL);
}

/* Several producers against a small pool whose threads keep timing out
 * (keep-alive 0-1 ms): races between keep-alive expiry, chained wake-ups
 * and submits must never strand a job. */
typedef struct producer {
  bw__blocking_pool_t *p;
  tjob_t *jobs;
  int n;
  int failures;
} producer_t;

static void *producer_main(void *arg) {
  producer_t *pr = arg;
  for (int i = 0; i < pr->n; i++) {
    if (bw__blocking_pool_submit(pr->p, &pr->jobs[i].job) != 0) pr->failures++;
    if (i % 64 == 0) sched_yield();
  }
  return NULL;
}

static void test_multi_producer_keep_alive_races(void **state) {
  (void)state;
  enum { PRODUCERS = 4 };
  int per = (int)(2500 * rh_scale());
  if (per < 200) per = 200;
  for (uint64_t ka = 0; ka <= 1; ka++) {
    bw__blocking_pool_t *p = new_pool(3, ka);
    rh_counter_t done;
    rh_counter_init(&done);
    tjob_t *jobs = bw__malloc((size_t)PRODUCERS * (size_t)per * sizeof *jobs);
    assert_non_null(jobs);
    producer_t pr[PRODUCERS];
    pthread_t th[PRODUCERS];
    for (int t = 0; t < PRODUCERS; t++) {
      for (int i = 0; i < per; i++) tjob_init(&jobs[t * per + i], t * per + i, &done);
      pr[t] = (producer_t){p, &jobs[t * per], per, 0};
      assert_int_equal(pthread_create(&th[t], NULL, producer_main, &pr[t]), 0);
    }
    for (int t = 0; t < PRODUCERS; t++) {
      pthread_join(th[t], NULL);
      assert_int_equal(pr[t].failures, 0);
    }
    assert_true(rh_counter_wait(&done, (long)PRODUCERS * per));
    for (int i = 0; i < PRODUCERS * per; i++) assert_int_equal(atomic_load(&jobs[i].ran), 1);
    bw__blocking_metrics_t m = metrics(p);
    assert_true(m.live <= 3);
    assert_int_equal(bw__blocking_pool_shutdown(p, BW__BLOCKING_FOREVER), 0);
    m = metrics(p);
    assert_int_equal(m.jobs_run, (uint64_t)(PRODUCERS * per));
    assert_int_equal(m.threads_started, m.threads_exited);
    bw__blocking_pool_free(p);
    bw__free(jobs);
    rh_counter_destroy(&done);
  }
}

/* Informational throughput (BENCH.md's blocking_pool shape, pool only):
 * jobs of a trivial function, submitted and awaited in batches of 100.
 * Never fails on timing. */
static void trivial_run(void *arg) { rh_counter_add(arg, 1); }

static double batch_ns_per_job(unsigned max_threads, int total) {
  bw__blocking_pool_t *p = new_pool(max_threads, 10000);
  rh_counter_t done;
  rh_counter_init(&done);
  bw__blocking_job_t jobs[100];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int b = 0; b < total / 100; b++) {
    for (int i = 0; i < 100; i++) {
      memset(&jobs[i], 0, sizeof jobs[i]);
      jobs[i].run = trivial_run;
      jobs[i].arg = &done;
      assert_int_equal(bw__blocking_pool_submit(p, &jobs[i]), 0);
    }
    assert_true(rh_counter_wait(&done, (long)(b + 1) * 100));
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  bw__blocking_pool_free(p);
  rh_counter_destroy(&done);
  double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
  return ns / total;
}

static void test_throughput_informational(void **state) {
  (void)state;
  int total = (int)(20000 * rh_scale());
  if (total < 1000) total = 1000;
  total -= total % 100;
  double a = batch_ns_per_job(512, total), b = batch_ns_per_job(4, total);
  printf("# blocking pool, %d trivial jobs in batches of 100: %.0f ns/job (512 threads max), "
         "%.0f ns/job (4 threads max)\n", total, a, b);
}

static void test_out_of_memory(void **state) {
  (void)state;
  bw__blocking_pool_t *p = NULL;
  bw__blocking_opts_t o = opts_lazy(4, 10000);
  rh_use_failing_allocator(0); /* the pool itself */
  assert_int_equal(bw__blocking_pool_new(&p, &o), -ENOMEM);
  assert_null(p);
  o.eager = true;
  rh_use_failing_allocator(3); /* pool + 2 of 4 thread records */
  assert_int_equal(bw__blocking_pool_new(&p, &o), -ENOMEM);
  assert_null(p);
  rh_restore_allocator();
  o.eager = false;
  assert_int_equal(bw__blocking_pool_new(&p, &o), 0);
  rh_counter_t done;
  rh_counter_init(&done);
  tjob_t j;
  tjob_init(&j, 0, &done);
  rh_use_failing_allocator(0); /* no thread record: nobody could run it */
  assert_int_equal(bw__blocking_pool_submit(p, &j.job), -ENOMEM);
  rh_restore_allocator();
  assert_int_equal(metrics(p).queued, 0);
  assert_int_equal(bw__blocking_pool_submit(p, &j.job), 0);
  assert_true(rh_counter_wait(&done, 1));
  assert_int_equal(atomic_load(&j.ran), 1);
  bw__blocking_pool_free(p);
  rh_counter_destroy(&done);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lazy_start),
      cmocka_unit_test(test_cap_many_jobs),
      cmocka_unit_test(test_queueing_fifo),
      cmocka_unit_test(test_keep_alive_exit),
      cmocka_unit_test(test_eager_start),
      cmocka_unit_test(test_cancel_before_start),
      cmocka_unit_test(test_shutdown_queued_and_running),
      cmocka_unit_test(test_shutdown_timeout_abandons),
      cmocka_unit_test(test_nested_submit_and_names),
      cmocka_unit_test(test_bad_args),
      cmocka_unit_test(test_out_of_memory),
      cmocka_unit_test(test_multi_producer_keep_alive_races),
      cmocka_unit_test(test_throughput_informational),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
