/* Timer wheel: ordering, big jumps, cancel, re-insert, 100k timers and a
 * random property test against a sorted-array model. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "runtime/timer_wheel.h"

typedef struct tentry {
  bw__timer_entry_t e; /* first: container_of is a cast */
  int id;
  uint64_t seq; /* insertion order of the last insert (model) */
  int fired;
} tentry_t;

typedef struct fired_log {
  int *ids;
  size_t n, cap;
  uint64_t *when; /* wheel time at fire */
  bw__timer_wheel_t *w;
} fired_log_t;

static double test_scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static void log_fire(bw__timer_entry_t *e, void *arg) {
  fired_log_t *l = arg;
  tentry_t *t = (tentry_t *)e;
  assert_false(bw__timer_entry_armed(e));
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 64;
    l->ids = realloc(l->ids, l->cap * sizeof *l->ids);
    assert_non_null(l->ids);
  }
  l->ids[l->n++] = t->id;
  t->fired++;
}

static void log_free(fired_log_t *l) {
  free(l->ids);
  memset(l, 0, sizeof *l);
}

static void test_order_within_tick(void **state) {
  (void)state;
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 1000);
  tentry_t t[8];
  /* ids 0..7 inserted in this order; deadlines: several on tick 1100,
   * some earlier in the same 64 ms block, and one inserted before a cascade. */
  uint64_t dl[8] = {1100, 1100, 1070, 1100, 1070, 1099, 1100, 1070};
  for (int i = 0; i < 8; i++) {
    bw__timer_entry_init(&t[i].e);
    t[i].id = i;
    t[i].fired = 0;
  }
  for (int i = 0; i < 5; i++) bw__timer_wheel_insert(&w, &t[i].e, dl[i]);
  /* Move time into the block of 1100 (cascades 1070/1100 to level 0)... */
  fired_log_t l = {0};
  assert_int_equal(bw__timer_wheel_advance(&w, 1065, log_fire, &l), 0);
  /* ...then add more with the same deadlines: they must come after. */
  for (int i = 5; i < 8; i++) bw__timer_wheel_insert(&w, &t[i].e, dl[i]);
  assert_int_equal(bw__timer_wheel_count(&w), 8);
  assert_true(bw__timer_wheel_next_expiry(&w) <= 1070);
  assert_int_equal(bw__timer_wheel_advance(&w, 1100, log_fire, &l), 8);
  int want[8] = {2, 4, 7, 5, 0, 1, 3, 6};
  for (int i = 0; i < 8; i++) assert_int_equal(l.ids[i], want[i]);
  assert_int_equal(bw__timer_wheel_count(&w), 0);
  assert_int_equal(bw__timer_wheel_next_expiry(&w), BW__TIMER_NEVER);
  log_free(&l);
}

static void test_big_jump(void **state) {
  (void)state;
  enum { N = 5000 };
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 7);
  tentry_t *t = calloc(N, sizeof *t);
  assert_non_null(t);
  srand(42);
  for (int i = 0; i < N; i++) {
    bw__timer_entry_init(&t[i].e);
    t[i].id = i;
    uint64_t d = 8 + (uint64_t)rand() % 3600000u;
    bw__timer_wheel_insert(&w, &t[i].e, d);
  }
  fired_log_t l = {0};
  assert_int_equal(bw__timer_wheel_advance(&w, 7 + 3600000, log_fire, &l), N);
  for (size_t i = 1; i < l.n; i++) {
    tentry_t *a = &t[l.ids[i - 1]], *b = &t[l.ids[i]];
    assert_true(a->e.deadline_ms < b->e.deadline_ms ||
                (a->e.deadline_ms == b->e.deadline_ms && a->id < b->id));
  }
  for (int i = 0; i < N; i++) assert_int_equal(t[i].fired, 1);
  assert_int_equal(bw__timer_wheel_now(&w), 7 + 3600000);
  log_free(&l);
  free(t);
}

static void test_cancel_never_fires(void **state) {
  (void)state;
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 0);
  tentry_t t[4];
  for (int i = 0; i < 4; i++) {
    bw__timer_entry_init(&t[i].e);
    t[i].id = i;
    t[i].fired = 0;
  }
  assert_false(bw__timer_wheel_remove(&w, &t[0].e)); /* never inserted */
  bw__timer_wheel_insert(&w, &t[0].e, 5);              /* level 0 */
  bw__timer_wheel_insert(&w, &t[1].e, 5000);           /* level 2 */
  bw__timer_wheel_insert(&w, &t[2].e, 0);              /* overdue: pending */
  bw__timer_wheel_insert(&w, &t[3].e, 5);
  assert_true(bw__timer_wheel_remove(&w, &t[0].e));
  assert_true(bw__timer_wheel_remove(&w, &t[1].e));
  assert_true(bw__timer_wheel_remove(&w, &t[2].e));
  assert_false(bw__timer_wheel_remove(&w, &t[2].e));
  assert_int_equal(bw__timer_wheel_count(&w), 1);
  fired_log_t l = {0};
  assert_int_equal(bw__timer_wheel_advance(&w, 100000, log_fire, &l), 1);
  assert_int_equal(l.ids[0], 3);
  assert_int_equal(t[0].fired + t[1].fired + t[2].fired, 0);
  assert_false(bw__timer_wheel_remove(&w, &t[3].e)); /* already fired */
  assert_int_equal(bw__timer_wheel_advance(&w, UINT64_MAX, log_fire, &l), 0); /* empty: returns */
  assert_int_equal(bw__timer_wheel_next_expiry(&w), BW__TIMER_NEVER);
  log_free(&l);
}

