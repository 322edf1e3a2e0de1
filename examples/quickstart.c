/* quickstart: the README's example. A user function that fails twice with
 * a retryable error, wrapped in timeout + retry + circuit breaker; one call
 * from main, which waits for the completion. */
#include <bulwark.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

static atomic_int attempts;

/* The "backend": fails with a retryable 503 twice, then answers. */
static bw_error_t *backend(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *resp_free) {
  if (atomic_fetch_add(&attempts, 1) < 2)
    return bw_error_new(BW_ERR_HTTP_STATUS, 503, "backend: 503 Service Unavailable");
  *resp = "hello from the backend"; /* static: no destroy function */
  *resp_free = NULL;
  return NULL;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done;

/* Runs once, on a runtime worker. */
static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  char text[512];
  if (err) {
    bw_error_format(err, text, sizeof text, 0);
    printf("failed: %s\n", text);
  } else {
    printf("ok after %d attempts: %s\n", atomic_load(&attempts), (char *)bw_call_response(call));
  }
  bw_call_free(call);
  pthread_mutex_lock(&mu);
  done = 1;
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
}

int main(void) {
  bw_runtime_t *rt;
  bw_error_t *err = bw_runtime_new(&rt, NULL); /* one worker per CPU */
  if (err) return 1;

  bw_fn_service_opts_t fn;
  bw_fn_service_opts_init(&fn);
  fn.sync = backend;
  bw_service_t *inner, *stack;
  bw_service_from_fn(&inner, &fn);

  bw_timeout_opts_t total;
  bw_timeout_opts_init(&total);
  total.timeout_ms = 2000;
  total.scope = BW_TIMEOUT_SCOPE_TOTAL;
  bw_retry_opts_t retry;
  bw_retry_opts_init(&retry);
  retry.backoff.base_ns = 10 * 1000 * 1000; /* 10 ms, then 20 ms, ... (full jitter) */
  bw_layer_t *layers[3];
  bw_timeout_new(&layers[0], &total);
  bw_retry_new(&layers[1], &retry);
  bw_circuit_breaker_new(&layers[2], NULL); /* defaults */

  bw_stack_warnings_t warnings;
  err = bw_stack_build(&stack, "quickstart", layers, 3, inner, &warnings);
  for (int i = 0; i < 3; i++) bw_layer_release(layers[i]); /* the stack holds them */
  bw_service_release(inner);
  if (err) return 1;

  bw_call_t *call;
  bw_call_new(&call, stack, rt);
  err = bw_service_call(stack, call, on_done, NULL); /* on error, on_done never runs */
  if (err) {
    bw_error_unref(err);
    return 1;
  }

  pthread_mutex_lock(&mu);
  while (!done) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);

  bw_service_release(stack);
  bw_runtime_free(rt);
  return 0;
}
