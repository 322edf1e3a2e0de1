/* The service/call contract: function services, ownership, where callbacks
 * run, cancellation, child deadlines. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "h4_util.h"

/* ---- services used here ----------------------------------------------------- */

static atomic_int req_freed;
static void req_free(void *p) {
  atomic_fetch_add(&req_freed, 1);
  free(p);
}

static bw_error_t *echo_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  int *req = bw_call_request(call);
  if (!req) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "no request");
  if (*req < 0) return bw_error_new(BW_ERR_TRANSPORT, *req, "negative %d", *req);
  *resp = h4_int(*req * 2);
  *rf = h4_resp_free;
  return NULL;
}

static bw_service_t *echo_service(void) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = echo_sync;
  bw_service_t *s = NULL;
  assert_null(bw_service_from_fn(&s, &o));
  assert_string_equal(bw_service_kind(s), "fn");
  return s;
}

/* async: keeps calls until the test completes them */
typedef struct pending {
  pthread_mutex_t mu;
  bw_call_t *calls[256];
  int n;
  atomic_int cancels;
} pending_t;

static void hold_async(void *arg, bw_call_t *call) {
  pending_t *p = arg;
  pthread_mutex_lock(&p->mu);
  p->calls[p->n++] = call;
  pthread_mutex_unlock(&p->mu);
}
static void hold_cancel(void *arg, bw_call_t *call) {
  pending_t *p = arg;
  atomic_fetch_add(&p->cancels, 1);
}

static bw_service_t *hold_service(pending_t *p) {
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = hold_async;
  o.cancel = hold_cancel;
  o.arg = p;
  o.kind = "hold";
  bw_service_t *s = NULL;
  assert_null(bw_service_from_fn(&s, &o));
  return s;
}

static int pending_count(pending_t *p) {
  pthread_mutex_lock(&p->mu);
  int n = p->n;
  pthread_mutex_unlock(&p->mu);
  return n;
}

/* Wait (bounded) until the async service has seen n calls. */
static void wait_pending(pending_t *p, int n) {
  for (int i = 0; i < 100000 && pending_count(p) < n; i++) {
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(pending_count(p), n);
}

/* The call's memory (and its request/response) goes when its last
 * reference does: right after the callback returns, which may be a moment
 * after a waiter on another thread was woken from inside the callback. */
static int eventually(atomic_int *v, int want) {
  for (int i = 0; i < 200000 && atomic_load(v) != want; i++) {
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
  }
  return atomic_load(v);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_sync_fn_basic(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  bw_service_t *svc = echo_service();
  h4_wait_t w;
  h4_wait_init(&w);
  atomic_store(&req_freed, 0);
  atomic_store(&h4_resp_freed, 0);

  h4_result_t r = {.wait = &w, .rt = rt};
  bw_call_t *c = NULL;
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, h4_int(21), req_free);
  assert_null(h4_submit(svc, c, h4_on_done, &r));
  assert_int_equal(h4_wait_for(&w, 1), 1);
  assert_int_equal(atomic_load(&r.completions), 1);
  /* The only way a root callback runs off the workers is the runtime
   * refusing the deferred start or delivery (then the call fails with that
   * reason): check and show the outcome first, so such a failure names its
   * cause instead of only "not on a worker". */
  if (r.kind != BW_ERR_NONE || !r.on_worker) {
    char buf[256];
    bw_error_format(r.err, buf, sizeof buf, 0);
    print_error("outcome %s, on_worker %d\n", r.err ? buf : "success", (int)r.on_worker);
  }
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_true(r.on_worker);
  assert_non_null(r.resp);
  assert_int_equal(*(int *)r.resp, 42);
  assert_ptr_equal(bw_call_service(c), svc);
  assert_ptr_equal(bw_call_runtime(c), rt);
  assert_null(bw_call_error(c));
  /* starting twice is refused (no callback) */
  bw_error_t *e = bw_service_call(svc, c, h4_on_done, &r);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_call_free(c);
  assert_int_equal(eventually(&req_freed, 1), 1);
  assert_int_equal(eventually(&h4_resp_freed, 1), 1);

  /* error path; take_response on success path */
  h4_result_t r2 = {.wait = &w, .rt = rt};
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, h4_int(-5), req_free);
  assert_null(h4_submit(svc, c, h4_on_done, &r2));
  assert_int_equal(h4_wait_for(&w, 2), 2);
  assert_int_equal(r2.kind, BW_ERR_TRANSPORT);
  assert_int_equal(bw_error_detail(r2.err), -5);
  assert_int_equal(bw_error_kind(bw_call_error(c)), BW_ERR_TRANSPORT);
  assert_null(bw_call_response(c));
  bw_error_unref(r2.err);
  bw_call_free(c);

  h4_result_t r3 = {.wait = &w, .rt = rt};
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, h4_int(4), req_free);
  assert_null(h4_submit(svc, c, h4_on_done, &r3));
  assert_int_equal(h4_wait_for(&w, 3), 3);
  bw_destroy_fn f = NULL;
  int *resp = bw_call_take_response(c, &f);
  assert_ptr_equal(f, h4_resp_free);
  assert_int_equal(*resp, 8);
  int before = atomic_load(&h4_resp_freed);
  bw_call_free(c);
  assert_int_equal(atomic_load(&h4_resp_freed), before); /* taken: not freed by the call */
  f(resp);

  /* wrong service is refused */
  bw_service_t *other = echo_service();
  assert_null(bw_call_new(&c, other, rt));
  e = bw_service_call(svc, c, h4_on_done, &r3);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_call_free(c);
  bw_service_release(other);

  bw_service_release(svc);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

