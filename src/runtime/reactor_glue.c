/* The runtime/internal.h reactor entry points, on H2's reactor
 * (runtime/reactor.h).
 *
 * The reactor is started lazily, on the first bw__reactor_* call that needs
 * it (a runtime that never does I/O has no loop).
 * Multi-thread flavor: the reactor is shared and the workers drive it, one
 * at a time: a worker with nothing to run waits in the loop's poll instead
 * of on its parker (worker.c, "Driving the reactor"); with opts.io_thread
 * it runs its own "<prefix>-io" thread instead. Either way the loop's
 * callbacks run with bw__ctx marking an I/O thread, so blocking calls there
 * fail with BW_ERR_NESTED_RUNTIME. Current-thread flavor: the reactor is
 * caller-driven and the bw_block_on thread drives it (current_thread.c
 * parks in bw__reactor_turn when it has no task to run).
 *
 * The glue pointer is published with release under reactor_mu and read
 * with acquire (pairs), so a started reactor is seen fully constructed. */
#include "core/alloc.h"
#include "runtime/reactor.h"
#include "runtime/rt.h"

static _Atomic(bw__reactor_t *) *pub(bw_runtime_t *rt) { return &rt->reactor; }

static void io_thread_start(void *arg) {
  (void)arg;
  bw__ctx.io_thread = true;
}

bw__reactor_t *bw__reactor_get_if_started(bw_runtime_t *rt) {
  return atomic_load_explicit(pub(rt), memory_order_acquire); /* pairs with start() */
}

static bw__reactor_t *start(bw_runtime_t *rt) {
  bw__reactor_t *r = bw__reactor_get_if_started(rt);
  if (r) return r;
  if (rt->magic != BW__RT_MAGIC || bw__rt_forked(rt)) return NULL;
  pthread_mutex_lock(&rt->reactor_mu);
  r = atomic_load_explicit(pub(rt), memory_order_relaxed);
  if (!r && atomic_load_explicit(&rt->state, memory_order_acquire) != BW__RT_SHUTDOWN) {
    bool mt = rt->ct == NULL;
    bw__reactor_opts_t o = {.own_thread = mt && rt->opts.io_thread,
                            .shared = mt && !rt->opts.io_thread,
                            .name_prefix = rt->name_prefix,
                            .on_thread_start = io_thread_start};
    if (bw__reactor_new(&r, &o) != 0) r = NULL;
    if (r && rt->ct && bw__ctx.rt == rt) bw__reactor_bind_thread(r);
    atomic_store_explicit(pub(rt), r, memory_order_release);
    /* workers parked before there was a loop wait on their parkers: wake
     * them so one parks in the loop */
    if (r && o.shared) bw__sched_wake_all(rt);
  }
  pthread_mutex_unlock(&rt->reactor_mu);
  return r;
}

int bw__reactor_submit(bw_runtime_t *rt, bw__reactor_op_t *op) {
  if (!rt || !op) return -1;
  bw__reactor_t *r = start(rt);
  if (!r) return -1;
  return bw__reactor_post(r, op);
}

bool bw__reactor_on_loop(const bw_runtime_t *rt) {
  if (!rt) return false;
  bw__reactor_t *r = bw__reactor_get_if_started((bw_runtime_t *)rt);
  return r && bw__reactor_in_loop(r);
}

uv_loop_t *bw__reactor_loop(bw_runtime_t *rt) {
  if (!rt) return NULL;
  bw__reactor_t *r = start(rt);
  return r ? bw__reactor_uv_loop(r) : NULL;
}

int bw__reactor_on_close(bw_runtime_t *rt, void (*fn)(void *arg, uv_loop_t *loop), void *arg) {
  if (!rt || !fn) return -1;
  bw__reactor_t *r = start(rt);
  if (!r) return -1;
  return bw__reactor_add_close_hook(r, fn, arg) == 0 ? 0 : -1;
}

bool bw__reactor_off_close(bw_runtime_t *rt, void (*fn)(void *arg, uv_loop_t *loop), void *arg) {
  if (!rt || !fn) return false;
  bw__reactor_t *r = bw__reactor_get_if_started(rt); /* never starts one */
  return r && bw__reactor_remove_close_hook(r, fn, arg);
}

void bw__reactor_glue_shutdown(bw_runtime_t *rt) {
  pthread_mutex_lock(&rt->reactor_mu); /* no start() can race past the SHUTDOWN state now */
  bw__reactor_t *r = atomic_load_explicit(pub(rt), memory_order_relaxed);
  pthread_mutex_unlock(&rt->reactor_mu);
  if (r) bw__reactor_stop(r);
}

void bw__reactor_glue_free(bw_runtime_t *rt) {
  bw__reactor_t *r = atomic_load_explicit(pub(rt), memory_order_relaxed);
  if (r) bw__reactor_free(r);
  atomic_store_explicit(pub(rt), NULL, memory_order_relaxed);
}
