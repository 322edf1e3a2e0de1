/* Stack builder, order check, per-stack metrics and events. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "bulwark/retry.h"
#include "bulwark/timeout.h"
#include "bulwark/fallback.h"
#include "h4_util.h"

/* Fake layers of any kind (pass-through) so the order check can be tested
 * without the other layers' options. */
static void pass_done(bw_call_t *child, const bw_error_t *err, void *arg) {
  bw_call_complete_from_child(arg, child);
  bw_call_free(child);
}
static void pass_call(bw_service_t *svc, bw_call_t *call) {
  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, NULL);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  bw_call_child_start(child, pass_done, call);
}
#define FAKE(name, k) static const bw_service_ops_t name = {.kind = k, .call = pass_call}
FAKE(ops_breaker, "circuit_breaker");
FAKE(ops_bulkhead, "bulkhead");
FAKE(ops_rate, "rate_limit");
FAKE(ops_chaos, "chaos");
FAKE(ops_retry, "retry");
FAKE(ops_fallback, "fallback");
FAKE(ops_timeout, "timeout");

static bw_layer_t *fake(const bw_service_ops_t *ops, unsigned flags) {
  bw_layer_t *l;
  assert_null(bw_layer_new(&l, ops, NULL));
  bw_layer_set_flags(l, flags);
  return l;
}

static bool has(const bw_stack_warnings_t *w, bw_stack_warning_code_t c) {
  for (size_t i = 0; i < w->count && i < BW_STACK_MAX_WARNINGS; i++)
    if (w->items[i].code == c) return true;
  return false;
}

static void test_order_check(void **state) {
  bw_layer_t *fb = fake(&ops_fallback, 0), *tt = fake(&ops_timeout, BW_LAYER_TIMEOUT_TOTAL),
             *ta = fake(&ops_timeout, BW_LAYER_TIMEOUT_PER_ATTEMPT), *tu = fake(&ops_timeout, 0),
             *re = fake(&ops_retry, 0), *re2 = fake(&ops_retry, 0), *br = fake(&ops_breaker, 0),
             *rl = fake(&ops_rate, 0), *bh = fake(&ops_bulkhead, 0), *ch = fake(&ops_chaos, 0);
  bw_stack_warnings_t w;
  /* the recommended order: no warning */
  bw_layer_t *good[] = {fb, tt, re, br, rl, bh, ta, ch};
  assert_int_equal(bw_stack_check_order(good, 8, &w), 0);
  assert_int_equal(w.count, 0);

  bw_layer_t *a[] = {re, fb};
  assert_true(bw_stack_check_order(a, 2, &w) >= 1);
  assert_true(has(&w, BW_STACK_WARN_FALLBACK_NOT_OUTERMOST));
  assert_non_null(strstr(w.items[0].message, "fallback"));

  bw_layer_t *b[] = {br, re};
  bw_stack_check_order(b, 2, &w);
  assert_true(has(&w, BW_STACK_WARN_BREAKER_OUTSIDE_RETRY));
  assert_int_equal(w.items[0].outer, 0);
  assert_int_equal(w.items[0].inner, 1);

  bw_layer_t *c[] = {re, tt};
  bw_stack_check_order(c, 2, &w);
  assert_true(has(&w, BW_STACK_WARN_TOTAL_TIMEOUT_INSIDE_RETRY));

  bw_layer_t *d[] = {ta, re};
  bw_stack_check_order(d, 2, &w);
  assert_true(has(&w, BW_STACK_WARN_ATTEMPT_TIMEOUT_OUTSIDE_RETRY));

  bw_layer_t *e[] = {tu, re};
  bw_stack_check_order(e, 2, &w);
  assert_true(has(&w, BW_STACK_WARN_RETRY_NO_ATTEMPT_TIMEOUT));
  bw_layer_t *e2[] = {tu, re, ta};
  bw_stack_check_order(e2, 3, &w);
  assert_false(has(&w, BW_STACK_WARN_RETRY_NO_ATTEMPT_TIMEOUT));

  bw_layer_t *f[] = {bh, rl, re};
  bw_stack_check_order(f, 3, &w);
  assert_true(has(&w, BW_STACK_WARN_BULKHEAD_OUTSIDE_RETRY));
  assert_true(has(&w, BW_STACK_WARN_RATE_LIMIT_OUTSIDE_RETRY));

  bw_layer_t *g[] = {re, re2, ch, br};
  bw_stack_check_order(g, 4, &w);
  assert_true(has(&w, BW_STACK_WARN_NESTED_RETRY));
  assert_true(has(&w, BW_STACK_WARN_CHAOS_NOT_INNERMOST));

  bw_layer_t *h[] = {br, br};
  bw_stack_check_order(h, 2, &w);
  assert_true(has(&w, BW_STACK_WARN_DUPLICATE));
  assert_int_equal(bw_stack_check_order(NULL, 0, NULL), 0);

  bw_layer_t *all[] = {fb, tt, ta, tu, re, re2, br, rl, bh, ch};
  for (int i = 0; i < 10; i++) bw_layer_release(all[i]);
}

