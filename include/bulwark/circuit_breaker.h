/* Circuit breaker: closed / open / half-open, with a keyed variant.
 *
 * Closed: calls pass; their outcomes fill a window (consecutive failures, the
 * last N calls, or the last T seconds in buckets). When at least
 * `minimum_calls` are in the window and the failure rate or the slow-call
 * rate reaches its threshold, the breaker opens.
 * Open: calls are rejected with BW_ERR_CIRCUIT_OPEN (a static error whose
 * retry_after_ms hint says when the breaker will let probes through) for the
 * open duration, which can grow on each re-open (multiplier, cap).
 * Half-open: exactly `half_open_calls` probe calls are let through, the rest
 * are rejected. A probe that is cancelled (or whose error the predicate does
 * not count) returns its slot; a probe that times out counts as a failure.
 * When all probes finished the breaker closes, or re-opens when the probes'
 * failure (or slow) rate reaches the threshold (re-opens at once when it
 * already must). If probes do not finish within `half_open_max_wait_ms`, the
 * breaker re-opens rather than stay half-open forever; their answers, when
 * they come, still count as answers of the next half-open period (which lets
 * in only the slots they leave), so probes slower than the wait can still
 * close (or re-open) it.
 * Manual states: forced open (reject all), forced closed (pass all, record,
 * never trip), disabled (pass all, record nothing).
 *
 * Clock: when the slow-call duration and the time buckets are 100 ms or
 * more (the defaults), a real-clock runtime's time is read with
 * CLOCK_MONOTONIC_COARSE (a few ms resolution, ~5x cheaper here).
 * A success recorded into a closed window that holds only fast successes
 * takes no lock (it would change nothing).
 *
 * Defaults follow resilience4j's documented CircuitBreakerConfig defaults
 * unless said otherwise.
 * Threads: everything here is safe from any thread; one breaker is meant to
 * be shared by many concurrent calls and by several stacks. */
#ifndef BULWARK_CIRCUIT_BREAKER_H
#define BULWARK_CIRCUIT_BREAKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"
#include "bulwark/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bw_breaker_state {
  BW_BREAKER_CLOSED = 0,
  BW_BREAKER_OPEN = 1,
  BW_BREAKER_HALF_OPEN = 2,
  BW_BREAKER_FORCED_OPEN = 3,   /* manual: reject every call */
  BW_BREAKER_FORCED_CLOSED = 4, /* manual: pass every call, keep metrics, never trip */
  BW_BREAKER_DISABLED = 5       /* manual: pass every call, record nothing */
} bw_breaker_state_t;

/* "closed", "open", "half_open", "forced_open", "forced_closed", "disabled". */
const char *bw_breaker_state_name(bw_breaker_state_t s);

typedef enum bw_breaker_window {
  BW_BREAKER_WINDOW_COUNT = 0,      /* last window_size calls (default; r4j COUNT_BASED) */
  BW_BREAKER_WINDOW_TIME = 1,       /* last window_ms, in window_buckets buckets */
  BW_BREAKER_WINDOW_CONSECUTIVE = 2 /* open after consecutive_failures in a row */
} bw_breaker_window_t;

typedef struct bw_circuit_breaker_opts {
  const char *name;                /* for events and metrics; copied. Default "breaker" */
  bw_breaker_window_t window;      /* default BW_BREAKER_WINDOW_COUNT (r4j) */
  uint32_t window_size;            /* COUNT: calls in the window. Default 100 (r4j) */
  uint64_t window_ms;              /* TIME: window length. Default 30000 (Polly v8 SamplingDuration 30 s) */
  uint32_t window_buckets;         /* TIME: buckets (1..window_ms). Default 10 (our choice) */
  uint32_t consecutive_failures;   /* CONSECUTIVE: failures in a row that trip. Default 5
                                      (Polly v7 exceptionsAllowedBeforeBreaking is user-chosen;
                                      gobreaker trips after more than 5) */
  uint32_t minimum_calls;          /* window modes: calls needed before the rates count.
                                      Default 100 (r4j minimumNumberOfCalls; Polly MinimumThroughput).
                                      COUNT: capped at window_size, as r4j does */
  double failure_rate_threshold;   /* percent, (0,100]; trips when rate >= it. Default 50 (r4j) */
  double slow_call_rate_threshold; /* percent, (0,100]; > 100 disables. Default 100 (r4j) */
  uint64_t slow_call_duration_ms;  /* a call longer than this is slow. Default 60000 (r4j);
                                      0 disables slow-call counting */
  uint64_t open_duration_ms;       /* time open before half-open. Default 60000 (r4j
                                      waitDurationInOpenState) */
  double open_duration_multiplier; /* >= 1: each re-open from half-open multiplies the open
                                      duration (reset when it closes). Default 1 (no growth; r4j
                                      IntervalFunction.ofExponentialBackoff is opt-in) */
  uint64_t max_open_duration_ms;   /* cap for the grown duration; 0: no cap. Default 0 */
  uint32_t half_open_calls;        /* probes let through in half-open. Default 10 (r4j
                                      permittedNumberOfCallsInHalfOpenState) */
  uint64_t half_open_max_wait_ms;  /* re-open if probes have not all finished after this
                                      (their late answers count in the next period).
                                      0 (default): the current open duration. r4j's default is
                                      "forever"; we bound it so a lost probe cannot leave the
                                      breaker half-open for good. UINT64_MAX: forever */
  /* Which errors count as failures. Default bw_circuit_breaker_default_predicate.
   * Errors it rejects count as successes (as r4j does for unrecorded
   * exceptions), except BW_ERR_CANCELLED from the caller, which counts as
   * nothing (a half-open probe gives its slot back). */
  bool (*predicate)(const bw_error_t *err, void *arg);
  void *predicate_arg;
  /* Clock for bw_circuit_breaker_state/force/stats outside calls. Default
   * NULL: the runtime of the first call through the breaker (before any
   * call: CLOCK_MONOTONIC; pass it when a test forces a state first). */
  bw_runtime_t *runtime;
} bw_circuit_breaker_opts_t;

