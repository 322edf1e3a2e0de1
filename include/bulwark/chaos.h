/* Chaos layer: inject faults into the calls that pass through it, to test a
 * stack (and the code around it) against a misbehaving backend.
 *
 * WHICH calls: every call through the layer gets a sequence number k
 * (0, 1, 2... while enabled). A call is chosen when ANY set selector says
 * so: k < first_n; (k + 1) % every_nth == 0; a draw below `rate`; or
 * predicate(call). Draws come from a counter-based generator keyed by
 * (seed, k), so the same seed and call order choose the same calls and
 * draw the same latencies on every run, whatever the threads do.
 *
 * WHAT (the `faults` bit set, applied in this order):
 *   BW_CHAOS_LATENCY  wait first (fixed, uniform in [latency_ms,
 *                     latency_max_ms], or normal(latency_ms,
 *                     latency_stddev_ms) clamped at 0), then go on;
 *   BW_CHAOS_ERROR    complete with an error of error_kind (detail
 *                     error_detail). With error_mark_injected (default) its
 *                     cause is a BW_ERR_INJECTED error, so outer layers see
 *                     the chosen kind and bw_error_is(e, BW_ERR_INJECTED)
 *                     still tells it was chaos; error_kind BW_ERR_INJECTED
 *                     gives just that;
 *   BW_CHAOS_OUTCOME  complete with outcome(call, outcome_arg, &free): a
 *                     replaced response, the inner service is not called;
 *   BW_CHAOS_HANG     never answer: the call ends only when cancelled (a
 *                     timeout layer outside) or, at its deadline, with
 *                     BW_ERR_TIMEOUT ("hung until the deadline").
 * A chosen call with only LATENCY goes on to the inner service afterwards.
 * Each applied fault emits BW_EVENT_CHAOS_INJECTED (reason "latency",
 * "error", "outcome" or "hang"; delay_ns for latency).
 *
 * Defaults follow Polly v8's chaos strategies: enabled, InjectionRate 0.001;
 * fault ERROR of kind BW_ERR_INJECTED; seed 0 (Polly draws a random seed;
 * we replay by default).
 * Threads: any. bw_chaos_set_enabled may flip it while calls run. */
#ifndef BULWARK_CHAOS_H
#define BULWARK_CHAOS_H

#include <stdbool.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  BW_CHAOS_ERROR = 1u << 0,
  BW_CHAOS_LATENCY = 1u << 1,
  BW_CHAOS_OUTCOME = 1u << 2,
  BW_CHAOS_HANG = 1u << 3,
};

typedef enum bw_chaos_latency_dist {
  BW_CHAOS_LATENCY_FIXED = 0, /* latency_ms */
  BW_CHAOS_LATENCY_UNIFORM = 1, /* [latency_ms, latency_max_ms] */
  BW_CHAOS_LATENCY_NORMAL = 2   /* mean latency_ms, stddev latency_stddev_ms, >= 0 */
} bw_chaos_latency_dist_t;

typedef struct bw_chaos_opts {
  const char *name; /* copied. Default "chaos" */
  bool enabled;     /* Default true */
  uint64_t seed;    /* Default 0 */
  /* selectors (any of them chooses a call) */
  double rate;        /* 0..1. Default 0.001 (Polly InjectionRate); 0 turns it off */
  uint64_t first_n;   /* the first N calls. Default 0 (off) */
  uint64_t every_nth; /* every Nth call (N, 2N...). Default 0 (off) */
  bool (*predicate)(bw_call_t *call, void *arg); /* Default NULL (off) */
  void *predicate_arg;
  /* faults */
  unsigned faults;            /* BW_CHAOS_* bits. Default BW_CHAOS_ERROR */
  bw_error_kind_t error_kind; /* Default BW_ERR_INJECTED */
  int64_t error_detail;       /* e.g. 503 with BW_ERR_HTTP_STATUS. Default 0 */
  bool error_mark_injected;   /* Default true */
  bw_chaos_latency_dist_t latency_dist; /* Default FIXED */
  uint64_t latency_ms;        /* Default 0 */
  uint64_t latency_max_ms;    /* UNIFORM upper bound */
  double latency_stddev_ms;   /* NORMAL */
  /* OUTCOME: the response to answer with (and its destroy function in
   * *resp_free); runs on the calling thread. */
  void *(*outcome)(bw_call_t *call, void *arg, bw_destroy_fn *resp_free);
  void *outcome_arg;
} bw_chaos_opts_t;

void bw_chaos_opts_init(bw_chaos_opts_t *opts);

/* Owns: *out is yours (bw_layer_release). opts may be NULL (defaults).
 * Errors: BW_ERR_INVALID_ARGUMENT (rate outside 0..1, no fault, OUTCOME
 *         without a function, UNIFORM with max < min, unknown kind),
 *         BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_chaos_new(bw_layer_t **out, const bw_chaos_opts_t *opts);

/* Switch injection on or off at run time (off: calls pass untouched and
 * take no sequence number). No-op on a layer that is not chaos. */
void bw_chaos_set_enabled(bw_layer_t *chaos, bool enabled);
bool bw_chaos_enabled(bw_layer_t *chaos);
/* Calls chosen so far, and calls seen (sequence numbers handed out). */
uint64_t bw_chaos_injected(bw_layer_t *chaos);
uint64_t bw_chaos_seen(bw_layer_t *chaos);
/* Start the sequence again at k = 0 (to replay a run with the same seed). */
void bw_chaos_restart(bw_layer_t *chaos);

/* The decision for call number k, without a call (tests, tools): true if
 * chosen by first_n / every_nth / rate (not the predicate); *latency_ns
 * (may be NULL) gets the latency that call would get. */
bool bw_chaos_decide(bw_layer_t *chaos, uint64_t k, uint64_t *latency_ns);

#ifdef __cplusplus
}
#endif
#endif
