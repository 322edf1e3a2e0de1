/* Bulkhead layer over the permit counter in permits.c.
 *
 * Per call `phase` decides every race, by CAS:
 *   QUEUED  -> RUNNING  the permit arrived (acquire at once, or grant);
 *   QUEUED  -> GAVE_UP  the queue wait ran out (timer), the call was
 *                       cancelled, or the queue was full.
 * Only the winner acts: RUNNING hands the call inward (forwarded, see
 * service_internal.h, when that happens inside ops->call; else a child);
 * GAVE_UP completes the call
 * (or, for a cancel, leaves that to the library). A grant that loses the
 * CAS returns the permit it was handed at once, so a permit is returned
 * exactly once: by the finish hook or the child's callback (RUNNING), by
 * ops->call when the call was cancelled before it could be handed on, or
 * by the losing grant.
 *
 * References on the call (layer.h "Memory safety rule"):
 *   - the queue holds one from just before bw__permits_acquire until the
 *     waiter is off the queue: dropped by the grant callback (always runs
 *     for a granted waiter) or by whoever removes it with
 *     bw__permits_cancel() == true; dropped at once if it never queued;
 *   - an armed timer holds one, dropped by its callback or by a successful
 *     bw_timer_cancel().
 * The timer is made once per pooled call (state_init / state_fini), not per
 * call; phase is published before anything another thread can see.
 *
 * ops->cancel may run before the waiter is queued (the call is cancelled
 * while ops->call is between its steps): then it finds nothing to remove,
 * and ops->call, seeing GAVE_UP after queueing, removes the waiter itself. */
#include <string.h>

#include "bulwark/bulkhead.h"
#include "bulwark/metrics.h"
#include "core/alloc.h"
#include "core/metrics_internal.h"
#include "layers/permits.h"
#include "layers/service_internal.h"

#define BH_MAGIC 0x626b6864u /* "bkhd" */
enum { PH_NONE = 0, PH_QUEUED = 1, PH_RUNNING = 2, PH_GAVE_UP = 3 };

static const char KIND[] = "bulkhead";

typedef struct bh {
  uint32_t magic;
  bw_layer_t *layer;
  char *name;
  uint64_t max_wait_ns;
  bw__permits_t p;
  bw_metric_t *g_in_use, *g_queued, *g_limit;
} bh_t;

typedef struct bh_call {
  bw__permit_waiter_t w;
  bw__child_slot_t slot;
  bh_t *bh;
  bw_call_t *call;
  bw__call_timer_t timer;
  _Atomic int phase;
  uint64_t wait_ns; /* for the give-up message */
} bh_call_t;

void bw_bulkhead_opts_init(bw_bulkhead_opts_t *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->name = "bulkhead";
  o->max_concurrent = 25;
  o->max_queue = 0;
  o->max_queue_wait_ms = 0;
}

static bool phase_cas(bh_call_t *st, int from, int to) {
  /* seq_cst: every participant (call, grant, timer, cancel) decides here. */
  return atomic_compare_exchange_strong(&st->phase, &from, to);
}

static void emit_rejected(bh_t *bh, bw_call_t *call, const bw_error_t *e, const char *why) {
  bw_event_t ev;
  memset(&ev, 0, sizeof ev);
  ev.type = BW_EVENT_REJECTED;
  ev.error = e;
  ev.reason = why;
  bw_layer_emit(bh->layer, call, &ev);
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  (void)err;
  /* st as arg, not bw_call_state(call): an outer retry may have resumed
   * the call at its own depth meanwhile (its state is there then) */
  bh_call_t *st = arg;
  bw_call_t *call = st->call;
  bw__child_slot_clear(&st->slot);
  bw__permits_release(&st->bh->p); /* the one release of a RUNNING call */
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
}

static void run(bh_call_t *st) {
  if (bw__child_start(st->call, &st->slot, on_child, st) != 0)
    bw__permits_release(&st->bh->p);
}

/* RUNNING inside ops->call: forward if possible. */
static void run_here(bh_call_t *st) {
  bw__fwd_t f = bw__call_forward(st->call);
  if (f == BW__FWD_OK) return; /* bh_finish releases */
  if (f == BW__FWD_DONE) bw__permits_release(&st->bh->p);
  else run(st);
}

static bool bh_finish(bw_service_t *svc, bw_call_t *call, void *state, bool aborted) {
  bh_call_t *st = state;
  bw__permits_release(&st->bh->p); /* the one release of a forwarded call */
  return false;
}

static void on_grant(bw__permit_waiter_t *w, void *arg) {
  (void)w;
  bh_call_t *st = arg;
  bw_call_t *call = st->call;
  if (phase_cas(st, PH_QUEUED, PH_RUNNING)) {
    if (st->timer.t && bw_timer_cancel(st->timer.t)) bw_call_unref(call);
    run(st);
  } else {
    bw__permits_release(&st->bh->p); /* gave up meanwhile: hand it on */
  }
  bw_call_unref(call); /* the queue's reference */
}

