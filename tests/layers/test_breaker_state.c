/* Circuit breaker decision core: every rule with explicit now_ns. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "layers/breaker_state.h"
#include "support/layer_harness.h"

#define MS (UINT64_C(1000000))
#define SEC (UINT64_C(1000000000))
#define T0 (SEC)

static bw__breaker_t *mk(const bw_circuit_breaker_opts_t *o) {
  bw__breaker_cfg_t cfg;
  assert_int_equal(bw__breaker_cfg_from_opts(&cfg, o), 0);
  bw__breaker_t *b = malloc(sizeof *b);
  assert_non_null(b);
  assert_int_equal(bw__breaker_init(b, &cfg), 0);
  return b;
}
static void rm(bw__breaker_t *b) {
  bw__breaker_destroy(b);
  free(b);
}

/* One whole call: acquire, and if admitted record outcome. Returns rc. */
static int call(bw__breaker_t *b, uint64_t now, bw__outcome_t o, uint64_t dur) {
  uint64_t t;
  int rc = bw__breaker_acquire(b, now, &t, NULL, NULL);
  if (rc == BW__BRK_OK) bw__breaker_record(b, t, o, dur, now + dur, NULL);
  return rc;
}
#define OK_ BW__OUTCOME_SUCCESS
#define FAIL_ BW__OUTCOME_FAILURE
#define IGN_ BW__OUTCOME_IGNORED

static bw_breaker_state_t st(bw__breaker_t *b, uint64_t now) { return bw__breaker_state(b, now, NULL); }

static void test_defaults_and_validation(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  assert_int_equal(o.window, BW_BREAKER_WINDOW_COUNT);
  assert_int_equal(o.window_size, 100);
  assert_int_equal(o.minimum_calls, 100);
  assert_true(o.failure_rate_threshold == 50);
  assert_true(o.slow_call_rate_threshold == 100);
  assert_int_equal(o.slow_call_duration_ms, 60000);
  assert_int_equal(o.open_duration_ms, 60000);
  assert_int_equal(o.half_open_calls, 10);
  bw__breaker_cfg_t c;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, NULL), 0);
  bw_circuit_breaker_opts_t bad = o;
  bad.window_size = 0;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  bad = o;
  bad.failure_rate_threshold = 0;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  bad = o;
  bad.failure_rate_threshold = 101;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  bad = o;
  bad.half_open_calls = 0;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  bad = o;
  bad.open_duration_multiplier = 0.5;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  bad = o;
  bad.window = BW_BREAKER_WINDOW_TIME;
  bad.window_buckets = 0;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  bad = o;
  bad.window = (bw_breaker_window_t)9;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &bad), BW__BRK_EINVAL);
  assert_string_equal(bw_breaker_state_name(BW_BREAKER_HALF_OPEN), "half_open");
  assert_string_equal(bw_breaker_state_name(BW_BREAKER_FORCED_CLOSED), "forced_closed");
}

static void test_consecutive_window(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.consecutive_failures = 3;
  o.open_duration_ms = 1000;
  o.half_open_calls = 2;
  bw__breaker_t *b = mk(&o);
  uint64_t now = T0;
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(call(b, now, OK_, 0), 0); /* streak broken */
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(call(b, now, IGN_, 0), 0); /* ignored: streak kept */
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  bw__breaker_change_t chg = {0};
  uint64_t t;
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), 0);
  bw__breaker_record(b, t, FAIL_, 0, now, &chg);
  assert_int_equal(chg.n, 1);
  assert_int_equal(chg.t[0].from, BW_BREAKER_CLOSED);
  assert_int_equal(chg.t[0].to, BW_BREAKER_OPEN);
  assert_int_equal(chg.t[0].seq, 1);
  assert_int_equal(st(b, now), BW_BREAKER_OPEN);
  uint64_t ra = 0;
  assert_int_equal(bw__breaker_acquire(b, now + 300 * MS, &t, &ra, NULL), BW__BRK_REJECTED);
  assert_int_equal(ra, 700 * MS);
  /* Half-open after 1 s; one failing probe re-opens at once. */
  memset(&chg, 0, sizeof chg);
  assert_int_equal(bw__breaker_acquire(b, now + SEC, &t, NULL, &chg), 0);
  assert_int_equal(chg.n, 1);
  assert_int_equal(chg.t[0].to, BW_BREAKER_HALF_OPEN);
  bw__breaker_record(b, t, FAIL_, 0, now + SEC, NULL);
  assert_int_equal(st(b, now + SEC), BW_BREAKER_OPEN);
  /* Half-open again; two successes close it. */
  now += 2 * SEC;
  assert_int_equal(call(b, now, OK_, 0), 0);
  assert_int_equal(st(b, now), BW_BREAKER_HALF_OPEN);
  assert_int_equal(call(b, now, OK_, 0), 0);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  /* Fresh streak needed after closing. */
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  rm(b);
}

