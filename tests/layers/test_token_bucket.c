/* Token bucket (GCRA) decision core: explicit now_ns, no runtime. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>

#include "layers/token_bucket.h"
#include "support/layer_harness.h"

#define MS (UINT64_C(1000000))
#define SEC (UINT64_C(1000000000))
#define T0 (SEC) /* the paused clock starts at 1 s */

static void test_init_validation(void **state) {
  (void)state;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 0, 1), BW__TB_EINVAL);
  assert_int_equal(bw__tb_init(&tb, -1, 1), BW__TB_EINVAL);
  assert_int_equal(bw__tb_init(&tb, 10, 0), BW__TB_EINVAL);
  assert_int_equal(bw__tb_init(&tb, 2e9, 1), BW__TB_EINVAL); /* interval < 1 ns */
  assert_int_equal(bw__tb_init(&tb, 1e-12, 1), BW__TB_EINVAL);
  assert_int_equal(bw__tb_init(&tb, 1, UINT64_C(1) << 40), BW__TB_EINVAL);
  assert_int_equal(bw__tb_init(&tb, 10, 5), BW__TB_OK);
  assert_int_equal(tb.interval_ns, 100 * MS);
  assert_int_equal(tb.tau_ns, 500 * MS);
}

static void test_burst_then_rate(void **state) {
  (void)state;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 10, 5), 0); /* 10/s, burst 5 */
  uint64_t w = 99;
  assert_true(bw__tb_tokens(&tb, T0) == 5.0);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, &w), BW__TB_OK);
    assert_int_equal(w, 0);
  }
  assert_true(bw__tb_tokens(&tb, T0) < 1e-9 && bw__tb_tokens(&tb, T0) > -1e-9);
  /* Empty: the next token frees up in exactly 100 ms. */
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 100 * MS);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 40 * MS, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 60 * MS);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 100 * MS - 1, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 1);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 100 * MS, 0, &w), BW__TB_OK);
  assert_int_equal(w, 0);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 100 * MS, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 100 * MS);
  /* Two tokens at once need 200 ms. */
  assert_int_equal(bw__tb_acquire(&tb, 2, T0 + 100 * MS, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 200 * MS);
  /* After a long idle the bucket holds at most burst. */
  assert_true(bw__tb_tokens(&tb, T0 + 3600 * SEC) == 5.0);
  for (int i = 0; i < 5; i++)
    assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 3600 * SEC, 0, &w), BW__TB_OK);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 3600 * SEC, 0, &w), BW__TB_ELIMITED);
  /* n out of range */
  assert_int_equal(bw__tb_acquire(&tb, 0, T0, 0, &w), BW__TB_EINVAL);
  assert_int_equal(bw__tb_acquire(&tb, 6, T0, 0, &w), BW__TB_EINVAL);
}

static void test_steady_rate_exact(void **state) {
  (void)state;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 1000, 1), 0); /* 1 per ms, no burst */
  /* Polling every 0.25 ms for 1 s lets exactly 1000 through. */
  int ok = 0;
  for (uint64_t t = T0; t < T0 + SEC; t += 250000)
    if (bw__tb_acquire(&tb, 1, t, 0, NULL) == 0) ok++;
  assert_int_equal(ok, 1000);
}

static void test_reservations_fifo(void **state) {
  (void)state;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 10, 1), 0);
  uint64_t w;
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, SEC, &w), 0);
  assert_int_equal(w, 0);
  /* Waiters get consecutive slots, in arrival order. */
  for (uint64_t i = 1; i <= 5; i++) {
    assert_int_equal(bw__tb_acquire(&tb, 1, T0, SEC, &w), 0);
    assert_int_equal(w, i * 100 * MS);
  }
  assert_true(bw__tb_tokens(&tb, T0) < -4.99 && bw__tb_tokens(&tb, T0) > -5.01);
  /* A caller that will not wait that long is refused with the exact hint. */
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 500 * MS, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 600 * MS);
  /* A later arrival cannot jump the queue: its slot is after the others. */
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 50 * MS, SEC, &w), 0);
  assert_int_equal(w, 550 * MS);
  /* Refund of a cancelled waiter gives one slot back. */
  bw__tb_refund(&tb, 1, T0 + 50 * MS);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + 50 * MS, SEC, &w), 0);
  assert_int_equal(w, 550 * MS);
}

