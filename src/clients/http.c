/* The HTTP client service: libcurl multi on the runtime's reactor loop.
 *
 * Design notes:
 * - Objects: the client (user handle) owns a reference on its service; the
 *   service impl is `core_t` (options; freed when the service's last
 *   reference goes, i.e. after the last call). The loop-side state
 *   (`loopside_t`: the curl engine and the counters) is shared by the core
 *   and the reactor's close hook and is reference counted, because either
 *   may go first: the client can be freed while the runtime lives on, or the
 *   runtime shut down while the client is still held.
 * - Per call, the state lives in the call's pooled scratch (hstate_t, no
 *   malloc per call besides curl's and the response). A call reference is
 *   held for each reactor op in flight and for the curl transfer while it is
 *   active (layer.h "Memory safety rule"), so the scratch stays valid while
 *   the loop can touch it.
 * - The request is only borrowed from the call, and a borrowed one may be
 *   freed by its owner as soon as the (parent) call completed, e.g. by a
 *   timeout while the start op is still queued on the loop. So ops->call
 *   takes a reference on the request (it is refcounted, http_message.c)
 *   and the loop thread drops it when the transfer is released or the
 *   start gives up; the loop never reads a request it does not hold.
 * - Everything that touches an easy handle runs on the loop thread: the start
 *   op, curl's callbacks, done, and the cancel op. Ops from one runtime run
 *   in submission order on that thread, so the loop-side flags (started,
 *   finished, cancel_seen) need no atomics: a cancel op that arrives before
 *   the start op marks cancel_seen and the start op then does nothing.
 * - Deadline: curl's CURLOPT_TIMEOUT_MS is the smaller of the request's, the
 *   client's and the call's remaining budget (computed on the loop thread
 *   just before the transfer starts).
 * - Completions are batched: every call that finished during one loop
 *   event (socket or timer) is completed by one deferred function on a
 *   worker, so 64 responses read in one wake-up cost one worker wake-up, not
 *   64. The transfer (easy handle) is released before, on the loop thread.
 * - Freeing the client (last service reference) closes the engine on the
 *   loop and removes the close hook there (bw__reactor_off_close).
 * - Shutdown: the reactor close hook closes the engine; transfers still
 *   active are aborted and their calls complete with BW_ERR_RUNTIME_SHUTDOWN.
 *   After that, new calls complete with BW_ERR_RUNTIME_SHUTDOWN at once. */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bulwark/layer.h"
#include "clients/http_internal.h"
#include "clients/http_multi.h"
#include "core/alloc.h"
#include "layers/service_internal.h"
#include "runtime/internal.h"

#define CONTAINER_OF(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))

typedef struct loopside {
  atomic_int refs;     /* core + reactor close hook */
  bw__curlm_t *engine; /* loop thread only; NULL until first use */
  bool closed;         /* loop thread only: no more transfers */
  bw__curlm_limits_t limits;
  bw_runtime_t *rt;
  struct hstate *batch; /* loop thread only: finished calls to complete */
  atomic_uint_fast64_t started, completed, cancelled, active;
} loopside_t;

typedef struct core {
  bw_runtime_t *rt;
  loopside_t *ls;
  bw__reactor_op_t destroy_op;
  uint64_t connect_timeout_ms, timeout_ms;
  size_t max_response_bytes;
  bw_http_status_pred status_is_error;
  void *status_arg;
  char *user_agent;
} core_t;

struct bw_http_client {
  core_t *core;
  bw_service_t *svc;
};

typedef struct hstate {
  bw__curl_xfer_t x;
  bw__reactor_op_t start_op, cancel_op;
  bw_call_t *call;
  core_t *core;
  bw_http_request_t *req; /* a reference of ours (put_req) */
  bw_http_response_t *resp;
  size_t cap;
  uint64_t timeout_ms, connect_timeout_ms;
  bool started, finished, cancel_seen, too_large, deadline_capped, oom;
  bool plain; /* set only the options every request sets (see set_options) */
  atomic_bool published; /* seq_cst: pairs with the load in http_cancel */
  struct hstate *bnext;  /* loopside batch link */
  bw_http_response_t *out_resp;
  bw_error_t *out_err;
  char errbuf[CURL_ERROR_SIZE];
} hstate_t;

