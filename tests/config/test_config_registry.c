/* Registry: build named stacks around a service, shared instances, reload
 * (breaker state kept, failure keeps the old config, calls in flight finish
 * on the old stack), automatic reload on file change. Runs on a paused clock. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bulwark/alloc.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/config.h"
#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "config/registry_internal.h"

/* ---- helpers ---------------------------------------------------------------- */

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  bw_error_kind_t kind;
  char resp[64];
} waiter_t;

static void waiter_init(waiter_t *w) {
  memset(w, 0, sizeof *w);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
}
static void waiter_fini(waiter_t *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  waiter_t *w = arg;
  pthread_mutex_lock(&w->mu);
  w->kind = bw_error_kind(err);
  w->resp[0] = '\0';
  const char *r = err ? NULL : bw_call_response(call);
  if (r) {
    memcpy(w->resp, r, 2); /* fallback values in these tests are 2 bytes */
    w->resp[2] = '\0';
  }
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void wait_for(waiter_t *w, int n) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30; /* safety limit only: the paused clock makes this instant */
  pthread_mutex_lock(&w->mu);
  while (w->done < n)
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) break;
  pthread_mutex_unlock(&w->mu);
  assert_int_equal(w->done, n);
}

/* Init w and start a call through svc that completes into it. */
static bw_call_t *start_call(waiter_t *w, bw_runtime_t *rt, bw_service_t *svc) {
  waiter_init(w);
  bw_call_t *c = NULL;
  assert_null(bw_call_new(&c, svc, rt));
  assert_null(bw_service_call(svc, c, on_done, w));
  return c;
}

/* One call through svc, waited for. Returns the outcome kind. */
static bw_error_kind_t call_once(bw_runtime_t *rt, bw_service_t *svc, char *resp_out) {
  waiter_t w;
  bw_call_t *c = start_call(&w, rt, svc);
  wait_for(&w, 1);
  bw_call_free(c);
  if (resp_out) strcpy(resp_out, w.resp);
  bw_error_kind_t k = w.kind;
  waiter_fini(&w);
  return k;
}

static bw_runtime_t *new_rt(unsigned workers, bool paused) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  if (paused) o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}
static bw_runtime_t *paused_rt(void) { return new_rt(1, true); }

/* A backend that fails the first `fail_first` calls with a transport error. */
typedef struct backend {
  atomic_int calls;
  int fail_first;
} backend_t;

static bw_error_t *backend_fn(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *resp_free) {
  (void)call;
  backend_t *b = arg;
  int n = atomic_fetch_add(&b->calls, 1);
  if (n < b->fail_first) return bw_error_new(BW_ERR_TRANSPORT, 0, "backend down (call %d)", n + 1);
  char *r = malloc(3);
  memcpy(r, "ok", 3);
  *resp = r;
  *resp_free = free;
  return NULL;
}

static bw_service_t *backend_service(backend_t *b) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = backend_fn;
  o.arg = b;
  bw_service_t *svc = NULL;
  assert_null(bw_service_from_fn(&svc, &o));
  return svc;
}

/* A registry loaded from the text y (named `name` in messages). */
static bw_registry_t *load(const char *y, const char *name) {
  bw_registry_t *reg = NULL;
  assert_null(bw_registry_load_string(&reg, y, strlen(y), name, NULL));
  return reg;
}

/* The registry's stack `stack` built around inner. */
static bw_service_t *build(bw_registry_t *reg, const char *stack, bw_service_t *inner) {
  bw_service_t *svc = NULL;
  assert_null(bw_registry_build(reg, stack, inner, &svc));
  return svc;
}

/* The end of most tests: the built service, its backend, registry, runtime. */
static void release_all(bw_service_t *svc, bw_service_t *inner, bw_registry_t *reg,
                        bw_runtime_t *rt) {
  bw_service_release(svc);
  bw_service_release(inner);
  bw_registry_free(reg);
  bw_runtime_free(rt);
}

static void collect(const char *name, void *arg) {
  char *buf = arg;
  strcat(buf, name);
  strcat(buf, ",");
}

/* ---- tests -------------------------------------------------------------------------- */

static const char *kTwo =
    "shared:\n"
    "  brk:\n"
    "    circuit_breaker: { window: consecutive, consecutive_failures: 2, open_duration: 60s }\n"
    "  budget:\n"
    "    retry_budget: { ratio: 50% }\n"
    "stacks:\n"
    "  retrying:\n"
    "    - retry: { max_attempts: 3, base_delay: 10ms, budget: budget }\n"
    "    - timeout: 1s\n"
    "  guarded:\n"
    "    - shared: brk\n";

