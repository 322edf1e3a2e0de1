/* Human units: durations, ratios, rates, sizes; suggestions. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdint.h>
#include <string.h>

#include "bulwark/config.h"
#include "config/internal.h"

static void test_durations(void **state) {
  (void)state;
  static const struct {
    const char *s;
    uint64_t ns;
  } ok[] = {
      {"250us", 250000ull},        {"200ms", 200000000ull},  {"2s", 2000000000ull},
      {"1m", 60000000000ull},      {"1h", 3600000000000ull}, {"0", 0},
      {"1.5s", 1500000000ull},     {"0.1s", 100000000ull},   {"7ns", 7},
      {"1min", 60000000000ull},    {"3 ms", 3000000ull},     {"\xc2\xb5s", 0} /* sentinel */,
  };
  for (size_t i = 0; i + 1 < sizeof ok / sizeof ok[0]; i++) {
    uint64_t v = 12345;
    assert_int_equal(bw__parse_duration_ns(ok[i].s, &v), BW__UNIT_OK);
    assert_true(v == ok[i].ns);
  }
  uint64_t v;
  assert_int_equal(bw__parse_duration_ns("5\xc2\xb5s", &v), BW__UNIT_OK);
  assert_true(v == 5000);
  assert_int_equal(bw__parse_duration_ns("200", &v), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_duration_ns("200 parsecs", &v), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_duration_ns("2sec", &v), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_duration_ns("ms", &v), BW__UNIT_NUMBER);
  assert_int_equal(bw__parse_duration_ns("", &v), BW__UNIT_NUMBER);
  assert_int_equal(bw__parse_duration_ns("-1s", &v), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_duration_ns("1.5ns", &v), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_duration_ns("99999999999999999h", &v), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_duration_ns("1.2.3s", &v), BW__UNIT_UNIT);
}

static void test_ratios(void **state) {
  (void)state;
  double d;
  assert_int_equal(bw__parse_ratio("50%", &d), BW__UNIT_OK);
  assert_true(d == 0.5);
  assert_int_equal(bw__parse_ratio("0.5", &d), BW__UNIT_OK);
  assert_true(d == 0.5);
  assert_int_equal(bw__parse_ratio("12.5%", &d), BW__UNIT_OK);
  assert_true(d == 0.125);
  assert_int_equal(bw__parse_ratio("100%", &d), BW__UNIT_OK);
  assert_true(d == 1.0);
  assert_int_equal(bw__parse_ratio("0", &d), BW__UNIT_OK);
  assert_true(d == 0.0);
  assert_int_equal(bw__parse_ratio("150%", &d), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_ratio("1.5", &d), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_ratio("-0.1", &d), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_ratio("half", &d), BW__UNIT_NUMBER);
  assert_int_equal(bw__parse_ratio("50 percent", &d), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_ratio("nan", &d), BW__UNIT_NUMBER);
}

static void test_rates(void **state) {
  (void)state;
  bw_config_rate_t r;
  assert_int_equal(bw__parse_rate("100/s", &r), BW__UNIT_OK);
  assert_true(r.count == 100 && r.per_ns == 1000000000ull);
  assert_true(bw_config_rate_per_sec(&r) == 100.0);
  assert_int_equal(bw__parse_rate("6000/m", &r), BW__UNIT_OK);
  assert_true(r.count == 6000 && r.per_ns == 60000000000ull);
  assert_true(bw_config_rate_per_sec(&r) == 100.0);
  assert_int_equal(bw__parse_rate("5/10s", &r), BW__UNIT_OK);
  assert_true(r.count == 5 && r.per_ns == 10000000000ull);
  assert_int_equal(bw__parse_rate("3600/h", &r), BW__UNIT_OK);
  assert_true(bw_config_rate_per_sec(&r) == 1.0);
  assert_int_equal(bw__parse_rate("10/sec", &r), BW__UNIT_OK);
  assert_true(r.count == 10 && r.per_ns == 1000000000ull);
  assert_int_equal(bw__parse_rate("100", &r), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_rate("100/fortnight", &r), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_rate("1.5/s", &r), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_rate("/s", &r), BW__UNIT_NUMBER);
  char buf[32];
  r = (bw_config_rate_t){6000, 60000000000ull};
  bw__format_rate(&r, buf, sizeof buf);
  assert_string_equal(buf, "6000/m");
  r = (bw_config_rate_t){5, 10000000000ull};
  bw__format_rate(&r, buf, sizeof buf);
  assert_string_equal(buf, "5/10s");
}

