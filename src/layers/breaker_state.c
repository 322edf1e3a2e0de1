/* Circuit breaker state machine: see breaker_state.h for the contract.
 *
 * Design notes.
 * - `word` packs the state and a generation that bw__breaker_set_state bumps
 *   on every change. A ticket is the word seen at admission, so record()
 *   knows both the state the call was admitted in (a probe or not) and
 *   whether that period is still current. Stale tickets update only the
 *   global counters, never a window or the probe accounting.
 * - Half-open admits exactly cfg.half_open_calls probes per half-open
 *   period: slots = probes running + probes finished, checked and bumped
 *   under the lock, so no stampede. A probe reported IGNORED gives its slot
 *   back. The period ends when every slot has reported (close or re-open),
 *   as soon as the failures already decide it (re-open), or — so a lost
 *   probe cannot wedge it — when all slots are taken and
 *   half_open_max_wait has passed (re-open, seen by the next acquire or
 *   state query). Those three exits are the only ways out besides manual
 *   force, and each is a set_state call, so the breaker is never stuck.
 *   The probes of a period that ended by its max wait were slow, not
 *   necessarily lost: their answers still count, as answers of the next
 *   half-open period (expired_gen, late_*), which then lets in only the
 *   slots they left. Otherwise probes slower than the max wait (the open
 *   duration by default) would re-open a healthy breaker for good.
 * - OPEN -> HALF_OPEN is lazy: the first acquire (or state query) after
 *   open_until makes it. No timer is needed.
 * - Growth: each re-open from half-open multiplies the open duration by
 *   cfg.multiplier (capped); closing resets the exponent.
 * - Lock: b->lock is a leaf lock; nothing outside this file is called with
 *   it held. The CLOSED fast path in acquire takes no lock. */
#include "layers/breaker_state.h"

#include <math.h>
#include <string.h>

#include "core/alloc.h"

#define ST_MASK ((uint64_t)BW__BRK_ST_MASK)
#define NS_PER_MS UINT64_C(1000000)

static uint64_t ms_to_ns(uint64_t ms) {
  return ms >= UINT64_MAX / NS_PER_MS ? UINT64_MAX : ms * NS_PER_MS;
}

const char *bw_breaker_state_name(bw_breaker_state_t s) {
  switch (s) {
    case BW_BREAKER_CLOSED: return "closed";
    case BW_BREAKER_OPEN: return "open";
    case BW_BREAKER_HALF_OPEN: return "half_open";
    case BW_BREAKER_FORCED_OPEN: return "forced_open";
    case BW_BREAKER_FORCED_CLOSED: return "forced_closed";
    case BW_BREAKER_DISABLED: return "disabled";
  }
  return "unknown";
}

void bw_circuit_breaker_opts_init(bw_circuit_breaker_opts_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->name = "breaker";
  o->window = BW_BREAKER_WINDOW_COUNT;
  o->window_size = 100;
  o->window_ms = 30000;
  o->window_buckets = 10;
  o->consecutive_failures = 5;
  o->minimum_calls = 100;
  o->failure_rate_threshold = 50;
  o->slow_call_rate_threshold = 100;
  o->slow_call_duration_ms = 60000;
  o->open_duration_ms = 60000;
  o->open_duration_multiplier = 1;
  o->max_open_duration_ms = 0;
  o->half_open_calls = 10;
  o->half_open_max_wait_ms = 0;
}