/* A call reference we hold (op in flight, active transfer) comes with a
 * reference on the http service: a child call's memory lives in the
 * service's pool, and the stack above may release the service as soon as
 * the call completed, while we still hold the call. Drop the call first,
 * then the service (the pool must outlive the call). */
static void hold(bw_call_t *call) {
  bw_service_ref(bw__call_pool_service(call));
  bw_call_ref(call);
}

static void drop(bw_call_t *call) {
  bw_service_t *svc = bw__call_pool_service(call);
  bw_call_unref(call);
  bw_service_release(svc);
}

/* ---- loop-side lifetime ----------------------------------------------------- */

static void loopside_unref(loopside_t *ls) {
  /* acq_rel pairs with the other holder's decrement: the last one frees */
  if (atomic_fetch_sub_explicit(&ls->refs, 1, memory_order_acq_rel) == 1) bw__free(ls);
}

static void loopside_close(loopside_t *ls) {
  if (ls->closed) return;
  ls->closed = true;
  bw__curlm_close(ls->engine); /* aborts active transfers (done runs) */
  ls->engine = NULL;
}

/* Reactor close hook (loop thread, runtime shutting down). */
static void on_reactor_close(void *arg, uv_loop_t *loop) {
  (void)loop;
  loopside_t *ls = arg;
  loopside_close(ls);
  loopside_unref(ls);
}

/* ---- curl callbacks (loop thread) -------------------------------------------- */

/* The size cap counts the body bytes delivered here, i.e. only where a body
 * is downloaded: not for HEAD, a bodyless status, or a redirect curl
 * follows (it skips that body without calling us). curl's
 * CURLOPT_MAXFILESIZE is not used: it checks every Content-Length, those
 * too. A body announced larger than the cap is refused at its first bytes,
 * before anything is buffered. curl delivers the header block (on_header)
 * before any body byte, so when we refuse, the status and Retry-After are
 * known: on_done reads CURLINFO_RESPONSE_CODE and the classifier keeps an
 * error status as the outcome, the overflow as its cause. */
