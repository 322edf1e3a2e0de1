/* The runtime object: creation, guards, spawn, block_on, defer, shutdown,
 * metrics.
 *
 * Why tasks are poll functions with wakers
 * ----------------------------------------
 * A task is `bw_poll_t poll(self, arg)`: it runs until it would wait, hands
 * a waker to whatever it waits on, and returns BW_PENDING. This was chosen
 * over callback continuations and over stackful coroutines because
 *  - poll functions compose: a layer's call is a small state machine that
 *    polls its inner call's state machine, so a whole stack of layers is one
 *    struct laid out up front (no malloc per call, DESIGN.md);
 *  - they need no stack per task (a task is a ~200-byte header from a
 *    pool), so a million tasks cost a few hundred MB less than threads or
 *    coroutines would;
 *  - "woken while running" has one simple meaning: the task is polled once
 *    more after the current poll, never concurrently (task.c's state word),
 *    and cancellation is "never poll again, run drop", which needs no
 *    unwinding of a foreign stack.
 *
 * Shutdown order (bw_runtime_shutdown)
 *  1. background services: cancel their tokens, await them newest first;
 *  2. drain mode: refuse spawns from outside, wait for tasks to finish;
 *  3. state = SHUTDOWN (no new work anywhere), stop and join the workers;
 *  4. cancel every spawned task left (task.c walks the slabs; joiners get
 *     BW_ERR_RUNTIME_SHUTDOWN, drop runs on this thread);
 *  5. drop queued references; stop the blocking pool (jobs not started are
 *     cancelled), stop the reactor (close hooks run), drop queued references
 *     again (wakes from those threads); disarm every timer.
 * Nothing is lost silently: every task either completed or its joiner gets
 * BW_ERR_RUNTIME_SHUTDOWN, and every drop function runs once.
 *
 * Fork: pthread_atfork bumps a generation counter in the child; a runtime
 * remembers the generation it was created in, and every entry point compares
 * (one relaxed load). In the child nothing is usable (the threads are gone,
 * locks may be held) and bw_runtime_free deliberately leaks. */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "runtime/rt.h"

BW__TLS bw__ctx_t bw__ctx;

static atomic_uint fork_gen;
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) {
  atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
  bw__task_on_fork_child();
  bw__ctx = (bw__ctx_t){0};
}
static void register_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }
unsigned bw__fork_generation(void) { return atomic_load_explicit(&fork_gen, memory_order_relaxed); }

bw_error_t *bw__rt_check(const bw_runtime_t *rt, const char *what) {
  if (!rt) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "%s: NULL runtime", what);
  if (rt->magic != BW__RT_MAGIC)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "%s: not a runtime (or already freed)", what);
  if (bw__rt_forked(rt))
    return bw_error_new(BW_ERR_FORKED, 0,
                        "%s: this runtime was created before fork() and this is the child: its "
                        "threads do not exist here. Create runtimes after forking/daemonizing",
                        what);
  if (atomic_load_explicit(&rt->state, memory_order_acquire) == BW__RT_SHUTDOWN)
    return bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "%s: the runtime is shut down", what);
  return NULL;
}

void bw_runtime_opts_init(bw_runtime_opts_t *opts) {
  if (opts) memset(opts, 0, sizeof *opts);
}

bw_runtime_t *bw_runtime_current(void) { return bw__ctx.rt; }
bool bw__on_any_worker(void) { return bw__ctx.rt != NULL || bw__ctx.io_thread; }

bw__task_cache_t *bw__ctx_cache(const bw_runtime_t *rt) {
  return (bw__ctx.rt == rt && bw__ctx.local) ? &bw__ctx.local->cache : NULL;
}

void bw__sched_count_spawn(bw_runtime_t *rt) {
  if (bw__ctx.rt == rt && bw__ctx.local)
    BW__INC(bw__ctx.local->spawned);
  else
    atomic_fetch_add_explicit(&rt->spawned_remote, 1, memory_order_relaxed);
}

void bw__sched_count_complete(bw_runtime_t *rt) {
  if (bw__ctx.rt == rt && bw__ctx.local)
    BW__INC(bw__ctx.local->completed);
  else
    atomic_fetch_add_explicit(&rt->completed_remote, 1, memory_order_relaxed);
}

/* ---- new / free ------------------------------------------------------------------ */