int bw__breaker_cfg_from_opts(bw__breaker_cfg_t *c, const bw_circuit_breaker_opts_t *opts) {
  bw_circuit_breaker_opts_t d;
  if (!opts) {
    bw_circuit_breaker_opts_init(&d);
    opts = &d;
  }
  memset(c, 0, sizeof *c);
  c->window = opts->window;
  switch (opts->window) {
    case BW_BREAKER_WINDOW_COUNT:
      if (opts->window_size < 1 || opts->window_size > (1u << 24)) return BW__BRK_EINVAL;
      break;
    case BW_BREAKER_WINDOW_TIME:
      if (opts->window_ms < 1 || opts->window_buckets < 1 || opts->window_buckets > 4096 ||
          opts->window_buckets > opts->window_ms || opts->window_ms > UINT64_MAX / NS_PER_MS)
        return BW__BRK_EINVAL;
      break;
    case BW_BREAKER_WINDOW_CONSECUTIVE:
      if (opts->consecutive_failures < 1) return BW__BRK_EINVAL;
      break;
    default:
      return BW__BRK_EINVAL;
  }
  if (!(opts->failure_rate_threshold > 0 && opts->failure_rate_threshold <= 100))
    return BW__BRK_EINVAL;
  if (!(opts->slow_call_rate_threshold > 0) || isnan(opts->slow_call_rate_threshold))
    return BW__BRK_EINVAL;
  if (!(opts->open_duration_multiplier >= 1) || !isfinite(opts->open_duration_multiplier))
    return BW__BRK_EINVAL;
  if (opts->half_open_calls < 1) return BW__BRK_EINVAL;
  c->window_size = opts->window_size;
  c->buckets = opts->window_buckets;
  c->window_ns = ms_to_ns(opts->window_ms);
  c->bucket_ns = c->window_ns / (c->buckets ? c->buckets : 1);
  c->consecutive = opts->consecutive_failures;
  c->min_calls = opts->minimum_calls ? opts->minimum_calls : 1;
  if (c->window == BW_BREAKER_WINDOW_COUNT && c->min_calls > c->window_size)
    c->min_calls = c->window_size;
  c->failure_rate = opts->failure_rate_threshold;
  c->slow_rate = opts->slow_call_rate_threshold;
  c->slow_ns = opts->slow_call_duration_ms ? ms_to_ns(opts->slow_call_duration_ms) : 0;
  c->open_ns = ms_to_ns(opts->open_duration_ms);
  c->multiplier = opts->open_duration_multiplier;
  c->max_open_ns = opts->max_open_duration_ms ? ms_to_ns(opts->max_open_duration_ms) : UINT64_MAX;
  c->half_open_calls = opts->half_open_calls;
  c->half_open_max_wait_ns = ms_to_ns(opts->half_open_max_wait_ms); /* 0: open duration */
  return BW__BRK_OK;
}

static void reset_window(bw__breaker_t *b) {
  if (b->ring) memset(b->ring, 0, b->cfg.window_size);
  if (b->bkt) memset(b->bkt, 0, sizeof *b->bkt * b->cfg.buckets);
  b->ring_idx = b->ring_filled = 0;
  b->last_epoch = 0;
  b->expired_gen = BW__BRK_NO_GEN;
  b->w_calls = b->w_fails = b->w_slow = 0;
  b->consec = 0;
  atomic_store_explicit(&b->quiet, b->cfg.window == BW_BREAKER_WINDOW_CONSECUTIVE,
                        memory_order_relaxed);
}

/* Lock held: recompute the quiet hint after the window changed. */
static void update_quiet(bw__breaker_t *b) {
  bool q = false;
  if (b->cfg.window == BW_BREAKER_WINDOW_CONSECUTIVE) q = b->consec == 0;
  else if (b->cfg.window == BW_BREAKER_WINDOW_COUNT)
    q = b->ring_filled == b->cfg.window_size && b->w_fails == 0 && b->w_slow == 0;
  atomic_store_explicit(&b->quiet, q, memory_order_relaxed);
}

int bw__breaker_init(bw__breaker_t *b, const bw__breaker_cfg_t *cfg) {
  memset(b, 0, sizeof *b);
  b->cfg = *cfg;
  if (cfg->window == BW_BREAKER_WINDOW_COUNT) {
    b->ring = bw__calloc(cfg->window_size, 1);
    if (!b->ring) return -12;
  } else if (cfg->window == BW_BREAKER_WINDOW_TIME) {
    b->bkt = bw__calloc(cfg->buckets, sizeof *b->bkt);
    if (!b->bkt) return -12;
  }
  if (pthread_mutex_init(&b->lock, NULL) != 0) {
    bw__free(b->ring);
    bw__free(b->bkt);
    return -12;
  }
  atomic_init(&b->word, (uint64_t)BW_BREAKER_CLOSED);
  atomic_init(&b->quiet, cfg->window == BW_BREAKER_WINDOW_CONSECUTIVE);
  b->cur_open_ns = cfg->open_ns;
  return BW__BRK_OK;
}

