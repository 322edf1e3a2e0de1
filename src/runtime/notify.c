/* Notify (include/bulwark/sync.h): tokio's Notify for bulwark tasks.
 *
 * Design notes
 * - A mutex guards everything. Waiters live in slots of a growable array
 *   owned by the notify (free-listed, so steady state does no malloc); a
 *   task's `*ticket` names its slot: (index + 1) | (sequence << 32), and the
 *   sequence detects a stale ticket. Waiting slots form a FIFO (notify_one
 *   wakes the oldest waiter).
 * - notify_one: pop the oldest waiter and mark it notified, or store the
 *   (single) permit if nobody waits. A poll that starts a wait takes the
 *   permit if there is one. Hence no lost wake-up: a notify_one either finds
 *   a registered waiter or leaves a permit that the next wait consumes.
 * - notify_waiters: every slot registered before the call is notified; it
 *   stamps a generation and pops from the FIFO front while the slot's
 *   generation is older (later registrations are behind them). No permit.
 * - Wakers are never woken under the mutex: they are collected (at most
 *   WAKE_BATCH at a time, on the stack) and woken after unlocking. A slot
 *   stays allocated until its task polls again (sees `notified`) or cancels
 *   the wait with bw_notify_poll_cancel, so a batch never names a slot that
 *   was reused.
 * - Abandoning a wait (bw_notify_poll_cancel): a notify_one already handed
 *   to this waiter is passed on (next waiter or the permit), so it is not
 *   lost. */
#include <assert.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "bulwark/sync.h"
#include "core/alloc.h"

#define WAKE_BATCH 32 /* wakers collected per lock hold; arbitrary, small */
#define NO_SLOT UINT32_MAX

typedef struct slot {
  uint32_t seq;  /* matches the ticket's high half while in use */
  uint32_t next; /* FIFO link or free-list link */
  uint32_t prev; /* FIFO link */
  uint8_t in_use, waiting, notified, by_one; /* by_one: notified by notify_one */
  uint64_t gen;  /* notify_waiters generation at registration */
  bw_waker_t *waker;
} slot_t;

#define NOTIFY_MAGIC 0x62774e59u /* "bwNY"; debug builds check it on entry */
#define CHECK(n) assert((n)->magic == NOTIFY_MAGIC)

struct bw_notify {
  uint32_t magic;
  pthread_mutex_t mu;
  bool permit;
  uint64_t gen;
  uint32_t seq;
  slot_t *slots;
  uint32_t nslots, cap;
  uint32_t free_head;
  uint32_t head, tail; /* waiting FIFO */
};

