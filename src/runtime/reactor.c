/* Reactor: one libuv loop reached from other threads through an op queue.
 * See reactor.h for the contract.
 *
 * Design notes
 * ------------
 * Queue. A FIFO of intrusive ops (head/tail) guarded by `mu`. post()
 * appends and, only when the queue was empty, calls uv_async_send: the loop
 * takes the WHOLE queue in its async callback, so a later post finds the
 * queue empty again and sends again; posts in between ride on the pending
 * send (coalescing). A plain mutex + intrusive list: DESIGN.md measured it
 * faster than a lock-free MPSC queue on 2 cores, and it needs no node
 * allocation. Ops run in post order, outside the lock; an op may post more
 * ops (they run on the next wake-up, never recursively).
 *
 * uv_async_send is called with `mu` held. That is what makes shutdown
 * safe: once `closed` is set under `mu`, no thread can be inside
 * uv_async_send on a handle that is about to be closed (and on the
 * loop's eventfd that uv_loop_close closes). The send is one atomic
 * exchange plus at most one write(2) to an eventfd, so the hold is short,
 * and only the post that finds the queue empty does it.
 *
 * Loop thread identity: a per-thread token (address of a _Thread_local)
 * stored in `loop_token`; only the loop thread ever compares equal, so a
 * relaxed load is enough (a thread always sees its own store). Shared
 * mode (turned by whichever worker parks) uses a thread-local pointer to
 * the reactor being turned instead: a token would tell a worker that
 * turned the loop earlier that it still owns it while another turns it.
 *
 * Shutdown order (bw__reactor_stop):
 *  1. under mu: closed = true (post/add_close_hook now fail), stop flag,
 *     one last uv_async_send (own-thread mode);
 *  2. on the loop thread: the async callback drains and stops uv_run;
 *     finalize() drains once more (ops accepted before `closed` whose send
 *     coalesced into an async that will not fire again), runs the close
 *     hooks (most recent first), uv_close()s every handle not already
 *     closing (uv_walk), runs the loop until all close callbacks ran, and
 *     closes the loop (retrying while uv_loop_close says EBUSY);
 *  3. the stopping thread joins the loop thread (own-thread mode).
 * In caller-driven mode steps 2 runs on the thread calling stop.
 * Every op whose post returned 0 runs exactly once before stop returns.
 *
 * Lock order: mu is a leaf (stop_mu is taken before it, only by stop). No
 * op, hook or libuv callback runs with mu held. */
#include "runtime/reactor.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

typedef struct close_hook close_hook_t;
struct close_hook {
  close_hook_t *next;
  void (*fn)(void *arg, uv_loop_t *loop);
  void *arg;
};

struct bw__reactor {
  uv_loop_t loop;
  uv_async_t async;
  uv_timer_t turn_timer; /* caller-driven mode: bounds turn() */
  pthread_mutex_t mu;
  pthread_mutex_t stop_mu; /* serialises stop() callers */
  /* under mu */
  bw__reactor_op_t *head, *tail;
  close_hook_t *hooks; /* LIFO */
  bool closed;
  /* loop thread only */
  bool stop_seen;
  bool in_turn;
  /* under stop_mu */
  bool stopped;
  int stop_rc;
  bool own_thread;
  bool shared; /* caller-driven by whichever thread turns it (reactor.h) */
  bool thread_started;
  pthread_t thread;
  atomic_uintptr_t loop_token;
  atomic_uint_fast64_t submitted, ops_run, wakeups, turns; /* relaxed counters */
  void (*on_thread_start)(void *);
  void (*on_thread_stop)(void *);
  void *hook_arg;
  char name[16];
};

static BW__TLS char tls_token;
/* Shared mode: the reactor this thread is turning or stopping now. */
static BW__TLS bw__reactor_t *tl_turning;

static uintptr_t my_token(void) { return (uintptr_t)&tls_token; }

static void bind_self(bw__reactor_t *r) {
  atomic_store_explicit(&r->loop_token, my_token(), memory_order_relaxed);
}

static void count(atomic_uint_fast64_t *c) { atomic_fetch_add_explicit(c, 1, memory_order_relaxed); }

/* Take the whole queue and run it in order (loop thread, mu not held). */
static void drain(bw__reactor_t *r) {
  pthread_mutex_lock(&r->mu);
  bw__reactor_op_t *op = r->head;
  r->head = r->tail = NULL;
  pthread_mutex_unlock(&r->mu);
  while (op) {
    bw__reactor_op_t *next = op->next; /* fn may free or re-post op */
    op->next = NULL;
    count(&r->ops_run);
    op->fn(op, &r->loop);
    op = next;
  }
}

