/* Circuit breaker decision core (internal): the state machine and its
 * windows, with explicit now_ns arguments and no runtime, so every rule is
 * tested on its own. The circuit breaker layer (circuit_breaker.c) and the
 * keyed variant (breaker_keyed.c) drive it through the store interface at
 * the bottom, so a Redis-backed store can replace it later.
 *
 * Calls: bw__breaker_acquire() before the call gives a ticket (or a
 * rejection); bw__breaker_record() with that ticket after it, exactly once
 * per admitted call. A ticket from an earlier state period (the breaker
 * changed state since) is ignored, so late results never skew a new window
 * nor eat a half-open probe slot.
 *
 * State changes are made by one function, bw__breaker_set_state(), which
 * appends each change to the caller's bw__breaker_change_t; the caller
 * reports them (events, metrics) after the core's lock is dropped.
 *
 * Threads: all functions are safe from any thread. In CLOSED (and the
 * forced-closed/disabled states) acquire is one atomic load; record takes a
 * small mutex (none when disabled). */
#ifndef BW_LAYERS_BREAKER_STATE_H
#define BW_LAYERS_BREAKER_STATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bulwark/circuit_breaker.h"
#include "core/counter.h"

#define BW__BRK_OK 0
#define BW__BRK_REJECTED (-1) /* open */
#define BW__BRK_EINVAL (-2)
#define BW__BRK_REJECTED_HALF_OPEN (-3) /* every probe slot taken */
#define BW__BRK_REJECTED_FORCED (-4)    /* forced open */

typedef enum bw__outcome {
  BW__OUTCOME_SUCCESS = 0,
  BW__OUTCOME_FAILURE = 1,
  BW__OUTCOME_IGNORED = 2 /* not counted (cancelled, or the predicate said so);
                             a half-open probe's slot is given back */
} bw__outcome_t;

/* Up to 2 state changes made by one operation (e.g. open -> half-open on
 * acquire). seq orders changes across threads. */
typedef struct bw__breaker_change {
  int n;
  struct {
    bw_breaker_state_t from, to;
    uint64_t seq, at_ns;
  } t[2];
} bw__breaker_change_t;

/* opts converted to ns and fractions. */
typedef struct bw__breaker_cfg {
  bw_breaker_window_t window;
  uint32_t window_size, buckets, consecutive, min_calls, half_open_calls;
  uint64_t window_ns, bucket_ns, slow_ns, open_ns, max_open_ns, half_open_max_wait_ns;
  double failure_rate, slow_rate; /* fractions 0..1; slow_rate > 1 disables */
  double multiplier;
} bw__breaker_cfg_t;

typedef struct bw__bucket {
  uint64_t epoch;
  uint32_t calls, fails, slow;
} bw__bucket_t;

#define BW__BRK_ST_MASK 7u
#define BW__BRK_NO_GEN UINT64_MAX

typedef struct bw__breaker {
  /* state (low 3 bits, BW__BRK_ST_MASK) | generation << 3. Written only by set_state under
   * lock with release; read by the lock-free acquire with acquire. */
  _Atomic uint64_t word;
  pthread_mutex_t lock;
  bw__breaker_cfg_t cfg;
  /* closed window (lock) */
  uint8_t *ring; /* COUNT: 1 = failure, 2 = slow, per slot */
  uint32_t ring_idx, ring_filled;
  bw__bucket_t *bkt; /* TIME */
  uint64_t last_epoch;
  uint32_t w_calls, w_fails, w_slow; /* COUNT and TIME totals */
  uint32_t consec;                   /* CONSECUTIVE */
  /* open (lock; open_until also read racily for hints) */
  _Atomic uint64_t open_until_ns;
  uint64_t cur_open_ns;
  uint32_t reopens; /* re-opens since last closed: growth exponent */
  /* half-open (lock) */
  uint32_t probes_out, probes_done, probe_fails, probe_slow;
  uint64_t half_open_since_ns;
  /* The generation of a half-open period that ended by its max wait
   * (BW__BRK_NO_GEN: none): its probes' late answers still count, as
   * answers of the next half-open period (late_*, kept while open). */
  uint64_t expired_gen;
  uint32_t late_done, late_fails, late_slow;
  /* statistics: counters of finished calls under the lock (the record path
   * takes it anyway); the rest relaxed atomics */
  uint64_t c_permitted, c_success, c_failure, c_slow;
  _Atomic uint64_t seq, n_rejected, n_ignored;
  /* "quiet": recording one more fast success in the closed window would
   * change nothing (COUNT: ring full of fast successes; CONSECUTIVE: no
   * streak), so record() skips the lock and only counts it in n_quiet.
   * Written under the lock, read without it (a hint: relaxed). */
  _Atomic bool quiet;
  bw__counter_t n_quiet; /* sharded: every healthy call adds to it */
} bw__breaker_t;

/* opts may be NULL (defaults). Returns 0, BW__BRK_EINVAL, or -12 (no memory). */
int bw__breaker_cfg_from_opts(bw__breaker_cfg_t *cfg, const bw_circuit_breaker_opts_t *opts);
int bw__breaker_init(bw__breaker_t *b, const bw__breaker_cfg_t *cfg);
void bw__breaker_destroy(bw__breaker_t *b);

/* Before a call. BW__BRK_OK: *ticket must go to bw__breaker_record.
 * BW__BRK_REJECTED (open): *retry_after_ns = time until probes are let in;
 * BW__BRK_REJECTED_HALF_OPEN / _FORCED: *retry_after_ns = 0. chg may be NULL. */
