/* Services and calls: the call state machine, pools, the completion
 * trampoline, function services and the shutdown sweep.
 *
 * # Call state
 * state: IDLE -> RUNNING (start) -> DONE (first of bw_call_complete or a
 * cancel wins a CAS RUNNING->DONE). The winner stores the result and
 * delivers it; losers free what they brought. That single CAS is the whole
 * exactly-once argument; everything else is about memory lifetime.
 * A finish hook may make a DONE call RUNNING again (bw__call_resume, retry
 * after its forwarded first attempt failed); the state word then counts a
 * new generation. Nodes and services inside the resuming node may still
 * hold the call (an aborted attempt that answers late): their completions
 * (bw_call_complete, bw_call_complete_from_child, a timeout's abort) win
 * only in the generation they were handed the call in, so they lose
 * against the resumed call; the resuming node completes it with
 * bw__call_complete_gen, cancels from outside win in any generation.
 *
 * # References (refs)
 * A call's memory returns to its pool when refs hits 0. Holders:
 *   - the owner (user for a root, the parent layer for a child): 1, dropped
 *     by bw_call_free;
 *   - "in flight": 1 from start until the delivery has run (the callback
 *     returned, or was skipped because the owner abandoned the call);
 *   - "starting": 1 while start() runs ops->call (a cancel elsewhere may
 *     deliver meanwhile); for a root both are taken by bw_call_new already,
 *     so bw_call_free of a root never started drops three;
 *   - a started child holds 1 on its parent until the child's memory is
 *     recycled, so a parent's state is alive while its children's callbacks
 *     run, and a late child (abandoned, or pinned by a timer) keeps the
 *     chain up to the root, and so every service of the stack, alive;
 *   - layers add their own (timers, queues) with bw_call_ref/unref;
 *   - bw_call_cancel holds a temporary one.
 * A root call holds a reference on its service; a child for its parent
 * node's inner service relies on the chain (child -> parent -> ... -> root
 * -> stack node -> inner nodes); a child for any other service (fallback's,
 * a registry's current stack) holds a reference on that service itself
 * (holds_svc), so a pool always outlives every call taken from it.
 *
 * # Forwarding (service_internal.h)
 * A node may pass the call itself to its inner node instead of making a
 * child: `depth` counts how far it went, the pool's chain table gives the
 * node and state at each depth, and each forwarding node's finish hook runs
 * once at delivery (run_finish), innermost first. A cancel that wins acts
 * on the node at the current depth (finish_cancel). Only the thread running
 * the call's start chain moves the depth; start() marks the call
 * (`starter`) before it runs when it can be forwarded at all, and a
 * canceller that wins generation 0 while the mark is set hands
 * finish_cancel to that thread, which runs it when start() returns (the
 * depth is final then). A finish hook may make the call RUNNING again
 * (bw__call_resume, retry going on with children); a resumed call is not
 * forwarded.
 *
 * # Stack metrics
 * A call on a built stack's outermost node (stack_root) records the
 * stack's outcome and latency, root or child: a stack wrapped by a
 * registry service, a layer or another stack still counts its own calls;
 * descendants inherit the stack for events.
 *
 * # Where completions run (the trampoline)
 * Per thread: `busy` counts nested library entries (a start, a delivery);
 * `submitting` counts nested bw_service_call. A delivery that happens while
 * busy is queued on the thread's intrusive queue and run when the outermost
 * entry returns, so a layer's start code finishes before its child's
 * callback runs and 10,000 synchronous failures under retry loop instead of
 * nesting. A root's user callback never runs inside bw_service_call: while
 * submitting, root deliveries are deferred to a worker (bw__runtime_defer).
 * Deliveries on a thread that is not a worker of the call's runtime are
 * deferred too, and bw_service_call from outside a worker defers the start,
 * so service and layer code always runs on workers. If the runtime refuses
 * deferred work (shut down) delivery runs inline: exactly once beats "on a
 * worker".
 *
 * # Shutdown
 * The first root call on a runtime registers a background service there.
 * When the runtime shuts down it cancels that service's token first; the
 * sweep then cancels every RUNNING call of that runtime with
 * BW_ERR_RUNTIME_SHUTDOWN (found by scanning the pools of all live
 * services; a call is only touched after a successful "ref if not zero"),
 * so timers that will never fire cannot strand a call.
 *
 * Lock order: g_reg.mu (service registry / runtime trackers) -> pool.mu.
 * No lock is held while calling ops or callbacks. */
#define BW__SERVICE_C /* defines the public accessors: no inline aliases */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/fallback.h"
#include "bulwark/sync.h"
#include "core/alloc.h"
#include "layers/service_internal.h"
#include "runtime/internal.h"

/* ---- thread-local trampoline ------------------------------------------------ */

typedef struct tramp {
  int busy;
  int submitting;
  bw_call_t *head, *tail;
} tramp_t;
static BW__TLS tramp_t tl;
/* The call whose callback runs on this thread now, and whether that
 * callback freed it (then run_delivery drops both references at once). */
static BW__TLS bw_call_t *tl_delivering;
static BW__TLS bool tl_freed_in_cb;
/* The call whose ops->call runs on this thread now, and whether its
 * delivery was queued here meanwhile (then the starting reference is folded
 * into that delivery instead of an atomic decrement in start()). */
static BW__TLS bw_call_t *tl_starting;
static BW__TLS bool tl_start_folded;
/* ...and whether a completion on this thread won it meanwhile (see end_mark). */
static BW__TLS bool tl_start_won;
/* Shared clock reading of the current start chain (see
 * bw__call_now_ns_shared); valid while bw__tl_now_rt is set. */
BW__TLS bw_runtime_t *bw__tl_now_rt;
BW__TLS char bw__tl_token;
BW__TLS uint64_t bw__tl_now;

static void run_delivery(bw_call_t *c);
static void unref_n(bw_call_t *call, int n);
static bool abort_call(bw_call_t *call, bw_error_t *err, int abort_depth, bool fenced,
                       bw_layer_t *layer, bw_event_t *ev);

/* Per-thread cache of free calls, one slot per pool (direct-mapped by the
 * pool's unique id, which is sequential, so the nodes of one stack do not
 * collide). The pool mutex is taken only to refill, overflow or evict.
 * A slot whose pool is gone is recognised by its id (ids are never reused)
 * and dropped without touching its objects (pool_fini freed them). */
#define TCACHE_SLOTS 64
/* At most TCACHE_MAX calls per slot; a full slot returns TCACHE_BATCH of
 * them to the pool at once and an empty one refills up to TCACHE_BATCH: a
 * small bound keeps free calls where other threads can take them, so the
 * pool stops growing at its in-flight high-water mark plus the caches. */
#define TCACHE_MAX 4
#define TCACHE_BATCH 2
typedef struct tcache_slot {
  uint64_t id;
  bw_service_t *svc;
  bw_call_t *head;
  unsigned n;
} tcache_slot_t;

/* Starting references kept past their start() until the outermost entry of
 * this thread ends: a call whose delivery is queued here meanwhile (the
 * usual case: layers complete from their child's callback in the same
 * drain) drops it with that delivery, with no atomic of its own. */
#define PEND_MAX 64
static BW__TLS int tl_npend; /* in tl_caches->pend */

/* This thread's free-call caches and pending starting references, on the
 * heap behind one pointer: as thread-locals they would take 2.5 KiB of
 * static TLS, more than glibc keeps for libraries loaded with dlopen (all
 * of the library's thread-locals are initial-exec, BW__TLS, for speed).
 * Made at a thread's first call; at its exit the cached calls go back to
 * their pools. NULL (out of memory): no caching on this thread. */
