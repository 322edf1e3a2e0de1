/* Fallback layer: value, function, service; predicate; original error. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bulwark/fallback.h"
#include "h4_util.h"

static bw_error_t *fail_sync(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  bw_error_kind_t k = (bw_error_kind_t)(intptr_t)arg;
  if (k == BW_ERR_NONE) {
    int *v = calloc(1, 32); /* 32 bytes: on_done copies that much */
    *v = 5;
    *resp = v;
    *rf = free;
    return NULL;
  }
  return bw_error_new(k, 0, "primary failed");
}

static bw_service_t *leaf(bw_error_kind_t k) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.sync = fail_sync;
  o.arg = (void *)(intptr_t)k;
  bw_service_t *s;
  assert_null(bw_service_from_fn(&s, &o));
  return s;
}

typedef struct out {
  h4_result_t r;
  char value[32];
  bw_error_kind_t fb_kind;
} out_t;

static void on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  out_t *o = arg;
  const bw_error_t *fe = bw_call_fallback_error(call);
  o->fb_kind = bw_error_kind(fe);
  if (!err) memcpy(o->value, bw_call_response(call), sizeof o->value);
  o->r.free_in_cb = true;
  h4_on_done(call, err, &o->r);
}

static void run(bw_runtime_t *rt, bw_service_t *svc, out_t *o, h4_wait_t *w, int n) {
  memset(o, 0, sizeof *o);
  o->r.wait = w;
  o->r.rt = rt;
  bw_call_t *c;
  assert_null(bw_call_new(&c, svc, rt));
  assert_null(h4_submit(svc, c, on_done, o));
  assert_int_equal(h4_wait_for(w, n), n);
}

static bw_service_t *fb_stack(bw_fallback_opts_t *fo, bw_service_t *inner, bw_layer_t **l) {
  assert_null(bw_fallback_new(l, fo));
  bw_service_t *s;
  assert_null(bw_stack_build(&s, NULL, l, 1, inner, NULL));
  return s;
}

static void test_value(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  h4_wait_t w;
  h4_wait_init(&w);
  char v[32] = "cached";
  bw_fallback_opts_t fo;
  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_VALUE;
  fo.value = v;
  fo.value_len = sizeof v;
  bw_service_t *bad = leaf(BW_ERR_TRANSPORT);
  bw_layer_t *l;
  bw_service_t *svc = fb_stack(&fo, bad, &l);
  strcpy(v, "changed"); /* copied at creation */
  h4_events_t evs = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook;
  assert_null(bw_event_hook_add(&hook, svc, NULL, h4_record_event, &evs));
  out_t o;
  run(rt, svc, &o, &w, 1);
  assert_int_equal(o.r.kind, BW_ERR_NONE);
  assert_string_equal(o.value, "cached");
  assert_int_equal(o.fb_kind, BW_ERR_TRANSPORT); /* original reachable */
  assert_int_equal(h4_count_events(&evs, BW_EVENT_FALLBACK_USED), 1);
  assert_int_equal(evs.err_kind[0], BW_ERR_TRANSPORT);

  /* success passes through untouched */
  bw_service_t *good = leaf(BW_ERR_NONE);
  bw_service_t *svc2;
  assert_null(bw_stack_build(&svc2, NULL, &l, 1, good, NULL));
  run(rt, svc2, &o, &w, 2);
  assert_int_equal(o.r.kind, BW_ERR_NONE);
  assert_int_equal(*(int *)o.value, 5);
  assert_int_equal(o.fb_kind, BW_ERR_NONE);

  /* default predicate: cancelled is not answered */
  bw_service_t *canc = leaf(BW_ERR_CANCELLED);
  bw_service_t *svc3;
  assert_null(bw_stack_build(&svc3, NULL, &l, 1, canc, NULL));
  run(rt, svc3, &o, &w, 3);
  assert_int_equal(o.r.kind, BW_ERR_CANCELLED);
  bw_error_unref(o.r.err);

  bw_event_hook_remove(hook);
  bw_service_release(svc);
  bw_service_release(svc2);
  bw_service_release(svc3);
  bw_service_release(bad);
  bw_service_release(good);
  bw_service_release(canc);
  bw_layer_release(l);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
  pthread_mutex_destroy(&evs.mu);
}

