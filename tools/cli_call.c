/* `bulwark http` and `bulwark redis`: one call, optionally through a stack
 * from a config file, printing the result and (with -v) every event.
 *
 * Design notes
 * - A 2-worker runtime on the real clock; the call is made from main and
 *   waited for on a condition variable (main is not a worker).
 * - -v attaches one process-wide event hook; it prints on whatever worker
 *   emits, under a mutex so lines do not interleave, with the time since the
 *   call started (runtime clock).
 * - Teardown order: release services, free the registry, free the client,
 *   then the runtime (clients must go before their runtime). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/circuit_breaker.h"
#include "bulwark/config.h"
#include "bulwark/fallback.h"
#include "bulwark/http.h"
#include "bulwark/metrics.h"
#include "bulwark/redis.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "cli.h"

typedef struct cli_call {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  bw_error_t *err;
} cli_call_t;

static pthread_mutex_t g_print_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t g_t0_ns;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  (void)call;
  cli_call_t *c = arg;
  pthread_mutex_lock(&c->mu);
  c->err = bw_error_ref(err);
  c->done = true;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
}

static void fmt_ns(uint64_t ns, char *buf, size_t len) {
  if (ns >= 1000000000ull) snprintf(buf, len, "%.3fs", (double)ns / 1e9);
  else if (ns >= 1000000ull) snprintf(buf, len, "%.3fms", (double)ns / 1e6);
  else snprintf(buf, len, "%.1fus", (double)ns / 1e3);
}

static void on_event(const bw_event_t *ev, void *arg) {
  (void)arg;
  char t[32], d[32], err[512] = "";
  uint64_t rel = ev->now_ns > g_t0_ns ? ev->now_ns - g_t0_ns : 0;
  snprintf(t, sizeof t, "%10.3f ms", (double)rel / 1e6);
  if (ev->error) bw_error_format(ev->error, err, sizeof err, 0);
  pthread_mutex_lock(&g_print_mu);
  fprintf(stderr, "[%s] %s", t, bw_event_type_name(ev->type));
  if (ev->layer_kind) {
    if (ev->layer_index >= 0) fprintf(stderr, " layer=%d:%s", ev->layer_index, ev->layer_kind);
    else fprintf(stderr, " layer=%s", ev->layer_kind);
  }
  if (ev->layer_name) fprintf(stderr, " name=%s", ev->layer_name);
  if (ev->attempt) fprintf(stderr, " attempt=%u", ev->attempt);
  if (ev->delay_ns) {
    fmt_ns(ev->delay_ns, d, sizeof d);
    fprintf(stderr, " delay=%s", d);
  }
  if (ev->type == BW_EVENT_BREAKER_STATE)
    fprintf(stderr, " %s->%s", bw_breaker_state_name((bw_breaker_state_t)ev->from_state),
            bw_breaker_state_name((bw_breaker_state_t)ev->to_state));
  if (ev->reason) fprintf(stderr, " reason=%s", ev->reason);
  if (ev->error) fprintf(stderr, " error=\"%s\"", err);
  fputc('\n', stderr);
  pthread_mutex_unlock(&g_print_mu);
}

typedef struct common {
  const char *file, *stack;
  uint64_t timeout_ns;
  bool verbose;
} common_t;

/* Parses -c, -s, -t, -v. Returns 1 if argv[*i] was consumed, 0 if not one of
 * these, -1 on a usage error. */
static int common_opt(common_t *c, int argc, char **argv, int *i, const char *cmd) {
  const char *a = argv[*i];
  if (strcmp(a, "-v") == 0) {
    c->verbose = true;
    return 1;
  }
  if (strcmp(a, "-c") != 0 && strcmp(a, "-s") != 0 && strcmp(a, "-t") != 0) return 0;
  if (*i + 1 >= argc) {
    fprintf(stderr, "bulwark %s: option %s needs a value\n", cmd, a);
    return -1;
  }
  const char *v = argv[++*i];
  if (a[1] == 'c') c->file = v;
  else if (a[1] == 's') c->stack = v;
  else {
    bw_error_t *e = bw_config_parse_duration(v, &c->timeout_ns);
    if (e) {
      bw__cli_report_error("bulwark: -t", e);
      return -1;
    }
  }
  return 1;
}

static int check_common(const common_t *c, const char *cmd) {
  if ((c->file == NULL) != (c->stack == NULL)) {
    fprintf(stderr, "bulwark %s: -c FILE and -s STACK go together\n", cmd);
    return -1;
  }
  return 0;
}

static bw_runtime_t *make_runtime(void) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = 2;
  bw_runtime_t *rt = NULL;
  bw_error_t *e = bw_runtime_new(&rt, &o);
  if (e) {
    bw__cli_report_error("bulwark", e);
    return NULL;
  }
  return rt;
}

