/* Tasks: header, state word, reference count, pooled memory, join handles.
 *
 * Design notes
 * ------------
 * A task is a poll function plus a small header (struct bw_task). The
 * header is the join handle and the waker too (bw_join_t and bw_waker_t are
 * the same struct seen through different types), so spawning costs one
 * pooled allocation and nothing else.
 *
 * State word (task->state), changed only by CAS loops:
 *   idle --wake--> NOTIFIED (+1 ref for the queue, pushed to a run queue)
 *   NOTIFIED --worker pops--> RUNNING
 *   RUNNING --wake--> RUNNING|NOTIFIED (no push: the worker re-queues it
 *              once after the poll returns PENDING; so a task woken while it
 *              runs runs once more, never twice at once)
 *   RUNNING --yield--> (no CAS: the poller sets t->yielded, a plain field
 *              only the thread inside poll touches); after the poll one CAS
 *              clears RUNNING and sets NOTIFIED, and the task goes to the
 *              back of the queue, as for a wake while running
 *   RUNNING --READY--> COMPLETE;  any --abort--> CANCELLED is seen by the
 *              next transition, which completes the task with BW_ERR_CANCELLED.
 * Every CAS is acq_rel: the release half publishes what the waker wrote
 * before waking (e.g. a channel value) and what the poll wrote; the acquire
 * half in bw__task_run pairs with it, so the next poll sees both.
 *
 * References (task->refs): one "owned" reference held until the task
 * completes, one for the join handle (dropped when consumed/detached), one
 * per waker, and one while the task sits in a run queue (NOTIFIED). The last
 * unref returns the header to the pool.
 *
 * Live tasks without a list: shutdown must cancel tasks that wait on nobody
 * (idle, in no queue). Instead of an owned list (a mutex on every spawn and
 * every completion), headers come from slabs that the pool never frees
 * while the runtime lives, and each header has an `in_use` flag (set at
 * spawn, cleared when the header returns to the pool). Shutdown walks every
 * slab and cancels each in-use task it can claim (CAS to COMPLETE). A spawn
 * racing with shutdown is a Dekker pair, all SeqCst:
 *     spawn:    in_use = 1;  read state      (bw__task_publish)
 *     shutdown: state = SHUTDOWN;  read in_use of every slot
 * so either the spawner sees SHUTDOWN (and takes the task back, or finds it
 * already cancelled) or the walker sees the task. The StoreLoad fence this
 * needs costs the spawner a locked instruction that waits for its store
 * buffer (the freshly cleared header) to drain; where the kernel offers
 * membarrier(PRIVATE_EXPEDITED), the heavy half moves to the rare side: the
 * spawner does a release store + compiler fence + load, and shutdown issues
 * the process-wide barrier between its store and its loads (the asymmetric
 * Dekker of userspace RCU / folly's asymmetricHeavyBarrier). The in_use
 * store is a release that pairs with the walker's acquire load, so a walker
 * that sees the flag also sees the initialised header.
 *
 * Join fields (output, join waker, blocked thread) are guarded by a tiny
 * spin lock: the only contenders are the completing worker and the joiner.
 *
 * Pool: each worker (and the current-thread core) keeps a free list it
 * alone touches, plus one spare batch; whole batches of 64 move to and from
 * a global pool under a mutex (one lock per 64 tasks), which also serves
 * threads that are not workers. Slabs go back to libc only when the runtime
 * is freed. If the user still holds a join handle or waker then, the pool is
 * "orphaned": the runtime memory and the slabs stay until the last such
 * header is released. */
#include "runtime/task.h"

#include <linux/membarrier.h>
#include <sched.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/alloc.h"
#include "runtime/rt.h"

#define BATCH 64u
#define SLAB 64u

struct bw__slab {
  struct bw__slab *next;
  bw_task_t t[SLAB];
};
#define ID_BLOCK 1024u

struct bw__thread_waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
};

void bw__runtime_release_memory(bw_runtime_t *rt);

void bw__mutex_init_adaptive(pthread_mutex_t *mu) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
  pthread_mutex_init(mu, &a);
  pthread_mutexattr_destroy(&a);
}

