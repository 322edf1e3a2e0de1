/* The Redis client (callback API) against a real redis-server, on a
 * multi-thread runtime with the real clock (see test_redis_paused.c for the
 * paused clock). Waits are on condition variables signalled by the
 * completion callbacks; the few waits for a reconnect poll the client state. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <bulwark/redis.h>
#include <bulwark/runtime.h>
#include <bulwark/sync.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/fake_server.h"
#include "support/redis_server.h"
#include "support/redis_waiter.h"

static bw_test_redis_t server;
static bw_runtime_t *rt;

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static int group_setup(void **state) {
  (void)state;
  return bw_test_redis_group_setup(&server, &rt);
}

static int group_teardown(void **state) {
  (void)state;
  return bw_test_redis_group_teardown(&server, rt);
}

/* ---- waiting for completions --------------------------------------------- */

/* Completions counted per command, under the waiter's lock. */
typedef struct slot_arg {
  bw_test_redis_waiter_t *w;
  int *completions;
} slot_arg_t;

static void on_slot(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  slot_arg_t *s = arg;
  pthread_mutex_lock(&s->w->mu);
  (*s->completions)++;
  pthread_mutex_unlock(&s->w->mu);
  bw_test_redis_waiter_cb(reply, err, s->w);
}

/* Run one command and wait for it. */
static void run(bw_redis_t *c, bw_test_redis_waiter_t *w, int argc, const char *const *argv,
                const size_t *lens, const bw_redis_cmd_opts_t *opts) {
  bw_test_redis_waiter_init(w, 1, rt);
  assert_null(bw_redis_command(c, argc, argv, lens, opts, bw_test_redis_waiter_cb, w));
  assert_true(bw_test_redis_waiter_wait(w, 10));
  assert_false(w->bad_callback);
}

static void cmd1(bw_redis_t *c, bw_test_redis_waiter_t *w, const char *a0, const char *a1,
                 const char *a2) {
  const char *argv[3] = {a0, a1, a2};
  run(c, w, a2 ? 3 : a1 ? 2 : 1, argv, NULL, NULL);
}

static void format_err(const bw_error_t *e, char *buf, size_t len) {
  bw_error_format(e, buf, len, BW_ERROR_FMT_KIND);
}

/* ---- tests ------------------------------------------------------------------ */

static void test_set_get_binary(void **state) {
  (void)state;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  bw_test_redis_waiter_t w;
  const char val[] = {'a', '\0', 'b', '\r', '\n', 'c'};
  const char *argv[3] = {"SET", "bin\0key", val};
  size_t lens[3] = {3, 7, sizeof val};
  run(c, &w, 3, argv, lens, NULL);
  assert_null(w.err);
  assert_int_equal(w.reply->type, BW_REDIS_REPLY_STATUS);
  assert_string_equal(w.reply->str, "OK");
  bw_test_redis_waiter_fini(&w);

  const char *gargv[2] = {"GET", "bin\0key"};
  size_t glens[2] = {3, 7};
  run(c, &w, 2, gargv, glens, NULL);
  assert_null(w.err);
  assert_int_equal(w.reply->type, BW_REDIS_REPLY_STRING);
  assert_int_equal(w.reply->len, sizeof val);
  assert_memory_equal(w.reply->str, val, sizeof val);
  bw_test_redis_waiter_fini(&w);

  cmd1(c, &w, "GET", "no-such-key", NULL);
  assert_int_equal(w.reply->type, BW_REDIS_REPLY_NIL);
  bw_test_redis_waiter_fini(&w);

  cmd1(c, &w, "DEL", "list", NULL);
  bw_test_redis_waiter_fini(&w);
  const char *rp[5] = {"RPUSH", "list", "x", "yy", "zzz"};
  run(c, &w, 5, rp, NULL, NULL);
  assert_int_equal(w.reply->type, BW_REDIS_REPLY_INTEGER);
  assert_int_equal(w.reply->integer, 3);
  bw_test_redis_waiter_fini(&w);
  const char *lr[4] = {"LRANGE", "list", "0", "-1"};
  run(c, &w, 4, lr, NULL, NULL);
  assert_int_equal(w.reply->type, BW_REDIS_REPLY_ARRAY);
  assert_int_equal(w.reply->elements, 3);
  assert_string_equal(w.reply->element[2]->str, "zzz");
  assert_int_equal(w.reply->element[1]->len, 2);
  bw_test_redis_waiter_fini(&w);

  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.connects, 1);
  assert_int_equal(bw_redis_state(c), BW_REDIS_READY);
  bw_redis_free(c);
}

