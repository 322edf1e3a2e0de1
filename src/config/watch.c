/* Automatic reload when the config file changes (libuv fs events).
 *
 * Design notes
 * - The watch is a uv_fs_event_t on the file's DIRECTORY, filtered by file
 *   name: editors save by writing a new file and renaming it over the old
 *   one, which ends a watch on the file itself.
 * - The handle lives on the runtime's reactor loop: started and closed by
 *   reactor ops (bw__reactor_submit). An event does no I/O on the loop; it
 *   defers a reload to a worker (bw__runtime_defer), at most one pending
 *   (the `pending` flag coalesces a burst of events from one save).
 * - The reload compares the file's bytes with the last ones loaded (a hash)
 *   and skips identical content, then calls bw_registry_reload and the
 *   user's on_reload.
 * - The watch follows the registry's file: bw_registry_reload_file swaps
 *   reg->path and, in the same reg->mu section, records the new path as
 *   `want` (bw__registry_watch_retarget); then, with no lock held, it posts
 *   the retarget op and waits until the loop has moved the watch
 *   (bw__registry_watch_sync), so an edit made after it returns is seen and
 *   one to the old file is not. Only the latest `want` counts, so
 *   concurrent reload_file calls end watching the path the registry ended
 *   with. If the new directory cannot be watched (inotify limits) the
 *   handle stays stopped: no reloads from the old file either.
 * - Lock order: w->mu -> reg->mu (the reload takes reg->mu, as does the
 *   copy of reg->path; nothing takes w->mu holding reg->mu), and
 *   reg->mu -> w->tmu. tmu is a leaf (never held while taking another lock
 *   or calling out), so the loop thread may take it while a reload holds
 *   w->mu, and on_reload may call bw_registry_reload_file.
 * - Shutdown: bw_registry_free stops the watch: sets `stopped` under w->mu
 *   (a running reload holds w->mu, so the registry is not freed under it)
 *   and closes the handle on the loop, waiting for the close callback. If
 *   the runtime shuts down first, the reactor's on-close hook closes the
 *   handle. The struct is reference counted (registry, hook, pending
 *   reload) because the hook cannot be unregistered. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <uv.h>

#include "config/registry_internal.h"
#include "core/alloc.h"
#include "runtime/internal.h"

typedef struct watch_op {
  bw__reactor_op_t op; /* first: the reactor hands us &op */
  struct bw__watch *w;
} watch_op_t;

struct bw__watch {
  atomic_int refs;
  bw_registry_t *reg; /* valid while !stopped (under mu) */
  bw_runtime_t *rt;
  char *dir, *base;
  uv_fs_event_t handle;
  bool started, closing, closed; /* loop thread (closed also under mu) */
  atomic_bool pending;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stopped;
  bool start_done; /* under mu: the start op ran */
  watch_op_t start_op, stop_op, retarget_op;
  /* Retargeting (see the design notes), and the hash of the last content
   * loaded. tmu is a leaf lock; tcv signals done_seq. */
  pthread_mutex_t tmu;
  pthread_cond_t tcv;
  char *want;                  /* under tmu: the path to move to, or NULL */
  uint64_t want_seq, done_seq; /* under tmu: wants recorded / applied */
  bool retarget_queued;        /* under tmu: retarget_op is posted */
  uint64_t last_hash;          /* under tmu */
};

static uint64_t fnv(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

static void watch_unref(struct bw__watch *w) {
  /* acq_rel: the last owner sees every other owner's writes before freeing */
  if (atomic_fetch_sub_explicit(&w->refs, 1, memory_order_acq_rel) != 1) return;
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->tmu);
  pthread_cond_destroy(&w->tcv);
  bw__free(w->dir);
  bw__free(w->base);
  bw__free(w->want);
  bw__free(w);
}

static void do_reload(void *arg) {
  struct bw__watch *w = arg;
  atomic_store(&w->pending, false);
  pthread_mutex_lock(&w->mu);
  if (!w->stopped) {
    bw_registry_t *reg = w->reg;
    /* reg->path belongs to reg->mu (bw_registry_reload_file frees and
     * replaces it): read it from a copy, never in place */
    char *path = bw__registry_path(reg);
    char *text = NULL;
    size_t len = 0;
    bool changed = true;
    if (path && bw__read_file(path, &text, &len) == 0) {
      uint64_t h = fnv(text, len);
      pthread_mutex_lock(&w->tmu);
      changed = h != w->last_hash;
      if (changed) w->last_hash = h;
      pthread_mutex_unlock(&w->tmu);
    }
    bw__free(text);
    bw__free(path);
    if (changed) {
      bw_error_t *err = bw_registry_reload(reg);
      if (reg->opts.on_reload) reg->opts.on_reload(reg, err, reg->opts.on_reload_arg);
      bw_error_unref(err);
    }
  }
  pthread_mutex_unlock(&w->mu);
  watch_unref(w);
}

