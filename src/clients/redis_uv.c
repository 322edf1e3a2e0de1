/* hiredis <-> libuv glue (see redis_uv.h).
 *
 * Design notes
 * - One uv_poll_t per redisAsyncContext. hiredis calls addRead/delRead/
 *   addWrite/delWrite (idempotent) and we (re)start the poll with the union
 *   of wanted events, or stop it when none is wanted.
 * - Connect: hiredis 0.14 starts a non-blocking connect and asks for a
 *   write event. The first writable OR error event while `connecting` is the
 *   end of the connect: getsockopt(SO_ERROR) says how it went. On error we
 *   report it and free the context ourselves; libuv has already stopped the
 *   poll on POLLERR, so without this nobody would ever learn of it (the
 *   bug in hiredis/adapters/libuv.h). On success we report, then let hiredis
 *   run its own connect check (SO_ERROR is 0 now) and flush its buffer.
 * - An error event on a connected socket (POLLERR: reset) is handed to
 *   hiredis as a read: the read fails with the socket error and hiredis
 *   tears the connection down (NULL replies, then the disconnect callback).
 *   If the read does not fail (no error pending), the context is freed so
 *   no command can hang on a poll handle libuv has stopped.
 * - Write coalescing: once connected, hiredis's addWrite does not start
 *   polling for POLLOUT (an epoll_ctl each time, and one write per
 *   command). It arms a uv_check instead, which runs after this loop
 *   iteration's ops and I/O callbacks, and writes everything queued in one
 *   go. Only if that write is partial (socket buffer full) does hiredis ask
 *   again, and then we really poll for POLLOUT.
 * - Writes from another thread (redis.c's direct path): the owner holds
 *   its own lock over every glue callback (the hook below) and over its
 *   hiredis calls elsewhere. With `external` set, hiredis's addWrite is
 *   ignored and the caller writes hiredis's buffer itself
 *   (bw__redis_uv_write_now); whatever is left is handed back to the loop
 *   (bw__redis_uv_kick). No uv call is made off the loop thread.
 * - Lifetime: `ac` is cleared in the cleanup hook (hiredis is freeing the
 *   context; its fd is closed right after), where the poll is stopped (so
 *   the fd leaves epoll before close) and both handles are closed; the
 *   struct is freed when both close callbacks ran. So `g` stays valid for
 *   the rest of any callback even if hiredis freed the context inside it. */
#include "clients/redis_uv.h"

#include <errno.h>
#include <stdbool.h>
#include <sys/socket.h>

#include "core/alloc.h"

typedef struct glue {
  uv_poll_t poll;
  redisAsyncContext *ac; /* NULL once hiredis cleaned up */
  int events;            /* UV_READABLE | UV_WRITABLE wanted by hiredis */
  bool connecting;       /* connect result not reported yet */
  bool flush_armed;      /* check handle started for a coalesced write */
  bool in_flush;         /* inside the coalesced write */
  bool external;         /* a non-loop thread is queuing: ignore addWrite */
  int open_handles;      /* closed when this drops to 0 */
  uv_check_t check;
  bw__redis_uv_connect_fn on_connect;
  void (*hook)(void *arg, bool begin);
  void *arg;
} glue_t;

static void on_poll(uv_poll_t *h, int status, int events);

static void update(glue_t *g, int events) {
  /* uv_poll_start re-registers the fd (epoll_ctl); hiredis re-adds read
   * interest after every read, so only touch the poll on a real change. */
  if (!g->ac || g->external || events == g->events) return;
  int saved = errno; /* as in cleanup */
  g->events = events;
  if (events)
    uv_poll_start(&g->poll, events, on_poll);
  else
    uv_poll_stop(&g->poll);
  errno = saved;
}

static void add_read(void *p) {
  glue_t *g = p;
  update(g, g->events | UV_READABLE);
}
static void del_read(void *p) {
  glue_t *g = p;
  update(g, g->events & ~UV_READABLE);
}
static void on_check(uv_check_t *h) {
  glue_t *g = h->data;
  uv_check_stop(&g->check);
  g->flush_armed = false;
  if (!g->ac) return;
  void (*fn)(void *, bool) = g->hook; /* g->ac may be gone by the end */
  void *arg = g->arg;
  if (fn) fn(arg, true);
  if (g->ac) {
    g->in_flush = true;
    redisAsyncHandleWrite(g->ac);
    g->in_flush = false;
  }
  if (fn) fn(arg, false);
}

