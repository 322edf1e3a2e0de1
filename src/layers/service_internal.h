/* Internal layout of services, calls, layers and stacks (H4's files only:
 * service.c, stack.c, events.c; other layers use bulwark/layer.h). */
#ifndef BW_LAYERS_SERVICE_INTERNAL_H
#define BW_LAYERS_SERVICE_INTERNAL_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "bulwark/layer.h"
#include "core/counter.h"
#include "runtime/internal.h"
#include "bulwark/metrics.h"
#include "bulwark/service.h"

#define BW__SVC_MAGIC 0x62777376u   /* "bwsv" */
#define BW__LAYER_MAGIC 0x62776c79u /* "bwly" */

/* bw_call.state: the call's phase in the low 2 bits; above them its
 * generation: how many times a finish hook made it RUNNING again
 * (bw__call_resume). A completion wins only in the generation it is meant
 * for (see bw__call_complete_gen). */
enum { BW__CALL_IDLE = 0, BW__CALL_RUNNING = 1, BW__CALL_DONE = 2 };
#define BW__CALL_PHASE_MASK 3
#define BW__CALL_PHASE(s) ((s) & BW__CALL_PHASE_MASK)
#define BW__CALL_GEN_SHIFT 2
#define BW__DEPTH_MAX 32 /* forwarding stops here (children take over) */
/* bw_call.starter while a canceller hands its cancel to the starting thread */
#define BW__HANDOFF ((void *)1)
enum {
  BW__CF_CANCEL = 1 << 0,    /* cancel requested */
  BW__CF_ABANDONED = 1 << 1, /* owner freed it before delivery: skip the callback */
};

typedef struct bw__stack bw__stack_t;

/* One node a call from a pool can be forwarded to: the node at that depth,
 * where its state sits in the call's state memory, and (copied from its
 * ops, so forwarding reads one cache line) how many state bytes to zero
 * before its ops->call (0 when it has state_init), its call and finish. */
typedef struct bw__link {
  bw_service_t *node;
  size_t off;
  size_t zero;
  void (*call)(bw_service_t *svc, bw_call_t *call);
  bool (*finish)(bw_service_t *svc, bw_call_t *call, void *state, bool aborted);
} bw__link_t;

struct bw_layer {
  uint32_t magic;
  atomic_int refs;
  unsigned flags;
  const bw_service_ops_t *ops;
  void *impl;
  char *name;
};

typedef struct bw__pool {
  pthread_mutex_t mu;
  bw_call_t *free_list; /* via pool_next */
  bw_call_t *all;       /* every call object ever made, via all_next (scan, fini) */
  size_t total;
} bw__pool_t;

struct bw_service {
  uint32_t magic;
  const bw_service_ops_t *ops;
  void *impl;
  bw_layer_t *layer;   /* node: the layer; NULL for a leaf */
  bw_service_t *inner; /* node: the inner service */
  bw__stack_t *stack;  /* stack this node belongs to (owned by the outermost node) */
  bool owns_stack;
  int layer_index;     /* position in stack, -1 if none */
  size_t call_size;    /* sizeof(bw_call_t) rounded + chain_state */
  size_t own_state;    /* ops->call_state_size rounded to 16 */
  /* The nodes a call from this pool can be forwarded through, by depth
   * (chain[0] is this service; the inner chain follows unless the inner is
   * a built stack; at most BW__DEPTH_MAX), and the bytes of state they
   * need together: a call carries every one of them, fixed per pool. */
  bw__link_t chain[BW__DEPTH_MAX];
  int chain_len;
  size_t chain_state;
  bw__pool_t pool;
  uint64_t pool_id; /* unique per service, never reused (thread caches) */
  bw_service_t *reg_prev, *reg_next; /* global list for the shutdown scan */
  /* Every root call takes and drops a reference: kept off the lines of the
   * fields every call only reads (ops, the chain table). */
  char pad_refs[64];
  atomic_int refs;
};

