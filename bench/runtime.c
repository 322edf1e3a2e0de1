/* bench/runtime: the runtime table of BENCH.md.
 *
 * Prints `NAME VALUE UNIT` per workload (median of 5 timed passes after one
 * untimed warm-up pass at 1/10 of the count; min/max on a `#` line), a fresh
 * runtime per workload with 2 workers, and `NAME_peak_rss VALUE KiB`.
 * Build release: -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG".
 * Optional argv[1]: a workload name to run alone. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bulwark/runtime.h"
#include "bulwark/sync.h"

#define PASSES 5

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(bw_error_t *e, const char *what) {
  if (!e) return;
  char buf[512];
  bw_error_format(e, buf, sizeof buf, 0);
  fprintf(stderr, "%s: %s\n", what, buf);
  exit(1);
}

static bw_runtime_t *mkrt(bw_flavor_t f) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.flavor = f;
  o.worker_threads = 2;
  bw_runtime_t *rt;
  die(bw_runtime_new(&rt, &o), "bw_runtime_new");
  return rt;
}

/* ---- a waiter usable from a task (waker) or a thread (condvar) ---- */
typedef struct done {
  atomic_long left;
  bw_waker_t *_Atomic waker;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool flag;
} done_t;

static void done_init(done_t *d, long n) {
  atomic_store(&d->left, n);
  atomic_store(&d->waker, NULL);
  pthread_mutex_init(&d->mu, NULL);
  pthread_cond_init(&d->cv, NULL);
  d->flag = false;
}
static void done_hit(done_t *d) {
  if (atomic_fetch_sub_explicit(&d->left, 1, memory_order_acq_rel) == 1) {
    bw_waker_t *w = atomic_exchange(&d->waker, NULL);
    if (w) bw_waker_wake(w);
    pthread_mutex_lock(&d->mu);
    d->flag = true;
    pthread_cond_signal(&d->cv);
    pthread_mutex_unlock(&d->mu);
  }
}
static void done_wait_thread(done_t *d) {
  pthread_mutex_lock(&d->mu);
  while (!d->flag) pthread_cond_wait(&d->cv, &d->mu);
  pthread_mutex_unlock(&d->mu);
}
/* From a task: PENDING until all hit. */
static bw_poll_t done_poll(done_t *d, bw_task_t *self) {
  if (atomic_load_explicit(&d->left, memory_order_acquire) == 0) return BW_READY;
  bw_waker_t *old = atomic_exchange(&d->waker, bw_task_waker(self));
  bw_waker_drop(old);
  if (atomic_load_explicit(&d->left, memory_order_acquire) == 0) {
    old = atomic_exchange(&d->waker, NULL);
    bw_waker_drop(old);
    return BW_READY;
  }
  return BW_PENDING;
}

static bw_poll_t tiny(bw_task_t *self, void *arg) {
  (void)self;
  done_hit(arg);
  return BW_READY;
}

/* ---- spawn_many_local ---- */
typedef struct sml {
  long n;
  done_t d;
  int step;
} sml_t;

static bw_poll_t sml_poll(bw_task_t *self, void *arg) {
  sml_t *s = arg;
  if (s->step == 0) {
    s->step = 1;
    bw_runtime_t *rt = bw_task_runtime(self);
    for (long i = 0; i < s->n; i++) die(bw_spawn(rt, tiny, &s->d, NULL), "spawn");
  }
  return done_poll(&s->d, self);
}

static double run_spawn_many_local(bw_runtime_t *rt, long n) {
  sml_t s = {.n = n};
  done_init(&s.d, n);
  uint64_t t0 = now_ns();
  die(bw_block_on(rt, sml_poll, &s, NULL), "block_on");
  return (double)(now_ns() - t0) / (double)n;
}

