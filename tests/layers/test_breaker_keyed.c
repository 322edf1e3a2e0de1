/* Keyed circuit breaker: one breaker per key (here the call's context
 * string, as a per-host key would be), isolation between keys, unkeyed
 * calls passing through, LRU eviction with a bounded number of keys, and
 * manual control per key. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "support/layer_harness.h"

#include <stdio.h>

#include "bulwark/circuit_breaker.h"

static size_t key_of(bw_call_t *call, void *arg, char *buf, size_t len) {
  (void)arg;
  const char *k = bw_call_context(call);
  if (!k) return 0;
  snprintf(buf, len, "%s", k);
  return strlen(buf);
}

/* f->layer is the keyed breaker (events not recorded). */
static lh_fx_t *kfx_new(uint32_t max_keys) {
  lh_fx_t *f = lh_fx_new(true, false);
  bw_circuit_breaker_keyed_opts_t o;
  bw_circuit_breaker_keyed_opts_init(&o);
  assert_int_equal(o.max_keys, 1024);
  o.breaker.name = "per_host";
  o.breaker.window = BW_BREAKER_WINDOW_CONSECUTIVE;
  o.breaker.consecutive_failures = 2;
  o.breaker.open_duration_ms = 1000;
  o.breaker.half_open_calls = 1;
  o.breaker.runtime = f->rt;
  o.key = key_of;
  o.max_keys = max_keys;
  bw_layer_t *kb = NULL;
  assert_null(bw_circuit_breaker_keyed_new(&kb, &o));
  lh_fx_stack(f, kb, false);
  return f;
}

static bw_error_kind_t kcall(lh_fx_t *f, const char *key, bw_error_kind_t backend) {
  f->be->dflt = backend;
  lh_res_t r;
  return lh_call_ctx(f->svc, f->rt, &r, (void *)key);
}

static void test_keys_are_isolated(void **state) {
  (void)state;
  lh_fx_t *f = kfx_new(16);
  bw_breaker_state_t s;
  assert_false(bw_circuit_breaker_keyed_state(f->layer, "a.example", &s));
  assert_int_equal(kcall(f, "a.example", BW_ERR_CONNECT), BW_ERR_CONNECT);
  assert_int_equal(kcall(f, "a.example", BW_ERR_CONNECT), BW_ERR_CONNECT);
  assert_true(bw_circuit_breaker_keyed_state(f->layer, "a.example", &s));
  assert_int_equal(s, BW_BREAKER_OPEN);
  assert_int_equal(kcall(f, "a.example", BW_ERR_NONE), BW_ERR_CIRCUIT_OPEN);
  /* Another host is unaffected. */
  assert_int_equal(kcall(f, "b.example", BW_ERR_NONE), BW_ERR_NONE);
  assert_true(bw_circuit_breaker_keyed_state(f->layer, "b.example", &s));
  assert_int_equal(s, BW_BREAKER_CLOSED);
  /* No key: passes unguarded, makes no breaker. */
  for (int i = 0; i < 5; i++) assert_int_equal(kcall(f, NULL, BW_ERR_CONNECT), BW_ERR_CONNECT);
  assert_int_equal(bw_circuit_breaker_keyed_count(f->layer), 2);
  /* a.example recovers after its open duration. */
  assert_null(bw_runtime_advance(f->rt, 1000));
  assert_int_equal(kcall(f, "a.example", BW_ERR_NONE), BW_ERR_NONE);
  assert_true(bw_circuit_breaker_keyed_state(f->layer, "a.example", &s));
  assert_int_equal(s, BW_BREAKER_CLOSED);
  lh_fx_free(f);
}

