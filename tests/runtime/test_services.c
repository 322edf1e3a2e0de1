/* Background services and bw_spawn_blocking through the runtime: lazy
 * start, cap and queueing, keep-alive exit, abort before start, shutdown
 * with queued and running jobs, paused clock held while a job runs. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/runtime.h"
#include "bulwark/sync.h"
#include "runtime/blocking.h"

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- background services ---- */
static int order[8];
static atomic_int norder, drops, started_bg;

typedef struct svc {
  int id;
} svc_t;

static bw_poll_t svc_poll(bw_task_t *self, void *arg) {
  svc_t *s = arg;
  bw_cancel_token_t *tok = bw_background_token(self);
  assert_non_null(tok);
  if (bw_cancel_token_poll(tok, self) == BW_PENDING) {
    atomic_fetch_add(&started_bg, 1);
    return BW_PENDING;
  }
  order[atomic_fetch_add(&norder, 1)] = s->id;
  return BW_READY;
}

static void svc_drop(void *arg) {
  (void)arg;
  atomic_fetch_add(&drops, 1);
}

static bw_poll_t plain(bw_task_t *self, void *arg) {
  (void)arg;
  assert_null(bw_background_token(self)); /* not a service */
  return BW_READY;
}

static void test_background_reverse_order(void **state) {
  (void)state;
  for (int f = 0; f < 2; f++) {
    bw_runtime_opts_t o;
    bw_runtime_opts_init(&o);
    o.flavor = (bw_flavor_t)f;
    o.worker_threads = 2;
    bw_runtime_t *rt;
    assert_null(bw_runtime_new(&rt, &o));
    static svc_t s[3] = {{1}, {2}, {3}};
    atomic_store(&norder, 0);
    atomic_store(&drops, 0);
    atomic_store(&started_bg, 0);
    for (int i = 0; i < 3; i++) assert_null(bw_runtime_add_background(rt, "svc", svc_poll, &s[i], svc_drop));
    assert_null(bw_block_on(rt, plain, NULL, NULL));
    assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0));
    assert_int_equal(atomic_load(&norder), 3);
    assert_int_equal(order[0], 3);
    assert_int_equal(order[1], 2);
    assert_int_equal(order[2], 1);
    assert_int_equal(atomic_load(&drops), 3);
    bw_runtime_free(rt);
  }
}

/* ---- blocking jobs ---- */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool open;
  int started, finished;
} gate_t;

static gate_t gate;

static void gate_reset(void) {
  pthread_mutex_init(&gate.mu, NULL);
  pthread_cond_init(&gate.cv, NULL);
  gate.open = false;
  gate.started = gate.finished = 0;
}

static void *gated_job(void *arg) {
  pthread_mutex_lock(&gate.mu);
  gate.started++;
  pthread_cond_broadcast(&gate.cv);
  while (!gate.open) pthread_cond_wait(&gate.cv, &gate.mu);
  gate.finished++;
  pthread_cond_broadcast(&gate.cv);
  pthread_mutex_unlock(&gate.mu);
  return arg;
}

static void wait_started(int n) {
  pthread_mutex_lock(&gate.mu);
  while (gate.started < n) pthread_cond_wait(&gate.cv, &gate.mu);
  pthread_mutex_unlock(&gate.mu);
}

static void open_gate(void) {
  pthread_mutex_lock(&gate.mu);
  gate.open = true;
  pthread_cond_broadcast(&gate.cv);
  pthread_mutex_unlock(&gate.mu);
}

static bw_runtime_t *mk_blocking(unsigned cap, uint32_t keep_alive_ms) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  o.max_blocking_threads = cap;
  o.blocking_keep_alive_ms = keep_alive_ms;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

static void test_blocking_lazy_cap_queue_keepalive(void **state) {
  (void)state;
  gate_reset();
  bw_runtime_t *rt = mk_blocking(2, 20);
  bw_runtime_metrics_t m;
  assert_null(bw_runtime_metrics(rt, &m));
  assert_int_equal(m.blocking_threads_live, 0); /* lazy: none before the first job */
  bw_join_t *j[6];
  for (int i = 0; i < 6; i++) assert_null(bw_spawn_blocking(rt, gated_job, (void *)(uintptr_t)(i + 1), &j[i]));
  wait_started(2);
  assert_null(bw_runtime_metrics(rt, &m));
  assert_int_equal(m.blocking_threads_live, 2); /* the cap */
  assert_int_equal(m.blocking_jobs_queued, 4);  /* the rest queue */
  assert_int_equal(gate.started, 2);
  open_gate();
  for (int i = 0; i < 6; i++) {
    void *v = NULL;
    assert_null(bw_join_wait(j[i], &v));
    assert_int_equal((uintptr_t)v, (uintptr_t)(i + 1));
  }
  /* keep-alive 20 ms: idle threads exit (real time; generous window) */
  long limit_ms = (long)(5000 / (scale() < 1 ? scale() : 1));
  for (long waited = 0; waited < limit_ms; waited += 5) {
    assert_null(bw_runtime_metrics(rt, &m));
    if (m.blocking_threads_live == 0) break;
    sleep_ms(5);
  }
  assert_int_equal(m.blocking_threads_live, 0);
  bw_runtime_free(rt);
}

