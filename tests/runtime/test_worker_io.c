/* The workers drive the reactor (worker.c, "Driving the reactor"): a
 * multi-thread runtime has no I/O thread unless opts.io_thread asks for
 * one; a parked worker waits in the loop's poll and is woken there; a busy
 * worker still polls the loop every event_interval ticks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "runtime/internal.h"
#include "support/rt_helpers.h"

static bw_runtime_t *runtime(unsigned workers, bool io_thread, bw_clock_mode_t clock) {
  bw_runtime_opts_t o;
  bw_runtime_opts_init(&o);
  o.worker_threads = workers;
  o.io_thread = io_thread;
  o.clock = clock;
  o.thread_name_prefix = "wio";
  bw_runtime_t *rt = NULL;
  assert_null(bw_runtime_new(&rt, &o));
  return rt;
}

/* Does this process have a thread named `name` now? */
static bool thread_named(const char *name) {
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  bool found = false;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[300], comm[32] = "";
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    FILE *f = fopen(path, "r");
    if (!f) continue; /* the thread exited meanwhile */
    if (fgets(comm, sizeof comm, f)) comm[strcspn(comm, "\n")] = 0;
    fclose(f);
    found = strcmp(comm, name) == 0;
  }
  closedir(d);
  return found;
}

/* ---- an op records where it ran ---- */
typedef struct probe {
  bw__reactor_op_t op;
  bw_runtime_t *rt;
  rh_counter_t ran;
  bool on_worker, on_loop;
  char thread[16];
} probe_t;

static void probe_fn(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  probe_t *p = (probe_t *)op;
  p->on_worker = bw__runtime_on_worker(p->rt);
  p->on_loop = bw__reactor_on_loop(p->rt);
  pthread_getname_np(pthread_self(), p->thread, sizeof p->thread);
  rh_counter_add(&p->ran, 1);
}

static void probe_init(probe_t *p, bw_runtime_t *rt) {
  memset(p, 0, sizeof *p);
  p->op.fn = probe_fn;
  p->rt = rt;
  rh_counter_init(&p->ran);
}

/* Submit from this (non-worker) thread and wait until it ran. */
static void probe_run(probe_t *p) {
  long before = rh_counter_get(&p->ran);
  assert_int_equal(bw__reactor_submit(p->rt, &p->op), 0);
  assert_true(rh_counter_wait(&p->ran, before + 1));
}

static void test_ops_run_on_a_worker(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime(2, false, BW_CLOCK_REAL);
  probe_t p;
  probe_init(&p, rt);
  /* twice: the first starts the reactor (workers parked before it existed
   * must be woken into it), the second finds a worker parked in its poll */
  for (int i = 0; i < 2; i++) {
    probe_run(&p);
    assert_true(p.on_worker);
    assert_true(p.on_loop);
    assert_int_equal(strncmp(p.thread, "wio-w", 5), 0);
  }
  assert_false(bw__reactor_on_loop(rt)); /* not on this thread */
  assert_false(thread_named("wio-io"));
  rh_counter_destroy(&p.ran);
  bw_runtime_free(rt);
}

static bw_poll_t ready(bw_task_t *self, void *arg) {
  (void)self;
  (*(int *)arg)++;
  return BW_READY;
}

static void test_io_thread_option(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime(2, true, BW_CLOCK_REAL);
  probe_t p;
  probe_init(&p, rt);
  probe_run(&p);
  assert_false(p.on_worker);
  assert_true(p.on_loop);
  assert_string_equal(p.thread, "wio-io");
  assert_true(thread_named("wio-io"));
  /* the workers never turn that loop, and lose no wake-up to it */
  int runs = 0;
  for (int i = 0; i < 2000; i++) assert_null(bw_block_on(rt, ready, &runs, NULL));
  assert_int_equal(runs, 2000);
  rh_counter_destroy(&p.ran);
  bw_runtime_free(rt);
}

/* ---- a busy worker still polls the loop ----
 * One worker, kept busy by a task that yields until an op it submitted has
 * run: the worker never parks, so only its every-event_interval poll can
 * run the op. Bounded: a poll count far above event_interval fails. */
#define BUSY_POLL_LIMIT 100000

typedef struct busy {
  probe_t probe;
  int polls;
} busy_t;

static bw_poll_t busy_poll(bw_task_t *self, void *arg) {
  busy_t *b = arg;
  if (b->polls++ == 0) assert_int_equal(bw__reactor_submit(b->probe.rt, &b->probe.op), 0);
  /* (once already: probe_run started the reactor with it) */
  if (rh_counter_get(&b->probe.ran) > 1 || b->polls >= BUSY_POLL_LIMIT) return BW_READY;
  return bw_task_yield(self);
}