static void test_count_window_rate_and_min_calls(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window_size = 10;
  o.minimum_calls = 6;
  o.failure_rate_threshold = 50;
  bw__breaker_t *b = mk(&o);
  /* 5 failures in a row: rate 100% but under minimum calls. */
  for (int i = 0; i < 5; i++) assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED);
  bw_breaker_stats_t s;
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.window_calls, 5);
  assert_true(s.failure_rate == 100.0);
  /* The 6th call (a success) reaches minimum calls at 5/6 >= 50%: opens. */
  assert_int_equal(call(b, T0, OK_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  rm(b);

  /* Sliding: old failures fall out of the last 10 calls. */
  b = mk(&o);
  for (int i = 0; i < 6; i++) assert_int_equal(call(b, T0, OK_, 0), 0);
  for (int i = 0; i < 4; i++) assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED); /* 40% */
  for (int i = 0; i < 10; i++) assert_int_equal(call(b, T0, OK_, 0), 0);
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.window_calls, 10);
  assert_true(s.failure_rate == 0.0);
  /* 4 failures out of 10 = 40%: stays closed; the 5th (50%) trips. */
  for (int i = 0; i < 4; i++) assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED);
  bw__breaker_stats(b, T0, &s);
  assert_true(s.failure_rate == 40.0);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  rm(b);

  /* minimum_calls above the window size is capped at the window (r4j). */
  o.window_size = 4;
  o.minimum_calls = 100;
  b = mk(&o);
  for (int i = 0; i < 3; i++) assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  rm(b);
}

static void test_time_window(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_TIME;
  o.window_ms = 10000;
  o.window_buckets = 10; /* 1 s buckets */
  o.minimum_calls = 4;
  o.failure_rate_threshold = 50;
  bw__breaker_t *b = mk(&o);
  uint64_t base = 100 * SEC; /* bucket boundary */
  /* 3 failures at t=0 s, then successes later: failures age out. */
  for (int i = 0; i < 3; i++) assert_int_equal(call(b, base, FAIL_, 0), 0);
  assert_int_equal(st(b, base), BW_BREAKER_CLOSED); /* 3 < minimum 4 */
  bw_breaker_stats_t s;
  bw__breaker_stats(b, base + 9 * SEC, &s);
  assert_int_equal(s.window_calls, 3);
  bw__breaker_stats(b, base + 10 * SEC, &s);
  assert_int_equal(s.window_calls, 0); /* the t=0 bucket left the window */
  for (int i = 0; i < 3; i++) assert_int_equal(call(b, base + 10 * SEC, OK_, 0), 0);
  assert_int_equal(call(b, base + 10 * SEC, FAIL_, 0), 0); /* 1/4 */
  assert_int_equal(st(b, base + 10 * SEC), BW_BREAKER_CLOSED);
  /* 5 s later: 2 more failures -> 3/6 = 50% trips. */
  assert_int_equal(call(b, base + 15 * SEC, FAIL_, 0), 0);
  assert_int_equal(st(b, base + 15 * SEC), BW_BREAKER_CLOSED);
  assert_int_equal(call(b, base + 15 * SEC, FAIL_, 0), 0);
  assert_int_equal(st(b, base + 15 * SEC), BW_BREAKER_OPEN);
  rm(b);

  /* A jump far past the window clears every bucket. */
  b = mk(&o);
  for (int i = 0; i < 3; i++) assert_int_equal(call(b, base, FAIL_, 0), 0);
  assert_int_equal(call(b, base + 1000 * SEC, FAIL_, 0), 0);
  assert_int_equal(st(b, base + 1000 * SEC), BW_BREAKER_CLOSED);
  bw__breaker_stats(b, base + 1000 * SEC, &s);
  assert_int_equal(s.window_calls, 1);
  rm(b);
}