typedef struct thread_caches {
  tcache_slot_t slot[TCACHE_SLOTS];
  bw_call_t *pend[PEND_MAX];
} thread_caches_t;
static BW__TLS thread_caches_t *tl_caches;

static void flush_pend(void) {
  while (tl_npend > 0) {
    /* copied out: a recycle below may run code that pends again */
    bw_call_t *list[PEND_MAX];
    int n = tl_npend;
    memcpy(list, tl_caches->pend, (size_t)n * sizeof list[0]);
    tl_npend = 0;
    /* first unmark them all, so no delivery queued during the unrefs folds
     * one of them again */
    for (int i = 0; i < n; i++)
      if (list[i]) atomic_store_explicit(&list[i]->pend_on, NULL, memory_order_relaxed);
    for (int i = 0; i < n; i++)
      if (list[i]) unref_n(list[i], 1);
  }
}

static void drain(void) {
  tl.busy = 1;
  bw_call_t *c;
  while ((c = tl.head) != NULL) {
    tl.head = c->qnext;
    if (!tl.head) tl.tail = NULL;
    c->qnext = NULL;
    run_delivery(c);
  }
  tl.busy = 0;
}

static inline void enter(void) { tl.busy++; }
static inline void leave(void) {
  if (--tl.busy == 0) {
    bw__tl_now_rt = NULL;
    if (tl.head) drain();
    if (tl_npend) flush_pend();
  }
}

/* ---- global registry: services (for the sweep) and runtime trackers ----------- */

typedef struct tracker {
  bw_runtime_t *rt;
  struct tracker *next;
} tracker_t;

static struct {
  pthread_mutex_t mu;
  bw_service_t *services;
  tracker_t *trackers;
  atomic_uint epoch; /* bumped when a tracker goes away (TLS caches invalid) */
} g_reg = {PTHREAD_MUTEX_INITIALIZER, NULL, NULL, 0};

static BW__TLS bw_runtime_t *tl_tracked_rt;
static BW__TLS unsigned tl_tracked_epoch;

static void registry_add(bw_service_t *s) {
  pthread_mutex_lock(&g_reg.mu);
  s->reg_prev = NULL;
  s->reg_next = g_reg.services;
  if (g_reg.services) g_reg.services->reg_prev = s;
  g_reg.services = s;
  pthread_mutex_unlock(&g_reg.mu);
}

static void registry_remove(bw_service_t *s) {
  pthread_mutex_lock(&g_reg.mu);
  if (s->reg_prev) s->reg_prev->reg_next = s->reg_next;
  else g_reg.services = s->reg_next;
  if (s->reg_next) s->reg_next->reg_prev = s->reg_prev;
  pthread_mutex_unlock(&g_reg.mu);
}

static bool try_ref(bw_call_t *c) {
  int n = atomic_load_explicit(&c->refs, memory_order_relaxed);
  while (n > 0) {
    /* acquire pairs with the release in bw_call_unref: the fields we read
     * next belong to the live incarnation. */
    if (atomic_compare_exchange_weak_explicit(&c->refs, &n, n + 1, memory_order_acquire,
                                              memory_order_relaxed))
      return true;
  }
  return false;
}

/* Cancel every running call of rt (shutdown). Calls are pinned with a
 * reference under the locks and handled after unlocking (a cancel may run
 * callbacks that free calls and services). */
static void sweep(bw_runtime_t *rt) {
  size_t cap = 0, n = 0;
  bw_call_t **list = NULL;
  /* the closing flag (set by the caller) against set_running's store: a
   * start that we do not see RUNNING below sees the flag */
  bw__asym_fence_heavy();
  pthread_mutex_lock(&g_reg.mu);
  for (bw_service_t *s = g_reg.services; s; s = s->reg_next) {
    pthread_mutex_lock(&s->pool.mu);
    for (bw_call_t *c = s->pool.all; c; c = c->all_next) {
      if (BW__CALL_PHASE(atomic_load(&c->state)) != BW__CALL_RUNNING) continue;
      if (n == cap) {
        size_t nc = cap ? 2 * cap : 64;
        bw_call_t **nl = bw__realloc(list, nc * sizeof *list);
        if (!nl) break;
        list = nl;
        cap = nc;
      }
      if (try_ref(c)) list[n++] = c;
    }
    pthread_mutex_unlock(&s->pool.mu);
  }
  pthread_mutex_unlock(&g_reg.mu);
  for (size_t i = 0; i < n; i++) {
    bw_call_t *c = list[i];
    if (c->rt == rt && BW__CALL_PHASE(atomic_load(&c->state)) == BW__CALL_RUNNING)
      bw_call_cancel_with(c, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN));
    bw_call_unref(c);
  }
  bw__free(list);
}

static bw_poll_t tracker_poll(bw_task_t *self, void *arg) {
  tracker_t *t = arg;
  bw_cancel_token_t *tok = bw_background_token(self);
  if (tok && bw_cancel_token_poll(tok, self) == BW_PENDING) return BW_PENDING;
  bw__runtime_close_calls(t->rt); /* calls running after the sweep end themselves */
  sweep(t->rt);
  return BW_READY;
}

static void tracker_drop(void *arg) {
  tracker_t *t = arg;
  pthread_mutex_lock(&g_reg.mu);
  for (tracker_t **pp = &g_reg.trackers; *pp; pp = &(*pp)->next) {
    if (*pp == t) {
      *pp = t->next;
      break;
    }
  }
  atomic_fetch_add(&g_reg.epoch, 1);
  pthread_mutex_unlock(&g_reg.mu);
  bw__free(t);
}

/* Make sure rt has a shutdown sweeper. Cheap when cached for this thread. */
static bw_error_t *track_runtime(bw_runtime_t *rt) {
  unsigned ep = atomic_load_explicit(&g_reg.epoch, memory_order_acquire);
  if (tl_tracked_rt == rt && tl_tracked_epoch == ep) return NULL;
  bw_error_t *err = NULL;
  pthread_mutex_lock(&g_reg.mu);
  tracker_t *t;
  for (t = g_reg.trackers; t; t = t->next)
    if (t->rt == rt) break;
  if (!t) {
    t = bw__calloc(1, sizeof *t);
    if (!t) {
      err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
    } else {
      t->rt = rt;
      t->next = g_reg.trackers;
      g_reg.trackers = t;
      /* Registering under g_reg.mu: add_background spawns but runs nothing
       * inline, and tracker_drop takes g_reg.mu only later. */
      err = bw_runtime_add_background(rt, "bulwark-calls", tracker_poll, t, tracker_drop);
      if (err) {
        g_reg.trackers = t->next;
        bw__free(t);
      }
    }
  }
  ep = atomic_load_explicit(&g_reg.epoch, memory_order_acquire);
  pthread_mutex_unlock(&g_reg.mu);
  if (!err) {
    tl_tracked_rt = rt;
    tl_tracked_epoch = ep;
  }
  return err;
}

/* ---- pools -------------------------------------------------------------------- */

static size_t call_header_aligned(void) { return (offsetof(bw_call_t, state_mem) + 15) & ~(size_t)15; }

/* state_fini of the first `upto` chain states of a pooled object of s. */
static void chain_fini(bw_service_t *s, unsigned char *mem, int upto) {
  for (int i = 0; i < upto; i++) {
    bw_service_t *n = s->chain[i].node;
    if (n->ops->state_fini) n->ops->state_fini(n, mem + s->chain[i].off);
  }
}

/* state_init of every chain state of a new pooled object of s; -1 (undone)
 * when one fails. */
static int chain_init(bw_service_t *s, unsigned char *mem) {
  for (int i = 0; i < s->chain_len; i++) {
    bw_service_t *n = s->chain[i].node;
    if (n->ops->state_init && n->ops->state_init(n, mem + s->chain[i].off) != 0) {
      chain_fini(s, mem, i);
      return -1;
    }
  }
  return 0;
}

