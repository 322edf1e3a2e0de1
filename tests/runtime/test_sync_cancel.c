/* Cancellation tokens: callbacks, children, lifetimes, unregister races,
 * intrusive registrations, and tasks waiting on a token. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/alloc.h"
#include "bulwark/runtime.h"
#include "bulwark/sync.h"
#include "runtime/cancel_internal.h"
#include "support/rt_helpers.h"

/* Each test: counting allocator with leak check (rh_count_setup). */
static void count_cb(void *arg) { atomic_fetch_add((atomic_int *)arg, 1); }

/* ---- callbacks ---------------------------------------------------------- */

static void test_callbacks_run_once(void **state) {
  (void)state;
  bw_cancel_token_t *t;
  assert_null(bw_cancel_token_new(&t));
  assert_false(bw_cancel_token_is_cancelled(t));
  atomic_int a = 0, b = 0, c = 0;
  bw_cancel_reg_t *ra, *rb;
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &a, &ra));
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &b, &rb));
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &c, NULL)); /* token-owned */
  assert_true(bw_cancel_reg_remove(rb)); /* removed before: never runs */
  assert_int_equal(a + b + c, 0);
  bw_cancel_token_cancel(t);
  assert_true(bw_cancel_token_is_cancelled(t));
  assert_int_equal(a, 1);
  assert_int_equal(b, 0);
  assert_int_equal(c, 1);
  bw_cancel_token_cancel(t); /* idempotent */
  assert_int_equal(a, 1);
  assert_int_equal(c, 1);
  assert_false(bw_cancel_reg_remove(ra)); /* it ran */
  /* registering on a cancelled token runs at once, on this thread */
  atomic_int d = 0;
  bw_cancel_reg_t *rd;
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &d, &rd));
  assert_int_equal(d, 1);
  assert_false(bw_cancel_reg_remove(rd));
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &d, NULL));
  assert_int_equal(d, 2);
  bw_cancel_token_unref(t);
}

static void test_bad_arguments(void **state) {
  (void)state;
  bw_error_t *e = bw_cancel_token_new(NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_cancel_token_t *t;
  e = bw_cancel_token_child(NULL, &t);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  assert_null(bw_cancel_token_new(&t));
  bw_cancel_reg_t *r = (bw_cancel_reg_t *)1;
  e = bw_cancel_token_on_cancel(t, NULL, NULL, &r);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  assert_null(r);
  bw_error_unref(e);
  bw_cancel_token_cancel(NULL);
  bw_cancel_token_unref(NULL);
  assert_false(bw_cancel_token_is_cancelled(NULL));
  assert_false(bw_cancel_reg_remove(NULL));
  bw_cancel_token_unref(t);
}

/* Dropping the last handle releases registrations without running them. */
static void test_unref_drops_callbacks(void **state) {
  (void)state;
  bw_cancel_token_t *t;
  assert_null(bw_cancel_token_new(&t));
  atomic_int a = 0, b = 0;
  bw_cancel_reg_t *ra;
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &a, &ra));
  assert_null(bw_cancel_token_on_cancel(t, count_cb, &b, NULL));
  bw_cancel_token_t *t2 = bw_cancel_token_ref(t);
  bw_cancel_token_unref(t);
  assert_false(bw_cancel_token_is_cancelled(t2));
  bw_cancel_token_unref(t2); /* last handle */
  assert_int_equal(a + b, 0);
  assert_true(bw_cancel_reg_remove(ra)); /* never ran, never will */
}

/* ---- children ------------------------------------------------------------ */