static void test_slow_calls(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window_size = 4;
  o.minimum_calls = 4;
  o.slow_call_duration_ms = 100;
  o.slow_call_rate_threshold = 50;
  bw__breaker_t *b = mk(&o);
  assert_int_equal(call(b, T0, OK_, 100 * MS), 0); /* exactly 100 ms: not slow */
  assert_int_equal(call(b, T0, OK_, 101 * MS), 0); /* slow */
  assert_int_equal(call(b, T0, OK_, 1 * MS), 0);
  bw_breaker_stats_t s;
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.slow_calls, 1);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED);
  assert_int_equal(call(b, T0, OK_, 5 * SEC), 0); /* 2/4 slow = 50% */
  assert_int_equal(st(b, T0 + 6 * SEC), BW_BREAKER_OPEN);
  rm(b);
  /* slow_call_rate_threshold > 100 disables the slow rule. */
  o.slow_call_rate_threshold = 101;
  b = mk(&o);
  for (int i = 0; i < 8; i++) assert_int_equal(call(b, T0, OK_, 5 * SEC), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED);
  rm(b);
}

static bw__breaker_t *tripped(bw_circuit_breaker_opts_t *o) {
  o->window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o->consecutive_failures = 1;
  bw__breaker_t *b = mk(o);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  return b;
}

static void test_half_open_exact_probes(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.open_duration_ms = 1000;
  o.half_open_calls = 3;
  o.failure_rate_threshold = 50;
  bw__breaker_t *b = tripped(&o);
  /* switch to rate-based half-open evaluation: re-make with COUNT window */
  rm(b);
  o.window = BW_BREAKER_WINDOW_COUNT;
  o.window_size = 1;
  o.minimum_calls = 1;
  b = mk(&o);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  uint64_t now = T0 + SEC;
  uint64_t tk[3], t;
  for (int i = 0; i < 3; i++) assert_int_equal(bw__breaker_acquire(b, now, &tk[i], NULL, NULL), 0);
  uint64_t ra = 77;
  assert_int_equal(bw__breaker_acquire(b, now, &t, &ra, NULL), BW__BRK_REJECTED_HALF_OPEN);
  assert_int_equal(ra, 0);
  bw_breaker_stats_t s;
  bw__breaker_stats(b, now, &s);
  assert_int_equal(s.half_open_in_flight, 3);
  /* A cancelled probe gives its slot back: one more probe may go. */
  bw__breaker_record(b, tk[0], IGN_, 0, now, NULL);
  assert_int_equal(bw__breaker_acquire(b, now, &tk[0], NULL, NULL), 0);
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), BW__BRK_REJECTED_HALF_OPEN);
  /* Results: 1 failure of 3 (33%) -> closes once all three are in. */
  bw__breaker_record(b, tk[0], OK_, 0, now, NULL);
  bw__breaker_record(b, tk[1], FAIL_, 0, now, NULL);
  assert_int_equal(st(b, now), BW_BREAKER_HALF_OPEN);
  /* finished probes keep their slots: still no new probe */
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), BW__BRK_REJECTED_HALF_OPEN);
  bw__breaker_change_t chg = {0};
  bw__breaker_record(b, tk[2], OK_, 0, now, &chg);
  assert_int_equal(chg.n, 1);
  assert_int_equal(chg.t[0].from, BW_BREAKER_HALF_OPEN);
  assert_int_equal(chg.t[0].to, BW_BREAKER_CLOSED);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  /* Again: two failures of three already reach 50% -> re-open early. */
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  now += SEC;
  for (int i = 0; i < 3; i++) assert_int_equal(bw__breaker_acquire(b, now, &tk[i], NULL, NULL), 0);
  bw__breaker_record(b, tk[0], FAIL_, 0, now, NULL);
  assert_int_equal(st(b, now), BW_BREAKER_HALF_OPEN);
  bw__breaker_record(b, tk[1], FAIL_, 0, now, NULL);
  assert_int_equal(st(b, now), BW_BREAKER_OPEN);
  /* The third probe's late result belongs to a finished period: ignored. */
  bw__breaker_record(b, tk[2], OK_, 0, now, NULL);
  assert_int_equal(st(b, now), BW_BREAKER_OPEN);
  rm(b);
}

