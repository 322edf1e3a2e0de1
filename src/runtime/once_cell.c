/* Once-cell for async initialisation (include/bulwark/sync.h).
 *
 * Design notes
 * - States: UNINIT -> RUNNING -> READY, or RUNNING -> UNINIT when init fails
 *   (a failure is not cached). A mutex guards the state, the waiter list and
 *   the pending failure; `ready` is also published with a release store so
 *   READY polls take no lock (acquire load pairs with it).
 * - The first caller that finds UNINIT spawns a small driver task on its own
 *   runtime; the driver spawns `init` as a task and awaits its join handle,
 *   then stores the value (READY) or the failure and wakes every waiter.
 *   Running init in its own task keeps it independent of the caller: if the
 *   caller is aborted, init still completes for the others.
 * - A failure is delivered to the caller that started that attempt (named
 *   by runtime + task id) on its next poll; the other waiters are woken,
 *   find UNINIT, and the first of them starts a new attempt.
 * - If the driver is dropped before init finished (runtime shutdown, abort),
 *   its drop hook counts that as a failure (BW_ERR_RUNTIME_SHUTDOWN).
 * - Lifetime: the user's handle and a running driver each hold a ref
 *   (counted under the mutex), so bw_once_cell_free while init runs is safe
 *   (the value is freed when the driver is done). The driver drops its ref
 *   inside finish(), before any waiter is woken, so once a caller has seen
 *   the value, bw_once_cell_free frees it synchronously. Both decrements
 *   happen under the mutex; the one that reaches zero destroys the cell after
 *   unlocking (POSIX allows destroying a mutex once it is unlocked).
 *   Waiter wakers are deduplicated with bw_waker_will_wake and woken after
 *   unlocking, without touching the cell again. */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "bulwark/sync.h"
#include "core/alloc.h"

enum { UNINIT = 0, RUNNING = 1, READY = 2 };

#define CELL_MAGIC 0x62774f43u /* "bwOC"; debug builds check it on entry */
#define CHECK(c) assert((c)->magic == CELL_MAGIC)

struct bw_once_cell {
  uint32_t magic;
  pthread_mutex_t mu;
  size_t refs; /* under mu */
  atomic_bool ready;
  int state;
  void *value;
  void (*value_free)(void *);
  bw_task_fn init;
  void *init_arg;
  bw_runtime_t *starter_rt; /* who started the current attempt */
  uint64_t starter_id;
  bw_error_t *failed;        /* failure waiting for its starter */
  bw_runtime_t *failed_rt;
  uint64_t failed_id;
  bw_waker_t **waiters;
  size_t nwaiters, cap;
};

typedef struct driver {
  bw_once_cell_t *cell;
  bw_join_t *join;
  bool started, done;
} driver_t;