static void test_names_and_build(void **state) {
  (void)state;
  bw_runtime_t *rt = paused_rt();
  bw_registry_t *reg = load(kTwo, "two.yaml");
  assert_int_equal(bw_registry_generation(reg), 1);
  char names[256] = "";
  assert_int_equal(bw_registry_names(reg, BW_REGISTRY_STACKS, collect, names), 2);
  assert_string_equal(names, "retrying,guarded,");
  names[0] = '\0';
  assert_int_equal(bw_registry_names(reg, BW_REGISTRY_SHARED, collect, names), 2);
  assert_string_equal(names, "brk,budget,");
  assert_int_equal(bw_registry_names(reg, BW_REGISTRY_CLIENTS, NULL, NULL), 0);

  backend_t b = {0, 2};
  bw_service_t *inner = backend_service(&b);
  bw_service_t *svc = build(reg, "retrying", inner);
  char resp[64];
  /* two transport failures, the third attempt succeeds */
  assert_int_equal(call_once(rt, svc, resp), BW_ERR_NONE);
  assert_string_equal(resp, "ok");
  assert_int_equal(atomic_load(&b.calls), 3);

  bw_service_t *bad = NULL;
  bw_error_t *e = bw_registry_build(reg, "retryng", inner, &bad);
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_CONFIG);
  assert_int_equal(bw_error_detail(e), BW_CFG_UNKNOWN_REF);
  assert_non_null(strstr(bw_error_message(e), "did you mean 'retrying'?"));
  bw_error_unref(e);

  bw_retry_budget_t *bud = NULL;
  assert_null(bw_registry_shared_budget(reg, "budget", &bud));
  assert_non_null(bud);
  bw_retry_budget_release(bud);
  bw_layer_t *l = NULL;
  e = bw_registry_shared_layer(reg, "budget", &l); /* a budget is not a layer */
  assert_non_null(e);
  bw_error_unref(e);

  release_all(svc, inner, reg, rt);
}

static void test_reload_keeps_breaker_state(void **state) {
  (void)state;
  bw_runtime_t *rt = paused_rt();
  bw_registry_t *reg = load(kTwo, "two.yaml");
  backend_t b = {0, 1000000};
  bw_service_t *inner = backend_service(&b);
  bw_service_t *svc = build(reg, "guarded", inner);
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_TRANSPORT);
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_TRANSPORT);
  bw_layer_t *brk = NULL;
  assert_null(bw_registry_shared_layer(reg, "brk", &brk));
  assert_int_equal(bw_circuit_breaker_state(brk), BW_BREAKER_OPEN);
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_CIRCUIT_OPEN);

  /* the stacks change, the breaker's settings do not: same instance, still open */
  const char *v2 =
      "shared:\n"
      "  brk:\n"
      "    circuit_breaker: { window: consecutive, consecutive_failures: 2, open_duration: 60s }\n"
      "stacks:\n"
      "  guarded:\n"
      "    - fallback: { value: fb, on: [timeout] }\n"
      "    - shared: brk\n"
      "    - timeout: 2s\n";
  assert_null(bw_registry_reload_string(reg, v2, strlen(v2), "v2.yaml"));
  assert_int_equal(bw_registry_generation(reg), 2);
  bw_layer_t *brk2 = NULL;
  assert_null(bw_registry_shared_layer(reg, "brk", &brk2));
  assert_ptr_equal(brk, brk2);
  assert_int_equal(bw_circuit_breaker_state(brk2), BW_BREAKER_OPEN);
  int before = atomic_load(&b.calls);
  /* the service now goes through the v2 stack: still rejected, backend untouched */
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(atomic_load(&b.calls), before);
  bw_layer_release(brk2);

  /* the breaker's settings change: a new instance, closed */
  const char *v3 =
      "shared:\n"
      "  brk:\n"
      "    circuit_breaker: { window: consecutive, consecutive_failures: 3, open_duration: 60s }\n"
      "stacks:\n"
      "  guarded:\n"
      "    - shared: brk\n";
  assert_null(bw_registry_reload_string(reg, v3, strlen(v3), "v3.yaml"));
  bw_layer_t *brk3 = NULL;
  assert_null(bw_registry_shared_layer(reg, "brk", &brk3));
  assert_ptr_not_equal(brk, brk3);
  assert_int_equal(bw_circuit_breaker_state(brk3), BW_BREAKER_CLOSED);
  assert_int_equal(bw_circuit_breaker_state(brk), BW_BREAKER_OPEN); /* the old one, untouched */
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_TRANSPORT);
  bw_layer_release(brk3);
  bw_layer_release(brk);

  release_all(svc, inner, reg, rt);
}

static void test_reload_failure_keeps_old(void **state) {
  (void)state;
  bw_runtime_t *rt = paused_rt();
  bw_registry_t *reg = load(kTwo, "two.yaml");
  backend_t b = {0, 2};
  bw_service_t *inner = backend_service(&b);
  bw_service_t *svc = build(reg, "retrying", inner);

  const char *broken =
      "stacks:\n"
      "  retrying:\n"
      "    - retry: { max_attempts: 1, budget: nowhere }\n";
  bw_error_t *e = bw_registry_reload_string(reg, broken, strlen(broken), "broken.yaml");
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_CONFIG);
  assert_int_equal(bw_error_detail(e), BW_CFG_UNKNOWN_REF);
  assert_non_null(strstr(bw_error_message(e), "broken.yaml:3:41: stacks.retrying[0].retry.budget"));
  bw_error_unref(e);
  assert_int_equal(bw_registry_generation(reg), 1);
  char names[128] = "";
  bw_registry_names(reg, BW_REGISTRY_STACKS, collect, names);
  assert_string_equal(names, "retrying,guarded,");
  /* still 3 attempts (the broken file said 1) */
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_NONE);
  assert_int_equal(atomic_load(&b.calls), 3);

  /* a file that cannot be read changes nothing either */
  e = bw_registry_reload_file(reg, "/nonexistent/bulwark.yaml");
  assert_int_equal(bw_error_detail(e), BW_CFG_IO);
  bw_error_unref(e);
  e = bw_registry_reload(reg); /* loaded from a string: no file */
  assert_int_equal(bw_error_kind(e), BW_ERR_NOT_ALLOWED);
  bw_error_unref(e);
  assert_int_equal(bw_registry_generation(reg), 1);

  release_all(svc, inner, reg, rt);
}

