/* The HTTP client service on a real runtime against the fixture server:
 * every classification, deadlines, cancellation, size cap, redaction,
 * idempotency marking, many concurrent calls, shutdown mid-call. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/circuit_breaker.h"
#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "support/http_server.h"

static httpd_t *srv;
static bw_runtime_t *rt;
static bw_http_client_t *cli;

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

/* ---- a blocking helper: one call, wait for its completion --------------- */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  int completions;
} waiter_t;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  (void)call;
  (void)err;
  waiter_t *w = arg;
  pthread_mutex_lock(&w->mu);
  w->done++;
  w->completions++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void waiter_init(waiter_t *w) {
  memset(w, 0, sizeof *w);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
}

static void waiter_wait(waiter_t *w, int n) {
  pthread_mutex_lock(&w->mu);
  while (w->done < n) pthread_cond_wait(&w->cv, &w->mu);
  pthread_mutex_unlock(&w->mu);
}

static void waiter_fini(waiter_t *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

static void url_for(char *buf, size_t n, const char *query) {
  snprintf(buf, n, "http://127.0.0.1:%d%s", httpd_port(srv), query);
}

static bw_http_request_t *mkreq(const char *method, const char *query) {
  char url[512];
  url_for(url, sizeof url, query);
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, method, url));
  return r;
}

/* Run req through svc (timeout_ms 0 = no deadline); returns the call,
 * completed. The caller frees it. */
static bw_call_t *run_on(bw_service_t *svc, bw_http_request_t *req, uint64_t timeout_ms) {
  waiter_t w;
  waiter_init(&w);
  bw_call_t *call;
  assert_null(bw_call_new(&call, svc, rt));
  bw_call_set_request(call, req, bw_http_request_destroy);
  if (timeout_ms) bw_call_set_timeout_ms(call, timeout_ms);
  assert_null(bw_service_call(svc, call, on_done, &w));
  waiter_wait(&w, 1);
  assert_int_equal(w.completions, 1);
  waiter_fini(&w);
  assert_true(bw_call_is_done(call));
  return call;
}

static bw_call_t *run(bw_http_request_t *req) {
  return run_on(bw_http_client_service(cli), req, 0);
}

static int setup(void **state) {
  (void)state;
  if (httpd_start(&srv, 0) != 0) return -1;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  if (bw_runtime_new(&rt, &o)) return -1;
  if (bw_http_client_new(&cli, rt, NULL)) return -1;
  return 0;
}

static int teardown(void **state) {
  (void)state;
  bw_http_client_free(cli);
  bw_runtime_free(rt);
  httpd_stop(srv);
  return 0;
}

static bw_error_kind_t kind_of_call(bw_call_t *c) { return bw_error_kind(bw_call_error(c)); }

/* ---- tests ------------------------------------------------------------------- */

static void test_get_ok(void **state) {
  (void)state;
  bw_call_t *c = run(mkreq("GET", "/hello?hdr=X-Mixed-Case:%20v1"));
  assert_null(bw_call_error(c));
  bw_http_response_t *resp = bw_call_response(c);
  assert_non_null(resp);
  assert_int_equal(bw_http_response_status(resp), 200);
  size_t len;
  assert_string_equal(bw_http_response_body(resp, &len), "ok\n");
  assert_int_equal(len, 3);
  assert_string_equal(bw_http_response_header(resp, "server"), "bw-test-httpd");
  assert_string_equal(bw_http_response_header(resp, "x-mixed-case"), "v1");
  assert_string_equal(bw_http_response_header(resp, "X-MIXED-CASE"), "v1");
  assert_null(bw_http_response_header(resp, "X-Absent"));
  bw_call_free(c);
}