/* From a worker: many synchronous completions, none inside the submit. */
typedef struct many_ctx {
  bw_service_t *svc;
  bw_runtime_t *rt;
  h4_result_t *res;
  int n;
} many_ctx_t;

static void submit_many(void *arg) {
  many_ctx_t *m = arg;
  for (int i = 0; i < m->n; i++) {
    bw_call_t *c;
    assert_null(bw_call_new(&c, m->svc, m->rt));
    bw_call_set_request(c, h4_int(i), req_free);
    m->res[i].free_in_cb = true;
    assert_null(h4_submit(m->svc, c, h4_on_done, &m->res[i]));
    /* the sync service finished inside the submit, yet no callback ran */
    assert_int_equal(atomic_load(&m->res[i].completions), 0);
  }
}

static void test_callbacks_off_submit_stack(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  bw_service_t *svc = echo_service();
  h4_wait_t w;
  h4_wait_init(&w);
  enum { N = 200 };
  h4_result_t *res = calloc(N, sizeof *res);
  for (int i = 0; i < N; i++) {
    res[i].wait = &w;
    res[i].rt = rt;
  }
  many_ctx_t m = {svc, rt, res, N};
  h4_on_worker(rt, submit_many, &m);
  assert_int_equal(h4_wait_for(&w, N), N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(atomic_load(&res[i].completions), 1);
    assert_true(res[i].on_worker);
  }
  free(res);
  bw_service_release(svc);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

/* Async completion from a foreign thread; complete twice; cancel twice. */
static void test_async_and_cancel(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  pending_t p;
  bw_service_t *svc = hold_service(&p);
  h4_wait_t w;
  h4_wait_init(&w);
  atomic_store(&h4_resp_freed, 0);

  h4_result_t r1 = {.wait = &w, .rt = rt}, r2 = {.wait = &w, .rt = rt};
  bw_call_t *c1, *c2;
  assert_null(bw_call_new(&c1, svc, rt));
  assert_null(bw_call_new(&c2, svc, rt));
  assert_null(h4_submit(svc, c1, h4_on_done, &r1));
  assert_null(h4_submit(svc, c2, h4_on_done, &r2));
  wait_pending(&p, 2);
  assert_false(bw_call_is_done(c1));

  /* the two starts ran on workers in either order */
  int i1 = p.calls[0] == c1 ? 0 : 1, i2 = 1 - i1;
  assert_ptr_equal(p.calls[i1], c1);
  assert_ptr_equal(p.calls[i2], c2);
  /* complete c1 from this (non-worker) thread; the second completion loses */
  assert_true(bw_call_complete(p.calls[i1], h4_int(7), h4_resp_free, NULL));
  assert_false(bw_call_complete(p.calls[i1], h4_int(8), h4_resp_free, NULL));
  assert_int_equal(atomic_load(&h4_resp_freed), 1); /* the loser's response */
  /* cancel c2 twice; then the service's late completion is dropped */
  bw_call_cancel(c2);
  bw_call_cancel(c2);
  assert_true(bw_call_is_cancelled(c2));
  assert_int_equal(h4_wait_for(&w, 2), 2);
  assert_int_equal(atomic_load(&p.cancels), 1);
  assert_false(bw_call_complete(p.calls[i2], h4_int(9), h4_resp_free, NULL));
  assert_int_equal(atomic_load(&h4_resp_freed), 2);

  assert_int_equal(atomic_load(&r1.completions), 1);
  assert_true(r1.on_worker);
  assert_int_equal(*(int *)r1.resp, 7);
  assert_int_equal(atomic_load(&r2.completions), 1);
  assert_true(r2.on_worker);
  assert_int_equal(r2.kind, BW_ERR_CANCELLED);
  bw_error_unref(r2.err);
  bw_call_free(c1);
  bw_call_free(c2);
  assert_int_equal(eventually(&h4_resp_freed, 3), 3);

  /* cancel before start: completes with CANCELLED when started */
  h4_result_t r3 = {.wait = &w, .rt = rt};
  bw_call_t *c3;
  assert_null(bw_call_new(&c3, svc, rt));
  bw_call_cancel(c3);
  assert_null(h4_submit(svc, c3, h4_on_done, &r3));
  assert_int_equal(h4_wait_for(&w, 3), 3);
  assert_int_equal(r3.kind, BW_ERR_CANCELLED);
  assert_int_equal(pending_count(&p), 2); /* never reached the service */
  bw_error_unref(r3.err);
  bw_call_free(c3);

  /* freeing a call in flight: no callback, the service is told */
  h4_result_t r4 = {.wait = &w, .rt = rt};
  bw_call_t *c4;
  assert_null(bw_call_new(&c4, svc, rt));
  assert_null(h4_submit(svc, c4, h4_on_done, &r4));
  wait_pending(&p, 3);
  bw_call_free(c4);
  assert_int_equal(atomic_load(&p.cancels), 2);
  bw_service_release(svc);
  bw_runtime_free(rt); /* drains deferred work: the callback would have run by now */
  assert_int_equal(atomic_load(&r4.completions), 0);
  pthread_mutex_destroy(&p.mu);
  h4_wait_fini(&w);
}

/* A tiny layer that forwards to its inner service with a 50 ms deadline,
 * and a leaf that reports the deadline it sees. */
static void fwd_done(bw_call_t *child, const bw_error_t *err, void *arg) {
  bw_call_complete_from_child(arg, child);
  bw_call_free(child);
}
static void fwd_call(bw_service_t *svc, bw_call_t *call) {
  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, NULL);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  assert_ptr_equal(bw_call_parent(child), call);
  assert_ptr_equal(bw_call_request(child), bw_call_request(call));
  assert_ptr_equal(bw_call_context(child), bw_call_context(call));
  bw_call_set_deadline_ns(child, bw_runtime_now_ns(bw_call_runtime(call)) + 50000000ull);
  bw_call_child_start(child, fwd_done, call);
}
static const bw_service_ops_t fwd_ops = {.kind = "fwd", .call = fwd_call};

