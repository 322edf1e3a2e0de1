/* The runtime object and the per-thread context, shared by the files of
 * src/runtime/ that make up the scheduler (not by other components: they
 * use runtime/internal.h). */
#ifndef BW_RUNTIME_RT_H
#define BW_RUNTIME_RT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bulwark/runtime.h"
#include "runtime/internal.h"
#include "runtime/task.h"

#define BW__RT_MAGIC 0x62777274u

enum { BW__RT_RUNNING = 0, BW__RT_DRAINING = 1, BW__RT_SHUTDOWN = 2 };

typedef struct bw__worker bw__worker_t;
typedef struct bw__sched bw__sched_t;
typedef struct bw__ct_core bw__ct_core_t;
typedef struct bw__background bw__background_t;
typedef struct bw__blocking_glue bw__blocking_glue_t;
struct bw__reactor;

/* Per-thread state of a worker or current-thread core: written only by
 * its own thread (counters are relaxed atomics so metrics can read them). */
typedef struct bw__local {
  bw__task_cache_t cache;
  atomic_uint_fast64_t spawned, completed, polls, steals, steal_ops, parks, unparks;
} bw__local_t;
/* Single-writer increment: no locked instruction. */
#define BW__INC(c) \
  atomic_store_explicit(&(c), atomic_load_explicit(&(c), memory_order_relaxed) + 1, \
                        memory_order_relaxed)
#define BW__LOAD(c) atomic_load_explicit(&(c), memory_order_relaxed)

/* bw__ctx, what the calling thread is doing for bulwark: runtime/internal.h */

/* A wheel (timers of one worker, or of the current-thread core). */
struct bw__wheel {
  pthread_mutex_t mu;
  bw__timer_wheel_t tw;
  uint64_t parked_until_ms; /* guarded by mu: owner sleeps until then (UINT64_MAX: no limit) */
  unsigned owner;      /* worker index */
  size_t armed;
};

struct bw_runtime {
  uint32_t magic;
  bw_runtime_opts_t opts;
  unsigned nworkers;
  unsigned fork_gen;
  _Atomic int state; /* BW__RT_*; release on change, acquire on read */
  atomic_bool calls_closing; /* bw__runtime_close_calls (seq_cst) */
  char name_prefix[16];

  /* clock */
  bool paused;
  _Atomic uint64_t paused_now_ns; /* paused clock; relaxed (timer locks order firing) */
  uint64_t start_ns;              /* real clock at creation */
  atomic_uint inhibit;            /* blocking jobs in flight: no auto-advance */
  pthread_mutex_t clock_mu;       /* paused clock: serialises firing and auto-advance (recursive) */

  /* tasks */
  bw__task_pool_t pool;
  atomic_uint_fast64_t next_id;
  atomic_uint_fast64_t spawned_remote, completed_remote; /* from non-worker threads */

  /* scheduler (multi-thread) */
  bw__sched_t *sched;
  /* current-thread core */
  bw__ct_core_t *ct;

  /* timers: one wheel per worker (multi-thread) or one (current-thread) */
  bw__wheel_t *wheels;
  unsigned nwheels;
  atomic_uint remote_wheel_rr;

  /* background services */
  pthread_mutex_t bg_mu;
  bw__background_t *bg_head;

  /* blocking pool and reactor glue */
  bw__blocking_glue_t *blocking;
  pthread_mutex_t reactor_mu;
  _Atomic(struct bw__reactor *) reactor; /* started lazily; release/acquire publish */

  pthread_mutex_t shutdown_mu;
  bool shut_down; /* guarded by shutdown_mu */
};

/* Guards */
unsigned bw__fork_generation(void);
static inline bool bw__rt_forked(const bw_runtime_t *rt) {
  return rt->fork_gen != bw__fork_generation();
}
/* NULL if rt is usable for new work, else an error to return. */
bw_error_t *bw__rt_check(const bw_runtime_t *rt, const char *what);

/* clock.c: CLOCK_MONOTONIC, or (x86-64 with the kernel on the TSC, after
 * ~20 ms of calibration) a TSC extrapolation from it, see clock.c. */
uint64_t bw__mono_ns(void);
/* True once bw__mono_ns extrapolates with the TSC (for tests). */
bool bw__mono_uses_tsc(void);
uint64_t bw__rt_now_ms(const bw_runtime_t *rt);

/* timer.c */
int bw__wheels_init(bw_runtime_t *rt, unsigned n);
void bw__wheels_destroy(bw_runtime_t *rt);
/* Fire every due timer of wheel i (callbacks on the calling thread). Returns
 * how many fired. */
