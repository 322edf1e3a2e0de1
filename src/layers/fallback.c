/* Fallback layer.
 *
 * VALUE and FUNCTION kinds forward the call itself (service_internal.h)
 * and answer in the finish hook, replacing the outcome. The SERVICE kind
 * (and any call that cannot be forwarded) uses children:
 * per call the primary attempt, then (SERVICE kind) a second child on the
 * fallback service. One atomic child slot serves both phases; whoever takes
 * the child out of it (on_child, ops->cancel) owns and frees it, as in
 * timeout.c. The original error is kept (st->orig) while the fallback
 * service runs, and attached to the call (bw_call_fallback_error) when the
 * fallback answers. */
#include <stdatomic.h>
#include <string.h>

#include "bulwark/fallback.h"
#include "bulwark/metrics.h"
#include "core/alloc.h"
#include "layers/service_internal.h"

void bw__call_set_fallback_error(bw_call_t *call, bw_error_t *err); /* service.c */

typedef struct fb_impl {
  bw_fallback_opts_t o;
  void *value_copy;
  bw_layer_t *layer;
} fb_impl_t;

typedef struct fstate {
  bw_call_t *call;
  fb_impl_t *im;
  _Atomic(bw_call_t *) child;
  bw_error_t *orig;
} fstate_t;

static void publish_and_start(fstate_t *st, bw_call_t *child, bw_call_cb cb) {
  bw_call_t *call = st->call;
  bw_call_ref(child);
  atomic_store(&st->child, child);
  bw_call_child_start(child, cb, st);
  /* seq_cst: store of the child, then the call's state (see timeout.c). */
  if (bw_call_is_done(call)) {
    bw_call_t *c = atomic_exchange(&st->child, NULL);
    if (c) {
      bw_call_free(c);
      bw_error_unref(st->orig);
      st->orig = NULL;
    }
  }
  bw_call_unref(child);
}

static bw_error_t *failed(bw_error_t *fb_err, bw_error_t *orig) {
  return bw_error_make(BW_ERR_FALLBACK_FAILED, 0, fb_err, NULL, &orig, 1, __FILE__, __LINE__,
                       "fallback failed");
}

static void on_fb_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  fstate_t *st = arg;
  bw_call_t *call = st->call;
  if (atomic_exchange(&st->child, NULL) != child) return;
  bw_error_t *orig = st->orig;
  st->orig = NULL;
  if (!err) {
    bw__call_set_fallback_error(call, orig);
    bw_call_complete_from_child(call, child);
  } else {
    bw_call_complete(call, NULL, NULL, failed(bw_error_ref(err), orig));
  }
  bw_call_free(child);
}

/* The VALUE / FUNCTION answer for orig (a reference, taken by the answer:
 * attached as the call's fallback error, or inside the fallback-failed
 * error). Returns the error to finish with, or NULL and *resp / *rf. */
static bw_error_t *answer(fb_impl_t *im, bw_call_t *call, bw_error_t *orig, void **resp,
                          bw_destroy_fn *rf) {
  *resp = NULL;
  *rf = NULL;
  if (im->o.kind == BW_FALLBACK_VALUE) {
    void *copy = bw__malloc(im->o.value_len ? im->o.value_len : 1);
    if (!copy) return failed(bw_error_static(BW_ERR_OUT_OF_MEMORY), orig);
    if (im->o.value_len) memcpy(copy, im->value_copy, im->o.value_len);
    bw__call_set_fallback_error(call, orig);
    *resp = copy;
    *rf = bw__free;
    return NULL;
  }
  bw_error_t *e = im->o.fn(im->o.fn_arg, call, orig, resp, rf);
  if (e) {
    if (*resp && *rf) (*rf)(*resp);
    *resp = NULL;
    *rf = NULL;
    return failed(e, orig);
  }
  bw__call_set_fallback_error(call, orig);
  return NULL;
}

static bool wants_fallback(const fb_impl_t *im, const bw_error_t *err) {
  bw_fallback_predicate pred = im->o.predicate ? im->o.predicate : bw_fallback_default_predicate;
  return err && pred(err, im->o.predicate_arg);
}

/* Forwarded call: the inner outcome is in; answer instead if it failed
 * (not when the call was cancelled from outside this node). */
