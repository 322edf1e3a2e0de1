/* Shared harness of the layer tests (circuit breaker, keyed breaker, rate
 * limit, bulkhead, chaos): a scriptable async backend service, recorded
 * call results, recorded layer events, and helpers to start and wait for
 * calls from the test thread.
 *
 * layer_harness.c is linked into every test of tests/layers, so all its
 * names carry the lh_ prefix; only tests that include this header use it.
 * Include after <cmocka.h>. Waits use real time only as a 30 s safety
 * limit (they return as soon as the awaited thing happens). */
#ifndef BW_TESTS_LAYER_HARNESS_H
#define BW_TESTS_LAYER_HARNESS_H

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/layer.h"
#include "bulwark/metrics.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"

#define MS_ (UINT64_C(1000000))

/* BW_TEST_SCALE (default 1) and n scaled by it, at least 1. */
double lh_scale(void);
int lh_scaled(int n);

/* A new runtime (asserts success); paused: BW_CLOCK_PAUSED. */
bw_runtime_t *lh_rt(bool paused, unsigned workers);

/* One mutex/cond for every completion in the test binary: the backend's
 * pending list and every lh_res_t's done count change under lh_mu, with a
 * broadcast on lh_cv. */
extern pthread_mutex_t lh_mu;
extern pthread_cond_t lh_cv;

/* The backend: async function service. HOLD keeps calls pending until the
 * test completes them; otherwise each call completes at once with the
 * scripted kind for its number (BW_ERR_NONE = success with an int response
 * holding the call number, past the script: `dflt`). */
typedef struct lh_backend {
  bool hold;
  bw_error_kind_t script[4096];
  int nscript;
  bw_error_kind_t dflt;
  int64_t detail;
  atomic_int calls, cancels;
  bw_call_t *pending[4096];
  int npending; /* under lh_mu */
} lh_backend_t;

/* A function service over b (asserts success); the caller frees it. */
bw_service_t *lh_backend_svc(lh_backend_t *b);
/* Wait until the backend holds n pending calls; returns how many it holds. */
int lh_wait_pending(lh_backend_t *b, int n);
/* Complete the oldest pending call (kind NONE = success). */
void lh_finish_one(lh_backend_t *b, bw_error_kind_t k);
/* Complete the newest pending call with success, if any (false: none);
 * for storms where order does not matter. */
bool lh_finish_any(lh_backend_t *b);

/* A call from the test thread and its recorded completion. */
typedef struct lh_res {
  bw_call_t *call;
  bw_runtime_t *rt;
  atomic_int done;
  bw_error_kind_t kind;
  int64_t retry_after_ms;
  bool injected;
  uint64_t at_ns;
  int resp;
} lh_res_t;

/* Completion callback recording into the lh_res_t `arg`. */
void lh_on_done(bw_call_t *call, const bw_error_t *err, void *arg);
/* Start a call; timeout_ms 0: no deadline. */
void lh_start(lh_res_t *r, bw_service_t *svc, bw_runtime_t *rt, uint64_t timeout_ms);
/* Start a call with context ctx (bw_call_set_context), no deadline. */
void lh_start_ctx(lh_res_t *r, bw_service_t *svc, bw_runtime_t *rt, void *ctx);
/* Wait for r's completion and assert it completed exactly once. */
void lh_wait(lh_res_t *r);
/* Wait until at least `want` of the n results are done; returns how many. */
int lh_wait_done(lh_res_t *r, int n, int want);
/* Run one call to completion (the call is freed); returns its kind. */
bw_error_kind_t lh_call(bw_service_t *svc, bw_runtime_t *rt, lh_res_t *r);
/* lh_call with a call context (lh_start_ctx). */
bw_error_kind_t lh_call_ctx(bw_service_t *svc, bw_runtime_t *rt, lh_res_t *r, void *ctx);
/* Free r's call (NULL is fine). */
void lh_free(lh_res_t *r);

/* Cancel storm: a thread that cancels every third started call r[0], r[3],
 * ... of r[0..n) (sched_yield every 30 when `yield`). */
typedef struct lh_storm {
  lh_res_t *r;
  int n;
  bool yield;
  pthread_t th;
} lh_storm_t;
void lh_storm_start(lh_storm_t *s, lh_res_t *r, int n, bool yield);
void lh_storm_join(lh_storm_t *s);

/* Counts of results by kind. */
typedef struct lh_tally {
  int n[BW_ERR__MAX];
} lh_tally_t;
/* lh_wait for each of the n results in turn (each must complete exactly
 * once), count them by kind and free their calls. */
lh_tally_t lh_wait_tally(lh_res_t *r, int n);

/* Assert that e is an error of `kind`, and drop it. */
void lh_expect_error(bw_error_t *e, bw_error_kind_t kind);

/* Assert that the Prometheus metrics text contains `needle`. */
void lh_assert_metric(const char *needle);

/* Recorded events of one layer (the test initialises mu). */
typedef struct lh_events {
  pthread_mutex_t mu;
  int n;
  struct {
    bw_event_type_t type;
    int from, to;
    const char *reason;
    uint64_t delay_ns;
  } ev[512];
} lh_events_t;

/* Event hook recording into the lh_events_t `arg` (first 512 events). */
void lh_on_event(const bw_event_t *ev, void *arg);
int lh_count_events(lh_events_t *e, bw_event_type_t type);

