/* Bulkhead layer: at most max_concurrent calls run inside at once.
 *
 * A call that finds every permit taken waits in a bounded FIFO queue (up to
 * max_queue calls) for at most max_queue_wait_ms and never past its own
 * deadline; a call that finds the queue full, or whose wait runs out, is
 * rejected with BW_ERR_BULKHEAD_FULL (a static error when the queue is
 * full: no malloc) and BW_EVENT_REJECTED (reason "bulkhead_full" or
 * "queue_timeout"). A released permit goes straight to the oldest waiter.
 * The permit is returned exactly once: when the inner call completes, or is
 * cancelled (the caller's cancel or an outer timeout cancel it), and a
 * queued call that is cancelled leaves the queue.
 *
 * The limit can be changed while calls run (bw_bulkhead_set_limit):
 * raising it lets waiters in at once, lowering it takes effect as permits
 * come back. Gauges bulwark_bulkhead_in_use / _queued / _limit
 * {bulkhead="<name>"} are registered while the layer lives.
 *
 * Defaults follow resilience4j's BulkheadConfig (semaphore bulkhead):
 * maxConcurrentCalls 25; it has no queue beyond maxWaitDuration 0, so
 * max_queue defaults to 0 (Polly v7 BulkheadPolicy maxQueuingActions 0 too).
 * Threads: any; one bulkhead is meant to be shared by many calls/stacks. */
#ifndef BULWARK_BULKHEAD_H
#define BULWARK_BULKHEAD_H

#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bw_bulkhead_opts {
  const char *name;           /* events/metrics label, copied. Default "bulkhead" */
  uint32_t max_concurrent;    /* >= 1. Default 25 (r4j maxConcurrentCalls) */
  uint32_t max_queue;         /* waiting calls. Default 0: reject at once when full */
  uint64_t max_queue_wait_ms; /* 0 (default): wait until the call's deadline (or
                                 until cancelled when it has none); so does
                                 one past INT64_MAX ns (~292 years) */
} bw_bulkhead_opts_t;

void bw_bulkhead_opts_init(bw_bulkhead_opts_t *opts);

/* Owns: *out is yours (bw_layer_release). opts may be NULL (defaults).
 * Errors: BW_ERR_INVALID_ARGUMENT (max_concurrent 0), BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_bulkhead_new(bw_layer_t **out, const bw_bulkhead_opts_t *opts);

/* Permits held now / calls waiting now / the limit (0 if not a bulkhead). */
uint32_t bw_bulkhead_in_use(bw_layer_t *bulkhead);
uint32_t bw_bulkhead_queued(bw_layer_t *bulkhead);
uint32_t bw_bulkhead_limit(bw_layer_t *bulkhead);
/* Change the limit (>= 1). Errors: BW_ERR_INVALID_ARGUMENT. */
bw_error_t *bw_bulkhead_set_limit(bw_layer_t *bulkhead, uint32_t max_concurrent);

#ifdef __cplusplus
}
#endif
#endif
