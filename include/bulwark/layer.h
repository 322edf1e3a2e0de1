/* Writing services and layers, and building stacks.
 *
 * ---- Writing a service ---------------------------------------------------
 * Fill a static bw_service_ops_t and call bw_service_new(). ops->call starts
 * a call and returns; the service later finishes it with bw_call_complete()
 * (from any thread; completing inside ops->call is fine, the library moves
 * the caller's callback off that stack). bw_call_complete is idempotent:
 * the first completion (or a cancel) wins, later ones are ignored and their
 * response/error freed, and it returns whether it won.
 *
 * ---- Writing a layer -----------------------------------------------------
 * A layer (bw_layer_t) is the reusable, reference-counted part: options and
 * shared state (a breaker, a limiter, a retry budget). Make it with
 * bw_layer_new(ops, impl); bw_layer_wrap() (or the stack builder) turns it
 * into a service node around an inner service. Several nodes, in several
 * stacks, may share one layer: its impl is shared, per-call state is not.
 * Public constructors follow: bw_<layer>_opts_init(&opts) fills documented
 * defaults, bw_<layer>_new(&layer, &opts) returns a bw_layer_t.
 *
 * In ops->call(svc, call) a layer:
 *   - reads its layer impl with bw_service_impl(svc) and its per-call state
 *     with bw_call_state(call) (ops->call_state_size bytes, sized up front
 *     per node and pooled with the call: no malloc per call). The call may
 *     have been made for an outer node (bulwark's own layers pass a call
 *     inward instead of making a child, README "How a call goes through a
 *     stack"): take the impl from `svc`, not bw_call_service(call), and keep
 *     what later callbacks need (the impl, the call) in the per-call state;
 *   - calls inward with a CHILD call: bw_call_child_new(&child, call, NULL)
 *     (NULL = this node's inner service, or another service, e.g. a
 *     fallback service) and bw_call_child_start(child, on_child, arg). A
 *     child borrows the parent's request, inherits its deadline (it can only
 *     shorten it, bw_call_set_deadline_ns), context and runtime. Several
 *     children may be in flight at once (hedging);
 *   - in on_child(child, err, arg) passes the outcome up with
 *     bw_call_complete_from_child(call, child) or its own result with
 *     bw_call_complete(call, resp, resp_free, err), then bw_call_free(child);
 *     a child's callback runs on a worker, on a bounded stack (completions
 *     that happen inside a start are queued and run when it returns, so
 *     10,000 synchronous failures under retry do not nest);
 *   - reports events with bw_layer_emit() (metrics.h).
 *
 * Memory safety rule: the call (and its state) stays valid while the owner
 * holds it AND while any callback source holds a reference. The library
 * holds one for each child in flight (until its on_child returned) and for
 * the duration of each callback it makes. A layer that arms its own timer
 * or registers its call elsewhere (a queue) takes bw_call_ref(call) first
 * and drops it with bw_call_unref(call) when that source is finished
 * (timer fired or cancelled, waiter removed). Touch nothing of the call
 * after the unref.
 *
 * ops->cancel(svc, call, reason) runs at most once, after the call was
 * completed by a cancel (the caller's, a timeout's, or shutdown's). It must
 * release what the call holds: cancel in-flight children
 * (bw_call_cancel_with(child, bw_error_ref(reason))), disarm timers, drop
 * queued waiters, return permits. It may run on another thread concurrently
 * with ops->call or a child callback of the same call: publish what you
 * started (store the child pointer / set a flag, seq_cst) and then check
 * bw_call_is_done(call); ops->cancel does the reverse (the call is already
 * done, it then reads what was published). Whoever sees the other cleans up.
 *
 * Threads: any, unless noted. */
#ifndef BULWARK_LAYER_H
#define BULWARK_LAYER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bw_layer bw_layer_t;

