/* Redis client on the reactor (see include/bulwark/redis.h).
 *
 * Design notes
 * - Threads. The connection state machine, the deadline scan and every
 *   uv call run on the reactor's loop thread. Other threads reach it with
 *   reactor ops: each request is its own op (intrusive, no allocation beyond
 *   the request itself), and the client has ops for its timer tick, connect,
 *   close and write kick. The hiredis context and the in-flight list are
 *   guarded by `io_mu`, which the loop holds for each op and each glue
 *   callback (loop_enter/loop_leave), so one more thread may use them: the
 *   worker running a delivery batch (below). No callback into user or
 *   service code runs with io_mu held: loop-side completions are batched
 *   and handed over after the unlock.
 * - A request is one allocation: the struct plus the command already
 *   formatted as RESP on the submitting thread (binary-safe, the loop only
 *   appends it to hiredis's buffer). Its `done` flag is the single point of
 *   completion: the reply callback (loop), the deadline scan (loop), a
 *   cancel (any thread) and the close path race for it with a CAS; the
 *   winner owns the result and delivers it once. A loser's reply is
 *   dropped; hiredis frees its own reply object after our callback.
 * - Delivery: completions on the loop (one read's replies, a deadline scan,
 *   a close) are collected while io_mu is held and passed to a worker in
 *   ONE deferral (bw__runtime_defer), so 64 pipelined replies cost one
 *   wake-up, not 64. Cancels on other threads deliver one by one.
 *   Measured on 2 cores: 22% -> ~90% of raw hiredis throughput, together
 *   with the glue's write coalescing.
 * - Direct writes. Commands submitted from the callbacks of a delivery
 *   batch (the usual "reply came, send the next one" loop) are held on
 *   that thread (tl_holder) and, when the batch's last callback returned,
 *   queued into hiredis and written to the socket by that worker itself
 *   under io_mu, in one write(2): the loop thread is not woken to do it.
 *   On the 2-core bench VM that halves the loop thread's context switches
 *   (one wake-up per round trip instead of two) and cuts ~15% of the
 *   client's CPU per command. Only when the connection is READY, io_mu is
 *   free (trylock: a loop busy with the socket is awake anyway) and none
 *   of this client's posted requests is still queued (`posted`, so one
 *   thread's commands keep their order); else the held requests are posted
 *   as usual. A partial write or a write error is handed to the loop with
 *   the kick op; hiredis's buffer keeps the byte order either way.
 *   Once HELD_WRITE_AT commands are held, they are written between two
 *   callbacks of the batch instead of at its end: redis-server starts on
 *   them while this worker runs the rest of the batch, where holding all
 *   of them made the two sides take turns. On the bench VM (64 in flight)
 *   that took redis_stack from ~86% to ~175% of redis_raw; writing after
 *   every command (a write(2) each) fell to ~55%, every 4 gave ~145%,
 *   every 32 ~118%. So a command waits for at most HELD_WRITE_AT - 1
 *   later callbacks of its batch.
 * - Request references: one for delivery (dropped after done() ran), one for
 *   the loop (dropped when hiredis gave its callback, or when the loop
 *   rejected it), optional ones for holders (the service's call state).
 *   Each request holds a client reference, so the client outlives them.
 * - Timers. One bw_timer_t per client ("tick"), armed from the loop at the
 *   earliest of: connect deadline, reconnect time, earliest request
 *   deadline. Its callback only queues the tick op (holding a client ref);
 *   the op does the work on the loop and re-arms. A fire re-arms at most
 *   once, so the scan is O(in flight) per deadline event, never per command.
 *   Using the runtime's timers (not uv timers) makes timeouts follow a
 *   paused clock.
 * - Connection lifecycle: start_connect queues AUTH and SELECT before
 *   attaching the glue (redis_uv.c), so they go first. User commands
 *   submitted while CONNECTING do not pipeline behind them: a command
 *   behind a failing SELECT would run in db 0 (a failing AUTH: as the
 *   default user), yet fail as "not connected", which is retryable. They
 *   wait on the in-flight list (`waiting`, counted in in_flight, scanned
 *   for deadlines) and go to hiredis in order at READY (flush_waiting), or
 *   fail with BW_ERR_CONNECT, never sent, when the connect fails or the
 *   client closes (fail_waiting). conn_lost() runs once per context (c->ac
 *   is the token) and moves to BACKOFF with a doubling delay. hiredis
 *   gives pending callbacks a NULL reply before its disconnect callback;
 *   the NULL is classified as a protocol error (unparsable reply), a
 *   transport error (the context was READY) or a connect error.
 * - Error details: hiredis's ac->err is an error TYPE (REDIS_ERR_IO...),
 *   not an errno; the errno of a failed read/write is noted at hiredis's
 *   first callback for the failure (note_errno), of a failed synchronous
 *   connect right after redisAsyncConnect*.
 * - Runtime shut down: a command the reactor refuses on the submitting
 *   thread is taken back (bw__redis_submit returns BW_ERR_RUNTIME_SHUTDOWN,
 *   the callback never runs), unless a cancel finished it first. A held
 *   command refused later is completed by the batch's worker as usual.
 * - Shutdown order (bw_redis_free): queue the close op (loop: CLOSED, free
 *   the context, in-flight commands complete CANCELLED, cancel the tick),
 *   wait until only the caller's client reference is left, free the tick
 *   timer (bw_timer_free waits for a running callback), wait again (a tick
 *   op queued by that callback holds a reference), free. If the runtime's
 *   reactor closes first, its on_close hook runs the same close on the loop;
 *   otherwise the close op removes the hook (bw__reactor_off_close).
 * - Secrets: the password is only ever formatted into the AUTH command
 *   buffer (wiped after hiredis copied it) and scrubbed from server text.
 * - Reply size limit (max_reply_bytes). hiredis 0.14 has none (its
 *   reader's maxbuf only trims an idle buffer), so we measure the reply
 *   being received, in wire bytes, at two points, both on the loop under
 *   io_mu: (1) each object hiredis's reader makes goes through our
 *   reply-object functions (reader->fn, wrapping hiredis's own), which add
 *   its RESP size to reply_bytes (reset at each top-level object) and
 *   return NULL past the cap: the reader fails as on OOM, hiredis drops
 *   the connection and gives every pending callback NULL. That catches a
 *   reply that arrived whole in one read and an array of many small
 *   elements, which the reader consumes element by element, so its buffer
 *   stays small. (2) After every glue callback (on_glue, so after each read
 *   of at most 16 KiB and the parsing of what it completed) the bytes still
 *   unparsed in the reader (len - pos: only the incomplete reply, e.g. a
 *   bulk string that hiredis waits to have whole) plus the parsed part of
 *   an array in progress (reply_bytes, while reader->reply is set) are
 *   checked; past the cap we close the context ourselves. So a reply never
 *   holds more than the cap plus one read. Either way the stream cannot be
 *   resynchronised (the rest of the reply is still coming), so the
 *   connection goes (conn_lost, reconnect with backoff) and every pending
 *   command fails with BW_ERR_TOO_LARGE (too_large_ac marks the context).
 *   Counting the complete parts (not just len - pos) also keeps a pipeline
 *   of many small replies read at once from counting as one big reply.
 * - Handshake errors. An AUTH/SELECT error reply that says "try again"
 *   (LOADING, BUSY...) is a connect failure like any other (BW_ERR_CONNECT,
 *   retryable). Any other one is a refusal (wrong password, db out of
 *   range): the last error becomes BW_ERR_REDIS with BW_REDIS_HANDSHAKE in
 *   its detail, and the commands it fails (waiting ones, and those issued
 *   in BACKOFF) keep that kind, so neither bw_redis_error_is_retryable, nor
 *   bw_retry_default_predicate (which stops at the first meaningful kind),
 *   nor a config retry_on list (which looks at every link) retries a
 *   refusal: no BW_ERR_CONNECT link anywhere in the chain. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clients/redis_internal.h"
#include "clients/redis_uv.h"
#include "core/alloc.h"
#include "runtime/internal.h"

#define CLIENT_MAGIC 0x52454453u /* "REDS" */