static void test_reinsert(void **state) {
  (void)state;
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 100);
  tentry_t a, b;
  bw__timer_entry_init(&a.e);
  bw__timer_entry_init(&b.e);
  a.id = 1;
  b.id = 2;
  a.fired = b.fired = 0;
  bw__timer_wheel_insert(&w, &a.e, 10000);
  bw__timer_wheel_insert(&w, &b.e, 500);
  bw__timer_wheel_insert(&w, &a.e, 200); /* move earlier */
  assert_int_equal(bw__timer_wheel_count(&w), 2);
  assert_int_equal(bw__timer_wheel_next_expiry(&w), 200);
  fired_log_t l = {0};
  assert_int_equal(bw__timer_wheel_advance(&w, 300, log_fire, &l), 1);
  assert_int_equal(l.ids[0], 1);
  bw__timer_wheel_insert(&w, &a.e, 400); /* re-arm after firing */
  bw__timer_wheel_insert(&w, &b.e, 350); /* move b */
  assert_int_equal(bw__timer_wheel_advance(&w, 10000, log_fire, &l), 2);
  assert_int_equal(l.ids[1], 2);
  assert_int_equal(l.ids[2], 1);
  assert_int_equal(a.fired, 2);
  assert_int_equal(b.fired, 1);
  log_free(&l);
}

/* A callback that re-arms its entry in the past: it must fire on the next
 * advance, not loop inside this one. */
static void rearm_past(bw__timer_entry_t *e, void *arg) {
  bw__timer_wheel_t *w = arg;
  ((tentry_t *)e)->fired++;
  bw__timer_wheel_insert(w, e, 0);
}

static void test_rearm_in_callback(void **state) {
  (void)state;
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 0);
  tentry_t a;
  bw__timer_entry_init(&a.e);
  a.fired = 0;
  bw__timer_wheel_insert(&w, &a.e, 10);
  assert_int_equal(bw__timer_wheel_advance(&w, 50, rearm_past, &w), 1);
  assert_int_equal(a.fired, 1);
  assert_true(bw__timer_entry_armed(&a.e));
  assert_true(bw__timer_wheel_next_expiry(&w) <= 50);
  assert_int_equal(bw__timer_wheel_advance(&w, 50, rearm_past, &w), 1); /* same now */
  assert_int_equal(a.fired, 2);
  assert_true(bw__timer_wheel_remove(&w, &a.e));
}

/* Deadlines far beyond the wheel's span still fire on time when a driver
 * jumps to next_expiry (the paused clock's loop). */
static void test_beyond_span(void **state) {
  (void)state;
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 12345);
  tentry_t t[3];
  uint64_t dl[3] = {12345 + ((uint64_t)1 << 40) + 17, 12345 + BW__TIMER_SPAN_MS - 1,
                    12345 + BW__TIMER_SPAN_MS + 3};
  for (int i = 0; i < 3; i++) {
    bw__timer_entry_init(&t[i].e);
    t[i].id = i;
    t[i].fired = 0;
    bw__timer_wheel_insert(&w, &t[i].e, dl[i]);
  }
  fired_log_t l = {0};
  int jumps = 0;
  while (bw__timer_wheel_count(&w) > 0) {
    uint64_t nx = bw__timer_wheel_next_expiry(&w);
    for (int i = 0; i < 3; i++)
      if (!t[i].fired) assert_true(nx <= dl[i]);
    size_t before = l.n;
    bw__timer_wheel_advance(&w, nx, log_fire, &l);
    for (size_t k = before; k < l.n; k++) assert_int_equal(nx, dl[l.ids[k]]);
    assert_true(++jumps < 100);
  }
  assert_int_equal(l.n, 3);
  assert_int_equal(l.ids[0], 1);
  assert_int_equal(l.ids[1], 2);
  assert_int_equal(l.ids[2], 0);
  log_free(&l);
}

