/* Timers: bw_timer_* for layers, bw_task_sleep_until for tasks, on
 * per-worker hierarchical wheels (runtime/timer_wheel.h).
 *
 * Design notes
 * ------------
 * Each worker owns one wheel (the current-thread core has one). A timer
 * armed on a worker goes into that worker's wheel: the wheel's mutex is then
 * uncontended (no syscall) and no other thread is woken. A timer armed from
 * a thread that is not a worker goes to a wheel picked round-robin; if its
 * deadline is earlier than the time that wheel's owner sleeps until, the
 * owner is kicked (one targeted unpark).
 *
 * Locks: t->lock (spin, serialises arm/cancel/free of one timer) is taken
 * before a wheel's mu; never two wheel locks at once. t->wheel is written
 * only under the lock of the wheel concerned; readers that do not hold that
 * lock load it with acquire and re-check it under the lock.
 *
 * Firing: the owner takes a batch of due entries out of its wheel under the
 * lock (bw__timer_wheel_expire, in deadline order), marks each TAKEN (and
 * records itself as the batch owner) and then clears t->wheel with release
 * (pairs with the acquire load in cancel/free: whoever sees wheel == NULL
 * also sees TAKEN), drops the lock and runs the callbacks one by one, each
 * after a CAS TAKEN -> RUNNING. Timers of one batch share a tick, so a
 * callback may cancel, re-arm or free a later timer of the same batch (a
 * timeout and the response it races): cancel/re-arm CAS it TAKEN ->
 * CANCELLED and it does not run; bw_timer_free from the batch owner's own
 * thread defers the free to the loop instead of waiting for itself (that
 * wait was a self-deadlock). After each entry the loop CASes it back to
 * IDLE with release (pairs with the acquire spin in free/cancel_sync).
 *
 * Deadlines are rounded UP to the 1 ms tick, so a timer never fires early.
 * The paused clock (BW_CLOCK_PAUSED) only moves by bw_runtime_advance or
 * when the scheduler finds every worker idle (bw__clock_try_advance). */
#include <sched.h>
#include <stddef.h>
#include <string.h>

#include "core/alloc.h"
#include "runtime/rt.h"

#define FIRE_BATCH 64

/* bw_timer.firing */
enum { FS_IDLE = 0, FS_TAKEN = 1, FS_RUNNING = 2, FS_CANCELLED = 3 };

/* Cancel a fire that was taken out of a wheel but whose callback has not
 * started (TAKEN -> CANCELLED). */
static bool cancel_taken(bw_timer_t *t) {
  unsigned st = FS_TAKEN;
  return atomic_compare_exchange_strong_explicit(&t->firing, &st, FS_CANCELLED,
                                                 memory_order_acq_rel, memory_order_acquire);
}

/* True if t sits, not yet run, in the batch this thread is firing now. */
static bool in_my_batch(bw_timer_t *t) {
  return atomic_load_explicit(&t->firing, memory_order_acquire) != FS_IDLE &&
         atomic_load_explicit(&t->batch_owner, memory_order_relaxed) == (const void *)&bw__ctx;
}

static bw_timer_t *timer_of(bw__timer_entry_t *e) {
  return (bw_timer_t *)(void *)((char *)e - offsetof(bw_timer_t, entry));
}

static uint64_t ns_to_tick(uint64_t ns) { return ns / 1000000u + (ns % 1000000u != 0); }

int bw__wheels_init(bw_runtime_t *rt, unsigned n) {
  rt->wheels = bw__calloc(n, sizeof *rt->wheels);
  if (!rt->wheels) return -1;
  rt->nwheels = n;
  uint64_t now = bw__rt_now_ms(rt);
  for (unsigned i = 0; i < n; i++) {
    bw__mutex_init_adaptive(&rt->wheels[i].mu);
    bw__timer_wheel_init(&rt->wheels[i].tw, now);
    rt->wheels[i].parked_until_ms = 0;
    rt->wheels[i].owner = i;
  }
  return 0;
}

