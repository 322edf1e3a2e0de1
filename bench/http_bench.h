/* HTTP client benchmarks (BENCH.md "Clients"): included by bench/clients.c.
 *
 *   http_raw    20,000 GETs of a small body, 64 in flight, plain libcurl
 *               multi socket API on a libuv loop (written here, no bulwark)
 *   http_stack  the same through bulwark: fallback + timeout(1 s) + retry(3)
 *               + circuit breaker + rate limit (never throttles) + bulkhead
 *               (1024) around the HTTP client, 2-worker runtime
 *
 * Both against nginx (nginx-light) started here on a free loopback port with
 * a temporary config (`return 200` of a 12-byte body, keep-alive), stopped
 * afterwards. Method: bench/paired.h (raw and stack passes alternate); a
 * fresh runtime per pass for http_stack.
 *
 * Both send the same request (http_stack sets user_agent "": libcurl, like
 * http_raw, then sends no User-Agent; formatting that one header costs curl
 * about 5,000 instructions per request on the loop thread).
 *
 * Diagnostics (environment): HB_BARE=1 runs http_stack on the bare client
 * service (no layers), to split layer cost from client cost; HB_WORKERS=n
 * sets its runtime's worker count (default 2); BW_IO_THREAD=1 gives its I/O loop
 * a thread of its own (runtime opts.io_thread) instead of the workers.
 * Usage: call run_http_benchmarks() once. Needs -lcurl -luv -lpthread and
 * the bulwark libraries. */
#ifndef BW_BENCH_HTTP_BENCH_H
#define BW_BENCH_HTTP_BENCH_H

#include "paired.h"
#include "servers.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/rate_limit.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"

#define HB_REQUESTS 20000
#define HB_IN_FLIGHT 64

/* ---- nginx ------------------------------------------------------------------ */

typedef struct hb_nginx {
  pid_t pid;
  int port;
  char dir[64];
} hb_nginx_t;

static int hb_port_open(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
  if (fd >= 0) close(fd);
  return ok;
}

static int hb_nginx_start(hb_nginx_t *n) {
  memset(n, 0, sizeof *n);
  snprintf(n->dir, sizeof n->dir, "/tmp/bw-bench-nginx-XXXXXX");
  if (!mkdtemp(n->dir)) return -1;
  n->port = bs_free_port();
  if (n->port <= 0) return -1;
  char conf[128], elog[128];
  snprintf(conf, sizeof conf, "%s/nginx.conf", n->dir);
  snprintf(elog, sizeof elog, "%s/error.log", n->dir);
  FILE *f = fopen(conf, "w");
  if (!f) return -1;
  fprintf(f,
          "daemon off;\nmaster_process off;\nworker_processes 1;\n"
          "error_log %s/error.log error;\npid %s/nginx.pid;\n"
          "events { worker_connections 1024; }\n"
          "http {\n  access_log off;\n  keepalive_requests 1000000;\n"
          "  keepalive_timeout 60s;\n"
          "  client_body_temp_path %s/body;\n  proxy_temp_path %s/proxy;\n"
          "  fastcgi_temp_path %s/fastcgi;\n  uwsgi_temp_path %s/uwsgi;\n"
          "  scgi_temp_path %s/scgi;\n"
          "  server {\n    listen 127.0.0.1:%d backlog=1024;\n"
          "    location / { default_type text/plain; return 200 \"hello world\\n\"; }\n"
          "  }\n}\n",
          n->dir, n->dir, n->dir, n->dir, n->dir, n->dir, n->dir, n->port);
  fclose(f);
  char *const argv[] = {"/usr/sbin/nginx", "-e", elog, "-p", n->dir, "-c", conf, NULL};
  return bs_start(&n->pid, argv, hb_port_open, n->port, 500, 10000); /* up to 5 s */
}

static void hb_nginx_stop(hb_nginx_t *n) {
  bs_stop(&n->pid);
  char cmd[160];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", n->dir);
  if (n->dir[0] && system(cmd) != 0) fprintf(stderr, "# could not remove %s\n", n->dir);
}

/* ---- http_raw: plain libcurl multi on libuv ---------------------------------- */

typedef struct hb_raw {
  uv_loop_t loop;
  uv_timer_t timer;
  CURLM *multi;
  const char *url;
  int target, started, done, failed;
  CURL *slots[HB_IN_FLIGHT];
} hb_raw_t;

typedef struct hb_sock {
  uv_poll_t poll;
  hb_raw_t *r;
  curl_socket_t fd;
} hb_sock_t;

static size_t hb_sink(char *p, size_t s, size_t n, void *u) {
  (void)p;
  (void)u;
  return s * n;
}

static void hb_raw_check(hb_raw_t *r);

