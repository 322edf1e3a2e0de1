/* Test helpers for the Redis client's callback API on a bw_test_redis_t
 * server: a waiter that callbacks report to, bounded polls of a client's
 * state, a client with short reconnect backoff, and the group fixture of a
 * server plus a runtime.
 * Threads: bw_test_redis_waiter_cb runs on any thread; call the rest from
 * the test's main thread (they may fail() the running test). */
#ifndef BW_TEST_REDIS_WAITER_H
#define BW_TEST_REDIS_WAITER_H

#include <bulwark/redis.h>
#include <bulwark/runtime.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "redis_server.h"

/* Counts completions; keeps the first reply and the first error. The
 * counters change under mu: read them under it, or once every expected
 * callback has run. */
typedef struct bw_test_redis_waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int expected, got;
  bw_runtime_t *rt; /* callbacks must run on it; NULL: not checked */
  bw_redis_reply_t *reply;
  bw_error_t *err;
  int errors_by_kind[BW_ERR__MAX];
  int replies_by_type[BW_REDIS_REPLY_ERROR + 1]; /* by bw_redis_reply_type_t */
  /* A callback ran off rt or broke the contract (exactly one of reply and
   * err): recorded here, since cmocka asserts belong to the test thread. */
  bool bad_callback;
} bw_test_redis_waiter_t;

/* Ready for `expected` callbacks on runtime rt (NULL: any thread). */
void bw_test_redis_waiter_init(bw_test_redis_waiter_t *w, int expected, bw_runtime_t *rt);
/* Free the kept reply and error and the lock. */
void bw_test_redis_waiter_fini(bw_test_redis_waiter_t *w);
/* A bw_redis_cb; arg is the waiter. Takes the reply. */
void bw_test_redis_waiter_cb(bw_redis_reply_t *reply, const bw_error_t *err, void *arg);
/* Until the expected callbacks have run, for at most secs (real time).
 * True if they all did. */
bool bw_test_redis_waiter_wait(bw_test_redis_waiter_t *w, int secs);

/* Poll (every ms, at most secs) until c is in state st; on a timeout,
 * print the state and connect counters to stderr and return false.
 * Reconnects run on real-time backoff, hence polling. */
bool bw_test_redis_wait_state(bw_redis_t *c, bw_redis_state_t st, int secs);
/* Poll likewise until n commands are in flight on c. */
bool bw_test_redis_wait_in_flight(bw_redis_t *c, uint64_t n, int secs);

/* A client on rt, with the options in extra (NULL: defaults). Unset, the
 * address is server's TCP port and the reconnect backoff 10..50 ms. Fails
 * the test (the error on stderr) if bw_redis_new does. */
bw_redis_t *bw_test_redis_client_new(bw_runtime_t *rt, const bw_test_redis_t *server,
                                     const bw_redis_opts_t *extra);

/* Group fixture: start *server and a 2-worker runtime on the real clock.
 * 0, or -1 if either fails. Teardown frees the runtime, then the server. */
int bw_test_redis_group_setup(bw_test_redis_t *server, bw_runtime_t **rt);
int bw_test_redis_group_teardown(bw_test_redis_t *server, bw_runtime_t *rt);

#endif
