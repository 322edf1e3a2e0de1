// valgrind: skip
// (starts a redis-server child unless given host and port)
/* redis_cache: a cache-aside lookup through a resilience stack.
 *
 *   redis_cache              start a private redis-server on a free loopback
 *                            port, run the demo, stop it
 *   redis_cache HOST PORT    use an existing server (the outage part of the
 *                            demo is skipped)
 *
 * Stack, outermost first (the order layer.h recommends):
 *   fallback            a Redis failure is not the caller's failure: answer
 *                       with the value computed from the origin
 *   timeout 1 s         bounds the whole call, retries included
 *   retry 3 attempts    only what bw_redis_error_is_retryable() allows
 *                       (connection errors, timeouts, LOADING/BUSY/...)
 *   circuit breaker     opens after 5 consecutive failures
 *   timeout 200 ms      bounds one attempt
 *   Redis client        hiredis on the runtime's reactor
 *
 * The demo: GET misses, the value is computed and SET with a TTL, GET hits.
 * Then the server is killed: lookups go through retries to the fallback,
 * the breaker opens and later lookups are answered by the fallback at once.
 * Exit status 0 when every lookup produced a value. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bulwark/circuit_breaker.h"
#include "bulwark/error.h"
#include "bulwark/fallback.h"
#include "bulwark/layer.h"
#include "bulwark/redis.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"

/* ---- a private redis-server ---------------------------------------------- */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

static int answers_ping(int port) {
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

static pid_t start_redis(int port) {
  char p[16];
  snprintf(p, sizeof p, "%d", port);
  pid_t pid = fork();
  if (pid != 0) {
    for (int i = 0; pid > 0 && i < 1000; i++) { /* up to 5 s */
      if (answers_ping(port)) return pid;
      usleep(5000);
    }
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
    }
    return -1;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int devnull = open("/dev/null", O_WRONLY);
  if (devnull >= 0) {
    dup2(devnull, 1);
    dup2(devnull, 2);
  }
  execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", "/tmp", (char *)NULL);
  _exit(127);
}

/* ---- calls ------------------------------------------------------------------- */

typedef struct done {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int finished;
} done_t;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  (void)call;
  (void)err;
  done_t *d = arg;
  pthread_mutex_lock(&d->mu);
  d->finished = 1;
  pthread_cond_signal(&d->cv);
  pthread_mutex_unlock(&d->mu);
}

/* Run one command through svc and wait (this thread is not a worker). */
static bw_call_t *run(bw_service_t *svc, bw_runtime_t *rt, int argc, const char *const *argv,
                      char *key) {
  bw_redis_request_t *req;
  bw_call_t *call;
  bw_error_t *err = bw_redis_request_new(&req, argc, argv, NULL);
  if (!err) err = bw_call_new(&call, svc, rt);
  if (err) {
    char buf[256];
    bw_error_format(err, buf, sizeof buf, 0);
    fprintf(stderr, "redis_cache: %s\n", buf);
    bw_error_unref(err);
    exit(1);
  }
  bw_call_set_request(call, req, bw_redis_request_free);
  bw_call_set_context(call, key); /* the fallback reads the key here */
  done_t d = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  err = bw_service_call(svc, call, on_done, &d);
  if (err) {
    bw_error_unref(err);
    bw_call_free(call);
    return NULL;
  }
  pthread_mutex_lock(&d.mu);
  while (!d.finished) pthread_cond_wait(&d.cv, &d.mu);
  pthread_mutex_unlock(&d.mu);
  return call;
}

/* The "origin": what the cache saves us from computing. */
static void compute(const char *key, char *out, size_t len) {
  snprintf(out, len, "profile-of-%s", key);
}

/* Fallback: answer with the origin's value, shaped like a Redis reply. */
static bw_error_t *fallback_fn(void *arg, bw_call_t *call, const bw_error_t *original,
                               void **resp, bw_destroy_fn *resp_free) {
  (void)arg;
  (void)original;
  const char *key = bw_call_context(call) ? bw_call_context(call) : "?";
  size_t cap = 128;
  bw_redis_reply_t *r = malloc(sizeof *r + cap);
  if (!r) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  char *text = (char *)(r + 1);
  compute(key, text, cap);
  memset(r, 0, sizeof *r);
  r->type = BW_REDIS_REPLY_STRING;
  r->str = text;
  r->len = strlen(text);
  *resp = r;
  *resp_free = free;
  return NULL;
}

static bool retryable(const bw_error_t *err, void *arg) {
  (void)arg;
  return bw_redis_error_is_retryable(err);
}

