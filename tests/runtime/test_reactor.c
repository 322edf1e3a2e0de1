/* Reactor: loopback TCP echo driven by ops from other threads, 10,000 ops
 * from 4 threads, coalescing, caller-driven mode, shutdown with pending ops
 * and close hooks, and an informational round-trip measurement. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bulwark/alloc.h"
#include "core/alloc.h"
#include "runtime/reactor.h"
#include "support/rt_helpers.h"

static bw__reactor_t *new_reactor(bool own_thread) {
  bw__reactor_opts_t o;
  memset(&o, 0, sizeof o);
  o.own_thread = own_thread;
  o.name_prefix = "rtest";
  bw__reactor_t *r = NULL;
  assert_int_equal(bw__reactor_new(&r, &o), 0);
  assert_non_null(r);
  return r;
}

/* ======================= TCP echo over loopback ========================= */

#define PAYLOAD (256 * 1024)

typedef struct conn conn_t;
typedef struct echo {
  bw__reactor_t *r;
  bw__reactor_op_t setup_op, client_op;
  uv_tcp_t server;
  bool server_open;
  int port;
  int setup_rc;
  bool in_loop_seen;
  conn_t *conns; /* server side */
  uv_tcp_t client;
  bool client_open;
  uv_connect_t creq;
  uv_write_t wreq;
  char *sendbuf, *recvbuf;
  size_t got;
  int client_err;
  rh_counter_t ready, done;
} echo_t;

struct conn {
  uv_tcp_t h;
  conn_t *next, *prev;
  echo_t *e;
};

typedef struct wr {
  uv_write_t req;
  uv_buf_t buf;
} wr_t;

#define container(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = bw__malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void conn_closed(uv_handle_t *h) {
  conn_t *c = container(h, conn_t, h);
  echo_t *e = c->e;
  if (c->prev) c->prev->next = c->next;
  else e->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  bw__free(c);
}

static void echo_written(uv_write_t *req, int status) {
  (void)status;
  wr_t *w = container(req, wr_t, req);
  bw__free(w->buf.base);
  bw__free(w);
}

static void conn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  conn_t *c = container(s, conn_t, h);
  if (n > 0) {
    wr_t *w = bw__malloc(sizeof *w); /* no cmocka asserts on the loop thread */
    if (!w) {
      bw__free(buf->base);
      return;
    }
    w->buf = uv_buf_init(buf->base, (unsigned)n); /* hand the buffer over */
    if (uv_write(&w->req, s, &w->buf, 1, echo_written) != 0) {
      bw__free(buf->base);
      bw__free(w);
    }
    return;
  }
  bw__free(buf->base);
  if (n < 0 && !uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)&c->h, conn_closed);
}

static void on_connection(uv_stream_t *server, int status) {
  echo_t *e = server->data;
  if (status != 0) return;
  conn_t *c = bw__calloc(1, sizeof *c);
  if (!c) return;
  c->e = e;
  uv_tcp_init(server->loop, &c->h);
  c->next = e->conns;
  if (e->conns) e->conns->prev = c;
  e->conns = c;
  if (uv_accept(server, (uv_stream_t *)&c->h) == 0)
    uv_read_start((uv_stream_t *)&c->h, alloc_cb, conn_read);
  else
    uv_close((uv_handle_t *)&c->h, conn_closed);
}

static void setup_server(bw__reactor_op_t *op, uv_loop_t *loop) {
  echo_t *e = container(op, echo_t, setup_op);
  e->in_loop_seen = bw__reactor_in_loop(e->r);
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", 0, &addr);
  int rc = uv_tcp_init(loop, &e->server);
  e->server.data = e;
  e->server_open = rc == 0;
  if (rc == 0) rc = uv_tcp_bind(&e->server, (const struct sockaddr *)&addr, 0);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&e->server, 128, on_connection);
  if (rc == 0) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    rc = uv_tcp_getsockname(&e->server, (struct sockaddr *)&ss, &len);
    e->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  e->setup_rc = rc;
  rh_counter_add(&e->ready, 1);
}

