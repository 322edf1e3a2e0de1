/* Misbehaving HTTP/1.1 test server (see http_server.h for the behaviours).
 *
 * Design notes:
 * - One libuv loop on one thread. The listening socket is bound on the
 *   starting thread (so the port is known when httpd_start returns), then the
 *   loop runs on the server thread; nothing but the atomics, the key table
 *   (mutex) and the stop async handle is touched from other threads.
 * - A connection handles one request at a time: bytes keep arriving into its
 *   buffer while a delayed answer or a write is pending, and parsing resumes
 *   when the answer has been written (keep-alive, pipelining-safe).
 * - A connection owns a uv_tcp_t and a uv_timer_t; it is freed when both
 *   close callbacks ran (`pending_closes`).
 * - Large bodies are written as many uv_buf_t pointing at one static pattern
 *   block, so a 100 MB answer costs no 100 MB allocation.
 * - Stop: uv_async -> close every handle (uv_walk) -> loop ends -> join.
 * Memory comes from plain malloc: the fixture is not part of the library and
 * must not disturb tests that count bw__malloc calls. */
#include "http_server.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#define PATTERN_LEN 65520 /* 26 * 2520: the pattern restarts at each block */
#define MAX_HEAD (64 * 1024)

typedef struct keycount {
  struct keycount *next;
  uint64_t count;
  char key[];
} keycount_t;

struct httpd {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t stop_async;
  uv_thread_t thread;
  bool thread_started;
  int port;
  atomic_uint_fast64_t requests, connections, open_conns;
  uv_mutex_t mu; /* guards keys; with cv for open_conns waiters */
  uv_cond_t cv;
  keycount_t *keys;
};

typedef struct plan {
  int status;
  char *extra_headers; /* "Name: v\r\n..." */
  char *body;          /* malloc'd body (echo/text), or NULL with size */
  size_t body_len;
  uint64_t size;       /* pattern body length when body == NULL and use_size */
  bool use_size, chunked, reset, reset_body, close_now, hang, conn_close;
  bool head;           /* HEAD: announce head_len, send no body */
  uint64_t head_len;   /* the Content-Length a GET would have had */
  uint64_t delay_ms;
} plan_t;

typedef struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  httpd_t *srv;
  char *buf;
  size_t len, cap;
  int pending_closes;
  bool closing, busy, sent_continue, client_close;
  plan_t plan;
} conn_t;

typedef struct wreq {
  uv_write_t w;
  conn_t *c;
  char *head;
  char *body;
  char *scratch;
  uv_buf_t *bufs;
  int after; /* 0 keep alive, 1 close, 2 reset */
} wreq_t;

static char pattern[PATTERN_LEN];
static const char crlf[] = "\r\n";
static uv_once_t pattern_once = UV_ONCE_INIT;

static void init_pattern(void) {
  for (size_t i = 0; i < PATTERN_LEN; i++) pattern[i] = (char)('a' + i % 26);
}

static void plan_clear(plan_t *p) {
  free(p->extra_headers);
  free(p->body);
  memset(p, 0, sizeof *p);
}

/* ---- connection lifetime ---------------------------------------------- */

static void on_conn_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  if (--c->pending_closes > 0) return;
  httpd_t *srv = c->srv;
  plan_clear(&c->plan);
  free(c->buf);
  free(c);
  uv_mutex_lock(&srv->mu);
  atomic_fetch_sub(&srv->open_conns, 1);
  uv_cond_broadcast(&srv->cv);
  uv_mutex_unlock(&srv->mu);
}