static void test_refund_never_overfills(void **state) {
  (void)state;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 10, 3), 0);
  bw__tb_refund(&tb, 2, T0); /* full already: nothing */
  assert_true(bw__tb_tokens(&tb, T0) == 3.0);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, NULL), 0);
  bw__tb_refund(&tb, 5, T0); /* more than taken: clamps to full */
  assert_true(bw__tb_tokens(&tb, T0) == 3.0);
  for (int i = 0; i < 3; i++) assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, NULL), 0);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, NULL), BW__TB_ELIMITED);
  bw__tb_refund(&tb, 1, T0);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, NULL), 0);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, NULL), BW__TB_ELIMITED);
}

static void test_fractional_rate(void **state) {
  (void)state;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 0.5, 1), 0); /* one per 2 s */
  uint64_t w;
  assert_int_equal(bw__tb_acquire(&tb, 1, T0, 0, &w), 0);
  assert_int_equal(bw__tb_acquire(&tb, 1, T0 + SEC, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, SEC);
}

static void test_store_vtable(void **state) {
  (void)state;
  bw__limiter_store_t *s = NULL;
  assert_int_equal(bw__limiter_store_mem_new(0, 1, &s), BW__TB_EINVAL);
  assert_int_equal(bw__limiter_store_mem_new(100, 2, &s), 0);
  uint64_t w;
  assert_int_equal(s->vt->acquire(s, 1, T0, 0, &w), 0);
  assert_int_equal(s->vt->acquire(s, 1, T0, 0, &w), 0);
  assert_int_equal(s->vt->acquire(s, 1, T0, 0, &w), BW__TB_ELIMITED);
  assert_int_equal(w, 10 * MS);
  s->vt->refund(s, 1, T0);
  assert_true(s->vt->tokens(s, T0) > 0.99 && s->vt->tokens(s, T0) < 1.01);
  s->vt->destroy(s);
}

/* Many threads hammer one bucket at a fixed time: exactly burst succeed;
 * with a wait budget every reservation slot is handed out exactly once. */
typedef struct {
  bw__token_bucket_t *tb;
  int iters;
  int ok;
  uint64_t *waits;
} hammer_t;

static void *hammer(void *arg) {
  hammer_t *h = arg;
  for (int i = 0; i < h->iters; i++) {
    uint64_t w;
    if (bw__tb_acquire(h->tb, 1, T0, UINT64_MAX / 4, &w) == 0) h->waits[h->ok++] = w;
  }
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void test_concurrent_reservations(void **state) {
  (void)state;
  enum { THREADS = 4 };
  int iters = (int)(20000 * lh_scale());
  if (iters < 100) iters = 100;
  bw__token_bucket_t tb;
  assert_int_equal(bw__tb_init(&tb, 1e6, 10), 0); /* 1 µs per token */
  hammer_t h[THREADS];
  pthread_t th[THREADS];
  uint64_t *all = calloc((size_t)iters * THREADS, sizeof *all);
  for (int i = 0; i < THREADS; i++) {
    h[i] = (hammer_t){&tb, iters, 0, all + (size_t)i * iters};
    assert_int_equal(pthread_create(&th[i], NULL, hammer, &h[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  size_t n = 0;
  for (int i = 0; i < THREADS; i++) {
    assert_int_equal(h[i].ok, iters);
    n += (size_t)h[i].ok;
  }
  qsort(all, n, sizeof *all, cmp_u64);
  /* The first 10 need no wait; then one distinct slot per microsecond. */
  for (size_t i = 0; i < n; i++) {
    uint64_t expect = i < 10 ? 0 : (uint64_t)(i - 9) * 1000;
    assert_int_equal(all[i], expect);
  }
  free(all);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_validation),      cmocka_unit_test(test_burst_then_rate),
      cmocka_unit_test(test_steady_rate_exact),    cmocka_unit_test(test_reservations_fifo),
      cmocka_unit_test(test_refund_never_overfills), cmocka_unit_test(test_fractional_rate),
      cmocka_unit_test(test_store_vtable),         cmocka_unit_test(test_concurrent_reservations),
  };
  return cmocka_run_group_tests_name("token_bucket", tests, NULL, NULL);
}