struct bw_call {
  bw_service_t *svc; /* the pool's service, where the call started (origin) */
  /* The node handling the call now: svc, or the node it was forwarded to.
   * Written by the forwarding thread and by a canceller (the same value);
   * relaxed. */
  _Atomic(bw_service_t *) cur;
  bw_runtime_t *rt;
  bw_call_t *parent;
  bw__stack_t *stack; /* root's stack (events/metrics), inherited */
  bw_call_t *pool_next;
  bw_call_t *all_next;
  bw_call_t *qnext;   /* trampoline queue */
  /* The trampoline (thread) whose queue holds this call's pending delivery,
   * else NULL. Relaxed: only that thread stores &its own queue and clears
   * it, so another thread never reads its own queue's address here. */
  _Atomic(void *) queued_on;
  int fold; /* extra references the pending local delivery drops (owned by
               the thread in queued_on) */
  /* The trampoline (thread) holding this call's starting reference in its
   * pending list (tl_pend[pend_idx]) until its outermost entry ends or the
   * call's delivery is queued there (then folded into it). Relaxed: as
   * queued_on. */
  _Atomic(void *) pend_on;
  int pend_idx;
  atomic_int refs;
  atomic_int state;   /* BW__CALL_* and generation; seq_cst (see cancel vs start) */
  /* Forwarding depth: how many nodes passed the call itself inward (see
   * bw__call_forward). Relaxed: written by the thread running the call's
   * start chain (or a resuming finish hook); others read it only after
   * synchronising with that thread through `starter` or a hand-off. */
  atomic_int depth;
  /* While the call's start chain forwards it: that thread's trampoline
   * (set at the first forward, cleared when start() ends), or BW__HANDOFF
   * once a canceller that won the call left its cancel to that thread
   * (which knows the final depth). NULL otherwise. seq_cst. */
  _Atomic(void *) starter;
  /* Depth at which a cancel finished the call (0 for the caller's or a
   * parent's cancel, a timeout's own depth for its abort), INT32_MAX when
   * the innermost node answered. Finish hooks at depth >= it were aborted
   * from outside. Written by the completion winner before delivery. */
  int abort_depth;
  atomic_int flags;   /* BW__CF_* */
  /* bw_service_call happened (children: from birth). Apart from flags so
   * that starting needs no atomic OR: only the owner starts or frees a
   * call, and it orders those itself (relaxed). */
  atomic_bool started;
  bool is_root;
  bool holds_parent; /* started child: one ref on parent until recycled */
  bool holds_svc;    /* one ref on svc until recycled (roots, foreign children) */
  bool stack_root;   /* svc is a built stack's outermost node: record its metrics */
  _Atomic uint32_t attempt; /* relaxed: retry restores it as deadline_ns */
  bw_call_cb cb;
  void *cb_arg;
  void *req;
  bw_destroy_fn req_free;
  void *resp;
  bw_destroy_fn resp_free;
  bw_error_t *err;
  bw_error_t *fallback_err;
  /* Relaxed atomic: forwarding nodes lower it for the inner ones and put
   * it back in their finish hook, while an aborted inner service may still
   * be reading it on its own thread (it then sees either value). */
  _Atomic uint64_t deadline_ns;
  uint64_t start_ns;
  /* stack_root: when it completed, if that was inside a start chain on
   * the completing thread (the chain's shared reading, see
   * bw__call_now_ns_shared); 0: read the clock when recording. Relaxed
   * atomic: bw__call_now_cheap_ns may read it while a canceller wins. */
  _Atomic uint64_t end_ns;
  void *ctx;
  alignas(16) unsigned char state_mem[];
};

/* Stack info, owned by the outermost node of a built stack. */
struct bw__stack {
  char *name;
  char *label; /* `stack="name"`, escaped for the metrics text */
  bw_service_t *svc; /* the outermost node owning this (not a reference) */
  size_t nlayers;
  bw_layer_t **layers;
  /* calls by outcome, one row per counter shard (core/counter.h): every
   * call of the stack adds to it */
  struct {
    _Atomic uint64_t n[BW_ERR__MAX];
    char pad[64];
  } outcomes[BW__COUNTER_SHARDS];
  _Atomic uint64_t *events; /* nlayers * BW_EVENT__MAX */
  bw_histogram_t *latency;
  bw_metric_t *collectors[3]; /* named stacks: calls, duration, events */
};

/* stack.c: record a finished root call of a stack (relaxed counters). */
void bw__stack_record(bw__stack_t *st, const bw_error_t *err, uint64_t elapsed_ns);
void bw__stack_free(bw__stack_t *st);
/* events.c: count an event for layer_index of st. */
void bw__stack_count_event(bw__stack_t *st, int layer_index, bw_event_type_t type);

/* service.c: the runtime clock for layer decisions made while a call
 * starts. Inside one synchronous start chain (bw_service_call down through
 * every layer's ops->call on this thread) all layers share one reading;
 * otherwise (timer callbacks, deliveries) it reads the clock. */
static inline uint64_t bw__call_now_ns_shared(const bw_call_t *call);
/* (the reading and its runtime, per thread; set while a start chain runs) */
extern BW__TLS bw_runtime_t *bw__tl_now_rt;
extern BW__TLS uint64_t bw__tl_now;
/* Read the clock (and share the reading if inside a library entry). */
uint64_t bw__call_now_ns_read(const bw_call_t *call);
static inline uint64_t bw__call_now_ns_shared(const bw_call_t *call) {
  return bw__tl_now_rt == call->rt ? bw__tl_now : bw__call_now_ns_read(call);
}
/* The call's runtime clock, but cheap: the start chain's shared reading if
 * there is one, else the time an answered call was answered, else on a
 * paused clock the same value and on a real clock CLOCK_MONOTONIC_COARSE
 * (~6 ns instead of ~30 ns here, resolution a few ms, same time base). For
 * layers whose decisions are at the scale of 100 ms or more (breaker
 * windows, long token buckets). permits.c */