/* An async backend that parks its calls until the test finishes them. */
typedef struct parked {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* signalled when a call parks */
  bw_call_t *call;
} parked_t;

static void park_fn(void *arg, bw_call_t *call) {
  parked_t *p = arg;
  pthread_mutex_lock(&p->mu);
  p->call = call;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
}

/* Init p and return an async service parking its calls in p. */
static bw_service_t *parked_service(parked_t *p) {
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = park_fn;
  o.arg = p;
  bw_service_t *svc = NULL;
  assert_null(bw_service_from_fn(&svc, &o));
  return svc;
}

/* Wait until the backend holds a call (it starts on a worker). */
static void wait_parked(parked_t *p) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 30; /* safety limit only: a worker picks the call up at once */
  pthread_mutex_lock(&p->mu);
  while (p->call == NULL)
    if (pthread_cond_timedwait(&p->cv, &p->mu, &ts) == ETIMEDOUT) break;
  bool have = p->call != NULL;
  pthread_mutex_unlock(&p->mu);
  assert_true(have);
}

static void test_inflight_finishes_on_old_stack(void **state) {
  (void)state;
  bw_runtime_t *rt = paused_rt();
  const char *v1 = "stacks:\n  s:\n    - fallback: { value: v1 }\n";
  const char *v2 = "stacks:\n  s:\n    - fallback: { value: v2 }\n";
  bw_registry_t *reg = load(v1, "v1.yaml");
  parked_t p;
  bw_service_t *inner = parked_service(&p);
  bw_service_t *svc = build(reg, "s", inner);

  waiter_t w;
  bw_call_t *c = start_call(&w, rt, svc);
  wait_parked(&p);
  assert_null(bw_registry_reload_string(reg, v2, strlen(v2), "v2.yaml"));
  bw_call_complete(p.call, NULL, NULL, bw_error_new(BW_ERR_TRANSPORT, 0, "late failure"));
  wait_for(&w, 1);
  assert_int_equal(w.kind, BW_ERR_NONE);
  assert_string_equal(w.resp, "v1"); /* the stack it started on */
  bw_call_free(c);
  waiter_fini(&w);

  /* a new call uses the new stack */
  p.call = NULL;
  c = start_call(&w, rt, svc);
  wait_parked(&p);
  bw_call_complete(p.call, NULL, NULL, bw_error_new(BW_ERR_TRANSPORT, 0, "failure"));
  wait_for(&w, 1);
  assert_string_equal(w.resp, "v2");
  bw_call_free(c);
  waiter_fini(&w);

  release_all(svc, inner, reg, rt);
  pthread_mutex_destroy(&p.mu);
  pthread_cond_destroy(&p.cv);
}

static void test_cancel_through_registry_service(void **state) {
  (void)state;
  bw_runtime_t *rt = paused_rt();
  const char *y = "stacks:\n  s:\n    - timeout: 50ms\n";
  bw_registry_t *reg = load(y, "t.yaml");
  parked_t p;
  bw_service_t *inner = parked_service(&p);
  bw_service_t *svc = build(reg, "s", inner);
  /* the parked backend never answers: the timeout inside fires on the paused clock */
  assert_int_equal(call_once(rt, svc, NULL), BW_ERR_TIMEOUT);
  /* the caller cancels: exactly one completion, kind cancelled */
  waiter_t w;
  bw_call_t *c = start_call(&w, rt, svc);
  bw_call_cancel(c);
  bw_call_cancel(c);
  wait_for(&w, 1);
  assert_true(w.kind == BW_ERR_CANCELLED || w.kind == BW_ERR_TIMEOUT);
  bw_call_free(c);
  waiter_fini(&w);
  release_all(svc, inner, reg, rt);
  pthread_mutex_destroy(&p.mu);
  pthread_cond_destroy(&p.cv);
}

static void test_http_request_and_clients(void **state) {
  (void)state;
  const char *y =
      "stacks:\n  api:\n    - timeout: 1s\n"
      "clients:\n"
      "  web:\n    http: { base_url: \"http://127.0.0.1:9/v1\", stack: api }\n"
      "  cache:\n    redis: { port: 6399, stack: api }\n";
  bw_registry_t *reg = load(y, "c.yaml");
  bw_http_request_t *req = NULL;
  assert_null(bw_registry_http_request(reg, "web", "get", "/users?id=3", &req));
  assert_string_equal(bw_http_request_method(req), "GET");
  assert_string_equal(bw_http_request_url_redacted(req), "http://127.0.0.1:9/v1/users");
  bw_http_request_free(req);
  bw_error_t *e = bw_registry_http_request(reg, "cache", "GET", "/x", &req); /* not HTTP */
  assert_int_equal(bw_error_detail(e), BW_CFG_UNKNOWN_REF);
  bw_error_unref(e);
  char names[64] = "";
  assert_int_equal(bw_registry_names(reg, BW_REGISTRY_CLIENTS, collect, names), 2);
  assert_string_equal(names, "web,cache,");
  bw_service_t *svc = NULL;
  e = bw_registry_client(reg, "web", &svc); /* no runtime given */
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  e = bw_registry_client(reg, "webb", &svc);
  assert_non_null(strstr(bw_error_message(e), "did you mean 'web'?"));
  bw_error_unref(e);
  bw_registry_free(reg);
}