static void test_pipelining(void **state) {
  (void)state;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "DEL", "ctr", NULL);
  bw_test_redis_waiter_fini(&w);
  int n = (int)(20000 * scale());
  if (n < 100) n = 100;
  bw_test_redis_waiter_init(&w, n, rt);
  const char *argv[2] = {"INCR", "ctr"};
  for (int i = 0; i < n; i++)
    assert_null(bw_redis_command(c, 2, argv, NULL, NULL, bw_test_redis_waiter_cb, &w));
  assert_true(bw_test_redis_waiter_wait(&w, 30));
  assert_false(w.bad_callback);
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "GET", "ctr", NULL);
  assert_int_equal(atoi(w.reply->str), n);
  bw_test_redis_waiter_fini(&w);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.replies, (uint64_t)n + 2);
  bw_redis_free(c);
}

/* Commands submitted from completion callbacks: a delivery batch's worker
 * writes them to the socket itself when the batch ends (redis.c, "Direct
 * writes"). Each chain step pushes 2 values; the lists read at the end
 * show that every command ran once and in submission order. */
typedef struct chain {
  bw_redis_t *c;
  bw_test_redis_waiter_t *w;
  int next, rounds;
  char key[32];
} chain_t;

/* A callback's view of a failure or a wrong thread: recorded, not asserted
 * (cmocka's asserts belong to the test thread). */