static void test_children_tree(void **state) {
  (void)state;
  bw_cancel_token_t *p, *c1, *c2, *g;
  assert_null(bw_cancel_token_new(&p));
  assert_null(bw_cancel_token_child(p, &c1));
  assert_null(bw_cancel_token_child(p, &c2));
  assert_null(bw_cancel_token_child(c1, &g));
  atomic_int np = 0, nc1 = 0, nc2 = 0, ng = 0;
  assert_null(bw_cancel_token_on_cancel(p, count_cb, &np, NULL));
  assert_null(bw_cancel_token_on_cancel(c1, count_cb, &nc1, NULL));
  assert_null(bw_cancel_token_on_cancel(c2, count_cb, &nc2, NULL));
  assert_null(bw_cancel_token_on_cancel(g, count_cb, &ng, NULL));

  bw_cancel_token_cancel(c1); /* a child never cancels its parent */
  assert_true(bw_cancel_token_is_cancelled(c1));
  assert_true(bw_cancel_token_is_cancelled(g));
  assert_false(bw_cancel_token_is_cancelled(p));
  assert_false(bw_cancel_token_is_cancelled(c2));
  assert_int_equal(np, 0);
  assert_int_equal(nc1, 1);
  assert_int_equal(ng, 1);

  bw_cancel_token_cancel(p);
  assert_true(bw_cancel_token_is_cancelled(c2));
  assert_int_equal(np, 1);
  assert_int_equal(nc1, 1); /* still once */
  assert_int_equal(nc2, 1);
  assert_int_equal(ng, 1);

  /* a child of a cancelled token is born cancelled */
  bw_cancel_token_t *late;
  assert_null(bw_cancel_token_child(p, &late));
  assert_true(bw_cancel_token_is_cancelled(late));
  bw_cancel_token_unref(late);

  bw_cancel_token_unref(g);
  bw_cancel_token_unref(c2);
  bw_cancel_token_unref(p); /* parent before its child c1 */
  bw_cancel_token_unref(c1);
}

/* The parent's handle goes first: the child still works and the
 * grandparent's cancel still reaches it through the released middle node. */
static void test_parent_freed_first(void **state) {
  (void)state;
  bw_cancel_token_t *root, *mid, *leaf;
  assert_null(bw_cancel_token_new(&root));
  assert_null(bw_cancel_token_child(root, &mid));
  assert_null(bw_cancel_token_child(mid, &leaf));
  atomic_int nmid = 0, nleaf = 0;
  assert_null(bw_cancel_token_on_cancel(mid, count_cb, &nmid, NULL));
  assert_null(bw_cancel_token_on_cancel(leaf, count_cb, &nleaf, NULL));
  bw_cancel_token_unref(mid); /* mid's callbacks are released now */
  assert_false(bw_cancel_token_is_cancelled(leaf));
  bw_cancel_token_cancel(root);
  assert_true(bw_cancel_token_is_cancelled(leaf));
  assert_int_equal(nleaf, 1);
  assert_int_equal(nmid, 0);
  bw_cancel_token_unref(root);
  bw_cancel_token_unref(leaf);

  /* root freed first, then the leaf cancels on its own */
  assert_null(bw_cancel_token_new(&root));
  assert_null(bw_cancel_token_child(root, &leaf));
  bw_cancel_token_unref(root);
  bw_cancel_token_cancel(leaf);
  assert_true(bw_cancel_token_is_cancelled(leaf));
  bw_cancel_token_unref(leaf);
}

/* Short-lived children of a long-lived parent do not accumulate. */
static void test_children_freed_first_no_growth(void **state) {
  (void)state;
  bw_cancel_token_t *p;
  assert_null(bw_cancel_token_new(&p));
  long base = atomic_load(&rh_live);
  for (int i = 0; i < 10000; i++) {
    bw_cancel_token_t *c;
    assert_null(bw_cancel_token_child(p, &c));
    bw_cancel_reg_t *r;
    atomic_int n = 0;
    assert_null(bw_cancel_token_on_cancel(c, count_cb, &n, &r));
    if (i % 3 == 0) bw_cancel_token_cancel(c);
    bw_cancel_reg_remove(r);
    bw_cancel_token_unref(c);
    assert_int_equal(atomic_load(&rh_live), base);
  }
  assert_false(bw_cancel_token_is_cancelled(p));
  bw_cancel_token_unref(p);
}

/* A callback may drop the last handle of the token being cancelled. */
static bw_cancel_token_t *self_token;
static void unref_cb(void *arg) {
  atomic_fetch_add((atomic_int *)arg, 1);
  bw_cancel_token_unref(self_token);
}
static void test_callback_drops_last_handle(void **state) {
  (void)state;
  bw_cancel_token_t *c;
  assert_null(bw_cancel_token_new(&self_token));
  assert_null(bw_cancel_token_child(self_token, &c));
  atomic_int n = 0, nc = 0;
  assert_null(bw_cancel_token_on_cancel(self_token, unref_cb, &n, NULL));
  assert_null(bw_cancel_token_on_cancel(c, count_cb, &nc, NULL));
  bw_cancel_token_cancel(self_token); /* the caller's handle dies inside */
  assert_int_equal(n, 1);
  assert_int_equal(nc, 1);
  bw_cancel_token_unref(c);
}

