/* Task header, state word, reference count, pooled allocation, join
 * handles. See task.c for the design notes. */
#ifndef BW_RUNTIME_TASK_H
#define BW_RUNTIME_TASK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bulwark/runtime.h"
#include "runtime/timer_wheel.h"

/* State bits (task->state). One CAS loop per transition; see task.c. */
enum {
  BW__T_RUNNING = 1u << 0,   /* a worker is inside poll() */
  BW__T_NOTIFIED = 1u << 1,  /* in a run queue, or re-queued after the poll */
  BW__T_COMPLETE = 1u << 2,  /* will never be polled again */
  BW__T_CANCELLED = 1u << 3, /* abort requested */
};

enum { BW__TASK_NORMAL = 0, BW__TASK_DEFER, BW__TASK_BLOCKING, BW__TASK_BACKGROUND };

typedef struct bw__thread_waiter bw__thread_waiter_t;

/* The embedded timer entry. Timers are owned by timer.c; the layout is
 * here so tasks can embed their sleep timer (no allocation per sleep). */
typedef struct bw__wheel bw__wheel_t;
struct bw_timer {
  bw__timer_entry_t entry; /* first: the wheel hands back entries */
  bw_runtime_t *rt;
  bw_timer_fn cb;
  void *arg;
  _Atomic(bw__wheel_t *) wheel; /* wheel holding it while armed; guarded by that wheel's lock */
  uint64_t deadline_ns;
  atomic_uint lock;     /* serialises arm/cancel/free of this timer */
  atomic_uint firing;   /* 0 idle, 1 taken out to fire, 2 cb running, 3 cancelled
                           while taken out; release to 0 after / acquire in free */
  _Atomic(const void *) batch_owner; /* &bw__ctx of the thread whose batch holds it */
  bool free_pending;    /* bw_timer_free called from inside cb */
  bool embedded;        /* inside a task: never freed on its own */
};

struct bw_task {
  atomic_uint in_use; /* spawned and not yet returned to the pool (see task.c); never memset */
  _Atomic uint32_t state;
  _Atomic uint32_t refs;
  atomic_uint lock; /* spin lock for the join fields below */
  uint8_t kind;
  bool output_ready; /* guarded by lock */
  bool output_taken; /* guarded by lock */
  bool has_join;     /* a join handle was handed out (else completion skips the lock) */
  bool yielded;      /* bw_task_yield during the current poll; only the polling thread */
  bw_task_t *next; /* run-queue / pool link */
  union {
    bw_task_t *own_next; /* in the pool: next batch */
    bw_task_fn poll;     /* spawned */
  };
  bw_runtime_t *rt;
  uint64_t id;
  void *arg;
  void (*drop)(void *arg);
  union {
    void (*aux_fn)(void *arg); /* defer: the function */
    void *aux;                 /* background: its cancellation token */
  };
  const char *name;
  /* output */
  void *out_value;
  void (*out_free)(void *);
  bw_error_t *out_err;
  /* joiner */
  bw_waker_t *join_waker;
  bw__thread_waiter_t *join_thread;
  /* The task's sleep timer (bw_task_sleep_until), made on first use in a
   * pooled header slot (bw__task_slot_alloc), released at completion: a
   * header that never sleeps stays small (2 cache lines and a bit). */
  struct bw_timer *sleep;
};

/* A pooled header slot used as raw storage for one struct bw_timer (its
 * in_use flag stays 0, so shutdown's walk ignores it). No malloc in steady
 * state. NULL on allocation failure. */
struct bw_timer *bw__task_slot_alloc(bw_runtime_t *rt);
void bw__task_slot_free(bw_runtime_t *rt, struct bw_timer *t);

/* A mutex that spins briefly before sleeping (glibc adaptive): the hot
 * runtime locks are held for a few instructions, and on 2 cores a futex
 * sleep on every collision costs far more than the spin. */