static bw_error_t *deadline_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  int64_t *out = malloc(sizeof *out);
  *out = bw_call_remaining_ns(call);
  *resp = out;
  *rf = free;
  return NULL;
}

static void test_child_deadline(void **state) {
  bw_runtime_t *rt = h4_rt(true, 2);
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = deadline_sync;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &o));
  bw_layer_t *fwd;
  assert_null(bw_layer_new(&fwd, &fwd_ops, NULL));
  bw_service_t *svc;
  assert_null(bw_layer_wrap(fwd, leaf, &svc));
  assert_ptr_equal(bw_service_inner(svc), leaf);
  assert_ptr_equal(bw_service_layer(svc), fwd);
  h4_wait_t w;
  h4_wait_init(&w);

  /* no parent deadline: the child's 50 ms applies */
  h4_result_t r = {.wait = &w, .rt = rt};
  bw_call_t *c;
  assert_null(bw_call_new(&c, svc, rt));
  assert_int_equal(bw_call_remaining_ns(c), INT64_MAX);
  int ctx = 1;
  bw_call_set_context(c, &ctx);
  assert_null(h4_submit(svc, c, h4_on_done, &r));
  assert_int_equal(h4_wait_for(&w, 1), 1);
  assert_int_equal(*(int64_t *)r.resp, 50000000);
  bw_call_free(c);

  /* a parent deadline of 10 ms wins over the child's 50 ms */
  h4_result_t r2 = {.wait = &w, .rt = rt};
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_timeout_ms(c, 10);
  assert_int_equal(bw_call_remaining_ns(c), 10000000);
  assert_null(h4_submit(svc, c, h4_on_done, &r2));
  assert_int_equal(h4_wait_for(&w, 2), 2);
  assert_int_equal(*(int64_t *)r2.resp, 10000000);
  bw_call_free(c);

  bw_service_release(svc);
  bw_layer_release(fwd);
  bw_service_release(leaf);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

/* ---- a child on a service its holder releases in the child's callback ----------
 * (what the registry service does when it drops its reference on the stack
 * a call ran on): the child's memory goes back to that service's pool after
 * the callback returned, so the child must keep the service alive. */
static bw_service_t *g_other; /* one reference, dropped by fwd_other_done */