typedef struct bw_service_ops {
  /* Static string naming the kind: "retry", "timeout", "circuit_breaker",
   * "rate_limit", "bulkhead", "fallback", "chaos", "http", "redis", "fn".
   * The order check (bw_stack_check_order) recognises these names. */
  const char *kind;
  /* Bytes of per-call state (bw_call_state). */
  size_t call_state_size;
  /* Start handling `call`. Must lead to exactly one bw_call_complete (or
   * the call being cancelled). Runs on the submitting thread. */
  void (*call)(bw_service_t *svc, bw_call_t *call);
  /* Optional: the call was completed by a cancel; release what it holds
   * (see above). reason is borrowed. */
  void (*cancel)(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason);
  /* Optional: run once for each pooled call object when it is first created
   * (e.g. allocate a bw_timer_t) and when the pool is freed. If state_init
   * is set the state is NOT zeroed between calls: reset it in ops->call.
   * state_init returns 0, or -1 when out of memory (bw_call_new fails). */
  int (*state_init)(bw_service_t *svc, void *state);
  void (*state_fini)(bw_service_t *svc, void *state);
  /* Optional: free the impl given to bw_service_new / bw_layer_new when the
   * last reference goes. */
  void (*destroy)(void *impl);
  /* Reserved for bulwark's own layers (their forwarding fast path): leave
   * NULL. */
  bool (*finish)(bw_service_t *svc, bw_call_t *call, void *state, bool aborted);
} bw_service_ops_t;

/* ---- Services -------------------------------------------------------------- */

/* A leaf service (client, adapter). ops must outlive the service (static).
 * Owns: impl is owned if ops->destroy is set (destroyed on error too);
 *       *out is yours (bw_service_release).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_service_new(bw_service_t **out, const bw_service_ops_t *ops, void *impl);

/* The impl of a leaf service, or of the layer behind a node (borrowed). */
void *bw_service_impl(const bw_service_t *svc);
/* A node's inner service and layer (borrowed; NULL for a leaf). */
bw_service_t *bw_service_inner(const bw_service_t *svc);
bw_layer_t *bw_service_layer(const bw_service_t *svc);

/* ---- Layers ------------------------------------------------------------------ */

/* Order-check hints a layer sets about itself (bw_layer_set_flags). */
enum {
  BW_LAYER_TIMEOUT_TOTAL = 1u << 0,       /* a timeout meant to bound the whole call */
  BW_LAYER_TIMEOUT_PER_ATTEMPT = 1u << 1, /* a timeout meant to bound one attempt */
};

/* Owns: impl as for bw_service_new; *out is yours (bw_layer_release).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_layer_new(bw_layer_t **out, const bw_service_ops_t *ops, void *impl);
bw_layer_t *bw_layer_ref(bw_layer_t *layer);
void bw_layer_release(bw_layer_t *layer); /* NULL-safe */
void *bw_layer_impl(const bw_layer_t *layer);
const char *bw_layer_kind(const bw_layer_t *layer);
/* An instance name for metrics/events (copied). Default: NULL (the stack
 * labels the layer by its position and kind). Set before use. */
bw_error_t *bw_layer_set_name(bw_layer_t *layer, const char *name);
const char *bw_layer_name(const bw_layer_t *layer);
void bw_layer_set_flags(bw_layer_t *layer, unsigned flags);
unsigned bw_layer_flags(const bw_layer_t *layer);

/* A node: `layer` around `inner`. Owns: refs both; *out is yours.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_layer_wrap(bw_layer_t *layer, bw_service_t *inner, bw_service_t **out);

/* ---- Completing calls (service and layer authors) ------------------------ */

/* Finish `call`: success if err == NULL (resp with resp_free, which may be
 * NULL), failure otherwise (resp must be NULL). Consumes resp and err: when
 * the call was already complete they are freed and false is returned.
 * Any thread; no lock of yours should be held (the parent's callback may
 * run inside, on a worker). */
bool bw_call_complete(bw_call_t *call, void *resp, bw_destroy_fn resp_free, bw_error_t *err);
/* Finish `call` with the outcome of `child`: the child's response is moved
 * (not copied) and its error referenced. Returns as bw_call_complete. */
bool bw_call_complete_from_child(bw_call_t *call, bw_call_t *child);

/* Extra references on a call for a callback source a layer arms itself
 * (timer, waiter queue). See "Memory safety rule" above. */
void bw_call_ref(bw_call_t *call);
void bw_call_unref(bw_call_t *call);

/* ---- Child calls ---------------------------------------------------------------- */

/* A child of `parent` for `svc` (NULL: the inner service of the node
 * handling parent). Inherits runtime, deadline, context, the borrowed
 * request and the stack (for events/metrics). Pooled, no malloc when warm.
 * Owns: *out is the caller's (the layer's): bw_call_free it in or after
 * its callback, or bw_call_free it early to abandon it (it is cancelled and
 * its late response freed).
 * Errors: BW_ERR_INVALID_ARGUMENT (no inner service), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_call_child_new(bw_call_t **out, bw_call_t *parent, bw_service_t *svc);
/* Start a child. cb runs exactly once, on a worker (on the completing
 * thread if it is a worker of the call's runtime), on a bounded stack, and
 * never inside this function: a child completing synchronously has its cb
 * run right after the outermost library entry returns (from inside
 * ops->call or a child callback), or, when started from outside any (a
 * layer's own timer callback), from a deferred worker task.
 * Memory: the child is owned by the caller, but once started it may
 * complete at any time on another thread; take bw_call_ref(child) first if
 * you touch it after this returns (and the parent's callback may then have
 * run too if it completes the parent). */
