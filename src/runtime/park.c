/* Parker: state EMPTY -> PARKED (thread about to wait, under mu) and
 * EMPTY/PARKED -> NOTIFIED (unpark). All transitions are SeqCst RMWs on
 * `state`; the waiter re-checks state under `mu`, and unpark takes and drops
 * `mu` before signalling, so a notify between the waiter's check and its
 * cond_wait cannot be lost (the waiter holds mu across both). */
#include "runtime/park.h"

#include <time.h>

enum { EMPTY = 0, PARKED = 1, NOTIFIED = 2 };

int bw__parker_init(bw__parker_t *p) {
  atomic_init(&p->state, EMPTY);
  pthread_mutex_init(&p->mu, NULL);
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  int rc = pthread_cond_init(&p->cv, &a);
  pthread_condattr_destroy(&a);
  return rc == 0 ? 0 : -1;
}

void bw__parker_destroy(bw__parker_t *p) {
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

void bw__park(bw__parker_t *p, uint64_t deadline_ns) {
  int exp = NOTIFIED;
  if (atomic_compare_exchange_strong_explicit(&p->state, &exp, EMPTY, memory_order_seq_cst,
                                              memory_order_seq_cst))
    return;
  pthread_mutex_lock(&p->mu);
  exp = EMPTY;
  if (!atomic_compare_exchange_strong_explicit(&p->state, &exp, PARKED, memory_order_seq_cst,
                                               memory_order_seq_cst)) {
    /* NOTIFIED arrived meanwhile */
    atomic_store_explicit(&p->state, EMPTY, memory_order_seq_cst);
    pthread_mutex_unlock(&p->mu);
    return;
  }
  struct timespec ts;
  if (deadline_ns != UINT64_MAX) {
    ts.tv_sec = (time_t)(deadline_ns / 1000000000u);
    ts.tv_nsec = (long)(deadline_ns % 1000000000u);
  }
  for (;;) {
    int rc = deadline_ns == UINT64_MAX ? pthread_cond_wait(&p->cv, &p->mu)
                                       : pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    exp = NOTIFIED;
    if (atomic_compare_exchange_strong_explicit(&p->state, &exp, EMPTY, memory_order_seq_cst,
                                                memory_order_seq_cst))
      break;
    if (rc != 0) { /* timed out: PARKED -> EMPTY (a racing NOTIFIED is consumed too) */
      atomic_store_explicit(&p->state, EMPTY, memory_order_seq_cst);
      break;
    }
  }
  pthread_mutex_unlock(&p->mu);
}

bool bw__park_take_notify(bw__parker_t *p) {
  int exp = NOTIFIED;
  return atomic_compare_exchange_strong_explicit(&p->state, &exp, EMPTY, memory_order_seq_cst,
                                                 memory_order_seq_cst);
}

void bw__unpark(bw__parker_t *p) {
  int prev = atomic_exchange_explicit(&p->state, NOTIFIED, memory_order_seq_cst);
  if (prev != PARKED) return; /* EMPTY: next park returns at once; NOTIFIED: done */
  /* take the lock so the waiter is inside cond_wait (it holds mu until then) */
  pthread_mutex_lock(&p->mu);
  pthread_mutex_unlock(&p->mu);
  pthread_cond_signal(&p->cv);
}
