/* Config loader: malformed files (exact line, column, key path, problem),
 * good files for every layer (exact effective values and defaults), shared
 * instances, env-var secrets, explain output, order warnings. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/config.h"
#include "config/internal.h"
#include "core/alloc.h"

static char *file_path(const char *rel) {
  static char buf[4][1024];
  static int slot;
  const char *src = getenv("BW_SOURCE_DIR");
  char *b = buf[slot++ & 3];
  snprintf(b, sizeof buf[0], "%s/tests/config/files/%s", src ? src : ".", rel);
  return b;
}

typedef struct bad_case {
  const char *file;
  int line, col;
  const char *path;
  bw_config_problem_t problem;
  const char *needle; /* a piece of the message */
} bad_case_t;

static const bad_case_t kBad[] = {
    {"01_unclosed_flow.yaml", 5, 1, "", BW_CFG_SYNTAX, "flow mapping"},
    {"02_tab_indent.yaml", 3, 1, "", BW_CFG_TAB, "tab"},
    {"03_duplicate_stack.yaml", 4, 3, "stacks.api", BW_CFG_DUPLICATE_KEY, "first at line 2"},
    {"04_duplicate_key.yaml", 5, 9, "stacks.api[0].retry.max_attempts", BW_CFG_DUPLICATE_KEY,
     "first at line 4"},
    {"05_unknown_layer.yaml", 4, 7, "stacks.api[1].retyr", BW_CFG_UNKNOWN_LAYER,
     "did you mean 'retry'?"},
    {"06_unknown_key.yaml", 6, 9, "stacks.payments[2].retry.max_attempt", BW_CFG_UNKNOWN_KEY,
     "did you mean 'max_attempts'?"},
    {"07_int_not_number.yaml", 4, 23, "stacks.api[0].retry.max_attempts", BW_CFG_BAD_VALUE,
     "expected an integer"},
    {"08_int_out_of_range.yaml", 4, 23, "stacks.api[0].retry.max_attempts", BW_CFG_RANGE,
     "expected 1..100"},
    {"09_duration_no_unit.yaml", 4, 19, "stacks.api[0].timeout.duration", BW_CFG_UNIT,
     "like 250us, 200ms"},
    {"10_duration_bad_unit.yaml", 3, 16, "stacks.api[0].timeout.duration", BW_CFG_UNIT,
     "'5 parsecs'"},
    {"11_ratio_out_of_range.yaml", 4, 33, "stacks.api[0].circuit_breaker.failure_rate_threshold",
     BW_CFG_RANGE, "50% or 0.5"},
    {"12_rate_bad_unit.yaml", 4, 13, "shared.limit.rate_limit.rate", BW_CFG_UNIT, "100/s"},
    {"13_unknown_shared_ref.yaml", 3, 15, "stacks.api[0].shared", BW_CFG_UNKNOWN_REF,
     "did you mean 'backend_breaker'?"},
    {"14_empty_stack_flow.yaml", 2, 8, "stacks.api", BW_CFG_EMPTY_STACK, "no layers"},
    {"15_empty_stack_null.yaml", 2, 3, "stacks.api", BW_CFG_EMPTY_STACK, "no layers"},
    {"16_stack_not_list.yaml", 3, 5, "stacks.api", BW_CFG_TYPE, "got a mapping"},
    {"17_two_layers_one_item.yaml", 4, 7, "stacks.api[0]", BW_CFG_TYPE, "one layer per item"},
    {"18_list_for_scalar.yaml", 3, 16, "stacks.api[0].timeout", BW_CFG_TYPE, "got a list"},
    {"19_bad_enum.yaml", 4, 18, "stacks.api[0].retry.backoff", BW_CFG_BAD_VALUE,
     "did you mean 'exponential'?"},
    {"20_bad_error_kind.yaml", 4, 29, "stacks.api[0].retry.retry_on[1]", BW_CFG_BAD_VALUE,
     "did you mean 'transport'?"},
    {"21_unknown_budget_ref.yaml", 4, 17, "stacks.api[0].retry.budget", BW_CFG_UNKNOWN_REF,
     "no shared retry_budget 'nope'"},
    {"22_env_unset.yaml", 8, 17, "clients.cache.redis.password", BW_CFG_ENV,
     "BW_TEST_UNSET_SECRET_VAR is not set"},
    {"23_client_unknown_stack.yaml", 8, 14, "clients.web.http.stack", BW_CFG_UNKNOWN_REF,
     "did you mean 'api'?"},
    {"24_unknown_section.yaml", 1, 1, "stack", BW_CFG_UNKNOWN_SECTION, "did you mean 'stacks'?"},
    {"25_empty_file.yaml", 1, 1, "", BW_CFG_EMPTY, "empty config"},
    {"26_missing_required.yaml", 3, 7, "stacks.api[0].fallback.value", BW_CFG_MISSING_KEY,
     "needs 'value'"},
    {"27_bad_bool.yaml", 4, 28, "stacks.api[0].retry.honor_retry_after", BW_CFG_BAD_VALUE,
     "true or false"},
    {"28_unclosed_quote.yaml", 3, 17, "", BW_CFG_SYNTAX, "closing quote"},
    {"29_unknown_client_type.yaml", 3, 5, "clients.web.htp", BW_CFG_UNKNOWN_KEY,
     "did you mean 'http'?"},
    {"30_no_shorthand.yaml", 3, 24, "stacks.api[0].circuit_breaker", BW_CFG_TYPE,
     "expected a mapping of circuit_breaker settings"},
    {"31_budget_as_layer.yaml", 3, 7, "stacks.api[0].retry_budget", BW_CFG_UNKNOWN_LAYER,
     "not a layer"},
    {"32_timeout_zero.yaml", 3, 16, "stacks.api[0].timeout.duration", BW_CFG_RANGE,
     "expected 1us..24h"},
    {"33_top_level_list.yaml", 1, 1, "", BW_CFG_TYPE, "got a list"},
    {"34_budget_ref_wrong_kind.yaml", 4, 17, "stacks.api[0].retry.budget", BW_CFG_UNKNOWN_REF,
     "is a shared bulkhead, not a retry_budget"},
    {"35_unknown_alias.yaml", 3, 8, "", BW_CFG_SYNTAX, "unknown anchor"},
    {"36_two_documents.yaml", 4, 1, "", BW_CFG_SYNTAX, "more than one YAML document"},
    /* found by fuzz/config_fuzz: libfyaml 0.7.12 hangs on these, we refuse them first */
    {"37_nul_byte.yaml", 4, 4, "", BW_CFG_SYNTAX, "NUL character"},
    {"38_bad_utf8_directive.yaml", 3, 5, "", BW_CFG_SYNTAX, "invalid UTF-8"},
    /* settings valid one by one, refused together */
    {"39_burst_below_tokens.yaml", 3, 40, "stacks.api[0].rate_limit.burst", BW_CFG_RANGE,
     "smaller than tokens_per_call"},
    {"40_max_delay_below_base.yaml", 5, 20, "stacks.api[0].retry.max_delay", BW_CFG_RANGE,
     "max_delay >= base_delay"},
    /* what a layer constructor refuses, `check` refuses too (they loaded as
     * "ok" and failed only when the registry built them) */
    {"41_budget_window_over_60s.yaml", 3, 29, "shared.rb.retry_budget.window", BW_CFG_RANGE,
     "expected 1ms..1m"},
    {"42_breaker_buckets_over_4096.yaml", 3, 56, "stacks.api[0].circuit_breaker.window_buckets",
     BW_CFG_RANGE, "expected 1..4096"},
    {"43_breaker_buckets_over_window_ms.yaml", 3, 77,
     "stacks.api[0].circuit_breaker.window_buckets", BW_CFG_RANGE, "at most one bucket per ms"},
    {"44_tokens_over_default_burst.yaml", 3, 49, "stacks.api[0].rate_limit.tokens_per_call",
     BW_CFG_RANGE, "more than the default burst 2"},
    {"45_chaos_no_faults.yaml", 3, 22, "shared.ch.chaos.faults", BW_CFG_BAD_VALUE, "faults is empty"},
    /* an empty value has no token, so libfyaml gives it no mark: these
     * errors came without file:line:col. A mapping value is at its key, a
     * list item at its '-'. */
    {"46_empty_duration.yaml", 4, 9, "stacks.api[0].timeout.duration", BW_CFG_TYPE,
     "expected a duration like 250us, 200ms, 2s or 1m, got nothing"},
    {"47_empty_number.yaml", 3, 16, "stacks.api[0].retry.max_attempts", BW_CFG_TYPE,
     "expected an integer, got nothing"},
    {"48_empty_list_item.yaml", 7, 11, "stacks.api[0].retry.retry_on[1]", BW_CFG_TYPE,
     "got nothing as an item"},
};

