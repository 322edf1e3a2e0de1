/* Error paths of the Redis client against a real redis-server (and, for a
 * server answering the handshake with LOADING, a one-connection fake):
 * oversized replies (max_reply_bytes -> BW_ERR_TOO_LARGE, the connection
 * closed and re-opened) and refused handshakes (wrong password, db out of
 * range: not retryable; "try again" replies and transport failures during
 * the connect stay retryable). Waits are on condition variables signalled
 * by the completion callbacks; waits for a reconnect or for commands to be
 * queued poll the client (bounded), as test_redis_client.c does. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <bulwark/redis.h>
#include <bulwark/retry.h>
#include <bulwark/runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/fake_server.h"
#include "support/redis_server.h"
#include "support/redis_waiter.h"

static bw_test_redis_t server;
static bw_runtime_t *rt;

static int group_setup(void **state) {
  (void)state;
  return bw_test_redis_group_setup(&server, &rt);
}

static int group_teardown(void **state) {
  (void)state;
  return bw_test_redis_group_teardown(&server, rt);
}

/* ---- clients and commands -------------------------------------------------- */

/* A client with only max_reply_bytes set. */
static bw_redis_t *capped_client(size_t max_reply_bytes) {
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.max_reply_bytes = max_reply_bytes;
  return bw_test_redis_client_new(rt, &server, &o);
}

static void submit(bw_redis_t *c, bw_test_redis_waiter_t *w, int argc, const char *const *argv,
                   const size_t *lens) {
  assert_null(bw_redis_command(c, argc, argv, lens, NULL, bw_test_redis_waiter_cb, w));
}

static void run(bw_redis_t *c, bw_test_redis_waiter_t *w, int argc, const char *const *argv,
                const size_t *lens) {
  bw_test_redis_waiter_init(w, 1, rt);
  submit(c, w, argc, argv, lens);
  assert_true(bw_test_redis_waiter_wait(w, 10));
}

static void cmd1(bw_redis_t *c, bw_test_redis_waiter_t *w, const char *a0, const char *a1,
                 const char *a2) {
  const char *argv[3] = {a0, a1, a2};
  run(c, w, a2 ? 3 : a1 ? 2 : 1, argv, NULL);
}

/* SET key to `size` bytes of 'v'. */
static void set_value(bw_redis_t *c, const char *key, size_t size) {
  char *val = malloc(size);
  assert_non_null(val);
  memset(val, 'v', size);
  const char *argv[3] = {"SET", key, val};
  size_t lens[3] = {3, strlen(key), size};
  bw_test_redis_waiter_t w;
  run(c, &w, 3, argv, lens);
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  free(val);
}

static void format_err(const bw_error_t *e, char *buf, size_t len) {
  bw_error_format(e, buf, len, BW_ERROR_FMT_KIND);
}

static void assert_contains(const bw_error_t *e, const char *needle) {
  char buf[1024];
  format_err(e, buf, sizeof buf);
  if (!strstr(buf, needle)) fail_msg("'%s' not in '%s'", needle, buf);
}

static void assert_names(const bw_error_t *e, int port) {
  char where[64];
  snprintf(where, sizeof where, "127.0.0.1:%d", port);
  assert_contains(e, where);
}

/* The error of an oversized reply: BW_ERR_TOO_LARGE, detail = the cap, the
 * message names the server and the cap, and nothing retries it. */
static void assert_too_large_at(const bw_error_t *e, size_t cap, int port) {
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_TOO_LARGE);
  assert_int_equal(bw_error_detail(e), (int64_t)cap);
  assert_names(e, port);
  char num[32];
  snprintf(num, sizeof num, "%zu bytes", cap);
  assert_contains(e, num);
  assert_contains(e, "max_reply_bytes");
  assert_false(bw_redis_error_is_retryable(e));
  assert_false(bw_retry_default_predicate(e, NULL));
}

static void assert_too_large(const bw_error_t *e, size_t cap) {
  assert_too_large_at(e, cap, server.port);
}

/* ---- a fake server ------------------------------------------------------------ */

/* A client of f that connects once (the fake accepts one connection). */
static bw_redis_t *fake_client(const bw_test_fake_server_t *f, int db, size_t max_reply_bytes) {
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = f->port;
  o.db = db;
  o.max_reply_bytes = max_reply_bytes;
  o.reconnect_min_ms = 10000;
  o.reconnect_max_ms = 10000;
  return bw_test_redis_client_new(rt, &server, &o);
}

/* ---- max_reply_bytes --------------------------------------------------------- */

/* The reply arrives whole in one read (4 KiB value, 1 KiB cap): refused;
 * the connection is closed and re-opened, and the next command works. */
static void test_reply_too_large(void **state) {
  (void)state;
  bw_redis_t *c = capped_client(1024);
  set_value(c, "bw:big", 4096);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "GET", "bw:big", NULL);
  assert_null(w.reply);
  assert_too_large(w.err, 1024);
  bw_test_redis_waiter_fini(&w);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.disconnects, 1);

  assert_true(bw_test_redis_wait_state(c, BW_REDIS_READY, 10));
  cmd1(c, &w, "SET", "bw:small", "fits");
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "GET", "bw:small", NULL);
  assert_null(w.err);
  assert_string_equal(w.reply->str, "fits");
  bw_test_redis_waiter_fini(&w);
  bw_redis_stats(c, &st);
  assert_int_equal(st.connects, 2);
  bw_redis_free(c);
}