static void conn_close(conn_t *c, bool reset) {
  if (c->closing) return;
  c->closing = true;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
  if (reset) {
    if (uv_tcp_close_reset(&c->tcp, on_conn_closed) == 0) return;
  }
  uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

/* ---- small helpers --------------------------------------------------- */

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* Decode %XX and '+' in place; returns s. */
static char *url_decode(char *s) {
  char *o = s;
  for (char *i = s; *i; i++) {
    if (*i == '%' && hexval(i[1]) >= 0 && hexval(i[2]) >= 0) {
      *o++ = (char)(hexval(i[1]) * 16 + hexval(i[2]));
      i += 2;
    } else if (*i == '+') {
      *o++ = ' ';
    } else {
      *o++ = *i;
    }
  }
  *o = 0;
  return s;
}

static void append(char **dst, size_t *len, const char *src, size_t n) {
  char *p = realloc(*dst, *len + n + 1);
  if (!p) abort();
  memcpy(p + *len, src, n);
  *len += n;
  p[*len] = 0;
  *dst = p;
}

static void appendf(char **dst, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void appendf(char **dst, size_t *len, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n >= sizeof tmp) n = (int)sizeof tmp - 1;
  append(dst, len, tmp, (size_t)n);
}

static uint64_t key_bump(httpd_t *srv, const char *key) {
  uv_mutex_lock(&srv->mu);
  keycount_t *k = srv->keys;
  while (k && strcmp(k->key, key) != 0) k = k->next;
  if (!k) {
    size_t n = strlen(key);
    k = calloc(1, sizeof *k + n + 1);
    if (!k) abort();
    memcpy(k->key, key, n + 1);
    k->next = srv->keys;
    srv->keys = k;
  }
  uint64_t v = ++k->count;
  uv_mutex_unlock(&srv->mu);
  return v;
}

static const char *reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Status";
  }
}

/* Case-insensitive header lookup inside a raw header block ("A: b\r\n..."). */
static bool header_value(const char *head, const char *name, char *out, size_t outlen) {
  size_t nl = strlen(name);
  const char *p = head;
  while (p && *p) {
    const char *eol = strstr(p, "\r\n");
    if (!eol) eol = p + strlen(p);
    if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
      const char *v = p + nl + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      size_t n = (size_t)(eol - v);
      if (n >= outlen) n = outlen - 1;
      memcpy(out, v, n);
      out[n] = 0;
      return true;
    }
    p = *eol ? eol + 2 : eol;
  }
  return false;
}

/* ---- answering ------------------------------------------------------- */

static void conn_process(conn_t *c);

static void on_written(uv_write_t *w, int status) {
  wreq_t *r = (wreq_t *)w;
  conn_t *c = r->c;
  int after = r->after;
  free(r->head);
  free(r->body);
  free(r->scratch);
  free(r->bufs);
  free(r);
  if (c->closing) return;
  c->busy = false;
  if (status < 0 || after == 1) {
    conn_close(c, false);
  } else if (after == 2) {
    conn_close(c, true);
  } else {
    conn_process(c);
  }
}

