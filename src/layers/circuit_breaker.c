/* Circuit breaker layer (plain and keyed) over the decision core in
 * breaker_state.c, reached only through the store vtable so a fleet-wide
 * store can replace the in-memory one.
 *
 * Per call: acquire a ticket (lock-free when closed) -> forward the call
 * inward (service_internal.h; a child when it cannot be forwarded) -> in
 * the finish hook (or the child's callback) classify the outcome with the
 * predicate and record it with the ticket; the outcome passes up unchanged.
 * Exactly one record per admitted call: the finish hook / the child's
 * callback runs once (success, error, or a cancel), and records there; a
 * call cancelled before it was handed on records IGNORED here.
 * A caller's cancel reaches the child as BW_ERR_CANCELLED and is recorded as
 * IGNORED (a half-open probe gives its slot back); a timeout layer outside
 * cancels with its timeout error, which counts as a failure.
 *
 * State changes come back from the core as a bw__breaker_change_t and are
 * emitted here, after the core's lock is dropped (no lock held in hooks).
 *
 * Rejections use bw__reject_error: a burst of rejections with the same
 * whole-millisecond retry-after hint shares one error (no malloc). */
#include <stdio.h>
#include <string.h>

#include "bulwark/circuit_breaker.h"
#include "bulwark/metrics.h"
#include "bulwark/retry.h"
#include "core/alloc.h"
#include "core/metrics_internal.h"
#include "layers/breaker_state.h"
#include "layers/permits.h"
#include "layers/service_internal.h"

#define BRK_MAGIC 0x62726b72u /* "brkr" */

static const char KIND[] = "circuit_breaker";

typedef struct brk {
  uint32_t magic;
  bw_layer_t *layer; /* back pointer, not a reference */
  char *name;
  char *what; /* "circuit breaker \"name\" is open" */
  bw__breaker_store_t *store; /* plain */
  bw__keyed_t *keyed;         /* keyed */
  bw_breaker_key_fn key;
  void *key_arg;
  bool (*predicate)(const bw_error_t *err, void *arg);
  void *predicate_arg;
  _Atomic(bw_runtime_t *) rt;
  bool cheap_clock; /* every duration it measures is >= 100 ms: coarse clock */
  bw__reject_cache_t rej;
  bw_metric_t *gauge;
} brk_t;

static uint64_t clock_rt(brk_t *b) {
  /* acquire: pairs with the release CAS in brk_call. */
  return bw__clock_now_ns(atomic_load_explicit(&b->rt, memory_order_acquire));
}

static uint64_t brk_now(const brk_t *b, const bw_call_t *call) {
  return b->cheap_clock ? bw__call_now_cheap_ns(call) : bw__call_now_ns(call);
}

typedef struct brk_call {
  bw__child_slot_t slot;
  brk_t *b;
  bw_call_t *call; /* set only when a child carries the call (on_child) */
  bw__breaker_store_t *store; /* NULL: passed through unguarded (keyed, no key) */
  bw__keyed_entry_t *entry;
  uint64_t ticket, start_ns;
} brk_call_t;

bool bw_circuit_breaker_default_predicate(const bw_error_t *err, void *arg) {
  (void)arg;
  if (!err) return false;
  switch (bw_error_kind(err)) {
    case BW_ERR_RATE_LIMITED:
    case BW_ERR_BULKHEAD_FULL:
    case BW_ERR_CIRCUIT_OPEN:
    case BW_ERR_CANCELLED:
      return false;
    default:
      break;
  }
  const bw_error_t *h = bw_error_find(err, BW_ERR_HTTP_STATUS);
  if (h && bw_error_detail(h) >= 500) return true;
  return bw_retry_default_predicate(err, NULL);
}

static const char *change_reason(const bw__breaker_change_t *chg, int i, bool manual) {
  if (manual) return "manual";
  bw_breaker_state_t f = chg->t[i].from, t = chg->t[i].to;
  if (t == BW_BREAKER_OPEN) return f == BW_BREAKER_HALF_OPEN ? "probe_failed" : "tripped";
  if (t == BW_BREAKER_HALF_OPEN) return "open_elapsed";
  if (t == BW_BREAKER_CLOSED) return "probes_succeeded";
  return "manual";
}

static void report(brk_t *b, bw_call_t *call, const bw__breaker_change_t *chg, bool manual) {
  for (int i = 0; i < chg->n; i++) {
    bw_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.type = BW_EVENT_BREAKER_STATE;
    ev.from_state = (int)chg->t[i].from;
    ev.to_state = (int)chg->t[i].to;
    ev.reason = change_reason(chg, i, manual);
    bw_layer_emit(b->layer, call, &ev);
  }
}

