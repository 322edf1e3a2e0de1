/* libcurl multi socket API on a libuv loop.
 *
 * Design notes:
 * - curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when
 *   to call it back for timeouts (CURLMOPT_TIMERFUNCTION). Each watched socket
 *   gets a heap `sock_t` holding a uv_poll_t, attached to curl's socket with
 *   curl_multi_assign. On CURL_POLL_REMOVE the poll is stopped and closed at
 *   once (curl closes the fd right after), and freed in its close callback.
 * - The timer callback from curl only (re)arms our uv_timer: calling
 *   curl_multi_socket_action from inside curl's timer callback re-enters curl
 *   (DESIGN.md "Known traps"). A 0 ms timeout fires on the next loop turn.
 * - Finished transfers are collected with curl_multi_info_read after every
 *   socket_action, removed from the multi, then handed to their done
 *   callback; done may add or remove other transfers (we are not inside a
 *   curl callback then).
 * - Active transfers sit on an intrusive list so close can abort them.
 * - Easy handles are pooled (curl_easy_reset keeps the handle's DNS cache and
 *   buffers); the pool bound (EASY_POOL_MAX) is picked to cover 64-256
 *   transfers in flight, not measured. The owner may hand a handle back
 *   with its options kept (no reset: about 3,000 instructions, 4% of a
 *   small GET on the loop thread) when it will set the same ones again.
 * - The owner's "after" hook runs once per loop iteration in which
 *   transfers finished in socket events: they only arm a uv_check, which
 *   runs right after the poll phase of the same iteration (a timer event,
 *   which runs before the poll phase, runs the hook at once). One epoll wake-up often reports many ready
 *   connections; batching them costs the owner one hand-off to a worker
 *   instead of one per connection (the http_stack benchmark's main
 *   overhead over raw libcurl was waking workers).
 * - Close order: abort transfers -> after hook -> curl_multi_cleanup
 *   (closes connections, calling the socket callback with REMOVE for each
 *   watched socket) -> close the timer and the check; the last close
 *   callback frees the engine.
 * Threads: everything on the loop thread; only bw__curl_global_init is
 * callable from anywhere. */
#include "clients/http_multi.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>

#include "core/alloc.h"

#define EASY_POOL_MAX 256

typedef struct sock {
  uv_poll_t poll;
  bw__curlm_t *m;
  curl_socket_t fd;
  int events;   /* the UV_ events curl last asked for */
  bool removed; /* CURL_POLL_REMOVE came: the poll is closing */
} sock_t;

struct bw__curlm {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  uv_check_t check; /* runs `after` once per loop iteration */
  bool check_armed;
  int open_handles; /* timer + check until their close callbacks ran */
  bw__curl_xfer_t *head; /* active transfers */
  size_t nactive;
  struct pooled {
    CURL *easy;
    bool primed; /* put back with keep_options */
  } *pool;
  size_t npool;
  bool closing;
  void (*after)(void *arg);
  void *after_arg;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rc = -1;

static void *curl_malloc_cb(size_t n) { return bw__malloc(n); }
static void curl_free_cb(void *p) { bw__free(p); }
static void *curl_realloc_cb(void *p, size_t n) { return bw__realloc(p, n); }
static char *curl_strdup_cb(const char *s) { return bw__strdup(s); }
static void *curl_calloc_cb(size_t a, size_t b) { return bw__calloc(a, b); }

static void global_init_once(void) {
  /* Route curl's memory through bulwark's allocator so leaks and counting
   * allocators see it. */
  global_rc = curl_global_init_mem(CURL_GLOBAL_DEFAULT, curl_malloc_cb, curl_free_cb,
                                   curl_realloc_cb, curl_strdup_cb, curl_calloc_cb) == CURLE_OK
                  ? 0
                  : -1;
  /* TLS libraries may write to a closed socket without MSG_NOSIGNAL. Only
   * change SIGPIPE if the program left it at its default (terminate). */
  struct sigaction old;
  if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL &&
      !(old.sa_flags & SA_SIGINFO)) {
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, NULL);
  }
}

