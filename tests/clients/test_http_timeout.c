/* The HTTP client under a timeout layer on the paused clock.
 *
 * The paused clock jumps to the timeout's deadline as soon as the workers
 * are idle, which is typically while the reactor thread has not started the
 * transfer yet (or is still connecting). The timeout then cancels the HTTP
 * attempt and completes the caller, who frees its request at once (a
 * borrowed request, or an owned one via bw_call_free). The client must not
 * read that request on the loop thread afterwards (ASan: use after free,
 * TSan: race with the free). Run many rounds to hit both orders of the start
 * op and the cancel. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"
#include "support/http_server.h"

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  bw_error_kind_t kind;
  bw_http_request_t *free_req; /* borrowed request: freed in the callback */
} waiter_t;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  waiter_t *w = arg;
  /* the caller is done with its request as soon as it has the outcome */
  if (w->free_req) {
    bw_http_request_free(w->free_req);
    w->free_req = NULL;
  }
  bw_call_free(call);
  pthread_mutex_lock(&w->mu);
  w->kind = bw_error_kind(err);
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void run_rounds(bw_runtime_t *rt, bw_service_t *stack, const char *url, int rounds,
                       int *timeouts) {
  for (int i = 0; i < rounds; i++) {
    waiter_t w;
    memset(&w, 0, sizeof w);
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    bw_http_request_t *req;
    assert_null(bw_http_request_new(&req, "GET", url));
    bw_call_t *call;
    assert_null(bw_call_new(&call, stack, rt));
    if (i % 2) {
      bw_call_set_request(call, req, NULL); /* borrowed: freed in on_done */
      w.free_req = req;
    } else {
      bw_call_set_request(call, req, bw_http_request_destroy);
    }
    assert_null(bw_service_call(stack, call, on_done, &w));
    pthread_mutex_lock(&w.mu);
    while (w.done == 0) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    assert_int_equal(w.done, 1);
    if (w.kind == BW_ERR_TIMEOUT) (*timeouts)++;
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
  }
}

static void test_timeout_cancels_before_start(void **state) {
  (void)state;
  httpd_t *srv;
  assert_int_equal(httpd_start(&srv, 0), 0);
  bw_runtime_t *rt;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 1;
  o.clock = BW_CLOCK_PAUSED;
  assert_null(bw_runtime_new(&rt, &o));
  bw_http_client_t *cli;
  assert_null(bw_http_client_new(&cli, rt, NULL));
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 5000;
  bw_layer_t *tl;
  assert_null(bw_timeout_new(&tl, &to));
  bw_service_t *stack;
  assert_null(bw_stack_build(&stack, NULL, &tl, 1, bw_http_client_service(cli), NULL));

  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/?hang=1", httpd_port(srv));
  int rounds = (int)(400 * scale());
  if (rounds < 40) rounds = 40;
  int timeouts = 0;
  run_rounds(rt, stack, url, rounds, &timeouts);
  /* the server never answers: every call ends with the timeout */
  assert_int_equal(timeouts, rounds);

  bw_service_release(stack);
  bw_layer_release(tl);
  bw_http_client_free(cli);
  bw_runtime_free(rt); /* ASan: no request, call or transfer leaked */
  httpd_stop(srv);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_timeout_cancels_before_start),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