/* Run one call of `req` through svc. On success *resp_out takes the
 * response. Returns the error (owned) or NULL. */
static bw_error_t *run_call(bw_runtime_t *rt, bw_service_t *svc, void *req, bw_destroy_fn req_free,
                            uint64_t timeout_ns, void **resp_out, bw_destroy_fn *resp_free,
                            const bw_error_t **fallback_err, bw_call_t **keep) {
  bw_call_t *call = NULL;
  bw_error_t *e = bw_call_new(&call, svc, rt);
  if (e) {
    if (req_free) req_free(req);
    return e;
  }
  bw_call_set_request(call, req, req_free);
  g_t0_ns = bw_runtime_now_ns(rt);
  if (timeout_ns) bw_call_set_deadline_ns(call, g_t0_ns + timeout_ns);
  cli_call_t st = {.done = false, .err = NULL};
  pthread_mutex_init(&st.mu, NULL);
  pthread_cond_init(&st.cv, NULL);
  e = bw_service_call(svc, call, on_done, &st);
  if (e == NULL) {
    pthread_mutex_lock(&st.mu);
    while (!st.done) pthread_cond_wait(&st.cv, &st.mu);
    pthread_mutex_unlock(&st.mu);
    e = st.err;
    if (e == NULL) *resp_out = bw_call_take_response(call, resp_free);
  }
  pthread_mutex_destroy(&st.mu);
  pthread_cond_destroy(&st.cv);
  (void)fallback_err;
  *keep = call; /* freed by the caller after printing (fallback error lives in it) */
  return e;
}

/* ---- http ------------------------------------------------------------------------- */

static const char kHttpUsage[] =
    "usage: bulwark http [-c FILE -s STACK] [-X METHOD] [-H 'Name: value']... [-d BODY]\n"
    "                    [-t TIMEOUT] [-i] [-v] URL\n"
    "\n"
    "Make one HTTP request, through stack STACK of config FILE if given, and\n"
    "print the response body on stdout.\n"
    "  -c FILE     config file            -s STACK    stack to call through\n"
    "  -X METHOD   request method (GET)   -H LINE     add a header (repeatable)\n"
    "  -d BODY     request body (POST if no -X)\n"
    "  -t TIMEOUT  deadline of the whole call, e.g. 5s (default 30s)\n"
    "  -i          print the status line and headers before the body\n"
    "  -v          print every event (attempts, backoff waits, breaker state,\n"
    "              fallback) with its time on stderr\n"
    "Statuses the client treats as errors (5xx, 429) fail the call unless a\n"
    "fallback answers. Exit 0 on a response, 1 if the call failed (the error\n"
    "chain is printed), 2 on bad usage, 3 if the client could not start.\n";

