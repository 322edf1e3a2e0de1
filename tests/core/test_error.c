/* Tests for the error chain (src/core/error.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/alloc.h"
#include "bulwark/error.h"

/* ---- counting / failing allocator ------------------------------------ */

static atomic_long live_allocs;
static atomic_long total_allocs;
static atomic_int fail_allocs; /* nonzero: every allocation fails */

static void *cnt_malloc(size_t n) {
  if (atomic_load(&fail_allocs)) return NULL;
  void *p = malloc(n);
  if (p) {
    atomic_fetch_add(&live_allocs, 1);
    atomic_fetch_add(&total_allocs, 1);
  }
  return p;
}
static void *cnt_calloc(size_t c, size_t n) {
  if (atomic_load(&fail_allocs)) return NULL;
  void *p = calloc(c, n);
  if (p) {
    atomic_fetch_add(&live_allocs, 1);
    atomic_fetch_add(&total_allocs, 1);
  }
  return p;
}
static void *cnt_realloc(void *p, size_t n) {
  if (atomic_load(&fail_allocs)) return NULL;
  if (p == NULL) return cnt_malloc(n);
  return realloc(p, n);
}
static void cnt_free(void *p) {
  if (p) atomic_fetch_sub(&live_allocs, 1);
  free(p);
}
static const bw_allocator_t counting = {cnt_malloc, cnt_calloc, cnt_realloc, cnt_free};

static int setup(void **state) {
  (void)state;
  atomic_store(&live_allocs, 0);
  atomic_store(&total_allocs, 0);
  atomic_store(&fail_allocs, 0);
  assert_null(bw_set_allocator(&counting));
  return 0;
}
static int teardown(void **state) {
  (void)state;
  atomic_store(&fail_allocs, 0);
  long live = atomic_load(&live_allocs);
  assert_null(bw_set_allocator(NULL));
  assert_int_equal(live, 0); /* nothing leaked */
  return 0;
}

/* ---- creation and accessors ----------------------------------------- */

static void test_new_and_accessors(void **state) {
  (void)state;
  int line = __LINE__ + 1;
  bw_error_t *e = bw_error_new(BW_ERR_TRANSPORT, 7, "connect to %s:%d refused", "127.0.0.1", 9);
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_TRANSPORT);
  assert_int_equal(bw_error_detail(e), 7);
  assert_string_equal(bw_error_message(e), "connect to 127.0.0.1:9 refused");
  assert_non_null(bw_error_file(e));
  assert_non_null(strstr(bw_error_file(e), "test_error.c"));
  assert_int_equal(bw_error_line(e), line);
  assert_null(bw_error_cause(e));
  assert_non_null(bw_error_hints(e));
  assert_int_equal(bw_error_hints(e)->retry_after_ms, 0);
  assert_int_equal(bw_error_related_count(e), 0);
  assert_null(bw_error_related(e, 0));
  assert_false(bw_error_is_static(e));
  assert_int_equal(atomic_load(&live_allocs), 1); /* one allocation per error */
  bw_error_unref(e);
}

static void test_default_message_and_bad_kind(void **state) {
  (void)state;
  bw_error_t *e = bw_error_new(BW_ERR_TIMEOUT, 0, NULL);
  assert_string_equal(bw_error_message(e), "timed out");
  bw_error_unref(e);
  e = bw_error_new((bw_error_kind_t)999, 0, "x");
  assert_int_equal(bw_error_kind(e), BW_ERR_INTERNAL);
  bw_error_unref(e);
  e = bw_error_new(BW_ERR_NONE, 0, "y");
  assert_int_equal(bw_error_kind(e), BW_ERR_INTERNAL);
  bw_error_unref(e);
  /* no file */
  e = bw_error_make(BW_ERR_IO, 5, NULL, NULL, NULL, 0, NULL, 0, "%s", "io");
  assert_null(bw_error_file(e));
  assert_string_equal(bw_error_message(e), "io");
  bw_error_unref(e);
}

