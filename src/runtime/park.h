/* Park/unpark one worker thread (a binary semaphore that remembers one
 * unpark, like tokio's park::thread). See park.c. */
#ifndef BW_RUNTIME_PARK_H
#define BW_RUNTIME_PARK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct bw__parker {
  atomic_int state; /* EMPTY, PARKED, NOTIFIED */
  pthread_mutex_t mu;
  pthread_cond_t cv; /* CLOCK_MONOTONIC */
} bw__parker_t;

int bw__parker_init(bw__parker_t *p);
void bw__parker_destroy(bw__parker_t *p);
/* Block until unparked or until the monotonic time deadline_ns (UINT64_MAX:
 * no limit). Returns at once if an unpark came since the last park. */
void bw__park(bw__parker_t *p, uint64_t deadline_ns);
/* Wake the parked thread, or make its next park return at once. */
void bw__unpark(bw__parker_t *p);
/* For a thread that waits somewhere else instead (a worker driving the
 * reactor): take an unpark that came since the last park, if any (true),
 * so the next park does not return at once for it. SeqCst, like unpark. */
bool bw__park_take_notify(bw__parker_t *p);

#endif
