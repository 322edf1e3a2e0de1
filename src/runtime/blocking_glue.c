/* bw_spawn_blocking: a task that waits for a job on the blocking pool
 * (runtime/blocking.h).
 *
 * The job is submitted at spawn time and the task starts idle (not
 * queued): the job's completion stores the result and wakes the task, whose
 * one poll hands the result to the joiner. So a job costs one hop to the
 * pool and one back. The job record is shared by the task and the pool
 * thread: a reference count of two, one per side.
 *
 * Aborting (or shutdown) before the job starts removes it from the pool
 * queue (bw__blocking_pool_cancel), so it never runs. A job in flight
 * inhibits the paused clock's auto-advance (the blocking work may arm a
 * timer when it returns). */
#include <errno.h>
#include <string.h>

#include "core/alloc.h"
#include "runtime/blocking.h"
#include "runtime/rt.h"

struct bw__blocking_glue {
  pthread_mutex_t mu;
  bw__blocking_pool_t *pool; /* created lazily under mu; read with acquire */
  _Atomic(bw__blocking_pool_t *) pool_pub;
};

typedef struct bjob {
  bw__blocking_job_t job;
  bw_blocking_fn fn;
  void *arg;
  void *result;
  bw_runtime_t *rt;
  bw_waker_t *waker; /* owned by the pool side until run/cancelled */
  atomic_int refs;
  atomic_int done; /* 0 running/queued, 1 ran, 2 cancelled; release/acquire pair */
  bool submitted;
} bjob_t;

static void bjob_unref(bjob_t *b) {
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) bw__free(b);
}

int bw__blocking_glue_init(bw_runtime_t *rt) {
  bw__blocking_glue_t *g = bw__calloc(1, sizeof *g);
  if (!g) return -1;
  pthread_mutex_init(&g->mu, NULL);
  rt->blocking = g;
  if (rt->opts.blocking_start == BW_START_EAGER) {
    bw__blocking_opts_t o = {.max_threads = rt->opts.max_blocking_threads,
                             .keep_alive_ms = rt->opts.blocking_keep_alive_ms,
                             .eager = true,
                             .name_prefix = rt->name_prefix};
    if (bw__blocking_pool_new(&g->pool, &o) != 0) return -1;
    atomic_store_explicit(&g->pool_pub, g->pool, memory_order_release);
  }
  return 0;
}

static bw__blocking_pool_t *get_pool(bw_runtime_t *rt) {
  bw__blocking_glue_t *g = rt->blocking;
  /* acquire pairs with the release store below */
  bw__blocking_pool_t *p = atomic_load_explicit(&g->pool_pub, memory_order_acquire);
  if (p) return p;
  pthread_mutex_lock(&g->mu);
  if (!g->pool) {
    bw__blocking_opts_t o = {.max_threads = rt->opts.max_blocking_threads,
                             .keep_alive_ms = rt->opts.blocking_keep_alive_ms,
                             .eager = false,
                             .name_prefix = rt->name_prefix};
    if (bw__blocking_pool_new(&g->pool, &o) != 0) g->pool = NULL;
    atomic_store_explicit(&g->pool_pub, g->pool, memory_order_release);
  }
  p = g->pool;
  pthread_mutex_unlock(&g->mu);
  return p;
}

static void job_run(void *arg) {
  bjob_t *b = arg;
  b->result = b->fn(b->arg);
  bw_runtime_t *rt = b->rt;
  bw_waker_t *w = b->waker;
  b->waker = NULL;
  atomic_store_explicit(&b->done, 1, memory_order_release); /* pairs with poll's acquire */
  /* before the wake: our waker keeps rt's memory alive even after
   * bw_runtime_free (task.c's orphaned pool) */
  bw__runtime_clock_release(rt);
  bw_waker_wake(w);
  bjob_unref(b);
}

static void job_cancelled(void *arg) {
  bjob_t *b = arg;
  bw_runtime_t *rt = b->rt;
  bw_waker_t *w = b->waker;
  b->waker = NULL;
  atomic_store_explicit(&b->done, 2, memory_order_release);
  bw__runtime_clock_release(rt);
  bw_waker_wake(w);
  bjob_unref(b);
}

