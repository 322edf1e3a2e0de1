/* Retry layer, backoff and retry budget.
 *
 * Each attempt is a child call through everything inside the retry layer.
 * After a failure the predicate decides; then the next delay is computed
 * (backoff + jitter, or a Retry-After hint on the error, capped); the layer
 * gives up instead of waiting when:
 *   - max_attempts were made            -> BW_ERR_RETRIES_EXHAUSTED
 *   - the shared retry budget is dry     -> BW_ERR_BUDGET_EXHAUSTED
 *   - the wait (plus min_attempt_ms) would end past the call's deadline
 *                                        -> BW_ERR_DEADLINE_EXCEEDED
 * The give-up error's message says why and after how many attempts, its
 * cause is the last attempt's error, and its related errors are EVERY
 * attempt's error in order (bw_error_related(e, i), i = attempt - 1).
 * A non-retryable error is passed up unchanged (not wrapped).
 * Cancelling the call cancels the running attempt or the backoff timer.
 *
 * Events: ATTEMPT_FAILED (attempt, error), RETRY_SCHEDULED (next attempt,
 * delay_ns, error), GIVE_UP (attempt, error = give-up error, reason
 * "retries_exhausted" / "budget_exhausted" / "deadline_exceeded").
 * Threads: any. */
#ifndef BULWARK_RETRY_H
#define BULWARK_RETRY_H

#include <stdbool.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Backoff --------------------------------------------------------------- */

typedef enum bw_backoff_kind {
  BW_BACKOFF_CONSTANT = 0,    /* base */
  BW_BACKOFF_LINEAR = 1,      /* base * n */
  BW_BACKOFF_EXPONENTIAL = 2  /* base * multiplier^(n-1) */
} bw_backoff_kind_t;

typedef enum bw_jitter {
  BW_JITTER_NONE = 0,        /* d */
  BW_JITTER_FULL = 1,        /* uniform [0, d] */
  BW_JITTER_EQUAL = 2,       /* d/2 + uniform [0, d/2] */
  BW_JITTER_DECORRELATED = 3 /* uniform [base, 3 * previous delay] (AWS), previous starts at base */
} bw_jitter_t;

typedef struct bw_backoff {
  bw_backoff_kind_t kind;
  uint64_t base_ns;
  double multiplier; /* exponential only: finite, >= 1 */
  uint64_t cap_ns;   /* every delay is <= cap_ns (0: no cap) */
  bw_jitter_t jitter;
} bw_backoff_t;

/* The delay before retry number n (n = 1 before the second attempt). prev_ns
 * is the previous delay (0 for the first; decorrelated jitter uses it).
 * *rng is the RNG state (any value seeds it; it is advanced). Pure function. */
uint64_t bw_backoff_delay_ns(const bw_backoff_t *b, uint32_t n, uint64_t prev_ns, uint64_t *rng);
/* The RNG used for jitter: splitmix64 step on *state, result in [0, 2^64). */
uint64_t bw_backoff_rand(uint64_t *state);

/* ---- Retry budget (tower's TpsBudget) --------------------------------------
 * Every first attempt deposits; every retry withdraws. Over a sliding window
 * of ttl_ms, retries may be at most retry_ratio * requests, plus
 * min_per_sec * ttl seconds of free retries. Shared by every call (and
 * every layer/stack) that holds it. */