static void chain_note(bw_test_redis_waiter_t *w, const bw_error_t *err, bool done) {
  pthread_mutex_lock(&w->mu);
  if (bw_runtime_current() != rt) w->bad_callback = true;
  if (err) w->errors_by_kind[bw_error_kind(err)]++;
  if (done) w->got++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void on_chain_first(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  chain_note(arg, err, false);
  bw_redis_reply_free(reply);
}

static void on_chain(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  chain_t *ch = arg;
  bw_redis_reply_free(reply);
  if (err || ch->next >= 2 * ch->rounds) {
    chain_note(ch->w, err, true);
    return;
  }
  char v[2][16];
  const char *argv[2][3];
  for (int k = 0; k < 2; k++) {
    snprintf(v[k], sizeof v[k], "%d", ch->next++);
    argv[k][0] = "RPUSH";
    argv[k][1] = ch->key;
    argv[k][2] = v[k];
  }
  /* the second of the pair continues the chain */
  bw_error_t *e = bw_redis_command(ch->c, 3, argv[0], NULL, NULL, on_chain_first, ch->w);
  if (!e) e = bw_redis_command(ch->c, 3, argv[1], NULL, NULL, on_chain, ch);
  if (e) {
    chain_note(ch->w, e, true);
    bw_error_unref(e);
  }
}

static void test_commands_from_callbacks(void **state) {
  (void)state;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  enum { CHAINS = 16 };
  int rounds = (int)(200 * scale());
  chain_t ch[CHAINS];
  bw_test_redis_waiter_t w;
  for (int i = 0; i < CHAINS; i++) {
    ch[i] = (chain_t){c, NULL, 0, rounds, ""};
    snprintf(ch[i].key, sizeof ch[i].key, "chain:%d", i);
    cmd1(c, &w, "DEL", ch[i].key, NULL);
    bw_test_redis_waiter_fini(&w);
  }
  bw_test_redis_waiter_init(&w, CHAINS, rt);
  const char *ping[1] = {"PING"};
  for (int i = 0; i < CHAINS; i++) {
    ch[i].w = &w;
    assert_null(bw_redis_command(c, 1, ping, NULL, NULL, on_chain, &ch[i]));
  }
  assert_true(bw_test_redis_waiter_wait(&w, 30));
  assert_false(w.bad_callback);
  for (int k = 0; k < BW_ERR__MAX; k++) assert_int_equal(w.errors_by_kind[k], 0);
  bw_test_redis_waiter_fini(&w);
  for (int i = 0; i < CHAINS; i++) {
    const char *argv[4] = {"LRANGE", ch[i].key, "0", "-1"};
    run(c, &w, 4, argv, NULL, NULL);
    assert_int_equal(w.reply->type, BW_REDIS_REPLY_ARRAY);
    assert_int_equal(w.reply->elements, (size_t)(2 * rounds));
    for (int j = 0; j < 2 * rounds; j++) assert_int_equal(atoi(w.reply->element[j]->str), j);
    bw_test_redis_waiter_fini(&w);
  }
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_int_equal(st.errors, 0);
  bw_redis_free(c);
}

/* A burst from a callback beyond max_in_flight: the excess is refused
 * (BW_ERR_UNAVAILABLE) on whichever path writes it, and every command
 * completes exactly once. */
typedef struct burst {
  bw_redis_t *c;
  bw_test_redis_waiter_t *w;
} burst_t;

static void on_burst(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  burst_t *b = arg;
  const char *argv[1] = {"PING"};
  for (int i = 0; i < 32; i++) {
    bw_error_t *e = bw_redis_command(b->c, 1, argv, NULL, NULL, bw_test_redis_waiter_cb, b->w);
    if (e) {
      bw_test_redis_waiter_cb(NULL, e, b->w);
      bw_error_unref(e);
    }
  }
  bw_test_redis_waiter_cb(reply, err, b->w);
}

static void test_callback_burst_over_limit(void **state) {
  (void)state;
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.max_in_flight = 4;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  bw_test_redis_waiter_init(&w, 1 + 32, rt);
  burst_t b = {c, &w};
  const char *argv[1] = {"PING"};
  assert_null(bw_redis_command(c, 1, argv, NULL, NULL, on_burst, &b));
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  bw_redis_free(c); /* every callback has run when this returns */
  assert_int_equal(w.got, 1 + 32);
  assert_false(w.bad_callback);
  int unavailable = w.errors_by_kind[BW_ERR_UNAVAILABLE];
  assert_true(unavailable <= 32 - 4);
  int others = 0;
  for (int k = 0; k < BW_ERR__MAX; k++) others += k == BW_ERR_UNAVAILABLE ? 0 : w.errors_by_kind[k];
  assert_int_equal(others, 0);
  bw_test_redis_waiter_fini(&w);
}

/* Commands that a delivery batch's callbacks submit are written once 16 of
 * them are held, before the batch's later callbacks run (redis.c, "Direct
 * writes"): 64 PINGs queued before the connection is up are answered in
 * one read, so their callbacks run as one batch; the first 16 push to a
 * list and the 17th pops from it over a second, blocking connection. Had
 * the pushes been held to the end of the batch, that pop would wait on a
 * list that stays empty until it gives up (10 s) and this test fails. */
typedef struct early {
  bw_redis_t *c;
  bw_test_redis_waiter_t *w;
  atomic_int seen;
  int popped; /* 1: the pop found a pushed value; 0: it gave up; -1: error */
} early_t;

static int pop_blocking(int port, const char *key, int secs) {
  struct timeval tv = {secs + 5, 0};
  redisContext *sync = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (!sync || sync->err) {
    if (sync) redisFree(sync);
    return -1;
  }
  redisReply *r = redisCommand(sync, "BLPOP %s %d", key, secs);
  int found = !r ? -1 : r->type == REDIS_REPLY_ARRAY ? 1 : r->type == REDIS_REPLY_NIL ? 0 : -1;
  if (r) freeReplyObject(r);
  redisFree(sync);
  return found;
}

static void on_early(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  early_t *e = arg;
  int i = atomic_fetch_add(&e->seen, 1);
  if (i < 16) {
    const char *argv[3] = {"RPUSH", "early", "x"};
    bw_error_t *se = bw_redis_command(e->c, 3, argv, NULL, NULL, bw_test_redis_waiter_cb, e->w);
    if (se) {
      bw_test_redis_waiter_cb(NULL, se, e->w);
      bw_error_unref(se);
    }
  } else if (i == 16) {
    e->popped = pop_blocking(server.port, "early", 10);
  }
  bw_test_redis_waiter_cb(reply, err, e->w);
}

static void test_held_commands_written_mid_batch(void **state) {
  (void)state;
  bw_test_redis_waiter_t w;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  cmd1(c, &w, "DEL", "early", NULL);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  /* fresh: the PINGs below queue while it connects */
  c = bw_test_redis_client_new(rt, &server, NULL);
  bw_test_redis_waiter_init(&w, 64 + 16, rt);
  early_t e = {c, &w, 0, -2};
  const char *ping[1] = {"PING"};
  for (int i = 0; i < 64; i++) assert_null(bw_redis_command(c, 1, ping, NULL, NULL, on_early, &e));
  assert_true(bw_test_redis_waiter_wait(&w, 30));
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  bw_redis_free(c);
  assert_false(w.bad_callback);
  for (int k = 0; k < BW_ERR__MAX; k++) assert_int_equal(w.errors_by_kind[k], 0);
  /* The worker writes them itself unless the socket was busy (the loop
   * reading the replies of a batch split over two reads) or earlier
   * commands were queued for the loop: then the loop writes them, and the
   * loop may be this worker, blocked in the pop (the known limit of a
   * callback that blocks, README). Only a direct write can be checked. */
  if (st.held_via_loop == 0) assert_int_equal(e.popped, 1);
  else assert_true(e.popped == 0 || e.popped == 1);
  bw_test_redis_waiter_fini(&w);
}

/* Server error replies, produced with redis.error_reply() so every prefix
 * can be made on a single plain server. */
static void script_error(bw_redis_t *c, bw_test_redis_waiter_t *w, const char *msg) {
  char script[256];
  snprintf(script, sizeof script, "return redis.error_reply('%s')", msg);
  const char *argv[3] = {"EVAL", script, "0"};
  run(c, w, 3, argv, NULL, NULL);
  assert_non_null(w->err);
}

static void test_classification(void **state) {
  (void)state;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  bw_test_redis_waiter_t w;
  static const struct {
    const char *msg;
    int code;
    bw_error_kind_t kind;
    bool retryable;
  } cases[] = {
      {"LOADING Redis is loading the dataset in memory", BW_REDIS_LOADING, BW_ERR_UNAVAILABLE,
       true},
      {"BUSY Redis is busy running a script", BW_REDIS_BUSY, BW_ERR_UNAVAILABLE, true},
      {"TRYAGAIN Multiple keys request during rehashing", BW_REDIS_TRYAGAIN, BW_ERR_UNAVAILABLE,
       true},
      {"MASTERDOWN Link with MASTER is down", BW_REDIS_MASTERDOWN, BW_ERR_UNAVAILABLE, true},
      {"READONLY You cannot write against a read only replica.", BW_REDIS_READONLY,
       BW_ERR_UNAVAILABLE, true},
      {"NOAUTH Authentication required.", BW_REDIS_NOAUTH, BW_ERR_REDIS, false},
      {"MOVED 3999 127.0.0.1:6381", BW_REDIS_MOVED, BW_ERR_REDIS, false},
      {"ASK 3999 127.0.0.1:6381", BW_REDIS_ASK, BW_ERR_REDIS, false},
      {"CUSTOMERR something", BW_REDIS_OTHER, BW_ERR_REDIS, false},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    script_error(c, &w, cases[i].msg);
    assert_int_equal(bw_error_kind(w.err), cases[i].kind);
    assert_true(bw_error_is(w.err, BW_ERR_REDIS));
    assert_int_equal(bw_redis_error_code(w.err), cases[i].code);
    assert_int_equal(bw_redis_error_is_retryable(w.err), cases[i].retryable);
    char buf[512];
    format_err(w.err, buf, sizeof buf);
    if (cases[i].code == BW_REDIS_MOVED || cases[i].code == BW_REDIS_ASK)
      assert_non_null(strstr(buf, "cluster redirection not supported"));
    bw_test_redis_waiter_fini(&w);
  }
  /* Real errors from the server. */
  cmd1(c, &w, "SET", "str", "v");
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "LPUSH", "str", "x");
  assert_int_equal(bw_error_kind(w.err), BW_ERR_REDIS);
  assert_int_equal(bw_redis_error_code(w.err), BW_REDIS_WRONGTYPE);
  assert_false(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "NOSUCHCOMMAND", NULL, NULL);
  assert_int_equal(bw_redis_error_code(w.err), BW_REDIS_ERR);
  assert_false(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  cmd1(c, &w, "EVALSHA", "ffffffffffffffffffffffffffffffffffffffff", "0");
  assert_int_equal(bw_redis_error_code(w.err), BW_REDIS_NOSCRIPT);
  bw_test_redis_waiter_fini(&w);
  /* The connection is still fine after error replies. */
  cmd1(c, &w, "PING", NULL, NULL);
  assert_string_equal(w.reply->str, "PONG");
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

static void test_refused(void **state) {
  (void)state;
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = bw_test_free_port();
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  assert_true(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  /* Once the refusal is known, calls fail fast with the cause attached. */
  assert_true(bw_test_redis_wait_state(c, BW_REDIS_BACKOFF, 5) ||
              bw_redis_state(c) == BW_REDIS_CONNECTING);
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  const bw_error_t *root = bw_error_root(w.err);
  assert_int_equal(bw_error_detail(root), ECONNREFUSED);
  bw_test_redis_waiter_fini(&w);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  assert_true(st.connect_failures >= 1);
  assert_int_equal(st.connects, 0);
  bw_redis_free(c);
}

static void test_unix_socket(void **state) {
  (void)state;
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.unix_path = server.unix_path;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_null(w.err);
  assert_string_equal(w.reply->str, "PONG");
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

static void test_auth_select_and_secret(void **state) {
  (void)state;
  bw_test_redis_t sec;
  const char *pw = "s3cr3t-Pa55w0rd";
  assert_int_equal(bw_test_redis_start(&sec, pw), 0);
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = sec.port;
  o.password = pw;
  o.db = 3;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "SET", "in-db-3", "yes");
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  /* Check with a plain blocking connection that SELECT 3 was applied. */
  redisContext *rc = redisConnect("127.0.0.1", sec.port);
  assert_non_null(rc);
  redisReply *r = redisCommand(rc, "AUTH %s", pw);
  freeReplyObject(r);
  r = redisCommand(rc, "SELECT 3");
  freeReplyObject(r);
  r = redisCommand(rc, "GET in-db-3");
  assert_int_equal(r->type, REDIS_REPLY_STRING);
  assert_string_equal(r->str, "yes");
  freeReplyObject(r);
  r = redisCommand(rc, "EXISTS in-db-3");
  freeReplyObject(r);
  redisFree(rc);

  /* Wrong password: the handshake is refused, calls fail with WRONGPASS
   * (not retryable: test_redis_errors.c), and the password text appears
   * nowhere. */
  o.password = "wrong-Pa55-xyzzy";
  c = bw_test_redis_client_new(rt, &server, &o);
  cmd1(c, &w, "GET", "x", NULL);
  char buf[1024];
  format_err(w.err, buf, sizeof buf);
  assert_null(strstr(buf, "wrong-Pa55-xyzzy"));
  assert_true(bw_error_is(w.err, BW_ERR_CONNECT) || bw_error_is(w.err, BW_ERR_REDIS));
  bw_test_redis_waiter_fini(&w);
  assert_true(bw_test_redis_wait_state(c, BW_REDIS_BACKOFF, 5));
  cmd1(c, &w, "GET", "x", NULL);
  format_err(w.err, buf, sizeof buf);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_REDIS);
  assert_int_equal(bw_redis_error_code(w.err), BW_REDIS_WRONGPASS);
  assert_null(strstr(buf, "wrong-Pa55-xyzzy"));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);

  /* No password at all against a protected server: NOAUTH, not retryable. */
  o.password = NULL;
  o.db = 0;
  c = bw_test_redis_client_new(rt, &server, &o);
  cmd1(c, &w, "GET", "x", NULL);
  assert_int_equal(bw_redis_error_code(w.err), BW_REDIS_NOAUTH);
  assert_false(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  bw_test_redis_destroy(&sec);
}

/* Server killed with INFLIGHT commands written: each callback runs once
 * with a transport error; new calls fail fast; after a restart the client
 * reconnects by itself. */
#define INFLIGHT 1000
static void test_killed_in_flight(void **state) {
  (void)state;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  bw_test_redis_waiter_fini(&w);
  static int per_slot[INFLIGHT];
  static slot_arg_t slots[INFLIGHT];
  memset(per_slot, 0, sizeof per_slot);
  bw_test_redis_waiter_init(&w, INFLIGHT, rt);
  const char *blpop[3] = {"BLPOP", "bw:never", "0"};
  slots[0] = (slot_arg_t){&w, &per_slot[0]};
  assert_null(bw_redis_command(c, 3, blpop, NULL, NULL, on_slot, &slots[0]));
  const char *get[2] = {"GET", "k"};
  for (int i = 1; i < INFLIGHT; i++) {
    slots[i] = (slot_arg_t){&w, &per_slot[i]};
    assert_null(bw_redis_command(c, 2, get, NULL, NULL, on_slot, &slots[i]));
  }
  assert_true(bw_test_redis_wait_in_flight(c, INFLIGHT, 5));
  bw_test_redis_kill(&server);
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  bw_test_sleep_ms(20); /* would expose a second completion */
  pthread_mutex_lock(&w.mu);
  assert_int_equal(w.got, INFLIGHT);
  for (int i = 0; i < INFLIGHT; i++) assert_int_equal(per_slot[i], 1);
  assert_int_equal(w.errors_by_kind[BW_ERR_TRANSPORT], INFLIGHT);
  pthread_mutex_unlock(&w.mu);
  assert_true(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);

  /* Dead: a connect error, failing fast while in backoff. (On a loaded
   * machine the 50 ms backoff may have ended before the PING: then it
   * waited for a reconnect attempt that was refused.) */
  assert_true(bw_test_redis_wait_state(c, BW_REDIS_BACKOFF, 5));
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  uint64_t refused_before = st.connect_failures;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  bw_test_redis_waiter_fini(&w);
  bw_redis_stats(c, &st);
  assert_true(st.fail_fast >= 1 || st.connect_failures > refused_before);
  assert_int_equal(st.disconnects, 1);

  assert_int_equal(bw_test_redis_restart(&server), 0);
  assert_true(bw_test_redis_wait_state(c, BW_REDIS_READY, 10));
  cmd1(c, &w, "PING", NULL, NULL);
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

static void test_timeout_late_reply_dropped(void **state) {
  (void)state;
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.command_timeout_ms = 50;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_null(w.err);
  bw_test_redis_waiter_fini(&w);
  bw_test_redis_pause(&server);
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_TIMEOUT);
  assert_true(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  /* Cancellation by token while the server is stopped. */
  bw_cancel_token_t *tok;
  assert_null(bw_cancel_token_new(&tok));
  bw_redis_cmd_opts_t co = {0, tok};
  const char *argv[1] = {"PING"};
  bw_test_redis_waiter_init(&w, 1, rt);
  assert_null(bw_redis_command(c, 1, argv, NULL, &co, bw_test_redis_waiter_cb, &w));
  bw_cancel_token_cancel(tok);
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CANCELLED);
  assert_false(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  bw_cancel_token_unref(tok);
  bw_test_redis_resume(&server);
  /* Late replies are dropped; the connection still works. */
  cmd1(c, &w, "PING", NULL, NULL);
  assert_null(w.err);
  assert_string_equal(w.reply->str, "PONG");
  bw_test_redis_waiter_fini(&w);
  bw_redis_stats_t st;
  bw_redis_stats(c, &st);
  /* The timed-out PING's reply came late; the cancelled one was either
   * never sent (cancelled before the loop took it) or came late too. */
  assert_true(st.late_replies_dropped >= 1 && st.late_replies_dropped <= 2);
  assert_int_equal(st.timeouts, 1);
  assert_int_equal(st.connects, 1);
  assert_int_equal(st.in_flight, 0);
  /* A deadline already passed. */
  bw_redis_cmd_opts_t past = {bw_runtime_now_ns(rt) - 1, NULL};
  bw_test_redis_waiter_init(&w, 1, rt);
  assert_null(bw_redis_command(c, 1, argv, NULL, &past, bw_test_redis_waiter_cb, &w));
  assert_true(bw_test_redis_waiter_wait(&w, 10));
  assert_int_equal(bw_error_kind(w.err), BW_ERR_TIMEOUT);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

static void test_connect_timeout(void **state) {
  (void)state;
  /* A stopped server still completes TCP handshakes (kernel backlog) but
   * never answers SELECT: the connect deadline fires. */
  bw_test_redis_pause(&server);
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.db = 1;
  o.connect_timeout_ms = 50;
  o.reconnect_min_ms = 1000;
  o.reconnect_max_ms = 1000;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  assert_true(bw_error_is(w.err, BW_ERR_TIMEOUT));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  bw_test_redis_resume(&server);
}

static void test_free_with_commands_in_flight(void **state) {
  (void)state;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, NULL);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  bw_test_redis_waiter_fini(&w);
  bw_test_redis_pause(&server);
  bw_test_redis_waiter_init(&w, 100, rt);
  const char *argv[1] = {"PING"};
  for (int i = 0; i < 100; i++)
    assert_null(bw_redis_command(c, 1, argv, NULL, NULL, bw_test_redis_waiter_cb, &w));
  bw_redis_free(c);
  /* Every callback ran before free returned. */
  assert_int_equal(w.got, 100);
  assert_int_equal(w.errors_by_kind[BW_ERR_CANCELLED] + w.errors_by_kind[BW_ERR_CONNECT], 100);
  bw_test_redis_waiter_fini(&w);
  bw_test_redis_resume(&server);
}

/* ---- runtime shut down, error values, handshake failure ------------------- */

static atomic_int late_calls;
static void on_count(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  (void)err;
  (void)arg;
  bw_redis_reply_free(reply);
  atomic_fetch_add(&late_calls, 1);
}

/* After bw_runtime_shutdown the reactor refuses new commands: the call
 * fails with BW_ERR_RUNTIME_SHUTDOWN naming the server, and the callback
 * never runs (it used to run inline, inside bw_redis_command). Also with a
 * token already cancelled (its completion could not be deferred either). */
static void test_command_after_runtime_shutdown(void **state) {
  (void)state;
  bw_runtime_t *rt2;
  bw_runtime_opts_t ro;
  bw_runtime_opts_init(&ro);
  ro.worker_threads = 1;
  assert_null(bw_runtime_new(&rt2, &ro));
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = server.port;
  bw_redis_t *c = NULL;
  assert_null(bw_redis_new(rt2, &o, &c));
  bw_error_unref(bw_runtime_shutdown(rt2, BW_SHUTDOWN_CANCEL, 0));
  atomic_store(&late_calls, 0);
  const char *argv[1] = {"PING"};
  bw_error_t *e = bw_redis_command(c, 1, argv, NULL, NULL, on_count, NULL);
  assert_int_equal(atomic_load(&late_calls), 0);
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  char buf[512], where[64];
  format_err(e, buf, sizeof buf);
  snprintf(where, sizeof where, "127.0.0.1:%d", server.port);
  assert_non_null(strstr(buf, where));
  bw_error_unref(e);

  bw_cancel_token_t *tok;
  assert_null(bw_cancel_token_new(&tok));
  bw_cancel_token_cancel(tok);
  bw_redis_cmd_opts_t co = {0, tok};
  e = bw_redis_command(c, 1, argv, NULL, &co, on_count, NULL);
  assert_int_equal(atomic_load(&late_calls), 0);
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_RUNTIME_SHUTDOWN);
  bw_error_unref(e);
  bw_cancel_token_unref(tok);

  bw_redis_free(c);
  bw_runtime_free(rt2);
  assert_int_equal(atomic_load(&late_calls), 0);
}

/* A unix socket path that does not exist: the connect fails at once
 * (synchronously in hiredis); the error names the path and its detail is
 * the errno (ENOENT), not hiredis's error type. */
static void test_unix_path_missing(void **state) {
  (void)state;
  char path[200];
  snprintf(path, sizeof path, "%s/no-such-dir/redis.sock", server.dir);
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.unix_path = path;
  o.reconnect_min_ms = 1000;
  o.reconnect_max_ms = 1000;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_CONNECT);
  assert_int_equal(bw_error_detail(w.err), ENOENT);
  assert_int_equal(bw_error_detail(bw_error_root(w.err)), ENOENT);
  char buf[512];
  format_err(w.err, buf, sizeof buf);
  assert_non_null(strstr(buf, path));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
}

/* A client of the fake server f (started here, answering `reply`). */
static bw_redis_t *fake_client(bw_test_fake_server_t *f, const char *reply) {
  bw_test_fake_server_start(f, reply, reply ? strlen(reply) : 0);
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.port = f->port;
  o.reconnect_min_ms = 1000;
  o.reconnect_max_ms = 1000;
  return bw_test_redis_client_new(rt, &server, &o);
}

static void assert_names_fake(const bw_error_t *err, const bw_test_fake_server_t *f) {
  char buf[512], where[64];
  format_err(err, buf, sizeof buf);
  snprintf(where, sizeof where, "127.0.0.1:%d", f->port);
  assert_non_null(strstr(buf, where));
}

/* A server answering bytes that are not RESP: BW_ERR_PROTOCOL (not a
 * transport error), not retryable, naming the server. */
static void test_protocol_error(void **state) {
  (void)state;
  bw_test_fake_server_t f;
  bw_redis_t *c = fake_client(&f, "HTTP/1.1 400 Bad Request\r\n\r\n");
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_PROTOCOL);
  assert_false(bw_redis_error_is_retryable(w.err));
  assert_names_fake(w.err, &f);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  bw_test_fake_server_stop(&f);
}