static void test_bad_files(void **state) {
  (void)state;
  size_t n = sizeof kBad / sizeof kBad[0];
  assert_true(n >= 25);
  for (size_t i = 0; i < n; i++) {
    char rel[256];
    snprintf(rel, sizeof rel, "bad/%s", kBad[i].file);
    const char *path = file_path(rel);
    bw_config_report_t *r = NULL;
    bw_error_t *e = bw_config_check_file(path, &r);
    if (e == NULL) fail_msg("%s: loaded without error", kBad[i].file);
    assert_int_equal(bw_error_kind(e), BW_ERR_CONFIG);
    assert_int_equal(bw_error_detail(e), kBad[i].problem);
    const bw_config_diag_t *d = bw_config_report_get(r, 0);
    assert_non_null(d);
    if (d->line != kBad[i].line || d->column != kBad[i].col || strcmp(d->path, kBad[i].path) != 0 ||
        d->problem != kBad[i].problem || strstr(d->message, kBad[i].needle) == NULL) {
      fail_msg("%s: got %d:%d '%s' %s '%s'", kBad[i].file, d->line, d->column, d->path,
               bw_config_problem_name(d->problem), d->message);
    }
    assert_false(d->warning);
    /* the error's message is "file:line:col: path: message" */
    char want[1400];
    if (kBad[i].path[0])
      snprintf(want, sizeof want, "%s:%d:%d: %s: %s", path, d->line, d->column, d->path, d->message);
    else
      snprintf(want, sizeof want, "%s:%d:%d: %s", path, d->line, d->column, d->message);
    assert_string_equal(bw_error_message(e), want);
    bw_error_unref(e);
    bw_config_report_free(r);
  }
}

