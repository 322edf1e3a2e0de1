/* Client benchmarks (BENCH.md "Clients"): prints NAME VALUE UNIT lines.
 *
 *   http_raw / http_stack   see bench/http_bench.h (H6)
 *   redis_raw    100,000 commands (SET and GET alternating), 64 in flight,
 *                plain hiredis async on a libuv loop with hiredis's own
 *                libuv adapter, one thread, no bulwark
 *   redis_stack  the same through bulwark: fallback + timeout(1 s) +
 *                retry(3) + circuit breaker around the Redis client service,
 *                1-worker runtime (a fresh one per pass; see below)
 *   clients_peak_rss  peak resident memory of this program (getrusage)
 *
 * redis-server is started here on a free loopback port (--save ''
 * --appendonly no) and stopped afterwards. Method: bench/paired.h (raw and
 * stack passes alternate; the per-pair ratio's median is printed on a `#`
 * line). Build with the release flags: cmake -DCMAKE_BUILD_TYPE=Release.
 * Investigation knobs (environment): RB_LAYERS=k keeps the first k layers
 * of redis_stack (0: the bare client service), RB_WORKERS=n sets its
 * runtime's worker count, RB_CT=1 runs it on a current-thread runtime
 * instead (the loop and the calls on the bw_block_on thread; its connect
 * is then inside the timed part, nobody drives the loop before it),
 * BW_IO_THREAD=1 gives the loop its own thread (runtime opts.io_thread;
 * also for http_stack), BP_SHOW=1 prints every pass (bench/paired.h).
 *
 * Why redis_stack runs on 1 worker (BENCH.md states no worker count for
 * the clients table): it is the size a user would pick for this job on
 * this machine. The job is one pipelined connection: the replies of one
 * read reach the runtime as one batch and run on one worker, which writes
 * the next commands itself (src/clients/redis.c, "Direct writes"), so a
 * second worker has nothing to run beside the first, and the 2 cores
 * already carry redis-server and the reactor's I/O thread. RB_WORKERS=2
 * measures the 2-worker figure. */
#include "paired.h"
#include "servers.h"

#if __has_include("http_bench.h")
#include "http_bench.h"
#define HAVE_HTTP_BENCH 1
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sys/resource.h>

#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/layer.h"
#include "bulwark/redis.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"

#define RB_OPS 100000
#define RB_IN_FLIGHT 64

static const char rb_value[] =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; /* 64 B */
static const char *const rb_set[3] = {"SET", "bench:key", rb_value};
static const char *const rb_get[2] = {"GET", "bench:key"};

/* ---- redis-server ------------------------------------------------------------ */

typedef struct rb_server {
  pid_t pid;
  int port;
} rb_server_t;

static int rb_ping(int port) {
  struct timeval tv = {0, 200000};
  redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
  int ok = 0;
  if (c && !c->err) {
    redisReply *r = redisCommand(c, "PING");
    ok = r && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
  }
  if (c) redisFree(c);
  return ok;
}

static int rb_server_start(rb_server_t *s) {
  s->port = bs_free_port();
  if (s->port <= 0) return -1;
  char port[16];
  snprintf(port, sizeof port, "%d", s->port);
  char *const argv[] = {"redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", "/tmp", NULL};
  return bs_start(&s->pid, argv, rb_ping, s->port, 1000, 5000); /* up to 5 s */
}

static void rb_server_stop(rb_server_t *s) { bs_stop(&s->pid); }

/* ---- redis_raw ------------------------------------------------------------------ */

typedef struct rb_raw {
  redisAsyncContext *ac;
  int target, started, done, failed;
} rb_raw_t;

static void rb_raw_send(rb_raw_t *r);

static void rb_raw_on_reply(redisAsyncContext *ac, void *rv, void *priv) {
  (void)ac;
  rb_raw_t *r = priv;
  redisReply *reply = rv;
  if (!reply || reply->type == REDIS_REPLY_ERROR) r->failed++;
  r->done++;
  if (r->started < r->target) {
    rb_raw_send(r);
  } else if (r->done == r->target) {
    redisAsyncDisconnect(r->ac);
  }
}

static void rb_raw_send(rb_raw_t *r) {
  int i = r->started++;
  if (i % 2 == 0)
    redisAsyncCommandArgv(r->ac, rb_raw_on_reply, r, 3, (const char **)rb_set, NULL);
  else
    redisAsyncCommandArgv(r->ac, rb_raw_on_reply, r, 2, (const char **)rb_get, NULL);
}