static void test_methods_and_body(void **state) {
  (void)state;
  bw_http_request_t *r = mkreq("PUT", "/echo/put");
  assert_null(bw_http_request_add_header(r, "X-Token: abc"));
  assert_null(bw_http_request_set_body(r, "payload-123", 11, BW_HTTP_BODY_COPY));
  bw_call_t *c = run(r);
  assert_null(bw_call_error(c));
  const char *b = bw_http_response_body(bw_call_response(c), NULL);
  assert_true(strncmp(b, "PUT /echo/put\n", 14) == 0);
  assert_non_null(strstr(b, "X-Token: abc\n"));
  assert_non_null(strstr(b, "\n\npayload-123"));
  bw_call_free(c);

  r = mkreq("POST", "/echo");
  static const char big[] = "post body";
  assert_null(bw_http_request_set_body(r, big, sizeof big - 1, BW_HTTP_BODY_BORROW));
  c = run(r);
  assert_null(bw_call_error(c));
  b = bw_http_response_body(bw_call_response(c), NULL);
  assert_true(strncmp(b, "POST /echo\n", 11) == 0);
  assert_non_null(strstr(b, "\n\npost body"));
  bw_call_free(c);

  c = run(mkreq("DELETE", "/echo/d"));
  assert_true(strncmp(bw_http_response_body(bw_call_response(c), NULL), "DELETE /echo/d\n", 15) ==
              0);
  bw_call_free(c);

  c = run(mkreq("HEAD", "/"));
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 200);
  bw_call_free(c);
}

static void test_status_classification(void **state) {
  (void)state;
  bw_call_t *c = run(mkreq("GET", "/?status=404"));
  assert_null(bw_call_error(c)); /* 4xx is a response */
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 404);
  bw_call_free(c);

  int bad[] = {500, 502, 503, 504, 429};
  for (size_t i = 0; i < 5; i++) {
    char q[64];
    snprintf(q, sizeof q, "/?status=%d", bad[i]);
    c = run(mkreq("GET", q));
    assert_int_equal(kind_of_call(c), BW_ERR_HTTP_STATUS);
    assert_int_equal(bw_error_detail(bw_call_error(c)), bad[i]);
    assert_null(bw_call_response(c));
    bw_call_free(c);
  }
  c = run(mkreq("GET", "/?status=429&retry_after=3"));
  assert_int_equal(bw_error_retry_after_ms(bw_call_error(c)), 3000);
  bw_call_free(c);
  c = run(mkreq("GET", "/?status=503&retry_after_date=30"));
  int64_t ra = bw_error_retry_after_ms(bw_call_error(c));
  assert_true(ra >= 28000 && ra <= 31000);
  bw_call_free(c);
}

static bool all_ok(int status, void *arg) {
  (void)status;
  (void)arg;
  return false;
}

static void test_status_predicate_configurable(void **state) {
  (void)state;
  bw_http_client_opts_t o;
  bw_http_client_opts_init(&o);
  o.status_is_error = all_ok;
  bw_http_client_t *c2;
  assert_null(bw_http_client_new(&c2, rt, &o));
  bw_call_t *c = run_on(bw_http_client_service(c2), mkreq("GET", "/?status=503"), 0);
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 503);
  bw_call_free(c);
  bw_http_client_free(c2);
}

static void test_transport_classification(void **state) {
  (void)state;
  bw_call_t *c = run(mkreq("GET", "/?reset=1"));
  assert_int_equal(kind_of_call(c), BW_ERR_TRANSPORT);
  bw_call_free(c);
  c = run(mkreq("GET", "/?close=1"));
  assert_int_equal(kind_of_call(c), BW_ERR_TRANSPORT);
  assert_int_equal(bw_error_detail(bw_call_error(c)), 52); /* CURLE_GOT_NOTHING */
  bw_call_free(c);
  c = run(mkreq("GET", "/?reset=body&size=300000"));
  assert_int_equal(kind_of_call(c), BW_ERR_TRANSPORT);
  bw_call_free(c);

  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "GET", "http://127.0.0.1:1/"));
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_CONNECT);
  assert_int_equal(bw_error_detail(bw_call_error(c)), 7);
  bw_call_free(c);

  assert_null(bw_http_request_new(&r, "GET", "http://no-such-host.invalid/"));
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_DNS);
  assert_int_equal(bw_error_detail(bw_call_error(c)), 6);
  bw_call_free(c);

  assert_null(bw_http_request_new(&r, "GET", "ftp://127.0.0.1/"));
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_INVALID_ARGUMENT);
  bw_call_free(c);

  /* TLS: speak https to the plain-HTTP fixture */
  char url[128];
  snprintf(url, sizeof url, "https://127.0.0.1:%d/", httpd_port(srv));
  assert_null(bw_http_request_new(&r, "GET", url));
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_TLS);
  bw_call_free(c);
}