struct bw__redis_req {
  bw__reactor_op_t op;
  bw__redis_req_t *prev, *next; /* in-flight list (io_mu) */
  bw__redis_req_t *batch_next;  /* completions handed over together */
  bw__redis_req_t *held_next;   /* held by a delivery batch's thread */
  bw_redis_t *client;
  atomic_int done;
  atomic_int refs;
  uint64_t deadline_ns;
  bool direct;
  bool undelivered; /* finished inside bw__redis_submit, not delivered */
  bool waiting;     /* on the in-flight list, held back until READY (io_mu) */
  bw__redis_done_fn fn;
  void *fn_arg;
  _Atomic(bw_cancel_reg_t *) reg;
  bw_redis_reply_t *reply; /* result, written by the winner before delivery */
  bw_error_t *err;
  size_t cmd_len;
  char cmd[];
};

typedef struct hook_box {
  bw_redis_t *client; /* NULL once the client closed itself; loop only */
} hook_box_t;

struct bw_redis {
  uint32_t magic;
  bw_runtime_t *rt;
  /* configuration, immutable */
  char *host, *unix_path, *username, *password;
  int port, db;
  uint32_t connect_timeout_ms, command_timeout_ms, reconnect_min_ms, reconnect_max_ms;
  uint32_t max_in_flight;
  size_t max_reply_bytes;

  atomic_int refs;    /* user + requests + queued ops */
  atomic_int state;   /* bw_redis_state_t, written on the loop */
  atomic_bool freeing;
  pthread_mutex_t mu; /* only for the free() wait */
  pthread_cond_t cv;

  /* under io_mu: the loop holds it for every op and glue callback; a
   * worker takes it for a direct write (design notes). Lock order: io_mu,
   * then the runtime's and the reactor's locks; never the other way. */
  pthread_mutex_t io_mu;
  atomic_int posted; /* requests posted to the loop and not yet taken */
  redisAsyncContext *ac;
  bool ac_ready;           /* current context finished its handshake */
  const redisAsyncContext *io_errno_ac; /* the context io_errno belongs to */
  int io_errno;            /* errno of that context's I/O failure, or 0 */
  int handshake_left;      /* AUTH/SELECT replies still expected */
  bool handshake_auth;     /* the next handshake reply answers AUTH */
  bw_error_t *handshake_err;
  /* reply size limit (design notes) */
  redisReplyObjectFunctions *hiredis_fns; /* hiredis's own, ours wrap them */
  size_t reply_bytes;                     /* wire bytes of the reply being parsed */
  const redisAsyncContext *too_large_ac;  /* closed for an oversized reply */
  bw_error_t *last_err;    /* why the last connect failed / was lost */
  bool clock_held;         /* a TCP connect is in flight: the paused clock waits */
  uint64_t connect_deadline_ns, reconnect_at_ns, tick_at_ns;
  uint32_t backoff_ms;
  bw__redis_req_t *head, *tail;
  bw__redis_req_t *batch_head, *batch_tail; /* completions to hand over together */
  bool batching;
  uint64_t in_flight;
  bool closing;
  hook_box_t *box;

  bw_timer_t *tick;
  atomic_bool tick_queued;
  bw__reactor_op_t tick_op;
  bw__reactor_op_t close_op;
  bw__reactor_op_t connect_op;
  atomic_bool kick_queued;
  bw__reactor_op_t kick_op;

  /* counters (relaxed) */
  atomic_uint_fast64_t n_connects, n_connect_failures, n_disconnects, n_commands, n_replies,
      n_errors, n_timeouts, n_late, n_fail_fast, n_in_flight, n_held_via_loop;
};

static void client_unref(bw_redis_t *c);
static void start_connect(bw_redis_t *c);
static void schedule_tick(bw_redis_t *c, uint64_t at_ns);

#define STAT_INC(c, f) atomic_fetch_add_explicit(&(c)->f, 1, memory_order_relaxed)

static uint64_t now_ns(bw_redis_t *c) { return bw_runtime_now_ns(c->rt); }

/* "host:port" or "unix:path", for error messages. */
static void server_name(const bw_redis_t *c, char *buf, size_t cap) {
  if (c->unix_path)
    snprintf(buf, cap, "unix:%s", c->unix_path);
  else
    snprintf(buf, cap, "%s:%d", c->host, c->port);
}

static void set_state(bw_redis_t *c, bw_redis_state_t s) {
  atomic_store_explicit(&c->state, (int)s, memory_order_relaxed);
}

/* ---- RESP formatting ------------------------------------------------------ */

static size_t digits(size_t v) {
  size_t n = 1;
  while (v >= 10) {
    v /= 10;
    n++;
  }
  return n;
}

static size_t resp_size(int argc, const char *const *argv, const size_t *lens) {
  size_t n = 1 + digits((size_t)argc) + 2;
  for (int i = 0; i < argc; i++) {
    size_t l = lens ? lens[i] : strlen(argv[i]);
    n += 1 + digits(l) + 2 + l + 2;
  }
  return n;
}

static char *put_uint(char *p, size_t v) {
  size_t n = digits(v);
  for (size_t i = n; i > 0; i--) {
    p[i - 1] = (char)('0' + v % 10);
    v /= 10;
  }
  return p + n;
}

/* Hand-rolled (no printf): this runs once per command on the caller. */
static size_t resp_write(char *out, int argc, const char *const *argv, const size_t *lens) {
  char *p = out;
  *p++ = '*';
  p = put_uint(p, (size_t)argc);
  *p++ = '\r';
  *p++ = '\n';
  for (int i = 0; i < argc; i++) {
    size_t l = lens ? lens[i] : strlen(argv[i]);
    *p++ = '$';
    p = put_uint(p, l);
    *p++ = '\r';
    *p++ = '\n';
    if (l) memcpy(p, argv[i], l);
    p += l;
    *p++ = '\r';
    *p++ = '\n';
  }
  return (size_t)(p - out);
}

/* ---- Requests ------------------------------------------------------------- */

static void req_unref(bw__redis_req_t *r) {
  /* acq_rel: the last owner sees every write of the others */
  if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) != 1) return;
  bw_redis_t *c = r->client;
  bw_redis_reply_free(r->reply);
  bw_error_unref(r->err);
  bw__free(r);
  client_unref(c);
}

void bw__redis_req_release(bw__redis_req_t *r) {
  if (r) req_unref(r);
}

static void deliver(void *arg) {
  bw__redis_req_t *r = arg;
  bw_redis_reply_t *reply = r->reply;
  bw_error_t *err = r->err;
  r->reply = NULL;
  r->err = NULL;
  r->fn(reply, err, r->fn_arg);
  req_unref(r);
}

/* The delivery batch running on this thread (if any): submissions to its
 * client are held here and written when the batch ends (design notes). */
typedef struct holder {
  bw_redis_t *client;
  bw__redis_req_t *head, *tail;
  unsigned n; /* held now */
} holder_t;
static BW__TLS holder_t *tl_holder;

/* Held commands written before the batch ends (design notes). */
#define HELD_WRITE_AT 16u

static void write_held(bw_redis_t *c, bw__redis_req_t *list);

