/* Chaos layer (see bulwark/chaos.h for what it does).
 *
 * Determinism: draws are a pure function of (seed, k, stream) —
 * splitmix64 over seed ^ mix(k, stream) — not a shared RNG state, so they
 * do not depend on which thread runs a call or in what order calls finish;
 * only on the sequence number k taken at entry (one relaxed fetch_add).
 *
 * Per call `phase` (CAS) decides between the timer and a cancel:
 *   DELAYING -> AFTER    latency over: apply the remaining faults;
 *   HANGING  -> AFTER    the deadline came: complete with a timeout;
 *   DELAYING / HANGING -> GAVE_UP   a cancel came first.
 * The armed timer holds a call reference (dropped by its callback, or by a
 * successful bw_timer_cancel). The timer is made once per pooled call.
 * A cancel that ran before the phase was published is caught by ops->call
 * checking bw_call_is_done after arming. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bulwark/chaos.h"
#include "bulwark/metrics.h"
#include "core/alloc.h"
#include "layers/permits.h"

#define CH_MAGIC 0x6368616fu /* "chao" */
enum { PH_NONE = 0, PH_DELAYING = 1, PH_HANGING = 2, PH_AFTER = 3, PH_GAVE_UP = 4 };

static const char KIND[] = "chaos";

typedef struct chaos {
  uint32_t magic;
  bw_layer_t *layer;
  char *name;
  bw_chaos_opts_t o; /* name points at `name` */
  _Atomic bool enabled;
  _Atomic uint64_t seq, injected;
} chaos_t;

typedef struct ch_call {
  bw__child_slot_t slot;
  chaos_t *ch;
  bw_call_t *call;
  bw__call_timer_t timer;
  _Atomic int phase;
} ch_call_t;

void bw_chaos_opts_init(bw_chaos_opts_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->name = "chaos";
  o->enabled = true;
  o->seed = 0;
  o->rate = 0.001;
  o->faults = BW_CHAOS_ERROR;
  o->error_kind = BW_ERR_INJECTED;
  o->error_mark_injected = true;
  o->latency_dist = BW_CHAOS_LATENCY_FIXED;
}

/* ---- deterministic draws ------------------------------------------------------ */

