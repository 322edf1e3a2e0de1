/* One-shot channel (include/bulwark/sync.h).
 *
 * Design notes
 * - One allocation per channel, lock-free. `state` holds the flags below;
 *   `ends` counts the two ends (sender, receiver): whoever releases the
 *   second frees the channel and any value that was never received.
 * - The receiver's waiter (a task waker, or a blocked thread's on-stack
 *   waiter with its own mutex/cond) is published with RX_WAITING. Ownership
 *   of the waiter moves by atomic read-modify-write on `state` (tokio's
 *   oneshot protocol):
 *     sender:   fetch_or(COMPLETE) that sees RX_WAITING -> the sender owns
 *               the waiter and wakes it;
 *     receiver: fetch_and(~RX_WAITING) that sees no COMPLETE -> the receiver
 *               owns it again (to replace or drop it); seeing COMPLETE the
 *               value is ready and the sender owns the waiter.
 *   The receiver writes `waiter` only while RX_WAITING is clear, and the
 *   sender reads it only after seeing RX_WAITING set, so no lock is needed.
 * - The sender writes value/value_free before its acq_rel fetch_or of
 *   COMPLETE|VALUE (pairs with the acquire load/RMW of the receiver).
 * - Memory order: every RMW on `state` and `ends` is acq_rel; the first load
 *   in poll is acquire. Cheap enough: a send is 2 RMWs, a ready receive is a
 *   load and an RMW. */
#include <pthread.h>
#include <stdatomic.h>

#include "bulwark/sync.h"
#include "core/alloc.h"

enum {
  COMPLETE = 1u << 0,   /* the sender is done (sent or closed) */
  VALUE = 1u << 1,      /* ...and it sent a value */
  RX_WAITING = 1u << 2, /* `waiter` is set */
  RX_THREAD = 1u << 3,  /* `waiter` is a thread_waiter_t, not a task waker */
  RX_CLOSED = 1u << 4,  /* the receiver is gone */
};

typedef struct thread_waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
} thread_waiter_t;

struct bw_oneshot {
  atomic_uint state;
  atomic_uint ends;
  bool taken; /* receiver took the value (read only by the final free) */
  void *value;
  void (*value_free)(void *);
  void *waiter; /* bw_waker_t * or thread_waiter_t * (RX_THREAD) */
};

