/* The Redis client as a bw_service_t: calls, deadline, cancel, and a
 * circuit breaker opening on a dead Redis and closing after it comes back
 * (paused clock: the open duration passes with bw_runtime_advance). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <bulwark/circuit_breaker.h>
#include <bulwark/layer.h>
#include <bulwark/redis.h>
#include <bulwark/runtime.h>
#include <bulwark/retry.h>
#include <bulwark/service.h>
#include <bulwark/timeout.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support/redis_server.h"
#include "support/redis_waiter.h"

static bw_test_redis_t server;

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  int calls;
} waiter_t;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  (void)call;
  (void)err;
  waiter_t *w = arg;
  pthread_mutex_lock(&w->mu);
  w->calls++;
  w->done = true;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* Wait (10 s at most) for on_done. */
static void wait_done(waiter_t *w) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 10;
  pthread_mutex_lock(&w->mu);
  while (!w->done)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0) break;
  pthread_mutex_unlock(&w->mu);
  assert_true(w->done);
}

/* One call through svc; returns the finished call (caller frees it). */
static bw_call_t *call_sync(bw_service_t *svc, bw_runtime_t *rt, bw_redis_request_t *req,
                            uint64_t timeout_ms) {
  waiter_t w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  bw_call_t *call;
  assert_null(bw_call_new(&call, svc, rt));
  bw_call_set_request(call, req, NULL); /* borrowed: reused across calls */
  if (timeout_ms) bw_call_set_timeout_ms(call, timeout_ms);
  assert_null(bw_service_call(svc, call, on_done, &w));
  wait_done(&w);
  assert_int_equal(w.calls, 1);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return call;
}

static bw_redis_request_t *request(int argc, const char *const *argv) {
  bw_redis_request_t *r;
  assert_null(bw_redis_request_new(&r, argc, argv, NULL));
  return r;
}

static bw_runtime_t *runtime_new(bool paused) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  if (paused) o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

static bw_redis_t *client_new(bw_runtime_t *rt) {
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = server.port;
  o.reconnect_min_ms = 1;
  o.reconnect_max_ms = 5;
  bw_redis_t *c;
  assert_null(bw_redis_new(rt, &o, &c));
  return c;
}

/* The first call of a new client succeeds on the paused clock: the client
 * holds the clock while its loopback TCP connect is in flight (regression:
 * the connect deadline used to fire first under load). */
static void ping_until_ok(bw_service_t *svc, bw_runtime_t *rt) {
  const char *argv[1] = {"PING"};
  bw_redis_request_t *req = request(1, argv);
  bw_call_t *call = call_sync(svc, rt, req, 0);
  const bw_error_t *err = bw_call_error(call);
  char text[256] = "";
  if (err) bw_error_format(err, text, sizeof text, 0);
  bw_call_free(call);
  bw_redis_request_free(req);
  if (err) fail_msg("first PING failed: %s", text);
}

static void test_service_calls(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime_new(false);
  bw_redis_t *c = client_new(rt);
  bw_service_t *svc;
  assert_null(bw_redis_service_new(&svc, c));
  assert_string_equal(bw_service_kind(svc), "redis");

  const char *set[3] = {"SET", "svc-key", "svc-value"};
  bw_redis_request_t *req = request(3, set);
  bw_call_t *call = call_sync(svc, rt, req, 0);
  assert_null(bw_call_error(call));
  const bw_redis_reply_t *rep = bw_call_response(call);
  assert_non_null(rep);
  assert_string_equal(rep->str, "OK");
  bw_call_free(call);
  bw_redis_request_free(req);

  const char *get[2] = {"GET", "svc-key"};
  req = request(2, get);
  call = call_sync(svc, rt, req, 0);
  bw_destroy_fn fr = NULL;
  bw_redis_reply_t *taken = bw_call_take_response(call, &fr);
  assert_non_null(taken);
  assert_string_equal(taken->str, "svc-value");
  fr(taken);
  bw_call_free(call);

  /* Deadline: a stopped server makes the call time out at its deadline. */
  bw_test_redis_pause(&server);
  call = call_sync(svc, rt, req, 30);
  assert_true(bw_error_is(bw_call_error(call), BW_ERR_TIMEOUT));
  bw_call_free(call);

  /* Cancel: completes CANCELLED at once; the reply is dropped later. */
  waiter_t w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  assert_null(bw_call_new(&call, svc, rt));
  bw_call_set_request(call, req, NULL);
  assert_null(bw_service_call(svc, call, on_done, &w));
  bw_call_cancel(call);
  bw_call_cancel(call);
  pthread_mutex_lock(&w.mu);
  while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  assert_int_equal(bw_error_kind(bw_call_error(call)), BW_ERR_CANCELLED);
  bw_call_free(call);
  bw_test_redis_resume(&server);

  call = call_sync(svc, rt, req, 0);
  assert_null(bw_call_error(call));
  bw_call_free(call);
  assert_int_equal(w.calls, 1);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.in_flight, 0);
  assert_true(st.late_replies_dropped >= 1);

  bw_redis_request_free(req);
  bw_service_release(svc);
  bw_redis_free(c);
  bw_runtime_free(rt);
}

