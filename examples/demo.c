// valgrind: skip
/* (it needs a redis-server and bw-test-httpd: scripts/demo.sh starts them) */
/* demo: HTTP and Redis traffic through config-built resilience stacks, in
 * three phases: healthy, faults, recovery.
 *
 *   demo [CONFIG]          CONFIG default: examples/stacks.yaml
 *
 * Environment (scripts/demo.sh sets all of it):
 *   BW_DEMO_HTTP_PORT      port of bw-test-httpd on 127.0.0.1 (used by CONFIG)
 *   BW_DEMO_REDIS_PORT     port of redis-server on 127.0.0.1 (used by CONFIG)
 *   BW_DEMO_REDIS_PID      pid of that redis-server: the fault phase pauses it
 *                          with SIGSTOP (SIGCONT in recovery); unset: no pause
 *   BW_DEMO_PHASE_MS       length of each phase (default 3000 ms; recovery
 *                          lasts 1.5 times this)
 *
 * The config names two clients, `api` (HTTP) and `cache` (Redis), each
 * wrapped in its stack (fallback, timeouts, retry with a shared budget,
 * circuit breaker, and for HTTP a chaos layer that starts switched off).
 * A timer on the runtime sends a steady stream of calls to each. The fault
 * phase has two steps:
 *   degraded: 25% of HTTP calls ask the test server for "503 +
 *     Retry-After: 1" on their first attempt only, and the chaos layer is switched on (20% of HTTP
 *     attempts get 40-400 ms more latency; some then hit the 250 ms attempt
 *     timeout): retries absorb most of it;
 *   outage: Redis is paused (SIGSTOP), so commands time out, and 80% of
 *     HTTP calls get the 503: the breakers open, the fallbacks answer.
 * Recovery undoes all of it. Counters come from the calls' outcomes and
 * from the event hooks of bulwark/metrics.h (retries, fallbacks, breaker
 * rejections and state changes); latency is a bw_histogram_t.
 * Exit status 0 when the run completed (whatever the backends did). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "bulwark.h"
#include "bulwark/chaos.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/config.h"
#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/metrics.h"
#include "bulwark/redis.h"
#include "bulwark/service.h"

#define MS 1000000ull
#define MAX_IN_FLIGHT 256 /* per stack; the driver skips a tick's calls beyond it */
#define TICK_MS 10
#define MAX_TIMELINE 256

/* ---- per-stack state ----------------------------------------------------- */

struct stack_stats;

/* One call: found again in the hooks through bw_call_context (inner
 * attempts inherit it). Records are never reused while the demo runs, so a
 * late event of an inner attempt never sees a record of another call. */
typedef struct demo_call {
  struct stack_stats *st;
  uint64_t start_ns;
  atomic_bool retried, fallback;
  atomic_int orig_kind;
} demo_call_t;

/* Records in chunks, freed at exit (only the stack's timer allocates). */
#define CHUNK 1024
typedef struct chunk {
  struct chunk *next;
  size_t used;
  demo_call_t calls[CHUNK];
} chunk_t;

typedef struct stack_stats {
  const char *name;  /* the stack and client name in the config */
  bool redis;
  double rate;       /* calls per second the driver sends */
  bw_service_t *svc; /* client wrapped in its stack (from the registry) */
  bw_layer_t *breaker, *chaos; /* may be NULL */
  bw_event_hook_t *breaker_hook;
  bw_timer_t *timer;
  chunk_t *chunks;   /* call records (timer thread only until exit) */
  uint64_t last_tick_ns; /* timer thread only */
  double credit;     /* fractional calls carried to the next tick (timer thread only) */
  uint64_t seq;      /* calls sent (timer thread only) */
  bool armed;       /* main thread only */
  atomic_bool stop, stopped;
  atomic_uint_fast64_t in_flight, skipped;
  atomic_uint_fast64_t calls, ok, fallback, failed, retried, retries, rejected, injected;
  atomic_uint_fast64_t by_kind[BW_ERR__MAX]; /* the error under each fallback or failure */
  bw_histogram_t *latency;
} stack_stats_t;


typedef struct timeline_entry {
  uint64_t at_ns;
  const char *stack;
  int from, to;
  const char *reason;
} timeline_entry_t;

static bw_runtime_t *g_rt;
static bw_registry_t *g_reg;
static uint64_t g_t0;
static atomic_int g_http_fault_pct; /* share of HTTP calls that ask for a 503 */
static pthread_mutex_t g_tl_mu = PTHREAD_MUTEX_INITIALIZER;
static timeline_entry_t g_timeline[MAX_TIMELINE];
static size_t g_ntimeline;
static pid_t g_redis_pid;
static volatile sig_atomic_t g_redis_paused;