static void test_redirects(void **state) {
  (void)state;
  /* off by default: the 302 is the response */
  bw_call_t *c = run(mkreq("GET", "/?redirect=/echo/target"));
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 302);
  assert_string_equal(bw_http_response_header(bw_call_response(c), "location"), "/echo/target");
  bw_call_free(c);
  /* followed when asked; headers are the final response's */
  bw_http_request_t *r = mkreq("GET", "/?redirect=/echo/target");
  bw_http_request_set_follow_redirects(r, true, 0);
  c = run(r);
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 200);
  assert_null(bw_http_response_header(bw_call_response(c), "location"));
  assert_true(strncmp(bw_http_response_body(bw_call_response(c), NULL), "GET /echo/target\n", 17) ==
              0);
  bw_call_free(c);
  /* two hops with max_redirects 1: a protocol error; with 2: fine */
  r = mkreq("GET", "/a?redirect=/b%3Fredirect%3D/c");
  bw_http_request_set_follow_redirects(r, true, 1);
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_PROTOCOL);
  assert_int_equal(bw_error_detail(bw_call_error(c)), 47); /* CURLE_TOO_MANY_REDIRECTS */
  bw_call_free(c);
  r = mkreq("GET", "/a?redirect=/b%3Fredirect%3D/c");
  bw_http_request_set_follow_redirects(r, true, 2);
  c = run(r);
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 200);
  bw_call_free(c);
}

/* Connect timeout: a listener whose accept queue is full drops new SYNs,
 * so the connect never completes. */
static void test_connect_timeout(void **state) {
  (void)state;
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(lfd, 0), 0);
  assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
  int fill[4];
  for (int i = 0; i < 4; i++) {
    fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    (void)connect(fill[i], (struct sockaddr *)&a, sizeof a);
  }
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(a.sin_port));
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "GET", url));
  bw_http_request_set_connect_timeout_ms(r, 200);
  bw_call_t *c = run(r);
  const bw_error_t *e = bw_call_error(c);
  assert_int_equal(bw_error_kind(e), BW_ERR_CONNECT);
  assert_true(bw_error_is(e, BW_ERR_TIMEOUT));
  assert_int_equal(bw_error_detail(e), 28);
  bw_call_free(c);
  for (int i = 0; i < 4; i++) close(fill[i]);
  close(lfd);
}

static void test_timeouts_and_deadline(void **state) {
  (void)state;
  bw_http_request_t *r = mkreq("GET", "/?hang=1");
  bw_http_request_set_timeout_ms(r, 100);
  bw_call_t *c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_TIMEOUT);
  assert_int_equal(bw_error_detail(bw_call_error(c)), 28);
  assert_null(strstr(bw_error_message(bw_call_error(c)), "deadline"));
  bw_call_free(c);

  /* the call's deadline caps curl's (absent) timeout */
  c = run_on(bw_http_client_service(cli), mkreq("GET", "/?hang=1"), 150);
  assert_int_equal(kind_of_call(c), BW_ERR_TIMEOUT);
  assert_non_null(strstr(bw_error_message(bw_call_error(c)), "deadline"));
  bw_call_free(c);

  /* and a request timeout longer than the deadline is capped too */
  r = mkreq("GET", "/?delay_ms=3000");
  bw_http_request_set_timeout_ms(r, 60000);
  c = run_on(bw_http_client_service(cli), r, 100);
  assert_int_equal(kind_of_call(c), BW_ERR_TIMEOUT);
  bw_call_free(c);
  assert_int_equal(httpd_wait_open_connections(srv, 64, 5000) <= 64, 1);
}

static void test_size_cap(void **state) {
  (void)state;
  bw_http_request_t *r = mkreq("GET", "/?size=2000000");
  bw_http_request_set_max_response_bytes(r, 1000000);
  bw_call_t *c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_TOO_LARGE);
  bw_call_free(c);
  /* no Content-Length: the write callback stops it */
  r = mkreq("GET", "/?size=2000000&chunked=1");
  bw_http_request_set_max_response_bytes(r, 1000000);
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_TOO_LARGE);
  bw_call_free(c);
  /* exactly at the cap is fine */
  r = mkreq("GET", "/?size=1000000&chunked=1");
  bw_http_request_set_max_response_bytes(r, 1000000);
  c = run(r);
  assert_null(bw_call_error(c));
  size_t len;
  const char *b = bw_http_response_body(bw_call_response(c), &len);
  assert_int_equal(len, 1000000);
  assert_int_equal(b[999999], 'a' + 999999 % 26);
  bw_call_free(c);
}