static void execute_plan(conn_t *c) {
  plan_t *p = &c->plan;
  if (p->hang) return; /* stays busy until the client goes away */
  if (p->close_now || p->reset) {
    conn_close(c, p->reset);
    return;
  }
  uint64_t blen = p->body ? p->body_len : p->size;
  uint64_t send_len = p->reset_body ? blen / 2 : blen;
  wreq_t *r = calloc(1, sizeof *r);
  if (!r) abort();
  r->c = c;
  r->after = p->reset_body ? 2 : (p->conn_close || c->client_close) ? 1 : 0;
  size_t hl = 0;
  appendf(&r->head, &hl, "HTTP/1.1 %d %s\r\nServer: bw-test-httpd\r\n", p->status,
          reason(p->status));
  if (p->chunked)
    appendf(&r->head, &hl, "Transfer-Encoding: chunked\r\n");
  else
    appendf(&r->head, &hl, "Content-Length: %llu\r\n",
            (unsigned long long)(p->head ? p->head_len : blen));
  if (r->after == 1) appendf(&r->head, &hl, "Connection: close\r\n");
  if (p->extra_headers) append(&r->head, &hl, p->extra_headers, strlen(p->extra_headers));
  append(&r->head, &hl, "\r\n", 2);

  size_t nblocks = (size_t)((send_len + PATTERN_LEN - 1) / PATTERN_LEN);
  size_t maxbufs = 1 + (p->body ? 1 : nblocks) * 3 + 2;
  r->bufs = calloc(maxbufs, sizeof *r->bufs);
  if (!r->bufs) abort();
  size_t nb = 0;
  r->bufs[nb++] = uv_buf_init(r->head, (unsigned)hl);
  if (p->body) {
    r->body = p->body; /* ownership moves to the write */
    p->body = NULL;
    if (p->chunked && send_len > 0) {
      r->scratch = malloc(32);
      if (!r->scratch) abort();
      int n = snprintf(r->scratch, 32, "%llx\r\n", (unsigned long long)send_len);
      r->bufs[nb++] = uv_buf_init(r->scratch, (unsigned)n);
    }
    if (send_len) r->bufs[nb++] = uv_buf_init(r->body, (unsigned)send_len);
    if (p->chunked && send_len > 0) r->bufs[nb++] = uv_buf_init((char *)crlf, 2);
  } else {
    /* scratch holds one chunk-size line per block (at most 20 bytes each) */
    if (p->chunked) {
      r->scratch = malloc(nblocks * 20 + 1);
      if (!r->scratch) abort();
    }
    uint64_t left = send_len;
    for (size_t i = 0; i < nblocks; i++) {
      size_t n = left > PATTERN_LEN ? PATTERN_LEN : (size_t)left;
      if (p->chunked) {
        char *line = r->scratch + i * 20;
        int k = snprintf(line, 20, "%zx\r\n", n);
        r->bufs[nb++] = uv_buf_init(line, (unsigned)k);
      }
      r->bufs[nb++] = uv_buf_init(pattern, (unsigned)n);
      if (p->chunked) r->bufs[nb++] = uv_buf_init((char *)crlf, 2);
      left -= n;
    }
  }
  if (p->chunked && !p->reset_body) r->bufs[nb++] = uv_buf_init("0\r\n\r\n", 5);
  c->busy = true;
  if (uv_write(&r->w, (uv_stream_t *)&c->tcp, r->bufs, (unsigned)nb, on_written) != 0) {
    free(r->head);
    free(r->body);
    free(r->scratch);
    free(r->bufs);
    free(r);
    conn_close(c, false);
  }
}

static void on_delay(uv_timer_t *t) {
  conn_t *c = t->data;
  if (!c->closing) execute_plan(c);
}

/* Build the plan for one complete request. head = request line + headers
 * (NUL-terminated, CRLF separated), body/blen the request body. */
