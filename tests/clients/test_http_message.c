/* HTTP requests, responses, header lookup, URL redaction, Retry-After
 * parsing and classification of synthetic outcomes (no network). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bulwark/http.h"
#include "clients/http_internal.h"
#include "core/alloc.h"

static void test_request_basics(void **state) {
  (void)state;
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "post", "http://u:secret@h.example:81/p/q?token=abc#f"));
  assert_string_equal(bw_http_request_method(r), "POST");
  assert_false(bw_http_request_is_idempotent(r));
  bw_http_request_set_idempotent(r, true);
  assert_true(bw_http_request_is_idempotent(r));
  assert_string_equal(bw_http_request_url_redacted(r), "http://***@h.example:81/p/q");
  assert_null(bw_http_request_add_header(r, "X-A: 1"));
  bw_error_t *e = bw_http_request_add_header(r, "bad header");
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_http_request_add_header(r, "X-B: 1\r\nX-C: 2");
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  char body[] = "hello";
  assert_null(bw_http_request_set_body(r, body, 5, BW_HTTP_BODY_COPY));
  body[0] = 'J'; /* copied: unaffected */
  assert_memory_equal(r->body, "hello", 5);
  assert_null(bw_http_request_set_body(r, body, 5, BW_HTTP_BODY_BORROW));
  assert_ptr_equal(r->body, body);
  bw_http_request_free(r);

  const char *idem[] = {"GET", "head", "PUT", "DELETE", "OPTIONS", "TRACE"};
  for (size_t i = 0; i < 6; i++) {
    assert_null(bw_http_request_new(&r, idem[i], "http://x/"));
    assert_true(bw_http_request_is_idempotent(r));
    bw_http_request_free(r);
  }
  const char *non[] = {"POST", "PATCH", "CONNECT"};
  for (size_t i = 0; i < 3; i++) {
    assert_null(bw_http_request_new(&r, non[i], "http://x/"));
    assert_false(bw_http_request_is_idempotent(r));
    bw_http_request_free(r);
  }
  e = bw_http_request_new(&r, "GE T", "http://x/");
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_http_request_new(&r, "GET", "");
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_http_request_free(NULL);
}

static void test_redaction(void **state) {
  (void)state;
  struct {
    const char *in, *out, *user;
  } cases[] = {
      {"http://host/a?b", "http://host/a", NULL},
      {"https://user:pw@host:8443", "https://***@host:8443", "user:pw"},
      {"http://a@b:c@host/x", "http://***@host/x", "a@b:c"},
      {"http://host/path@notuser", "http://host/path@notuser", NULL},
      {"host.only", "host.only", NULL},
      {"http://tok@h?x=@y", "http://***@h", "tok"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char *ui = NULL;
    char *o = bw__http_redact_url(cases[i].in, &ui);
    assert_string_equal(o, cases[i].out);
    if (cases[i].user) assert_string_equal(ui, cases[i].user);
    else assert_null(ui);
    bw__free(o);
    bw__free(ui);
  }
}

static void test_retry_after_parse(void **state) {
  (void)state;
  int64_t now = 1700000000;
  assert_int_equal(bw__http_parse_retry_after("7", now), 7000);
  assert_int_equal(bw__http_parse_retry_after(" 120 ", now), 120000);
  assert_int_equal(bw__http_parse_retry_after("0", now), 0);
  assert_int_equal(bw__http_parse_retry_after("-3", now), 0);
  assert_int_equal(bw__http_parse_retry_after("1.5", now), 0);
  assert_int_equal(bw__http_parse_retry_after("soon", now), 0);
  assert_int_equal(bw__http_parse_retry_after(NULL, now), 0);
  /* HTTP-date: 1700000000 = Tue, 14 Nov 2023 22:13:20 GMT */
  assert_int_equal(bw__http_parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now), 30000);
  assert_int_equal(bw__http_parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now), 0);
  /* obsolete RFC 850 form also accepted by curl_getdate */
  assert_int_equal(bw__http_parse_retry_after("Tuesday, 14-Nov-23 22:14:20 GMT", now), 60000);
}

