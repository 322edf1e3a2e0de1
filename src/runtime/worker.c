/* Multi-thread work-stealing scheduler (after tokio's multi_thread/worker.rs).
 *
 * Design notes
 * ------------
 * What is scheduled: tasks are poll functions with wakers (runtime.h), not
 * callbacks and not stackful coroutines, because poll functions compose
 * into state machines (a whole layer stack is one struct laid out up front,
 * no malloc per call), need no stack per task (a task is a small pooled
 * header), and make "a wake while running means run once more afterwards,
 * never concurrently" a one-bit rule on the task's state word (task.c).
 * A worker therefore only ever moves task pointers between queues and calls
 * poll; it never has to save or restore an execution context.
 *
 * Each worker owns: a bounded lock-free local queue (queue.c), a LIFO slot
 * holding the task it woke last, a timer wheel (timer.c) and a parker
 * (park.c). Shared: the inject queue (inject.c) and the idle accounting
 * (idle.c).
 *
 * Where a task goes when it becomes runnable (bw__schedule):
 *  - woken/spawned on a worker of this runtime: into the LIFO slot; the task
 *    that was there moves to the back of the local queue (message passing
 *    locality: the task just woken usually reads what the waker just wrote,
 *    still in this core's cache). Yields and "woken while running" go to the
 *    back of the local queue, never the LIFO slot;
 *  - a full local queue moves half of itself to the inject queue;
 *  - from any other thread: the inject queue.
 * Whenever work lands somewhere other than the LIFO slot, one parked worker
 * is woken, but only if nobody is searching already (idle.c): no herd.
 *
 * Where a worker looks for work (next_task / steal_work), each tick:
 *  - every global_queue_interval ticks the inject queue first (fairness:
 *    with busy local queues the inject queue would otherwise starve);
 *  - the LIFO slot, at most MAX_LIFO_POLLS in a row after a normal poll
 *    (two tasks waking each other forever would otherwise starve the
 *    queue): then the LIFO task goes to the back of the local queue;
 *  - its local queue, then a batch from the inject queue;
 *  - if still nothing and fewer than half the workers are searching, it
 *    becomes a searcher and steals half of another worker's queue (victims
 *    in random order), then tries the inject queue;
 *  - otherwise it parks. The last searcher to park re-checks every queue
 *    (the lost-wake-up argument is in idle.c). A searcher that finds work
 *    and was the last searcher wakes another worker if work is left in
 *    the queues, so work spreads.
 * Every event_interval ticks the worker fires its due timers.
 *
 * Deferred functions (bw__runtime_defer from one of this runtime's own
 * workers, e.g. a call that completed inside bw_service_call handing its
 * callback on): a fixed ring of (fn, arg) per worker, run after the task
 * that deferred them returns, at most DEFER_BUDGET per turn of the loop so
 * a chain of functions deferring each other cannot starve the queues or
 * the timers. Why not a task each: a task costs an allocation from the
 * pool, the publish/state/refcount atomics and a queue round trip; the ring
 * is two plain stores. Like the LIFO slot the ring cannot be stolen: its
 * entries wait while this worker runs a long poll. A full ring, or a defer
 * from any other thread, falls back to a task. Ring entries count as tasks
 * in the spawned/completed metrics, so a draining shutdown waits for them;
 * a worker that stops runs what is left in its ring before it exits.
 *
 * Parking: a worker sleeps until its wheel's next deadline (real clock) or
 * until unparked. A timer armed from outside into a sleeping worker's wheel
 * with an earlier deadline kicks that worker (timer.c). On waking the worker
 * fires its timers; if that made work in its own queues it unparks itself
 * by id (not counted as a searcher), else it parks again unless it was
 * notified (then it is a searcher).
 *
 * Driving the reactor: a multi-thread runtime's reactor (once started, in
 * shared mode: reactor_glue.c) has no thread of its own. A worker with
 * nothing to run waits in the loop's poll instead of on its parker, if no
 * other worker does (s->driver, acquire/release: it also hands the uv loop
 * from one driver to the next), so the replies of a socket and the
 * completions they make run on a worker without a hop through a separate
 * I/O thread and its wake-ups (tokio's driver works the same way). The
 * loop's callbacks run as on a current-thread runtime's block_on thread:
 * on a worker outside any task, so what they defer (the clients' batches
 * of completions) goes to this worker's ring and runs right after the
 * turn, and blocking calls there fail as on any worker.
 * Waking a driver: unpark_worker notifies its parker and, if the worker is
 * driving, wakes the loop (from a callback of that same turn: uv_stop); the
 * driver sets `driving` and then takes a pending notify (both SeqCst), so
 * whichever comes second sees the other. Work a callback of that turn
 * gives this worker itself (its ring, its LIFO slot) ends the turn the same
 * way: the callback may run before the poll phase (a uv timer already due
 * when the turn began), and the poll would then block with the work
 * waiting behind it.
 * Every event_interval ticks a busy worker also polls the loop without
 * blocking if nobody drives it, so I/O keeps flowing while every worker is
 * busy; a task that never returns stalls I/O, as it would stall tokio's
 * (opts.io_thread gives the loop its own thread instead).
 *
 * Paused clock: a parking worker that finds the whole runtime idle (no
 * unparked worker, every queue and LIFO slot empty, no blocking job in
 * flight) advances the clock to the next timer and fires (timer.c; the
 * check and the firing are serialised by rt->clock_mu).
 *
 * Shutdown: `stop` is set (release; workers load it with acquire), every
 * parker is unparked, threads are joined; tasks still queued are then
 * dropped by bw__sched_drain on the shutting-down thread.
 *
 * Tuning constants: MAX_LIFO_POLLS = 3 follows tokio (picked there "out of
 * thin air"); intervals default to tokio's 31/61. */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "runtime/idle.h"