static atomic_uint_fast64_t g_pool_ids = 1;

static void pool_push_locked(bw__pool_t *p, bw_call_t *first, bw_call_t *last) {
  last->pool_next = p->free_list;
  p->free_list = first;
}

/* Hand a slot's objects back to their pool if it is still alive. */
static void tcache_evict(tcache_slot_t *t) {
  if (t->head) {
    pthread_mutex_lock(&g_reg.mu);
    bw_service_t *s;
    for (s = g_reg.services; s; s = s->reg_next)
      if (s->pool_id == t->id) break;
    if (s) {
      bw_call_t *last = t->head;
      while (last->pool_next) last = last->pool_next;
      pthread_mutex_lock(&s->pool.mu);
      pool_push_locked(&s->pool, t->head, last);
      pthread_mutex_unlock(&s->pool.mu);
    }
    pthread_mutex_unlock(&g_reg.mu);
  }
  t->id = 0;
  t->svc = NULL;
  t->head = NULL;
  t->n = 0;
}

static pthread_key_t caches_key;
static pthread_once_t caches_once = PTHREAD_ONCE_INIT;

static void caches_drop(void *arg) {
  thread_caches_t *tc = arg;
  tl_caches = NULL;
  for (int i = 0; i < TCACHE_SLOTS; i++) tcache_evict(&tc->slot[i]);
  bw__free(tc);
}
static void caches_make_key(void) { pthread_key_create(&caches_key, caches_drop); }

/* This thread's caches, made at its first call (NULL: out of memory). */
static __attribute__((noinline)) thread_caches_t *caches_make(void) {
  pthread_once(&caches_once, caches_make_key);
  thread_caches_t *tc = bw__calloc(1, sizeof *tc);
  if (!tc) return NULL;
  if (pthread_setspecific(caches_key, tc) != 0) {
    bw__free(tc);
    return NULL;
  }
  return tl_caches = tc;
}

/* Inline: it runs twice per call (get and put). */
static inline tcache_slot_t *tcache_slot(const bw_service_t *s) {
  thread_caches_t *tc = tl_caches;
  if (__builtin_expect(!tc, 0) && !(tc = caches_make())) return NULL;
  return &tc->slot[s->pool_id % TCACHE_SLOTS];
}

/* A call of s whose own state is zeroed (or kept, with state_init). */
static bw_call_t *pool_ready(bw_service_t *s, bw_call_t *c) {
  if (s->chain[0].zero) memset(c->state_mem, 0, s->chain[0].zero);
  return c;
}

/* pool_get without a call in this thread's slot: take one from the shared
 * list (refilling the slot with the same lock), else make one. */
static __attribute__((noinline)) bw_call_t *pool_get_slow(bw_service_t *s, tcache_slot_t *t) {
  bw__pool_t *p = &s->pool;
  pthread_mutex_lock(&p->mu);
  bw_call_t *c = p->free_list;
  if (c) {
    p->free_list = c->pool_next;
    if (t && t->id == s->pool_id) {
      /* our slot, empty: refill a batch with the same lock */
      while (t->n < TCACHE_BATCH && p->free_list) {
        bw_call_t *x = p->free_list;
        p->free_list = x->pool_next;
        x->pool_next = t->head;
        t->head = x;
        t->n++;
      }
    }
  }
  pthread_mutex_unlock(&p->mu);
  if (c) return pool_ready(s, c);
  c = bw__calloc(1, s->call_size);
  if (!c) return NULL;
  c->svc = s;
  if (chain_init(s, c->state_mem) != 0) {
    bw__free(c);
    return NULL;
  }
  pthread_mutex_lock(&p->mu);
  c->all_next = p->all;
  p->all = c;
  p->total++;
  pthread_mutex_unlock(&p->mu);
  return c;
}

/* Inline: the thread cache hit is every steady-state call's allocation. */
static inline bw_call_t *pool_get(bw_service_t *s) {
  tcache_slot_t *t = tcache_slot(s);
  bw_call_t *c;
  if (__builtin_expect(t && t->id == s->pool_id && (c = t->head) != NULL, 1)) {
    t->head = c->pool_next;
    t->n--;
    return pool_ready(s, c);
  }
  return pool_get_slow(s, t);
}

static void pool_put(bw_service_t *s, bw_call_t *c) {
  tcache_slot_t *t = tcache_slot(s);
  if (!t) {
    pthread_mutex_lock(&s->pool.mu);
    pool_push_locked(&s->pool, c, c);
    pthread_mutex_unlock(&s->pool.mu);
    return;
  }
  if (t->id != s->pool_id) {
    if (t->id) tcache_evict(t);
    t->id = s->pool_id;
    t->svc = s;
  }
  c->pool_next = t->head;
  t->head = c;
  if (++t->n <= TCACHE_MAX) return;
  /* Full: hand a batch (c and the most recently cached after it) back to
   * the shared list, so objects freed here reach threads that allocate
   * (calls migrate between workers) and the pool stops growing. */
  bw_call_t *last = c;
  for (unsigned i = 1; i < TCACHE_BATCH; i++) last = last->pool_next;
  t->head = last->pool_next;
  t->n -= TCACHE_BATCH;
  bw__pool_t *p = &s->pool;
  pthread_mutex_lock(&p->mu);
  pool_push_locked(p, c, last);
  pthread_mutex_unlock(&p->mu);
}

static void pool_fini(bw_service_t *s) {
  bw_call_t *c = s->pool.all;
  while (c) {
    bw_call_t *next = c->all_next;
    chain_fini(s, c->state_mem, s->chain_len);
    bw__free(c);
    c = next;
  }
  s->pool.all = s->pool.free_list = NULL;
  pthread_mutex_destroy(&s->pool.mu);
}

/* ---- services ------------------------------------------------------------------ */

static bw_error_t *service_alloc(bw_service_t **out, const bw_service_ops_t *ops, void *impl) {
  bw_service_t *s = bw__calloc(1, sizeof *s);
  if (!s) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  s->magic = BW__SVC_MAGIC;
  atomic_init(&s->refs, 1);
  s->ops = ops;
  s->impl = impl;
  s->layer_index = -1;
  s->pool_id = atomic_fetch_add_explicit(&g_pool_ids, 1, memory_order_relaxed);
  s->own_state = (ops->call_state_size + 15) & ~(size_t)15;
  s->chain[0] = (bw__link_t){s, 0, ops->state_init ? 0 : ops->call_state_size, ops->call, ops->finish};
  s->chain_len = 1;
  s->chain_state = s->own_state;
  s->call_size = call_header_aligned() + s->chain_state;
  pthread_mutex_init(&s->pool.mu, NULL);
  registry_add(s);
  *out = s;
  return NULL;
}

bw_error_t *bw_service_new(bw_service_t **out, const bw_service_ops_t *ops, void *impl) {
  if (!out || !ops || !ops->call) {
    if (ops && ops->destroy && impl) ops->destroy(impl);
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_service_new: out, ops and ops->call are required");
  }
  bw_error_t *e = service_alloc(out, ops, impl);
  if (e && ops->destroy && impl) ops->destroy(impl);
  return e;
}