static void test_response_headers(void **state) {
  (void)state;
  bw_http_response_t *r = bw__http_response_new();
  const char *lines[] = {"HTTP/1.1 302 Found\r\n", "Location: /x\r\n", "\r\n",
                         "HTTP/1.1 200 OK\r\n",    "Content-Type:  text/plain \r\n",
                         "X-Dup: 1\r\n",           "x-dup: 2\r\n",
                         "\r\n"};
  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
    assert_int_equal(bw__http_response_add_header_line(r, lines[i], strlen(lines[i])), 0);
  assert_int_equal(bw_http_response_header_count(r), 3);
  assert_null(bw_http_response_header(r, "Location")); /* only the final block */
  assert_string_equal(bw_http_response_header(r, "content-type"), "text/plain");
  assert_string_equal(bw_http_response_header(r, "CONTENT-TYPE"), "text/plain");
  assert_string_equal(bw_http_response_header(r, "X-DUP"), "1");
  const char *n, *v;
  assert_true(bw_http_response_header_at(r, 2, &n, &v));
  assert_string_equal(n, "x-dup");
  assert_string_equal(v, "2");
  assert_false(bw_http_response_header_at(r, 3, &n, &v));
  assert_int_equal(bw__http_response_append(r, "abc", 3, 0), 0);
  assert_int_equal(bw__http_response_append(r, "def", 3, 0), 0);
  size_t len;
  assert_string_equal(bw_http_response_body(r, &len), "abcdef");
  assert_int_equal(len, 6);
  char *b = bw_http_response_take_body(r, &len);
  assert_string_equal(b, "abcdef");
  bw_http_body_free(b);
  assert_string_equal(bw_http_response_body(r, &len), "");
  assert_int_equal(len, 0);
  bw_http_response_free(r);
}

static void test_response_new(void **state) {
  (void)state;
  bw_http_response_t *r;
  assert_null(bw_http_response_new(&r, 203, "cached", 6));
  assert_int_equal(bw_http_response_status(r), 203);
  size_t len;
  assert_string_equal(bw_http_response_body(r, &len), "cached");
  assert_int_equal(len, 6);
  assert_null(bw_http_response_add_header(r, "X-From", "fallback"));
  assert_string_equal(bw_http_response_header(r, "x-from"), "fallback");
  bw_error_t *e = bw_http_response_add_header(r, "Bad:Name", "v");
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_http_response_free(r);
  assert_null(bw_http_response_new(&r, 204, NULL, 0));
  assert_string_equal(bw_http_response_body(r, &len), "");
  assert_int_equal(len, 0);
  bw_http_response_destroy(r);
  e = bw_http_response_new(&r, 42, NULL, 0);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
}

static bw_error_t *classify(const char *url, bw__http_outcome_t o) {
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "GET", url));
  bw_error_t *e = bw__http_classify(r, &o, NULL, NULL);
  bw_http_request_free(r);
  return e;
}

static void assert_no_secret(const bw_error_t *e) {
  char buf[2048];
  bw_error_format(e, buf, sizeof buf, BW_ERROR_FMT_KIND | BW_ERROR_FMT_RELATED);
  assert_null(strstr(buf, "s3cr3t"));
  assert_null(strstr(buf, "alice"));
  assert_null(strstr(buf, "tok=1"));
}

