/* Token bucket decision core (internal), used by the rate limit layer.
 *
 * The bucket is kept as GCRA ("generic cell rate algorithm"): one 64-bit
 * "theoretical arrival time" (TAT) that says when the bucket would be full
 * again. A token costs `interval_ns` = 1e9 / rate of TAT; a request for n
 * tokens is allowed when, after paying, TAT - now <= burst * interval_ns.
 * This is the same decision a Redis script can make atomically later
 * (DESIGN.md "Beyond one machine"), so the in-memory store and a Redis store
 * share one algorithm.
 *
 * Waiting is a *reservation*: bw__tb_acquire with max_wait_ns > 0 may pay
 * for a token that only frees up in the future and returns how long the
 * caller must wait before using it. Reservations are handed out in TAT
 * order, so waiters are served first-come first-served by construction; the
 * layer only has to sleep each waiter until its slot. A waiter that gives up
 * (cancel, deadline) gives its slot back with bw__tb_refund.
 *
 * Threads: every function is safe from any thread; the hot path is one
 * atomic load and one CAS, no lock. */
#ifndef BW_LAYERS_TOKEN_BUCKET_H
#define BW_LAYERS_TOKEN_BUCKET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Return codes (0 = success). */
#define BW__TB_OK 0
#define BW__TB_EINVAL (-1)
#define BW__TB_ELIMITED (-2) /* not enough tokens within max_wait_ns */

typedef struct bw__token_bucket {
  _Atomic uint64_t tat_ns; /* theoretical arrival time; 0 = bucket full */
  uint64_t interval_ns;    /* cost of one token (1e9 / rate), >= 1 */
  uint64_t burst;          /* bucket capacity in tokens, >= 1 */
  uint64_t tau_ns;         /* burst * interval_ns */
} bw__token_bucket_t;

/* Set up a full bucket with `rate_per_sec` tokens per second (> 0, may be
 * fractional) and capacity `burst` (>= 1). Returns BW__TB_EINVAL for
 * out-of-range values (interval under 1 ns, or burst * interval past 2^62). */
int bw__tb_init(bw__token_bucket_t *tb, double rate_per_sec, uint64_t burst);

/* Take n tokens at time now_ns. If they are there now: returns 0 and
 * *wait_ns = 0. If they free up within max_wait_ns: they are reserved,
 * returns 0 and *wait_ns = how long until the reservation may be used.
 * Otherwise nothing is taken, returns BW__TB_ELIMITED and *wait_ns = how
 * long until n tokens would be there (the retry-after hint). n must be in
 * 1..burst (otherwise BW__TB_EINVAL). wait_ns may be NULL. */
int bw__tb_acquire(bw__token_bucket_t *tb, uint64_t n, uint64_t now_ns, uint64_t max_wait_ns,
                   uint64_t *wait_ns);

/* Give back n tokens taken (or reserved) earlier and not used. Never makes
 * the bucket fuller than it was. */
void bw__tb_refund(bw__token_bucket_t *tb, uint64_t n, uint64_t now_ns);

/* Tokens in the bucket at now_ns (fractional). Negative when reservations
 * are outstanding (then -value is how many tokens are promised ahead). */
double bw__tb_tokens(const bw__token_bucket_t *tb, uint64_t now_ns);

/* ---- Store interface -------------------------------------------------
 * The rate limit layer makes its decisions through this small vtable so a
 * fleet-wide store (Redis GCRA script) can replace the in-memory bucket. */
typedef struct bw__limiter_store bw__limiter_store_t;
typedef struct bw__limiter_store_vt {
  int (*acquire)(bw__limiter_store_t *s, uint64_t n, uint64_t now_ns, uint64_t max_wait_ns,
                 uint64_t *wait_ns);
  void (*refund)(bw__limiter_store_t *s, uint64_t n, uint64_t now_ns);
  double (*tokens)(bw__limiter_store_t *s, uint64_t now_ns);
  void (*destroy)(bw__limiter_store_t *s);
} bw__limiter_store_vt_t;
struct bw__limiter_store {
  const bw__limiter_store_vt_t *vt;
};

/* An in-memory store around a token bucket. *out is freed through
 * out->vt->destroy. Returns 0, BW__TB_EINVAL or -12 (out of memory). */
int bw__limiter_store_mem_new(double rate_per_sec, uint64_t burst, bw__limiter_store_t **out);

#endif