static void test_100k_timers(void **state) {
  (void)state;
  enum { N = 100000 };
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 0);
  tentry_t *t = bw__malloc(N * sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < N; i++) {
    bw__timer_entry_init(&t[i].e);
    t[i].id = i;
    t[i].fired = 0;
    bw__timer_wheel_insert(&w, &t[i].e, 1 + (uint64_t)(i % 1000)); /* 100 per tick */
  }
  assert_int_equal(bw__timer_wheel_count(&w), N);
  assert_int_equal(bw__timer_wheel_next_expiry(&w), 1);
  /* Cancel every 10th. */
  for (int i = 0; i < N; i += 10) assert_true(bw__timer_wheel_remove(&w, &t[i].e));
  /* Take them out in batches with expire(), tick by tick. */
  bw__timer_entry_t *out[64];
  size_t total = 0;
  int last_id = -1;
  uint64_t last_dl = 0;
  for (uint64_t now = 1; now <= 1000; now++) {
    size_t n;
    while ((n = bw__timer_wheel_expire(&w, now, out, 64)) > 0) {
      for (size_t k = 0; k < n; k++) {
        tentry_t *x = (tentry_t *)out[k];
        assert_int_equal(x->e.deadline_ms, now);
        assert_true(x->e.deadline_ms > last_dl || x->id > last_id);
        assert_int_not_equal(x->id % 10, 0);
        last_dl = x->e.deadline_ms;
        last_id = x->id;
        x->fired++;
      }
      total += n;
    }
  }
  assert_int_equal(total, N - N / 10);
  assert_int_equal(bw__timer_wheel_count(&w), 0);
  bw__free(t);
}

/* ---- property test: random ops against a sorted-array model ----------- */