static void test_classify_curl_codes(void **state) {
  (void)state;
  const char *url = "http://alice:s3cr3t@127.0.0.1:9/x?tok=1";
  struct {
    CURLcode rc;
    bool connected;
    bw_error_kind_t kind;
  } cases[] = {
      {CURLE_COULDNT_RESOLVE_HOST, false, BW_ERR_DNS},
      {CURLE_COULDNT_CONNECT, false, BW_ERR_CONNECT},
      {CURLE_OPERATION_TIMEDOUT, false, BW_ERR_CONNECT},
      {CURLE_OPERATION_TIMEDOUT, true, BW_ERR_TIMEOUT},
      {CURLE_SSL_CONNECT_ERROR, true, BW_ERR_TLS},
      {CURLE_PEER_FAILED_VERIFICATION, true, BW_ERR_TLS},
      {CURLE_SEND_ERROR, true, BW_ERR_TRANSPORT},
      {CURLE_RECV_ERROR, true, BW_ERR_TRANSPORT},
      {CURLE_GOT_NOTHING, true, BW_ERR_TRANSPORT},
      {CURLE_PARTIAL_FILE, true, BW_ERR_TRANSPORT},
      {CURLE_WEIRD_SERVER_REPLY, true, BW_ERR_PROTOCOL},
      {CURLE_TOO_MANY_REDIRECTS, true, BW_ERR_PROTOCOL},
      {CURLE_FILESIZE_EXCEEDED, true, BW_ERR_TOO_LARGE},
      {CURLE_URL_MALFORMAT, false, BW_ERR_INVALID_ARGUMENT},
      {CURLE_UNSUPPORTED_PROTOCOL, false, BW_ERR_INVALID_ARGUMENT},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    bw__http_outcome_t o = {.rc = cases[i].rc,
                            .connected = cases[i].connected,
                            .timeout_ms = 200,
                            .max_response_bytes = 100,
                            .curl_errbuf = "Failed for alice:s3cr3t at http://alice:s3cr3t@x"};
    bw_error_t *e = classify(url, o);
    assert_non_null(e);
    if (bw_error_kind(e) != cases[i].kind)
      fail_msg("curl %d: kind %s, want %s", (int)cases[i].rc, bw_error_kind_name(bw_error_kind(e)),
               bw_error_kind_name(cases[i].kind));
    if (cases[i].kind != BW_ERR_TOO_LARGE)
      assert_int_equal(bw_error_detail(bw_error_root(e)), cases[i].rc);
    assert_no_secret(e);
    if (cases[i].rc == CURLE_OPERATION_TIMEDOUT) assert_true(bw_error_is(e, BW_ERR_TIMEOUT));
    bw_error_unref(e);
  }
}

/* A response carrying one Retry-After header (the classifier reads it on
 * an error status). Free with bw_http_response_free. */
static bw_http_response_t *with_retry_after(const char *value) {
  bw_http_response_t *r = bw__http_response_new();
  char line[128];
  snprintf(line, sizeof line, "Retry-After: %s\r\n", value);
  assert_int_equal(bw__http_response_add_header_line(r, line, strlen(line)), 0);
  return r;
}

static void test_classify_status(void **state) {
  (void)state;
  const char *url = "http://127.0.0.1/";
  int ok[] = {200, 201, 204, 301, 302, 400, 401, 404, 409, 499};
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    bw__http_outcome_t o = {.rc = CURLE_OK, .status = ok[i]};
    assert_null(classify(url, o));
  }
  int bad[] = {429, 500, 502, 503, 504, 599};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    bw_http_response_t *resp = with_retry_after("3");
    bw__http_outcome_t o = {.rc = CURLE_OK, .status = bad[i], .resp = resp};
    bw_error_t *e = classify(url, o);
    assert_int_equal(bw_error_kind(e), BW_ERR_HTTP_STATUS);
    assert_int_equal(bw_error_detail(e), bad[i]);
    assert_int_equal(bw_error_retry_after_ms(e), 3000);
    bw_error_unref(e);
    bw_http_response_free(resp);
  }
  /* HTTP-date Retry-After, 40 s ahead of the wall clock */
  char date[64];
  time_t t = time(NULL) + 40;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  bw_http_response_t *resp = with_retry_after(date);
  bw__http_outcome_t o = {.rc = CURLE_OK, .status = 503, .resp = resp};
  bw_error_t *e = classify(url, o);
  int64_t ra = bw_error_retry_after_ms(e);
  assert_true(ra >= 38000 && ra <= 40000);
  bw_error_unref(e);
  bw_http_response_free(resp);
  /* too large wins over a good status */
  bw__http_outcome_t big = {.rc = CURLE_WRITE_ERROR, .status = 200, .too_large = true,
                            .max_response_bytes = 1000};
  e = classify(url, big);
  assert_int_equal(bw_error_kind(e), BW_ERR_TOO_LARGE);
  assert_null(bw_error_cause(e));
  bw_error_unref(e);
  big.status = 404; /* a response status: no response to give */
  e = classify(url, big);
  assert_int_equal(bw_error_kind(e), BW_ERR_TOO_LARGE);
  bw_error_unref(e);
  /* an error status wins over too large, which becomes its cause */
  resp = with_retry_after("2");
  big.status = 503;
  big.resp = resp;
  e = classify(url, big);
  assert_int_equal(bw_error_kind(e), BW_ERR_HTTP_STATUS);
  assert_int_equal(bw_error_detail(e), 503);
  assert_int_equal(bw_error_retry_after_ms(e), 2000);
  assert_int_equal(bw_error_kind(bw_error_cause(e)), BW_ERR_TOO_LARGE);
  assert_int_equal(bw_error_detail(bw_error_cause(e)), 1000);
  char buf[256];
  bw_error_format(e, buf, sizeof buf, 0);
  assert_string_equal(buf, "http: GET http://127.0.0.1/: status 503: body larger than 1000 "
                           "bytes, dropped");
  bw_error_unref(e);
  bw_http_response_free(resp);
}

