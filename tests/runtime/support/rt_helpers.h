/* Helpers shared by the runtime tests (sync primitives, blocking pool,
 * reactor): test scale, a counter to wait on, a counting allocator that
 * checks for leaks, and a failing allocator.
 *
 * rt_helpers.c is linked into every test of tests/runtime, so all its names
 * carry the rh_ prefix. Include after <cmocka.h>. */
#ifndef BW_TESTS_RT_HELPERS_H
#define BW_TESTS_RT_HELPERS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "bulwark/runtime.h"

/* Upper bound (real time) for anything a test waits for. */
#define RH_WAIT_MS 30000

/* BW_TEST_SCALE (default 1, <= 0 counts as 1). */
double rh_scale(void);
/* n scaled by BW_TEST_SCALE, at least 10. */
int rh_scaled(int n);

/* Keep this thread busy for ms of real time (spinning on CLOCK_MONOTONIC):
 * for tests that need real time to pass under a component, not to wait
 * for something. */
void rh_spin_ms(unsigned ms);

/* A counter a thread can wait on. */
typedef struct rh_counter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  long value;
} rh_counter_t;

void rh_counter_init(rh_counter_t *c);
void rh_counter_destroy(rh_counter_t *c);
void rh_counter_add(rh_counter_t *c, long d);
long rh_counter_get(rh_counter_t *c);
/* Wait until value >= want; false after RH_WAIT_MS. */
bool rh_counter_wait(rh_counter_t *c, long want);

/* Counting allocator, installed by rh_count_setup and removed by
 * rh_count_teardown (cmocka setup/teardown; teardown asserts that nothing
 * allocated in between is still live). rh_live: live allocations;
 * rh_total: allocations made; rh_fail_all nonzero: every allocation fails. */
extern atomic_long rh_live, rh_total;
extern atomic_int rh_fail_all;
int rh_count_setup(void **state);
int rh_count_teardown(void **state);

/* A new runtime with `workers` worker threads (asserts success). */
bw_runtime_t *rh_runtime(unsigned workers);

/* rh_count_setup plus rh_rt = a runtime with 2 workers; the teardown frees
 * rh_rt before the leak check. */
extern bw_runtime_t *rh_rt;
int rh_rt_setup(void **state);
int rh_rt_teardown(void **state);

/* Failing allocator: the allocation after the next `budget` ones fails, and
 * every one after it; rh_restore_allocator goes back to the default. */
void rh_use_failing_allocator(long budget);
void rh_restore_allocator(void);

#endif
