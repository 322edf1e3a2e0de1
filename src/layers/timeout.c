/* Timeout layer.
 *
 * Fast path (forwarding, service_internal.h): the call itself goes inward
 * with its deadline lowered; the timer, armed only if the inner nodes did
 * not answer during the start, aborts the call at this node's depth
 * (bw__call_abort: the innermost node's ops->cancel, then the finish hooks
 * of every forwarding node, this one's included). Arm vs finish: ops->call
 * sets `armed` then re-reads `live`; finish clears `live` then reads
 * `armed` (seq_cst both), so one of them sees the other and cancels the
 * timer; bw_timer_cancel succeeds once, and that one drops the timer's
 * reference.
 *
 * Child path (the inner service is a built stack, or too deep):
 * per call one child (the attempt) and one runtime timer (created once per
 * pooled call object, re-armed per call; no allocation in steady state).
 * The timer is armed after the attempt started, and only if it did not
 * finish during its start (synchronous answers cost no timer at all).
 *
 * Ownership of the child: st->child is an atomic slot. Whoever takes the
 * pointer out of it with an exchange (on_child when the attempt finishes,
 * the timer when it fires, ops->cancel when the caller cancels) owns the
 * child and is the one who frees it; the others see NULL and back off.
 * The timer holds a reference on the call while armed (dropped by the
 * callback, or by whoever cancels it successfully).
 *
 * Same-tick race: if the attempt's result and the timer land together,
 * whichever takes the child first decides; the call completes once either
 * way (bw_call_complete's CAS), and a late response is freed with the
 * abandoned child. */
#include <inttypes.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#include "bulwark/metrics.h"
#include "bulwark/timeout.h"
#include "core/alloc.h"
#include "layers/permits.h"
#include "layers/service_internal.h"

typedef struct timeout_impl {
  uint64_t timeout_ns;
  bw_layer_t *layer; /* back pointer for events (not a reference) */
  char text[32];     /* "200 ms" */
} timeout_impl_t;

typedef struct tstate {
  bw_call_t *call; /* the call this state belongs to (fixed per pooled object) */
  timeout_impl_t *im;
  bool fwd;          /* this call took the forwarding path */
  int depth;         /* forwarding: this node's depth in the call */
  uint64_t own_deadline_ns; /* forwarding: the call's deadline before ours */
  atomic_bool live;  /* forwarding: set before, cleared by finish */
  atomic_bool armed; /* forwarding: the timer may have been armed */
  _Atomic(bw_timer_t *) timer; /* release-stored once made; cancel loads it */
  bw_runtime_t *timer_rt;
  _Atomic(bw_call_t *) child;
  uint64_t armed_ns; /* the effective timeout of this call */
} tstate_t;

static void format_duration(char *buf, size_t len, uint64_t ns) {
  if (ns % 1000000000ull == 0) snprintf(buf, len, "%" PRIu64 " s", (uint64_t)(ns / UINT64_C(1000000000)));
  else if (ns % 1000000ull == 0) snprintf(buf, len, "%" PRIu64 " ms", (uint64_t)(ns / UINT64_C(1000000)));
  else if (ns % 1000ull == 0) snprintf(buf, len, "%" PRIu64 " us", (uint64_t)(ns / UINT64_C(1000)));
  else snprintf(buf, len, "%" PRIu64 " ns", ns);
}

static bw_error_t *timeout_error(const tstate_t *st) {
  const timeout_impl_t *im = st->im;
  char txt[32];
  const char *d = im->text;
  if (st->armed_ns != im->timeout_ns) {
    format_duration(txt, sizeof txt, st->armed_ns);
    d = txt;
  }
  return bw_error_new(BW_ERR_TIMEOUT, (int64_t)(st->armed_ns / 1000000ull), "no response within %s", d);
}