uint64_t bw__call_now_cheap_read(const bw_call_t *call);
static inline uint64_t bw__call_now_cheap_ns(const bw_call_t *call) {
  return bw__tl_now_rt == call->rt ? bw__tl_now : bw__call_now_cheap_read(call);
}

/* ---- forwarding (service.c): a node passes the call itself inward ----------
 * Instead of a child call, a layer whose fast path only needs "before" and
 * "after" steps (breaker, bulkhead, rate limit, timeout, fallback by value,
 * retry's first attempt) hands the call to its inner service and gets
 * ops->finish(svc, call, state, aborted) once, on a worker, before the
 * call's callback runs (inner nodes' hooks first). A hook returns false,
 * or true after bw__call_resume (the delivery then stops there). Only from inside the layer's ops->call; afterwards
 * ops->call must not touch the call's outcome or its state except through
 * what it synchronises itself with its finish hook (the call stays
 * allocated until ops->call returns). */
typedef enum {
  BW__FWD_OK,   /* handed on; finish will run */
  BW__FWD_DONE, /* the call was already completed (cancelled): undo, return */
  BW__FWD_NO,   /* cannot forward here (inner is a built stack, too deep): use a child */
} bw__fwd_t;
static inline bw__fwd_t bw__call_forward(bw_call_t *call);
/* The forwarding depth of the node handling `call` now (in its ops->call). */
static inline int bw__call_depth(const bw_call_t *call) {
  return atomic_load_explicit(&((bw_call_t *)call)->depth, memory_order_relaxed);
}
/* Finish a call forwarded through the node at `depth` with `err` (owned),
 * as a cancel from that node would: the innermost node's ops->cancel runs,
 * `ev` (if not NULL) is emitted for `layer`, then the call is delivered
 * (finish hooks, callback). False if it was already complete. */
bool bw__call_abort(bw_call_t *call, bw_error_t *err, int depth, bw_layer_t *layer, bw_event_t *ev);
/* In the finish hook of the node at `depth`: make the finished call RUNNING
 * again at that node (its outcome is dropped; the hooks of outer nodes have
 * not run), so the node can go on with children. False (nothing changed)
 * if the caller cancelled or freed it. A cancel racing with the resume
 * still completes it once. On true, *gen is the call's new generation:
 * from now on only bw__call_complete_gen(call, *gen, ...) (the resuming
 * node's own completions), cancels, and aborts from nodes outside `depth`
 * can complete it. The nodes inside were aborted or answered already, yet
 * may still hold the call and complete it late (bw_call_complete after a
 * cancel is allowed and ignored): such a completion must not end the new
 * attempt, so bw_call_complete, bw_call_complete_from_child and
 * bw__call_abort from an inner node lose in a later generation. */
bool bw__call_resume(bw_call_t *call, int depth, uint32_t *gen);
/* bw_call_complete / bw_call_complete_from_child for a node that resumed
 * the call: they win only while the call is RUNNING in generation `gen`
 * (the public ones: in generation 0, the only one in which a call is
 * forwarded inward). */
bool bw__call_complete_gen(bw_call_t *call, uint32_t gen, void *resp, bw_destroy_fn resp_free,
                           bw_error_t *err);
bool bw__call_complete_from_child_gen(bw_call_t *call, uint32_t gen, bw_call_t *child);
/* In a finish hook: replace the outcome (resp/err owned; the old ones are
 * freed). */
void bw__call_set_outcome(bw_call_t *call, void *resp, bw_destroy_fn resp_free, bw_error_t *err);

/* The service whose pool holds the call's memory (where it started; not
 * the node handling it now, which forwarding and resuming change). A
 * client holding a call past its completion keeps this one alive. */
static inline bw_service_t *bw__call_pool_service(const bw_call_t *call) { return call->svc; }

/* Set the deadline as is (no clamping to the parent's): forwarding nodes
 * restoring what they changed. */
static inline void bw__call_put_deadline(bw_call_t *call, uint64_t ns) {
  atomic_store_explicit(&call->deadline_ns, ns, memory_order_relaxed);
}

/* In a finish hook: true once the start chain that forwarded `call` has
 * returned. Then everything the forwarding nodes' ops->call wrote is
 * visible here (start() clears the mark with a release store or a seq_cst
 * CAS, read here with acquire), so a hook needs no ordering of its own
 * against its ops->call. (A call that can be forwarded is marked before it
 * runs: NULL here never means "not started yet".) */
