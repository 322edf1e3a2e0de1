/* One-shot channels: delivery, closed ends, no leaks of undelivered values,
 * thread and task receivers, and a cross-worker ping-pong stress. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "bulwark/alloc.h"
#include "bulwark/runtime.h"
#include "bulwark/sync.h"

#include "support/rt_helpers.h"

/* Each test: counting allocator with leak check (rh_count_setup). */

/* A value that counts its frees. */
static atomic_int freed_values;
static void value_free(void *p) {
  atomic_fetch_add(&freed_values, 1);
  free(p);
}
static int *new_value(int v) {
  int *p = malloc(sizeof *p);
  *p = v;
  return p;
}

/* ---- from threads --------------------------------------------------------- */

static void test_send_then_recv(void **state) {
  (void)state;
  bw_oneshot_t *ch;
  assert_null(bw_oneshot_new(&ch));
  assert_true(bw_oneshot_send(ch, (void *)(intptr_t)42, NULL));
  void *v = NULL;
  assert_null(bw_oneshot_recv_wait(ch, &v));
  assert_int_equal((intptr_t)v, 42);
}

static void test_sender_closed(void **state) {
  (void)state;
  bw_oneshot_t *ch;
  assert_null(bw_oneshot_new(&ch));
  bw_oneshot_close_sender(ch);
  void *v = (void *)1;
  bw_error_t *e = bw_oneshot_recv_wait(ch, &v);
  assert_true(bw_error_is(e, BW_ERR_CANCELLED));
  assert_null(v);
  bw_error_unref(e);
}

static void test_receiver_closed_frees_value(void **state) {
  (void)state;
  atomic_store(&freed_values, 0);
  bw_oneshot_t *ch;
  assert_null(bw_oneshot_new(&ch));
  bw_oneshot_close_receiver(ch);
  assert_false(bw_oneshot_send(ch, new_value(1), value_free)); /* detected */
  assert_int_equal(freed_values, 1);
  /* sent but never received: freed when the receiver closes */
  assert_null(bw_oneshot_new(&ch));
  assert_true(bw_oneshot_send(ch, new_value(2), value_free));
  assert_int_equal(freed_values, 1);
  bw_oneshot_close_receiver(ch);
  assert_int_equal(freed_values, 2);
  /* received: the receiver owns it, the channel does not free it */
  assert_null(bw_oneshot_new(&ch));
  int *p = new_value(3);
  assert_true(bw_oneshot_send(ch, p, value_free));
  void *v;
  assert_null(bw_oneshot_recv_wait(ch, &v));
  assert_ptr_equal(v, p);
  assert_int_equal(freed_values, 2);
  free(v);
  /* both ends closed without a value */
  assert_null(bw_oneshot_new(&ch));
  bw_oneshot_close_sender(ch);
  bw_oneshot_close_receiver(ch);
}

static void test_out_of_memory(void **state) {
  (void)state;
  bw_oneshot_t *ch = NULL;
  atomic_store(&rh_fail_all, 1);
  bw_error_t *e = bw_oneshot_new(&ch);
  atomic_store(&rh_fail_all, 0);
  assert_int_equal(bw_error_kind(e), BW_ERR_OUT_OF_MEMORY);
  assert_null(ch);
}

static void test_null_args(void **state) {
  (void)state;
  bw_error_t *e = bw_oneshot_new(NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  atomic_store(&freed_values, 0);
  assert_false(bw_oneshot_send(NULL, new_value(0), value_free));
  assert_int_equal(freed_values, 1);
  bw_oneshot_close_sender(NULL);
  bw_oneshot_close_receiver(NULL);
}

typedef struct tx_arg {
  bw_oneshot_t *ch;
  int mode; /* 0 send, 1 close */
} tx_arg_t;

static void *sender_thread(void *p) {
  tx_arg_t *a = p;
  if (a->mode == 0)
    bw_oneshot_send(a->ch, new_value(7), value_free);
  else
    bw_oneshot_close_sender(a->ch);
  return NULL;
}

static void test_thread_race(void **state) {
  (void)state;
  int iters = rh_scaled(3000);
  atomic_store(&freed_values, 0);
  int got = 0, cancelled = 0, closed_rx = 0;
  for (int i = 0; i < iters; i++) {
    bw_oneshot_t *ch;
    assert_null(bw_oneshot_new(&ch));
    tx_arg_t a = {ch, i % 3 == 2};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, sender_thread, &a), 0);
    if (i % 5 == 4) {
      bw_oneshot_close_receiver(ch); /* races the send */
      closed_rx++;
    } else {
      void *v = NULL;
      bw_error_t *e = bw_oneshot_recv_wait(ch, &v);
      if (e) {
        assert_true(bw_error_is(e, BW_ERR_CANCELLED));
        assert_int_equal(a.mode, 1);
        cancelled++;
      } else {
        assert_int_equal(*(int *)v, 7);
        value_free(v);
        got++;
      }
    }
    pthread_join(th, NULL);
  }
  assert_int_equal(got + cancelled + closed_rx, iters);
  assert_true(got > 0);
}

/* ---- tasks ------------------------------------------------------------------- */

typedef struct rx_task {
  bw_oneshot_t *ch;
  atomic_int polls;
  void *value;
  bw_error_t *err;
} rx_task_t;

static bw_poll_t recv_task(bw_task_t *self, void *arg) {
  rx_task_t *r = arg;
  atomic_fetch_add(&r->polls, 1);
  if (bw_oneshot_poll_recv(r->ch, self, &r->value, &r->err) == BW_PENDING) return BW_PENDING;
  bw_task_set_output(self, NULL, NULL, NULL);
  return BW_READY;
}

