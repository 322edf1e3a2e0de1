/* flaky_backend: wrap a flaky user function in the full bulwark stack and
 * watch what the layers do.
 *
 * The "backend" is a plain C function run as an async service: it answers
 * after a random latency, fails with 503 sometimes, and sometimes hangs.
 * The stack, outermost first:
 *   fallback (answers "cached" when everything else failed)
 *   timeout 2 s (total)
 *   retry (4 attempts, exponential 50 ms x2, full jitter, shared budget)
 *   circuit breaker (consecutive failures: 5, open 1 s)
 *   bulkhead (8 at once)
 *   timeout 100 ms (per attempt)
 * (the bulkhead queues up to 32 waiting calls).
 * Every event is printed as it happens; the metrics are printed at the end
 * in Prometheus text format. Runs on the paused clock: the simulated seconds
 * pass instantly and a run is the same every time (seeded). No servers. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/layer.h"
#include "bulwark/metrics.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"

#define CALLS 24

static void die(bw_error_t *e, const char *what) {
  if (!e) return;
  char buf[512];
  bw_error_format(e, buf, sizeof buf, 0);
  fprintf(stderr, "%s: %s\n", what, buf);
  exit(1);
}

/* ---- the flaky backend ------------------------------------------------------ */

typedef struct backend {
  pthread_mutex_t mu;
  uint64_t rng;
  unsigned served;
} backend_t;

typedef struct bstate { /* per-call scratch (bw_call_state) */
  _Atomic(bw_timer_t *) timer; /* read by the cancel hook, maybe on another thread */
  atomic_int claimed;          /* 0 open; 1 the answer or the cancel hook owns the end */
  atomic_int hand;             /* frees the timer when the cancel hook won but could not stop it */
  bw_call_t *call;
  int outcome; /* 0 ok, 1 fail */
} bstate_t;

static unsigned next_rand(backend_t *b) {
  pthread_mutex_lock(&b->mu);
  b->rng = b->rng * 6364136223846793005ull + 1442695040888963407ull;
  unsigned r = (unsigned)(b->rng >> 33);
  pthread_mutex_unlock(&b->mu);
  return r;
}

/* The first of the answer and the cancel hook to claim the call decides.
 * Nobody waits on a timer (a cancel may run inside another timer callback
 * of the same batch): when the cancel hook won but could not stop the
 * timer, whichever of the two finishes last frees it (hand: +2, -1 each). */
static void free_timer_last(bstate_t *st, bw_timer_t *t) {
  if (atomic_fetch_sub(&st->hand, 1) == 1) bw_timer_free(t);
}

static void answer(bw_timer_t *t, void *arg) {
  bstate_t *st = arg;
  bw_call_t *call = st->call;
  int zero = 0;
  if (atomic_compare_exchange_strong(&st->claimed, &zero, 1)) {
    if (st->outcome) {
      bw_call_complete(call, NULL, NULL,
                       bw_error_new(BW_ERR_HTTP_STATUS, 503, "backend: 503 Service Unavailable"));
    } else {
      char *body = malloc(32);
      snprintf(body, 32, "fresh #%d", *(int *)bw_call_request(call));
      bw_call_complete(call, body, free, NULL);
    }
    bw_timer_free(t); /* allowed inside its own callback */
  } else {
    free_timer_last(st, t);
  }
  bw_call_unref(call);
}

