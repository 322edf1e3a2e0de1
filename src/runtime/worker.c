/* Multi-thread scheduler, first version: one global queue under a mutex
 * and a condition variable. (Replaced by the work-stealing scheduler.) */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "runtime/rt.h"

struct bw__worker {
  bw_runtime_t *rt;
  unsigned index;
  pthread_t thread;
  bool started;
  bw__local_t local;
};

struct bw__sched {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bw_task_t *head, *tail;
  size_t len;
  unsigned idle;
  bool stop;
  atomic_bool started;
  bw__worker_t *workers;
};

unsigned bw__worker_index(const bw__worker_t *w) { return w->index; }

int bw__sched_new(bw_runtime_t *rt) {
  bw__sched_t *s = bw__calloc(1, sizeof *s);
  if (!s) return -1;
  s->workers = bw__calloc(rt->nworkers, sizeof *s->workers);
  if (!s->workers) {
    bw__free(s);
    return -1;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  for (unsigned i = 0; i < rt->nworkers; i++) {
    s->workers[i].rt = rt;
    s->workers[i].index = i;
  }
  rt->sched = s;
  return 0;
}

static bw_task_t *pop_locked(bw__sched_t *s) {
  bw_task_t *t = s->head;
  if (t) {
    s->head = t->next;
    if (!s->head) s->tail = NULL;
    s->len--;
  }
  return t;
}

static void *worker_main(void *arg) {
  bw__worker_t *w = arg;
  bw_runtime_t *rt = w->rt;
  bw__sched_t *s = rt->sched;
  char name[48];
  snprintf(name, sizeof name, "%s-w%u", rt->name_prefix, w->index);
  name[15] = 0;
  pthread_setname_np(pthread_self(), name);
  bw__ctx.rt = rt;
  bw__ctx.worker = w;
  bw__ctx.local = &w->local;
  bw__wheel_t *wh = &rt->wheels[w->index];
  pthread_mutex_lock(&s->mu);
  while (!s->stop) {
    bw_task_t *t = pop_locked(s);
    if (t) {
      pthread_mutex_unlock(&s->mu);
      BW__INC(w->local.polls);
      bw__task_run(t);
      pthread_mutex_lock(&s->mu);
      continue;
    }
    pthread_mutex_unlock(&s->mu);
    size_t fired = bw__wheel_fire(rt, w->index);
    pthread_mutex_lock(&s->mu);
    if (fired || s->head || s->stop) continue;
    if (rt->paused && s->idle + 1 == rt->nworkers &&
        atomic_load_explicit(&rt->inhibit, memory_order_acquire) == 0) {
      pthread_mutex_unlock(&s->mu);
      bool adv = bw__clock_auto_advance(rt);
      if (adv)
        for (unsigned i = 0; i < rt->nwheels; i++) bw__wheel_fire(rt, i);
      pthread_mutex_lock(&s->mu);
      if (adv) continue;
    }
    if (s->head || s->stop) continue;
    pthread_mutex_lock(&wh->mu);
    uint64_t next = rt->paused ? BW__TIMER_NEVER : bw__timer_wheel_next_expiry(&wh->tw);
    wh->parked_until_ms = next;
    pthread_mutex_unlock(&wh->mu);
    s->idle++;
    BW__INC(w->local.parks);
    if (next == BW__TIMER_NEVER) {
      pthread_cond_wait(&s->cv, &s->mu);
    } else {
      struct timespec ts;
      clock_gettime(CLOCK_MONOTONIC, &ts);
      uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
      uint64_t dl = next * 1000000u;
      if (dl > now) {
        /* condvar uses CLOCK_REALTIME by default; convert the delay */
        uint64_t d = dl - now;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t abs = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + d;
        ts.tv_sec = (time_t)(abs / 1000000000u);
        ts.tv_nsec = (long)(abs % 1000000000u);
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
      }
    }
    s->idle--;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&wh->mu);
    wh->parked_until_ms = 0;
    pthread_mutex_unlock(&wh->mu);
    pthread_mutex_lock(&s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  bw__task_cache_flush(rt, &w->local.cache);
  bw__ctx.rt = NULL;
  bw__ctx.worker = NULL;
  bw__ctx.local = NULL;
  return NULL;
}

int bw__sched_start(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  if (atomic_load_explicit(&s->started, memory_order_acquire)) return 0;
  pthread_mutex_lock(&s->mu);
  int rc = 0;
  if (!atomic_load_explicit(&s->started, memory_order_relaxed) && !s->stop) {
    for (unsigned i = 0; i < rt->nworkers; i++) {
      if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0) {
        rc = -1;
        break;
      }
      s->workers[i].started = true;
    }
    /* release pairs with the acquire load above */
    atomic_store_explicit(&s->started, true, memory_order_release);
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

void bw__sched_stop(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  pthread_mutex_lock(&s->mu);
  s->stop = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  for (unsigned i = 0; i < rt->nworkers; i++) {
    if (s->workers[i].started) {
      pthread_join(s->workers[i].thread, NULL);
      s->workers[i].started = false;
    }
  }
}

void bw__sched_drain(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  for (;;) {
    pthread_mutex_lock(&s->mu);
    bw_task_t *t = pop_locked(s);
    pthread_mutex_unlock(&s->mu);
    if (!t) break;
    bw__task_drop_queued(t);
  }
}

void bw__sched_free(bw_runtime_t *rt) {
  bw__sched_t *s = rt->sched;
  if (!s) return;
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  bw__free(s->workers);
  bw__free(s);
  rt->sched = NULL;
}

static void push(bw_runtime_t *rt, bw_task_t *t) {
  bw__sched_t *s = rt->sched;
  t->next = NULL;
  pthread_mutex_lock(&s->mu);
  if (s->tail)
    s->tail->next = t;
  else
    s->head = t;
  s->tail = t;
  s->len++;
  if (s->idle) pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

void bw__sched_push_remote(bw_runtime_t *rt, bw_task_t *t) { push(rt, t); }

void bw__sched_push_local(bw__worker_t *w, bw_task_t *t, bool yield) {
  (void)yield;
  push(w->rt, t);
}

void bw__sched_kick(bw_runtime_t *rt, unsigned i) {
  (void)i;
  bw__sched_t *s = rt->sched;
  bw__sched_start(rt);
  pthread_mutex_lock(&s->mu);
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

void bw__sched_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *m) {
  bw__sched_t *s = rt->sched;
  m->workers = rt->nworkers;
  for (unsigned i = 0; i < rt->nworkers; i++) {
    bw__local_t *l = &s->workers[i].local;
    m->tasks_spawned += BW__LOAD(l->spawned);
    m->tasks_completed += BW__LOAD(l->completed);
    m->polls += BW__LOAD(l->polls);
    m->steals += BW__LOAD(l->steals);
    m->steal_operations += BW__LOAD(l->steal_ops);
    m->parks += BW__LOAD(l->parks);
    m->unparks += BW__LOAD(l->unparks);
  }
  pthread_mutex_lock((pthread_mutex_t *)&s->mu);
  m->global_queue_depth = s->len;
  pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
}

int bw__sched_worker_metrics(const bw_runtime_t *rt, unsigned i, uint64_t *steals,
                             uint64_t *depth, uint64_t *polls) {
  if (i >= rt->nworkers) return -1;
  bw__local_t *l = &rt->sched->workers[i].local;
  if (steals) *steals = BW__LOAD(l->steals);
  if (depth) *depth = 0;
  if (polls) *polls = BW__LOAD(l->polls);
  return 0;
}
