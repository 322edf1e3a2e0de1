/* Reactor (internal, standalone): one libuv loop, reached from other threads
 * through an op queue.
 *
 * Two modes:
 * - own_thread: bw__reactor_new() starts a thread "<prefix>-io" that runs
 *   the loop until shutdown (multi-thread runtime).
 * - caller-driven: no thread; the owner calls bw__reactor_turn() to run one
 *   loop iteration, blocking up to a timeout (current-thread runtime: the
 *   block_on thread parks in turn()). bw__reactor_wake() interrupts it.
 *   With `shared`, any thread may turn it, one at a time (the caller
 *   serialises them: multi-thread runtime, a parking worker), and a thread
 *   is "in the loop" only while inside turn() or stop().
 *
 * Ops (bw__reactor_op_t, declared in runtime/internal.h) are intrusive: the
 * submitter owns the memory and keeps it alive until op->fn has run.
 * Submission appends to a mutex-guarded FIFO and, if the queue was empty,
 * calls uv_async_send; the loop takes the WHOLE queue per wake-up and runs
 * the ops in submission order (from one thread, FIFO). Sends coalesce.
 *
 * Shutdown (bw__reactor_stop): further submissions return -1; ops
 * accepted before still run (every op whose submit returned 0 runs exactly
 * once); then the close hooks run (most recently added first); then every
 * handle still open is closed (uv_walk + uv_close), the loop runs until the
 * close callbacks are done and is closed; the thread (if any) is joined.
 *
 * Return codes: 0 or a negative errno / libuv code. */
#ifndef BW_RUNTIME_REACTOR_H
#define BW_RUNTIME_REACTOR_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "runtime/internal.h" /* bw__reactor_op_t */

typedef struct bw__reactor bw__reactor_t;

typedef struct bw__reactor_opts {
  bool own_thread;         /* true: start the "<prefix>-io" thread */
  bool shared;             /* caller-driven by any one thread at a time (above) */
  const char *name_prefix; /* NULL: "bw"; thread name cut to 15 chars */
  /* Optional, on the loop thread (own_thread mode only): when the thread
   * starts, before the loop runs / when it ends, after the loop is closed. */
  void (*on_thread_start)(void *hook_arg);
  void (*on_thread_stop)(void *hook_arg);
  void *hook_arg;
} bw__reactor_opts_t;

typedef struct bw__reactor_metrics {
  uint64_t submitted; /* ops accepted */
  uint64_t ops_run;   /* ops whose fn was called */
  uint64_t wakeups;   /* times the loop drained the queue (async callbacks) */
  uint64_t turns;     /* caller-driven mode: bw__reactor_turn() calls */
} bw__reactor_metrics_t;

/* Create the loop (and its thread if own_thread). opts may be NULL
 * (caller-driven, "bw").
 * Owns: *out is yours: bw__reactor_stop() then bw__reactor_free().
 * Threads: any. Returns 0, -EINVAL, -ENOMEM, or a libuv / pthread error. */
int bw__reactor_new(bw__reactor_t **out, const bw__reactor_opts_t *opts);

/* Queue op to run on the loop thread. From the loop thread itself the op
 * runs on the next drain (never inside this call).
 * Threads: any. Returns 0, or -1 after shutdown began (op will not run). */
int bw__reactor_post(bw__reactor_t *r, bw__reactor_op_t *op);

/* True on the loop thread: the reactor's own thread, or in caller-driven
 * mode the thread bound with bw__reactor_bind_thread() (turn() and
 * shutdown() bind the calling thread), or in shared mode a thread inside
 * turn() or stop(). */
bool bw__reactor_in_loop(const bw__reactor_t *r);

/* Caller-driven mode: make the calling thread the loop thread (the one
 * allowed to touch the uv loop and to call turn). Own-thread mode: no-op. */
void bw__reactor_bind_thread(bw__reactor_t *r);

/* The uv loop. Use it only on the loop thread (inside an op, a close hook,
 * a libuv callback, or in caller-driven mode on the bound thread). */
uv_loop_t *bw__reactor_uv_loop(bw__reactor_t *r);

/* Add a hook run once on the loop thread at shutdown, before the remaining
 * handles are force-closed, so a client can close its handles cleanly.
 * Hooks run most recently added first. Threads: any.
 * Returns 0, -ENOMEM, or -1 if shutdown has begun (hook not added). */
int bw__reactor_add_close_hook(bw__reactor_t *r, void (*fn)(void *arg, uv_loop_t *loop),
                               void *arg);
/* Remove a hook added with the same fn and arg (first match). True if found.
 * Threads: any, but not concurrently with shutdown running the hooks. */
bool bw__reactor_remove_close_hook(bw__reactor_t *r, void (*fn)(void *arg, uv_loop_t *loop),
                                   void *arg);

/* Caller-driven mode: run one loop iteration on the calling thread (binds
 * it): poll I/O, run expired uv timers, drain ops; block up to timeout_ms
 * for something to happen (0: do not block; -1: until an event or wake()).
 * Returns 0, -EINVAL in own_thread mode, -1 after shutdown. */
int bw__reactor_turn(bw__reactor_t *r, int64_t timeout_ms);

/* Make a blocked or the next turn() return soon (coalesced async send).
 * Threads: any. Own-thread mode: just wakes the loop (harmless). */
void bw__reactor_wake(bw__reactor_t *r);

/* Shut down as described at the top. own_thread: from any thread but the
 * loop thread (-EDEADLK), waits for the thread. Caller-driven: from a
 * thread that is not inside turn(); runs the final drain, hooks and closing
 * on the calling thread. Idempotent: returns 0 again. */
int bw__reactor_stop(bw__reactor_t *r);

/* Shut down if needed, then free everything. NULL-safe.
 * Threads: not from the loop thread of an own-thread reactor, nor from
 * inside turn() (then it does nothing: the reactor is leaked, not freed). */
void bw__reactor_free(bw__reactor_t *r);

/* Snapshot of counters (relaxed reads). Threads: any. */
void bw__reactor_metrics(const bw__reactor_t *r, bw__reactor_metrics_t *out);

#endif
