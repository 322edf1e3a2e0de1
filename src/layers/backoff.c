/* Backoff delays, jitter, and the retry budget.
 *
 * Jitter formulas follow the AWS Architecture Blog "Exponential Backoff And
 * Jitter" (full, equal, decorrelated). The RNG is splitmix64 (Steele, Lea,
 * Flood 2014): one add and three multiply-xorshifts, good enough for jitter
 * and trivially seedable so tests replay exact sequences.
 *
 * Retry budget: tower's TpsBudget (tower/src/retry/budget/tps_budget.rs):
 * a window of ttl split into 10 slots; a deposit adds `deposit_amount` to
 * the current slot, a withdrawal needs the sum of live slots plus a fixed
 * reserve (min_per_sec * ttl seconds * withdraw_amount) to cover
 * `withdraw_amount`. With ratio r <= 1: deposit 1, withdraw 1/r; above 1:
 * deposit 1000, withdraw 1000/r (tower's integer scaling). A mutex guards
 * the slots: one short critical section per call that uses the budget. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "bulwark/retry.h"
#include "core/alloc.h"

uint64_t bw_backoff_rand(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* uniform in [lo, hi] */
static uint64_t uniform(uint64_t *rng, uint64_t lo, uint64_t hi) {
  if (hi <= lo) return lo;
  uint64_t span = hi - lo;
  if (span == UINT64_MAX) return bw_backoff_rand(rng);
  return lo + bw_backoff_rand(rng) % (span + 1);
}

static uint64_t cap_at(uint64_t v, uint64_t cap) { return cap && v > cap ? cap : v; }

uint64_t bw_backoff_delay_ns(const bw_backoff_t *b, uint32_t n, uint64_t prev_ns, uint64_t *rng) {
  if (n == 0) n = 1;
  uint64_t d;
  switch (b->kind) {
  case BW_BACKOFF_CONSTANT:
    d = b->base_ns;
    break;
  case BW_BACKOFF_LINEAR:
    d = (b->base_ns && n > UINT64_MAX / b->base_ns) ? UINT64_MAX : b->base_ns * n;
    break;
  case BW_BACKOFF_EXPONENTIAL:
  default: {
    if (!b->base_ns) {
      d = 0; /* (0 * an overflowed power would be NaN) */
      break;
    }
    double m = b->multiplier > 0 && isfinite(b->multiplier) ? b->multiplier : 2.0;
    double v = (double)b->base_ns * pow(m, (double)(n - 1));
    /* saturate: converting a value of 2^64 or more is undefined */
    d = v < 0x1p64 ? (uint64_t)v : UINT64_MAX;
    break;
  }
  }
  d = cap_at(d, b->cap_ns);
  switch (b->jitter) {
  case BW_JITTER_NONE:
    break;
  case BW_JITTER_FULL:
    d = uniform(rng, 0, d);
    break;
  case BW_JITTER_EQUAL:
    d = d / 2 + uniform(rng, 0, d - d / 2);
    break;
  case BW_JITTER_DECORRELATED: {
    uint64_t prev = prev_ns ? prev_ns : b->base_ns;
    uint64_t hi = prev > UINT64_MAX / 3 ? UINT64_MAX : prev * 3;
    d = cap_at(uniform(rng, b->base_ns, hi), b->cap_ns);
    break;
  }
  }
  return d;
}

/* ---- retry budget --------------------------------------------------------------- */

#define SLOTS 10
#define MAX_WITHDRAW INT64_C(1000000000000) /* 1e12 */
#define MAX_RESERVE (INT64_MAX / 4)

struct bw_retry_budget {
  atomic_int refs;
  pthread_mutex_t mu;
  uint64_t slot_ns;
  uint64_t gen;      /* generation of slot[cur] (time / slot_ns) */
  int cur;
  int64_t slot[SLOTS];
  int64_t reserve;
  int64_t deposit_amount, withdraw_amount;
};

void bw_retry_budget_opts_init(bw_retry_budget_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->ttl_ms = 10000;
  o->min_per_sec = 10;
  o->retry_ratio = 0.2;
}