void bw__spin_lock(atomic_uint *l) {
  unsigned spins = 0;
  /* acquire pairs with the release in bw__spin_unlock */
  while (atomic_exchange_explicit(l, 1, memory_order_acquire)) {
    while (atomic_load_explicit(l, memory_order_relaxed)) {
      if (++spins > 100) sched_yield();
    }
  }
}

void bw__spin_unlock(atomic_uint *l) {
  atomic_store_explicit(l, 0, memory_order_release); /* pairs with bw__spin_lock */
}

/* ---- pool ---------------------------------------------------------------- */

/* Threads that are not workers allocate from a per-thread cache too (one
 * runtime at a time, keyed by the pool's serial), refilled a batch at a time,
 * so a spawn from outside takes no pool lock either. When the thread moves
 * to another runtime, the cached slots go back to their pool if it still
 * exists (the registry, under reg_mu); if the runtime was freed, they were
 * freed with its slabs and are simply forgotten. Frees on such threads
 * still go to the pool under its lock (a freed runtime must see them). */
static int use_membarrier; /* set once before any runtime exists; 0 in fork children */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static bw__task_pool_t *reg_head;
static atomic_uint_fast64_t pool_serials = 1;
static BW__TLS struct {
  uint64_t serial;
  bw__task_cache_t c;
} rcache;

void bw__task_on_fork_child(void) {
  use_membarrier = 0; /* the child's address space is not registered */
  pthread_mutex_init(&reg_mu, NULL);
  reg_head = NULL; /* parent runtimes are unusable here */
  memset(&rcache, 0, sizeof rcache);
}

static void put_chain_locked(bw__task_pool_t *p, bw_task_t *x);

static bw__task_cache_t *remote_cache(bw_runtime_t *rt) {
  if (rcache.serial == rt->pool.serial) return &rcache.c;
  if (rcache.c.list) {
    pthread_mutex_lock(&reg_mu);
    for (bw__task_pool_t *q = reg_head; q; q = q->reg_next) {
      if (q->serial == rcache.serial) {
        pthread_mutex_lock(&q->mu);
        put_chain_locked(q, rcache.c.list);
        pthread_mutex_unlock(&q->mu);
        break;
      }
    }
    pthread_mutex_unlock(&reg_mu);
  }
  memset(&rcache.c, 0, sizeof rcache.c);
  rcache.serial = rt->pool.serial;
  return &rcache.c;
}

void bw__task_pool_init(bw__task_pool_t *p) {
  bw__mutex_init_adaptive(&p->mu);
  p->batches = NULL;
  p->partial = NULL;
  p->npartial = 0;
  p->slabs = NULL;
  atomic_init(&p->mallocs, 0);
  p->orphaned = false;
  p->serial = atomic_fetch_add_explicit(&pool_serials, 1, memory_order_relaxed);
  pthread_mutex_lock(&reg_mu);
  p->reg_next = reg_head;
  reg_head = p;
  pthread_mutex_unlock(&reg_mu);
}

/* Task ids are unique in the process: each thread takes blocks of ids from
 * one counter, so a spawn touches no shared cache line for its id. */
static atomic_uint_fast64_t id_counter = 1;
static BW__TLS uint64_t id_next, id_end;

uint64_t bw__task_next_id(bw_runtime_t *rt) {
  (void)rt;
  if (id_next == id_end) {
    id_next = atomic_fetch_add_explicit(&id_counter, ID_BLOCK, memory_order_relaxed);
    id_end = id_next + ID_BLOCK;
  }
  return id_next++;
}

static void free_slabs(bw__task_pool_t *p) {
  while (p->slabs) {
    struct bw__slab *sl = p->slabs;
    p->slabs = sl->next;
    bw__free(sl);
  }
}

/* Pool (under p->mu): put one struct on the partial batch. */
static void pool_put_locked(bw__task_pool_t *p, bw_task_t *t) {
  t->next = p->partial;
  p->partial = t;
  if (++p->npartial == BATCH) {
    p->partial->own_next = p->batches;
    p->batches = p->partial;
    p->partial = NULL;
    p->npartial = 0;
  }
}

