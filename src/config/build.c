/* Model -> layer instances: one function per layer maps the validated
 * settings (schema.c) onto the layer's opts struct (its public header).
 *
 * Design notes
 * - Durations are kept in ns by the loader; opts fields in ms are rounded
 *   UP so "250us" never becomes "no limit" (0 often means "default/none").
 * - Custom predicates (retry_on, failure_on, fallback `on`) get a small
 *   argument block that lives as long as the registry (bw__reg_keep), since
 *   the layer may outlive the generation that made it. Each is made once
 *   per generation (fallbacks: per generation and flavor, registry.c), so
 *   the blocks grow with reloads, not with builds.
 * - Every constructor error is passed up unchanged; the caller wraps it with
 *   the file position of the layer. */
#include <string.h>

#include "bulwark/bulkhead.h"
#include "bulwark/chaos.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/http.h"
#include "bulwark/rate_limit.h"
#include "bulwark/redis.h"
#include "bulwark/retry.h"
#include "bulwark/timeout.h"
#include "config/registry_internal.h"
#include "core/alloc.h"

static const bw__cval_t *V(const bw__clayer_t *l, const char *key) {
  int i = bw__schema_key(l->schema, key);
  /* keys are the schema's own names: a miss is a programming error */
  static const bw__cval_t none;
  return i >= 0 ? &l->vals[i] : &none;
}

static bool is(const bw__clayer_t *l, const char *key, const char *word) {
  const bw__cval_t *v = V(l, key);
  return v->s != NULL && strcmp(v->s, word) == 0;
}

/* ---- predicates ----------------------------------------------------------------- */

typedef struct kind_pred {
  uint64_t kinds;   /* bit per bw_error_kind_t (all kinds are < 64) */
  size_t nstatus;
  int status[];     /* HTTP statuses (retry): as many as the file lists */
} kind_pred_t;

/* A predicate argument with the kinds of v and room for nstatus statuses. */
static kind_pred_t *make_kinds(bw_registry_t *reg, const bw__cval_t *v, size_t nstatus) {
  kind_pred_t *p = bw__reg_keep(reg, sizeof *p + nstatus * sizeof p->status[0]);
  if (p == NULL) return NULL;
  for (size_t i = 0; i < v->n; i++)
    if (v->ints[i] > 0 && v->ints[i] < 64) p->kinds |= 1ull << v->ints[i];
  return p;
}

/* Any link of the chain has a listed kind. */
static bool any_kind_pred(const bw_error_t *err, void *arg) {
  const kind_pred_t *p = arg;
  for (const bw_error_t *e = err; e != NULL; e = bw_error_cause(e)) {
    bw_error_kind_t k = bw_error_kind(e);
    if ((int)k > 0 && (int)k < 64 && (p->kinds & (1ull << k))) return true;
  }
  return false;
}

/* Retry with listed kinds and statuses; never what retry.h says is never retried. */
static bool retry_pred(const bw_error_t *err, void *arg) {
  const kind_pred_t *p = arg;
  static const bw_error_kind_t never[] = {BW_ERR_CANCELLED,        BW_ERR_CIRCUIT_OPEN,
                                          BW_ERR_BULKHEAD_FULL,    BW_ERR_INVALID_ARGUMENT,
                                          BW_ERR_RUNTIME_SHUTDOWN, BW_ERR_RETRIES_EXHAUSTED,
                                          BW_ERR_BUDGET_EXHAUSTED, BW_ERR_CONFIG};
  for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
    if (bw_error_kind(err) == never[i]) return false;
  if (bw_http_error_is_non_idempotent(err)) return false;
  for (const bw_error_t *e = err; e != NULL; e = bw_error_cause(e)) {
    bw_error_kind_t k = bw_error_kind(e);
    if (k == BW_ERR_HTTP_STATUS) {
      if (!(p->kinds & (1ull << BW_ERR_HTTP_STATUS))) return false;
      for (size_t i = 0; i < p->nstatus; i++)
        if (p->status[i] == (int)bw_error_detail(e)) return true;
      return false;
    }
    if ((int)k > 0 && (int)k < 64 && (p->kinds & (1ull << k))) return true;
  }
  return false;
}

/* ---- layers ---------------------------------------------------------------------------- */

