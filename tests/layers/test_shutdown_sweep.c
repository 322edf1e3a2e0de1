/* At shutdown every running call is cancelled by one sweep (service.c's
 * tracker); a call that starts running after it (a retry resuming after a
 * failed attempt, a new start) must end itself with runtime_shutdown, or
 * it would wait on a timer that shutdown then discards and never complete.
 * bw__runtime_close_calls is what the sweep does first; calling it here
 * puts each call deterministically on the far side of the sweep. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "bulwark/retry.h"
#include "runtime/internal.h"
#include "support/layer_harness.h"

typedef struct fx {
  bw_runtime_t *rt;
  lh_backend_t *be;
  bw_service_t *backend, *svc;
} fx_t;

/* retry (3 attempts, 1 h constant backoff) around a backend that holds
 * its calls; real clock, so the backoff never ends during the test. */
static fx_t *fx_new(void) {
  fx_t *f = calloc(1, sizeof *f);
  f->rt = lh_rt(false, 2);
  f->be = calloc(1, sizeof *f->be);
  f->be->hold = true;
  f->backend = lh_backend_svc(f->be);
  bw_retry_opts_t o;
  bw_retry_opts_init(&o);
  o.max_attempts = 3;
  o.backoff.kind = BW_BACKOFF_CONSTANT;
  o.backoff.base_ns = 3600ull * 1000000000ull;
  o.backoff.jitter = BW_JITTER_NONE;
  bw_layer_t *retry;
  assert_null(bw_retry_new(&retry, &o));
  assert_null(bw_stack_build(&f->svc, NULL, &retry, 1, f->backend, NULL));
  bw_layer_release(retry);
  return f;
}

static void fx_free(fx_t *f) {
  bw_runtime_free(f->rt);
  bw_service_release(f->svc);
  bw_service_release(f->backend);
  free(f->be);
  free(f);
}

static void test_retry_resuming_after_the_sweep_ends_the_call(void **state) {
  (void)state;
  fx_t *f = fx_new();
  lh_res_t r;
  lh_start(&r, f->svc, f->rt, 0);
  assert_int_equal(lh_wait_pending(f->be, 1), 1);
  bw__runtime_close_calls(f->rt);
  lh_finish_one(f->be, BW_ERR_CONNECT); /* retryable: retry would wait 1 h */
  lh_wait(&r);
  assert_int_equal(r.kind, BW_ERR_RUNTIME_SHUTDOWN);
  assert_int_equal(atomic_load(&f->be->calls), 1);
  lh_free(&r);
  fx_free(f);
}

static void test_start_after_the_sweep_ends_the_call(void **state) {
  (void)state;
  fx_t *f = fx_new();
  bw__runtime_close_calls(f->rt);
  lh_res_t r;
  assert_int_equal(lh_call(f->svc, f->rt, &r), BW_ERR_RUNTIME_SHUTDOWN);
  assert_int_equal(atomic_load(&f->be->calls), 0); /* never reached the backend */
  fx_free(f);
}

/* Starts racing the shutdown: a thread keeps submitting calls that the
 * backend holds (only the sweep can end them) from outside the runtime,
 * so each start runs on a worker, while the main thread shuts the runtime
 * down. Every call that was accepted must end exactly once with
 * runtime_shutdown: a start the sweep did not see RUNNING must see the
 * closing flag (set_running's ordering against the sweep), or it would
 * wait in the backend forever. */
typedef struct racer {
  fx_t *f;
  int n;
  bw_call_t **calls; /* NULL: refused (the runtime was shut down) */
  atomic_int *done;
  bw_error_kind_t *kind;
} racer_t;

static racer_t *g_racer;

static void on_racer_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  (void)call;
  int i = (int)(intptr_t)arg;
  g_racer->kind[i] = bw_error_kind(err);
  atomic_fetch_add(&g_racer->done[i], 1);
}

static void *racer_submit(void *arg) {
  racer_t *r = arg;
  for (int i = 0; i < r->n; i++) {
    bw_call_t *c = NULL;
    bw_error_t *e = bw_call_new(&c, r->f->svc, r->f->rt);
    if (!e) e = bw_service_call(r->f->svc, c, on_racer_done, (void *)(intptr_t)i);
    if (e) {
      bw_error_unref(e);
      bw_call_free(c);
      c = NULL;
    }
    r->calls[i] = c;
  }
  return NULL;
}

static void test_starts_racing_the_shutdown_end_once(void **state) {
  (void)state;
  fx_t *f = fx_new();
  racer_t r = {f, 2000, NULL, NULL, NULL};
  r.calls = calloc((size_t)r.n, sizeof *r.calls);
  r.done = calloc((size_t)r.n, sizeof *r.done);
  r.kind = calloc((size_t)r.n, sizeof *r.kind);
  g_racer = &r;
  pthread_t th;
  pthread_create(&th, NULL, racer_submit, &r);
  assert_true(lh_wait_pending(f->be, 50) >= 50);
  bw_error_t *e = bw_runtime_shutdown(f->rt, BW_SHUTDOWN_CANCEL, 0);
  assert_null(e);
  pthread_join(th, NULL);
  int accepted = 0;
  for (int i = 0; i < r.n; i++) {
    if (!r.calls[i]) continue;
    accepted++;
    LH_UNTIL(atomic_load(&r.done[i]) > 0);
    assert_int_equal(atomic_load(&r.done[i]), 1);
    assert_int_equal(r.kind[i], BW_ERR_RUNTIME_SHUTDOWN);
    bw_call_free(r.calls[i]);
  }
  assert_true(accepted >= 50);
  print_message("%d of %d calls accepted before the shutdown\n", accepted, r.n);
  free(r.calls);
  free(r.done);
  free(r.kind);
  fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_retry_resuming_after_the_sweep_ends_the_call),
      cmocka_unit_test(test_start_after_the_sweep_ends_the_call),
      cmocka_unit_test(test_starts_racing_the_shutdown_end_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
