/* HTTP request and response objects.
 *
 * Design notes:
 * - A request is built by one thread, then read-only while calls use it
 *   (retries and hedges replay it from the reactor thread); nothing in it is
 *   mutated by a transfer, so concurrent attempts need no lock.
 * - It is reference counted: the owner's reference, plus one per client
 *   call from ops->call until its transfer is released on the loop thread
 *   (the caller may free the request as soon as its call completed, e.g. by
 *   a timeout, while the attempt is still being torn down).
 * - The header list is a curl_slist handed to CURLOPT_HTTPHEADER as is.
 * - A response is built on the reactor thread by one transfer and handed
 *   whole to the caller; header name and value share one allocation.
 * - Body growth is geometric from a hint (Content-Length when curl knows it),
 *   never above the cap the transfer checked before appending. */
#include <ctype.h>
#include <string.h>

#include "clients/http_internal.h"
#include "clients/http_multi.h"
#include "core/alloc.h"

/* ---- request ------------------------------------------------------------- */

bw_error_t *bw_http_request_new(bw_http_request_t **out, const char *method, const char *url) {
  if (!out || !method || !*method || !url || !*url)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "http: request needs a method and a URL");
  for (const char *p = method; *p; p++)
    if (*p <= ' ' || *p >= 127)
      return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "http: invalid method");
  if (bw__curl_global_init() != 0)
    return bw_error_new(BW_ERR_INTERNAL, 0, "http: curl_global_init failed");
  bw_http_request_t *r = bw__calloc(1, sizeof *r);
  if (!r) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  r->magic = BW_HTTP_REQUEST_MAGIC;
  atomic_init(&r->refs, 1);
  r->tls_verify = true;
  r->method = bw__strdup(method);
  r->url = bw__strdup(url);
  if (r->url) r->url_redacted = bw__http_redact_url(url, &r->userinfo);
  if (!r->method || !r->url || !r->url_redacted) {
    bw_http_request_free(r);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  for (char *p = r->method; *p; p++) *p = (char)toupper((unsigned char)*p);
  static const char *const idem[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
  for (size_t i = 0; i < sizeof idem / sizeof idem[0]; i++)
    if (strcmp(r->method, idem[i]) == 0) r->idempotent = true;
  *out = r;
  return NULL;
}

void bw__http_request_ref(bw_http_request_t *r) {
  atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
}

void bw_http_request_free(bw_http_request_t *r) {
  if (!r) return;
  /* acq_rel pairs with the other holders' decrements: the last one sees
   * every reader done before freeing */
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) return;
  r->magic = 0;
  bw__free(r->method);
  bw__free(r->url);
  bw__free(r->url_redacted);
  if (r->userinfo) {
    memset(r->userinfo, 0, strlen(r->userinfo));
    bw__free(r->userinfo);
  }
  curl_slist_free_all(r->headers);
  bw__free(r->body_owned);
  bw__free(r);
}

void bw_http_request_destroy(void *req) { bw_http_request_free(req); }

bw_error_t *bw_http_request_add_header(bw_http_request_t *r, const char *line) {
  if (!r || !line || (!strchr(line, ':') && !strchr(line, ';')) || strpbrk(line, "\r\n"))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "http: header must be one \"Name: value\" line");
  struct curl_slist *n = curl_slist_append(r->headers, line);
  if (!n) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  r->headers = n;
  return NULL;
}

bw_error_t *bw_http_request_set_body(bw_http_request_t *r, const void *data, size_t len,
                                     bw_http_body_mode_t mode) {
  if (!r || (!data && len > 0) || (mode != BW_HTTP_BODY_COPY && mode != BW_HTTP_BODY_BORROW))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "http: invalid body");
  char *copy = NULL;
  if (mode == BW_HTTP_BODY_COPY) {
    copy = bw__malloc(len + 1);
    if (!copy) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    if (len) memcpy(copy, data, len);
    copy[len] = 0;
  }
  bw__free(r->body_owned);
  r->body_owned = copy;
  r->body = copy ? copy : (data ? data : "");
  r->body_len = len;
  return NULL;
}

void bw_http_request_set_connect_timeout_ms(bw_http_request_t *r, uint64_t ms) {
  if (r) r->connect_timeout_ms = ms;
}
void bw_http_request_set_timeout_ms(bw_http_request_t *r, uint64_t ms) {
  if (r) r->timeout_ms = ms;
}
void bw_http_request_set_max_response_bytes(bw_http_request_t *r, size_t bytes) {
  if (r) r->max_response_bytes = bytes;
}
void bw_http_request_set_follow_redirects(bw_http_request_t *r, bool on, long max_redirects) {
  if (!r) return;
  r->follow_redirects = on;
  r->max_redirects = max_redirects > 0 ? max_redirects : 10;
}
void bw_http_request_set_tls_verify(bw_http_request_t *r, bool on) {
  if (r) r->tls_verify = on;
}
void bw_http_request_set_idempotent(bw_http_request_t *r, bool idempotent) {
  if (r) r->idempotent = idempotent;
}
bool bw_http_request_is_idempotent(const bw_http_request_t *r) { return r && r->idempotent; }
const char *bw_http_request_method(const bw_http_request_t *r) { return r ? r->method : NULL; }
const char *bw_http_request_url_redacted(const bw_http_request_t *r) {
  return r ? r->url_redacted : NULL;
}

/* ---- response ------------------------------------------------------------- */

bw_http_response_t *bw__http_response_new(void) {
  bw_http_response_t *r = bw__calloc(1, sizeof *r);
  if (r) r->magic = BW_HTTP_RESPONSE_MAGIC;
  return r;
}