static size_t on_write(char *data, size_t size, size_t n, void *ud) {
  hstate_t *st = ud;
  size_t len = size * n;
  size_t hint = 0;
  if (st->resp->body_cap == 0) {
    /* (the final response's length: -1 when absent or chunked) */
    curl_off_t cl = -1;
    curl_easy_getinfo(st->x.easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
    if (cl > 0 && (uint64_t)cl > st->cap) {
      st->too_large = true;
      return 0;
    }
    if (cl > 0) hint = (size_t)cl;
  }
  if (st->resp->body_len + len > st->cap) {
    st->too_large = true;
    return 0; /* CURLE_WRITE_ERROR: stop before allocating more */
  }
  if (bw__http_response_append(st->resp, data, len, hint) != 0) {
    st->oom = true;
    return 0;
  }
  return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud) {
  hstate_t *st = ud;
  size_t len = size * n;
  if (bw__http_response_add_header_line(st->resp, data, len) != 0) {
    st->oom = true;
    return 0;
  }
  return len;
}

/* Drop our request reference (loop thread, or http_call's early exits). */
static void put_req(hstate_t *st) {
  bw_http_request_free(st->req);
  st->req = NULL;
}

/* Release the transfer's resources: easy handle back to the pool, partial
 * response freed. Done before completing the call, so a caller that sees
 * the completion also sees the transfer gone (stats.active). */
static void release_transfer(hstate_t *st) {
  loopside_t *ls = st->core->ls;
  st->finished = true;
  if (ls->engine) bw__curlm_easy_put(ls->engine, st->x.easy, st->plain);
  else if (st->x.easy) curl_easy_cleanup(st->x.easy);
  st->x.easy = NULL;
  bw_http_response_free(st->resp);
  st->resp = NULL;
  put_req(st);
  atomic_fetch_sub_explicit(&ls->active, 1, memory_order_relaxed);
}

/* Release and drop the call reference the transfer held. Touch nothing of
 * st afterwards. */
static void finish(hstate_t *st) {
  release_transfer(st);
  drop(st->call);
}

static void on_done(bw__curl_xfer_t *x, CURLcode rc) {
  hstate_t *st = CONTAINER_OF(x, hstate_t, x);
  core_t *cc = st->core;
  loopside_t *ls = cc->ls;
  bw_error_t *err;
  if (rc == CURLE_ABORTED_BY_CALLBACK && ls->closed) {
    atomic_fetch_add_explicit(&ls->cancelled, 1, memory_order_relaxed);
    err = bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "http: %s %s: runtime shut down",
                       st->req->method, st->req->url_redacted);
  } else if (st->oom) {
    atomic_fetch_add_explicit(&ls->completed, 1, memory_order_relaxed);
    err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
  } else {
    atomic_fetch_add_explicit(&ls->completed, 1, memory_order_relaxed);
    long status = 0;
    curl_off_t pretransfer = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(x->easy, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
    st->resp->status = (int)status;
    bw__http_outcome_t o = {
        .rc = rc,
        .status = (int)status,
        .too_large = st->too_large,
        .deadline_capped = st->deadline_capped,
        .connected = pretransfer > 0 || status > 0,
        .timeout_ms = st->timeout_ms,
        .connect_timeout_ms = st->connect_timeout_ms,
        .max_response_bytes = st->cap,
        .curl_errbuf = st->errbuf,
        .resp = st->resp,
    };
    err = bw__http_classify(st->req, &o, cc->status_is_error, cc->status_arg);
    if (err && !st->req->idempotent && !bw_error_is(err, BW_ERR_DNS) &&
        !bw_error_is(err, BW_ERR_CONNECT) && !bw_error_is(err, BW_ERR_TLS)) {
      /* the request may have reached the server: mark it as not replayable */
      err = bw_error_wrap(err, BW_ERR_NOT_ALLOWED, BW_HTTP_DETAIL_NON_IDEMPOTENT,
                          "http: %s is not idempotent, not replayed", st->req->method);
    }
  }
  bw_call_t *call = st->call;
  bw_http_response_t *resp = err ? NULL : st->resp;
  if (resp) st->resp = NULL;
  release_transfer(st);
  if (bw_call_runtime(call) == ls->rt) {
    /* batched: flush_batch hands every call finished in this loop event to
     * one worker at once (one wake-up instead of one per call) */
    st->out_resp = resp;
    st->out_err = err;
    st->bnext = ls->batch;
    ls->batch = st;
    return;
  }
  if (!err) bw_call_complete(call, resp, bw_http_response_destroy, NULL);
  else bw_call_complete(call, NULL, NULL, err);
  drop(call);
}

/* On a worker (or inline if the runtime refuses deferred work): complete
 * each call of a batch and drop the reference its transfer held. */
static void complete_batch(void *arg) {
  hstate_t *next;
  for (hstate_t *st = arg; st; st = next) {
    next = st->bnext; /* st may be recycled once the call is dropped */
    bw_call_t *call = st->call;
    bw_http_response_t *resp = st->out_resp;
    bw_error_t *err = st->out_err;
    st->out_resp = NULL;
    st->out_err = NULL;
    st->bnext = NULL;
    if (!err) bw_call_complete(call, resp, bw_http_response_destroy, NULL);
    else bw_call_complete(call, NULL, NULL, err);
    drop(call);
  }
}

/* Engine "after" hook (loop thread): after each batch of done callbacks. */
static void flush_batch(void *arg) {
  loopside_t *ls = arg;
  hstate_t *head = ls->batch;
  if (!head) return;
  ls->batch = NULL;
  if (bw__runtime_defer(ls->rt, complete_batch, head) != 0) complete_batch(head);
}

/* ---- reactor ops (loop thread) ----------------------------------------------- */

static void fail_start(hstate_t *st, bw_error_t *err) {
  put_req(st);
  bw_call_complete(st->call, NULL, NULL, err);
  drop(st->call);
}

static uint64_t pick(uint64_t req, uint64_t dflt) { return req ? req : dflt; }

/* A GET without body, extra headers or redirects, verifying TLS. */
static bool is_plain(const bw_http_request_t *req) {
  return strcmp(req->method, "GET") == 0 && !req->body && !req->headers &&
         !req->follow_redirects && req->tls_verify;
}

/* The transfer's curl options. A handle that served a plain request
 * comes back from the pool with its options kept (primed): a plain
 * request then sets only what differs per request, and every option any
 * request sets is in that list or makes the request not plain (a handle
 * that served one is reset before reuse). Saves curl_easy_reset and the
 * client-wide options' copies on the loop thread for the common GET. */
static void set_options(hstate_t *st, CURL *e, bool primed) {
  const core_t *cc = st->core;
  const bw_http_request_t *req = st->req;
  st->plain = is_plain(req);
  /* every request */
  curl_easy_setopt(e, CURLOPT_URL, req->url);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, st->errbuf);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, st);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, st);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)st->connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)st->timeout_ms); /* 0: none */
  if (!primed) { /* the same for every request of this client */
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_USERAGENT, cc->user_agent);
  }
  if (st->plain) return;
  if (req->headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, req->headers);
  if (req->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
  }
  if (strcmp(req->method, "HEAD") == 0) {
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (!(strcmp(req->method, "GET") == 0 && !req->body) &&
             !(strcmp(req->method, "POST") == 0 && req->body)) {
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method);
  }
  if (req->follow_redirects) {
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, req->max_redirects);
  }
  if (!req->tls_verify) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
}