static stack_stats_t g_stacks[2] = {
    {.name = "api", .redis = false, .rate = 150},
    {.name = "cache", .redis = true, .rate = 300},
};
#define NSTACKS 2

static void redis_pause(bool on) {
  if (g_redis_pid <= 0) return;
  if (kill(g_redis_pid, on ? SIGSTOP : SIGCONT) == 0) g_redis_paused = on;
}

/* Never leave Redis stopped behind us. */
static void on_signal(int sig) {
  if (g_redis_paused) kill(g_redis_pid, SIGCONT);
  signal(sig, SIG_DFL);
  raise(sig);
}

/* The error that matters under the wrappers a retry adds. */
static bw_error_kind_t kind_of(const bw_error_t *e) {
  while (e && bw_error_kind(e) == BW_ERR_RETRIES_EXHAUSTED && bw_error_cause(e))
    e = bw_error_cause(e);
  return bw_error_kind(e);
}

/* ---- event hooks (run on workers; quick, no blocking) ----------------------- */

/* Every event in the process. The call's context (set by send_one, inherited
 * by every inner attempt) says which demo call, and so which stack, it is
 * about; events without one (breaker state changes) go to breaker_event. */
static void any_event(const bw_event_t *ev, void *arg) {
  (void)arg;
  demo_call_t *dc = ev->call ? bw_call_context(ev->call) : NULL;
  if (dc == NULL) return;
  stack_stats_t *st = dc->st;
  switch (ev->type) {
    case BW_EVENT_RETRY_SCHEDULED:
      atomic_fetch_add_explicit(&st->retries, 1, memory_order_relaxed);
      atomic_store_explicit(&dc->retried, true, memory_order_relaxed);
      break;
    case BW_EVENT_FALLBACK_USED:
      atomic_store_explicit(&dc->orig_kind, (int)kind_of(ev->error), memory_order_relaxed);
      atomic_store_explicit(&dc->fallback, true, memory_order_relaxed);
      break;
    case BW_EVENT_CHAOS_INJECTED:
      atomic_fetch_add_explicit(&st->injected, 1, memory_order_relaxed);
      break;
    default:
      break;
  }
}

/* Events of one stack's breaker: rejections and the state timeline. */
static void breaker_event(const bw_event_t *ev, void *arg) {
  stack_stats_t *st = arg;
  if (ev->type == BW_EVENT_REJECTED) {
    atomic_fetch_add_explicit(&st->rejected, 1, memory_order_relaxed);
  } else if (ev->type == BW_EVENT_BREAKER_STATE) {
    pthread_mutex_lock(&g_tl_mu);
    if (g_ntimeline < MAX_TIMELINE)
      g_timeline[g_ntimeline++] = (timeline_entry_t){bw_runtime_now_ns(g_rt) - g_t0, st->name,
                                                     ev->from_state, ev->to_state, ev->reason};
    pthread_mutex_unlock(&g_tl_mu);
  }
}

/* A phase boundary in the timeline (stack NULL). */
static void timeline_mark(const char *phase) {
  pthread_mutex_lock(&g_tl_mu);
  if (g_ntimeline < MAX_TIMELINE)
    g_timeline[g_ntimeline++] = (timeline_entry_t){bw_runtime_now_ns(g_rt) - g_t0, NULL, 0, 0, phase};
  pthread_mutex_unlock(&g_tl_mu);
}

/* ---- the traffic driver ------------------------------------------------------- */

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  demo_call_t *dc = arg;
  stack_stats_t *st = dc->st;
  bw_histogram_record(st->latency, bw_runtime_now_ns(g_rt) - dc->start_ns);
  if (err) {
    atomic_fetch_add_explicit(&st->failed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->by_kind[kind_of(err)], 1, memory_order_relaxed);
  } else if (atomic_load_explicit(&dc->fallback, memory_order_relaxed)) {
    atomic_fetch_add_explicit(&st->fallback, 1, memory_order_relaxed);
    int k = atomic_load_explicit(&dc->orig_kind, memory_order_relaxed);
    if (k > 0 && k < BW_ERR__MAX)
      atomic_fetch_add_explicit(&st->by_kind[k], 1, memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&st->ok, 1, memory_order_relaxed);
  }
  if (atomic_load_explicit(&dc->retried, memory_order_relaxed))
    atomic_fetch_add_explicit(&st->retried, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&st->calls, 1, memory_order_relaxed);
  bw_call_free(call);
  /* release: the main thread's acquire load of in_flight == 0 sees this
   * call finished before it frees the services */
  atomic_fetch_sub_explicit(&st->in_flight, 1, memory_order_release);
}

