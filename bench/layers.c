/* bench/layers: the layers table of BENCH.md.
 *
 * A trivial service that completes at once (a sync function service with a
 * static response), called 1,000,000 times per pass:
 *   call_bare          the service alone, one call at a time
 *   call_stack         fallback + retry(3, never triggered) + circuit breaker
 *                      (closed) + rate limit (never throttles) + bulkhead(1024)
 *                      + timeout(1 s), one call at a time
 *   call_stack_64      the same, 64 calls in flight
 *   breaker_contended  2 chains (one per worker) through one shared breaker
 * "One call at a time" = the completion callback starts the next call (so
 * each call includes its completion hop to a worker, as the contract says).
 * Median of 5 timed passes after one untimed warm-up at 1/10; min/max on a
 * `#` line; fresh runtime (2 workers) per workload; peak RSS at the end.
 * call_bare and call_stack alternate their passes and the median of the
 * per-pair differences is printed on a `#` line (the goal is stated as a
 * difference; see bare_and_stack).
 * Build release: -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG".
 * Optional argv[1]: one workload name. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/layer.h"
#include "bulwark/rate_limit.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"

#define PASSES 5
#define CALLS 1000000L

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(bw_error_t *e, const char *what) {
  if (!e) return;
  char buf[512];
  bw_error_format(e, buf, sizeof buf, 0);
  fprintf(stderr, "%s: %s\n", what, buf);
  exit(1);
}

static int resp_value = 1;
static bw_error_t *trivial(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  *resp = &resp_value;
  *rf = NULL;
  return NULL;
}

/* ---- chains ----------------------------------------------------------------- */

/* The calls of one pass, shared by its chains. */
typedef struct run {
  bw_service_t *svc;
  bw_runtime_t *rt;
  atomic_long errors;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int chains_done;
} run_t;

/* One chain: each completion starts the chain's next call. Its count is a
 * plain field: a chain's calls follow one another (each is started by the
 * previous one's callback), so one thread at a time touches it, and a
 * shared atomic counter would add a locked instruction per call that is the
 * benchmark's, not the library's (tower_ref's loop counter is a local). */
typedef struct chain {
  run_t *r;
  long left;
} chain_t;

static void next(chain_t *ch);
static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  chain_t *ch = arg;
  if (err) atomic_fetch_add_explicit(&ch->r->errors, 1, memory_order_relaxed);
  bw_call_free(call);
  next(ch);
}
static void next(chain_t *ch) {
  run_t *r = ch->r;
  if (ch->left-- <= 0) {
    pthread_mutex_lock(&r->mu);
    r->chains_done++;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return;
  }
  bw_call_t *c;
  die(bw_call_new(&c, r->svc, r->rt), "bw_call_new");
  die(bw_service_call(r->svc, c, on_done, ch), "bw_service_call");
}

typedef struct starter {
  chain_t *ch;
  int chains;
} starter_t;
static bw_poll_t start_poll(bw_task_t *self, void *arg) {
  starter_t *s = arg;
  for (int i = 0; i < s->chains; i++) next(&s->ch[i]);
  return BW_READY;
}

#define MAX_CHAINS 64

