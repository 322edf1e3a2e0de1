/* bulwark config: YAML (or JSON) files that name stacks of layers.
 *
 * Shape (see examples/stacks.yaml):
 *
 *   shared:                      # stateful instances several stacks use
 *     backend_breaker:
 *       circuit_breaker: { failure_rate_threshold: 50%, open_duration: 30s }
 *     retries:
 *       retry_budget: { ratio: 20%, min_per_second: 10 }
 *   stacks:                      # name -> layers, outermost first
 *     payments:
 *       - fallback: { value: "{}" }
 *       - retry: { max_attempts: 3, budget: retries }
 *       - shared: backend_breaker
 *       - timeout: 200ms         # shorthand for { duration: 200ms }
 *   clients:
 *     payments_api:
 *       http: { base_url: "http://127.0.0.1:8080", stack: payments }
 *     cache:
 *       redis: { host: 127.0.0.1, port: 6379, password: "${REDIS_PASSWORD}", stack: cache }
 *
 * Units: durations 250us 200ms 2s 1m 1h (also ns); ratios 50% or 0.5; rates
 * 100/s 6000/m 10/ms 3600/h; sizes 512B 64KiB 10MiB 1GiB (KB/MB/GB are
 * powers of 1000). ${VAR} in a client setting takes the environment
 * variable's value; such values are never printed (errors, explain).
 *
 * Every mistake is a bw_error of kind BW_ERR_CONFIG whose detail is a
 * bw_config_problem_t and whose message reads
 *   "FILE:LINE:COL: key.path: what is wrong; what was expected"
 * (lines and columns from 1, list indexes from 0). A load that fails changes
 * nothing. For every diagnostic at once (and warnings) use a report.
 *
 * Threads: every function here may be called from any thread; a report is
 * not shared between threads while being filled. */
#ifndef BULWARK_CONFIG_H
#define BULWARK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bulwark/error.h"
#include "bulwark/layer.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a diagnostic is about; the detail of a BW_ERR_CONFIG error. Never renumber. */
typedef enum bw_config_problem {
  BW_CFG_OK = 0,
  BW_CFG_IO = 1,             /* file cannot be read */
  BW_CFG_SYNTAX = 2,         /* YAML syntax error */
  BW_CFG_TAB = 3,            /* tab used for indentation */
  BW_CFG_DUPLICATE_KEY = 4,  /* a mapping has the same key twice */
  BW_CFG_UNKNOWN_SECTION = 5,/* top-level key other than stacks/shared/clients/version */
  BW_CFG_UNKNOWN_LAYER = 6,  /* layer name not known (with a suggestion) */
  BW_CFG_UNKNOWN_KEY = 7,    /* setting not known for this layer (with a suggestion) */
  BW_CFG_TYPE = 8,           /* wrong type: a list where a mapping belongs, ... */
  BW_CFG_RANGE = 9,          /* number out of range */
  BW_CFG_UNIT = 10,          /* bad or missing unit ("200" for a duration, "5 parsecs") */
  BW_CFG_BAD_VALUE = 11,     /* not one of the allowed words, bad number, bad error kind */
  BW_CFG_UNKNOWN_REF = 12,   /* reference to a shared instance or stack that does not exist */
  BW_CFG_EMPTY_STACK = 13,   /* a stack with no layers */
  BW_CFG_MISSING_KEY = 14,   /* a required setting is absent */
  BW_CFG_ENV = 15,           /* ${VAR} not set or malformed */
  BW_CFG_LAYER_ORDER = 16,   /* warning: an order that is almost always a mistake */
  BW_CFG_EMPTY = 17,         /* empty file or document, no stacks */
  BW_CFG__MAX
} bw_config_problem_t;

/* "syntax", "unknown_key", ... (static strings). */
const char *bw_config_problem_name(bw_config_problem_t p);

/* A rate: `count` events per `per_ns` nanoseconds ("6000/m" = 6000 per 60e9). */
typedef struct bw_config_rate {
  uint64_t count;
  uint64_t per_ns;
} bw_config_rate_t;
/* The rate as events per second. */
double bw_config_rate_per_sec(const bw_config_rate_t *r);

/* ---- Units: parse one value as the loader does. -------------------------
 * Errors: BW_ERR_CONFIG with detail BW_CFG_UNIT, BW_CFG_RANGE or BW_CFG_BAD_VALUE. */
bw_error_t *bw_config_parse_duration(const char *s, uint64_t *out_ns);
bw_error_t *bw_config_parse_ratio(const char *s, double *out);
bw_error_t *bw_config_parse_rate(const char *s, bw_config_rate_t *out);
bw_error_t *bw_config_parse_size(const char *s, uint64_t *out_bytes);

/* ---- Reports: every diagnostic of one validation. ---------------------- */

typedef struct bw_config_report bw_config_report_t;

typedef struct bw_config_diag {
  bw_config_problem_t problem;
  bool warning;        /* warnings never fail a load */
  const char *file;    /* as given ("<string>" for strings) */
  int line, column;    /* from 1; 0 when not known (I/O errors) */
  const char *path;    /* "stacks.payments[2].retry.max_attempts", "" for the file */
  const char *message; /* what is wrong and what was expected, no location */
} bw_config_diag_t;