/* Fill *opts with the defaults above. */
void bw_circuit_breaker_opts_init(bw_circuit_breaker_opts_t *opts);

/* A snapshot of one breaker (relaxed reads: each value exact, not mutually
 * consistent while calls run). */
typedef struct bw_breaker_stats {
  bw_breaker_state_t state;
  uint32_t window_calls;        /* calls in the window now */
  double failure_rate;          /* percent of window_calls, 0 if none */
  double slow_call_rate;        /* percent of window_calls */
  uint32_t consecutive_failures;
  /* calls_permitted: admitted calls that finished with a counted outcome
   * (successes + failures; recorded, so not counted while disabled) */
  uint64_t calls_permitted, calls_rejected, successes, failures, slow_calls, ignored;
  uint64_t transitions;         /* state changes so far */
  uint64_t open_remaining_ms;   /* OPEN: time until half-open */
  uint32_t half_open_in_flight; /* HALF_OPEN: probes running */
} bw_breaker_stats_t;

/* The default failure predicate: what the retry layer would retry
 * (bw_retry_default_predicate), plus any HTTP status >= 500, minus local
 * rejections (rate_limited, bulkhead_full, circuit_open: those are our own
 * load shedding, not the backend failing). arg unused. */
bool bw_circuit_breaker_default_predicate(const bw_error_t *err, void *arg);

/* A breaker layer. Rejections complete with BW_ERR_CIRCUIT_OPEN (no malloc
 * while a burst of rejections shares one hint; see the top of this file)
 * and emit BW_EVENT_REJECTED (reason "circuit_open", "half_open_full" or
 * "forced_open"); every state change emits BW_EVENT_BREAKER_STATE. A gauge
 * bulwark_breaker_state{breaker="<name>"} (0 closed, 1 open, 2 half-open,
 * 3 forced open, 4 forced closed, 5 disabled) is registered while it lives.
 * Share it between stacks by wrapping the same layer more than once.
 * Owns: *out is yours (bw_layer_release). opts may be NULL (defaults).
 * Errors: BW_ERR_INVALID_ARGUMENT (out-of-range option), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_circuit_breaker_new(bw_layer_t **out, const bw_circuit_breaker_opts_t *opts);

/* Current state (an open breaker whose time is up reports half-open).
 * BW_BREAKER_CLOSED for a layer that is not a breaker. */
bw_breaker_state_t bw_circuit_breaker_state(bw_layer_t *breaker);
/* Manual control: BW_BREAKER_CLOSED (reset: closed, empty window),
 * BW_BREAKER_OPEN (trip now, for the base open duration), FORCED_OPEN,
 * FORCED_CLOSED, DISABLED. Emits BW_EVENT_BREAKER_STATE (reason "manual").
 * Errors: BW_ERR_INVALID_ARGUMENT (not a breaker, HALF_OPEN). */
bw_error_t *bw_circuit_breaker_force(bw_layer_t *breaker, bw_breaker_state_t state);
/* Errors: BW_ERR_INVALID_ARGUMENT (not a breaker, NULL out). */
bw_error_t *bw_circuit_breaker_stats(bw_layer_t *breaker, bw_breaker_stats_t *out);

/* ---- Keyed breaker: one breaker per key (per host, per tenant...) -------- */

/* Write the key of `call` into buf (len bytes, NUL-terminated, truncated
 * keys are fine) and return its length; 0: the call has no key and passes
 * through unguarded. Runs on the calling thread; must be quick. */
typedef size_t (*bw_breaker_key_fn)(bw_call_t *call, void *arg, char *buf, size_t len);

typedef struct bw_circuit_breaker_keyed_opts {
  bw_circuit_breaker_opts_t breaker; /* settings of every per-key breaker */
  bw_breaker_key_fn key;             /* required */
  void *key_arg;
  uint32_t max_keys; /* breakers kept; the least recently used one is dropped
                        when a new key needs room. Default 1024 (our choice) */
} bw_circuit_breaker_keyed_opts_t;

void bw_circuit_breaker_keyed_opts_init(bw_circuit_breaker_keyed_opts_t *opts);
/* Keys longer than 127 bytes are truncated. Events and the state gauge are
 * per layer; the event's reason carries no key (use the stats call).
 * Owns: *out is yours. Errors: BW_ERR_INVALID_ARGUMENT (no key function,
 * max_keys 0, bad breaker option), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_circuit_breaker_keyed_new(bw_layer_t **out,
                                         const bw_circuit_breaker_keyed_opts_t *opts);
/* State of the breaker for key; false if the key has no breaker (never
 * seen, or evicted). */
bool bw_circuit_breaker_keyed_state(bw_layer_t *keyed, const char *key,
                                    bw_breaker_state_t *state);
/* Force the breaker of key (made if missing). Errors as bw_circuit_breaker_force. */
bw_error_t *bw_circuit_breaker_keyed_force(bw_layer_t *keyed, const char *key,
                                           bw_breaker_state_t state);
/* Number of keys with a breaker now. */
size_t bw_circuit_breaker_keyed_count(bw_layer_t *keyed);

#ifdef __cplusplus
}
#endif
#endif