static void on_async(uv_async_t *h) {
  bw__reactor_t *r = h->data;
  count(&r->wakeups);
  drain(r);
  pthread_mutex_lock(&r->mu);
  bool stop = r->closed;
  pthread_mutex_unlock(&r->mu);
  if (stop && r->own_thread) {
    r->stop_seen = true;
    uv_stop(&r->loop);
  }
}

static void on_turn_timer(uv_timer_t *t) { (void)t; }

static void close_walk_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Steps 2 of the shutdown order, on the loop thread; returns 0 or a uv
 * error from uv_loop_close. */
static int finalize(bw__reactor_t *r) {
  drain(r);
  pthread_mutex_lock(&r->mu);
  close_hook_t *h = r->hooks;
  r->hooks = NULL;
  pthread_mutex_unlock(&r->mu);
  while (h) {
    close_hook_t *next = h->next;
    h->fn(h->arg, &r->loop);
    bw__free(h);
    h = next;
  }
  /* Let hooks' closes and writes settle, then force-close the rest. */
  uv_run(&r->loop, UV_RUN_NOWAIT);
  drain(r); /* nothing can be queued any more; kept for symmetry */
  int rc = 0;
  for (int attempt = 0; attempt < 8; attempt++) {
    uv_walk(&r->loop, close_walk_cb, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&r->loop);
    if (rc != UV_EBUSY) break;
  }
  return rc;
}

static void *loop_thread_main(void *arg) {
  bw__reactor_t *r = arg;
  bind_self(r);
  pthread_setname_np(pthread_self(), r->name);
  if (r->on_thread_start) r->on_thread_start(r->hook_arg);
  while (!r->stop_seen) uv_run(&r->loop, UV_RUN_DEFAULT);
  r->stop_rc = finalize(r);
  if (r->on_thread_stop) r->on_thread_stop(r->hook_arg);
  return NULL;
}

/* ---- public ------------------------------------------------------------- */

int bw__reactor_new(bw__reactor_t **out, const bw__reactor_opts_t *opts) {
  if (!out) return -EINVAL;
  *out = NULL;
  bw__reactor_t *r = bw__calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  if (opts) {
    r->own_thread = opts->own_thread;
    r->shared = !opts->own_thread && opts->shared;
    r->on_thread_start = opts->on_thread_start;
    r->on_thread_stop = opts->on_thread_stop;
    r->hook_arg = opts->hook_arg;
  }
  const char *pre = opts && opts->name_prefix ? opts->name_prefix : "bw";
  size_t plen = strlen(pre);
  if (plen > 12) plen = 12; /* + "-io" = 15 */
  memcpy(r->name, pre, plen);
  memcpy(r->name + plen, "-io", 4);
  int rc = uv_loop_init(&r->loop);
  if (rc != 0) {
    bw__free(r);
    return rc;
  }
  rc = uv_async_init(&r->loop, &r->async, on_async);
  if (rc != 0) {
    uv_loop_close(&r->loop);
    bw__free(r);
    return rc;
  }
  r->async.data = r;
  if (!r->own_thread) uv_timer_init(&r->loop, &r->turn_timer);
  pthread_mutex_init(&r->mu, NULL);
  pthread_mutex_init(&r->stop_mu, NULL);
  if (r->own_thread) {
    rc = pthread_create(&r->thread, NULL, loop_thread_main, r);
    if (rc != 0) {
      uv_close((uv_handle_t *)&r->async, NULL);
      uv_run(&r->loop, UV_RUN_DEFAULT);
      uv_loop_close(&r->loop);
      pthread_mutex_destroy(&r->mu);
      pthread_mutex_destroy(&r->stop_mu);
      bw__free(r);
      return -rc;
    }
    r->thread_started = true;
  } else if (!r->shared) {
    bind_self(r); /* until someone else binds or turns */
  }
  *out = r;
  return 0;
}

int bw__reactor_post(bw__reactor_t *r, bw__reactor_op_t *op) {
  pthread_mutex_lock(&r->mu);
  if (r->closed) {
    pthread_mutex_unlock(&r->mu);
    return -1;
  }
  op->next = NULL;
  bool was_empty = r->head == NULL;
  if (was_empty)
    r->head = op;
  else
    r->tail->next = op;
  r->tail = op;
  count(&r->submitted);
  if (was_empty) uv_async_send(&r->async); /* under mu: see design notes */
  pthread_mutex_unlock(&r->mu);
  return 0;
}

bool bw__reactor_in_loop(const bw__reactor_t *r) {
  if (r->shared) return tl_turning == r;
  return atomic_load_explicit(&r->loop_token, memory_order_relaxed) == my_token();
}

void bw__reactor_bind_thread(bw__reactor_t *r) {
  if (!r->own_thread && !r->shared) bind_self(r);
}

uv_loop_t *bw__reactor_uv_loop(bw__reactor_t *r) { return &r->loop; }