static void test_growing_open_duration(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.open_duration_ms = 1000;
  o.open_duration_multiplier = 2;
  o.max_open_duration_ms = 5000;
  o.half_open_calls = 1;
  bw__breaker_t *b = tripped(&o);
  uint64_t now = T0;
  uint64_t expect[] = {1000, 2000, 4000, 5000, 5000};
  uint64_t t, ra;
  for (int i = 0; i < 5; i++) {
    uint64_t d = expect[i] * MS;
    assert_int_equal(bw__breaker_acquire(b, now + d - 1, &t, &ra, NULL), BW__BRK_REJECTED);
    assert_int_equal(ra, 1);
    now += d;
    assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), 0); /* probe */
    bw__breaker_record(b, t, FAIL_, 0, now, NULL);                   /* re-open, grown */
    assert_int_equal(st(b, now), BW_BREAKER_OPEN);
  }
  /* Closing resets the growth. */
  now += 5000 * MS;
  assert_int_equal(call(b, now, OK_, 0), 0);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  assert_int_equal(call(b, now, FAIL_, 0), 0);
  assert_int_equal(bw__breaker_acquire(b, now + 999 * MS, &t, &ra, NULL), BW__BRK_REJECTED);
  assert_int_equal(ra, 1 * MS);
  assert_int_equal(bw__breaker_acquire(b, now + 1000 * MS, &t, NULL, NULL), 0);
  rm(b);
}

/* Re-opening costs the same at the 200,000th time as at the first (the
 * growth was a loop of `reopens` steps under the lock: quadratic over a
 * long outage), and the duration is open * multiplier^reopens. */
static void test_many_reopens(void **state) {
  (void)state;
  for (int grow = 0; grow < 2; grow++) {
    bw_circuit_breaker_opts_t o;
    bw_circuit_breaker_opts_init(&o);
    o.open_duration_ms = 1;
    o.open_duration_multiplier = grow ? 1.00001 : 1;
    o.half_open_calls = 1;
    bw__breaker_t *b = tripped(&o);
    uint64_t now = T0, d = MS, t, ra;
    const uint32_t n = 200000;
    for (uint32_t i = 1; i <= n; i++) {
      now += d;
      assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), 0); /* probe */
      bw__breaker_record(b, t, FAIL_, 0, now, NULL);                   /* re-open */
      d = grow ? (uint64_t)((double)MS * pow(1.00001, (double)i)) : MS;
    }
    assert_int_equal(bw__breaker_acquire(b, now + d - 1, &t, &ra, NULL), BW__BRK_REJECTED);
    assert_int_equal(ra, 1);
    assert_int_equal(bw__breaker_acquire(b, now + d, &t, NULL, NULL), 0);
    rm(b);
  }
}

/* Probes slower than the half-open max wait (the open duration by
 * default) are slow, not lost: the period ends by its max wait and the
 * breaker re-opens, but their answers count in the next half-open period.
 * Before, a healthy backend slower than the open duration kept the breaker
 * open for good (each period's answer arrived stale). */