static void timer_fired(bw_timer_t *t, void *arg) {
  tstate_t *st = arg;
  bw_call_t *call = st->call;
  timeout_impl_t *im = st->im;
  if (st->fwd) {
    if (atomic_load(&st->live)) {
      bw_event_t ev = {.type = BW_EVENT_TIMEOUT, .delay_ns = st->armed_ns};
      bw__call_abort(call, timeout_error(st), st->depth, im->layer, &ev);
    }
    bw_call_unref(call); /* the timer's reference */
    return;
  }
  bw_call_t *child = atomic_exchange(&st->child, NULL);
  if (child) {
    bw_error_t *err = timeout_error(st);
    /* Cancel inward with the timeout as the reason, then drop the attempt:
     * its late response is freed with it. */
    bw_call_cancel_with(child, bw_error_ref(err));
    bw_call_free(child);
    bw_event_t ev = {.type = BW_EVENT_TIMEOUT, .error = err, .delay_ns = st->armed_ns};
    bw_layer_emit(im->layer, call, &ev);
    bw_call_complete(call, NULL, NULL, err);
  }
  bw_call_unref(call); /* the timer's reference */
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  tstate_t *st = arg;
  bw_call_t *call = st->call;
  if (atomic_exchange(&st->child, NULL) != child) return; /* timer/cancel owns it */
  bool disarmed = bw_timer_cancel(atomic_load(&st->timer));
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
  if (disarmed) bw_call_unref(call);
}

static bool timeout_finish(bw_service_t *svc, bw_call_t *call, void *state, bool aborted) {
  tstate_t *st = state;
  bw__call_put_deadline(call, st->own_deadline_ns); /* outer nodes see their own again */
  if (bw__call_start_ended(call)) {
    /* forward() has returned (the usual case: an answer inside the start
     * chain, delivered afterwards): armed is final, and no timer means
     * nothing to tell. (Constant orders: gcc makes a variable one seq_cst.) */
    if (!atomic_load_explicit(&st->armed, memory_order_relaxed)) return false;
    atomic_store_explicit(&st->live, false, memory_order_relaxed);
  } else {
    /* seq_cst store then load, against forward()'s store of armed then
     * load of live */
    atomic_store(&st->live, false);
    if (!atomic_load(&st->armed)) return false;
  }
  if (bw_timer_cancel(atomic_load(&st->timer))) bw_call_unref(call);
  return false;
}

/* The fast path; false when the call cannot be forwarded (use a child). */
static bool forward(tstate_t *st, bw_call_t *call, uint64_t dl) {
  uint64_t old_dl = bw_call_deadline_ns(call);
  st->own_deadline_ns = old_dl;
  bw_call_set_deadline_ns(call, dl);
  st->fwd = true;
  st->depth = bw__call_depth(call);
  atomic_store_explicit(&st->live, true, memory_order_relaxed);
  atomic_store_explicit(&st->armed, false, memory_order_relaxed);
  bw__fwd_t f = bw__call_forward(call);
  if (f == BW__FWD_NO) {
    st->fwd = false;
    bw_call_set_deadline_ns(call, old_dl);
    return false;
  }
  /* DONE: cancelled before we handed it on; nothing armed. OK and already
   * done: answered during the start (no timer needed). */
  if (f == BW__FWD_DONE || bw_call_is_done(call)) return true;
  atomic_store(&st->armed, true);
  if (!atomic_load(&st->live)) return true; /* finished meanwhile */
  bw_timer_t *t = atomic_load(&st->timer);
  bw_call_ref(call); /* the timer's */
  bw_error_t *e = bw_timer_arm(t, dl);
  if (e) {
    bw_call_unref(call);
    bw__call_abort(call, e, st->depth, NULL, NULL);
  } else if (!atomic_load(&st->live) && bw_timer_cancel(t)) {
    bw_call_unref(call); /* finish ran before the arm: its cancel found nothing */
  }
  return true;
}

