/* runtime_tour: a short walk through the bulwark runtime (no servers needed).
 *
 *   runtime_tour
 *
 * 1. create a multi-thread runtime (2 workers)
 * 2. spawn tasks and join them from the main thread
 * 3. a task that spawns a child and waits for it over a one-shot channel
 * 4. sleep on the runtime's timer wheel
 * 5. run a blocking job on the blocking pool
 * 6. a cancellation token: cancelling a parent reaches a task waiting on a child
 * 7. the "runtime inside a runtime" guard: bw_block_on from a worker is an error
 * 8. runtime metrics, then a clean shutdown
 *
 * Tasks are poll functions: the runtime calls poll(self, arg) until it
 * returns BW_READY; a task that must wait returns BW_PENDING after handing its
 * waker to something (a channel, a timer, a join handle) that wakes it. A
 * task keeps the state it needs between polls in its `arg`. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bulwark.h"

#define MS 1000000ull /* ns per ms */

static int fail(const char *what, bw_error_t *err) {
  char buf[512];
  bw_error_format(err, buf, sizeof buf, BW_ERROR_FMT_KIND);
  fprintf(stderr, "runtime_tour: %s: %s\n", what, buf);
  bw_error_unref(err);
  return 1;
}

/* ---- 2. spawn and join ---------------------------------------------------- */

/* The simplest task: finish on the first poll with a result. */
static bw_poll_t square(bw_task_t *self, void *arg) {
  uintptr_t n = (uintptr_t)arg;
  bw_task_set_output(self, (void *)(n * n), NULL, NULL);
  return BW_READY;
}

/* ---- 3 + 4. one-shot channel, timers -------------------------------------- */

/* Sleeps `delay_ms`, then sends its answer on the channel. */
typedef struct producer {
  bw_oneshot_t *tx;
  uint64_t deadline_ns;
} producer_t;

static bw_poll_t producer_poll(bw_task_t *self, void *arg) {
  producer_t *p = arg;
  if (bw_task_sleep_until(self, p->deadline_ns) == BW_PENDING) return BW_PENDING;
  bw_oneshot_send(p->tx, (void *)(uintptr_t)42, NULL);
  p->tx = NULL; /* the send released our end */
  return BW_READY;
}

static void producer_drop(void *arg) {
  producer_t *p = arg;
  if (p->tx) bw_oneshot_close_sender(p->tx); /* dropped before it sent */
}

/* The consumer is run with bw_block_on: it spawns the producer (detached)
 * and waits for the value without blocking its worker. */
typedef struct consumer {
  bw_oneshot_t *rx;
  producer_t producer;
  uint64_t started_ns;
  bool spawned;
} consumer_t;

static bw_poll_t consumer_poll(bw_task_t *self, void *arg) {
  consumer_t *c = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  if (!c->spawned) {
    c->started_ns = bw_runtime_now_ns(rt);
    c->producer.deadline_ns = c->started_ns + 20 * MS;
    bw_task_spec_t spec = {producer_poll, &c->producer, producer_drop, "producer"};
    bw_error_t *err = bw_spawn_ex(rt, &spec, NULL);
    if (err) {
      bw_oneshot_close_sender(c->producer.tx);
      bw_oneshot_close_receiver(c->rx);
      bw_task_set_output(self, NULL, NULL, err);
      return BW_READY;
    }
    c->spawned = true;
  }
  void *value;
  bw_error_t *err;
  if (bw_oneshot_poll_recv(c->rx, self, &value, &err) == BW_PENDING) return BW_PENDING;
  printf("   received %" PRIuPTR " over a one-shot channel after %.1f ms\n",
         (uintptr_t)value, (double)(bw_runtime_now_ns(rt) - c->started_ns) / MS);
  bw_task_set_output(self, value, NULL, err);
  return BW_READY;
}

typedef struct sleeper {
  uint64_t deadline_ns;
} sleeper_t;

static bw_poll_t sleeper_poll(bw_task_t *self, void *arg) {
  sleeper_t *s = arg;
  return bw_task_sleep_until(self, s->deadline_ns);
}