bw_task_t *bw__task_alloc(bw_runtime_t *rt) {
  bw__task_cache_t *c = bw__ctx_cache(rt);
  if (!c) c = remote_cache(rt);
  bw__task_pool_t *p = &rt->pool;
  bw_task_t *t = NULL;
  if (c) {
    if (!c->list) {
      if (c->spare) {
        c->list = c->spare;
        c->spare = NULL;
        c->count = BATCH;
      } else {
        pthread_mutex_lock(&p->mu);
        if (p->batches) {
          c->list = p->batches;
          p->batches = c->list->own_next;
          c->count = BATCH;
        } else if (p->partial) {
          c->list = p->partial;
          c->count = p->npartial;
          p->partial = NULL;
          p->npartial = 0;
        }
        pthread_mutex_unlock(&p->mu);
      }
    }
    if (c->list) {
      t = c->list;
      c->list = t->next;
      c->count--;
      /* the next header was last written by another core (freed there):
       * start moving its line here now, for the next spawn */
      if (c->list) bw__task_prefetch(c->list); /* every line: spawn writes them all */
    }
  } else {
    pthread_mutex_lock(&p->mu);
    if (!p->partial && p->batches) {
      p->partial = p->batches;
      p->batches = p->partial->own_next;
      p->npartial = BATCH;
    }
    if (p->partial) {
      t = p->partial;
      p->partial = t->next;
      p->npartial--;
    }
    pthread_mutex_unlock(&p->mu);
  }
  if (!t) {
    struct bw__slab *sl = bw__calloc(1, sizeof *sl);
    if (!sl) return NULL;
    for (unsigned i = 0; i < SLAB; i++) atomic_init(&sl->t[i].in_use, 0);
    pthread_mutex_lock(&p->mu);
    sl->next = p->slabs;
    p->slabs = sl;
    atomic_fetch_add_explicit(&p->mallocs, SLAB, memory_order_relaxed);
    for (unsigned i = 1; i < SLAB; i++) {
      sl->t[i].rt = rt;
      pool_put_locked(p, &sl->t[i]);
    }
    pthread_mutex_unlock(&p->mu);
    t = &sl->t[0];
  }
  /* No memset: a header leaves the pool clean (task_dealloc, and slabs are
   * zeroed when made), so only the fields a spawn does not set are reset.
   * The embedded sleep timer stays initialised (same task, same runtime)
   * and is idle after complete_common's cancel. in_use is not touched (a
   * shutdown walk may read it). */
  t->rt = rt;
  t->kind = 0;
  t->output_ready = false;
  t->output_taken = false;
  t->has_join = false;
  t->drop = NULL;
  t->aux_fn = NULL;
  t->aux = NULL;
  t->name = NULL;
  t->out_value = NULL;
  t->out_free = NULL;
  t->out_err = NULL;
  t->join_waker = NULL;
  t->join_thread = NULL;
  t->sleep = NULL;
  atomic_store_explicit(&t->lock, 0, memory_order_relaxed); /* may have held a timer */
  return t;
}

/* Return a header to the calling thread's cache or the pool. `counted`:
 * it was a spawned task (in_use), which an orphaned pool counts down. */
static void pool_return(bw_runtime_t *rt, bw_task_t *t, bool counted) {
  bw__task_pool_t *p = &rt->pool;
  bw__task_cache_t *c = bw__ctx_cache(rt);
  if (c) {
    if (c->count == BATCH) {
      if (c->spare) {
        pthread_mutex_lock(&p->mu);
        c->spare->own_next = p->batches;
        p->batches = c->spare;
        pthread_mutex_unlock(&p->mu);
      }
      c->spare = c->list;
      c->list = NULL;
      c->count = 0;
    }
    t->next = c->list;
    c->list = t;
    c->count++;
    return;
  }
  pthread_mutex_lock(&p->mu);
  if (p->orphaned) {
    size_t left = atomic_load_explicit(&p->mallocs, memory_order_relaxed);
    if (counted) atomic_store_explicit(&p->mallocs, --left, memory_order_relaxed);
    pthread_mutex_unlock(&p->mu);
    if (counted && left == 0) {
      free_slabs(p);
      bw__runtime_release_memory(rt);
    }
    return;
  }
  pool_put_locked(p, t);
  pthread_mutex_unlock(&p->mu);
}

