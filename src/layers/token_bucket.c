/* Token bucket as GCRA: see token_bucket.h for the model.
 *
 * Invariants: tat_ns only moves through CAS; a successful acquire moves it
 * forward by n * interval_ns from max(tat, now); a refund moves it back by
 * at most the same amount and never below `now` (a bucket is never fuller
 * than full). All atomics are relaxed except the CAS, which is acq_rel so
 * that a reservation's payment is ordered with the layer's own bookkeeping
 * (pairs with the acquire load in the next CAS on another thread); the
 * bucket protects no other memory. */
#include "layers/token_bucket.h"

#include <math.h>

#include "core/alloc.h"

#define MAX_SPAN_NS (UINT64_C(1) << 62)

int bw__tb_init(bw__token_bucket_t *tb, double rate_per_sec, uint64_t burst) {
  if (!tb || !(rate_per_sec > 0) || !isfinite(rate_per_sec) || burst < 1) return BW__TB_EINVAL;
  double iv = 1e9 / rate_per_sec;
  if (iv < 1.0 || iv > (double)MAX_SPAN_NS) return BW__TB_EINVAL;
  /* Whole nanoseconds, rounded up: the rate enforced is never above the
   * one asked for (above 1e7/s it can be below it: 7e8/s enforces 5e8/s). */
  uint64_t interval = (uint64_t)llround(iv);
  if ((double)interval < iv && iv - (double)interval > iv * 1e-9) interval++; /* (not float noise) */
  if (interval == 0 || burst > MAX_SPAN_NS / interval) return BW__TB_EINVAL;
  atomic_init(&tb->tat_ns, 0);
  tb->interval_ns = interval;
  tb->burst = burst;
  tb->tau_ns = burst * interval;
  return BW__TB_OK;
}

int bw__tb_acquire(bw__token_bucket_t *tb, uint64_t n, uint64_t now_ns, uint64_t max_wait_ns,
                   uint64_t *wait_ns) {
  uint64_t dummy;
  if (!wait_ns) wait_ns = &dummy;
  *wait_ns = 0;
  if (n < 1 || n > tb->burst) return BW__TB_EINVAL;
  uint64_t cost = n * tb->interval_ns;
  uint64_t old = atomic_load_explicit(&tb->tat_ns, memory_order_relaxed);
  for (;;) {
    uint64_t base = old > now_ns ? old : now_ns;
    uint64_t next = base + cost;
    uint64_t need = next - now_ns; /* time until the bucket is full again */
    uint64_t wait = need > tb->tau_ns ? need - tb->tau_ns : 0;
    if (wait > max_wait_ns) {
      *wait_ns = wait;
      return BW__TB_ELIMITED;
    }
    /* acq_rel: pairs with the same CAS on other threads. */
    if (atomic_compare_exchange_weak_explicit(&tb->tat_ns, &old, next, memory_order_acq_rel,
                                              memory_order_relaxed)) {
      *wait_ns = wait;
      return BW__TB_OK;
    }
  }
}

void bw__tb_refund(bw__token_bucket_t *tb, uint64_t n, uint64_t now_ns) {
  if (n < 1) return;
  uint64_t cost = n > tb->burst ? tb->tau_ns : n * tb->interval_ns;
  uint64_t old = atomic_load_explicit(&tb->tat_ns, memory_order_relaxed);
  for (;;) {
    if (old <= now_ns) return; /* already full */
    uint64_t next = old - cost;
    if (old < cost || next < now_ns) next = now_ns;
    /* acq_rel: pairs with the CAS in bw__tb_acquire. */
    if (atomic_compare_exchange_weak_explicit(&tb->tat_ns, &old, next, memory_order_acq_rel,
                                              memory_order_relaxed))
      return;
  }
}

double bw__tb_tokens(const bw__token_bucket_t *tb, uint64_t now_ns) {
  uint64_t tat = atomic_load_explicit(&((bw__token_bucket_t *)tb)->tat_ns, memory_order_relaxed);
  if (tat <= now_ns) return (double)tb->burst;
  double ahead = (double)(tat - now_ns); /* ns of tokens already spent */
  return ((double)tb->tau_ns - ahead) / (double)tb->interval_ns;
}

/* ---- in-memory store ----------------------------------------------------- */

typedef struct mem_store {
  bw__limiter_store_t base;
  bw__token_bucket_t tb;
} mem_store_t;

static int mem_acquire(bw__limiter_store_t *s, uint64_t n, uint64_t now_ns, uint64_t max_wait_ns,
                       uint64_t *wait_ns) {
  return bw__tb_acquire(&((mem_store_t *)s)->tb, n, now_ns, max_wait_ns, wait_ns);
}
static void mem_refund(bw__limiter_store_t *s, uint64_t n, uint64_t now_ns) {
  bw__tb_refund(&((mem_store_t *)s)->tb, n, now_ns);
}
static double mem_tokens(bw__limiter_store_t *s, uint64_t now_ns) {
  return bw__tb_tokens(&((mem_store_t *)s)->tb, now_ns);
}
static void mem_destroy(bw__limiter_store_t *s) { bw__free(s); }

static const bw__limiter_store_vt_t mem_vt = {mem_acquire, mem_refund, mem_tokens, mem_destroy};

int bw__limiter_store_mem_new(double rate_per_sec, uint64_t burst, bw__limiter_store_t **out) {
  mem_store_t *m = bw__malloc(sizeof *m);
  if (!m) return -12;
  int rc = bw__tb_init(&m->tb, rate_per_sec, burst);
  if (rc) {
    bw__free(m);
    return rc;
  }
  m->base.vt = &mem_vt;
  *out = &m->base;
  return 0;
}