/* The cap counts body bytes delivered, not a Content-Length announced
 * where no body follows: a HEAD of a large resource, or a followed
 * redirect whose own (skipped) body is large, succeed under a small cap;
 * curl's CURLOPT_MAXFILESIZE rejected both by Content-Length. */
static void test_size_cap_counts_delivered_bytes(void **state) {
  (void)state;
  bw_http_request_t *r = mkreq("HEAD", "/?size=5000");
  bw_http_request_set_max_response_bytes(r, 1000);
  bw_call_t *c = run(r);
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 200);
  assert_string_equal(bw_http_response_header(bw_call_response(c), "content-length"), "5000");
  size_t len;
  bw_http_response_body(bw_call_response(c), &len);
  assert_int_equal(len, 0);
  bw_call_free(c);
  /* a followed 302 with a 5000-byte body, to a small final response */
  r = mkreq("GET", "/?redirect=/echo/final&size=5000");
  bw_http_request_set_follow_redirects(r, true, 0);
  bw_http_request_set_max_response_bytes(r, 1000);
  c = run(r);
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 200);
  assert_true(strncmp(bw_http_response_body(bw_call_response(c), NULL), "GET /echo/final\n", 16) ==
              0);
  bw_call_free(c);
  /* followed to a final response over the cap: still too large */
  r = mkreq("GET", "/?redirect=/big%3Fsize%3D5000");
  bw_http_request_set_follow_redirects(r, true, 0);
  bw_http_request_set_max_response_bytes(r, 1000);
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_TOO_LARGE);
  bw_call_free(c);
  /* a plain GET announcing more than the cap: too large */
  r = mkreq("GET", "/?size=5000");
  bw_http_request_set_max_response_bytes(r, 1000);
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_TOO_LARGE);
  bw_call_free(c);
}

/* An error status whose body is over the cap stays that status error: a
 * 503 with a large error page is a retryable 503 with its Retry-After
 * hint, the overflow its cause (the chain names the cap), and no body is
 * delivered. A 200 over the cap is still too large. Both ways curl ends
 * the body: refused by Content-Length at the first bytes, or cut off
 * while a chunked body is being read. */
static void test_size_cap_keeps_error_status(void **state) {
  (void)state;
  const char *const queries[] = {"/?status=503&retry_after=2&size=5000",
                                 "/?status=503&retry_after=2&size=5000&chunked=1"};
  for (size_t i = 0; i < 2; i++) {
    bw_http_request_t *r = mkreq("GET", queries[i]);
    bw_http_request_set_max_response_bytes(r, 1000);
    bw_call_t *c = run(r);
    const bw_error_t *e = bw_call_error(c);
    assert_int_equal(bw_error_kind(e), BW_ERR_HTTP_STATUS);
    assert_int_equal(bw_error_detail(e), 503);
    assert_int_equal(bw_error_retry_after_ms(e), 2000);
    const bw_error_t *big = bw_error_find(e, BW_ERR_TOO_LARGE);
    assert_non_null(big);
    assert_int_equal(bw_error_detail(big), 1000);
    char buf[1024];
    bw_error_format(e, buf, sizeof buf, 0);
    if (!strstr(buf, "status 503") || !strstr(buf, "larger than 1000 bytes"))
      fail_msg("chain: %s", buf);
    assert_null(bw_call_response(c));
    /* what the retry layer and the breaker decide on: the status */
    assert_true(bw_retry_default_predicate(e, NULL));
    assert_true(bw_circuit_breaker_default_predicate(e, NULL));
    bw_call_free(c);
  }
  /* 429 too, and a POST keeps its not-replayable mark over the status */
  bw_http_request_t *r = mkreq("POST", "/?status=429&retry_after=3&size=5000");
  bw_http_request_set_max_response_bytes(r, 1000);
  bw_call_t *c = run(r);
  assert_true(bw_http_error_is_non_idempotent(bw_call_error(c)));
  const bw_error_t *h = bw_error_find(bw_call_error(c), BW_ERR_HTTP_STATUS);
  assert_non_null(h);
  assert_int_equal(bw_error_detail(h), 429);
  assert_int_equal(bw_error_retry_after_ms(bw_call_error(c)), 3000);
  assert_true(bw_error_is(bw_call_error(c), BW_ERR_TOO_LARGE));
  bw_call_free(c);
  /* a status that is a response (200, 404) has no response to give */
  const char *const plain[] = {"/?retry_after=2&size=5000", "/?status=404&size=5000&chunked=1"};
  for (size_t i = 0; i < 2; i++) {
    r = mkreq("GET", plain[i]);
    bw_http_request_set_max_response_bytes(r, 1000);
    c = run(r);
    assert_int_equal(kind_of_call(c), BW_ERR_TOO_LARGE);
    assert_int_equal(bw_error_detail(bw_call_error(c)), 1000);
    assert_null(bw_error_cause(bw_call_error(c)));
    assert_int_equal(bw_error_retry_after_ms(bw_call_error(c)), 0);
    assert_null(bw_call_response(c));
    bw_call_free(c);
  }
}