typedef struct bw_retry_budget bw_retry_budget_t;
typedef struct bw_retry_budget_opts {
  uint64_t ttl_ms;    /* default 10000 (tower: 10 s) */
  uint32_t min_per_sec; /* default 10 (tower) */
  double retry_ratio; /* default 0.2 (tower: 20%) ; 0..1000 (above 0, at least 1e-12
                         counts: smaller ratios act as 1e-12) */
} bw_retry_budget_opts_t;
void bw_retry_budget_opts_init(bw_retry_budget_opts_t *opts);
/* Time comes from the runtime clock of the calls that use it (rt may be NULL:
 * then bw_retry_budget_deposit/withdraw take now_ns explicitly).
 * Owns: *out is yours (bw_retry_budget_release).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_retry_budget_new(bw_retry_budget_t **out, const bw_retry_budget_opts_t *opts);
bw_retry_budget_t *bw_retry_budget_ref(bw_retry_budget_t *b);
void bw_retry_budget_release(bw_retry_budget_t *b); /* NULL-safe */
void bw_retry_budget_deposit(bw_retry_budget_t *b, uint64_t now_ns);
/* True if a retry may go ahead (and takes it). */
bool bw_retry_budget_withdraw(bw_retry_budget_t *b, uint64_t now_ns);
/* Retries that could be withdrawn now (for gauges and tests). */
int64_t bw_retry_budget_balance(bw_retry_budget_t *b, uint64_t now_ns);

/* ---- Retry layer --------------------------------------------------------------- */

/* True if err should be retried. */
typedef bool (*bw_retry_predicate)(const bw_error_t *err, void *arg);

typedef struct bw_retry_opts {
  /* Total attempts including the first. Default 3 (resilience4j
   * RetryConfig.maxAttempts = 3; Polly v8 MaxRetryAttempts = 3 retries). */
  uint32_t max_attempts;
  /* Default: exponential, base 500 ms (resilience4j waitDuration), multiplier
   * 2 (Polly v8 exponential factor 2), cap 30 s (Polly v8 MaxDelay is
   * unbounded; we cap), jitter full (AWS "Exponential Backoff And Jitter"). */
  bw_backoff_t backoff;
  /* Seed of the jitter RNG (a run with the same seed and call order gives
   * the same delays). Default 0x6277 (fixed; set your own). */
  uint64_t seed;
  /* Honour a Retry-After hint on the error (bw_error_retry_after_ms), capped
   * at max_retry_after_ms (a longer hint waits the cap; 0: no cap). The
   * hint replaces the backoff delay. Defaults: true, 60000 ms. */
  bool honor_retry_after;
  uint64_t max_retry_after_ms;
  /* Deadline-aware: give up (BW_ERR_DEADLINE_EXCEEDED) rather than wait if
   * now + delay + min_attempt_ms is past the deadline. Default 0 ms. */
  uint64_t min_attempt_ms;
  /* Default bw_retry_default_predicate. */
  bw_retry_predicate predicate;
  void *predicate_arg;
  /* Optional shared budget (referenced by the layer). Default NULL: none. */
  bw_retry_budget_t *budget;
} bw_retry_opts_t;

void bw_retry_opts_init(bw_retry_opts_t *opts);
/* Owns: *out is yours (bw_layer_release); refs opts->budget.
 * Errors: BW_ERR_INVALID_ARGUMENT (max_attempts 0, bad backoff), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_retry_new(bw_layer_t **out, const bw_retry_opts_t *opts);

/* The default predicate, by the kind of the first meaningful error in the
 * chain (chaos's `injected` wrapper is looked through to the kind it
 * injects; an inner retry's give-up is not: retries_exhausted, and a
 * deadline_exceeded that carries its attempts' errors as related errors,
 * are final, so retry layers nested in one another do not multiply
 * attempts — a predicate that looks through them opts into that, see
 * test_retry.c):
 * retried: timeout, deadline_exceeded (other than a retry layer's give-up),
 *   transport, connect, dns, io, protocol, unavailable, rate_limited;
 *   http_status with detail 429, 502, 503, 504; redis errors whose reply
 *   code (the message's first word, after at most one "tag: ") is
 *   LOADING, BUSY, TRYAGAIN, MASTERDOWN (and redis connection errors, which
 *   are transport/connect kinds).
 * never: cancelled, circuit_open, bulkhead_full, invalid_argument,
 *   runtime_shutdown, retries_exhausted, budget_exhausted, config, and
 *   anything not listed above. */
bool bw_retry_default_predicate(const bw_error_t *err, void *arg);

#ifdef __cplusplus
}
#endif
#endif
