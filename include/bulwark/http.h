/* bulwark HTTP client: libcurl's multi socket API on the runtime's reactor,
 * exposed as a bw_service_t (see bulwark/service.h).
 *
 *   bw_http_client_t *cli;
 *   bw_http_client_new(&cli, rt, NULL);
 *   bw_service_t *svc = bw_http_client_service(cli);     // borrowed
 *   bw_http_request_t *req;
 *   bw_http_request_new(&req, "GET", "http://127.0.0.1:8080/x");
 *   bw_call_new(&call, svc_or_stack, rt);
 *   bw_call_set_request(call, req, bw_http_request_destroy);
 *   bw_service_call(...);   // response: bw_http_response_t * (bw_call_response)
 *
 * A call's request is a bw_http_request_t, its response a
 * bw_http_response_t (destroy function bw_http_response_destroy).
 *
 * Errors (bw_call_error) are classified, the curl code as detail:
 *   BW_ERR_DNS        name resolution failed (curl 5, 6)
 *   BW_ERR_CONNECT    connection refused / unreachable (curl 7); a connect
 *                     timeout is BW_ERR_CONNECT over a BW_ERR_TIMEOUT cause
 *   BW_ERR_TLS        handshake, certificate, TLS setup (curl 35, 58-60, 77..)
 *   BW_ERR_TRANSPORT  send/receive failures, reset, empty reply (curl 52, 55, 56, 18)
 *   BW_ERR_TIMEOUT    no complete response in time (curl 28); the call's
 *                     deadline caps curl's timeout, the message says which
 *   BW_ERR_PROTOCOL   malformed reply, too many redirects (curl 8, 47, 61, 16, 92)
 *   BW_ERR_TOO_LARGE  the response body exceeds max_response_bytes (the
 *                     cap), detail = the cap; no response is delivered.
 *                     If the status is one the client treats as an error
 *                     (below), the call fails with that BW_ERR_HTTP_STATUS
 *                     instead (status as detail, Retry-After hint kept, so
 *                     a 503 with a large error page is still a retryable
 *                     503), over a BW_ERR_TOO_LARGE cause that names the
 *                     cap; the truncated body is dropped
 *   BW_ERR_INVALID_ARGUMENT  bad URL, unsupported scheme (curl 1, 3)
 *   BW_ERR_HTTP_STATUS  a status the client treats as an error (default: 5xx
 *                     and 429), detail = status; a Retry-After header
 *                     (delta-seconds or HTTP-date) becomes the error's
 *                     retry_after_ms hint
 *   BW_ERR_CANCELLED / BW_ERR_RUNTIME_SHUTDOWN as the service contract says.
 * Any other status is a response (err == NULL), including 4xx.
 *
 * SECRETS: error messages name the request as "METHOD scheme://host[:port]/path"
 * with any user:password removed and the query string dropped; curl's own
 * error text is scrubbed of the userinfo too.
 *
 * IDEMPOTENCY: GET, HEAD, PUT, DELETE, OPTIONS and TRACE are idempotent; any
 * other method only if bw_http_request_set_idempotent(req, true). A failed
 * call of a non-idempotent request is marked so the retry layer does not
 * replay it: see bw_http_call_is_idempotent(). */
#ifndef BULWARK_HTTP_H
#define BULWARK_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bw_http_client bw_http_client_t;
typedef struct bw_http_request bw_http_request_t;
typedef struct bw_http_response bw_http_response_t;

/* ---- Client --------------------------------------------------------------- */

/* Decides whether an HTTP status completes the call with BW_ERR_HTTP_STATUS. */
typedef bool (*bw_http_status_pred)(int status, void *arg);

