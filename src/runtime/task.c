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
 *   RUNNING --READY--> COMPLETE;  any --abort--> CANCELLED is seen by the
 *              next transition, which completes the task with BW_ERR_CANCELLED.
 * Every CAS is acq_rel: the release half publishes what the waker wrote
 * before waking (e.g. a channel value) and what the poll wrote; the acquire
 * half in bw__task_run pairs with it, so the next poll sees both.
 *
 * References (task->refs): one for the owned list (dropped when the task
 * completes), one for the join handle (dropped when consumed/detached), one
 * per waker, and one while the task sits in a run queue (NOTIFIED). The last
 * unref returns the header to the pool. The owned list holds every task that
 * has not completed, so shutdown can cancel tasks that wait on nobody.
 *
 * Join fields (output, join waker, blocked thread) are guarded by a tiny
 * spin lock: the only contenders are the completing worker and the joiner.
 *
 * Pool: each worker (and the current-thread core) keeps a free list it
 * alone touches; a global list under a mutex takes overflow and serves
 * threads that are not workers. Structs are returned to libc only when the
 * runtime is freed. If the user still holds a join handle or waker when the
 * runtime is freed, the pool is "orphaned": remaining structs go back to
 * libc one by one and the last one frees the runtime memory. */
#include "runtime/task.h"

#include <sched.h>
#include <string.h>

#include "core/alloc.h"
#include "runtime/rt.h"

#define BATCH 64u
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

void bw__task_pool_init(bw__task_pool_t *p) {
  bw__mutex_init_adaptive(&p->mu);
  p->batches = NULL;
  p->partial = NULL;
  p->npartial = 0;
  atomic_init(&p->mallocs, 0);
  p->orphaned = false;
}

uint64_t bw__task_next_id(bw_runtime_t *rt) {
  bw__task_cache_t *c = bw__ctx_cache(rt);
  if (!c) return atomic_fetch_add_explicit(&rt->next_id, 1, memory_order_relaxed);
  if (c->id_next == c->id_end) {
    c->id_next = atomic_fetch_add_explicit(&rt->next_id, ID_BLOCK, memory_order_relaxed);
    c->id_end = c->id_next + ID_BLOCK;
  }
  return c->id_next++;
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
    t = bw__malloc(sizeof *t);
    if (!t) return NULL;
    atomic_fetch_add_explicit(&p->mallocs, 1, memory_order_relaxed);
  }
  memset(t, 0, sizeof *t);
  t->rt = rt;
  return t;
}

static void task_dealloc(bw_task_t *t) {
  bw_runtime_t *rt = t->rt;
  bw__task_pool_t *p = &rt->pool;
  if (!t->output_taken) {
    if (t->out_value && t->out_free) t->out_free(t->out_value);
    bw_error_unref(t->out_err);
  }
  t->out_value = NULL;
  t->out_err = NULL;
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
    bw__free(t);
    size_t left = atomic_fetch_sub_explicit(&p->mallocs, 1, memory_order_relaxed) - 1;
    pthread_mutex_unlock(&p->mu);
    if (left == 0) bw__runtime_release_memory(rt);
    return;
  }
  pool_put_locked(p, t);
  pthread_mutex_unlock(&p->mu);
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

static size_t free_chain(bw_task_t *x) {
  size_t n = 0;
  while (x) {
    bw_task_t *nx = x->next;
    bw__free(x);
    x = nx;
    n++;
  }
  return n;
}