static uint64_t splitmix64(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

/* Uniform in [0, 1) for (seed, k, stream). */
static double draw(const chaos_t *ch, uint64_t k, uint64_t stream) {
  uint64_t x = splitmix64(ch->o.seed ^ splitmix64(k * 4 + stream));
  return (double)(x >> 11) * 0x1.0p-53;
}

static bool chosen_by_counters(const chaos_t *ch, uint64_t k) {
  const bw_chaos_opts_t *o = &ch->o;
  if (o->first_n && k < o->first_n) return true;
  if (o->every_nth && (k + 1) % o->every_nth == 0) return true;
  return o->rate > 0 && draw(ch, k, 0) < o->rate;
}

static uint64_t latency_ns(const chaos_t *ch, uint64_t k) {
  const bw_chaos_opts_t *o = &ch->o;
  double ms;
  switch (o->latency_dist) {
    case BW_CHAOS_LATENCY_UNIFORM:
      ms = (double)o->latency_ms + draw(ch, k, 1) * (double)(o->latency_max_ms - o->latency_ms);
      break;
    case BW_CHAOS_LATENCY_NORMAL: {
      double u1 = draw(ch, k, 1), u2 = draw(ch, k, 2);
      if (u1 < 1e-300) u1 = 1e-300;
      double z = sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
      ms = (double)o->latency_ms + z * o->latency_stddev_ms;
      break;
    }
    case BW_CHAOS_LATENCY_FIXED:
    default:
      ms = (double)o->latency_ms;
      break;
  }
  if (!(ms > 0)) return 0;
  if (ms > 1e12) ms = 1e12;
  return (uint64_t)llround(ms * 1e6);
}

/* ---- the layer ------------------------------------------------------------------ */

static void emit(chaos_t *ch, bw_call_t *call, const char *what, uint64_t delay,
                 const bw_error_t *e) {
  bw_event_t ev;
  memset(&ev, 0, sizeof ev);
  ev.type = BW_EVENT_CHAOS_INJECTED;
  ev.reason = what;
  ev.delay_ns = delay;
  ev.error = e;
  bw_layer_emit(ch->layer, call, &ev);
}

static bool phase_cas(ch_call_t *st, int from, int to) {
  return atomic_compare_exchange_strong(&st->phase, &from, to); /* seq_cst: timer vs cancel */
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  (void)err;
  /* st as arg, not bw_call_state(call): an outer retry may have resumed
   * the call at its own depth meanwhile (its state is there then) */
  ch_call_t *st = arg;
  bw_call_t *call = st->call;
  bw__child_slot_clear(&st->slot);
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
}

static bw_error_t *make_error(chaos_t *ch) {
  const bw_chaos_opts_t *o = &ch->o;
  if (o->error_kind == BW_ERR_INJECTED || !o->error_mark_injected)
    return bw_error_new(o->error_kind, o->error_detail, "chaos \"%s\": injected %s", ch->name,
                        bw_error_kind_name(o->error_kind));
  bw_error_t *root = bw_error_new(BW_ERR_INJECTED, 0, "chaos \"%s\"", ch->name);
  return bw_error_wrap(root, o->error_kind, o->error_detail, "%s",
                       bw_error_kind_message(o->error_kind));
}

static void arm(ch_call_t *st, uint64_t at_ns, int phase);

/* Everything after the latency. */
static void after_latency(ch_call_t *st) {
  chaos_t *ch = st->ch;
  bw_call_t *call = st->call;
  unsigned f = ch->o.faults;
  if (f & BW_CHAOS_ERROR) {
    bw_error_t *e = make_error(ch);
    emit(ch, call, "error", 0, e);
    bw_call_complete(call, NULL, NULL, e);
  } else if (f & BW_CHAOS_OUTCOME) {
    bw_destroy_fn fr = NULL;
    void *resp = ch->o.outcome(call, ch->o.outcome_arg, &fr);
    emit(ch, call, "outcome", 0, NULL);
    bw_call_complete(call, resp, fr, NULL);
  } else if (f & BW_CHAOS_HANG) {
    emit(ch, call, "hang", 0, NULL);
    uint64_t d = bw_call_deadline_ns(call);
    if (d) arm(st, d, PH_HANGING);
    /* no deadline: only a cancel ends it */
  } else {
    (void)bw__child_start(call, &st->slot, on_child, st);
  }
}

static void on_timer(bw_timer_t *t, void *arg) {
  (void)t;
  ch_call_t *st = arg;
  bw_call_t *call = st->call;
  if (phase_cas(st, PH_DELAYING, PH_AFTER)) {
    after_latency(st);
  } else if (phase_cas(st, PH_HANGING, PH_AFTER)) {
    bw_call_complete(call, NULL, NULL,
                     bw_error_new(BW_ERR_TIMEOUT, 0, "chaos \"%s\": hung until the deadline",
                                  st->ch->name));
  }
  bw_call_unref(call); /* the timer's reference */
}

static void give_up(ch_call_t *st) {
  if (phase_cas(st, PH_DELAYING, PH_GAVE_UP) || phase_cas(st, PH_HANGING, PH_GAVE_UP))
    if (st->timer.t && bw_timer_cancel(st->timer.t)) bw_call_unref(st->call);
}

static void arm(ch_call_t *st, uint64_t at_ns, int phase) {
  bw_call_t *call = st->call;
  if (!bw__call_timer(&st->timer, bw_call_runtime(call), on_timer, st)) {
    bw_call_complete(call, NULL, NULL, bw_error_static(BW_ERR_OUT_OF_MEMORY));
    return;
  }
  /* seq_cst: pairs with the phase CAS in ops->cancel and the timer. */
  atomic_store(&st->phase, phase);
  bw_call_ref(call); /* ours: the timer may finish the call on another thread */
  bw_call_ref(call); /* the timer's reference */
  bw_error_t *e = bw_timer_arm(st->timer.t, at_ns);
  if (e) {
    bw_call_unref(call);
    if (phase_cas(st, phase, PH_GAVE_UP)) bw_call_complete(call, NULL, NULL, e);
    else bw_error_unref(e);
  } else if (bw_call_is_done(call)) {
    give_up(st);
  }
  bw_call_unref(call); /* ours */
}

static void ch_call(bw_service_t *svc, bw_call_t *call) {
  chaos_t *ch = bw_service_impl(svc);
  ch_call_t *st = bw_call_state(call);
  st->ch = ch;
  st->call = call;
  /* st->slot is not reset here: ops->cancel may read it concurrently (the
   * contract); state_init zeroes it and on_child empties it for every child
   * published in it before this object is reused. */
  /* seq_cst: pairs with the phase CAS in ops->cancel and the timer. */
  atomic_store(&st->phase, PH_NONE);
  bool on = atomic_load_explicit(&ch->enabled, memory_order_relaxed);
  bool chosen = false;
  uint64_t k = 0;
  if (on) {
    k = atomic_fetch_add_explicit(&ch->seq, 1, memory_order_relaxed);
    chosen = chosen_by_counters(ch, k) ||
             (ch->o.predicate && ch->o.predicate(call, ch->o.predicate_arg));
  }
  if (!chosen) {
    (void)bw__child_start(call, &st->slot, on_child, st);
    return;
  }
  atomic_fetch_add_explicit(&ch->injected, 1, memory_order_relaxed);
  if (ch->o.faults & BW_CHAOS_LATENCY) {
    uint64_t d = latency_ns(ch, k);
    emit(ch, call, "latency", d, NULL);
    if (d > 0) {
      arm(st, bw__call_now_ns(call) + d, PH_DELAYING);
      return;
    }
  }
  after_latency(st);
}

static void ch_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)svc;
  ch_call_t *st = bw_call_state(call);
  give_up(st);
  bw__child_slot_cancel(&st->slot, reason);
}