/* Each held request holds a client reference, so the client is alive
 * whenever the list is not empty. */
static void write_holder(holder_t *h) {
  bw__redis_req_t *list = h->head;
  h->head = h->tail = NULL;
  h->n = 0;
  write_held(list->client, list);
}

static void deliver_batch(void *arg) {
  bw__redis_req_t *first = arg;
  holder_t h = {first->client, NULL, NULL, 0}, *outer = tl_holder;
  tl_holder = &h;
  for (bw__redis_req_t *r = first, *nx; r; r = nx) {
    nx = r->batch_next;
    r->batch_next = NULL;
    deliver(r);
    if (h.n >= HELD_WRITE_AT && nx) write_holder(&h);
  }
  /* A completion write_held runs on this thread (a post refused at
   * shutdown) may submit again: loop until nothing is held. (Its refusals
   * are delivered by a nested batch with its own holder.) */
  while (h.head) write_holder(&h);
  tl_holder = outer;
}

/* Hand every completion collected under io_mu to a worker in one deferral
 * (one wake-up instead of one per reply). io_mu not held. */
static void flush_batch(bw__redis_req_t *head) {
  if (!head) return;
  if (bw__runtime_defer(head->client->rt, deliver_batch, head) != 0) deliver_batch(head);
}

/* Every loop-side entry (ops, glue callbacks, the reactor's close hook)
 * runs between these two: io_mu held, completions batched. */
static void loop_enter(bw_redis_t *c) {
  pthread_mutex_lock(&c->io_mu);
  c->batching = true;
}

static void loop_leave(bw_redis_t *c) {
  bw__redis_req_t *head = c->batch_head;
  c->batch_head = c->batch_tail = NULL;
  c->batching = false;
  pthread_mutex_unlock(&c->io_mu);
  flush_batch(head);
}

static void check_reply_size(bw_redis_t *c);

static void on_glue(void *arg, bool begin) {
  bw_redis_t *c = arg;
  if (begin) {
    loop_enter(c);
    return;
  }
  check_reply_size(c); /* after a read: the reply in progress (design notes) */
  loop_leave(c);
}

/* The request bw__redis_submit is registering on this thread: completed
 * here, it is deferred to a worker or, if the runtime refuses, left to
 * bw__redis_submit to refuse the call (never delivered inline). */
static BW__TLS bw__redis_req_t *tl_submitting;

/* The one completion point. Consumes reply and err. `batch`: called with
 * io_mu held by loop_enter (joins the batch handed over at loop_leave). */
static bool complete_ex(bw__redis_req_t *r, bw_redis_reply_t *reply, bw_error_t *err,
                        bool batch) {
  int expect = 0;
  /* seq_cst: pairs with the reg publication in bw__redis_submit */
  if (!atomic_compare_exchange_strong(&r->done, &expect, 1)) {
    bw_redis_reply_free(reply);
    bw_error_unref(err);
    return false;
  }
  bw_redis_t *c = r->client;
  if (err) {
    STAT_INC(c, n_errors);
    if (bw_error_kind(err) == BW_ERR_TIMEOUT) STAT_INC(c, n_timeouts);
  } else {
    STAT_INC(c, n_replies);
  }
  bw_cancel_reg_t *reg = atomic_exchange(&r->reg, NULL);
  if (reg) bw_cancel_reg_remove(reg);
  r->reply = reply;
  r->err = err;
  if (batch && c->batching) {
    r->batch_next = NULL; /* a timed-out r is still on the in-flight list */
    if (c->batch_tail)
      c->batch_tail->batch_next = r;
    else
      c->batch_head = r;
    c->batch_tail = r;
  } else if (r == tl_submitting) {
    if (bw__runtime_defer(c->rt, deliver, r) != 0) r->undelivered = true; /* submit refuses */
  } else if (r->direct || bw__runtime_defer(c->rt, deliver, r) != 0) {
    deliver(r);
  }
  return true;
}

static bool complete(bw__redis_req_t *r, bw_redis_reply_t *reply, bw_error_t *err) {
  return complete_ex(r, reply, err, false);
}

void bw__redis_req_cancel(bw__redis_req_t *r, bw_error_t *reason) {
  if (atomic_load(&r->done)) {
    bw_error_unref(reason);
    return;
  }
  complete(r, NULL, reason ? reason : bw_error_new(BW_ERR_CANCELLED, 0, "redis command cancelled"));
}

static void on_token_cancel(void *arg) { bw__redis_req_cancel(arg, NULL); }

static void list_remove(bw_redis_t *c, bw__redis_req_t *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    c->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    c->tail = r->prev;
  r->prev = r->next = NULL;
}

/* A command failing, never sent, because the connection failed or is not
 * there, over the reason (`cause`, consumed): BW_ERR_CONNECT (retryable),
 * except over a refused handshake, whose kind and detail it keeps (not
 * retryable; design notes). */
static bw_error_t *not_sent_error(bw_error_t *cause, const char *msg) {
  bw_error_kind_t ck = bw_error_kind(cause); /* BW_ERR_NONE for NULL */
  if (ck == BW_ERR_REDIS && (bw_error_detail(cause) & BW_REDIS_HANDSHAKE))
    return bw_error_wrap(cause, BW_ERR_REDIS, bw_error_detail(cause), "%s", msg);
  /* detail: the errno of a failed connect or read/write, else 0 (redis.h) */
  int64_t errno_detail =
      ck == BW_ERR_CONNECT || ck == BW_ERR_TRANSPORT ? bw_error_detail(cause) : 0;
  return bw_error_wrap(cause, BW_ERR_CONNECT, errno_detail, "%s", msg);
}

static bw_error_t *not_connected_error(bw_redis_t *c) {
  bw_error_t *cause = bw_error_ref(c->last_err);
  if (c->closing) return bw_error_wrap(cause, BW_ERR_CANCELLED, 0, "redis client closed");
  return not_sent_error(cause, "redis not connected (reconnecting)");
}

static bw_error_t *too_large_error(bw_redis_t *c) {
  char where[200];
  server_name(c, where, sizeof where);
  return bw_error_new(BW_ERR_TOO_LARGE, (int64_t)c->max_reply_bytes,
                      "redis %s: reply larger than max_reply_bytes (%zu bytes); connection closed",
                      where, c->max_reply_bytes);
}

/* The errno of ac's failure. hiredis keeps only its text (ac->err is the
 * error's type, REDIS_ERR_IO, not an errno), but errno still holds it when
 * hiredis first calls us back for the failure (the NULL replies, then the
 * disconnect callback; the glue's cleanup hook preserves errno): note it
 * then, before anything else can change errno. A direct writer notes it
 * right after its failed write (write_held). */
static void note_errno(bw_redis_t *c, const redisAsyncContext *ac) {
  int e = errno;
  if (c->io_errno_ac == ac) return;
  c->io_errno_ac = ac;
  c->io_errno = ac->err == REDIS_ERR_IO ? e : 0;
}

/* The error a broken context (ac->err set) gives: BW_ERR_PROTOCOL for an
 * unparsable reply, else BW_ERR_TRANSPORT with the errno noted for it. */
static bw_error_t *ctx_error(bw_redis_t *c, const redisAsyncContext *ac, const char *what) {
  char where[200];
  server_name(c, where, sizeof where);
  if (ac->err == REDIS_ERR_PROTOCOL)
    return bw_error_new(BW_ERR_PROTOCOL, 0, "redis %s: protocol error%s (%s)", where, what,
                        ac->errstr ? ac->errstr : "unparsable reply");
  return bw_error_new(BW_ERR_TRANSPORT, c->io_errno_ac == ac ? c->io_errno : 0,
                      "redis connection to %s lost%s (%s)", where, what,
                      ac->errstr && ac->errstr[0] ? ac->errstr : "closed by server");
}