/* Deep chains cancel and free without recursion. */
static void test_deep_chain(void **state) {
  (void)state;
  enum { DEPTH = 50000 };
  bw_cancel_token_t *root;
  assert_null(bw_cancel_token_new(&root));
  bw_cancel_token_t *cur = root, *last = NULL;
  for (int i = 0; i < DEPTH; i++) {
    bw_cancel_token_t *c;
    assert_null(bw_cancel_token_child(cur, &c));
    if (cur != root) bw_cancel_token_unref(cur); /* only the ends keep handles */
    cur = c;
  }
  last = cur;
  atomic_int n = 0;
  assert_null(bw_cancel_token_on_cancel(last, count_cb, &n, NULL));
  bw_cancel_token_cancel(root);
  assert_int_equal(n, 1);
  bw_cancel_token_unref(root);
  bw_cancel_token_unref(last); /* frees the whole chain, iteratively */
}

/* Out of memory: errors, nothing registered, nothing leaked; cancel and
 * intrusive registration still work. */
static void test_out_of_memory(void **state) {
  (void)state;
  bw_cancel_token_t *t, *c;
  assert_null(bw_cancel_token_new(&t));
  atomic_store(&rh_fail_all, 1);
  bw_cancel_token_t *x = NULL;
  bw_error_t *e = bw_cancel_token_new(&x);
  assert_int_equal(bw_error_kind(e), BW_ERR_OUT_OF_MEMORY);
  assert_null(x);
  e = bw_cancel_token_child(t, &c);
  assert_int_equal(bw_error_kind(e), BW_ERR_OUT_OF_MEMORY);
  atomic_int n = 0;
  bw_cancel_reg_t *r = (bw_cancel_reg_t *)1;
  e = bw_cancel_token_on_cancel(t, count_cb, &n, &r);
  assert_int_equal(bw_error_kind(e), BW_ERR_OUT_OF_MEMORY);
  assert_null(r);
  bw__cancel_reg_t ir;
  bw__cancel_reg_init(&ir, count_cb, &n);
  assert_int_equal(bw__cancel_reg_add(t, &ir), BW__CANCEL_ADDED);
  bw_cancel_token_cancel(t);
  assert_int_equal(n, 1); /* only the intrusive one */
  atomic_store(&rh_fail_all, 0);
  bw_cancel_token_unref(t);
}

/* ---- intrusive registrations ---------------------------------------------- */

typedef struct call_state {
  bw__cancel_reg_t reg;
  atomic_int fired;
  bool del_inside;
  bool del_result;
} call_state_t;

static void intrusive_cb(void *arg) {
  call_state_t *st = arg;
  atomic_fetch_add(&st->fired, 1);
  if (st->del_inside) {
    st->del_result = bw__cancel_reg_del(&st->reg);
    free(st); /* the reg's memory goes away inside its own callback */
  }
}

static void test_intrusive(void **state) {
  (void)state;
  bw_cancel_token_t *t;
  assert_null(bw_cancel_token_new(&t));
  call_state_t a = {0}, b = {0};
  bw__cancel_reg_init(&a.reg, intrusive_cb, &a);
  bw__cancel_reg_init(&b.reg, intrusive_cb, &b);
  assert_false(bw__cancel_reg_del(&a.reg)); /* never added */
  assert_int_equal(bw__cancel_reg_add(t, &a.reg), BW__CANCEL_ADDED);
  assert_int_equal(bw__cancel_reg_add(t, &b.reg), BW__CANCEL_ADDED);
  assert_true(bw__cancel_reg_del(&a.reg));
  assert_int_equal(bw__cancel_reg_add(t, &a.reg), BW__CANCEL_ADDED); /* re-add */
  call_state_t *heap = calloc(1, sizeof *heap);
  heap->del_inside = true;
  bw__cancel_reg_init(&heap->reg, intrusive_cb, heap);
  assert_int_equal(bw__cancel_reg_add(t, &heap->reg), BW__CANCEL_ADDED);

  long before = atomic_load(&rh_total);
  bw_cancel_token_cancel(t);
  assert_int_equal(atomic_load(&rh_total), before); /* cancel allocates nothing */
  assert_int_equal(a.fired, 1);
  assert_int_equal(b.fired, 1);
  assert_false(bw__cancel_reg_del(&a.reg));
  assert_false(bw__cancel_reg_del(&b.reg));
  call_state_t c = {0};
  bw__cancel_reg_init(&c.reg, intrusive_cb, &c);
  assert_int_equal(bw__cancel_reg_add(t, &c.reg), BW__CANCEL_ALREADY);
  assert_int_equal(c.fired, 0); /* not called by add */
  bw_cancel_token_unref(t);
}