static void test_task_receiver(void **state) {
  (void)state;
  bw_runtime_t *rt = rh_runtime(2);
  for (int mode = 0; mode < 2; mode++) {
    rx_task_t r = {0};
    assert_null(bw_oneshot_new(&r.ch));
    bw_join_t *j;
    assert_null(bw_spawn(rt, recv_task, &r, &j));
    while (atomic_load(&r.polls) < 1) sched_yield(); /* it is waiting */
    if (mode == 0)
      assert_true(bw_oneshot_send(r.ch, (void *)(intptr_t)99, NULL));
    else
      bw_oneshot_close_sender(r.ch);
    assert_null(bw_join_wait(j, NULL));
    if (mode == 0) {
      assert_null(r.err);
      assert_int_equal((intptr_t)r.value, 99);
    } else {
      assert_true(bw_error_is(r.err, BW_ERR_CANCELLED));
      bw_error_unref(r.err);
    }
  }
  bw_runtime_free(rt);
}

/* recv_wait from a worker is refused, and the receiver end stays usable. */
typedef struct nested {
  bw_oneshot_t *ch;
  bw_error_t *err;
} nested_t;
static bw_poll_t nested_task(bw_task_t *self, void *arg) {
  nested_t *n = arg;
  n->err = bw_oneshot_recv_wait(n->ch, NULL);
  return BW_READY;
}
static void test_recv_wait_on_worker_refused(void **state) {
  (void)state;
  bw_runtime_t *rt = rh_runtime(1);
  nested_t n = {0};
  assert_null(bw_oneshot_new(&n.ch));
  assert_null(bw_block_on(rt, nested_task, &n, NULL));
  assert_true(bw_error_is(n.err, BW_ERR_NESTED_RUNTIME));
  bw_error_unref(n.err);
  assert_true(bw_oneshot_send(n.ch, (void *)(intptr_t)5, NULL));
  void *v;
  assert_null(bw_oneshot_recv_wait(n.ch, &v));
  assert_int_equal((intptr_t)v, 5);
  bw_runtime_free(rt);
}

/* A receiving task aborted while waiting: its waker is released, no leak. */
static void test_task_receiver_aborted(void **state) {
  (void)state;
  bw_runtime_t *rt = rh_runtime(1);
  rx_task_t r = {0};
  assert_null(bw_oneshot_new(&r.ch));
  bw_join_t *j;
  assert_null(bw_spawn(rt, recv_task, &r, &j));
  while (atomic_load(&r.polls) < 1) sched_yield();
  bw_join_abort(j);
  bw_error_t *e = bw_join_wait(j, NULL);
  assert_true(bw_error_is(e, BW_ERR_CANCELLED));
  bw_error_unref(e);
  bw_oneshot_close_receiver(r.ch); /* the task's owner releases its end */
  atomic_store(&freed_values, 0);
  assert_false(bw_oneshot_send(r.ch, new_value(1), value_free));
  assert_int_equal(freed_values, 1);
  bw_runtime_free(rt);
}

/* ping-pong: pairs of tasks on 2 workers, A sends to B, B answers A. */
typedef struct pp {
  bw_oneshot_t *to_b, *to_a;
  int stage;
} pp_t;

static bw_poll_t pp_b(bw_task_t *self, void *arg) {
  pp_t *p = arg;
  void *v;
  bw_error_t *e;
  if (bw_oneshot_poll_recv(p->to_b, self, &v, &e) == BW_PENDING) return BW_PENDING;
  if (e) abort();
  bw_oneshot_send(p->to_a, (void *)((intptr_t)v + 1), NULL);
  return BW_READY;
}

static bw_poll_t pp_a(bw_task_t *self, void *arg) {
  pp_t *p = arg;
  if (p->stage == 0) {
    p->stage = 1;
    bw_oneshot_send(p->to_b, (void *)(intptr_t)41, NULL);
  }
  void *v;
  bw_error_t *e;
  if (bw_oneshot_poll_recv(p->to_a, self, &v, &e) == BW_PENDING) return BW_PENDING;
  if (e || (intptr_t)v != 42) abort();
  bw_task_set_output(self, v, NULL, NULL);
  return BW_READY;
}

static void test_ping_pong_stress(void **state) {
  (void)state;
  bw_runtime_t *rt = rh_runtime(2);
  int rounds = rh_scaled(2000);
  enum { BATCH = 64 };
  pp_t pp[BATCH];
  bw_join_t *ja[BATCH];
  for (int r = 0; r < rounds; r += BATCH) {
    for (int i = 0; i < BATCH; i++) {
      pp[i].stage = 0;
      assert_null(bw_oneshot_new(&pp[i].to_b));
      assert_null(bw_oneshot_new(&pp[i].to_a));
      assert_null(bw_spawn(rt, pp_b, &pp[i], NULL));
      assert_null(bw_spawn(rt, pp_a, &pp[i], &ja[i]));
    }
    for (int i = 0; i < BATCH; i++) {
      void *v;
      assert_null(bw_join_wait(ja[i], &v));
      assert_int_equal((intptr_t)v, 42);
    }
  }
  bw_runtime_free(rt);
}

#define COUNTED(t) cmocka_unit_test_setup_teardown(t, rh_count_setup, rh_count_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      COUNTED(test_send_then_recv),
      COUNTED(test_sender_closed),
      COUNTED(test_receiver_closed_frees_value),
      COUNTED(test_null_args),
      COUNTED(test_out_of_memory),
      COUNTED(test_thread_race),
      COUNTED(test_task_receiver),
      COUNTED(test_task_receiver_aborted),
      COUNTED(test_recv_wait_on_worker_refused),
      COUNTED(test_ping_pong_stress),
  };
  return cmocka_run_group_tests_name("sync_oneshot", tests, NULL, NULL);
}