static void test_slow_probes_still_decide(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.open_duration_ms = 100;
  o.half_open_calls = 1;
  bw__breaker_t *b = tripped(&o); /* open until T0 + 100 ms */
  uint64_t now = T0 + 100 * MS, p, t;
  assert_int_equal(bw__breaker_acquire(b, now, &p, NULL, NULL), 0); /* answers 150 ms later */
  assert_int_equal(st(b, now + 100 * MS), BW_BREAKER_OPEN);         /* max wait: re-open */
  bw__breaker_record(b, p, OK_, 150 * MS, now + 150 * MS, NULL);
  now += 200 * MS; /* open for 100 ms; then half-open, and the late success decides */
  bw__breaker_change_t chg = {0};
  assert_int_equal(bw__breaker_state(b, now, &chg), BW_BREAKER_CLOSED);
  assert_int_equal(chg.n, 2);
  assert_int_equal(chg.t[0].to, BW_BREAKER_HALF_OPEN);
  assert_int_equal(chg.t[1].to, BW_BREAKER_CLOSED);
  rm(b);

  /* Two slots, one slow success: the next period lets in one probe more. */
  o.half_open_calls = 2;
  b = tripped(&o);
  now = T0 + 100 * MS;
  uint64_t q;
  assert_int_equal(bw__breaker_acquire(b, now, &p, NULL, NULL), 0);
  assert_int_equal(bw__breaker_acquire(b, now, &q, NULL, NULL), 0);
  assert_int_equal(st(b, now + 100 * MS), BW_BREAKER_OPEN);
  bw__breaker_record(b, p, OK_, 0, now + 150 * MS, NULL);
  now += 200 * MS;
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), 0);
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), BW__BRK_REJECTED_HALF_OPEN);
  /* the other old probe now answers late too: it is this period's second */
  bw__breaker_record(b, q, OK_, 0, now, NULL);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  bw__breaker_record(b, t, OK_, 0, now, NULL); /* stale now: no effect */
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  rm(b);

  /* A slow failure counts as well: the next period re-opens at once. */
  o.half_open_calls = 1;
  b = tripped(&o);
  now = T0 + 100 * MS;
  assert_int_equal(bw__breaker_acquire(b, now, &p, NULL, NULL), 0);
  assert_int_equal(st(b, now + 100 * MS), BW_BREAKER_OPEN);
  bw__breaker_record(b, p, FAIL_, 0, now + 150 * MS, NULL);
  now += 200 * MS;
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), BW__BRK_REJECTED);
  assert_int_equal(st(b, now), BW_BREAKER_OPEN);
  rm(b);
}

static void test_half_open_never_stuck(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.open_duration_ms = 1000;
  o.half_open_calls = 1;
  o.half_open_max_wait_ms = 0; /* = open duration */
  bw__breaker_t *b = tripped(&o);
  uint64_t now = T0 + SEC, lost, t;
  assert_int_equal(bw__breaker_acquire(b, now, &lost, NULL, NULL), 0); /* never reports */
  assert_int_equal(bw__breaker_acquire(b, now + 999 * MS, &t, NULL, NULL),
                   BW__BRK_REJECTED_HALF_OPEN);
  assert_int_equal(st(b, now + 999 * MS), BW_BREAKER_HALF_OPEN);
  /* After the max wait the breaker re-opens rather than stay half-open. */
  bw__breaker_change_t chg = {0};
  assert_int_equal(bw__breaker_state(b, now + SEC, &chg), BW_BREAKER_OPEN);
  assert_int_equal(chg.n, 1);
  assert_int_equal(chg.t[0].to, BW_BREAKER_OPEN);
  /* ... and half-opens again later with a fresh slot. */
  now += 2 * SEC;
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), 0);
  bw__breaker_record(b, t, OK_, 0, now, NULL);
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  bw__breaker_record(b, lost, OK_, 0, now, NULL); /* never reported till now: stale */
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  rm(b);
  /* Slots free (a probe returned) and no traffic: no max-wait re-open. */
  o.half_open_calls = 2;
  b = tripped(&o);
  now = T0 + SEC;
  assert_int_equal(bw__breaker_acquire(b, now, &t, NULL, NULL), 0);
  assert_int_equal(st(b, now + 10 * SEC), BW_BREAKER_HALF_OPEN);
  bw__breaker_record(b, t, OK_, 0, now + 10 * SEC, NULL);
  assert_int_equal(call(b, now + 10 * SEC, OK_, 0), 0);
  assert_int_equal(st(b, now + 10 * SEC), BW_BREAKER_CLOSED);
  rm(b);
}