static bw_error_t *check_opts(const bw_runtime_opts_t *o) {
  if ((unsigned)o->flavor > BW_FLAVOR_CURRENT_THREAD)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_new: unknown flavor %d", o->flavor);
  if (o->worker_threads > 1024)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_runtime_new: worker_threads %u out of range (0..1024)",
                        o->worker_threads);
  if (o->max_blocking_threads > 65536)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_runtime_new: max_blocking_threads %u out of range (0..65536)",
                        o->max_blocking_threads);
  if ((unsigned)o->worker_start > BW_START_EAGER || (unsigned)o->blocking_start > BW_START_EAGER)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_new: unknown start mode");
  if ((unsigned)o->clock > BW_CLOCK_PAUSED)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_new: unknown clock %d", o->clock);
  uint32_t c = o->local_queue_capacity;
  if (c && (c < 2 || c > 65536 || (c & (c - 1))))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_runtime_new: local_queue_capacity %u must be a power of two in 2..65536",
                        c);
  if (o->thread_name_prefix && strlen(o->thread_name_prefix) > 10)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_runtime_new: thread_name_prefix longer than 10 characters");
  if (o->global_queue_interval > 1000000 || o->event_interval > 1000000)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_new: interval out of range");
  return NULL;
}

bw_error_t *bw_runtime_new(bw_runtime_t **out, const bw_runtime_opts_t *opts) {
  if (!out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_new: NULL out");
  *out = NULL;
  pthread_once(&fork_once, register_atfork);
  bw__task_global_init();
  bw__asym_fence_init(); /* before any call exists: see asym_fence.c */
  bw_runtime_opts_t o;
  if (opts)
    o = *opts;
  else
    bw_runtime_opts_init(&o);
  bw_error_t *err = check_opts(&o);
  if (err) return err;
  if (!o.max_blocking_threads) o.max_blocking_threads = 512;
  if (!o.blocking_keep_alive_ms) o.blocking_keep_alive_ms = 10000;
  if (!o.global_queue_interval) o.global_queue_interval = 31;
  if (!o.event_interval) o.event_interval = 61;
  if (!o.local_queue_capacity) o.local_queue_capacity = 256;
  if (!o.worker_threads) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    o.worker_threads = n > 0 ? (unsigned)n : 1;
  }
  bw_runtime_t *rt = bw__calloc(1, sizeof *rt);
  if (!rt) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  rt->magic = BW__RT_MAGIC;
  rt->opts = o;
  rt->nworkers = o.flavor == BW_FLAVOR_CURRENT_THREAD ? 1 : o.worker_threads;
  rt->fork_gen = bw__fork_generation();
  atomic_init(&rt->state, BW__RT_RUNNING);
  snprintf(rt->name_prefix, sizeof rt->name_prefix, "%s",
           o.thread_name_prefix ? o.thread_name_prefix : "bw");
  rt->paused = o.clock == BW_CLOCK_PAUSED;
  atomic_init(&rt->paused_now_ns, 1000000000u);
  rt->start_ns = bw__mono_ns();
  bw__task_pool_init(&rt->pool);
  atomic_init(&rt->next_id, 1);
  pthread_mutex_init(&rt->bg_mu, NULL);
  pthread_mutex_init(&rt->reactor_mu, NULL);
  pthread_mutex_init(&rt->shutdown_mu, NULL);
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init(&rt->clock_mu, &ma);
  pthread_mutexattr_destroy(&ma);
  int rc = bw__wheels_init(rt, rt->nworkers);
  if (rc == 0) rc = o.flavor == BW_FLAVOR_CURRENT_THREAD ? bw__ct_new(rt) : bw__sched_new(rt);
  if (rc == 0) rc = bw__blocking_glue_init(rt);
  if (rc != 0) {
    bw_runtime_free(rt);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  if (!rt->ct && o.worker_start != BW_START_LAZY) {
    if (bw__sched_start(rt) != 0) {
      bw_runtime_free(rt);
      return bw_error_new(BW_ERR_IO, 0, "bw_runtime_new: could not start worker threads");
    }
  }
  *out = rt;
  return NULL;
}

void bw__runtime_release_memory(bw_runtime_t *rt) {
  pthread_mutex_destroy(&rt->pool.mu);
  rt->magic = 0;
  bw__free(rt);
}

void bw_runtime_free(bw_runtime_t *rt) {
  if (!rt || rt->magic != BW__RT_MAGIC) return;
  if (bw__rt_forked(rt)) return; /* the child cannot join threads: leak on purpose */
  if (bw__runtime_on_worker(rt)) return;
  bw_error_t *e = bw_runtime_shutdown(rt, BW_SHUTDOWN_CANCEL, 0);
  bw_error_unref(e);
  if (atomic_load(&rt->calls_closing)) atomic_fetch_sub(&bw__runtimes_closing_calls, 1);
  bw__background_free(rt);
  bw__reactor_glue_free(rt);
  bw__blocking_free(rt);
  if (rt->ct)
    bw__ct_free(rt);
  else if (rt->sched)
    bw__sched_free(rt);
  bw__wheels_destroy(rt);
  pthread_mutex_destroy(&rt->bg_mu);
  pthread_mutex_destroy(&rt->reactor_mu);
  pthread_mutex_destroy(&rt->shutdown_mu);
  pthread_mutex_destroy(&rt->clock_mu);
  rt->magic = 0xdeadu;
  if (bw__task_pool_destroy(rt)) bw__runtime_release_memory(rt);
}

/* ---- shutdown ------------------------------------------------------------------------ */

static uint64_t alive_tasks(const bw_runtime_t *rt) {
  bw_runtime_metrics_t m;
  bw_runtime_metrics(rt, &m);
  return m.tasks_alive;
}

static void drain_queues(bw_runtime_t *rt) {
  if (rt->ct)
    bw__ct_drain(rt);
  else if (rt->sched)
    bw__sched_drain(rt);
}

bw_error_t *bw_runtime_shutdown(bw_runtime_t *rt, bw_shutdown_mode_t mode, uint64_t timeout_ms) {
  if (!rt || rt->magic != BW__RT_MAGIC)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_shutdown: not a runtime");
  if ((unsigned)mode > BW_SHUTDOWN_DRAIN)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_shutdown: unknown mode %d", mode);
  if (bw__rt_forked(rt)) return bw__rt_check(rt, "bw_runtime_shutdown");
  if (bw__runtime_on_worker(rt))
    return bw_error_new(BW_ERR_NESTED_RUNTIME, 0,
                        "bw_runtime_shutdown: called from a thread of this runtime; it would "
                        "wait for itself. Shut the runtime down from the thread that created it");
  pthread_mutex_lock(&rt->shutdown_mu);
  bool already = rt->shut_down;
  rt->shut_down = true;
  pthread_mutex_unlock(&rt->shutdown_mu);
  if (already) return bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "bw_runtime_shutdown: already shut down");

  uint64_t deadline = timeout_ms ? bw__mono_ns() + timeout_ms * 1000000u : UINT64_MAX;
  bool timed_out = false;
  bw__background_shutdown(rt, deadline);
  if (mode == BW_SHUTDOWN_DRAIN) {
    atomic_store_explicit(&rt->state, BW__RT_DRAINING, memory_order_release);
    if (rt->ct) {
      bw__ct_drive_drain(rt, deadline);
    } else {
      bw__sched_start(rt);
      /* Shutdown path only: poll the count every millisecond. */
      while (alive_tasks(rt) != 0 && bw__mono_ns() < deadline) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
    }
    if (alive_tasks(rt) != 0) timed_out = true;
  }
  /* SeqCst: the Dekker pair with bw__task_publish (task.c); also a release
   * for the acquire loads in bw__rt_check and the schedulers */
  atomic_store_explicit(&rt->state, BW__RT_SHUTDOWN, memory_order_seq_cst);
  if (rt->ct) {
    bw__ct_kick(rt);
    bw__ct_acquire_core(rt, NULL);
  } else if (rt->sched) {
    bw__sched_stop(rt);
  }
  bw__tasks_cancel_all(rt);
  drain_queues(rt);
  bool bto = false;
  uint64_t now = bw__mono_ns();
  uint64_t left_ms = deadline == UINT64_MAX ? 0 : (deadline > now ? (deadline - now) / 1000000u + 1 : 1);
  bw__blocking_shutdown(rt, left_ms, &bto);
  if (bto) timed_out = true;
  bw__reactor_glue_shutdown(rt);
  drain_queues(rt);
  bw__wheels_clear(rt);
  if (rt->ct) bw__ct_release_core(rt);
  if (timed_out)
    return bw_error_new(BW_ERR_TIMEOUT, (int64_t)timeout_ms,
                        "bw_runtime_shutdown: work still running after %llu ms was cancelled",
                        (unsigned long long)timeout_ms);
  return NULL;
}

