/* Blocking pool (internal, standalone): threads for work that blocks.
 *
 * - Lazy (default): no thread exists before the first job; a job starts a
 *   new thread only when no thread is idle and fewer than max_threads live.
 *   Otherwise it waits in a FIFO queue (no limit on queued jobs).
 * - An idle lazy thread exits after keep_alive_ms without work.
 * - Eager: all max_threads start in bw__blocking_pool_new() and never exit
 *   on keep-alive (they are the pool's permanent threads); they exit only at
 *   shutdown.
 * - Threads are named "<prefix>-b<N>" (N counts threads started by this
 *   pool, from 0; the name is cut to 15 characters).
 * - Jobs are intrusive: the pool never allocates per job. It allocates one
 *   small record per thread.
 *
 * Return codes: 0 or a negative errno (-EINVAL, -ENOMEM, -EAGAIN from
 * pthread_create, -ETIMEDOUT, -ESHUTDOWN). */
#ifndef BW_RUNTIME_BLOCKING_H
#define BW_RUNTIME_BLOCKING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bw__blocking_pool bw__blocking_pool_t;

typedef struct bw__blocking_job bw__blocking_job_t;
/* Fill run, cancelled (may be NULL) and arg; the rest is private. The memory
 * must stay valid until run or cancelled has been called for it, or until
 * bw__blocking_pool_cancel() returned true. Exactly one of these happens to
 * every submitted job: run(arg) on a pool thread; cancelled(arg) at
 * shutdown (on the thread calling shutdown) if it never started; or a
 * successful cancel (then neither callback is called). The pool does not
 * touch the job once run/cancelled is entered, so they may free it. */
struct bw__blocking_job {
  void (*run)(void *arg);
  void (*cancelled)(void *arg);
  void *arg;
  bw__blocking_job_t *next, *prev; /* private */
  int state;                       /* private */
};

/* Forever, for shutdown/wait timeouts. */
#define BW__BLOCKING_FOREVER UINT64_MAX

typedef struct bw__blocking_opts {
  unsigned max_threads;      /* >= 1 (the runtime passes 512 by default) */
  uint64_t keep_alive_ms;    /* idle lazy thread exits after this; 0 = at once */
  bool eager;                /* start all max_threads now, never exit on idle */
  const char *name_prefix;   /* NULL: "bw" */
  /* Optional, run on each pool thread when it starts / right before it
   * exits (e.g. to set thread-locals for the runtime). They and hook_arg
   * must stay valid until every pool thread has exited: after a shutdown
   * that timed out, that is when the abandoned jobs return. */
  void (*on_thread_start)(void *hook_arg);
  void (*on_thread_stop)(void *hook_arg);
  void *hook_arg;
} bw__blocking_opts_t;

typedef struct bw__blocking_metrics {
  uint64_t live;            /* threads that exist (idle + running a job + starting) */
  uint64_t idle;            /* threads waiting for work */
  uint64_t queued;          /* jobs waiting for a thread */
  uint64_t running;         /* jobs running now */
  uint64_t threads_started; /* total over the pool's life */
  uint64_t threads_exited;  /* total (keep-alive or shutdown) */
  uint64_t jobs_run;        /* jobs whose run() returned */
  uint64_t jobs_cancelled;  /* cancelled by cancel() or shutdown */
} bw__blocking_metrics_t;

/* Create a pool. Eager: starts max_threads threads, returns an error (and
 * creates nothing) if one cannot be started.
 * Owns: *out is yours; free with bw__blocking_pool_free().
 * Threads: any. Returns 0, -EINVAL, -ENOMEM or -errno of pthread_create. */
int bw__blocking_pool_new(bw__blocking_pool_t **out, const bw__blocking_opts_t *opts);

/* Queue job; it runs on a pool thread (never inside this call). Starts a
 * thread if none is idle and fewer than max_threads live.
 * Threads: any, also from inside a job.
 * Returns 0 (job accepted), -ESHUTDOWN after shutdown began (job untouched,
 * no callback), or -errno if no thread lives and none could be started
 * (job untouched). */
int bw__blocking_pool_submit(bw__blocking_pool_t *p, bw__blocking_job_t *job);

/* Remove a job that has not started. True: it was queued and now will never
 * run (no callback is called; the memory is yours again). False: it already
 * started, finished, or was cancelled by shutdown (its callback has run or
 * is running). Threads: any. */
bool bw__blocking_pool_cancel(bw__blocking_pool_t *p, bw__blocking_job_t *job);

/* Stop: new submissions fail with -ESHUTDOWN; queued jobs get `cancelled`
 * (on this thread, in queue order, no lock held); then waits up to
 * timeout_ms (BW__BLOCKING_FOREVER: no limit) for running jobs to finish and
 * joins every thread that has exited. Returns 0, or -ETIMEDOUT if jobs were
 * still running (their threads finish in the background; free() does not
 * wait for them). A second call waits again (e.g. with a longer timeout).
 * Threads: not from a pool thread (-EDEADLK). */
int bw__blocking_pool_shutdown(bw__blocking_pool_t *p, uint64_t timeout_ms);

/* Shut down (no time limit... unless shutdown already timed out, in which
 * case threads still running jobs are detached and release the pool's
 * memory themselves when their job returns) and free. NULL-safe.
 * Threads: not from a pool thread. */
void bw__blocking_pool_free(bw__blocking_pool_t *p);

/* Snapshot of the counters (taken under the pool lock: consistent). */
void bw__blocking_pool_metrics(bw__blocking_pool_t *p, bw__blocking_metrics_t *out);

/* Wait until at most max_live threads are alive, up to timeout_ms (real
 * time). Returns 0 or -ETIMEDOUT. For tests (keep-alive) and shutdown code;
 * no polling: exiting threads signal a condition. */
int bw__blocking_pool_wait_live(bw__blocking_pool_t *p, uint64_t max_live, uint64_t timeout_ms);

/* True on a thread of any blocking pool. */
bool bw__blocking_on_pool_thread(void);

/* Pool objects (including detached remains of a timed-out shutdown) that
 * still exist in the process. For leak tests. */
uint64_t bw__blocking_pools_alive(void);

#endif