static void on_reply(redisAsyncContext *ac, void *rv, void *priv) {
  bw__redis_req_t *r = priv;
  bw_redis_t *c = r->client;
  redisReply *reply = rv;
  if (!reply) note_errno(c, ac);
  list_remove(c, r);
  c->in_flight--;
  atomic_store_explicit(&c->n_in_flight, c->in_flight, memory_order_relaxed);
  if (atomic_load_explicit(&r->done, memory_order_acquire)) {
    if (reply) STAT_INC(c, n_late);
    req_unref(r);
    return;
  }
  if (!reply) {
    bw_error_t *e;
    if (c->closing) {
      e = bw_error_new(BW_ERR_CANCELLED, 0, "redis client closed");
    } else if (ac == c->too_large_ac) {
      e = too_large_error(c);
    } else if (ac->err == REDIS_ERR_PROTOCOL || (ac->c.flags & REDIS_CONNECTED && c->ac_ready)) {
      e = ctx_error(c, ac, " with the command in flight");
    } else {
      e = not_connected_error(c);
    }
    complete_ex(r, NULL, e, true);
  } else if (reply->type == REDIS_REPLY_ERROR) {
    complete_ex(r, NULL, bw__redis_error_from_reply(reply->str, reply->len, c->password), true);
  } else {
    bw_redis_reply_t *copy = bw__redis_reply_copy(reply);
    complete_ex(r, copy, copy ? NULL : bw_error_static(BW_ERR_OUT_OF_MEMORY), true);
  }
  req_unref(r); /* a batched request keeps its delivery reference */
}

/* io_mu held, any thread: queue r into hiredis behind everything queued
 * before. Returns NULL, or the error to complete r with (r not queued).
 * *now: the clock, read here once for a whole batch (0: not yet). */
static bw_error_t *enqueue_locked(bw_redis_t *c, bw__redis_req_t *r, uint64_t *now) {
  bw_redis_state_t st = (bw_redis_state_t)atomic_load_explicit(&c->state, memory_order_relaxed);
  if (!c->ac || (st != BW_REDIS_READY && st != BW_REDIS_CONNECTING)) {
    STAT_INC(c, n_fail_fast);
    return not_connected_error(c);
  }
  if (c->in_flight >= c->max_in_flight)
    return bw_error_new(BW_ERR_UNAVAILABLE, 0, "redis: too many commands in flight (%u)",
                        c->max_in_flight);
  if (r->deadline_ns && !*now) *now = now_ns(c);
  if (r->deadline_ns && r->deadline_ns <= *now)
    return bw_error_new(BW_ERR_TIMEOUT, 0, "redis: deadline passed before sending");
  /* Until the handshake succeeded, commands wait here (flush_waiting): a
   * command pipelined behind a failing AUTH/SELECT could run anyway, as
   * another user or in the wrong db. */
  if (!c->ac_ready)
    r->waiting = true;
  else if (redisAsyncFormattedCommand(c->ac, on_reply, r, r->cmd, r->cmd_len) != REDIS_OK)
    return not_connected_error(c);
  r->prev = c->tail;
  r->next = NULL;
  if (c->tail)
    c->tail->next = r;
  else
    c->head = r;
  c->tail = r;
  c->in_flight++;
  atomic_store_explicit(&c->n_in_flight, c->in_flight, memory_order_relaxed);
  if (r->deadline_ns) schedule_tick(c, r->deadline_ns);
  return NULL; /* the loop reference now belongs to hiredis's callback */
}

/* Loop: a request arrives. */
static void submit_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  bw__redis_req_t *r = (bw__redis_req_t *)op;
  bw_redis_t *c = r->client;
  loop_enter(c);
  bool queued = false;
  if (!atomic_load_explicit(&r->done, memory_order_acquire)) {
    uint64_t now = 0;
    bw_error_t *e = enqueue_locked(c, r, &now);
    if (e)
      complete_ex(r, NULL, e, true);
    else
      queued = true;
  }
  /* under io_mu and after the enqueue: a direct writer that sees 0 knows
   * every posted request is already in hiredis (keeps a thread's order) */
  atomic_fetch_sub_explicit(&c->posted, 1, memory_order_relaxed);
  loop_leave(c);
  if (!queued) req_unref(r); /* the loop's reference; c may go with it */
}

/* Post r to the loop (its op), or finish it if the runtime is gone. */
static void post_one(bw_redis_t *c, bw__redis_req_t *r) {
  atomic_fetch_add_explicit(&c->posted, 1, memory_order_relaxed);
  if (bw__reactor_submit(c->rt, &r->op) != 0) {
    atomic_fetch_sub_explicit(&c->posted, 1, memory_order_relaxed);
    complete(r, NULL, bw_error_static(BW_ERR_RUNTIME_SHUTDOWN));
    req_unref(r); /* the loop's reference */
  }
}

static void queue_kick(bw_redis_t *c);

/* End of a delivery batch, on its worker: queue the requests its callbacks
 * submitted and write them to the socket here (design notes), or post them
 * to the loop when that is not possible right now. */
static void write_held(bw_redis_t *c, bw__redis_req_t *list) {
  if (pthread_mutex_trylock(&c->io_mu) == 0) {
    redisAsyncContext *ac = c->ac;
    bw_redis_state_t st = (bw_redis_state_t)atomic_load_explicit(&c->state, memory_order_relaxed);
    if (ac && c->ac_ready && !c->closing && st == BW_REDIS_READY &&
        atomic_load_explicit(&c->posted, memory_order_relaxed) == 0) {
      bw__redis_req_t *drop = NULL;
      uint64_t now = 0;
      c->batching = true; /* rejections: delivered below, after the unlock */
      bw__redis_uv_external(ac, true);
      for (bw__redis_req_t *r = list, *nx; r; r = nx) {
        nx = r->held_next;
        r->held_next = NULL;
        bw_error_t *e = NULL;
        if (atomic_load_explicit(&r->done, memory_order_acquire) || (e = enqueue_locked(c, r, &now))) {
          if (e) complete_ex(r, NULL, e, true);
          r->held_next = drop;
          drop = r;
        }
      }
      bw__redis_uv_external(ac, false);
      /* A partial write or an error goes to the loop. Queued while io_mu
       * still pins c (the requests just queued hold references that only
       * the loop, under io_mu, can drop). */
      int wr = bw__redis_uv_write_now(ac);
      if (wr < 0) note_errno(c, ac); /* before anything changes errno */
      if (wr != 0) {
        queue_kick(c);
        STAT_INC(c, n_held_via_loop);
      }
      bw__redis_req_t *rejected = c->batch_head;
      c->batch_head = c->batch_tail = NULL;
      c->batching = false;
      pthread_mutex_unlock(&c->io_mu);
      if (rejected) deliver_batch(rejected);
      for (bw__redis_req_t *r = drop, *nx; r; r = nx) {
        nx = r->held_next;
        r->held_next = NULL;
        req_unref(r); /* the loop's reference */
      }
      return;
    }
    pthread_mutex_unlock(&c->io_mu);
  }
  for (bw__redis_req_t *r = list, *nx; r; r = nx) {
    nx = r->held_next;
    r->held_next = NULL;
    STAT_INC(c, n_held_via_loop);
    post_one(c, r);
  }
}

/* bw__redis_submit refuses r after all (the runtime shut down): r is done
 * (this thread won it) and was never delivered; free it and every
 * reference, and return the error for the caller. */