static void test_io_error(void **state) {
  (void)state;
  bw_config_report_t *r = NULL;
  bw_error_t *e = bw_config_check_file(file_path("does/not/exist.yaml"), &r);
  assert_non_null(e);
  assert_int_equal(bw_error_detail(e), BW_CFG_IO);
  assert_non_null(strstr(bw_error_message(e), "No such file"));
  bw_error_unref(e);
  bw_config_report_free(r);
}

static void test_several_errors_reported(void **state) {
  (void)state;
  const char *y =
      "stacks:\n"
      "  a:\n"
      "    - retry: {max_attempts: 0}\n"
      "    - timeout: 3 fortnights\n"
      "  b:\n"
      "    - bulkhed: {}\n";
  bw_config_report_t *r;
  bw_error_t *e = bw_config_check_string(y, strlen(y), "multi.yaml", &r);
  assert_non_null(e);
  assert_int_equal(bw_config_report_errors(r), 3);
  assert_int_equal(bw_config_report_get(r, 0)->problem, BW_CFG_RANGE);
  assert_int_equal(bw_config_report_get(r, 1)->problem, BW_CFG_UNIT);
  assert_int_equal(bw_config_report_get(r, 2)->problem, BW_CFG_UNKNOWN_LAYER);
  assert_int_equal(bw_config_report_get(r, 2)->line, 6);
  /* the first error on top, the others as related errors */
  assert_int_equal(bw_error_related_count(e), 2);
  assert_int_equal(bw_error_detail(bw_error_related(e, 1)), BW_CFG_UNKNOWN_LAYER);
  bw_error_unref(e);
  bw_config_report_free(r);
}

/* Empty values (`key:` with nothing after it, in block and flow style, and
 * in JSON as null) are located like any other bad value: the message of each
 * error starts with file:line:col. */