typedef struct bw_http_client_opts {
  long max_host_connections;   /* 0: 64 (CURLMOPT_MAX_HOST_CONNECTIONS) */
  long max_total_connections;  /* 0: 256 (CURLMOPT_MAX_TOTAL_CONNECTIONS) */
  uint64_t connect_timeout_ms; /* 0: 10000; per request overrides */
  uint64_t timeout_ms;         /* 0: none (the call's deadline still caps it) */
  size_t max_response_bytes;   /* 0: 16 MiB; per request overrides */
  bw_http_status_pred status_is_error; /* NULL: status >= 500 || status == 429 */
  void *status_arg;
  /* NULL: "bulwark/0.1"; "": no User-Agent header (libcurl's default);
   * copied */
  const char *user_agent;
} bw_http_client_opts_t;

void bw_http_client_opts_init(bw_http_client_opts_t *opts);

/* Create a client on rt (its transfers run on rt's reactor loop). opts may
 * be NULL. The client holds no reference on rt: free the client before the
 * runtime, or shut the runtime down first (in-flight calls then complete
 * with BW_ERR_RUNTIME_SHUTDOWN).
 * Owns: *out is yours (bw_http_client_free).
 * Threads: any. Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY,
 * BW_ERR_RUNTIME_SHUTDOWN, BW_ERR_INTERNAL (curl init failed). */
bw_error_t *bw_http_client_new(bw_http_client_t **out, bw_runtime_t *rt,
                               const bw_http_client_opts_t *opts);

/* The client's service (borrowed: lives as long as the client; take a
 * reference with bw_service_ref to keep it longer). */
bw_service_t *bw_http_client_service(bw_http_client_t *c);

/* Drop the client: its service reference is released; transfers still in
 * flight continue until their calls complete. When the service's last
 * reference goes, the engine (curl multi, connections) is closed on the
 * reactor thread. A few bytes of loop-side state stay registered with the
 * runtime's reactor until it shuts down. Threads: any. NULL-safe. */
void bw_http_client_free(bw_http_client_t *c);

/* Counters (relaxed snapshots). Threads: any. */
typedef struct bw_http_client_stats {
  uint64_t started;   /* transfers handed to curl */
  uint64_t completed; /* transfers curl finished (any outcome) */
  uint64_t cancelled; /* transfers removed early (cancel, shutdown) */
  uint64_t active;    /* transfers currently held (easy handle alive) */
} bw_http_client_stats_t;
void bw_http_client_stats(const bw_http_client_t *c, bw_http_client_stats_t *out);

/* ---- Request -------------------------------------------------------------- */

/* A new request. method is copied and upper-cased ("get" -> "GET"); url is
 * copied. The request is immutable once a call using it has started (retries
 * and hedges replay it, possibly concurrently, read-only).
 * Owns: *out is yours (bw_http_request_free), or the call's after
 * bw_call_set_request(call, req, bw_http_request_destroy). The request is
 * reference counted: free drops your reference, and the client holds its
 * own while an attempt uses it, so a request set borrowed (req_free NULL)
 * may be freed as soon as its call completed, even if an attempt the
 * timeout cancelled is still being torn down (a BW_HTTP_BODY_BORROW body
 * must then still outlive that attempt).
 * Errors: BW_ERR_INVALID_ARGUMENT (NULL/empty method or url, method with
 * spaces or control characters), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_http_request_new(bw_http_request_t **out, const char *method, const char *url);
void bw_http_request_free(bw_http_request_t *req);  /* NULL-safe */
void bw_http_request_destroy(void *req);            /* bw_destroy_fn form */