static void test_stale_tickets(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.consecutive_failures = 2;
  o.open_duration_ms = 1000;
  o.half_open_calls = 1;
  bw__breaker_t *b = mk(&o);
  uint64_t early, t;
  assert_int_equal(bw__breaker_acquire(b, T0, &early, NULL, NULL), 0);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  /* A call admitted while closed finishes after the trip: ignored (its
   * failure must not count toward anything, its success must not close). */
  bw__breaker_record(b, early, OK_, 0, T0, NULL);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  assert_int_equal(bw__breaker_acquire(b, T0 + SEC, &t, NULL, NULL), 0);
  bw__breaker_record(b, early, FAIL_, 0, T0 + SEC, NULL); /* still stale */
  assert_int_equal(st(b, T0 + SEC), BW_BREAKER_HALF_OPEN);
  bw__breaker_record(b, t, OK_, 0, T0 + SEC, NULL);
  assert_int_equal(st(b, T0 + SEC), BW_BREAKER_CLOSED);
  rm(b);
}

static void test_force_and_disable(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.consecutive_failures = 1;
  o.open_duration_ms = 1000;
  bw__breaker_t *b = mk(&o);
  uint64_t t;
  assert_int_equal(bw__breaker_force(b, BW_BREAKER_HALF_OPEN, T0, NULL), BW__BRK_EINVAL);
  bw__breaker_change_t chg = {0};
  assert_int_equal(bw__breaker_force(b, BW_BREAKER_FORCED_OPEN, T0, &chg), 0);
  assert_int_equal(chg.t[0].to, BW_BREAKER_FORCED_OPEN);
  /* Forced open never half-opens by itself. */
  assert_int_equal(bw__breaker_acquire(b, T0 + 3600 * SEC, &t, NULL, NULL),
                   BW__BRK_REJECTED_FORCED);
  assert_int_equal(st(b, T0 + 3600 * SEC), BW_BREAKER_FORCED_OPEN);
  /* Forced closed: passes and records, never trips. */
  assert_int_equal(bw__breaker_force(b, BW_BREAKER_FORCED_CLOSED, T0, NULL), 0);
  for (int i = 0; i < 10; i++) assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_FORCED_CLOSED);
  bw_breaker_stats_t s;
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.consecutive_failures, 10);
  /* Disabled: passes, records nothing. */
  assert_int_equal(bw__breaker_force(b, BW_BREAKER_DISABLED, T0, NULL), 0);
  uint64_t fails = s.failures;
  for (int i = 0; i < 10; i++) assert_int_equal(call(b, T0, FAIL_, 0), 0);
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.failures, fails);
  assert_int_equal(s.state, BW_BREAKER_DISABLED);
  /* Manual trip and reset. */
  assert_int_equal(bw__breaker_force(b, BW_BREAKER_OPEN, T0, NULL), 0);
  uint64_t ra;
  assert_int_equal(bw__breaker_acquire(b, T0, &t, &ra, NULL), BW__BRK_REJECTED);
  assert_int_equal(ra, SEC);
  assert_int_equal(bw__breaker_force(b, BW_BREAKER_CLOSED, T0, NULL), 0);
  assert_int_equal(call(b, T0, OK_, 0), 0);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN);
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.transitions, 6);
  rm(b);
}