/* ---- 5. blocking pool ------------------------------------------------------ */

/* Runs on a blocking-pool thread, where blocking is fine: count primes the
 * slow way (stands in for a blocking syscall or a CPU-heavy library call). */
static void *count_primes(void *arg) {
  uintptr_t limit = (uintptr_t)arg, count = 0;
  for (uintptr_t n = 2; n < limit; n++) {
    bool prime = true;
    for (uintptr_t d = 2; d * d <= n; d++)
      if (n % d == 0) {
        prime = false;
        break;
      }
    count += prime;
  }
  return (void *)count;
}

/* ---- 6. cancellation tokens -------------------------------------------------- */

/* Waits until its token is cancelled; the result says how long it waited. */
typedef struct waiter {
  bw_cancel_token_t *token;
  uint64_t started_ns;
} waiter_t;

static bw_poll_t waiter_poll(bw_task_t *self, void *arg) {
  waiter_t *w = arg;
  if (!w->started_ns) w->started_ns = bw_runtime_now_ns(bw_task_runtime(self));
  if (bw_cancel_token_poll(w->token, self) == BW_PENDING) return BW_PENDING;
  uint64_t waited = bw_runtime_now_ns(bw_task_runtime(self)) - w->started_ns;
  bw_task_set_output(self, (void *)(uintptr_t)(waited / MS), NULL, NULL);
  return BW_READY;
}

/* Sleeps, then cancels the (parent) token. */
typedef struct canceller {
  bw_cancel_token_t *token;
  uint64_t deadline_ns;
} canceller_t;

static bw_poll_t canceller_poll(bw_task_t *self, void *arg) {
  canceller_t *c = arg;
  if (bw_task_sleep_until(self, c->deadline_ns) == BW_PENDING) return BW_PENDING;
  bw_cancel_token_cancel(c->token);
  return BW_READY;
}

static void on_cancel(void *arg) { printf("   on_cancel callback: %s\n", (const char *)arg); }

/* ---- 7. the nested-runtime guard -------------------------------------------- */

static bw_poll_t nothing(bw_task_t *self, void *arg) {
  (void)self;
  (void)arg;
  return BW_READY;
}

/* Runs on a worker and (wrongly) calls bw_block_on: it gets an error, not a
 * deadlock. The formatted error goes back to main in `arg`. */
static bw_poll_t nested(bw_task_t *self, void *arg) {
  bw_error_t *err = bw_block_on(bw_task_runtime(self), nothing, NULL, NULL);
  bw_error_format(err, arg, 512, BW_ERROR_FMT_KIND);
  bw_error_unref(err);
  return BW_READY;
}

/* ----------------------------------------------------------------------------- */

