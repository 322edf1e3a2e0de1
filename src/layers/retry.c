/* Retry layer.
 *
 * Per call state: the attempt count, the previous delay, a per-call RNG
 * (seeded from the layer's seed and a per-layer call counter, so a run with
 * the same seed and call order replays), every attempt's error (the array
 * is sized from max_attempts when the layer is made: the ops struct lives
 * in the impl so call_state_size can depend on it), a timer for backoff
 * (created once per pooled call object) and the current attempt.
 *
 * Ownership of the per-call state moves between exactly one holder at a
 * time: the starter (ops->call), the in-flight attempt's on_child, the
 * armed backoff timer's callback, or ops->cancel when it steals the child
 * (atomic exchange of st->child) or disarms the timer (bw_timer_cancel
 * returned true). The holder that finds the call done cleans up (frees the
 * collected errors). The timer holds a call reference while armed.
 *
 * Generations: after retry_finish resumed the forwarded call (its first
 * attempt failed), the nodes and service inside may still complete it late
 * (an aborted attempt's answer); those completions lose (service.c, "Call
 * state"). Retry's own completions name the generation it resumed
 * (st->gen; 0 when the call was never resumed), so they still win.
 *
 * Synchronous failures: on_child runs from the trampoline (service.c), so
 * starting the next attempt from it does not nest; 10,000 synchronous
 * failures loop on a flat stack. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>

#include "bulwark/metrics.h"
#include "bulwark/retry.h"
#include "core/alloc.h"
#include "layers/permits.h"
#include "layers/service_internal.h"

typedef struct retry_impl {
  bw_service_ops_t ops; /* per instance: call_state_size depends on max_attempts */
  bw_retry_opts_t o;
  bw_layer_t *layer;    /* back pointer for events (not a reference) */
  _Atomic uint64_t calls;
} retry_impl_t;

typedef struct rstate {
  bw_call_t *call;
  retry_impl_t *im;
  int depth;                 /* this node's forwarding depth in the call */
  uint32_t own_attempt;      /* the call's attempt number and deadline before */
  uint64_t own_deadline_ns;  /* the first attempt (forwarded) changed them */
  _Atomic(bw_timer_t *) timer; /* release-stored once made; cancel loads it */
  bw_runtime_t *timer_rt;
  _Atomic(bw_call_t *) child;
  uint32_t gen;     /* the call's generation this node completes in */
  uint32_t attempt; /* attempts started */
  uint32_t nerrs;
  uint64_t prev_delay_ns;
  uint64_t rng;
  bw_error_t *errs[]; /* max_attempts */
} rstate_t;

static void start_attempt(retry_impl_t *im, rstate_t *st);

static void drop_errs(rstate_t *st) {
  for (uint32_t i = 0; i < st->nerrs; i++) bw_error_unref(st->errs[i]);
  st->nerrs = 0;
}

/* The give-up error (with every attempt's error as related), after its event. */
static bw_error_t *give_up(retry_impl_t *im, rstate_t *st, bw_error_kind_t kind, const char *reason) {
  bw_call_t *call = st->call;
  const bw_error_t *last = st->nerrs ? st->errs[st->nerrs - 1] : NULL;
  uint32_t n = st->nerrs;
  const char *why = kind == BW_ERR_RETRIES_EXHAUSTED ? "no attempts left"
                    : kind == BW_ERR_BUDGET_EXHAUSTED ? "retry budget exhausted"
                                                      : "next attempt would miss the deadline";
  bw_error_t *err = bw_error_make(kind, (int64_t)st->attempt, bw_error_ref(last), NULL, st->errs, n,
                                  __FILE__, __LINE__, "gave up after %" PRIu32 " attempt%s (%s)",
                                  st->attempt, st->attempt == 1 ? "" : "s", why);
  st->nerrs = 0; /* consumed as related */
  bw_event_t ev = {.type = BW_EVENT_GIVE_UP, .error = err, .attempt = st->attempt, .reason = reason};
  bw_layer_emit(im->layer, call, &ev);
  return err;
}

static void backoff_fired(bw_timer_t *t, void *arg) {
  rstate_t *st = arg;
  bw_call_t *call = st->call;
  retry_impl_t *im = st->im;
  if (bw_call_is_done(call)) drop_errs(st);
  else start_attempt(im, st);
  bw_call_unref(call); /* the timer's reference */
}

static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
static uint64_t ms_to_ns(uint64_t ms) { return ms > UINT64_MAX / 1000000u ? UINT64_MAX : ms * 1000000u; }