static void test_null_safe(void **state) {
  (void)state;
  assert_int_equal(bw_error_kind(NULL), BW_ERR_NONE);
  assert_int_equal(bw_error_detail(NULL), 0);
  assert_non_null(bw_error_message(NULL));
  assert_null(bw_error_file(NULL));
  assert_int_equal(bw_error_line(NULL), 0);
  assert_null(bw_error_cause(NULL));
  assert_int_equal(bw_error_hints(NULL)->retry_after_ms, 0);
  assert_int_equal(bw_error_related_count(NULL), 0);
  assert_null(bw_error_related(NULL, 0));
  assert_false(bw_error_is(NULL, BW_ERR_TIMEOUT));
  assert_null(bw_error_find(NULL, BW_ERR_TIMEOUT));
  assert_null(bw_error_root(NULL));
  assert_int_equal(bw_error_retry_after_ms(NULL), 0);
  assert_null(bw_error_ref(NULL));
  bw_error_unref(NULL);
  assert_false(bw_error_is_static(NULL));
  char buf[16];
  assert_int_equal(bw_error_format(NULL, buf, sizeof buf, 0), strlen("success"));
  assert_string_equal(buf, "success");
}

/* ---- chains ---------------------------------------------------------- */

static bw_error_t *make_chain(void) {
  bw_error_t *root = bw_error_new(BW_ERR_CONNECT, 7, "http: connect to 127.0.0.1:9 refused (curl 7)");
  bw_error_t *t = bw_error_wrap(root, BW_ERR_TIMEOUT, 200, "timeout: no response within 200 ms");
  return bw_error_wrap(t, BW_ERR_RETRIES_EXHAUSTED, 3, "retry: gave up after 3 attempts");
}

static void test_wrap_is_find_root(void **state) {
  (void)state;
  bw_error_t *e = make_chain();
  assert_int_equal(bw_error_kind(e), BW_ERR_RETRIES_EXHAUSTED);
  assert_true(bw_error_is(e, BW_ERR_RETRIES_EXHAUSTED));
  assert_true(bw_error_is(e, BW_ERR_TIMEOUT));
  assert_true(bw_error_is(e, BW_ERR_CONNECT));
  assert_false(bw_error_is(e, BW_ERR_REDIS));
  const bw_error_t *t = bw_error_find(e, BW_ERR_TIMEOUT);
  assert_non_null(t);
  assert_int_equal(bw_error_detail(t), 200);
  assert_ptr_equal(t, bw_error_cause(e));
  assert_null(bw_error_find(e, BW_ERR_DNS));
  const bw_error_t *r = bw_error_root(e);
  assert_int_equal(bw_error_kind(r), BW_ERR_CONNECT);
  assert_int_equal(bw_error_detail(r), 7);
  assert_null(bw_error_cause(r));
  assert_ptr_equal(bw_error_root(r), r);
  /* keep an inner link alive after the outer one is gone */
  bw_error_t *kept = bw_error_ref(t);
  bw_error_unref(e);
  assert_int_equal(bw_error_kind(bw_error_root(kept)), BW_ERR_CONNECT);
  assert_int_equal(atomic_load(&live_allocs), 2);
  bw_error_unref(kept);
}

static void test_long_chain_no_recursion(void **state) {
  (void)state;
  bw_error_t *e = bw_error_new(BW_ERR_IO, 0, "root");
  for (int i = 0; i < 200000; i++) e = bw_error_wrap(e, BW_ERR_INTERNAL, i, NULL);
  assert_int_equal(bw_error_kind(bw_error_root(e)), BW_ERR_IO);
  bw_error_unref(e); /* iterative free: must not blow the stack */
}

static void test_hints(void **state) {
  (void)state;
  bw_error_hints_t h1 = {.retry_after_ms = 5000};
  bw_error_hints_t h2 = {.retry_after_ms = 1200};
  bw_error_hints_t hz = {.retry_after_ms = -4};
  bw_error_t *a = bw_error_make(BW_ERR_HTTP_STATUS, 503, NULL, &h1, NULL, 0, __FILE__, __LINE__,
                                "503 Service Unavailable");
  assert_int_equal(bw_error_hints(a)->retry_after_ms, 5000);
  assert_int_equal(bw_error_retry_after_ms(a), 5000);
  bw_error_t *b = bw_error_make(BW_ERR_RATE_LIMITED, 0, a, &h2, NULL, 0, __FILE__, __LINE__, NULL);
  assert_int_equal(bw_error_retry_after_ms(b), 1200);
  bw_error_t *c = bw_error_make(BW_ERR_UNAVAILABLE, 0, b, &hz, NULL, 0, __FILE__, __LINE__, NULL);
  assert_int_equal(bw_error_retry_after_ms(c), 1200); /* non-positive ignored */
  bw_error_t *d = bw_error_new(BW_ERR_IO, 0, "none");
  assert_int_equal(bw_error_retry_after_ms(d), 0);
  bw_error_unref(d);
  bw_error_unref(c);
}