static void backend_call(void *arg, bw_call_t *call) {
  backend_t *b = arg;
  bstate_t *st = bw_call_state(call);
  unsigned r = next_rand(b);
  uint64_t latency_ms = 5 + r % 46; /* 5..50 ms */
  unsigned roll = (r >> 8) % 100;
  if (roll < 15) latency_ms = 10000; /* hangs: the per-attempt timeout cuts it */
  st->outcome = roll >= 15 && roll < 50; /* 35% answer 503 */
  st->call = call;
  bw_call_ref(call); /* the timer's reference */
  bw_timer_t *t;
  die(bw_timer_new(bw_call_runtime(call), answer, st, &t), "timer");
  atomic_fetch_add(&st->hand, 2);
  atomic_store(&st->timer, t);
  bw_error_t *e = bw_timer_arm(t, bw_runtime_now_ns(bw_call_runtime(call)) + latency_ms * 1000000ull);
  if (e) {
    int zero = 0;
    if (atomic_compare_exchange_strong(&st->claimed, &zero, 1)) bw_timer_free(t);
    else free_timer_last(st, t);
    bw_call_complete(call, NULL, NULL, e);
    bw_call_unref(call);
  }
}

static void backend_cancel(void *arg, bw_call_t *call) {
  bstate_t *st = bw_call_state(call);
  int zero = 0;
  if (!atomic_compare_exchange_strong(&st->claimed, &zero, 1)) return;
  bw_timer_t *t = atomic_load(&st->timer);
  if (!t) {
    atomic_fetch_sub(&st->hand, 1); /* not armed yet: answer() finds the claim */
  } else if (bw_timer_cancel(t)) { /* stopped: it will not fire, clean up here */
    bw_timer_free(t);
    bw_call_unref(call);
  } else {
    free_timer_last(st, t);
  }
}

/* ---- events ------------------------------------------------------------------ */

static bw_runtime_t *g_rt;
static uint64_t g_t0;

static void on_event(const bw_event_t *ev, void *arg) {
  char err[256] = "";
  if (ev->error) bw_error_format(ev->error, err, sizeof err, 0);
  double t = (double)(bw_runtime_now_ns(g_rt) - g_t0) / 1e9;
  printf("  [%7.3fs] %-10s %d:%-15s %-16s", t, ev->stack ? ev->stack : "-", ev->layer_index,
         ev->layer_kind, bw_event_type_name(ev->type));
  if (ev->attempt) printf(" attempt=%" PRIu32, ev->attempt);
  if (ev->delay_ns) printf(" delay=%.1fms", (double)ev->delay_ns / 1e6);
  if (ev->type == BW_EVENT_BREAKER_STATE) printf(" %d->%d", ev->from_state, ev->to_state);
  if (ev->reason) printf(" reason=%s", ev->reason);
  if (err[0]) printf(" error=\"%s\"", err);
  printf("\n");
}

/* ---- calls ------------------------------------------------------------------------ */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} waiter_t;

static waiter_t g_wait = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
static int g_ids[CALLS];

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  int id = *(int *)bw_call_request(call);
  if (err) {
    char buf[512];
    bw_error_format(err, buf, sizeof buf, 0);
    printf("call %2d: ERROR %s\n", id, buf);
  } else {
    const bw_error_t *fe = bw_call_fallback_error(call);
    char buf[256] = "";
    if (fe) bw_error_format(fe, buf, sizeof buf, 0);
    if (fe)
      printf("call %2d: OK \"%s\" (fallback for: %s)\n", id, (const char *)bw_call_response(call), buf);
    else
      printf("call %2d: OK \"%s\"\n", id, (const char *)bw_call_response(call));
  }
  bw_call_free(call);
  pthread_mutex_lock(&g_wait.mu);
  g_wait.done++;
  pthread_cond_signal(&g_wait.cv);
  pthread_mutex_unlock(&g_wait.mu);
}

