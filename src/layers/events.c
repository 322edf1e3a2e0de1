/* Event hooks and bw_layer_emit.
 *
 * Hooks live in a fixed table of 64 slots. Adding takes g_hooks_mu, fills a
 * free slot and publishes it with a release store of `fn` (pairs with the
 * acquire load in bw_layer_emit). Emitting takes no lock: for each slot it
 * raises `busy`, re-checks `fn`, calls it, and drops `busy`. Removing
 * clears `fn` and then waits until `busy` is 0, so when it returns the hook
 * is not running and never will again (a hook removing itself skips the
 * wait). Events are rare (failures, state changes): the fast path with no
 * hook attached is one relaxed load of the hook count. */
#include <sched.h>
#include <string.h>

#include "core/alloc.h"
#include "layers/service_internal.h"

#define MAX_HOOKS 64

struct bw_event_hook {
  _Atomic(bw_event_fn) fn;
  void *arg;
  const bw_service_t *stack;
  const bw_layer_t *layer;
  atomic_int busy;
};

static struct bw_event_hook g_hooks[MAX_HOOKS];
static atomic_int g_nhooks;
static pthread_mutex_t g_hooks_mu = PTHREAD_MUTEX_INITIALIZER;
static BW__TLS const struct bw_event_hook *tl_running_hook;

const char *bw_event_type_name(bw_event_type_t type) {
  switch (type) {
#define BW__EV_NAME(name, num, str) \
  case BW_EVENT_##name:             \
    return str;
    BW_EVENT_TYPES(BW__EV_NAME)
#undef BW__EV_NAME
  case BW_EVENT__MAX:
    break;
  }
  return "unknown";
}

bw_error_t *bw_event_hook_add(bw_event_hook_t **out, const bw_service_t *stack,
                              const bw_layer_t *layer, bw_event_fn fn, void *arg) {
  if (!fn) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_event_hook_add: NULL fn");
  pthread_mutex_lock(&g_hooks_mu);
  for (int i = 0; i < MAX_HOOKS; i++) {
    struct bw_event_hook *h = &g_hooks[i];
    if (atomic_load_explicit(&h->fn, memory_order_relaxed) ||
        atomic_load_explicit(&h->busy, memory_order_acquire))
      continue;
    h->arg = arg;
    h->stack = stack;
    h->layer = layer;
    /* release: pairs with the acquire load of fn in bw_layer_emit, which
     * then sees arg/stack/layer. */
    atomic_store_explicit(&h->fn, fn, memory_order_release);
    atomic_fetch_add_explicit(&g_nhooks, 1, memory_order_relaxed);
    pthread_mutex_unlock(&g_hooks_mu);
    if (out) *out = h;
    return NULL;
  }
  pthread_mutex_unlock(&g_hooks_mu);
  return bw_error_new(BW_ERR_OUT_OF_MEMORY, 0, "bw_event_hook_add: all %d hook slots in use", MAX_HOOKS);
}

void bw_event_hook_remove(bw_event_hook_t *h) {
  if (!h) return;
  pthread_mutex_lock(&g_hooks_mu);
  if (atomic_exchange(&h->fn, NULL)) atomic_fetch_sub_explicit(&g_nhooks, 1, memory_order_relaxed);
  pthread_mutex_unlock(&g_hooks_mu);
  if (tl_running_hook == h) return;
  /* seq_cst: pairs with busy++ then fn re-check in emit. */
  while (atomic_load(&h->busy) != 0) sched_yield();
}

void bw_layer_emit(bw_layer_t *layer, bw_call_t *call, bw_event_t *ev) {
  if (!ev) return;
  ev->layer_kind = bw_layer_kind(layer);
  ev->layer_name = bw_layer_name(layer);
  ev->call = call;
  ev->stack = NULL;
  ev->layer_index = -1;
  ev->now_ns = 0;
  const bw_service_t *stack_svc = NULL;
  if (call) {
    bw__stack_t *st = call->stack;
    ev->now_ns = bw_runtime_now_ns(call->rt);
    /* The layer's position in the call's stack, if it is one of its
     * layers (a fallback's other service may not be). Found by the layer,
     * not by the node handling the call: a call forwarded inward is
     * handled by an inner node while an outer layer's timer reports. */
    for (size_t i = 0; st && i < st->nlayers; i++) {
      if (st->layers[i] == layer) {
        ev->layer_index = (int)i;
        bw__stack_count_event(st, ev->layer_index, ev->type);
        break;
      }
    }
    if (st) {
      ev->stack = st->name[0] ? st->name : NULL;
      /* the stack the call runs in, whatever wraps it (a registry service,
       * an outer layer, another stack) */
      stack_svc = st->svc;
    }
  }
  if (atomic_load_explicit(&g_nhooks, memory_order_relaxed) == 0) return;
  for (int i = 0; i < MAX_HOOKS; i++) {
    struct bw_event_hook *h = &g_hooks[i];
    if (!atomic_load_explicit(&h->fn, memory_order_relaxed)) continue;
    atomic_fetch_add(&h->busy, 1);
    bw_event_fn fn = atomic_load_explicit(&h->fn, memory_order_acquire);
    if (fn && (!h->stack || h->stack == stack_svc) && (!h->layer || h->layer == layer)) {
      const struct bw_event_hook *prev = tl_running_hook;
      tl_running_hook = h;
      fn(ev, h->arg);
      tl_running_hook = prev;
    }
    atomic_fetch_sub_explicit(&h->busy, 1, memory_order_release);
  }
}