static void assert_clean(const bw_error_t *e) {
  char buf[4096];
  bw_error_format(e, buf, sizeof buf,
                  BW_ERROR_FMT_KIND | BW_ERROR_FMT_LOCATION | BW_ERROR_FMT_RELATED);
  if (strstr(buf, "hunter2") || strstr(buf, "bobby") || strstr(buf, "apikey"))
    fail_msg("secret leaked: %s", buf);
}

static void test_secrets_redacted(void **state) {
  (void)state;
  const char *urls[] = {"http://bobby:hunter2@127.0.0.1:1/x?apikey=1",
                        "http://bobby:hunter2@no-such-host.invalid/?apikey=1"};
  for (size_t i = 0; i < 2; i++) {
    bw_http_request_t *r;
    assert_null(bw_http_request_new(&r, "GET", urls[i]));
    assert_null(strstr(bw_http_request_url_redacted(r), "hunter2"));
    bw_call_t *c = run(r);
    assert_non_null(bw_call_error(c));
    assert_clean(bw_call_error(c));
    bw_call_free(c);
  }
  char url[256];
  snprintf(url, sizeof url, "http://bobby:hunter2@127.0.0.1:%d/?status=503&apikey=2",
           httpd_port(srv));
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "GET", url));
  bw_call_t *c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_HTTP_STATUS);
  assert_clean(bw_call_error(c));
  bw_call_free(c);
}

static void test_idempotency_mark(void **state) {
  (void)state;
  bw_call_t *c = run(mkreq("POST", "/?status=503"));
  const bw_error_t *e = bw_call_error(c);
  assert_int_equal(bw_error_kind(e), BW_ERR_NOT_ALLOWED);
  assert_true(bw_http_error_is_non_idempotent(e));
  assert_true(bw_error_is(e, BW_ERR_HTTP_STATUS));
  assert_false(bw_http_call_is_idempotent(c));
  bw_call_free(c);
  /* never reached the server: not marked */
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "POST", "http://127.0.0.1:1/"));
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_CONNECT);
  assert_false(bw_http_error_is_non_idempotent(bw_call_error(c)));
  bw_call_free(c);
  /* marked idempotent by the user: not marked */
  r = mkreq("POST", "/?status=503");
  bw_http_request_set_idempotent(r, true);
  c = run(r);
  assert_int_equal(kind_of_call(c), BW_ERR_HTTP_STATUS);
  assert_true(bw_http_call_is_idempotent(c));
  bw_call_free(c);
  c = run(mkreq("GET", "/?status=503"));
  assert_false(bw_http_error_is_non_idempotent(bw_call_error(c)));
  bw_call_free(c);
}

/* Easy handles are pooled, and one that served a plain GET keeps its
 * options (no curl_easy_reset). A request after each kind of request on
 * the same (LIFO-pooled) handle must carry nothing of the one before:
 * method, body, extra headers. */
