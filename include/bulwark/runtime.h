/* bulwark runtime: work-stealing task scheduler, timers, blocking pool and
 * an I/O reactor (one libuv loop thread).
 *
 * Tasks are poll functions (see "Tasks" below): a task is polled on a worker
 * until it returns BW_READY; while it waits it returns BW_PENDING after
 * arranging for a waker to be woken. Everything a later layer needs
 * (one-shot channels, notify, cancellation tokens, sleep) is built on that.
 *
 * Threads: unless a function says otherwise it may be called from any
 * thread, including worker threads of this or another runtime. */
#ifndef BULWARK_RUNTIME_H
#define BULWARK_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bw_runtime bw_runtime_t;
typedef struct bw_task bw_task_t;   /* a task, as seen from its own poll function */
typedef struct bw_join bw_join_t;   /* handle to a spawned task's result */
typedef struct bw_task bw_waker_t;  /* a counted reference that can wake a task */

/* ---- Configuration -------------------------------------------------- */

typedef enum bw_flavor {
  BW_FLAVOR_MULTI_THREAD = 0,  /* default: `worker_threads` workers + reactor thread */
  BW_FLAVOR_CURRENT_THREAD = 1 /* everything runs on the thread inside bw_block_on() */
} bw_flavor_t;

typedef enum bw_clock_mode {
  BW_CLOCK_REAL = 0,  /* default: CLOCK_MONOTONIC */
  BW_CLOCK_PAUSED = 1 /* time stands still until every task is idle, then jumps
                         to the next timer; bw_runtime_advance() moves it too.
                         "Idle" means no runnable task and no blocking job in
                         flight; a task waiting for real I/O counts as idle,
                         so pair the paused clock with simulated services. */
} bw_clock_mode_t;

typedef enum bw_start {
  BW_START_DEFAULT = 0, /* workers: eager; blocking threads: lazy */
  BW_START_LAZY = 1,    /* no thread exists before the first work item */
  BW_START_EAGER = 2    /* all threads running when bw_runtime_new() returns */
} bw_start_t;

typedef struct bw_runtime_opts {
  bw_flavor_t flavor;              /* default BW_FLAVOR_MULTI_THREAD */
  unsigned worker_threads;         /* 0: number of CPUs */
  unsigned max_blocking_threads;   /* 0: 512 */
  uint32_t blocking_keep_alive_ms; /* 0: 10000 (idle blocking thread exits after) */
  bw_start_t worker_start;         /* default eager */
  bw_start_t blocking_start;       /* default lazy; eager starts max_blocking_threads */
  const char *thread_name_prefix;  /* 0: "bw"; threads named "<prefix>-w0", "-b3", "-io" (io_thread) */
  uint32_t global_queue_interval;  /* 0: 31 ticks between global-queue checks */
  uint32_t event_interval;         /* 0: 61 ticks between timer/reactor checks */
  bw_clock_mode_t clock;           /* default BW_CLOCK_REAL */
  uint32_t local_queue_capacity;   /* 0: 256 (power of two; tests use 4) */
  /* Multi-thread flavor, where I/O (the HTTP and Redis clients, config
   * watching) runs. false (default): on the workers; a worker with
   * nothing to run waits in the I/O poll, and replies complete calls
   * without a thread hop. true: on a dedicated "<prefix>-io" thread, so
   * I/O keeps flowing even while long-running tasks occupy every worker. */
  bool io_thread;
} bw_runtime_opts_t;

/* Fill *opts with the defaults above (all zero). */
void bw_runtime_opts_init(bw_runtime_opts_t *opts);

/* Create a runtime. opts may be NULL (defaults).
 * Owns: *out is yours; free with bw_runtime_free().
 * Errors: BW_ERR_INVALID_ARGUMENT (NULL out, out-of-range option),
 *         BW_ERR_FORKED, BW_ERR_OUT_OF_MEMORY, BW_ERR_IO (thread creation). */
bw_error_t *bw_runtime_new(bw_runtime_t **out, const bw_runtime_opts_t *opts);

