/* Test helpers for the Redis client (see redis_waiter.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "redis_waiter.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void bw_test_redis_waiter_init(bw_test_redis_waiter_t *w, int expected, bw_runtime_t *rt) {
  memset(w, 0, sizeof *w);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->expected = expected;
  w->rt = rt;
}

void bw_test_redis_waiter_fini(bw_test_redis_waiter_t *w) {
  bw_redis_reply_free(w->reply);
  bw_error_unref(w->err);
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

void bw_test_redis_waiter_cb(bw_redis_reply_t *reply, const bw_error_t *err, void *arg) {
  bw_test_redis_waiter_t *w = arg;
  pthread_mutex_lock(&w->mu);
  if (w->rt && bw_runtime_current() != w->rt) w->bad_callback = true;
  if (err) w->errors_by_kind[bw_error_kind(err)]++;
  if ((reply != NULL) == (err != NULL)) w->bad_callback = true;
  if (reply && (unsigned)reply->type < sizeof w->replies_by_type / sizeof w->replies_by_type[0])
    w->replies_by_type[reply->type]++;
  if (!w->reply && reply) {
    w->reply = reply;
    reply = NULL;
  }
  if (!w->err && err) w->err = bw_error_ref(err);
  w->got++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
  bw_redis_reply_free(reply);
}

bool bw_test_redis_waiter_wait(bw_test_redis_waiter_t *w, int secs) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += secs;
  pthread_mutex_lock(&w->mu);
  while (w->got < w->expected)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0) break;
  bool ok = w->got >= w->expected;
  pthread_mutex_unlock(&w->mu);
  return ok;
}

bool bw_test_redis_wait_state(bw_redis_t *c, bw_redis_state_t st, int secs) {
  for (int i = 0; i < secs * 1000; i++) {
    if (bw_redis_state(c) == st) return true;
    bw_test_sleep_ms(1);
  }
  bw_redis_stats_t s;
  bw_redis_stats(c, &s);
  fprintf(stderr,
          "wait_state: wanted %d, still %d after %d s (connects %llu, connect failures %llu, "
          "disconnects %llu)\n",
          (int)st, (int)bw_redis_state(c), secs, (unsigned long long)s.connects,
          (unsigned long long)s.connect_failures, (unsigned long long)s.disconnects);
  return false;
}

bool bw_test_redis_wait_in_flight(bw_redis_t *c, uint64_t n, int secs) {
  bw_redis_stats_t st;
  for (int i = 0; i < secs * 1000; i++) {
    bw_redis_stats(c, &st);
    if (st.in_flight == n) return true;
    bw_test_sleep_ms(1);
  }
  return false;
}

bw_redis_t *bw_test_redis_client_new(bw_runtime_t *rt, const bw_test_redis_t *server,
                                     const bw_redis_opts_t *extra) {
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  if (extra) o = *extra;
  if (!o.unix_path && !o.port) o.port = server->port;
  if (!o.reconnect_min_ms) o.reconnect_min_ms = 10;
  if (!o.reconnect_max_ms) o.reconnect_max_ms = 50;
  bw_redis_t *c = NULL;
  bw_error_t *e = bw_redis_new(rt, &o, &c);
  if (e) {
    char buf[256];
    bw_error_format(e, buf, sizeof buf, BW_ERROR_FMT_KIND | BW_ERROR_FMT_LOCATION);
    fprintf(stderr, "bw_redis_new: %s\n", buf);
    bw_error_unref(e);
    fail();
  }
  return c;
}

int bw_test_redis_group_setup(bw_test_redis_t *server, bw_runtime_t **rt) {
  if (bw_test_redis_start(server, NULL) != 0) return -1;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  bw_error_t *e = bw_runtime_new(rt, &o);
  if (e) {
    bw_error_unref(e);
    return -1;
  }
  return 0;
}

int bw_test_redis_group_teardown(bw_test_redis_t *server, bw_runtime_t *rt) {
  bw_runtime_free(rt);
  bw_test_redis_destroy(server);
  return 0;
}
