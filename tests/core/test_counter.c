/* Sharded counters (src/core/counter.h): a shard owned by one thread is
 * added to with a plain load and store, so two threads owning the same
 * shard at once would lose counts. These tests count exactly. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/counter.h"

#define ADDS 200000

static bw__counter_t counter;
static pthread_barrier_t start_line, finish_line;

typedef struct adder {
  pthread_t thread;
  unsigned shard;
} adder_t;

static void *add_many(void *arg) {
  adder_t *a = arg;
  pthread_barrier_wait(&start_line); /* all threads add at the same time */
  for (int i = 0; i < ADDS; i++) bw__counter_add(&counter, 1);
  a->shard = bw__counter_shard();
  pthread_barrier_wait(&finish_line); /* and all still own their shards */
  return NULL;
}

/* More threads than shards: 7 own one each, the rest share the last. */
static void run_adders(int n, adder_t *a) {
  memset(&counter, 0, sizeof counter);
  pthread_barrier_init(&start_line, NULL, (unsigned)n);
  pthread_barrier_init(&finish_line, NULL, (unsigned)n);
  for (int i = 0; i < n; i++) assert_int_equal(pthread_create(&a[i].thread, NULL, add_many, &a[i]), 0);
  for (int i = 0; i < n; i++) pthread_join(a[i].thread, NULL);
  pthread_barrier_destroy(&start_line);
  pthread_barrier_destroy(&finish_line);
}

static void test_concurrent_adds_are_exact(void **state) {
  (void)state;
  enum { N = 12 };
  adder_t a[N];
  run_adders(N, a);
  assert_int_equal(bw__counter_sum(&counter), (uint64_t)N * ADDS);
  /* every owned shard had one owner: no two threads alive together
   * reported the same owned shard */
  int owners[BW__COUNTER_SHARDS] = {0};
  for (int i = 0; i < N; i++) {
    assert_true(a[i].shard < BW__COUNTER_SHARDS);
    owners[a[i].shard]++;
  }
  for (unsigned s = 0; s < BW__COUNTER_SHARED; s++) assert_true(owners[s] <= 1);
}

/* Shards of exited threads are given back: later threads own them again
 * instead of all piling onto the shared one. */
static void test_shards_are_reused_after_threads_exit(void **state) {
  (void)state;
  for (int round = 0; round < 20; round++) {
    enum { N = 4 }; /* fewer than the owned shards, minus this thread's */
    adder_t a[N];
    run_adders(N, a);
    assert_int_equal(bw__counter_sum(&counter), (uint64_t)N * ADDS);
    for (int i = 0; i < N; i++) assert_int_not_equal(a[i].shard, BW__COUNTER_SHARED);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrent_adds_are_exact),
      cmocka_unit_test(test_shards_are_reused_after_threads_exit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