/* ---- spawn_many_remote ---- */
static double run_spawn_many_remote(bw_runtime_t *rt, long n) {
  done_t d;
  done_init(&d, n);
  uint64_t t0 = now_ns();
  for (long i = 0; i < n; i++) die(bw_spawn(rt, tiny, &d, NULL), "spawn");
  done_wait_thread(&d);
  return (double)(now_ns() - t0) / (double)n;
}

/* ---- ping_pong ---- */
typedef struct pong {
  bw_oneshot_t *rx1, *tx2;
} pong_t;

static bw_poll_t pong_poll(bw_task_t *self, void *arg) {
  pong_t *p = arg;
  void *v;
  bw_error_t *e = NULL;
  if (bw_oneshot_poll_recv(p->rx1, self, &v, &e) == BW_PENDING) return BW_PENDING;
  bw_error_unref(e);
  bw_oneshot_send(p->tx2, NULL, NULL);
  free(p);
  return BW_READY;
}

typedef struct ping {
  done_t *d;
  bw_oneshot_t *ch2;
  int step;
} ping_t;

static bw_poll_t ping_poll(bw_task_t *self, void *arg) {
  ping_t *p = arg;
  if (p->step == 0) {
    p->step = 1;
    bw_oneshot_t *ch1;
    die(bw_oneshot_new(&ch1), "oneshot");
    die(bw_oneshot_new(&p->ch2), "oneshot");
    pong_t *q = malloc(sizeof *q);
    q->rx1 = ch1;
    q->tx2 = p->ch2;
    die(bw_spawn(bw_task_runtime(self), pong_poll, q, NULL), "spawn");
    bw_oneshot_send(ch1, NULL, NULL);
  }
  void *v;
  bw_error_t *e = NULL;
  if (bw_oneshot_poll_recv(p->ch2, self, &v, &e) == BW_PENDING) return BW_PENDING;
  bw_error_unref(e);
  done_hit(p->d);
  free(p);
  return BW_READY;
}

typedef struct pp {
  long rounds_in_flight, reps;
  long rep;
  done_t d;
  int step;
} pp_t;

static bw_poll_t pp_poll(bw_task_t *self, void *arg) {
  pp_t *s = arg;
  for (;;) {
    if (s->step == 0) {
      if (s->rep == s->reps) return BW_READY;
      done_init(&s->d, s->rounds_in_flight);
      for (long i = 0; i < s->rounds_in_flight; i++) {
        ping_t *p = calloc(1, sizeof *p);
        p->d = &s->d;
        die(bw_spawn(bw_task_runtime(self), ping_poll, p, NULL), "spawn");
      }
      s->step = 1;
    }
    if (done_poll(&s->d, self) == BW_PENDING) return BW_PENDING;
    s->step = 0;
    s->rep++;
  }
}

static double run_ping_pong(bw_runtime_t *rt, long reps) {
  pp_t s = {.rounds_in_flight = 1000, .reps = reps};
  uint64_t t0 = now_ns();
  die(bw_block_on(rt, pp_poll, &s, NULL), "block_on");
  return (double)(now_ns() - t0) / (double)(1000 * reps);
}

/* ---- yield_many ---- */
/* One cache line per task: each task's counter is its own state (as in
 * tokio's bench, where it lives in the task's future); packed 4 to a line,
 * tasks running on different workers falsely shared it. */
typedef struct yl {
  _Alignas(64) int left;
  done_t *d;
} yl_t;

static bw_poll_t yield_poll(bw_task_t *self, void *arg) {
  yl_t *y = arg;
  if (y->left-- > 0) return bw_task_yield(self);
  done_hit(y->d);
  return BW_READY;
}

static double run_yield_many(bw_runtime_t *rt, long reps) {
  enum { TASKS = 200, YIELDS = 1000 };
  static yl_t ys[TASKS];
  uint64_t t0 = now_ns();
  for (long r = 0; r < reps; r++) {
    done_t d;
    done_init(&d, TASKS);
    for (int i = 0; i < TASKS; i++) {
      ys[i] = (yl_t){YIELDS, &d};
      die(bw_spawn(rt, yield_poll, &ys[i], NULL), "spawn");
    }
    done_wait_thread(&d);
  }
  return (double)(now_ns() - t0) / (double)(reps * TASKS * YIELDS);
}