/* Build one request: HTTP GET of the catalogue, or a Redis SET/GET pair on
 * a few keys. HTTP faults: the test server's query parameters. In the
 * degraded step a faulty call's first attempt gets "503 + Retry-After: 1"
 * and a retry of it succeeds (key=<unique>&fail_first=1); in the outage
 * every attempt of a faulty call gets the 503. */
static bw_error_t *make_request(stack_stats_t *st, uint64_t n, void **req, bw_destroy_fn *destroy) {
  if (!st->redis) {
    int pct = atomic_load_explicit(&g_http_fault_pct, memory_order_relaxed);
    bool fault = (int)(n * 37 % 100) < pct; /* spreads faulty calls evenly over every 100 */
    char path[128];
    int len = snprintf(path, sizeof path, "/catalogue/%" PRIu64, n % 50);
    if (fault && pct < 50)
      snprintf(path + len, sizeof path - (size_t)len, "?key=c%" PRIu64 "&fail_first=1&retry_after=1", n);
    else if (fault)
      snprintf(path + len, sizeof path - (size_t)len, "?status=503&retry_after=1");
    *destroy = bw_http_request_destroy;
    return bw_registry_http_request(g_reg, st->name, "GET", path, (bw_http_request_t **)req);
  }
  char key[32], val[32];
  snprintf(key, sizeof key, "demo:item:%" PRIu64, (n / 2) % 100);
  snprintf(val, sizeof val, "v%" PRIu64, n);
  const char *set[] = {"SET", key, val}, *get[] = {"GET", key};
  *destroy = bw_redis_request_free;
  return n % 2 == 0 ? bw_redis_request_new((bw_redis_request_t **)req, 3, set, NULL)
                    : bw_redis_request_new((bw_redis_request_t **)req, 2, get, NULL);
}

static void send_one(stack_stats_t *st) {
  if (atomic_load_explicit(&st->in_flight, memory_order_relaxed) >= MAX_IN_FLIGHT) {
    atomic_fetch_add_explicit(&st->skipped, 1, memory_order_relaxed);
    return;
  }
  if (st->chunks == NULL || st->chunks->used == CHUNK) {
    chunk_t *c = calloc(1, sizeof *c);
    if (c == NULL) return;
    c->next = st->chunks;
    st->chunks = c;
  }
  demo_call_t *dc = &st->chunks->calls[st->chunks->used++];
  dc->st = st;
  dc->start_ns = bw_runtime_now_ns(g_rt);
  void *req = NULL;
  bw_destroy_fn destroy = NULL;
  bw_call_t *call = NULL;
  bw_error_t *err = make_request(st, st->seq++, &req, &destroy);
  if (err == NULL && (err = bw_call_new(&call, st->svc, g_rt)) != NULL) destroy(req);
  if (err) {
    bw_error_unref(err);
    return;
  }
  bw_call_set_request(call, req, destroy); /* the call owns req */
  bw_call_set_context(call, dc);
  atomic_fetch_add_explicit(&st->in_flight, 1, memory_order_relaxed);
  if ((err = bw_service_call(st->svc, call, on_done, dc)) != NULL) {
    /* refused before it started: on_done will not run */
    atomic_fetch_sub_explicit(&st->in_flight, 1, memory_order_relaxed);
    bw_error_unref(err);
    bw_call_free(call);
  }
}

/* Runs on a worker every TICK_MS: send this tick's share of the rate. */
static void on_tick(bw_timer_t *t, void *arg) {
  stack_stats_t *st = arg;
  if (atomic_load_explicit(&st->stop, memory_order_acquire)) { /* pairs with main's release */
    bw_timer_free(t);
    atomic_store_explicit(&st->stopped, true, memory_order_release); /* pairs with main */
    return;
  }
  uint64_t now = bw_runtime_now_ns(g_rt);
  if (st->last_tick_ns) st->credit += st->rate * (double)(now - st->last_tick_ns) / 1e9;
  st->last_tick_ns = now;
  for (; st->credit >= 1; st->credit -= 1) send_one(st);
  bw_error_t *err = bw_timer_arm(t, now + TICK_MS * MS);
  if (err) { /* runtime going away */
    bw_error_unref(err);
    bw_timer_free(t);
    atomic_store_explicit(&st->stopped, true, memory_order_release);
  }
}