bw_error_t *bw_once_cell_new(bw_once_cell_t **out, bw_task_fn init, void *init_arg,
                             void (*value_free)(void *)) {
  if (out == NULL || init == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_once_cell_new: out and init must not be NULL");
  bw_once_cell_t *c = bw__malloc(sizeof *c);
  if (c == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  memset(c, 0, sizeof *c);
  if (pthread_mutex_init(&c->mu, NULL) != 0) {
    bw__free(c);
    return bw_error_new(BW_ERR_INTERNAL, 0, "bw_once_cell_new: mutex init failed");
  }
  c->magic = CELL_MAGIC;
  c->refs = 1;
  atomic_init(&c->ready, false);
  c->init = init;
  c->init_arg = init_arg;
  c->value_free = value_free;
  *out = c;
  return NULL;
}

static void cell_destroy(bw_once_cell_t *c) {
  if (c->state == READY && c->value_free) c->value_free(c->value);
  bw_error_unref(c->failed);
  for (size_t i = 0; i < c->nwaiters; i++) bw_waker_drop(c->waiters[i]);
  bw__free(c->waiters);
  pthread_mutex_destroy(&c->mu);
  c->magic = 0;
  bw__free(c);
}

static void cell_unref(bw_once_cell_t *c) {
  pthread_mutex_lock(&c->mu);
  bool last = --c->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (last) cell_destroy(c);
}

void bw_once_cell_free(bw_once_cell_t *c) {
  if (c == NULL) return;
  CHECK(c);
  cell_unref(c);
}

/* The attempt ended: value on success (err NULL), else err (consumed).
 * Consumes the driver's ref on the cell. */
static void finish(bw_once_cell_t *c, void *value, bw_error_t *err) {
  pthread_mutex_lock(&c->mu);
  if (err == NULL) {
    c->value = value;
    c->state = READY;
    /* release: pairs with the acquire load in bw_once_cell_poll */
    atomic_store_explicit(&c->ready, true, memory_order_release);
  } else {
    if (value && c->value_free) c->value_free(value);
    c->state = UNINIT;
    bw_error_unref(c->failed); /* an older, never collected failure */
    c->failed = err;
    c->failed_rt = c->starter_rt;
    c->failed_id = c->starter_id;
  }
  bw_waker_t **ws = c->waiters;
  size_t nw = c->nwaiters;
  c->waiters = NULL;
  c->nwaiters = c->cap = 0;
  bool last = --c->refs == 0;
  pthread_mutex_unlock(&c->mu);
  /* from here on c may be gone (unless last) */
  for (size_t i = 0; i < nw; i++) bw_waker_wake(ws[i]);
  bw__free(ws);
  if (last) cell_destroy(c);
}

static bw_poll_t driver_poll(bw_task_t *self, void *arg) {
  driver_t *d = arg;
  if (!d->started) {
    d->started = true;
    bw_error_t *e = bw_spawn(bw_task_runtime(self), d->cell->init, d->cell->init_arg, &d->join);
    if (e != NULL) {
      d->join = NULL;
      d->done = true;
      finish(d->cell, NULL, bw_error_wrap(e, BW_ERR_INTERNAL, 0, "once-cell: cannot spawn init"));
      return BW_READY;
    }
  }
  void *v = NULL;
  bw_error_t *e = NULL;
  if (bw_join_poll(d->join, self, &v, &e) == BW_PENDING) return BW_PENDING;
  d->join = NULL;
  d->done = true;
  finish(d->cell, v, e);
  return BW_READY;
}

static void driver_drop(void *arg) {
  driver_t *d = arg;
  if (d->join) {
    bw_join_abort(d->join);
    bw_join_detach(d->join);
  }
  if (!d->done) /* finish() drops the driver's ref */
    finish(d->cell, NULL,
           bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "once-cell: init dropped before it finished"));
  bw__free(d);
}

/* Under the lock: remember self's waker (once per task). 0 or -1 (OOM). */
static int add_waiter(bw_once_cell_t *c, bw_task_t *self) {
  for (size_t i = 0; i < c->nwaiters; i++)
    if (bw_waker_will_wake(c->waiters[i], self)) return 0;
  if (c->nwaiters == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 4;
    bw_waker_t **nw = bw__realloc(c->waiters, cap * sizeof *nw);
    if (nw == NULL) return -1;
    c->waiters = nw;
    c->cap = cap;
  }
  c->waiters[c->nwaiters++] = bw_task_waker(self);
  return 0;
}

bw_poll_t bw_once_cell_poll(bw_once_cell_t *c, bw_task_t *self, void **value, bw_error_t **err) {
  CHECK(c);
  if (value) *value = NULL;
  if (err) *err = NULL;
  /* acquire: pairs with the release store in finish() */
  if (atomic_load_explicit(&c->ready, memory_order_acquire)) {
    if (value) *value = c->value;
    return BW_READY;
  }
  bw_runtime_t *rt = bw_task_runtime(self);
  uint64_t id = bw_task_id(self);
  pthread_mutex_lock(&c->mu);
  if (c->state == READY) {
    pthread_mutex_unlock(&c->mu);
    if (value) *value = c->value;
    return BW_READY;
  }
  if (c->failed != NULL && c->failed_rt == rt && c->failed_id == id) {
    bw_error_t *e = c->failed;
    c->failed = NULL;
    pthread_mutex_unlock(&c->mu);
    if (err)
      *err = e;
    else
      bw_error_unref(e);
    return BW_READY;
  }
  if (c->state == UNINIT) {
    driver_t *d = bw__malloc(sizeof *d);
    bw_error_t *e = NULL;
    if (d == NULL) {
      e = bw_error_static(BW_ERR_OUT_OF_MEMORY);
    } else {
      memset(d, 0, sizeof *d);
      d->cell = c;
      c->refs++; /* the driver's, under mu */
      bw_task_spec_t spec = {driver_poll, d, driver_drop, "once-cell init"};
      e = bw_spawn_ex(rt, &spec, NULL);
      if (e != NULL) {
        c->refs--; /* the user's remains */
        bw__free(d);
      }
    }
    if (e != NULL) {
      pthread_mutex_unlock(&c->mu);
      if (err)
        *err = e;
      else
        bw_error_unref(e);
      return BW_READY;
    }
    c->state = RUNNING;
    c->starter_rt = rt;
    c->starter_id = id;
  }
  if (add_waiter(c, self) != 0) {
    pthread_mutex_unlock(&c->mu);
    return bw_task_yield(self); /* out of memory: degrade to polling */
  }
  pthread_mutex_unlock(&c->mu);
  return BW_PENDING;
}

static bw_poll_t wait_poll(bw_task_t *self, void *arg) {
  void *v = NULL;
  bw_error_t *e = NULL;
  if (bw_once_cell_poll(arg, self, &v, &e) == BW_PENDING) return BW_PENDING;
  bw_task_set_output(self, v, NULL, e);
  return BW_READY;
}

bw_error_t *bw_once_cell_wait(bw_once_cell_t *c, bw_runtime_t *rt, void **value) {
  if (value) *value = NULL;
  if (c == NULL || rt == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_once_cell_wait: NULL argument");
  if (atomic_load_explicit(&c->ready, memory_order_acquire)) {
    if (value) *value = c->value;
    return NULL;
  }
  return bw_block_on(rt, wait_poll, c, value);
}