static bw_error_t *take_back(bw_redis_t *c, bw__redis_req_t *r, bw__redis_req_t **hold) {
  bw_cancel_reg_t *reg = atomic_exchange(&r->reg, NULL);
  if (reg) bw_cancel_reg_remove(reg); /* waits for a cancel callback running now */
  if (hold) *hold = NULL;
  atomic_fetch_sub_explicit(&c->n_commands, 1, memory_order_relaxed);
  if (r->undelivered) { /* complete_ex counted it */
    if (r->err)
      atomic_fetch_sub_explicit(&c->n_errors, 1, memory_order_relaxed);
    else
      atomic_fetch_sub_explicit(&c->n_replies, 1, memory_order_relaxed);
  }
  bw_redis_reply_free(r->reply);
  bw_error_unref(r->err);
  bw__free(r);
  char where[200];
  server_name(c, where, sizeof where);
  bw_error_t *e = bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0,
                               "redis %s: runtime shut down, command not sent", where);
  client_unref(c);
  return e;
}

bw_error_t *bw__redis_submit(bw_redis_t *c, int argc, const char *const *argv,
                             const size_t *argvlen, uint64_t deadline_ns, bw_cancel_token_t *cancel,
                             bool direct, bw__redis_done_fn done, void *arg, bw__redis_req_t **hold) {
  if (!c || c->magic != CLIENT_MAGIC || argc <= 0 || !argv || !done)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_command: bad arguments");
  for (int i = 0; i < argc; i++)
    if (!argv[i] && !(argvlen && argvlen[i] == 0))
      return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_command: NULL argument %d", i);
  size_t len = resp_size(argc, argv, argvlen);
  bw__redis_req_t *r = bw__malloc(sizeof *r + len + 1);
  if (!r) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  memset(r, 0, sizeof *r);
  r->cmd_len = resp_write(r->cmd, argc, argv, argvlen);
  r->cmd[r->cmd_len] = '\0'; /* hiredis scans the command name with str* calls */
  r->op.fn = submit_on_loop;
  r->client = c;
  atomic_init(&r->done, 0);
  atomic_init(&r->refs, 2 + (hold ? 1 : 0)); /* delivery + loop (+ holder) */
  atomic_init(&r->reg, NULL);
  uint64_t dl = deadline_ns;
  if (c->command_timeout_ms) {
    uint64_t t = now_ns(c) + (uint64_t)c->command_timeout_ms * 1000000u;
    if (!dl || t < dl) dl = t;
  }
  r->deadline_ns = dl;
  r->direct = direct;
  r->fn = done;
  r->fn_arg = arg;
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  STAT_INC(c, n_commands);
  if (hold) *hold = r;
  if (cancel) {
    bw_cancel_reg_t *reg = NULL;
    tl_submitting = r; /* a completion here must not deliver inline */
    bw_error_t *e = bw_cancel_token_on_cancel(cancel, on_token_cancel, r, &reg);
    if (e) {
      complete(r, NULL, e);
    } else if (reg) {
      atomic_store(&r->reg, reg); /* seq_cst: pairs with complete()'s CAS */
      if (atomic_load(&r->done)) {
        reg = atomic_exchange(&r->reg, NULL);
        if (reg) bw_cancel_reg_remove(reg);
      }
    }
    tl_submitting = NULL;
    /* Finished at once (token already cancelled, registration failed) and
     * the runtime could not take the delivery: refuse the call instead. */
    if (r->undelivered) return take_back(c, r, hold);
  }
  holder_t *h = tl_holder;
  if (h && h->client == c) { /* written when the delivery batch ends */
    if (h->tail)
      h->tail->held_next = r;
    else
      h->head = r;
    h->tail = r;
    h->n++;
    return NULL;
  }
  atomic_fetch_add_explicit(&c->posted, 1, memory_order_relaxed);
  if (bw__reactor_submit(c->rt, &r->op) == 0) return NULL;
  atomic_fetch_sub_explicit(&c->posted, 1, memory_order_relaxed);
  /* Refused here, on the submitting thread (the runtime shut down): the
   * callback must not run inside bw_redis_command (redis.h). Take the
   * request back unless a cancel already finished it (then its callback
   * runs, or ran, elsewhere, and the call was accepted). */
  int expect = 0;
  if (!atomic_compare_exchange_strong(&r->done, &expect, 1)) {
    req_unref(r); /* the loop's reference */
    return NULL;
  }
  return take_back(c, r, hold);
}

/* ---- Public callback API -------------------------------------------------- */

typedef struct user_cb {
  bw_redis_cb cb;
  void *arg;
} user_cb_t;

static void user_done(bw_redis_reply_t *reply, bw_error_t *err, void *arg) {
  user_cb_t u = *(user_cb_t *)arg;
  bw__free(arg);
  u.cb(reply, err, u.arg);
  bw_error_unref(err);
}

bw_error_t *bw_redis_command(bw_redis_t *r, int argc, const char *const *argv,
                             const size_t *argvlen, const bw_redis_cmd_opts_t *opts,
                             bw_redis_cb cb, void *arg) {
  if (!cb) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_command: NULL callback");
  user_cb_t *u = bw__malloc(sizeof *u);
  if (!u) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  u->cb = cb;
  u->arg = arg;
  bw_error_t *e = bw__redis_submit(r, argc, argv, argvlen, opts ? opts->deadline_ns : 0,
                                   opts ? opts->cancel : NULL, false, user_done, u, NULL);
  if (e) bw__free(u);
  return e;
}

/* ---- Timer tick ----------------------------------------------------------- */

static void tick_fired(bw_timer_t *t, void *arg) {
  (void)t;
  bw_redis_t *c = arg;
  if (atomic_exchange(&c->tick_queued, true)) return;
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  if (bw__reactor_submit(c->rt, &c->tick_op) != 0) {
    atomic_store(&c->tick_queued, false);
    client_unref(c);
  }
}

static void schedule_tick(bw_redis_t *c, uint64_t at_ns) {
  if (c->closing || !at_ns) return;
  if (c->tick_at_ns && c->tick_at_ns <= at_ns) return;
  c->tick_at_ns = at_ns;
  bw_error_t *e = bw_timer_arm(c->tick, at_ns);
  bw_error_unref(e);
}

static void conn_lost(bw_redis_t *c, bw_error_t *why);
static void drop_waiting(bw_redis_t *c, bw__redis_req_t *r);

static void tick_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  bw_redis_t *c = (bw_redis_t *)(void *)((char *)op - offsetof(bw_redis_t, tick_op));
  atomic_store(&c->tick_queued, false);
  loop_enter(c);
  c->tick_at_ns = 0;
  if (c->closing) {
    loop_leave(c);
    client_unref(c);
    return;
  }
  uint64_t now = now_ns(c);
  bw_redis_state_t st = (bw_redis_state_t)atomic_load_explicit(&c->state, memory_order_relaxed);
  if (st == BW_REDIS_CONNECTING && c->connect_deadline_ns && now >= c->connect_deadline_ns) {
    redisAsyncContext *ac = c->ac;
    bw_error_t *to = bw_error_new(BW_ERR_TIMEOUT, 0, "no connection within %u ms",
                                  c->connect_timeout_ms);
    conn_lost(c, bw_error_wrap(to, BW_ERR_CONNECT, ETIMEDOUT, "redis connect failed"));
    if (ac) redisAsyncFree(ac); /* pending commands: NULL -> connect error */
  } else if (st == BW_REDIS_BACKOFF && now >= c->reconnect_at_ns) {
    start_connect(c);
  }
  uint64_t next = 0;
  for (bw__redis_req_t *r = c->head, *nx; r; r = nx) {
    nx = r->next;
    if (!r->deadline_ns || atomic_load_explicit(&r->done, memory_order_acquire)) continue;
    if (r->deadline_ns <= now) {
      complete_ex(r, NULL, bw_error_new(BW_ERR_TIMEOUT, 0, "redis: no reply before the deadline"),
                  true);
      if (r->waiting) drop_waiting(c, r); /* never sent: nothing will come */
    } else if (!next || r->deadline_ns < next) {
      next = r->deadline_ns;
    }
  }
  st = (bw_redis_state_t)atomic_load_explicit(&c->state, memory_order_relaxed);
  if (st == BW_REDIS_CONNECTING) schedule_tick(c, c->connect_deadline_ns);
  if (st == BW_REDIS_BACKOFF) schedule_tick(c, c->reconnect_at_ns);
  schedule_tick(c, next);
  loop_leave(c);
  client_unref(c);
}