typedef enum bw_shutdown_mode {
  BW_SHUTDOWN_CANCEL = 0, /* drop queued and pending tasks (joiners see
                             BW_ERR_RUNTIME_SHUTDOWN), fire no more timers */
  BW_SHUTDOWN_DRAIN = 1   /* stop accepting new spawns from outside, run until
                             every task finished or timeout, then cancel */
} bw_shutdown_mode_t;

/* Stop the runtime: background services are cancelled and awaited in
 * reverse registration order, then tasks are drained or cancelled, blocking
 * jobs that have not started are cancelled, running ones are waited for up to
 * timeout_ms (0: wait forever), and every thread is joined. Afterwards every
 * operation on rt fails with BW_ERR_RUNTIME_SHUTDOWN (except free).
 * Threads: not from a worker of rt (BW_ERR_NESTED_RUNTIME).
 * Errors: BW_ERR_TIMEOUT if work was still running at the timeout (it was
 *         abandoned and cancelled), BW_ERR_RUNTIME_SHUTDOWN if already shut down. */
bw_error_t *bw_runtime_shutdown(bw_runtime_t *rt, bw_shutdown_mode_t mode, uint64_t timeout_ms);

/* Shut down (cancel mode, no timeout) if not already, then free every byte.
 * NULL does nothing. Threads: not from a worker of rt (then it does nothing).
 * Join handles and wakers still held may outlive the runtime: they keep
 * working (joins report BW_ERR_RUNTIME_SHUTDOWN) and the last one released
 * frees the remaining memory. In a fork() child it deliberately does
 * nothing (the threads are gone and locks may be held): the memory leaks. */
void bw_runtime_free(bw_runtime_t *rt);

/* The runtime whose worker (or block_on thread) is running the caller, or NULL. */
bw_runtime_t *bw_runtime_current(void);

/* ---- Tasks ----------------------------------------------------------- */

typedef enum bw_poll { BW_PENDING = 0, BW_READY = 1 } bw_poll_t;

/* A task's poll function. Called on a worker, never twice at once for one
 * task. Return BW_READY when done (set the result first with
 * bw_task_set_output), or BW_PENDING after making sure something will wake
 * the task (a waker given to a primitive, bw_task_yield, a sleep...). */
typedef bw_poll_t (*bw_task_fn)(bw_task_t *self, void *arg);

typedef struct bw_task_spec {
  bw_task_fn poll;
  void *arg;
  /* Called exactly once when the task will never be polled again (finished,
   * aborted before or between polls, or dropped at shutdown), on a worker or
   * the thread shutting the runtime down. Frees what `arg` owns. May be NULL. */
  void (*drop)(void *arg);
  const char *name; /* static string for debugging, may be NULL */
} bw_task_spec_t;

/* Spawn a task. join may be NULL (detached). From a worker of rt the task
 * goes to that worker's LIFO slot (the task there moves to the local
 * queue), otherwise to the global queue. While the runtime drains for
 * shutdown only its own tasks may spawn. No malloc in steady state. Owns: *join is yours: consume it with bw_join_poll/bw_join_wait
 * until ready, or bw_join_detach.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_RUNTIME_SHUTDOWN, BW_ERR_FORKED,
 *         BW_ERR_OUT_OF_MEMORY. On error nothing was spawned and `drop` was
 *         NOT called (the caller still owns arg). */
bw_error_t *bw_spawn(bw_runtime_t *rt, bw_task_fn poll, void *arg, bw_join_t **join);
bw_error_t *bw_spawn_ex(bw_runtime_t *rt, const bw_task_spec_t *spec, bw_join_t **join);

/* From inside poll: the task's result, handed to the joiner. value_free (may
 * be NULL) frees value if nobody takes it. err is consumed. */
void bw_task_set_output(bw_task_t *self, void *value, void (*value_free)(void *),
                        bw_error_t *err);

/* From inside poll: a new waker for this task (one reference). */
bw_waker_t *bw_task_waker(bw_task_t *self);
/* Wake the task and drop the reference. Any thread. A wake while the task is
 * running makes it run once more afterwards, never concurrently. */