/* ---- chained_spawn ---- */
typedef struct chain {
  atomic_long left;
  done_t d;
} chain_t;

static bw_poll_t chain_poll(bw_task_t *self, void *arg) {
  chain_t *c = arg;
  if (atomic_fetch_sub_explicit(&c->left, 1, memory_order_relaxed) > 1)
    die(bw_spawn(bw_task_runtime(self), chain_poll, c, NULL), "spawn");
  else
    done_hit(&c->d);
  return BW_READY;
}

static double run_chained_spawn(bw_runtime_t *rt, long n) {
  chain_t c;
  atomic_store(&c.left, n);
  done_init(&c.d, 1);
  uint64_t t0 = now_ns();
  die(bw_spawn(rt, chain_poll, &c, NULL), "spawn");
  done_wait_thread(&c.d);
  return (double)(now_ns() - t0) / (double)n;
}

/* ---- blocking_pool ---- */
static void *trivial(void *arg) { return arg; }

typedef struct bp {
  long batches, b;
  bw_join_t *j[100];
  int k;
  int step;
} bp_t;

static bw_poll_t bp_poll(bw_task_t *self, void *arg) {
  bp_t *s = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  for (;;) {
    if (s->step == 0) {
      if (s->b == s->batches) return BW_READY;
      for (int i = 0; i < 100; i++) die(bw_spawn_blocking(rt, trivial, NULL, &s->j[i]), "blocking");
      s->k = 0;
      s->step = 1;
    }
    while (s->k < 100) {
      bw_error_t *e = NULL;
      if (bw_join_poll(s->j[s->k], self, NULL, &e) == BW_PENDING) return BW_PENDING;
      die(e, "blocking job");
      s->k++;
    }
    s->step = 0;
    s->b++;
  }
}

static double run_blocking_pool(bw_runtime_t *rt, long n) {
  bp_t s = {.batches = n / 100};
  uint64_t t0 = now_ns();
  die(bw_block_on(rt, bp_poll, &s, NULL), "block_on");
  return (double)(now_ns() - t0) / (double)n;
}

/* ---- timer_100k ---- */
typedef struct tm1 {
  uint64_t deadline;
  atomic_uint_fast64_t *late_sum;
  atomic_uint_fast64_t *last_wake;
  done_t *d;
} tm1_t;