/* Scrubbing resumes after each replacement: a password (or user) made of
 * '*' used to match its own "***" again and loop forever. alarm() turns
 * such a hang into a failure instead of a ctest timeout. */
static void test_classify_scrub_terminates(void **state) {
  (void)state;
  struct {
    const char *url, *errbuf, *want;
  } cases[] = {
      {"http://user:*@127.0.0.1:1/", "bad * thing", "bad * thing"},
      {"http://user:**@127.0.0.1:1/", "bad ** thing", "bad ** thing"},
      {"http://user:***@127.0.0.1:1/", "bad *** thing ***", "bad *** thing ***"},
      {"http://***:pw@127.0.0.1:1/", "as *** with pw", "as *** with **"},
      {"http://u:a*@127.0.0.1:1/", "a* a** a*a*", "** *** ****"},
      {"http://u:pw@127.0.0.1:1/", "pw,pw pwpw", "**,** ****"},
      {"http://alice:s3cr3t@127.0.0.1:1/", "alice:s3cr3t s3cr3ts3cr3t alice", "*** ****** ***"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    alarm(20);
    bw__http_outcome_t o = {.rc = CURLE_COULDNT_CONNECT, .curl_errbuf = cases[i].errbuf};
    bw_error_t *e = classify(cases[i].url, o);
    alarm(0);
    assert_int_equal(bw_error_kind(e), BW_ERR_CONNECT);
    char want[256];
    snprintf(want, sizeof want, "http: GET http://***@127.0.0.1:1/: %s (curl %d)", cases[i].want,
             (int)CURLE_COULDNT_CONNECT);
    assert_string_equal(bw_error_message(e), want);
    bw_error_unref(e);
  }
}

static bool only_404(int status, void *arg) {
  (void)arg;
  return status == 404;
}

static void test_classify_custom_pred(void **state) {
  (void)state;
  bw_http_request_t *r;
  assert_null(bw_http_request_new(&r, "GET", "http://x/"));
  bw__http_outcome_t o = {.rc = CURLE_OK, .status = 503};
  assert_null(bw__http_classify(r, &o, only_404, NULL));
  o.status = 404;
  bw_error_t *e = bw__http_classify(r, &o, only_404, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_HTTP_STATUS);
  assert_int_equal(bw_error_retry_after_ms(e), 0);
  bw_error_unref(e);
  /* over the cap: the client's own predicate decides which status wins */
  o = (bw__http_outcome_t){.rc = CURLE_WRITE_ERROR, .status = 404, .too_large = true,
                           .max_response_bytes = 10};
  e = bw__http_classify(r, &o, only_404, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_HTTP_STATUS);
  assert_true(bw_error_is(e, BW_ERR_TOO_LARGE));
  bw_error_unref(e);
  o.status = 503;
  e = bw__http_classify(r, &o, only_404, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_TOO_LARGE);
  bw_error_unref(e);
  bw_http_request_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_request_basics),     cmocka_unit_test(test_redaction),
      cmocka_unit_test(test_retry_after_parse),  cmocka_unit_test(test_response_headers),
      cmocka_unit_test(test_classify_curl_codes), cmocka_unit_test(test_classify_status),
      cmocka_unit_test(test_classify_custom_pred), cmocka_unit_test(test_response_new),
      cmocka_unit_test(test_classify_scrub_terminates),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