static void timeout_call(bw_service_t *svc, bw_call_t *call) {
  timeout_impl_t *im = bw_service_impl(svc);
  tstate_t *st = bw_call_state(call);
  bw_runtime_t *rt = bw_call_runtime(call);
  st->call = call;
  st->im = im;
  st->fwd = false;
  if (!atomic_load(&st->timer) || st->timer_rt != rt) {
    bw_timer_free(atomic_exchange(&st->timer, NULL));
    bw_timer_t *nt = NULL;
    bw_error_t *e = bw_timer_new(rt, timer_fired, st, &nt);
    /* seq_cst store: pairs with the load in the cancel op */
    atomic_store(&st->timer, nt);
    if (e) {
      bw_call_complete(call, NULL, NULL, e);
      return;
    }
    st->timer_rt = rt;
  }
  /* the start chain's shared reading (at most a start chain early: the
   * deadline is never late) */
  uint64_t now = bw__call_now_ns_shared(call);
  uint64_t dl = now + im->timeout_ns;
  uint64_t parent_dl = bw_call_deadline_ns(call);
  if (parent_dl && parent_dl < dl) dl = parent_dl;
  st->armed_ns = dl > now ? dl - now : 0;
  if (forward(st, call, dl)) return;

  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, NULL);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  bw_call_set_deadline_ns(child, dl);
  bw_call_ref(child); /* keeps it valid through the start below */
  atomic_store(&st->child, child);
  bw_call_child_start(child, on_child, st);
  /* The timer is armed only if the attempt did not finish during its own
   * start (a synchronous or cached answer needs no timer: no wheel lock,
   * no reference). `call` is still alive here: start() holds it for all of
   * ops->call. */
  if (!bw_call_is_done(child)) {
    bw_call_ref(call); /* the timer's */
    e = bw_timer_arm(atomic_load(&st->timer), dl);
    if (e) {
      bw_call_unref(call);
      bw_call_t *c = atomic_exchange(&st->child, NULL);
      if (c) {
        bw_call_cancel_with(c, bw_error_ref(e));
        bw_call_free(c);
      }
      bw_call_complete(call, NULL, NULL, e);
    } else if (atomic_load(&st->child) == NULL) {
      /* on_child or ops->cancel took the child before the timer was
       * armed, so their timer cancel found nothing: disarm it here. seq_cst:
       * their exchange precedes their timer cancel; our arm precedes this
       * load. */
      if (bw_timer_cancel(atomic_load(&st->timer))) bw_call_unref(call);
    }
  }
  /* seq_cst: our store of st->child above, then this load of the call's
   * state; ops->cancel does the reverse (state CAS, then exchange). */
  if (bw_call_is_done(call)) {
    bw_call_t *c = atomic_exchange(&st->child, NULL);
    if (c) bw_call_free(c);
    if (bw_timer_cancel(atomic_load(&st->timer))) bw_call_unref(call);
  }
  bw_call_unref(child);
}

static void timeout_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  tstate_t *st = bw_call_state(call);
  bw_call_t *child = atomic_exchange(&st->child, NULL);
  if (child) {
    bw_call_cancel_with(child, bw_error_ref(reason));
    bw_call_free(child);
  }
  if (bw_timer_cancel(atomic_load(&st->timer))) bw_call_unref(call);
}

static void timeout_state_fini(bw_service_t *svc, void *state) {
  tstate_t *st = state;
  bw_timer_free(atomic_exchange(&st->timer, NULL));
}

static void timeout_destroy(void *impl) { bw__free(impl); }

static const bw_service_ops_t timeout_ops = {
    .kind = "timeout",
    .call_state_size = sizeof(tstate_t),
    .call = timeout_call,
    .cancel = timeout_cancel,
    .state_init = bw__state_init_zero,
    .state_fini = timeout_state_fini,
    .destroy = timeout_destroy,
    .finish = timeout_finish,
};

void bw_timeout_opts_init(bw_timeout_opts_t *opts) {
  memset(opts, 0, sizeof *opts);
  opts->timeout_ms = 30000;
}

bw_error_t *bw_timeout_new(bw_layer_t **out, const bw_timeout_opts_t *opts) {
  bw_timeout_opts_t def;
  if (!opts) {
    bw_timeout_opts_init(&def);
    opts = &def;
  }
  /* Saturated at INT64_MAX ns (292 years): timeout_ms * 1e6 must not wrap
   * (to a tiny timeout), and now + ns (the deadline, per call) must not
   * either, nor the remaining time inner layers read (int64_t). */
  uint64_t ns = opts->timeout_ns;
  if (!ns) ns = opts->timeout_ms > INT64_MAX / 1000000 ? INT64_MAX : opts->timeout_ms * 1000000ull;
  if (ns > INT64_MAX) ns = INT64_MAX;
  if (!out || ns == 0)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "timeout: the timeout must be > 0");
  timeout_impl_t *im = bw__calloc(1, sizeof *im);
  if (!im) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  im->timeout_ns = ns;
  format_duration(im->text, sizeof im->text, ns);
  bw_error_t *e = bw_layer_new(out, &timeout_ops, im);
  if (e) return e;
  im->layer = *out;
  if (opts->scope == BW_TIMEOUT_SCOPE_TOTAL) bw_layer_set_flags(*out, BW_LAYER_TIMEOUT_TOTAL);
  else if (opts->scope == BW_TIMEOUT_SCOPE_PER_ATTEMPT)
    bw_layer_set_flags(*out, BW_LAYER_TIMEOUT_PER_ATTEMPT);
  return NULL;
}