static double rb_raw_pass(int port, int count) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  rb_raw_t r;
  memset(&r, 0, sizeof r);
  r.target = count;
  r.ac = redisAsyncConnect("127.0.0.1", port);
  if (!r.ac || r.ac->err) return -1;
  redisLibuvAttach(r.ac, &loop);
  double t0 = bs_now_s();
  for (int i = 0; i < RB_IN_FLIGHT && r.started < count; i++) rb_raw_send(&r);
  uv_run(&loop, UV_RUN_DEFAULT);
  double dt = bs_now_s() - t0;
  uv_loop_close(&loop);
  if (r.failed || r.done != count) {
    printf("# redis_raw: %d of %d failed\n", r.failed + (count - r.done), count);
    return -1;
  }
  return count / dt;
}

/* ---- redis_stack ------------------------------------------------------------------- */

typedef struct rb_stack {
  bw_runtime_t *rt;
  bw_service_t *svc;
  bw_redis_request_t *set, *get; /* shared, borrowed by every call */
  atomic_int started, failed;
  _Atomic(bw_error_t *) first_err; /* for the report */
  int target;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  /* current-thread flavor: the block_on task, and whether it started */
  _Atomic(bw_waker_t *) waiter;
  bool drive_started;
} rb_stack_t;

static void rb_stack_start(rb_stack_t *s);

static void rb_stack_finish_one(rb_stack_t *s) {
  pthread_mutex_lock(&s->mu);
  bool last = ++s->done == s->target;
  if (last) pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  bw_waker_t *w = last ? atomic_exchange(&s->waiter, NULL) : NULL;
  if (w) bw_waker_wake(w);
}

/* Current-thread flavor: the bw_block_on task starts the commands and
 * waits for the last one. */
static bw_poll_t rb_stack_drive(bw_task_t *self, void *arg) {
  rb_stack_t *s = arg;
  pthread_mutex_lock(&s->mu);
  bool all = s->done >= s->target;
  pthread_mutex_unlock(&s->mu);
  if (all) return BW_READY;
  if (!s->drive_started) {
    s->drive_started = true;
    atomic_store(&s->waiter, bw_task_waker(self));
    for (int i = 0; i < RB_IN_FLIGHT; i++) rb_stack_start(s);
  }
  return BW_PENDING;
}

static void rb_stack_on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  rb_stack_t *s = arg;
  if (err || !bw_call_response(call)) {
    atomic_fetch_add(&s->failed, 1);
    bw_error_t *mine = bw_error_ref(err), *none = NULL;
    if (!atomic_compare_exchange_strong(&s->first_err, &none, mine)) bw_error_unref(mine);
  }
  bw_call_free(call);
  rb_stack_start(s); /* keep RB_IN_FLIGHT going */
  rb_stack_finish_one(s);
}

static void rb_stack_start(rb_stack_t *s) {
  int i = atomic_fetch_add(&s->started, 1);
  if (i >= s->target) return;
  bw_call_t *call;
  bw_error_t *err = bw_call_new(&call, s->svc, s->rt);
  if (!err) {
    bw_call_set_request(call, i % 2 == 0 ? s->set : s->get, NULL);
    err = bw_service_call(s->svc, call, rb_stack_on_done, s);
    if (err) bw_call_free(call);
  }
  if (err) {
    bw_error_unref(err);
    atomic_fetch_add(&s->failed, 1);
    rb_stack_finish_one(s);
  }
}

/* RB_STACK_WORKERS: see the header comment for why 1. */
#define RB_STACK_WORKERS 1

static int rb_workers(void) {
  const char *w = getenv("RB_WORKERS");
  return w && atoi(w) > 0 ? atoi(w) : RB_STACK_WORKERS;
}

static bw_error_t *rb_build_stack(bw_redis_t *client, bw_service_t **out) {
  bw_layer_t *layers[4] = {0};
  bw_service_t *inner = NULL;
  bw_fallback_opts_t fo;
  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_VALUE;
  fo.value = "fallback";
  fo.value_len = 8;
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 1000;
  to.scope = BW_TIMEOUT_SCOPE_TOTAL;
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 3;
  ro.predicate = NULL; /* default; Redis errors map onto its kinds */
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  bw_error_t *err;
  /* for investigation: RB_LAYERS=k keeps only the first k layers (0: the
   * bare client service) */
  const char *nl = getenv("RB_LAYERS");
  size_t keep = nl ? (size_t)atoi(nl) : 4;
  if (keep == 0) return bw_redis_service_new(out, client);
  if (!(err = bw_redis_service_new(&inner, client)) &&
      !(err = bw_fallback_new(&layers[0], &fo)) && !(err = bw_timeout_new(&layers[1], &to)) &&
      !(err = bw_retry_new(&layers[2], &ro)) && !(err = bw_circuit_breaker_new(&layers[3], &bo)))
    err = bw_stack_build(out, NULL, layers, keep < 4 ? keep : 4, inner, NULL);
  for (int i = 0; i < 4; i++) bw_layer_release(layers[i]);
  bw_service_release(inner);
  return err;
}