static atomic_int ran_second;
static void *mark_job(void *arg) {
  atomic_store(&ran_second, 1);
  return arg;
}

static void test_blocking_abort_before_start(void **state) {
  (void)state;
  gate_reset();
  atomic_store(&ran_second, 0);
  bw_runtime_t *rt = mk_blocking(1, 0);
  bw_join_t *a, *b;
  assert_null(bw_spawn_blocking(rt, gated_job, NULL, &a));
  wait_started(1);
  assert_null(bw_spawn_blocking(rt, mark_job, NULL, &b)); /* queued behind a */
  bw_join_abort(b);
  bw_error_t *e = bw_join_wait(b, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_CANCELLED);
  bw_error_unref(e);
  open_gate();
  assert_null(bw_join_wait(a, NULL));
  assert_int_equal(atomic_load(&ran_second), 0); /* never ran */
  bw_runtime_free(rt);
}

static void test_blocking_shutdown(void **state) {
  (void)state;
  gate_reset();
  atomic_store(&ran_second, 0);
  bw_runtime_t *rt = mk_blocking(1, 0);
  bw_join_t *a, *b;
  assert_null(bw_spawn_blocking(rt, gated_job, NULL, &a));
  wait_started(1);
  assert_null(bw_spawn_blocking(rt, mark_job, NULL, &b));
  /* a is running and will not finish within 30 ms: TIMEOUT, and b (queued)
   * is cancelled without running */
  bw_error_t *e = bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 30);
  assert_int_equal(bw_error_kind(e), BW_ERR_TIMEOUT);
  bw_error_unref(e);
  e = bw_join_wait(b, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  bw_error_unref(e);
  e = bw_join_wait(a, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  bw_error_unref(e);
  assert_int_equal(atomic_load(&ran_second), 0);
  open_gate();
  bw_runtime_free(rt);
  /* the abandoned job's thread finishes and frees everything */
  for (int i = 0; i < 5000 && bw__blocking_pools_alive() != 0; i++) sleep_ms(1);
  assert_int_equal(bw__blocking_pools_alive(), 0);
}

/* ---- the paused clock does not jump while a blocking job runs ---- */
typedef struct held {
  bw_runtime_t *rt;
  uint64_t t0, job_saw;
  int step;
  bw_join_t *j;
} held_t;

static held_t *held_ctx;

static void *clock_job(void *arg) {
  held_t *h = arg;
  gated_job(NULL);
  h->job_saw = bw_runtime_now_ns(h->rt);
  return NULL;
}

static bw_poll_t held_poll(bw_task_t *self, void *arg) {
  held_t *h = arg;
  if (h->step == 0) {
    h->t0 = bw_runtime_now_ns(h->rt);
    assert_null(bw_spawn_blocking(h->rt, clock_job, h, &h->j));
    h->step = 1;
  }
  if (bw_task_sleep_until(self, h->t0 + 3600ull * 1000000000ull) == BW_PENDING) return BW_PENDING;
  if (h->j) {
    bw_join_detach(h->j);
    h->j = NULL;
  }
  return BW_READY;
}

static void *opener(void *arg) {
  (void)arg;
  wait_started(1);
  sleep_ms(20); /* give the runtime every chance to (wrongly) advance */
  open_gate();
  return NULL;
}

static void test_paused_clock_held_by_blocking(void **state) {
  (void)state;
  gate_reset();
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  held_t h = {.rt = rt};
  held_ctx = &h;
  pthread_t th;
  pthread_create(&th, NULL, opener, NULL);
  assert_null(bw_block_on(rt, held_poll, &h, NULL));
  pthread_join(th, NULL);
  assert_int_equal(h.job_saw, h.t0); /* time stood still while the job ran */
  assert_true(bw_runtime_now_ns(rt) >= h.t0 + 3600ull * 1000000000ull);
  bw_runtime_free(rt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_background_reverse_order),
      cmocka_unit_test(test_blocking_lazy_cap_queue_keepalive),
      cmocka_unit_test(test_blocking_abort_before_start),
      cmocka_unit_test(test_blocking_shutdown),
      cmocka_unit_test(test_paused_clock_held_by_blocking),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