/* ---- spawn ----------------------------------------------------------------------------- */

bw_task_t *bw__spawn_task(bw_runtime_t *rt, bw_task_fn poll, void *arg, void (*drop)(void *),
                          const char *name, int kind, bool want_join, bool schedule,
                          bw_error_t **err) {
  if (!rt || rt->magic != BW__RT_MAGIC || bw__rt_forked(rt)) {
    *err = bw__rt_check(rt, "bw_spawn");
    return NULL;
  }
  int st = atomic_load_explicit(&rt->state, memory_order_acquire);
  if (st == BW__RT_SHUTDOWN || (st == BW__RT_DRAINING && bw__ctx.rt != rt)) {
    *err = bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0,
                        st == BW__RT_DRAINING ? "bw_spawn: the runtime is draining for shutdown"
                                              : "bw_spawn: the runtime is shut down");
    return NULL;
  }
  bw_task_t *t = bw__task_alloc(rt);
  if (!t) {
    *err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
    return NULL;
  }
  t->poll = poll;
  t->arg = arg;
  t->drop = drop;
  t->name = name;
  t->kind = (uint8_t)kind;
  t->id = bw__task_next_id(rt);
  t->has_join = want_join;
  atomic_init(&t->state, schedule ? BW__T_NOTIFIED : 0u);
  /* owned + queue (+ join) */
  atomic_init(&t->refs, (want_join ? 2u : 1u) + (schedule ? 1u : 0u));
  bw__sched_count_spawn(rt);
  int pub = bw__task_publish(rt, t);
  if (pub < 0) {
    atomic_store_explicit(&t->refs, 1, memory_order_relaxed);
    t->output_taken = true;
    bw__task_unref(t);
    bw__sched_count_complete(rt);
    *err = bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "bw_spawn: the runtime is shut down");
    return NULL;
  }
  if (pub > 0) { /* cancelled by a concurrent shutdown: never queued */
    if (schedule) bw__task_unref(t);
    return t;
  }
  if (!rt->ct && bw__ctx.rt != rt) bw__sched_start(rt);
  if (schedule) bw__schedule(t, false);
  return t;
}