static void test_busy_worker_polls_io(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime(1, false, BW_CLOCK_REAL);
  busy_t b = {.polls = 0};
  probe_init(&b.probe, rt);
  probe_run(&b.probe); /* reactor started, worker parked in it */
  assert_true(b.probe.on_worker);
  assert_null(bw_block_on(rt, busy_poll, &b, NULL));
  assert_int_equal(rh_counter_get(&b.probe.ran), 2);
  assert_true(b.polls < BUSY_POLL_LIMIT);
  rh_counter_destroy(&b.probe.ran);
  bw_runtime_free(rt);
}

/* ---- a worker parked in the poll is woken for work and timers ---- */
typedef struct sleeper {
  bw_runtime_t *rt;
  uint64_t deadline_ns;
} sleeper_t;

static bw_poll_t sleep_poll(bw_task_t *self, void *arg) {
  sleeper_t *s = arg;
  return bw_task_sleep_until(self, s->deadline_ns);
}

static void test_parked_driver_is_woken(void **state) {
  (void)state;
  for (int paused = 0; paused < 2; paused++) {
    bw_runtime_t *rt = runtime(1, false, paused ? BW_CLOCK_PAUSED : BW_CLOCK_REAL);
    probe_t p;
    probe_init(&p, rt);
    probe_run(&p); /* the only worker now waits in the loop's poll, no timeout */
    int runs = 0;
    for (int i = 0; i < 100; i++) assert_null(bw_block_on(rt, ready, &runs, NULL));
    assert_int_equal(runs, 100);
    /* a timer on the worker's wheel while it waits in the poll: the poll's
     * timeout (real clock) or the idle advance (paused) must fire it */
    uint64_t ms = paused ? 60000 : 5;
    sleeper_t s = {rt, bw_runtime_now_ns(rt) + ms * 1000000u};
    assert_null(bw_block_on(rt, sleep_poll, &s, NULL));
    assert_true(bw_runtime_now_ns(rt) >= s.deadline_ns);
    rh_counter_destroy(&p.ran);
    bw_runtime_free(rt);
  }
}

/* ---- work made before the poll phase ends the turn ----
 * An op starts a 1 ms uv timer and defers a function that keeps the
 * worker busy for 3 ms (it spins; nothing waits on it), so the timer is
 * already due when the worker's next turn begins: that turn runs the
 * timer's callback in its timer phase, before it polls, and the callback
 * defers a function to this worker. Nothing else is due, so without the
 * wake-up the turn would block in the poll with the function waiting
 * behind it (the test then fails at rh_counter_wait's limit). */
typedef struct early early_t;
typedef struct early_closer {
  bw__reactor_op_t op;
  early_t *e;
} early_closer_t;
struct early {
  bw__reactor_op_t op;
  early_closer_t closer;
  bw_runtime_t *rt;
  uv_timer_t timer;
  rh_counter_t ran, closed;
};

static void early_deferred(void *arg) { rh_counter_add(&((early_t *)arg)->ran, 1); }

static void early_closed(uv_handle_t *h) { rh_counter_add(&((early_t *)h->data)->closed, 1); }

static void early_timer(uv_timer_t *t) {
  early_t *e = t->data;
  assert_int_equal(bw__runtime_defer(e->rt, early_deferred, e), 0);
  /* (not closed here: a closing handle makes the poll not block) */
}

static void early_close_op(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  early_t *e = ((early_closer_t *)op)->e;
  uv_close((uv_handle_t *)&e->timer, early_closed);
}

static void busy_3ms(void *arg) {
  (void)arg;
  rh_spin_ms(3);
}

static void early_op(bw__reactor_op_t *op, uv_loop_t *loop) {
  early_t *e = (early_t *)op;
  uv_timer_init(loop, &e->timer);
  e->timer.data = e;
  uv_timer_start(&e->timer, early_timer, 1, 0);
  assert_int_equal(bw__runtime_defer(e->rt, busy_3ms, NULL), 0);
}

static void test_work_before_poll_ends_turn(void **state) {
  (void)state;
  bw_runtime_t *rt = runtime(1, false, BW_CLOCK_REAL);
  probe_t p;
  probe_init(&p, rt);
  probe_run(&p); /* the only worker now waits in the loop's poll */
  early_t e = {.op = {NULL, early_op}, .rt = rt};
  e.closer = (early_closer_t){{NULL, early_close_op}, &e};
  rh_counter_init(&e.ran);
  rh_counter_init(&e.closed);
  assert_int_equal(bw__reactor_submit(rt, &e.op), 0);
  bool ran = rh_counter_wait(&e.ran, 1);
  assert_int_equal(bw__reactor_submit(rt, &e.closer.op), 0);
  assert_true(rh_counter_wait(&e.closed, 1));
  assert_true(ran);
  bw_runtime_free(rt);
  rh_counter_destroy(&e.ran);
  rh_counter_destroy(&e.closed);
  rh_counter_destroy(&p.ran);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ops_run_on_a_worker),
      cmocka_unit_test(test_io_thread_option),
      cmocka_unit_test(test_busy_worker_polls_io),
      cmocka_unit_test(test_parked_driver_is_woken),
      cmocka_unit_test(test_work_before_poll_ends_turn),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