bw_error_t *bw_oneshot_new(bw_oneshot_t **out) {
  if (out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_oneshot_new: out is NULL");
  bw_oneshot_t *ch = bw__malloc(sizeof *ch);
  if (ch == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  atomic_init(&ch->state, 0);
  atomic_init(&ch->ends, 2);
  ch->taken = false;
  ch->value = NULL;
  ch->value_free = NULL;
  ch->waiter = NULL;
  *out = ch;
  return NULL;
}

static void release_end(bw_oneshot_t *ch) {
  /* acq_rel: the last end sees the other end's writes (value, taken) */
  if (atomic_fetch_sub_explicit(&ch->ends, 1, memory_order_acq_rel) != 1) return;
  unsigned s = atomic_load_explicit(&ch->state, memory_order_relaxed);
  if ((s & VALUE) && !ch->taken && ch->value_free) ch->value_free(ch->value);
  bw__free(ch);
}

static void wake_waiter(void *waiter, unsigned s) {
  if (s & RX_THREAD) {
    thread_waiter_t *tw = waiter;
    pthread_mutex_lock(&tw->mu);
    tw->done = true;
    pthread_cond_signal(&tw->cv);
    pthread_mutex_unlock(&tw->mu); /* tw may vanish once this returns */
  } else {
    bw_waker_wake(waiter);
  }
}

/* The sender's completion: publish COMPLETE (and VALUE), wake the receiver
 * if it waits, release the sender end. Returns the previous state. */
static unsigned complete(bw_oneshot_t *ch, unsigned bits) {
  /* acq_rel: release publishes value; acquire sees the receiver's waiter */
  unsigned s = atomic_fetch_or_explicit(&ch->state, COMPLETE | bits, memory_order_acq_rel);
  if ((s & RX_WAITING) && !(s & RX_CLOSED)) wake_waiter(ch->waiter, s);
  release_end(ch);
  return s;
}

bool bw_oneshot_send(bw_oneshot_t *ch, void *value, void (*value_free)(void *)) {
  if (ch == NULL) {
    if (value_free) value_free(value);
    return false;
  }
  ch->value = value;
  ch->value_free = value_free;
  unsigned s = complete(ch, VALUE);
  /* receiver gone: the final release_end freed the value (or will) */
  return !(s & RX_CLOSED);
}

void bw_oneshot_close_sender(bw_oneshot_t *ch) {
  if (ch) complete(ch, 0);
}

/* Receiver side, COMPLETE seen (acquire): take the result and release. */
static bw_poll_t finish_recv(bw_oneshot_t *ch, unsigned s, void **value, bw_error_t **err) {
  if (s & VALUE) {
    if (value) {
      *value = ch->value;
      ch->taken = true;
    }
    if (err) *err = NULL;
  } else {
    if (value) *value = NULL;
    if (err) *err = bw_error_static(BW_ERR_CANCELLED);
  }
  release_end(ch);
  return BW_READY;
}

/* Take the waiter back from the shared state. Returns the state after; if it
 * has COMPLETE, the sender owns the waiter (and the caller must not touch it). */
static unsigned reclaim_waiter(bw_oneshot_t *ch) {
  /* acq_rel: pairs with the sender's fetch_or in complete() */
  return atomic_fetch_and_explicit(&ch->state, ~(unsigned)(RX_WAITING | RX_THREAD),
                                   memory_order_acq_rel);
}

bw_poll_t bw_oneshot_poll_recv(bw_oneshot_t *ch, bw_task_t *self, void **value,
                               bw_error_t **err) {
  /* acquire: pairs with the release half of complete()'s fetch_or */
  unsigned s = atomic_load_explicit(&ch->state, memory_order_acquire);
  if (s & COMPLETE) return finish_recv(ch, s, value, err);
  if (s & RX_WAITING) {
    if (!(s & RX_THREAD) && bw_waker_will_wake(ch->waiter, self)) return BW_PENDING;
    s = reclaim_waiter(ch);
    if (s & COMPLETE) return finish_recv(ch, s, value, err);
    if (!(s & RX_THREAD)) bw_waker_drop(ch->waiter);
  }
  ch->waiter = bw_task_waker(self);
  /* acq_rel: release publishes waiter to the sender */
  s = atomic_fetch_or_explicit(&ch->state, RX_WAITING, memory_order_acq_rel);
  if (s & COMPLETE) {
    /* the sender finished before it could see our waiter: it is ours */
    bw_waker_drop(ch->waiter);
    ch->waiter = NULL;
    return finish_recv(ch, s, value, err);
  }
  return BW_PENDING;
}

bw_error_t *bw_oneshot_recv_wait(bw_oneshot_t *ch, void **value) {
  if (ch == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_oneshot_recv_wait: NULL");
  if (bw_runtime_current() != NULL)
    return bw_error_new(BW_ERR_NESTED_RUNTIME, 0,
                        "bw_oneshot_recv_wait would block a runtime thread; "
                        "use bw_oneshot_poll_recv from the task instead");
  unsigned s = atomic_load_explicit(&ch->state, memory_order_acquire);
  if (s & RX_WAITING) { /* a task waited before: take its waker back */
    s = reclaim_waiter(ch);
    if (!(s & COMPLETE) && !(s & RX_THREAD)) bw_waker_drop(ch->waiter);
  }
  if (!(s & COMPLETE)) {
    thread_waiter_t tw;
    pthread_mutex_init(&tw.mu, NULL);
    pthread_cond_init(&tw.cv, NULL);
    tw.done = false;
    ch->waiter = &tw;
    s = atomic_fetch_or_explicit(&ch->state, RX_WAITING | RX_THREAD, memory_order_acq_rel);
    if (!(s & COMPLETE)) {
      pthread_mutex_lock(&tw.mu);
      while (!tw.done) pthread_cond_wait(&tw.cv, &tw.mu);
      pthread_mutex_unlock(&tw.mu);
      /* acquire: pairs with complete()'s fetch_or (the mutex also orders it) */
      s = atomic_load_explicit(&ch->state, memory_order_acquire);
    }
    ch->waiter = NULL;
    pthread_cond_destroy(&tw.cv);
    pthread_mutex_destroy(&tw.mu);
  }
  bw_error_t *err = NULL;
  void *v = NULL;
  finish_recv(ch, s, &v, &err);
  if (value) *value = v;
  return err;
}

void bw_oneshot_close_receiver(bw_oneshot_t *ch) {
  if (ch == NULL) return;
  /* acq_rel: pairs with complete(); our RX_CLOSED stops a later wake */
  unsigned s = atomic_fetch_or_explicit(&ch->state, RX_CLOSED, memory_order_acq_rel);
  if ((s & RX_WAITING) && !(s & COMPLETE)) {
    if (!(s & RX_THREAD)) bw_waker_drop(ch->waiter);
  }
  release_end(ch);
}