static void on_timer(bw_timer_t *t, void *arg) {
  (void)t;
  bh_call_t *st = arg;
  bw_call_t *call = st->call;
  if (phase_cas(st, PH_QUEUED, PH_GAVE_UP)) {
    if (bw__permits_cancel(&st->bh->p, &st->w)) bw_call_unref(call); /* queue's ref */
    bw_error_t *e = bw_error_new(BW_ERR_BULKHEAD_FULL, 0, "bulkhead \"%s\": no permit within %llu ms",
                                 st->bh->name, (unsigned long long)(st->wait_ns / 1000000));
    emit_rejected(st->bh, call, e, "queue_timeout");
    bw_call_complete(call, NULL, NULL, e);
  }
  bw_call_unref(call); /* the timer's reference */
}

static void bh_call(bw_service_t *svc, bw_call_t *call) {
  bh_t *bh = bw_service_impl(svc);
  bh_call_t *st = bw_call_state(call);
  bw_runtime_t *rt = bw_call_runtime(call);
  st->bh = bh;
  st->call = call;
  /* st->slot is not reset here: ops->cancel may read it concurrently (the
   * contract); it is zeroed by state_init and left empty by on_child, which
   * runs for every child published in it before this object is reused. */
  /* Fast path: a free permit and nobody queueing (st->w, the waiter, is
   * only read once queued: set up below). */
  if (bw__permits_try_acquire(&bh->p) == BW__PERMITS_OK) {
    /* Relaxed: ops->cancel and the timer act only on PH_QUEUED, which this
     * block never holds between calls (a queued call leaves it by a grant,
     * a give-up or a cancel), so they do nothing either way. */
    atomic_store_explicit(&st->phase, PH_RUNNING, memory_order_relaxed);
    run_here(st);
    return;
  }
  /* Slow path: from here on a grant (or timer) on another thread may run
   * and finish the call; our own reference keeps it valid until we return. */
  memset(&st->w, 0, sizeof st->w);
  st->w.grant = on_grant;
  st->w.arg = st;
  st->w.deadline_ns = UINT64_MAX;
  bw_call_ref(call);
  uint64_t now = bw_runtime_now_ns(rt);
  uint64_t deadline = bh->max_wait_ns ? now + bh->max_wait_ns : 0;
  uint64_t cd = bw_call_deadline_ns(call);
  if (cd && (!deadline || cd < deadline)) deadline = cd;
  if (bh->p.max_queue > 0 && deadline && !bw__call_timer(&st->timer, rt, on_timer, st)) {
    bw_call_complete(call, NULL, NULL, bw_error_static(BW_ERR_OUT_OF_MEMORY));
    goto out;
  }
  /* seq_cst: pairs with the phase CAS in ops->cancel and the timer. */
  atomic_store(&st->phase, PH_QUEUED);
  bw_call_ref(call); /* the queue's reference */
  int rc = bw__permits_acquire(&bh->p, &st->w);
  if (rc == BW__PERMITS_OK) {
    bw_call_unref(call);
    if (phase_cas(st, PH_QUEUED, PH_RUNNING)) run_here(st);
    else bw__permits_release(&bh->p); /* cancelled meanwhile */
    goto out;
  }
  if (rc == BW__PERMITS_EFULL) {
    bw_call_unref(call);
    if (phase_cas(st, PH_QUEUED, PH_GAVE_UP)) {
      bw_error_t *e = bw_error_static(BW_ERR_BULKHEAD_FULL);
      emit_rejected(bh, call, e, "bulkhead_full");
      bw_call_complete(call, NULL, NULL, e);
    }
    goto out;
  }
  /* Queued. */
  if (deadline) {
    st->wait_ns = deadline > now ? deadline - now : 0;
    bw_call_ref(call); /* the timer's reference */
    bw_error_t *e = bw_timer_arm(st->timer.t, deadline);
    if (e) {
      bw_error_unref(e);
      bw_call_unref(call);
    }
  }
  /* seq_cst loads: pair with the CAS in bh_cancel (Dekker with is_done). */
  if (atomic_load(&st->phase) == PH_GAVE_UP || bw_call_is_done(call)) {
    /* A cancel raced with queueing: make sure the waiter leaves the queue. */
    phase_cas(st, PH_QUEUED, PH_GAVE_UP);
    if (atomic_load(&st->phase) == PH_GAVE_UP) {
      if (bw__permits_cancel(&bh->p, &st->w)) bw_call_unref(call);
      if (st->timer.t && bw_timer_cancel(st->timer.t)) bw_call_unref(call);
    }
  }
out:
  bw_call_unref(call); /* ours */
}