static bw_poll_t blocking_poll(bw_task_t *self, void *arg) {
  bjob_t *b = arg;
  int d = atomic_load_explicit(&b->done, memory_order_acquire);
  if (d == 1) {
    bw_task_set_output(self, b->result, NULL, NULL);
    return BW_READY;
  }
  if (d == 2) {
    bw_task_set_output(self, NULL, NULL,
                       bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0,
                                    "bw_spawn_blocking: the job was cancelled by shutdown"));
    return BW_READY;
  }
  return BW_PENDING;
}

static void blocking_drop(void *arg) {
  bjob_t *b = arg;
  if (!b->submitted) bjob_unref(b); /* the pool side never got it */
  bjob_unref(b);
}

/* Called by task.c when a blocking task is cancelled (abort, shutdown). */
void bw__blocking_task_cancel(bw_task_t *t);
void bw__blocking_task_cancel(bw_task_t *t) {
  bjob_t *b = t->arg;
  bw__blocking_pool_t *p = atomic_load_explicit(&t->rt->blocking->pool_pub, memory_order_acquire);
  if (!b->submitted || !p) return;
  if (bw__blocking_pool_cancel(p, &b->job)) {
    bw_waker_t *w = b->waker;
    b->waker = NULL;
    bw_waker_drop(w);
    bw__runtime_clock_release(t->rt);
    bjob_unref(b);
  }
}

bw_error_t *bw_spawn_blocking(bw_runtime_t *rt, bw_blocking_fn fn, void *arg, bw_join_t **join) {
  if (join) *join = NULL;
  if (!fn) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_spawn_blocking: NULL function");
  bw_error_t *err = bw__rt_check(rt, "bw_spawn_blocking");
  if (err) return err;
  bw__blocking_pool_t *p = get_pool(rt);
  if (!p)
    return bw_error_new(BW_ERR_IO, 0, "bw_spawn_blocking: could not create the blocking pool");
  bjob_t *b = bw__calloc(1, sizeof *b);
  if (!b) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  b->fn = fn;
  b->arg = arg;
  b->rt = rt;
  atomic_init(&b->refs, 2);
  b->job.run = job_run;
  b->job.cancelled = job_cancelled;
  b->job.arg = b;
  bw_task_t *t = bw__spawn_task(rt, blocking_poll, b, blocking_drop, "blocking",
                                BW__TASK_BLOCKING, join != NULL, false, &err);
  if (!t) {
    bw__free(b);
    return err;
  }
  b->waker = bw_task_waker(t);
  b->submitted = true;
  bw__runtime_clock_hold(rt);
  int rc = bw__blocking_pool_submit(p, &b->job);
  if (rc != 0) {
    /* complete the task at once with the error; the pool never saw it */
    b->submitted = false;
    bw__runtime_clock_release(rt);
    bw_waker_t *w = b->waker;
    b->waker = NULL;
    atomic_store_explicit(&b->done, 2, memory_order_release);
    bw_waker_wake(w);
  }
  if (join) *join = (bw_join_t *)t;
  return NULL;
}

void bw__blocking_shutdown(bw_runtime_t *rt, uint64_t timeout_ms, bool *timed_out) {
  bw__blocking_glue_t *g = rt->blocking;
  *timed_out = false;
  if (!g) return;
  bw__blocking_pool_t *p = atomic_load_explicit(&g->pool_pub, memory_order_acquire);
  if (!p) return;
  int rc = bw__blocking_pool_shutdown(p, timeout_ms ? timeout_ms : BW__BLOCKING_FOREVER);
  if (rc == -ETIMEDOUT) *timed_out = true;
}

void bw__blocking_free(bw_runtime_t *rt) {
  bw__blocking_glue_t *g = rt->blocking;
  if (!g) return;
  bw__blocking_pool_free(g->pool);
  pthread_mutex_destroy(&g->mu);
  bw__free(g);
  rt->blocking = NULL;
}

void bw__blocking_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m) {
  bw__blocking_glue_t *g = rt->blocking;
  if (!g) return;
  bw__blocking_pool_t *p = atomic_load_explicit(&g->pool_pub, memory_order_acquire);
  if (!p) return;
  bw__blocking_metrics_t bm;
  bw__blocking_pool_metrics(p, &bm);
  m->blocking_threads_live = bm.live;
  m->blocking_threads_idle = bm.idle;
  m->blocking_jobs_queued = bm.queued;
}
