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