void bw__wheels_clear(bw_runtime_t *rt) {
  bw__timer_entry_t *batch[FIRE_BATCH];
  for (unsigned i = 0; i < rt->nwheels; i++) {
    bw__wheel_t *w = &rt->wheels[i];
    pthread_mutex_lock(&w->mu);
    while (bw__timer_wheel_count(&w->tw) > 0) {
      size_t n = bw__timer_wheel_expire(&w->tw, UINT64_MAX >> 2, batch, FIRE_BATCH);
      for (size_t k = 0; k < n; k++)
        atomic_store_explicit(&timer_of(batch[k])->wheel, NULL, memory_order_release);
      if (n == 0) break;
    }
    pthread_mutex_unlock(&w->mu);
  }
}

void bw__wheels_destroy(bw_runtime_t *rt) {
  if (!rt->wheels) return;
  bw__wheels_clear(rt);
  for (unsigned i = 0; i < rt->nwheels; i++) pthread_mutex_destroy(&rt->wheels[i].mu);
  bw__free(rt->wheels);
  rt->wheels = NULL;
}

static size_t fire(bw_runtime_t *rt, unsigned i) {
  bw__wheel_t *w = &rt->wheels[i];
  bw__timer_entry_t *batch[FIRE_BATCH];
  size_t total = 0;
  uint64_t now = bw__rt_now_ms(rt);
  for (;;) {
    pthread_mutex_lock(&w->mu);
    if (bw__timer_wheel_next_expiry(&w->tw) > now) {
      pthread_mutex_unlock(&w->mu);
      break;
    }
    size_t got = bw__timer_wheel_expire(&w->tw, now, batch, FIRE_BATCH);
    size_t n = 0;
    for (size_t k = 0; k < got; k++) {
      bw_timer_t *t = timer_of(batch[k]);
      if (atomic_load_explicit(&t->firing, memory_order_acquire) != FS_IDLE) {
        /* re-armed here while another thread still holds its last fire
         * (callback running, or a cancelled entry not yet released): put
         * it back as overdue, so one timer never runs on two threads */
        bw__timer_wheel_insert(&w->tw, batch[k], now);
        continue;
      }
      atomic_store_explicit(&t->batch_owner, (const void *)&bw__ctx, memory_order_relaxed);
      atomic_store_explicit(&t->firing, FS_TAKEN, memory_order_relaxed);
      /* release: pairs with acquire loads of t->wheel in cancel/free */
      atomic_store_explicit(&t->wheel, NULL, memory_order_release);
      batch[n++] = batch[k];
    }
    w->armed = bw__timer_wheel_count(&w->tw);
    pthread_mutex_unlock(&w->mu);
    for (size_t k = 0; k < n; k++) {
      bw_timer_t *t = timer_of(batch[k]);
      unsigned st = FS_TAKEN;
      /* an earlier callback of this batch (or another thread) may have
       * cancelled, re-armed or freed this one: TAKEN -> CANCELLED */
      if (atomic_compare_exchange_strong_explicit(&t->firing, &st, FS_RUNNING,
                                                  memory_order_acq_rel, memory_order_acquire)) {
        bw_timer_t *prev = bw__ctx.firing;
        bw__ctx.firing = t;
        t->cb(t, t->arg);
        bw__ctx.firing = prev;
      }
      if (t->free_pending) {
        bw__free(t);
      } else {
        /* release pairs with the acquire spin in free/cancel_sync */
        atomic_store_explicit(&t->firing, FS_IDLE, memory_order_release);
      }
    }
    total += n;
    /* a short batch means nothing else is due; a batch of only busy
     * entries means retrying now would spin: both wait for a later call */
    if (got < FIRE_BATCH || n == 0) break;
  }
  return total;
}