static void test_related(void **state) {
  (void)state;
  bw_error_t *att[3];
  for (int i = 0; i < 3; i++) att[i] = bw_error_new(BW_ERR_TIMEOUT, i, "attempt %d timed out", i + 1);
  bw_error_t *keep = bw_error_ref(att[1]);
  bw_error_t *e = bw_error_make(BW_ERR_RETRIES_EXHAUSTED, 3, NULL, NULL, att, 3, __FILE__,
                                __LINE__, "retry: gave up after %d attempts", 3);
  assert_int_equal(bw_error_related_count(e), 3);
  for (size_t i = 0; i < 3; i++) {
    assert_ptr_equal(bw_error_related(e, i), att[i]);
    assert_int_equal(bw_error_detail(bw_error_related(e, i)), (int64_t)i);
  }
  assert_null(bw_error_related(e, 3));
  /* related errors are not part of the cause chain */
  assert_false(bw_error_is(e, BW_ERR_TIMEOUT));
  char buf[256];
  bw_error_format(e, buf, sizeof buf, BW_ERROR_FMT_RELATED);
  assert_string_equal(buf,
                      "retry: gave up after 3 attempts [attempt 1: attempt 1 timed out]"
                      " [attempt 2: attempt 2 timed out] [attempt 3: attempt 3 timed out]");
  bw_error_format(e, buf, sizeof buf, 0);
  assert_string_equal(buf, "retry: gave up after 3 attempts");
  bw_error_unref(e);
  assert_string_equal(bw_error_message(keep), "attempt 2 timed out");
  bw_error_unref(keep);
}

/* ---- formatting ------------------------------------------------------ */

static void test_format_flags(void **state) {
  (void)state;
  bw_error_t *e = make_chain();
  char buf[512];
  const char *plain =
      "retry: gave up after 3 attempts: timeout: no response within 200 ms: "
      "http: connect to 127.0.0.1:9 refused (curl 7)";
  size_t n = bw_error_format(e, buf, sizeof buf, 0);
  assert_string_equal(buf, plain);
  assert_int_equal(n, strlen(plain));

  bw_error_format(e, buf, sizeof buf, BW_ERROR_FMT_KIND);
  assert_string_equal(buf,
                      "[retries_exhausted] retry: gave up after 3 attempts: [timeout] timeout: no "
                      "response within 200 ms: [connect] http: connect to 127.0.0.1:9 refused (curl 7)");

  bw_error_t *loc = bw_error_make(BW_ERR_IO, 0, NULL, NULL, NULL, 0, "x.c", 42, "disk");
  loc = bw_error_make(BW_ERR_CONFIG, 0, loc, NULL, NULL, 0, "cfg.c", -3, "bad");
  bw_error_format(loc, buf, sizeof buf, BW_ERROR_FMT_LOCATION);
  assert_string_equal(buf, "bad (at cfg.c:-3): disk (at x.c:42)");
  bw_error_format(loc, buf, sizeof buf, BW_ERROR_FMT_LOCATION | BW_ERROR_FMT_KIND);
  assert_string_equal(buf, "[config] bad (at cfg.c:-3): [io] disk (at x.c:42)");
  bw_error_unref(loc);

  /* size query with no buffer */
  assert_int_equal(bw_error_format(e, NULL, 0, 0), strlen(plain));
  bw_error_unref(e);
}