static void add_write(void *p) {
  glue_t *g = p;
  if (!g->ac || g->external) return;
  if (g->connecting || g->in_flush || (g->events & UV_WRITABLE)) {
    update(g, g->events | UV_WRITABLE);
  } else if (!g->flush_armed) {
    g->flush_armed = true;
    uv_check_start(&g->check, on_check);
  }
}
static void del_write(void *p) {
  glue_t *g = p;
  update(g, g->events & ~UV_WRITABLE);
}

static void on_closed(uv_handle_t *h) {
  glue_t *g = h->data;
  if (--g->open_handles == 0) bw__free(g);
}

/* hiredis calls this on a failed read or write before the NULL replies
 * and the disconnect callback, where the owner reads errno to learn why
 * (redis.c, note_errno): libuv's epoll_ctl(DEL) here must not change it. */
static void cleanup(void *p) {
  glue_t *g = p;
  int saved = errno;
  g->ac = NULL;
  g->events = 0;
  uv_poll_stop(&g->poll);
  uv_check_stop(&g->check);
  uv_close((uv_handle_t *)&g->poll, on_closed);
  uv_close((uv_handle_t *)&g->check, on_closed);
  errno = saved;
}

static void finish_connect(glue_t *g, int status) {
  redisAsyncContext *ac = g->ac;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(ac->c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0 && status < 0) err = ECONNABORTED; /* error event, no errno */
  g->connecting = false;
  if (err) {
    /* libuv may have stopped the poll (POLLERR); keep our view in sync. */
    g->events = 0;
    uv_poll_stop(&g->poll);
    g->on_connect(ac, err, g->arg);
    if (g->ac) redisAsyncFree(g->ac); /* pending callbacks get NULL */
    return;
  }
  g->on_connect(ac, 0, g->arg);
  if (g->ac) redisAsyncHandleWrite(g->ac); /* hiredis marks it connected, flushes */
}

static void handle_poll(glue_t *g, int status, int events) {
  if (g->connecting) {
    if (status < 0 || (events & UV_WRITABLE)) finish_connect(g, status);
    return;
  }
  if (status < 0) {
    /* POLLERR on a connected socket; libuv stopped the handle. */
    g->events = 0;
    redisAsyncHandleRead(g->ac);
    if (g->ac) {
      if (g->events == 0) redisAsyncFree(g->ac);
    }
    return;
  }
  if (events & UV_READABLE) redisAsyncHandleRead(g->ac);
  if (g->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(g->ac);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  glue_t *g = h->data;
  if (!g->ac) return;
  void (*fn)(void *, bool) = g->hook; /* g->ac may be gone by the end */
  void *arg = g->arg;
  if (fn) fn(arg, true);
  if (g->ac) handle_poll(g, status, events);
  if (fn) fn(arg, false);
}

void bw__redis_uv_set_hook(redisAsyncContext *ac, void (*fn)(void *arg, bool begin)) {
  glue_t *g = ac->ev.data;
  if (g) g->hook = fn;
}

void bw__redis_uv_external(redisAsyncContext *ac, bool on) {
  glue_t *g = ac->ev.data;
  if (g) g->external = on;
}

int bw__redis_uv_write_now(redisAsyncContext *ac) {
  int done = 0;
  if (redisBufferWrite(&ac->c, &done) != REDIS_OK) return -1;
  return done ? 0 : 1;
}

void bw__redis_uv_kick(redisAsyncContext *ac) { add_write(ac->ev.data); }

int bw__redis_uv_attach(uv_loop_t *loop, redisAsyncContext *ac, bw__redis_uv_connect_fn cb,
                        void *arg) {
  if (ac->ev.data) return UV_EEXIST;
  glue_t *g = bw__calloc(1, sizeof *g);
  if (!g) return UV_ENOMEM;
  int rc = uv_poll_init(loop, &g->poll, ac->c.fd);
  if (rc) {
    bw__free(g);
    return rc;
  }
  uv_check_init(loop, &g->check); /* cannot fail on unix */
  g->open_handles = 2;
  g->check.data = g;
  g->poll.data = g;
  g->ac = ac;
  g->connecting = true;
  g->on_connect = cb;
  g->arg = arg;
  ac->ev.addRead = add_read;
  ac->ev.delRead = del_read;
  ac->ev.addWrite = add_write;
  ac->ev.delWrite = del_write;
  ac->ev.cleanup = cleanup;
  ac->ev.data = g;
  /* The connect completes with a write event; hiredis asked for it only if
   * a command was already queued, so ask ourselves. */
  add_write(g);
  return 0;
}