static void task_dealloc(bw_task_t *t) {
  bw_runtime_t *rt = t->rt;
  if (!t->output_taken) {
    if (t->out_value && t->out_free) t->out_free(t->out_value);
    bw_error_unref(t->out_err);
  }
  t->out_value = NULL;
  t->out_err = NULL;
  atomic_store_explicit(&t->in_use, 0, memory_order_release);
  pool_return(rt, t, true);
}

/* Slot storage for a timer: placed after in_use, which must stay 0. */
#define SLOT_OFF 8u
_Static_assert(SLOT_OFF + sizeof(struct bw_timer) <= sizeof(bw_task_t),
               "a header slot must hold a timer");
_Static_assert(offsetof(bw_task_t, in_use) == 0 && sizeof(atomic_uint) <= SLOT_OFF,
               "in_use must stay outside the timer storage");

struct bw_timer *bw__task_slot_alloc(bw_runtime_t *rt) {
  bw_task_t *t = bw__task_alloc(rt);
  return t ? (struct bw_timer *)(void *)((char *)t + SLOT_OFF) : NULL;
}

void bw__task_slot_free(bw_runtime_t *rt, struct bw_timer *tm) {
  bw_task_t *t = (bw_task_t *)(void *)((char *)tm - SLOT_OFF);
  t->rt = rt;
  pool_return(rt, t, false);
}

static void put_chain_locked(bw__task_pool_t *p, bw_task_t *x) {
  while (x) {
    bw_task_t *n = x->next;
    pool_put_locked(p, x);
    x = n;
  }
}

void bw__task_cache_flush(bw_runtime_t *rt, bw__task_cache_t *c) {
  pthread_mutex_lock(&rt->pool.mu);
  put_chain_locked(&rt->pool, c->list);
  put_chain_locked(&rt->pool, c->spare);
  c->list = c->spare = NULL;
  c->count = 0;
  pthread_mutex_unlock(&rt->pool.mu);
}

bool bw__task_pool_destroy(bw_runtime_t *rt) {
  bw__task_pool_t *p = &rt->pool;
  pthread_mutex_lock(&reg_mu);
  for (bw__task_pool_t **pp = &reg_head; *pp; pp = &(*pp)->reg_next) {
    if (*pp == p) {
      *pp = p->reg_next;
      break;
    }
  }
  pthread_mutex_unlock(&reg_mu);
  if (rcache.serial == p->serial) memset(&rcache, 0, sizeof rcache);
  pthread_mutex_lock(&p->mu);
  /* outstanding = headers still spawned (join handles, wakers held) */
  size_t left = 0;
  for (struct bw__slab *sl = p->slabs; sl; sl = sl->next)
    for (unsigned i = 0; i < SLAB; i++)
      if (atomic_load_explicit(&sl->t[i].in_use, memory_order_acquire)) left++;
  p->partial = NULL;
  p->npartial = 0;
  p->batches = NULL;
  atomic_store_explicit(&p->mallocs, left, memory_order_relaxed);
  if (left != 0) p->orphaned = true; /* released by the last task_dealloc */
  pthread_mutex_unlock(&p->mu);
  if (left == 0) free_slabs(p);
  return left == 0;
}

void bw__task_ref(bw_task_t *t) { atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed); }

void bw__task_unref(bw_task_t *t) {
  /* acq_rel: the release half orders our uses of the task before the
   * free; the acquire half (on the last decrement) pairs with every other
   * holder's release. (A standalone acquire fence would do, but TSan does
   * not model fences.) */
  if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1) task_dealloc(t);
}

/* Drop n references at once (one RMW instead of n). */
static void unref_n(bw_task_t *t, uint32_t n) {
  if (atomic_fetch_sub_explicit(&t->refs, n, memory_order_acq_rel) == n) task_dealloc(t);
}

/* ---- completion ------------------------------------------------------------ */