void bw_call_child_start(bw_call_t *child, bw_call_cb cb, void *arg);
/* The parent of a child call, NULL for a root call (borrowed). */
bw_call_t *bw_call_parent(const bw_call_t *call);
/* Attempt number a layer may stamp on a child (retry does; default 0). */
void bw_call_set_attempt(bw_call_t *call, uint32_t attempt);
uint32_t bw_call_attempt(const bw_call_t *call);

/* ---- Stacks ----------------------------------------------------------------------
 * A stack is a service built from layers listed OUTERMOST FIRST around an
 * inner service. Recommended order, outermost first, and why:
 *
 *   fallback          last resort; sees the final outcome of everything inside
 *   timeout (total)   bounds the whole call, retries and waits included
 *   retry             each attempt goes through everything below it again
 *   circuit_breaker   counts every attempt, and stops retries hammering a
 *                     failing backend (an open breaker's error is not retried)
 *   rate_limit        each attempt spends a token (retries are load too)
 *   bulkhead          a permit is held only while an attempt runs, not
 *                     during retry backoff
 *   timeout (per attempt)  bounds one attempt; its timeout error is retried
 *   chaos             innermost: faults look like the backend's own
 *   service
 *
 * bw_stack_check_order warns about orders that are almost always mistakes;
 * see bw_stack_warning_code_t. */

typedef enum bw_stack_warning_code {
  BW_STACK_WARN_FALLBACK_NOT_OUTERMOST = 1, /* layers outside a fallback see no errors */
  BW_STACK_WARN_BREAKER_OUTSIDE_RETRY = 2,  /* retries bypass the breaker */
  BW_STACK_WARN_TOTAL_TIMEOUT_INSIDE_RETRY = 3, /* a "total" timeout only bounds one attempt */
  BW_STACK_WARN_ATTEMPT_TIMEOUT_OUTSIDE_RETRY = 4, /* a "per attempt" timeout bounds all attempts */
  BW_STACK_WARN_RETRY_NO_ATTEMPT_TIMEOUT = 5, /* timeout outside retry, none inside, no intent
                                                set: a hung attempt eats the whole budget */
  BW_STACK_WARN_BULKHEAD_OUTSIDE_RETRY = 6, /* permit held during backoff */
  BW_STACK_WARN_RATE_LIMIT_OUTSIDE_RETRY = 7, /* retries are not rate limited */
  BW_STACK_WARN_NESTED_RETRY = 8,             /* attempts multiply */
  BW_STACK_WARN_CHAOS_NOT_INNERMOST = 9,      /* injected faults skip inner layers */
  BW_STACK_WARN_DUPLICATE = 10,               /* same kind twice (not retry/timeout) */
} bw_stack_warning_code_t;

typedef struct bw_stack_warning {
  bw_stack_warning_code_t code;
  size_t outer, inner; /* indexes into the layer list (outermost = 0) */
  char message[192];   /* readable, names both layers and the fix */
} bw_stack_warning_t;

#define BW_STACK_MAX_WARNINGS 16
typedef struct bw_stack_warnings {
  size_t count; /* may be > BW_STACK_MAX_WARNINGS: only the first are kept */
  bw_stack_warning_t items[BW_STACK_MAX_WARNINGS];
} bw_stack_warnings_t;

/* Check an order (outermost first). Writes *out (may be NULL); returns the
 * number of warnings. Threads: any. */
size_t bw_stack_check_order(bw_layer_t *const *layers, size_t n, bw_stack_warnings_t *out);

/* Build a stack: layers[0] outermost, around inner. name (copied, may be
 * NULL) labels events and metrics (bulwark_calls_total{stack="name"} ...);
 * a named stack registers its metrics until freed. warnings (may be NULL)
 * receives the order check; warnings never fail the build.
 * Owns: refs every layer and inner; *out is yours (bw_service_release).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_stack_build(bw_service_t **out, const char *name, bw_layer_t *const *layers,
                           size_t n, bw_service_t *inner, bw_stack_warnings_t *warnings);

/* Layers of a built stack (outermost first), borrowed; count via *n. */
bw_layer_t *const *bw_stack_layers(const bw_service_t *stack, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