size_t bw__wheel_fire(bw_runtime_t *rt, unsigned i);
/* Earliest deadline (ms tick) of wheel i, UINT64_MAX if none. */
uint64_t bw__wheel_next_ms(bw_runtime_t *rt, unsigned i);
/* Disarm every timer (shutdown). */
void bw__wheels_clear(bw_runtime_t *rt);
/* Cancel and wait for a running callback (tasks' sleep timers). Returns
 * false if this thread's own firing loop still holds t (then t must not be
 * reused yet); true if nothing refers to t any more. */
bool bw__timer_cancel_sync(bw_timer_t *t);
void bw__timer_init_embedded(bw_runtime_t *rt, bw_timer_t *t, bw_timer_fn cb, void *arg);
/* Paused clock: under clock_mu, if idle(rt) (NULL: assume idle) and no
 * blocking job is in flight, jump to the earliest timer and fire every
 * wheel. Returns true if there was a timer to go to. */
bool bw__clock_try_advance(bw_runtime_t *rt, bool (*idle)(bw_runtime_t *rt));

/* scheduler entry points (worker.c for multi-thread) */
int bw__sched_new(bw_runtime_t *rt);
int bw__sched_start(bw_runtime_t *rt); /* lazy start: idempotent */
void bw__sched_stop(bw_runtime_t *rt);  /* stop and join workers */
void bw__sched_drain(bw_runtime_t *rt); /* drop queued tasks (after stop) */
void bw__sched_free(bw_runtime_t *rt);
void bw__sched_push_remote(bw_runtime_t *rt, bw_task_t *t);
void bw__sched_push_local(bw__worker_t *w, bw_task_t *t, bool yield);
/* Wake the owner of wheel i (a timer became due earlier than it sleeps). */
void bw__sched_kick(bw_runtime_t *rt, unsigned i);
/* Unpark every started worker once (spurious for the idle ones: they park
 * again), e.g. so that one of them parks in a reactor started meanwhile. */
void bw__sched_wake_all(bw_runtime_t *rt);
void bw__sched_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m);
int bw__sched_worker_metrics(const bw_runtime_t *rt, unsigned i, uint64_t *steals,
                             uint64_t *depth, uint64_t *polls);
unsigned bw__worker_index(const bw__worker_t *w);
/* Queue fn(arg) on worker w's deferred ring (w must be the calling
 * thread's own worker); false if the ring is full. worker.c */
bool bw__worker_defer(bw__worker_t *w, void (*fn)(void *arg), void *arg);
/* Count a spawned / completed task (metrics). */
void bw__sched_count_complete(bw_runtime_t *rt);
void bw__sched_count_spawn(bw_runtime_t *rt);

/* current_thread.c */
int bw__ct_new(bw_runtime_t *rt);
void bw__ct_free(bw_runtime_t *rt);
void bw__ct_push(bw_runtime_t *rt, bw_task_t *t, bool yield);
void bw__ct_drain(bw_runtime_t *rt);
void bw__ct_kick(bw_runtime_t *rt);
bw_error_t *bw__ct_block_on(bw_runtime_t *rt, bw_task_t *t, void **value);
bool bw__ct_acquire_core(bw_runtime_t *rt, bw_task_t *t);
void bw__ct_release_core(bw_runtime_t *rt);
void bw__ct_drive_drain(bw_runtime_t *rt, uint64_t deadline_ns);
void bw__ct_drive_until(bw_runtime_t *rt, bw_task_t *t, uint64_t deadline_ns);
void bw__ct_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m);

/* background.c */
void bw__background_shutdown(bw_runtime_t *rt, uint64_t deadline_ns);
void bw__background_free(bw_runtime_t *rt);

/* blocking / reactor glue (blocking_glue.c, reactor_glue.c) */
void bw__blocking_shutdown(bw_runtime_t *rt, uint64_t timeout_ms, bool *timed_out);
void bw__blocking_free(bw_runtime_t *rt);
void bw__blocking_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m);
void bw__reactor_glue_shutdown(bw_runtime_t *rt);
/* The runtime's reactor if started, else NULL (acquire: seen fully built). */
struct bw__reactor *bw__reactor_get_if_started(bw_runtime_t *rt);
void bw__reactor_glue_free(bw_runtime_t *rt);
int bw__blocking_glue_init(bw_runtime_t *rt);
void bw__runtime_release_memory(bw_runtime_t *rt);

/* runtime.c: spawn a task of `kind`; NULL and *err on failure. With
 * schedule == false the task starts idle (something else will wake it). */
bw_task_t *bw__spawn_task(bw_runtime_t *rt, bw_task_fn poll, void *arg, void (*drop)(void *),
                          const char *name, int kind, bool want_join, bool schedule,
                          bw_error_t **err);

/* task cache of the calling thread for rt, or NULL */
bw__task_cache_t *bw__ctx_cache(const bw_runtime_t *rt);

#endif