static bw_error_t *sometimes(void *arg, bw_call_t *call, void **resp, bw_destroy_fn *rf) {
  atomic_int *n = arg;
  int k = atomic_fetch_add(n, 1);
  if (k % 4 == 3) return bw_error_new(BW_ERR_CONNECT, 0, "refused");
  *resp = h4_int(k);
  *rf = h4_resp_free;
  return NULL;
}

static int sb_write(void *arg, const char *d, size_t n) {
  (void)arg;
  (void)d;
  (void)n;
  return 0;
}

static void test_named_stack_metrics(void **state) {
  bw_runtime_t *rt = h4_rt(true, 2);
  atomic_int n = 0;
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = sometimes;
  fo.arg = &n;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &fo));

  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 1; /* no retries: attempts fail visibly */
  bw_layer_t *layers[2];
  bw_timeout_opts_t to;
  bw_timeout_opts_init(&to);
  to.timeout_ms = 1000;
  assert_null(bw_retry_new(&layers[0], &ro));
  assert_null(bw_timeout_new(&layers[1], &to));
  assert_null(bw_layer_set_name(layers[0], "r1"));
  bw_stack_warnings_t w;
  bw_service_t *stack, *stack2;
  assert_null(bw_stack_build(&stack, "payments", layers, 2, leaf, &w));
  assert_int_equal(w.count, 0);
  /* the same layers shared by a second stack */
  assert_null(bw_stack_build(&stack2, "orders", layers, 2, leaf, NULL));
  assert_string_equal(bw_service_name(stack), "payments");
  size_t nl;
  bw_layer_t *const *ls = bw_stack_layers(stack, &nl);
  assert_int_equal(nl, 2);
  assert_ptr_equal(ls[0], layers[0]);

  h4_events_t evs = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook;
  assert_null(bw_event_hook_add(&hook, stack, NULL, h4_record_event, &evs));

  h4_wait_t wt;
  h4_wait_init(&wt);
  enum { N = 40 };
  h4_result_t res[N];
  for (int i = 0; i < N; i++) {
    res[i] = (h4_result_t){.wait = &wt, .rt = rt, .free_in_cb = true};
    bw_call_t *c;
    assert_null(bw_call_new(&c, stack, rt));
    assert_null(h4_submit(stack, c, h4_on_done, &res[i]));
  }
  assert_int_equal(h4_wait_for(&wt, N), N);
  for (int i = 0; i < N; i++) bw_error_unref(res[i].err);
  assert_int_equal(bw_stack_call_count(stack), N);
  assert_int_equal(bw_stack_outcome_count(stack, BW_ERR_NONE), N - N / 4);
  assert_int_equal(bw_stack_outcome_count(stack, BW_ERR_RETRIES_EXHAUSTED), N / 4);
  assert_int_equal(bw_stack_event_count(stack, 0, BW_EVENT_ATTEMPT_FAILED), N / 4);
  assert_int_equal(bw_stack_event_count(stack, 0, BW_EVENT_GIVE_UP), N / 4);
  assert_int_equal(bw_stack_call_count(stack2), 0);
  assert_int_equal(bw_histogram_count(bw_stack_latency(stack)), N);
  assert_int_equal(h4_count_events(&evs, BW_EVENT_GIVE_UP), N / 4);
  assert_string_equal(evs.ev[0].stack, "payments");
  assert_string_equal(evs.ev[0].layer_kind, "retry");
  assert_string_equal(evs.ev[0].layer_name, "r1");
  assert_int_equal(evs.ev[0].layer_index, 0);

  char *text;
  size_t len;
  assert_null(bw_metrics_prometheus_text(&text, &len));
  assert_int_equal(strlen(text), len);
  assert_non_null(strstr(text, "# TYPE bulwark_calls_total counter\n"));
  char want[128];
  snprintf(want, sizeof want, "bulwark_calls_total{stack=\"payments\",outcome=\"success\"} %d\n", N - N / 4);
  assert_non_null(strstr(text, want));
  assert_non_null(strstr(text, "bulwark_calls_total{stack=\"payments\",outcome=\"retries_exhausted\"} 10\n"));
  assert_non_null(strstr(text, "bulwark_calls_total{stack=\"orders\",outcome=\"success\"} 0\n"));
  assert_non_null(strstr(text, "# TYPE bulwark_call_duration_seconds histogram\n"));
  assert_non_null(strstr(text, "bulwark_call_duration_seconds_count{stack=\"payments\"} 40\n"));
  assert_non_null(strstr(text, "bulwark_call_duration_seconds_bucket{stack=\"payments\",le=\"+Inf\"} 40\n"));
  assert_non_null(strstr(text, "bulwark_layer_events_total{stack=\"payments\",layer=\"0:retry\",name=\"r1\",event=\"give_up\"} 10\n"));
  /* one # TYPE per family even with two stacks */
  const char *p = strstr(text, "# TYPE bulwark_calls_total");
  assert_null(strstr(p + 1, "# TYPE bulwark_calls_total"));
  bw_metrics_text_free(text);
  assert_null(bw_metrics_write_prometheus(sb_write, NULL));

  bw_event_hook_remove(hook);
  bw_service_release(stack);
  bw_service_release(stack2);
  /* after release (and the last call's memory went: right after its
   * callback returned, on a worker) the stack's metrics are gone */
  bool gone = false;
  for (int i = 0; i < 20000 && !gone; i++) {
    assert_null(bw_metrics_prometheus_text(&text, &len));
    gone = strstr(text, "payments") == NULL;
    bw_metrics_text_free(text);
    if (!gone) {
      struct timespec ts = {0, 100000};
      nanosleep(&ts, NULL);
    }
  }
  assert_true(gone);
  bw_layer_release(layers[0]);
  bw_layer_release(layers[1]);
  bw_service_release(leaf);
  bw_runtime_free(rt);
  h4_wait_fini(&wt);
  pthread_mutex_destroy(&evs.mu);
}

