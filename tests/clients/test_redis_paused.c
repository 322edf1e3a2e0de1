/* Redis timeouts on the runtime's paused clock: a server stopped with
 * SIGSTOP makes commands time out after 30 virtual seconds, which takes
 * (almost) no real time, and the connection stays usable afterwards.
 *
 * Note: the paused clock jumps whenever every worker is idle, also while a
 * reply is on its way, so only the commands meant to time out carry a
 * deadline here. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <bulwark/redis.h>
#include <bulwark/runtime.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "support/redis_server.h"
#include "support/redis_waiter.h"

static bw_test_redis_t server;

static double real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The first PING of a new client succeeds on the paused clock: the client
 * holds the clock while its loopback TCP connect is in flight, so the
 * connect deadline cannot fire first (regression: it used to). */
static void ping_until_ok(bw_redis_t *c) {
  const char *argv[1] = {"PING"};
  bw_test_redis_waiter_t w;
  bw_test_redis_waiter_init(&w, 1, NULL);
  assert_null(bw_redis_command(c, 1, argv, NULL, NULL, bw_test_redis_waiter_cb, &w));
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  assert_int_equal(w.replies_by_type[BW_REDIS_REPLY_STATUS], 1);
  bw_test_redis_waiter_fini(&w);
}

static void test_paused_server_times_out_on_virtual_time(void **state) {
  (void)state;
  assert_int_equal(bw_test_redis_start(&server, NULL), 0);
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  bw_redis_opts_t ro;
  bw_redis_opts_init(&ro);
  ro.port = server.port;
  ro.reconnect_min_ms = 1;
  ro.reconnect_max_ms = 1;
  bw_redis_t *c;
  assert_null(bw_redis_new(rt, &ro, &c));
  ping_until_ok(c);

  bw_test_redis_pause(&server);
  const char *argv[1] = {"PING"};
  bw_test_redis_waiter_t w;
  bw_test_redis_waiter_init(&w, 10, NULL);
  uint64_t v0 = bw_runtime_now_ns(rt);
  double r0 = real_ms();
  for (int i = 0; i < 10; i++) {
    bw_redis_cmd_opts_t co = {bw_runtime_now_ns(rt) + 30ull * 1000000000ull, NULL};
    assert_null(bw_redis_command(c, 1, argv, NULL, &co, bw_test_redis_waiter_cb, &w));
  }
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  double real = real_ms() - r0;
  uint64_t virt_ms = (bw_runtime_now_ns(rt) - v0) / 1000000u;
  assert_int_equal(w.errors_by_kind[BW_ERR_TIMEOUT], 10);
  bw_test_redis_waiter_fini(&w);
  assert_true(virt_ms >= 30000);
  assert_true(real < 5000); /* nowhere near 30 s */

  bw_test_redis_resume(&server);
  ping_until_ok(c);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.timeouts, 10);
  assert_int_equal(st.in_flight, 0);
  assert_true(st.late_replies_dropped <= 10); /* unsent if the clock jumped first */

  bw_redis_free(c);
  bw_runtime_free(rt);
  bw_test_redis_destroy(&server);
}

/* The runtime shuts down with commands in flight (server stopped): every
 * callback still runs exactly once (cancelled), then the client is freed
 * after bw_runtime_shutdown and before bw_runtime_free. */
static void test_runtime_shutdown_with_commands_in_flight(void **state) {
  (void)state;
  assert_int_equal(bw_test_redis_start(&server, NULL), 0);
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  bw_redis_opts_t ro;
  bw_redis_opts_init(&ro);
  ro.port = server.port;
  bw_redis_t *c;
  assert_null(bw_redis_new(rt, &ro, &c));
  ping_until_ok(c);
  bw_test_redis_pause(&server);
  bw_test_redis_waiter_t w;
  bw_test_redis_waiter_init(&w, 50, NULL);
  const char *argv[1] = {"PING"};
  for (int i = 0; i < 50; i++)
    assert_null(bw_redis_command(c, 1, argv, NULL, NULL, bw_test_redis_waiter_cb, &w));
  bw_error_t *e = bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0);
  bw_error_unref(e);
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  assert_int_equal(w.got, 50);
  assert_int_equal(w.replies_by_type[BW_REDIS_REPLY_STATUS], 0);
  bw_test_redis_waiter_fini(&w);
  assert_int_equal(bw_redis_state(c), BW_REDIS_CLOSED);
  bw_redis_free(c);
  bw_runtime_free(rt);
  bw_test_redis_destroy(&server);
}

/* A current-thread runtime: the loop runs inside bw_block_on. */
typedef struct ct_task {
  bw_redis_t *c;
  bw_waker_t *waker;
  atomic_int done;
  int ok;
  bool sent;
} ct_task_t;

static void ct_cb(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  ct_task_t *t = arg;
  t->ok = !err && reply && reply->type == BW_REDIS_REPLY_STATUS;
  bw_redis_reply_free(reply);
  atomic_store(&t->done, 1);
  bw_waker_t *w = t->waker;
  t->waker = NULL;
  bw_waker_wake(w);
}

static bw_poll_t ct_poll(bw_task_t *self, void *arg) {
  ct_task_t *t = arg;
  if (!t->sent) {
    t->sent = true;
    t->waker = bw_task_waker(self);
    const char *argv[1] = {"PING"};
    bw_error_t *e = bw_redis_command(t->c, 1, argv, NULL, NULL, ct_cb, t);
    if (e) {
      bw_waker_drop(t->waker);
      bw_task_set_output(self, NULL, NULL, e);
      return BW_READY;
    }
    return BW_PENDING;
  }
  return atomic_load(&t->done) ? BW_READY : BW_PENDING;
}

static void test_current_thread_runtime(void **state) {
  (void)state;
  assert_int_equal(bw_test_redis_start(&server, NULL), 0);
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.flavor = BW_FLAVOR_CURRENT_THREAD;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  bw_redis_opts_t ro;
  bw_redis_opts_init(&ro);
  ro.port = server.port;
  bw_redis_t *c;
  assert_null(bw_redis_new(rt, &ro, &c));
  int ok = 0;
  for (int i = 0; i < 100 && !ok; i++) { /* the first may race the connect */
    ct_task_t t;
    memset(&t, 0, sizeof t);
    t.c = c;
    assert_null(bw_block_on(rt, ct_poll, &t, NULL));
    ok = t.ok;
  }
  assert_true(ok);
  assert_null(bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0));
  bw_redis_free(c);
  bw_runtime_free(rt);
  bw_test_redis_destroy(&server);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_paused_server_times_out_on_virtual_time),
      cmocka_unit_test(test_runtime_shutdown_with_commands_in_flight),
      cmocka_unit_test(test_current_thread_runtime),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
