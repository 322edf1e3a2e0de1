/* Current-thread flavor: every task, timer and (once started) the reactor
 * run on the thread inside bw_block_on().
 *
 * Design notes
 * ------------
 * The core has a local run queue (an intrusive FIFO touched only by the
 * driving thread) and a remote queue under `mu` for wakes and spawns from
 * other threads. One thread drives at a time: a second concurrent
 * bw_block_on waits for the core (its task is queued and may well be run by
 * the first driver meanwhile), as tokio does.
 *
 * The driver checks the remote queue every global_queue_interval ticks and
 * timers every event_interval ticks, and whenever the local queue is empty.
 * With nothing to run it sleeps on `cv` until the next timer, a remote push
 * or a kick; when the reactor has been started it sleeps inside the
 * reactor's turn(timeout) instead, and remote pushes wake the reactor.
 * With a paused clock and nothing to run, time jumps to the next timer. */
#include <string.h>

#include "core/alloc.h"
#include "runtime/reactor.h"
#include "runtime/rt.h"

struct bw__ct_core {
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* driver sleeps here */
  pthread_cond_t core_cv; /* bw_block_on callers wait for the core here */
  bw_task_t *rhead, *rtail; /* remote queue, under mu */
  size_t rlen;
  bw_task_t *lhead, *ltail; /* local queue, driver only */
  size_t llen;
  bool driving;  /* under mu */
  bool sleeping; /* under mu: driver waits on cv */
  bool kicked;   /* under mu */
  bw__local_t local;
};

int bw__ct_new(bw_runtime_t *rt) {
  bw__ct_core_t *c = bw__calloc(1, sizeof *c);
  if (!c) return -1;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  pthread_cond_init(&c->core_cv, NULL);
  rt->ct = c;
  return 0;
}

void bw__ct_free(bw_runtime_t *rt) {
  bw__ct_core_t *c = rt->ct;
  if (!c) return;
  bw__task_cache_flush(rt, &c->local.cache);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  pthread_cond_destroy(&c->core_cv);
  bw__free(c);
  rt->ct = NULL;
}

static void wake_driver_locked(bw_runtime_t *rt, bw__ct_core_t *c) {
  if (c->sleeping) pthread_cond_signal(&c->cv);
  bw__reactor_t *r = bw__reactor_get_if_started(rt);
  if (r) bw__reactor_wake(r);
}

void bw__ct_push(bw_runtime_t *rt, bw_task_t *t, bool yield) {
  bw__ct_core_t *c = rt->ct;
  (void)yield;
  t->next = NULL;
  if (bw__ctx.rt == rt) {
    if (c->ltail)
      c->ltail->next = t;
    else
      c->lhead = t;
    c->ltail = t;
    c->llen++;
    /* Woken from a libuv callback inside our own idle reactor turn (e.g. a
     * uv timer run at the start of uv_run, before it blocks in poll): make
     * the turn return instead of sleeping with a runnable task. `sleeping`
     * is only written by this same thread. */
    if (c->sleeping) {
      bw__reactor_t *r = bw__reactor_get_if_started(rt);
      if (r) bw__reactor_wake(r);
    }
    return;
  }
  pthread_mutex_lock(&c->mu);
  if (c->rtail)
    c->rtail->next = t;
  else
    c->rhead = t;
  c->rtail = t;
  c->rlen++;
  wake_driver_locked(rt, c);
  pthread_mutex_unlock(&c->mu);
}

void bw__ct_kick(bw_runtime_t *rt) {
  bw__ct_core_t *c = rt->ct;
  pthread_mutex_lock(&c->mu);
  c->kicked = true;
  wake_driver_locked(rt, c);
  pthread_mutex_unlock(&c->mu);
}

/* Move the remote queue to the back of the local one. */
static void take_remote(bw__ct_core_t *c) {
  pthread_mutex_lock(&c->mu);
  bw_task_t *h = c->rhead, *tl = c->rtail;
  size_t n = c->rlen;
  c->rhead = c->rtail = NULL;
  c->rlen = 0;
  pthread_mutex_unlock(&c->mu);
  if (!h) return;
  if (c->ltail)
    c->ltail->next = h;
  else
    c->lhead = h;
  c->ltail = tl;
  c->llen += n;
}