static void test_format_truncation_every_length(void **state) {
  (void)state;
  bw_error_t *att[2] = {bw_error_new(BW_ERR_TIMEOUT, 0, "a1"), bw_error_new(BW_ERR_IO, 0, "a2")};
  bw_error_t *e = bw_error_make(BW_ERR_RETRIES_EXHAUSTED, 0, make_chain(), NULL, att, 2,
                                __FILE__, __LINE__, "outer");
  unsigned all = BW_ERROR_FMT_KIND | BW_ERROR_FMT_LOCATION | BW_ERROR_FMT_RELATED;
  for (unsigned flags = 0; flags <= all; flags++) {
    size_t full = bw_error_format(e, NULL, 0, flags);
    char *ref = malloc(full + 1);
    assert_int_equal(bw_error_format(e, ref, full + 1, flags), full);
    assert_int_equal(strlen(ref), full);
    for (size_t len = 0; len <= full + 2; len++) {
      char *buf = malloc(len + 8);
      memset(buf, 'Z', len + 8);
      size_t n = bw_error_format(e, buf, len, flags);
      assert_int_equal(n, full);
      for (size_t k = len; k < len + 8; k++) assert_int_equal(buf[k], 'Z'); /* no overflow */
      if (len > 0) {
        size_t want = full < len - 1 ? full : len - 1;
        assert_int_equal(strlen(buf), want); /* terminated */
        assert_memory_equal(buf, ref, want);  /* a prefix of the full text */
      }
      free(buf);
    }
    free(ref);
  }
  bw_error_unref(e);
}

/* ---- kinds ------------------------------------------------------------ */

