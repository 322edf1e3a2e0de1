/* The table of layers and their settings.
 *
 * Each key names its type, unit (through the type), allowed range in the
 * base unit (ns for durations, bytes for sizes, events/s for rates), and
 * default written in config syntax, so the loader, `explain` and the docs
 * all read one table. Defaults follow the layer headers (which follow
 * resilience4j / Polly v8 / tower, see each header); where a layer has no
 * setting the key is absent rather than silently ignored.
 *
 * Ranges are sanity bounds chosen by us (no peer documents them): they
 * catch "10000h" typed for "10000ms", not real use. */
#include <string.h>

#include "config/internal.h"

#define D_NS(x) ((double)(x))
#define SEC 1e9
#define HOUR (3600.0 * SEC)
#define DAY (24.0 * HOUR)

static const bw__key_t kTimeout[] = {
    {"duration", BW__VT_DURATION, NULL, 1e3, DAY, "30s", false,
     "time allowed for the inner call, after which it is cancelled (Polly v8: 30s)"},
    {"scope", BW__VT_ENUM, "unspecified|total|per_attempt", 0, 0, "unspecified", false,
     "what the timeout is meant to bound (order check only)"},
};

static const bw__key_t kRetry[] = {
    {"max_attempts", BW__VT_INT, NULL, 1, 100, "3", false, "attempts in total, the first included"},
    {"backoff", BW__VT_ENUM, "constant|linear|exponential", 0, 0, "exponential", false,
     "how the delay grows between attempts"},
    {"base_delay", BW__VT_DURATION, NULL, 0, HOUR, "500ms", false, "delay before the first retry"},
    {"multiplier", BW__VT_DOUBLE, NULL, 1, 100, "2", false, "exponential growth factor"},
    {"max_delay", BW__VT_DURATION, NULL, 0, DAY, "30s", false, "cap on one delay (0: none)"},
    {"jitter", BW__VT_ENUM, "none|full|equal|decorrelated", 0, 0, "full", false,
     "randomisation of each delay"},
    {"seed", BW__VT_INT, NULL, 0, 9.2e18, "25207", false, "jitter seed (a run replays exactly)"},
    {"honor_retry_after", BW__VT_BOOL, NULL, 0, 0, "true", false,
     "wait as long as a Retry-After hint asks"},
    {"max_retry_after", BW__VT_DURATION, NULL, 0, DAY, "60s", false, "cap on a Retry-After wait"},
    {"min_attempt", BW__VT_DURATION, NULL, 0, HOUR, "0", false,
     "give up rather than start an attempt with less time than this before the deadline"},
    {"retry_on", BW__VT_KINDS, NULL, 0, 0, NULL, false,
     "error kinds to retry (default: the built-in predicate: transport, timeouts, 429/502/503/504, "
     "Redis LOADING/BUSY/TRYAGAIN/MASTERDOWN)"},
    {"http_statuses", BW__VT_INTS, NULL, 100, 599, "[429, 502, 503, 504]", false,
     "HTTP statuses retried when retry_on lists http_status"},
    {"budget", BW__VT_REF, "retry_budget", 0, 0, NULL, false,
     "name of a shared retry_budget limiting retries across calls"},
};

static const bw__key_t kBudget[] = {
    {"ratio", BW__VT_RATIO, NULL, 0, 1, "20%", false, "retries allowed per request (tower: 20%)"},
    {"min_per_second", BW__VT_INT, NULL, 0, 1e9, "10", false, "retries always allowed per second"},
    /* bw_retry_budget_new takes 1..60000 ms */
    {"window", BW__VT_DURATION, NULL, 1e6, 60 * SEC, "10s", false, "time window the ratio is over"},
};

static const bw__key_t kRateLimit[] = {
    {"rate", BW__VT_RATE, NULL, 1e-6, 1e9, NULL, true, "tokens added, e.g. 100/s (required)"},
    {"burst", BW__VT_INT, NULL, 1, 1e9, NULL, false,
     "bucket size (default: one second of rate, at least 1; Guava SmoothBursty)"},
    {"mode", BW__VT_ENUM, "wait|reject", 0, 0, "wait", false,
     "wait for a token, or reject at once (resilience4j waits)"},
    {"max_wait", BW__VT_DURATION, NULL, 0, HOUR, "5s", false, "longest wait in mode wait (r4j: 5s)"},
    {"tokens_per_call", BW__VT_INT, NULL, 1, 1e6, "1", false, "tokens one call spends"},
};

static const bw__key_t kBulkhead[] = {
    {"max_concurrent", BW__VT_INT, NULL, 1, 1e6, "25", false, "calls in flight at once (r4j: 25)"},
    {"max_queue", BW__VT_INT, NULL, 0, 1e6, "0", false, "calls waiting for a permit (0: reject when full)"},
    {"max_wait", BW__VT_DURATION, NULL, 0, HOUR, "0", false,
     "longest wait in the queue (0: until the call's deadline)"},
};