/* ns per call for n calls with `chains` in flight (n split evenly). */
static double run_calls(bw_runtime_t *rt, bw_service_t *svc, long n, int chains) {
  run_t r = {.svc = svc, .rt = rt};
  atomic_store(&r.errors, 0);
  pthread_mutex_init(&r.mu, NULL);
  pthread_cond_init(&r.cv, NULL);
  chain_t ch[MAX_CHAINS];
  for (int i = 0; i < chains; i++) ch[i] = (chain_t){&r, n / chains + (i < n % chains)};
  uint64_t t0 = now_ns();
  if (chains == 2) {
    /* one chain per worker: two separate spawns */
    starter_t one = {&ch[0], 1}, two = {&ch[1], 1};
    die(bw_spawn(rt, start_poll, &one, NULL), "spawn");
    die(bw_spawn(rt, start_poll, &two, NULL), "spawn");
  } else {
    starter_t s = {ch, chains};
    die(bw_block_on(rt, start_poll, &s, NULL), "block_on");
  }
  pthread_mutex_lock(&r.mu);
  while (r.chains_done < chains) pthread_cond_wait(&r.cv, &r.mu);
  pthread_mutex_unlock(&r.mu);
  uint64_t t1 = now_ns();
  if (atomic_load(&r.errors)) {
    fprintf(stderr, "%ld calls failed\n", atomic_load(&r.errors));
    exit(1);
  }
  pthread_mutex_destroy(&r.mu);
  pthread_cond_destroy(&r.cv);
  return (double)(t1 - t0) / (double)n;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef enum { W_BARE, W_STACK, W_BREAKER } what_t;

static bw_service_t *build(what_t w, bw_service_t *leaf) {
  if (w == W_BARE) return bw_service_ref(leaf);
  bw_layer_t *l[6];
  size_t n = 0;
  if (w == W_STACK) {
    bw_fallback_opts_t fo;
    bw_fallback_opts_init(&fo);
    fo.value = "x";
    fo.value_len = 1;
    die(bw_fallback_new(&l[n++], &fo), "fallback");
    bw_retry_opts_t ro;
    bw_retry_opts_init(&ro);
    die(bw_retry_new(&l[n++], &ro), "retry");
  }
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  die(bw_circuit_breaker_new(&l[n++], &bo), "breaker");
  if (w == W_STACK) {
    bw_rate_limit_opts_t rl;
    bw_rate_limit_opts_init(&rl);
    rl.rate_per_sec = 1e9;
    rl.burst = 1000000000ull;
    die(bw_rate_limit_new(&l[n++], &rl), "rate_limit");
    bw_bulkhead_opts_t bh;
    bw_bulkhead_opts_init(&bh);
    bh.max_concurrent = 1024;
    die(bw_bulkhead_new(&l[n++], &bh), "bulkhead");
    bw_timeout_opts_t to;
    bw_timeout_opts_init(&to);
    to.timeout_ms = 1000;
    die(bw_timeout_new(&l[n++], &to), "timeout");
  }
  bw_service_t *s;
  die(bw_stack_build(&s, NULL, l, n, leaf, NULL), "stack");
  for (size_t i = 0; i < n; i++) bw_layer_release(l[i]);
  return s;
}

/* One workload ready to run: a fresh runtime (2 workers) and its service. */
typedef struct prepared {
  const char *name;
  int chains;
  bw_runtime_t *rt;
  bw_service_t *leaf, *svc;
  double v[PASSES];
} prepared_t;

static void prepare(prepared_t *p, const char *name, what_t w, int chains) {
  p->name = name;
  p->chains = chains;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  die(bw_runtime_new(&p->rt, &o), "bw_runtime_new");
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = trivial;
  die(bw_service_from_fn(&p->leaf, &fo), "fn service");
  p->svc = build(w, p->leaf);
  run_calls(p->rt, p->svc, CALLS / 10, chains); /* warm-up */
}

static void pass(prepared_t *p, int i) { p->v[i] = run_calls(p->rt, p->svc, CALLS, p->chains); }

/* Print the median (min/max on a # line) and free the workload. */
static double report(prepared_t *p) {
  double v[PASSES];
  memcpy(v, p->v, sizeof v);
  qsort(v, PASSES, sizeof *v, cmp_d);
  printf("# %s: %ld calls, %d in flight, min %.1f max %.1f ns/call\n", p->name, CALLS, p->chains,
         v[0], v[PASSES - 1]);
  printf("%s %.1f ns/call\n", p->name, v[PASSES / 2]);
  fflush(stdout);
  bw_service_release(p->svc);
  bw_service_release(p->leaf);
  bw_runtime_free(p->rt);
  return v[PASSES / 2];
}

static void workload(const char *name, what_t w, int chains, const char *only) {
  if (only && strcmp(only, name) != 0) return;
  prepared_t p;
  prepare(&p, name, w, chains);
  for (int i = 0; i < PASSES; i++) pass(&p, i);
  report(&p);
}

/* call_bare and call_stack with their passes alternating (each on its own
 * fresh runtime): this VM's speed drifts by tens of percent within a
 * minute, so the stack's cost over the bare call is judged per pair. */
static void bare_and_stack(const char *only) {
  if (only && strcmp(only, "call_bare") && strcmp(only, "call_stack")) return;
  prepared_t bare, stack;
  prepare(&bare, "call_bare", W_BARE, 1);
  prepare(&stack, "call_stack", W_STACK, 1);
  double over[PASSES];
  for (int i = 0; i < PASSES; i++) {
    pass(&bare, i);
    pass(&stack, i);
    over[i] = stack.v[i] - bare.v[i];
  }
  report(&bare);
  report(&stack);
  qsort(over, PASSES, sizeof *over, cmp_d);
  printf("# call_stack - call_bare: median of the per-pair differences %.1f ns (min %.1f max %.1f)\n",
         over[PASSES / 2], over[0], over[PASSES - 1]);
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  bare_and_stack(only);
  workload("call_stack_64", W_STACK, 64, only);
  workload("breaker_contended", W_BREAKER, 2, only);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("layers_peak_rss %ld KiB\n", ru.ru_maxrss);
  return 0;
}