/* The cap counts the reply's bytes on the wire: "$1015\r\n" + 1015 bytes +
 * "\r\n" is exactly 1024 and passes; one byte more does not. */
static void test_reply_size_boundary(void **state) {
  (void)state;
  bw_redis_t *c = capped_client(1024);
  set_value(c, "bw:edge", 1015);
  set_value(c, "bw:edge+1", 1016);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "GET", "bw:edge", NULL);
  assert_null(w.err);
  assert_int_equal(w.reply->len, 1015);
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "GET", "bw:edge+1", NULL);
  assert_too_large(w.err, 1024);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

/* An array of many small elements: hiredis consumes it element by element,
 * so its read buffer stays small; the elements still add up to the cap. */
static void test_array_reply_too_large(void **state) {
  (void)state;
  enum { N = 300 };
  bw_redis_t *c = capped_client(1024);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "DEL", "bw:list", NULL);
  bw_test_redis_waiter_fini(&w);
  const char *argv[N + 2];
  argv[0] = "RPUSH";
  argv[1] = "bw:list";
  for (int i = 0; i < N; i++) argv[i + 2] = "0123456789"; /* 17 bytes each as a reply */
  run(c, &w, N + 2, argv, NULL);
  assert_null(w.err);
  assert_int_equal(w.reply->integer, N);
  bw_test_redis_waiter_fini(&w);

  const char *all[4] = {"LRANGE", "bw:list", "0", "-1"};
  run(c, &w, 4, all, NULL);
  assert_too_large(w.err, 1024);
  bw_test_redis_waiter_fini(&w);

  assert_true(bw_test_redis_wait_state(c, BW_REDIS_READY, 10));
  const char *some[4] = {"LRANGE", "bw:list", "0", "9"};
  run(c, &w, 4, some, NULL);
  assert_null(w.err);
  assert_int_equal(w.reply->elements, 10);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

/* A bulk string arriving over many reads (1 MiB, 64 KiB cap): refused once
 * the bytes received pass the cap, not after buffering all of it; every
 * command pending on the connection fails the same way. The server is
 * paused until all three are queued, so all three are pending. */
static void test_reply_too_large_across_reads(void **state) {
  (void)state;
  const size_t cap = 64 * 1024;
  bw_redis_t *c = capped_client(cap);
  set_value(c, "bw:huge", 1024 * 1024);
  bw_test_redis_pause(&server);
  bw_test_redis_waiter_t w;
  bw_test_redis_waiter_init(&w, 3, rt);
  const char *get[2] = {"GET", "bw:huge"}, *ping[1] = {"PING"};
  submit(c, &w, 2, get, NULL);
  submit(c, &w, 1, ping, NULL);
  submit(c, &w, 2, get, NULL);
  assert_true(bw_test_redis_wait_in_flight(c, 3, 10));
  bw_test_redis_resume(&server);
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  assert_int_equal(w.errors_by_kind[BW_ERR_TOO_LARGE], 3);
  assert_too_large(w.err, cap);
  bw_test_redis_waiter_fini(&w);

  assert_true(bw_test_redis_wait_state(c, BW_REDIS_READY, 10));
  cmd1(c, &w, "PING", NULL, NULL);
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

/* Replies that never complete (the fake sends part of one, then waits):
 * refused as soon as the bytes received pass the cap, without waiting for
 * the rest. (1) a bulk string announced as 1 MiB, 200 KiB of it sent;
 * (2) an array of 100000 elements, 200 KiB of them sent; (3) an array
 * whose parsed elements and the unparsed part of the next one together
 * pass the cap, neither alone. */
static void test_incomplete_reply_too_large(void **state) {
  (void)state;
  const size_t cap = 64 * 1024, part = 200 * 1024;
  char *bulk = malloc(part), *arr = malloc(part), *mix = malloc(part);
  assert_true(bulk && arr && mix);
  size_t n = (size_t)snprintf(bulk, part, "$1048576\r\n");
  memset(bulk + n, 'x', part - n);
  n = (size_t)snprintf(arr, part, "*100000\r\n");
  while (n + 16 <= part) n += (size_t)snprintf(arr + n, part - n, "$10\r\n0123456789\r\n");
  size_t arr_len = n;
  /* 2000 arrays of one integer (17 bytes each: 34000 parsed), then 40 KiB
   * of a 1 MiB string */
  n = (size_t)snprintf(mix, part, "*2001\r\n");
  for (int i = 0; i < 2000; i++) n += (size_t)snprintf(mix + n, part - n, "*1\r\n:1234567890\r\n");
  n += (size_t)snprintf(mix + n, part - n, "$1048576\r\n");
  memset(mix + n, 'y', 40 * 1024);
  size_t mix_len = n + 40 * 1024;
  const struct {
    const char *reply;
    size_t len;
  } cases[] = {{bulk, part}, {arr, arr_len}, {mix, mix_len}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bw_test_fake_server_t f;
    bw_test_fake_server_start(&f, cases[i].reply, cases[i].len);
    bw_redis_t *c = fake_client(&f, 0, cap);
    bw_test_redis_waiter_t w;
    cmd1(c, &w, "GET", "k", NULL);
    if (bw_error_kind(w.err) != BW_ERR_TOO_LARGE) fail_msg("case %zu: not too large", i);
    assert_too_large_at(w.err, cap, f.port);
    bw_test_redis_waiter_fini(&w);
    bw_redis_free(c);
    bw_test_fake_server_stop(&f);
  }
  free(bulk);
  free(arr);
  free(mix);
}

/* 0 means the documented default (64 MiB): a 1 MiB reply passes. */
static void test_default_cap(void **state) {
  (void)state;
  assert_int_equal(BW_REDIS_DEFAULT_MAX_REPLY_BYTES, (size_t)64 << 20);
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  set_value(c, "bw:mib", 1024 * 1024);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "GET", "bw:mib", NULL);
  assert_null(w.err);
  assert_int_equal(w.reply->len, 1024 * 1024);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

/* ---- handshake ------------------------------------------------------------- */

/* A refused handshake: BW_ERR_REDIS with BW_REDIS_HANDSHAKE, not retryable
 * by any predicate (no BW_ERR_CONNECT link either, so a retry_on list of
 * kinds does not retry it). */
static void assert_refused(const bw_error_t *e, int code, const char *step, int port) {
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_REDIS);
  assert_true(bw_error_detail(e) & BW_REDIS_HANDSHAKE);
  assert_int_equal(bw_redis_error_code(e), code);
  assert_false(bw_error_is(e, BW_ERR_CONNECT));
  assert_false(bw_redis_error_is_retryable(e));
  assert_false(bw_retry_default_predicate(e, NULL));
  assert_names(e, port);
  assert_contains(e, step);
}