/* Loop: write what a direct writer left in hiredis's buffer, or let
 * hiredis see its write error (queue_kick). */
static void kick_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  bw_redis_t *c = (bw_redis_t *)(void *)((char *)op - offsetof(bw_redis_t, kick_op));
  atomic_store(&c->kick_queued, false);
  loop_enter(c);
  if (c->ac) bw__redis_uv_kick(c->ac);
  loop_leave(c);
  client_unref(c);
}

static void queue_kick(bw_redis_t *c) {
  if (atomic_exchange(&c->kick_queued, true)) return;
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  if (bw__reactor_submit(c->rt, &c->kick_op) != 0) {
    atomic_store(&c->kick_queued, false);
    client_unref(c);
  }
}

/* ---- Reply size limit (design notes) ---------------------------------------- */

/* A reader object of `wire` bytes is about to be made for the current
 * context: false when that takes the reply past the cap (io_mu held). */
static bool reply_grow(const redisReadTask *t, size_t wire) {
  bw_redis_t *c = t->privdata;
  if (!t->parent) c->reply_bytes = 0; /* a top-level object: a new reply */
  c->reply_bytes += wire;
  if (c->reply_bytes <= c->max_reply_bytes) return true;
  c->too_large_ac = c->ac; /* only the current context reads */
  return false;
}

static void *make_string(const redisReadTask *t, char *str, size_t len) {
  /* bulk "$<len>\r\n<data>\r\n"; status and error "+<text>\r\n" */
  size_t wire = t->type == REDIS_REPLY_STRING ? 1 + digits(len) + 2 + len + 2 : 1 + len + 2;
  if (!reply_grow(t, wire)) return NULL; /* the reader fails as on OOM */
  return ((bw_redis_t *)t->privdata)->hiredis_fns->createString(t, str, len);
}

static void *make_array(const redisReadTask *t, int elements) {
  if (!reply_grow(t, 1 + digits((size_t)elements) + 2)) return NULL; /* "*<n>\r\n" */
  return ((bw_redis_t *)t->privdata)->hiredis_fns->createArray(t, elements);
}

static void *make_integer(const redisReadTask *t, long long v) {
  unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  if (!reply_grow(t, 1 + (v < 0) + digits((size_t)u) + 2)) return NULL; /* ":<v>\r\n" */
  return ((bw_redis_t *)t->privdata)->hiredis_fns->createInteger(t, v);
}

static void *make_nil(const redisReadTask *t) {
  if (!reply_grow(t, 5)) return NULL; /* "$-1\r\n" or "*-1\r\n" */
  return ((bw_redis_t *)t->privdata)->hiredis_fns->createNil(t);
}

/* Installed in every context's reader (start_connect); the reader's
 * privdata is the client. hiredis frees replies with freeReplyObject, its
 * default freeObject. Never written. */
static redisReplyObjectFunctions counting_fns = {make_string, make_array, make_integer, make_nil,
                                                 freeReplyObject};

/* io_mu held, on the loop, after a glue callback: the reply being received
 * so far is the reader's unparsed bytes (all of them belong to it: hiredis
 * stops at the first incomplete object) plus, while a top-level array is
 * being filled (reader->reply set), the wire size of its parsed part. Past
 * the cap the connection goes (design notes). */
static void check_reply_size(bw_redis_t *c) {
  redisAsyncContext *ac = c->ac;
  if (!ac || c->closing) return;
  const redisReader *rd = ac->c.reader;
  size_t pending = rd->len - rd->pos;
  if (rd->reply && rd->fn == &counting_fns) pending += c->reply_bytes;
  if (pending <= c->max_reply_bytes) return;
  c->too_large_ac = ac;
  conn_lost(c, too_large_error(c));
  redisAsyncFree(ac); /* pending commands: NULL -> BW_ERR_TOO_LARGE (on_reply) */
}

/* ---- Connection ----------------------------------------------------------- */

/* A paused clock must not jump to the connect deadline while a TCP connect
 * (which finishes by itself) is in flight, or tests on the paused clock see
 * spurious connect timeouts. Held from the connect's start until the TCP
 * connect succeeds or fails, never across the AUTH/SELECT handshake (a
 * stopped server accepts TCP but never answers: the deadline must fire). */
static void hold_clock(bw_redis_t *c, bool hold) {
  if (c->clock_held == hold) return;
  c->clock_held = hold;
  if (hold)
    bw__runtime_clock_hold(c->rt);
  else
    bw__runtime_clock_release(c->rt);
}

/* io_mu held: take a waiting request (never given to hiredis) off the
 * in-flight list and drop the loop's reference. Completed already. */
static void drop_waiting(bw_redis_t *c, bw__redis_req_t *r) {
  r->waiting = false;
  list_remove(c, r);
  c->in_flight--;
  atomic_store_explicit(&c->n_in_flight, c->in_flight, memory_order_relaxed);
  req_unref(r);
}

/* io_mu held, the connect failed or the client closes: the waiting
 * requests were never sent; they fail with BW_ERR_CONNECT (retryable) or,
 * closing, BW_ERR_CANCELLED. */
static void fail_waiting(bw_redis_t *c) {
  for (bw__redis_req_t *r = c->head, *nx; r; r = nx) {
    nx = r->next;
    if (!r->waiting) continue;
    if (!atomic_load_explicit(&r->done, memory_order_acquire)) {
      bw_error_t *e;
      if (c->closing) {
        e = not_connected_error(c);
      } else {
        char where[200], msg[260];
        server_name(c, where, sizeof where);
        snprintf(msg, sizeof msg, "redis connect to %s failed; command not sent", where);
        e = not_sent_error(bw_error_ref(c->last_err), msg);
      }
      complete_ex(r, NULL, e, true);
    }
    drop_waiting(c, r);
  }
}

/* io_mu held, on READY: give the waiting requests to hiredis, in order. */
static void flush_waiting(bw_redis_t *c) {
  for (bw__redis_req_t *r = c->head, *nx; r; r = nx) {
    nx = r->next;
    if (!r->waiting) continue;
    if (!atomic_load_explicit(&r->done, memory_order_acquire)) {
      if (redisAsyncFormattedCommand(c->ac, on_reply, r, r->cmd, r->cmd_len) == REDIS_OK) {
        r->waiting = false; /* hiredis's callback now holds the loop reference */
        continue;
      }
      complete_ex(r, NULL, not_connected_error(c), true);
    }
    drop_waiting(c, r);
  }
}