static void start_op(bw__reactor_op_t *op, uv_loop_t *loop) {
  hstate_t *st = CONTAINER_OF(op, hstate_t, start_op);
  core_t *cc = st->core;
  loopside_t *ls = cc->ls;
  const bw_http_request_t *req = st->req;
  if (st->cancel_seen) { /* the cancel op ran first: nothing to start */
    put_req(st);
    drop(st->call);
    return;
  }
  if (ls->closed) {
    fail_start(st, bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "http: %s %s: runtime shut down",
                                req->method, req->url_redacted));
    return;
  }
  if (!ls->engine) {
    if (bw__curlm_new(&ls->engine, loop, &ls->limits) != 0) {
      fail_start(st, bw_error_new(BW_ERR_INTERNAL, 0, "http: cannot create the curl multi handle"));
      return;
    }
    bw__curlm_set_after(ls->engine, flush_batch, ls);
  }
  /* deadline: remaining budget caps curl's timeout */
  st->timeout_ms = pick(req->timeout_ms, cc->timeout_ms);
  int64_t left_ns = bw_call_remaining_ns(st->call);
  if (left_ns != INT64_MAX) {
    if (left_ns <= 0) {
      fail_start(st, bw_error_new(BW_ERR_TIMEOUT, 0,
                                  "http: %s %s: the call's deadline passed before it started",
                                  req->method, req->url_redacted));
      return;
    }
    uint64_t left_ms = ((uint64_t)left_ns + 999999u) / 1000000u;
    if (st->timeout_ms == 0 || left_ms < st->timeout_ms) {
      st->timeout_ms = left_ms;
      st->deadline_capped = true;
    }
  }
  st->connect_timeout_ms = pick(req->connect_timeout_ms, cc->connect_timeout_ms);
  st->cap = req->max_response_bytes ? req->max_response_bytes : cc->max_response_bytes;
  st->resp = bw__http_response_new();
  bool primed;
  CURL *e = bw__curlm_easy_get(ls->engine, &primed);
  if (!st->resp || !e) {
    if (e) bw__curlm_easy_put(ls->engine, e, primed);
    bw_http_response_free(st->resp);
    st->resp = NULL;
    fail_start(st, bw_error_static(BW_ERR_OUT_OF_MEMORY));
    return;
  }
  st->x.easy = e;
  st->x.done = on_done;
  st->errbuf[0] = 0;
  set_options(st, e, primed);
  st->started = true;
  atomic_fetch_add_explicit(&ls->active, 1, memory_order_relaxed);
  if (bw__curlm_add(ls->engine, &st->x) != 0) {
    st->started = false;
    atomic_fetch_sub_explicit(&ls->active, 1, memory_order_relaxed);
    bw__curlm_easy_put(ls->engine, e, false);
    st->x.easy = NULL;
    bw_http_response_free(st->resp);
    st->resp = NULL;
    fail_start(st, bw_error_new(BW_ERR_INTERNAL, 0, "http: curl refused the transfer"));
    return;
  }
  atomic_fetch_add_explicit(&ls->started, 1, memory_order_relaxed);
  /* the call reference taken in http_call now belongs to the transfer */
}