typedef enum {
  R_PASS, /* pass the attempt's error up unchanged */
  R_FAIL, /* finish with *fail (give-up) */
  R_NEXT, /* start the next attempt now */
  R_WAIT, /* start it after *delay ns (from *now) */
} rnext_t;

/* A failed attempt (err borrowed): record it, emit its events and decide. */
static rnext_t decide(retry_impl_t *im, rstate_t *st, const bw_error_t *err, bw_error_t **fail,
                      uint64_t *delay_ns, uint64_t *now_ns) {
  bw_call_t *call = st->call;
  if (st->nerrs < im->o.max_attempts) st->errs[st->nerrs++] = bw_error_ref((bw_error_t *)err);
  bw_event_t ev = {.type = BW_EVENT_ATTEMPT_FAILED, .error = err, .attempt = st->attempt};
  bw_layer_emit(im->layer, call, &ev);

  bw_retry_predicate pred = im->o.predicate ? im->o.predicate : bw_retry_default_predicate;
  if (!pred(err, im->o.predicate_arg)) return R_PASS; /* not retryable */
  if (st->attempt >= im->o.max_attempts) {
    *fail = give_up(im, st, BW_ERR_RETRIES_EXHAUSTED, "retries_exhausted");
    return R_FAIL;
  }
  const bw_error_t *last = st->errs[st->nerrs - 1];
  if (st->rng == 0) {
    /* one draw of the per-layer sequence per call that backs off */
    uint64_t k = atomic_fetch_add_explicit(&im->calls, 1, memory_order_relaxed);
    uint64_t seed = im->o.seed ^ (k * 0xd1b54a32d192ed03ull);
    st->rng = bw_backoff_rand(&seed);
    if (st->rng == 0) st->rng = 1;
  }
  uint64_t delay = bw_backoff_delay_ns(&im->o.backoff, st->attempt, st->prev_delay_ns, &st->rng);
  int64_t hint_ms = im->o.honor_retry_after ? bw_error_retry_after_ms(last) : 0;
  if (hint_ms > 0) {
    uint64_t h = (uint64_t)hint_ms;
    if (im->o.max_retry_after_ms && h > im->o.max_retry_after_ms) h = im->o.max_retry_after_ms;
    delay = ms_to_ns(h);
  }
  uint64_t now = bw_runtime_now_ns(bw_call_runtime(call));
  uint64_t dl = bw_call_deadline_ns(call);
  /* (saturating: an uncapped delay may be as long as UINT64_MAX ns) */
  if (dl && (dl <= now || sat_add(delay, ms_to_ns(im->o.min_attempt_ms)) >= dl - now)) {
    *fail = give_up(im, st, BW_ERR_DEADLINE_EXCEEDED, "deadline_exceeded");
    return R_FAIL;
  }
  if (im->o.budget && !bw_retry_budget_withdraw(im->o.budget, now)) {
    *fail = give_up(im, st, BW_ERR_BUDGET_EXHAUSTED, "budget_exhausted");
    return R_FAIL;
  }
  st->prev_delay_ns = delay;
  bw_event_t rev = {.type = BW_EVENT_RETRY_SCHEDULED, .error = last, .attempt = st->attempt + 1,
                    .delay_ns = delay};
  bw_layer_emit(im->layer, call, &rev);
  *delay_ns = delay;
  *now_ns = now;
  return delay == 0 ? R_NEXT : R_WAIT;
}

/* Back off, then start the next attempt (the call is RUNNING at this node). */
static void wait_then_retry(retry_impl_t *im, rstate_t *st, uint64_t now, uint64_t delay) {
  bw_call_t *call = st->call;
  bw_runtime_t *rt = bw_call_runtime(call);
  if (!atomic_load(&st->timer) || st->timer_rt != rt) {
    bw_timer_free(atomic_exchange(&st->timer, NULL));
    bw_timer_t *nt = NULL;
    bw_error_t *e = bw_timer_new(rt, backoff_fired, st, &nt);
    /* seq_cst store: pairs with the load in the cancel op */
    atomic_store(&st->timer, nt);
    if (e) {
      drop_errs(st);
      bw__call_complete_gen(call, st->gen, NULL, NULL, e);
      return;
    }
    st->timer_rt = rt;
  }
  bw_call_ref(call); /* the timer's */
  bw_error_t *e = bw_timer_arm(atomic_load(&st->timer), sat_add(now, delay));
  if (e) {
    bw_call_unref(call);
    drop_errs(st);
    bw__call_complete_gen(call, st->gen, NULL, NULL, e);
    return;
  }
  /* seq_cst: a cancel that ran before the arm could not disarm it. */
  if (bw_call_is_done(call) && bw_timer_cancel(atomic_load(&st->timer))) {
    drop_errs(st);
    bw_call_unref(call);
  }
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  rstate_t *st = arg;
  bw_call_t *call = st->call;
  if (atomic_exchange(&st->child, NULL) != child) return; /* cancel stole it */
  retry_impl_t *im = st->im;
  if (!err || bw_call_is_done(call)) {
    if (!err) bw__call_complete_from_child_gen(call, st->gen, child);
    bw_call_free(child);
    drop_errs(st);
    return;
  }
  bw_error_t *fail = NULL;
  uint64_t delay = 0, now = 0;
  switch (decide(im, st, err, &fail, &delay, &now)) {
  case R_PASS:
    bw__call_complete_from_child_gen(call, st->gen, child);
    bw_call_free(child);
    drop_errs(st);
    return;
  case R_FAIL:
    bw_call_free(child);
    bw__call_complete_gen(call, st->gen, NULL, NULL, fail);
    return;
  case R_NEXT:
    bw_call_free(child);
    start_attempt(im, st);
    return;
  case R_WAIT:
    bw_call_free(child);
    wait_then_retry(im, st, now, delay);
    return;
  }
}

