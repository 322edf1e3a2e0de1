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
#include "layers/service_internal.h"

#include <stddef.h>
#include <string.h>

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

/* ---- helpers shared by H5's layers ------------------------------------------ */

#include <time.h>

static void slot_lock(bw__child_slot_t *s) {
  int expect = 0;
  /* acquire: pairs with the release store in slot_unlock. */
  while (!atomic_compare_exchange_weak_explicit(&s->lk, &expect, 1, memory_order_acquire,
                                                memory_order_relaxed))
    expect = 0;
}
static void slot_unlock(bw__child_slot_t *s) {
  atomic_store_explicit(&s->lk, 0, memory_order_release); /* pairs with slot_lock */
}

static bw_call_t *slot_ref_child(bw__child_slot_t *s) {
  slot_lock(s);
  bw_call_t *c = s->child;
  if (c) bw_call_ref(c);
  slot_unlock(s);
  return c;
}

/* Still running as it was handed to the node: generation 0 (a call is
 * handed inward only in its start chain, or as a new child), not done.
 * seq_cst: pairs with the state CAS of whoever ends it (then ops->cancel). */
static bool handed_running(const bw_call_t *call) {
  return atomic_load((atomic_int *)&call->state) == BW__CALL_RUNNING;
}

int bw__child_start(bw_call_t *call, bw__child_slot_t *slot, bw_call_cb cb, void *arg) {
  /* Ended meanwhile (an outer timeout's abort sets no cancel flag, and a
   * resumed call's node, which bw_call_child_new would use, is retry's):
   * its ops->cancel has run or will find nothing to cancel. */
  if (!handed_running(call)) return -1;
  bw_call_t *child = NULL;
  bw_error_t *err = bw_call_child_new(&child, call, NULL);
  if (err) {
    bw_call_complete(call, NULL, NULL, err);
    return -1;
  }
  slot_lock(slot);
  slot->child = child;
  slot_unlock(slot);
  /* The parent may have been ended (cancelled, aborted) before the child
   * was published, so ops->cancel saw no child: cancel it here, before it
   * starts (a child cancelled before its start completes with CANCELLED
   * when started; idempotent if both do). Ordering: the end's state CAS
   * comes before ops->cancel reads the slot under the slot lock, and we
   * read the state after publishing under that lock, so one of us sees the
   * other. The check is made BEFORE the start: once the child runs, the
   * parent may complete and be recycled on another thread, so nothing here
   * touches `call` after bw_call_child_start. The parent's error is not
   * read (its writer is not ordered with us); the child gets a plain
   * BW_ERR_CANCELLED. */
  if (!handed_running(call)) bw__child_slot_cancel(slot, NULL);
  bw_call_child_start(child, cb, arg);
  return 0;
}

void bw__child_slot_clear(bw__child_slot_t *slot) {
  slot_lock(slot);
  slot->child = NULL;
  slot_unlock(slot);
}

void bw__child_slot_cancel(bw__child_slot_t *slot, const bw_error_t *reason) {
  bw_call_t *c = slot_ref_child(slot);
  if (!c) return;
  bw_call_cancel_with(c, reason ? bw_error_ref(reason) : NULL);
  bw_call_unref(c);
}

bw_timer_t *bw__call_timer(bw__call_timer_t *ct, bw_runtime_t *rt, bw_timer_fn fn, void *arg) {
  if (ct->t && ct->rt == rt) return ct->t;
  bw_timer_free(ct->t);
  ct->t = NULL;
  bw_error_t *e = bw_timer_new(rt, fn, arg, &ct->t);
  if (e) {
    bw_error_unref(e);
    ct->t = NULL;
    return NULL;
  }
  ct->rt = rt;
  return ct->t;
}

int bw__state_init_zero(bw_service_t *svc, void *state) {
  memset(state, 0, svc->ops->call_state_size);
  return 0;
}

int bw__reject_cache_init(bw__reject_cache_t *rc) {
  rc->err = NULL;
  rc->hint_ms = -1;
  return pthread_mutex_init(&rc->mu, NULL) == 0 ? 0 : -1;
}

void bw__reject_cache_fini(bw__reject_cache_t *rc) {
  bw_error_unref(rc->err);
  rc->err = NULL;
  pthread_mutex_destroy(&rc->mu);
}

bw_error_t *bw__reject_error(bw__reject_cache_t *rc, bw_error_kind_t kind, const char *what,
                             uint64_t retry_after_ns) {
  if (retry_after_ns == 0) return bw_error_static(kind);
  int64_t ms = (int64_t)((retry_after_ns + 999999) / 1000000);
  pthread_mutex_lock(&rc->mu);
  if (rc->err && rc->hint_ms == ms) {
    bw_error_t *e = bw_error_ref(rc->err);
    pthread_mutex_unlock(&rc->mu);
    return e;
  }
  pthread_mutex_unlock(&rc->mu);
  bw_error_hints_t h = {.retry_after_ms = ms};
  bw_error_t *e = bw_error_make(kind, 0, NULL, &h, NULL, 0, __FILE__, __LINE__,
                                "%s: retry after %lld ms", what, (long long)ms);
  if (bw_error_is_static(e)) return e; /* out of memory */
  pthread_mutex_lock(&rc->mu);
  bw_error_t *old = rc->err;
  rc->err = bw_error_ref(e);
  rc->hint_ms = ms;
  pthread_mutex_unlock(&rc->mu);
  bw_error_unref(old);
  return e;
}

uint64_t bw__call_now_ns(const bw_call_t *call) {
  /* one reading shared by the layers of a start chain (service.c) */
  return bw__call_now_ns_shared(call);
}

uint64_t bw__call_now_cheap_read(const bw_call_t *call) {
  /* (the start chain's shared reading was looked for inline) An answered
   * call's finish hooks: the time it was answered, when that happened
   * during a start chain. */
  uint64_t end = atomic_load_explicit(&call->end_ns, memory_order_relaxed);
  if (end) return end;
  bw_runtime_t *rt = call->rt;
  if (bw_runtime_clock_paused(rt)) return bw_runtime_now_ns(rt);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t bw__clock_now_ns(bw_runtime_t *rt) {
  if (rt) return bw_runtime_now_ns(rt);
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
