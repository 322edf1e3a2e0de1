/* Stack builder, layer-order check and per-stack metrics.
 *
 * A stack is a chain of node services (one per layer, made for this stack)
 * around the inner service. The outermost node owns the stack info (name,
 * layer list, counters, latency histogram) and every node points at it with
 * its layer index, so events can be attributed to (stack, position). A stack
 * with no layers is a pass-through node of kind "stack".
 *
 * Metrics are relaxed atomic counters written at root-call completion
 * (service.c record_root) and by bw_layer_emit (events.c). Named stacks
 * register three collectors (calls, duration, layer events) that the
 * Prometheus writer groups by family. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/metrics_internal.h"
#include "layers/service_internal.h"

/* ---- pass-through node for an empty stack ----------------------------------- */

static void pass_done(bw_call_t *child, const bw_error_t *err, void *arg) {
  bw_call_t *call = arg;
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
}

static void pass_call(bw_service_t *svc, bw_call_t *call) {
  /* the call itself goes inward: nothing to do before or after */
  bw__fwd_t f = bw__call_forward(call);
  if (f != BW__FWD_NO) return;
  bw_call_t *child;
  bw_error_t *e = bw_call_child_new(&child, call, NULL);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    return;
  }
  bw_call_child_start(child, pass_done, call);
}

static const bw_service_ops_t pass_ops = {.kind = "stack", .call = pass_call};

/* ---- order check ------------------------------------------------------------------ */

static bool kind_is(bw_layer_t *l, const char *k) { return strcmp(bw_layer_kind(l), k) == 0; }

static void warn(bw_stack_warnings_t *w, size_t *count, bw_stack_warning_code_t code,
                 size_t outer, size_t inner, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void warn(bw_stack_warnings_t *w, size_t *count, bw_stack_warning_code_t code,
                 size_t outer, size_t inner, const char *fmt, ...) {
  if (w && *count < BW_STACK_MAX_WARNINGS) {
    bw_stack_warning_t *it = &w->items[*count];
    it->code = code;
    it->outer = outer;
    it->inner = inner;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->message, sizeof it->message, fmt, ap);
    va_end(ap);
  }
  (*count)++;
}

