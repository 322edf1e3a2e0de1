/* Which workers are parked and how many are searching for work (tokio's
 * multi_thread/idle.rs). Bounds the searchers to half the workers and
 * wakes one parked worker at a time (no thundering herd). See idle.c. */
#ifndef BW_RUNTIME_IDLE_H
#define BW_RUNTIME_IDLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct bw__idle {
  _Atomic uint32_t state; /* (num_unparked << 16) | num_searching */
  char pad[60];
  pthread_mutex_t mu;     /* guards sleepers */
  unsigned *sleepers;     /* stack of parked worker indices */
  unsigned nsleepers;
  unsigned num_workers;
} bw__idle_t;

int bw__idle_init(bw__idle_t *id, unsigned num_workers);
void bw__idle_destroy(bw__idle_t *id);
/* A worker to wake for new work, already counted as unparked+searching,
 * or -1 if none should be woken (someone searches, or nobody is parked). */
int bw__idle_worker_to_notify(bw__idle_t *id);
/* Relaxed hint only (one load, no RMW): false when nobody would be woken.
 * NOT safe to skip a notify on (tried for local pushes: clients' tests
 * hung), kept for diagnostics. */
bool bw__idle_may_notify(bw__idle_t *id);
/* Worker i parks. Returns true if it was the last searcher (it must then
 * check for work that arrived meanwhile). */
bool bw__idle_transition_to_parked(bw__idle_t *id, unsigned i, bool is_searching);
/* Try to become a searcher (at most half the workers search). */
bool bw__idle_transition_to_searching(bw__idle_t *id);
/* Stop searching; true if this was the last searcher (then wake another
 * worker if work is left, so progress never depends on a parked worker). */
bool bw__idle_transition_from_searching(bw__idle_t *id);
/* Worker i woke for its own reason (timer, lifo): remove it from the
 * sleepers if still there (returns true; it is unparked, not searching). */
bool bw__idle_unpark_worker_by_id(bw__idle_t *id, unsigned i);
bool bw__idle_is_parked(bw__idle_t *id, unsigned i);
unsigned bw__idle_num_unparked(bw__idle_t *id);

#endif
