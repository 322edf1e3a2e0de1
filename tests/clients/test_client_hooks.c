/* Clients freed before their runtime leave nothing registered with the
 * reactor: each HTTP / Redis client adds a reactor close hook at creation
 * and must remove it (bw__reactor_off_close) when it is freed, else every
 * client made and freed on a long-lived runtime keeps its hook (and the
 * state the hook holds) until the runtime shuts down.
 *
 * Measured with a counting allocator (bw_set_allocator, set before any
 * bulwark object exists): the number of live bulwark blocks after making
 * and freeing many clients must not grow with their number. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/alloc.h"
#include "bulwark/http.h"
#include "bulwark/redis.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "support/http_server.h"

static atomic_long live;

static void *c_malloc(size_t n) {
  void *p = malloc(n);
  if (p) atomic_fetch_add(&live, 1);
  return p;
}
static void *c_calloc(size_t k, size_t n) {
  void *p = calloc(k, n);
  if (p) atomic_fetch_add(&live, 1);
  return p;
}
static void *c_realloc(void *old, size_t n) {
  void *p = realloc(old, n);
  if (!old && p) atomic_fetch_add(&live, 1);
  return p;
}
static void c_free(void *p) {
  if (p) atomic_fetch_sub(&live, 1);
  free(p);
}

/* ---- one HTTP call, waited for ------------------------------------------- */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, status;
} waiter_t;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  waiter_t *w = arg;
  bw_http_response_t *r = err ? NULL : bw_call_response(call);
  pthread_mutex_lock(&w->mu);
  w->status = r ? bw_http_response_status(r) : -1;
  w->done = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

/* A call through `svc`. Its start op is queued on the loop after every op
 * queued before (FIFO), so once it completed, earlier client frees have run
 * on the loop too. */
static int call_once(bw_runtime_t *rt, bw_service_t *svc, const char *url) {
  waiter_t w = {.done = 0};
  pthread_mutex_init(&w.mu, NULL);
  pthread_cond_init(&w.cv, NULL);
  bw_http_request_t *req;
  assert_null(bw_http_request_new(&req, "GET", url));
  bw_call_t *call;
  assert_null(bw_call_new(&call, svc, rt));
  bw_call_set_request(call, req, bw_http_request_destroy);
  assert_null(bw_service_call(svc, call, on_done, &w));
  pthread_mutex_lock(&w.mu);
  while (!w.done) pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  bw_call_free(call);
  pthread_mutex_destroy(&w.mu);
  pthread_cond_destroy(&w.cv);
  return w.status;
}

static void make_and_free_http(bw_runtime_t *rt, int n) {
  for (int i = 0; i < n; i++) {
    bw_http_client_t *c;
    assert_null(bw_http_client_new(&c, rt, NULL));
    bw_http_client_free(c);
  }
}

static void test_http_client_free_removes_hook(void **state) {
  (void)state;
  httpd_t *srv;
  assert_int_equal(httpd_start(&srv, 0), 0);
  char url[96];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", httpd_port(srv));
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 1;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  bw_http_client_t *keep;
  assert_null(bw_http_client_new(&keep, rt, NULL));
  bw_service_t *svc = bw_http_client_service(keep);
  /* warm up pools and the engine */
  make_and_free_http(rt, 2);
  assert_int_equal(call_once(rt, svc, url), 200);
  assert_int_equal(call_once(rt, svc, url), 200);
  long before = atomic_load(&live);
  enum { N = 50 };
  make_and_free_http(rt, N);
  assert_int_equal(call_once(rt, svc, url), 200); /* orders after the frees */
  long after = atomic_load(&live);
  /* before the fix: 2 blocks per client (hook node + loop-side state) */
  assert_true(after - before < N / 2);
  bw_http_client_free(keep);
  bw_runtime_free(rt);
  httpd_stop(srv);
}

static void test_redis_client_free_removes_hook(void **state) {
  (void)state;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 1;
  bw_runtime_t *rt;
  assert_null(bw_runtime_new(&rt, &o));
  bw_redis_opts_t ro;
  bw_redis_opts_init(&ro);
  ro.port = 9; /* nothing listens: the client keeps reconnecting until freed */
  bw_redis_t *warm;
  assert_null(bw_redis_new(rt, &ro, &warm));
  bw_redis_free(warm);
  long before = atomic_load(&live);
  enum { N = 50 };
  for (int i = 0; i < N; i++) {
    bw_redis_t *c;
    assert_null(bw_redis_new(rt, &ro, &c));
    bw_redis_free(c); /* synchronous: the close ran on the loop */
  }
  long after = atomic_load(&live);
  /* before the fix: 2 blocks per client (hook node + its box) */
  assert_true(after - before < N / 2);
  bw_runtime_free(rt);
}

int main(void) {
  bw_allocator_t a = {c_malloc, c_calloc, c_realloc, c_free};
  if (bw_set_allocator(&a) != NULL) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_http_client_free_removes_hook),
      cmocka_unit_test(test_redis_client_free_removes_hook),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