#include "runtime/inject.h"
#include "runtime/park.h"
#include "runtime/queue.h"
#include "runtime/reactor.h"
#include "runtime/rt.h"

#define MAX_LIFO_POLLS 3u
#define DEFER_RING 256u /* power of two; see "Deferred functions" */
#define DEFER_BUDGET 64u

typedef struct deferred {
  void (*fn)(void *arg);
  void *arg;
} deferred_t;

struct bw__worker {
  bw__lq_t lq;
  _Atomic(bw_task_t *) lifo; /* owner writes; others read it (relaxed) for the idle check */
  bw_runtime_t *rt;
  unsigned index;
  bool is_searching;
  bool started;
  uint32_t tick;
  uint32_t gq_left, ev_left; /* countdowns to the next global-queue / event check */
  uint32_t rng;
  pthread_t thread;
  bw__parker_t parker;
  atomic_bool driving; /* waiting in the reactor's poll (see "Driving the reactor") */
  bw__reactor_t *turning; /* owner only: the reactor it is turning with `block` */
  bw__local_t local;
  uint32_t defer_head;      /* owner only: next entry to run */
  atomic_uint defer_len;    /* owner writes; others read it for the idle check */
  deferred_t defer[DEFER_RING];
  char pad[64];
};

struct bw__sched {
  bw__inject_t inject;
  bw__idle_t idle;
  bw__worker_t *workers;
  pthread_mutex_t start_mu;
  atomic_bool started; /* release after threads exist / acquire in start() */
  atomic_bool stop;    /* release in stop() / acquire in the worker loop */
  atomic_bool driver;  /* a worker is turning the reactor */
};

unsigned bw__worker_index(const bw__worker_t *w) { return w->index; }

int bw__sched_new(bw_runtime_t *rt) {
  bw__sched_t *s = bw__calloc(1, sizeof *s);
  if (!s) return -1;
  rt->sched = s;
  bw__inject_init(&s->inject);
  pthread_mutex_init(&s->start_mu, NULL);
  atomic_init(&s->started, false);
  atomic_init(&s->stop, false);
  s->workers = bw__calloc(rt->nworkers, sizeof *s->workers);
  if (!s->workers) return -1;
  if (bw__idle_init(&s->idle, rt->nworkers) != 0) return -1;
  for (unsigned i = 0; i < rt->nworkers; i++) {
    bw__worker_t *w = &s->workers[i];
    w->rt = rt;
    w->index = i;
    w->rng = 0x9e3779b9u * (i + 1);
    atomic_init(&w->lifo, NULL);
    if (bw__lq_init(&w->lq, rt->opts.local_queue_capacity) != 0) return -1;
    if (bw__parker_init(&w->parker) != 0) return -1;
  }
  return 0;
}

static uint32_t rnd(bw__worker_t *w) {
  uint32_t x = w->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return w->rng = x;
}