static bool redis_failure(const bw_error_t *err, void *arg) {
  (void)arg;
  return bw_redis_error_is_retryable(err);
}

static void test_breaker_opens_on_dead_redis_and_closes(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime_new(true);
  bw_redis_t *c = client_new(rt);
  bw_service_t *inner;
  assert_null(bw_redis_service_new(&inner, c));
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  bo.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  bo.consecutive_failures = 3;
  bo.open_duration_ms = 3600 * 1000; /* only bw_runtime_advance gets past it */
  bo.half_open_calls = 1;
  bo.predicate = redis_failure;
  bo.runtime = rt;
  bw_layer_t *breaker;
  assert_null(bw_circuit_breaker_new(&breaker, &bo));
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, "redis-breaker", &breaker, 1, inner, NULL));
  ping_until_ok(svc, rt);
  assert_int_equal(bw_circuit_breaker_state(breaker), BW_BREAKER_CLOSED);

  bw_test_redis_kill(&server);
  const char *argv[1] = {"PING"};
  bw_redis_request_t *req = request(1, argv);
  int failures = 0, rejected = 0;
  for (int i = 0; i < 20; i++) {
    bw_call_t *call = call_sync(svc, rt, req, 0);
    const bw_error_t *e = bw_call_error(call);
    assert_non_null(e);
    if (bw_error_is(e, BW_ERR_CIRCUIT_OPEN))
      rejected++;
    else if (bw_error_is(e, BW_ERR_CONNECT) || bw_error_is(e, BW_ERR_TRANSPORT))
      failures++;
    else
      fail_msg("unexpected error kind %s", bw_error_kind_name(bw_error_kind(e)));
    bw_call_free(call);
  }
  assert_int_equal(failures, 3);
  assert_int_equal(rejected, 17);
  assert_int_equal(bw_circuit_breaker_state(breaker), BW_BREAKER_OPEN);

  assert_int_equal(bw_test_redis_restart(&server), 0);
  bw_test_redis_wait_state(c, BW_REDIS_READY, 10);
  assert_int_equal(bw_redis_state(c), BW_REDIS_READY);
  assert_null(bw_runtime_advance(rt, 3600 * 1000));
  bw_call_t *call = call_sync(svc, rt, req, 0); /* the half-open probe */
  assert_null(bw_call_error(call));
  bw_call_free(call);
  assert_int_equal(bw_circuit_breaker_state(breaker), BW_BREAKER_CLOSED);
  call = call_sync(svc, rt, req, 0);
  assert_null(bw_call_error(call));
  bw_call_free(call);

  bw_redis_request_free(req);
  bw_service_release(svc);
  bw_service_release(inner);
  bw_layer_release(breaker);
  bw_redis_free(c);
  bw_runtime_free(rt);
}

/* Retry's default predicate and the client's classification agree:
 * LOADING (retryable) is retried up to max_attempts, WRONGTYPE is not. */
