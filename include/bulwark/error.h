/* bulwark error chain.
 *
 * A bw_error_t is immutable and reference counted. It carries a kind, a
 * numeric detail (curl code, HTTP status, errno...), a message, the source
 * location that made it, an optional cause (the next error down the chain),
 * optional hints (Retry-After), and optionally a list of related errors (the
 * retry layer puts every attempt's error there).
 *
 * Ownership rules:
 *   - Functions returning bw_error_t * hand the caller one reference; NULL
 *     means success. Drop it with bw_error_unref().
 *   - A callback given `const bw_error_t *` borrows it for the callback's
 *     duration; call bw_error_ref() to keep it.
 *   - bw_error_wrap() and the `cause` argument of bw_error_make() CONSUME the
 *     caller's reference to the cause.
 *   - Making an error never fails: if memory runs out, the result is the
 *     static BW_ERR_OUT_OF_MEMORY error (never NULL). Static errors ignore
 *     ref/unref.
 * Threads: every function is safe from any thread. */
#ifndef BULWARK_ERROR_H
#define BULWARK_ERROR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The one table of error kinds: X(NAME, number, "name", "default message").
 * Never renumber a kind; retire it instead. */
#define BW_ERROR_KINDS(X)                                                        \
  X(OUT_OF_MEMORY, 1, "out_of_memory", "out of memory")                          \
  X(INVALID_ARGUMENT, 2, "invalid_argument", "invalid argument")                 \
  X(INTERNAL, 3, "internal", "internal error")                                   \
  X(TIMEOUT, 4, "timeout", "timed out")                                          \
  X(CANCELLED, 5, "cancelled", "cancelled")                                      \
  X(DEADLINE_EXCEEDED, 6, "deadline_exceeded", "deadline exceeded")              \
  X(CIRCUIT_OPEN, 7, "circuit_open", "circuit breaker is open")                  \
  X(RATE_LIMITED, 8, "rate_limited", "rate limit exceeded")                      \
  X(BULKHEAD_FULL, 9, "bulkhead_full", "bulkhead is full")                       \
  X(RETRIES_EXHAUSTED, 10, "retries_exhausted", "retries exhausted")             \
  X(BUDGET_EXHAUSTED, 11, "budget_exhausted", "retry budget exhausted")          \
  X(TRANSPORT, 12, "transport", "transport error")                               \
  X(CONNECT, 13, "connect", "connection failed")                                 \
  X(DNS, 14, "dns", "name resolution failed")                                    \
  X(TLS, 15, "tls", "TLS error")                                                 \
  X(HTTP_STATUS, 16, "http_status", "HTTP error status")                         \
  X(REDIS, 17, "redis", "Redis error reply")                                     \
  X(PROTOCOL, 18, "protocol", "protocol error")                                  \
  X(TOO_LARGE, 19, "too_large", "response too large")                            \
  X(CONFIG, 20, "config", "configuration error")                                 \
  X(RUNTIME_SHUTDOWN, 21, "runtime_shutdown", "runtime is shut down")            \
  X(NESTED_RUNTIME, 22, "nested_runtime", "blocking call on a runtime thread")   \
  X(FORKED, 23, "forked", "runtime used in a fork() child")                      \
  X(NOT_ALLOWED, 24, "not_allowed", "operation not allowed here")                \
  X(IO, 25, "io", "I/O error")                                                   \
  X(INJECTED, 26, "injected", "fault injected by chaos layer")                   \
  X(UNAVAILABLE, 27, "unavailable", "service unavailable")                       \
  X(FALLBACK_FAILED, 28, "fallback_failed", "fallback failed")                   \
  X(NOT_FOUND, 29, "not_found", "not found")

typedef enum bw_error_kind {
  BW_ERR_NONE = 0,
#define BW__KIND_ENUM(name, num, str, msg) BW_ERR_##name = num,
  BW_ERROR_KINDS(BW__KIND_ENUM)
#undef BW__KIND_ENUM
  BW_ERR__MAX
} bw_error_kind_t;

typedef struct bw_error bw_error_t;

/* Optional hints carried by an error. Zero means "no hint". */
typedef struct bw_error_hints {
  int64_t retry_after_ms; /* server asked to wait this long (>0), e.g. Retry-After */
} bw_error_hints_t;

