/* http_get: fetch a URL through a resilience stack.
 *
 *   http_get [URL]      default URL: http://127.0.0.1:1/ (nothing listens
 *                       there, so the run shows retries and the fallback)
 *
 * Stack, outermost first (the order layer.h recommends):
 *   fallback            answers "503 fallback" if everything below failed
 *   timeout 5 s         bounds the whole call, retries included
 *   retry 3 attempts    exponential backoff 100 ms, honours Retry-After
 *   circuit breaker     opens after 5 consecutive failures
 *   timeout 2 s         bounds one attempt
 *   HTTP client         libcurl multi on the runtime's reactor
 *
 * Prints the status, the headers and the first 1 KiB of the body, or the
 * error chain, and whether the fallback answered. Exit status 0 when the
 * call completed (also through the fallback), 1 otherwise. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "bulwark/circuit_breaker.h"
#include "bulwark/error.h"
#include "bulwark/fallback.h"
#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/timeout.h"

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

/* The fallback's answer: a canned 503 response naming the original error. */
static bw_error_t *fallback_fn(void *arg, bw_call_t *call, const bw_error_t *original,
                               void **resp, bw_destroy_fn *resp_free) {
  (void)arg;
  (void)call;
  char text[512];
  int n = snprintf(text, sizeof text, "fallback: %s\n", bw_error_kind_name(bw_error_kind(original)));
  bw_http_response_t *r;
  bw_error_t *err = bw_http_response_new(&r, 503, text, (size_t)n);
  if (err) return err;
  bw_error_unref(bw_http_response_add_header(r, "X-Fallback", "1"));
  *resp = r;
  *resp_free = bw_http_response_destroy;
  return NULL;
}

static int report(bw_error_t *err, const char *what) {
  char buf[1024];
  bw_error_format(err, buf, sizeof buf, BW_ERROR_FMT_KIND);
  fprintf(stderr, "http_get: %s: %s\n", what, buf);
  bw_error_unref(err);
  return 1;
}

int main(int argc, char **argv) {
  const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:1/";
  bw_runtime_t *rt = NULL;
  bw_http_client_t *cli = NULL;
  bw_layer_t *layers[5] = {0};
  bw_service_t *stack = NULL;
  bw_error_t *err;
  int status = 1;

  if ((err = bw_runtime_new(&rt, NULL))) return report(err, "runtime");
  if ((err = bw_http_client_new(&cli, rt, NULL))) {
    status = report(err, "client");
    goto out;
  }

  bw_fallback_opts_t fo;
  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_FUNCTION;
  fo.fn = fallback_fn;
  bw_timeout_opts_t total;
  bw_timeout_opts_init(&total);
  total.timeout_ms = 5000;
  total.scope = BW_TIMEOUT_SCOPE_TOTAL;
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 3;
  ro.backoff.kind = BW_BACKOFF_EXPONENTIAL;
  ro.backoff.base_ns = 100 * 1000000ull;
  ro.backoff.multiplier = 2;
  ro.backoff.cap_ns = 1000 * 1000000ull;
  ro.backoff.jitter = BW_JITTER_FULL;
  bw_circuit_breaker_opts_t bo;
  bw_circuit_breaker_opts_init(&bo);
  bo.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  bo.consecutive_failures = 5;
  bw_timeout_opts_t attempt;
  bw_timeout_opts_init(&attempt);
  attempt.timeout_ms = 2000;
  attempt.scope = BW_TIMEOUT_SCOPE_PER_ATTEMPT;
  if ((err = bw_fallback_new(&layers[0], &fo)) || (err = bw_timeout_new(&layers[1], &total)) ||
      (err = bw_retry_new(&layers[2], &ro)) ||
      (err = bw_circuit_breaker_new(&layers[3], &bo)) ||
      (err = bw_timeout_new(&layers[4], &attempt))) {
    status = report(err, "layers");
    goto out;
  }
  bw_stack_warnings_t warnings;
  if ((err = bw_stack_build(&stack, "http_get", layers, 5, bw_http_client_service(cli),
                            &warnings))) {
    status = report(err, "stack");
    goto out;
  }
  for (size_t i = 0; i < warnings.count && i < BW_STACK_MAX_WARNINGS; i++)
    fprintf(stderr, "http_get: stack warning: %s\n", warnings.items[i].message);

  bw_http_request_t *req;
  if ((err = bw_http_request_new(&req, "GET", url))) {
    status = report(err, "request");
    goto out;
  }
  bw_call_t *call;
  if ((err = bw_call_new(&call, stack, rt))) {
    bw_http_request_free(req);
    status = report(err, "call");
    goto out;
  }
  bw_call_set_request(call, req, bw_http_request_destroy); /* the call owns req */
  done_t d = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  if ((err = bw_service_call(stack, call, on_done, &d))) {
    bw_call_free(call);
    status = report(err, "call");
    goto out;
  }
  pthread_mutex_lock(&d.mu);
  while (!d.finished) pthread_cond_wait(&d.cv, &d.mu);
  pthread_mutex_unlock(&d.mu);

  printf("GET %s\n", bw_http_request_url_redacted(req));
  const bw_error_t *cerr = bw_call_error(call);
  if (cerr) {
    char buf[2048];
    bw_error_format(cerr, buf, sizeof buf, BW_ERROR_FMT_KIND | BW_ERROR_FMT_RELATED);
    printf("error: %s\n", buf);
  } else {
    const bw_http_response_t *resp = bw_call_response(call);
    const bw_error_t *orig = bw_call_fallback_error(call);
    if (orig) {
      char buf[2048];
      bw_error_format(orig, buf, sizeof buf, BW_ERROR_FMT_KIND);
      printf("fallback used; original error: %s\n", buf);
    }
    printf("status %d\n", bw_http_response_status(resp));
    for (size_t i = 0; i < bw_http_response_header_count(resp); i++) {
      const char *n, *v;
      bw_http_response_header_at(resp, i, &n, &v);
      printf("%s: %s\n", n, v);
    }
    size_t len;
    const char *body = bw_http_response_body(resp, &len);
    printf("\n%.*s%s\n", (int)(len > 1024 ? 1024 : len), body, len > 1024 ? "..." : "");
    status = 0;
  }
  bw_call_free(call);

out:
  bw_service_release(stack);
  for (size_t i = 0; i < 5; i++) bw_layer_release(layers[i]);
  bw_http_client_free(cli);
  bw_runtime_free(rt);
  return status;
}