/* Finish t; drops the owned reference plus `extra` more. */
static void complete_common(bw_task_t *t, uint32_t extra) {
  bw_runtime_t *rt = t->rt;
  if (t->sleep) {
    struct bw_timer *st = t->sleep;
    t->sleep = NULL;
    /* (false only if this thread's firing loop still holds it, which
     * cannot happen here: tasks complete outside timer callbacks; then the
     * slot is simply not reused) */
    if (bw__timer_cancel_sync(st)) bw__task_slot_free(rt, st);
  }
  if (t->drop) t->drop(t->arg);
  bw_waker_t *jw = NULL;
  bw__thread_waiter_t *jt = NULL;
  if (!t->has_join) {
    t->output_ready = true; /* spawned without a join handle: nobody looks */
  } else {
    bw__spin_lock(&t->lock);
    t->output_ready = true;
    jw = t->join_waker;
    jt = t->join_thread;
    t->join_waker = NULL;
    t->join_thread = NULL;
    bw__spin_unlock(&t->lock);
  }
  if (jw) bw_waker_wake(jw);
  if (jt) {
    pthread_mutex_lock(&jt->mu);
    jt->done = true;
    pthread_cond_signal(&jt->cv);
    pthread_mutex_unlock(&jt->mu);
  }
  bw__sched_count_complete(rt);
  unref_n(t, 1 + extra); /* the owned reference (+ the caller's queue reference) */
}

void bw__task_finish_cancelled(bw_task_t *t, bw_error_t *err) {
  if (t->kind == BW__TASK_DEFER && t->aux_fn) {
    /* deferred functions still run at shutdown: they complete calls */
    void (*fn)(void *) = t->aux_fn;
    t->aux_fn = NULL;
    fn(t->arg);
  }
  if (t->out_value && t->out_free) t->out_free(t->out_value);
  t->out_value = NULL;
  t->out_free = NULL;
  bw_error_unref(t->out_err);
  t->out_err = err;
  if (t->kind == BW__TASK_BLOCKING) {
    extern void bw__blocking_task_cancel(bw_task_t * t);
    bw__blocking_task_cancel(t);
  }
  complete_common(t, 0);
}

void bw__task_drop_queued(bw_task_t *t) { bw__task_unref(t); }

/* Claim completion of a task that is not running: returns true if this call
 * set COMPLETE (and must now finish it). */
static bool claim_complete(bw_task_t *t) {
  uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
  for (;;) {
    if (s & (BW__T_COMPLETE | BW__T_RUNNING)) return false;
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, s | BW__T_COMPLETE,
                                              memory_order_acq_rel, memory_order_acquire))
      return true;
  }
}

static pthread_once_t mb_once = PTHREAD_ONCE_INIT;
static void mb_init(void) {
#ifndef BW_TSAN /* keep the plain SeqCst pairing where TSan can see it */
  use_membarrier =
      syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 ? 1 : 0;
#endif
}
void bw__task_global_init(void) { pthread_once(&mb_once, mb_init); }

int bw__task_publish(bw_runtime_t *rt, bw_task_t *t) {
  if (use_membarrier) {
    /* light side of the asymmetric Dekker (heavy side: cancel_all) */
    atomic_store_explicit(&t->in_use, 1, memory_order_release);
    atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&rt->state, memory_order_acquire) != BW__RT_SHUTDOWN) return 0;
  } else {
    atomic_store_explicit(&t->in_use, 1, memory_order_seq_cst); /* Dekker with cancel_all */
    if (atomic_load_explicit(&rt->state, memory_order_seq_cst) != BW__RT_SHUTDOWN) return 0;
  }
  return claim_complete(t) ? -1 : 1;
}

void bw__tasks_cancel_all(bw_runtime_t *rt) {
  /* state = SHUTDOWN was stored (SeqCst) by the caller; heavy side: */
  if (use_membarrier) syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
  pthread_mutex_lock(&rt->pool.mu);
  struct bw__slab *head = rt->pool.slabs; /* only ever prepended: stable from here */
  pthread_mutex_unlock(&rt->pool.mu);
  for (struct bw__slab *sl = head; sl; sl = sl->next) {
    for (unsigned i = 0; i < SLAB; i++) {
      bw_task_t *t = &sl->t[i];
      if (atomic_load_explicit(&t->in_use, memory_order_seq_cst) && claim_complete(t))
        bw__task_finish_cancelled(t, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN));
    }
  }
}

/* ---- run --------------------------------------------------------------------- */

