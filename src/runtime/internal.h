/* Internal runtime entry points for the rest of bulwark (layers, clients).
 * Owned by the runtime; other components use only what is here. */
#ifndef BW_RUNTIME_INTERNAL_H
#define BW_RUNTIME_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "bulwark/runtime.h"

/* What the calling thread is doing for bulwark (owned by the runtime; here
 * so that bw__runtime_on_worker can be inline on the call path). */
typedef struct bw__ctx {
  struct bw__local *local;   /* counters and task cache for rt */
  bw_runtime_t *rt;          /* runtime whose worker / block_on thread this is */
  struct bw__worker *worker; /* multi-thread worker, NULL on a current-thread core */
  bw_task_t *task;           /* task being polled, or NULL */
  bw_timer_t *firing;        /* timer whose callback is running, or NULL */
  bool io_thread;            /* a reactor loop thread (blocking there is an error too) */
  /* Multi-thread workers only: run (and cleared) after each turn of the
   * worker's loop and before it exits. For per-thread caches that other
   * components keep across calls on a worker and must give back soon
   * (service.c's spare service reference). */
  void (*turn_end)(void);
} bw__ctx_t;
/* initial-exec: the library is built -fPIC, and the default (global-
 * dynamic) model would call __tls_get_addr on every access of this hot
 * variable; initial-exec is a single %fs-relative load. */
#define BW__TLS _Thread_local __attribute__((tls_model("initial-exec")))
extern BW__TLS bw__ctx_t bw__ctx;

/* True when the calling thread is a worker (or the block_on thread of a
 * current-thread runtime) of rt. */
static inline bool bw__runtime_on_worker(const bw_runtime_t *rt) { return rt && bw__ctx.rt == rt; }
/* True if the calling thread is a worker of any runtime. */
bool bw__on_any_worker(void);

/* Asymmetric fence (asym_fence.c): for a Dekker pair whose one side runs
 * on every call. Light side: store, bw__asym_fence_light(), load. Heavy
 * side: store, bw__asym_fence_heavy(), load. The light side is usable only
 * while bw__asym_fence_ready (relaxed; set by bw__asym_fence_init, which
 * bw_runtime_new calls, before any call exists); otherwise it needs a
 * seq_cst read-modify-write as usual, and the heavy side does nothing. */
extern atomic_bool bw__asym_fence_ready;
void bw__asym_fence_init(void);
void bw__asym_fence_heavy(void);
static inline void bw__asym_fence_light(void) { atomic_signal_fence(memory_order_seq_cst); }

/* Run fn(arg) soon on a worker of rt, no lock held. Cheap: on one of rt's
 * own workers an entry in that worker's ring (worker.c), elsewhere a pooled
 * task. Returns 0, or -1 if rt is shut down (fn will not run). Once
 * accepted, fn runs exactly once: on a worker, or, if the runtime shuts
 * down first, on the thread calling bw_runtime_shutdown (so completions are
 * never lost). */
int bw__runtime_defer(bw_runtime_t *rt, void (*fn)(void *arg), void *arg);

/* Calls (layers/service.c) on rt are being swept at shutdown: every call
 * running then is cancelled, so one that starts running afterwards (a new
 * start, a retry resuming) must end itself with BW_ERR_RUNTIME_SHUTDOWN,
 * or it could wait on a timer that shutdown discards and never complete.
 * Both sides are seq_cst: close, then the sweep reads each call's state;
 * a call's state becomes RUNNING, then it reads closing. */
void bw__runtime_close_calls(bw_runtime_t *rt);
/* Inline on the call path: a process-wide count of runtimes whose calls
 * are closing (until they are freed) gates the per-runtime flag, so the
 * usual answer is one load of a line nobody writes. seq_cst: a start that
 * reads the count after the close's increment also reads the flag, set
 * before it; one that reads it before is seen RUNNING by the sweep. */
extern atomic_uint bw__runtimes_closing_calls;
bool bw__runtime_calls_closing_slow(const bw_runtime_t *rt);
static inline bool bw__runtime_calls_closing(const bw_runtime_t *rt) {
  return atomic_load(&bw__runtimes_closing_calls) && bw__runtime_calls_closing_slow(rt);
}

/* bw__runtime_defer only if fn(arg) can go on the calling worker's own
 * ring: then it is true, and fn runs on this thread after the function
 * running now returns to the worker's loop (so what the caller holds stays
 * valid until then). False (nothing queued) on any other thread. */
bool bw__runtime_defer_here(bw_runtime_t *rt, void (*fn)(void *arg), void *arg);

/* Hold the paused clock: while any hold is outstanding, auto-advance does
 * not jump to the next timer (bw_runtime_advance still moves it). For real
 * work that finishes by itself soon, which the clock must not race: a
 * blocking job, a TCP connect on loopback. Never hold across a wait for a
 * peer (a reply, a handshake): that would freeze the clock. Each hold is
 * released once; no-op effect on a real clock. Any thread. */
void bw__runtime_clock_hold(bw_runtime_t *rt);
void bw__runtime_clock_release(bw_runtime_t *rt);

/* ---- Reactor ---------------------------------------------------------- */
/* An operation to run on the reactor's libuv loop thread. Intrusive: the
 * caller owns the memory and must keep it alive until fn has run. */
typedef struct bw__reactor_op bw__reactor_op_t;
struct bw__reactor_op {
  bw__reactor_op_t *next; /* private to the reactor */
  void (*fn)(bw__reactor_op_t *op, uv_loop_t *loop);
};
/* Queue op to run on the loop thread (coalesced uv_async_send; the loop
 * drains the whole queue per wake-up). Returns 0, or -1 after shutdown (op
 * will not run). From the loop thread itself, op runs on the next turn. */
int bw__reactor_submit(bw_runtime_t *rt, bw__reactor_op_t *op);
/* True on rt's reactor loop thread. */
bool bw__reactor_on_loop(const bw_runtime_t *rt);
/* The loop; use only on the loop thread. */
uv_loop_t *bw__reactor_loop(bw_runtime_t *rt);
/* Register a function the reactor calls on the loop thread when it shuts
 * down (before closing the loop), so clients can close their handles.
 * Returns 0 or -1. */
int bw__reactor_on_close(bw_runtime_t *rt, void (*fn)(void *arg, uv_loop_t *loop), void *arg);
/* Remove a hook added with bw__reactor_on_close (same fn and arg), so a
 * client freed before the runtime does not leave it registered. True if it
 * was removed (it will not run); false if not found: the reactor never
 * started, or shutdown already took the hooks (it runs or ran). Reliable
 * from an op on the loop thread: ops accepted before shutdown run before
 * the hooks are taken. Threads: any. */
bool bw__reactor_off_close(bw_runtime_t *rt, void (*fn)(void *arg, uv_loop_t *loop), void *arg);

#endif
