/* Rate limit layer over the GCRA token bucket (token_bucket.c), reached
 * through the limiter store vtable.
 *
 * Waiting is a reservation: the bucket hands out future slots in arrival
 * order, so FIFO fairness needs no queue here; each waiting call sleeps on
 * its own timer (made once per pooled call) until its slot. A waiter that
 * is cancelled gives its tokens back (refund).
 *
 * Per call `phase` (CAS) decides between the timer and a cancel:
 *   WAITING -> RUNNING  the timer fired first: start the child;
 *   WAITING -> GAVE_UP  a cancel came first: refund the tokens.
 * The armed timer holds a call reference, dropped by its callback or by a
 * successful bw_timer_cancel(). If the cancel ran before the phase was
 * published, ops->call sees the call done after arming and cleans up.
 *
 * Deadline-aware: the wait budget is min(max_wait, time left before the
 * call's deadline), so a call whose token comes too late is rejected at
 * once with the hint instead of waiting for nothing. */
#include <stdio.h>
#include <string.h>

#include "bulwark/metrics.h"
#include "bulwark/rate_limit.h"
#include "core/alloc.h"
#include "core/metrics_internal.h"
#include "layers/permits.h"
#include "layers/service_internal.h"
#include "layers/token_bucket.h"

#define RL_MAGIC 0x726c696du /* "rlim" */
enum { PH_NONE = 0, PH_WAITING = 1, PH_RUNNING = 2, PH_GAVE_UP = 3 };

static const char KIND[] = "rate_limit";

typedef struct rl {
  uint32_t magic;
  bw_layer_t *layer;
  char *name;
  char *what; /* "rate limiter \"name\"" */
  bw__limiter_store_t *store;
  bw_rate_limit_mode_t mode;
  uint64_t max_wait_ns;
  uint32_t n;
  bool cheap_clock; /* the bucket holds >= 50 ms of tokens: coarse clock is fine */
  _Atomic(bw_runtime_t *) rt;
  bw__reject_cache_t rej;
  bw_metric_t *gauge;
} rl_t;

typedef struct rl_call {
  bw__child_slot_t slot;
  rl_t *rl;
  bw_call_t *call;
  bw__call_timer_t timer;
  _Atomic int phase;
} rl_call_t;

void bw_rate_limit_opts_init(bw_rate_limit_opts_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->name = "rate_limit";
  o->rate_per_sec = 0;
  o->burst = 0;
  o->mode = BW_RATE_LIMIT_WAIT;
  o->max_wait_ms = 5000;
  o->tokens_per_call = 1;
}

static bool phase_cas(rl_call_t *st, int from, int to) {
  /* seq_cst: the timer and a cancel decide here. */
  return atomic_compare_exchange_strong(&st->phase, &from, to);
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  (void)err;
  /* st as arg, not bw_call_state(call): an outer retry may have resumed
   * the call at its own depth meanwhile (its state is there then) */
  rl_call_t *st = arg;
  bw_call_t *call = st->call;
  bw__child_slot_clear(&st->slot);
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
}

static void on_timer(bw_timer_t *t, void *arg) {
  (void)t;
  rl_call_t *st = arg;
  bw_call_t *call = st->call;
  if (phase_cas(st, PH_WAITING, PH_RUNNING)) (void)bw__child_start(call, &st->slot, on_child, st);
  bw_call_unref(call); /* the timer's reference */
}

static void give_up_waiting(rl_call_t *st, bw_call_t *call) {
  if (!phase_cas(st, PH_WAITING, PH_GAVE_UP)) return;
  rl_t *rl = st->rl;
  uint64_t now = rl->cheap_clock ? bw__call_now_cheap_ns(call) : bw__call_now_ns(call);
  rl->store->vt->refund(rl->store, rl->n, now); /* same clock as the acquire */
  if (bw_timer_cancel(st->timer.t)) bw_call_unref(call);
}

