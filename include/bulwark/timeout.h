/* Timeout layer: bounds a call in time.
 *
 * When the time is up the call completes with BW_ERR_TIMEOUT ("timeout: no
 * response within 200 ms"), and the inner attempt is cancelled with that
 * error, so it releases what it holds (curl handle, permit, waiter). A
 * response arriving later is freed, never delivered. The layer also sets
 * the deadline inner layers see: child deadline = min(parent's, now + timeout).
 * If the parent's deadline is earlier than the timeout the layer's timer is
 * armed at that deadline instead and the error kind is still BW_ERR_TIMEOUT.
 *
 * Each call arms one runtime timer (O(1), allocated once per pooled call).
 * Threads: any. */
#ifndef BULWARK_TIMEOUT_H
#define BULWARK_TIMEOUT_H

#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bw_timeout_scope {
  BW_TIMEOUT_SCOPE_UNSPECIFIED = 0, /* default: no order-check intent */
  BW_TIMEOUT_SCOPE_TOTAL = 1,       /* meant to bound the whole call (put it outside retry) */
  BW_TIMEOUT_SCOPE_PER_ATTEMPT = 2  /* meant to bound one attempt (put it inside retry) */
} bw_timeout_scope_t;

typedef struct bw_timeout_opts {
  /* Default 30000 ms (Polly v8 TimeoutStrategyOptions.Timeout = 30 s;
   * resilience4j TimeLimiter uses 1 s). Must be > 0; longer than
   * INT64_MAX ns (~292 years) counts as that. */
  uint64_t timeout_ms;
  /* Finer resolution; if non-zero it wins over timeout_ms. Default 0. */
  uint64_t timeout_ns;
  /* What the timeout is meant to bound; only the order check reads it. */
  bw_timeout_scope_t scope;
} bw_timeout_opts_t;

void bw_timeout_opts_init(bw_timeout_opts_t *opts);

/* Owns: *out is yours (bw_layer_release). opts may be NULL (defaults).
 * Errors: BW_ERR_INVALID_ARGUMENT (zero timeout), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_timeout_new(bw_layer_t **out, const bw_timeout_opts_t *opts);

#ifdef __cplusplus
}
#endif
#endif