static void unpark_worker(bw__worker_t *w) {
  bw__unpark(&w->parker);
  if (atomic_load_explicit(&w->driving, memory_order_seq_cst)) {
    bw__reactor_t *r = bw__reactor_get_if_started(w->rt);
    if (r) bw__reactor_wake(r);
  }
}

static void notify_parked(bw__sched_t *s) {
  int i = bw__idle_worker_to_notify(&s->idle);
  if (i >= 0) {
    if (bw__ctx.local) BW__INC(bw__ctx.local->unparks);
    unpark_worker(&s->workers[i]);
  }
}

static void push_back(bw__worker_t *w, bw_task_t *t) {
  bw__lq_push_back_or_overflow(&w->lq, t, &w->rt->sched->inject);
}

void bw__sched_push_local(bw__worker_t *w, bw_task_t *t, bool yield) {
  bool notify = true;
  if (yield) {
    push_back(w, t);
  } else {
    bw_task_t *prev = atomic_load_explicit(&w->lifo, memory_order_relaxed);
    atomic_store_explicit(&w->lifo, t, memory_order_relaxed);
    if (prev)
      push_back(w, prev);
    else
      notify = false;
  }
  if (w->turning) bw__reactor_wake(w->turning); /* see "Driving the reactor" */
  if (notify) notify_parked(w->rt->sched);
}

void bw__sched_push_remote(bw_runtime_t *rt, bw_task_t *t) {
  bw__sched_t *s = rt->sched;
  bw__inject_push(&s->inject, t);
  notify_parked(s);
}

/* Take a batch from the inject queue: one to run, the rest into lq. */
static bw_task_t *take_inject(bw__worker_t *w) {
  bw__sched_t *s = w->rt->sched;
  size_t len = bw__inject_len(&s->inject);
  if (len == 0) return NULL;
  size_t n = len / w->rt->nworkers + 1;
  uint32_t room = bw__lq_room(&w->lq);
  if (n > (size_t)room + 1) n = (size_t)room + 1;
  if (n > w->lq.cap / 2) n = w->lq.cap / 2;
  if (n == 0) n = 1;
  bw_task_t *list;
  size_t got = bw__inject_pop_n(&s->inject, n, &list);
  if (!got) return NULL;
  bw_task_t *first = list;
  list = list->next;
  while (list) {
    bw_task_t *nx = list->next;
    push_back(w, list);
    list = nx;
  }
  return first;
}

static bw_task_t *next_task(bw__worker_t *w) {
  bw__sched_t *s = w->rt->sched;
  bw_task_t *t;
  if (--w->gq_left == 0) { /* countdowns, not `tick % n`: no division per task */
    w->gq_left = w->rt->opts.global_queue_interval;
    t = bw__inject_pop(&s->inject);
    if (t) return t;
  }
  t = atomic_load_explicit(&w->lifo, memory_order_relaxed);
  if (t) {
    atomic_store_explicit(&w->lifo, NULL, memory_order_relaxed);
    return t;
  }
  t = bw__lq_pop(&w->lq);
  if (t) return t;
  return take_inject(w);
}

static bw_task_t *steal_work(bw__worker_t *w) {
  bw__sched_t *s = w->rt->sched;
  if (!w->is_searching) {
    if (!bw__idle_transition_to_searching(&s->idle)) return NULL;
    w->is_searching = true;
  }
  unsigned n = w->rt->nworkers;
  unsigned start = rnd(w) % n;
  for (unsigned k = 0; k < n; k++) {
    unsigned i = (start + k) % n;
    if (i == w->index) continue;
    uint32_t got;
    bw_task_t *t = bw__lq_steal_into(&s->workers[i].lq, &w->lq, &got);
    if (t) {
      BW__INC(w->local.steal_ops);
      atomic_store_explicit(&w->local.steals,
                            BW__LOAD(w->local.steals) + got, memory_order_relaxed);
      return t;
    }
  }
  return take_inject(w);
}

static void poll_one(bw__worker_t *w, bw_task_t *t) {
  BW__INC(w->local.polls);
  bw__task_run(t);
}

static void notify_if_work_pending(bw__sched_t *s, bw_runtime_t *rt);