bw_error_t *bw_notify_new(bw_notify_t **out) {
  if (out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_notify_new: out is NULL");
  bw_notify_t *n = bw__malloc(sizeof *n);
  if (n == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  memset(n, 0, sizeof *n);
  if (pthread_mutex_init(&n->mu, NULL) != 0) {
    bw__free(n);
    return bw_error_new(BW_ERR_INTERNAL, 0, "bw_notify_new: mutex init failed");
  }
  n->free_head = n->head = n->tail = NO_SLOT;
  n->magic = NOTIFY_MAGIC;
  *out = n;
  return NULL;
}

void bw_notify_free(bw_notify_t *n) {
  if (n == NULL) return;
  CHECK(n);
  n->magic = 0;
  for (uint32_t i = 0; i < n->nslots; i++)
    if (n->slots[i].in_use) bw_waker_drop(n->slots[i].waker);
  bw__free(n->slots);
  pthread_mutex_destroy(&n->mu);
  bw__free(n);
}

/* ---- under the lock ---- */

static void fifo_push(bw_notify_t *n, uint32_t i) {
  slot_t *s = &n->slots[i];
  s->waiting = 1;
  s->next = NO_SLOT;
  s->prev = n->tail;
  if (n->tail != NO_SLOT)
    n->slots[n->tail].next = i;
  else
    n->head = i;
  n->tail = i;
}

static void fifo_unlink(bw_notify_t *n, uint32_t i) {
  slot_t *s = &n->slots[i];
  if (s->prev != NO_SLOT)
    n->slots[s->prev].next = s->next;
  else
    n->head = s->next;
  if (s->next != NO_SLOT)
    n->slots[s->next].prev = s->prev;
  else
    n->tail = s->prev;
  s->waiting = 0;
}

static uint32_t slot_alloc(bw_notify_t *n) {
  if (n->free_head != NO_SLOT) {
    uint32_t i = n->free_head;
    n->free_head = n->slots[i].next;
    return i;
  }
  if (n->nslots == n->cap) {
    uint32_t cap = n->cap ? n->cap * 2 : 8;
    if (cap >= NO_SLOT / 2) return NO_SLOT;
    slot_t *ns = bw__realloc(n->slots, (size_t)cap * sizeof *ns);
    if (ns == NULL) return NO_SLOT;
    n->slots = ns;
    n->cap = cap;
  }
  return n->nslots++;
}

static void slot_release(bw_notify_t *n, uint32_t i) {
  slot_t *s = &n->slots[i];
  s->in_use = 0;
  s->next = n->free_head;
  n->free_head = i;
}

static slot_t *lookup(bw_notify_t *n, uint64_t ticket, uint32_t *idx) {
  uint32_t i = (uint32_t)(ticket & 0xffffffffu);
  if (i == 0 || i > n->nslots) return NULL;
  slot_t *s = &n->slots[i - 1];
  if (!s->in_use || s->seq != (uint32_t)(ticket >> 32)) return NULL;
  *idx = i - 1;
  return s;
}

/* Hand one notify_one to the oldest waiter (returns its waker to wake after
 * unlocking), or store the permit (returns NULL). */
static bw_waker_t *notify_one_locked(bw_notify_t *n) {
  if (n->head == NO_SLOT) {
    n->permit = true;
    return NULL;
  }
  uint32_t i = n->head;
  fifo_unlink(n, i);
  slot_t *s = &n->slots[i];
  s->notified = 1;
  s->by_one = 1;
  bw_waker_t *w = s->waker;
  s->waker = NULL;
  return w;
}

/* ---- public ---- */

void bw_notify_one(bw_notify_t *n) {
  if (n == NULL) return;
  CHECK(n);
  pthread_mutex_lock(&n->mu);
  bw_waker_t *w = notify_one_locked(n);
  pthread_mutex_unlock(&n->mu);
  if (w) bw_waker_wake(w);
}

void bw_notify_waiters(bw_notify_t *n) {
  if (n == NULL) return;
  CHECK(n);
  bw_waker_t *batch[WAKE_BATCH];
  pthread_mutex_lock(&n->mu);
  uint64_t gen = ++n->gen; /* slots registered before now have gen < this */
  for (;;) {
    size_t k = 0;
    while (k < WAKE_BATCH && n->head != NO_SLOT && n->slots[n->head].gen < gen) {
      uint32_t i = n->head;
      fifo_unlink(n, i);
      slot_t *s = &n->slots[i];
      s->notified = 1;
      s->by_one = 0;
      batch[k++] = s->waker;
      s->waker = NULL;
    }
    pthread_mutex_unlock(&n->mu);
    for (size_t j = 0; j < k; j++) bw_waker_wake(batch[j]);
    if (k < WAKE_BATCH) return;
    pthread_mutex_lock(&n->mu);
  }
}

bw_poll_t bw_notify_poll(bw_notify_t *n, bw_task_t *self, uint64_t *ticket) {
  bw_waker_t *old = NULL;
  CHECK(n);
  pthread_mutex_lock(&n->mu);
  uint32_t i;
  slot_t *s = *ticket ? lookup(n, *ticket, &i) : NULL;
  if (s == NULL) {
    /* a new wait (or a stale ticket: start over) */
    *ticket = 0;
    if (n->permit) {
      n->permit = false;
      pthread_mutex_unlock(&n->mu);
      return BW_READY;
    }
    i = slot_alloc(n);
    if (i == NO_SLOT) {
      pthread_mutex_unlock(&n->mu);
      return bw_task_yield(self); /* out of memory: degrade to polling */
    }
    s = &n->slots[i];
    s->in_use = 1;
    s->seq = ++n->seq;
    if (s->seq == 0) s->seq = ++n->seq;
    s->notified = 0;
    s->by_one = 0;
    s->gen = n->gen;
    s->waker = bw_task_waker(self);
    fifo_push(n, i);
    *ticket = ((uint64_t)s->seq << 32) | (uint64_t)(i + 1);
    pthread_mutex_unlock(&n->mu);
    return BW_PENDING;
  }
  if (s->notified) {
    slot_release(n, i);
    *ticket = 0;
    pthread_mutex_unlock(&n->mu);
    return BW_READY;
  }
  if (!bw_waker_will_wake(s->waker, self)) {
    old = s->waker;
    s->waker = bw_task_waker(self);
  }
  pthread_mutex_unlock(&n->mu);
  bw_waker_drop(old);
  return BW_PENDING;
}

void bw_notify_poll_cancel(bw_notify_t *n, uint64_t *ticket) {
  if (n == NULL || ticket == NULL || *ticket == 0) return;
  bw_waker_t *old = NULL, *pass = NULL;
  pthread_mutex_lock(&n->mu);
  uint32_t i;
  slot_t *s = lookup(n, *ticket, &i);
  if (s != NULL) {
    if (s->waiting) fifo_unlink(n, i);
    if (s->notified && s->by_one) pass = notify_one_locked(n); /* do not lose it */
    old = s->waker;
    s->waker = NULL;
    slot_release(n, i);
  }
  *ticket = 0;
  pthread_mutex_unlock(&n->mu);
  bw_waker_drop(old);
  if (pass) bw_waker_wake(pass);
}