static void bh_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  bh_t *bh = bw_service_impl(svc);
  bh_call_t *st = bw_call_state(call);
  if (phase_cas(st, PH_QUEUED, PH_GAVE_UP)) {
    if (bw__permits_cancel(&bh->p, &st->w)) bw_call_unref(call);
    if (st->timer.t && bw_timer_cancel(st->timer.t)) bw_call_unref(call);
  }
  bw__child_slot_cancel(&st->slot, reason);
}

static void bh_state_fini(bw_service_t *svc, void *state) {
  (void)svc;
  bh_call_t *st = state;
  bw_timer_free(st->timer.t);
  st->timer.t = NULL;
}

static void bh_destroy(void *impl) {
  bh_t *bh = impl;
  if (!bh) return;
  bw_metric_remove(bh->g_in_use);
  bw_metric_remove(bh->g_queued);
  bw_metric_remove(bh->g_limit);
  bw__permits_destroy(&bh->p);
  bw__free(bh->name);
  bw__free(bh);
}

static const bw_service_ops_t bh_ops = {
    .kind = KIND,
    .call_state_size = sizeof(bh_call_t),
    .call = bh_call,
    .cancel = bh_cancel,
    .state_init = bw__state_init_zero,
    .state_fini = bh_state_fini,
    .destroy = bh_destroy,
    .finish = bh_finish,
};

static bh_t *bh_of(bw_layer_t *layer) {
  if (!layer || bw_layer_kind(layer) != KIND) return NULL;
  bh_t *bh = bw_layer_impl(layer);
  return bh && bh->magic == BH_MAGIC ? bh : NULL;
}

static double g_in_use(void *arg) { return (double)bw__permits_in_use(&((bh_t *)arg)->p); }
static double g_queued(void *arg) { return (double)bw__permits_queued(&((bh_t *)arg)->p); }
static double g_limit(void *arg) { return (double)bw__permits_limit(&((bh_t *)arg)->p); }

bw_error_t *bw_bulkhead_new(bw_layer_t **out, const bw_bulkhead_opts_t *opts) {
  if (!out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bulkhead: NULL out");
  *out = NULL;
  bw_bulkhead_opts_t d;
  if (!opts) {
    bw_bulkhead_opts_init(&d);
    opts = &d;
  }
  if (opts->max_concurrent < 1)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bulkhead: max_concurrent must be >= 1");
  bh_t *bh = bw__calloc(1, sizeof *bh);
  if (!bh) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bh->magic = BH_MAGIC;
  const char *name = opts->name ? opts->name : "bulkhead";
  bh->name = bw__strdup(name);
  /* A wait past INT64_MAX ns (292 years) is no limit: now + it must not
   * wrap (a deadline in the past rejects at once). */
  bh->max_wait_ns = opts->max_queue_wait_ms > INT64_MAX / 1000000
                        ? 0
                        : opts->max_queue_wait_ms * 1000000;
  if (!bh->name || bw__permits_init(&bh->p, opts->max_concurrent, opts->max_queue) != 0) {
    bw__free(bh->name);
    bw__free(bh);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  bw_layer_t *layer = NULL;
  bw_error_t *err = bw_layer_new(&layer, &bh_ops, bh);
  if (err) return err;
  bh->layer = layer;
  err = bw_layer_set_name(layer, name);
  char *labels = err ? NULL : bw__prom_label("bulkhead", name); /* the name escaped */
  if (!err && !labels) err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
  if (!err)
    err = bw_metrics_gauge_add(&bh->g_in_use, "bulwark_bulkhead_in_use",
                               "Bulkhead permits held", labels, false, g_in_use, bh);
  if (!err)
    err = bw_metrics_gauge_add(&bh->g_queued, "bulwark_bulkhead_queued",
                               "Calls waiting for a bulkhead permit", labels, false, g_queued, bh);
  if (!err)
    err = bw_metrics_gauge_add(&bh->g_limit, "bulwark_bulkhead_limit",
                               "Bulkhead concurrency limit", labels, false, g_limit, bh);
  bw__free(labels);
  if (err) {
    bw_layer_release(layer);
    return err;
  }
  *out = layer;
  return NULL;
}

uint32_t bw_bulkhead_in_use(bw_layer_t *layer) {
  bh_t *bh = bh_of(layer);
  return bh ? bw__permits_in_use(&bh->p) : 0;
}
uint32_t bw_bulkhead_queued(bw_layer_t *layer) {
  bh_t *bh = bh_of(layer);
  return bh ? bw__permits_queued(&bh->p) : 0;
}
uint32_t bw_bulkhead_limit(bw_layer_t *layer) {
  bh_t *bh = bh_of(layer);
  return bh ? bw__permits_limit(&bh->p) : 0;
}

bw_error_t *bw_bulkhead_set_limit(bw_layer_t *layer, uint32_t max_concurrent) {
  bh_t *bh = bh_of(layer);
  if (!bh || max_concurrent < 1)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_bulkhead_set_limit: bad bulkhead or limit");
  bw__permits_set_limit(&bh->p, max_concurrent);
  return NULL;
}