static void handle_request(conn_t *c, char *head, const char *body, size_t blen) {
  httpd_t *srv = c->srv;
  plan_t *p = &c->plan;
  plan_clear(p);
  p->status = 200;
  atomic_fetch_add(&srv->requests, 1);

  char *line_end = strstr(head, "\r\n");
  *line_end = 0;
  const char *hdrs = line_end + 2;
  char method[32] = "", target[4096] = "", version[16] = "";
  if (sscanf(head, "%31s %4095s %15s", method, target, version) != 3) {
    p->status = 400;
    p->conn_close = true;
    execute_plan(c);
    return;
  }
  char conn_hdr[64];
  if ((header_value(hdrs, "Connection", conn_hdr, sizeof conn_hdr) &&
       strcasecmp(conn_hdr, "close") == 0) ||
      strcmp(version, "HTTP/1.0") == 0)
    c->client_close = true;

  /* query parameters */
  char path[4096];
  snprintf(path, sizeof path, "%s", target);
  char *q = strchr(path, '?');
  if (q) *q++ = 0;
  bool status_given = false, echo = strncmp(path, "/echo", 5) == 0;
  int fail_first = -1;
  char key[256] = "", redirect[2048] = "";
  size_t xl = 0;
  bool have_ra = false;
  char ra[128] = "";
  for (char *tok = q ? strtok(q, "&") : NULL; tok; tok = strtok(NULL, "&")) {
    char *v = strchr(tok, '=');
    if (v) *v++ = 0;
    else v = "";
    url_decode(v);
    if (!strcmp(tok, "status")) {
      p->status = atoi(v);
      status_given = true;
    } else if (!strcmp(tok, "delay_ms")) {
      p->delay_ms = strtoull(v, NULL, 10);
    } else if (!strcmp(tok, "retry_after")) {
      have_ra = true;
      snprintf(ra, sizeof ra, "%s", v);
    } else if (!strcmp(tok, "retry_after_date")) {
      time_t t = time(NULL) + atoi(v);
      struct tm tm;
      gmtime_r(&t, &tm);
      have_ra = true;
      strftime(ra, sizeof ra, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    } else if (!strcmp(tok, "hdr")) {
      appendf(&p->extra_headers, &xl, "%s\r\n", v);
    } else if (!strcmp(tok, "size")) {
      p->use_size = true;
      p->size = strtoull(v, NULL, 10);
    } else if (!strcmp(tok, "chunked")) {
      p->chunked = atoi(v) != 0;
    } else if (!strcmp(tok, "echo")) {
      echo = atoi(v) != 0;
    } else if (!strcmp(tok, "reset")) {
      if (!strcmp(v, "body")) p->reset_body = true;
      else p->reset = atoi(v) != 0;
    } else if (!strcmp(tok, "close")) {
      p->close_now = atoi(v) != 0;
    } else if (!strcmp(tok, "hang")) {
      p->hang = atoi(v) != 0;
    } else if (!strcmp(tok, "redirect")) {
      snprintf(redirect, sizeof redirect, "%s", v);
    } else if (!strcmp(tok, "key")) {
      snprintf(key, sizeof key, "%s", v);
    } else if (!strcmp(tok, "fail_first")) {
      fail_first = atoi(v);
    } else if (!strcmp(tok, "conn_close")) {
      p->conn_close = atoi(v) != 0;
    }
  }
  uint64_t nth = key[0] ? key_bump(srv, key) : 0;
  if (fail_first >= 0) {
    if (nth > (uint64_t)fail_first) {
      /* past the failures: a plain success */
      bool keep_close = p->conn_close;
      plan_clear(p);
      p->status = 200;
      p->conn_close = keep_close;
      p->body = strdup("ok\n");
      p->body_len = 3;
      execute_plan(c);
      return;
    }
    if (!status_given) p->status = 503;
  }
  if (redirect[0]) {
    if (!status_given) p->status = 302;
    appendf(&p->extra_headers, &xl, "Location: %s\r\n", redirect);
  }
  if (have_ra) appendf(&p->extra_headers, &xl, "Retry-After: %s\r\n", ra);

  if (echo) {
    size_t el = 0;
    appendf(&p->body, &el, "%s %s\n", method, target);
    /* header lines, CRLF -> LF */
    const char *h = hdrs;
    while (*h) {
      const char *eol = strstr(h, "\r\n");
      if (!eol || eol == h) break;
      append(&p->body, &el, h, (size_t)(eol - h));
      append(&p->body, &el, "\n", 1);
      h = eol + 2;
    }
    append(&p->body, &el, "\n", 1);
    if (blen) append(&p->body, &el, body, blen);
    p->body_len = el;
  } else if (!p->use_size) {
    char tmp[64];
    int n = (p->status >= 200 && p->status < 300)
                ? snprintf(tmp, sizeof tmp, "ok\n")
                : snprintf(tmp, sizeof tmp, "status %d\n", p->status);
    p->body = strdup(tmp);
    p->body_len = (size_t)n;
  }
  if (!strcmp(method, "HEAD") || p->status == 204 || p->status == 304) {
    /* no body on the wire; HEAD announces the Content-Length a GET would
     * have had (size=N: N), 204 and 304 keep 0 for simplicity */
    if (!strcmp(method, "HEAD") && p->status != 204 && p->status != 304) {
      p->head = true;
      p->head_len = p->body ? p->body_len : p->use_size ? p->size : 0;
    }
    free(p->body);
    p->body = NULL;
    p->body_len = 0;
    p->use_size = false;
    p->size = 0;
    p->chunked = false;
  }
  c->busy = true;
  if (p->delay_ms && !p->hang) {
    uv_timer_start(&c->timer, on_delay, p->delay_ms, 0);
  } else {
    execute_plan(c);
  }
}

/* Parse as many complete requests as the buffer holds, one at a time. */
static void conn_process(conn_t *c) {
  while (!c->closing && !c->busy) {
    if (c->len == 0) return;
    if (c->buf[0] < 'A' || c->buf[0] > 'Z') {
      /* not HTTP (e.g. a TLS ClientHello): answer plain text and close, so
       * a TLS client fails its handshake at once instead of timing out */
      static char bad[] = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";
      c->len = 0;
      wreq_t *r = calloc(1, sizeof *r);
      if (!r) abort();
      r->c = c;
      r->after = 1;
      r->bufs = calloc(1, sizeof *r->bufs);
      if (!r->bufs) abort();
      r->bufs[0] = uv_buf_init(bad, sizeof bad - 1);
      c->busy = true;
      if (uv_write(&r->w, (uv_stream_t *)&c->tcp, r->bufs, 1, on_written) != 0) abort();
      return;
    }
    char *end = NULL;
    for (size_t i = 0; i + 3 < c->len; i++) {
      if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0) {
        end = c->buf + i;
        break;
      }
    }
    if (!end) {
      if (c->len > MAX_HEAD) conn_close(c, false);
      return;
    }
    size_t head_len = (size_t)(end - c->buf) + 2; /* keep the last header's CRLF */
    char *head = malloc(head_len + 1);
    if (!head) abort();
    memcpy(head, c->buf, head_len);
    head[head_len] = 0;
    const char *hdrs = strstr(head, "\r\n") + 2;
    char v[64];
    uint64_t clen = 0;
    if (header_value(hdrs, "Content-Length", v, sizeof v)) clen = strtoull(v, NULL, 10);
    if (header_value(hdrs, "Transfer-Encoding", v, sizeof v)) {
      free(head);
      conn_close(c, false); /* chunked request bodies are not supported */
      return;
    }
    size_t total = head_len + 2 + (size_t)clen;
    if (c->len < total) {
      if (!c->sent_continue && header_value(hdrs, "Expect", v, sizeof v) &&
          strcasecmp(v, "100-continue") == 0) {
        c->sent_continue = true;
        wreq_t *r = calloc(1, sizeof *r);
        if (!r) abort();
        r->c = c;
        r->head = strdup("HTTP/1.1 100 Continue\r\n\r\n");
        r->bufs = calloc(1, sizeof *r->bufs);
        if (!r->head || !r->bufs) abort();
        r->bufs[0] = uv_buf_init(r->head, (unsigned)strlen(r->head));
        c->busy = true;
        if (uv_write(&r->w, (uv_stream_t *)&c->tcp, r->bufs, 1, on_written) != 0) abort();
      }
      free(head);
      return;
    }
    c->sent_continue = false;
    char *body = malloc(clen + 1);
    if (!body) abort();
    memcpy(body, c->buf + head_len + 2, (size_t)clen);
    memmove(c->buf, c->buf + total, c->len - total);
    c->len -= total;
    handle_request(c, head, body, (size_t)clen);
    free(head);
    free(body);
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = h->data;
  if (c->cap - c->len < 65536) {
    size_t ncap = c->cap ? c->cap * 2 : 131072;
    while (ncap - c->len < 65536) ncap *= 2;
    char *nb = realloc(c->buf, ncap);
    if (!nb) abort();
    c->buf = nb;
    c->cap = ncap;
  }
  *buf = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  conn_t *c = s->data;
  if (n < 0) {
    conn_close(c, false);
    return;
  }
  c->len += (size_t)n;
  conn_process(c);
}

static void on_connection(uv_stream_t *server, int status) {
  httpd_t *srv = server->data;
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (!c) abort();
  c->srv = srv;
  uv_tcp_init(&srv->loop, &c->tcp);
  uv_timer_init(&srv->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->pending_closes = 2;
  atomic_fetch_add(&srv->open_conns, 1);
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c, false);
    return;
  }
  atomic_fetch_add(&srv->connections, 1);
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* ---- start / stop ------------------------------------------------------ */

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (uv_is_closing(h)) return;
  if (h->type == UV_TCP && h->data && h->data != arg) {
    conn_t *c = h->data;
    if (h == (uv_handle_t *)&c->tcp) {
      conn_close(c, false);
      return;
    }
  }
  if (h->type == UV_TIMER) return; /* closed with its connection */
  uv_close(h, NULL);
}