static void test_empty_stack(void **state) {
  bw_runtime_t *rt = h4_rt(false, 1);
  atomic_int n = 0;
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = sometimes;
  fo.arg = &n;
  bw_service_t *leaf, *stack;
  assert_null(bw_service_from_fn(&leaf, &fo));
  assert_null(bw_stack_build(&stack, "bare", NULL, 0, leaf, NULL));
  bw_service_release(leaf); /* the stack holds it */
  h4_wait_t wt;
  h4_wait_init(&wt);
  h4_result_t r = {.wait = &wt, .rt = rt, .free_in_cb = true};
  bw_call_t *c;
  assert_null(bw_call_new(&c, stack, rt));
  assert_null(h4_submit(stack, c, h4_on_done, &r));
  assert_int_equal(h4_wait_for(&wt, 1), 1);
  assert_int_equal(r.kind, BW_ERR_NONE);
  assert_int_equal(bw_stack_outcome_count(stack, BW_ERR_NONE), 1);
  bw_error_t *e = bw_stack_build(&stack, NULL, NULL, 0, NULL, NULL);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  bw_service_release(stack);
  bw_runtime_free(rt);
  h4_wait_fini(&wt);
}

/* A stack wrapped by something else (a registry service forwarding to it
 * as a child call; an outer stack) still records its own metrics and
 * events. */