static void test_retry_default_predicate(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime_new(false);
  bw_redis_t *c = client_new(rt);
  bw_service_t *inner;
  assert_null(bw_redis_service_new(&inner, c));
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 3;
  ro.backoff.kind = BW_BACKOFF_CONSTANT;
  ro.backoff.base_ns = 1000000; /* 1 ms */
  bw_layer_t *retry;
  assert_null(bw_retry_new(&retry, &ro));
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, NULL, &retry, 1, inner, NULL));

  const char *loading[3] = {"EVAL", "return redis.error_reply('LOADING Redis is loading')", "0"};
  bw_redis_request_t *req = request(3, loading);
  bw_redis_stats_t before, after;
  bw_redis_stats(c, &before);
  bw_call_t *call = call_sync(svc, rt, req, 0);
  const bw_error_t *e = bw_call_error(call);
  assert_true(bw_error_is(e, BW_ERR_RETRIES_EXHAUSTED));
  assert_int_equal(bw_redis_error_code(e), BW_REDIS_LOADING);
  bw_redis_stats(c, &after);
  assert_int_equal(after.commands - before.commands, 3);
  bw_call_free(call);
  bw_redis_request_free(req);

  const char *wrongtype[3] = {"EVAL", "return redis.error_reply('WRONGTYPE Operation against a key')",
                              "0"};
  req = request(3, wrongtype);
  bw_redis_stats(c, &before);
  call = call_sync(svc, rt, req, 0);
  e = bw_call_error(call);
  assert_true(bw_error_is(e, BW_ERR_REDIS));
  assert_int_equal(bw_redis_error_code(e), BW_REDIS_WRONGTYPE);
  bw_redis_stats(c, &after);
  assert_int_equal(after.commands - before.commands, 1);
  bw_call_free(call);
  bw_redis_request_free(req);

  bw_service_release(svc);
  bw_service_release(inner);
  bw_layer_release(retry);
  bw_redis_free(c);
  bw_runtime_free(rt);
}

/* A timeout layer cancels the inner Redis command: the call fails at once
 * with TIMEOUT, the command's late reply is dropped when the server comes
 * back, nothing stays in flight, and the connection still works. */
static void test_timeout_layer_cancels_inner(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime_new(false);
  bw_redis_t *c = client_new(rt);
  bw_service_t *inner;
  assert_null(bw_redis_service_new(&inner, c));
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 30;
  bw_layer_t *timeout;
  assert_null(bw_timeout_new(&timeout, &to));
  bw_service_t *svc;
  assert_null(bw_stack_build(&svc, NULL, &timeout, 1, inner, NULL));
  const char *argv[1] = {"PING"};
  bw_redis_request_t *req = request(1, argv);
  /* connect first without the 30 ms bound (a loaded sanitizer run can take
   * longer than that to connect) */
  bw_call_t *call = call_sync(inner, rt, req, 0);
  assert_null(bw_call_error(call));
  bw_call_free(call);
  call = call_sync(svc, rt, req, 0);
  assert_null(bw_call_error(call));
  bw_call_free(call);

  bw_test_redis_pause(&server);
  for (int i = 0; i < 5; i++) {
    call = call_sync(svc, rt, req, 0);
    assert_true(bw_error_is(bw_call_error(call), BW_ERR_TIMEOUT));
    bw_call_free(call);
  }
  bw_test_redis_resume(&server);
  call = call_sync(svc, rt, req, 0);
  assert_null(bw_call_error(call));
  bw_call_free(call);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.in_flight, 0);
  assert_int_equal(st.late_replies_dropped, 5);
  assert_int_equal(st.connects, 1);

  bw_redis_request_free(req);
  bw_service_release(svc);
  bw_service_release(inner);
  bw_layer_release(timeout);
  bw_redis_free(c);
  bw_runtime_free(rt);
}

/* Many calls, 64 in flight, each completion starting the next from the
 * worker: exercises replies beating ops->call's bookkeeping and pooled
 * calls being reused at once. A leaked reference would make
 * bw_redis_free() hang (ctest's timeout catches it). */
typedef struct stress {
  bw_runtime_t *rt;
  bw_service_t *svc;
  bw_redis_request_t *req;
  atomic_int started, failed;
  int target;
  waiter_t w;
} stress_t;

static void stress_start(stress_t *s);