static void test_handle_reuse_keeps_requests_apart(void **state) {
  (void)state;
  static const char *const get_echo = "GET /echo/g\n";
  for (int round = 0; round < 3; round++) {
    bw_http_request_t *r = mkreq(round == 1 ? "HEAD" : "PUT", "/echo/p");
    if (round != 1) {
      assert_null(bw_http_request_add_header(r, "X-Token: abc"));
      assert_null(bw_http_request_set_body(r, "payload", 7, BW_HTTP_BODY_COPY));
    }
    bw_call_t *c = run(r);
    assert_null(bw_call_error(c));
    bw_call_free(c);
    for (int i = 0; i < 2; i++) { /* the second GET reuses a primed handle */
      c = run(mkreq("GET", "/echo/g"));
      assert_null(bw_call_error(c));
      const char *b = bw_http_response_body(bw_call_response(c), NULL);
      assert_true(strncmp(b, get_echo, strlen(get_echo)) == 0);
      assert_null(strstr(b, "X-Token"));
      assert_null(strstr(b, "payload"));
      assert_non_null(strstr(b, "User-Agent: bulwark/0.1\n"));
      bw_call_free(c);
    }
  }
}

/* user_agent "" sends no User-Agent header (libcurl's own default). */
static void test_user_agent_empty_sends_none(void **state) {
  (void)state;
  bw_http_client_opts_t o;
  bw_http_client_opts_init(&o);
  o.user_agent = "";
  bw_http_client_t *quiet;
  assert_null(bw_http_client_new(&quiet, rt, &o));
  for (int i = 0; i < 2; i++) {
    bw_call_t *c = run_on(bw_http_client_service(quiet), mkreq("GET", "/echo/q"), 0);
    assert_null(bw_call_error(c));
    const char *b = bw_http_response_body(bw_call_response(c), NULL);
    assert_true(strncmp(b, "GET /echo/q\n", 12) == 0);
    assert_null(strstr(b, "User-Agent"));
    bw_call_free(c);
  }
  bw_http_client_free(quiet);
}

static void test_cancel_frees_transfer(void **state) {
  (void)state;
  bw_http_client_stats_t st0, st1;
  bw_http_client_stats(cli, &st0);
  waiter_t w;
  waiter_init(&w);
  bw_call_t *call;
  assert_null(bw_call_new(&call, bw_http_client_service(cli), rt));
  bw_call_set_request(call, mkreq("GET", "/?hang=1&key=cancel1"), bw_http_request_destroy);
  assert_null(bw_service_call(bw_http_client_service(cli), call, on_done, &w));
  /* wait until the server holds the request, then cancel */
  while (httpd_key_count(srv, "cancel1") == 0) {
    bw_call_t *probe = run(mkreq("GET", "/"));
    bw_call_free(probe);
  }
  bw_call_cancel(call);
  bw_call_cancel(call); /* twice: still one completion */
  waiter_wait(&w, 1);
  assert_int_equal(kind_of_call(call), BW_ERR_CANCELLED);
  bw_call_free(call);
  /* a later call is ordered after the cancel op on the loop thread */
  bw_call_t *c = run(mkreq("GET", "/"));
  bw_call_free(c);
  bw_http_client_stats(cli, &st1);
  assert_int_equal(st1.active, 0);
  assert_true(st1.cancelled >= st0.cancelled + 1);
  /* the connection of the removed transfer was closed */
  assert_true(httpd_wait_open_connections(srv, 64, 5000) <= 64);
  assert_int_equal(w.completions, 1);
  waiter_fini(&w);
}

typedef struct many {
  waiter_t w;
  atomic_int ok, bad;
} many_t;

static void on_many(bw_call_t *call, const bw_error_t *err, void *arg) {
  many_t *m = arg;
  bw_http_response_t *r = bw_call_response(call);
  if (!err && r && bw_http_response_status(r) == 200) atomic_fetch_add(&m->ok, 1);
  else atomic_fetch_add(&m->bad, 1);
  bw_call_free(call);
  on_done(NULL, err, &m->w);
}

static void test_many_concurrent(void **state) {
  (void)state;
  int n = (int)(2000 * scale());
  if (n < 64) n = 64;
  many_t m;
  waiter_init(&m.w);
  atomic_init(&m.ok, 0);
  atomic_init(&m.bad, 0);
  /* every third call borrows one shared request: requests are read-only
   * while in use, so concurrent transfers may share one (retry, hedging) */
  bw_http_request_t *shared = mkreq("GET", "/?size=1000");
  for (int i = 0; i < n; i++) {
    bw_call_t *call;
    assert_null(bw_call_new(&call, bw_http_client_service(cli), rt));
    if (i % 3 == 0)
      bw_call_set_request(call, shared, NULL);
    else
      bw_call_set_request(call, mkreq("GET", i % 2 ? "/?size=1000" : "/"),
                          bw_http_request_destroy);
    assert_null(bw_service_call(bw_http_client_service(cli), call, on_many, &m));
  }
  waiter_wait(&m.w, n);
  bw_http_request_free(shared);
  assert_int_equal(atomic_load(&m.ok), n);
  assert_int_equal(atomic_load(&m.bad), 0);
  assert_int_equal(m.w.completions, n);
  waiter_fini(&m.w);
  bw_http_client_stats_t st;
  bw_http_client_stats(cli, &st);
  assert_int_equal(st.active, 0);
}