int bw__curl_global_init(void) {
  pthread_once(&global_once, global_init_once);
  return global_rc;
}

/* ---- finished transfers ---------------------------------------------- */

static void unlink_xfer(bw__curlm_t *m, bw__curl_xfer_t *x) {
  if (x->prev) x->prev->next = x->next;
  else m->head = x->next;
  if (x->next) x->next->prev = x->prev;
  x->prev = x->next = NULL;
  x->active = false;
  m->nactive--;
}

static void on_check(uv_check_t *c) {
  bw__curlm_t *m = c->data;
  uv_check_stop(&m->check);
  m->check_armed = false;
  if (m->after) m->after(m->after_arg);
}

/* Some transfers finished: run `after` at the end of this loop iteration. */
static void arm_after(bw__curlm_t *m) {
  if (!m->after || m->check_armed) return;
  m->check_armed = true;
  uv_check_start(&m->check, on_check);
}

static void check_done(bw__curlm_t *m) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL *easy = msg->easy_handle;
    CURLcode rc = msg->data.result;
    bw__curl_xfer_t *x = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    curl_multi_remove_handle(m->multi, easy);
    if (!x || !x->active) continue;
    unlink_xfer(m, x);
    x->done(x, rc);
    arm_after(m);
  }
}

/* ---- socket and timer glue -------------------------------------------- */

/* A poll error (POLLERR: libuv reports UV_EBADF and has stopped the
 * handle) is passed on as IN|OUT|ERR, not ERR alone: with ERR alone curl
 * fails the transfer with "select/poll returned error" (curl 55) without
 * touching the socket, whereas reading it shows the real error, and a
 * request sent on a reused keep-alive connection the server reset is then
 * retried on a new one. If curl still watches the socket afterwards (no
 * REMOVE; it may not have called the socket callback again, believing the
 * watch unchanged), the stopped poll is started again with the events curl
 * last asked for, else the transfer would wait for nothing. Reading the
 * socket consumes its pending error, so the restarted poll does not report
 * it again; should curl not read it, the error comes back each loop turn
 * until curl closes the connection or times the transfer out (busy, but
 * bounded, and never a silent hang). `s` stays valid here even if REMOVE
 * came: it is freed in its close callback, on a later loop phase. */
static void on_poll(uv_poll_t *p, int status, int events) {
  sock_t *s = p->data;
  bw__curlm_t *m = s->m;
  int flags = 0;
  if (status < 0) {
    flags = CURL_CSELECT_IN | CURL_CSELECT_OUT | CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  }
  int running;
  curl_multi_socket_action(m->multi, s->fd, flags, &running);
  if (status < 0 && !s->removed && s->events != 0 && !uv_is_active((uv_handle_t *)&s->poll))
    uv_poll_start(&s->poll, s->events, on_poll);
  check_done(m);
}