static bw_error_t *build_timeout(const bw__clayer_t *l, bw_layer_t **out) {
  bw_timeout_opts_t o;
  bw_timeout_opts_init(&o);
  o.timeout_ns = V(l, "duration")->u;
  o.timeout_ms = bw__ms_up(o.timeout_ns);
  o.scope = is(l, "scope", "total")         ? BW_TIMEOUT_SCOPE_TOTAL
            : is(l, "scope", "per_attempt") ? BW_TIMEOUT_SCOPE_PER_ATTEMPT
                                            : BW_TIMEOUT_SCOPE_UNSPECIFIED;
  bw_error_t *e = bw_timeout_new(out, &o);
  if (e == NULL) {
    if (o.scope == BW_TIMEOUT_SCOPE_TOTAL) bw_layer_set_flags(*out, BW_LAYER_TIMEOUT_TOTAL);
    if (o.scope == BW_TIMEOUT_SCOPE_PER_ATTEMPT) bw_layer_set_flags(*out, BW_LAYER_TIMEOUT_PER_ATTEMPT);
  }
  return e;
}

static const built_shared_t *find_shared(const gen_t *g, const char *name) {
  for (size_t i = 0; g && i < g->nshared; i++)
    if (g->shared[i].def && strcmp(g->shared[i].def->name, name) == 0) return &g->shared[i];
  return NULL;
}