static bw_task_t *pop_local(bw__ct_core_t *c) {
  bw_task_t *t = c->lhead;
  if (t) {
    bw_task_t *nx = t->next;
    c->lhead = nx;
    if (!nx)
      c->ltail = NULL;
    else /* the next header is likely cold (many queued): fetch it while t runs */
      bw__task_prefetch(nx);
    c->llen--;
  }
  return t;
}

void bw__ct_drain(bw_runtime_t *rt) {
  bw__ct_core_t *c = rt->ct;
  for (;;) {
    take_remote(c);
    bw_task_t *t = pop_local(c);
    if (!t) break;
    bw__task_drop_queued(t);
  }
}

/* Sleep until a remote push, a kick or the next timer; with a paused clock
 * first try to move it to the next timer (then return without sleeping). */
static void idle_wait(bw_runtime_t *rt, bw__ct_core_t *c) {
  bw__wheel_t *wh = &rt->wheels[0];
  pthread_mutex_lock(&wh->mu);
  uint64_t next = rt->paused ? BW__TIMER_NEVER : bw__timer_wheel_next_expiry(&wh->tw);
  wh->parked_until_ms = next;
  pthread_mutex_unlock(&wh->mu);
  /* Paused: published before the clock may move (as a worker's park() does,
   * worker.c), so a timer armed on our wheel by another thread after
   * try_advance's scan kicks us (c->kicked, seen below). Published after
   * it, such an arm found 0 there, kicked nobody, and the timer waited for
   * a wake-up that never came: a paused clock does not move while we sleep
   * (test_timers's test_ct_remote_arm_after_hold_release). A timer callback
   * run by the advance that arms on our wheel kicks us too: one spurious
   * turn of the loop. */
  if (rt->paused && bw__clock_try_advance(rt, NULL)) goto out;
  bw__reactor_t *r = bw__reactor_get_if_started(rt);
  pthread_mutex_lock(&c->mu);
  if (c->rhead || c->kicked || atomic_load_explicit(&rt->state, memory_order_acquire) ==
                                    BW__RT_SHUTDOWN) {
    c->kicked = false;
    pthread_mutex_unlock(&c->mu);
  } else if (r) {
    c->sleeping = true;
    pthread_mutex_unlock(&c->mu);
    int64_t to = -1;
    if (next != BW__TIMER_NEVER) {
      uint64_t now = bw__rt_now_ms(rt);
      to = next > now ? (int64_t)(next - now) : 0;
    }
    BW__INC(c->local.parks);
    bw__reactor_turn(r, to);
    pthread_mutex_lock(&c->mu);
    c->sleeping = false;
    c->kicked = false;
    pthread_mutex_unlock(&c->mu);
  } else {
    c->sleeping = true;
    BW__INC(c->local.parks);
    if (next == BW__TIMER_NEVER) {
      pthread_cond_wait(&c->cv, &c->mu);
    } else {
      uint64_t now = bw__mono_ns();
      uint64_t dl = next * 1000000u;
      if (dl > now) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t abs = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + (dl - now);
        ts.tv_sec = (time_t)(abs / 1000000000u);
        ts.tv_nsec = (long)(abs % 1000000000u);
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
      }
    }
    c->sleeping = false;
    c->kicked = false;
    pthread_mutex_unlock(&c->mu);
  }
out:
  pthread_mutex_lock(&wh->mu);
  wh->parked_until_ms = 0;
  pthread_mutex_unlock(&wh->mu);
}

/* Drive the core until `until` is finished (or, with until == NULL, until
 * no task is alive or deadline_ns passes: used by drain shutdown). */