static void test_empty_values_located(void **state) {
  (void)state;
  const char *y =
      "stacks:\n"
      "  a:\n"
      "    - timeout:\n"
      "        duration:\n"
      "    - retry: { max_attempts: , base_delay: 10ms }\n"
      "    - rate_limit: { rate: 10/s, burst: }\n";
  bw_config_report_t *r;
  bw_error_t *e = bw_config_check_string(y, strlen(y), "empty.yaml", &r);
  assert_non_null(e);
  assert_int_equal(bw_config_report_errors(r), 3);
  static const struct {
    int line, col;
    const char *msg;
  } want[] = {
      {4, 9, "empty.yaml:4:9: stacks.a[0].timeout.duration: expected a duration"},
      {5, 16, "empty.yaml:5:16: stacks.a[1].retry.max_attempts: expected an integer, got nothing"},
      {6, 33, "empty.yaml:6:33: stacks.a[2].rate_limit.burst: expected an integer, got nothing"},
  };
  for (size_t i = 0; i < 3; i++) {
    const bw_config_diag_t *d = bw_config_report_get(r, i);
    assert_int_equal(d->line, want[i].line);
    assert_int_equal(d->column, want[i].col);
    assert_int_equal(d->problem, BW_CFG_TYPE);
    const bw_error_t *ei = i == 0 ? e : bw_error_related(e, i - 1);
    if (strncmp(bw_error_message(ei), want[i].msg, strlen(want[i].msg)) != 0)
      fail_msg("error %zu: got '%s', want it to start '%s'", i, bw_error_message(ei), want[i].msg);
  }
  bw_error_unref(e);
  bw_config_report_free(r);

  const char *j = "{\"stacks\": {\"a\": [{\"timeout\": {\"duration\": null}}]}}";
  e = bw_config_check_string(j, strlen(j), "empty.json", &r);
  assert_non_null(e);
  assert_string_equal(bw_error_message(e),
                      "empty.json:1:44: stacks.a[0].timeout.duration: expected a duration like "
                      "250us, 200ms, 2s or 1m, got nothing");
  bw_error_unref(e);
  bw_config_report_free(r);
}

/* ---- good files -------------------------------------------------------------- */

static bw__config_t *load(const char *rel, bw_config_report_t **rep) {
  char *text;
  size_t len;
  const char *path = file_path(rel);
  assert_int_equal(bw__read_file(path, &text, &len), 0);
  bw_config_report_t *r = bw__report_new(path);
  bw__config_t *c = bw__config_load(text, len, path, r);
  bw__free(text);
  if (c == NULL) {
    bw_config_report_print(r, stderr);
    fail_msg("%s did not load", rel);
  }
  if (rep) *rep = r;
  else bw_config_report_free(r);
  return c;
}

static const bw__cval_t *val(const bw__clayer_t *l, const char *key) {
  int i = bw__schema_key(l->schema, key);
  if (i < 0) fail_msg("no key %s in %s", key, l->schema->name);
  return &l->vals[i];
}