static void client_closed(uv_handle_t *h) {
  echo_t *e = h->data;
  e->client_open = false;
  rh_counter_add(&e->done, 1);
}

static void client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  echo_t *e = s->data;
  if (n > 0) {
    size_t take = (size_t)n;
    if (e->got + take > PAYLOAD) take = PAYLOAD - e->got;
    memcpy(e->recvbuf + e->got, buf->base, take);
    e->got += take;
  }
  bw__free(buf->base);
  if ((n < 0 || e->got == PAYLOAD) && !uv_is_closing((uv_handle_t *)s)) {
    if (n < 0) e->client_err = (int)n;
    uv_close((uv_handle_t *)s, client_closed);
  }
}

static void client_wrote(uv_write_t *req, int status) {
  echo_t *e = req->data;
  if (status != 0) e->client_err = status;
}

static void client_connected(uv_connect_t *req, int status) {
  echo_t *e = req->data;
  if (status != 0) {
    e->client_err = status;
    uv_close((uv_handle_t *)&e->client, client_closed);
    return;
  }
  uv_buf_t b = uv_buf_init(e->sendbuf, PAYLOAD);
  e->wreq.data = e;
  uv_write(&e->wreq, (uv_stream_t *)&e->client, &b, 1, client_wrote);
  uv_read_start((uv_stream_t *)&e->client, alloc_cb, client_read);
}

static void start_client(bw__reactor_op_t *op, uv_loop_t *loop) {
  echo_t *e = container(op, echo_t, client_op);
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", e->port, &addr);
  uv_tcp_init(loop, &e->client);
  e->client.data = e;
  e->client_open = true;
  e->creq.data = e;
  int rc = uv_tcp_connect(&e->creq, &e->client, (const struct sockaddr *)&addr, client_connected);
  if (rc != 0) {
    e->client_err = rc;
    uv_close((uv_handle_t *)&e->client, client_closed);
  }
}

static void *post_client_thread(void *arg) {
  echo_t *e = arg;
  int rc = bw__reactor_post(e->r, &e->client_op);
  return (void *)(intptr_t)rc;
}

static void server_closed(uv_handle_t *h) {
  echo_t *e = h->data;
  e->server_open = false;
}

/* Close hook: the test's own handles, with callbacks that free them. */
static void echo_close_hook(void *arg, uv_loop_t *loop) {
  (void)loop;
  echo_t *e = arg;
  if (e->server_open && !uv_is_closing((uv_handle_t *)&e->server))
    uv_close((uv_handle_t *)&e->server, server_closed);
  for (conn_t *c = e->conns; c; c = c->next)
    if (!uv_is_closing((uv_handle_t *)&c->h)) uv_close((uv_handle_t *)&c->h, conn_closed);
}

static void test_tcp_echo(void **state) {
  (void)state;
  echo_t *e = bw__calloc(1, sizeof *e);
  assert_non_null(e);
  rh_counter_init(&e->ready);
  rh_counter_init(&e->done);
  e->sendbuf = bw__malloc(PAYLOAD);
  e->recvbuf = bw__calloc(1, PAYLOAD);
  for (size_t i = 0; i < PAYLOAD; i++) e->sendbuf[i] = (char)(i * 131 + (i >> 9));
  e->r = new_reactor(true);
  e->setup_op.fn = setup_server;
  e->client_op.fn = start_client;
  assert_false(bw__reactor_in_loop(e->r));
  assert_int_equal(bw__reactor_add_close_hook(e->r, echo_close_hook, e), 0);
  assert_int_equal(bw__reactor_post(e->r, &e->setup_op), 0);
  assert_true(rh_counter_wait(&e->ready, 1));
  assert_int_equal(e->setup_rc, 0);
  assert_true(e->in_loop_seen);
  assert_true(e->port > 0);
  /* The client is started by an op posted from yet another thread. */
  pthread_t th;
  void *ret;
  assert_int_equal(pthread_create(&th, NULL, post_client_thread, e), 0);
  pthread_join(th, &ret);
  assert_int_equal((intptr_t)ret, 0);
  assert_true(rh_counter_wait(&e->done, 1));
  assert_int_equal(e->client_err, 0);
  assert_int_equal(e->got, PAYLOAD);
  assert_memory_equal(e->sendbuf, e->recvbuf, PAYLOAD);
  assert_int_equal(bw__reactor_stop(e->r), 0);
  assert_false(e->server_open);
  assert_null(e->conns);
  assert_int_equal(bw__reactor_post(e->r, &e->setup_op), -1);
  bw__reactor_free(e->r);
  rh_counter_destroy(&e->ready);
  rh_counter_destroy(&e->done);
  bw__free(e->sendbuf);
  bw__free(e->recvbuf);
  bw__free(e);
}