void bw__breaker_destroy(bw__breaker_t *b) {
  if (!b) return;
  pthread_mutex_destroy(&b->lock);
  bw__free(b->ring);
  bw__free(b->bkt);
  b->ring = NULL;
  b->bkt = NULL;
}

/* open_ns * multiplier^reopens, capped: constant time (a loop of `reopens`
 * steps under the lock grew with every re-open of a long outage). */
static uint64_t grown_open_ns(const bw__breaker_cfg_t *c, uint32_t reopens) {
  if (c->open_ns == 0 || c->multiplier == 1 || reopens == 0)
    return c->open_ns < c->max_open_ns ? c->open_ns : c->max_open_ns;
  double d = (double)c->open_ns * pow(c->multiplier, (double)reopens); /* inf at worst */
  if (d >= (double)c->max_open_ns) return c->max_open_ns;
  if (d >= 1.8e19) return UINT64_MAX;
  return (uint64_t)d;
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

void bw__breaker_set_state(bw__breaker_t *b, bw_breaker_state_t to, uint64_t now_ns,
                           bw__breaker_change_t *chg) {
  uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
  bw_breaker_state_t from = (bw_breaker_state_t)(w & ST_MASK);
  switch (to) {
    case BW_BREAKER_CLOSED:
    case BW_BREAKER_FORCED_CLOSED:
      reset_window(b);
      b->reopens = 0;
      break;
    case BW_BREAKER_OPEN:
      b->expired_gen = BW__BRK_NO_GEN; /* (tick sets it after an expiry) */
      b->late_done = b->late_fails = b->late_slow = 0;
      if (from == BW_BREAKER_HALF_OPEN) b->reopens += b->reopens < UINT32_MAX;
      else b->reopens = 0;
      b->cur_open_ns = grown_open_ns(&b->cfg, b->reopens);
      atomic_store_explicit(&b->open_until_ns, sat_add(now_ns, b->cur_open_ns),
                            memory_order_relaxed);
      reset_window(b);
      break;
    case BW_BREAKER_HALF_OPEN:
      b->probes_out = 0;
      b->probes_done = b->late_done;
      b->probe_fails = b->late_fails;
      b->probe_slow = b->late_slow;
      b->late_done = b->late_fails = b->late_slow = 0;
      b->half_open_since_ns = now_ns;
      break;
    case BW_BREAKER_FORCED_OPEN:
    case BW_BREAKER_DISABLED:
      break;
  }
  uint64_t nw = (((w >> 3) + 1) << 3) | (uint64_t)to;
  /* release: pairs with the acquire load in bw__breaker_acquire's fast path,
   * so a call admitted under the new word sees the reset window. */
  atomic_store_explicit(&b->word, nw, memory_order_release);
  uint64_t seq = atomic_fetch_add_explicit(&b->seq, 1, memory_order_relaxed) + 1;
  if (chg && chg->n < 2) {
    chg->t[chg->n].from = from;
    chg->t[chg->n].to = to;
    chg->t[chg->n].seq = seq;
    chg->t[chg->n].at_ns = now_ns;
    chg->n++;
  }
}

/* ---- windows (lock held) ------------------------------------------------ */

static void time_advance(bw__breaker_t *b, uint64_t now_ns) {
  uint64_t epoch = now_ns / b->cfg.bucket_ns;
  if (epoch <= b->last_epoch) return;
  uint64_t steps = epoch - b->last_epoch;
  if (steps > b->cfg.buckets) steps = b->cfg.buckets;
  for (uint64_t i = 1; i <= steps; i++) {
    bw__bucket_t *k = &b->bkt[(b->last_epoch + i) % b->cfg.buckets];
    b->w_calls -= k->calls;
    b->w_fails -= k->fails;
    b->w_slow -= k->slow;
    k->calls = k->fails = k->slow = 0;
  }
  b->last_epoch = epoch;
}

static bool rate_reached(uint32_t n, uint32_t calls, double pct) {
  return pct <= 100 && calls > 0 && (double)n * 100.0 >= pct * (double)calls;
}

/* Add one outcome to the closed window; true when it should trip. */
static bool window_add(bw__breaker_t *b, bool fail, bool slow, uint64_t now_ns) {
  const bw__breaker_cfg_t *c = &b->cfg;
  switch (c->window) {
    case BW_BREAKER_WINDOW_CONSECUTIVE:
      b->consec = fail ? b->consec + 1 : 0;
      update_quiet(b);
      return b->consec >= c->consecutive;
    case BW_BREAKER_WINDOW_COUNT: {
      uint8_t *slot = &b->ring[b->ring_idx];
      if (b->ring_filled == c->window_size) {
        b->w_fails -= (*slot & 1u);
        b->w_slow -= (*slot >> 1) & 1u;
      } else {
        b->ring_filled++;
      }
      *slot = (uint8_t)((fail ? 1u : 0u) | (slow ? 2u : 0u));
      b->w_fails += fail;
      b->w_slow += slow;
      b->w_calls = b->ring_filled;
      if (++b->ring_idx == c->window_size) b->ring_idx = 0;
      break;
    }
    case BW_BREAKER_WINDOW_TIME: {
      time_advance(b, now_ns);
      bw__bucket_t *k = &b->bkt[b->last_epoch % c->buckets];
      k->calls++;
      k->fails += fail;
      k->slow += slow;
      b->w_calls++;
      b->w_fails += fail;
      b->w_slow += slow;
      break;
    }
  }
  update_quiet(b);
  if (b->w_calls < c->min_calls) return false;
  return rate_reached(b->w_fails, b->w_calls, c->failure_rate) ||
         rate_reached(b->w_slow, b->w_calls, c->slow_rate);
}

static uint64_t half_open_max_wait(const bw__breaker_t *b) {
  return b->cfg.half_open_max_wait_ns ? b->cfg.half_open_max_wait_ns : b->cur_open_ns;
}

/* ---- operations ------------------------------------------------------------ */

static bool passes(uint64_t w) {
  bw_breaker_state_t s = (bw_breaker_state_t)(w & ST_MASK);
  return s == BW_BREAKER_CLOSED || s == BW_BREAKER_FORCED_CLOSED || s == BW_BREAKER_DISABLED;
}

/* Half-open: close when every slot answered, re-open as soon as the
 * failures (or slow calls) decide it. Lock held. */
static void probes_decide(bw__breaker_t *b, uint64_t now_ns, bw__breaker_change_t *chg) {
  const bw__breaker_cfg_t *c = &b->cfg;
  bool reopen;
  if (c->window == BW_BREAKER_WINDOW_CONSECUTIVE)
    reopen = b->probe_fails > 0;
  else /* over all N slots the rate can only stay at or above this */
    reopen = rate_reached(b->probe_fails, c->half_open_calls, c->failure_rate) ||
             rate_reached(b->probe_slow, c->half_open_calls, c->slow_rate);
  if (reopen) bw__breaker_set_state(b, BW_BREAKER_OPEN, now_ns, chg);
  else if (b->probes_done >= c->half_open_calls)
    bw__breaker_set_state(b, BW_BREAKER_CLOSED, now_ns, chg);
}

/* Lazy transitions that time alone causes. Lock held. */
static void tick(bw__breaker_t *b, uint64_t now_ns, bw__breaker_change_t *chg) {
  uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
  bw_breaker_state_t s = (bw_breaker_state_t)(w & ST_MASK);
  if (s == BW_BREAKER_OPEN &&
      now_ns >= atomic_load_explicit(&b->open_until_ns, memory_order_relaxed)) {
    bw__breaker_set_state(b, BW_BREAKER_HALF_OPEN, now_ns, chg);
    if (b->probes_done) probes_decide(b, now_ns, chg); /* late answers may decide it */
  } else if (s == BW_BREAKER_HALF_OPEN &&
             b->probes_out + b->probes_done >= b->cfg.half_open_calls &&
             now_ns >= b->half_open_since_ns &&
             now_ns - b->half_open_since_ns >= half_open_max_wait(b)) {
    bw__breaker_set_state(b, BW_BREAKER_OPEN, now_ns, chg);
    b->expired_gen = w >> 3;
  }
}

int bw__breaker_acquire(bw__breaker_t *b, uint64_t now_ns, uint64_t *ticket,
                        uint64_t *retry_after_ns, bw__breaker_change_t *chg) {
  uint64_t dummy;
  if (!retry_after_ns) retry_after_ns = &dummy;
  *retry_after_ns = 0;
  /* acquire: pairs with the release store in bw__breaker_set_state. */
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  if (passes(w)) {
    *ticket = w;
    return BW__BRK_OK;
  }
  int rc = BW__BRK_REJECTED;
  pthread_mutex_lock(&b->lock);
  tick(b, now_ns, chg);
  w = atomic_load_explicit(&b->word, memory_order_relaxed);
  switch ((bw_breaker_state_t)(w & ST_MASK)) {
    case BW_BREAKER_CLOSED:
    case BW_BREAKER_FORCED_CLOSED:
    case BW_BREAKER_DISABLED:
      rc = BW__BRK_OK;
      break;
    case BW_BREAKER_OPEN: {
      uint64_t until = atomic_load_explicit(&b->open_until_ns, memory_order_relaxed);
      *retry_after_ns = until > now_ns ? until - now_ns : 0;
      break;
    }
    case BW_BREAKER_HALF_OPEN:
      if (b->probes_out + b->probes_done < b->cfg.half_open_calls) {
        b->probes_out++;
        rc = BW__BRK_OK;
      } else {
        rc = BW__BRK_REJECTED_HALF_OPEN;
      }
      break;
    case BW_BREAKER_FORCED_OPEN:
      rc = BW__BRK_REJECTED_FORCED;
      break;
  }
  pthread_mutex_unlock(&b->lock);
  if (rc == BW__BRK_OK) {
    *ticket = w;
  } else {
    atomic_fetch_add_explicit(&b->n_rejected, 1, memory_order_relaxed);
  }
  return rc;
}

/* The answer of a probe from the expired half-open period expired_gen:
 * while the breaker is open after that period, kept for the next one; in
 * that next period (generation expired_gen + 2), counted there. Lock held. */
static void late_probe(bw__breaker_t *b, uint64_t w, bool fail, bool slow, uint64_t now_ns,
                       bw__breaker_change_t *chg) {
  bw_breaker_state_t s = (bw_breaker_state_t)(w & ST_MASK);
  if (s == BW_BREAKER_OPEN && (w >> 3) == b->expired_gen + 1) {
    b->late_done++;
    b->late_fails += fail;
    b->late_slow += slow;
  } else if (s == BW_BREAKER_HALF_OPEN && (w >> 3) == b->expired_gen + 2) {
    b->probes_done++;
    b->probe_fails += fail;
    b->probe_slow += slow;
    probes_decide(b, now_ns, chg);
  }
}

void bw__breaker_record(bw__breaker_t *b, uint64_t ticket, bw__outcome_t outcome,
                        uint64_t duration_ns, uint64_t now_ns, bw__breaker_change_t *chg) {
  bw_breaker_state_t ts = (bw_breaker_state_t)(ticket & ST_MASK);
  if (ts == BW_BREAKER_DISABLED) return;
  /* healthy steady state (breaker_state.h) */
  if (outcome == BW__OUTCOME_SUCCESS && bw__breaker_try_record_success(b, ticket, duration_ns))
    return;
  bool fail = outcome == BW__OUTCOME_FAILURE;
  bool slow = outcome != BW__OUTCOME_IGNORED && b->cfg.slow_ns && duration_ns > b->cfg.slow_ns;
  if (outcome == BW__OUTCOME_IGNORED) atomic_fetch_add_explicit(&b->n_ignored, 1, memory_order_relaxed);
  /* An ignored outcome outside half-open changes nothing: skip the lock. */
  if (ts != BW_BREAKER_HALF_OPEN && outcome == BW__OUTCOME_IGNORED) return;
  pthread_mutex_lock(&b->lock);
  b->c_permitted += outcome != BW__OUTCOME_IGNORED;
  b->c_success += outcome == BW__OUTCOME_SUCCESS;
  b->c_failure += fail;
  b->c_slow += slow;
  uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
  if ((w >> 3) != (ticket >> 3)) {
    /* another period: stale, unless a probe of the half-open period that
     * ended by its max wait answers (see the design notes) */
    if (ts == BW_BREAKER_HALF_OPEN && (ticket >> 3) == b->expired_gen &&
        outcome != BW__OUTCOME_IGNORED)
      late_probe(b, w, fail, slow, now_ns, chg);
    goto out;
  }
  switch (ts) {
    case BW_BREAKER_CLOSED:
    case BW_BREAKER_FORCED_CLOSED:
      if (outcome != BW__OUTCOME_IGNORED && window_add(b, fail, slow, now_ns) &&
          ts == BW_BREAKER_CLOSED)
        bw__breaker_set_state(b, BW_BREAKER_OPEN, now_ns, chg);
      break;
    case BW_BREAKER_HALF_OPEN: {
      if (b->probes_out > 0) b->probes_out--;
      if (outcome == BW__OUTCOME_IGNORED) break; /* slot given back */
      b->probes_done++;
      b->probe_fails += fail;
      b->probe_slow += slow;
      probes_decide(b, now_ns, chg);
      break;
    }
    case BW_BREAKER_OPEN:
    case BW_BREAKER_FORCED_OPEN:
    case BW_BREAKER_DISABLED:
      break; /* never admitted in these states */
  }
out:
  pthread_mutex_unlock(&b->lock);
}

bw_breaker_state_t bw__breaker_state(bw__breaker_t *b, uint64_t now_ns, bw__breaker_change_t *chg) {
  uint64_t w = atomic_load_explicit(&b->word, memory_order_acquire);
  if ((w & ST_MASK) == BW_BREAKER_OPEN || (w & ST_MASK) == BW_BREAKER_HALF_OPEN) {
    pthread_mutex_lock(&b->lock);
    tick(b, now_ns, chg);
    w = atomic_load_explicit(&b->word, memory_order_relaxed);
    pthread_mutex_unlock(&b->lock);
  }
  return (bw_breaker_state_t)(w & ST_MASK);
}

int bw__breaker_force(bw__breaker_t *b, bw_breaker_state_t to, uint64_t now_ns,
                      bw__breaker_change_t *chg) {
  switch (to) {
    case BW_BREAKER_CLOSED:
    case BW_BREAKER_OPEN:
    case BW_BREAKER_FORCED_OPEN:
    case BW_BREAKER_FORCED_CLOSED:
    case BW_BREAKER_DISABLED:
      break;
    case BW_BREAKER_HALF_OPEN:
    default:
      return BW__BRK_EINVAL;
  }
  pthread_mutex_lock(&b->lock);
  bw__breaker_set_state(b, to, now_ns, chg);
  if (to == BW_BREAKER_OPEN) { /* a manual trip starts the growth from scratch */
    b->reopens = 0;
    b->cur_open_ns = grown_open_ns(&b->cfg, 0);
    atomic_store_explicit(&b->open_until_ns, sat_add(now_ns, b->cur_open_ns),
                          memory_order_relaxed);
  }
  pthread_mutex_unlock(&b->lock);
  return BW__BRK_OK;
}

void bw__breaker_stats(bw__breaker_t *b, uint64_t now_ns, bw_breaker_stats_t *o) {
  memset(o, 0, sizeof *o);
  pthread_mutex_lock(&b->lock);
  if (b->cfg.window == BW_BREAKER_WINDOW_TIME) time_advance(b, now_ns);
  uint64_t w = atomic_load_explicit(&b->word, memory_order_relaxed);
  o->state = (bw_breaker_state_t)(w & ST_MASK);
  o->window_calls = b->w_calls;
  o->failure_rate = b->w_calls ? 100.0 * b->w_fails / b->w_calls : 0;
  o->slow_call_rate = b->w_calls ? 100.0 * b->w_slow / b->w_calls : 0;
  o->consecutive_failures = b->consec;
  if (o->state == BW_BREAKER_OPEN) {
    uint64_t until = atomic_load_explicit(&b->open_until_ns, memory_order_relaxed);
    o->open_remaining_ms = until > now_ns ? (until - now_ns + NS_PER_MS - 1) / NS_PER_MS : 0;
  }
  if (o->state == BW_BREAKER_HALF_OPEN) o->half_open_in_flight = b->probes_out;
  o->calls_permitted = b->c_permitted;
  o->successes = b->c_success;
  o->failures = b->c_failure;
  o->slow_calls = b->c_slow;
  pthread_mutex_unlock(&b->lock);
  uint64_t q = bw__counter_sum(&b->n_quiet);
  o->calls_permitted += q;
  o->successes += q;
  o->calls_rejected = atomic_load_explicit(&b->n_rejected, memory_order_relaxed);
  o->ignored = atomic_load_explicit(&b->n_ignored, memory_order_relaxed);
  o->transitions = atomic_load_explicit(&b->seq, memory_order_relaxed);
}

/* ---- in-memory store -------------------------------------------------------- */

typedef struct mem_store {
  bw__breaker_store_t base;
  bw__breaker_t b;
} mem_store_t;

#define MB(s) (&((mem_store_t *)(s))->b)

static int m_acquire(bw__breaker_store_t *s, uint64_t now, uint64_t *ticket, uint64_t *ra,
                     bw__breaker_change_t *chg) {
  return bw__breaker_acquire(MB(s), now, ticket, ra, chg);
}
static void m_record(bw__breaker_store_t *s, uint64_t ticket, bw__outcome_t o, uint64_t dur,
                     uint64_t now, bw__breaker_change_t *chg) {
  bw__breaker_record(MB(s), ticket, o, dur, now, chg);
}
static bw_breaker_state_t m_state(bw__breaker_store_t *s, uint64_t now, bw__breaker_change_t *chg) {
  return bw__breaker_state(MB(s), now, chg);
}
static int m_force(bw__breaker_store_t *s, bw_breaker_state_t to, uint64_t now,
                   bw__breaker_change_t *chg) {
  return bw__breaker_force(MB(s), to, now, chg);
}
static void m_stats(bw__breaker_store_t *s, uint64_t now, bw_breaker_stats_t *out) {
  bw__breaker_stats(MB(s), now, out);
}
static void m_destroy(bw__breaker_store_t *s) {
  bw__breaker_destroy(MB(s));
  bw__free(s);
}

static const bw__breaker_store_vt_t mem_vt = {m_acquire, m_record, m_state,
                                              m_force,   m_stats,  m_destroy};

int bw__breaker_store_mem_new(const bw__breaker_cfg_t *cfg, bw__breaker_store_t **out) {
  mem_store_t *m = bw__malloc(sizeof *m);
  if (!m) return -12;
  int rc = bw__breaker_init(&m->b, cfg);
  if (rc) {
    bw__free(m);
    return rc;
  }
  m->base.vt = &mem_vt;
  m->base.mem = &m->b;
  *out = &m->base;
  return 0;
}