static bw__outcome_t classify(brk_t *b, const bw_error_t *err) {
  if (!err) return BW__OUTCOME_SUCCESS;
  bw_error_kind_t k = bw_error_kind(err);
  if (k == BW_ERR_CANCELLED || k == BW_ERR_RUNTIME_SHUTDOWN) return BW__OUTCOME_IGNORED;
  return b->predicate(err, b->predicate_arg) ? BW__OUTCOME_FAILURE : BW__OUTCOME_SUCCESS;
}

/* Record the admitted call's outcome with its ticket (once). */
static void settle(brk_t *b, brk_call_t *st, bw_call_t *call, const bw_error_t *err) {
  if (st->store) {
    uint64_t now = brk_now(b, call);
    uint64_t dur = now > st->start_ns ? now - st->start_ns : 0;
    bw__breaker_change_t chg; /* only t[0..n) is ever read */
    chg.n = 0;
    if (err || !st->store->mem || !bw__breaker_try_record_success(st->store->mem, st->ticket, dur))
      st->store->vt->record(st->store, st->ticket, classify(b, err), dur, now, &chg);
    if (st->entry) bw__keyed_put(b->keyed, st->entry);
    st->entry = NULL;
    st->store = NULL;
    if (chg.n) report(b, call, &chg, false);
  }
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  /* st as arg, not bw_call_state(call): an outer retry may have resumed
   * the call at its own depth meanwhile (its state is there then) */
  brk_call_t *st = arg;
  bw_call_t *call = st->call;
  brk_t *b = st->b;
  bw__child_slot_clear(&st->slot);
  settle(b, st, call, err);
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
}

static bool brk_finish(bw_service_t *svc, bw_call_t *call, void *state, bool aborted) {
  (void)aborted; /* an outer timeout's abort counts as that timeout */
  settle(bw_service_impl(svc), state, call, bw_call_error(call));
  return false;
}

/* An admitted call that went nowhere: give its slot back uncounted. */
static void release_unused(brk_t *b, brk_call_t *st, bw_runtime_t *rt) {
  if (!st->store) return;
  st->store->vt->record(st->store, st->ticket, BW__OUTCOME_IGNORED, 0, bw_runtime_now_ns(rt), NULL);
  if (st->entry) bw__keyed_put(b->keyed, st->entry);
  st->store = NULL;
  st->entry = NULL;
}

static void brk_call(bw_service_t *svc, bw_call_t *call) {
  brk_t *b = bw_service_impl(svc);
  brk_call_t *st = bw_call_state(call);
  /* no reset: the library zeroes the state before each call (no state_init),
   * and ops->cancel may read it concurrently with this function */
  st->b = b;
  bw_runtime_t *rt = bw_call_runtime(call);
  if (__builtin_expect(atomic_load_explicit(&b->rt, memory_order_relaxed) == NULL, 0)) {
    bw_runtime_t *none = NULL;
    /* release: pairs with the acquire in clock_rt(); publishes the runtime
     * whose clock API calls outside calls use. */
    atomic_compare_exchange_strong_explicit(&b->rt, &none, rt, memory_order_release,
                                            memory_order_relaxed);
  }
  bw__breaker_store_t *store = b->store;
  bw__keyed_entry_t *entry = NULL;
  if (b->keyed) {
    char key[BW__KEY_MAX];
    size_t len = b->key(call, b->key_arg, key, sizeof key);
    store = len ? bw__keyed_get(b->keyed, key, len, true, &entry) : NULL;
    if (len && !store) {
      bw_call_complete(call, NULL, NULL, bw_error_static(BW_ERR_OUT_OF_MEMORY));
      return;
    }
  }
  if (store) {
    uint64_t now = brk_now(b, call), ra = 0, ticket = 0;
    bw__breaker_change_t chg; /* only t[0..n) is ever read */
    chg.n = 0;
    int rc = BW__BRK_OK;
    if (!store->mem || !bw__breaker_try_pass(store->mem, &ticket))
      rc = store->vt->acquire(store, now, &ticket, &ra, &chg);
    if (chg.n) report(b, call, &chg, false);
    if (rc != BW__BRK_OK) {
      if (entry) bw__keyed_put(b->keyed, entry);
      bw_error_t *e = bw__reject_error(&b->rej, BW_ERR_CIRCUIT_OPEN, b->what, ra);
      bw_event_t ev;
      memset(&ev, 0, sizeof ev);
      ev.type = BW_EVENT_REJECTED;
      ev.error = e;
      ev.reason = rc == BW__BRK_REJECTED_HALF_OPEN ? "half_open_full"
                  : rc == BW__BRK_REJECTED_FORCED  ? "forced_open"
                                                   : "circuit_open";
      bw_layer_emit(b->layer, call, &ev);
      bw_call_complete(call, NULL, NULL, e);
      return;
    }
    st->store = store;
    st->entry = entry;
    st->ticket = ticket;
    st->start_ns = now;
  }
  bw__fwd_t f = bw__call_forward(call);
  if (f == BW__FWD_OK) return; /* brk_finish records */
  /* DONE (cancelled first), or a child that cannot be made: the call was
   * completed but not handed anywhere, st is ours. */
  st->call = call;
  if (f == BW__FWD_DONE || bw__child_start(call, &st->slot, on_child, st) != 0)
    release_unused(b, st, rt);
}