/* ===================== many ops from several threads ==================== */

enum { POSTERS = 4 };

typedef struct cop {
  bw__reactor_op_t op;
  int thread, seq, runs;
} cop_t;

typedef struct many {
  bw__reactor_t *r;
  cop_t *ops;
  int per_thread;
  int last_seq[POSTERS]; /* loop thread only */
  int order_errors;      /* loop thread only */
  int ran;               /* loop thread only */
  int not_in_loop;
  int post_failures;
  rh_counter_t done;
  atomic_int thread_ids;
} many_t;

static many_t *g_many;

static void cop_run(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  cop_t *c = (cop_t *)op;
  many_t *m = g_many;
  c->runs++;
  if (!bw__reactor_in_loop(m->r)) m->not_in_loop++;
  if (c->seq != m->last_seq[c->thread] + 1) m->order_errors++;
  m->last_seq[c->thread] = c->seq;
  if (++m->ran == m->per_thread * POSTERS) rh_counter_add(&m->done, 1);
}

static void *poster(void *arg) {
  many_t *m = arg;
  int t = atomic_fetch_add(&m->thread_ids, 1);
  int fails = 0;
  for (int i = 0; i < m->per_thread; i++) {
    cop_t *c = &m->ops[t * m->per_thread + i];
    c->op.fn = cop_run;
    c->thread = t;
    c->seq = i;
    if (bw__reactor_post(m->r, &c->op) != 0) fails++;
  }
  return (void *)(intptr_t)fails;
}

static void test_many_ops_four_threads(void **state) {
  (void)state;
  many_t m;
  memset(&m, 0, sizeof m);
  m.per_thread = 2500;
  m.ops = bw__calloc((size_t)POSTERS * (size_t)m.per_thread, sizeof *m.ops);
  assert_non_null(m.ops);
  for (int i = 0; i < POSTERS; i++) m.last_seq[i] = -1;
  rh_counter_init(&m.done);
  g_many = &m;
  m.r = new_reactor(true);
  pthread_t th[POSTERS];
  for (int i = 0; i < POSTERS; i++) assert_int_equal(pthread_create(&th[i], NULL, poster, &m), 0);
  for (int i = 0; i < POSTERS; i++) {
    void *ret;
    pthread_join(th[i], &ret);
    assert_int_equal((intptr_t)ret, 0);
  }
  assert_true(rh_counter_wait(&m.done, 1));
  assert_int_equal(bw__reactor_stop(m.r), 0); /* joins the loop thread */
  int total = POSTERS * m.per_thread;
  for (int i = 0; i < total; i++) assert_int_equal(m.ops[i].runs, 1);
  assert_int_equal(m.order_errors, 0);
  assert_int_equal(m.not_in_loop, 0);
  bw__reactor_metrics_t mt;
  bw__reactor_metrics(m.r, &mt);
  assert_int_equal(mt.submitted, (uint64_t)total);
  assert_int_equal(mt.ops_run, (uint64_t)total);
  assert_true(mt.wakeups >= 1);
  assert_true(mt.wakeups <= (uint64_t)total);
  printf("# reactor: %d ops from %d threads ran in %llu wake-ups\n", total, POSTERS,
         (unsigned long long)mt.wakeups);
  bw__reactor_free(m.r);
  rh_counter_destroy(&m.done);
  bw__free(m.ops);
  g_many = NULL;
}