static void test_all_layers(void **state) {
  (void)state;
  bw_config_report_t *r;
  bw__config_t *c = load("good/all_layers.yaml", &r);
  assert_int_equal(bw_config_report_count(r), 0); /* recommended order: no warnings */
  bw_config_report_free(r);
  const bw__cstack_t *s = bw__config_stack(c, "full");
  assert_non_null(s);
  assert_int_equal(s->n, 8);
  const bw__clayer_t *fb = &s->layers[0], *to = &s->layers[1], *re = &s->layers[2],
                     *cb = &s->layers[3], *rl = &s->layers[4], *bh = &s->layers[5],
                     *to2 = &s->layers[6], *ch = &s->layers[7];
  assert_string_equal(fb->schema->name, "fallback");
  assert_string_equal(val(fb, "value")->s, "{\"cached\": true}");
  assert_int_equal(val(fb, "status")->i, 203);
  assert_int_equal(val(fb, "on")->n, 3);
  assert_int_equal(val(fb, "on")->ints[0], BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(val(fb, "on")->ints[2], BW_ERR_TIMEOUT);
  assert_true(val(to, "duration")->u == 2000000000ull);
  assert_string_equal(val(to, "scope")->s, "total");
  assert_int_equal(val(re, "max_attempts")->i, 4);
  assert_string_equal(val(re, "backoff")->s, "linear");
  assert_true(val(re, "base_delay")->u == 250000ull);
  assert_true(val(re, "multiplier")->d == 1.5);
  assert_true(val(re, "max_delay")->u == 60000000000ull);
  assert_string_equal(val(re, "jitter")->s, "decorrelated");
  assert_int_equal(val(re, "seed")->i, 42);
  assert_false(val(re, "honor_retry_after")->b);
  assert_true(val(re, "max_retry_after")->u == 10000000000ull);
  assert_true(val(re, "min_attempt")->u == 5000000ull);
  assert_int_equal(val(re, "retry_on")->n, 3);
  assert_int_equal(val(re, "retry_on")->ints[1], BW_ERR_HTTP_STATUS);
  assert_int_equal(val(re, "http_statuses")->n, 2);
  assert_int_equal(val(re, "http_statuses")->ints[0], 503);
  assert_false(val(re, "budget")->has);
  assert_string_equal(val(cb, "window")->s, "time");
  assert_int_equal(val(cb, "window_size")->i, 20);
  assert_true(val(cb, "window_duration")->u == 60000000000ull);
  assert_int_equal(val(cb, "window_buckets")->i, 6);
  assert_int_equal(val(cb, "consecutive_failures")->i, 3);
  assert_int_equal(val(cb, "minimum_calls")->i, 10);
  assert_true(val(cb, "failure_rate_threshold")->d == 0.25);
  assert_true(val(cb, "slow_call_rate_threshold")->d == 0.75);
  assert_true(val(cb, "slow_call_duration")->u == 800000000ull);
  assert_true(val(cb, "open_duration")->u == 15000000000ull);
  assert_true(val(cb, "open_duration_multiplier")->d == 2.0);
  assert_true(val(cb, "max_open_duration")->u == 120000000000ull);
  assert_int_equal(val(cb, "half_open_calls")->i, 3);
  assert_true(val(cb, "half_open_max_wait")->u == 30000000000ull);
  assert_string_equal(val(cb, "state")->s, "auto");
  assert_true(val(rl, "rate")->rate.count == 6000 && val(rl, "rate")->rate.per_ns == 60000000000ull);
  assert_int_equal(val(rl, "burst")->i, 50);
  assert_string_equal(val(rl, "mode")->s, "wait");
  assert_true(val(rl, "max_wait")->u == 250000000ull);
  assert_int_equal(val(bh, "max_concurrent")->i, 16);
  assert_int_equal(val(bh, "max_queue")->i, 32);
  assert_true(val(bh, "max_wait")->u == 100000000ull);
  assert_string_equal(val(to2, "scope")->s, "per_attempt");
  assert_true(val(ch, "rate")->d == 0.1);
  assert_int_equal(val(ch, "first_n")->i, 2);
  assert_int_equal(val(ch, "every_nth")->i, 5);
  assert_int_equal(val(ch, "faults")->n, 2);
  assert_string_equal(val(ch, "faults")->strs[0], "latency");
  assert_string_equal(val(ch, "error")->s, "http_status");
  assert_int_equal(val(ch, "error")->i, BW_ERR_HTTP_STATUS);
  assert_int_equal(val(ch, "error_detail")->i, 503);
  assert_true(val(ch, "latency")->u == 20000000ull);
  assert_string_equal(val(ch, "latency_distribution")->s, "uniform");
  assert_true(val(ch, "latency_max")->u == 40000000ull);
  assert_true(val(ch, "enabled")->b);
  /* every value here was given, none defaulted (except those not written) */
  assert_true(val(re, "max_attempts")->set);
  assert_false(val(ch, "latency_stddev")->set);
  assert_true(val(ch, "latency_stddev")->has);
  bw__config_free(c);
}

static void test_shorthand_and_defaults(void **state) {
  (void)state;
  bw__config_t *c = load("good/shorthand.yaml", NULL);
  const bw__cstack_t *q = bw__config_stack(c, "quick");
  assert_int_equal(val(&q->layers[0], "max_attempts")->i, 5);
  assert_true(val(&q->layers[0], "max_attempts")->set);
  assert_true(val(&q->layers[1], "duration")->u == 150000000ull);
  const bw__cstack_t *d = bw__config_stack(c, "defaults");
  assert_int_equal(d->n, 3);
  /* documented defaults (retry.h, timeout.h, bulkhead: resilience4j) */
  const bw__clayer_t *re = &d->layers[0];
  assert_int_equal(val(re, "max_attempts")->i, 3);
  assert_false(val(re, "max_attempts")->set);
  assert_string_equal(val(re, "backoff")->s, "exponential");
  assert_true(val(re, "base_delay")->u == 500000000ull);
  assert_true(val(re, "max_delay")->u == 30000000000ull);
  assert_string_equal(val(re, "jitter")->s, "full");
  assert_true(val(re, "honor_retry_after")->b);
  assert_int_equal(val(re, "http_statuses")->n, 4);
  assert_int_equal(val(&d->layers[1], "max_concurrent")->i, 25);
  assert_true(val(&d->layers[2], "duration")->u == 30000000000ull);
  bw__config_free(c);
}

static void test_shared_instances(void **state) {
  (void)state;
  bw__config_t *c = load("good/shared.yaml", NULL);
  const bw__cstack_t *rd = bw__config_stack(c, "reads"), *wr = bw__config_stack(c, "writes");
  assert_string_equal(rd->layers[1].shared, "backend_breaker");
  assert_string_equal(wr->layers[1].shared, "backend_breaker");
  const bw__clayer_t *b1 = bw__config_resolve(c, &rd->layers[1]);
  const bw__clayer_t *b2 = bw__config_resolve(c, &wr->layers[1]);
  assert_ptr_equal(b1, b2); /* one definition, one instance */
  assert_string_equal(b1->schema->name, "circuit_breaker");
  assert_int_equal(val(b1, "consecutive_failures")->i, 2);
  assert_string_equal(val(&rd->layers[0], "budget")->s, "retries");
  const bw__cshared_t *bud = bw__config_shared(c, "retries");
  assert_true(val(&bud->layer, "ratio")->d == 0.1);
  assert_int_equal(val(&bud->layer, "min_per_second")->i, 5);
  const bw__clayer_t *pool = bw__config_resolve(c, &rd->layers[2]);
  assert_int_equal(val(pool, "max_concurrent")->i, 8);
  bw__config_free(c);
}

static void test_json(void **state) {
  (void)state;
  bw_config_report_t *r;
  bw__config_t *c = load("good/json.json", &r);
  const bw__cstack_t *s = bw__config_stack(c, "api");
  assert_int_equal(s->n, 2);
  assert_string_equal(val(&s->layers[1], "backoff")->s, "constant");
  /* timeout outside retry, no per-attempt timeout: one order warning */
  assert_int_equal(bw_config_report_errors(r), 0);
  assert_int_equal(bw_config_report_count(r), 1);
  assert_int_equal(bw_config_report_get(r, 0)->problem, BW_CFG_LAYER_ORDER);
  bw_config_report_free(r);
  bw__config_free(c);
}

static void test_order_warnings(void **state) {
  (void)state;
  bw_config_report_t *r = NULL;
  bw_error_t *e = bw_config_check_file(file_path("good/order_warnings.yaml"), &r);
  assert_null(e); /* warnings never fail */
  assert_int_equal(bw_config_report_errors(r), 0);
  assert_int_equal(bw_config_report_count(r), 3);
  bool fallback = false, breaker = false, timeout = false;
  for (size_t i = 0; i < 3; i++) {
    const bw_config_diag_t *d = bw_config_report_get(r, i);
    assert_true(d->warning);
    assert_int_equal(d->problem, BW_CFG_LAYER_ORDER);
    if (strcmp(d->path, "stacks.odd[3].fallback") == 0 && d->line == 7) fallback = true;
    if (strcmp(d->path, "stacks.odd[1].circuit_breaker") == 0 && d->line == 5) breaker = true;
    if (strcmp(d->path, "stacks.odd[0].timeout") == 0 && d->line == 4) timeout = true;
  }
  assert_true(fallback && breaker && timeout);
  bw_config_report_free(r);
}

static char *explain_to_string(const char *file, const char *stack, bw_error_t **err) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  *err = bw_config_explain_file(file, stack, f);
  fclose(f);
  return buf;
}

