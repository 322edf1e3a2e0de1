/* Histograms, gauges and the Prometheus writer. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>

#include "core/metrics_internal.h"
#include "h4_util.h"

static void test_histogram_buckets(void **state) {
  uint64_t prev = 0;
  for (size_t i = 0; i < BW__HIST_BUCKETS - 1; i++) {
    uint64_t up = bw__histogram_upper(i);
    assert_true(up > prev);
    /* values just below the upper bound land in this bucket */
    assert_int_equal(bw__histogram_index(up - 1), i);
    assert_int_equal(bw__histogram_index(up), i + 1);
    if (i > 0) assert_true((double)(up - prev) / (double)prev <= 0.25 + 1e-9);
    prev = up;
  }
  assert_int_equal(bw__histogram_index(UINT64_MAX), BW__HIST_BUCKETS - 1);
  assert_int_equal(bw__histogram_upper(BW__HIST_BUCKETS - 1), UINT64_MAX);
}

static void test_percentiles(void **state) {
  bw_histogram_t *h;
  assert_null(bw_histogram_new(&h));
  assert_int_equal(bw_histogram_percentile(h, 0.5), 0);
  /* 1..1000 µs */
  for (uint64_t v = 1; v <= 1000; v++) bw_histogram_record(h, v * 1000);
  assert_int_equal(bw_histogram_count(h), 1000);
  assert_int_equal(bw_histogram_sum_ns(h), 500500ull * 1000);
  uint64_t p50 = bw_histogram_percentile(h, 0.5), p99 = bw_histogram_percentile(h, 0.99);
  assert_true(p50 >= 500000 && p50 <= 500000 * 1.25);
  assert_true(p99 >= 990000 && p99 <= 990000 * 1.25);
  assert_true(bw_histogram_percentile(h, 1.0) >= 1000000);
  assert_true(bw_histogram_percentile(h, 0.0) <= 2048);
  /* out of range: clamped; NaN as 0 (it was converted to an integer as
   * it was: undefined, here the overflow bucket's UINT64_MAX) */
  assert_int_equal(bw_histogram_percentile(h, -1), bw_histogram_percentile(h, 0));
  assert_int_equal(bw_histogram_percentile(h, 7), bw_histogram_percentile(h, 1));
  assert_int_equal(bw_histogram_percentile(h, NAN), bw_histogram_percentile(h, 0));
  bw_histogram_reset(h);
  assert_int_equal(bw_histogram_count(h), 0);
  bw_histogram_free(h);
}

static double read_seven(void *arg) { return *(double *)arg; }

static void test_gauges_and_text(void **state) {
  double v = 7;
  bw_metric_t *g1, *g2, *c1;
  assert_null(bw_metrics_gauge_add(&g1, "bulwark_test_in_use", "In use", "stack=\"a\"", false,
                                   read_seven, &v));
  assert_null(bw_metrics_gauge_add(&c1, "bulwark_test_total", NULL, NULL, true, read_seven, &v));
  assert_null(bw_metrics_gauge_add(&g2, "bulwark_test_in_use", "In use", "stack=\"b\"", false,
                                   read_seven, &v));
  bw_metric_t *bad;
  bw_error_t *e = bw_metrics_gauge_add(&bad, "9bad name", NULL, NULL, false, read_seven, &v);
  assert_int_equal(bw_error_kind(e), BW_ERR_INVALID_ARGUMENT);
  bw_error_unref(e);
  char *t;
  assert_null(bw_metrics_prometheus_text(&t, NULL));
  const char *want =
      "# HELP bulwark_test_in_use In use\n"
      "# TYPE bulwark_test_in_use gauge\n"
      "bulwark_test_in_use{stack=\"a\"} 7\n"
      "bulwark_test_in_use{stack=\"b\"} 7\n"
      "# TYPE bulwark_test_total counter\n"
      "bulwark_test_total 7\n";
  assert_string_equal(t, want);
  bw_metrics_text_free(t);
  bw_metric_remove(g1);
  v = 2.5;
  assert_null(bw_metrics_prometheus_text(&t, NULL));
  assert_null(strstr(t, "stack=\"a\""));
  assert_non_null(strstr(t, "bulwark_test_in_use{stack=\"b\"} 2.5\n"));
  bw_metrics_text_free(t);
  bw_metric_remove(g2);
  bw_metric_remove(c1);
  bw_metric_remove(NULL);
  assert_null(bw_metrics_prometheus_text(&t, NULL));
  assert_string_equal(t, "");
  bw_metrics_text_free(t);
}

static void test_event_names(void **state) {
  assert_string_equal(bw_event_type_name(BW_EVENT_RETRY_SCHEDULED), "retry_scheduled");
  assert_string_equal(bw_event_type_name(BW_EVENT_BREAKER_STATE), "breaker_state");
  assert_string_equal(bw_event_type_name((bw_event_type_t)999), "unknown");
  /* emit without a call: hooks for that layer see it */
  bw_event_t ev = {.type = BW_EVENT_CUSTOM, .reason = "x"};
  bw_layer_emit(NULL, NULL, &ev);
  assert_null(ev.stack);
  assert_int_equal(ev.layer_index, -1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_histogram_buckets),
      cmocka_unit_test(test_percentiles),
      cmocka_unit_test(test_gauges_and_text),
      cmocka_unit_test(test_event_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