void bw__mutex_init_adaptive(pthread_mutex_t *mu);

/* Spin lock helpers (tiny critical sections only). */
void bw__spin_lock(atomic_uint *l);
void bw__spin_unlock(atomic_uint *l);

/* ---- allocation ---- */
bw_task_t *bw__task_alloc(bw_runtime_t *rt);
void bw__task_ref(bw_task_t *t);
void bw__task_unref(bw_task_t *t);
/* Per-worker free list (owned by one thread): `list` (count entries) and
 * one full spare batch; batches move to and from the pool whole. */
typedef struct bw__task_cache {
  bw_task_t *list;
  unsigned count;
  bw_task_t *spare;
  uint64_t id_next, id_end; /* task ids handed out in blocks */
} bw__task_cache_t;
/* Global pool of one runtime: full batches (linked through own_next, the
 * tasks of a batch through next) and one partial batch. */
typedef struct bw__task_pool {
  pthread_mutex_t mu;
  bw_task_t *batches;
  bw_task_t *partial;
  unsigned npartial;
  struct bw__slab *slabs; /* every slab ever allocated (prepended under mu) */
  atomic_size_t mallocs;  /* slots in slabs (after destroy: slots still referenced) */
  bool orphaned;          /* runtime freed while tasks were still referenced */
  uint64_t serial;        /* unique per pool: keys the per-thread remote caches */
  struct bw__task_pool *reg_next; /* registry of live pools (task.c) */
} bw__task_pool_t;
/* Once per process, before the first runtime (membarrier registration). */
void bw__task_global_init(void);
/* fork child: reset the registry lock and this thread's remote cache */
void bw__task_on_fork_child(void);
/* A new task id (blocks of ids per worker: no shared counter per spawn). */
uint64_t bw__task_next_id(bw_runtime_t *rt);
void bw__task_pool_init(bw__task_pool_t *p);
/* Flush a worker cache into the pool (worker exit). */
void bw__task_cache_flush(bw_runtime_t *rt, bw__task_cache_t *c);
/* Free every pooled struct. Returns true when no struct is outstanding;
 * otherwise marks the pool orphaned, and the last unref frees the runtime. */
bool bw__task_pool_destroy(bw_runtime_t *rt);

/* ---- live tasks (replaces an owned list: no lock per spawn) ---- */
/* Mark t spawned. Returns 0; -1 if the runtime is shutting down and t was
 * taken back (never visible: free it, report the error); 1 if shutdown
 * already cancelled it (treat as spawned, but do not schedule it). */
int bw__task_publish(bw_runtime_t *rt, bw_task_t *t);
/* Shutdown (after state = SHUTDOWN and the workers are joined): cancel
 * every spawned task that has not completed (joiners see err kind
 * RUNTIME_SHUTDOWN, drop runs on this thread). */
void bw__tasks_cancel_all(bw_runtime_t *rt);

/* ---- scheduling transitions ---- */
/* Poll the task once; the caller gives up the queue reference. */
void bw__task_run(bw_task_t *t);
/* Wake by reference (any thread). */
void bw__task_wake(bw_task_t *t);
/* Finish a task that will never run (abort, shutdown) with err (consumed). */
void bw__task_finish_cancelled(bw_task_t *t, bw_error_t *err);
/* Drop a task that a queue still held at shutdown: release the queue ref. */
void bw__task_drop_queued(bw_task_t *t);

/* Hint: the header of t will be run soon (all of its cache lines). */
static inline void bw__task_prefetch(const bw_task_t *t) {
  const char *p = (const char *)t;
  for (size_t off = 0; off < sizeof *t; off += 64) __builtin_prefetch(p + off, 1);
}

/* Provided by the scheduler (worker.c / current_thread.c). `yield` puts it
 * at the back (never the LIFO slot). Takes over one reference. */
void bw__schedule(bw_task_t *t, bool yield);

#endif