/* Validate a file (or text) without building anything.
 * Owns: *report (if report is not NULL) is yours; free with bw_config_report_free.
 * Returns: NULL if valid (warnings allowed), else the first error as above,
 *          the others as its related errors. */
bw_error_t *bw_config_check_file(const char *path, bw_config_report_t **report);
bw_error_t *bw_config_check_string(const char *text, size_t len, const char *name,
                                   bw_config_report_t **report);

size_t bw_config_report_count(const bw_config_report_t *r);
size_t bw_config_report_errors(const bw_config_report_t *r); /* excluding warnings */
/* Borrowed; lives as long as the report. NULL when i is out of range. */
const bw_config_diag_t *bw_config_report_get(const bw_config_report_t *r, size_t i);
/* Write each diagnostic as "file:line:col: path: [warning: ]message\n". */
void bw_config_report_print(const bw_config_report_t *r, FILE *out);
void bw_config_report_free(bw_config_report_t *r); /* NULL-safe */

/* Print how `stack` of the file will be built: each layer with every setting,
 * its effective value and "(default)" where the default applied, shared
 * instances, then the order warnings. Secrets print as "<from ${VAR}>".
 * Errors: the load error, or BW_ERR_CONFIG/BW_CFG_UNKNOWN_REF for an
 * unknown stack (with a suggestion). stack NULL: explain every stack. */
bw_error_t *bw_config_explain_file(const char *path, const char *stack, FILE *out);
bw_error_t *bw_config_explain_string(const char *text, size_t len, const char *name,
                                     const char *stack, FILE *out);

/* Print the reference of every layer, shared-only entry and client: each
 * key with its type/unit, allowed range, default and meaning, as Markdown
 * tables (`bulwark reference`). */
void bw_config_print_reference(FILE *out);

/* Layer kinds the config knows. */
typedef enum bw_config_layer_kind {
  BW_CFG_LAYER_TIMEOUT = 1,
  BW_CFG_LAYER_RETRY = 2,
  BW_CFG_LAYER_RATE_LIMIT = 3,
  BW_CFG_LAYER_BULKHEAD = 4,
  BW_CFG_LAYER_CIRCUIT_BREAKER = 5,
  BW_CFG_LAYER_FALLBACK = 6,
  BW_CFG_LAYER_CHAOS = 7,
  BW_CFG_LAYER_RETRY_BUDGET = 8, /* shared only, referenced by retry.budget */
} bw_config_layer_kind_t;

/* ---- Registry: named stacks and clients from a config file. ----------------
 *
 * A registry holds one validated config (a "generation") and the layer
 * instances built from it: every shared instance once, and each stack's
 * stateful layers (breaker, limiter, bulkhead, chaos) once per stack name, so
 * every service built from stack "payments" trips the same breaker.
 *
 * Services from bw_registry_build / bw_registry_client FOLLOW RELOADS: each
 * call goes through the stack of the newest generation (rebuilt lazily on the
 * first call after a reload); calls already in flight finish on the stack they
 * started on. A reload keeps the instance (and its state: an open breaker
 * stays open) of every shared instance, and of every stateful layer at the
 * same position of the same stack, whose settings did not change. A reload
 * that fails changes nothing and returns the error.
 *
 * Lifetimes: release every service you got from the registry, and let their
 * calls finish, before bw_registry_free; free the registry before the
 * runtime it uses.
 * Threads: every function may be called from any thread (not from inside a
 * call's callback for bw_registry_free, which may block on client shutdown). */

typedef struct bw_registry bw_registry_t;

typedef struct bw_registry_opts {
  /* Runtime for clients (bw_registry_client) and file watching. May be NULL
   * if neither is used. Not owned. */
  bw_runtime_t *rt;
  /* Reload automatically when the file changes (libuv fs events on rt's
   * reactor; editors that replace the file are handled). Needs rt and a file.
   * The watched file is the registry's: after bw_registry_reload_file, the
   * new one (watched when that call returns; called on a worker of rt, as
   * from on_reload, a moment later). Default false. */
  bool watch;
  /* Called after each automatic reload with its outcome (err NULL: success;
   * borrowed), on a worker of rt. May be NULL. */
  void (*on_reload)(bw_registry_t *reg, const bw_error_t *err, void *arg);
  void *on_reload_arg;
} bw_registry_opts_t;

/* Zero *opts (the defaults above). */
void bw_registry_opts_init(bw_registry_opts_t *opts);

/* Load and build. opts may be NULL. Warnings (layer order) do not fail.
 * Owns: *out is yours; bw_registry_free.
 * Errors: BW_ERR_CONFIG (as bw_config_check_*; or a layer constructor
 *         refusing a value, wrapped with the stack's position), BW_ERR_INVALID_ARGUMENT,
 *         BW_ERR_OUT_OF_MEMORY. On error *out is NULL. */
bw_error_t *bw_registry_load_file(bw_registry_t **out, const char *path,
                                  const bw_registry_opts_t *opts);