/* ---- progress and summary -------------------------------------------------------- */

static const char *state_name(int s) { return bw_breaker_state_name((bw_breaker_state_t)s); }

static uint64_t ld(atomic_uint_fast64_t *a) { return atomic_load_explicit(a, memory_order_relaxed); }

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

typedef struct progress {
  bool tty;
  bool drawn;
  uint64_t last_ns;
  uint64_t last_calls[NSTACKS];
} progress_t;

/* Two rows (one per stack) under a header; on a terminal they are redrawn
 * in place, otherwise printed once a second. Fits 80 columns. */
static void progress_draw(progress_t *p, const char *phase, uint64_t phase_start_ns) {
  uint64_t now = bw_runtime_now_ns(g_rt);
  double dt = (double)(now - p->last_ns) / 1e9;
  if (p->tty && p->drawn) printf("\033[%dA", NSTACKS); /* back to the first row */
  for (int i = 0; i < NSTACKS; i++) {
    stack_stats_t *st = &g_stacks[i];
    uint64_t calls = ld(&st->calls);
    double rate = dt > 0 ? (double)(calls - p->last_calls[i]) / dt : 0;
    p->last_calls[i] = calls;
    const char *bs = st->breaker ? state_name(bw_circuit_breaker_state(st->breaker)) : "-";
    printf("%s%-8s %5.1fs  %-5s %7.0f %6" PRIu64 " %8" PRIu64 " %9" PRIu64 " %9" PRIu64 "  %s\n",
           p->tty ? "\033[2K" : "", phase, (double)(now - phase_start_ns) / 1e9, st->name, rate,
           ld(&st->ok), ld(&st->retried), ld(&st->rejected), ld(&st->fallback), bs);
  }
  fflush(stdout);
  p->last_ns = now;
  p->drawn = true;
}

/* Run one phase for ms, showing the progress rows. */
static void run_phase(progress_t *p, const char *phase, unsigned ms) {
  uint64_t start = bw_runtime_now_ns(g_rt);
  unsigned step = p->tty ? 250 : 1000;
  printf("%-8s %6s  %-5s %7s %6s %8s %9s %9s  %s\n", "phase", "time", "stack", "calls/s", "ok",
         "retried", "rejected", "fallbacks", "breaker");
  p->drawn = false;
  for (unsigned t = 0; t < ms; t += step) {
    sleep_ms(step < ms - t ? step : ms - t);
    progress_draw(p, phase, start);
  }
  printf("\n");
}

static void print_ms(char *buf, size_t len, uint64_t ns) {
  if (ns >= 10 * MS) snprintf(buf, len, "%.0f ms", (double)ns / 1e6);
  else snprintf(buf, len, "%.2f ms", (double)ns / 1e6);
}

static void summary(void) {
  printf("\n== summary ==\n");
  printf("%-6s %7s %7s %9s %7s %8s %8s %9s %9s\n", "stack", "calls", "ok", "fallback", "failed",
         "retried", "retries", "p50", "p99");
  for (int i = 0; i < NSTACKS; i++) {
    stack_stats_t *st = &g_stacks[i];
    char p50[32], p99[32];
    print_ms(p50, sizeof p50, bw_histogram_percentile(st->latency, 0.50));
    print_ms(p99, sizeof p99, bw_histogram_percentile(st->latency, 0.99));
    printf("%-6s %7" PRIu64 " %7" PRIu64 " %9" PRIu64 " %7" PRIu64 " %8" PRIu64 " %8" PRIu64
           " %9s %9s\n",
           st->name, ld(&st->calls), ld(&st->ok), ld(&st->fallback), ld(&st->failed),
           ld(&st->retried), ld(&st->retries), p50, p99);
  }
  printf("\nfailures by kind (the error under each fallback answer or failed call):\n");
  for (int i = 0; i < NSTACKS; i++) {
    stack_stats_t *st = &g_stacks[i];
    printf("  %-6s", st->name);
    int shown = 0;
    for (int k = 1; k < BW_ERR__MAX; k++) {
      uint64_t n = ld(&st->by_kind[k]);
      if (n) printf("%s%s %" PRIu64, shown++ ? ", " : " ", bw_error_kind_name((bw_error_kind_t)k), n);
    }
    printf("%s\n", shown ? "" : " none");
  }
  printf("\nother: api chaos latency injected into %" PRIu64 " attempts; breaker rejections: api %" PRIu64
         ", cache %" PRIu64 "; calls not sent (over %d in flight): api %" PRIu64 ", cache %" PRIu64 "\n",
         ld(&g_stacks[0].injected), ld(&g_stacks[0].rejected), ld(&g_stacks[1].rejected),
         MAX_IN_FLIGHT, ld(&g_stacks[0].skipped), ld(&g_stacks[1].skipped));

  printf("\n== breaker timeline (time since start) ==\n");
  pthread_mutex_lock(&g_tl_mu);
  if (g_ntimeline == 0) printf("  no state changes\n");
  for (size_t i = 0; i < g_ntimeline; i++) {
    timeline_entry_t *e = &g_timeline[i];
    if (e->stack == NULL) {
      printf("  %7.3fs  -- %s --\n", (double)e->at_ns / 1e9, e->reason);
      continue;
    }
    printf("  %7.3fs  %-6s %-9s -> %-9s%s%s%s\n", (double)e->at_ns / 1e9, e->stack,
           state_name(e->from), state_name(e->to), e->reason ? " (" : "",
           e->reason ? e->reason : "", e->reason ? ")" : "");
  }
  if (g_ntimeline == MAX_TIMELINE) printf("  (more changes not shown)\n");
  pthread_mutex_unlock(&g_tl_mu);
}

