/* Notify: permits, notify_one FIFO, notify_waiters, abandoned waits, and a
 * lost-wake-up stress across 2 workers. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "bulwark/alloc.h"
#include "bulwark/runtime.h"
#include "bulwark/sync.h"

#include "support/rt_helpers.h"

/* Each test: counting allocator (leak check) and rh_rt, 2 workers. */

/* A task that waits `waits` times on n; counts its polls and completed waits. */
typedef struct waiter {
  bw_notify_t *n;
  uint64_t ticket;
  int waits;
  atomic_int polls, done;
  atomic_int parked; /* bumped just before returning PENDING */
  int abandon_on_poll; /* >0: on this poll, abandon the wait and finish */
} waiter_t;

static bw_poll_t wait_task(bw_task_t *self, void *arg) {
  waiter_t *w = arg;
  int p = atomic_fetch_add(&w->polls, 1) + 1;
  if (w->abandon_on_poll && p == w->abandon_on_poll) {
    bw_notify_poll_cancel(w->n, &w->ticket);
    return BW_READY;
  }
  while (atomic_load(&w->done) < w->waits) {
    if (bw_notify_poll(w->n, self, &w->ticket) == BW_PENDING) {
      atomic_fetch_add(&w->parked, 1);
      return BW_PENDING;
    }
    atomic_fetch_add(&w->done, 1);
  }
  return BW_READY;
}

/* Wait until w has returned PENDING `n` times (it is registered). */
static void wait_polls(waiter_t *w, int n) {
  while (atomic_load(&w->parked) < n) sched_yield();
}

/* Spawn wait_task(w) on rh_rt and wait until it is registered. */
static bw_join_t *spawn_parked(waiter_t *w) {
  bw_join_t *j = NULL;
  assert_null(bw_spawn(rh_rt, wait_task, w, &j));
  wait_polls(w, 1);
  return j;
}

static bw_notify_t *new_notify(void) {
  bw_notify_t *n = NULL;
  assert_null(bw_notify_new(&n));
  return n;
}

static void test_permit(void **state) {
  (void)state;
  bw_notify_t *n = new_notify();
  bw_notify_one(n);
  bw_notify_one(n); /* at most one permit is stored */
  waiter_t w = {.n = n, .waits = 2};
  bw_join_t *j = spawn_parked(&w);
  /* first wait took the permit, second is pending with nothing to wake it */
  assert_int_equal(atomic_load(&w.done), 1);
  assert_false(bw_join_is_finished(j));
  bw_notify_one(n);
  assert_null(bw_join_wait(j, NULL));
  assert_int_equal(w.done, 2);
  bw_notify_free(n);
}

static void test_notify_one_fifo(void **state) {
  (void)state;
  bw_notify_t *n = new_notify();
  enum { N = 4 };
  waiter_t w[N];
  bw_join_t *j[N];
  for (int i = 0; i < N; i++) {
    w[i] = (waiter_t){.n = n, .waits = 1};
    j[i] = spawn_parked(&w[i]); /* registered in this order */
  }
  for (int i = 0; i < N; i++) {
    bw_notify_one(n);
    assert_null(bw_join_wait(j[i], NULL)); /* the oldest waiter goes first */
    assert_int_equal(w[i].done, 1);
    for (int k = i + 1; k < N; k++) assert_int_equal(atomic_load(&w[k].done), 0);
  }
  bw_notify_free(n);
}

static void test_notify_waiters(void **state) {
  (void)state;
  bw_notify_t *n = new_notify();
  enum { N = 40 }; /* more than one wake batch */
  waiter_t w[N];
  bw_join_t *j[N];
  for (int i = 0; i < N; i++) {
    w[i] = (waiter_t){.n = n, .waits = 1};
    assert_null(bw_spawn(rh_rt, wait_task, &w[i], &j[i]));
  }
  for (int i = 0; i < N; i++) wait_polls(&w[i], 1);
  bw_notify_waiters(n);
  for (int i = 0; i < N; i++) assert_null(bw_join_wait(j[i], NULL));
  /* no permit stored: a later waiter waits */
  waiter_t late = {.n = n, .waits = 1};
  bw_join_t *jl = spawn_parked(&late);
  assert_int_equal(atomic_load(&late.done), 0);
  assert_false(bw_join_is_finished(jl));
  bw_notify_one(n);
  assert_null(bw_join_wait(jl, NULL));
  bw_notify_free(n);
}