static bw_error_t *fb_fn(void *arg, bw_call_t *call, const bw_error_t *orig, void **resp,
                         bw_destroy_fn *rf) {
  int *calls = arg;
  (*calls)++;
  assert_int_equal(bw_error_kind(orig), BW_ERR_TIMEOUT);
  if (*calls > 1) return bw_error_new(BW_ERR_UNAVAILABLE, 0, "no cache either");
  char *s = calloc(1, 32);
  strcpy(s, "from fn");
  *resp = s;
  *rf = free;
  return NULL;
}

static bool only_timeouts(const bw_error_t *e, void *arg) { return bw_error_is(e, BW_ERR_TIMEOUT); }

static void test_function_and_predicate(void **state) {
  bw_runtime_t *rt = h4_rt(false, 1);
  h4_wait_t w;
  h4_wait_init(&w);
  int calls = 0;
  bw_fallback_opts_t fo;
  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_FUNCTION;
  fo.fn = fb_fn;
  fo.fn_arg = &calls;
  fo.predicate = only_timeouts;
  bw_service_t *to = leaf(BW_ERR_TIMEOUT);
  bw_layer_t *l;
  bw_service_t *svc = fb_stack(&fo, to, &l);
  out_t o;
  run(rt, svc, &o, &w, 1);
  assert_int_equal(o.r.kind, BW_ERR_NONE);
  assert_string_equal(o.value, "from fn");
  /* the fallback fails: FALLBACK_FAILED, cause = its error, related[0] = original */
  run(rt, svc, &o, &w, 2);
  assert_int_equal(o.r.kind, BW_ERR_FALLBACK_FAILED);
  assert_int_equal(bw_error_kind(bw_error_cause(o.r.err)), BW_ERR_UNAVAILABLE);
  assert_int_equal(bw_error_related_count(o.r.err), 1);
  assert_int_equal(bw_error_kind(bw_error_related(o.r.err, 0)), BW_ERR_TIMEOUT);
  bw_error_unref(o.r.err);
  /* predicate says no: the error passes */
  bw_service_t *other = leaf(BW_ERR_CONNECT);
  bw_service_t *svc2;
  assert_null(bw_stack_build(&svc2, NULL, &l, 1, other, NULL));
  run(rt, svc2, &o, &w, 3);
  assert_int_equal(o.r.kind, BW_ERR_CONNECT);
  assert_int_equal(calls, 2);
  bw_error_unref(o.r.err);
  bw_service_release(svc);
  bw_service_release(svc2);
  bw_service_release(to);
  bw_service_release(other);
  bw_layer_release(l);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

static void test_service_kind(void **state) {
  bw_runtime_t *rt = h4_rt(false, 2);
  h4_wait_t w;
  h4_wait_init(&w);
  bw_service_t *backup = leaf(BW_ERR_NONE);
  bw_fallback_opts_t fo;
  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_SERVICE;
  fo.service = backup;
  bw_service_t *bad = leaf(BW_ERR_CONNECT);
  bw_layer_t *l;
  bw_service_t *svc = fb_stack(&fo, bad, &l);
  bw_service_release(backup); /* the layer holds it */
  out_t o;
  run(rt, svc, &o, &w, 1);
  assert_int_equal(o.r.kind, BW_ERR_NONE);
  assert_int_equal(*(int *)o.value, 5);
  assert_int_equal(o.fb_kind, BW_ERR_CONNECT);
  bw_service_release(svc);
  bw_service_release(bad);
  bw_layer_release(l);

  /* a failing fallback service */
  bw_service_t *backup2 = leaf(BW_ERR_DNS);
  fo.service = backup2;
  bw_service_t *bad2 = leaf(BW_ERR_CONNECT);
  svc = fb_stack(&fo, bad2, &l);
  run(rt, svc, &o, &w, 2);
  assert_int_equal(o.r.kind, BW_ERR_FALLBACK_FAILED);
  assert_true(bw_error_is(o.r.err, BW_ERR_DNS));
  assert_int_equal(bw_error_kind(bw_error_related(o.r.err, 0)), BW_ERR_CONNECT);
  bw_error_unref(o.r.err);
  bw_service_release(svc);
  bw_service_release(bad2);
  bw_service_release(backup2);
  bw_layer_release(l);

  bw_fallback_opts_init(&fo);
  fo.kind = BW_FALLBACK_SERVICE;
  bw_error_t *e = bw_fallback_new(&l, &fo);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_runtime_free(rt);
  h4_wait_fini(&w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_value),
      cmocka_unit_test(test_function_and_predicate),
      cmocka_unit_test(test_service_kind),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