bw_error_t *bw__node_new(bw_layer_t *layer, bw_service_t *inner, bw_service_t **out) {
  bw_error_t *e = service_alloc(out, layer->ops, layer->impl);
  if (e) return e;
  bw_service_t *s = *out;
  s->layer = bw_layer_ref(layer);
  s->inner = bw_service_ref(inner);
  /* The nodes a call may be forwarded through, and room for their states
   * (no call has been taken from this pool yet). Not into a built stack: it
   * records its own calls, so it gets a child call of its own. */
  if (!inner->owns_stack) {
    for (int i = 0; i < inner->chain_len && s->chain_len < BW__DEPTH_MAX; i++) {
      bw__link_t l = inner->chain[i];
      l.off += s->own_state;
      s->chain[s->chain_len++] = l;
    }
  }
  const bw__link_t *last = &s->chain[s->chain_len - 1];
  s->chain_state = last->off + last->node->own_state;
  s->call_size = call_header_aligned() + s->chain_state;
  return NULL;
}

bw_error_t *bw_layer_wrap(bw_layer_t *layer, bw_service_t *inner, bw_service_t **out) {
  if (!layer || !inner || !out || layer->magic != BW__LAYER_MAGIC || inner->magic != BW__SVC_MAGIC)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_layer_wrap: layer, inner and out are required");
  return bw__node_new(layer, inner, out);
}

bw_service_t *bw_service_ref(bw_service_t *svc) {
  if (svc) atomic_fetch_add_explicit(&svc->refs, 1, memory_order_relaxed);
  return svc;
}

void bw_service_release(bw_service_t *svc) {
  if (!svc) return;
  /* acq_rel: the last release sees every write of the other holders. */
  if (atomic_fetch_sub_explicit(&svc->refs, 1, memory_order_acq_rel) != 1) return;
  registry_remove(svc);
  pool_fini(svc);
  if (svc->owns_stack) bw__stack_free(svc->stack);
  if (svc->layer) {
    bw_layer_release(svc->layer);
    bw_service_release(svc->inner);
  } else if (svc->ops->destroy && svc->impl) {
    svc->ops->destroy(svc->impl);
  }
  svc->magic = 0;
  bw__free(svc);
}

const char *bw_service_kind(const bw_service_t *svc) {
  return svc && svc->ops->kind ? svc->ops->kind : "service";
}
const char *bw_service_name(const bw_service_t *svc) {
  return svc && svc->owns_stack && svc->stack ? svc->stack->name : NULL;
}
void *bw_service_impl(const bw_service_t *svc) { return svc ? svc->impl : NULL; }
bw_service_t *bw_service_inner(const bw_service_t *svc) { return svc ? svc->inner : NULL; }
bw_layer_t *bw_service_layer(const bw_service_t *svc) { return svc ? svc->layer : NULL; }

/* ---- layers ----------------------------------------------------------------------- */