bw_error_t *bw_spawn_ex(bw_runtime_t *rt, const bw_task_spec_t *spec, bw_join_t **join) {
  if (join) *join = NULL;
  if (!spec || !spec->poll)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_spawn: NULL poll function");
  bw_error_t *err = NULL;
  bw_task_t *t = bw__spawn_task(rt, spec->poll, spec->arg, spec->drop, spec->name,
                                BW__TASK_NORMAL, join != NULL, true, &err);
  if (!t) return err;
  if (join) *join = (bw_join_t *)t;
  return NULL;
}

bw_error_t *bw_spawn(bw_runtime_t *rt, bw_task_fn poll, void *arg, bw_join_t **join) {
  bw_task_spec_t spec = {poll, arg, NULL, NULL};
  return bw_spawn_ex(rt, &spec, join);
}

static bw_poll_t defer_poll(bw_task_t *self, void *arg) {
  void (*fn)(void *) = self->aux_fn;
  self->aux_fn = NULL;
  if (fn) fn(arg);
  return BW_READY;
}

atomic_uint bw__runtimes_closing_calls;

void bw__runtime_close_calls(bw_runtime_t *rt) {
  if (atomic_exchange(&rt->calls_closing, true)) return;
  /* after the flag: a start that sees the count sees the flag (internal.h) */
  atomic_fetch_add(&bw__runtimes_closing_calls, 1);
}
bool bw__runtime_calls_closing_slow(const bw_runtime_t *rt) {
  return atomic_load(&((bw_runtime_t *)rt)->calls_closing);
}

bool bw__runtime_defer_here(bw_runtime_t *rt, void (*fn)(void *arg), void *arg) {
  if (!bw__ctx.worker || bw__ctx.rt != rt ||
      atomic_load_explicit(&rt->state, memory_order_acquire) == BW__RT_SHUTDOWN ||
      !bw__worker_defer(bw__ctx.worker, fn, arg))
    return false;
  BW__INC(bw__ctx.local->spawned);
  return true;
}

