/* The hiredis <-> libuv glue on a plain uv loop (no runtime): connect,
 * refused connect reported promptly, pipelining, and a server killed with
 * commands in flight (each callback gets exactly one NULL reply). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/redis_uv.h"
#include "support/redis_server.h"

static bw_test_redis_t server;

static int group_setup(void **state) {
  (void)state;
  return bw_test_redis_start(&server, NULL);
}

static int group_teardown(void **state) {
  (void)state;
  bw_test_redis_destroy(&server);
  return 0;
}

typedef struct conn_state {
  int connect_calls;
  int connect_err;
  int disconnect_calls;
} conn_state_t;

static void on_connect(redisAsyncContext *ac, int err, void *arg) {
  conn_state_t *cs = arg;
  (void)ac;
  cs->connect_calls++;
  cs->connect_err = err;
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  conn_state_t *cs = ac->data;
  (void)status;
  cs->disconnect_calls++;
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void loop_close(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  uv_walk(loop, close_walk, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(loop), 0);
}

static redisAsyncContext *connect_to(uv_loop_t *loop, int port, conn_state_t *cs) {
  redisAsyncContext *ac = redisAsyncConnect("127.0.0.1", port);
  assert_non_null(ac);
  if (ac->err) return ac;
  ac->data = cs;
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  assert_int_equal(bw__redis_uv_attach(loop, ac, on_connect, cs), 0);
  return ac;
}

/* ---- pipelined SET/GET ---------------------------------------------- */

typedef struct pipe_state {
  int replies;
  int bad;
  redisAsyncContext *ac;
  int total;
} pipe_state_t;

static void on_reply(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  pipe_state_t *ps = priv;
  redisReply *reply = r;
  ps->replies++;
  if (!reply) {
    ps->bad++;
  } else if (reply->type == REDIS_REPLY_STRING) {
    if (strcmp(reply->str, "v42") != 0) ps->bad++;
  } else if (reply->type != REDIS_REPLY_STATUS) {
    ps->bad++;
  }
  if (ps->replies == ps->total) redisAsyncDisconnect(ps->ac);
}

static void test_pipelined(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  conn_state_t cs = {0};
  redisAsyncContext *ac = connect_to(&loop, server.port, &cs);
  assert_int_equal(ac->err, 0);
  pipe_state_t ps = {.ac = ac, .total = 2000};
  redisAsyncCommand(ac, on_reply, &ps, "SET k42 v42");
  for (int i = 1; i < ps.total; i++) redisAsyncCommand(ac, on_reply, &ps, "GET k42");
  loop_close(&loop);
  assert_int_equal(cs.connect_calls, 1);
  assert_int_equal(cs.connect_err, 0);
  assert_int_equal(ps.replies, ps.total);
  assert_int_equal(ps.bad, 0);
  assert_int_equal(cs.disconnect_calls, 1);
}

/* ---- refused connect ------------------------------------------------- */

typedef struct null_state {
  int calls;
  int nulls;
} null_state_t;

static void on_null_reply(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  null_state_t *ns = priv;
  ns->calls++;
  if (!r) ns->nulls++;
}

static void test_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  conn_state_t cs = {0};
  int port = bw_test_free_port();
  redisAsyncContext *ac = connect_to(&loop, port, &cs);
  if (ac->err) {
    /* Refused synchronously: that is reported too (by hiredis). */
    assert_int_equal(ac->err, REDIS_ERR_IO);
    redisAsyncFree(ac);
    loop_close(&loop);
    return;
  }
  null_state_t ns = {0};
  redisAsyncCommand(ac, on_null_reply, &ns, "PING");
  uint64_t t0 = uv_hrtime();
  /* No timer is armed: if the refusal were lost the loop would block on the
   * poll forever; run() returning proves it was reported. */
  loop_close(&loop);
  uint64_t took_ms = (uv_hrtime() - t0) / 1000000u;
  assert_int_equal(cs.connect_calls, 1);
  assert_int_equal(cs.connect_err, ECONNREFUSED);
  assert_int_equal(ns.calls, 1);
  assert_int_equal(ns.nulls, 1);
  assert_int_equal(cs.disconnect_calls, 0); /* never connected */
  assert_true(took_ms < 1000);
}

/* ---- unix socket -------------------------------------------------------- */

static void on_ping(redisAsyncContext *ac, void *r, void *priv) {
  int *ok = priv;
  redisReply *reply = r;
  *ok = reply && reply->type == REDIS_REPLY_STATUS && strcmp(reply->str, "PONG") == 0;
  redisAsyncDisconnect(ac);
}

static void test_unix(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  conn_state_t cs = {0};
  redisAsyncContext *ac = redisAsyncConnectUnix(server.unix_path);
  assert_non_null(ac);
  assert_int_equal(ac->err, 0);
  ac->data = &cs;
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  assert_int_equal(bw__redis_uv_attach(&loop, ac, on_connect, &cs), 0);
  int ok = 0;
  redisAsyncCommand(ac, on_ping, &ok, "PING");
  loop_close(&loop);
  assert_int_equal(ok, 1);
  assert_int_equal(cs.connect_calls, 1);
  assert_int_equal(cs.connect_err, 0);
}

/* ---- server killed with commands in flight --------------------------- */

#define INFLIGHT 1000

typedef struct kill_state {
  int calls[INFLIGHT];
  int nulls;
  int replies;
} kill_state_t;

typedef struct slot {
  kill_state_t *ks;
  int i;
} slot_t;

static void on_kill_reply(redisAsyncContext *ac, void *r, void *priv) {
  (void)ac;
  slot_t *s = priv;
  s->ks->calls[s->i]++;
  if (r)
    s->ks->replies++;
  else
    s->ks->nulls++;
}

static void test_killed_in_flight(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  conn_state_t cs = {0};
  redisAsyncContext *ac = connect_to(&loop, server.port, &cs);
  assert_int_equal(ac->err, 0);
  static kill_state_t ks;
  static slot_t slots[INFLIGHT];
  memset(&ks, 0, sizeof ks);
  /* BLPOP on an empty list blocks this client inside Redis, so every
   * command behind it stays in flight until the server dies. */
  slots[0] = (slot_t){&ks, 0};
  redisAsyncCommand(ac, on_kill_reply, &slots[0], "BLPOP bw:never 0");
  for (int i = 1; i < INFLIGHT; i++) {
    slots[i] = (slot_t){&ks, i};
    redisAsyncCommand(ac, on_kill_reply, &slots[i], "GET k%d", i);
  }
  /* Run until everything is written (connected and output buffer empty). */
  for (int spins = 0; spins < 100000; spins++) {
    uv_run(&loop, UV_RUN_ONCE);
    if ((ac->c.flags & REDIS_CONNECTED) && sdslen(ac->c.obuf) == 0) break;
  }
  assert_true(ac->c.flags & REDIS_CONNECTED);
  assert_int_equal(ks.replies + ks.nulls, 0);
  bw_test_redis_kill(&server);
  loop_close(&loop);
  for (int i = 0; i < INFLIGHT; i++) assert_int_equal(ks.calls[i], 1);
  assert_int_equal(ks.nulls, INFLIGHT);
  assert_int_equal(cs.disconnect_calls, 1);
  assert_int_equal(bw_test_redis_restart(&server), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pipelined),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_unix),
      cmocka_unit_test(test_killed_in_flight),
      cmocka_unit_test(test_pipelined),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