void bw__http_response_clear_headers(bw_http_response_t *r) {
  r->nheaders = 0;
  r->hlen = 0;
}

int bw__http_response_add_header_line(bw_http_response_t *r, const char *line, size_t len) {
  while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n')) len--;
  if (len == 0) return 0; /* end of the header block */
  if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
    /* a new status line: a redirect hop or 100-continue; keep only the last block */
    bw__http_response_clear_headers(r);
    return 0;
  }
  const char *colon = memchr(line, ':', len);
  if (!colon || colon == line) return 0; /* obs-fold or junk: ignored */
  size_t nlen = (size_t)(colon - line);
  const char *v = colon + 1;
  const char *end = line + len;
  while (v < end && (*v == ' ' || *v == '\t')) v++;
  while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
  size_t vlen = (size_t)(end - v);
  if (r->nheaders == r->headers_cap) {
    size_t ncap = r->headers_cap ? r->headers_cap * 2 : 16;
    bw__http_header_t *nh = bw__realloc(r->headers, ncap * sizeof *nh);
    if (!nh) return -1;
    r->headers = nh;
    r->headers_cap = ncap;
  }
  /* one growing buffer for all names and values: one allocation per
   * response in the common case instead of one per header */
  size_t need = r->hlen + nlen + vlen + 2;
  if (need > r->hcap) {
    size_t ncap = r->hcap ? r->hcap : 512;
    while (ncap < need) ncap *= 2;
    char *nb = bw__realloc(r->hbuf, ncap);
    if (!nb) return -1;
    r->hbuf = nb;
    r->hcap = ncap;
  }
  bw__http_header_t *h = &r->headers[r->nheaders++];
  h->name_off = r->hlen;
  memcpy(r->hbuf + r->hlen, line, nlen);
  r->hbuf[r->hlen + nlen] = 0;
  h->value_off = r->hlen + nlen + 1;
  memcpy(r->hbuf + h->value_off, v, vlen);
  r->hbuf[h->value_off + vlen] = 0;
  r->hlen = need;
  return 0;
}

int bw__http_response_append(bw_http_response_t *r, const char *data, size_t len, size_t hint) {
  size_t need = r->body_len + len + 1; /* +1: keep a NUL after the body */
  if (need > r->body_cap) {
    /* first growth: the Content-Length when known (a small body gets a
     * small buffer), else 4 KiB */
    size_t ncap = r->body_cap ? r->body_cap : hint ? hint + 1 : 4096;
    while (ncap < need) ncap *= 2;
    char *nb = bw__realloc(r->body, ncap);
    if (!nb) return -1;
    r->body = nb;
    r->body_cap = ncap;
  }
  memcpy(r->body + r->body_len, data, len);
  r->body_len += len;
  r->body[r->body_len] = 0;
  return 0;
}

bw_error_t *bw_http_response_new(bw_http_response_t **out, int status, const void *body,
                                 size_t len) {
  if (!out || status < 100 || status > 999 || (!body && len > 0))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "http: invalid response");
  bw_http_response_t *r = bw__http_response_new();
  if (!r || bw__http_response_append(r, len ? body : "", len, len) != 0) {
    bw_http_response_free(r);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  r->status = status;
  *out = r;
  return NULL;
}

bw_error_t *bw_http_response_add_header(bw_http_response_t *r, const char *name,
                                        const char *value) {
  if (!r || !name || !*name || !value || strpbrk(name, ":\r\n") || strpbrk(value, "\r\n"))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "http: invalid header");
  size_t nl = strlen(name), vl = strlen(value);
  char *line = bw__malloc(nl + vl + 3);
  if (!line) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  memcpy(line, name, nl);
  memcpy(line + nl, ": ", 2);
  memcpy(line + nl + 2, value, vl + 1);
  int rc = bw__http_response_add_header_line(r, line, nl + vl + 2);
  bw__free(line);
  return rc == 0 ? NULL : bw_error_static(BW_ERR_OUT_OF_MEMORY);
}

int bw_http_response_status(const bw_http_response_t *r) { return r ? r->status : 0; }

const char *bw_http_response_body(const bw_http_response_t *r, size_t *len) {
  if (len) *len = r ? r->body_len : 0;
  return r && r->body ? r->body : "";
}

const char *bw_http_response_header(const bw_http_response_t *r, const char *name) {
  if (!r || !name) return NULL;
  for (size_t i = 0; i < r->nheaders; i++)
    if (strcasecmp(r->hbuf + r->headers[i].name_off, name) == 0)
      return r->hbuf + r->headers[i].value_off;
  return NULL;
}

size_t bw_http_response_header_count(const bw_http_response_t *r) { return r ? r->nheaders : 0; }

bool bw_http_response_header_at(const bw_http_response_t *r, size_t i, const char **name,
                                const char **value) {
  if (!r || i >= r->nheaders) return false;
  if (name) *name = r->hbuf + r->headers[i].name_off;
  if (value) *value = r->hbuf + r->headers[i].value_off;
  return true;
}

char *bw_http_response_take_body(bw_http_response_t *r, size_t *len) {
  if (!r) return NULL;
  char *b = r->body;
  if (!b) {
    b = bw__malloc(1);
    if (b) b[0] = 0;
  }
  if (len) *len = r->body_len;
  r->body = NULL;
  r->body_len = r->body_cap = 0;
  return b;
}

void bw_http_body_free(char *body) { bw__free(body); }

void bw_http_response_free(bw_http_response_t *r) {
  if (!r) return;
  bw__free(r->headers);
  bw__free(r->hbuf);
  bw__free(r->body);
  r->magic = 0;
  bw__free(r);
}

void bw_http_response_destroy(void *resp) { bw_http_response_free(resp); }