static void run_task(bw__worker_t *w, bw_task_t *t) {
  bw__sched_t *s = w->rt->sched;
  if (w->is_searching) {
    w->is_searching = false;
    /* The last searcher found work: another worker searches on, but only
     * if there is work left to find (tokio wakes one regardless). A lone
     * hand-off from another thread (a reactor's batch of completions)
     * then costs one wake-up, not two. No wake-up is lost: our RMW, a
     * fence, then the queue check, against a pusher's push, fence, then
     * state load (idle.c); whichever comes second sees the other. */
    if (bw__idle_transition_from_searching(&s->idle)) {
      atomic_thread_fence(memory_order_seq_cst);
      notify_if_work_pending(s, w->rt);
    }
  }
  poll_one(w, t);
  for (unsigned lifo_polls = 0;;) {
    bw_task_t *n = atomic_load_explicit(&w->lifo, memory_order_relaxed);
    if (!n) break;
    atomic_store_explicit(&w->lifo, NULL, memory_order_relaxed);
    if (lifo_polls >= MAX_LIFO_POLLS) {
      push_back(w, n); /* do not let two tasks ping-pong forever */
      break;
    }
    lifo_polls++;
    poll_one(w, n);
  }
}

bool bw__worker_defer(bw__worker_t *w, void (*fn)(void *arg), void *arg) {
  unsigned len = atomic_load_explicit(&w->defer_len, memory_order_relaxed);
  if (len == DEFER_RING) return false;
  w->defer[(w->defer_head + len) & (DEFER_RING - 1)] = (deferred_t){fn, arg};
  atomic_store_explicit(&w->defer_len, len + 1, memory_order_relaxed);
  if (w->turning) bw__reactor_wake(w->turning); /* see "Driving the reactor" */
  return true;
}

/* Run up to `budget` deferred functions (all of them for UINT32_MAX),
 * including ones they defer in turn. */
static void run_deferred(bw__worker_t *w, uint32_t budget) {
  for (; budget; budget--) {
    unsigned len = atomic_load_explicit(&w->defer_len, memory_order_relaxed);
    if (!len) return;
    deferred_t d = w->defer[w->defer_head];
    w->defer_head = (w->defer_head + 1) & (DEFER_RING - 1);
    atomic_store_explicit(&w->defer_len, len - 1, memory_order_relaxed);
    d.fn(d.arg);
    BW__INC(w->local.completed);
  }
}

static bool has_local_work(bw__worker_t *w) {
  return atomic_load_explicit(&w->lifo, memory_order_relaxed) || bw__lq_len(&w->lq) > 0 ||
         atomic_load_explicit(&w->defer_len, memory_order_relaxed) > 0;
}

static void notify_if_work_pending(bw__sched_t *s, bw_runtime_t *rt) {
  for (unsigned i = 0; i < rt->nworkers; i++) {
    if (bw__lq_len(&s->workers[i].lq) > 0) {
      notify_parked(s);
      return;
    }
  }
  if (bw__inject_len(&s->inject) > 0) notify_parked(s);
}

/* Paused clock: is the whole runtime idle? (called under rt->clock_mu) */
static bool all_idle(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  if (bw__idle_num_unparked(&s->idle) != 0) return false;
  if (bw__inject_len(&s->inject) != 0) return false;
  for (unsigned i = 0; i < rt->nworkers; i++)
    if (has_local_work(&s->workers[i])) return false;
  return true;
}

static bool transition_from_parked(bw__worker_t *w) {
  bw__sched_t *s = w->rt->sched;
  if (has_local_work(w)) {
    w->is_searching = !bw__idle_unpark_worker_by_id(&s->idle, w->index);
    return true;
  }
  if (bw__idle_is_parked(&s->idle, w->index)) return false;
  w->is_searching = true; /* a notifier counted us as searching */
  return true;
}

/* Turn the reactor once if it is started and nobody else is turning it:
 * with `block`, waiting until woken or until `next` (runtime ms;
 * BW__TIMER_NEVER: no limit), else without waiting. false: not turned
 * (then park on the parker instead; a pending unpark is left to it). */