static void test_wrong_password_not_retryable(void **state) {
  (void)state;
  bw_test_redis_t sec;
  const char *pw = "right-Pa55-plugh";
  assert_int_equal(bw_test_redis_start(&sec, pw), 0);
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = sec.port;
  o.password = "wrong-Pa55-xyzzy";
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "GET", "x", NULL); /* waited for the handshake */
  assert_refused(w.err, BW_REDIS_WRONGPASS, "AUTH", sec.port);
  char buf[1024];
  format_err(w.err, buf, sizeof buf);
  assert_null(strstr(buf, "xyzzy"));
  bw_test_redis_waiter_fini(&w);
  /* In backoff (or waiting for the next refused handshake): the same. */
  assert_true(bw_test_redis_wait_state(c, BW_REDIS_BACKOFF, 5));
  cmd1(c, &w, "GET", "x", NULL);
  assert_refused(w.err, BW_REDIS_WRONGPASS, "AUTH", sec.port);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);

  o.password = pw;
  c = bw_test_redis_client_new(rt, &server, &o);
  cmd1(c, &w, "SET", "k", "v");
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "GET", "k", NULL);
  assert_null(w.err);
  assert_string_equal(w.reply->str, "v");
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  bw_test_redis_destroy(&sec);
}

static void test_bad_db_not_retryable(void **state) {
  (void)state;
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.db = 200; /* redis-server has 16 */
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_refused(w.err, BW_REDIS_ERR, "SELECT", server.port);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

/* A handshake answered "try again" (LOADING: the server is starting) and a
 * connect that fails on the transport stay retryable BW_ERR_CONNECT. */
static void test_handshake_try_again_retryable(void **state) {
  (void)state;
  bw_test_fake_server_t f;
  const char *loading = "-LOADING Redis is loading the dataset in memory\r\n";
  bw_test_fake_server_start(&f, loading, strlen(loading));
  bw_redis_t *c = fake_client(&f, 1, 0); /* db 1: SELECT is the handshake */
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  assert_int_equal(bw_redis_error_code(w.err), BW_REDIS_LOADING);
  assert_true(bw_redis_error_is_retryable(w.err));
  assert_true(bw_retry_default_predicate(w.err, NULL));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  bw_test_fake_server_stop(&f);

  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = bw_test_free_port(); /* nothing listens: refused */
  o.reconnect_min_ms = 10000;
  o.reconnect_max_ms = 10000;
  c = bw_test_redis_client_new(rt, &server, &o);
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  assert_true(bw_redis_error_is_retryable(w.err));
  assert_true(bw_retry_default_predicate(w.err, NULL));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reply_too_large),
      cmocka_unit_test(test_reply_size_boundary),
      cmocka_unit_test(test_array_reply_too_large),
      cmocka_unit_test(test_reply_too_large_across_reads),
      cmocka_unit_test(test_incomplete_reply_too_large),
      cmocka_unit_test(test_default_cap),
      cmocka_unit_test(test_wrong_password_not_retryable),
      cmocka_unit_test(test_bad_db_not_retryable),
      cmocka_unit_test(test_handshake_try_again_retryable),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