static void on_fs_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  (void)events;
  struct bw__watch *w = h->data;
  if (status < 0) return;
  if (filename != NULL && strcmp(filename, w->base) != 0) return;
  if (atomic_exchange(&w->pending, true)) return; /* one reload queued already */
  atomic_fetch_add_explicit(&w->refs, 1, memory_order_relaxed);
  if (bw__runtime_defer(w->rt, do_reload, w) != 0) {
    atomic_store(&w->pending, false);
    watch_unref(w);
  }
}

static void on_closed(uv_handle_t *h) {
  struct bw__watch *w = h->data;
  pthread_mutex_lock(&w->mu);
  w->closed = true;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void close_handle(struct bw__watch *w) {
  if (!w->started || w->closing) {
    if (!w->started && !w->closing) {
      w->closing = true;
      pthread_mutex_lock(&w->mu);
      w->closed = true;
      pthread_cond_broadcast(&w->cv);
      pthread_mutex_unlock(&w->mu);
    }
    return;
  }
  w->closing = true;
  uv_fs_event_stop(&w->handle);
  uv_close((uv_handle_t *)&w->handle, on_closed);
}

static void start_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  struct bw__watch *w = ((watch_op_t *)op)->w;
  if (!w->closing && uv_fs_event_init(loop, &w->handle) == 0) {
    w->handle.data = w;
    w->started = true;
    if (uv_fs_event_start(&w->handle, on_fs_event, w->dir, 0) != 0) close_handle(w);
  }
  pthread_mutex_lock(&w->mu);
  w->start_done = true;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void stop_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  struct bw__watch *w = ((watch_op_t *)op)->w;
  close_handle(w);
}

/* Reactor shutdown: close the handle if the registry did not. */
static void on_reactor_close(void *arg, uv_loop_t *loop) {
  (void)loop;
  struct bw__watch *w = arg;
  close_handle(w);
  watch_unref(w);
}

/* The directory and file name of path ("f" -> ".", "f"; "/f" -> "/", "f"). */
static int split_path(const char *path, char **dir, char **base) {
  const char *slash = strrchr(path, '/');
  *dir = slash ? bw__malloc((size_t)(slash - path) + 2) : bw__strdup(".");
  *base = bw__strdup(slash ? slash + 1 : path);
  if (*dir == NULL || *base == NULL) {
    bw__free(*dir);
    bw__free(*base);
    *dir = *base = NULL;
    return -1;
  }
  if (slash) {
    size_t n = (size_t)(slash - path);
    if (n == 0) n = 1; /* "/file" */
    memcpy(*dir, path, n);
    (*dir)[n] = '\0';
  }
  return 0;
}

/* Loop thread: move the watch to the latest wanted path. */
static void retarget_on_loop(bw__reactor_op_t *op, uv_loop_t *loop) {
  (void)loop;
  struct bw__watch *w = ((watch_op_t *)op)->w;
  pthread_mutex_lock(&w->tmu);
  char *path = w->want;
  w->want = NULL;
  uint64_t seq = w->want_seq;
  w->retarget_queued = false; /* a newer want posts the op again */
  pthread_mutex_unlock(&w->tmu);
  char *dir, *base;
  if (path != NULL && split_path(path, &dir, &base) == 0) {
    bool moved = strcmp(dir, w->dir) != 0;
    bw__free(w->dir);
    bw__free(w->base);
    w->dir = dir; /* dir and base are the loop thread's (on_fs_event) */
    w->base = base;
    if (moved && w->started && !w->closing) {
      uv_fs_event_stop(&w->handle);
      /* on failure the handle stays stopped (see the design notes) */
      (void)uv_fs_event_start(&w->handle, on_fs_event, w->dir, 0);
    }
  }
  bw__free(path);
  pthread_mutex_lock(&w->tmu);
  if (seq > w->done_seq) w->done_seq = seq;
  pthread_cond_broadcast(&w->tcv);
  pthread_mutex_unlock(&w->tmu);
  watch_unref(w); /* the op's */
}