static bool drive(bw__worker_t *w, uint64_t next, bool block) {
  bw__sched_t *s = w->rt->sched;
  if (w->rt->opts.io_thread) return false; /* the loop has its own thread */
  bw__reactor_t *r = bw__reactor_get_if_started(w->rt);
  if (!r || atomic_load_explicit(&s->driver, memory_order_relaxed) ||
      atomic_exchange_explicit(&s->driver, true, memory_order_acquire))
    return false;
  int64_t timeout_ms = 0;
  bool woken = false;
  if (block) {
    atomic_store_explicit(&w->driving, true, memory_order_seq_cst);
    woken = bw__park_take_notify(&w->parker);
    if (next == BW__TIMER_NEVER) {
      timeout_ms = -1;
    } else {
      uint64_t now = bw__mono_ns(), due = next * 1000000u;
      timeout_ms = due > now ? (int64_t)((due - now + 999999u) / 1000000u) : 0;
    }
  }
  int rc = 0;
  if (!woken) {
    w->turning = block ? r : NULL;
    rc = bw__reactor_turn(r, timeout_ms);
    w->turning = NULL;
  }
  if (block) {
    atomic_store_explicit(&w->driving, false, memory_order_seq_cst);
    /* this turn's wake-up, if any (after a failed turn, bw__park's) */
    if (rc == 0) bw__park_take_notify(&w->parker);
  }
  atomic_store_explicit(&s->driver, false, memory_order_release);
  return rc == 0;
}

static void park(bw__worker_t *w) {
  bw_runtime_t *rt = w->rt;
  bw__sched_t *s = rt->sched;
  if (has_local_work(w)) return;
  bool last = bw__idle_transition_to_parked(&s->idle, w->index, w->is_searching);
  w->is_searching = false;
  if (last) notify_if_work_pending(s, rt);
  BW__INC(w->local.parks);
  bw__wheel_t *wh = &rt->wheels[w->index];
  while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
    uint64_t next = BW__TIMER_NEVER;
    pthread_mutex_lock(&wh->mu);
    /* Paused: published before the clock may move, so a timer armed on our
     * wheel after try_advance's scan (by a thread that is not a worker, such
     * as the reactor loop) kicks us; published after it, the arm found 0 and
     * its timer waited for a wake-up that never came. */
    if (!rt->paused) next = bw__timer_wheel_next_expiry(&wh->tw);
    wh->parked_until_ms = next;
    pthread_mutex_unlock(&wh->mu);
    if (rt->paused && bw__clock_try_advance(rt, all_idle)) {
      pthread_mutex_lock(&wh->mu);
      wh->parked_until_ms = 0;
      pthread_mutex_unlock(&wh->mu);
      if (transition_from_parked(w)) return;
      continue;
    }
    if (!drive(w, next, true))
      bw__park(&w->parker, next == BW__TIMER_NEVER ? UINT64_MAX : next * 1000000u);
    pthread_mutex_lock(&wh->mu);
    wh->parked_until_ms = 0;
    pthread_mutex_unlock(&wh->mu);
    bw__wheel_fire(rt, w->index);
    if (transition_from_parked(w)) return;
  }
}

/* Give back what other components cache on this worker between calls (see
 * bw__ctx.turn_end): at most one loop turn late, and before parking. */
static inline void turn_end(void) {
  void (*f)(void) = bw__ctx.turn_end;
  if (f) {
    bw__ctx.turn_end = NULL;
    f();
  }
}

static void *worker_main(void *arg) {
  bw__worker_t *w = arg;
  bw_runtime_t *rt = w->rt;
  bw__sched_t *s = rt->sched;
  bw__ctx.rt = rt;
  bw__ctx.worker = w;
  bw__ctx.local = &w->local;
  uint32_t evi = rt->opts.event_interval;
  w->ev_left = evi;
  w->gq_left = rt->opts.global_queue_interval;
  while (!atomic_load_explicit(&s->stop, memory_order_acquire)) {
    w->tick++;
    if (--w->ev_left == 0) {
      w->ev_left = evi;
      bw__wheel_fire(rt, w->index);
      drive(w, 0, false); /* I/O while busy (see "Driving the reactor") */
    }
    bool deferred = atomic_load_explicit(&w->defer_len, memory_order_relaxed) > 0;
    bw_task_t *t = next_task(w);
    if (!t && !deferred) t = steal_work(w); /* (own ring first: no searching) */
    if (t) {
      run_task(w, t);
    } else if (!deferred) {
      park(w);
      continue;
    }
    run_deferred(w, DEFER_BUDGET);
    turn_end();
  }
  /* The runtime is SHUTDOWN now, so these can defer nothing more here
   * (bw__runtime_defer refuses and their completions run inline). */
  run_deferred(w, UINT32_MAX);
  turn_end();
  bw__task_cache_flush(rt, &w->local.cache);
  bw__ctx.rt = NULL;
  bw__ctx.worker = NULL;
  bw__ctx.local = NULL;
  return NULL;
}