static void on_sock_closed(uv_handle_t *h) { bw__free(h->data); }

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  bw__curlm_t *m = userp;
  sock_t *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      s->removed = true;
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, on_sock_closed);
      curl_multi_assign(m->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = bw__malloc(sizeof *s);
    if (!s) return -1;
    s->m = m;
    s->fd = fd;
    s->events = 0;
    s->removed = false;
    if (uv_poll_init_socket(m->loop, &s->poll, fd) != 0) {
      bw__free(s);
      return -1;
    }
    s->poll.data = s;
    curl_multi_assign(m->multi, fd, s);
  }
  int events = 0;
  if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
  if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
  s->events = events;
  return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_timer(uv_timer_t *t) {
  bw__curlm_t *m = t->data;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
  /* Timers run before the poll phase, which may then block: a check armed
   * here would wait for the next event. Run the batch now. */
  if (m->check_armed) on_check(&m->check);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  bw__curlm_t *m = userp;
  if (timeout_ms < 0) {
    uv_timer_stop(&m->timer);
  } else {
    /* never socket_action from here (re-entrancy): fire from the loop */
    uv_timer_start(&m->timer, on_timer, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

/* ---- public (internal) API ----------------------------------------------- */

int bw__curlm_new(bw__curlm_t **out, uv_loop_t *loop, const bw__curlm_limits_t *lim) {
  if (bw__curl_global_init() != 0) return -1;
  bw__curlm_t *m = bw__calloc(1, sizeof *m);
  if (!m) return -1;
  m->pool = bw__calloc(EASY_POOL_MAX, sizeof *m->pool);
  m->multi = curl_multi_init();
  if (!m->pool || !m->multi) {
    if (m->multi) curl_multi_cleanup(m->multi);
    bw__free(m->pool);
    bw__free(m);
    return -1;
  }
  m->loop = loop;
  uv_timer_init(loop, &m->timer);
  m->timer.data = m;
  uv_check_init(loop, &m->check);
  m->check.data = m;
  m->open_handles = 2;
  long host = lim && lim->max_host_connections > 0 ? lim->max_host_connections : 64;
  long total = lim && lim->max_total_connections > 0 ? lim->max_total_connections : 256;
  long cache = lim && lim->max_cached_connections > 0 ? lim->max_cached_connections : total;
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, host);
  curl_multi_setopt(m->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, total);
  curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, cache);
  *out = m;
  return 0;
}

int bw__curlm_add(bw__curlm_t *m, bw__curl_xfer_t *x) {
  if (m->closing || x->active) return -1;
  curl_easy_setopt(x->easy, CURLOPT_PRIVATE, (char *)x);
  if (curl_multi_add_handle(m->multi, x->easy) != CURLM_OK) return -1;
  x->active = true;
  x->prev = NULL;
  x->next = m->head;
  if (m->head) m->head->prev = x;
  m->head = x;
  m->nactive++;
  return 0;
}

void bw__curlm_remove(bw__curlm_t *m, bw__curl_xfer_t *x) {
  if (!x->active) return;
  unlink_xfer(m, x);
  curl_multi_remove_handle(m->multi, x->easy);
}

CURL *bw__curlm_easy_get(bw__curlm_t *m, bool *primed) {
  struct pooled p = {NULL, false};
  if (m->npool > 0) p = m->pool[--m->npool];
  else p.easy = curl_easy_init();
  if (primed) *primed = p.primed;
  return p.easy;
}

void bw__curlm_easy_put(bw__curlm_t *m, CURL *easy, bool keep_options) {
  if (!easy) return;
  if (m->npool < EASY_POOL_MAX && !m->closing) {
    if (!keep_options) curl_easy_reset(easy);
    m->pool[m->npool++] = (struct pooled){easy, keep_options};
  } else {
    curl_easy_cleanup(easy);
  }
}

size_t bw__curlm_active(const bw__curlm_t *m) { return m->nactive; }

void bw__curlm_set_after(bw__curlm_t *m, void (*fn)(void *arg), void *arg) {
  m->after = fn;
  m->after_arg = arg;
}

static void on_handle_closed(uv_handle_t *h) {
  bw__curlm_t *m = h->data;
  if (--m->open_handles > 0) return;
  bw__free(m->pool);
  bw__free(m);
}

void bw__curlm_close(bw__curlm_t *m) {
  if (!m || m->closing) return;
  m->closing = true;
  while (m->head) {
    bw__curl_xfer_t *x = m->head;
    unlink_xfer(m, x);
    curl_multi_remove_handle(m->multi, x->easy);
    x->done(x, CURLE_ABORTED_BY_CALLBACK);
  }
  if (m->after) m->after(m->after_arg);
  while (m->npool > 0) curl_easy_cleanup(m->pool[--m->npool].easy);
  curl_multi_cleanup(m->multi); /* REMOVE for every watched socket */
  m->multi = NULL;
  uv_timer_stop(&m->timer);
  uv_close((uv_handle_t *)&m->timer, on_handle_closed);
  uv_check_stop(&m->check);
  m->check_armed = false;
  uv_close((uv_handle_t *)&m->check, on_handle_closed);
}