size_t bw_stack_check_order(bw_layer_t *const *layers, size_t n, bw_stack_warnings_t *out) {
  size_t count = 0;
  if (out) memset(out, 0, sizeof *out);
  if (!layers) n = 0;
  for (size_t i = 0; i < n; i++) {
    bw_layer_t *a = layers[i];
    if (!a) continue;
    if (kind_is(a, "fallback") && i != 0) {
      warn(out, &count, BW_STACK_WARN_FALLBACK_NOT_OUTERMOST, 0, i,
           "fallback at position %zu is not outermost: %s outside it never sees its errors; "
           "move fallback to the front", i, bw_layer_kind(layers[0]));
    }
    if (kind_is(a, "chaos") && i != n - 1) {
      warn(out, &count, BW_STACK_WARN_CHAOS_NOT_INNERMOST, i, n - 1,
           "chaos at position %zu is not innermost: faults skip %s inside it; put chaos last",
           i, bw_layer_kind(layers[n - 1]));
    }
    for (size_t j = i + 1; j < n; j++) {
      bw_layer_t *b = layers[j];
      if (!b) continue;
      /* a is outside b */
      if (kind_is(a, "circuit_breaker") && kind_is(b, "retry"))
        warn(out, &count, BW_STACK_WARN_BREAKER_OUTSIDE_RETRY, i, j,
             "circuit_breaker (%zu) outside retry (%zu): retries bypass the breaker and it "
             "counts one failure per N attempts; put retry outside the breaker", i, j);
      if (kind_is(a, "bulkhead") && kind_is(b, "retry"))
        warn(out, &count, BW_STACK_WARN_BULKHEAD_OUTSIDE_RETRY, i, j,
             "bulkhead (%zu) outside retry (%zu): a permit is held through every backoff; "
             "put the bulkhead inside retry", i, j);
      if (kind_is(a, "rate_limit") && kind_is(b, "retry"))
        warn(out, &count, BW_STACK_WARN_RATE_LIMIT_OUTSIDE_RETRY, i, j,
             "rate_limit (%zu) outside retry (%zu): retries are not rate limited; put the "
             "rate limit inside retry", i, j);
      if (kind_is(a, "retry") && kind_is(b, "retry"))
        warn(out, &count, BW_STACK_WARN_NESTED_RETRY, i, j,
             "retry (%zu) around retry (%zu): attempts multiply; keep one retry layer", i, j);
      if (kind_is(a, "retry") && kind_is(b, "timeout") &&
          (bw_layer_flags(b) & BW_LAYER_TIMEOUT_TOTAL))
        warn(out, &count, BW_STACK_WARN_TOTAL_TIMEOUT_INSIDE_RETRY, i, j,
             "timeout (%zu) is meant as a total timeout but sits inside retry (%zu), so it "
             "bounds each attempt only; move it outside retry", j, i);
      if (kind_is(a, "timeout") && kind_is(b, "retry") &&
          (bw_layer_flags(a) & BW_LAYER_TIMEOUT_PER_ATTEMPT))
        warn(out, &count, BW_STACK_WARN_ATTEMPT_TIMEOUT_OUTSIDE_RETRY, i, j,
             "timeout (%zu) is meant per attempt but sits outside retry (%zu), so it bounds "
             "all attempts together; move it inside retry", i, j);
      if (kind_is(a, "timeout") && kind_is(b, "retry") &&
          !(bw_layer_flags(a) & (BW_LAYER_TIMEOUT_PER_ATTEMPT | BW_LAYER_TIMEOUT_TOTAL))) {
        bool inner_timeout = false;
        for (size_t k = j + 1; k < n; k++)
          if (layers[k] && kind_is(layers[k], "timeout")) inner_timeout = true;
        if (!inner_timeout)
          warn(out, &count, BW_STACK_WARN_RETRY_NO_ATTEMPT_TIMEOUT, i, j,
               "timeout (%zu) outside retry (%zu) with no timeout inside: one hung attempt "
               "uses the whole budget and is never retried; add a per-attempt timeout "
               "inside retry (or set the timeout's scope)", i, j);
      }
      if (bw_layer_kind(a) == bw_layer_kind(b) || kind_is(a, bw_layer_kind(b))) {
        if (!kind_is(a, "retry") && !kind_is(a, "timeout") && !kind_is(a, "chaos"))
          warn(out, &count, BW_STACK_WARN_DUPLICATE, i, j,
               "%s appears twice (%zu and %zu)", bw_layer_kind(a), i, j);
      }
    }
  }
  if (out) out->count = count;
  return count;
}

/* ---- stack info and metrics -------------------------------------------------------- */

void bw__stack_record(bw__stack_t *st, const bw_error_t *err, uint64_t elapsed_ns) {
  bw_error_kind_t k = err ? bw_error_kind(err) : BW_ERR_NONE;
  if ((unsigned)k >= BW_ERR__MAX) k = BW_ERR_INTERNAL;
  unsigned shard = bw__counter_shard();
  bw__shard_add(&st->outcomes[shard].n[k], shard, 1);
  bw_histogram_record(st->latency, elapsed_ns);
}

void bw__stack_count_event(bw__stack_t *st, int layer_index, bw_event_type_t type) {
  if (!st || layer_index < 0 || (size_t)layer_index >= st->nlayers || type <= 0 ||
      type >= BW_EVENT__MAX)
    return;
  atomic_fetch_add_explicit(&st->events[(size_t)layer_index * BW_EVENT__MAX + type], 1,
                            memory_order_relaxed);
}