bw_error_t *bw_layer_new(bw_layer_t **out, const bw_service_ops_t *ops, void *impl) {
  if (!out || !ops || !ops->call) {
    if (ops && ops->destroy && impl) ops->destroy(impl);
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_layer_new: out, ops and ops->call are required");
  }
  bw_layer_t *l = bw__calloc(1, sizeof *l);
  if (!l) {
    if (ops->destroy && impl) ops->destroy(impl);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  l->magic = BW__LAYER_MAGIC;
  atomic_init(&l->refs, 1);
  l->ops = ops;
  l->impl = impl;
  *out = l;
  return NULL;
}

bw_layer_t *bw_layer_ref(bw_layer_t *layer) {
  if (layer) atomic_fetch_add_explicit(&layer->refs, 1, memory_order_relaxed);
  return layer;
}

void bw_layer_release(bw_layer_t *layer) {
  if (!layer) return;
  if (atomic_fetch_sub_explicit(&layer->refs, 1, memory_order_acq_rel) != 1) return;
  if (layer->ops->destroy && layer->impl) layer->ops->destroy(layer->impl);
  bw__free(layer->name);
  layer->magic = 0;
  bw__free(layer);
}

void *bw_layer_impl(const bw_layer_t *layer) { return layer ? layer->impl : NULL; }
const char *bw_layer_kind(const bw_layer_t *layer) {
  return layer && layer->ops->kind ? layer->ops->kind : "layer";
}
bw_error_t *bw_layer_set_name(bw_layer_t *layer, const char *name) {
  if (!layer) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_layer_set_name: NULL layer");
  char *n = NULL;
  if (name && !(n = bw__strdup(name))) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw__free(layer->name);
  layer->name = n;
  return NULL;
}
const char *bw_layer_name(const bw_layer_t *layer) { return layer ? layer->name : NULL; }
void bw_layer_set_flags(bw_layer_t *layer, unsigned flags) {
  if (layer) layer->flags = flags;
}
unsigned bw_layer_flags(const bw_layer_t *layer) { return layer ? layer->flags : 0; }

/* ---- call lifetime ---------------------------------------------------------------------- */

/* The reference a call holds on its service (holds_svc) costs two locked
 * instructions per call, a tenth of a small stack's cost. A worker that
 * recycles such a call keeps the reference as its spare, and the next call
 * it makes for the same service takes the spare instead of a new one: a
 * callback that frees its call and makes the next one (the usual loop)
 * needs no atomic for it. The worker gives the spare back at the end of
 * its loop turn (bw__ctx.turn_end), so a released service is destroyed at
 * most one turn late, on that worker, and never kept past a park or the
 * worker's exit. Other threads have no turn to end: they keep no spare. */
static BW__TLS bw_service_t *tl_spare_svc;

static void spare_give_back(void) {
  bw_service_t *s = tl_spare_svc;
  tl_spare_svc = NULL;
  bw_service_release(s);
}

static void call_svc_ref(bw_service_t *svc) {
  if (tl_spare_svc == svc) tl_spare_svc = NULL;
  else bw_service_ref(svc);
}

static void call_svc_release(bw_service_t *svc) {
  if (!tl_spare_svc && bw__ctx.worker) {
    tl_spare_svc = svc;
    bw__ctx.turn_end = spare_give_back;
    return;
  }
  bw_service_release(svc);
}

static void recycle(bw_call_t *c) {
  bw_service_t *s = c->svc;
  if (c->req_free && c->req) c->req_free(c->req);
  if (c->resp_free && c->resp) c->resp_free(c->resp);
  /* (usually NULL: no call out of line for that) */
  if (c->err) bw_error_unref(c->err);
  if (c->fallback_err) bw_error_unref(c->fallback_err);
  bool holds_svc = c->holds_svc;
  bw_call_t *parent = c->holds_parent ? c->parent : NULL;
  c->holds_parent = false;
  c->holds_svc = false;
  c->req = c->resp = NULL;
  c->req_free = c->resp_free = NULL;
  c->err = c->fallback_err = NULL;
  c->parent = NULL;
  pool_put(s, c);
  /* After pool_put: if this was the last reference on s, pool_fini frees
   * c with the pool (the thread cache slot is dropped by its stale id). */
  if (holds_svc) call_svc_release(s);
  /* A child keeps its parent (and so the chain up to the root, which holds
   * the stack and every inner service) alive until its own memory goes:
   * refs a layer or client holds on a late child stay valid. When the
   * parent's delivery is pending in this thread's queue (the usual case:
   * the layer completed it from this child's callback), the reference is
   * dropped with that delivery instead: no atomic here. */
  if (parent) {
    if (atomic_load_explicit(&parent->queued_on, memory_order_relaxed) == (void *)&tl)
      parent->fold++;
    else
      bw_call_unref(parent);
  }
}

void bw_call_ref(bw_call_t *call) {
  atomic_fetch_add_explicit(&call->refs, 1, memory_order_relaxed);
}

static void unref_n(bw_call_t *call, int n) {
  /* acq_rel: the final decrement sees every holder's writes before recycling
   * (pairs with the other holders' release decrements). */
  if (atomic_fetch_sub_explicit(&call->refs, n, memory_order_acq_rel) == n) recycle(call);
}

void bw_call_unref(bw_call_t *call) { unref_n(call, 1); }

static inline void call_init(bw_call_t *c, bw_service_t *svc, bw_runtime_t *rt) {
  c->svc = svc;
  atomic_store_explicit(&c->cur, svc, memory_order_relaxed);
  c->abort_depth = INT_MAX;
  c->rt = rt;
  c->parent = NULL;
  c->stack = NULL;
  c->qnext = NULL;
  atomic_store_explicit(&c->queued_on, NULL, memory_order_relaxed);
  c->fold = 0;
  atomic_store_explicit(&c->pend_on, NULL, memory_order_relaxed);
  atomic_store_explicit(&c->refs, 1, memory_order_relaxed);
  atomic_store_explicit(&c->state, BW__CALL_IDLE, memory_order_relaxed);
  atomic_store_explicit(&c->depth, 0, memory_order_relaxed);
  atomic_store_explicit(&c->starter, NULL, memory_order_relaxed);
  atomic_store_explicit(&c->flags, 0, memory_order_relaxed);
  atomic_store_explicit(&c->started, false, memory_order_relaxed);
  c->is_root = false;
  c->holds_svc = false;
  c->stack_root = svc->owns_stack;
  atomic_store_explicit(&c->attempt, 0, memory_order_relaxed);
  c->cb = NULL;
  c->cb_arg = NULL;
  atomic_store_explicit(&c->deadline_ns, 0, memory_order_relaxed);
  c->start_ns = 0;
  atomic_store_explicit(&c->end_ns, 0, memory_order_relaxed);
  c->ctx = NULL;
}

bw_error_t *bw_call_new(bw_call_t **out, bw_service_t *svc, bw_runtime_t *rt) {
  if (!out || !svc || svc->magic != BW__SVC_MAGIC)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_call_new: out and a service are required");
  if (!rt) rt = bw_runtime_current();
  if (!rt) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_call_new: no runtime given and none current");
  bw_error_t *e = track_runtime(rt);
  if (e) return e;
  bw_call_t *c = pool_get(svc);
  if (!c) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  call_init(c, svc, rt);
  /* The owner's reference, and the in-flight and starting ones that
   * bw_service_call would add: taken now (a plain store) so that starting
   * costs no atomic add. bw_call_free of a call never started drops all
   * three. */
  atomic_store_explicit(&c->refs, 3, memory_order_relaxed);
  c->is_root = true;
  c->stack = svc->owns_stack ? svc->stack : NULL;
  c->holds_svc = true;
  call_svc_ref(svc);
  *out = c;
  return NULL;
}

bw_error_t *bw_call_child_new(bw_call_t **out, bw_call_t *parent, bw_service_t *svc) {
  if (!out || !parent) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_call_child_new: NULL argument");
  bw_service_t *pnode = atomic_load_explicit(&parent->cur, memory_order_relaxed);
  if (!svc) svc = pnode->inner;
  if (!svc) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_call_child_new: %s has no inner service", bw_service_kind(pnode));
  bw_call_t *c = pool_get(svc);
  if (!c) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  call_init(c, svc, parent->rt);
  /* Marked started from birth: bw_call_free of a never-started child then
   * just finds it IDLE, whose cancel is a no-op. */
  atomic_store_explicit(&c->started, true, memory_order_relaxed);
  c->parent = parent;
  /* A built stack's outermost node starts its own stack here, whatever
   * wraps it (a registry service, a layer, another stack): its metrics and
   * events are recorded for this call and its descendants. */
  c->stack = svc->owns_stack ? svc->stack : parent->stack;
  /* The inner service of the parent's node is kept alive by that node,
   * which the parent's own service chain keeps alive (the child pins the
   * parent). Any other service (fallback's, a registry's current stack)
   * may be released by its holder while this child still lives: the child
   * then holds it itself, so the pool outlives every call from it. */
  if (svc != pnode->inner) {
    c->holds_svc = true;
    call_svc_ref(svc);
  }
  atomic_store_explicit(&c->deadline_ns, bw_call_deadline_ns(parent), memory_order_relaxed);
  c->ctx = parent->ctx;
  c->req = parent->req; /* borrowed */
  c->req_free = NULL;
  *out = c;
  return NULL;
}

void bw_call_free(bw_call_t *call) {
  if (!call) return;
  if (call == tl_delivering && !tl_freed_in_cb) {
    /* Freed inside its own callback (the usual case): it is complete and
     * being delivered, so no cancel, no abandon flag; run_delivery drops
     * this reference together with the in-flight one. */
    tl_freed_in_cb = true;
    return;
  }
  if (!atomic_load_explicit(&call->started, memory_order_relaxed)) {
    unref_n(call, 3); /* a root never started (bw_call_new) */
    return;
  }
  atomic_fetch_or(&call->flags, BW__CF_ABANDONED);
  if (BW__CALL_PHASE(atomic_load(&call->state)) != BW__CALL_DONE) bw_call_cancel(call);
  bw_call_unref(call);
}

/* ---- completion and delivery ---------------------------------------------------------------- */

static void record_root(bw_call_t *c) {
  if (c->stack_root) {
    uint64_t now = atomic_load_explicit(&c->end_ns, memory_order_relaxed);
    if (!now) now = bw_runtime_now_ns(c->rt);
    bw__stack_record(c->stack, c->err, now > c->start_ns ? now - c->start_ns : 0);
  }
}

/* The finish hooks of the nodes that forwarded c, innermost first; true
 * when one resumed the call (bw__call_resume: outer hooks wait). */
static bool run_finish(bw_call_t *c) {
  int d = atomic_load_explicit(&c->depth, memory_order_relaxed);
  const bw__link_t *chain = c->svc->chain;
  for (int i = d; i-- > 0;) {
    const bw__link_t *l = &chain[i];
    if (l->finish && l->finish(l->node, c, c->state_mem + l->off, i >= c->abort_depth)) return true;
  }
  return false;
}

bool bw__call_resume(bw_call_t *c, int depth, uint32_t *gen) {
  if (atomic_load(&c->flags) & (BW__CF_CANCEL | BW__CF_ABANDONED)) return false;
  bw__call_set_outcome(c, NULL, NULL, NULL);
  c->abort_depth = INT_MAX;
  /* not answered any more (bw__call_now_cheap_ns) */
  atomic_store_explicit(&c->end_ns, 0, memory_order_relaxed);
  atomic_store_explicit(&c->cur, c->svc->chain[depth].node, memory_order_relaxed);
  /* seq_cst store, then the flags: a cancel sets its flag, then tries the
   * state (win): either it sees RUNNING and completes the call, or we see
   * its flag here and do it (win decides between us). */
  atomic_store_explicit(&c->depth, depth, memory_order_relaxed);
  /* DONE (only we change it now): the next generation, RUNNING. The
   * depth above is read by fenced aborts after they load this (seq_cst). */
  int g = (atomic_load_explicit(&c->state, memory_order_relaxed) >> BW__CALL_GEN_SHIFT) + 1;
  *gen = (uint32_t)g;
  atomic_store(&c->state, (g << BW__CALL_GEN_SHIFT) | BW__CALL_RUNNING);
  if (atomic_load(&c->flags) & (BW__CF_CANCEL | BW__CF_ABANDONED))
    abort_call(c, bw_error_static(BW_ERR_CANCELLED), 0, false, NULL, NULL);
  else if (bw__runtime_calls_closing(c->rt)) /* the shutdown sweep may have passed it */
    abort_call(c, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN), 0, false, NULL, NULL);
  return true;
}