static void test_store_vtable(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.consecutive_failures = 1;
  bw__breaker_cfg_t c;
  assert_int_equal(bw__breaker_cfg_from_opts(&c, &o), 0);
  bw__breaker_store_t *s;
  assert_int_equal(bw__breaker_store_mem_new(&c, &s), 0);
  uint64_t t;
  assert_int_equal(s->vt->acquire(s, T0, &t, NULL, NULL), 0);
  s->vt->record(s, t, FAIL_, 0, T0, NULL);
  assert_int_equal(s->vt->state(s, T0, NULL), BW_BREAKER_OPEN);
  assert_int_equal(s->vt->force(s, BW_BREAKER_CLOSED, T0, NULL), 0);
  bw_breaker_stats_t st_;
  s->vt->stats(s, T0, &st_);
  assert_int_equal(st_.state, BW_BREAKER_CLOSED);
  s->vt->destroy(s);
}


/* The quiet fast path (no lock for successes into a window full of
 * successes) keeps the window exact and the counters complete. */
static void test_quiet_fast_path(void **state) {
  (void)state;
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window_size = 4;
  o.minimum_calls = 4;
  o.failure_rate_threshold = 50;
  o.slow_call_duration_ms = 100;
  o.slow_call_rate_threshold = 50;
  bw__breaker_t *b = mk(&o);
  for (int i = 0; i < 3; i++) assert_int_equal(call(b, T0, OK_, 0), 0);
  assert_false(atomic_load(&b->quiet)); /* ring not full yet */
  assert_int_equal(call(b, T0, OK_, 0), 0);
  assert_true(atomic_load(&b->quiet));
  for (int i = 0; i < 100; i++) assert_int_equal(call(b, T0, OK_, 0), 0);
  assert_int_equal(bw__counter_sum(&b->n_quiet), 100);
  /* A slow success is not quiet: it goes into the window. */
  assert_int_equal(call(b, T0, OK_, 200 * MS), 0);
  assert_false(atomic_load(&b->quiet));
  bw_breaker_stats_t s;
  bw__breaker_stats(b, T0, &s);
  assert_int_equal(s.successes, 105);
  assert_int_equal(s.calls_permitted, 105);
  assert_int_equal(s.window_calls, 4);
  assert_true(s.slow_call_rate == 25.0);
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_CLOSED); /* 1 failure of 4 */
  assert_int_equal(call(b, T0, FAIL_, 0), 0);
  assert_int_equal(st(b, T0), BW_BREAKER_OPEN); /* 2 of 4 */
  rm(b);
}

/* ---- concurrency: no stampede, never stuck -------------------------------- */
#define GENS 4096 /* probes in flight counted per half-open period (generation) */

typedef struct {
  bw__breaker_t *b;
  _Atomic uint64_t *clock;
  _Atomic int *probes_in_flight, *max_probes;
  int iters;
  unsigned seed;
} conc_t;

static void *conc_worker(void *arg) {
  conc_t *c = arg;
  for (int i = 0; i < c->iters; i++) {
    uint64_t now = atomic_fetch_add(c->clock, 1 * MS) + 1 * MS;
    uint64_t t;
    if (bw__breaker_acquire(c->b, now, &t, NULL, NULL) != 0) continue;
    bool probe = (t & 7) == BW_BREAKER_HALF_OPEN;
    _Atomic int *slot = &c->probes_in_flight[(t >> 3) % GENS];
    if (probe) {
      int n = atomic_fetch_add(slot, 1) + 1;
      int m = atomic_load(c->max_probes);
      while (n > m && !atomic_compare_exchange_weak(c->max_probes, &m, n)) {
      }
    }
    unsigned r = (unsigned)rand_r(&c->seed) % 10;
    bw__outcome_t o = r < 5 ? FAIL_ : r < 6 ? IGN_ : OK_;
    if (probe) atomic_fetch_sub(slot, 1);
    bw__breaker_record(c->b, t, o, 0, atomic_load(c->clock), NULL);
  }
  return NULL;
}