static bw_error_t *build_retry(bw_registry_t *reg, const gen_t *g, const bw__clayer_t *l,
                               bw_layer_t **out) {
  bw_retry_opts_t o;
  bw_retry_opts_init(&o);
  o.max_attempts = (uint32_t)V(l, "max_attempts")->i;
  o.backoff.kind = is(l, "backoff", "constant") ? BW_BACKOFF_CONSTANT
                   : is(l, "backoff", "linear") ? BW_BACKOFF_LINEAR
                                                : BW_BACKOFF_EXPONENTIAL;
  o.backoff.base_ns = V(l, "base_delay")->u;
  o.backoff.multiplier = V(l, "multiplier")->d;
  o.backoff.cap_ns = V(l, "max_delay")->u;
  o.backoff.jitter = is(l, "jitter", "none")    ? BW_JITTER_NONE
                     : is(l, "jitter", "equal") ? BW_JITTER_EQUAL
                     : is(l, "jitter", "decorrelated") ? BW_JITTER_DECORRELATED
                                                       : BW_JITTER_FULL;
  o.seed = (uint64_t)V(l, "seed")->i;
  o.honor_retry_after = V(l, "honor_retry_after")->b;
  o.max_retry_after_ms = bw__ms_up(V(l, "max_retry_after")->u);
  o.min_attempt_ms = bw__ms_up(V(l, "min_attempt")->u);
  const bw__cval_t *on = V(l, "retry_on"), *st = V(l, "http_statuses");
  if (on->set || st->set) {
    kind_pred_t *p;
    if (on->set) {
      p = make_kinds(reg, on, st->n);
    } else {
      static const bw__cval_t none;
      p = make_kinds(reg, &none, st->n);
      if (p) {
        static const bw_error_kind_t dflt[] = {
            BW_ERR_TIMEOUT, BW_ERR_DEADLINE_EXCEEDED, BW_ERR_TRANSPORT,   BW_ERR_CONNECT,
            BW_ERR_DNS,     BW_ERR_IO,                BW_ERR_PROTOCOL,    BW_ERR_UNAVAILABLE,
            BW_ERR_RATE_LIMITED, BW_ERR_HTTP_STATUS};
        for (size_t i = 0; i < sizeof dflt / sizeof dflt[0]; i++) p->kinds |= 1ull << dflt[i];
      }
    }
    if (p == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    for (size_t i = 0; i < st->n; i++) p->status[p->nstatus++] = (int)st->ints[i];
    o.predicate = retry_pred;
    o.predicate_arg = p;
  }
  const bw__cval_t *bud = V(l, "budget");
  if (bud->has) {
    const built_shared_t *b = find_shared(g, bud->s);
    o.budget = b ? b->budget : NULL; /* the loader checked the reference */
  }
  return bw_retry_new(out, &o);
}

static bw_error_t *build_breaker(bw_registry_t *reg, const bw__clayer_t *l, const char *name,
                                 bw_layer_t **out) {
  bw_circuit_breaker_opts_t o;
  bw_circuit_breaker_opts_init(&o);
  if (name) o.name = name;
  o.window = is(l, "window", "time")          ? BW_BREAKER_WINDOW_TIME
             : is(l, "window", "consecutive") ? BW_BREAKER_WINDOW_CONSECUTIVE
                                              : BW_BREAKER_WINDOW_COUNT;
  o.window_size = (uint32_t)V(l, "window_size")->i;
  o.window_ms = bw__ms_up(V(l, "window_duration")->u);
  o.window_buckets = (uint32_t)V(l, "window_buckets")->i;
  o.consecutive_failures = (uint32_t)V(l, "consecutive_failures")->i;
  o.minimum_calls = (uint32_t)V(l, "minimum_calls")->i;
  o.failure_rate_threshold = V(l, "failure_rate_threshold")->d * 100.0;
  o.slow_call_rate_threshold = V(l, "slow_call_rate_threshold")->d * 100.0;
  o.slow_call_duration_ms = bw__ms_up(V(l, "slow_call_duration")->u);
  o.open_duration_ms = bw__ms_up(V(l, "open_duration")->u);
  o.open_duration_multiplier = V(l, "open_duration_multiplier")->d;
  o.max_open_duration_ms = bw__ms_up(V(l, "max_open_duration")->u);
  o.half_open_calls = (uint32_t)V(l, "half_open_calls")->i;
  o.half_open_max_wait_ms = bw__ms_up(V(l, "half_open_max_wait")->u);
  const bw__cval_t *fo = V(l, "failure_on");
  if (fo->set) {
    kind_pred_t *p = make_kinds(reg, fo, 0);
    if (p == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    o.predicate = any_kind_pred;
    o.predicate_arg = p;
  }
  bw_error_t *e = bw_circuit_breaker_new(out, &o);
  if (e != NULL) return e;
  bw_breaker_state_t force = is(l, "state", "forced_open")     ? BW_BREAKER_FORCED_OPEN
                             : is(l, "state", "forced_closed") ? BW_BREAKER_FORCED_CLOSED
                             : is(l, "state", "disabled")      ? BW_BREAKER_DISABLED
                                                               : BW_BREAKER_CLOSED;
  if (force != BW_BREAKER_CLOSED) {
    e = bw_circuit_breaker_force(*out, force);
    if (e) {
      bw_layer_release(*out);
      *out = NULL;
    }
  }
  return e;
}

static bw_error_t *build_rate_limit(const bw__clayer_t *l, const char *name, bw_layer_t **out) {
  bw_rate_limit_opts_t o;
  bw_rate_limit_opts_init(&o);
  if (name) o.name = name;
  o.rate_per_sec = bw_config_rate_per_sec(&V(l, "rate")->rate);
  if (V(l, "burst")->has) o.burst = (uint64_t)V(l, "burst")->i;
  o.mode = is(l, "mode", "reject") ? BW_RATE_LIMIT_REJECT : BW_RATE_LIMIT_WAIT;
  o.max_wait_ms = bw__ms_up(V(l, "max_wait")->u);
  o.tokens_per_call = (uint32_t)V(l, "tokens_per_call")->i;
  return bw_rate_limit_new(out, &o);
}

static bw_error_t *build_bulkhead(const bw__clayer_t *l, const char *name, bw_layer_t **out) {
  bw_bulkhead_opts_t o;
  bw_bulkhead_opts_init(&o);
  if (name) o.name = name;
  o.max_concurrent = (uint32_t)V(l, "max_concurrent")->i;
  o.max_queue = (uint32_t)V(l, "max_queue")->i;
  o.max_queue_wait_ms = bw__ms_up(V(l, "max_wait")->u);
  return bw_bulkhead_new(out, &o);
}

static bw_error_t *build_chaos(const bw__clayer_t *l, const char *name, bw_layer_t **out) {
  bw_chaos_opts_t o;
  bw_chaos_opts_init(&o);
  if (name) o.name = name;
  o.enabled = V(l, "enabled")->b;
  o.seed = (uint64_t)V(l, "seed")->i;
  o.rate = V(l, "rate")->d;
  o.first_n = (uint64_t)V(l, "first_n")->i;
  o.every_nth = (uint64_t)V(l, "every_nth")->i;
  const bw__cval_t *f = V(l, "faults");
  o.faults = 0;
  for (size_t i = 0; i < f->n; i++) {
    if (strcmp(f->strs[i], "error") == 0) o.faults |= BW_CHAOS_ERROR;
    else if (strcmp(f->strs[i], "latency") == 0) o.faults |= BW_CHAOS_LATENCY;
    else if (strcmp(f->strs[i], "hang") == 0) o.faults |= BW_CHAOS_HANG;
  }
  o.error_kind = (bw_error_kind_t)V(l, "error")->i;
  o.error_detail = V(l, "error_detail")->i;
  o.latency_dist = is(l, "latency_distribution", "uniform")  ? BW_CHAOS_LATENCY_UNIFORM
                   : is(l, "latency_distribution", "normal") ? BW_CHAOS_LATENCY_NORMAL
                                                             : BW_CHAOS_LATENCY_FIXED;
  o.latency_ms = bw__ms_up(V(l, "latency")->u);
  o.latency_max_ms = bw__ms_up(V(l, "latency_max")->u);
  o.latency_stddev_ms = (double)V(l, "latency_stddev")->u / 1e6;
  return bw_chaos_new(out, &o);
}

bw_error_t *bw__build_budget(const bw__clayer_t *l, bw_retry_budget_t **out) {
  bw_retry_budget_opts_t o;
  bw_retry_budget_opts_init(&o);
  o.ttl_ms = bw__ms_up(V(l, "window")->u);
  o.min_per_sec = (uint32_t)V(l, "min_per_second")->i;
  o.retry_ratio = V(l, "ratio")->d;
  return bw_retry_budget_new(out, &o);
}

bw_error_t *bw__build_layer(bw_registry_t *reg, const gen_t *g, const bw__clayer_t *def,
                            const char *name, bw_layer_t **out) {
  *out = NULL;
  bw_error_t *e = NULL;
  switch (def->schema->kind) {
    case BW_CFG_LAYER_TIMEOUT: e = build_timeout(def, out); break;
    case BW_CFG_LAYER_RETRY: e = build_retry(reg, g, def, out); break;
    case BW_CFG_LAYER_RATE_LIMIT: e = build_rate_limit(def, name, out); break;
    case BW_CFG_LAYER_BULKHEAD: e = build_bulkhead(def, name, out); break;
    case BW_CFG_LAYER_CIRCUIT_BREAKER: e = build_breaker(reg, def, name, out); break;
    case BW_CFG_LAYER_CHAOS: e = build_chaos(def, name, out); break;
    case BW_CFG_LAYER_FALLBACK: /* built per stack: bw__build_fallback */
    case BW_CFG_LAYER_RETRY_BUDGET:
      return bw_error_new(BW_ERR_INTERNAL, 0, "registry: %s is not built here", def->schema->name);
  }
  if (e == NULL && name != NULL && *out != NULL) {
    bw_error_t *ne = bw_layer_set_name(*out, name);
    bw_error_unref(ne); /* a name is cosmetic */
  }
  return e;
}

/* ---- fallback --------------------------------------------------------------------------------- */

typedef struct fb_arg {
  int status;
  size_t len;
  char value[];
} fb_arg_t;

static bw_error_t *fb_http(void *arg, bw_call_t *call, const bw_error_t *original, void **resp,
                           bw_destroy_fn *resp_free) {
  (void)call, (void)original;
  const fb_arg_t *a = arg;
  bw_http_response_t *r;
  bw_error_t *e = bw_http_response_new(&r, a->status, a->value, a->len);
  if (e) return e;
  *resp = r;
  *resp_free = bw_http_response_destroy;
  return NULL;
}

static void reply_destroy(void *p) { bw_redis_reply_free(p); }

static bw_error_t *fb_redis(void *arg, bw_call_t *call, const bw_error_t *original, void **resp,
                            bw_destroy_fn *resp_free) {
  (void)call, (void)original;
  const fb_arg_t *a = arg;
  /* one block, as the client's own replies (bw_redis_reply_free frees it) */
  bw_redis_reply_t *r = bw__calloc(1, sizeof *r + a->len + 1);
  if (r == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  char *s = (char *)(r + 1);
  memcpy(s, a->value, a->len);
  s[a->len] = '\0';
  r->type = BW_REDIS_REPLY_STRING;
  r->str = s;
  r->len = a->len;
  *resp = r;
  *resp_free = reply_destroy;
  return NULL;
}

bw_error_t *bw__build_fallback(bw_registry_t *reg, const bw__clayer_t *l, int flavor,
                               bw_layer_t **out) {
  bw_fallback_opts_t o;
  bw_fallback_opts_init(&o);
  const bw__cval_t *v = V(l, "value");
  size_t len = v->s ? strlen(v->s) : 0;
  if (flavor == BW__FLAVOR_BYTES) {
    o.kind = BW_FALLBACK_VALUE;
    o.value = v->s ? v->s : "";
    o.value_len = len;
  } else {
    fb_arg_t *a = bw__reg_keep(reg, sizeof *a + len + 1);
    if (a == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    a->status = (int)V(l, "status")->i;
    a->len = len;
    if (len) memcpy(a->value, v->s, len);
    o.kind = BW_FALLBACK_FUNCTION;
    o.fn = flavor == BW__FLAVOR_HTTP ? fb_http : fb_redis;
    o.fn_arg = a;
  }
  const bw__cval_t *on = V(l, "on");
  if (on->set) {
    kind_pred_t *p = make_kinds(reg, on, 0);
    if (p == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    o.predicate = any_kind_pred;
    o.predicate_arg = p;
  }
  return bw_fallback_new(out, &o);
}
