/* Once-cell: init runs once, concurrent callers wait, failures are retried
 * and not cached, thread waits, and the nested-runtime guard. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/alloc.h"
#include "bulwark/runtime.h"
#include "bulwark/sync.h"

#include "support/rt_helpers.h"

/* Each test: counting allocator (leak check) and rh_rt, 2 workers. */

/* The init task: counts runs; fails while `fail_first` > 0; optionally waits
 * on a gate notify before finishing. Its value is a malloc'd int. */
typedef struct init_ctx {
  atomic_int runs;
  atomic_int fail_first;
  bw_notify_t *gate;
  uint64_t ticket;
  bool started;
} init_ctx_t;

static atomic_int values_freed;
static void value_free(void *p) {
  atomic_fetch_add(&values_freed, 1);
  free(p);
}

static bw_poll_t init_task(bw_task_t *self, void *arg) {
  init_ctx_t *c = arg;
  if (!c->started) {
    c->started = true;
    atomic_fetch_add(&c->runs, 1);
  }
  if (c->gate && bw_notify_poll(c->gate, self, &c->ticket) == BW_PENDING) return BW_PENDING;
  c->started = false;
  if (atomic_load(&c->fail_first) > 0) {
    atomic_fetch_sub(&c->fail_first, 1);
    bw_task_set_output(self, NULL, NULL, bw_error_new(BW_ERR_CONNECT, 0, "init: connect refused"));
    return BW_READY;
  }
  int *v = malloc(sizeof *v);
  *v = 1234;
  bw_task_set_output(self, v, free, NULL);
  return BW_READY;
}

/* Reset values_freed and ic (init fails `fail_first` times; gated: it waits
 * on a new notify ic->gate), and return a cell running init_task(ic). */
static bw_once_cell_t *new_cell(init_ctx_t *ic, int fail_first, bool gated) {
  atomic_store(&values_freed, 0);
  memset(ic, 0, sizeof *ic);
  atomic_store(&ic->fail_first, fail_first);
  if (gated) assert_null(bw_notify_new(&ic->gate));
  bw_once_cell_t *cell = NULL;
  assert_null(bw_once_cell_new(&cell, init_task, ic, value_free));
  return cell;
}

typedef struct caller {
  bw_once_cell_t *cell;
  atomic_int parked;
  void *value;
  bw_error_t *err;
} caller_t;

static bw_poll_t caller_task(bw_task_t *self, void *arg) {
  caller_t *c = arg;
  if (bw_once_cell_poll(c->cell, self, &c->value, &c->err) == BW_PENDING) {
    atomic_fetch_add(&c->parked, 1);
    return BW_PENDING;
  }
  return BW_READY;
}

static void test_init_once(void **state) {
  (void)state;
  init_ctx_t ic;
  bw_once_cell_t *cell = new_cell(&ic, 0, false);
  caller_t a = {.cell = cell}, b = {.cell = cell};
  assert_null(bw_block_on(rh_rt, caller_task, &a, NULL));
  assert_null(a.err);
  assert_int_equal(*(int *)a.value, 1234);
  assert_null(bw_block_on(rh_rt, caller_task, &b, NULL));
  assert_ptr_equal(b.value, a.value);
  assert_int_equal(ic.runs, 1);
  void *v;
  assert_null(bw_once_cell_wait(cell, rh_rt, &v)); /* from a thread */
  assert_ptr_equal(v, a.value);
  bw_once_cell_free(cell);
  assert_int_equal(values_freed, 1);
}

static void test_concurrent_callers_wait(void **state) {
  (void)state;
  init_ctx_t ic;
  bw_once_cell_t *cell = new_cell(&ic, 0, true);
  enum { N = 8 };
  caller_t c[N];
  bw_join_t *j[N];
  for (int i = 0; i < N; i++) {
    c[i] = (caller_t){.cell = cell};
    assert_null(bw_spawn(rh_rt, caller_task, &c[i], &j[i]));
  }
  for (int i = 0; i < N; i++)
    while (atomic_load(&c[i].parked) < 1) sched_yield(); /* all waiting */
  while (atomic_load(&ic.runs) < 1) sched_yield();
  for (int i = 0; i < N; i++) assert_false(bw_join_is_finished(j[i]));
  bw_notify_one(ic.gate); /* let init finish */
  for (int i = 0; i < N; i++) {
    assert_null(bw_join_wait(j[i], NULL));
    assert_null(c[i].err);
    assert_int_equal(*(int *)c[i].value, 1234);
    assert_ptr_equal(c[i].value, c[0].value);
  }
  assert_int_equal(ic.runs, 1);
  bw_once_cell_free(cell);
  assert_int_equal(values_freed, 1);
  bw_notify_free(ic.gate);
}