static void test_concurrent_no_stampede_never_stuck(void **state) {
  (void)state;
  enum { THREADS = 4, PROBES = 3 };
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window_size = 20;
  o.minimum_calls = 10;
  o.failure_rate_threshold = 50;
  o.open_duration_ms = 50;
  o.half_open_calls = PROBES;
  bw__breaker_t *b = mk(&o);
  _Atomic uint64_t clock = T0;
  static _Atomic int in_flight[GENS];
  _Atomic int max_probes = 0;
  conc_t c[THREADS];
  pthread_t th[THREADS];
  int iters = (int)(50000 * lh_scale());
  if (iters < 500) iters = 500;
  for (int i = 0; i < THREADS; i++) {
    c[i] = (conc_t){b, &clock, in_flight, &max_probes, iters, (unsigned)i * 7919u + 1};
    assert_int_equal(pthread_create(&th[i], NULL, conc_worker, &c[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  assert_true(atomic_load(&max_probes) <= PROBES);
  bw_breaker_stats_t s;
  bw__breaker_stats(b, atomic_load(&clock), &s);
  assert_true(s.transitions > 2); /* it did cycle */
  /* Everything reported: from any state, healthy traffic closes it. */
  uint64_t now = atomic_load(&clock) + 3600 * SEC;
  for (int i = 0; i < 100 && st(b, now) != BW_BREAKER_CLOSED; i++) {
    (void)call(b, now, OK_, 0);
    now += SEC;
  }
  assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  rm(b);
}

/* Many threads race for the probes of one half-open period. */
typedef struct {
  bw__breaker_t *b;
  pthread_barrier_t *bar;
  uint64_t now;
  int admitted;
  uint64_t ticket;
} race_t;

static void *race_worker(void *arg) {
  race_t *r = arg;
  pthread_barrier_wait(r->bar);
  uint64_t t;
  if (bw__breaker_acquire(r->b, r->now, &t, NULL, NULL) == 0) {
    r->admitted = 1;
    r->ticket = t;
  }
  return NULL;
}

static void test_half_open_race(void **state) {
  (void)state;
  enum { THREADS = 16, PROBES = 2 };
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  o.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.consecutive_failures = 1;
  o.open_duration_ms = 100;
  o.half_open_calls = PROBES;
  int rounds = (int)(50 * lh_scale());
  if (rounds < 5) rounds = 5;
  bw__breaker_t *b = mk(&o);
  uint64_t now = T0;
  for (int round = 0; round < rounds; round++) {
    assert_int_equal(bw__breaker_force(b, BW_BREAKER_OPEN, now, NULL), 0);
    now += 100 * MS;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, THREADS);
    race_t r[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
      r[i] = (race_t){b, &bar, now, 0, 0};
      pthread_create(&th[i], NULL, race_worker, &r[i]);
    }
    int admitted = 0;
    for (int i = 0; i < THREADS; i++) {
      pthread_join(th[i], NULL);
      admitted += r[i].admitted;
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(admitted, PROBES);
    for (int i = 0; i < THREADS; i++)
      if (r[i].admitted) bw__breaker_record(b, r[i].ticket, OK_, 0, now, NULL);
    assert_int_equal(st(b, now), BW_BREAKER_CLOSED);
  }
  rm(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_defaults_and_validation),
      cmocka_unit_test(test_consecutive_window),
      cmocka_unit_test(test_count_window_rate_and_min_calls),
      cmocka_unit_test(test_time_window),
      cmocka_unit_test(test_slow_calls),
      cmocka_unit_test(test_half_open_exact_probes),
      cmocka_unit_test(test_growing_open_duration),
      cmocka_unit_test(test_many_reopens),
      cmocka_unit_test(test_slow_probes_still_decide),
      cmocka_unit_test(test_half_open_never_stuck),
      cmocka_unit_test(test_stale_tickets),
      cmocka_unit_test(test_force_and_disable),
      cmocka_unit_test(test_store_vtable),
      cmocka_unit_test(test_quiet_fast_path),
      cmocka_unit_test(test_concurrent_no_stampede_never_stuck),
      cmocka_unit_test(test_half_open_race),
  };
  return cmocka_run_group_tests_name("breaker_state", tests, NULL, NULL);
}