/* The first attempt was forwarded (the call itself went inward) and is
 * finished: settle it like on_child would, going on with child attempts
 * after bw__call_resume. Not after a cancel from outside. */
static bool retry_finish(bw_service_t *svc, bw_call_t *call, void *state, bool aborted) {
  rstate_t *st = state;
  retry_impl_t *im = st->im;
  /* what inner nodes changed on the shared call for the first attempt */
  bw_call_set_attempt(call, st->own_attempt);
  bw__call_put_deadline(call, st->own_deadline_ns);
  const bw_error_t *err = bw_call_error(call);
  if (!err || aborted) {
    drop_errs(st);
    return false;
  }
  bw_error_t *fail = NULL;
  uint64_t delay = 0, now = 0;
  rnext_t next = decide(im, st, err, &fail, &delay, &now);
  if (next == R_PASS || next == R_FAIL) {
    if (next == R_FAIL) bw__call_set_outcome(call, NULL, NULL, fail);
    drop_errs(st);
    return false;
  }
  if (!bw__call_resume(call, st->depth, &st->gen)) { /* freed or cancelled meanwhile */
    drop_errs(st);
    return false;
  }
  if (next == R_NEXT) start_attempt(im, st);
  else wait_then_retry(im, st, now, delay);
  return true;
}

static void start_attempt(retry_impl_t *im, rstate_t *st) {
  bw_call_t *call = st->call;
  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, NULL);
  if (e) {
    drop_errs(st);
    bw__call_complete_gen(call, st->gen, NULL, NULL, e);
    return;
  }
  st->attempt++;
  bw_call_set_attempt(child, st->attempt);
  bw_call_ref(child);
  atomic_store(&st->child, child);
  bw_call_child_start(child, on_child, st);
  /* seq_cst: store of st->child, then the call's state (see timeout.c). */
  if (bw_call_is_done(call)) {
    bw_call_t *c = atomic_exchange(&st->child, NULL);
    if (c) {
      bw_call_free(c);
      drop_errs(st);
    }
  }
  bw_call_unref(child);
}

static void retry_call(bw_service_t *svc, bw_call_t *call) {
  retry_impl_t *im = bw_service_impl(svc);
  rstate_t *st = bw_call_state(call);
  st->call = call;
  st->im = im;
  st->gen = 0; /* ops->call runs in the start chain: generation 0 */
  st->attempt = 0;
  st->nerrs = 0;
  st->prev_delay_ns = 0;
  st->rng = 0; /* seeded at the first backoff: no shared counter per call */
  if (im->o.budget) bw_retry_budget_deposit(im->o.budget, bw_runtime_now_ns(bw_call_runtime(call)));
  /* The first attempt is the call itself (forwarded); retry_finish goes on
   * with children if it fails. */
  st->depth = bw__call_depth(call);
  st->own_attempt = bw_call_attempt(call);
  st->own_deadline_ns = bw_call_deadline_ns(call);
  st->attempt = 1;
  bw_call_set_attempt(call, 1);
  bw__fwd_t f = bw__call_forward(call);
  if (f == BW__FWD_OK) return;
  st->attempt = 0;
  bw_call_set_attempt(call, st->own_attempt);
  if (f == BW__FWD_NO) start_attempt(im, st);
}

static void retry_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  rstate_t *st = bw_call_state(call);
  bw_call_t *child = atomic_exchange(&st->child, NULL);
  if (child) {
    bw_call_cancel_with(child, bw_error_ref(reason));
    bw_call_free(child);
    drop_errs(st);
  } else if (bw_timer_cancel(atomic_load(&st->timer))) {
    drop_errs(st);
    bw_call_unref(call);
  }
}