static void on_stop(uv_async_t *a) {
  httpd_t *srv = a->data;
  uv_walk(&srv->loop, close_walk, srv);
}

static void run_thread(void *arg) {
  httpd_t *srv = arg;
  uv_run(&srv->loop, UV_RUN_DEFAULT);
}

int httpd_start(httpd_t **out, int port) {
  uv_once(&pattern_once, init_pattern);
  httpd_t *srv = calloc(1, sizeof *srv);
  if (!srv) return UV_ENOMEM;
  int rc = uv_loop_init(&srv->loop);
  if (rc) {
    free(srv);
    return rc;
  }
  uv_mutex_init(&srv->mu);
  uv_cond_init(&srv->cv);
  uv_tcp_init(&srv->loop, &srv->listener);
  srv->listener.data = srv;
  uv_async_init(&srv->loop, &srv->stop_async, on_stop);
  srv->stop_async.data = srv;
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", port, &addr);
  rc = uv_tcp_bind(&srv->listener, (const struct sockaddr *)&addr, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
  if (!rc) {
    struct sockaddr_in got;
    int len = sizeof got;
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&got, &len);
    srv->port = ntohs(got.sin_port);
  }
  if (!rc) rc = uv_thread_create(&srv->thread, run_thread, srv);
  if (rc) {
    uv_close((uv_handle_t *)&srv->listener, NULL);
    uv_close((uv_handle_t *)&srv->stop_async, NULL);
    uv_run(&srv->loop, UV_RUN_DEFAULT);
    uv_loop_close(&srv->loop);
    uv_mutex_destroy(&srv->mu);
    uv_cond_destroy(&srv->cv);
    free(srv);
    return rc;
  }
  srv->thread_started = true;
  *out = srv;
  return 0;
}