static void conn_lost(bw_redis_t *c, bw_error_t *why) {
  bw_redis_state_t st = (bw_redis_state_t)atomic_load_explicit(&c->state, memory_order_relaxed);
  c->ac = NULL;
  c->ac_ready = false;
  bw_error_unref(c->handshake_err);
  c->handshake_err = NULL;
  bw_error_unref(c->last_err);
  c->last_err = why;
  fail_waiting(c);
  if (c->closing) {
    hold_clock(c, false);
    return;
  }
  if (st == BW_REDIS_READY)
    STAT_INC(c, n_disconnects);
  else
    STAT_INC(c, n_connect_failures);
  set_state(c, BW_REDIS_BACKOFF);
  c->connect_deadline_ns = 0;
  uint32_t delay = c->backoff_ms;
  c->backoff_ms = delay * 2 > c->reconnect_max_ms ? c->reconnect_max_ms : delay * 2;
  c->reconnect_at_ns = now_ns(c) + (uint64_t)delay * 1000000u;
  schedule_tick(c, c->reconnect_at_ns);
  /* After the tick moved to the reconnect time: released before, the
   * paused clock could jump to the failed connect's deadline first. */
  hold_clock(c, false);
}

static void become_ready(bw_redis_t *c) {
  c->ac_ready = true;
  c->connect_deadline_ns = 0;
  c->backoff_ms = c->reconnect_min_ms;
  bw_error_unref(c->last_err);
  c->last_err = NULL;
  STAT_INC(c, n_connects);
  set_state(c, BW_REDIS_READY);
  flush_waiting(c);
}

/* The error of a handshake step (AUTH or SELECT) answered with an error
 * reply: a "try again" reply fails the connect (BW_ERR_CONNECT, retryable),
 * any other is a refusal (BW_ERR_REDIS, BW_REDIS_HANDSHAKE; design notes). */
static bw_error_t *handshake_error(bw_redis_t *c, const char *step, const redisReply *reply) {
  char where[200];
  server_name(c, where, sizeof where);
  bw_error_t *e = bw__redis_error_from_reply(reply->str, reply->len, c->password);
  int code = bw_redis_error_code(e);
  if (code & BW_REDIS_RETRYABLE)
    return bw_error_wrap(e, BW_ERR_CONNECT, 0, "redis handshake (%s) with %s failed", step, where);
  return bw_error_wrap(e, BW_ERR_REDIS, code | BW_REDIS_HANDSHAKE,
                       "redis %s refused the handshake (%s)", where, step);
}

static void on_handshake(redisAsyncContext *ac, void *rv, void *priv) {
  bw_redis_t *c = priv;
  redisReply *reply = rv;
  if (!reply) note_errno(c, ac);
  if (!reply || ac != c->ac) return; /* the context is going away */
  const char *step = c->handshake_auth ? "AUTH" : "SELECT"; /* replies come in order */
  c->handshake_auth = false;
  if (reply->type == REDIS_REPLY_ERROR && !c->handshake_err)
    c->handshake_err = handshake_error(c, step, reply);
  if (--c->handshake_left > 0) return;
  if (c->handshake_err) {
    bw_error_t *e = c->handshake_err;
    c->handshake_err = NULL;
    conn_lost(c, e);
    redisAsyncFree(ac); /* deferred by hiredis until this callback returns */
    return;
  }
  become_ready(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  bw_redis_t *c = ac->data;
  (void)status;
  note_errno(c, ac);
  if (ac != c->ac) return; /* we freed it ourselves and already knew */
  conn_lost(c, ac == c->too_large_ac ? too_large_error(c) : ctx_error(c, ac, ""));
}

static void on_tcp_connect(redisAsyncContext *ac, int err, void *arg) {
  bw_redis_t *c = arg;
  if (ac != c->ac) return;
  if (err) {
    char where[200];
    server_name(c, where, sizeof where);
    conn_lost(c, bw_error_new(BW_ERR_CONNECT, err, "redis connect to %s failed: %s", where,
                              strerror(err)));
    return; /* the glue frees the context */
  }
  hold_clock(c, false);
  if (c->handshake_left == 0) become_ready(c);
}

static void queue_handshake(bw_redis_t *c) {
  const char *argv[3];
  int argc = 0;
  if (c->password) {
    argv[argc++] = "AUTH";
    if (c->username) argv[argc++] = c->username;
    argv[argc++] = c->password;
    size_t len = resp_size(argc, argv, NULL);
    char *buf = bw__malloc(len + 1);
    if (buf) {
      size_t n = resp_write(buf, argc, argv, NULL);
      buf[n] = '\0';
      if (redisAsyncFormattedCommand(c->ac, on_handshake, c, buf, n) == REDIS_OK) {
        c->handshake_left++;
        c->handshake_auth = true;
      }
      explicit_bzero(buf, len);
      bw__free(buf);
    }
  }
  if (c->db > 0) {
    char db[16];
    snprintf(db, sizeof db, "%d", c->db);
    if (redisAsyncCommand(c->ac, on_handshake, c, "SELECT %s", db) == REDIS_OK)
      c->handshake_left++;
  }
}

static void start_connect(bw_redis_t *c) {
  errno = 0;
  redisAsyncContext *ac =
      c->unix_path ? redisAsyncConnectUnix(c->unix_path) : redisAsyncConnect(c->host, c->port);
  int sys_err = errno; /* hiredis keeps only the text of a failed connect(2) */
  set_state(c, BW_REDIS_CONNECTING);
  c->ac_ready = false;
  c->handshake_left = 0;
  c->handshake_auth = false;
  c->io_errno_ac = NULL; /* a new context may reuse the old one's address */
  c->io_errno = 0;
  c->too_large_ac = NULL;
  c->reply_bytes = 0;
  if (!ac || ac->err) {
    int err = ac && ac->err == REDIS_ERR_IO ? sys_err : 0;
    char where[200];
    server_name(c, where, sizeof where);
    bw_error_t *e = bw_error_new(BW_ERR_CONNECT, err, "redis connect to %s failed: %s", where,
                                 ac ? ac->errstr : "out of memory");
    if (ac) redisAsyncFree(ac);
    conn_lost(c, e);
    return;
  }
  ac->data = c;
  c->ac = ac;
  if (ac->c.reader->fn) { /* hiredis's defaults: count what they make */
    c->hiredis_fns = ac->c.reader->fn;
    ac->c.reader->fn = &counting_fns;
    ac->c.reader->privdata = c;
  }
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  queue_handshake(c);
  int rc = bw__redis_uv_attach(bw__reactor_loop(c->rt), ac, on_tcp_connect, c);
  if (rc != 0) {
    c->ac = NULL;
    redisAsyncFree(ac);
    conn_lost(c, bw_error_new(BW_ERR_CONNECT, -rc, "redis: cannot poll socket: %s",
                              uv_strerror(rc)));
    return;
  }
  bw__redis_uv_set_hook(ac, on_glue);
  hold_clock(c, true);
  c->connect_deadline_ns = now_ns(c) + (uint64_t)c->connect_timeout_ms * 1000000u;
  schedule_tick(c, c->connect_deadline_ns);
}

static void connect_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  bw_redis_t *c = (bw_redis_t *)(void *)((char *)op - offsetof(bw_redis_t, connect_op));
  loop_enter(c);
  if (!c->closing) start_connect(c);
  loop_leave(c);
  client_unref(c);
}

/* ---- Close ---------------------------------------------------------------- */

static void close_now(bw_redis_t *c) {
  if (c->closing) return;
  c->closing = true;
  hold_clock(c, false);
  set_state(c, BW_REDIS_CLOSED);
  if (c->box) c->box->client = NULL;
  c->box = NULL;
  redisAsyncContext *ac = c->ac;
  c->ac = NULL;
  fail_waiting(c); /* never sent: CANCELLED */
  if (ac) redisAsyncFree(ac); /* in-flight commands complete CANCELLED */
  /* Anything left (e.g. already-complete requests waiting for a reply that
   * will now never come) is released by the NULL callbacks above. */
  bw_timer_cancel(c->tick);
  c->tick_at_ns = 0;
}