static void hb_raw_on_poll(uv_poll_t *p, int status, int events) {
  hb_sock_t *s = p->data;
  int flags = status < 0 ? CURL_CSELECT_ERR
                         : ((events & UV_READABLE) ? CURL_CSELECT_IN : 0) |
                               ((events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0);
  int running;
  curl_multi_socket_action(s->r->multi, s->fd, flags, &running);
  hb_raw_check(s->r);
}

static void hb_raw_sock_closed(uv_handle_t *h) { free(h->data); }

static int hb_raw_socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp) {
  (void)e;
  hb_raw_t *r = userp;
  hb_sock_t *s = sockp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, hb_raw_sock_closed);
      curl_multi_assign(r->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = malloc(sizeof *s);
    s->r = r;
    s->fd = fd;
    uv_poll_init_socket(&r->loop, &s->poll, fd);
    s->poll.data = s;
    curl_multi_assign(r->multi, fd, s);
  }
  int ev = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, ev, hb_raw_on_poll);
  return 0;
}

static void hb_raw_on_timer(uv_timer_t *t) {
  hb_raw_t *r = t->data;
  int running;
  curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  hb_raw_check(r);
}

static int hb_raw_timer_cb(CURLM *m, long ms, void *userp) {
  (void)m;
  hb_raw_t *r = userp;
  if (ms < 0) uv_timer_stop(&r->timer);
  else uv_timer_start(&r->timer, hb_raw_on_timer, (uint64_t)ms, 0);
  return 0;
}

static void hb_raw_start_one(hb_raw_t *r, CURL *e) {
  curl_easy_setopt(e, CURLOPT_URL, r->url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, hb_sink);
  r->started++;
  curl_multi_add_handle(r->multi, e);
}

static void hb_raw_check(hb_raw_t *r) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(r->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *e = m->easy_handle;
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (m->data.result != CURLE_OK || status != 200) r->failed++;
    r->done++;
    curl_multi_remove_handle(r->multi, e);
    if (r->started < r->target) hb_raw_start_one(r, e);
  }
}

/* Returns requests per second, or -1 on failure. */
static double hb_raw_pass(const char *url, int count) {
  hb_raw_t r;
  memset(&r, 0, sizeof r);
  r.url = url;
  r.target = count;
  uv_loop_init(&r.loop);
  uv_timer_init(&r.loop, &r.timer);
  r.timer.data = &r;
  r.multi = curl_multi_init();
  curl_multi_setopt(r.multi, CURLMOPT_SOCKETFUNCTION, hb_raw_socket_cb);
  curl_multi_setopt(r.multi, CURLMOPT_SOCKETDATA, &r);
  curl_multi_setopt(r.multi, CURLMOPT_TIMERFUNCTION, hb_raw_timer_cb);
  curl_multi_setopt(r.multi, CURLMOPT_TIMERDATA, &r);
  curl_multi_setopt(r.multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)HB_IN_FLIGHT);
  curl_multi_setopt(r.multi, CURLMOPT_MAXCONNECTS, (long)HB_IN_FLIGHT);
  double t0 = bs_now_s();
  for (int i = 0; i < HB_IN_FLIGHT && r.started < count; i++) {
    r.slots[i] = curl_easy_init();
    hb_raw_start_one(&r, r.slots[i]);
  }
  while (r.done < count) uv_run(&r.loop, UV_RUN_ONCE);
  double dt = bs_now_s() - t0;
  for (int i = 0; i < HB_IN_FLIGHT; i++)
    if (r.slots[i]) curl_easy_cleanup(r.slots[i]);
  curl_multi_cleanup(r.multi);
  uv_close((uv_handle_t *)&r.timer, NULL);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  uv_loop_close(&r.loop);
  if (r.failed) {
    fprintf(stderr, "# http_raw: %d of %d requests failed\n", r.failed, count);
    return -1;
  }
  return count / dt;
}

/* ---- http_stack: the same through bulwark ------------------------------------ */

typedef struct hb_stack {
  bw_runtime_t *rt;
  bw_service_t *svc;
  bw_http_request_t *req; /* shared, borrowed by every call */
  atomic_int started, failed;
  int target;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} hb_stack_t;

static void hb_stack_start(hb_stack_t *s);