void httpd_request_stop(httpd_t *srv) { uv_async_send(&srv->stop_async); }

void httpd_join(httpd_t *srv) {
  if (srv->thread_started) {
    uv_thread_join(&srv->thread);
    srv->thread_started = false;
  }
}

void httpd_stop(httpd_t *srv) {
  if (!srv) return;
  httpd_request_stop(srv);
  httpd_join(srv);
  uv_loop_close(&srv->loop);
  while (srv->keys) {
    keycount_t *k = srv->keys;
    srv->keys = k->next;
    free(k);
  }
  uv_mutex_destroy(&srv->mu);
  uv_cond_destroy(&srv->cv);
  free(srv);
}

int httpd_port(const httpd_t *srv) { return srv->port; }
uint64_t httpd_requests(const httpd_t *srv) {
  return atomic_load((atomic_uint_fast64_t *)&srv->requests);
}
uint64_t httpd_connections(const httpd_t *srv) {
  return atomic_load((atomic_uint_fast64_t *)&srv->connections);
}
uint64_t httpd_open_connections(const httpd_t *srv) {
  return atomic_load((atomic_uint_fast64_t *)&srv->open_conns);
}

uint64_t httpd_key_count(httpd_t *srv, const char *key) {
  uv_mutex_lock(&srv->mu);
  uint64_t v = 0;
  for (keycount_t *k = srv->keys; k; k = k->next)
    if (strcmp(k->key, key) == 0) v = k->count;
  uv_mutex_unlock(&srv->mu);
  return v;
}

uint64_t httpd_wait_open_connections(httpd_t *srv, uint64_t n, int timeout_ms) {
  uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
  uv_mutex_lock(&srv->mu);
  uint64_t open;
  while ((open = atomic_load(&srv->open_conns)) > n) {
    uint64_t now = uv_hrtime();
    if (now >= deadline) break;
    uv_cond_timedwait(&srv->cv, &srv->mu, deadline - now);
  }
  uv_mutex_unlock(&srv->mu);
  return open;
}