/* A connection reset with the command in flight: BW_ERR_TRANSPORT whose
 * detail is the errno (ECONNRESET), not hiredis's REDIS_ERR_IO (1). */
static void test_reset_errno(void **state) {
  (void)state;
  bw_test_fake_server_t f;
  bw_redis_t *c = fake_client(&f, NULL);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "PING", NULL, NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_TRANSPORT);
  assert_int_equal(bw_error_detail(w.err), ECONNRESET);
  assert_names_fake(w.err, &f);
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  bw_test_fake_server_stop(&f);
}

/* A command issued while CONNECTING waits for the handshake: when SELECT
 * fails, it was never sent (it used to be pipelined behind SELECT and run
 * in db 0). The server refused the handshake (db out of range), so the
 * error is that refusal, not retryable (test_redis_errors.c). */
static void test_handshake_failure_command_not_sent(void **state) {
  (void)state;
  redisContext *rc = redisConnect("127.0.0.1", server.port);
  assert_non_null(rc);
  freeReplyObject(redisCommand(rc, "DEL bw:handshake-fail"));
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  o.db = 200; /* out of range: SELECT fails */
  o.reconnect_min_ms = 1000;
  o.reconnect_max_ms = 1000;
  bw_redis_t *c = bw_test_redis_client_new(rt, &server, &o);
  bw_test_redis_waiter_t w;
  cmd1(c, &w, "INCR", "bw:handshake-fail", NULL);
  assert_int_equal(bw_error_kind(w.err), BW_ERR_REDIS);
  assert_true(bw_error_detail(w.err) & BW_REDIS_HANDSHAKE);
  assert_false(bw_redis_error_is_retryable(w.err));
  bw_test_redis_waiter_fini(&w);
  bw_redis_free(c);
  redisReply *r = redisCommand(rc, "EXISTS bw:handshake-fail");
  assert_non_null(r);
  assert_int_equal(r->integer, 0);
  freeReplyObject(r);
  redisFree(rc);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_set_get_binary),
      cmocka_unit_test(test_pipelining),
      cmocka_unit_test(test_commands_from_callbacks),
      cmocka_unit_test(test_callback_burst_over_limit),
      cmocka_unit_test(test_held_commands_written_mid_batch),
      cmocka_unit_test(test_classification),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_unix_socket),
      cmocka_unit_test(test_auth_select_and_secret),
      cmocka_unit_test(test_timeout_late_reply_dropped),
      cmocka_unit_test(test_connect_timeout),
      cmocka_unit_test(test_free_with_commands_in_flight),
      cmocka_unit_test(test_command_after_runtime_shutdown),
      cmocka_unit_test(test_unix_path_missing),
      cmocka_unit_test(test_protocol_error),
      cmocka_unit_test(test_reset_errno),
      cmocka_unit_test(test_handshake_failure_command_not_sent),
      cmocka_unit_test(test_killed_in_flight),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