bw_error_t *bw_registry_load_string(bw_registry_t **out, const char *text, size_t len,
                                    const char *name, const bw_registry_opts_t *opts);
/* Stop watching, free clients and every instance. NULL-safe. Threads: not
 * from a worker of the registry's runtime (freeing a Redis client waits). */
void bw_registry_free(bw_registry_t *reg);

/* Reload from the registry's file (reload_file: from another path, which
 * becomes the registry's file, and the watched one with opts.watch) or from
 * text. Atomic: on error nothing changed.
 * Errors: as bw_registry_load_*; BW_ERR_NOT_ALLOWED for bw_registry_reload on
 * a registry loaded from a string. */
bw_error_t *bw_registry_reload(bw_registry_t *reg);
bw_error_t *bw_registry_reload_file(bw_registry_t *reg, const char *path);
bw_error_t *bw_registry_reload_string(bw_registry_t *reg, const char *text, size_t len,
                                      const char *name);
/* Generation number: 1 after load, +1 per successful reload. */
uint64_t bw_registry_generation(const bw_registry_t *reg);

typedef enum bw_registry_section {
  BW_REGISTRY_STACKS = 0,
  BW_REGISTRY_SHARED = 1,
  BW_REGISTRY_CLIENTS = 2
} bw_registry_section_t;
/* Call fn(name, arg) for each name of a section, in file order (under the
 * registry's lock: fn must not call back into the registry). Returns the count. */
size_t bw_registry_names(bw_registry_t *reg, bw_registry_section_t section,
                         void (*fn)(const char *name, void *arg), void *arg);

/* A service that runs each call through stack `stack` around `inner` (see
 * "follow reloads" above). Fallback values are given as bytes (a copy of
 * `value`, BW_FALLBACK_VALUE); use bw_registry_client for HTTP/Redis stacks.
 * Owns: refs inner; *out is yours (bw_service_release).
 * Errors: BW_ERR_CONFIG / BW_CFG_UNKNOWN_REF (no such stack, with a
 *         suggestion), BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_registry_build(bw_registry_t *reg, const char *stack, bw_service_t *inner,
                              bw_service_t **out);

/* What the wrapped service answers, so a fallback answers the same type. */
typedef enum bw_registry_flavor {
  BW_REGISTRY_BYTES = 0, /* fallback value as bytes (bw_registry_build) */
  BW_REGISTRY_HTTP = 1,  /* inner answers bw_http_response_t */
  BW_REGISTRY_REDIS = 2  /* inner answers bw_redis_reply_t */
} bw_registry_flavor_t;
/* bw_registry_build for an inner service of the given flavor (e.g. your own
 * HTTP client service). Same ownership and errors. */
bw_error_t *bw_registry_build_ex(bw_registry_t *reg, const char *stack, bw_service_t *inner,
                                 bw_registry_flavor_t flavor, bw_service_t **out);

/* The client named `client` (made on first use on opts.rt, kept until
 * bw_registry_free or until a reload changes its settings) wrapped in its
 * `stack` (none: the bare client service). HTTP calls take a
 * bw_http_request_t and answer a bw_http_response_t; Redis calls take a
 * bw_redis_request_t and answer a bw_redis_reply_t (see http.h, redis.h);
 * fallback values become a response of `status` with the value as body, or
 * a Redis string reply.
 * Owns: *out is yours (bw_service_release).
 * Errors: BW_ERR_CONFIG / BW_CFG_UNKNOWN_REF, BW_ERR_INVALID_ARGUMENT (no
 *         runtime in opts), client creation errors. */
bw_error_t *bw_registry_client(bw_registry_t *reg, const char *client, bw_service_t **out);

/* A request for HTTP client `client`: path is appended to its base_url
 * unless it is an absolute URL. Owns: *out is yours (or the call's).
 * Errors: BW_ERR_CONFIG / BW_CFG_UNKNOWN_REF (no such HTTP client), as
 *         bw_http_request_new. */
struct bw_http_request;
bw_error_t *bw_registry_http_request(bw_registry_t *reg, const char *client, const char *method,
                                     const char *path, struct bw_http_request **out);

/* The instance built for shared entry `name` of the current generation.
 * Owns: *out carries a reference (bw_layer_release / bw_retry_budget_release).
 * Errors: BW_ERR_CONFIG / BW_CFG_UNKNOWN_REF (no such entry, or not of that kind). */
bw_error_t *bw_registry_shared_layer(bw_registry_t *reg, const char *name, bw_layer_t **out);
bw_error_t *bw_registry_shared_budget(bw_registry_t *reg, const char *name,
                                      bw_retry_budget_t **out);
/* The layer at `index` (outermost 0) of `stack` in the current generation
 * (shared references give the shared instance; fallback layers are built
 * per service and are not available here: BW_ERR_NOT_FOUND).
 * Owns: *out carries a reference. */
bw_error_t *bw_registry_stack_layer(bw_registry_t *reg, const char *stack, size_t index,
                                    bw_layer_t **out);

#ifdef __cplusplus
}
#endif
#endif