/* An answer racing a timeout. lh_answer_on_timeout is an event hook for a
 * timeout layer (arg: lh_late_answer_t, zeroed but for be): at the first
 * BW_EVENT_TIMEOUT (emitted after the timeout won the call, before the
 * inner node's ops->cancel) it answers the backend's newest pending call
 * from a thread that is not a worker, and lets the backend answer later
 * calls at once (be->hold = false). That answer's delivery is left to a
 * worker task: on a runtime with one worker it runs after the timer
 * callback, so after the aborted call's finish hooks (an outer retry's
 * resume and next attempt included). Its response counts in `freed` when
 * it is freed. */
typedef struct lh_late_answer {
  lh_backend_t *be;
  atomic_int fired, freed;
} lh_late_answer_t;
void lh_answer_on_timeout(const bw_event_t *ev, void *arg);

/* The setting of the "late child answer after a retry resume" tests: a
 * paused runtime with one worker whose clock moves only by
 * bw_runtime_advance, a backend holding its calls, and (lh_resume_build)
 * retry (2 attempts, no backoff) over timeout(timeout_ms) over a layer,
 * with lh_answer_on_timeout on the timeout. */
typedef struct lh_resume {
  bw_runtime_t *rt;
  lh_backend_t *be;
  bw_service_t *backend; /* lh_backend_svc(be) */
  bw_layer_t *l[3];      /* retry, timeout, the layer under test */
  bw_service_t *svc;
  lh_late_answer_t la;
  bw_event_hook_t *hook;
} lh_resume_t;
lh_resume_t *lh_resume_new(void);
/* Build f->svc over inner (NULL: the backend); takes `layer`. */
void lh_resume_build(lh_resume_t *f, uint64_t timeout_ms, bw_layer_t *layer, bw_service_t *inner);
void lh_resume_free(lh_resume_t *f);

/* bw_stack_build of the n layers over inner (asserts success). */
bw_service_t *lh_stack(bw_layer_t **layers, size_t n, bw_service_t *inner);

/* Monotonic real time in ms. */
uint64_t lh_real_ms(void);
/* Spin (yielding, no sleep) until expr holds or 30 s of real time pass. */
#define LH_UNTIL(expr)                                                   \
  do {                                                                   \
    uint64_t lh_end_ = lh_real_ms() + 30000;                             \
    while (!(expr) && lh_real_ms() < lh_end_) sched_yield();             \
  } while (0)

/* Start n calls from inside one task on a worker, so they all reach the
 * stack in this order before the paused clock can move. */
void lh_start_batch(lh_res_t *r, int n, bw_service_t *svc, bw_runtime_t *rt,
                    uint64_t timeout_ms);

/* The usual fixture: a runtime with 2 workers, a backend, and svc = one
 * layer over the backend, with the layer's events recorded in ev. */
typedef struct lh_fx {
  bw_runtime_t *rt;
  lh_backend_t *be;
  bw_service_t *inner, *svc;
  bw_layer_t *layer;
  lh_events_t ev;
  bw_event_hook_t *hook; /* NULL: events not recorded */
  bw_layer_t *timeout;   /* lh_fx_timeout's layer, or NULL */
  bw_service_t *timed;   /* lh_fx_timeout's service, or NULL */
} lh_fx_t;

/* Runtime (paused: BW_CLOCK_PAUSED) and backend (hold: keep calls pending);
 * the layer is added with lh_fx_stack. */
lh_fx_t *lh_fx_new(bool paused, bool hold);
/* Build svc = layer over the backend; the fixture takes the layer's
 * reference. events: record the layer's events in f->ev. */
void lh_fx_stack(lh_fx_t *f, bw_layer_t *layer, bool events);
/* A second service over the same layer and backend: a timeout layer of
 * timeout_ms outside f->layer. The fixture owns it (once per fixture). */
bw_service_t *lh_fx_timeout(lh_fx_t *f, uint64_t timeout_ms);
/* Free everything lh_fx_new / lh_fx_stack / lh_fx_timeout made. */
void lh_fx_free(lh_fx_t *f);

/* A counting allocator for allocation-free checks: install it once at the
 * start of main (returns 0 on success); lh_allocs counts every malloc,
 * calloc and realloc through it since. */
int lh_count_allocs_install(void);
long lh_allocs(void);
/* Needs lh_count_allocs_install. While ns > 0, every allocation made on a
 * worker of rt first busy-waits ns of real time (0: stop). In steady state
 * the library allocates only for new errors, so this stretches the window
 * between a layer's decision and the error it makes for it (a timeout
 * that fired, before its abort), to let another thread's race land there. */
void lh_slow_worker_allocs(bw_runtime_t *rt, uint64_t ns);

/* Needs lh_count_allocs_install. After a warm-up of 200, runs
 * lh_scaled(5000) calls through svc one after another, each started from the
 * previous one's completion callback (so on a worker, as in a server), and
 * asserts that every one failed with `kind` and retry-after hint
 * `retry_after_ms`, and that at most 2 allocations were made (the first
 * call's start from this thread). */
void lh_assert_rejections_do_not_allocate(bw_service_t *svc, bw_runtime_t *rt,
                                          bw_error_kind_t kind, int64_t retry_after_ms);

#endif
