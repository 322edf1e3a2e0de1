/* Events and metrics.
 *
 * EVENTS. A layer reports what happens (an attempt failed, a retry was
 * scheduled, a rejection, a breaker state change...) through ONE function,
 * bw_layer_emit(). Users attach hook functions with bw_event_hook_add(),
 * for every event, the events of one stack, or the events of one layer.
 * Hooks run synchronously on the thread that emits (a worker, usually),
 * with no bulwark lock held; they must be quick and must not block.
 *
 * METRICS. Every named stack (bw_stack_build with a name) keeps, without
 * locks and without allocation per call:
 *   - calls by outcome: success, or the error kind of the final error;
 *   - a latency histogram (log-linear buckets, 4 per power of two, from 1 µs
 *     to ~69 s; bucket width <= 25% of its lower bound; percentiles readable);
 *   - per layer position, a counter per event type.
 * Layers with state add gauges (breaker state, bulkhead in use / queued,
 * tokens) with bw_metrics_gauge_add(). bw_metrics_write_prometheus()
 * writes all of it in Prometheus text exposition format:
 *
 *   bulwark_calls_total{stack="payments",outcome="success"} 120
 *   bulwark_calls_total{stack="payments",outcome="timeout"} 3
 *   bulwark_call_duration_seconds_bucket{stack="payments",le="0.001024"} 97
 *   bulwark_call_duration_seconds_sum / _count
 *   bulwark_layer_events_total{stack="payments",layer="1:retry",event="retry_scheduled"} 5
 *   bulwark_<gauge>{<labels>} value
 *
 * Threads: any, unless noted. */
#ifndef BULWARK_METRICS_H
#define BULWARK_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"