static void brk_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)svc;
  brk_call_t *st = bw_call_state(call);
  bw__child_slot_cancel(&st->slot, reason);
}

static void brk_destroy(void *impl) {
  brk_t *b = impl;
  if (!b) return;
  bw_metric_remove(b->gauge);
  if (b->store) b->store->vt->destroy(b->store);
  bw__keyed_free(b->keyed);
  bw__reject_cache_fini(&b->rej);
  bw__free(b->name);
  bw__free(b->what);
  bw__free(b);
}

static const bw_service_ops_t brk_ops = {
    .kind = KIND,
    .call_state_size = sizeof(brk_call_t),
    .call = brk_call,
    .cancel = brk_cancel,
    .destroy = brk_destroy,
    .finish = brk_finish,
};

static brk_t *brk_of(bw_layer_t *layer) {
  if (!layer || bw_layer_kind(layer) != KIND) return NULL;
  brk_t *b = bw_layer_impl(layer);
  return b && b->magic == BRK_MAGIC ? b : NULL;
}

static double gauge_state(void *arg) {
  brk_t *b = arg;
  bw_breaker_stats_t s;
  b->store->vt->stats(b->store, clock_rt(b), &s);
  return (double)s.state;
}

static double gauge_keys(void *arg) {
  brk_t *b = arg;
  return (double)bw__keyed_count(b->keyed);
}

static bw_error_t *make(bw_layer_t **out, const bw_circuit_breaker_opts_t *opts,
                        const bw_circuit_breaker_keyed_opts_t *kopts) {
  if (!out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "circuit breaker: NULL out");
  *out = NULL;
  bw_circuit_breaker_opts_t d;
  if (!opts) {
    bw_circuit_breaker_opts_init(&d);
    opts = &d;
  }
  bw__breaker_cfg_t cfg;
  int rc = bw__breaker_cfg_from_opts(&cfg, opts);
  if (rc != 0)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "circuit breaker: option out of range");
  if (kopts && (!kopts->key || kopts->max_keys < 1))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "keyed circuit breaker: needs a key function and max_keys >= 1");
  brk_t *b = bw__calloc(1, sizeof *b);
  if (!b) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  b->magic = BRK_MAGIC;
  const char *name = opts->name ? opts->name : "breaker";
  b->name = bw__strdup(name);
  size_t wl = strlen(name) + 40;
  b->what = bw__malloc(wl);
  if (b->what) snprintf(b->what, wl, "circuit breaker \"%s\" is open", name);
  b->predicate = opts->predicate ? opts->predicate : bw_circuit_breaker_default_predicate;
  b->predicate_arg = opts->predicate_arg;
  atomic_init(&b->rt, opts->runtime);
  /* Slow-call thresholds and time buckets of 100 ms or more tolerate the
   * coarse clock's few ms; open durations always do. */
  b->cheap_clock = (cfg.slow_ns == 0 || cfg.slow_ns >= 100000000u) &&
                   (cfg.window != BW_BREAKER_WINDOW_TIME || cfg.bucket_ns >= 100000000u);
  if (bw__reject_cache_init(&b->rej) != 0) {
    bw__free(b->name);
    bw__free(b->what);
    bw__free(b);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  if (kopts) {
    b->key = kopts->key;
    b->key_arg = kopts->key_arg;
    rc = bw__keyed_new(&b->keyed, &cfg, kopts->max_keys);
  } else {
    rc = bw__breaker_store_mem_new(&cfg, &b->store);
  }
  if (rc != 0 || !b->name || !b->what) {
    brk_destroy(b);
    return rc == BW__BRK_EINVAL
               ? bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "circuit breaker: option out of range")
               : bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  bw_layer_t *layer = NULL;
  bw_error_t *err = bw_layer_new(&layer, &brk_ops, b); /* destroys b on error */
  if (err) return err;
  b->layer = layer;
  err = bw_layer_set_name(layer, name);
  char *labels = err ? NULL : bw__prom_label("breaker", name); /* the name escaped */
  if (!err && !labels) err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
  if (!err) {
    if (kopts)
      err = bw_metrics_gauge_add(&b->gauge, "bulwark_breaker_keys",
                                 "Keys with a breaker in a keyed circuit breaker", labels, false,
                                 gauge_keys, b);
    else
      err = bw_metrics_gauge_add(&b->gauge, "bulwark_breaker_state",
                                 "Circuit breaker state (0 closed, 1 open, 2 half-open, "
                                 "3 forced open, 4 forced closed, 5 disabled)",
                                 labels, false, gauge_state, b);
  }
  bw__free(labels);
  if (err) {
    bw_layer_release(layer);
    return err;
  }
  *out = layer;
  return NULL;
}