/* Add a header line "Name: value" (copied). "Name:" removes a header curl
 * would add; "Name;" sends it empty (curl conventions).
 * Errors: BW_ERR_INVALID_ARGUMENT (no colon/semicolon, CR or LF inside),
 * BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_http_request_add_header(bw_http_request_t *req, const char *line);

typedef enum bw_http_body_mode {
  BW_HTTP_BODY_COPY = 0,  /* copied now */
  BW_HTTP_BODY_BORROW = 1 /* the caller keeps data unchanged until the request is freed */
} bw_http_body_mode_t;
/* Set the body (replaces any previous one). Sent with Content-Length; it
 * is kept in memory, so every retry sends it again. len 0 sends an empty
 * body. Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_http_request_set_body(bw_http_request_t *req, const void *data, size_t len,
                                     bw_http_body_mode_t mode);

/* Per-request options (0 = client default). */
void bw_http_request_set_connect_timeout_ms(bw_http_request_t *req, uint64_t ms);
void bw_http_request_set_timeout_ms(bw_http_request_t *req, uint64_t ms);
void bw_http_request_set_max_response_bytes(bw_http_request_t *req, size_t bytes);
/* Follow redirects (up to max_redirects, 0 = 10). Default: off. */
void bw_http_request_set_follow_redirects(bw_http_request_t *req, bool on, long max_redirects);
/* TLS peer and host verification. Default: on. */
void bw_http_request_set_tls_verify(bw_http_request_t *req, bool on);
/* Mark a request with a non-idempotent method as safe to replay. */
void bw_http_request_set_idempotent(bw_http_request_t *req, bool idempotent);
bool bw_http_request_is_idempotent(const bw_http_request_t *req);

const char *bw_http_request_method(const bw_http_request_t *req);
/* The URL with user:password replaced by "***" and no query (safe to log). */
const char *bw_http_request_url_redacted(const bw_http_request_t *req);

/* For retry predicates: false when `call`'s request is a bw_http_request_t
 * that is not idempotent; true otherwise (not an HTTP call, or idempotent).
 * Works on the call given to a layer (the request is shared down the stack). */
bool bw_http_call_is_idempotent(const bw_call_t *call);
/* A failed call of a non-idempotent request whose request may have reached
 * the server (anything but DNS, connect and TLS failures) completes with
 * its classified error wrapped in BW_ERR_NOT_ALLOWED with this detail, so a
 * retry predicate that never retries BW_ERR_NOT_ALLOWED leaves it alone.
 * bw_http_error_is_non_idempotent tells whether the chain carries the mark. */
#define BW_HTTP_DETAIL_NON_IDEMPOTENT 0x48545450 /* "HTTP" */
bool bw_http_error_is_non_idempotent(const bw_error_t *err);

/* ---- Response ----------------------------------------------------------- */

/* A response made by the program, e.g. by a fallback function: status and
 * a copy of body (len bytes, may be 0), no headers.
 * Owns: *out is yours (bw_http_response_free / bw_http_response_destroy).
 * Errors: BW_ERR_INVALID_ARGUMENT (status outside 100..999 or NULL body
 * with len > 0), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_http_response_new(bw_http_response_t **out, int status, const void *body,
                                 size_t len);
/* Add a header to a response made with bw_http_response_new (copied).
 * Header strings returned earlier for this response become invalid.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_http_response_add_header(bw_http_response_t *resp, const char *name,
                                        const char *value);

int bw_http_response_status(const bw_http_response_t *resp);
/* The body: *len bytes (may hold NULs), followed by one extra NUL so text
 * bodies can be used as C strings; lives as long as resp. *len may be NULL. */
const char *bw_http_response_body(const bw_http_response_t *resp, size_t *len);
/* First header named `name` (case-insensitive), value trimmed; NULL if
 * absent. Headers are those of the final response (after redirects). */
const char *bw_http_response_header(const bw_http_response_t *resp, const char *name);
size_t bw_http_response_header_count(const bw_http_response_t *resp);
/* The i-th header; false if i is out of range. Borrowed strings. */
bool bw_http_response_header_at(const bw_http_response_t *resp, size_t i, const char **name,
                                const char **value);
/* Take the body (NUL-terminated as above): *len set; free it with
 * bw_http_body_free. The response keeps an empty body. */
char *bw_http_response_take_body(bw_http_response_t *resp, size_t *len);
void bw_http_body_free(char *body);
void bw_http_response_free(bw_http_response_t *resp); /* NULL-safe */
void bw_http_response_destroy(void *resp);           /* bw_destroy_fn form */

#ifdef __cplusplus
}
#endif
#endif