static void retry_state_fini(bw_service_t *svc, void *state) {
  rstate_t *st = state;
  drop_errs(st);
  bw_timer_free(atomic_exchange(&st->timer, NULL));
}

static void retry_destroy(void *impl) {
  retry_impl_t *im = impl;
  bw_retry_budget_release(im->o.budget);
  bw__free(im);
}

void bw_retry_opts_init(bw_retry_opts_t *o) {
  memset(o, 0, sizeof *o);
  o->max_attempts = 3;
  o->backoff.kind = BW_BACKOFF_EXPONENTIAL;
  o->backoff.base_ns = 500ull * 1000000ull;
  o->backoff.multiplier = 2.0;
  o->backoff.cap_ns = 30ull * 1000000000ull;
  o->backoff.jitter = BW_JITTER_FULL;
  o->seed = 0x6277;
  o->honor_retry_after = true;
  o->max_retry_after_ms = 60000;
  o->min_attempt_ms = 0;
}

bw_error_t *bw_retry_new(bw_layer_t **out, const bw_retry_opts_t *opts) {
  bw_retry_opts_t def;
  if (!opts) {
    bw_retry_opts_init(&def);
    opts = &def;
  }
  if (!out || opts->max_attempts == 0 || opts->max_attempts > 100000 ||
      (unsigned)opts->backoff.kind > BW_BACKOFF_EXPONENTIAL ||
      (unsigned)opts->backoff.jitter > BW_JITTER_DECORRELATED ||
      (opts->backoff.kind == BW_BACKOFF_EXPONENTIAL &&
       !(opts->backoff.multiplier >= 1.0 && isfinite(opts->backoff.multiplier))))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "retry: max_attempts must be 1..100000, backoff kind/jitter known, "
                        "exponential multiplier finite and >= 1");
  retry_impl_t *im = bw__calloc(1, sizeof *im);
  if (!im) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  im->o = *opts;
  bw_retry_budget_ref(im->o.budget);
  im->ops.kind = "retry";
  im->ops.call_state_size = sizeof(rstate_t) + opts->max_attempts * sizeof(bw_error_t *);
  im->ops.call = retry_call;
  im->ops.cancel = retry_cancel;
  im->ops.state_init = bw__state_init_zero;
  im->ops.state_fini = retry_state_fini;
  im->ops.destroy = retry_destroy;
  im->ops.finish = retry_finish;
  bw_error_t *e = bw_layer_new(out, &im->ops, im);
  if (e) return e;
  im->layer = *out;
  return NULL;
}

/* ---- default predicate ------------------------------------------------------------ */

/* The reply's error code is its first word; the message may carry one tag
 * such as "redis: " before it. Only that word counts ("ERR unknown
 * subcommand BUSY" is not BUSY). */
static bool redis_retryable(const bw_error_t *e) {
  const char *m = bw_error_message(e);
  if (!m) return false;
  const char *colon = strchr(m, ':');
  if (colon && colon[1] == ' ' && !memchr(m, ' ', (size_t)(colon - m))) m = colon + 2;
  static const char *const prefixes[] = {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN"};
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
    size_t n = strlen(prefixes[i]);
    if (strncmp(m, prefixes[i], n) == 0 && (m[n] == '\0' || m[n] == ' ')) return true;
  }
  return false;
}

bool bw_retry_default_predicate(const bw_error_t *err, void *arg) {
  for (const bw_error_t *e = err; e; e = bw_error_cause(e)) {
    switch (bw_error_kind(e)) {
    case BW_ERR_INJECTED:
      continue; /* chaos wraps the kind it injects */
    case BW_ERR_DEADLINE_EXCEEDED:
      /* not a retry layer's own give-up (it carries its attempts' errors):
       * that is final, like retries_exhausted */
      return bw_error_related_count(e) == 0;
    case BW_ERR_TIMEOUT:
    case BW_ERR_TRANSPORT:
    case BW_ERR_CONNECT:
    case BW_ERR_DNS:
    case BW_ERR_IO:
    case BW_ERR_PROTOCOL:
    case BW_ERR_UNAVAILABLE:
    case BW_ERR_RATE_LIMITED:
      return true;
    case BW_ERR_HTTP_STATUS: {
      int64_t s = bw_error_detail(e);
      return s == 429 || s == 502 || s == 503 || s == 504;
    }
    case BW_ERR_REDIS:
      return redis_retryable(e);
    default:
      return false;
    }
  }
  return false;
}