static void test_env_secrets(void **state) {
  (void)state;
  setenv("BW_TEST_REDIS_PASSWORD", "s3cr3t-hunter2", 1);
  setenv("BW_TEST_REDIS_PORT", "6390", 1);
  bw__config_t *c = load("good/clients.yaml", NULL);
  const bw__cclient_t *cl = bw__config_client(c, "sessions");
  assert_non_null(cl);
  assert_true(cl->redis);
  assert_string_equal(val(&cl->conf, "password")->s, "s3cr3t-hunter2");
  assert_true(val(&cl->conf, "password")->secret);
  assert_int_equal(val(&cl->conf, "port")->i, 6390);
  assert_int_equal(val(&cl->conf, "db")->i, 2);
  const bw__cclient_t *web = bw__config_client(c, "web");
  assert_false(web->redis);
  assert_string_equal(val(&web->conf, "base_url")->s, "http://127.0.0.1:8080/v1");
  assert_true(val(&web->conf, "max_body")->u == 65536);
  bw__config_free(c);

  /* explain names the variable, never the value */
  bw_error_t *e;
  char *out = explain_to_string(file_path("good/clients.yaml"), "cache", &e);
  assert_null(e);
  assert_null(strstr(out, "s3cr3t"));
  assert_non_null(strstr(out, "<from ${BW_TEST_REDIS_PASSWORD}>"));
  free(out);

  /* a bad secret value is not echoed in the error either */
  setenv("BW_TEST_REDIS_PORT", "not-a-port-s3cr3t", 1);
  bw_config_report_t *r;
  e = bw_config_check_file(file_path("good/clients.yaml"), &r);
  assert_non_null(e);
  assert_int_equal(bw_error_detail(e), BW_CFG_BAD_VALUE);
  assert_null(strstr(bw_error_message(e), "s3cr3t"));
  assert_non_null(strstr(bw_error_message(e), "clients.sessions.redis.port"));
  bw_error_unref(e);
  bw_config_report_free(r);
  setenv("BW_TEST_REDIS_PORT", "99999", 1);
  e = bw_config_check_file(file_path("good/clients.yaml"), NULL);
  assert_int_equal(bw_error_detail(e), BW_CFG_RANGE);
  assert_null(strstr(bw_error_message(e), "99999"));
  assert_non_null(strstr(bw_error_message(e), "${BW_TEST_REDIS_PORT}"));
  bw_error_unref(e);
  unsetenv("BW_TEST_REDIS_PORT");
  unsetenv("BW_TEST_REDIS_PASSWORD");
}