static uint64_t outcome_count(const bw__stack_t *st, bw_error_kind_t k) {
  uint64_t n = 0;
  for (unsigned s = 0; s < BW__COUNTER_SHARDS; s++)
    n += atomic_load_explicit((_Atomic uint64_t *)&st->outcomes[s].n[k], memory_order_relaxed);
  return n;
}

/* The stack's label (`stack="name"`, escaped once at build: a quote or a
 * line feed in a name would otherwise break the whole output). Layer
 * names can change after the build (bw_layer_set_name): escaped here. */
static void collect_calls(void *arg, bw__prom_t *w) {
  bw__stack_t *st = arg;
  for (int k = 0; k < BW_ERR__MAX; k++) {
    uint64_t v = outcome_count(st, (bw_error_kind_t)k);
    if (!v && k != BW_ERR_NONE) continue;
    bw__prom_printf(w, "bulwark_calls_total{%s,outcome=\"%s\"} %llu\n", st->label,
                    k == BW_ERR_NONE ? "success" : bw_error_kind_name((bw_error_kind_t)k),
                    (unsigned long long)v);
  }
}

static void collect_latency(void *arg, bw__prom_t *w) {
  bw__stack_t *st = arg;
  bw__prom_histogram(w, "bulwark_call_duration_seconds", st->label, st->latency);
}

static void collect_events(void *arg, bw__prom_t *w) {
  bw__stack_t *st = arg;
  for (size_t i = 0; i < st->nlayers; i++) {
    char *kind = NULL, *name = NULL;
    for (int t = 1; t < BW_EVENT__MAX; t++) {
      uint64_t v = atomic_load_explicit(&st->events[i * BW_EVENT__MAX + t], memory_order_relaxed);
      if (!v) continue;
      if (!kind) {
        const char *n = bw_layer_name(st->layers[i]);
        kind = bw__prom_escape(bw_layer_kind(st->layers[i]));
        name = bw__prom_escape(n ? n : "");
        if (!kind || !name) {
          bw__prom_fail(w);
          break;
        }
      }
      bw__prom_printf(w,
                      "bulwark_layer_events_total{%s,layer=\"%zu:%s\",name=\"%s\","
                      "event=\"%s\"} %llu\n",
                      st->label, i, kind, name, bw_event_type_name((bw_event_type_t)t),
                      (unsigned long long)v);
    }
    bw__free(kind);
    bw__free(name);
  }
}

void bw__stack_free(bw__stack_t *st) {
  if (!st) return;
  for (int i = 0; i < 3; i++) bw_metric_remove(st->collectors[i]);
  for (size_t i = 0; i < st->nlayers; i++) bw_layer_release(st->layers[i]);
  bw__free(st->layers);
  bw__free(st->events);
  bw_histogram_free(st->latency);
  bw__free(st->name);
  bw__free(st->label);
  bw__free(st);
}

static bw__stack_t *stack_info_new(const char *name, bw_layer_t *const *layers, size_t n) {
  bw__stack_t *st = bw__calloc(1, sizeof *st);
  if (!st) return NULL;
  st->layers = bw__calloc(n ? n : 1, sizeof *st->layers);
  st->events = bw__calloc((n ? n : 1) * BW_EVENT__MAX, sizeof *st->events);
  st->name = bw__strdup(name ? name : "");
  st->label = bw__prom_label("stack", name ? name : "");
  bw_error_t *e = bw_histogram_new(&st->latency);
  if (e || !st->layers || !st->events || !st->name || !st->label) {
    bw_error_unref(e);
    bw__stack_free(st);
    return NULL;
  }
  st->nlayers = n;
  for (size_t i = 0; i < n; i++) st->layers[i] = bw_layer_ref(layers[i]);
  if (name) {
    e = bw__metrics_collector_add(&st->collectors[0], "bulwark_calls_total",
                                  "Calls completed, by final outcome", BW__PROM_COUNTER,
                                  collect_calls, st);
    if (!e)
      e = bw__metrics_collector_add(&st->collectors[1], "bulwark_call_duration_seconds",
                                    "Call latency through the stack", BW__PROM_HISTOGRAM,
                                    collect_latency, st);
    if (!e)
      e = bw__metrics_collector_add(&st->collectors[2], "bulwark_layer_events_total",
                                    "Events reported by layers", BW__PROM_COUNTER,
                                    collect_events, st);
    if (e) {
      bw_error_unref(e);
      bw__stack_free(st);
      return NULL;
    }
  }
  return st;
}