/* A waiter given a notify_one that abandons its wait passes it on. */
static void test_abandon_passes_notification(void **state) {
  (void)state;
  bw_notify_t *n = new_notify();
  waiter_t a = {.n = n, .waits = 1, .abandon_on_poll = 2};
  waiter_t b = {.n = n, .waits = 1};
  bw_join_t *ja = spawn_parked(&a);
  bw_join_t *jb = spawn_parked(&b);
  bw_notify_one(n); /* goes to a, which abandons on its next poll */
  assert_null(bw_join_wait(ja, NULL));
  assert_int_equal(atomic_load(&a.done), 0);
  assert_null(bw_join_wait(jb, NULL)); /* b got it instead */
  assert_int_equal(b.done, 1);
  /* abandoning a wait that was not notified just frees the slot */
  waiter_t c = {.n = n, .waits = 1};
  bw_join_t *jc = spawn_parked(&c);
  bw_join_abort(jc);
  bw_error_t *e = bw_join_wait(jc, NULL);
  bw_error_unref(e);
  bw_notify_poll_cancel(n, &c.ticket);
  assert_int_equal(c.ticket, 0);
  bw_notify_one(n); /* nobody waits: becomes the permit */
  waiter_t d = {.n = n, .waits = 1};
  assert_null(bw_block_on(rh_rt, wait_task, &d, NULL));
  assert_int_equal(d.polls, 1);
  bw_notify_poll_cancel(n, &d.ticket); /* ticket 0: no-op */
  bw_notify_poll_cancel(NULL, NULL);
  bw_notify_free(n);
}

/* No lost wake-ups: producers on both workers bump a counter and
 * notify_one; the consumer re-checks the counter after each wake. */
typedef struct stress {
  bw_notify_t *n;
  atomic_long counter;
  long target;
  int per_producer;
} stress_t;

static bw_poll_t producer(bw_task_t *self, void *arg) {
  stress_t *s = arg;
  for (int i = 0; i < s->per_producer; i++) {
    atomic_fetch_add(&s->counter, 1);
    bw_notify_one(s->n);
  }
  return BW_READY;
}

typedef struct consumer {
  stress_t *s;
  uint64_t ticket;
  long wakes;
} consumer_t;

static bw_poll_t consumer_task(bw_task_t *self, void *arg) {
  consumer_t *c = arg;
  for (;;) {
    if (atomic_load(&c->s->counter) == c->s->target) {
      bw_notify_poll_cancel(c->s->n, &c->ticket);
      return BW_READY;
    }
    if (bw_notify_poll(c->s->n, self, &c->ticket) == BW_PENDING) return BW_PENDING;
    c->wakes++;
  }
}

static void test_no_lost_wakeups(void **state) {
  (void)state;
  int rounds = rh_scaled(1000);
  for (int r = 0; r < rounds; r++) {
    stress_t s = {.per_producer = 50};
    assert_null(bw_notify_new(&s.n));
    enum { P = 4 };
    s.target = (long)P * s.per_producer;
    consumer_t c = {.s = &s};
    bw_join_t *jc;
    assert_null(bw_spawn(rh_rt, consumer_task, &c, &jc));
    bw_join_t *jp[P];
    for (int i = 0; i < P; i++) assert_null(bw_spawn(rh_rt, producer, &s, &jp[i]));
    assert_null(bw_join_wait(jc, NULL)); /* hangs (ctest timeout) if a wake-up is lost */
    for (int i = 0; i < P; i++) assert_null(bw_join_wait(jp[i], NULL));
    assert_int_equal(atomic_load(&s.counter), s.target);
    bw_notify_free(s.n);
  }
}

static void test_bad_args(void **state) {
  (void)state;
  bw_error_t *e = bw_notify_new(NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_notify_free(NULL);
  bw_notify_one(NULL);
  bw_notify_waiters(NULL);
}

#define WITH_RT(t) cmocka_unit_test_setup_teardown(t, rh_rt_setup, rh_rt_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      WITH_RT(test_permit),
      WITH_RT(test_notify_one_fifo),
      WITH_RT(test_notify_waiters),
      WITH_RT(test_abandon_passes_notification),
      WITH_RT(test_no_lost_wakeups),
      WITH_RT(test_bad_args),
  };
  return cmocka_run_group_tests_name("sync_notify", tests, NULL, NULL);
}