static double rb_stack_pass(int port, int count) {
  rb_stack_t s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  s.target = count;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = rb_workers();
  o.io_thread = getenv("BW_IO_THREAD") != NULL;
  bool ct = getenv("RB_CT") != NULL;
  if (ct) o.flavor = BW_FLAVOR_CURRENT_THREAD;
  bw_redis_opts_t co;
  bw_redis_opts_init(&co);
  co.port = port;
  bw_redis_t *client = NULL;
  double rate = -1;
  bw_error_t *err = bw_runtime_new(&s.rt, &o);
  if (!err) err = bw_redis_new(s.rt, &co, &client);
  if (!err) err = rb_build_stack(client, &s.svc);
  if (!err) err = bw_redis_request_new(&s.set, 3, rb_set, NULL);
  if (!err) err = bw_redis_request_new(&s.get, 2, rb_get, NULL);
  for (int i = 0; !err && !ct && i < 5000 && bw_redis_state(client) != BW_REDIS_READY; i++)
    usleep(1000); /* connect (untimed) */
  if (err) {
    char buf[512];
    bw_error_format(err, buf, sizeof buf, 0);
    printf("# redis_stack: setup failed: %s\n", buf);
    bw_error_unref(err);
  } else {
    double t0 = bs_now_s();
    if (ct) {
      bw_error_unref(bw_block_on(s.rt, rb_stack_drive, &s, NULL));
    } else {
      for (int i = 0; i < RB_IN_FLIGHT; i++) rb_stack_start(&s);
      pthread_mutex_lock(&s.mu);
      while (s.done < count) pthread_cond_wait(&s.cv, &s.mu);
      pthread_mutex_unlock(&s.mu);
    }
    double dt = bs_now_s() - t0;
    int failed = atomic_load(&s.failed);
    if (failed) {
      char buf[512] = "";
      bw_error_format(atomic_load(&s.first_err), buf, sizeof buf, BW_ERROR_FMT_KIND);
      printf("# redis_stack: %d of %d commands failed, first: %s\n", failed, count, buf);
    } else
      rate = count / dt;
  }
  bw_service_release(s.svc);
  /* bw_redis_free's rule for this flavor: after shutdown */
  if (ct && s.rt) bw_error_unref(bw_runtime_shutdown(s.rt, BW_SHUTDOWN_CANCEL, 1000));
  bw_redis_free(client);
  bw_runtime_free(s.rt);
  bw_redis_request_free(s.set);
  bw_redis_request_free(s.get);
  bw_error_unref(atomic_load(&s.first_err));
  pthread_mutex_destroy(&s.mu);
  pthread_cond_destroy(&s.cv);
  return rate;
}

static double rb_raw_side(void *port, int count) { return rb_raw_pass(*(int *)port, count); }
static double rb_stack_side(void *port, int count) { return rb_stack_pass(*(int *)port, count); }

static void run_redis_benchmarks(void) {
  rb_server_t srv = {0, 0};
  if (rb_server_start(&srv) != 0) {
    printf("# redis: could not start redis-server; skipped\n");
    rb_server_stop(&srv);
    return;
  }
  printf("# redis: redis-server on 127.0.0.1:%d\n", srv.port);
  char what[96];
  snprintf(what, sizeof what, "%d commands (SET/GET), %d in flight, stack on %d worker%s", RB_OPS,
           RB_IN_FLIGHT, rb_workers(), rb_workers() == 1 ? "" : "s");
  bp_run_pair((bp_side_t){"redis_raw", rb_raw_side}, (bp_side_t){"redis_stack", rb_stack_side},
              &srv.port, RB_OPS, what, "ops/s");
  rb_server_stop(&srv);
}

int main(int argc, char **argv) {
  bool http = true, redis = true;
  if (argc > 1 && strcmp(argv[1], "redis") == 0) http = false;
  if (argc > 1 && strcmp(argv[1], "http") == 0) redis = false;
  signal(SIGPIPE, SIG_IGN);
#ifdef HAVE_HTTP_BENCH
  if (http) run_http_benchmarks();
#else
  if (http) printf("# http: bench/http_bench.h not present; skipped\n");
#endif
  if (redis) run_redis_benchmarks();
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("clients_peak_rss %ld KiB\n", ru.ru_maxrss);
  return 0;
}