static void run_delivery(bw_call_t *c) {
  /* the in-flight reference, and those folded into this delivery */
  int n = 1 + c->fold;
  c->fold = 0;
  atomic_store_explicit(&c->queued_on, NULL, memory_order_relaxed);
  bw__tl_now_rt = NULL; /* a callback is not part of a start chain */
  /* Finish hooks and the stack's record run here, on a worker, for every
   * completed call (abandoned ones too: hooks return permits). */
  if (run_finish(c)) {
    /* resumed: running again, still in flight; drop only what was folded */
    if (n > 1) unref_n(c, n - 1);
    return;
  }
  record_root(c);
  if (!(atomic_load_explicit(&c->flags, memory_order_acquire) & BW__CF_ABANDONED) && c->cb) {
    bw_call_t *prev = tl_delivering;
    bool prev_freed = tl_freed_in_cb;
    tl_delivering = c;
    tl_freed_in_cb = false;
    c->cb(c, c->err, c->cb_arg);
    if (tl_freed_in_cb) n++; /* and the owner's, freed in the callback */
    tl_delivering = prev;
    tl_freed_in_cb = prev_freed;
  }
  unref_n(c, n);
}

static void deferred_delivery(void *arg) {
  bw_call_t *c = arg;
  enter();
  run_delivery(c);
  leave();
}

static void deliver(bw_call_t *c) {
  bool worker = bw__runtime_on_worker(c->rt);
  if (!worker || (c->is_root && tl.submitting > 0)) {
    if (c == tl_starting && bw__runtime_defer_here(c->rt, deferred_delivery, c)) {
      /* Runs on this thread after start() returned: start() leaves its
       * starting reference to the delivery (one atomic less per call). */
      c->fold++;
      tl_start_folded = true;
      return;
    }
    if (bw__runtime_defer(c->rt, deferred_delivery, c) == 0) return;
    /* runtime gone: exactly once wins over "on a worker" */
  }
  if (tl.busy > 0) {
    c->qnext = NULL;
    if (tl.tail) tl.tail->qnext = c;
    else tl.head = c;
    tl.tail = c;
    atomic_store_explicit(&c->queued_on, (void *)&tl, memory_order_relaxed);
    if (c == tl_starting) {
      c->fold++; /* start() leaves its starting reference to this delivery */
      tl_start_folded = true;
    } else if (atomic_load_explicit(&c->pend_on, memory_order_relaxed) == (void *)&tl) {
      c->fold++; /* its starting reference, pending here */
      tl_caches->pend[c->pend_idx] = NULL;
      atomic_store_explicit(&c->pend_on, NULL, memory_order_relaxed);
    }
    return;
  }
  enter();
  run_delivery(c);
  leave();
}

/* Answered during a start chain: its clock reading is the end too
 * (within the chain's own duration; the latency histogram's first bucket
 * is 1 us wide), saving a clock read per call. */
static void mark_end(bw_call_t *c) {
  if (c->stack_root)
    atomic_store_explicit(&c->end_ns, bw__tl_now_rt == c->rt ? bw__tl_now : 0,
                          memory_order_relaxed);
}

/* RUNNING -> DONE in generation gen. seq_cst: layers pair their "publish,
 * then bw_call_is_done" with it, and forwarding its first "starter"
 * exchange. */
static bool win(bw_call_t *c, uint32_t gen) {
  int g = (int)gen << BW__CALL_GEN_SHIFT;
  int expect = g | BW__CALL_RUNNING;
  if (!atomic_compare_exchange_strong(&c->state, &expect, g | BW__CALL_DONE)) return false;
  if (c == tl_starting && gen == 0) tl_start_won = true;
  mark_end(c);
  return true;
}

/* RUNNING -> DONE in any generation (a cancel), or, `fenced`, for an abort
 * from the node at abort_depth: in a later generation only if that node is
 * outside the one that resumed the call (the call's depth now); an inner
 * one was finished before the resume (its timer fired late). */
static bool win_any(bw_call_t *c, int abort_depth, bool fenced) {
  int s = atomic_load(&c->state);
  if (s == BW__CALL_IDLE) {
    /* not started, or its start's store is not visible yet: the heavy side
     * of set_running's fence decides which (then start sees our flag) */
    bw__asym_fence_heavy();
    s = atomic_load(&c->state);
  }
  while (BW__CALL_PHASE(s) == BW__CALL_RUNNING) {
    /* the depth the resume stored before its state store, which we loaded */
    if (fenced && (s >> BW__CALL_GEN_SHIFT) > 0 &&
        abort_depth >= atomic_load_explicit(&c->depth, memory_order_relaxed))
      return false;
    if (atomic_compare_exchange_weak(&c->state, &s, (s & ~BW__CALL_PHASE_MASK) | BW__CALL_DONE)) {
      mark_end(c);
      return true;
    }
  }
  return false;
}

bool bw_call_complete(bw_call_t *call, void *resp, bw_destroy_fn resp_free, bw_error_t *err) {
  return bw__call_complete_gen(call, 0, resp, resp_free, err);
}

bool bw__call_complete_gen(bw_call_t *call, uint32_t gen, void *resp, bw_destroy_fn resp_free,
                           bw_error_t *err) {
  if (!win(call, gen)) {
    if (resp && resp_free) resp_free(resp);
    bw_error_unref(err);
    return false;
  }
  if (err) {
    if (resp && resp_free) resp_free(resp);
    call->resp = NULL;
    call->resp_free = NULL;
  } else {
    call->resp = resp;
    call->resp_free = resp_free;
  }
  call->err = err;
  deliver(call);
  return true;
}

bool bw_call_complete_from_child(bw_call_t *call, bw_call_t *child) {
  return bw__call_complete_from_child_gen(call, 0, child);
}

bool bw__call_complete_from_child_gen(bw_call_t *call, uint32_t gen, bw_call_t *child) {
  if (atomic_load(&call->state) != (((int)gen << BW__CALL_GEN_SHIFT) | BW__CALL_RUNNING))
    return false;
  void *resp = child->resp;
  bw_destroy_fn f = child->resp_free;
  child->resp = NULL;
  child->resp_free = NULL;
  if (child->fallback_err && !call->fallback_err) call->fallback_err = bw_error_ref(child->fallback_err);
  return bw__call_complete_gen(call, gen, resp, f, child->err ? bw_error_ref(child->err) : NULL);
}

void bw_call_cancel(bw_call_t *call) { bw_call_cancel_with(call, NULL); }

/* The rest of a cancel that won `call`: the node holding it now releases
 * what it holds (ops->cancel), then the call is delivered (its finish hooks
 * run there). By the canceller, or by the starting thread it handed to. */
static void finish_cancel(bw_call_t *call) {
  bw_service_t *n = call->svc->chain[atomic_load_explicit(&call->depth, memory_order_relaxed)].node;
  atomic_store_explicit(&call->cur, n, memory_order_relaxed);
  if (n->ops->cancel) {
    enter();
    n->ops->cancel(n, call, call->err);
    leave();
  }
  deliver(call);
}

/* Complete with err (owned) as a cancel made at `abort_depth` (0: from
 * outside every node; fenced: by that node, see win_any), emit ev if
 * given, then finish_cancel. */
static bool abort_call(bw_call_t *call, bw_error_t *err, int abort_depth, bool fenced,
                       bw_layer_t *layer, bw_event_t *ev) {
  if (!win_any(call, abort_depth, fenced)) {
    bw_error_unref(err);
    return false;
  }
  call->err = err;
  call->resp = NULL;
  call->resp_free = NULL;
  call->abort_depth = abort_depth;
  if (ev) {
    ev->error = err;
    bw_layer_emit(layer, call, ev);
  }
  /* A thread inside the call's start chain may still move it inward (the
   * depth we would read could be stale): leave the rest to it. It marked
   * the call before its state CAS, which our win read from or after: the
   * mark is visible here. Generation 0 only: a resumed call is never
   * forwarded, and its depth is the one its resume stored before the state
   * we won (end_mark relies on this). */
  if (atomic_load_explicit(&call->state, memory_order_relaxed) >> BW__CALL_GEN_SHIFT == 0) {
    void *s = atomic_load(&call->starter);
    if (s && atomic_compare_exchange_strong(&call->starter, &s, BW__HANDOFF)) return true;
  }
  finish_cancel(call);
  return true;
}