int bw__cli_http(int argc, char **argv) {
  if (bw__cli_wants_help(argc, argv)) {
    fputs(kHttpUsage, stdout);
    return BW_CLI_OK;
  }
  common_t c = {NULL, NULL, 30000000000ull, false};
  const char *method = NULL, *body = NULL, *url = NULL;
  const char *headers[64];
  size_t nheaders = 0;
  bool include = false;
  for (int i = 1; i < argc; i++) {
    int r = common_opt(&c, argc, argv, &i, "http");
    if (r < 0) return BW_CLI_USAGE;
    if (r > 0) continue;
    const char *a = argv[i];
    if (strcmp(a, "-i") == 0) {
      include = true;
    } else if ((strcmp(a, "-X") == 0 || strcmp(a, "-H") == 0 || strcmp(a, "-d") == 0) && i + 1 < argc) {
      const char *v = argv[++i];
      if (a[1] == 'X') method = v;
      else if (a[1] == 'd') body = v;
      else if (nheaders < 64) headers[nheaders++] = v;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "bulwark http: unknown option or missing value '%s'\n%s", a, kHttpUsage);
      return BW_CLI_USAGE;
    } else if (url == NULL) {
      url = a;
    } else {
      fprintf(stderr, "bulwark http: more than one URL\n");
      return BW_CLI_USAGE;
    }
  }
  if (url == NULL) {
    fprintf(stderr, "bulwark http: no URL given\n%s", kHttpUsage);
    return BW_CLI_USAGE;
  }
  if (check_common(&c, "http") != 0) return BW_CLI_USAGE;
  if (method == NULL) method = body ? "POST" : "GET";

  bw_http_request_t *req = NULL;
  bw_error_t *e = bw_http_request_new(&req, method, url);
  for (size_t i = 0; e == NULL && i < nheaders; i++) e = bw_http_request_add_header(req, headers[i]);
  if (e == NULL && body) e = bw_http_request_set_body(req, body, strlen(body), BW_HTTP_BODY_COPY);
  if (e) {
    bw__cli_report_error("bulwark http", e);
    bw_http_request_free(req);
    return BW_CLI_USAGE;
  }
  /* the config first: a bad file is reported before anything starts */
  bw_registry_t *reg = NULL;
  if (c.file) {
    e = bw_registry_load_file(&reg, c.file, NULL);
    if (e) {
      bw__cli_report_error("bulwark http", e);
      bw_http_request_free(req);
      return BW_CLI_FAILED;
    }
  }
  int rc = BW_CLI_OK;
  bw_runtime_t *rt = make_runtime();
  bw_http_client_t *cli = NULL;
  bw_service_t *svc = NULL;
  bw_event_hook_t *hook = NULL;
  if (rt == NULL || (e = bw_http_client_new(&cli, rt, NULL)) != NULL) {
    if (e) bw__cli_report_error("bulwark http", e);
    rc = BW_CLI_START;
    goto out;
  }
  if (reg) {
    e = bw_registry_build_ex(reg, c.stack, bw_http_client_service(cli), BW_REGISTRY_HTTP, &svc);
    if (e) {
      bw__cli_report_error("bulwark http", e);
      rc = BW_CLI_FAILED;
      goto out;
    }
  } else {
    svc = bw_service_ref(bw_http_client_service(cli));
  }
  if (c.verbose) {
    e = bw_event_hook_add(&hook, NULL, NULL, on_event, NULL);
    bw_error_unref(e);
  }
  void *resp = NULL;
  bw_destroy_fn resp_free = NULL;
  bw_call_t *call = NULL;
  e = run_call(rt, svc, req, bw_http_request_destroy, c.timeout_ns, &resp, &resp_free, NULL, &call);
  req = NULL;
  bw_event_hook_remove(hook);
  if (e) {
    bw__cli_report_error("bulwark http", e);
    rc = BW_CLI_FAILED;
  } else {
    bw_http_response_t *r = resp;
    const bw_error_t *fb = bw_call_fallback_error(call);
    if (fb) bw__cli_print_error("bulwark http: answered by the fallback instead of", fb);
    if (include || c.verbose) {
      FILE *hout = include ? stdout : stderr;
      fprintf(hout, "HTTP %d\n", bw_http_response_status(r));
      for (size_t i = 0; i < bw_http_response_header_count(r); i++) {
        const char *n, *v;
        if (bw_http_response_header_at(r, i, &n, &v)) fprintf(hout, "%s: %s\n", n, v);
      }
      fputc('\n', hout);
    }
    size_t len = 0;
    const char *b = bw_http_response_body(r, &len);
    fwrite(b, 1, len, stdout);
    if (resp_free) resp_free(resp);
  }
  bw_call_free(call);
out:
  bw_http_request_free(req);
  bw_service_release(svc);
  bw_registry_free(reg);
  bw_http_client_free(cli);
  bw_runtime_free(rt);
  return rc;
}

/* ---- redis ------------------------------------------------------------------------------ */

static const char kRedisUsage[] =
    "usage: bulwark redis [-c FILE -s STACK] [-h HOST] [-p PORT] [-n DB] [-t TIMEOUT] [-v]\n"
    "                     CMD [ARG...]\n"
    "\n"
    "Send one Redis command, through stack STACK of config FILE if given, and\n"
    "print the reply as redis-cli does.\n"
    "  -h HOST  server (127.0.0.1)   -p PORT  port (6379)   -n DB  database (0)\n"
    "  -t TIMEOUT  deadline of the whole call, e.g. 500ms (default 30s)\n"
    "  -v       print every event with its time on stderr\n"
    "The password, if any, is read from the environment variable\n"
    "BULWARK_REDIS_PASSWORD (never from the command line).\n"
    "Exit 0 on a reply, 1 if the call failed (error replies included), 2 on\n"
    "bad usage, 3 if the client could not start.\n";

static void print_reply(const bw_redis_reply_t *r, int depth, size_t index) {
  if (depth > 0) printf("%*s%zu) ", (depth - 1) * 3, "", index + 1);
  switch (r->type) {
    case BW_REDIS_REPLY_STRING: printf("\"%.*s\"\n", (int)r->len, r->str); break;
    case BW_REDIS_REPLY_STATUS: printf("%.*s\n", (int)r->len, r->str); break;
    case BW_REDIS_REPLY_ERROR: printf("(error) %.*s\n", (int)r->len, r->str); break;
    case BW_REDIS_REPLY_INTEGER: printf("(integer) %lld\n", r->integer); break;
    case BW_REDIS_REPLY_NIL: printf("(nil)\n"); break;
    case BW_REDIS_REPLY_ARRAY:
      if (r->elements == 0) printf("(empty array)\n");
      else if (depth > 0) printf("\n");
      for (size_t i = 0; i < r->elements; i++) print_reply(r->element[i], depth + 1, i);
      break;
  }
}