static void cancel_op(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  hstate_t *st = CONTAINER_OF(op, hstate_t, cancel_op);
  loopside_t *ls = st->core->ls;
  bw_call_t *call = st->call;
  st->cancel_seen = true;
  if (st->started && !st->finished) {
    /* remove at once: the connection is closed, the easy handle reused */
    if (ls->engine) bw__curlm_remove(ls->engine, &st->x);
    atomic_fetch_add_explicit(&ls->cancelled, 1, memory_order_relaxed);
    finish(st); /* drops the transfer's reference */
  }
  drop(call); /* the cancel op's own reference */
}

/* ---- service ops --------------------------------------------------------------- */

static void http_call(bw_service_t *svc, bw_call_t *call) {
  core_t *cc = bw_service_impl(svc);
  hstate_t *st = bw_call_state(call);
  bw_http_request_t *req = bw_call_request(call);
  if (!req || req->magic != BW_HTTP_REQUEST_MAGIC) {
    bw_call_complete(call, NULL, NULL,
                     bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                                  "http: the call's request is not a bw_http_request_t"));
    return;
  }
  memset(st, 0, sizeof *st);
  st->call = call;
  st->core = cc;
  bw__http_request_ref(req); /* dropped on the loop thread (put_req) */
  st->req = req;
  st->start_op.fn = start_op;
  hold(call); /* for the start op, then the transfer */
  /* Publish, then check: a cancel that did not see `published` completed
   * the call before, so we see it done here and start nothing; one that did
   * see it queues a cancel op, which the loop orders with the start op. */
  atomic_store(&st->published, true);
  if (bw_call_is_done(call)) {
    put_req(st);
    drop(call);
    return;
  }
  if (bw__reactor_submit(cc->rt, &st->start_op) != 0) {
    bw_call_complete(call, NULL, NULL,
                     bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "http: %s %s: runtime shut down",
                                  req->method, req->url_redacted));
    put_req(st);
    drop(call);
  }
}

static void http_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)reason;
  core_t *cc = bw_service_impl(svc);
  hstate_t *st = bw_call_state(call);
  if (!atomic_load(&st->published)) return; /* http_call will see the call done */
  st->cancel_op.fn = cancel_op;
  hold(call);
  /* After shutdown the close hook already aborted the transfer. */
  if (bw__reactor_submit(cc->rt, &st->cancel_op) != 0) drop(call);
}

static void destroy_op(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  core_t *cc = CONTAINER_OF(op, core_t, destroy_op);
  loopside_t *ls = cc->ls;
  loopside_close(ls);
  /* An op runs before shutdown takes the hooks, so removing ours works
   * here (a client freed before its runtime leaves nothing registered);
   * the hook's loopside reference is then ours to drop. */
  if (bw__reactor_off_close(cc->rt, on_reactor_close, ls)) loopside_unref(ls);
  loopside_unref(ls);
  bw__free(cc->user_agent);
  bw__free(cc);
}

static void core_destroy(void *impl) {
  core_t *cc = impl;
  /* the engine must be closed on the loop thread */
  cc->destroy_op.fn = destroy_op;
  if (bw__reactor_submit(cc->rt, &cc->destroy_op) != 0) {
    /* reactor already shut down: its close hook closed the engine */
    loopside_unref(cc->ls);
    bw__free(cc->user_agent);
    bw__free(cc);
  }
}