static inline bool bw__call_start_ended(const bw_call_t *call) {
  return atomic_load_explicit(&((bw_call_t *)call)->starter, memory_order_acquire) == NULL;
}

/* A per-thread address naming the thread that runs a call's start chain
 * (bw_call.starter). */
extern BW__TLS char bw__tl_token;

/* Inline so that a layer's "forward, then return" becomes a jump to the
 * inner node's ops->call (no stack frame per layer). start() marked the
 * call as moved inward by this thread before its state CAS, so a canceller
 * that wins leaves ops->cancel and the delivery to us (start() sees the
 * hand-off when ops->call returns) and the depth below needs no atomic
 * read-modify-write. The state check only saves forwarding a call already
 * cancelled. */
static inline bw__fwd_t bw__call_forward(bw_call_t *call) {
  const bw_service_t *origin = call->svc;
  int d = atomic_load_explicit(&call->depth, memory_order_relaxed) + 1;
  if (d >= origin->chain_len) return BW__FWD_NO;
  const bw__link_t *l = &origin->chain[d];
  if (l->zero) memset(call->state_mem + l->off, 0, l->zero);
  /* (a call is forwarded in generation 0 only: its start chain) */
  if (atomic_load_explicit(&call->state, memory_order_relaxed) != BW__CALL_RUNNING)
    return BW__FWD_DONE;
  atomic_store_explicit(&call->depth, d, memory_order_relaxed);
  atomic_store_explicit(&call->cur, l->node, memory_order_relaxed);
  l->call(l->node, call);
  return BW__FWD_OK;
}

/* ---- inline accessors for the library's own layers ---------------------------
 * The public accessors (service.h, layer.h) are functions; on the hot path
 * of every layer a call to each of them costs more than what it does.
 * Inside the library these inline versions replace them (the public
 * definitions in service.c are compiled before this is included there). */
static inline void *bw__inl_call_state(bw_call_t *c) {
  return c->state_mem +
         c->svc->chain[atomic_load_explicit(&c->depth, memory_order_relaxed)].off;
}
static inline bool bw__inl_call_is_done(const bw_call_t *c) {
  return BW__CALL_PHASE(atomic_load((atomic_int *)&c->state)) == BW__CALL_DONE;
}
static inline const bw_error_t *bw__inl_call_error(const bw_call_t *c) {
  return bw__inl_call_is_done(c) ? c->err : NULL;
}
static inline uint64_t bw__inl_call_deadline_ns(const bw_call_t *c) {
  return atomic_load_explicit(&((bw_call_t *)c)->deadline_ns, memory_order_relaxed);
}
static inline void bw__inl_call_set_deadline_ns(bw_call_t *c, uint64_t ns) {
  uint64_t pd = c->parent ? bw__inl_call_deadline_ns(c->parent) : 0;
  if (pd && (ns == 0 || ns > pd)) ns = pd;
  bw__call_put_deadline(c, ns);
}
/* (the start chain's shared clock reading when there is one) */
static inline int64_t bw__inl_call_remaining_ns(const bw_call_t *c) {
  uint64_t dl = bw__inl_call_deadline_ns(c);
  if (!dl) return INT64_MAX;
  uint64_t now = bw__call_now_ns_shared(c);
  return now >= dl ? -(int64_t)(now - dl) : (int64_t)(dl - now);
}
static inline uint32_t bw__inl_call_attempt(const bw_call_t *c) {
  return atomic_load_explicit(&((bw_call_t *)c)->attempt, memory_order_relaxed);
}
static inline void bw__inl_call_set_attempt(bw_call_t *c, uint32_t attempt) {
  atomic_store_explicit(&c->attempt, attempt, memory_order_relaxed);
}
#ifndef BW__SERVICE_C
#define bw_call_deadline_ns(c) bw__inl_call_deadline_ns(c)
#define bw_call_set_deadline_ns(c, ns) bw__inl_call_set_deadline_ns(c, ns)
#define bw_call_remaining_ns(c) bw__inl_call_remaining_ns(c)
#define bw_call_attempt(c) bw__inl_call_attempt(c)
#define bw_call_set_attempt(c, a) bw__inl_call_set_attempt(c, a)
#define bw_call_state(c) bw__inl_call_state(c)
#define bw_call_is_done(c) bw__inl_call_is_done(c)
#define bw_call_error(c) bw__inl_call_error(c)
#define bw_call_runtime(c) ((c)->rt)
#define bw_service_impl(s) ((s)->impl)
#endif

/* service.c: a node service for a layer (stack.c uses it). */
bw_error_t *bw__node_new(bw_layer_t *layer, bw_service_t *inner, bw_service_t **out);

#endif