static void test_lru_eviction(void **state) {
  (void)state;
  lh_fx_t *f = kfx_new(3);
  bw_breaker_state_t s;
  assert_int_equal(kcall(f, "k1", BW_ERR_NONE), BW_ERR_NONE);
  assert_int_equal(kcall(f, "k2", BW_ERR_NONE), BW_ERR_NONE);
  assert_int_equal(kcall(f, "k3", BW_ERR_NONE), BW_ERR_NONE);
  assert_int_equal(kcall(f, "k1", BW_ERR_NONE), BW_ERR_NONE); /* k1 recent again */
  assert_int_equal(kcall(f, "k4", BW_ERR_NONE), BW_ERR_NONE); /* evicts k2 */
  assert_int_equal(bw_circuit_breaker_keyed_count(f->layer), 3);
  assert_false(bw_circuit_breaker_keyed_state(f->layer, "k2", &s));
  assert_true(bw_circuit_breaker_keyed_state(f->layer, "k1", &s));
  assert_true(bw_circuit_breaker_keyed_state(f->layer, "k3", &s));
  assert_true(bw_circuit_breaker_keyed_state(f->layer, "k4", &s));
  /* Many distinct keys never grow it past the bound. */
  char key[32];
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "host-%d", i);
    assert_int_equal(kcall(f, key, BW_ERR_NONE), BW_ERR_NONE);
  }
  assert_int_equal(bw_circuit_breaker_keyed_count(f->layer), 3);
  lh_fx_free(f);
}

static void test_force_per_key(void **state) {
  (void)state;
  lh_fx_t *f = kfx_new(8);
  assert_null(bw_circuit_breaker_keyed_force(f->layer, "down", BW_BREAKER_FORCED_OPEN));
  assert_int_equal(kcall(f, "down", BW_ERR_NONE), BW_ERR_CIRCUIT_OPEN);
  assert_int_equal(kcall(f, "up", BW_ERR_NONE), BW_ERR_NONE);
  assert_null(bw_circuit_breaker_keyed_force(f->layer, "down", BW_BREAKER_CLOSED));
  assert_int_equal(kcall(f, "down", BW_ERR_NONE), BW_ERR_NONE);
  lh_expect_error(bw_circuit_breaker_keyed_force(f->layer, "down", BW_BREAKER_HALF_OPEN),
                  BW_ERR_INVALID_ARGUMENT);
  /* A plain breaker is not keyed and vice versa. */
  assert_int_equal(bw_circuit_breaker_keyed_count(NULL), 0);
  lh_expect_error(bw_circuit_breaker_force(f->layer, BW_BREAKER_OPEN), BW_ERR_INVALID_ARGUMENT);
  /* No key function: refused. */
  bw_circuit_breaker_keyed_opts_t o;
  bw_circuit_breaker_keyed_opts_init(&o);
  bw_layer_t *l = NULL;
  lh_expect_error(bw_circuit_breaker_keyed_new(&l, &o), BW_ERR_INVALID_ARGUMENT);
  lh_fx_free(f);
}

/* Two workers, many keys, a small bound: evictions race with calls in
 * flight; every call completes once and nothing leaks. */
static const char *const KEYS[] = {"h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"};

static void test_many_calls_evicting(void **state) {
  (void)state;
  lh_fx_t *f = kfx_new(3);
  int n = lh_scaled(10000);
  lh_res_t *r = calloc((size_t)n, sizeof *r);
  for (int i = 0; i < 4096; i++) f->be->script[i] = i % 5 == 0 ? BW_ERR_CONNECT : BW_ERR_NONE;
  f->be->nscript = 4096;
  for (int i = 0; i < n; i++) lh_start_ctx(&r[i], f->svc, f->rt, (void *)KEYS[i % 8]);
  lh_tally_t t = lh_wait_tally(r, n);
  int ok = t.n[BW_ERR_NONE], bad = t.n[BW_ERR_CONNECT] + t.n[BW_ERR_CIRCUIT_OPEN];
  assert_int_equal(ok + bad, n);
  assert_true(bw_circuit_breaker_keyed_count(f->layer) <= 3);
  free(r);
  lh_fx_free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_keys_are_isolated),
      cmocka_unit_test(test_lru_eviction),
      cmocka_unit_test(test_force_per_key),
      cmocka_unit_test(test_many_calls_evicting),
  };
  return cmocka_run_group_tests_name("breaker_keyed", tests, NULL, NULL);
}