static void test_http_client_through_stack(void **state) {
  (void)state;
  /* real clock: a paused clock would jump to the 5 s deadline while the
   * reactor (not a task) is connecting */
  bw_runtime_t *rt = new_rt(1, false);
  bw_registry_opts_t ro;
  bw_registry_opts_init(&ro);
  ro.rt = rt;
  /* port 9 (discard) on loopback refuses: connect error, then the fallback answers */
  const char *y =
      "stacks:\n  api:\n    - fallback: { value: cached, status: 203 }\n    - timeout: 5s\n"
      "clients:\n  web:\n    http: { base_url: \"http://127.0.0.1:9\", stack: api }\n";
  bw_registry_t *reg = NULL;
  assert_null(bw_registry_load_string(&reg, y, strlen(y), "h.yaml", &ro));
  bw_service_t *svc = NULL;
  assert_null(bw_registry_client(reg, "web", &svc));
  bw_http_request_t *req = NULL;
  assert_null(bw_registry_http_request(reg, "web", "GET", "/", &req));
  waiter_t w;
  waiter_init(&w);
  bw_call_t *c = NULL;
  assert_null(bw_call_new(&c, svc, rt));
  bw_call_set_request(c, req, bw_http_request_destroy);
  assert_null(bw_service_call(svc, c, on_done, &w));
  wait_for(&w, 1);
  assert_int_equal(w.kind, BW_ERR_NONE);
  const bw_http_response_t *resp = bw_call_response(c);
  assert_non_null(resp);
  assert_int_equal(bw_http_response_status(resp), 203);
  size_t len = 0;
  const char *body = bw_http_response_body(resp, &len);
  assert_int_equal(len, 6);
  assert_memory_equal(body, "cached", 6);
  assert_non_null(bw_call_fallback_error(c));
  bw_call_free(c);
  waiter_fini(&w);
  bw_service_release(svc);
  bw_registry_free(reg);
  bw_runtime_free(rt);
}

/* A backend that always answers with HTTP status `status` (as an error). */
typedef struct status_backend {
  atomic_int calls;
  int status;
} status_backend_t;

static bw_error_t *status_fn(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *resp_free) {
  (void)call, (void)resp, (void)resp_free;
  status_backend_t *b = arg;
  atomic_fetch_add(&b->calls, 1);
  return bw_error_new(BW_ERR_HTTP_STATUS, b->status, "HTTP %d", b->status);
}

static void test_many_http_statuses(void **state) {
  (void)state;
  /* 40 statuses: every one is retried, the last ones too */
  char y[1024];
  int o = snprintf(y, sizeof y, "stacks:\n  a:\n    - retry: { max_attempts: 3, base_delay: 0, "
                                "jitter: none, retry_on: [http_status], http_statuses: [");
  for (int i = 0; i < 40; i++) o += snprintf(y + o, sizeof y - (size_t)o, "%s%d", i ? ", " : "", 460 + i);
  snprintf(y + o, sizeof y - (size_t)o, "] }\n");
  bw_runtime_t *rt = paused_rt();
  bw_registry_t *reg = load(y, "statuses.yaml");
  status_backend_t b = {0, 0};
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = status_fn;
  fo.arg = &b;
  bw_service_t *inner = NULL;
  assert_null(bw_service_from_fn(&inner, &fo));
  bw_service_t *svc = build(reg, "a", inner);
  const int cases[][2] = {{460, 3}, {491, 3}, {499, 3}, {500, 1}}; /* status, backend calls */
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    b.status = cases[i][0];
    atomic_store(&b.calls, 0);
    call_once(rt, svc, NULL);
    if (atomic_load(&b.calls) != cases[i][1])
      fail_msg("status %d: %d calls, want %d", cases[i][0], atomic_load(&b.calls), cases[i][1]);
  }
  release_all(svc, inner, reg, rt);
}

static void test_shared_build_error_located(void **state) {
  (void)state;
  /* Refused when building a shared entry (or, since the loader checks these
   * limits too, when loading it): either way the error says where. */
  const char *y[] = {
      "shared:\n  br:\n    circuit_breaker: { window: time, window_buckets: 5000 }\n"
      "stacks:\n  a:\n    - shared: br\n",
      "shared:\n  rb:\n    retry_budget: { window: 2m }\n"
      "stacks:\n  a:\n    - retry: { budget: rb }\n",
  };
  const char *where[] = {"shared.br.circuit_breaker", "shared.rb.retry_budget"};
  for (size_t i = 0; i < 2; i++) {
    bw_registry_t *reg = NULL;
    bw_error_t *e = bw_registry_load_string(&reg, y[i], strlen(y[i]), "sh.yaml", NULL);
    assert_non_null(e);
    assert_null(reg);
    assert_int_equal(bw_error_kind(e), BW_ERR_CONFIG);
    const char *m = bw_error_message(e);
    if (strncmp(m, "sh.yaml:3:", 10) != 0 || strstr(m, where[i]) == NULL)
      fail_msg("not located: '%s'", m);
    bw_error_unref(e);
  }
}