/* ---- setup and teardown ------------------------------------------------------------ */

static int report(const char *what, bw_error_t *err) {
  char buf[2048];
  bw_error_format(err, buf, sizeof buf, BW_ERROR_FMT_KIND);
  fprintf(stderr, "demo: %s: %s\n", what, buf);
  bw_error_unref(err);
  return 1;
}

/* Find the stack's breaker and chaos layers (prebuilt, shared by every
 * service the registry builds from that stack). */
static void find_layers(stack_stats_t *st) {
  for (size_t i = 0; i < 16; i++) {
    bw_layer_t *l = NULL;
    bw_error_t *err = bw_registry_stack_layer(g_reg, st->name, i, &l);
    if (err) {
      bw_error_unref(err);
      continue;
    }
    const char *kind = bw_layer_kind(l);
    if (!st->breaker && kind && strcmp(kind, "circuit_breaker") == 0) st->breaker = l;
    else if (!st->chaos && kind && strcmp(kind, "chaos") == 0) st->chaos = l;
    else bw_layer_release(l);
  }
}

static bw_error_t *setup_stack(stack_stats_t *st) {
  bw_error_t *err;
  if ((err = bw_histogram_new(&st->latency))) return err;
  if ((err = bw_registry_client(g_reg, st->name, &st->svc))) return err;
  find_layers(st);
  if (st->breaker &&
      (err = bw_event_hook_add(&st->breaker_hook, NULL, st->breaker, breaker_event, st)))
    return err;
  return bw_timer_new(g_rt, on_tick, st, &st->timer);
}

static void teardown_stack(stack_stats_t *st) {
  bw_event_hook_remove(st->breaker_hook);
  bw_layer_release(st->breaker);
  bw_layer_release(st->chaos);
  bw_service_release(st->svc);
  bw_histogram_free(st->latency);
  while (st->chunks) {
    chunk_t *next = st->chunks->next;
    free(st->chunks);
    st->chunks = next;
  }
}

