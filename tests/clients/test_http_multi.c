/* The curl-multi-on-libuv engine (src/clients/http_multi.c) on a raw uv
 * loop run by the test thread, against the fixture server. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/http_multi.h"
#include "support/http_server.h"

typedef struct req {
  bw__curl_xfer_t x;
  bw__curlm_t *m;
  CURLcode rc;
  long status;
  size_t got;
  int done_calls;
  int *ndone;
  char url[256];
} req_t;

static httpd_t *srv;

static double scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}

static size_t sink(char *p, size_t sz, size_t n, void *ud) {
  req_t *r = ud;
  (void)p;
  r->got += sz * n;
  return sz * n;
}

static void on_done(bw__curl_xfer_t *x, CURLcode rc) {
  req_t *r = (req_t *)x;
  r->rc = rc;
  r->done_calls++;
  curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &r->status);
  bw__curlm_easy_put(r->m, x->easy, false);
  x->easy = NULL;
  (*r->ndone)++;
}

static void prep(req_t *r, bw__curlm_t *m, int *ndone, const char *query, long timeout_ms) {
  memset(r, 0, sizeof *r);
  r->m = m;
  r->ndone = ndone;
  snprintf(r->url, sizeof r->url, "http://127.0.0.1:%d%s", httpd_port(srv), query);
  r->x.easy = bw__curlm_easy_get(m, NULL);
  r->x.done = on_done;
  curl_easy_setopt(r->x.easy, CURLOPT_URL, r->url);
  curl_easy_setopt(r->x.easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(r->x.easy, CURLOPT_WRITEFUNCTION, sink);
  curl_easy_setopt(r->x.easy, CURLOPT_WRITEDATA, r);
  if (timeout_ms) curl_easy_setopt(r->x.easy, CURLOPT_TIMEOUT_MS, timeout_ms);
}

static int setup(void **state) {
  (void)state;
  return httpd_start(&srv, 0);
}

static int teardown(void **state) {
  (void)state;
  httpd_stop(srv);
  return 0;
}

static void close_and_drain(uv_loop_t *loop, bw__curlm_t *m) {
  bw__curlm_close(m);
  uv_run(loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(loop), 0);
}

static void test_many_concurrent_reuse(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bw__curlm_t *m;
  bw__curlm_limits_t lim = {.max_host_connections = 16};
  assert_int_equal(bw__curlm_new(&m, &loop, &lim), 0);
  int n = (int)(2000 * scale());
  if (n < 100) n = 100;
  req_t *rs = calloc((size_t)n, sizeof *rs);
  int ndone = 0;
  uint64_t conns0 = httpd_connections(srv);
  /* two waves: the second must reuse the first wave's connections */
  for (int wave = 0; wave < 2; wave++) {
    int lo = wave * n / 2, hi = (wave + 1) * n / 2;
    for (int i = lo; i < hi; i++) {
      prep(&rs[i], m, &ndone, "/?size=100", 0);
      assert_int_equal(bw__curlm_add(m, &rs[i].x), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(ndone, hi);
  }
  for (int i = 0; i < n; i++) {
    assert_int_equal(rs[i].rc, CURLE_OK);
    assert_int_equal(rs[i].status, 200);
    assert_int_equal(rs[i].got, 100);
    assert_int_equal(rs[i].done_calls, 1);
  }
  uint64_t conns = httpd_connections(srv) - conns0;
  assert_true(conns >= 1);
  assert_true(conns <= 16); /* per-host limit held, connections reused */
  assert_int_equal(bw__curlm_active(m), 0);
  close_and_drain(&loop, m);
  free(rs);
  assert_int_equal(httpd_wait_open_connections(srv, 0, 5000), 0);
}

static void test_timeout_and_refused(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bw__curlm_t *m;
  assert_int_equal(bw__curlm_new(&m, &loop, NULL), 0);
  int ndone = 0;
  req_t a, b;
  prep(&a, m, &ndone, "/?hang=1", 50);
  prep(&b, m, &ndone, "/", 0);
  /* port 1 on loopback: nothing listens there */
  curl_easy_setopt(b.x.easy, CURLOPT_URL, "http://127.0.0.1:1/");
  assert_int_equal(bw__curlm_add(m, &a.x), 0);
  assert_int_equal(bw__curlm_add(m, &b.x), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(ndone, 2);
  assert_int_equal(a.rc, CURLE_OPERATION_TIMEDOUT);
  assert_int_equal(b.rc, CURLE_COULDNT_CONNECT);
  close_and_drain(&loop, m);
}

static void on_remove_timer(uv_timer_t *t) {
  req_t *r = t->data;
  bw__curlm_remove(r->m, &r->x);
  bw__curlm_easy_put(r->m, r->x.easy, false);
  r->x.easy = NULL;
  uv_close((uv_handle_t *)t, NULL);
}

static void test_remove_in_flight(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bw__curlm_t *m;
  assert_int_equal(bw__curlm_new(&m, &loop, NULL), 0);
  int ndone = 0;
  req_t a;
  prep(&a, m, &ndone, "/?hang=1", 0);
  assert_int_equal(bw__curlm_add(m, &a.x), 0);
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  t.data = &a;
  uv_timer_start(&t, on_remove_timer, 30, 0);
  uv_run(&loop, UV_RUN_DEFAULT); /* ends: nothing left to watch */
  assert_int_equal(ndone, 0);
  assert_int_equal(bw__curlm_active(m), 0);
  close_and_drain(&loop, m);
  /* the removed transfer's connection was closed, not left hanging */
  assert_int_equal(httpd_wait_open_connections(srv, 0, 5000), 0);
}

static void test_close_aborts_active(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bw__curlm_t *m;
  assert_int_equal(bw__curlm_new(&m, &loop, NULL), 0);
  int ndone = 0;
  req_t rs[8];
  for (int i = 0; i < 8; i++) {
    prep(&rs[i], m, &ndone, "/?hang=1", 0);
    assert_int_equal(bw__curlm_add(m, &rs[i].x), 0);
  }
  uv_run(&loop, UV_RUN_NOWAIT);
  bw__curlm_close(m);
  assert_int_equal(ndone, 8);
  for (int i = 0; i < 8; i++) assert_int_equal(rs[i].rc, CURLE_ABORTED_BY_CALLBACK);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
}

/* A keep-alive connection the server resets (RST) after reading the next
 * request sent on it: the poll reports an error, and curl must be let to
 * read the socket (ECONNRESET on a reused connection, nothing received) so
 * it retries on a new connection, instead of failing the transfer with
 * "select/poll returned error" (curl 55). The server resets only once the
 * second request arrived, so curl has reused the connection by then, and
 * 50 ms later, so curl is waiting in the poll rather than about to try a
 * read of its own (which saw the reset and retried even before the fix). */
static void test_reset_reused_connection_retried(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bw__curlm_t *m;
  assert_int_equal(bw__curlm_new(&m, &loop, NULL), 0);
  int ndone = 0;
  req_t a, b;
  prep(&a, m, &ndone, "/?size=10", 0);
  assert_int_equal(bw__curlm_add(m, &a.x), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(ndone, 1);
  assert_int_equal(a.rc, CURLE_OK);
  /* the first request of this key is reset, a retry gets "ok\n" */
  prep(&b, m, &ndone, "/?key=rst_reused&fail_first=1&reset=1&delay_ms=50", 5000);
  assert_int_equal(bw__curlm_add(m, &b.x), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(ndone, 2);
  if (b.rc != CURLE_OK) fail_msg("curl %d: %s", (int)b.rc, curl_easy_strerror(b.rc));
  assert_int_equal(b.status, 200);
  assert_int_equal(b.got, 3);
  /* two requests of the key: the reset one and the retry (curl retries
   * only on a reused connection, so the first one was sent on a's) */
  assert_int_equal(httpd_key_count(srv, "rst_reused"), 2);
  close_and_drain(&loop, m);
}

/* The poll error path of on_poll, made deterministic. libuv reports
 * POLLERR on a watched socket by stopping the uv_poll_t and calling its
 * callback with UV_EBADF (src/unix/poll.c uv__poll_io); we do exactly that
 * to curl's poll handle (found with uv_walk) while curl waits for a
 * response on a healthy connection. The peer is a uv_tcp server on the
 * same loop that answers only after the injected error, so the order is
 * fixed: curl must get IN|OUT|ERR (ERR alone fails the transfer with
 * "select/poll returned error", curl 55), read nothing (EAGAIN), keep its
 * watch unchanged, and the engine must start the stopped poll again, or
 * the answer is never seen (the transfer would hit its 10 s safety
 * timeout: curl 28). */
typedef struct perr {
  uv_tcp_t listener, conn;
  uv_write_t wr;
  uv_buf_t reply;
  char buf[4096];
  size_t len;
  int *ndone;
  int injected;       /* poll errors injected */
  int curl_polls;     /* active UV_POLL handles seen at injection */
  bool restarted;     /* curl's poll active again right after */
  int done_at_inject; /* transfers finished right after (0: not failed) */
} perr_t;

static void find_curl_poll(uv_handle_t *h, void *arg) {
  uv_poll_t **out = arg;
  if (h->type == UV_POLL && uv_is_active(h) && !uv_is_closing(h)) {
    if (*out) *out = (uv_poll_t *)(void *)-1; /* more than one: fail below */
    else *out = (uv_poll_t *)h;
  }
}

static void perr_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  perr_t *pe = h->data;
  (void)hint;
  *b = uv_buf_init(pe->buf + pe->len, (unsigned)(sizeof pe->buf - 1 - pe->len));
}

static void perr_written(uv_write_t *w, int status) {
  perr_t *pe = w->data;
  assert_int_equal(status, 0);
  uv_close((uv_handle_t *)&pe->conn, NULL); /* "Connection: close" */
}

static void perr_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  perr_t *pe = st->data;
  (void)b;
  if (n < 0) return; /* curl's side closing after the answer */
  pe->len += (size_t)n;
  pe->buf[pe->len] = 0;
  if (pe->injected || !strstr(pe->buf, "\r\n\r\n")) return;
  /* curl sent its request and now watches the socket for the answer */
  uv_poll_t *p = NULL;
  uv_walk(st->loop, find_curl_poll, &p);
  pe->curl_polls = p == NULL ? 0 : p == (uv_poll_t *)(void *)-1 ? 2 : 1;
  if (pe->curl_polls != 1) return;
  uv_poll_stop(p);                /* what libuv does on POLLERR ... */
  p->poll_cb(p, UV_EBADF, 0);     /* ... before calling back */
  pe->injected++;
  pe->restarted = uv_is_active((uv_handle_t *)p);
  pe->done_at_inject = *pe->ndone;
  uv_read_stop(st);
  static const char answer[] =
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
  pe->reply = uv_buf_init((char *)answer, sizeof answer - 1);
  pe->wr.data = pe;
  assert_int_equal(uv_write(&pe->wr, st, &pe->reply, 1, perr_written), 0);
}

static void perr_accept(uv_stream_t *l, int status) {
  perr_t *pe = l->data;
  assert_int_equal(status, 0);
  uv_tcp_init(l->loop, &pe->conn);
  pe->conn.data = pe;
  assert_int_equal(uv_accept(l, (uv_stream_t *)&pe->conn), 0);
  uv_close((uv_handle_t *)l, NULL); /* one connection is all we serve */
  assert_int_equal(uv_read_start((uv_stream_t *)&pe->conn, perr_alloc, perr_read), 0);
}

static void test_poll_error_reads_and_restarts(void **state) {
  (void)state;
  uv_loop_t loop;
  uv_loop_init(&loop);
  bw__curlm_t *m;
  assert_int_equal(bw__curlm_new(&m, &loop, NULL), 0);
  int ndone = 0;
  perr_t pe;
  memset(&pe, 0, sizeof pe);
  pe.ndone = &ndone;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&loop, &pe.listener);
  pe.listener.data = &pe;
  assert_int_equal(uv_tcp_bind(&pe.listener, (const struct sockaddr *)&a, 0), 0);
  int alen = sizeof a;
  assert_int_equal(uv_tcp_getsockname(&pe.listener, (struct sockaddr *)&a, &alen), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&pe.listener, 4, perr_accept), 0);

  req_t r;
  prep(&r, m, &ndone, "/", 10000); /* the timeout only bounds a regression */
  snprintf(r.url, sizeof r.url, "http://127.0.0.1:%d/perr", ntohs(a.sin_port));
  curl_easy_setopt(r.x.easy, CURLOPT_URL, r.url);
  assert_int_equal(bw__curlm_add(m, &r.x), 0);
  uv_run(&loop, UV_RUN_DEFAULT);

  assert_int_equal(pe.curl_polls, 1);
  assert_int_equal(pe.injected, 1);
  assert_int_equal(pe.done_at_inject, 0); /* not failed by the error */
  assert_true(pe.restarted);              /* the stopped poll runs again */
  assert_int_equal(ndone, 1);
  if (r.rc != CURLE_OK) fail_msg("curl %d: %s", (int)r.rc, curl_easy_strerror(r.rc));
  assert_int_equal(r.status, 200);
  assert_int_equal(r.got, 2);
  close_and_drain(&loop, m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_concurrent_reuse),
      cmocka_unit_test(test_timeout_and_refused),
      cmocka_unit_test(test_remove_in_flight),
      cmocka_unit_test(test_close_aborts_active),
      cmocka_unit_test(test_reset_reused_connection_retried),
      cmocka_unit_test(test_poll_error_reads_and_restarts),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