/* ---- clients ---------------------------------------------------------------------- */

/* The model of `y` (the test fails on any diagnostic). */
static bw__config_t *model(const char *y) {
  bw_config_report_t *r = bw__report_new("m.yaml");
  bw__config_t *c = bw__config_load(y, strlen(y), "m.yaml", r);
  bw_error_t *e = bw__report_error(r);
  if (e) fail_msg("%s", bw_error_message(e));
  bw_config_report_free(r);
  assert_non_null(c);
  return c;
}

static void test_client_timeouts_round_up(void **state) {
  (void)state;
  /* 0 ms means "no timeout" to both clients: 500us must not become that */
  bw__config_t *c = model(
      "stacks: {a: [timeout]}\n"
      "clients:\n"
      "  h:\n    http: { base_url: \"http://127.0.0.1:9\", timeout: 500us, connect_timeout: 1500us }\n"
      "  r:\n    redis: { command_timeout: 900us, connect_timeout: 2ms }\n"
      "  z:\n    redis: { port: 6380 }\n");
  bw_http_client_opts_t ho;
  bw__client_http_opts(bw__config_client(c, "h"), &ho);
  assert_int_equal(ho.timeout_ms, 1);
  assert_int_equal(ho.connect_timeout_ms, 2);
  bw_redis_opts_t ro;
  bw__client_redis_opts(bw__config_client(c, "r"), &ro);
  assert_int_equal(ro.command_timeout_ms, 1);
  assert_int_equal(ro.connect_timeout_ms, 2);
  bw__client_redis_opts(bw__config_client(c, "z"), &ro); /* defaults: 0 stays "none" */
  assert_int_equal(ro.command_timeout_ms, 0);
  assert_int_equal(ro.connect_timeout_ms, 1000);
  bw__config_free(c);
}

/* redis max_reply: a size mapped to max_reply_bytes (default 64MiB, the
 * client's own default); below 1KiB, or not a size, is refused where it
 * is written. */
