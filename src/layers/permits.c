/* Permit counter + FIFO wait queue: see permits.h.
 *
 * Lost-wake-up argument (the one subtle part). A releaser does
 *     in_use -= 1 (seq_cst);  if (queued > 0 (seq_cst)) drain();
 * and a waiter joining an empty queue does, under the lock,
 *     queued += 1 (seq_cst);  try CAS in_use (seq_cst);  else link itself.
 * These are the two halves of a Dekker pair: either the waiter's CAS sees
 * the freed permit, or the releaser sees queued > 0 and drains; drain takes
 * the lock, so it runs after the waiter has linked itself and grants it.
 * A waiter joining a non-empty queue need not try: the waiters ahead of it
 * already guarantee a drain at the next release.
 *
 * drain() grants while the queue is non-empty and a permit can be taken;
 * the taken permit is transferred to the waiter (in_use counts it). Grants
 * are collected under the lock and called after it is dropped.
 *
 * Lock order: p->lock is a leaf; nothing is called with it held. */
#include "layers/permits.h"

#include <stddef.h>

int bw__permits_init(bw__permits_t *p, uint32_t limit, uint32_t max_queue) {
  if (!p || limit < 1) return -1;
  atomic_init(&p->in_use, 0);
  atomic_init(&p->limit, limit);
  atomic_init(&p->queued, 0);
  p->max_queue = max_queue;
  p->head = p->tail = NULL;
  p->nlist = 0;
  if (pthread_mutex_init(&p->lock, NULL) != 0) return -1;
  return 0;
}

void bw__permits_destroy(bw__permits_t *p) {
  if (p) pthread_mutex_destroy(&p->lock);
}

/* CAS in_use up by one if below the limit. seq_cst: see the Dekker note. */
static bool take(bw__permits_t *p) {
  uint32_t cur = atomic_load_explicit(&p->in_use, memory_order_seq_cst);
  for (;;) {
    if (cur >= atomic_load_explicit(&p->limit, memory_order_relaxed)) return false;
    if (atomic_compare_exchange_weak_explicit(&p->in_use, &cur, cur + 1, memory_order_seq_cst,
                                              memory_order_seq_cst))
      return true;
  }
}

int bw__permits_try_acquire(bw__permits_t *p) {
  /* Fairness: while anyone queues, a newcomer does not barge. */
  if (atomic_load_explicit(&p->queued, memory_order_relaxed) > 0) return BW__PERMITS_EFULL;
  return take(p) ? BW__PERMITS_OK : BW__PERMITS_EFULL;
}

static void unlink_waiter(bw__permits_t *p, bw__permit_waiter_t *w) {
  if (w->prev) w->prev->next = w->next;
  else p->head = w->next;
  if (w->next) w->next->prev = w->prev;
  else p->tail = w->prev;
  w->next = w->prev = NULL;
  w->where = 0;
  p->nlist--;
  atomic_fetch_sub_explicit(&p->queued, 1, memory_order_relaxed);
}

int bw__permits_acquire(bw__permits_t *p, bw__permit_waiter_t *w) {
  if (atomic_load_explicit(&p->queued, memory_order_relaxed) == 0 && take(p))
    return BW__PERMITS_OK;
  pthread_mutex_lock(&p->lock);
  if (p->head == NULL) {
    /* seq_cst: pairs with the release's load of queued (Dekker, above). */
    atomic_fetch_add_explicit(&p->queued, 1, memory_order_seq_cst);
    if (take(p)) {
      atomic_fetch_sub_explicit(&p->queued, 1, memory_order_relaxed);
      pthread_mutex_unlock(&p->lock);
      return BW__PERMITS_OK;
    }
    if (p->max_queue == 0) {
      atomic_fetch_sub_explicit(&p->queued, 1, memory_order_relaxed);
      pthread_mutex_unlock(&p->lock);
      return BW__PERMITS_EFULL;
    }
  } else {
    if (p->nlist >= p->max_queue) {
      pthread_mutex_unlock(&p->lock);
      return BW__PERMITS_EFULL;
    }
    atomic_fetch_add_explicit(&p->queued, 1, memory_order_seq_cst);
  }
  w->next = NULL;
  w->prev = p->tail;
  if (p->tail) p->tail->next = w;
  else p->head = w;
  p->tail = w;
  w->where = 1;
  p->nlist++;
  pthread_mutex_unlock(&p->lock);
  return BW__PERMITS_QUEUED;
}

bool bw__permits_cancel(bw__permits_t *p, bw__permit_waiter_t *w) {
  pthread_mutex_lock(&p->lock);
  bool queued = w->where == 1;
  if (queued) unlink_waiter(p, w);
  pthread_mutex_unlock(&p->lock);
  return queued;
}

static void drain(bw__permits_t *p) {
  bw__permit_waiter_t *granted = NULL, **tailp = &granted;
  pthread_mutex_lock(&p->lock);
  while (p->head && take(p)) {
    bw__permit_waiter_t *w = p->head;
    unlink_waiter(p, w);
    *tailp = w;
    tailp = &w->next;
  }
  pthread_mutex_unlock(&p->lock);
  while (granted) {
    bw__permit_waiter_t *w = granted;
    granted = w->next;
    w->next = NULL;
    w->grant(w, w->arg);
  }
}

void bw__permits_release(bw__permits_t *p) {
  /* seq_cst pair: see the Dekker note at the top. */
  atomic_fetch_sub_explicit(&p->in_use, 1, memory_order_seq_cst);
  if (atomic_load_explicit(&p->queued, memory_order_seq_cst) > 0) drain(p);
}

void bw__permits_set_limit(bw__permits_t *p, uint32_t limit) {
  if (limit < 1) limit = 1;
  /* seq_cst: orders with the queued load below like a release does. */
  atomic_store_explicit(&p->limit, limit, memory_order_seq_cst);
  if (atomic_load_explicit(&p->queued, memory_order_seq_cst) > 0) drain(p);
}

uint64_t bw__permits_expire(bw__permits_t *p, uint64_t now_ns,
                            void (*expired)(bw__permit_waiter_t *w)) {
  bw__permit_waiter_t *gone = NULL, **tailp = &gone;
  uint64_t next = UINT64_MAX;
  pthread_mutex_lock(&p->lock);
  for (bw__permit_waiter_t *w = p->head, *n; w; w = n) {
    n = w->next;
    if (w->deadline_ns <= now_ns) {
      unlink_waiter(p, w);
      *tailp = w;
      tailp = &w->next;
    } else if (w->deadline_ns < next) {
      next = w->deadline_ns;
    }
  }
  pthread_mutex_unlock(&p->lock);
  while (gone) {
    bw__permit_waiter_t *w = gone;
    gone = w->next;
    w->next = NULL;
    expired(w);
  }
  return next;
}

uint32_t bw__permits_queued(bw__permits_t *p) {
  pthread_mutex_lock(&p->lock);
  uint32_t n = p->nlist;
  pthread_mutex_unlock(&p->lock);
  return n;
}