static void stress_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  stress_t *s = arg;
  if (err || !bw_call_response(call)) atomic_fetch_add(&s->failed, 1);
  bw_call_free(call);
  stress_start(s);
  pthread_mutex_lock(&s->w.mu);
  if (++s->w.calls == s->target) {
    s->w.done = true;
    pthread_cond_broadcast(&s->w.cv);
  }
  pthread_mutex_unlock(&s->w.mu);
}

static void stress_start(stress_t *s) {
  if (atomic_fetch_add(&s->started, 1) >= s->target) return;
  bw_call_t *call;
  assert_null(bw_call_new(&call, s->svc, s->rt));
  bw_call_set_request(call, s->req, NULL);
  assert_null(bw_service_call(s->svc, call, stress_done, s));
}

static void test_stress_64_in_flight(void **state) {
  (void)state;
  static stress_t s;
  memset(&s, 0, sizeof s);
  s.rt = runtime_new(false);
  bw_redis_t *c = client_new(s.rt);
  assert_null(bw_redis_service_new(&s.svc, c));
  const char *argv[3] = {"SET", "stress", "v"};
  s.req = request(3, argv);
  const char *e = getenv("BW_TEST_SCALE");
  double scale = e ? atof(e) : 1.0;
  s.target = (int)(50000 * (scale > 0 ? scale : 1.0));
  if (s.target < 1000) s.target = 1000;
  pthread_mutex_init(&s.w.mu, NULL);
  pthread_cond_init(&s.w.cv, NULL);
  for (int i = 0; i < 64; i++) stress_start(&s);
  pthread_mutex_lock(&s.w.mu);
  while (!s.w.done) pthread_cond_wait(&s.w.cv, &s.w.mu);
  pthread_mutex_unlock(&s.w.mu);
  assert_int_equal(atomic_load(&s.failed), 0);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.replies, (uint64_t)s.target);
  bw_service_release(s.svc);
  bw_redis_free(c);
  bw_runtime_free(s.rt);
  bw_redis_request_free(s.req);
  pthread_mutex_destroy(&s.w.mu);
  pthread_cond_destroy(&s.w.cv);
}

static int group_setup(void **state) {
  (void)state;
  return bw_test_redis_start(&server, NULL);
}

static int group_teardown(void **state) {
  (void)state;
  bw_test_redis_destroy(&server);
  return 0;
}

/* A call started after bw_runtime_shutdown completes exactly once, with
 * BW_ERR_RUNTIME_SHUTDOWN. (Today the service layer ends it before
 * ops->call; only a shutdown racing ops->call reaches the client's own
 * refusal, where bw__redis_submit returns the error and svc_call
 * completes the call with it, on_done never running.) */
static void test_call_after_runtime_shutdown(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime_new(false);
  bw_redis_t *c = client_new(rt);
  bw_service_t *svc;
  assert_null(bw_redis_service_new(&svc, c));
  const char *argv[1] = {"PING"};
  bw_redis_request_t *req = request(1, argv);
  waiter_t w;
  memset(&w, 0, sizeof w);
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  bw_call_t *call;
  assert_null(bw_call_new(&call, svc, rt)); /* refused once shut down */
  bw_call_set_request(call, req, NULL);
  bw_error_unref(bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0));
  bw_error_t *e = bw_service_call(svc, call, on_done, &w);
  if (e) {
    assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
    bw_error_unref(e);
  } else {
    wait_done(&w);
    assert_true(bw_error_is(bw_call_error(call), BW_ERR_RUNTIME_SHUTDOWN));
  }
  bw_call_free(call);
  bw_redis_request_free(req);
  bw_service_release(svc);
  bw_redis_free(c);
  bw_runtime_free(rt);
  assert_int_equal(w.calls, e ? 0 : 1);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_service_calls),
      cmocka_unit_test(test_breaker_opens_on_dead_redis_and_closes),
      cmocka_unit_test(test_retry_default_predicate),
      cmocka_unit_test(test_timeout_layer_cancels_inner),
      cmocka_unit_test(test_stress_64_in_flight),
      cmocka_unit_test(test_call_after_runtime_shutdown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