static void test_redis_max_reply(void **state) {
  (void)state;
  bw__config_t *c = model("stacks: {a: [timeout]}\n"
                          "clients:\n"
                          "  r:\n    redis: { max_reply: 4MiB }\n"
                          "  z:\n    redis: { port: 6380 }\n");
  bw_redis_opts_t ro;
  bw__client_redis_opts(bw__config_client(c, "r"), &ro);
  assert_true(ro.max_reply_bytes == (size_t)4 << 20);
  bw__client_redis_opts(bw__config_client(c, "z"), &ro);
  assert_true(ro.max_reply_bytes == BW_REDIS_DEFAULT_MAX_REPLY_BYTES);
  bw__config_free(c);

  static const struct {
    const char *value;
    bw_config_problem_t problem;
    const char *needle;
  } bad[] = {{"512B", BW_CFG_RANGE, "1KiB..64GiB"},
             {"65GiB", BW_CFG_RANGE, "1KiB..64GiB"},
             {"64", BW_CFG_RANGE, "1KiB..64GiB"}, /* bytes: 64MiB was meant */
             {"lots", BW_CFG_BAD_VALUE, "a size like 64KiB"},
             {"2 parsecs", BW_CFG_UNIT, "a size like 64KiB"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char y[256];
    snprintf(y, sizeof y, "stacks: {a: [timeout]}\nclients:\n  r:\n    redis: { max_reply: %s }\n",
             bad[i].value);
    bw_config_report_t *r = NULL;
    bw_error_t *e = bw_config_check_string(y, strlen(y), "mr.yaml", &r);
    if (e == NULL) fail_msg("max_reply: %s accepted", bad[i].value);
    const bw_config_diag_t *d = bw_config_report_get(r, 0);
    if (bw_error_detail(e) != bad[i].problem || d->line != 4 ||
        strcmp(d->path, "clients.r.redis.max_reply") != 0 || !strstr(d->message, bad[i].needle))
      fail_msg("max_reply: %s: got %d '%s' '%s'", bad[i].value, d->line, d->path, d->message);
    bw_error_unref(e);
    bw_config_report_free(r);
  }
}

static void test_secret_client_setting_reloads(void **state) {
  (void)state;
  bw_runtime_t *rt = new_rt(1, false);
  bw_registry_opts_t ro;
  bw_registry_opts_init(&ro);
  ro.rt = rt;
  /* a secret duration lives in the value's u field (no text kept): the
   * signature must still see it change */
  const char *y = "stacks: {a: [timeout]}\n"
                  "clients:\n  h:\n    http: { base_url: \"http://127.0.0.1:9\", "
                  "timeout: \"${BW_TEST_HTTP_TIMEOUT}\" }\n";
  setenv("BW_TEST_HTTP_TIMEOUT", "1s", 1);
  bw_registry_t *reg = NULL;
  assert_null(bw_registry_load_string(&reg, y, strlen(y), "env.yaml", &ro));
  bw_service_t *s1 = NULL, *s2 = NULL, *s3 = NULL;
  assert_null(bw_registry_client(reg, "h", &s1));
  assert_null(bw_registry_reload_string(reg, y, strlen(y), "env.yaml"));
  assert_null(bw_registry_client(reg, "h", &s2));
  assert_ptr_equal(s1, s2); /* same value: same client */
  setenv("BW_TEST_HTTP_TIMEOUT", "5s", 1);
  assert_null(bw_registry_reload_string(reg, y, strlen(y), "env.yaml"));
  assert_null(bw_registry_client(reg, "h", &s3));
  assert_ptr_not_equal(s2, s3); /* changed value: a new client */
  unsetenv("BW_TEST_HTTP_TIMEOUT");
  bw_service_release(s1);
  bw_service_release(s2);
  bw_service_release(s3);
  bw_registry_free(reg);
  bw_runtime_free(rt);
}

/* ---- reloads racing calls (run under TSan) ------------------------------------------ */

typedef struct race {
  bw_runtime_t *rt;
  bw_service_t *svc;
  int calls, ok;
} race_t;

static void *caller(void *arg) {
  race_t *r = arg;
  for (int i = 0; i < r->calls; i++) {
    char resp[64];
    bw_error_kind_t k = call_once(r->rt, r->svc, resp);
    if (k == BW_ERR_NONE && (strcmp(resp, "v1") == 0 || strcmp(resp, "v2") == 0)) r->ok++;
  }
  return NULL;
}

static void test_reload_races_calls(void **state) {
  (void)state;
  bw_runtime_t *rt = new_rt(2, false);
  const char *v[2] = {"shared:\n  b: {circuit_breaker: {window: consecutive, consecutive_failures: 1000000}}\n"
                      "stacks:\n  s:\n    - fallback: { value: v1 }\n    - shared: b\n",
                      "shared:\n  b: {circuit_breaker: {window: consecutive, consecutive_failures: 1000000}}\n"
                      "stacks:\n  s:\n    - fallback: { value: v2 }\n    - shared: b\n    - timeout: 1s\n"};
  bw_registry_t *reg = load(v[0], "v.yaml");
  backend_t b = {0, 1 << 30}; /* always fails: the fallback answers */
  bw_service_t *inner = backend_service(&b);
  bw_service_t *svc = build(reg, "s", inner);
  const char *sc = getenv("BW_TEST_SCALE");
  double scale = sc ? atof(sc) : 1.0;
  int n = (int)(400 * (scale > 0 ? scale : 1.0));
  if (n < 20) n = 20;
  race_t r[2] = {{rt, svc, n, 0}, {rt, svc, n, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, caller, &r[i]), 0);
  for (int i = 0; i < n / 4; i++) {
    const char *y = v[(i + 1) & 1];
    assert_null(bw_registry_reload_string(reg, y, strlen(y), "v.yaml"));
  }
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  assert_int_equal(r[0].ok, n);
  assert_int_equal(r[1].ok, n);
  assert_int_equal(bw_registry_generation(reg), (uint64_t)(1 + n / 4));
  release_all(svc, inner, reg, rt);
}

/* ---- fallbacks: made once per generation and flavor ----------------------------- */

/* Services of both flavors built from one generation answer with their own
 * fallback (a generation keeps one fallback layer per flavor, made by the
 * first build that needs it). */
static void test_fallback_flavors_share_generation(void **state) {
  (void)state;
  bw_runtime_t *rt = paused_rt();
  bw_registry_t *reg =
      load("stacks:\n  s:\n    - fallback: { value: fb, status: 503 }\n    - timeout: 1s\n", "f.yaml");
  backend_t b = {0, 1 << 30}; /* always fails: the fallback answers */
  bw_service_t *inner = backend_service(&b);
  for (int round = 0; round < 2; round++) {
    bw_service_t *bytes = NULL, *http = NULL;
    assert_null(bw_registry_build_ex(reg, "s", inner, BW_REGISTRY_BYTES, &bytes));
    assert_null(bw_registry_build_ex(reg, "s", inner, BW_REGISTRY_HTTP, &http));
    char resp[64];
    assert_int_equal(call_once(rt, bytes, resp), BW_ERR_NONE);
    assert_string_equal(resp, "fb");
    waiter_t w;
    bw_call_t *c = start_call(&w, rt, http);
    wait_for(&w, 1);
    assert_int_equal(w.kind, BW_ERR_NONE);
    const bw_http_response_t *r = bw_call_response(c);
    assert_non_null(r);
    assert_int_equal(bw_http_response_status(r), 503);
    size_t len = 0;
    const char *body = bw_http_response_body(r, &len);
    assert_int_equal(len, 2);
    assert_memory_equal(body, "fb", 2);
    bw_call_free(c);
    waiter_fini(&w);
    bw_service_release(bytes);
    bw_service_release(http);
  }
  /* a reload: the next build gets the new generation's fallback */
  const char *v2 = "stacks:\n  s:\n    - fallback: { value: f2 }\n";
  assert_null(bw_registry_reload_string(reg, v2, strlen(v2), "f.yaml"));
  bw_service_t *svc = build(reg, "s", inner);
  char resp[64];
  assert_int_equal(call_once(rt, svc, resp), BW_ERR_NONE);
  assert_string_equal(resp, "f2");
  release_all(svc, inner, reg, rt);
}

/* Live allocations through bulwark's allocator (single-threaded use here:
 * no runtime, nothing else allocates meanwhile). */
static atomic_long g_live;
static void *count_malloc(size_t n) {
  void *p = malloc(n);
  if (p) atomic_fetch_add(&g_live, 1);
  return p;
}
static void *count_calloc(size_t n, size_t size) {
  void *p = calloc(n, size);
  if (p) atomic_fetch_add(&g_live, 1);
  return p;
}
static void *count_realloc(void *old, size_t n) {
  void *p = realloc(old, n); /* bulwark never asks for 0 bytes */
  if (p && old == NULL) atomic_fetch_add(&g_live, 1);
  return p;
}
static void count_free(void *p) {
  if (p) atomic_fetch_sub(&g_live, 1);
  free(p);
}

static size_t kept_blocks(bw_registry_t *reg) {
  size_t n = 0;
  pthread_mutex_lock(&reg->keep_mu);
  for (const keep_t *k = reg->keep; k; k = k->next) n++;
  pthread_mutex_unlock(&reg->keep_mu);
  return n;
}

/* Building and releasing services again and again keeps no memory. Each
 * build used to make its own fallback layer, whose argument blocks (the
 * HTTP/Redis answer, the `on` predicate) were kept until bw_registry_free:
 * a program building per request grew without bound. */
static void test_builds_keep_no_memory(void **state) {
  (void)state;
  bw_allocator_t a = {count_malloc, count_calloc, count_realloc, count_free};
  assert_null(bw_set_allocator(&a));
  bw_registry_t *reg = load("stacks:\n  s:\n"
                            "    - fallback: { value: fb, status: 503, on: [transport, timeout] }\n"
                            "    - retry: { max_attempts: 2, retry_on: [transport] }\n"
                            "    - timeout: 1s\n",
                            "k.yaml");
  backend_t b = {0, 0};
  bw_service_t *inner = backend_service(&b);
  static const bw_registry_flavor_t kFlavors[] = {BW_REGISTRY_BYTES, BW_REGISTRY_HTTP,
                                                  BW_REGISTRY_REDIS};
  long live = 0;
  size_t kept = 0;
  for (int round = 0; round < 201; round++) {
    for (size_t f = 0; f < 3; f++) {
      bw_service_t *svc = NULL;
      assert_null(bw_registry_build_ex(reg, "s", inner, kFlavors[f], &svc));
      bw_service_release(svc);
    }
    if (round == 0) { /* the first round made the generation's fallbacks */
      live = atomic_load(&g_live);
      kept = kept_blocks(reg);
    }
  }
  assert_int_equal(kept_blocks(reg), kept);
  assert_int_equal(atomic_load(&g_live), live);
  bw_service_release(inner);
  bw_registry_free(reg);
  assert_null(bw_set_allocator(NULL));
}

/* ---- automatic reload ------------------------------------------------------------- */

typedef struct reload_seen {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n;
  bw_error_kind_t last;
} reload_seen_t;

static void on_reload(bw_registry_t *reg, const bw_error_t *err, void *arg) {
  (void)reg;
  reload_seen_t *s = arg;
  pthread_mutex_lock(&s->mu);
  s->n++;
  s->last = bw_error_kind(err);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Options watching the file on rt, reloads counted in *seen (initialised
 * here; seen_fini after). */
static void watch_opts(bw_registry_opts_t *ro, bw_runtime_t *rt, reload_seen_t *seen) {
  memset(seen, 0, sizeof *seen);
  pthread_mutex_init(&seen->mu, NULL);
  pthread_cond_init(&seen->cv, NULL);
  bw_registry_opts_init(ro);
  ro->rt = rt;
  ro->watch = true;
  ro->on_reload = on_reload;
  ro->on_reload_arg = seen;
}

static void seen_fini(reload_seen_t *seen) {
  pthread_mutex_destroy(&seen->mu);
  pthread_cond_destroy(&seen->cv);
}

static int wait_reloads(reload_seen_t *s, int n) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 20; /* waiting for the kernel's file event, not for time to pass */
  pthread_mutex_lock(&s->mu);
  while (s->n < n)
    if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
  int got = s->n;
  pthread_mutex_unlock(&s->mu);
  return got;
}

static void write_file(const char *path, const char *text) {
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
  assert_int_equal(rename(tmp, path), 0); /* as editors save */
}

static void test_watch_reloads(void **state) {
  (void)state;
  bw_runtime_t *rt = new_rt(1, false);
  char dir[] = "/tmp/bw_cfg_watch_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[256];
  snprintf(path, sizeof path, "%s/stacks.yaml", dir);
  write_file(path, "stacks:\n  a:\n    - timeout: 1s\n");
  reload_seen_t seen;
  bw_registry_opts_t ro;
  watch_opts(&ro, rt, &seen);
  bw_registry_t *reg = NULL;
  assert_null(bw_registry_load_file(&reg, path, &ro));
  assert_int_equal(bw_registry_generation(reg), 1);
  /* the watch is active when the load returns */
  write_file(path, "stacks:\n  a:\n    - timeout: 2s\n  b:\n    - retry: 2\n");
  assert_true(wait_reloads(&seen, 1) >= 1);
  assert_int_equal(seen.last, BW_ERR_NONE);
  assert_true(bw_registry_generation(reg) >= 2);
  assert_int_equal(bw_registry_names(reg, BW_REGISTRY_STACKS, NULL, NULL), 2);
  /* a broken save is reported and changes nothing */
  int before = seen.n;
  uint64_t gen = bw_registry_generation(reg);
  write_file(path, "stacks:\n  a:\n    - retyr: 2\n");
  assert_true(wait_reloads(&seen, before + 1) >= before + 1);
  pthread_mutex_lock(&seen.mu);
  bw_error_kind_t last = seen.last;
  pthread_mutex_unlock(&seen.mu);
  assert_int_equal(last, BW_ERR_CONFIG);
  assert_int_equal(bw_registry_generation(reg), gen);
  bw_registry_free(reg);
  bw_runtime_free(rt);
  unlink(path);
  rmdir(dir);
  seen_fini(&seen);
}

static void collect_locked_names(bw_registry_t *reg, char *buf) {
  buf[0] = '\0';
  bw_registry_names(reg, BW_REGISTRY_STACKS, collect, buf);
}

static int seen_count(reload_seen_t *s, bw_error_kind_t *last) {
  pthread_mutex_lock(&s->mu);
  int n = s->n;
  if (last) *last = s->last;
  pthread_mutex_unlock(&s->mu);
  return n;
}

/* bw_registry_reload_file(reg, other) moves the watch to `other` (here in
 * another directory): its edits reload, edits to the old file do not. The
 * watch used to stay on the first file: edits to the new one were never
 * seen (the first wait below fails), and an edit to the old one reloaded
 * the new file. No sleeping: each step waits for the kernel's event of a
 * write that must reload. That the old file is not watched is checked as
 * far as it can be without waiting for nothing: it is edited just before
 * such a write, so a reload it caused would most likely come first, read
 * the not yet updated new file and be counted. */
static void test_watch_follows_reload_file(void **state) {
  (void)state;
  bw_runtime_t *rt = new_rt(1, false);
  char d1[] = "/tmp/bw_cfg_watch_a_XXXXXX", d2[] = "/tmp/bw_cfg_watch_b_XXXXXX";
  assert_non_null(mkdtemp(d1));
  assert_non_null(mkdtemp(d2));
  char a[256], b[256];
  snprintf(a, sizeof a, "%s/a.yaml", d1);
  snprintf(b, sizeof b, "%s/b.yaml", d2);
  write_file(a, "stacks:\n  a1:\n    - timeout: 1s\n");
  write_file(b, "stacks:\n  b1:\n    - timeout: 1s\n");
  reload_seen_t seen;
  bw_registry_opts_t ro;
  watch_opts(&ro, rt, &seen);
  bw_registry_t *reg = NULL;
  assert_null(bw_registry_load_file(&reg, a, &ro));
  assert_null(bw_registry_reload_file(reg, b));
  assert_int_equal(bw_registry_generation(reg), 2);
  char names[256];
  collect_locked_names(reg, names);
  assert_string_equal(names, "b1,");

  /* the watch is on b when reload_file returns */
  write_file(b, "stacks:\n  b2:\n    - timeout: 1s\n");
  assert_int_equal(wait_reloads(&seen, 1), 1);
  collect_locked_names(reg, names);
  assert_string_equal(names, "b2,");
  bw_error_kind_t last;
  assert_int_equal(seen_count(&seen, &last), 1);
  assert_int_equal(last, BW_ERR_NONE);
  write_file(a, "stacks:\n  a3:\n    - timeout: 1s\n");
  write_file(b, "stacks:\n  b3:\n    - timeout: 1s\n");
  assert_int_equal(wait_reloads(&seen, 2), 2);
  collect_locked_names(reg, names);
  assert_string_equal(names, "b3,");
  assert_int_equal(bw_registry_generation(reg), 4);

  /* and back: the watch returns to a's directory, b is not watched */
  assert_null(bw_registry_reload_file(reg, a));
  collect_locked_names(reg, names);
  assert_string_equal(names, "a3,");
  write_file(b, "stacks:\n  b4:\n    - timeout: 1s\n");
  write_file(a, "stacks:\n  a4:\n    - timeout: 1s\n");
  assert_int_equal(wait_reloads(&seen, 3), 3);
  collect_locked_names(reg, names);
  assert_string_equal(names, "a4,");
  assert_int_equal(seen_count(&seen, &last), 3);
  assert_int_equal(last, BW_ERR_NONE);
  assert_int_equal(bw_registry_generation(reg), 6);

  bw_registry_free(reg);
  bw_runtime_free(rt);
  unlink(a);
  unlink(b);
  rmdir(d1);
  rmdir(d2);
  seen_fini(&seen);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names_and_build),
      cmocka_unit_test(test_reload_keeps_breaker_state),
      cmocka_unit_test(test_reload_failure_keeps_old),
      cmocka_unit_test(test_inflight_finishes_on_old_stack),
      cmocka_unit_test(test_cancel_through_registry_service),
      cmocka_unit_test(test_http_request_and_clients),
      cmocka_unit_test(test_http_client_through_stack),
      cmocka_unit_test(test_many_http_statuses),
      cmocka_unit_test(test_shared_build_error_located),
      cmocka_unit_test(test_client_timeouts_round_up),
      cmocka_unit_test(test_redis_max_reply),
      cmocka_unit_test(test_secret_client_setting_reloads),
      cmocka_unit_test(test_reload_races_calls),
      cmocka_unit_test(test_fallback_flavors_share_generation),
      cmocka_unit_test(test_builds_keep_no_memory),
      cmocka_unit_test(test_watch_reloads),
      cmocka_unit_test(test_watch_follows_reload_file),
  };
  return cmocka_run_group_tests_name("config_registry", tests, NULL, NULL);
}
