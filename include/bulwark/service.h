/* bulwark services and calls: the contract every layer and client follows.
 *
 * A SERVICE (bw_service_t) is a reference-counted object that handles calls.
 * A CALL (bw_call_t) is one request in flight. The library pools calls per
 * service; the user never lays out the struct (STYLE.md: nng_aio, not uv_req).
 *
 * Life of a call (user side):
 *
 *   bw_call_t *c;
 *   bw_call_new(&c, svc, rt);                     // pooled, no malloc when warm
 *   bw_call_set_request(c, req, req_free);        // the call owns req now
 *   bw_call_set_timeout_ms(c, 500);               // optional deadline
 *   bw_service_call(svc, c, on_done, arg);        // returns at once
 *   ...
 *   static void on_done(bw_call_t *c, const bw_error_t *err, void *arg) {
 *     if (!err) use(bw_call_response(c));         // or bw_call_take_response
 *     bw_call_free(c);                            // allowed here
 *   }
 *
 * EXACTLY ONCE. on_done runs exactly once per bw_service_call: with the
 * response (err == NULL) or with an error. A timeout racing the response, a
 * cancel racing the response, several bw_call_cancel calls, or the runtime
 * shutting down mid-call (err kind BW_ERR_RUNTIME_SHUTDOWN) all still give
 * one completion. A response that loses such a race is freed with its
 * destroy function, never delivered.
 *
 * WHERE THE CALLBACK RUNS. Always on a worker of the call's runtime, never
 * inside the bw_service_call that submitted it, never with a bulwark lock
 * held. A service that completes synchronously costs one deferral
 * (bw__runtime_defer) on the root call only. Exception: once the runtime is
 * shutting down and can no longer run deferred work, the completion runs on
 * the thread that finishes the call (it still runs exactly once).
 *
 * DEADLINES are absolute times on the runtime clock (bw_runtime_now_ns), 0
 * means none. They flow inward: a child call starts with its parent's
 * deadline and can only shorten it. The deadline is information (the retry
 * layer will not start what cannot finish, the HTTP client caps curl's
 * timeout); enforcement is the timeout layer's job.
 *
 * CANCELLATION flows inward: bw_call_cancel completes the call at once with
 * BW_ERR_CANCELLED (exactly once) and tells the service handling it, which
 * cancels its own children and timers and releases queued permits.
 *
 * Threads: every function here may be called from any thread unless noted.
 * Writing a service or a layer: see bulwark/layer.h. */
#ifndef BULWARK_SERVICE_H
#define BULWARK_SERVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bw_service bw_service_t;
typedef struct bw_call bw_call_t;

/* Frees a request or response. */
typedef void (*bw_destroy_fn)(void *p);

/* Completion callback: the call, then the status (NULL on success; borrowed
 * for the callback's duration, bw_error_ref() to keep it), then the user
 * pointer given with the callback. */
typedef void (*bw_call_cb)(bw_call_t *call, const bw_error_t *err, void *arg);

/* ---- Services ------------------------------------------------------------ */

/* Take / drop a reference. The last release frees the service once no call
 * of it is alive (calls keep their service alive). A worker that recycled
 * one of its calls may keep that call's reference for its next call until
 * the end of its loop turn: the service is then freed there, on that
 * worker, a moment after your release. NULL-safe. */
bw_service_t *bw_service_ref(bw_service_t *svc);
void bw_service_release(bw_service_t *svc);

/* What kind of service this is ("fn", "http", "retry", "stack"...): static string. */
const char *bw_service_kind(const bw_service_t *svc);
/* The stack name given to bw_stack_build, or NULL for other services. */
const char *bw_service_name(const bw_service_t *svc);

/* Start `call` on `svc`. Returns at once; cb(call, err, arg) runs exactly
 * once later (see "WHERE THE CALLBACK RUNS"). `call` must come from
 * bw_call_new(…, svc, …) and not be started yet.
 * Owns: the call stays yours; keep it until cb, free it in or after cb.
 * Threads: any (the completion is moved to a worker of the call's runtime).
 * Errors: BW_ERR_INVALID_ARGUMENT (NULL, wrong service, started twice),
 *         then cb is NOT called. Every other failure (shutdown, rejection,
 *         cancelled before start) goes through cb. */
bw_error_t *bw_service_call(bw_service_t *svc, bw_call_t *call, bw_call_cb cb, void *arg);

/* ---- Calls --------------------------------------------------------------- */

/* Get a call for `svc` from its pool. rt is the runtime the call runs and
 * completes on; NULL means bw_runtime_current().
 * Owns: refs svc; *out is yours, give it back with bw_call_free().
 * Steady state: no malloc (the pool grows on demand, never shrinks until
 * the service is freed).
 * Errors: BW_ERR_INVALID_ARGUMENT (NULL, no runtime), BW_ERR_OUT_OF_MEMORY,
 *         BW_ERR_RUNTIME_SHUTDOWN. */
bw_error_t *bw_call_new(bw_call_t **out, bw_service_t *svc, bw_runtime_t *rt);

/* Give the call back. Frees the request and an untaken response with their
 * destroy functions (when its last reference goes: at once, or right after
 * its callback returns if freed elsewhere during it). If the call is still in flight it is cancelled first
 * and its callback will NOT run. Safe inside the call's own callback.
 * NULL-safe. Do not touch the call afterwards. */