static void test_env_secret_stack_and_long_default(void **state) {
  (void)state;
  /* a stack named through ${VAR} that does not exist: name the variable */
  setenv("BW_TEST_STACK_SECRET", "hunter2-topsecret", 1);
  const char *y = "stacks: {api: [timeout]}\n"
                  "clients:\n  web:\n    http: { base_url: \"http://h\", stack: \"${BW_TEST_STACK_SECRET}\" }\n";
  bw_config_report_t *r = NULL;
  bw_error_t *e = bw_config_check_string(y, strlen(y), "s.yaml", &r);
  assert_non_null(e);
  assert_int_equal(bw_error_detail(e), BW_CFG_UNKNOWN_REF);
  if (strstr(bw_error_message(e), "hunter2") != NULL || strstr(bw_error_message(e), "${BW_TEST_STACK_SECRET}") == NULL)
    fail_msg("%s", bw_error_message(e));
  assert_non_null(strstr(bw_error_message(e), "clients.web.http.stack"));
  bw_error_unref(e);
  bw_config_report_free(r);
  unsetenv("BW_TEST_STACK_SECRET");

  /* a ${VAR:-default} default is taken whole, however long */
  unsetenv("BW_TEST_UNSET_URL");
  char url[700];
  int o = snprintf(url, sizeof url, "http://127.0.0.1:8080/");
  for (; o < 600; o++) url[o] = (char)('a' + o % 26);
  url[o] = '\0';
  char text[1024];
  snprintf(text, sizeof text,
           "stacks: {api: [timeout]}\nclients:\n  web:\n    http: { base_url: \"${BW_TEST_UNSET_URL:-%s}/x\" }\n", url);
  r = bw__report_new("d.yaml");
  bw__config_t *c = bw__config_load(text, strlen(text), "d.yaml", r);
  assert_non_null(c);
  const char *got = val(&bw__config_client(c, "web")->conf, "base_url")->s;
  assert_int_equal(strlen(got), strlen(url) + 2);
  assert_memory_equal(got, url, strlen(url));
  assert_string_equal(got + strlen(url), "/x");
  bw__config_free(c);
  bw_config_report_free(r);
}