int main(int argc, char **argv) {
  const char *config = argc > 1 ? argv[1] : "examples/stacks.yaml";
  if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
    fprintf(stderr, "usage: demo [CONFIG]   (run it through scripts/demo.sh)\n");
    return 2;
  }
  if (!getenv("BW_DEMO_HTTP_PORT") || !getenv("BW_DEMO_REDIS_PORT")) {
    fprintf(stderr, "demo: set BW_DEMO_HTTP_PORT and BW_DEMO_REDIS_PORT (scripts/demo.sh "
                    "starts the servers and does this)\n");
    return 2;
  }
  const char *pid = getenv("BW_DEMO_REDIS_PID");
  g_redis_pid = pid ? (pid_t)atol(pid) : 0;
  const char *pms = getenv("BW_DEMO_PHASE_MS");
  unsigned phase_ms = pms && atoi(pms) > 0 ? (unsigned)atoi(pms) : 3000;
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);

  int status = 1;
  bw_error_t *err;
  bw_event_hook_t *hook = NULL;
  if ((err = bw_runtime_new(&g_rt, NULL))) return report("runtime", err);
  g_t0 = bw_runtime_now_ns(g_rt);

  bw_registry_opts_t ro;
  bw_registry_opts_init(&ro);
  ro.rt = g_rt;
  if ((err = bw_registry_load_file(&g_reg, config, &ro))) {
    report("config", err);
    goto out;
  }
  printf("demo: loaded %s: stacks api (HTTP on 127.0.0.1:%s) and cache (Redis on 127.0.0.1:%s)\n",
         config, getenv("BW_DEMO_HTTP_PORT"), getenv("BW_DEMO_REDIS_PORT"));
  if ((err = bw_event_hook_add(&hook, NULL, NULL, any_event, NULL))) {
    report("hook", err);
    goto out;
  }
  for (int i = 0; i < NSTACKS; i++)
    if ((err = setup_stack(&g_stacks[i]))) {
      report(g_stacks[i].name, err);
      goto out;
    }
  if (!g_stacks[0].chaos) printf("demo: note: stack api has no chaos layer; no added latency\n");

  /* start the drivers */
  for (int i = 0; i < NSTACKS; i++) {
    stack_stats_t *st = &g_stacks[i];
    if ((err = bw_timer_arm(st->timer, bw_runtime_now_ns(g_rt) + TICK_MS * MS))) {
      report("timer", err);
      goto out;
    }
    st->armed = true;
  }
  printf("demo: sending %.0f calls/s to api and %.0f calls/s to cache\n"
         "      ok: answered by the backend; retried: calls that needed a retry;\n"
         "      rejected: attempts the breaker refused; fallbacks: answered by the fallback\n\n", g_stacks[0].rate,
         g_stacks[1].rate);

  progress_t prog = {.tty = isatty(STDOUT_FILENO), .last_ns = bw_runtime_now_ns(g_rt)};
  printf("== phase 1: healthy ==\n");
  timeline_mark("healthy");
  run_phase(&prog, "healthy", phase_ms);

  printf("== phase 2: faults ==\n"
         "-- degraded: 25%% of HTTP calls get 503 + Retry-After: 1 once (a retry succeeds),\n"
         "   chaos adds 40-400 ms to 20%% of HTTP attempts\n");
  timeline_mark("faults: degraded");
  atomic_store(&g_http_fault_pct, 25);
  if (g_stacks[0].chaos) bw_chaos_set_enabled(g_stacks[0].chaos, true);
  run_phase(&prog, "degraded", phase_ms);

  printf("-- outage: Redis %s, 80%% of HTTP calls get 503 on every attempt\n",
         g_redis_pid > 0 ? "paused (SIGSTOP)" : "NOT paused (BW_DEMO_REDIS_PID unset)");
  timeline_mark("faults: outage");
  redis_pause(true);
  atomic_store(&g_http_fault_pct, 80);
  run_phase(&prog, "outage", phase_ms);

  printf("== phase 3: recovery: Redis resumed (SIGCONT), HTTP healthy, chaos off ==\n");
  timeline_mark("recovery");
  redis_pause(false);
  atomic_store(&g_http_fault_pct, 0);
  if (g_stacks[0].chaos) bw_chaos_set_enabled(g_stacks[0].chaos, false);
  run_phase(&prog, "recovery", phase_ms * 3 / 2);
  status = 0;

out:
  redis_pause(false);
  /* stop the drivers: an armed timer notices `stop` on its next tick and
   * frees itself; one never armed is freed here */
  for (int i = 0; i < NSTACKS; i++) {
    stack_stats_t *st = &g_stacks[i];
    if (!st->timer) continue;
    if (!st->armed) {
      bw_timer_free(st->timer);
    } else {
      atomic_store_explicit(&st->stop, true, memory_order_release); /* pairs with on_tick */
      for (int w = 0; w < 2500 && !atomic_load_explicit(&st->stopped, memory_order_acquire); w++)
        sleep_ms(2); /* a tick comes every TICK_MS; 5 s means the runtime is stuck */
    }
    st->timer = NULL;
  }
  for (int i = 0; i < NSTACKS; i++)
    for (int w = 0; w < 400 && atomic_load_explicit(&g_stacks[i].in_flight, memory_order_acquire);
         w++)
      sleep_ms(5); /* pairs with the release in on_done */
  if (status == 0) summary();
  bw_event_hook_remove(hook);
  for (int i = 0; i < NSTACKS; i++) teardown_stack(&g_stacks[i]);
  bw_registry_free(g_reg);
  bw_runtime_free(g_rt);
  return status;
}