size_t bw__wheel_fire(bw_runtime_t *rt, unsigned i) {
  if (!rt->paused) return fire(rt, i);
  pthread_mutex_lock(&rt->clock_mu);
  size_t n = fire(rt, i);
  pthread_mutex_unlock(&rt->clock_mu);
  return n;
}

uint64_t bw__wheel_next_ms(bw_runtime_t *rt, unsigned i) {
  bw__wheel_t *w = &rt->wheels[i];
  pthread_mutex_lock(&w->mu);
  uint64_t r = bw__timer_wheel_next_expiry(&w->tw);
  pthread_mutex_unlock(&w->mu);
  return r;
}

bool bw__clock_try_advance(bw_runtime_t *rt, bool (*idle)(bw_runtime_t *rt)) {
  if (!rt->paused) return false;
  pthread_mutex_lock(&rt->clock_mu);
  bool r = false;
  /* acquire pairs with the acq_rel updates of inhibit in blocking_glue.c */
  if (atomic_load_explicit(&rt->inhibit, memory_order_acquire) == 0 && (!idle || idle(rt))) {
    uint64_t min = BW__TIMER_NEVER;
    for (unsigned i = 0; i < rt->nwheels; i++) {
      uint64_t n = bw__wheel_next_ms(rt, i);
      if (n < min) min = n;
    }
    if (min != BW__TIMER_NEVER) {
      uint64_t target = min * 1000000u;
      uint64_t cur = atomic_load_explicit(&rt->paused_now_ns, memory_order_relaxed);
      if (cur < target) atomic_store_explicit(&rt->paused_now_ns, target, memory_order_relaxed);
      for (unsigned i = 0; i < rt->nwheels; i++) fire(rt, i);
      r = true;
    }
  }
  pthread_mutex_unlock(&rt->clock_mu);
  return r;
}

/* ---- public API -------------------------------------------------------------- */

void bw__timer_init_embedded(bw_runtime_t *rt, bw_timer_t *t, bw_timer_fn cb, void *arg) {
  memset(t, 0, sizeof *t);
  bw__timer_entry_init(&t->entry);
  t->rt = rt;
  t->cb = cb;
  t->arg = arg;
  t->embedded = true;
}

bw_error_t *bw_timer_new(bw_runtime_t *rt, bw_timer_fn cb, void *arg, bw_timer_t **out) {
  if (!out || !cb) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_timer_new: NULL out or cb");
  *out = NULL;
  bw_error_t *e = bw__rt_check(rt, "bw_timer_new");
  if (e) return e;
  bw_timer_t *t = bw__malloc(sizeof *t);
  if (!t) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw__timer_init_embedded(rt, t, cb, arg);
  t->embedded = false;
  *out = t;
  return NULL;
}

/* Remove t from its wheel; caller holds t->lock. True if it was armed. */
static bool detach_locked(bw_timer_t *t) {
  for (;;) {
    bw__wheel_t *w = atomic_load_explicit(&t->wheel, memory_order_acquire);
    if (!w) return false;
    pthread_mutex_lock(&w->mu);
    if (atomic_load_explicit(&t->wheel, memory_order_relaxed) != w) {
      pthread_mutex_unlock(&w->mu);
      continue; /* fired meanwhile */
    }
    bool r = bw__timer_wheel_remove(&w->tw, &t->entry);
    w->armed = bw__timer_wheel_count(&w->tw);
    atomic_store_explicit(&t->wheel, NULL, memory_order_release);
    pthread_mutex_unlock(&w->mu);
    return r;
  }
}