static void fwd_other_done(bw_call_t *child, const bw_error_t *err, void *arg) {
  bw_call_t *parent = arg;
  bw_service_t *other = g_other;
  g_other = NULL;
  bw_call_complete_from_child(parent, child);
  bw_call_free(child);
  bw_service_release(other); /* the holder's last reference */
}

static void fwd_other_async(void *arg, bw_call_t *call) {
  bw_call_t *child = NULL;
  bw_error_t *e = bw_call_child_new(&child, call, g_other);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  bw_call_child_start(child, fwd_other_done, call);
}

static void test_child_outlives_released_service(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = fwd_other_async;
  bw_service_t *outer;
  assert_null(bw_service_from_fn(&outer, &o));
  h4_wait_t w;
  h4_wait_init(&w);
  atomic_store(&h4_resp_freed, 0);
  enum { N = 20 };
  for (int i = 0; i < N; i++) {
    g_other = echo_service(); /* the only reference */
    h4_result_t r = {.wait = &w, .rt = rt};
    bw_call_t *c;
    assert_null(bw_call_new(&c, outer, rt));
    bw_call_set_request(c, h4_int(i), req_free);
    assert_null(h4_submit(outer, c, h4_on_done, &r));
    assert_int_equal(h4_wait_for(&w, i + 1), i + 1);
    assert_int_equal(r.kind, BW_ERR_NONE);
    assert_int_equal(*(int *)r.resp, 2 * i);
    assert_null(g_other);
    bw_call_free(c);
  }
  assert_int_equal(eventually(&h4_resp_freed, N), N);
  bw_service_release(outer);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

/* A worker keeps the reference a recycled call held on its service for the
 * next call it makes (service.c, tl_spare_svc); it must give it back at the
 * end of its loop turn, not only when it exits: here the last reference
 * goes inside the last callback and the service must be destroyed while
 * the runtime runs on (failed when the spare was kept until exit). */
typedef struct chain {
  bw_service_t *svc;
  bw_runtime_t *rt;
  int left;
  atomic_int errors;
  h4_wait_t *destroyed;
  atomic_bool destroyed_on_worker;
} chain_t;

static void chain_next(chain_t *ch);
static void chain_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  chain_t *ch = arg;
  if (err) atomic_fetch_add(&ch->errors, 1);
  bw_call_free(call);
  if (--ch->left > 0) chain_next(ch);
  else bw_service_release(ch->svc); /* the caller's reference: the call's is the last */
}
static void chain_next(chain_t *ch) {
  bw_call_t *c;
  assert_null(bw_call_new(&c, ch->svc, ch->rt));
  bw_call_set_request(c, h4_int(ch->left), req_free);
  assert_null(bw_service_call(ch->svc, c, chain_done, ch));
}
static void chain_start(void *arg) { chain_next(arg); }
static void chain_arg_free(void *arg) {
  chain_t *ch = arg;
  atomic_store(&ch->destroyed_on_worker, bw_runtime_current() == ch->rt);
  h4_wait_post(ch->destroyed);
}

static void test_spare_service_ref_given_back(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  h4_wait_t w;
  h4_wait_init(&w);
  chain_t ch = {.rt = rt, .left = 1000, .destroyed = &w};
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = echo_sync;
  o.arg = &ch;
  o.arg_free = chain_arg_free;
  assert_null(bw_service_from_fn(&ch.svc, &o));
  h4_on_worker(rt, chain_start, &ch);
  assert_int_equal(h4_wait_for(&w, 1), 1); /* destroyed, runtime still up */
  assert_int_equal(ch.left, 0);
  assert_int_equal(atomic_load(&ch.errors), 0);
  assert_true(atomic_load(&ch.destroyed_on_worker));
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

static void test_bad_args(void **state) {
  bw_service_t *s = NULL;
  bw_error_t *e = bw_service_from_fn(&s, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  e = bw_service_from_fn(&s, &o); /* neither sync nor async */
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  o.sync = echo_sync;
  assert_null(bw_service_from_fn(&s, &o));
  bw_call_t *c = NULL;
  e = bw_call_new(&c, s, NULL); /* no runtime current on this thread */
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_layer_wrap(NULL, s, &s);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_service_release(s);
  bw_call_free(NULL);
  bw_service_release(NULL);
  bw_layer_release(NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sync_fn_basic),
      cmocka_unit_test(test_callbacks_off_submit_stack),
      cmocka_unit_test(test_async_and_cancel),
      cmocka_unit_test(test_child_deadline),
      cmocka_unit_test(test_child_outlives_released_service),
      cmocka_unit_test(test_spare_service_ref_given_back),
      cmocka_unit_test(test_bad_args),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