static void rl_call(bw_service_t *svc, bw_call_t *call) {
  rl_t *rl = bw_service_impl(svc);
  rl_call_t *st = bw_call_state(call);
  bw_runtime_t *rt = bw_call_runtime(call);
  st->rl = rl;
  st->call = call;
  /* st->slot is not reset here: ops->cancel may read it concurrently (the
   * contract); state_init zeroes it and on_child empties it for every child
   * published in it before this object is reused. */
  /* Relaxed: ops->cancel and the timer act only on PH_WAITING, which this
   * block never holds between calls (a wait ends by the timer, a give-up
   * or a cancel), so they do nothing either way. */
  atomic_store_explicit(&st->phase, PH_NONE, memory_order_relaxed);
  if (atomic_load_explicit(&rl->rt, memory_order_relaxed) != rt)
    atomic_store_explicit(&rl->rt, rt, memory_order_release); /* pairs with clock_rt() */
  uint64_t now = rl->cheap_clock ? bw__call_now_cheap_ns(call) : bw_runtime_now_ns(rt);
  uint64_t budget = rl->mode == BW_RATE_LIMIT_WAIT ? rl->max_wait_ns : 0;
  int64_t left = bw_call_remaining_ns(call);
  if (left <= 0) budget = 0;
  else if ((uint64_t)left < budget) budget = (uint64_t)left;
  uint64_t wait = 0;
  int rc = rl->store->vt->acquire(rl->store, rl->n, now, budget, &wait);
  if (rc != 0) {
    /* `now` may be stale: this thread can have been preempted since it was
     * read (or it is the start chain's shared reading) while others moved
     * the bucket on with fresher ones, and a stale reading only errs
     * towards "not yet". Decide once more on a fresh one before rejecting
     * (the failed acquire took nothing). */
    uint64_t fresh = rl->cheap_clock ? bw__call_now_cheap_read(call) : bw_runtime_now_ns(rt);
    if (fresh > now) {
      now = fresh;
      rc = rl->store->vt->acquire(rl->store, rl->n, now, budget, &wait);
    }
  }
  if (rc != 0) {
    bw_error_t *e = bw__reject_error(&rl->rej, BW_ERR_RATE_LIMITED, rl->what, wait);
    bw_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.type = BW_EVENT_REJECTED;
    ev.error = e;
    ev.delay_ns = wait;
    ev.reason = "rate_limited";
    bw_layer_emit(rl->layer, call, &ev);
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  if (wait == 0) {
    /* forwarded: nothing to do afterwards (no finish hook) */
    if (bw__call_forward(call) == BW__FWD_NO) (void)bw__child_start(call, &st->slot, on_child, st);
    return;
  }
  if (!bw__call_timer(&st->timer, rt, on_timer, st)) {
    rl->store->vt->refund(rl->store, rl->n, now);
    bw_call_complete(call, NULL, NULL, bw_error_static(BW_ERR_OUT_OF_MEMORY));
    return;
  }
  /* seq_cst: pairs with the phase CAS in ops->cancel and the timer. */
  atomic_store(&st->phase, PH_WAITING);
  bw_call_ref(call); /* ours: the timer may finish the call on another thread */
  bw_call_ref(call); /* the timer's reference */
  bw_error_t *e = bw_timer_arm(st->timer.t, now + wait);
  if (e) {
    bw_call_unref(call);
    if (phase_cas(st, PH_WAITING, PH_GAVE_UP)) {
      rl->store->vt->refund(rl->store, rl->n, now);
      bw_call_complete(call, NULL, NULL, e);
    } else {
      bw_error_unref(e);
    }
    bw_call_unref(call); /* ours */
    return;
  }
  /* A cancel that ran before PH_WAITING was visible found nothing to undo. */
  if (bw_call_is_done(call)) give_up_waiting(st, call);
  bw_call_unref(call); /* ours */
}

static void rl_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)svc;
  rl_call_t *st = bw_call_state(call);
  give_up_waiting(st, call);
  bw__child_slot_cancel(&st->slot, reason);
}

static void rl_state_fini(bw_service_t *svc, void *state) {
  (void)svc;
  rl_call_t *st = state;
  bw_timer_free(st->timer.t);
  st->timer.t = NULL;
}

static void rl_destroy(void *impl) {
  rl_t *rl = impl;
  if (!rl) return;
  bw_metric_remove(rl->gauge);
  if (rl->store) rl->store->vt->destroy(rl->store);
  bw__reject_cache_fini(&rl->rej);
  bw__free(rl->name);
  bw__free(rl->what);
  bw__free(rl);
}

static const bw_service_ops_t rl_ops = {
    .kind = KIND,
    .call_state_size = sizeof(rl_call_t),
    .call = rl_call,
    .cancel = rl_cancel,
    .state_init = bw__state_init_zero,
    .state_fini = rl_state_fini,
    .destroy = rl_destroy,
};