int main(void) {
  bw_runtime_t *rt;
  bw_error_t *err;

  /* 1. A multi-thread runtime: two workers, plus a reactor thread and a
   * blocking pool that start when first needed. */
  bw_runtime_opts_t opts;
  bw_runtime_opts_init(&opts);
  opts.worker_threads = 2;
  opts.thread_name_prefix = "tour";
  if ((err = bw_runtime_new(&rt, &opts))) return fail("runtime", err);
  printf("1. runtime: multi-thread, %u workers\n", opts.worker_threads);

  /* 2. Spawn ten tasks from this (non-worker) thread and join them. */
  enum { N = 10 };
  bw_join_t *joins[N];
  for (uintptr_t i = 0; i < N; i++)
    if ((err = bw_spawn(rt, square, (void *)i, &joins[i]))) return fail("spawn", err);
  uintptr_t sum = 0;
  for (int i = 0; i < N; i++) {
    void *v;
    if ((err = bw_join_wait(joins[i], &v))) return fail("join", err);
    sum += (uintptr_t)v;
  }
  printf("2. spawned %d tasks and joined them: sum of squares 0..%d = %" PRIuPTR "\n", N, N - 1,
         sum);

  /* 3. A task spawns a producer that sleeps 20 ms and answers on a one-shot. */
  printf("3. one-shot channel between two tasks\n");
  consumer_t cons = {0};
  if ((err = bw_oneshot_new(&cons.rx))) return fail("oneshot", err);
  cons.producer.tx = cons.rx; /* one channel, two ends */
  if ((err = bw_block_on(rt, consumer_poll, &cons, NULL))) return fail("consumer", err);

  /* 4. Sleep 50 ms on the timer wheel (the worker is free meanwhile). */
  uint64_t t0 = bw_runtime_now_ns(rt);
  sleeper_t sl = {t0 + 50 * MS};
  if ((err = bw_block_on(rt, sleeper_poll, &sl, NULL))) return fail("sleep", err);
  printf("4. slept on the timer wheel: asked 50 ms, took %.1f ms\n",
         (double)(bw_runtime_now_ns(rt) - t0) / MS);

  /* 5. Blocking work goes to the blocking pool, never to a worker. */
  bw_join_t *bj;
  if ((err = bw_spawn_blocking(rt, count_primes, (void *)(uintptr_t)20000, &bj)))
    return fail("spawn_blocking", err);
  void *primes;
  if ((err = bw_join_wait(bj, &primes))) return fail("blocking join", err);
  printf("5. blocking pool job: %" PRIuPTR " primes below 20000\n", (uintptr_t)primes);

  /* 6. Cancelling a parent token reaches a task waiting on its child. */
  printf("6. cancellation tokens\n");
  bw_cancel_token_t *parent, *child;
  if ((err = bw_cancel_token_new(&parent))) return fail("token", err);
  if ((err = bw_cancel_token_child(parent, &child))) return fail("child token", err);
  if ((err = bw_cancel_token_on_cancel(child, on_cancel, "child token cancelled", NULL)))
    return fail("on_cancel", err);
  waiter_t w = {child, 0};
  canceller_t cc = {parent, bw_runtime_now_ns(rt) + 30 * MS};
  bw_join_t *wj, *cj;
  if ((err = bw_spawn(rt, waiter_poll, &w, &wj))) return fail("spawn waiter", err);
  if ((err = bw_spawn(rt, canceller_poll, &cc, &cj))) return fail("spawn canceller", err);
  void *waited;
  if ((err = bw_join_wait(wj, &waited))) return fail("join waiter", err);
  if ((err = bw_join_wait(cj, NULL))) return fail("join canceller", err);
  printf("   waiter saw the cancel after ~%" PRIuPTR " ms; parent cancelled: %s\n",
         (uintptr_t)waited, bw_cancel_token_is_cancelled(parent) ? "yes" : "no");
  bw_cancel_token_unref(child);
  bw_cancel_token_unref(parent);

  /* 7. bw_block_on from inside a task is refused with a clear error. */
  char msg[512] = "";
  if ((err = bw_block_on(rt, nested, msg, NULL))) return fail("nested", err);
  printf("7. bw_block_on on a worker thread returns an error instead of deadlocking:\n   %s\n",
         msg);

  /* 8. Metrics, then shut down: drain what is left, join every thread. */
  bw_runtime_metrics_t m;
  if ((err = bw_runtime_metrics(rt, &m))) return fail("metrics", err);
  printf("8. metrics: workers %u, tasks spawned %" PRIu64 " completed %" PRIu64
         " alive %" PRIu64 ", polls %" PRIu64 ", steals %" PRIu64 ", parks %" PRIu64
         ", blocking threads %" PRIu64 " (idle %" PRIu64 "), timers armed %" PRIu64 "\n",
         m.workers, m.tasks_spawned, m.tasks_completed, m.tasks_alive, m.polls, m.steals,
         m.parks, m.blocking_threads_live, m.blocking_threads_idle, m.timers_armed);
  if ((err = bw_runtime_shutdown(rt, BW_SHUTDOWN_DRAIN, 1000))) return fail("shutdown", err);
  bw_runtime_free(rt);
  printf("   shut down cleanly\n");
  return 0;
}