static void test_failure_not_cached(void **state) {
  (void)state;
  init_ctx_t ic;
  bw_once_cell_t *cell = new_cell(&ic, 2, false);
  for (int i = 0; i < 2; i++) {
    caller_t a = {.cell = cell};
    assert_null(bw_block_on(rh_rt, caller_task, &a, NULL));
    assert_true(bw_error_is(a.err, BW_ERR_CONNECT));
    assert_null(a.value);
    bw_error_unref(a.err);
    assert_int_equal(ic.runs, i + 1); /* each caller ran init again */
  }
  void *v = NULL;
  assert_null(bw_once_cell_wait(cell, rh_rt, &v));
  assert_int_equal(*(int *)v, 1234);
  assert_int_equal(ic.runs, 3);
  bw_once_cell_free(cell);
}

/* The starter's init fails while others wait: the starter gets the error,
 * a waiter runs init again and everyone else gets that value. */
static void test_failure_retried_by_waiter(void **state) {
  (void)state;
  init_ctx_t ic;
  bw_once_cell_t *cell = new_cell(&ic, 1, true);
  caller_t starter = {.cell = cell};
  bw_join_t *js;
  assert_null(bw_spawn(rh_rt, caller_task, &starter, &js));
  while (atomic_load(&starter.parked) < 1) sched_yield();
  enum { N = 4 };
  caller_t c[N];
  bw_join_t *j[N];
  for (int i = 0; i < N; i++) {
    c[i] = (caller_t){.cell = cell};
    assert_null(bw_spawn(rh_rt, caller_task, &c[i], &j[i]));
    while (atomic_load(&c[i].parked) < 1) sched_yield();
  }
  bw_notify_one(ic.gate); /* first attempt fails */
  assert_null(bw_join_wait(js, NULL));
  assert_true(bw_error_is(starter.err, BW_ERR_CONNECT));
  bw_error_unref(starter.err);
  while (atomic_load(&ic.runs) < 2) sched_yield(); /* a waiter restarted it */
  bw_notify_one(ic.gate);                          /* second attempt succeeds */
  for (int i = 0; i < N; i++) {
    assert_null(bw_join_wait(j[i], NULL));
    assert_null(c[i].err);
    assert_int_equal(*(int *)c[i].value, 1234);
  }
  assert_int_equal(ic.runs, 2);
  bw_once_cell_free(cell);
  bw_notify_free(ic.gate);
}

/* bw_once_cell_wait from a worker is the nested-runtime error. */
typedef struct nested {
  bw_once_cell_t *cell;
  bw_error_t *err;
} nested_t;
static bw_poll_t nested_task(bw_task_t *self, void *arg) {
  nested_t *n = arg;
  n->err = bw_once_cell_wait(n->cell, bw_task_runtime(self), NULL);
  return BW_READY;
}
static void test_nested_wait_refused(void **state) {
  (void)state;
  init_ctx_t ic;
  bw_once_cell_t *cell = new_cell(&ic, 0, false);
  nested_t n = {cell, NULL};
  assert_null(bw_block_on(rh_rt, nested_task, &n, NULL));
  assert_true(bw_error_is(n.err, BW_ERR_NESTED_RUNTIME));
  bw_error_unref(n.err);
  assert_int_equal(ic.runs, 0);
  bw_once_cell_free(cell);
  bw_error_t *e = bw_once_cell_new(NULL, init_task, NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_once_cell_free(NULL);
}

/* Freeing the cell while init still runs is safe; the value is freed later. */
static void test_free_while_running(void **state) {
  (void)state;
  init_ctx_t ic;
  bw_once_cell_t *cell = new_cell(&ic, 0, true);
  caller_t a = {.cell = cell};
  bw_join_t *ja;
  assert_null(bw_spawn(rh_rt, caller_task, &a, &ja));
  while (atomic_load(&a.parked) < 1) sched_yield();
  bw_join_abort(ja);
  bw_error_t *e = bw_join_wait(ja, NULL);
  bw_error_unref(e);
  bw_once_cell_free(cell);
  bw_notify_one(ic.gate);
  while (atomic_load(&values_freed) < 1) sched_yield(); /* driver finished, freed it */
  bw_notify_free(ic.gate);
}

#define WITH_RT(t) cmocka_unit_test_setup_teardown(t, rh_rt_setup, rh_rt_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      WITH_RT(test_init_once),
      WITH_RT(test_concurrent_callers_wait),
      WITH_RT(test_failure_not_cached),
      WITH_RT(test_failure_retried_by_waiter),
      WITH_RT(test_nested_wait_refused),
      WITH_RT(test_free_while_running),
  };
  return cmocka_run_group_tests_name("sync_once", tests, NULL, NULL);
}
