/* libcurl multi *socket* API driven by one libuv loop (internal).
 *
 * An engine owns one CURLM, one uv_timer_t and one uv_poll_t per socket curl
 * asks to watch. Every function here runs on the loop's thread only, and so
 * does every easy handle given to it (DESIGN.md: easy handles are touched
 * only on the loop thread).
 *
 * A transfer is a bw__curl_xfer_t embedded in the caller's object: set
 * `easy` and `done`, then bw__curlm_add(). `done` runs once, on the loop
 * thread, after curl finished the transfer and the easy handle was removed
 * from the multi (the caller may reuse or free it inside done). A transfer
 * removed with bw__curlm_remove() gets no done call. */
#ifndef BW_CLIENTS_HTTP_MULTI_H
#define BW_CLIENTS_HTTP_MULTI_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

typedef struct bw__curlm bw__curlm_t;
typedef struct bw__curl_xfer bw__curl_xfer_t;

struct bw__curl_xfer {
  CURL *easy;
  void (*done)(bw__curl_xfer_t *x, CURLcode rc);
  /* private to the engine */
  bw__curl_xfer_t *prev, *next;
  bool active;
};

typedef struct bw__curlm_limits {
  long max_host_connections;  /* 0: 64 */
  long max_total_connections; /* 0: 256 */
  long max_cached_connections; /* 0: max_total_connections */
} bw__curlm_limits_t;

/* Once per process: curl_global_init, and SIGPIPE ignored if it was at its
 * default action. Thread-safe. Returns 0 or -1. */
int bw__curl_global_init(void);

/* Create an engine on `loop`. lim may be NULL. Returns 0 or a negative
 * BW_E-style code (-1). */
int bw__curlm_new(bw__curlm_t **out, uv_loop_t *loop, const bw__curlm_limits_t *lim);

/* Start a transfer. Returns 0, or -1 (curl refused the handle; done will
 * not run). */
int bw__curlm_add(bw__curlm_t *m, bw__curl_xfer_t *x);
/* Stop a transfer at once (it may be anywhere in its life); no done call.
 * The easy handle is the caller's again. No-op if not active. */
void bw__curlm_remove(bw__curlm_t *m, bw__curl_xfer_t *x);

/* An easy handle from the engine's pool, or a new one; NULL when out of
 * memory. *primed (may be NULL) says whether it still has the options its
 * last user set (it was put back with keep_options), else it is at curl's
 * defaults. */
CURL *bw__curlm_easy_get(bw__curlm_t *m, bool *primed);
/* Give an easy handle back to the pool (or clean it up if the pool is
 * full). keep_options: skip curl_easy_reset, so the next user that sets
 * the same options again need not set them all (the owner decides which
 * requests leave a handle in a state it can reuse). */
void bw__curlm_easy_put(bw__curlm_t *m, CURL *easy, bool keep_options);

/* Call fn(arg) on the loop thread after each batch of done callbacks: once
 * per loop iteration in which transfers finished on socket events (a
 * uv_check after the poll phase, so every socket that was ready in one epoll
 * wake-up is one batch), at the end of a timer event that finished some, and
 * at the end of bw__curlm_close, so the owner can hand a whole batch of
 * results to another thread at once. */
void bw__curlm_set_after(bw__curlm_t *m, void (*fn)(void *arg), void *arg);

/* Number of transfers added and not yet done/removed. */
size_t bw__curlm_active(const bw__curlm_t *m);

/* Close: every still active transfer's done runs with
 * CURLE_ABORTED_BY_CALLBACK, the multi is cleaned up (connections close),
 * and the libuv handles are closed; the engine memory is freed by the last
 * close callback, so keep running the loop afterwards. NULL-safe. */
void bw__curlm_close(bw__curlm_t *m);

#endif