static void test_sizes(void **state) {
  (void)state;
  uint64_t b;
  assert_int_equal(bw__parse_size("64KiB", &b), BW__UNIT_OK);
  assert_true(b == 65536);
  assert_int_equal(bw__parse_size("10MiB", &b), BW__UNIT_OK);
  assert_true(b == 10485760);
  assert_int_equal(bw__parse_size("1GiB", &b), BW__UNIT_OK);
  assert_true(b == 1073741824ull);
  assert_int_equal(bw__parse_size("1KB", &b), BW__UNIT_OK);
  assert_true(b == 1000);
  assert_int_equal(bw__parse_size("512", &b), BW__UNIT_OK);
  assert_true(b == 512);
  assert_int_equal(bw__parse_size("512B", &b), BW__UNIT_OK);
  assert_true(b == 512);
  assert_int_equal(bw__parse_size("1.5KiB", &b), BW__UNIT_OK);
  assert_true(b == 1536);
  assert_int_equal(bw__parse_size("0.3B", &b), BW__UNIT_RANGE);
  assert_int_equal(bw__parse_size("10 mb", &b), BW__UNIT_UNIT);
  assert_int_equal(bw__parse_size("99999999999TiB", &b), BW__UNIT_RANGE);
  char buf[32];
  bw__format_size(65536, buf, sizeof buf);
  assert_string_equal(buf, "64KiB");
  bw__format_size(1000, buf, sizeof buf);
  assert_string_equal(buf, "1000B");
}

static void test_format_duration(void **state) {
  (void)state;
  char buf[32];
  bw__format_duration(60000000000ull, buf, sizeof buf);
  assert_string_equal(buf, "1m");
  bw__format_duration(1500000000ull, buf, sizeof buf);
  assert_string_equal(buf, "1500ms");
  bw__format_duration(250000ull, buf, sizeof buf);
  assert_string_equal(buf, "250us");
  bw__format_duration(0, buf, sizeof buf);
  assert_string_equal(buf, "0s");
  bw__format_ratio(0.5, buf, sizeof buf);
  assert_string_equal(buf, "50%");
}

static void test_public_wrappers(void **state) {
  (void)state;
  uint64_t ns;
  assert_null(bw_config_parse_duration("2s", &ns));
  assert_true(ns == 2000000000ull);
  bw_error_t *e = bw_config_parse_duration("2", &ns);
  assert_non_null(e);
  assert_int_equal(bw_error_kind(e), BW_ERR_CONFIG);
  assert_int_equal(bw_error_detail(e), BW_CFG_UNIT);
  bw_error_unref(e);
  double d;
  e = bw_config_parse_ratio("200%", &d);
  assert_int_equal(bw_error_detail(e), BW_CFG_RANGE);
  bw_error_unref(e);
  bw_config_rate_t r;
  assert_null(bw_config_parse_rate("6000/m", &r));
  uint64_t sz;
  assert_null(bw_config_parse_size("64KiB", &sz));
  assert_true(sz == 65536);
  e = bw_config_parse_size("lots", &sz);
  assert_int_equal(bw_error_detail(e), BW_CFG_BAD_VALUE);
  bw_error_unref(e);
}

static void test_did_you_mean(void **state) {
  (void)state;
  static const char *const c[] = {"timeout", "retry", "rate_limit", "bulkhead", "circuit_breaker"};
  assert_string_equal(bw__did_you_mean("retyr", c, 5), "retry");
  assert_string_equal(bw__did_you_mean("circuitbreaker", c, 5), "circuit_breaker");
  assert_string_equal(bw__did_you_mean("timout", c, 5), "timeout");
  assert_null(bw__did_you_mean("zzz", c, 5));
  assert_int_equal(bw__edit_distance("kitten", "sitting"), 3);
  assert_int_equal(bw__edit_distance("", "abc"), 3);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_durations),     cmocka_unit_test(test_ratios),
      cmocka_unit_test(test_rates),         cmocka_unit_test(test_sizes),
      cmocka_unit_test(test_format_duration), cmocka_unit_test(test_public_wrappers),
      cmocka_unit_test(test_did_you_mean),
  };
  return cmocka_run_group_tests_name("config_units", tests, NULL, NULL);
}