static void ch_state_fini(bw_service_t *svc, void *state) {
  (void)svc;
  ch_call_t *st = state;
  bw_timer_free(st->timer.t);
  st->timer.t = NULL;
}

static void ch_destroy(void *impl) {
  chaos_t *ch = impl;
  if (!ch) return;
  bw__free(ch->name);
  bw__free(ch);
}

static const bw_service_ops_t ch_ops = {
    .kind = KIND,
    .call_state_size = sizeof(ch_call_t),
    .call = ch_call,
    .cancel = ch_cancel,
    .state_init = bw__state_init_zero,
    .state_fini = ch_state_fini,
    .destroy = ch_destroy,
};

static chaos_t *ch_of(bw_layer_t *layer) {
  if (!layer || bw_layer_kind(layer) != KIND) return NULL;
  chaos_t *ch = bw_layer_impl(layer);
  return ch && ch->magic == CH_MAGIC ? ch : NULL;
}

bw_error_t *bw_chaos_new(bw_layer_t **out, const bw_chaos_opts_t *opts) {
  if (!out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: NULL out");
  *out = NULL;
  bw_chaos_opts_t d;
  if (!opts) {
    bw_chaos_opts_init(&d);
    opts = &d;
  }
  const unsigned all = BW_CHAOS_ERROR | BW_CHAOS_LATENCY | BW_CHAOS_OUTCOME | BW_CHAOS_HANG;
  if (!(opts->rate >= 0 && opts->rate <= 1))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: rate must be in [0, 1]");
  if (opts->faults == 0 || (opts->faults & ~all))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: faults must be BW_CHAOS_* bits");
  if ((opts->faults & BW_CHAOS_OUTCOME) && !opts->outcome)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: OUTCOME needs an outcome function");
  if (opts->error_kind <= BW_ERR_NONE || opts->error_kind >= BW_ERR__MAX)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: unknown error kind");
  if (opts->latency_dist == BW_CHAOS_LATENCY_UNIFORM && opts->latency_max_ms < opts->latency_ms)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: latency_max_ms < latency_ms");
  if (opts->latency_dist == BW_CHAOS_LATENCY_NORMAL && !(opts->latency_stddev_ms >= 0))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: latency_stddev_ms < 0");
  if ((unsigned)opts->latency_dist > BW_CHAOS_LATENCY_NORMAL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "chaos: unknown latency distribution");
  chaos_t *ch = bw__calloc(1, sizeof *ch);
  if (!ch) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  ch->magic = CH_MAGIC;
  ch->o = *opts;
  ch->name = bw__strdup(opts->name ? opts->name : "chaos");
  if (!ch->name) {
    bw__free(ch);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  ch->o.name = ch->name;
  atomic_init(&ch->enabled, opts->enabled);
  atomic_init(&ch->seq, 0);
  atomic_init(&ch->injected, 0);
  bw_layer_t *layer = NULL;
  bw_error_t *err = bw_layer_new(&layer, &ch_ops, ch);
  if (err) return err;
  ch->layer = layer;
  err = bw_layer_set_name(layer, ch->name);
  if (err) {
    bw_layer_release(layer);
    return err;
  }
  *out = layer;
  return NULL;
}

void bw_chaos_set_enabled(bw_layer_t *layer, bool enabled) {
  chaos_t *ch = ch_of(layer);
  if (ch) atomic_store_explicit(&ch->enabled, enabled, memory_order_relaxed);
}

bool bw_chaos_enabled(bw_layer_t *layer) {
  chaos_t *ch = ch_of(layer);
  return ch && atomic_load_explicit(&ch->enabled, memory_order_relaxed);
}

uint64_t bw_chaos_injected(bw_layer_t *layer) {
  chaos_t *ch = ch_of(layer);
  return ch ? atomic_load_explicit(&ch->injected, memory_order_relaxed) : 0;
}

uint64_t bw_chaos_seen(bw_layer_t *layer) {
  chaos_t *ch = ch_of(layer);
  return ch ? atomic_load_explicit(&ch->seq, memory_order_relaxed) : 0;
}

void bw_chaos_restart(bw_layer_t *layer) {
  chaos_t *ch = ch_of(layer);
  if (!ch) return;
  atomic_store_explicit(&ch->seq, 0, memory_order_relaxed);
  atomic_store_explicit(&ch->injected, 0, memory_order_relaxed);
}

bool bw_chaos_decide(bw_layer_t *layer, uint64_t k, uint64_t *lat) {
  chaos_t *ch = ch_of(layer);
  if (!ch) return false;
  if (lat) *lat = (ch->o.faults & BW_CHAOS_LATENCY) ? latency_ns(ch, k) : 0;
  return chosen_by_counters(ch, k);
}
