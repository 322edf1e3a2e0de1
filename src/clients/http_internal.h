/* HTTP client internals shared by http.c, http_message.c and
 * http_classify.c. */
#ifndef BW_CLIENTS_HTTP_INTERNAL_H
#define BW_CLIENTS_HTTP_INTERNAL_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/http.h"

#define BW_HTTP_REQUEST_MAGIC 0x68747071u  /* "htpq" */
#define BW_HTTP_RESPONSE_MAGIC 0x68747072u /* "htpr" */
#define BW_HTTP_DEFAULT_MAX_RESPONSE ((size_t)16 << 20)

struct bw_http_request {
  uint32_t magic; /* first: bw_http_call_is_idempotent checks it */
  /* The owner's reference (bw_http_request_free drops it) plus one per
   * client call using it (bw__http_request_ref), so a caller may free a
   * borrowed request once its call completed while an attempt cancelled
   * by a timeout is still being torn down on the loop thread. */
  atomic_int refs;
  bool idempotent;
  bool follow_redirects;
  bool tls_verify;
  long max_redirects;
  char *method;
  char *url;
  char *url_redacted;
  char *userinfo; /* "user:pass" from the URL, for scrubbing; NULL if none */
  struct curl_slist *headers;
  const char *body; /* NULL: no body */
  size_t body_len;
  char *body_owned; /* when copied */
  uint64_t connect_timeout_ms, timeout_ms;
  size_t max_response_bytes;
};

typedef struct bw__http_header {
  size_t name_off, value_off; /* into the response's hbuf, NUL-terminated */
} bw__http_header_t;

struct bw_http_response {
  uint32_t magic;
  int status;
  char *body;
  size_t body_len, body_cap;
  bw__http_header_t *headers;
  size_t nheaders, headers_cap;
  char *hbuf; /* every header name and value, back to back */
  size_t hlen, hcap;
};

/* Take one more reference on a request (bw_http_request_free drops one;
 * the last one frees it). Threads: any. */
void bw__http_request_ref(bw_http_request_t *r);

/* Response building (loop thread). Return 0 or -1 (out of memory). */
bw_http_response_t *bw__http_response_new(void);
void bw__http_response_clear_headers(bw_http_response_t *r);
int bw__http_response_add_header_line(bw_http_response_t *r, const char *line, size_t len);
/* Append body bytes; the caller checked the cap. */
int bw__http_response_append(bw_http_response_t *r, const char *data, size_t len, size_t hint);

/* Parse a Retry-After value (delta-seconds or HTTP-date) into ms from now
 * (now = now_s wall-clock seconds). Returns 0 if absent/invalid/past. */
int64_t bw__http_parse_retry_after(const char *value, int64_t now_s);

/* Redact a URL: userinfo -> "***", query and fragment dropped. Sets
 * *userinfo to a copy of "user:pass" (or NULL). Returns a new string or NULL. */
char *bw__http_redact_url(const char *url, char **userinfo);

/* Classification of a finished transfer into an error (NULL: success).
 * `too_large`: the write callback refused a body beyond the cap (an error
 * status then still wins, with the overflow as its cause).
 * `deadline_capped`: curl's timeout was set from the call's deadline. */
typedef struct bw__http_outcome {
  CURLcode rc;
  int status;
  bool too_large;
  bool deadline_capped;
  bool connected; /* a connection was established */
  uint64_t timeout_ms;
  uint64_t connect_timeout_ms;
  size_t max_response_bytes;
  const char *curl_errbuf; /* may be NULL or "" */
  const bw_http_response_t *resp; /* its Retry-After is read on an error status */
} bw__http_outcome_t;

bw_error_t *bw__http_classify(const bw_http_request_t *req, const bw__http_outcome_t *o,
                              bw_http_status_pred pred, void *pred_arg);
bool bw__http_default_status_is_error(int status, void *arg);

#endif