int bw__sched_start(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  if (atomic_load_explicit(&s->started, memory_order_acquire)) return 0;
  pthread_mutex_lock(&s->start_mu);
  int rc = 0;
  if (!atomic_load_explicit(&s->started, memory_order_relaxed) &&
      !atomic_load_explicit(&s->stop, memory_order_relaxed)) {
    for (unsigned i = 0; i < rt->nworkers; i++) {
      if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
        rc = -1;
        break;
      }
      s->workers[i].started = true;
      /* named by the creator, so the name is there when new() returns */
      char name[48];
      snprintf(name, sizeof name, "%s-w%u", rt->name_prefix, i);
      name[15] = 0;
      pthread_setname_np(s->workers[i].thread, name);
    }
    atomic_store_explicit(&s->started, true, memory_order_release); /* pairs with load above */
  }
  pthread_mutex_unlock(&s->start_mu);
  return rc;
}

void bw__sched_stop(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  pthread_mutex_lock(&s->start_mu); /* no lazy start after this */
  atomic_store_explicit(&s->stop, true, memory_order_release);
  pthread_mutex_unlock(&s->start_mu);
  if (!s->workers) return; /* creation failed half-way */
  for (unsigned i = 0; i < rt->nworkers; i++) unpark_worker(&s->workers[i]);
  for (unsigned i = 0; i < rt->nworkers; i++) {
    if (s->workers[i].started) {
      pthread_join(s->workers[i].thread, NULL);
      s->workers[i].started = false;
    }
  }
}

void bw__sched_drain(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  for (unsigned i = 0; s->workers && i < rt->nworkers; i++) {
    bw__worker_t *w = &s->workers[i];
    bw_task_t *t = atomic_exchange_explicit(&w->lifo, NULL, memory_order_relaxed);
    if (t) bw__task_drop_queued(t);
    while ((t = bw__lq_pop(&w->lq))) bw__task_drop_queued(t);
  }
  bw_task_t *t;
  while ((t = bw__inject_pop(&s->inject))) bw__task_drop_queued(t);
}

void bw__sched_free(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  if (!s) return;
  if (s->workers) {
    for (unsigned i = 0; i < rt->nworkers; i++) {
      if (s->workers[i].lq.buf) {
        bw__lq_destroy(&s->workers[i].lq);
        bw__parker_destroy(&s->workers[i].parker);
      }
    }
    if (s->idle.sleepers) bw__idle_destroy(&s->idle);
    bw__free(s->workers);
  }
  bw__inject_destroy(&s->inject);
  pthread_mutex_destroy(&s->start_mu);
  bw__free(s);
  rt->sched = NULL;
}

void bw__sched_kick(bw_runtime_t *rt, unsigned i) {
  bw__sched_t *s = rt->sched;
  bw__sched_start(rt);
  unpark_worker(&s->workers[i % rt->nworkers]);
}

void bw__sched_wake_all(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  if (!s || !s->workers || !atomic_load_explicit(&s->started, memory_order_acquire)) return;
  for (unsigned i = 0; i < rt->nworkers; i++) unpark_worker(&s->workers[i]);
}

void bw__sched_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m) {
  bw__sched_t *s = rt->sched;
  m->workers = rt->nworkers;
  if (!s || !s->workers) return;
  for (unsigned i = 0; i < rt->nworkers; i++) {
    bw__local_t *l = &s->workers[i].local;
    m->tasks_spawned += BW__LOAD(l->spawned);
    m->tasks_completed += BW__LOAD(l->completed);
    m->polls += BW__LOAD(l->polls);
    m->steals += BW__LOAD(l->steals);
    m->steal_operations += BW__LOAD(l->steal_ops);
    m->parks += BW__LOAD(l->parks);
    m->unparks += BW__LOAD(l->unparks);
    m->local_queue_depth += bw__lq_len(&s->workers[i].lq);
  }
  m->global_queue_depth = bw__inject_len(&s->inject);
}

int bw__sched_worker_metrics(const bw_runtime_t *rt, unsigned i, uint64_t *steals,
                             uint64_t *depth, uint64_t *polls) {
  if (i >= rt->nworkers) return -1;
  bw__worker_t *w = &rt->sched->workers[i];
  if (steals) *steals = BW__LOAD(w->local.steals);
  if (depth) *depth = bw__lq_len(&w->lq);
  if (polls) *polls = BW__LOAD(w->local.polls);
  return 0;
}
