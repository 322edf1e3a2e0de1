/* Helpers for the service/stack/timeout/retry/fallback/metrics tests (H4).
 * Header-only so it is not linked into other tests of this folder.
 * Include after <cmocka.h>. */
#ifndef BW_TESTS_H4_UTIL_H
#define BW_TESTS_H4_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/layer.h"
#include "bulwark/metrics.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"

static inline double h4_scale(void) {
  const char *s = getenv("BW_TEST_SCALE");
  double v = s ? atof(s) : 1.0;
  return v > 0 ? v : 1.0;
}
static inline int h4_scaled(int n) {
  int v = (int)(n * h4_scale());
  return v < 1 ? 1 : v;
}

static inline bw_runtime_t *h4_rt(bool paused, unsigned workers) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  if (paused) o.clock = BW_CLOCK_PAUSED;
  bw_runtime_t *rt = NULL;
  bw_error_t *e = bw_runtime_new(&rt, &o);
  assert_null(e);
  return rt;
}

/* Counts completions; wakes a waiting non-worker thread. */
typedef struct h4_wait {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} h4_wait_t;

static inline void h4_wait_init(h4_wait_t *w) {
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  w->done = 0;
}
static inline void h4_wait_fini(h4_wait_t *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}
static inline void h4_wait_post(h4_wait_t *w) {
  pthread_mutex_lock(&w->mu);
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}
/* Wait (real time, generous safety limit) until done >= n. */
static inline int h4_wait_for(h4_wait_t *w, int n) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 60;
  pthread_mutex_lock(&w->mu);
  while (w->done < n) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) break;
  }
  int d = w->done;
  pthread_mutex_unlock(&w->mu);
  return d;
}

/* A recorded completion. */
typedef struct h4_result {
  h4_wait_t *wait;
  atomic_int completions;
  bw_error_kind_t kind;
  bw_error_t *err; /* kept reference */
  void *resp;
  bool on_worker;
  bw_runtime_t *rt;
  bool free_in_cb;
  uint64_t at_ns; /* runtime clock at completion */
} h4_result_t;

static _Thread_local int h4_in_submit;

static inline void h4_on_done(bw_call_t *call, const bw_error_t *err, void *arg) {
  h4_result_t *r = arg;
  assert_int_equal(h4_in_submit, 0); /* never inside the submitting call */
  r->on_worker = bw_runtime_current() == r->rt;
  if (r->rt) r->at_ns = bw_runtime_now_ns(r->rt);
  r->kind = bw_error_kind(err);
  r->err = bw_error_ref(err);
  r->resp = err ? NULL : bw_call_response(call);
  atomic_fetch_add(&r->completions, 1);
  if (r->free_in_cb) bw_call_free(call);
  if (r->wait) h4_wait_post(r->wait);
}

static inline bw_error_t *h4_submit(bw_service_t *svc, bw_call_t *call, bw_call_cb cb, void *arg) {
  h4_in_submit++;
  bw_error_t *e = bw_service_call(svc, call, cb, arg);
  h4_in_submit--;
  return e;
}

/* An int response that records being freed. */
static atomic_int h4_resp_freed;
static inline void h4_resp_free(void *p) {
  atomic_fetch_add(&h4_resp_freed, 1);
  free(p);
}
static inline int *h4_int(int v) {
  int *p = malloc(sizeof *p);
  *p = v;
  return p;
}

/* Run fn(arg) once on a worker of rt via a task and wait for it. */
typedef struct h4_task {
  void (*fn)(void *);
  void *arg;
} h4_task_t;
static inline bw_poll_t h4_task_poll(bw_task_t *self, void *arg) {
  h4_task_t *t = arg;
  t->fn(t->arg);
  return BW_READY;
}
static inline void h4_on_worker(bw_runtime_t *rt, void (*fn)(void *), void *arg) {
  h4_task_t t = {fn, arg};
  bw_error_t *e = bw_block_on(rt, h4_task_poll, &t, NULL);
  assert_null(e);
}


/* ---- "sleeper": an async service that answers after a delay on the
 * runtime clock. Request: h4_sleep_req_t (borrowed). */
typedef struct h4_sleep_req {
  uint64_t delay_ns;       /* 0: answer at once (still async, via a timer) */
  bw_error_kind_t fail;    /* BW_ERR_NONE: succeed with an int 1 */
  int64_t detail;
  int64_t retry_after_ms;  /* hint on the error */
} h4_sleep_req_t;

typedef struct h4_sleep_state {
  _Atomic(bw_timer_t *) timer; /* set before arming */
  atomic_int claimed;          /* 0: open; 1: the fire or the cancel hook owns the end */
  atomic_int hand;             /* who frees the timer when the cancel hook lost the race */
  bw_call_t *call;
} h4_sleep_state_t;

static atomic_int h4_sleep_cancels, h4_sleep_starts;