int bw__reactor_add_close_hook(bw__reactor_t *r, void (*fn)(void *arg, uv_loop_t *loop),
                               void *arg) {
  close_hook_t *h = bw__malloc(sizeof *h);
  if (!h) return -ENOMEM;
  h->fn = fn;
  h->arg = arg;
  pthread_mutex_lock(&r->mu);
  if (r->closed) {
    pthread_mutex_unlock(&r->mu);
    bw__free(h);
    return -1;
  }
  h->next = r->hooks;
  r->hooks = h;
  pthread_mutex_unlock(&r->mu);
  return 0;
}

bool bw__reactor_remove_close_hook(bw__reactor_t *r, void (*fn)(void *arg, uv_loop_t *loop),
                                   void *arg) {
  close_hook_t *found = NULL;
  pthread_mutex_lock(&r->mu);
  for (close_hook_t **pp = &r->hooks; *pp; pp = &(*pp)->next) {
    if ((*pp)->fn == fn && (*pp)->arg == arg) {
      found = *pp;
      *pp = found->next;
      break;
    }
  }
  pthread_mutex_unlock(&r->mu);
  bw__free(found);
  return found != NULL;
}

int bw__reactor_turn(bw__reactor_t *r, int64_t timeout_ms) {
  if (r->own_thread) return -EINVAL;
  pthread_mutex_lock(&r->mu);
  bool closed = r->closed;
  pthread_mutex_unlock(&r->mu);
  if (closed) return -1;
  if (r->shared)
    tl_turning = r;
  else
    bind_self(r);
  count(&r->turns);
  r->in_turn = true;
  if (timeout_ms == 0) {
    uv_run(&r->loop, UV_RUN_NOWAIT);
  } else {
    /* The loop's cached time is as old as its last turn, and a timer
     * counts from it: refresh it first, or a turn after a long pause
     * fires this timer at once and then polls with no timeout at all. */
    if (timeout_ms > 0) {
      uv_update_time(&r->loop);
      uv_timer_start(&r->turn_timer, on_turn_timer, (uint64_t)timeout_ms, 0);
    }
    uv_run(&r->loop, UV_RUN_ONCE);
    if (timeout_ms > 0) uv_timer_stop(&r->turn_timer);
  }
  r->in_turn = false;
  if (r->shared) tl_turning = NULL;
  return 0;
}

void bw__reactor_wake(bw__reactor_t *r) {
  if (r->shared && tl_turning == r) {
    /* from a callback of our own turn: end it after this iteration (no
     * eventfd write; uv_run polls with timeout 0 once stop is set) */
    if (r->in_turn) uv_stop(&r->loop);
    return;
  }
  pthread_mutex_lock(&r->mu);
  if (!r->closed) uv_async_send(&r->async);
  pthread_mutex_unlock(&r->mu);
}

int bw__reactor_stop(bw__reactor_t *r) {
  if (r->own_thread && bw__reactor_in_loop(r)) return -EDEADLK;
  if (!r->own_thread && bw__reactor_in_loop(r) && r->in_turn) return -EDEADLK;
  pthread_mutex_lock(&r->stop_mu);
  if (r->stopped) {
    pthread_mutex_unlock(&r->stop_mu);
    return 0;
  }
  pthread_mutex_lock(&r->mu);
  r->closed = true;
  if (r->own_thread) uv_async_send(&r->async); /* last send: under mu, before anyone closes */
  pthread_mutex_unlock(&r->mu);
  if (r->own_thread) {
    pthread_join(r->thread, NULL);
    r->thread_started = false;
  } else if (r->shared) {
    tl_turning = r;
    r->stop_rc = finalize(r);
    tl_turning = NULL;
  } else {
    bind_self(r);
    r->stop_rc = finalize(r);
  }
  r->stopped = true;
  int rc = r->stop_rc;
  pthread_mutex_unlock(&r->stop_mu);
  return rc;
}

void bw__reactor_free(bw__reactor_t *r) {
  if (!r) return;
  /* From the loop thread (own-thread mode) nothing can be freed safely:
   * leave it rather than crash (documented misuse). */
  if (bw__reactor_stop(r) == -EDEADLK) return;
  pthread_mutex_destroy(&r->mu);
  pthread_mutex_destroy(&r->stop_mu);
  bw__free(r);
}

void bw__reactor_metrics(const bw__reactor_t *r, bw__reactor_metrics_t *out) {
  out->submitted = atomic_load_explicit(&r->submitted, memory_order_relaxed);
  out->ops_run = atomic_load_explicit(&r->ops_run, memory_order_relaxed);
  out->wakeups = atomic_load_explicit(&r->wakeups, memory_order_relaxed);
  out->turns = atomic_load_explicit(&r->turns, memory_order_relaxed);
}
