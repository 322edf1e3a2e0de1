/* The misbehaving HTTP fixture server, checked with plain libcurl easy
 * requests (no bulwark code involved), one test per behaviour. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support/http_server.h"

typedef struct resp {
  long status;
  CURLcode rc;
  char *body;
  size_t len;
  char headers[8192];
  size_t hlen;
  double total_s;
} resp_t;

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
  resp_t *r = ud;
  char *nb = realloc(r->body, r->len + sz * n + 1);
  if (!nb) return 0;
  memcpy(nb + r->len, p, sz * n);
  r->len += sz * n;
  nb[r->len] = 0;
  r->body = nb;
  return sz * n;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  resp_t *r = ud;
  size_t k = sz * n;
  if (r->hlen + k < sizeof r->headers) {
    memcpy(r->headers + r->hlen, p, k);
    r->hlen += k;
    r->headers[r->hlen] = 0;
  }
  return k;
}

static httpd_t *srv;
static CURL *easy; /* reused: keeps the connection alive */
static int fresh;  /* next fetch on a new connection */

static int setup(void **state) {
  (void)state;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (httpd_start(&srv, 0) != 0) return -1;
  easy = curl_easy_init();
  return easy ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  curl_easy_cleanup(easy);
  httpd_stop(srv);
  curl_global_cleanup();
  return 0;
}

static resp_t fetch(const char *method, const char *query, const char *body) {
  resp_t r;
  memset(&r, 0, sizeof r);
  char url[512];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", httpd_port(srv), query);
  curl_easy_reset(easy);
  curl_easy_setopt(easy, CURLOPT_URL, url);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 10000L);
  if (fresh) curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);
  fresh = 0;
  if (method) curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
  if (method && strcmp(method, "HEAD") == 0) curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  if (body) {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  }
  r.rc = curl_easy_perform(easy);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r.status);
  curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME, &r.total_s);
  return r;
}

static void test_plain_ok_keepalive(void **state) {
  (void)state;
  uint64_t conns = httpd_connections(srv);
  for (int i = 0; i < 5; i++) {
    resp_t r = fetch(NULL, "/", NULL);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    free(r.body);
  }
  /* keep-alive: at most one new connection for five requests */
  assert_true(httpd_connections(srv) - conns <= 1);
}

static void test_status(void **state) {
  (void)state;
  resp_t r = fetch(NULL, "/?status=503", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 503);
  assert_string_equal(r.body, "status 503\n");
  free(r.body);
}

static void test_retry_after(void **state) {
  (void)state;
  resp_t r = fetch(NULL, "/?status=429&retry_after=7", NULL);
  assert_int_equal(r.status, 429);
  assert_non_null(strstr(r.headers, "Retry-After: 7\r\n"));
  free(r.body);
  r = fetch(NULL, "/?status=503&retry_after_date=120", NULL);
  assert_int_equal(r.status, 503);
  const char *h = strstr(r.headers, "Retry-After: ");
  assert_non_null(h);
  assert_non_null(strstr(h, " GMT\r\n"));
  free(r.body);
}

static void test_delay(void **state) {
  (void)state;
  /* real time: a short delay, and a client timeout shorter than a long one */
  resp_t r = fetch(NULL, "/?delay_ms=100", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_true(r.total_s >= 0.09);
  free(r.body);
  curl_easy_reset(easy);
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/?delay_ms=5000", httpd_port(srv));
  curl_easy_setopt(easy, CURLOPT_URL, url);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 100L);
  assert_int_equal(curl_easy_perform(easy), CURLE_OPERATION_TIMEDOUT);
}

static void test_reset_and_close(void **state) {
  (void)state;
  resp_t r = fetch(NULL, "/?reset=1", NULL);
  assert_true(r.rc == CURLE_RECV_ERROR || r.rc == CURLE_GOT_NOTHING);
  free(r.body);
  r = fetch(NULL, "/?close=1", NULL);
  assert_int_equal(r.rc, CURLE_GOT_NOTHING);
  free(r.body);
  r = fetch(NULL, "/?reset=body&size=200000", NULL);
  assert_true(r.rc == CURLE_RECV_ERROR || r.rc == CURLE_PARTIAL_FILE);
  free(r.body);
  r = fetch(NULL, "/", NULL); /* the server is fine afterwards */
  assert_int_equal(r.rc, CURLE_OK);
  free(r.body);
}