static bw_service_t *g_wrapped;
static void fwd_stack_async(void *arg, bw_call_t *call) {
  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, g_wrapped);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  bw_call_child_start(child, pass_done, call);
}

static void test_wrapped_stack_metrics(void **state) {
  bw_runtime_t *rt = h4_rt(true, 2);
  atomic_int n = 0;
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = sometimes;
  fo.arg = &n;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &fo));
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 1;
  bw_layer_t *retry, *pass = fake(&ops_chaos, 0);
  assert_null(bw_retry_new(&retry, &ro));
  bw_service_t *inner, *outer, *fwd;
  assert_null(bw_stack_build(&inner, "inner", &retry, 1, leaf, NULL));
  assert_null(bw_stack_build(&outer, "outer", &pass, 1, inner, NULL));
  g_wrapped = inner;
  bw_fn_service_opts_init(&fo);
  fo.async = fwd_stack_async;
  assert_null(bw_service_from_fn(&fwd, &fo));

  h4_events_t evs = {.mu = PTHREAD_MUTEX_INITIALIZER};
  bw_event_hook_t *hook;
  assert_null(bw_event_hook_add(&hook, inner, NULL, h4_record_event, &evs));
  h4_wait_t wt;
  h4_wait_init(&wt);
  enum { N = 16 };
  h4_result_t res[2 * N];
  for (int i = 0; i < 2 * N; i++) {
    bw_service_t *via = i < N ? fwd : outer;
    res[i] = (h4_result_t){.wait = &wt, .rt = rt, .free_in_cb = true};
    bw_call_t *c;
    assert_null(bw_call_new(&c, via, rt));
    assert_null(h4_submit(via, c, h4_on_done, &res[i]));
    assert_int_equal(h4_wait_for(&wt, i + 1), i + 1);
  }
  for (int i = 0; i < 2 * N; i++) bw_error_unref(res[i].err);
  assert_int_equal(bw_stack_call_count(inner), 2 * N);
  assert_int_equal(bw_stack_outcome_count(inner, BW_ERR_NONE), 2 * N - 2 * N / 4);
  assert_int_equal(bw_stack_outcome_count(inner, BW_ERR_RETRIES_EXHAUSTED), 2 * N / 4);
  assert_int_equal(bw_histogram_count(bw_stack_latency(inner)), 2 * N);
  assert_int_equal(bw_stack_event_count(inner, 0, BW_EVENT_GIVE_UP), 2 * N / 4);
  assert_int_equal(bw_stack_call_count(outer), N);
  assert_int_equal(h4_count_events(&evs, BW_EVENT_GIVE_UP), 2 * N / 4);
  assert_true(evs.n > 0);
  for (int i = 0; i < evs.n; i++) {
    assert_non_null(evs.ev[i].stack);
    assert_string_equal(evs.ev[i].stack, "inner");
    assert_int_equal(evs.ev[i].layer_index, 0);
  }
  bw_event_hook_remove(hook);
  bw_service_release(fwd);
  bw_service_release(outer);
  bw_service_release(inner);
  bw_layer_release(retry);
  bw_layer_release(pass);
  bw_service_release(leaf);
  bw_runtime_free(rt);
  h4_wait_fini(&wt);
  pthread_mutex_destroy(&evs.mu);
}

/* Every line of Prometheus text ends with a line feed; each sample is
 * name{key="value",...} value with only \\, \" and \n escaped in values. */