bw_error_t *bw_stack_build(bw_service_t **out, const char *name, bw_layer_t *const *layers,
                           size_t n, bw_service_t *inner, bw_stack_warnings_t *warnings) {
  if (!out || !inner || inner->magic != BW__SVC_MAGIC || (n && !layers))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_stack_build: out and inner are required");
  for (size_t i = 0; i < n; i++)
    if (!layers[i] || layers[i]->magic != BW__LAYER_MAGIC)
      return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_stack_build: layer %zu is not a layer", i);
  bw_stack_check_order(layers, n, warnings);

  bw__stack_t *st = stack_info_new(name, layers, n);
  if (!st) return bw_error_static(BW_ERR_OUT_OF_MEMORY);

  bw_service_t *cur = bw_service_ref(inner);
  if (n == 0) {
    bw_layer_t *pl;
    bw_error_t *e = bw_layer_new(&pl, &pass_ops, NULL);
    if (!e) {
      bw_service_t *node;
      e = bw__node_new(pl, cur, &node);
      bw_layer_release(pl);
      if (!e) {
        bw_service_release(cur);
        cur = node;
      }
    }
    if (e) {
      bw_service_release(cur);
      bw__stack_free(st);
      return e;
    }
    cur->stack = st;
    cur->layer_index = -1;
  } else {
    for (size_t i = n; i-- > 0;) {
      bw_service_t *node;
      bw_error_t *e = bw__node_new(layers[i], cur, &node);
      bw_service_release(cur);
      if (e) {
        bw__stack_free(st);
        return e;
      }
      node->stack = st;
      node->layer_index = (int)i;
      cur = node;
    }
  }
  cur->owns_stack = true;
  st->svc = cur;
  *out = cur;
  return NULL;
}

bw_layer_t *const *bw_stack_layers(const bw_service_t *stack, size_t *n) {
  if (!stack || !stack->owns_stack || !stack->stack) {
    if (n) *n = 0;
    return NULL;
  }
  if (n) *n = stack->stack->nlayers;
  return stack->stack->layers;
}

/* ---- stack metrics API ------------------------------------------------------------- */

static const bw__stack_t *stack_of(const bw_service_t *s) {
  return s && s->owns_stack ? s->stack : NULL;
}

uint64_t bw_stack_outcome_count(const bw_service_t *stack, bw_error_kind_t kind) {
  const bw__stack_t *st = stack_of(stack);
  if (!st || (unsigned)kind >= BW_ERR__MAX) return 0;
  return outcome_count(st, kind);
}

uint64_t bw_stack_call_count(const bw_service_t *stack) {
  uint64_t sum = 0;
  for (int k = 0; k < BW_ERR__MAX; k++) sum += bw_stack_outcome_count(stack, (bw_error_kind_t)k);
  return sum;
}

const bw_histogram_t *bw_stack_latency(const bw_service_t *stack) {
  const bw__stack_t *st = stack_of(stack);
  return st ? st->latency : NULL;
}

uint64_t bw_stack_event_count(const bw_service_t *stack, size_t layer_index,
                              bw_event_type_t type) {
  const bw__stack_t *st = stack_of(stack);
  if (!st || layer_index >= st->nlayers || type <= 0 || type >= BW_EVENT__MAX) return 0;
  return atomic_load_explicit((_Atomic uint64_t *)&st->events[layer_index * BW_EVENT__MAX + type],
                              memory_order_relaxed);
}