bw_error_t *bw_retry_budget_new(bw_retry_budget_t **out, const bw_retry_budget_opts_t *opts) {
  bw_retry_budget_opts_t def;
  if (!opts) {
    bw_retry_budget_opts_init(&def);
    opts = &def;
  }
  if (!out || opts->ttl_ms < 1 || opts->ttl_ms > 60000 || !(opts->retry_ratio >= 0) ||
      opts->retry_ratio > 1000)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "retry budget: ttl must be 1..60000 ms and retry_ratio 0..1000");
  bw_retry_budget_t *b = bw__calloc(1, sizeof *b);
  if (!b) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  atomic_init(&b->refs, 1);
  pthread_mutex_init(&b->mu, NULL);
  b->slot_ns = opts->ttl_ms * 1000000ull / SLOTS;
  if (!b->slot_ns) b->slot_ns = 1;
  if (opts->retry_ratio == 0) {
    b->deposit_amount = 0;
    b->withdraw_amount = 1;
  } else {
    /* r <= 1: deposit 1, withdraw 1/r; above: deposit 1000, withdraw 1000/r.
     * A ratio so small that the withdrawal would pass MAX_WITHDRAW is held
     * there (one retry per 1e12 calls: none in practice), like tower's
     * saturating float-to-integer cast. */
    b->deposit_amount = opts->retry_ratio <= 1.0 ? 1 : 1000;
    double w = (double)b->deposit_amount / opts->retry_ratio;
    b->withdraw_amount = w < (double)MAX_WITHDRAW ? (int64_t)w : MAX_WITHDRAW;
  }
  if (b->withdraw_amount < 1) b->withdraw_amount = 1;
  /* tower: reserve = min_per_sec * ttl_secs * withdraw_amount (saturating;
   * held at MAX_RESERVE so that balance + reserve cannot overflow) */
  int64_t per_ttl = (int64_t)opts->min_per_sec * (int64_t)opts->ttl_ms / 1000; /* <= 2.6e11 */
  if (__builtin_mul_overflow(per_ttl, b->withdraw_amount, &b->reserve) || b->reserve > MAX_RESERVE)
    b->reserve = MAX_RESERVE;
  b->gen = UINT64_MAX;
  *out = b;
  return NULL;
}

bw_retry_budget_t *bw_retry_budget_ref(bw_retry_budget_t *b) {
  if (b) atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
  return b;
}

void bw_retry_budget_release(bw_retry_budget_t *b) {
  if (!b) return;
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) != 1) return;
  pthread_mutex_destroy(&b->mu);
  bw__free(b);
}

/* Advance the window to now; caller holds mu. */
static void expire(bw_retry_budget_t *b, uint64_t now_ns) {
  uint64_t g = now_ns / b->slot_ns;
  if (b->gen == UINT64_MAX) {
    b->gen = g;
    return;
  }
  if (g <= b->gen) return;
  uint64_t steps = g - b->gen;
  if (steps >= SLOTS) {
    memset(b->slot, 0, sizeof b->slot);
  } else {
    for (uint64_t i = 0; i < steps; i++) {
      b->cur = (b->cur + 1) % SLOTS;
      b->slot[b->cur] = 0;
    }
  }
  b->gen = g;
}

static int64_t sum_locked(bw_retry_budget_t *b) {
  int64_t s = 0;
  for (int i = 0; i < SLOTS; i++) s += b->slot[i];
  return s;
}

void bw_retry_budget_deposit(bw_retry_budget_t *b, uint64_t now_ns) {
  pthread_mutex_lock(&b->mu);
  expire(b, now_ns);
  b->slot[b->cur] += b->deposit_amount;
  pthread_mutex_unlock(&b->mu);
}

bool bw_retry_budget_withdraw(bw_retry_budget_t *b, uint64_t now_ns) {
  pthread_mutex_lock(&b->mu);
  expire(b, now_ns);
  bool ok = sum_locked(b) + b->reserve >= b->withdraw_amount;
  if (ok) b->slot[b->cur] -= b->withdraw_amount;
  pthread_mutex_unlock(&b->mu);
  return ok;
}

int64_t bw_retry_budget_balance(bw_retry_budget_t *b, uint64_t now_ns) {
  pthread_mutex_lock(&b->mu);
  expire(b, now_ns);
  int64_t v = (sum_locked(b) + b->reserve) / b->withdraw_amount;
  pthread_mutex_unlock(&b->mu);
  return v;
}