static bool fb_finish(bw_service_t *svc, bw_call_t *call, void *state, bool aborted) {
  fb_impl_t *im = bw_service_impl(svc);
  const bw_error_t *err = bw_call_error(call);
  if (aborted || !wants_fallback(im, err)) return false;
  bw_error_t *orig = bw_error_ref((bw_error_t *)err);
  bw_event_t ev = {.type = BW_EVENT_FALLBACK_USED, .error = orig};
  bw_layer_emit(im->layer, call, &ev);
  void *resp;
  bw_destroy_fn rf;
  bw_error_t *e = answer(im, call, orig, &resp, &rf);
  bw__call_set_outcome(call, resp, rf, e);
  return false;
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  fstate_t *st = arg;
  bw_call_t *call = st->call;
  if (atomic_exchange(&st->child, NULL) != child) return;
  fb_impl_t *im = st->im;
  if (bw_call_is_done(call) || !wants_fallback(im, err)) {
    bw_call_complete_from_child(call, child);
    bw_call_free(child);
    return;
  }
  bw_error_t *orig = bw_error_ref(err);
  bw_call_free(child); /* err is borrowed from child: referenced above */
  bw_event_t ev = {.type = BW_EVENT_FALLBACK_USED, .error = orig};
  bw_layer_emit(im->layer, call, &ev);
  switch (im->o.kind) {
  case BW_FALLBACK_VALUE:
  case BW_FALLBACK_FUNCTION: {
    void *resp;
    bw_destroy_fn rf;
    bw_error_t *e = answer(im, call, orig, &resp, &rf);
    bw_call_complete(call, resp, rf, e);
    return;
  }
  case BW_FALLBACK_SERVICE: {
    bw_call_t *fc;
    bw_error_t *e = bw_call_child_new(&fc, call, im->o.service);
    if (e) {
      bw_call_complete(call, NULL, NULL, failed(e, orig));
      return;
    }
    st->orig = orig;
    publish_and_start(st, fc, on_fb_child);
    return;
  }
  }
  bw_call_complete(call, NULL, NULL, orig);
}

static void fb_call(bw_service_t *svc, bw_call_t *call) {
  fb_impl_t *im = bw_service_impl(svc);
  fstate_t *st = bw_call_state(call);
  st->call = call;
  st->im = im;
  st->orig = NULL;
  if (im->o.kind != BW_FALLBACK_SERVICE && bw__call_forward(call) != BW__FWD_NO) return;
  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, NULL);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  publish_and_start(st, child, on_child);
}

static void fb_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  fstate_t *st = bw_call_state(call);
  bw_call_t *child = atomic_exchange(&st->child, NULL);
  if (child) {
    bw_call_cancel_with(child, bw_error_ref(reason));
    bw_call_free(child);
    bw_error_unref(st->orig);
    st->orig = NULL;
  }
}

static void fb_destroy(void *impl) {
  fb_impl_t *im = impl;
  bw_service_release(im->o.service);
  bw__free(im->value_copy);
  bw__free(im);
}

static const bw_service_ops_t fb_ops = {
    .kind = "fallback",
    .call_state_size = sizeof(fstate_t),
    .call = fb_call,
    .cancel = fb_cancel,
    .destroy = fb_destroy,
    .finish = fb_finish,
};

void bw_fallback_opts_init(bw_fallback_opts_t *o) { memset(o, 0, sizeof *o); }

bool bw_fallback_default_predicate(const bw_error_t *err, void *arg) {
  bw_error_kind_t k = bw_error_kind(err);
  return err && k != BW_ERR_CANCELLED && k != BW_ERR_RUNTIME_SHUTDOWN;
}

bw_error_t *bw_fallback_new(bw_layer_t **out, const bw_fallback_opts_t *opts) {
  if (!out || !opts || (unsigned)opts->kind > BW_FALLBACK_SERVICE ||
      (opts->kind == BW_FALLBACK_FUNCTION && !opts->fn) ||
      (opts->kind == BW_FALLBACK_SERVICE && !opts->service) ||
      (opts->kind == BW_FALLBACK_VALUE && opts->value_len && !opts->value))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "fallback: VALUE needs value (or value_len 0), FUNCTION needs fn, "
                        "SERVICE needs service");
  fb_impl_t *im = bw__calloc(1, sizeof *im);
  if (!im) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  im->o = *opts;
  if (opts->kind == BW_FALLBACK_VALUE && opts->value_len) {
    im->value_copy = bw__malloc(opts->value_len);
    if (!im->value_copy) {
      bw__free(im);
      return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    }
    memcpy(im->value_copy, opts->value, opts->value_len);
  }
  im->o.value = im->value_copy;
  if (opts->kind == BW_FALLBACK_SERVICE) bw_service_ref(opts->service);
  else im->o.service = NULL;
  bw_error_t *e = bw_layer_new(out, &fb_ops, im);
  if (e) return e;
  im->layer = *out;
  return NULL;
}