static bw_error_t *build_stack(bw_redis_t *client, bw_service_t **out, bw_layer_t **breaker) {
  bw_layer_t *layers[5] = {0};
  bw_service_t *inner = NULL;
  bw_fallback_opts_t fo;
  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_FUNCTION;
  fo.fn = fallback_fn;
  bw_timeout_opts_t total;
  bw_timeout_opts_init(&total);
  total.timeout_ms = 1000;
  total.scope = BW_TIMEOUT_SCOPE_TOTAL;
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 3;
  ro.backoff.kind = BW_BACKOFF_EXPONENTIAL;
  ro.backoff.base_ns = 20ull * 1000000ull;
  ro.predicate = retryable;
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  bo.name = "redis";
  bo.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  bo.consecutive_failures = 5;
  bo.open_duration_ms = 5000;
  bo.predicate = retryable;
  bw_timeout_opts_t attempt;
  bw_timeout_opts_init(&attempt);
  attempt.timeout_ms = 200;
  attempt.scope = BW_TIMEOUT_SCOPE_PER_ATTEMPT;
  bw_error_t *err;
  if (!(err = bw_redis_service_new(&inner, client)) && !(err = bw_fallback_new(&layers[0], &fo)) &&
      !(err = bw_timeout_new(&layers[1], &total)) && !(err = bw_retry_new(&layers[2], &ro)) &&
      !(err = bw_circuit_breaker_new(&layers[3], &bo)) &&
      !(err = bw_timeout_new(&layers[4], &attempt)))
    err = bw_stack_build(out, "redis_cache", layers, 5, inner, NULL);
  if (!err) *breaker = bw_layer_ref(layers[3]);
  for (int i = 0; i < 5; i++) bw_layer_release(layers[i]);
  bw_service_release(inner);
  return err;
}

static const char *state_name(bw_breaker_state_t s) {
  switch (s) {
    case BW_BREAKER_CLOSED: return "closed";
    case BW_BREAKER_OPEN: return "open";
    case BW_BREAKER_HALF_OPEN: return "half-open";
    case BW_BREAKER_FORCED_OPEN: return "forced-open";
    case BW_BREAKER_FORCED_CLOSED: return "forced-closed";
    case BW_BREAKER_DISABLED: return "disabled";
  }
  return "?";
}

/* Cache-aside lookup. Returns 1 when a value came back (cache, origin or
 * fallback), 0 otherwise. */
static int lookup(bw_service_t *svc, bw_runtime_t *rt, bw_layer_t *breaker, char *key) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  const char *get[2] = {"GET", key};
  bw_call_t *call = run(svc, rt, 2, get, key);
  if (!call) return 0;
  int ok = 1;
  const bw_redis_reply_t *r = bw_call_response(call);
  const bw_error_t *why = bw_call_fallback_error(call);
  char buf[512];
  if (!r) {
    bw_error_format(bw_call_error(call), buf, sizeof buf, BW_ERROR_FMT_KIND);
    printf("  %-8s error: %s\n", key, buf);
    ok = 0;
  } else if (why) {
    bw_error_format(why, buf, sizeof buf, BW_ERROR_FMT_KIND);
    printf("  %-8s %s (fallback; Redis said: %s)\n", key, r->str, buf);
  } else if (r->type == BW_REDIS_REPLY_STRING) {
    printf("  %-8s %s (cache hit)\n", key, r->str);
  } else {
    char value[128];
    compute(key, value, sizeof value);
    const char *set[5] = {"SET", key, value, "EX", "60"};
    bw_call_t *c2 = run(svc, rt, 5, set, key);
    printf("  %-8s %s (miss: computed, cached for 60 s%s)\n", key, value,
           c2 && !bw_call_error(c2) ? "" : ", cache write failed");
    bw_call_free(c2);
  }
  bw_call_free(call);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
  printf("           %.1f ms, breaker %s\n", ms, state_name(bw_circuit_breaker_state(breaker)));
  return ok;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  const char *host = "127.0.0.1";
  int port;
  pid_t server = 0;
  if (argc == 3) {
    host = argv[1];
    port = atoi(argv[2]);
  } else {
    port = free_port();
    server = start_redis(port);
    if (server < 0) {
      fprintf(stderr, "redis_cache: could not start redis-server\n");
      return 1;
    }
    printf("started redis-server on 127.0.0.1:%d\n", port);
  }

  bw_runtime_t *rt = NULL;
  bw_redis_t *client = NULL;
  bw_service_t *svc = NULL;
  bw_layer_t *breaker = NULL;
  bw_redis_opts_t ro;
  bw_redis_opts_init(&ro);
  ro.host = host;
  ro.port = port;
  ro.connect_timeout_ms = 500;
  bw_error_t *err = bw_runtime_new(&rt, NULL);
  if (!err) err = bw_redis_new(rt, &ro, &client);
  if (!err) err = build_stack(client, &svc, &breaker);
  if (err) {
    char buf[512];
    bw_error_format(err, buf, sizeof buf, BW_ERROR_FMT_KIND);
    fprintf(stderr, "redis_cache: %s\n", buf);
    bw_error_unref(err);
    return 1;
  }

  int ok = 1;
  char k1[] = "user:1", k2[] = "user:2";
  char *keys[3] = {k1, k2, k1};
  printf("lookups with Redis up:\n");
  for (int i = 0; i < 3; i++) ok &= lookup(svc, rt, breaker, keys[i]);

  if (server > 0) {
    printf("killing redis-server; lookups now degrade to the origin:\n");
    kill(server, SIGKILL);
    waitpid(server, NULL, 0);
    server = 0;
    for (int i = 0; i < 4; i++) ok &= lookup(svc, rt, breaker, keys[i % 3]);
  }

  bw_redis_stats_t st;
  bw_redis_stats(client, &st);
  printf("redis client: %llu commands, %llu replies, %llu errors, %llu connects, "
         "%llu disconnects\n",
         (unsigned long long)st.commands, (unsigned long long)st.replies,
         (unsigned long long)st.errors, (unsigned long long)st.connects,
         (unsigned long long)st.disconnects);

  bw_service_release(svc);
  bw_layer_release(breaker);
  bw_redis_free(client);
  bw_runtime_free(rt);
  if (server > 0) {
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
  }
  return ok ? 0 : 1;
}