/* ======================= caller-driven mode ============================ */

typedef struct simple_op {
  bw__reactor_op_t op;
  int runs;
  bool in_loop;
  bw__reactor_t *r;
} simple_op_t;

static void simple_run(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  simple_op_t *s = (simple_op_t *)op;
  s->runs++;
  s->in_loop = bw__reactor_in_loop(s->r);
}

static void test_coalesce_caller_driven(void **state) {
  (void)state;
  enum { N = 100 };
  bw__reactor_t *r = new_reactor(false);
  simple_op_t ops[N];
  for (int i = 0; i < N; i++) {
    memset(&ops[i], 0, sizeof ops[i]);
    ops[i].op.fn = simple_run;
    ops[i].r = r;
    assert_int_equal(bw__reactor_post(r, &ops[i].op), 0);
  }
  bw__reactor_metrics_t m;
  bw__reactor_metrics(r, &m);
  assert_int_equal(m.ops_run, 0); /* never inside post */
  assert_int_equal(m.wakeups, 0);
  assert_int_equal(bw__reactor_turn(r, 0), 0);
  bw__reactor_metrics(r, &m);
  assert_int_equal(m.ops_run, N);
  assert_int_equal(m.wakeups, 1); /* 100 posts, one wake-up */
  for (int i = 0; i < N; i++) {
    assert_int_equal(ops[i].runs, 1);
    assert_true(ops[i].in_loop);
  }
  assert_int_equal(bw__reactor_stop(r), 0);
  assert_int_equal(bw__reactor_turn(r, 0), -1);
  bw__reactor_free(r);
}

/* An op that posts another op from the loop thread: the second runs on a
 * later drain, never inside the first. */
typedef struct chain_op {
  bw__reactor_op_t op;
  bw__reactor_t *r;
  struct chain_op *next_op;
  int runs;
  int next_runs_seen;
  int post_rc;
} chain_op_t;

static void chain_run(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  chain_op_t *c = (chain_op_t *)op;
  c->runs++;
  if (c->next_op) {
    c->post_rc = bw__reactor_post(c->r, &c->next_op->op);
    c->next_runs_seen = c->next_op->runs; /* must still be 0 */
  }
}

static void test_post_from_loop_thread(void **state) {
  (void)state;
  bw__reactor_t *r = new_reactor(false);
  chain_op_t b = {.op.fn = chain_run, .r = r};
  chain_op_t a = {.op.fn = chain_run, .r = r, .next_op = &b};
  assert_int_equal(bw__reactor_post(r, &a.op), 0);
  int turns = 0;
  while (b.runs == 0 && turns < 100) {
    assert_int_equal(bw__reactor_turn(r, 0), 0);
    turns++;
  }
  assert_int_equal(a.runs, 1);
  assert_int_equal(a.post_rc, 0);
  assert_int_equal(a.next_runs_seen, 0);
  assert_int_equal(b.runs, 1);
  assert_true(turns >= 2);
  bw__reactor_free(r);
}

static void *waker_thread(void *arg) {
  bw__reactor_t *r = arg;
  bw__reactor_wake(r);
  return NULL;
}

typedef struct post_arg {
  bw__reactor_t *r;
  simple_op_t *op;
  bool in_loop;
  int rc;
} post_arg_t;

static void *post_from_thread(void *arg) {
  post_arg_t *p = arg;
  p->in_loop = bw__reactor_in_loop(p->r);
  p->rc = bw__reactor_post(p->r, &p->op->op);
  return NULL;
}