static rl_t *rl_of(bw_layer_t *layer) {
  if (!layer || bw_layer_kind(layer) != KIND) return NULL;
  rl_t *rl = bw_layer_impl(layer);
  return rl && rl->magic == RL_MAGIC ? rl : NULL;
}

static uint64_t clock_rt(rl_t *rl) {
  /* acquire: pairs with the release store in rl_call (the last runtime seen). */
  return bw__clock_now_ns(atomic_load_explicit(&rl->rt, memory_order_acquire));
}

static double gauge_tokens(void *arg) {
  rl_t *rl = arg;
  return rl->store->vt->tokens(rl->store, clock_rt(rl));
}

bw_error_t *bw_rate_limit_new(bw_layer_t **out, const bw_rate_limit_opts_t *opts) {
  if (!out || !opts) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "rate limit: NULL argument");
  *out = NULL;
  uint32_t n = opts->tokens_per_call ? opts->tokens_per_call : 1;
  /* checked before the cast below (converting 1e30 or inf is undefined);
   * bw__tb_init checks the rest */
  if (!(opts->rate_per_sec > 0 && opts->rate_per_sec <= 1e9))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "rate limit: rate must be in (0, 1e9] per second");
  uint64_t burst = opts->burst;
  if (burst == 0) burst = opts->rate_per_sec >= 1 ? (uint64_t)opts->rate_per_sec : 1;
  if (burst < n) burst = 0; /* invalid below */
  if (opts->mode != BW_RATE_LIMIT_WAIT && opts->mode != BW_RATE_LIMIT_REJECT)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "rate limit: unknown mode");
  rl_t *rl = bw__calloc(1, sizeof *rl);
  if (!rl) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  rl->magic = RL_MAGIC;
  int rc = burst ? bw__limiter_store_mem_new(opts->rate_per_sec, burst, &rl->store) : BW__TB_EINVAL;
  if (rc != 0) {
    bw__free(rl);
    return rc == BW__TB_EINVAL
               ? bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                              "rate limit: rate must be in (0, 1e9] per second and burst >= "
                              "tokens per call")
               : bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  const char *name = opts->name ? opts->name : "rate_limit";
  rl->name = bw__strdup(name);
  size_t wl = strlen(name) + 32;
  rl->what = bw__malloc(wl);
  if (rl->what) snprintf(rl->what, wl, "rate limiter \"%s\"", name);
  rl->mode = opts->mode;
  rl->max_wait_ns = opts->max_wait_ms >= UINT64_MAX / 1000000 ? UINT64_MAX / 2
                                                              : opts->max_wait_ms * 1000000;
  rl->n = n;
  /* With a coarse clock (a few ms behind, in steps) GCRA keeps the long-run
   * rate as long as the bucket spans more than a step. */
  rl->cheap_clock = (double)burst / opts->rate_per_sec >= 0.05;
  atomic_init(&rl->rt, NULL);
  if (bw__reject_cache_init(&rl->rej) != 0 || !rl->name || !rl->what) {
    rl->store->vt->destroy(rl->store);
    bw__free(rl->name);
    bw__free(rl->what);
    bw__free(rl);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  bw_layer_t *layer = NULL;
  bw_error_t *err = bw_layer_new(&layer, &rl_ops, rl);
  if (err) return err;
  rl->layer = layer;
  err = bw_layer_set_name(layer, name);
  if (!err) {
    char *labels = bw__prom_label("rate_limit", name); /* the name escaped */
    err = labels ? bw_metrics_gauge_add(&rl->gauge, "bulwark_rate_limit_tokens",
                                        "Tokens in the rate limiter's bucket", labels, false,
                                        gauge_tokens, rl)
                 : bw_error_static(BW_ERR_OUT_OF_MEMORY);
    bw__free(labels);
  }
  if (err) {
    bw_layer_release(layer);
    return err;
  }
  *out = layer;
  return NULL;
}

double bw_rate_limit_tokens(bw_layer_t *limiter, bw_runtime_t *rt) {
  rl_t *rl = rl_of(limiter);
  if (!rl) return 0;
  return rl->store->vt->tokens(rl->store, rt ? bw_runtime_now_ns(rt) : clock_rt(rl));
}