bw_error_t *bw_circuit_breaker_new(bw_layer_t **out, const bw_circuit_breaker_opts_t *opts) {
  return make(out, opts, NULL);
}

bw_breaker_state_t bw_circuit_breaker_state(bw_layer_t *breaker) {
  brk_t *b = brk_of(breaker);
  if (!b || !b->store) return BW_BREAKER_CLOSED;
  bw__breaker_change_t chg = {0};
  bw_breaker_state_t s =
      b->store->vt->state(b->store, clock_rt(b), &chg);
  report(b, NULL, &chg, false);
  return s;
}

static bw_error_t *force_store(brk_t *b, bw__breaker_store_t *store, bw_breaker_state_t state) {
  bw__breaker_change_t chg = {0};
  if (store->vt->force(store, state, clock_rt(b), &chg) != 0)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "circuit breaker: cannot force state %s",
                        bw_breaker_state_name(state));
  report(b, NULL, &chg, true);
  return NULL;
}

bw_error_t *bw_circuit_breaker_force(bw_layer_t *breaker, bw_breaker_state_t state) {
  brk_t *b = brk_of(breaker);
  if (!b || !b->store)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_circuit_breaker_force: not a breaker");
  return force_store(b, b->store, state);
}

bw_error_t *bw_circuit_breaker_stats(bw_layer_t *breaker, bw_breaker_stats_t *out) {
  brk_t *b = brk_of(breaker);
  if (!b || !b->store || !out)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_circuit_breaker_stats: not a breaker");
  b->store->vt->stats(b->store, clock_rt(b), out);
  return NULL;
}

/* ---- keyed -------------------------------------------------------------------- */

void bw_circuit_breaker_keyed_opts_init(bw_circuit_breaker_keyed_opts_t *opts) {
  if (!opts) return;
  memset(opts, 0, sizeof *opts);
  bw_circuit_breaker_opts_init(&opts->breaker);
  opts->max_keys = 1024;
}

bw_error_t *bw_circuit_breaker_keyed_new(bw_layer_t **out,
                                         const bw_circuit_breaker_keyed_opts_t *opts) {
  if (!opts)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "keyed circuit breaker: opts required");
  return make(out, &opts->breaker, opts);
}

bool bw_circuit_breaker_keyed_state(bw_layer_t *keyed, const char *key,
                                    bw_breaker_state_t *state) {
  brk_t *b = brk_of(keyed);
  if (!b || !b->keyed || !key) return false;
  bw__keyed_entry_t *e = NULL;
  bw__breaker_store_t *s = bw__keyed_get(b->keyed, key, strlen(key), false, &e);
  if (!s) return false;
  bw__breaker_change_t chg = {0};
  bw_breaker_state_t st = s->vt->state(s, clock_rt(b), &chg);
  bw__keyed_put(b->keyed, e);
  report(b, NULL, &chg, false);
  if (state) *state = st;
  return true;
}

bw_error_t *bw_circuit_breaker_keyed_force(bw_layer_t *keyed, const char *key,
                                           bw_breaker_state_t state) {
  brk_t *b = brk_of(keyed);
  if (!b || !b->keyed || !key)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_circuit_breaker_keyed_force: not a keyed breaker");
  bw__keyed_entry_t *e = NULL;
  bw__breaker_store_t *s = bw__keyed_get(b->keyed, key, strlen(key), true, &e);
  if (!s) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw_error_t *err = force_store(b, s, state);
  bw__keyed_put(b->keyed, e);
  return err;
}

size_t bw_circuit_breaker_keyed_count(bw_layer_t *keyed) {
  brk_t *b = brk_of(keyed);
  return b && b->keyed ? bw__keyed_count(b->keyed) : 0;
}