#ifdef __cplusplus
extern "C" {
#endif

struct bw_layer;
struct bw_call;
struct bw_service;

/* ---- Events ------------------------------------------------------------------ */

#define BW_EVENT_TYPES(X)                                                         \
  X(ATTEMPT_FAILED, 1, "attempt_failed")   /* attempt, error */                  \
  X(RETRY_SCHEDULED, 2, "retry_scheduled") /* attempt (next), delay_ns, error */ \
  X(GIVE_UP, 3, "give_up")                 /* attempt, error (the give-up error), reason */ \
  X(TIMEOUT, 4, "timeout")                 /* delay_ns = the timeout */          \
  X(REJECTED, 5, "rejected")               /* reason; error */                   \
  X(BREAKER_STATE, 6, "breaker_state")     /* from_state, to_state, reason */    \
  X(FALLBACK_USED, 7, "fallback_used")     /* error = the original error */      \
  X(CHAOS_INJECTED, 8, "chaos_injected")   /* reason = fault, delay_ns, error */ \
  X(SUCCESS, 9, "success")                 /* not emitted by default layers; free for use */ \
  X(CUSTOM, 10, "custom")                  /* anything else; reason says what */

typedef enum bw_event_type {
#define BW__EV_ENUM(name, num, str) BW_EVENT_##name = num,
  BW_EVENT_TYPES(BW__EV_ENUM)
#undef BW__EV_ENUM
  BW_EVENT__MAX
} bw_event_type_t;

/* "retry_scheduled"; "unknown" for anything else. */
const char *bw_event_type_name(bw_event_type_t type);

typedef struct bw_event {
  bw_event_type_t type;
  /* Filled by bw_layer_emit: */
  const char *stack;          /* stack name, or NULL (no call / unnamed stack) */
  const char *layer_kind;     /* "retry" */
  const char *layer_name;     /* bw_layer_set_name, or NULL */
  int layer_index;            /* position in the call's stack (0 = outermost), -1 unknown */
  uint64_t now_ns;            /* runtime clock when emitted (0 without a call) */
  const struct bw_call *call; /* may be NULL (e.g. breaker state change); borrowed */
  /* Filled by the layer (zero if not applicable): */
  const bw_error_t *error;    /* borrowed for the hook's duration */
  uint32_t attempt;           /* 1-based attempt number */
  uint64_t delay_ns;          /* backoff, timeout duration, injected latency */
  int from_state, to_state;   /* breaker states (see circuit_breaker.h) */
  const char *reason;         /* static string: "queue_full", "budget_exhausted"... */
} bw_event_t;

typedef void (*bw_event_fn)(const bw_event_t *ev, void *arg);
typedef struct bw_event_hook bw_event_hook_t;

/* Attach fn(ev, arg) for events of `stack` (a built stack; NULL: any) and of
 * `layer` (NULL: any). Both NULL: every event in the process.
 * Owns: *out (may be NULL if you never remove it; then it is freed at exit
 * never: remove hooks you add). Up to 64 hooks at once.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY (too many hooks). */
bw_error_t *bw_event_hook_add(bw_event_hook_t **out, const struct bw_service *stack,
                              const struct bw_layer *layer, bw_event_fn fn, void *arg);
/* Remove a hook; when it returns, fn is not running and will not run again
 * (unless called from inside fn itself). NULL-safe. */
void bw_event_hook_remove(bw_event_hook_t *hook);

/* Report an event from a layer. call may be NULL. ev is filled in (stack,
 * layer, time) and passed to the matching hooks; the stack's event counter
 * for that layer position is incremented. Cheap when no hook is attached.
 * Threads: any; no lock of yours should be held. */
void bw_layer_emit(struct bw_layer *layer, struct bw_call *call, bw_event_t *ev);

/* ---- Histograms ------------------------------------------------------------------ */

/* Log-linear histogram of ns values: exact below 1024 ns (one bucket),
 * then 4 linear sub-buckets per power of two up to 2^36 ns, then overflow.
 * Recording is lock-free (relaxed atomics). */
typedef struct bw_histogram bw_histogram_t;
bw_error_t *bw_histogram_new(bw_histogram_t **out);
void bw_histogram_free(bw_histogram_t *h); /* NULL-safe */
void bw_histogram_record(bw_histogram_t *h, uint64_t value_ns);
uint64_t bw_histogram_count(const bw_histogram_t *h);
uint64_t bw_histogram_sum_ns(const bw_histogram_t *h);
/* The q-quantile (0 <= q <= 1) in ns: the upper bound of the bucket holding
 * it (an over-estimate by at most one bucket width). 0 when empty. */
uint64_t bw_histogram_percentile(const bw_histogram_t *h, double q);
void bw_histogram_reset(bw_histogram_t *h);

/* ---- Stack metrics --------------------------------------------------------------- */

/* Calls of a built stack that completed with `kind` (BW_ERR_NONE = success). */
uint64_t bw_stack_outcome_count(const struct bw_service *stack, bw_error_kind_t kind);
/* All completed calls of the stack. */
uint64_t bw_stack_call_count(const struct bw_service *stack);
/* The stack's latency histogram (borrowed, lives with the stack). */
const bw_histogram_t *bw_stack_latency(const struct bw_service *stack);
/* Events of `type` emitted by the layer at position layer_index. */
uint64_t bw_stack_event_count(const struct bw_service *stack, size_t layer_index,
                              bw_event_type_t type);

/* ---- Custom gauges and counters ---------------------------------------------------- */

typedef struct bw_metric bw_metric_t;
typedef double (*bw_metric_read_fn)(void *arg);

/* Register a value read when metrics are written. name: "bulwark_bulkhead_in_use"
 * (copied; [a-zA-Z_:][a-zA-Z0-9_:]*); help (copied, may be NULL); labels
 * (copied, may be NULL): `stack="payments",layer="bulkhead"`. counter: the
 * value only grows (TYPE counter) vs a gauge. read runs on the writing
 * thread, must be quick and thread-safe.
 * Owns: *out is yours; remove before arg dies (bw_metric_remove).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_metrics_gauge_add(bw_metric_t **out, const char *name, const char *help,
                                 const char *labels, bool counter, bw_metric_read_fn read,
                                 void *arg);
/* When it returns, read is not running and will not run again. NULL-safe. */
void bw_metric_remove(bw_metric_t *m);

/* ---- Prometheus ------------------------------------------------------------------------ */

/* Receives the text in pieces; return 0 to go on, non-zero to stop. */
typedef int (*bw_write_fn)(void *arg, const char *data, size_t len);

/* Write every registered metric (named stacks, gauges) in Prometheus text
 * exposition format 0.0.4, one # HELP / # TYPE per family.
 * Errors: BW_ERR_IO if write returned non-zero. */
bw_error_t *bw_metrics_write_prometheus(bw_write_fn write, void *arg);
/* The same into a new NUL-terminated string; free with bw_metrics_text_free.
 * Errors: BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_metrics_prometheus_text(char **out, size_t *len);
void bw_metrics_text_free(char *text);

#ifdef __cplusplus
}
#endif
#endif