static void test_shutdown_mid_call(void **state) {
  (void)state;
  bw_runtime_t *rt2;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  assert_null(bw_runtime_new(&rt2, &o));
  bw_http_client_t *c2;
  assert_null(bw_http_client_new(&c2, rt2, NULL));
  waiter_t w;
  waiter_init(&w);
  bw_call_t *calls[4];
  for (int i = 0; i < 4; i++) {
    assert_null(bw_call_new(&calls[i], bw_http_client_service(c2), rt2));
    bw_call_set_request(calls[i], mkreq("GET", "/?hang=1&key=shut"), bw_http_request_destroy);
    assert_null(bw_service_call(bw_http_client_service(c2), calls[i], on_done, &w));
  }
  bw_error_unref(bw_runtime_shutdown(rt2, BW_SHUTDOWN_CANCEL, 0));
  waiter_wait(&w, 4);
  assert_int_equal(w.completions, 4);
  for (int i = 0; i < 4; i++) {
    assert_true(bw_error_is(bw_call_error(calls[i]), BW_ERR_RUNTIME_SHUTDOWN));
    bw_call_free(calls[i]);
  }
  /* calls after shutdown fail cleanly */
  bw_call_t *late;
  bw_error_t *e = bw_call_new(&late, bw_http_client_service(c2), rt2);
  if (!e) {
    bw_call_set_request(late, mkreq("GET", "/"), bw_http_request_destroy);
    assert_null(bw_service_call(bw_http_client_service(c2), late, on_done, &w));
    waiter_wait(&w, 5);
    assert_true(bw_error_is(bw_call_error(late), BW_ERR_RUNTIME_SHUTDOWN));
    bw_call_free(late);
  }
  bw_error_unref(e);
  bw_http_client_free(c2);
  bw_runtime_free(rt2);
  waiter_fini(&w);
}

/* Retry-After honoured through a retry layer, on the paused clock: the
 * backoff would be 1 ms, the server asks for 2 s twice, so the runtime
 * clock moves >= 4 s while real time barely moves. */
static void test_retry_after_through_retry_layer(void **state) {
  (void)state;
  bw_runtime_t *prt;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  o.clock = BW_CLOCK_PAUSED;
  assert_null(bw_runtime_new(&prt, &o));
  bw_http_client_t *c2;
  assert_null(bw_http_client_new(&c2, prt, NULL));
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 4;
  ro.backoff.kind = BW_BACKOFF_CONSTANT;
  ro.backoff.base_ns = 1000000; /* 1 ms */
  ro.backoff.jitter = BW_JITTER_NONE;
  ro.honor_retry_after = true;
  ro.max_retry_after_ms = 60000;
  bw_layer_t *retry;
  assert_null(bw_retry_new(&retry, &ro));
  bw_service_t *stack;
  assert_null(bw_stack_build(&stack, NULL, &retry, 1, bw_http_client_service(c2), NULL));

  bw_runtime_t *saved = rt;
  rt = prt;
  uint64_t t0 = bw_runtime_now_ns(prt);
  bw_call_t *c = run_on(stack, mkreq("GET", "/?key=ra1&fail_first=2&status=503&retry_after=2"), 0);
  uint64_t t1 = bw_runtime_now_ns(prt);
  assert_null(bw_call_error(c));
  assert_int_equal(bw_http_response_status(bw_call_response(c)), 200);
  assert_int_equal(httpd_key_count(srv, "ra1"), 3);
  assert_true(t1 - t0 >= 4000000000ull);
  bw_call_free(c);

  /* a POST is not replayed: one request reaches the server */
  c = run_on(stack, mkreq("POST", "/?key=ra2&fail_first=2&status=503&retry_after=1"), 0);
  assert_true(bw_http_error_is_non_idempotent(bw_call_error(c)));
  assert_true(bw_error_is(bw_call_error(c), BW_ERR_HTTP_STATUS));
  assert_int_equal(httpd_key_count(srv, "ra2"), 1);
  bw_call_free(c);

  /* a POST marked idempotent is */
  bw_http_request_t *r = mkreq("POST", "/?key=ra3&fail_first=2&status=503&retry_after=1");
  bw_http_request_set_idempotent(r, true);
  c = run_on(stack, r, 0);
  assert_null(bw_call_error(c));
  assert_int_equal(httpd_key_count(srv, "ra3"), 3);
  bw_call_free(c);
  rt = saved;

  bw_service_release(stack);
  bw_layer_release(retry);
  bw_http_client_free(c2);
  bw_runtime_free(prt);
}

