/* Fallback layer: when the inner call fails with an error the predicate
 * accepts, answer with
 *   - a VALUE: a copy of bytes given at creation (the response is a fresh
 *     copy per use, freed by the call's response destroy function), or
 *   - a FUNCTION: fn(arg, call, original_error, &resp, &resp_free), or
 *   - a SERVICE: another service called with the same (borrowed) request.
 * The original error stays reachable: it is the event's error
 * (BW_EVENT_FALLBACK_USED), bw_call_fallback_error(call) returns it after a
 * successful fallback, and when the fallback itself fails the call fails
 * with BW_ERR_FALLBACK_FAILED whose cause is the fallback's error and whose
 * related[0] is the original error.
 *
 * Default predicate (Polly v8 FallbackStrategyOptions: any outcome except
 * cancellation): every error except BW_ERR_CANCELLED and
 * BW_ERR_RUNTIME_SHUTDOWN. Put the fallback outermost (see layer.h).
 * Threads: any. */
#ifndef BULWARK_FALLBACK_H
#define BULWARK_FALLBACK_H

#include <stdbool.h>
#include <stddef.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bw_fallback_kind {
  BW_FALLBACK_VALUE = 0,
  BW_FALLBACK_FUNCTION = 1,
  BW_FALLBACK_SERVICE = 2
} bw_fallback_kind_t;

/* Returns NULL and sets *resp and *resp_free on success, or an error (consumed). */
typedef bw_error_t *(*bw_fallback_fn)(void *arg, bw_call_t *call, const bw_error_t *original,
                                      void **resp, bw_destroy_fn *resp_free);
/* True if `err` should be answered by the fallback. */
typedef bool (*bw_fallback_predicate)(const bw_error_t *err, void *arg);

typedef struct bw_fallback_opts {
  bw_fallback_kind_t kind;        /* default BW_FALLBACK_VALUE */
  const void *value;              /* VALUE: copied at bw_fallback_new */
  size_t value_len;               /* VALUE: bytes (0 allowed: empty response) */
  bw_fallback_fn fn;              /* FUNCTION */
  void *fn_arg;                   /* FUNCTION: not owned */
  bw_service_t *service;          /* SERVICE: referenced by the layer */
  bw_fallback_predicate predicate; /* default: see above */
  void *predicate_arg;
} bw_fallback_opts_t;

void bw_fallback_opts_init(bw_fallback_opts_t *opts);
/* Owns: *out is yours (bw_layer_release).
 * Errors: BW_ERR_INVALID_ARGUMENT (missing fn/service), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_fallback_new(bw_layer_t **out, const bw_fallback_opts_t *opts);

/* The default predicate. */
bool bw_fallback_default_predicate(const bw_error_t *err, void *arg);

/* After a call succeeded through a fallback: the error it replaced
 * (borrowed, valid until bw_call_free), else NULL. */
const bw_error_t *bw_call_fallback_error(const bw_call_t *call);

#ifdef __cplusplus
}
#endif
#endif