static bool heap_del_result;
static void del_inside_record(void *arg) {
  call_state_t *st = arg;
  heap_del_result = bw__cancel_reg_del(&st->reg);
  atomic_fetch_add(&st->fired, 1);
}
static void test_intrusive_del_inside(void **state) {
  (void)state;
  bw_cancel_token_t *t;
  assert_null(bw_cancel_token_new(&t));
  call_state_t st = {0};
  heap_del_result = true;
  bw__cancel_reg_init(&st.reg, del_inside_record, &st);
  assert_int_equal(bw__cancel_reg_add(t, &st.reg), BW__CANCEL_ADDED);
  bw_cancel_token_cancel(t); /* del from inside returns false at once */
  assert_int_equal(st.fired, 1);
  assert_false(heap_del_result);
  bw_cancel_token_unref(t);
}

/* ---- races (run under TSan) -------------------------------------------------- */

typedef struct race {
  bw_cancel_token_t *t;
  bw__cancel_reg_t reg;
  atomic_int go;
  atomic_int started, finished;
  int *payload; /* freed by the remover; the callback writes it */
} race_t;

static void race_cb(void *arg) {
  race_t *r = arg;
  atomic_store(&r->started, 1);
  for (int i = 0; i < 50; i++) r->payload[i % 4]++; /* touch memory the remover frees */
  atomic_store(&r->finished, 1);
}

static void *race_canceller(void *arg) {
  race_t *r = arg;
  while (!atomic_load(&r->go)) {
  }
  bw_cancel_token_cancel(r->t);
  return NULL;
}

static void test_unregister_cancel_race(void **state) {
  (void)state;
  int iters = rh_scaled(5000);
  int removed_n = 0, ran_n = 0;
  for (int i = 0; i < iters; i++) {
    race_t r = {0};
    r.payload = calloc(4, sizeof(int));
    assert_null(bw_cancel_token_new(&r.t));
    bw__cancel_reg_init(&r.reg, race_cb, &r);
    assert_int_equal(bw__cancel_reg_add(r.t, &r.reg), BW__CANCEL_ADDED);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, race_canceller, &r), 0);
    atomic_store(&r.go, 1);
    bool removed = bw__cancel_reg_del(&r.reg);
    if (removed) {
      removed_n++;
      assert_int_equal(atomic_load(&r.started), 0);
    } else {
      ran_n++;
      assert_int_equal(atomic_load(&r.finished), 1); /* del waited for it */
    }
    free(r.payload); /* safe: the callback is not running and will not run */
    pthread_join(th, NULL);
    assert_int_equal(atomic_load(&r.started), removed ? 0 : 1);
    bw_cancel_token_unref(r.t);
  }
  assert_int_equal(removed_n + ran_n, iters);
}

/* Public registrations racing cancel, and the parent cancelled while
 * children are created and freed on other threads. */
typedef struct tree_race {
  bw_cancel_token_t *parent;
  atomic_int go;
  atomic_int cancel_done; /* set after bw_cancel_token_cancel(parent) returned */
  atomic_int fired;
  atomic_int cancelled_children;
  int n;
} tree_race_t;

static void *child_churn(void *arg) {
  tree_race_t *tr = arg;
  while (!atomic_load(&tr->go)) {
  }
  for (int i = 0; i < tr->n; i++) {
    bw_cancel_token_t *c;
    int done_before = atomic_load(&tr->cancel_done);
    if (bw_cancel_token_child(tr->parent, &c) != NULL) abort();
    /* made after the cancel finished: born cancelled */
    if (done_before && !bw_cancel_token_is_cancelled(c)) abort();
    bw_cancel_reg_t *reg;
    if (bw_cancel_token_on_cancel(c, count_cb, &tr->fired, &reg) != NULL) abort();
    if (!bw_cancel_reg_remove(reg)) {
      /* it ran: the parent must be cancelled by now */
      if (!bw_cancel_token_is_cancelled(tr->parent)) abort();
      atomic_fetch_add(&tr->cancelled_children, 1);
    }
    bw_cancel_token_unref(c);
  }
  return NULL;
}