static void check_pattern(const resp_t *r, size_t n) {
  assert_int_equal(r->len, n);
  for (size_t i = 0; i < n; i++)
    if (r->body[i] != (char)('a' + i % 26)) fail_msg("byte %zu wrong", i);
}

static void test_large_body(void **state) {
  (void)state;
  resp_t r = fetch(NULL, "/?size=5000000", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  check_pattern(&r, 5000000);
  free(r.body);
  r = fetch(NULL, "/?size=300000&chunked=1", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_non_null(strstr(r.headers, "Transfer-Encoding: chunked"));
  check_pattern(&r, 300000);
  free(r.body);
  r = fetch(NULL, "/?size=0", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.len, 0);
  free(r.body);
}

static void test_fail_first(void **state) {
  (void)state;
  for (int i = 1; i <= 4; i++) {
    resp_t r = fetch(NULL, "/?key=ff1&fail_first=2&status=502", NULL);
    assert_int_equal(r.rc, CURLE_OK);
    assert_int_equal(r.status, i <= 2 ? 502 : 200);
    free(r.body);
  }
  assert_int_equal(httpd_key_count(srv, "ff1"), 4);
  assert_int_equal(httpd_key_count(srv, "nope"), 0);
  /* default failing status is 503; reset as failure mode */
  resp_t r = fetch(NULL, "/?key=ff2&fail_first=1", NULL);
  assert_int_equal(r.status, 503);
  free(r.body);
  /* on a reused connection curl itself would retry a reset request once */
  fresh = 1;
  r = fetch(NULL, "/?key=ff3&fail_first=1&reset=1", NULL);
  assert_int_not_equal(r.rc, CURLE_OK);
  free(r.body);
  r = fetch(NULL, "/?key=ff3&fail_first=1&reset=1", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 200);
  free(r.body);
}

static void test_echo(void **state) {
  (void)state;
  resp_t r = fetch("PUT", "/echo/x?y=1", "hello body");
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 200);
  assert_true(strncmp(r.body, "PUT /echo/x?y=1\n", 16) == 0);
  assert_non_null(strstr(r.body, "Content-Length: 10\n"));
  assert_non_null(strstr(r.body, "\n\nhello body"));
  free(r.body);
  /* a body larger than curl's Expect threshold */
  size_t n = 2 * 1024 * 1024;
  char *big = malloc(n + 1);
  memset(big, 'z', n);
  big[n] = 0;
  r = fetch("POST", "/?echo=1", big);
  assert_int_equal(r.rc, CURLE_OK);
  assert_true(r.len > n);
  assert_int_equal(r.body[r.len - 1], 'z');
  free(r.body);
  free(big);
  r = fetch("HEAD", "/", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_int_equal(r.status, 200);
  free(r.body);
}

static void test_headers_redirect_hang(void **state) {
  (void)state;
  resp_t r = fetch(NULL, "/?hdr=X-Test:%20yes&redirect=/elsewhere", NULL);
  assert_int_equal(r.status, 302);
  assert_non_null(strstr(r.headers, "X-Test: yes\r\n"));
  assert_non_null(strstr(r.headers, "Location: /elsewhere\r\n"));
  free(r.body);
  r = fetch(NULL, "/?conn_close=1", NULL);
  assert_int_equal(r.rc, CURLE_OK);
  assert_non_null(strstr(r.headers, "Connection: close"));
  free(r.body);
  curl_easy_reset(easy);
  char url[256];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/?hang=1", httpd_port(srv));
  curl_easy_setopt(easy, CURLOPT_URL, url);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 100L);
  assert_int_equal(curl_easy_perform(easy), CURLE_OPERATION_TIMEDOUT);
  /* a hung connection is closed by the client; the server follows */
  curl_easy_cleanup(easy);
  easy = curl_easy_init();
  assert_int_equal(httpd_wait_open_connections(srv, 0, 5000), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_ok_keepalive),
      cmocka_unit_test(test_status),
      cmocka_unit_test(test_retry_after),
      cmocka_unit_test(test_delay),
      cmocka_unit_test(test_reset_and_close),
      cmocka_unit_test(test_large_body),
      cmocka_unit_test(test_fail_first),
      cmocka_unit_test(test_echo),
      cmocka_unit_test(test_headers_redirect_hang),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