int bw__cli_redis(int argc, char **argv) {
  if (bw__cli_wants_help(argc, argv)) {
    fputs(kRedisUsage, stdout);
    return BW_CLI_OK;
  }
  common_t c = {NULL, NULL, 30000000000ull, false};
  const char *host = "127.0.0.1";
  long port = 6379, db = 0;
  int i = 1;
  for (; i < argc; i++) {
    int r = common_opt(&c, argc, argv, &i, "redis");
    if (r < 0) return BW_CLI_USAGE;
    if (r > 0) continue;
    const char *a = argv[i];
    if ((strcmp(a, "-h") == 0 || strcmp(a, "-p") == 0 || strcmp(a, "-n") == 0) && i + 1 < argc) {
      const char *v = argv[++i];
      if (a[1] == 'h') {
        host = v;
      } else {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end != '\0' || n < 0 || (a[1] == 'p' && (n < 1 || n > 65535))) {
          fprintf(stderr, "bulwark redis: bad %s value '%s'\n", a, v);
          return BW_CLI_USAGE;
        }
        if (a[1] == 'p') port = n;
        else db = n;
      }
    } else if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "bulwark redis: unknown option or missing value '%s'\n%s", a, kRedisUsage);
      return BW_CLI_USAGE;
    } else {
      break; /* CMD */
    }
  }
  if (i >= argc) {
    fprintf(stderr, "bulwark redis: no command given\n%s", kRedisUsage);
    return BW_CLI_USAGE;
  }
  if (check_common(&c, "redis") != 0) return BW_CLI_USAGE;
  bw_redis_request_t *req = NULL;
  bw_error_t *e = bw_redis_request_new(&req, argc - i, (const char *const *)(argv + i), NULL);
  if (e) {
    bw__cli_report_error("bulwark redis", e);
    return BW_CLI_USAGE;
  }
  bw_registry_t *reg = NULL;
  if (c.file) {
    e = bw_registry_load_file(&reg, c.file, NULL);
    if (e) {
      bw__cli_report_error("bulwark redis", e);
      bw_redis_request_free(req);
      return BW_CLI_FAILED;
    }
  }
  int rc = BW_CLI_OK;
  bw_runtime_t *rt = make_runtime();
  bw_redis_t *client = NULL;
  bw_service_t *leaf = NULL, *svc = NULL;
  bw_event_hook_t *hook = NULL;
  bw_redis_opts_t ro;
  bw_redis_opts_init(&ro);
  ro.host = host;
  ro.port = (int)port;
  ro.db = (int)db;
  ro.password = getenv("BULWARK_REDIS_PASSWORD");
  if (rt == NULL || (e = bw_redis_new(rt, &ro, &client)) != NULL ||
      (e = bw_redis_service_new(&leaf, client)) != NULL) {
    if (e) bw__cli_report_error("bulwark redis", e);
    rc = BW_CLI_START;
    goto out;
  }
  if (reg) {
    e = bw_registry_build_ex(reg, c.stack, leaf, BW_REGISTRY_REDIS, &svc);
    if (e) {
      bw__cli_report_error("bulwark redis", e);
      rc = BW_CLI_FAILED;
      goto out;
    }
  } else {
    svc = bw_service_ref(leaf);
  }
  if (c.verbose) {
    e = bw_event_hook_add(&hook, NULL, NULL, on_event, NULL);
    bw_error_unref(e);
  }
  void *resp = NULL;
  bw_destroy_fn resp_free = NULL;
  bw_call_t *call = NULL;
  e = run_call(rt, svc, req, bw_redis_request_free, c.timeout_ns, &resp, &resp_free, NULL, &call);
  req = NULL;
  bw_event_hook_remove(hook);
  if (e) {
    bw__cli_report_error("bulwark redis", e);
    rc = BW_CLI_FAILED;
  } else {
    const bw_error_t *fb = bw_call_fallback_error(call);
    if (fb) bw__cli_print_error("bulwark redis: answered by the fallback instead of", fb);
    print_reply(resp, 0, 0);
    if (resp_free) resp_free(resp);
  }
  bw_call_free(call);
out:
  bw_redis_request_free(req);
  bw_service_release(svc);
  bw_service_release(leaf);
  bw_registry_free(reg);
  bw_redis_free(client);
  bw_runtime_free(rt);
  return rc;
}