int main(void) {
  bw_runtime_opts_t ro;
  bw_runtime_opts_init(&ro);
  ro.worker_threads = 2;
  ro.clock = BW_CLOCK_PAUSED;
  die(bw_runtime_new(&g_rt, &ro), "runtime");
  g_t0 = bw_runtime_now_ns(g_rt);

  backend_t backend = {PTHREAD_MUTEX_INITIALIZER, 2024, 0};
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.async = backend_call;
  fo.cancel = backend_cancel;
  fo.arg = &backend;
  fo.call_state_size = sizeof(bstate_t);
  fo.kind = "flaky";
  bw_service_t *svc;
  die(bw_service_from_fn(&svc, &fo), "backend service");

  bw_layer_t *l[6];
  bw_fallback_opts_t fb;
  bw_fallback_opts_init(&fb);
  fb.value = "cached";
  fb.value_len = sizeof "cached";
  die(bw_fallback_new(&l[0], &fb), "fallback");
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 2000;
  to.scope = BW_TIMEOUT_SCOPE_TOTAL;
  die(bw_timeout_new(&l[1], &to), "timeout");
  bw_retry_budget_t *budget;
  die(bw_retry_budget_new(&budget, NULL), "budget");
  bw_retry_opts_t rt;
  bw_retry_opts_init(&rt);
  rt.max_attempts = 4;
  rt.backoff.base_ns = 50000000ull;
  rt.seed = 7;
  rt.budget = budget;
  die(bw_retry_new(&l[2], &rt), "retry");
  bw_retry_budget_release(budget);
  bw_circuit_breaker_opts_t cb;
  bw_circuit_breaker_opts_init(&cb);
  cb.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  cb.consecutive_failures = 5;
  cb.open_duration_ms = 1000;
  cb.runtime = g_rt;
  die(bw_circuit_breaker_new(&l[3], &cb), "breaker");
  bw_bulkhead_opts_t bh;
  bw_bulkhead_opts_init(&bh);
  bh.max_concurrent = 8;
  bh.max_queue = 32; /* wait for a permit rather than reject */
  die(bw_bulkhead_new(&l[4], &bh), "bulkhead");
  to.timeout_ms = 100;
  to.scope = BW_TIMEOUT_SCOPE_PER_ATTEMPT;
  die(bw_timeout_new(&l[5], &to), "timeout");

  bw_stack_warnings_t warn;
  bw_service_t *stack;
  die(bw_stack_build(&stack, "flaky", l, 6, svc, &warn), "stack");
  printf("stack \"flaky\": fallback > timeout(2s) > retry(4) > breaker > bulkhead(8, queue 32) > "
         "timeout(100ms) > flaky backend; order warnings: %zu\n",
         warn.count);
  for (size_t i = 0; i < warn.count && i < BW_STACK_MAX_WARNINGS; i++)
    printf("  warning: %s\n", warn.items[i].message);

  bw_event_hook_t *hook;
  die(bw_event_hook_add(&hook, NULL, NULL, on_event, NULL), "hook");

  for (int i = 0; i < CALLS; i++) {
    g_ids[i] = i + 1;
    bw_call_t *c;
    die(bw_call_new(&c, stack, g_rt), "call");
    bw_call_set_request(c, &g_ids[i], NULL);
    die(bw_service_call(stack, c, on_done, NULL), "submit");
  }
  pthread_mutex_lock(&g_wait.mu);
  while (g_wait.done < CALLS) pthread_cond_wait(&g_wait.cv, &g_wait.mu);
  pthread_mutex_unlock(&g_wait.mu);

  bw_event_hook_remove(hook);
  const bw_histogram_t *h = bw_stack_latency(stack);
  printf("\n%" PRIu64 " calls, %" PRIu64 " ok; latency p50 %.1f ms, p99 %.1f ms (simulated time)\n",
         bw_stack_call_count(stack), bw_stack_outcome_count(stack, BW_ERR_NONE),
         (double)bw_histogram_percentile(h, 0.5) / 1e6,
         (double)bw_histogram_percentile(h, 0.99) / 1e6);
  char *text;
  die(bw_metrics_prometheus_text(&text, NULL), "metrics");
  printf("\n--- metrics (Prometheus text, histogram buckets elided) ---\n");
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
    if (!strstr(line, "_bucket{")) printf("%s\n", line);
  bw_metrics_text_free(text);

  bw_service_release(stack);
  for (int i = 0; i < 6; i++) bw_layer_release(l[i]);
  bw_service_release(svc);
  bw_runtime_free(g_rt);
  return 0;
}
