/* Background services: long-running tasks owned by the runtime (health
 * checks, keep-alives). Each gets a cancellation token; at shutdown the
 * tokens are cancelled and the services awaited newest first (the list is
 * kept newest-first), before any other task is touched, so a service may
 * still use the runtime while it winds down. */
#include <string.h>
#include <time.h>

#include "bulwark/sync.h"
#include "core/alloc.h"
#include "runtime/rt.h"

struct bw__background {
  bw__background_t *next;
  char *name;
  bw_cancel_token_t *token;
  bw_join_t *join;
};

bw_error_t *bw_runtime_add_background(bw_runtime_t *rt, const char *name, bw_task_fn poll,
                                      void *arg, void (*drop)(void *arg)) {
  if (!poll)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_add_background: NULL poll");
  bw_error_t *err = bw__rt_check(rt, "bw_runtime_add_background");
  if (err) return err;
  bw__background_t *b = bw__calloc(1, sizeof *b);
  if (!b) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  b->name = bw__strdup(name ? name : "background");
  err = bw_cancel_token_new(&b->token);
  if (err || !b->name) {
    bw__free(b->name);
    bw__free(b);
    return err ? err : bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  pthread_mutex_lock(&rt->bg_mu);
  bw_task_t *t = bw__spawn_task(rt, poll, arg, drop, b->name, BW__TASK_BACKGROUND, true, false,
                                &err);
  if (t) {
    t->aux = b->token;
    b->join = (bw_join_t *)t;
    b->next = rt->bg_head;
    rt->bg_head = b;
  }
  pthread_mutex_unlock(&rt->bg_mu);
  if (!t) {
    bw_cancel_token_unref(b->token);
    bw__free(b->name);
    bw__free(b);
    return err;
  }
  bw__task_wake(t); /* first poll, now that aux is set */
  return NULL;
}

struct bw_cancel_token *bw_background_token(bw_task_t *self) {
  if (!self || self->kind != BW__TASK_BACKGROUND) return NULL;
  return self->aux;
}

void bw__background_shutdown(bw_runtime_t *rt, uint64_t deadline_ns) {
  pthread_mutex_lock(&rt->bg_mu);
  bw__background_t *list = rt->bg_head;
  rt->bg_head = NULL;
  pthread_mutex_unlock(&rt->bg_mu);
  while (list) {
    bw__background_t *b = list;
    list = b->next;
    bw_cancel_token_cancel(b->token);
    if (rt->ct) {
      bw__ct_drive_until(rt, (bw_task_t *)b->join, deadline_ns);
    } else if (deadline_ns == UINT64_MAX) {
      bw_error_unref(bw_join_wait(b->join, NULL));
      b->join = NULL;
    } else {
      /* shutdown path only: poll every millisecond until the deadline */
      while (!bw_join_is_finished(b->join) && bw__mono_ns() < deadline_ns) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
    }
    if (b->join) {
      bw_join_abort(b->join); /* if it did not stop in time, cancel it */
      bw_join_detach(b->join);
    }
    bw_cancel_token_unref(b->token);
    bw__free(b->name);
    bw__free(b);
  }
}

void bw__background_free(bw_runtime_t *rt) {
  bw__background_shutdown(rt, 0);
}
