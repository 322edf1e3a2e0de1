/* Permit counter with a bounded FIFO wait queue (internal).
 *
 * The bulkhead is built on it, and so will adaptive concurrency be: the
 * limit may change at run time (bw__permits_set_limit). Taking a free permit
 * when nobody queues is one CAS; the queue, its bound and handing permits
 * to waiters go through a small mutex. A released permit goes to the oldest
 * waiter directly (no barging: while anyone queues, newcomers queue too).
 *
 * Waiters are intrusive (the caller's per-call memory): no allocation.
 * `grant` runs exactly once for a waiter that gets a permit, on the thread
 * that released it (or raised the limit), with no lock held; it must not
 * block and should hand off heavy work (the bulkhead defers to a worker).
 *
 * Threads: every function is safe from any thread. */
#ifndef BW_LAYERS_PERMITS_H
#define BW_LAYERS_PERMITS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define BW__PERMITS_OK 0
#define BW__PERMITS_QUEUED 1
#define BW__PERMITS_EFULL (-1) /* no permit and the queue is full (or 0 long) */

typedef struct bw__permit_waiter bw__permit_waiter_t;
struct bw__permit_waiter {
  bw__permit_waiter_t *next, *prev; /* private */
  void (*grant)(bw__permit_waiter_t *w, void *arg);
  void *arg;
  uint64_t deadline_ns; /* give up waiting at this time; UINT64_MAX: never */
  int where;            /* private: 0 none, 1 queued */
};

typedef struct bw__permits {
  _Atomic uint32_t in_use;
  _Atomic uint32_t limit;
  _Atomic uint32_t queued; /* waiters in the list (plus one being added) */
  uint32_t max_queue;
  pthread_mutex_t lock; /* guards the list; never held while calling out */
  bw__permit_waiter_t *head, *tail;
  uint32_t nlist;
} bw__permits_t;

/* limit >= 1 (permits), max_queue >= 0 (waiters). Returns 0 or -1. */
int bw__permits_init(bw__permits_t *p, uint32_t limit, uint32_t max_queue);
/* No waiter may be queued. */
void bw__permits_destroy(bw__permits_t *p);

/* Take a permit without queueing: 0, or BW__PERMITS_EFULL. */
int bw__permits_try_acquire(bw__permits_t *p);

/* Take a permit now (BW__PERMITS_OK), or queue w (BW__PERMITS_QUEUED: later
 * exactly one of w->grant running or bw__permits_cancel/_expire removing it
 * happens), or BW__PERMITS_EFULL. w->grant, w->arg, w->deadline_ns must be set. */
int bw__permits_acquire(bw__permits_t *p, bw__permit_waiter_t *w);

/* Remove a queued waiter. true: removed, grant will never run. false: it
 * was already granted (its grant has run or is running): the caller's call
 * holds a permit it must release. */
bool bw__permits_cancel(bw__permits_t *p, bw__permit_waiter_t *w);

/* Remove every waiter whose deadline_ns <= now_ns and call expired(w) for
 * each (no lock held). Returns the earliest deadline still queued, or
 * UINT64_MAX when none. */
uint64_t bw__permits_expire(bw__permits_t *p, uint64_t now_ns,
                            void (*expired)(bw__permit_waiter_t *w));

/* Return one permit; it may go straight to the oldest waiter. */
void bw__permits_release(bw__permits_t *p);

/* Change the limit (>= 1). Raising it grants queued waiters at once;
 * lowering it takes effect as permits come back. */
void bw__permits_set_limit(bw__permits_t *p, uint32_t limit);

static inline uint32_t bw__permits_in_use(bw__permits_t *p) {
  return atomic_load_explicit(&p->in_use, memory_order_relaxed);
}
static inline uint32_t bw__permits_limit(bw__permits_t *p) {
  return atomic_load_explicit(&p->limit, memory_order_relaxed);
}
uint32_t bw__permits_queued(bw__permits_t *p);

#endif

/* ---- Helpers shared by the rate limit, bulkhead, breaker and chaos layers --
 * (kept here to stay within this part's files). */
#include "bulwark/layer.h"

/* The one child a layer has in flight for a call, guarded by a tiny spin
 * lock so ops->cancel (any thread) and the child's callback never race on
 * its memory: whoever cancels takes a call reference under the lock and
 * cancels outside it. Zeroed memory is a valid empty slot. */
typedef struct bw__child_slot {
  _Atomic int lk;
  bw_call_t *child;
} bw__child_slot_t;

/* Make a child of `call` for the node's inner service, publish it in slot
 * and start it with cb(child, err, arg). A call that is no longer running
 * as handed to the node (completed by a cancel, an outer timeout's abort or
 * shutdown, and perhaps resumed by an outer retry since) gets no child:
 * returns -1, nothing to undo but what the caller holds. If such an end
 * races with the start, the child is cancelled before it runs (cb still
 * runs). If the child cannot be made, the parent completes with that
 * error; returns -1.
 * After it returns 0 the caller must not touch `call` unless it holds a
 * reference: the child may already have completed it on another thread.
 * cb must not find its state with bw_call_state(call): an outer retry may
 * have resumed the call at its own depth by then (pass the state as arg). */
int bw__child_start(bw_call_t *call, bw__child_slot_t *slot, bw_call_cb cb, void *arg);
/* In the child's callback: unpublish it (the caller then frees it). */
void bw__child_slot_clear(bw__child_slot_t *slot);
/* From ops->cancel: cancel the published child, if any (reason borrowed). */
void bw__child_slot_cancel(bw__child_slot_t *slot, const bw_error_t *reason);

/* A runtime timer kept in a pooled call's state: made at its first use,
 * made again if the call runs on another runtime, freed with the pool
 * (bw_timer_free(ct.t) in ops->state_fini). Zeroed memory is empty. */
typedef struct bw__call_timer {
  bw_timer_t *t;
  bw_runtime_t *rt;
} bw__call_timer_t;
/* The timer for rt, calling fn(t, arg); NULL when out of memory. */
bw_timer_t *bw__call_timer(bw__call_timer_t *ct, bw_runtime_t *rt, bw_timer_fn fn, void *arg);

/* ops->state_init for layers whose per-call state starts zeroed once per
 * pooled call (ops->call_state_size bytes) and is reset in ops->call. */
int bw__state_init_zero(bw_service_t *svc, void *state);

/* A rejection error with a retry_after_ms hint, shared by all rejections
 * that give the same whole-millisecond hint: at most one allocation per
 * distinct hint value in a row, none while a burst of rejections repeats
 * one (hot path: no malloc). hint_ms 0 gives the static error of `kind`. */
typedef struct bw__reject_cache {
  pthread_mutex_t mu;
  bw_error_t *err; /* one reference held by the cache */
  int64_t hint_ms;
} bw__reject_cache_t;
int bw__reject_cache_init(bw__reject_cache_t *rc);
void bw__reject_cache_fini(bw__reject_cache_t *rc);
/* One reference to an error of `kind` saying "<what>: retry after N ms"
 * with hint N = ceil(retry_after_ns / 1 ms). what: static or stable text. */
bw_error_t *bw__reject_error(bw__reject_cache_t *rc, bw_error_kind_t kind, const char *what,
                             uint64_t retry_after_ns);

/* The runtime clock of a call. */
uint64_t bw__call_now_ns(const bw_call_t *call);
/* bw__call_now_cheap_ns (the cheap clock of a call): service_internal.h */
/* A clock for API calls made outside a call: rt's if set, else CLOCK_MONOTONIC. */
uint64_t bw__clock_now_ns(bw_runtime_t *rt);