static bw_poll_t sleeper_poll(bw_task_t *self, void *arg) {
  tm1_t *t = arg;
  bw_runtime_t *rt = bw_task_runtime(self);
  if (!t->deadline) t->deadline = bw_runtime_now_ns(rt) + 1000000u;
  if (bw_task_sleep_until(self, t->deadline) == BW_PENDING) return BW_PENDING;
  uint64_t now = now_ns();
  atomic_fetch_add_explicit(t->late_sum, now - t->deadline, memory_order_relaxed);
  uint64_t prev = atomic_load_explicit(t->last_wake, memory_order_relaxed);
  while (prev < now &&
         !atomic_compare_exchange_weak_explicit(t->last_wake, &prev, now, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
  done_hit(t->d);
  return BW_READY;
}

typedef struct tmr {
  long n;
  tm1_t *ts;
  done_t d;
  atomic_uint_fast64_t late_sum, last_wake;
  uint64_t first_spawn;
  int step;
} tmr_t;

static bw_poll_t tmr_poll(bw_task_t *self, void *arg) {
  tmr_t *s = arg;
  if (s->step == 0) {
    s->step = 1;
    s->first_spawn = now_ns();
    for (long i = 0; i < s->n; i++) {
      s->ts[i] = (tm1_t){0, &s->late_sum, &s->last_wake, &s->d};
      die(bw_spawn(bw_task_runtime(self), sleeper_poll, &s->ts[i], NULL), "spawn");
    }
  }
  return done_poll(&s->d, self);
}

static double last_lateness_us;
static double run_timer_100k(bw_runtime_t *rt, long n) {
  tmr_t *s = calloc(1, sizeof *s);
  s->n = n;
  s->ts = calloc((size_t)n, sizeof *s->ts);
  done_init(&s->d, n);
  die(bw_block_on(rt, tmr_poll, s, NULL), "block_on");
  double ms = (double)(atomic_load(&s->last_wake) - s->first_spawn) / 1e6;
  last_lateness_us = (double)atomic_load(&s->late_sum) / (double)n / 1e3;
  free(s->ts);
  free(s);
  return ms;
}

/* ---- driver ---- */
static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static long peak_rss_kib(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

typedef double (*workload_fn)(bw_runtime_t *rt, long n);

static void bench(const char *only, const char *name, const char *unit, bw_flavor_t f,
                  workload_fn fn, long n, const char *count_desc) {
  if (only && strcmp(only, name) != 0) return;
  bw_runtime_t *rt = mkrt(f);
  fn(rt, n / 10 > 0 ? n / 10 : 1); /* warm-up */
  double v[PASSES];
  double late[PASSES];
  for (int i = 0; i < PASSES; i++) {
    v[i] = fn(rt, n);
    late[i] = last_lateness_us;
  }
  bw_runtime_free(rt);
  double sorted[PASSES];
  memcpy(sorted, v, sizeof v);
  qsort(sorted, PASSES, sizeof(double), cmpd);
  printf("# %s: %s; min %.1f max %.1f %s\n", name, count_desc, sorted[0], sorted[PASSES - 1], unit);
  printf("%s %.1f %s\n", name, sorted[PASSES / 2], unit);
  if (fn == run_timer_100k) {
    qsort(late, PASSES, sizeof(double), cmpd);
    printf("timer_100k_lateness %.1f us\n", late[PASSES / 2]);
  }
  printf("%s_peak_rss %ld KiB\n", name, peak_rss_kib());
  fflush(stdout);
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  printf("# bulwark runtime benchmark, 2 workers, median of %d passes\n", PASSES);
  bench(only, "spawn_many_local", "ns/task", BW_FLAVOR_MULTI_THREAD, run_spawn_many_local, 1000000,
        "1,000,000 tasks spawned from one task");
  bench(only, "spawn_many_remote", "ns/task", BW_FLAVOR_MULTI_THREAD, run_spawn_many_remote,
        1000000, "1,000,000 tasks spawned from a non-worker thread");
  bench(only, "ping_pong", "ns/round", BW_FLAVOR_MULTI_THREAD, run_ping_pong, 100,
        "1,000 rounds in flight x 100");
  bench(only, "yield_many", "ns/yield", BW_FLAVOR_MULTI_THREAD, run_yield_many, 10,
        "200 tasks x 1,000 yields x 10");
  bench(only, "chained_spawn", "ns/hop", BW_FLAVOR_MULTI_THREAD, run_chained_spawn, 1000000,
        "chain of 1,000,000 tasks");
  bench(only, "blocking_pool", "ns/job", BW_FLAVOR_MULTI_THREAD, run_blocking_pool, 100000,
        "100,000 jobs in batches of 100");
  bench(only, "timer_100k", "ms", BW_FLAVOR_MULTI_THREAD, run_timer_100k, 100000,
        "100,000 tasks sleeping 1 ms");
  bench(only, "spawn_many_local_current_thread", "ns/task", BW_FLAVOR_CURRENT_THREAD,
        run_spawn_many_local, 1000000, "1,000,000 tasks spawned from one task");
  printf("runtime_peak_rss %ld KiB\n", peak_rss_kib());
  return 0;
}