void bw__registry_watch_retarget(bw_registry_t *reg, const char *text, size_t len) {
  struct bw__watch *w = reg->watch;
  if (w == NULL || reg->path == NULL) return;
  char *p = bw__strdup(reg->path); /* reg->mu is held: reg->path is stable */
  pthread_mutex_lock(&w->tmu);
  /* the content just loaded: the next event reloads only if it differs */
  w->last_hash = fnv(text, len);
  if (p != NULL) {
    bw__free(w->want);
    w->want = p;
    w->want_seq++;
  }
  pthread_mutex_unlock(&w->tmu);
}

void bw__registry_watch_sync(bw_registry_t *reg) {
  struct bw__watch *w = reg->watch;
  if (w == NULL) return;
  pthread_mutex_lock(&w->tmu);
  uint64_t seq = w->want_seq;
  bool post = w->want != NULL && !w->retarget_queued;
  if (post) {
    w->retarget_queued = true;
    atomic_fetch_add_explicit(&w->refs, 1, memory_order_relaxed); /* the op's */
  }
  pthread_mutex_unlock(&w->tmu);
  if (post) {
    w->retarget_op.op.fn = retarget_on_loop;
    w->retarget_op.w = w;
    if (bw__reactor_submit(w->rt, &w->retarget_op.op) != 0) {
      /* the runtime is shutting down: its close hook ends the watch */
      pthread_mutex_lock(&w->tmu);
      w->retarget_queued = false;
      bw__free(w->want);
      w->want = NULL;
      w->done_seq = w->want_seq;
      pthread_cond_broadcast(&w->tcv);
      pthread_mutex_unlock(&w->tmu);
      watch_unref(w);
    }
  }
  /* On a worker (on_reload, a task) the op runs on a later loop turn:
   * waiting could block the very worker that would drive the loop. */
  if (bw__reactor_on_loop(w->rt) || bw__runtime_on_worker(w->rt)) return;
  pthread_mutex_lock(&w->tmu);
  while (w->done_seq < seq) pthread_cond_wait(&w->tcv, &w->tmu);
  pthread_mutex_unlock(&w->tmu);
}

bw_error_t *bw__registry_watch_start(bw_registry_t *reg) {
  if (reg->opts.rt == NULL || reg->path == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: watching needs a runtime and a file");
  struct bw__watch *w = bw__calloc(1, sizeof *w);
  if (w == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  atomic_init(&w->refs, 1);
  w->reg = reg;
  w->rt = reg->opts.rt;
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
  pthread_mutex_init(&w->tmu, NULL);
  pthread_cond_init(&w->tcv, NULL);
  if (split_path(reg->path, &w->dir, &w->base) != 0) {
    watch_unref(w);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  char *text;
  size_t len;
  if (bw__read_file(reg->path, &text, &len) == 0) {
    w->last_hash = fnv(text, len);
    bw__free(text);
  }
  atomic_fetch_add_explicit(&w->refs, 1, memory_order_relaxed); /* the hook's */
  if (bw__reactor_on_close(w->rt, on_reactor_close, w) != 0) {
    watch_unref(w);
    watch_unref(w);
    return bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "registry: cannot watch, runtime is shut down");
  }
  w->start_op.op.fn = start_on_loop;
  w->start_op.w = w;
  if (bw__reactor_submit(w->rt, &w->start_op.op) != 0) {
    /* the hook keeps its reference and runs at reactor close */
    watch_unref(w);
    return bw_error_new(BW_ERR_RUNTIME_SHUTDOWN, 0, "registry: cannot watch, runtime is shut down");
  }
  /* Wait until the watch is active, so a change right after the load is
   * seen (not on the loop thread itself: the op runs on its next turn). */
  if (!bw__reactor_on_loop(w->rt)) {
    pthread_mutex_lock(&w->mu);
    while (!w->start_done) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
  }
  reg->watch = w;
  return NULL;
}

void bw__registry_watch_stop(bw_registry_t *reg) {
  struct bw__watch *w = reg->watch;
  if (w == NULL) return;
  reg->watch = NULL;
  pthread_mutex_lock(&w->mu);
  w->stopped = true; /* waits for a running reload (it holds mu) */
  pthread_mutex_unlock(&w->mu);
  w->stop_op.op.fn = stop_on_loop;
  w->stop_op.w = w;
  if (bw__reactor_submit(w->rt, &w->stop_op.op) == 0) {
    pthread_mutex_lock(&w->mu);
    while (!w->closed) pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
  }
  /* else: the reactor is stopping or stopped; its close hook closes the handle */
  watch_unref(w);
}