static const bw__key_t kBreaker[] = {
    {"window", BW__VT_ENUM, "count|time|consecutive", 0, 0, "count", false,
     "sliding window type"},
    {"window_size", BW__VT_INT, NULL, 1, 1e6, "100", false, "calls in a count window"},
    {"window_duration", BW__VT_DURATION, NULL, 1e6, DAY, "30s", false, "length of a time window"},
    /* bw_circuit_breaker_new takes 1..4096 (and at most one per ms: loader.c) */
    {"window_buckets", BW__VT_INT, NULL, 1, 4096, "10", false, "buckets of a time window"},
    {"consecutive_failures", BW__VT_INT, NULL, 1, 1e6, "5", false,
     "failures in a row that open a consecutive breaker"},
    {"minimum_calls", BW__VT_INT, NULL, 1, 1e6, "100", false,
     "calls in the window before rates count"},
    {"failure_rate_threshold", BW__VT_RATIO, NULL, 1e-9, 1, "50%", false,
     "failure rate that opens the breaker"},
    {"slow_call_rate_threshold", BW__VT_RATIO, NULL, 1e-9, 1, "100%", false,
     "slow call rate that opens the breaker"},
    {"slow_call_duration", BW__VT_DURATION, NULL, 0, DAY, "60s", false,
     "a call slower is slow (0: no slow-call counting)"},
    {"open_duration", BW__VT_DURATION, NULL, 1e6, DAY, "60s", false, "time open before half-open"},
    {"open_duration_multiplier", BW__VT_DOUBLE, NULL, 1, 100, "1", false,
     "growth of the open time after each failed probe round"},
    {"max_open_duration", BW__VT_DURATION, NULL, 0, DAY, "0", false, "cap on the grown open time (0: none)"},
    {"half_open_calls", BW__VT_INT, NULL, 1, 1e6, "10", false, "probe calls let through half-open"},
    {"half_open_max_wait", BW__VT_DURATION, NULL, 0, DAY, "0", false,
     "re-open if probes have not finished after this (0: the open duration); their late "
     "answers count in the next half-open period"},
    {"failure_on", BW__VT_KINDS, NULL, 0, 0, NULL, false,
     "error kinds that count as failures (default: what retry retries, plus HTTP 5xx)"},
    {"state", BW__VT_ENUM, "auto|forced_open|forced_closed|disabled", 0, 0, "auto", false,
     "manual override"},
};

static const bw__key_t kFallback[] = {
    {"value", BW__VT_STRING, NULL, 0, 0, NULL, true, "the answer given instead (response body / Redis reply)"},
    {"status", BW__VT_INT, NULL, 100, 599, "200", false, "HTTP status of the fallback answer (HTTP clients)"},
    {"on", BW__VT_KINDS, NULL, 0, 0, NULL, false,
     "error kinds that trigger it (default: any error but cancelled and runtime_shutdown)"},
};

static const bw__key_t kChaos[] = {
    {"rate", BW__VT_RATIO, NULL, 0, 1, "0.1%", false,
     "share of calls chosen at random (Polly v8 InjectionRate 0.001)"},
    {"first_n", BW__VT_INT, NULL, 0, 1e15, "0", false, "also choose the first N calls"},
    {"every_nth", BW__VT_INT, NULL, 0, 1e15, "0", false, "also choose every Nth call"},
    {"faults", BW__VT_STRINGS, "error|latency|hang", 0, 0, "[error]", false,
     "what a chosen call gets: latency first, then error or hang"},
    {"error", BW__VT_KIND, NULL, 0, 0, "injected", false, "kind of the injected error"},
    {"error_detail", BW__VT_INT, NULL, -1e15, 1e15, "0", false, "its detail, e.g. 503 with http_status"},
    {"latency", BW__VT_DURATION, NULL, 0, HOUR, "0", false, "added latency (fixed, minimum, or mean)"},
    {"latency_distribution", BW__VT_ENUM, "fixed|uniform|normal", 0, 0, "fixed", false,
     "how the delay is drawn"},
    {"latency_max", BW__VT_DURATION, NULL, 0, HOUR, "0", false, "upper bound (uniform)"},
    {"latency_stddev", BW__VT_DURATION, NULL, 0, HOUR, "0", false, "standard deviation (normal)"},
    {"seed", BW__VT_INT, NULL, 0, 9.2e18, "0", false, "random seed (the same seed replays exactly)"},
    {"enabled", BW__VT_BOOL, NULL, 0, 0, "true", false, "switch faults on or off"},
};

static const bw__key_t kHttpClient[] = {
    {"base_url", BW__VT_STRING, NULL, 0, 0, NULL, true, "URL prefix of relative request paths"},
    {"stack", BW__VT_REF, "stack", 0, 0, NULL, false, "stack every call goes through"},
    {"connect_timeout", BW__VT_DURATION, NULL, 1e6, HOUR, "10s", false, "TCP/TLS connect limit"},
    {"timeout", BW__VT_DURATION, NULL, 0, DAY, "0", false, "whole-transfer limit (0: none; the call deadline applies)"},
    {"max_host_connections", BW__VT_INT, NULL, 1, 1e5, "64", false, "connections per host"},
    {"max_total_connections", BW__VT_INT, NULL, 1, 1e6, "256", false, "connections in total"},
    {"max_body", BW__VT_SIZE, NULL, 1, 1e12, "16MiB", false, "largest response body accepted"},
    {"user_agent", BW__VT_STRING, NULL, 0, 0, "bulwark/0.1", false, "User-Agent header; \"\" sends none (libcurl's default)"},
};