void bw_waker_wake(bw_waker_t *w);
void bw_waker_wake_by_ref(bw_waker_t *w); /* wake, keep the reference */
bw_waker_t *bw_waker_clone(bw_waker_t *w);
void bw_waker_drop(bw_waker_t *w);        /* NULL-safe */
bool bw_waker_will_wake(const bw_waker_t *a, const bw_waker_t *b); /* same task? */

/* From inside poll: `return bw_task_yield(self);` reschedules the task behind
 * the others (global queue or back of the local queue, never the LIFO slot). */
bw_poll_t bw_task_yield(bw_task_t *self);

/* The runtime and id of a task. */
bw_runtime_t *bw_task_runtime(const bw_task_t *self);
uint64_t bw_task_id(const bw_task_t *self);
/* The task currently being polled on this thread, or NULL. */
bw_task_t *bw_task_current(void);

/* From inside poll: sleep until the runtime clock reaches deadline_ns
 * (bw_runtime_now_ns scale). READY once it has; otherwise arms the task's own
 * timer (taken from the task pool on the first sleep, no malloc in steady
 * state) and returns PENDING. Call it again on every poll
 * until READY; a task has one built-in sleep timer. */
bw_poll_t bw_task_sleep_until(bw_task_t *self, uint64_t deadline_ns);

/* ---- Join handles ----------------------------------------------------- */

/* From a task: READY when the joined task finished; then *value and *err
 * (either may be NULL to ignore) receive its output (aborted tasks give
 * BW_ERR_CANCELLED, shutdown gives BW_ERR_RUNTIME_SHUTDOWN) and the join
 * handle is consumed. PENDING registers self to be woken. */
bw_poll_t bw_join_poll(bw_join_t *join, bw_task_t *self, void **value, bw_error_t **err);

/* From a thread that is not a worker of any runtime: block until the task
 * finishes, consume the handle, return its error (NULL on success) and value.
 * Errors: the task's error; BW_ERR_NESTED_RUNTIME if called from a worker
 * (the handle is NOT consumed then). */
bw_error_t *bw_join_wait(bw_join_t *join, void **value);

/* Stop the task: if it has not started it never runs; if it is pending it
 * is not polled again (drop runs). Does not consume the handle. */
void bw_join_abort(bw_join_t *join);
/* Let the task run on; the result is dropped. Consumes the handle. NULL-safe. */
void bw_join_detach(bw_join_t *join);
bool bw_join_is_finished(const bw_join_t *join);

/* ---- block_on -------------------------------------------------------- */

/* Run a task to completion and return its result. Multi-thread flavor: the
 * task runs on the workers and the caller blocks. Current-thread flavor: the
 * caller's thread runs the scheduler, timers and reactor until the task is
 * done; tasks spawned on a current-thread runtime run only while some thread
 * is inside bw_block_on. Concurrent callers on one current-thread runtime
 * take turns driving it (a waiting caller's task may run on the driver).
 * Errors: the task's error; BW_ERR_NESTED_RUNTIME when called from a worker
 * of any runtime (use bw_spawn + bw_join_poll there instead);
 * BW_ERR_RUNTIME_SHUTDOWN, BW_ERR_FORKED, BW_ERR_INVALID_ARGUMENT. */
bw_error_t *bw_block_on(bw_runtime_t *rt, bw_task_fn poll, void *arg, void **value);

/* ---- Blocking pool ---------------------------------------------------- */

typedef void *(*bw_blocking_fn)(void *arg);

/* Run fn(arg) on the blocking pool; its return value is the join value.
 * Threads start lazily up to max_blocking_threads; jobs queue when all are
 * busy. A job cancelled (abort, shutdown) before it starts never runs.
 * Errors: as bw_spawn. */
bw_error_t *bw_spawn_blocking(bw_runtime_t *rt, bw_blocking_fn fn, void *arg, bw_join_t **join);

/* ---- Time -------------------------------------------------------------- */