static void test_kind_names_round_trip(void **state) {
  (void)state;
  int count = 0;
#define CHECK(name, num, str, msg)                               \
  do {                                                           \
    bw_error_kind_t k;                                           \
    assert_int_equal(BW_ERR_##name, num);                        \
    assert_string_equal(bw_error_kind_name(BW_ERR_##name), str); \
    assert_string_equal(bw_error_kind_message(BW_ERR_##name), msg); \
    assert_true(bw_error_kind_from_name(str, &k));               \
    assert_int_equal(k, BW_ERR_##name);                          \
    count++;                                                     \
  } while (0);
  BW_ERROR_KINDS(CHECK)
#undef CHECK
  assert_true(count >= 29);
  for (int k = 1; k < BW_ERR__MAX; k++) {
    bw_error_kind_t back;
    assert_true(bw_error_kind_from_name(bw_error_kind_name((bw_error_kind_t)k), &back));
    assert_int_equal(back, k);
  }
  bw_error_kind_t out = BW_ERR_IO;
  assert_false(bw_error_kind_from_name("no_such_kind", &out));
  assert_false(bw_error_kind_from_name(NULL, &out));
  assert_int_equal(out, BW_ERR_IO);
  assert_string_equal(bw_error_kind_name((bw_error_kind_t)1000), "unknown");
  assert_string_equal(bw_error_kind_name(BW_ERR__MAX), "unknown");
  assert_string_equal(bw_error_kind_name(BW_ERR_NONE), "none");
  assert_non_null(bw_error_kind_message((bw_error_kind_t)-1));
}

/* ---- static errors ---------------------------------------------------- */

static void test_static_errors(void **state) {
  (void)state;
  long before = atomic_load(&total_allocs);
  for (int k = 1; k < BW_ERR__MAX; k++) {
    bw_error_t *s = bw_error_static((bw_error_kind_t)k);
    assert_non_null(s);
    assert_true(bw_error_is_static(s));
    assert_int_equal(bw_error_kind(s), k);
    assert_string_equal(bw_error_message(s), bw_error_kind_message((bw_error_kind_t)k));
    assert_ptr_equal(bw_error_static((bw_error_kind_t)k), s);
    for (int i = 0; i < 10; i++) assert_ptr_equal(bw_error_ref(s), s);
    for (int i = 0; i < 20; i++) bw_error_unref(s); /* no-ops */
    assert_string_equal(bw_error_message(s), bw_error_kind_message((bw_error_kind_t)k));
  }
  assert_int_equal(bw_error_kind(bw_error_static(BW_ERR_NONE)), BW_ERR_INTERNAL);
  assert_int_equal(bw_error_kind(bw_error_static((bw_error_kind_t)77)), BW_ERR_INTERNAL);
  assert_int_equal(atomic_load(&total_allocs), before); /* no malloc */
  /* wrapping a static error is fine and leaves it intact */
  bw_error_t *w = bw_error_wrap(bw_error_static(BW_ERR_CIRCUIT_OPEN), BW_ERR_FALLBACK_FAILED, 0, "fb");
  assert_true(bw_error_is(w, BW_ERR_CIRCUIT_OPEN));
  bw_error_unref(w);
  assert_true(bw_error_is_static(bw_error_static(BW_ERR_CIRCUIT_OPEN)));
  char buf[64];
  bw_error_format(bw_error_static(BW_ERR_RATE_LIMITED), buf, sizeof buf, BW_ERROR_FMT_KIND);
  assert_string_equal(buf, "[rate_limited] rate limit exceeded");
}

/* ---- out of memory ---------------------------------------------------- */

static void test_oom(void **state) {
  (void)state;
  bw_error_t *cause = make_chain();
  bw_error_t *rel[2] = {bw_error_new(BW_ERR_TIMEOUT, 0, "r1"), bw_error_new(BW_ERR_TIMEOUT, 0, "r2")};
  assert_int_equal(atomic_load(&live_allocs), 5);
  atomic_store(&fail_allocs, 1);
  bw_error_t *e = bw_error_new(BW_ERR_IO, 0, "never");
  assert_non_null(e);
  assert_true(bw_error_is_static(e));
  assert_int_equal(bw_error_kind(e), BW_ERR_OUT_OF_MEMORY);
  bw_error_unref(e);
  /* with a cause and related errors: they are released, not leaked */
  e = bw_error_make(BW_ERR_RETRIES_EXHAUSTED, 0, cause, NULL, rel, 2, __FILE__, __LINE__, "x%d", 1);
  assert_ptr_equal(e, bw_error_static(BW_ERR_OUT_OF_MEMORY));
  assert_int_equal(atomic_load(&live_allocs), 0);
  e = bw_error_wrap(bw_error_static(BW_ERR_TIMEOUT), BW_ERR_INTERNAL, 0, NULL);
  assert_ptr_equal(e, bw_error_static(BW_ERR_OUT_OF_MEMORY));
  char buf[64];
  bw_error_format(e, buf, sizeof buf, 0);
  assert_string_equal(buf, "out of memory");
  atomic_store(&fail_allocs, 0);
  /* recovers */
  e = bw_error_new(BW_ERR_IO, 0, "fine");
  assert_false(bw_error_is_static(e));
  bw_error_unref(e);
}

/* ---- refcount across threads ----------------------------------------- */

#define NTHREADS 4
static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

typedef struct {
  bw_error_t *e;
  int iters;
  atomic_int *go;
} ref_arg_t;

static void *ref_thread(void *p) {
  ref_arg_t *a = p;
  while (!atomic_load(a->go)) {
  }
  for (int i = 0; i < a->iters; i++) {
    bw_error_t *r = bw_error_ref(a->e);
    if (bw_error_kind(bw_error_root(r)) != BW_ERR_CONNECT) abort();
    char buf[32];
    bw_error_format(r, buf, sizeof buf, BW_ERROR_FMT_KIND);
    bw_error_unref(r);
  }
  bw_error_unref(a->e); /* each thread drops the ref it was given */
  return NULL;
}

static void test_refcount_threads(void **state) {
  (void)state;
  int iters = (int)(100000 * scale());
  if (iters < 100) iters = 100;
  for (int round = 0; round < 5; round++) {
    bw_error_t *e = make_chain();
    pthread_t th[NTHREADS];
    ref_arg_t args[NTHREADS];
    atomic_int go = 0;
    for (int i = 0; i < NTHREADS; i++) {
      args[i] = (ref_arg_t){bw_error_ref(e), iters, &go};
      assert_int_equal(pthread_create(&th[i], NULL, ref_thread, &args[i]), 0);
    }
    bw_error_unref(e); /* the threads now hold the only refs */
    atomic_store(&go, 1);
    for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&live_allocs), 0); /* the last thread freed all */
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_new_and_accessors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_default_message_and_bad_kind, setup, teardown),
      cmocka_unit_test_setup_teardown(test_null_safe, setup, teardown),
      cmocka_unit_test_setup_teardown(test_wrap_is_find_root, setup, teardown),
      cmocka_unit_test_setup_teardown(test_long_chain_no_recursion, setup, teardown),
      cmocka_unit_test_setup_teardown(test_hints, setup, teardown),
      cmocka_unit_test_setup_teardown(test_related, setup, teardown),
      cmocka_unit_test_setup_teardown(test_format_flags, setup, teardown),
      cmocka_unit_test_setup_teardown(test_format_truncation_every_length, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kind_names_round_trip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_static_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_oom, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refcount_threads, setup, teardown),
  };
  return cmocka_run_group_tests_name("error", tests, NULL, NULL);
}