void bw__call_set_outcome(bw_call_t *call, void *resp, bw_destroy_fn resp_free, bw_error_t *err) {
  if (call->resp && call->resp_free) call->resp_free(call->resp);
  bw_error_unref(call->err);
  call->resp = err ? NULL : resp;
  call->resp_free = err ? NULL : resp_free;
  if (err && resp && resp_free) resp_free(resp);
  call->err = err;
}

void bw_call_cancel_with(bw_call_t *call, bw_error_t *reason) {
  if (!call) {
    bw_error_unref(reason);
    return;
  }
  /* seq_cst: pairs with the state store + flags load in start(). */
  int fl = atomic_fetch_or(&call->flags, BW__CF_CANCEL);
  if (fl & BW__CF_CANCEL) {
    bw_error_unref(reason);
    return;
  }
  bw_call_ref(call); /* the callback may free it; we are not done with it */
  abort_call(call, reason ? reason : bw_error_static(BW_ERR_CANCELLED), 0, false, NULL, NULL);
  bw_call_unref(call);
}

bool bw__call_abort(bw_call_t *call, bw_error_t *err, int depth, bw_layer_t *layer, bw_event_t *ev) {
  bw_call_ref(call);
  bool won = abort_call(call, err, depth, true, layer, ev);
  bw_call_unref(call);
  return won;
}

bool bw_call_is_done(const bw_call_t *call) {
  return BW__CALL_PHASE(atomic_load((atomic_int *)&call->state)) == BW__CALL_DONE;
}
bool bw_call_is_cancelled(const bw_call_t *call) {
  return (atomic_load((atomic_int *)&call->flags) & BW__CF_CANCEL) != 0;
}

/* ---- starting calls ---------------------------------------------------------------------------- */

/* The end of c's start chain on this thread: unmark it. When this
 * thread's own completion won the call in generation 0 (tl_start_won), no
 * cancel won it there and cancels of later generations never hand off
 * (abort_call): a release store will do (bw__call_start_ended). Otherwise
 * a canceller may have handed us the rest of its cancel meanwhile. */
static void end_mark(bw_call_t *c) {
  if (tl_start_won) {
    atomic_store_explicit(&c->starter, NULL, memory_order_release);
    return;
  }
  void *me = (void *)&bw__tl_token;
  if (!atomic_compare_exchange_strong(&c->starter, &me, NULL)) {
    atomic_store_explicit(&c->starter, NULL, memory_order_relaxed);
    finish_cancel(c);
  }
}

/* IDLE -> RUNNING, then read what a cancel or the shutdown sweep may have
 * set meanwhile (Dekker: they set, then read the state; at least one side
 * sees the other). Only start() leaves IDLE (a cancel of an IDLE call only
 * sets its flag and leaves the rest to us), so with the asymmetric fence
 * the transition is a release store and the light fence, no locked
 * instruction: the cancel that finds IDLE and the sweep pay the heavy side
 * (win_any, sweep). Without it, a seq_cst CAS (which cannot fail here) and
 * seq_cst loads. Release, or the CAS: a canceller whose win reads RUNNING
 * sees what start wrote before, the `starter` mark included. */
static inline void set_running(bw_call_t *c) {
  if (atomic_load_explicit(&bw__asym_fence_ready, memory_order_relaxed)) {
    atomic_store_explicit(&c->state, BW__CALL_RUNNING, memory_order_release);
    bw__asym_fence_light();
  } else {
    int expect = BW__CALL_IDLE;
    atomic_compare_exchange_strong(&c->state, &expect, BW__CALL_RUNNING);
  }
}

/* The caller added one "starting" reference, released here once ops->call
 * returned: a cancel on another thread may complete and deliver the call
 * (and its owner free it) while ops->call still runs. */
static void start(bw_call_t *c) {
  /* A call that may be forwarded is marked as moved inward by this thread
   * before it runs: set_running orders the mark before any cancel's win
   * (which then finds it and hands off), so forwarding needs no fence of
   * its own (see bw__call_forward). */
  bool marked = c->svc->chain_len > 1;
  if (marked) atomic_store_explicit(&c->starter, (void *)&bw__tl_token, memory_order_relaxed);
  set_running(c);
  bw_call_t *prev = tl_starting;
  bool prev_folded = tl_start_folded, prev_won = tl_start_won;
  tl_starting = c;
  tl_start_folded = false;
  tl_start_won = false;
  enter();
  if (atomic_load(&c->flags) & BW__CF_CANCEL) {
    bw_call_complete(c, NULL, NULL, bw_error_static(BW_ERR_CANCELLED));
  } else if (bw__runtime_calls_closing(c->rt)) {
    /* the shutdown sweep may have passed it: it would not be cancelled */
    bw_call_complete(c, NULL, NULL, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN));
  } else {
    c->svc->ops->call(c->svc, c);
  }
  if (marked) end_mark(c);
  bool folded = tl_start_folded;
  tl_starting = prev;
  tl_start_folded = prev_folded;
  tl_start_won = prev_won;
  leave();
  /* folded: the delivery queued here drops the starting reference (c
   * may already be recycled by leave()'s drain: not touched again) */
  if (folded) return;
  /* Still inside an outer entry: keep the reference pending until it
   * ends (flush_pend) or the delivery gets queued here (deliver). */
  /* (A root's delivery is deferred: folded in deliver() when it went to
   * this worker's ring, else it may run elsewhere at once.) */
  if (tl.busy > 0 && !c->is_root && tl_npend < PEND_MAX && tl_caches) {
    c->pend_idx = tl_npend;
    tl_caches->pend[tl_npend++] = c;
    atomic_store_explicit(&c->pend_on, (void *)&tl, memory_order_relaxed);
    return;
  }
  unref_n(c, 1);
}

static void deferred_start(void *arg) {
  bw_call_t *c = arg;
  tl.submitting++;
  start(c);
  tl.submitting--;
}

bw_error_t *bw_service_call(bw_service_t *svc, bw_call_t *call, bw_call_cb cb, void *arg) {
  if (!svc || !call || call->svc != svc || !call->is_root)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_service_call: call was not made for this service");
  if (atomic_load_explicit(&call->started, memory_order_relaxed))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_service_call: call already started");
  atomic_store_explicit(&call->started, true, memory_order_relaxed);
  call->cb = cb;
  call->cb_arg = arg;
  bool seeded = false;
  if (call->stack_root) {
    call->start_ns = bw_runtime_now_ns(call->rt);
    if (bw__runtime_on_worker(call->rt)) {
      /* the layers starting below share this reading */
      bw__tl_now = call->start_ns;
      bw__tl_now_rt = call->rt;
      seeded = true;
    }
  }
  /* (its in-flight and starting references were taken by bw_call_new) */
  if (!bw__runtime_on_worker(call->rt)) {
    /* Service code runs on workers; the start itself moves there. */
    if (bw__runtime_defer(call->rt, deferred_start, call) != 0) {
      int expect = BW__CALL_IDLE;
      if (atomic_compare_exchange_strong(&call->state, &expect, BW__CALL_RUNNING))
        bw_call_complete(call, NULL, NULL, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN));
      unref_n(call, 1); /* the starting reference */
    }
    return NULL;
  }
  tl.submitting++;
  start(call);
  tl.submitting--;
  if (seeded) bw__tl_now_rt = NULL;
  return NULL;
}