static int arm(bw_timer_t *t, uint64_t deadline_ns) {
  bw_runtime_t *rt = t->rt;
  if (atomic_load_explicit(&rt->state, memory_order_acquire) == BW__RT_SHUTDOWN ||
      bw__rt_forked(rt))
    return -1;
  unsigned idx;
  if (bw__ctx.rt == rt) {
    idx = bw__ctx.worker ? bw__worker_index(bw__ctx.worker) : 0;
  } else {
    idx = atomic_fetch_add_explicit(&rt->remote_wheel_rr, 1, memory_order_relaxed) % rt->nwheels;
  }
  uint64_t tick = ns_to_tick(deadline_ns);
  bw__spin_lock(&t->lock);
  cancel_taken(t); /* re-arming replaces a fire not yet started */
  bw__wheel_t *cur = atomic_load_explicit(&t->wheel, memory_order_acquire);
  if (cur && cur != &rt->wheels[idx]) detach_locked(t);
  bw__wheel_t *w = &rt->wheels[idx];
  pthread_mutex_lock(&w->mu);
  t->deadline_ns = deadline_ns;
  bw__timer_wheel_insert(&w->tw, &t->entry, tick);
  w->armed = bw__timer_wheel_count(&w->tw);
  atomic_store_explicit(&t->wheel, w, memory_order_release);
  /* parked_until_ms is 0 while the owner runs, so an arm on the owner's
   * own thread kicks only when the owner is inside a current-thread reactor
   * turn (a libuv callback arming a timer): the turn must return early */
  bool kick = tick < w->parked_until_ms;
  if (kick) w->parked_until_ms = tick;
  pthread_mutex_unlock(&w->mu);
  bw__spin_unlock(&t->lock);
  if (kick) {
    if (rt->ct)
      bw__ct_kick(rt);
    else
      bw__sched_kick(rt, idx);
  }
  return 0;
}

bw_error_t *bw_timer_arm(bw_timer_t *t, uint64_t deadline_ns) {
  if (!t) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_timer_arm: NULL timer");
  if (arm(t, deadline_ns) != 0) {
    bw_error_t *e = bw__rt_check(t->rt, "bw_timer_arm");
    return e ? e : bw_error_static(BW_ERR_RUNTIME_SHUTDOWN);
  }
  return NULL;
}

bool bw_timer_cancel(bw_timer_t *t) {
  if (!t) return false;
  bw__spin_lock(&t->lock);
  bool r = detach_locked(t) || cancel_taken(t);
  bw__spin_unlock(&t->lock);
  return r;
}

bool bw__timer_cancel_sync(bw_timer_t *t) {
  bw_timer_cancel(t);
  if (bw__ctx.firing == t || in_my_batch(t)) return false; /* our firing loop finishes it */
  /* acquire pairs with the release store of FS_IDLE after the callback */
  while (atomic_load_explicit(&t->firing, memory_order_acquire)) sched_yield();
  return true;
}

void bw_timer_free(bw_timer_t *t) {
  if (!t) return;
  bw_timer_cancel(t);
  if (bw__ctx.firing == t || in_my_batch(t)) {
    /* inside its own callback, or taken out in the batch this thread is
     * firing (a same-tick timer's callback frees it): waiting would wait
     * for ourselves, so the firing loop frees it when it gets there */
    t->free_pending = true;
    return;
  }
  while (atomic_load_explicit(&t->firing, memory_order_acquire)) sched_yield();
  bw__free(t);
}

static void sleep_wake(bw_timer_t *t, void *arg) {
  (void)t;
  bw__task_wake((bw_task_t *)arg);
}

bw_poll_t bw_task_sleep_until(bw_task_t *self, uint64_t deadline_ns) {
  if (!self) return BW_READY;
  bw_runtime_t *rt = self->rt;
  if (bw_runtime_now_ns(rt) >= deadline_ns) return BW_READY;
  bw_timer_t *t = self->sleep;
  if (!t) {
    t = bw__task_slot_alloc(rt);
    if (!t) return bw_task_yield(self); /* out of memory: poll until the deadline */
    bw__timer_init_embedded(rt, t, sleep_wake, self);
    self->sleep = t;
  }
  if (atomic_load_explicit(&t->wheel, memory_order_acquire) && t->deadline_ns == deadline_ns)
    return BW_PENDING; /* already armed for this deadline */
  if (arm(t, deadline_ns) != 0) return BW_READY; /* shut down: do not hang */
  return BW_PENDING;
}