/* Make an error. `cause` (may be NULL) is consumed. `hints` may be NULL.
 * `related`/`nrelated`: extra errors kept with this one (each reference is
 * consumed), e.g. every attempt of a retry. fmt may be NULL for the kind's
 * default message. Never returns NULL. */
bw_error_t *bw_error_make(bw_error_kind_t kind, int64_t detail, bw_error_t *cause,
                          const bw_error_hints_t *hints, bw_error_t **related,
                          size_t nrelated, const char *file, int line, const char *fmt,
                          ...) __attribute__((format(printf, 9, 10)));
bw_error_t *bw_error_vmake(bw_error_kind_t kind, int64_t detail, bw_error_t *cause,
                           const bw_error_hints_t *hints, bw_error_t **related,
                           size_t nrelated, const char *file, int line, const char *fmt,
                           va_list ap);

/* bw_error_new(kind, detail, fmt, ...): a new root error at this source line. */
#define bw_error_new(kind, detail, ...) \
  bw_error_make((kind), (detail), NULL, NULL, NULL, 0, __FILE__, __LINE__, __VA_ARGS__)
/* bw_error_wrap(cause, kind, detail, fmt, ...): context over `cause` (consumed). */
#define bw_error_wrap(cause, kind, detail, ...) \
  bw_error_make((kind), (detail), (cause), NULL, NULL, 0, __FILE__, __LINE__, __VA_ARGS__)

/* A static, never-allocated error for `kind` with its default message: for
 * hot-path rejections. ref/unref on it are no-ops. */
bw_error_t *bw_error_static(bw_error_kind_t kind);

bw_error_t *bw_error_ref(const bw_error_t *e);  /* NULL-safe; returns e */
void bw_error_unref(const bw_error_t *e);       /* NULL-safe */

bw_error_kind_t bw_error_kind(const bw_error_t *e);   /* BW_ERR_NONE for NULL */
int64_t bw_error_detail(const bw_error_t *e);
const char *bw_error_message(const bw_error_t *e);    /* lives as long as e */
const char *bw_error_file(const bw_error_t *e);
int bw_error_line(const bw_error_t *e);
const bw_error_t *bw_error_cause(const bw_error_t *e); /* borrowed */
const bw_error_hints_t *bw_error_hints(const bw_error_t *e); /* never NULL */
size_t bw_error_related_count(const bw_error_t *e);
const bw_error_t *bw_error_related(const bw_error_t *e, size_t i); /* borrowed */
bool bw_error_is_static(const bw_error_t *e);

/* True if `kind` occurs anywhere in the cause chain of e. */
bool bw_error_is(const bw_error_t *e, bw_error_kind_t kind);
/* The first error of `kind` in the chain, or NULL (borrowed). */
const bw_error_t *bw_error_find(const bw_error_t *e, bw_error_kind_t kind);
/* The innermost error of the chain (borrowed). */
const bw_error_t *bw_error_root(const bw_error_t *e);
/* The smallest positive retry_after_ms hint in the chain, or 0. */
int64_t bw_error_retry_after_ms(const bw_error_t *e);

const char *bw_error_kind_name(bw_error_kind_t kind);    /* "timeout"; "unknown" otherwise */
const char *bw_error_kind_message(bw_error_kind_t kind); /* default message */
/* Parse a kind name ("timeout") into *out; false if unknown. */
bool bw_error_kind_from_name(const char *name, bw_error_kind_t *out);

enum {
  BW_ERROR_FMT_KIND = 1 << 0,     /* prefix each link with "[kind]" */
  BW_ERROR_FMT_LOCATION = 1 << 1, /* append " (at file:line)" to each link */
  BW_ERROR_FMT_RELATED = 1 << 2,  /* list related errors: " [attempt 1: ...]" */
};
/* Format the whole chain, links joined by ": ", into buf (always
 * NUL-terminated when len > 0, truncated safely). Returns the length the
 * full text would need, like snprintf. */
size_t bw_error_format(const bw_error_t *e, char *buf, size_t len, unsigned flags);

#ifdef __cplusplus
}
#endif
#endif