static void test_tree_race(void **state) {
  (void)state;
  int rounds = rh_scaled(200);
  for (int round = 0; round < rounds; round++) {
    tree_race_t tr = {0};
    tr.n = 50;
    assert_null(bw_cancel_token_new(&tr.parent));
    pthread_t th[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, child_churn, &tr), 0);
    atomic_store(&tr.go, 1);
    bw_cancel_token_cancel(tr.parent);
    atomic_store(&tr.cancel_done, 1);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&tr.fired), atomic_load(&tr.cancelled_children));
    bw_cancel_token_unref(tr.parent);
  }
}

/* ---- tasks waiting on a token ---------------------------------------------- */

typedef struct waiter {
  bw_cancel_token_t *t;
  atomic_int *polls;
  atomic_int *ready;
} waiter_t;

static bw_poll_t wait_task(bw_task_t *self, void *arg) {
  waiter_t *w = arg;
  atomic_fetch_add(w->polls, 1);
  if (bw_cancel_token_poll(w->t, self) == BW_PENDING) return BW_PENDING;
  atomic_fetch_add(w->ready, 1);
  bw_task_set_output(self, NULL, NULL, NULL);
  return BW_READY;
}

static void test_tasks_wait_on_token(void **state) {
  (void)state;
  bw_runtime_t *rt = rh_runtime(2);
  enum { N = 16 };
  bw_cancel_token_t *parent, *child;
  assert_null(bw_cancel_token_new(&parent));
  assert_null(bw_cancel_token_child(parent, &child));
  atomic_int polls = 0, ready = 0;
  waiter_t w[N];
  bw_join_t *j[N];
  for (int i = 0; i < N; i++) {
    w[i] = (waiter_t){(i % 2) ? parent : child, &polls, &ready};
    assert_null(bw_spawn(rt, wait_task, &w[i], &j[i]));
  }
  /* every task has polled at least once and is parked on the token */
  while (atomic_load(&polls) < N) sched_yield();
  assert_int_equal(atomic_load(&ready), 0);
  bw_cancel_token_cancel(parent); /* wakes the child's waiters too */
  for (int i = 0; i < N; i++) assert_null(bw_join_wait(j[i], NULL));
  assert_int_equal(atomic_load(&ready), N);
  /* an already-cancelled token is READY at once */
  atomic_int p2 = 0, r2 = 0;
  waiter_t w2 = {child, &p2, &r2};
  assert_null(bw_block_on(rt, wait_task, &w2, NULL));
  assert_int_equal(r2, 1);
  assert_int_equal(p2, 1);
  bw_cancel_token_unref(child);
  bw_cancel_token_unref(parent);
  bw_runtime_free(rt);
}

/* A task waiting on a token that is dropped without cancel releases its waker. */
static void test_waiting_task_token_dropped(void **state) {
  (void)state;
  bw_runtime_t *rt = rh_runtime(1);
  bw_cancel_token_t *t;
  assert_null(bw_cancel_token_new(&t));
  atomic_int polls = 0, ready = 0;
  waiter_t w = {t, &polls, &ready};
  bw_join_t *j;
  assert_null(bw_spawn(rt, wait_task, &w, &j));
  while (atomic_load(&polls) < 1) sched_yield();
  bw_join_abort(j);
  bw_error_t *e = bw_join_wait(j, NULL);
  assert_true(bw_error_is(e, BW_ERR_CANCELLED));
  bw_error_unref(e);
  bw_cancel_token_unref(t); /* drops the waker it kept: no leak */
  bw_runtime_free(rt);
}

#define COUNTED(t) cmocka_unit_test_setup_teardown(t, rh_count_setup, rh_count_teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      COUNTED(test_callbacks_run_once),
      COUNTED(test_bad_arguments),
      COUNTED(test_unref_drops_callbacks),
      COUNTED(test_children_tree),
      COUNTED(test_parent_freed_first),
      COUNTED(test_children_freed_first_no_growth),
      COUNTED(test_callback_drops_last_handle),
      COUNTED(test_deep_chain),
      COUNTED(test_out_of_memory),
      COUNTED(test_intrusive),
      COUNTED(test_intrusive_del_inside),
      COUNTED(test_unregister_cancel_race),
      COUNTED(test_tree_race),
      COUNTED(test_tasks_wait_on_token),
      COUNTED(test_waiting_task_token_dropped),
  };
  return cmocka_run_group_tests_name("sync_cancel", tests, NULL, NULL);
}