void bw__task_run(bw_task_t *t) {
  uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
  for (;;) {
    if (s & BW__T_COMPLETE) {
      bw__task_unref(t);
      return;
    }
    if (s & BW__T_CANCELLED) {
      uint32_t n = (s & ~BW__T_NOTIFIED) | BW__T_COMPLETE;
      if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                                memory_order_acquire)) {
        bw__task_finish_cancelled(t, bw_error_static(BW_ERR_CANCELLED));
        bw__task_unref(t);
        return;
      }
      continue;
    }
    uint32_t n = (s & ~BW__T_NOTIFIED) | BW__T_RUNNING;
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                              memory_order_acquire))
      break;
  }
  bw_task_t *prev = bw__ctx.task;
  bw__ctx.task = t;
  /* plain: the acquire CAS above ordered us after the previous poller */
  t->yielded = false;
  bw_poll_t r = t->poll(t, t->arg);
  bw__ctx.task = prev;
  bool yielded = t->yielded;
  s = atomic_load_explicit(&t->state, memory_order_acquire);
  if (r == BW_READY) {
    for (;;) {
      uint32_t n = (s & ~(BW__T_RUNNING | BW__T_NOTIFIED)) | BW__T_COMPLETE;
      if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                                memory_order_acquire))
        break;
    }
    complete_common(t, 1); /* and the queue reference */
    return;
  }
  for (;;) {
    if (s & BW__T_CANCELLED) {
      uint32_t n = (s & ~(BW__T_RUNNING | BW__T_NOTIFIED)) | BW__T_COMPLETE;
      if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                                memory_order_acquire)) {
        bw__task_finish_cancelled(t, bw_error_static(BW_ERR_CANCELLED));
        bw__task_unref(t);
        return;
      }
      continue;
    }
    /* a yield sets NOTIFIED here, in the CAS that ends the poll (one CAS
     * per yield instead of two); acq_rel as every state CAS (see top) */
    uint32_t n = (s & ~BW__T_RUNNING) | (yielded ? BW__T_NOTIFIED : 0u);
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                              memory_order_acquire)) {
      if (n & BW__T_NOTIFIED)
        bw__schedule(t, true); /* woken while running or yielded: once more, at the back */
      else
        bw__task_unref(t);
      return;
    }
  }
}

/* Returns true if the caller must schedule t (and give it a reference). */
static bool wake_transition(bw_task_t *t) {
  uint32_t s = atomic_load_explicit(&t->state, memory_order_relaxed);
  for (;;) {
    if (s & (BW__T_COMPLETE | BW__T_NOTIFIED)) return false;
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, s | BW__T_NOTIFIED,
                                              memory_order_acq_rel, memory_order_relaxed))
      return !(s & BW__T_RUNNING);
  }
}

void bw__task_wake(bw_task_t *t) {
  if (wake_transition(t)) {
    bw__task_ref(t);
    bw__schedule(t, false);
  }
}

void bw__schedule(bw_task_t *t, bool yield) {
  bw_runtime_t *rt = t->rt;
  if (rt->ct)
    bw__ct_push(rt, t, yield);
  else if (bw__ctx.worker && bw__ctx.rt == rt)
    bw__sched_push_local(bw__ctx.worker, t, yield);
  else
    bw__sched_push_remote(rt, t);
}

/* ---- public task API -------------------------------------------------------------- */

void bw_task_set_output(bw_task_t *self, void *value, void (*value_free)(void *),
                        bw_error_t *err) {
  if (!self) {
    if (value && value_free) value_free(value);
    bw_error_unref(err);
    return;
  }
  if (self->out_value && self->out_free) self->out_free(self->out_value);
  bw_error_unref(self->out_err);
  self->out_value = value;
  self->out_free = value_free;
  self->out_err = err;
}

bw_waker_t *bw_task_waker(bw_task_t *self) {
  if (!self) return NULL;
  bw__task_ref(self);
  return self;
}

void bw_waker_wake(bw_waker_t *w) {
  if (!w) return;
  if (wake_transition(w))
    bw__schedule(w, false); /* the waker's reference becomes the queue's */
  else
    bw__task_unref(w);
}

void bw_waker_wake_by_ref(bw_waker_t *w) {
  if (w) bw__task_wake(w);
}

bw_waker_t *bw_waker_clone(bw_waker_t *w) {
  if (w) bw__task_ref(w);
  return w;
}

void bw_waker_drop(bw_waker_t *w) {
  if (w) bw__task_unref(w);
}

bool bw_waker_will_wake(const bw_waker_t *a, const bw_waker_t *b) { return a == b; }