int bw__breaker_acquire(bw__breaker_t *b, uint64_t now_ns, uint64_t *ticket,
                        uint64_t *retry_after_ns, bw__breaker_change_t *chg);
/* After an admitted call: its outcome and how long it took. */
void bw__breaker_record(bw__breaker_t *b, uint64_t ticket, bw__outcome_t outcome,
                        uint64_t duration_ns, uint64_t now_ns, bw__breaker_change_t *chg);
/* Current state (an OPEN breaker whose time is up turns HALF_OPEN here). */
bw_breaker_state_t bw__breaker_state(bw__breaker_t *b, uint64_t now_ns, bw__breaker_change_t *chg);
/* Manual: CLOSED (reset), OPEN (trip now), FORCED_OPEN, FORCED_CLOSED,
 * DISABLED. HALF_OPEN is refused (BW__BRK_EINVAL). */
int bw__breaker_force(bw__breaker_t *b, bw_breaker_state_t to, uint64_t now_ns,
                      bw__breaker_change_t *chg);
void bw__breaker_stats(bw__breaker_t *b, uint64_t now_ns, bw_breaker_stats_t *out);

/* The one function that changes state. Lock held. */
void bw__breaker_set_state(bw__breaker_t *b, bw_breaker_state_t to, uint64_t now_ns,
                           bw__breaker_change_t *chg);

/* ---- Store interface ---------------------------------------------------- */
typedef struct bw__breaker_store bw__breaker_store_t;
typedef struct bw__breaker_store_vt {
  int (*acquire)(bw__breaker_store_t *s, uint64_t now_ns, uint64_t *ticket,
                 uint64_t *retry_after_ns, bw__breaker_change_t *chg);
  void (*record)(bw__breaker_store_t *s, uint64_t ticket, bw__outcome_t outcome,
                 uint64_t duration_ns, uint64_t now_ns, bw__breaker_change_t *chg);
  bw_breaker_state_t (*state)(bw__breaker_store_t *s, uint64_t now_ns, bw__breaker_change_t *chg);
  int (*force)(bw__breaker_store_t *s, bw_breaker_state_t to, uint64_t now_ns,
               bw__breaker_change_t *chg);
  void (*stats)(bw__breaker_store_t *s, uint64_t now_ns, bw_breaker_stats_t *out);
  void (*destroy)(bw__breaker_store_t *s);
} bw__breaker_store_vt_t;
struct bw__breaker_store {
  const bw__breaker_store_vt_t *vt;
  /* The in-memory breaker behind this store, or NULL (another kind): the
   * layer takes the inline fast paths below on it instead of the vt. */
  bw__breaker_t *mem;
};

/* bw__breaker_acquire's lock-free case, inline: true (and *ticket set)
 * when the state admits every call by itself (closed, forced closed,
 * disabled); false: call bw__breaker_acquire. */
static inline bool bw__breaker_try_pass(bw__breaker_t *b, uint64_t *ticket) {
  /* acquire: pairs with the release store in bw__breaker_set_state. */
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  bw_breaker_state_t s = (bw_breaker_state_t)(w & BW__BRK_ST_MASK);
  if (s != BW_BREAKER_CLOSED && s != BW_BREAKER_FORCED_CLOSED && s != BW_BREAKER_DISABLED)
    return false;
  *ticket = w;
  return true;
}

/* bw__breaker_record's lock-free cases for a success, inline: true when
 * it is fully recorded (a disabled breaker, or a fast success into a quiet
 * closed window); false: call bw__breaker_record. */
static inline bool bw__breaker_try_record_success(bw__breaker_t *b, uint64_t ticket,
                                                  uint64_t duration_ns) {
  bw_breaker_state_t ts = (bw_breaker_state_t)(ticket & BW__BRK_ST_MASK);
  if (ts == BW_BREAKER_DISABLED) return true;
  /* A fast success into a quiet closed window changes nothing (a race
   * with a concurrent failure at worst drops this one success from the
   * window, which no window is exact about anyway): only count it. */
  bool slow = b->cfg.slow_ns && duration_ns > b->cfg.slow_ns;
  if (slow || (ts != BW_BREAKER_CLOSED && ts != BW_BREAKER_FORCED_CLOSED) ||
      !atomic_load_explicit(&b->quiet, memory_order_relaxed))
    return false;
  bw__counter_add(&b->n_quiet, 1);
  return true;
}

/* An in-memory store (a bw__breaker_t). Returns 0, BW__BRK_EINVAL or -12. */
int bw__breaker_store_mem_new(const bw__breaker_cfg_t *cfg, bw__breaker_store_t **out);

/* ---- Keyed breakers (breaker_keyed.c) --------------------------------------
 * A bounded map key -> in-memory breaker store with LRU eviction. An entry
 * is reference counted: an evicted breaker lives until its last call has
 * recorded. */
#define BW__KEY_MAX 128 /* bytes including the NUL */
typedef struct bw__keyed bw__keyed_t;
typedef struct bw__keyed_entry bw__keyed_entry_t;
int bw__keyed_new(bw__keyed_t **out, const bw__breaker_cfg_t *cfg, uint32_t max_keys);
void bw__keyed_free(bw__keyed_t *k);
/* The store for key (len bytes) with a reference in *entry, made when
 * missing if `create`; NULL if missing (or out of memory). Marks it most
 * recently used. */
bw__breaker_store_t *bw__keyed_get(bw__keyed_t *k, const char *key, size_t len, bool create,
                                   bw__keyed_entry_t **entry);
void bw__keyed_put(bw__keyed_t *k, bw__keyed_entry_t *e);
size_t bw__keyed_count(bw__keyed_t *k);

#endif