static void reactor_closing(void *arg, uv_loop_t *loop);

static void close_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  bw_redis_t *c = (bw_redis_t *)(void *)((char *)op - offsetof(bw_redis_t, close_op));
  loop_enter(c);
  hook_box_t *box = c->box;
  close_now(c); /* clears box->client */
  loop_leave(c);
  /* An op runs before shutdown takes the hooks: remove ours so a client
   * freed before its runtime leaves nothing registered. */
  if (box && bw__reactor_off_close(c->rt, reactor_closing, box)) bw__free(box);
  client_unref(c);
}

static void reactor_closing(void *arg, uv_loop_t *loop) {
  (void)loop;
  hook_box_t *box = arg;
  if (box->client) {
    bw_redis_t *c = box->client;
    loop_enter(c);
    close_now(c); /* clears box->client */
    loop_leave(c);
  }
  bw__free(box);
}

static void client_unref(bw_redis_t *c) {
  /* While bw_redis_free waits, decrement under its mutex so the waiter
   * cannot see the last reference drop (and free c) while we still touch
   * c. A thread that read `freeing` false touches nothing after its
   * decrement; the waiter's timed wait covers that missed signal. */
  if (atomic_load(&c->freeing)) { /* seq_cst: pairs with the store in bw_redis_free */
    pthread_mutex_lock(&c->mu);
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 2)
      pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return;
  }
  /* acq_rel: the waiter in bw_redis_free sees every request's writes */
  atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel);
}

static void wait_last_ref(bw_redis_t *c) {
  pthread_mutex_lock(&c->mu);
  while (atomic_load_explicit(&c->refs, memory_order_acquire) != 1) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&c->cv, &c->mu, &ts);
  }
  pthread_mutex_unlock(&c->mu);
}

static void client_destroy(bw_redis_t *c) {
  bw_error_unref(c->last_err);
  bw_error_unref(c->handshake_err);
  pthread_mutex_destroy(&c->mu);
  pthread_mutex_destroy(&c->io_mu);
  pthread_cond_destroy(&c->cv);
  bw__free(c->host);
  bw__free(c->unix_path);
  bw__free(c->username);
  if (c->password) {
    explicit_bzero(c->password, strlen(c->password));
    bw__free(c->password);
  }
  c->magic = 0;
  bw__free(c);
}

void bw_redis_free(bw_redis_t *c) {
  if (!c) return;
  atomic_store(&c->freeing, true);
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  c->close_op.fn = close_on_loop;
  if (bw__reactor_submit(c->rt, &c->close_op) != 0) {
    /* The reactor is gone: its on_close hook already closed us (or we never
     * connected); nothing runs on the loop any more. */
    loop_enter(c);
    close_now(c);
    loop_leave(c);
    client_unref(c);
  }
  wait_last_ref(c);
  bw_timer_free(c->tick); /* waits for a callback running elsewhere */
  c->tick = NULL;
  wait_last_ref(c);
  client_destroy(c);
}

/* ---- Creation, queries ------------------------------------------------------ */

void bw_redis_opts_init(bw_redis_opts_t *o) {
  if (o) memset(o, 0, sizeof *o);
}

static char *dup_or_null(const char *s, bool *oom) {
  if (!s) return NULL;
  char *d = bw__strdup(s);
  if (!d) *oom = true;
  return d;
}

bw_error_t *bw_redis_new(bw_runtime_t *rt, const bw_redis_opts_t *opts, bw_redis_t **out) {
  if (!rt || !out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_new: NULL argument");
  *out = NULL;
  bw_redis_opts_t o;
  bw_redis_opts_init(&o);
  if (opts) o = *opts;
  if (o.port < 0 || o.port > 65535 || o.db < 0)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_new: bad port or db");
  if (o.username && !o.password)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_new: username needs a password");
  bw_redis_t *c = bw__calloc(1, sizeof *c);
  if (!c) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bool oom = false;
  c->magic = CLIENT_MAGIC;
  c->rt = rt;
  c->host = dup_or_null(o.host ? o.host : "127.0.0.1", &oom);
  c->unix_path = dup_or_null(o.unix_path, &oom);
  c->username = dup_or_null(o.username, &oom);
  c->password = dup_or_null(o.password, &oom);
  c->port = o.port ? o.port : 6379;
  c->db = o.db;
  c->connect_timeout_ms = o.connect_timeout_ms ? o.connect_timeout_ms : 1000;
  c->command_timeout_ms = o.command_timeout_ms;
  c->reconnect_min_ms = o.reconnect_min_ms ? o.reconnect_min_ms : 50;
  c->reconnect_max_ms = o.reconnect_max_ms ? o.reconnect_max_ms : 2000;
  if (c->reconnect_max_ms < c->reconnect_min_ms) c->reconnect_max_ms = c->reconnect_min_ms;
  c->max_in_flight = o.max_in_flight ? o.max_in_flight : 65536;
  c->max_reply_bytes = o.max_reply_bytes ? o.max_reply_bytes : BW_REDIS_DEFAULT_MAX_REPLY_BYTES;
  c->backoff_ms = c->reconnect_min_ms;
  atomic_init(&c->refs, 1);
  atomic_init(&c->state, BW_REDIS_CONNECTING);
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->io_mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->tick_op.fn = tick_on_loop;
  c->kick_op.fn = kick_on_loop;
  c->box = bw__calloc(1, sizeof *c->box);
  if (oom || !c->box) {
    bw__free(c->box);
    client_destroy(c);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  c->box->client = c;
  bw_error_t *e = bw_timer_new(rt, tick_fired, c, &c->tick);
  if (e) {
    bw__free(c->box);
    client_destroy(c);
    return e;
  }
  if (bw__reactor_on_close(rt, reactor_closing, c->box) != 0) {
    bw__free(c->box);
    bw_timer_free(c->tick);
    client_destroy(c);
    return bw_error_static(BW_ERR_RUNTIME_SHUTDOWN);
  }
  /* From here the box belongs to the reactor hook. The first connect runs
   * on the loop. */
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
  c->connect_op.fn = connect_on_loop;
  if (bw__reactor_submit(rt, &c->connect_op) != 0) {
    client_unref(c);
    c->box->client = NULL; /* the hook (if it still runs) only frees the box */
    c->box = NULL;
    bw_timer_free(c->tick);
    client_destroy(c);
    return bw_error_static(BW_ERR_RUNTIME_SHUTDOWN);
  }
  *out = c;
  return NULL;
}

bw_redis_state_t bw_redis_state(const bw_redis_t *c) {
  return (bw_redis_state_t)atomic_load_explicit(&c->state, memory_order_relaxed);
}

bw_runtime_t *bw__redis_runtime(const bw_redis_t *c) { return c->rt; }

void bw_redis_stats(const bw_redis_t *c, bw_redis_stats_t *o) {
#define LD(f) atomic_load_explicit(&c->f, memory_order_relaxed)
  o->connects = LD(n_connects);
  o->connect_failures = LD(n_connect_failures);
  o->disconnects = LD(n_disconnects);
  o->commands = LD(n_commands);
  o->replies = LD(n_replies);
  o->errors = LD(n_errors);
  o->timeouts = LD(n_timeouts);
  o->late_replies_dropped = LD(n_late);
  o->fail_fast = LD(n_fail_fast);
  o->in_flight = LD(n_in_flight);
  o->held_via_loop = LD(n_held_via_loop);
#undef LD
}