static void hb_stack_on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  hb_stack_t *s = arg;
  const bw_http_response_t *resp = bw_call_response(call);
  if (err || !resp || bw_http_response_status(resp) != 200) atomic_fetch_add(&s->failed, 1);
  bw_call_free(call);
  hb_stack_start(s); /* keep HB_IN_FLIGHT going */
  pthread_mutex_lock(&s->mu);
  if (++s->done == s->target) pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void hb_stack_start(hb_stack_t *s) {
  if (atomic_fetch_add(&s->started, 1) >= s->target) return;
  bw_call_t *call;
  bw_error_t *err = bw_call_new(&call, s->svc, s->rt);
  if (!err) {
    bw_call_set_request(call, s->req, NULL);
    err = bw_service_call(s->svc, call, hb_stack_on_done, s);
    if (err) bw_call_free(call);
  }
  if (err) {
    bw_error_unref(err);
    atomic_fetch_add(&s->failed, 1);
    pthread_mutex_lock(&s->mu);
    if (++s->done == s->target) pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
}

static bw_error_t *hb_build_stack(bw_http_client_t *cli, bw_service_t **out) {
  /* BENCH.md's full stack, in layer.h's recommended order */
  bw_layer_t *layers[6] = {0};
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
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  bw_rate_limit_opts_t lo;
  bw_rate_limit_opts_init(&lo);
  lo.rate_per_sec = 1e8; /* never throttles */
  lo.burst = 1000000;
  bw_bulkhead_opts_t ho;
  bw_bulkhead_opts_init(&ho);
  ho.max_concurrent = 1024;
  bw_error_t *err;
  if (!(err = bw_fallback_new(&layers[0], &fo)) && !(err = bw_timeout_new(&layers[1], &to)) &&
      !(err = bw_retry_new(&layers[2], &ro)) && !(err = bw_circuit_breaker_new(&layers[3], &bo)) &&
      !(err = bw_rate_limit_new(&layers[4], &lo)) && !(err = bw_bulkhead_new(&layers[5], &ho)))
    err = bw_stack_build(out, NULL, layers, 6, bw_http_client_service(cli), NULL);
  for (int i = 0; i < 6; i++) bw_layer_release(layers[i]);
  return err;
}

static double hb_stack_pass(const char *url, int count) {
  hb_stack_t s;
  memset(&s, 0, sizeof s);
  pthread_mutex_init(&s.mu, NULL);
  pthread_cond_init(&s.cv, NULL);
  s.target = count;
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = getenv("HB_WORKERS") ? atoi(getenv("HB_WORKERS")) : 2;
  o.io_thread = getenv("BW_IO_THREAD") != NULL;
  bw_http_client_t *cli = NULL;
  bw_http_client_opts_t co;
  bw_http_client_opts_init(&co);
  co.max_host_connections = HB_IN_FLIGHT;
  co.max_total_connections = HB_IN_FLIGHT;
  co.user_agent = ""; /* the same request bytes as http_raw (no User-Agent) */
  double rate = -1;
  bw_error_t *err = bw_runtime_new(&s.rt, &o);
  if (!err) err = bw_http_client_new(&cli, s.rt, &co);
  if (!err && getenv("HB_BARE")) s.svc = bw_service_ref(bw_http_client_service(cli));
  else if (!err) err = hb_build_stack(cli, &s.svc);
  if (!err) err = bw_http_request_new(&s.req, "GET", url);
  if (err) {
    char buf[512];
    bw_error_format(err, buf, sizeof buf, 0);
    fprintf(stderr, "# http_stack: setup failed: %s\n", buf);
    bw_error_unref(err);
  } else {
    double t0 = bs_now_s();
    for (int i = 0; i < HB_IN_FLIGHT; i++) hb_stack_start(&s);
    pthread_mutex_lock(&s.mu);
    while (s.done < count) pthread_cond_wait(&s.cv, &s.mu);
    pthread_mutex_unlock(&s.mu);
    double dt = bs_now_s() - t0;
    int failed = atomic_load(&s.failed);
    if (failed) fprintf(stderr, "# http_stack: %d of %d requests failed\n", failed, count);
    else rate = count / dt;
  }
  bw_service_release(s.svc);
  bw_http_client_free(cli);
  bw_runtime_free(s.rt);
  bw_http_request_free(s.req);
  pthread_mutex_destroy(&s.mu);
  pthread_cond_destroy(&s.cv);
  return rate;
}

/* ---- driver ----------------------------------------------------------------------- */

static double hb_raw_side(void *url, int count) { return hb_raw_pass(url, count); }
static double hb_stack_side(void *url, int count) { return hb_stack_pass(url, count); }

static void run_http_benchmarks(void) {
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  hb_nginx_t ng;
  if (hb_nginx_start(&ng) != 0) {
    printf("# http: could not start nginx (/usr/sbin/nginx); skipped\n");
    hb_nginx_stop(&ng);
    return;
  }
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ng.port);
  printf("# http: nginx on 127.0.0.1:%d\n", ng.port);
  char what[64];
  snprintf(what, sizeof what, "%d GETs, %d in flight", HB_REQUESTS, HB_IN_FLIGHT);
  bp_run_pair((bp_side_t){"http_raw", hb_raw_side}, (bp_side_t){"http_stack", hb_stack_side}, url,
              HB_REQUESTS, what, "req/s");
  hb_nginx_stop(&ng);
}

#endif
