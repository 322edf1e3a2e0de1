/* The real clock (clock.c): bw__mono_ns agrees with CLOCK_MONOTONIC and
 * never goes back on a thread, before and after it switches to TSC
 * extrapolation (on x86-64 with the kernel's clocksource on the TSC). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "runtime/rt.h"

static uint64_t mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reads for `ns` of real time; returns the largest gap to CLOCK_MONOTONIC
 * over samples bracketed tightly by two CLOCK_MONOTONIC reads (a sample
 * with a preemption inside its bracket says nothing), and fails if a
 * reading ever goes back. */
static uint64_t worst_gap(uint64_t ns) {
  uint64_t end = mono() + ns, worst = 0, last = 0;
  long tight = 0;
  while (mono() < end) {
    uint64_t a = mono();
    uint64_t x = bw__mono_ns();
    uint64_t b = mono();
    assert_true(x >= last);
    last = x;
    if (b - a > 2000) continue;
    tight++;
    uint64_t mid = a + (b - a) / 2;
    uint64_t gap = x > mid ? x - mid : mid - x;
    if (gap > worst) worst = gap;
  }
  assert_true(tight > 100);
  return worst;
}

static void *reader(void *arg) {
  *(uint64_t *)arg = worst_gap(50000000);
  return NULL;
}

static void test_agrees_with_monotonic(void **state) {
  (void)state;
  /* the first 20 ms calibrate; then three threads read at once (they move
   * between the two cores) */
  uint64_t before = worst_gap(30000000);
  assert_true(before < 100000);
  print_message("tsc extrapolation: %s\n", bw__mono_uses_tsc() ? "on" : "off");
  pthread_t t[3];
  uint64_t gap[3];
  for (int i = 0; i < 3; i++) assert_int_equal(pthread_create(&t[i], NULL, reader, &gap[i]), 0);
  for (int i = 0; i < 3; i++) {
    pthread_join(t[i], NULL);
    /* far below the timers' 1 ms resolution (measured: under 200 ns) */
    assert_true(gap[i] < 100000);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_agrees_with_monotonic),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