static const bw__key_t kRedisClient[] = {
    {"host", BW__VT_STRING, NULL, 0, 0, "127.0.0.1", false, "server host"},
    {"port", BW__VT_INT, NULL, 1, 65535, "6379", false, "server port"},
    {"unix_path", BW__VT_STRING, NULL, 0, 0, NULL, false, "unix socket instead of host/port"},
    {"db", BW__VT_INT, NULL, 0, 1e6, "0", false, "database number (SELECT)"},
    {"username", BW__VT_STRING, NULL, 0, 0, NULL, false, "ACL user for AUTH"},
    {"password", BW__VT_STRING, NULL, 0, 0, NULL, false, "AUTH password (use ${ENV_VAR})"},
    {"stack", BW__VT_REF, "stack", 0, 0, NULL, false, "stack every call goes through"},
    {"connect_timeout", BW__VT_DURATION, NULL, 1e6, HOUR, "1s", false, "connect limit"},
    {"command_timeout", BW__VT_DURATION, NULL, 0, HOUR, "0", false, "per-command limit (0: none)"},
    {"max_in_flight", BW__VT_INT, NULL, 1, 1e7, "65536", false, "commands in flight at once"},
    /* below 1KiB an INFO or a small MGET would fail: "64" was meant as 64MiB */
    {"max_reply", BW__VT_SIZE, NULL, 1024, 64.0 * 1073741824.0, "64MiB", false,
     "largest reply accepted (wire bytes); larger: too_large, connection closed"},
};

#define N(a) (sizeof(a) / sizeof(a)[0])

/* the model keeps BW__MAX_KEYS values per layer */
_Static_assert(N(kTimeout) <= BW__MAX_KEYS && N(kRetry) <= BW__MAX_KEYS &&
                   N(kBudget) <= BW__MAX_KEYS && N(kRateLimit) <= BW__MAX_KEYS &&
                   N(kBulkhead) <= BW__MAX_KEYS && N(kBreaker) <= BW__MAX_KEYS &&
                   N(kFallback) <= BW__MAX_KEYS && N(kChaos) <= BW__MAX_KEYS &&
                   N(kHttpClient) <= BW__MAX_KEYS && N(kRedisClient) <= BW__MAX_KEYS,
               "a layer has more keys than BW__MAX_KEYS");

static const bw__layer_schema_t kLayers[] = {
    {"timeout", BW_CFG_LAYER_TIMEOUT, "duration", false, true, kTimeout, N(kTimeout)},
    {"retry", BW_CFG_LAYER_RETRY, "max_attempts", false, true, kRetry, N(kRetry)},
    {"rate_limit", BW_CFG_LAYER_RATE_LIMIT, "rate", true, true, kRateLimit, N(kRateLimit)},
    {"bulkhead", BW_CFG_LAYER_BULKHEAD, "max_concurrent", true, true, kBulkhead, N(kBulkhead)},
    {"circuit_breaker", BW_CFG_LAYER_CIRCUIT_BREAKER, NULL, true, true, kBreaker, N(kBreaker)},
    {"fallback", BW_CFG_LAYER_FALLBACK, "value", false, true, kFallback, N(kFallback)},
    {"chaos", BW_CFG_LAYER_CHAOS, NULL, true, true, kChaos, N(kChaos)},
    {"retry_budget", BW_CFG_LAYER_RETRY_BUDGET, NULL, true, false, kBudget, N(kBudget)},
};

static const bw__layer_schema_t kHttp = {"http", 0, "base_url", false, false, kHttpClient, N(kHttpClient)};
static const bw__layer_schema_t kRedis = {"redis", 0, NULL, false, false, kRedisClient, N(kRedisClient)};

static const bw__layer_schema_t *const kAll[] = {&kLayers[0], &kLayers[1], &kLayers[2],
                                                 &kLayers[3], &kLayers[4], &kLayers[5],
                                                 &kLayers[6], &kLayers[7]};

const bw__layer_schema_t *bw__schema_find(const char *name) {
  for (size_t i = 0; i < N(kLayers); i++)
    if (strcmp(kLayers[i].name, name) == 0) return &kLayers[i];
  return NULL;
}

const bw__layer_schema_t *bw__schema_by_kind(bw_config_layer_kind_t kind) {
  for (size_t i = 0; i < N(kLayers); i++)
    if (kLayers[i].kind == kind) return &kLayers[i];
  return NULL;
}

const bw__layer_schema_t *const *bw__schema_all(size_t *n) {
  *n = N(kAll);
  return kAll;
}

const bw__layer_schema_t *bw__schema_client(bool redis) { return redis ? &kRedis : &kHttp; }

int bw__schema_key(const bw__layer_schema_t *s, const char *name) {
  for (size_t i = 0; i < s->nkeys; i++)
    if (strcmp(s->keys[i].name, name) == 0) return (int)i;
  return -1;
}