/* The client on a current-thread runtime: the reactor loop runs on the
 * bw_block_on thread; one task issues calls and waits for each. */
typedef struct ct_task {
  bw_service_t *svc;
  bw_call_t *call;
  bw_waker_t *waker;
  atomic_int completed;
  int round, ok;
} ct_task_t;

static void ct_on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  ct_task_t *t = arg;
  (void)call;
  (void)err;
  atomic_fetch_add(&t->completed, 1);
  bw_waker_t *w = t->waker;
  t->waker = NULL;
  if (w) bw_waker_wake(w);
}

static bw_poll_t ct_poll(bw_task_t *self, void *arg) {
  ct_task_t *t = arg;
  for (;;) {
    if (t->call) {
      if (atomic_load(&t->completed) <= t->round) {
        if (!t->waker) t->waker = bw_task_waker(self);
        if (atomic_load(&t->completed) <= t->round) return BW_PENDING;
      }
      bw_http_response_t *r = bw_call_response(t->call);
      if (r && bw_http_response_status(r) == 200) t->ok++;
      bw_call_free(t->call);
      t->call = NULL;
      t->round++;
    }
    if (t->round == 20) {
      bw_task_set_output(self, NULL, NULL, NULL);
      return BW_READY;
    }
    bw_call_new(&t->call, t->svc, bw_task_runtime(self));
    bw_call_set_request(t->call, mkreq("GET", "/?size=64"), bw_http_request_destroy);
    bw_service_call(t->svc, t->call, ct_on_done, t);
  }
}

static void test_current_thread_runtime(void **state) {
  (void)state;
  bw_runtime_t *crt;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.flavor = BW_FLAVOR_CURRENT_THREAD;
  assert_null(bw_runtime_new(&crt, &o));
  bw_http_client_t *c2;
  assert_null(bw_http_client_new(&c2, crt, NULL));
  ct_task_t t;
  memset(&t, 0, sizeof t);
  atomic_init(&t.completed, 0);
  t.svc = bw_http_client_service(c2);
  assert_null(bw_block_on(crt, ct_poll, &t, NULL));
  assert_int_equal(t.ok, 20);
  assert_int_equal(atomic_load(&t.completed), 20);
  bw_waker_drop(t.waker);
  bw_http_client_free(c2);
  bw_runtime_free(crt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_get_ok),
      cmocka_unit_test(test_methods_and_body),
      cmocka_unit_test(test_status_classification),
      cmocka_unit_test(test_status_predicate_configurable),
      cmocka_unit_test(test_transport_classification),
      cmocka_unit_test(test_redirects),
      cmocka_unit_test(test_connect_timeout),
      cmocka_unit_test(test_timeouts_and_deadline),
      cmocka_unit_test(test_size_cap),
      cmocka_unit_test(test_size_cap_counts_delivered_bytes),
      cmocka_unit_test(test_size_cap_keeps_error_status),
      cmocka_unit_test(test_secrets_redacted),
      cmocka_unit_test(test_idempotency_mark),
      cmocka_unit_test(test_handle_reuse_keeps_requests_apart),
      cmocka_unit_test(test_user_agent_empty_sends_none),
      cmocka_unit_test(test_cancel_frees_transfer),
      cmocka_unit_test(test_many_concurrent),
      cmocka_unit_test(test_shutdown_mid_call),
      cmocka_unit_test(test_retry_after_through_retry_layer),
      cmocka_unit_test(test_current_thread_runtime),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