bool bw__task_pool_destroy(bw_runtime_t *rt) {
  bw__task_pool_t *p = &rt->pool;
  pthread_mutex_lock(&p->mu);
  size_t n = free_chain(p->partial);
  p->partial = NULL;
  p->npartial = 0;
  while (p->batches) {
    bw_task_t *b = p->batches;
    p->batches = b->own_next;
    n += free_chain(b);
  }
  size_t left = atomic_fetch_sub_explicit(&p->mallocs, n, memory_order_relaxed) - n;
  if (left != 0) p->orphaned = true;
  pthread_mutex_unlock(&p->mu);
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

/* ---- owned list ------------------------------------------------------------ */

void bw__owned_init(bw__owned_t *o) {
  for (int i = 0; i < BW__OWNED_SHARDS; i++) {
    bw__mutex_init_adaptive(&o->shard[i].mu);
    o->shard[i].head = NULL;
    o->shard[i].closed = false;
  }
}

void bw__owned_destroy(bw__owned_t *o) {
  for (int i = 0; i < BW__OWNED_SHARDS; i++) pthread_mutex_destroy(&o->shard[i].mu);
}

bool bw__owned_insert(bw__owned_t *o, bw_task_t *t) {
  bw__owned_shard_t *s = &o->shard[t->id % BW__OWNED_SHARDS];
  pthread_mutex_lock(&s->mu);
  if (s->closed) {
    pthread_mutex_unlock(&s->mu);
    return false;
  }
  t->own_prev = NULL;
  t->own_next = s->head;
  if (s->head) s->head->own_prev = t;
  s->head = t;
  t->in_owned = true;
  pthread_mutex_unlock(&s->mu);
  return true;
}

static void owned_remove(bw__owned_t *o, bw_task_t *t) {
  bw__owned_shard_t *s = &o->shard[t->id % BW__OWNED_SHARDS];
  pthread_mutex_lock(&s->mu);
  if (t->in_owned) {
    if (t->own_prev)
      t->own_prev->own_next = t->own_next;
    else
      s->head = t->own_next;
    if (t->own_next) t->own_next->own_prev = t->own_prev;
    t->in_owned = false;
  }
  pthread_mutex_unlock(&s->mu);
}

/* ---- completion ------------------------------------------------------------ */

static void complete_common(bw_task_t *t) {
  bw_runtime_t *rt = t->rt;
  if (t->sleep_timer.rt) bw__timer_cancel_sync(&t->sleep_timer);
  if (t->drop) t->drop(t->arg);
  bw__spin_lock(&t->lock);
  t->output_ready = true;
  bw_waker_t *jw = t->join_waker;
  bw__thread_waiter_t *jt = t->join_thread;
  t->join_waker = NULL;
  t->join_thread = NULL;
  bw__spin_unlock(&t->lock);
  if (jw) bw_waker_wake(jw);
  if (jt) {
    pthread_mutex_lock(&jt->mu);
    jt->done = true;
    pthread_cond_signal(&jt->cv);
    pthread_mutex_unlock(&jt->mu);
  }
  owned_remove(&rt->owned, t);
  bw__sched_count_complete(rt);
  bw__task_unref(t); /* the owned-list reference */
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
  complete_common(t);
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

void bw__owned_close_and_cancel(bw_runtime_t *rt, bw__owned_t *o) {
  for (int i = 0; i < BW__OWNED_SHARDS; i++) {
    bw__owned_shard_t *s = &o->shard[i];
    pthread_mutex_lock(&s->mu);
    s->closed = true;
    pthread_mutex_unlock(&s->mu);
  }
  for (int i = 0; i < BW__OWNED_SHARDS; i++) {
    bw__owned_shard_t *s = &o->shard[i];
    for (;;) {
      pthread_mutex_lock(&s->mu);
      bw_task_t *t = s->head;
      if (t) {
        s->head = t->own_next;
        if (s->head) s->head->own_prev = NULL;
        t->in_owned = false;
      }
      pthread_mutex_unlock(&s->mu);
      if (!t) break;
      if (claim_complete(t)) {
        bw__task_finish_cancelled(t, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN));
      } else {
        /* completed concurrently (cannot be running: workers are joined) */
        (void)rt;
      }
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
  bw_poll_t r = t->poll(t, t->arg);
  bw__ctx.task = prev;
  s = atomic_load_explicit(&t->state, memory_order_acquire);
  if (r == BW_READY) {
    for (;;) {
      uint32_t n = (s & ~(BW__T_RUNNING | BW__T_NOTIFIED)) | BW__T_COMPLETE;
      if (atomic_compare_exchange_weak_explicit(&t->state, &s, n, memory_order_acq_rel,
                                                memory_order_acquire))
        break;
    }
    complete_common(t);
    bw__task_unref(t); /* the queue reference */
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
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, s & ~BW__T_RUNNING,
                                              memory_order_acq_rel, memory_order_acquire)) {
      if (s & BW__T_NOTIFIED)
        bw__schedule(t, true); /* woken while running: once more, at the back */
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
  if (self) bw__task_wake(self); /* RUNNING: re-queued at the back after the poll */
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