void bw_call_free(bw_call_t *call);

/* Request: set before bw_service_call. The call owns `req` and frees it with
 * req_free (may be NULL: borrowed) in bw_call_free. Layers and inner attempts
 * only borrow it, so retry can replay it. */
void bw_call_set_request(bw_call_t *call, void *req, bw_destroy_fn req_free);
void *bw_call_request(const bw_call_t *call);

/* Response after a successful completion (NULL otherwise). Borrowed: freed
 * by bw_call_free unless taken. take_response hands it (and its destroy
 * function, via *free_fn when not NULL) to the caller. */
void *bw_call_response(const bw_call_t *call);
void *bw_call_take_response(bw_call_t *call, bw_destroy_fn *free_fn);

/* The error the call completed with (borrowed, NULL on success or before
 * completion). Valid until bw_call_free. */
const bw_error_t *bw_call_error(const bw_call_t *call);

/* Deadline on the runtime clock, 0 = none. Set before bw_service_call.
 * set_timeout_ms sets now + ms. On a child call (layer.h) a later deadline
 * than the parent's is ignored: child deadline = min(parent, own). */
void bw_call_set_deadline_ns(bw_call_t *call, uint64_t deadline_ns);
void bw_call_set_timeout_ms(bw_call_t *call, uint64_t ms);
uint64_t bw_call_deadline_ns(const bw_call_t *call);
/* Time left before the deadline in ns: INT64_MAX without a deadline, <= 0
 * once it passed. */
int64_t bw_call_remaining_ns(const bw_call_t *call);

/* Per-call user context (not owned). Child calls inherit it. */
void bw_call_set_context(bw_call_t *call, void *ctx);
void *bw_call_context(const bw_call_t *call);

/* The runtime the call runs on (borrowed). */
bw_runtime_t *bw_call_runtime(const bw_call_t *call);
/* The service the call was made for (borrowed): bw_call_new's, or a
 * child's. Inside a stack, bulwark's layers pass a call itself inward
 * instead of making a child per layer, so a service or layer may be
 * handling a call made for an outer node: in ops->call use the `svc`
 * argument, and keep what later callbacks need in the per-call state. */
bw_service_t *bw_call_service(const bw_call_t *call);

/* Cancel: if the call is still in flight it completes now (exactly once)
 * with BW_ERR_CANCELLED, and the service handling it releases what it holds
 * (children cancelled, timers disarmed, permits returned, queued waits
 * dropped). A call not started yet completes with CANCELLED when started.
 * Idempotent; a no-op after completion. Any thread; must be called before
 * bw_call_free. `reason` (may be NULL) is consumed and becomes the error
 * (the timeout layer passes its timeout error). */
void bw_call_cancel(bw_call_t *call);
void bw_call_cancel_with(bw_call_t *call, bw_error_t *reason);

/* True once the call has completed (its result is fixed). */
bool bw_call_is_done(const bw_call_t *call);
/* True once cancel was requested on this call. */
bool bw_call_is_cancelled(const bw_call_t *call);

/* ---- Function services ----------------------------------------------------
 * Any user function becomes a service.
 *
 * sync: runs inside the call on the submitting thread; returns NULL and sets
 *   *resp / *resp_free on success, or returns an error (consumed). Must not
 *   block for long (use the async form or bw_spawn_blocking).
 * async: starts the work and returns; later (any thread) the user finishes
 *   the call with bw_call_complete() from bulwark/layer.h. If `cancel` is
 *   set it is called (once, any thread) when the call was cancelled: stop the
 *   work; bw_call_complete afterwards is allowed and ignored. */
typedef bw_error_t *(*bw_fn_sync)(void *fn_arg, bw_call_t *call, void **resp,
                                  bw_destroy_fn *resp_free);
typedef void (*bw_fn_async)(void *fn_arg, bw_call_t *call);
typedef void (*bw_fn_cancel)(void *fn_arg, bw_call_t *call);

typedef struct bw_fn_service_opts {
  bw_fn_sync sync;           /* exactly one of sync / async */
  bw_fn_async async;
  bw_fn_cancel cancel;       /* async only; may be NULL */
  void *arg;                 /* passed to the functions */
  bw_destroy_fn arg_free;    /* frees arg with the service; may be NULL */
  size_t call_state_size;    /* bytes of per-call scratch, see bw_call_state() */
  const char *kind;          /* static string for metrics, default "fn" */
} bw_fn_service_opts_t;

/* Zero everything (defaults above). */
void bw_fn_service_opts_init(bw_fn_service_opts_t *opts);

/* Owns: *out is yours (bw_service_release). arg is owned by the service
 * only if arg_free is set (also on error: then arg_free(arg) ran).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_service_from_fn(bw_service_t **out, const bw_fn_service_opts_t *opts);

/* Per-call scratch for the service handling `call` (call_state_size bytes,
 * zeroed when the call is acquired from the pool unless the service has a
 * state_init hook; see layer.h). Call it in ops->call and ops->cancel and
 * keep the pointer for later callbacks: a call an outer node passed to
 * you may be handled by another node by then (a retry going on after a
 * timeout aborted your attempt), whose state this would return. */
void *bw_call_state(bw_call_t *call);

#ifdef __cplusplus
}
#endif
#endif