static void drive(bw_runtime_t *rt, bw_task_t *until, uint64_t deadline_ns) {
  bw__ct_core_t *c = rt->ct;
  bw__reactor_t *r;
  uint32_t gqi = rt->opts.global_queue_interval, evi = rt->opts.event_interval;
  uint32_t gq_left = gqi, ev_left = evi;
  /* `until` can only finish when it is polled (or at shutdown), so the stop
   * conditions are checked after polling it, after idling, and every
   * event_interval ticks, not on every task */
  bool check = true;
  for (;;) {
    if (check || !until) {
      check = false;
      if (until ? bw_join_is_finished((bw_join_t *)until) : false) break;
      if (atomic_load_explicit(&rt->state, memory_order_acquire) == BW__RT_SHUTDOWN) break;
      if (!until) {
        bw_runtime_metrics_t m;
        bw_runtime_metrics(rt, &m);
        if (m.tasks_alive == 0) break;
      }
      if (deadline_ns != UINT64_MAX && bw__mono_ns() >= deadline_ns) break;
    }
    if (--gq_left == 0) { /* countdowns: no division per task */
      gq_left = gqi;
      take_remote(c);
    }
    if (--ev_left == 0) {
      ev_left = evi;
      check = true;
      bw__wheel_fire(rt, 0);
      if ((r = bw__reactor_get_if_started(rt))) bw__reactor_turn(r, 0);
    }
    bw_task_t *t = pop_local(c);
    if (!t) {
      take_remote(c);
      t = pop_local(c);
    }
    if (t) {
      BW__INC(c->local.polls);
      if (t == until) check = true;
      bw__task_run(t);
      continue;
    }
    check = true;
    if (bw__wheel_fire(rt, 0)) continue;
    if ((r = bw__reactor_get_if_started(rt))) {
      bw__reactor_turn(r, 0);
      if (c->lhead) continue;
    }
    idle_wait(rt, c); /* (moves a paused clock, or sleeps) */
  }
}

bool bw__ct_acquire_core(bw_runtime_t *rt, bw_task_t *t);
void bw__ct_release_core(bw_runtime_t *rt);
bool bw__ct_acquire_core(bw_runtime_t *rt, bw_task_t *t) {
  bw__ct_core_t *c = rt->ct;
  pthread_mutex_lock(&c->mu);
  while (c->driving) {
    if (t && bw_join_is_finished((bw_join_t *)t)) {
      pthread_mutex_unlock(&c->mu);
      return false;
    }
    pthread_cond_wait(&c->core_cv, &c->mu);
  }
  c->driving = true;
  pthread_mutex_unlock(&c->mu);
  return true;
}

void bw__ct_release_core(bw_runtime_t *rt) {
  bw__ct_core_t *c = rt->ct;
  pthread_mutex_lock(&c->mu);
  c->driving = false;
  pthread_cond_broadcast(&c->core_cv);
  pthread_mutex_unlock(&c->mu);
}

static void enter(bw_runtime_t *rt, bw__ctx_t *saved) {
  *saved = bw__ctx;
  bw__ctx.rt = rt;
  bw__ctx.worker = NULL;
  bw__ctx.local = &rt->ct->local;
  bw__ctx.task = NULL;
  bw__reactor_t *r = bw__reactor_get_if_started(rt);
  if (r) bw__reactor_bind_thread(r);
}

bw_error_t *bw__ct_block_on(bw_runtime_t *rt, bw_task_t *t, void **value) {
  if (bw__ct_acquire_core(rt, t)) {
    bw__ctx_t saved;
    enter(rt, &saved);
    drive(rt, t, UINT64_MAX);
    bw__ctx = saved;
    bw__ct_release_core(rt);
  }
  return bw_join_wait((bw_join_t *)t, value);
}

/* Drain-mode shutdown of a current-thread runtime: the shutting-down thread
 * drives until every task finished or the deadline passed. */
void bw__ct_drive_drain(bw_runtime_t *rt, uint64_t deadline_ns);
void bw__ct_drive_drain(bw_runtime_t *rt, uint64_t deadline_ns) {
  if (!bw__ct_acquire_core(rt, NULL)) return;
  bw__ctx_t saved;
  enter(rt, &saved);
  drive(rt, NULL, deadline_ns);
  bw__ctx = saved;
  bw__ct_release_core(rt);
}

/* Drive until t finished or the deadline (background shutdown). */
void bw__ct_drive_until(bw_runtime_t *rt, bw_task_t *t, uint64_t deadline_ns) {
  if (!bw__ct_acquire_core(rt, t)) return;
  bw__ctx_t saved;
  enter(rt, &saved);
  drive(rt, t, deadline_ns);
  bw__ctx = saved;
  bw__ct_release_core(rt);
}

void bw__ct_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m) {
  bw__ct_core_t *c = rt->ct;
  m->workers = 1;
  m->tasks_spawned += BW__LOAD(c->local.spawned);
  m->tasks_completed += BW__LOAD(c->local.completed);
  m->polls += BW__LOAD(c->local.polls);
  m->parks += BW__LOAD(c->local.parks);
  pthread_mutex_lock((pthread_mutex_t *)&c->mu);
  m->global_queue_depth = c->rlen;
  pthread_mutex_unlock((pthread_mutex_t *)&c->mu);
}