static void timer_fired(uv_timer_t *t) {
  int *fired = t->data;
  (*fired)++;
}

static void test_caller_driven_turn(void **state) {
  (void)state;
  bw__reactor_t *r = new_reactor(false);
  bw__reactor_bind_thread(r);
  assert_true(bw__reactor_in_loop(r));
  /* wake() from another thread ends a turn that would block forever. */
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, waker_thread, r), 0);
  assert_int_equal(bw__reactor_turn(r, -1), 0);
  pthread_join(th, NULL);
  /* An op posted from another thread runs on this thread inside turn(). */
  simple_op_t s;
  memset(&s, 0, sizeof s);
  s.op.fn = simple_run;
  s.r = r;
  post_arg_t pa = {r, &s, true, 1};
  assert_int_equal(pthread_create(&th, NULL, post_from_thread, &pa), 0);
  pthread_join(th, NULL);
  assert_int_equal(pa.rc, 0);
  assert_false(pa.in_loop);
  assert_int_equal(s.runs, 0);
  int turns = 0;
  while (s.runs == 0 && turns < 1000) {
    assert_int_equal(bw__reactor_turn(r, -1), 0);
    turns++;
  }
  assert_int_equal(s.runs, 1);
  assert_true(s.in_loop);
  /* libuv timers on the loop fire through turn(); a bounded turn returns. */
  int fired = 0;
  uv_timer_t t;
  uv_timer_init(bw__reactor_uv_loop(r), &t);
  t.data = &fired;
  uv_timer_start(&t, timer_fired, 5, 0);
  turns = 0;
  while (!fired && turns < 100000) {
    assert_int_equal(bw__reactor_turn(r, -1), 0);
    turns++;
  }
  assert_int_equal(fired, 1);
  assert_int_equal(bw__reactor_turn(r, 2), 0); /* nothing due: returns after ~2 ms */
  assert_int_equal(bw__reactor_turn(r, 0), 0);
  /* The timer handle is still open: stop() force-closes it. */
  assert_int_equal(bw__reactor_stop(r), 0);
  assert_int_equal(bw__reactor_stop(r), 0); /* idempotent */
  bw__reactor_metrics_t m;
  bw__reactor_metrics(r, &m);
  assert_true(m.turns >= 4);
  bw__reactor_free(r);

  bw__reactor_t *own = new_reactor(true);
  assert_int_equal(bw__reactor_turn(own, 0), -EINVAL);
  bw__reactor_free(own); /* free without stop: stops */
}

/* A bounded turn long after the previous one still returns: the loop's
 * cached time is stale by then, and a timeout counted from it would be
 * due at once, leaving the poll with no timeout at all. A watchdog wakes
 * the loop after RH_WAIT_MS so a failure fails instead of hanging. */
typedef struct watchdog {
  bw__reactor_t *r;
  rh_counter_t done;
  bool fired;
} watchdog_t;

static void *watchdog_thread(void *arg) {
  watchdog_t *w = arg;
  if (!rh_counter_wait(&w->done, 1)) {
    w->fired = true;
    bw__reactor_wake(w->r);
  }
  return NULL;
}

static void test_bounded_turn_after_pause(void **state) {
  (void)state;
  bw__reactor_t *r = new_reactor(false);
  bw__reactor_bind_thread(r);
  assert_int_equal(bw__reactor_turn(r, 0), 0); /* the loop's time is now */
  rh_spin_ms(20); /* the loop's cached time falls 20 ms behind */
  watchdog_t w = {.r = r};
  rh_counter_init(&w.done);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, watchdog_thread, &w), 0);
  assert_int_equal(bw__reactor_turn(r, 5), 0);
  rh_counter_add(&w.done, 1);
  pthread_join(th, NULL);
  assert_false(w.fired);
  rh_counter_destroy(&w.done);
  bw__reactor_free(r);
}

/* ================== shutdown with pending ops, hooks ==================== */