/* Deliveries queued by a child start made outside any library entry (a
 * layer's timer callback): run on a worker, after that start returned. */
static void deferred_list(void *arg) {
  enter();
  for (bw_call_t *c = arg; c;) {
    bw_call_t *next = c->qnext;
    c->qnext = NULL;
    run_delivery(c);
    c = next;
  }
  leave();
}

void bw_call_child_start(bw_call_t *child, bw_call_cb cb, void *arg) {
  child->cb = cb;
  child->cb_arg = arg;
  /* `started` was set by bw_call_child_new (see there) */
  atomic_fetch_add_explicit(&child->refs, 2, memory_order_relaxed); /* in flight + starting */
  atomic_fetch_add_explicit(&child->parent->refs, 1, memory_order_relaxed); /* hold parent */
  child->holds_parent = true;
  if (child->stack_root) child->start_ns = bw__call_now_ns_shared(child);
  if (tl.busy > 0) {
    start(child); /* completions queue; the outer entry drains them */
    return;
  }
  /* Outermost entry (e.g. from a layer's own timer callback): the caller
   * may still touch the child after we return, so deliveries that a
   * synchronous completion queued are moved to a worker task instead of
   * running here. */
  bw_runtime_t *rt = child->rt;
  tl.busy = 1;
  start(child);
  tl.busy = 0;
  bw__tl_now_rt = NULL;
  bw_call_t *list = tl.head;
  if (list) {
    tl.head = tl.tail = NULL;
    /* they leave this thread's queue: no more folding into them here (the
     * fold counts already made travel with them) */
    for (bw_call_t *q = list; q; q = q->qnext)
      atomic_store_explicit(&q->queued_on, NULL, memory_order_relaxed);
    if (bw__runtime_defer(rt, deferred_list, list) != 0) deferred_list(list);
  }
  /* starting references the starts above kept pending (their calls stay
   * alive through them, so this may come after the hand-off) */
  flush_pend();
}

uint64_t bw__call_now_ns_read(const bw_call_t *call) {
  uint64_t now = bw_runtime_now_ns(call->rt);
  if (tl.busy > 0 && bw__runtime_on_worker(call->rt)) {
    bw__tl_now = now;
    bw__tl_now_rt = call->rt;
  }
  return now;
}

/* ---- accessors ----------------------------------------------------------------------------------- */

void bw_call_set_request(bw_call_t *call, void *req, bw_destroy_fn req_free) {
  if (call->req_free && call->req && call->req != req) call->req_free(call->req);
  call->req = req;
  call->req_free = req_free;
}
void *bw_call_request(const bw_call_t *call) { return call->req; }
void *bw_call_response(const bw_call_t *call) { return call->err ? NULL : call->resp; }
void *bw_call_take_response(bw_call_t *call, bw_destroy_fn *free_fn) {
  void *r = call->resp;
  if (free_fn) *free_fn = call->resp_free;
  call->resp = NULL;
  call->resp_free = NULL;
  return r;
}
const bw_error_t *bw_call_error(const bw_call_t *call) {
  return BW__CALL_PHASE(atomic_load((atomic_int *)&call->state)) == BW__CALL_DONE ? call->err : NULL;
}
void bw_call_set_deadline_ns(bw_call_t *call, uint64_t deadline_ns) {
  uint64_t pd = call->parent ? bw_call_deadline_ns(call->parent) : 0;
  if (pd && (deadline_ns == 0 || deadline_ns > pd)) deadline_ns = pd;
  bw__call_put_deadline(call, deadline_ns);
}
void bw_call_set_timeout_ms(bw_call_t *call, uint64_t ms) {
  bw_call_set_deadline_ns(call, bw_runtime_now_ns(call->rt) + ms * 1000000ull);
}
uint64_t bw_call_deadline_ns(const bw_call_t *call) {
  return atomic_load_explicit(&((bw_call_t *)call)->deadline_ns, memory_order_relaxed);
}
int64_t bw_call_remaining_ns(const bw_call_t *call) {
  uint64_t dl = bw_call_deadline_ns(call);
  if (!dl) return INT64_MAX;
  uint64_t now = bw_runtime_now_ns(call->rt);
  if (now >= dl) return -(int64_t)(now - dl);
  return (int64_t)(dl - now);
}
void bw_call_set_context(bw_call_t *call, void *ctx) { call->ctx = ctx; }
void *bw_call_context(const bw_call_t *call) { return call->ctx; }
bw_runtime_t *bw_call_runtime(const bw_call_t *call) { return call->rt; }
bw_service_t *bw_call_service(const bw_call_t *call) { return call->svc; }
bw_call_t *bw_call_parent(const bw_call_t *call) { return call->parent; }
void bw_call_set_attempt(bw_call_t *call, uint32_t attempt) {
  atomic_store_explicit(&call->attempt, attempt, memory_order_relaxed);
}
uint32_t bw_call_attempt(const bw_call_t *call) {
  return atomic_load_explicit(&((bw_call_t *)call)->attempt, memory_order_relaxed);
}
void *bw_call_state(bw_call_t *call) {
  /* the node at the call's depth handles it (see bw__call_forward) */
  return call->state_mem + call->svc->chain[bw__call_depth(call)].off;
}

const bw_error_t *bw_call_fallback_error(const bw_call_t *call) { return call->fallback_err; }
/* Used by fallback.c (declared there). */
void bw__call_set_fallback_error(bw_call_t *call, bw_error_t *err);
void bw__call_set_fallback_error(bw_call_t *call, bw_error_t *err) {
  bw_error_unref(call->fallback_err);
  call->fallback_err = err;
}

/* ---- function services ------------------------------------------------------------------------------ */

typedef struct fn_impl {
  bw_fn_service_opts_t o;
} fn_impl_t;

static void fn_call(bw_service_t *svc, bw_call_t *call) {
  fn_impl_t *f = svc->impl;
  if (f->o.sync) {
    void *resp = NULL;
    bw_destroy_fn rf = NULL;
    bw_error_t *e = f->o.sync(f->o.arg, call, &resp, &rf);
    bw_call_complete(call, e ? NULL : resp, rf, e);
    if (e && resp && rf) rf(resp);
  } else {
    f->o.async(f->o.arg, call);
  }
}

static void fn_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  fn_impl_t *f = svc->impl;
  if (f->o.cancel) f->o.cancel(f->o.arg, call);
}

static void fn_destroy(void *impl) {
  fn_impl_t *f = impl;
  if (f->o.arg_free) f->o.arg_free(f->o.arg);
  bw__free(f);
}

void bw_fn_service_opts_init(bw_fn_service_opts_t *opts) { memset(opts, 0, sizeof *opts); }

bw_error_t *bw_service_from_fn(bw_service_t **out, const bw_fn_service_opts_t *opts) {
  if (!out || !opts || (!opts->sync == !opts->async)) {
    if (opts && opts->arg_free) opts->arg_free(opts->arg);
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_service_from_fn: give exactly one of sync or async");
  }
  fn_impl_t *f = bw__calloc(1, sizeof *f + sizeof(bw_service_ops_t));
  if (!f) {
    if (opts->arg_free) opts->arg_free(opts->arg);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  f->o = *opts;
  /* ops live right after the impl so each fn service can have its own
   * kind and state size. */
  bw_service_ops_t *ops = (bw_service_ops_t *)(f + 1);
  ops->kind = opts->kind ? opts->kind : "fn";
  ops->call_state_size = opts->call_state_size;
  ops->call = fn_call;
  ops->cancel = fn_cancel;
  ops->destroy = fn_destroy;
  return service_alloc(out, ops, f) ? (fn_destroy(f), bw_error_static(BW_ERR_OUT_OF_MEMORY)) : NULL;
}
