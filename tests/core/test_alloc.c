/* Tests for the replaceable allocator (src/core/alloc.c). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/alloc.h"
#include "bulwark/error.h"
#include "core/alloc.h"

static long n_malloc, n_calloc, n_realloc, n_free, live;

static void *c_malloc(size_t n) {
  n_malloc++;
  live++;
  return malloc(n);
}
static void *c_calloc(size_t c, size_t n) {
  n_calloc++;
  live++;
  return calloc(c, n);
}
static void *c_realloc(void *p, size_t n) {
  n_realloc++;
  if (p == NULL) live++;
  return realloc(p, n);
}
static void c_free(void *p) {
  n_free++;
  if (p) live--;
  errno = EBADF; /* a free that clobbers errno: bw__free must hide it */
  free(p);
}

static int setup(void **state) {
  (void)state;
  n_malloc = n_calloc = n_realloc = n_free = live = 0;
  bw_allocator_t a = {c_malloc, c_calloc, c_realloc, c_free};
  assert_null(bw_set_allocator(&a));
  return 0;
}
static int teardown(void **state) {
  (void)state;
  assert_null(bw_set_allocator(NULL));
  return 0;
}

static void test_counting_sees_everything(void **state) {
  (void)state;
  void *a = bw__malloc(10);
  void *b = bw__calloc(3, 4);
  assert_non_null(a);
  assert_non_null(b);
  assert_memory_equal(b, (char[12]){0}, 12);
  a = bw__realloc(a, 100);
  assert_non_null(a);
  char *s = bw__strdup("hello");
  assert_string_equal(s, "hello");
  void *z = bw__malloc(0); /* zero size still gives a unique pointer */
  assert_non_null(z);
  assert_int_equal(n_malloc, 3);
  assert_int_equal(n_calloc, 1);
  assert_int_equal(n_realloc, 1);
  errno = 1234;
  bw__free(a);
  assert_int_equal(errno, 1234); /* bw__free keeps errno */
  bw__free(b);
  bw__free(s);
  bw__free(z);
  bw__free(NULL); /* NULL-safe, not passed on */
  assert_int_equal(n_free, 4);
  assert_int_equal(live, 0);
  assert_null(bw__strdup(NULL));

  /* errors allocate through it too */
  bw_error_t *e = bw_error_new(BW_ERR_IO, 0, "x %d", 1);
  assert_int_equal(live, 1);
  bw_error_unref(e);
  assert_int_equal(live, 0);
}

static void test_partial_rejected(void **state) {
  (void)state;
  bw_allocator_t partial = {c_malloc, NULL, c_realloc, c_free};
  bw_error_t *e = bw_set_allocator(&partial);
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  /* the previous (counting) allocator is still in place */
  long before = n_malloc;
  void *p = bw__malloc(8);
  assert_int_equal(n_malloc, before + 1);
  bw__free(p);
  /* all-NULL restores libc */
  bw_allocator_t none = {0};
  assert_null(bw_set_allocator(&none));
  before = n_malloc;
  p = bw__malloc(8);
  assert_int_equal(n_malloc, before);
  free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_counting_sees_everything, setup, teardown),
      cmocka_unit_test_setup_teardown(test_partial_rejected, setup, teardown),
  };
  return cmocka_run_group_tests_name("alloc", tests, NULL, NULL);
}