typedef struct sd {
  bw__reactor_t *r;
  bw__reactor_op_t blocker;
  rh_counter_t entered, gate;
  simple_op_t pending[100];
  simple_op_t *extra;
  int extra_n;
  int hook_order[3];
  int hooks_ran;
  bool hook_in_loop;
  int post_in_hook_rc;
  simple_op_t in_hook_op;
  int stop_rc;
} sd_t;

static void blocker_run(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  sd_t *s = container(op, sd_t, blocker);
  rh_counter_add(&s->entered, 1);
  (void)rh_counter_wait(&s->gate, 1);
}

static sd_t *g_sd;
static void hook_a(void *arg, uv_loop_t *loop) {
  (void)loop;
  sd_t *s = g_sd;
  s->hook_order[s->hooks_ran++] = (int)(intptr_t)arg;
  s->hook_in_loop = bw__reactor_in_loop(s->r);
  s->in_hook_op.op.fn = simple_run;
  s->in_hook_op.r = s->r;
  s->post_in_hook_rc = bw__reactor_post(s->r, &s->in_hook_op.op);
}

static void *stop_thread(void *arg) {
  sd_t *s = arg;
  s->stop_rc = bw__reactor_stop(s->r);
  return NULL;
}

static void test_shutdown_pending_ops(void **state) {
  (void)state;
  sd_t *s = bw__calloc(1, sizeof *s);
  assert_non_null(s);
  g_sd = s;
  rh_counter_init(&s->entered);
  rh_counter_init(&s->gate);
  s->r = new_reactor(true);
  s->blocker.fn = blocker_run;
  assert_int_equal(bw__reactor_add_close_hook(s->r, hook_a, (void *)(intptr_t)1), 0);
  assert_int_equal(bw__reactor_add_close_hook(s->r, hook_a, (void *)(intptr_t)2), 0);
  assert_int_equal(bw__reactor_add_close_hook(s->r, hook_a, (void *)(intptr_t)3), 0);
  assert_true(bw__reactor_remove_close_hook(s->r, hook_a, (void *)(intptr_t)2));
  assert_false(bw__reactor_remove_close_hook(s->r, hook_a, (void *)(intptr_t)2));
  assert_int_equal(bw__reactor_post(s->r, &s->blocker), 0);
  assert_true(rh_counter_wait(&s->entered, 1)); /* loop thread is now busy */
  for (int i = 0; i < 100; i++) {
    s->pending[i].op.fn = simple_run;
    s->pending[i].r = s->r;
    assert_int_equal(bw__reactor_post(s->r, &s->pending[i].op), 0);
  }
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, stop_thread, s), 0);
  /* Keep posting until stop() has closed the queue: every accepted op
   * must still run, every refused one must not. */
  enum { EXTRA = 100000 };
  s->extra = bw__calloc(EXTRA, sizeof *s->extra);
  assert_non_null(s->extra);
  while (s->extra_n < EXTRA) {
    simple_op_t *x = &s->extra[s->extra_n];
    x->op.fn = simple_run;
    x->r = s->r;
    if (bw__reactor_post(s->r, &x->op) != 0) break;
    s->extra_n++;
    sched_yield();
  }
  rh_counter_add(&s->gate, 1);
  pthread_join(th, NULL);
  assert_int_equal(s->stop_rc, 0);
  for (int i = 0; i < 100; i++) assert_int_equal(s->pending[i].runs, 1);
  for (int i = 0; i < s->extra_n; i++) assert_int_equal(s->extra[i].runs, 1);
  for (int i = s->extra_n; i < EXTRA; i++) assert_int_equal(s->extra[i].runs, 0);
  assert_int_equal(s->hooks_ran, 2);
  assert_int_equal(s->hook_order[0], 3); /* most recent first */
  assert_int_equal(s->hook_order[1], 1);
  assert_true(s->hook_in_loop);
  assert_int_equal(s->post_in_hook_rc, -1);
  assert_int_equal(s->in_hook_op.runs, 0);
  assert_int_equal(bw__reactor_add_close_hook(s->r, hook_a, NULL), -1);
  printf("# reactor: %d ops accepted while stop() was starting\n", s->extra_n);
  bw__reactor_free(s->r);
  rh_counter_destroy(&s->entered);
  rh_counter_destroy(&s->gate);
  bw__free(s->extra);
  bw__free(s);
  g_sd = NULL;
}