static const bw_service_ops_t http_ops = {
    .kind = "http",
    .call_state_size = sizeof(hstate_t),
    .call = http_call,
    .cancel = http_cancel,
    .destroy = core_destroy,
};

/* ---- public ------------------------------------------------------------------- */

void bw_http_client_opts_init(bw_http_client_opts_t *opts) {
  if (opts) memset(opts, 0, sizeof *opts);
}

bw_error_t *bw_http_client_new(bw_http_client_t **out, bw_runtime_t *rt,
                               const bw_http_client_opts_t *opts) {
  if (!out || !rt) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "http: client needs a runtime");
  bw_http_client_opts_t o;
  bw_http_client_opts_init(&o);
  if (opts) o = *opts;
  if (bw__curl_global_init() != 0)
    return bw_error_new(BW_ERR_INTERNAL, 0, "http: curl_global_init failed");
  bw_http_client_t *c = bw__calloc(1, sizeof *c);
  core_t *cc = bw__calloc(1, sizeof *cc);
  loopside_t *ls = bw__calloc(1, sizeof *ls);
  if (cc) cc->user_agent = bw__strdup(o.user_agent ? o.user_agent : "bulwark/0.1");
  if (!c || !cc || !ls || !cc->user_agent) {
    if (cc) bw__free(cc->user_agent);
    bw__free(c);
    bw__free(cc);
    bw__free(ls);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  atomic_init(&ls->refs, 2);
  ls->limits.max_host_connections = o.max_host_connections;
  ls->limits.max_total_connections = o.max_total_connections;
  cc->rt = rt;
  cc->ls = ls;
  ls->rt = rt;
  cc->connect_timeout_ms = o.connect_timeout_ms ? o.connect_timeout_ms : 10000;
  cc->timeout_ms = o.timeout_ms;
  cc->max_response_bytes = o.max_response_bytes ? o.max_response_bytes : BW_HTTP_DEFAULT_MAX_RESPONSE;
  cc->status_is_error = o.status_is_error;
  cc->status_arg = o.status_arg;
  if (bw__reactor_on_close(rt, on_reactor_close, ls) != 0) {
    bw__free(cc->user_agent);
    bw__free(c);
    bw__free(cc);
    bw__free(ls);
    return bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "http: the runtime is shut down");
  }
  /* from here the close hook holds one loopside reference */
  bw_error_t *err = bw_service_new(&c->svc, &http_ops, cc); /* destroys cc on error */
  if (err) {
    bw__free(c);
    return err;
  }
  c->core = cc;
  *out = c;
  return NULL;
}

bw_service_t *bw_http_client_service(bw_http_client_t *c) { return c ? c->svc : NULL; }

void bw_http_client_free(bw_http_client_t *c) {
  if (!c) return;
  bw_service_release(c->svc);
  bw__free(c);
}

void bw_http_client_stats(const bw_http_client_t *c, bw_http_client_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (!c) return;
  loopside_t *ls = c->core->ls;
  out->started = atomic_load_explicit(&ls->started, memory_order_relaxed);
  out->completed = atomic_load_explicit(&ls->completed, memory_order_relaxed);
  out->cancelled = atomic_load_explicit(&ls->cancelled, memory_order_relaxed);
  out->active = atomic_load_explicit(&ls->active, memory_order_relaxed);
}

bool bw_http_call_is_idempotent(const bw_call_t *call) {
  const bw_http_request_t *r = call ? bw_call_request(call) : NULL;
  if (!r || r->magic != BW_HTTP_REQUEST_MAGIC) return true;
  return r->idempotent;
}

bool bw_http_error_is_non_idempotent(const bw_error_t *err) {
  for (const bw_error_t *e = err; e; e = bw_error_cause(e))
    if (bw_error_kind(e) == BW_ERR_NOT_ALLOWED && bw_error_detail(e) == BW_HTTP_DETAIL_NON_IDEMPOTENT)
      return true;
  return false;
}