static void test_explain(void **state) {
  (void)state;
  bw_error_t *e;
  char *out = explain_to_string(file_path("good/shared.yaml"), "reads", &e);
  assert_null(e);
  assert_non_null(strstr(out, "stack reads"));
  assert_non_null(strstr(out, "1. retry"));
  assert_non_null(strstr(out, "2. circuit_breaker  (shared instance 'backend_breaker'"));
  /* explicit values print plain, defaults are marked */
  assert_non_null(strstr(out, "consecutive_failures       2\n"));
  assert_non_null(strstr(out, "base_delay                 500ms  (default)\n"));
  assert_non_null(strstr(out, "duration                   100ms\n"));
  assert_null(strstr(out, "stack writes"));
  free(out);

  out = explain_to_string(file_path("good/order_warnings.yaml"), NULL, &e);
  assert_null(e);
  assert_non_null(strstr(out, "warning: "));
  assert_non_null(strstr(out, "stacks.odd[3].fallback: fallback is not outermost"));
  free(out);

  out = explain_to_string(file_path("good/shared.yaml"), "raeds", &e);
  assert_non_null(e);
  assert_int_equal(bw_error_detail(e), BW_CFG_UNKNOWN_REF);
  assert_non_null(strstr(bw_error_message(e), "did you mean 'reads'?"));
  bw_error_unref(e);
  free(out);
}

static void test_anchors_and_merge_free(void **state) {
  (void)state;
  const char *y =
      "shared:\n"
      "  b: &brk\n"
      "    circuit_breaker: {consecutive_failures: 4, window: consecutive}\n"
      "defaults: &t { timeout: 1s }\n"
      "stacks:\n"
      "  a: [*t, {retry: 2}, {timeout: 100ms}]\n";
  bw_config_report_t *r;
  bw_error_t *e = bw_config_check_string(y, strlen(y), "anchors.yaml", &r);
  /* `defaults` is not a section: the alias works but the key is reported */
  assert_non_null(e);
  assert_int_equal(bw_config_report_get(r, 0)->problem, BW_CFG_UNKNOWN_SECTION);
  assert_int_equal(bw_config_report_get(r, 0)->line, 4);
  bw_error_unref(e);
  bw_config_report_free(r);
  const char *y2 =
      "stacks:\n"
      "  a: &a [ {timeout: 1s} ]\n"
      "  b: *a\n";
  e = bw_config_check_string(y2, strlen(y2), "alias.yaml", NULL);
  assert_null(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_files),
      cmocka_unit_test(test_io_error),
      cmocka_unit_test(test_several_errors_reported),
      cmocka_unit_test(test_empty_values_located),
      cmocka_unit_test(test_all_layers),
      cmocka_unit_test(test_shorthand_and_defaults),
      cmocka_unit_test(test_shared_instances),
      cmocka_unit_test(test_json),
      cmocka_unit_test(test_order_warnings),
      cmocka_unit_test(test_env_secrets),
      cmocka_unit_test(test_env_secret_stack_and_long_default),
      cmocka_unit_test(test_explain),
      cmocka_unit_test(test_anchors_and_merge_free),
  };
  return cmocka_run_group_tests_name("config_load", tests, NULL, NULL);
}