/* End-of-call protocol (state zeroed per call):
 *  - claimed: the first of the fire and the cancel hook to CAS 0->1 decides
 *    the outcome (a cancel hook that loses never touches the timer);
 *  - a cancel hook that wins but cannot stop the timer (it is firing or
 *    pending in the same batch) must not wait for it: the timer is freed by
 *    whichever of the two finishes last (hand: +2 at arm, -1 each). */
static inline void h4_sleep_free_timer(h4_sleep_state_t *st, bw_timer_t *t) {
  if (atomic_fetch_sub(&st->hand, 1) == 1) bw_timer_free(t);
}

static inline void h4_sleep_fire(bw_timer_t *t, void *arg) {
  h4_sleep_state_t *st = arg;
  bw_call_t *call = st->call;
  int zero = 0;
  if (atomic_compare_exchange_strong(&st->claimed, &zero, 1)) {
    const h4_sleep_req_t *rq = bw_call_request(call);
    if (rq->fail) {
      bw_error_hints_t h = {rq->retry_after_ms};
      bw_call_complete(call, NULL, NULL,
                       bw_error_make(rq->fail, rq->detail, NULL, &h, NULL, 0, __FILE__, __LINE__,
                                     "sleeper failed"));
    } else {
      bw_call_complete(call, h4_int(1), h4_resp_free, NULL);
    }
    bw_timer_free(t); /* the cancel hook will not touch it: allowed in its own callback */
  } else {
    h4_sleep_free_timer(st, t);
  }
  bw_call_unref(call); /* the timer's reference */
}

static inline void h4_sleep_async(void *arg, bw_call_t *call) {
  h4_sleep_state_t *st = bw_call_state(call); /* zeroed per call */
  const h4_sleep_req_t *rq = bw_call_request(call);
  atomic_fetch_add(&h4_sleep_starts, 1);
  st->call = call;
  bw_call_ref(call); /* the timer's */
  bw_timer_t *t = NULL;
  bw_error_t *e = bw_timer_new(bw_call_runtime(call), h4_sleep_fire, st, &t);
  if (e) { /* the runtime is shutting down: a service answers with the error */
    bw_call_complete(call, NULL, NULL, e);
    bw_call_unref(call);
    return;
  }
  atomic_fetch_add(&st->hand, 2);
  atomic_store(&st->timer, t);
  e = bw_timer_arm(t, bw_runtime_now_ns(bw_call_runtime(call)) + rq->delay_ns);
  if (e) {
    int zero = 0;
    if (atomic_compare_exchange_strong(&st->claimed, &zero, 1)) bw_timer_free(t);
    else h4_sleep_free_timer(st, t);
    bw_call_complete(call, NULL, NULL, e);
    bw_call_unref(call);
  }
}

static inline void h4_sleep_cancel(void *arg, bw_call_t *call) {
  h4_sleep_state_t *st = bw_call_state(call);
  atomic_fetch_add(&h4_sleep_cancels, 1);
  int zero = 0;
  if (!atomic_compare_exchange_strong(&st->claimed, &zero, 1)) return;
  bw_timer_t *t = atomic_load(&st->timer);
  if (!t) {
    /* not armed yet: the fire (or the arm error path) will find the claim */
    atomic_fetch_sub(&st->hand, 1);
    return;
  }
  if (bw_timer_cancel(t)) {
    bw_timer_free(t); /* stopped: the fire will never run */
    bw_call_unref(call);
  } else {
    h4_sleep_free_timer(st, t);
  }
}

static inline bw_service_t *h4_sleeper(void) {
  bw_fn_service_opts_t o;
  bw_fn_service_opts_init(&o);
  o.async = h4_sleep_async;
  o.cancel = h4_sleep_cancel;
  o.call_state_size = sizeof(h4_sleep_state_t);
  o.kind = "sleeper";
  bw_service_t *s = NULL;
  assert_null(bw_service_from_fn(&s, &o));
  return s;
}

/* Event recorder. */
typedef struct h4_events {
  pthread_mutex_t mu;
  int n;
  bw_event_t ev[256];
  bw_error_kind_t err_kind[256];
} h4_events_t;

static inline void h4_record_event(const bw_event_t *ev, void *arg) {
  h4_events_t *r = arg;
  pthread_mutex_lock(&r->mu);
  if (r->n < 256) {
    r->ev[r->n] = *ev;
    r->ev[r->n].error = NULL;
    r->ev[r->n].call = NULL;
    r->err_kind[r->n] = bw_error_kind(ev->error);
    r->n++;
  }
  pthread_mutex_unlock(&r->mu);
}
static inline int h4_count_events(h4_events_t *r, bw_event_type_t t) {
  int c = 0;
  pthread_mutex_lock(&r->mu);
  for (int i = 0; i < r->n; i++) c += r->ev[i].type == t;
  pthread_mutex_unlock(&r->mu);
  return c;
}

#endif