bw_poll_t bw_task_yield(bw_task_t *self) {
  if (!self) return BW_PENDING;
  if (self == bw__ctx.task)
    self->yielded = true; /* bw__task_run re-queues it at the back after the poll */
  else
    bw__task_wake(self); /* not inside its own poll: an ordinary wake */
  return BW_PENDING;
}

bw_runtime_t *bw_task_runtime(const bw_task_t *self) { return self ? self->rt : NULL; }
uint64_t bw_task_id(const bw_task_t *self) { return self ? self->id : 0; }
bw_task_t *bw_task_current(void) { return bw__ctx.task; }

/* ---- join ------------------------------------------------------------------------ */

static void take_output(bw_task_t *t, void **value, bw_error_t **err) {
  /* caller holds t->lock and output_ready is set */
  void *v = t->out_value;
  void (*vf)(void *) = t->out_free;
  bw_error_t *e = t->out_err;
  t->out_value = NULL;
  t->out_err = NULL;
  t->output_taken = true;
  bw__spin_unlock(&t->lock);
  if (value)
    *value = v;
  else if (v && vf)
    vf(v);
  if (err)
    *err = e;
  else
    bw_error_unref(e);
}

bw_poll_t bw_join_poll(bw_join_t *join, bw_task_t *self, void **value, bw_error_t **err) {
  bw_task_t *t = (bw_task_t *)join;
  if (!t) {
    if (err) *err = bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_join_poll: NULL join handle");
    return BW_READY;
  }
  bw__spin_lock(&t->lock);
  if (t->output_ready) {
    take_output(t, value, err);
    bw__task_unref(t);
    return BW_READY;
  }
  bw_waker_t *old = NULL;
  if (self && t->join_waker != self) {
    old = t->join_waker;
    bw__task_ref(self);
    t->join_waker = self;
  }
  bw__spin_unlock(&t->lock);
  if (old) bw__task_unref(old);
  return BW_PENDING;
}

bw_error_t *bw_join_wait(bw_join_t *join, void **value) {
  bw_task_t *t = (bw_task_t *)join;
  if (!t) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_join_wait: NULL join handle");
  if (bw__on_any_worker())
    return bw_error_new(BW_ERR_NESTED_RUNTIME, 0,
                        "bw_join_wait: called on a runtime thread, where blocking would stall "
                        "the scheduler; poll the handle from a task with bw_join_poll instead");
  bw__spin_lock(&t->lock);
  if (!t->output_ready) {
    bw__thread_waiter_t tw;
    pthread_mutex_init(&tw.mu, NULL);
    pthread_cond_init(&tw.cv, NULL);
    tw.done = false;
    t->join_thread = &tw;
    bw__spin_unlock(&t->lock);
    pthread_mutex_lock(&tw.mu);
    while (!tw.done) pthread_cond_wait(&tw.cv, &tw.mu);
    pthread_mutex_unlock(&tw.mu);
    pthread_cond_destroy(&tw.cv);
    pthread_mutex_destroy(&tw.mu);
    bw__spin_lock(&t->lock);
  }
  bw_error_t *err = NULL;
  take_output(t, value, &err);
  bw__task_unref(t);
  return err;
}

void bw_join_abort(bw_join_t *join) {
  bw_task_t *t = (bw_task_t *)join;
  if (!t) return;
  uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
  for (;;) {
    if (s & (BW__T_COMPLETE | BW__T_CANCELLED)) return;
    uint32_t n = s | BW__T_CANCELLED;
    bool idle = !(s & (BW__T_RUNNING | BW__T_NOTIFIED));
    if (idle) n |= BW__T_NOTIFIED;
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                              memory_order_acquire)) {
      if (idle) {
        /* schedule it so a worker runs the cancellation (drop on a worker) */
        bw__task_ref(t);
        bw__schedule(t, false);
      }
      return;
    }
  }
}

void bw_join_detach(bw_join_t *join) {
  if (join) bw__task_unref((bw_task_t *)join);
}

bool bw_join_is_finished(const bw_join_t *join) {
  bw_task_t *t = (bw_task_t *)join;
  if (!t) return false;
  bw__spin_lock(&t->lock);
  bool r = t->output_ready;
  bw__spin_unlock(&t->lock);
  return r;
}