static bool prom_text_ok(const char *t) {
  while (*t) {
    const char *eol = strchr(t, '\n');
    if (!eol) return false;
    const char *p = t;
    if (*p != '#') {
      while (p < eol && *p != '{' && *p != ' ') p++;
      if (p < eol && *p == '{') {
        p++;
        while (p < eol && *p != '}') {
          while (p < eol && *p != '=') {
            if (*p == '"' || *p == '}' || *p == ' ') return false;
            p++;
          }
          if (p + 1 >= eol || p[1] != '"') return false;
          for (p += 2; p < eol && *p != '"'; p++) {
            if (*p != '\\') continue;
            if (p[1] != '\\' && p[1] != '"' && p[1] != 'n') return false;
            p++;
          }
          if (p >= eol) return false;
          p++;
          if (*p == ',') p++;
          else if (*p != '}') return false;
        }
        if (p >= eol) return false;
        p++;
      }
      if (p >= eol || *p != ' ') return false;
    }
    t = eol + 1;
  }
  return true;
}

/* Stack and layer names are label values: a quote, a backslash or a line
 * feed in them is escaped, and a long name is kept whole. Before the fix
 * they were printed as they were (and the duration's labels cut at 256
 * bytes, without the closing quote): the output no longer parsed. */
static void test_metric_names_escaped(void **state) {
  bw_runtime_t *rt = h4_rt(true, 1);
  atomic_int n = 3; /* the first call fails */
  bw_fn_service_opts_t fo;
  bw_fn_service_opts_init(&fo);
  fo.sync = sometimes;
  fo.arg = &n;
  bw_service_t *leaf;
  assert_null(bw_service_from_fn(&leaf, &fo));
  bw_retry_opts_t ro;
  bw_retry_opts_init(&ro);
  ro.max_attempts = 1;
  bw_layer_t *retry;
  assert_null(bw_retry_new(&retry, &ro));
  assert_null(bw_layer_set_name(retry, "r\"1\\"));
  char name[400], esc[420];
  snprintf(name, sizeof name, "we\"ird\\na\nme%0300d", 0);
  snprintf(esc, sizeof esc, "we\\\"ird\\\\na\\nme%0300d", 0);
  bw_service_t *stack;
  assert_null(bw_stack_build(&stack, name, &retry, 1, leaf, NULL));
  h4_wait_t wt;
  h4_wait_init(&wt);
  h4_result_t r = {.wait = &wt, .rt = rt, .free_in_cb = true};
  bw_call_t *c;
  assert_null(bw_call_new(&c, stack, rt));
  assert_null(h4_submit(stack, c, h4_on_done, &r));
  assert_int_equal(h4_wait_for(&wt, 1), 1);
  assert_int_equal(r.kind, BW_ERR_RETRIES_EXHAUSTED);
  bw_error_unref(r.err);

  char *text;
  assert_null(bw_metrics_prometheus_text(&text, NULL));
  assert_true(prom_text_ok(text));
  char want[700];
  snprintf(want, sizeof want,
           "bulwark_calls_total{stack=\"%s\",outcome=\"retries_exhausted\"} 1\n", esc);
  assert_non_null(strstr(text, want));
  snprintf(want, sizeof want, "bulwark_call_duration_seconds_count{stack=\"%s\"} 1\n", esc);
  assert_non_null(strstr(text, want));
  snprintf(want, sizeof want,
           "bulwark_layer_events_total{stack=\"%s\",layer=\"0:retry\",name=\"r\\\"1\\\\\","
           "event=\"give_up\"} 1\n",
           esc);
  assert_non_null(strstr(text, want));
  bw_metrics_text_free(text);

  bw_service_release(stack);
  bw_layer_release(retry);
  bw_service_release(leaf);
  bw_runtime_free(rt);
  h4_wait_fini(&wt);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_order_check),
      cmocka_unit_test(test_named_stack_metrics),
      cmocka_unit_test(test_empty_stack),
      cmocka_unit_test(test_wrapped_stack_metrics),
      cmocka_unit_test(test_metric_names_escaped),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
