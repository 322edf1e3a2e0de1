/* Rate limit layer: a token bucket (rate per second, burst) in front of the
 * inner service. Each call takes `tokens_per_call` tokens.
 *
 * Mode BW_RATE_LIMIT_WAIT: a call that finds no token waits for one, first
 * come first served, for at most max_wait_ms and never past its deadline
 * (if its token would come later it is rejected at once, without waiting
 * for nothing). A waiting call that is cancelled gives its token back.
 * Mode BW_RATE_LIMIT_REJECT: no waiting.
 * Rejections complete with BW_ERR_RATE_LIMITED whose retry_after_ms hint
 * says when a token frees up (rejections giving the same hint share one
 * error: no malloc on a burst of rejections) and emit BW_EVENT_REJECTED
 * (reason "rate_limited"). A gauge bulwark_rate_limit_tokens{rate_limit=
 * "<name>"} shows the tokens in the bucket (negative: promised to waiters).
 *
 * The decision is GCRA (the token bucket as one "theoretical arrival
 * time"), made through an internal store interface so a Redis-backed,
 * fleet-wide store can replace the in-memory one.
 *
 * Clock: when the bucket holds at least 50 ms of tokens (burst / rate),
 * a real-clock runtime's time is read with CLOCK_MONOTONIC_COARSE (a few ms
 * resolution, ~5x cheaper here); the long-run rate is unchanged.
 *
 * Defaults: resilience4j's RateLimiterConfig has no meaningful default rate
 * (50 permits per 500 ns), so rate_per_sec must be set; burst defaults to
 * one second's worth (Guava SmoothBursty, maxBurstSeconds = 1); mode WAIT
 * and max_wait_ms 5000 follow r4j (timeoutDuration 5 s).
 * Threads: any; one limiter is meant to be shared by many calls/stacks. */
#ifndef BULWARK_RATE_LIMIT_H
#define BULWARK_RATE_LIMIT_H

#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bw_rate_limit_mode {
  BW_RATE_LIMIT_WAIT = 0,  /* default */
  BW_RATE_LIMIT_REJECT = 1
} bw_rate_limit_mode_t;

typedef struct bw_rate_limit_opts {
  const char *name;         /* events/metrics label, copied. Default "rate_limit" */
  double rate_per_sec;      /* tokens added per second, in (0, 1e9] (may be fractional).
                               Default 0: required. A token costs a whole number of
                               nanoseconds, rounded up: above 1e7/s the rate enforced can
                               be lower than asked (7e8/s enforces 5e8/s), never higher */
  uint64_t burst;           /* bucket size, >= tokens_per_call. 0 (default): max(1, rate) */
  bw_rate_limit_mode_t mode;
  uint64_t max_wait_ms;     /* WAIT mode: longest wait for a token. Default 5000 (r4j) */
  uint32_t tokens_per_call; /* Default 1 */
} bw_rate_limit_opts_t;

void bw_rate_limit_opts_init(bw_rate_limit_opts_t *opts);

/* Owns: *out is yours (bw_layer_release).
 * Errors: BW_ERR_INVALID_ARGUMENT (rate <= 0, burst < tokens_per_call,
 *         rate too high: over 1e9/s), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_rate_limit_new(bw_layer_t **out, const bw_rate_limit_opts_t *opts);

/* Tokens in the bucket now on rt's clock (NULL: the clock of the last
 * call through the limiter). 0 if not a limiter. */
double bw_rate_limit_tokens(bw_layer_t *limiter, bw_runtime_t *rt);

#ifdef __cplusplus
}
#endif
#endif