int bw__runtime_defer(bw_runtime_t *rt, void (*fn)(void *arg), void *arg) {
  if (!fn) return -1;
  if (bw__runtime_defer_here(rt, fn, arg)) return 0;
  bw_error_t *err = NULL;
  /* aux_fn must be set before the task can run: build it unscheduled */
  if (!rt || rt->magic != BW__RT_MAGIC || bw__rt_forked(rt) ||
      atomic_load_explicit(&rt->state, memory_order_acquire) == BW__RT_SHUTDOWN)
    return -1;
  bw_task_t *t = bw__task_alloc(rt);
  if (!t) return -1;
  t->poll = defer_poll;
  t->arg = arg;
  t->aux_fn = fn;
  t->name = "defer";
  t->kind = BW__TASK_DEFER;
  t->id = bw__task_next_id(rt);
  atomic_init(&t->state, BW__T_NOTIFIED);
  atomic_init(&t->refs, 2u);
  bw__sched_count_spawn(rt);
  int pub = bw__task_publish(rt, t);
  if (pub < 0) {
    atomic_store_explicit(&t->refs, 1, memory_order_relaxed);
    bw__task_unref(t);
    bw__sched_count_complete(rt);
    return -1;
  }
  (void)err;
  if (pub > 0) { /* shutdown ran fn already (deferred fns run at shutdown) */
    bw__task_unref(t);
    return 0;
  }
  if (!rt->ct && bw__ctx.rt != rt) bw__sched_start(rt);
  bw__schedule(t, false);
  return 0;
}

/* ---- block_on ------------------------------------------------------------------------------ */

bw_error_t *bw_block_on(bw_runtime_t *rt, bw_task_fn poll, void *arg, void **value) {
  if (value) *value = NULL;
  if (!poll) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_block_on: NULL poll function");
  if (bw__on_any_worker())
    return bw_error_new(
        BW_ERR_NESTED_RUNTIME, 0,
        "bw_block_on: called on a thread that is already running a bulwark runtime (%s); "
        "blocking it would stall that runtime's tasks (a runtime inside a runtime). Spawn the "
        "work with bw_spawn and await it with bw_join_poll, or call bw_block_on from a plain "
        "thread",
        bw__ctx.io_thread ? "a reactor thread"
        : bw__ctx.rt == rt ? "a worker of this same runtime"
                           : "a worker of another runtime");
  bw_error_t *err = bw__rt_check(rt, "bw_block_on");
  if (err) return err;
  bw_task_t *t = bw__spawn_task(rt, poll, arg, NULL, "block_on", BW__TASK_NORMAL, true, true, &err);
  if (!t) return err;
  if (rt->ct) return bw__ct_block_on(rt, t, value);
  return bw_join_wait((bw_join_t *)t, value);
}

/* ---- metrics ---------------------------------------------------------------------------------- */

bw_error_t *bw_runtime_metrics(const bw_runtime_t *rt, bw_runtime_metrics_t *out) {
  if (!rt || !out || (rt->magic != BW__RT_MAGIC))
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_metrics: NULL or invalid argument");
  memset(out, 0, sizeof *out);
  if (rt->ct)
    bw__ct_metrics(rt, out);
  else
    bw__sched_metrics(rt, out);
  out->tasks_spawned += atomic_load_explicit(&rt->spawned_remote, memory_order_relaxed);
  out->tasks_completed += atomic_load_explicit(&rt->completed_remote, memory_order_relaxed);
  out->tasks_alive =
      out->tasks_spawned > out->tasks_completed ? out->tasks_spawned - out->tasks_completed : 0;
  bw__blocking_metrics(rt, out);
  for (unsigned i = 0; i < rt->nwheels; i++) {
    pthread_mutex_lock(&rt->wheels[i].mu);
    out->timers_armed += rt->wheels[i].armed;
    pthread_mutex_unlock(&rt->wheels[i].mu);
  }
  return NULL;
}

bw_error_t *bw_runtime_worker_metrics(const bw_runtime_t *rt, unsigned i, uint64_t *steals,
                                      uint64_t *local_depth, uint64_t *polls) {
  if (!rt || rt->magic != BW__RT_MAGIC)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_worker_metrics: invalid runtime");
  if (rt->ct) {
    if (i != 0)
      return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_worker_metrics: no worker %u", i);
    bw_runtime_metrics_t m;
    bw_runtime_metrics(rt, &m);
    if (steals) *steals = 0;
    if (local_depth) *local_depth = 0;
    if (polls) *polls = m.polls;
    return NULL;
  }
  if (bw__sched_worker_metrics(rt, i, steals, local_depth, polls) != 0)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_runtime_worker_metrics: no worker %u", i);
  return NULL;
}