/* ============ worker -> loop -> worker round trip (informational) ======== */

typedef struct rt_op {
  bw__reactor_op_t op;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
} rt_op_t;

static void rt_run(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  rt_op_t *o = (rt_op_t *)op;
  pthread_mutex_lock(&o->mu);
  o->done = 1;
  pthread_cond_signal(&o->cv);
  pthread_mutex_unlock(&o->mu);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void test_round_trip_latency(void **state) {
  (void)state;
  int n = (int)(5000 * rh_scale());
  if (n < 200) n = 200;
  bw__reactor_t *r = new_reactor(true);
  rt_op_t o;
  memset(&o, 0, sizeof o);
  o.op.fn = rt_run;
  pthread_mutex_init(&o.mu, NULL);
  pthread_cond_init(&o.cv, NULL);
  uint64_t *lat = bw__malloc((size_t)n * sizeof *lat);
  assert_non_null(lat);
  for (int i = 0; i < n; i++) {
    o.done = 0;
    uint64_t t0 = now_ns();
    assert_int_equal(bw__reactor_post(r, &o.op), 0);
    pthread_mutex_lock(&o.mu);
    while (!o.done) pthread_cond_wait(&o.cv, &o.mu);
    pthread_mutex_unlock(&o.mu);
    lat[i] = now_ns() - t0;
  }
  qsort(lat, (size_t)n, sizeof *lat, cmp_u64);
  printf("# reactor round trip (post -> loop -> cond wake) over %d: p50 %.1f us, p99 %.1f us\n",
         n, (double)lat[n / 2] / 1000.0, (double)lat[n * 99 / 100] / 1000.0);
  bw__reactor_free(r);
  pthread_mutex_destroy(&o.mu);
  pthread_cond_destroy(&o.cv);
  bw__free(lat);
}

static void test_bad_args(void **state) {
  (void)state;
  assert_int_equal(bw__reactor_new(NULL, NULL), -EINVAL);
  bw__reactor_t *r = NULL;
  assert_int_equal(bw__reactor_new(&r, NULL), 0); /* caller-driven by default */
  assert_true(bw__reactor_in_loop(r));           /* creator is bound */
  bw__reactor_free(r);
  bw__reactor_free(NULL);
}

static void noop_hook(void *arg, uv_loop_t *loop) {
  (void)arg;
  (void)loop;
}

static void test_out_of_memory(void **state) {
  (void)state;
  bw__reactor_t *r = NULL;
  rh_use_failing_allocator(0);
  assert_int_equal(bw__reactor_new(&r, NULL), -ENOMEM);
  assert_null(r);
  rh_restore_allocator();
  r = new_reactor(true);
  rh_use_failing_allocator(0);
  assert_int_equal(bw__reactor_add_close_hook(r, noop_hook, NULL), -ENOMEM);
  rh_restore_allocator();
  assert_false(bw__reactor_remove_close_hook(r, noop_hook, NULL));
  bw__reactor_free(r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tcp_echo),
      cmocka_unit_test(test_many_ops_four_threads),
      cmocka_unit_test(test_coalesce_caller_driven),
      cmocka_unit_test(test_post_from_loop_thread),
      cmocka_unit_test(test_caller_driven_turn),
      cmocka_unit_test(test_bounded_turn_after_pause),
      cmocka_unit_test(test_shutdown_pending_ops),
      cmocka_unit_test(test_round_trip_latency),
      cmocka_unit_test(test_bad_args),
      cmocka_unit_test(test_out_of_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