/* The runtime's clock in ns (monotonic; the paused clock starts at 0 when the
 * runtime is created... plus 1 s, so 0 never means "now"). A real clock is
 * CLOCK_MONOTONIC's scale: read each time, or, on x86-64 where the kernel
 * keeps time with an invariant TSC, read once a millisecond per thread and
 * extrapolated with the TSC in between (within ~1 us of CLOCK_MONOTONIC,
 * never going back on one thread). */
uint64_t bw_runtime_now_ns(const bw_runtime_t *rt);
/* Paused clock only: move time forward by ms and fire what is due.
 * Errors: BW_ERR_NOT_ALLOWED on a real clock. */
bw_error_t *bw_runtime_advance(bw_runtime_t *rt, uint64_t ms);
bool bw_runtime_clock_paused(const bw_runtime_t *rt);

/* Timer callbacks for layers. Embed nothing: a bw_timer_t is allocated once
 * and may be re-armed many times (no allocation per arm).
 * cb runs on a worker of rt, no bulwark lock held. */
typedef struct bw_timer bw_timer_t;
typedef void (*bw_timer_fn)(bw_timer_t *t, void *arg);
bw_error_t *bw_timer_new(bw_runtime_t *rt, bw_timer_fn cb, void *arg, bw_timer_t **out);
/* Arm (or re-arm) to fire at deadline_ns. O(1), no syscall, no cross-thread
 * wake-up when called from a worker (the timer goes to that worker's wheel;
 * from other threads to a wheel picked round-robin, waking its worker only if
 * the deadline is earlier than it sleeps). Fires no earlier than deadline_ns
 * (rounded up to the 1 ms tick). Timers still armed at shutdown never fire.
 * Errors: BW_ERR_RUNTIME_SHUTDOWN, BW_ERR_FORKED. */
bw_error_t *bw_timer_arm(bw_timer_t *t, uint64_t deadline_ns);
/* Cancel; true if it was armed and will now not fire. O(1). */
bool bw_timer_cancel(bw_timer_t *t);
/* Cancel and free; safe from inside its own callback, and from another
 * thread while the callback runs (waits for it to return). Also after the
 * runtime is freed. NULL-safe. */
void bw_timer_free(bw_timer_t *t);

/* ---- Background services ------------------------------------------------ */

/* A long-running task (health check, keep-alive) owned by the runtime: it is
 * spawned now (or when the runtime starts), and at shutdown it is cancelled
 * through `token` (see sync.h; bw_cancel_token_t) and awaited, services in
 * reverse order of registration. The poll function reads its token with
 * bw_service_token(self). name is copied. */
struct bw_cancel_token;
bw_error_t *bw_runtime_add_background(bw_runtime_t *rt, const char *name, bw_task_fn poll,
                                      void *arg, void (*drop)(void *arg));
/* Inside a background service's poll: its cancellation token (borrowed). */
struct bw_cancel_token *bw_background_token(bw_task_t *self);

/* ---- Metrics -------------------------------------------------------------- */

typedef struct bw_runtime_metrics {
  unsigned workers;
  /* Tasks, and the runtime's internal deferred functions (a call's
   * completion handed to a worker counts as one spawned and completed). */
  uint64_t tasks_spawned, tasks_completed, tasks_alive;
  uint64_t steals, steal_operations, parks, unparks, polls;
  uint64_t local_queue_depth;   /* sum over workers */
  uint64_t global_queue_depth;
  uint64_t blocking_threads_live, blocking_threads_idle, blocking_jobs_queued;
  uint64_t timers_armed;
} bw_runtime_metrics_t;

/* A snapshot; fields are read with relaxed ordering, so they are each exact
 * but not mutually consistent while the runtime runs. */
bw_error_t *bw_runtime_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *out);
/* Per worker: steals made by worker i, its local queue depth, polls. */
bw_error_t *bw_runtime_worker_metrics(const bw_runtime_t *rt, unsigned i, uint64_t *steals,
                                      uint64_t *local_depth, uint64_t *polls);

#ifdef __cplusplus
}
#endif
#endif