static int cmp_model(const void *a, const void *b) {
  const tentry_t *x = *(tentry_t *const *)a, *y = *(tentry_t *const *)b;
  if (x->e.deadline_ms != y->e.deadline_ms) return x->e.deadline_ms < y->e.deadline_ms ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static uint64_t random_delay(void) {
  switch (rnd() % 8) {
  case 0: return 0;
  case 1: return rnd() % 4;
  case 2: return rnd() % 64;
  case 3: return rnd() % 4096;
  case 4: return rnd() % 300000;
  case 5: return rnd() % 20000000;
  case 6: return rnd() % ((uint64_t)1 << 38);
  default: return rnd() % 200;
  }
}

static void test_property_random(void **state) {
  (void)state;
  enum { N = 2000 };
  int rounds = (int)(20000 * test_scale());
  if (rounds < 2000) rounds = 2000;
  bw__timer_wheel_t w;
  uint64_t now = 1000000;
  bw__timer_wheel_init(&w, now);
  tentry_t *t = calloc(N, sizeof *t);
  tentry_t **expect = calloc(N, sizeof *expect);
  assert_non_null(t);
  assert_non_null(expect);
  for (int i = 0; i < N; i++) {
    bw__timer_entry_init(&t[i].e);
    t[i].id = i;
  }
  uint64_t seq = 0;
  size_t armed = 0, total_fired = 0;
  fired_log_t l = {0};
  for (int r = 0; r < rounds; r++) {
    int ops = (int)(rnd() % 20);
    for (int k = 0; k < ops; k++) {
      tentry_t *x = &t[rnd() % N];
      uint64_t op = rnd() % 10;
      if (op < 7) {
        uint64_t base = now;
        if (rnd() % 8 == 0) base = now > 100 ? now - rnd() % 100 : now; /* past */
        if (!bw__timer_entry_armed(&x->e)) armed++;
        bw__timer_wheel_insert(&w, &x->e, base + random_delay());
        x->seq = seq++;
      } else {
        bool was = bw__timer_entry_armed(&x->e);
        assert_int_equal(bw__timer_wheel_remove(&w, &x->e), was);
        if (was) armed--;
      }
    }
    assert_int_equal(bw__timer_wheel_count(&w), armed);
    /* Model: the earliest armed deadline; next_expiry must not be later. */
    uint64_t true_min = BW__TIMER_NEVER;
    size_t ne = 0;
    uint64_t step;
    switch (rnd() % 4) {
    case 0: step = 0; break;
    case 1: step = rnd() % 70; break;
    case 2: step = rnd() % 5000; break;
    default: step = rnd() % 50000000; break;
    }
    uint64_t to = now + step;
    for (int i = 0; i < N; i++) {
      if (!bw__timer_entry_armed(&t[i].e)) continue;
      if (t[i].e.deadline_ms < true_min) true_min = t[i].e.deadline_ms;
      if (t[i].e.deadline_ms <= to) expect[ne++] = &t[i];
    }
    assert_true(bw__timer_wheel_next_expiry(&w) <= true_min);
    qsort(expect, ne, sizeof *expect, cmp_model);
    l.n = 0;
    size_t n = bw__timer_wheel_advance(&w, to, log_fire, &l);
    assert_int_equal(n, ne);
    for (size_t k = 0; k < ne; k++) assert_int_equal(l.ids[k], expect[k]->id);
    armed -= ne;
    total_fired += ne;
    now = to;
    assert_int_equal(bw__timer_wheel_now(&w), now);
  }
  assert_true(total_fired > 1000);
  /* Drain with the paused-clock loop: jump to next_expiry until empty. */
  int guard = 0;
  while (bw__timer_wheel_count(&w) > 0) {
    uint64_t nx = bw__timer_wheel_next_expiry(&w);
    assert_true(nx != BW__TIMER_NEVER);
    bw__timer_wheel_advance(&w, nx > now ? nx : now, log_fire, &l);
    if (nx > now) now = nx;
    assert_true(++guard < 100000);
  }
  log_free(&l);
  free(expect);
  free(t);
}


/* Without removals and within the span, next_expiry is exact: a paused
 * clock jumps straight to the next deadline. */
static void test_next_expiry_exact(void **state) {
  (void)state;
  enum { N = 3000 };
  bw__timer_wheel_t w;
  uint64_t now = 777;
  bw__timer_wheel_init(&w, now);
  tentry_t *t = calloc(N, sizeof *t);
  assert_non_null(t);
  int used = 0, rounds = 0;
  fired_log_t l = {0};
  while (used < N || bw__timer_wheel_count(&w) > 0) {
    int k = (int)(rnd() % 8);
    for (int i = 0; i < k && used < N; i++, used++) {
      bw__timer_entry_init(&t[used].e);
      t[used].id = used;
      uint64_t d = random_delay() % ((uint64_t)1 << 35);
      if (rnd() % 10 == 0) d = 0; /* overdue */
      bw__timer_wheel_insert(&w, &t[used].e, now + d - (d == 0 && now > 0 ? 1 : 0));
    }
    uint64_t true_min = BW__TIMER_NEVER;
    for (int i = 0; i < used; i++)
      if (bw__timer_entry_armed(&t[i].e) && t[i].e.deadline_ms < true_min)
        true_min = t[i].e.deadline_ms;
    assert_int_equal(bw__timer_wheel_next_expiry(&w), true_min);
    if (true_min == BW__TIMER_NEVER) continue;
    /* jump exactly there: something must fire */
    l.n = 0;
    uint64_t to = true_min > now ? true_min : now;
    assert_true(bw__timer_wheel_advance(&w, to, log_fire, &l) >= 1);
    now = to;
    rounds++;
  }
  assert_true(rounds > 100);
  log_free(&l);
  free(t);
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void count_fire(bw__timer_entry_t *e, void *arg) {
  (void)e;
  (*(size_t *)arg)++;
}

/* Informational: cost of arm+cancel (the timeout layer's hot path) and of
 * arm+fire. Never fails on timing. */
static void test_cost_informational(void **state) {
  (void)state;
  enum { N = 100000 };
  int rounds = (int)(10 * test_scale());
  if (rounds < 1) rounds = 1;
  bw__timer_wheel_t w;
  bw__timer_wheel_init(&w, 5);
  tentry_t *t = bw__malloc(N * sizeof *t);
  assert_non_null(t);
  for (int i = 0; i < N; i++) bw__timer_entry_init(&t[i].e);
  uint64_t t0 = mono_ns();
  for (int r = 0; r < rounds; r++) {
    for (int i = 0; i < N; i++) bw__timer_wheel_insert(&w, &t[i].e, 5 + 1 + rnd() % 10000);
    for (int i = 0; i < N; i++) assert_true(bw__timer_wheel_remove(&w, &t[i].e));
  }
  uint64_t t1 = mono_ns();
  for (int i = 0; i < N; i++) bw__timer_wheel_insert(&w, &t[i].e, 5 + 1 + rnd() % 10000);
  size_t fired = 0;
  bw__timer_wheel_advance(&w, 5 + 10000, count_fire, &fired);
  uint64_t t2 = mono_ns();
  assert_int_equal(fired, N);
  printf("# timer wheel: arm+cancel %.1f ns/pair, arm+fire %.1f ns/timer (%d timers)\n",
         (double)(t1 - t0) / ((double)N * rounds), (double)(t2 - t1) / N, N);
  bw__free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_within_tick), cmocka_unit_test(test_big_jump),
      cmocka_unit_test(test_cancel_never_fires), cmocka_unit_test(test_reinsert),
      cmocka_unit_test(test_rearm_in_callback),  cmocka_unit_test(test_beyond_span),
      cmocka_unit_test(test_100k_timers),        cmocka_unit_test(test_property_random),
      cmocka_unit_test(test_next_expiry_exact), cmocka_unit_test(test_cost_informational),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
