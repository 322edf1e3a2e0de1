/* Cancellation tokens with children (include/bulwark/sync.h) and intrusive
 * registrations (src/runtime/cancel_internal.h).
 *
 * Design notes
 * - Two counts per token. `handles` counts the user's references
 *   (bw_cancel_token_ref/unref). `refs` counts the memory: 1 while any handle
 *   exists, +1 for each linked child (a child keeps its parent's node alive so
 *   its `parent` pointer never dangles), +1 while a cancel walks it. When
 *   handles reach 0 the token's callbacks and waiting wakers are released at
 *   once (they never run), but the node may stay in the tree as a "zombie"
 *   while it still has children, so cancelling a grandparent still reaches
 *   the grandchildren. When refs reach 0 the node unlinks itself from its
 *   parent (under the parent's lock), is freed, and drops the ref it held on
 *   the parent (iteratively, no recursion).
 * - A child never cancels its parent. A child made from a cancelled parent is
 *   born cancelled and not linked.
 * - Lock order: a token's mutex protects its registration lists, its
 *   children list and the `cancelled` transition. At most one token mutex is
 *   held at a time, except parent -> child never happens either: the cancel
 *   walk takes a counted ref on each child (try_ref, which fails on a child
 *   that is already dying) under the parent's lock, and locks the child only
 *   later. A dying child locks its parent to unlink; the parent is kept alive
 *   by the ref the child holds.
 * - Cancel: the thread that flips `cancelled` (under the lock) owns firing
 *   that token's registrations; it pops them one at a time under the lock and
 *   calls each with no lock held, so unregister can race safely: a reg is
 *   either still linked (del unlinks it: true) or already popped (del
 *   returns false and, if fn is running on another thread, waits for it:
 *   `firing`/`firing_thread` on the token say which reg runs where). The
 *   firing thread never touches a reg after calling its fn, so fn may free
 *   it. Cancel allocates nothing; descendants are walked with an intrusive
 *   worklist (`cancel_next`), each node pushed once by the thread that
 *   cancelled its parent.
 * - bw_cancel_token_poll keeps one waker registration per waiting task
 *   (deduplicated with bw_waker_will_wake) on a separate list. A task that
 *   stops waiting without the token being cancelled leaves its node until
 *   the token is cancelled or its last handle is dropped (bounded by the
 *   number of distinct tasks that waited).
 * - `cancelled` is written under the lock with release order and read
 *   lock-free with acquire (pairs with that release), so a task that sees it
 *   set also sees everything done before the cancel. */
#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "bulwark/sync.h"
#include "core/alloc.h"
#include "runtime/cancel_internal.h"

enum {
  REG_IDLE = 0,    /* initialised or removed */
  REG_LINKED = 1,  /* on a token's list */
  REG_DONE = 2,    /* popped for firing: fn is running or has run */
  REG_DROPPED = 3, /* the token's last handle went away; fn never runs */
};

enum {
  REG_OWNED = 1u << 0, /* the token frees it after firing or when dropped */
  REG_WAKER = 1u << 1, /* arg is a bw_waker_t (from bw_cancel_token_poll) */
};

typedef struct reg_list {
  bw__cancel_reg_t *head, *tail;
} reg_list_t;

#define TOKEN_MAGIC 0x62774354u /* "bwCT"; debug builds check it on entry */
#define TOKEN_DEAD 0xdeadc0deu
#define CHECK(t) assert((t)->magic == TOKEN_MAGIC)

struct bw_cancel_token {
  uint32_t magic;
  atomic_size_t handles;
  atomic_size_t refs;
  atomic_bool cancelled;
  pthread_mutex_t lock;
  bw_cancel_token_t *parent; /* immutable after creation; ref held while linked */
  bw_cancel_token_t *first_child;        /* under lock */
  bw_cancel_token_t *sib_prev, *sib_next; /* under parent->lock */
  bw_cancel_token_t *cancel_next;        /* worklist of the cancelling thread */
  reg_list_t regs;                       /* callbacks, under lock */
  reg_list_t wakers;                     /* waiting tasks, under lock */
  bw__cancel_reg_t *firing;              /* reg whose fn runs now, under lock */
  pthread_t firing_thread;               /* valid while firing != NULL */
};

struct bw_cancel_reg {
  bw__cancel_reg_t r; /* first member: a public reg is an intrusive one */
};

/* ------------------------------------------------------------------ lists */

static void list_push(reg_list_t *l, bw__cancel_reg_t *r) {
  r->next = NULL;
  r->prev = l->tail;
  if (l->tail)
    l->tail->next = r;
  else
    l->head = r;
  l->tail = r;
}

static void list_unlink(reg_list_t *l, bw__cancel_reg_t *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    l->head = r->next;
  if (r->next)
    r->next->prev = r->prev;
  else
    l->tail = r->prev;
  r->prev = r->next = NULL;
}

static reg_list_t *list_of(bw_cancel_token_t *t, bw__cancel_reg_t *r) {
  return (r->flags & REG_WAKER) ? &t->wakers : &t->regs;
}

/* ------------------------------------------------------------------ refs */

static void node_ref(bw_cancel_token_t *t) {
  /* relaxed: the caller already holds a ref or a handle */
  atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
}

/* Take a ref unless the node is already dying (refs == 0). Called under the
 * parent's lock, which a dying child must take before it is freed. */
static bool node_try_ref(bw_cancel_token_t *t) {
  size_t n = atomic_load_explicit(&t->refs, memory_order_relaxed);
  while (n != 0) {
    if (atomic_compare_exchange_weak_explicit(&t->refs, &n, n + 1, memory_order_relaxed,
                                              memory_order_relaxed))
      return true;
  }
  return false;
}

static void node_unref(bw_cancel_token_t *t) {
  while (t != NULL) {
    /* acq_rel: the last dropper sees every other holder's accesses done */
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
    bw_cancel_token_t *p = t->parent;
    if (p != NULL) {
      pthread_mutex_lock(&p->lock);
      if (t->sib_prev)
        t->sib_prev->sib_next = t->sib_next;
      else
        p->first_child = t->sib_next;
      if (t->sib_next) t->sib_next->sib_prev = t->sib_prev;
      pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_destroy(&t->lock);
    t->magic = TOKEN_DEAD;
    bw__free(t);
    t = p; /* drop the ref t held on its parent */
  }
}

/* ------------------------------------------------------------------ create */

static bw_cancel_token_t *token_alloc(void) {
  bw_cancel_token_t *t = bw__malloc(sizeof *t);
  if (t == NULL) return NULL;
  memset(t, 0, sizeof *t);
  t->magic = TOKEN_MAGIC;
  atomic_init(&t->handles, 1);
  atomic_init(&t->refs, 1);
  atomic_init(&t->cancelled, false);
  if (pthread_mutex_init(&t->lock, NULL) != 0) {
    bw__free(t);
    return NULL;
  }
  return t;
}

bw_error_t *bw_cancel_token_new(bw_cancel_token_t **out) {
  if (out == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_cancel_token_new: out is NULL");
  bw_cancel_token_t *t = token_alloc();
  if (t == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  *out = t;
  return NULL;
}

bw_error_t *bw_cancel_token_child(bw_cancel_token_t *parent, bw_cancel_token_t **out) {
  if (parent == NULL || out == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_cancel_token_child: parent and out must not be NULL");
  CHECK(parent);
  bw_cancel_token_t *c = token_alloc();
  if (c == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  pthread_mutex_lock(&parent->lock);
  if (atomic_load_explicit(&parent->cancelled, memory_order_relaxed)) {
    /* born cancelled; nothing to link. Relaxed: c is not shared yet. */
    atomic_store_explicit(&c->cancelled, true, memory_order_relaxed);
  } else {
    node_ref(parent);
    c->parent = parent;
    c->sib_prev = NULL;
    c->sib_next = parent->first_child;
    if (parent->first_child) parent->first_child->sib_prev = c;
    parent->first_child = c;
  }
  pthread_mutex_unlock(&parent->lock);
  *out = c;
  return NULL;
}

bw_cancel_token_t *bw_cancel_token_ref(bw_cancel_token_t *t) {
  if (t == NULL) return NULL;
  CHECK(t);
  /* relaxed: the caller holds a handle */
  atomic_fetch_add_explicit(&t->handles, 1, memory_order_relaxed);
  return t;
}

/* The last handle went: release every registration without running it. */
static void drop_handles(bw_cancel_token_t *t) {
  pthread_mutex_lock(&t->lock);
  reg_list_t regs = t->regs, wakers = t->wakers;
  t->regs = (reg_list_t){NULL, NULL};
  t->wakers = (reg_list_t){NULL, NULL};
  for (bw__cancel_reg_t *r = regs.head; r; r = r->next)
    atomic_store_explicit(&r->state, REG_DROPPED, memory_order_relaxed);
  for (bw__cancel_reg_t *r = wakers.head; r; r = r->next)
    atomic_store_explicit(&r->state, REG_DROPPED, memory_order_relaxed);
  pthread_mutex_unlock(&t->lock);
  reg_list_t *lists[2] = {&regs, &wakers};
  for (int i = 0; i < 2; i++) {
    bw__cancel_reg_t *r = lists[i]->head;
    while (r != NULL) {
      bw__cancel_reg_t *next = r->next;
      if (r->flags & REG_OWNED) {
        if (r->flags & REG_WAKER) bw_waker_drop(r->arg);
        bw__free(r);
      }
      /* not owned: its holder's del/remove sees REG_DROPPED and gets true */
      r = next;
    }
  }
  node_unref(t);
}

void bw_cancel_token_unref(bw_cancel_token_t *t) {
  if (t == NULL) return;
  CHECK(t);
  /* acq_rel: the last handle's owner sees the others' work finished */
  if (atomic_fetch_sub_explicit(&t->handles, 1, memory_order_acq_rel) == 1) drop_handles(t);
}

/* ------------------------------------------------------------------ cancel */

/* Fire every registration of t, one at a time, no lock held while fn runs.
 * Only the thread that flipped t->cancelled calls this. */
static void fire_all(bw_cancel_token_t *t) {
  for (;;) {
    pthread_mutex_lock(&t->lock);
    bw__cancel_reg_t *r = t->regs.head;
    reg_list_t *l = &t->regs;
    if (r == NULL) {
      r = t->wakers.head;
      l = &t->wakers;
    }
    if (r == NULL) {
      t->firing = NULL;
      pthread_mutex_unlock(&t->lock);
      return;
    }
    list_unlink(l, r);
    atomic_store_explicit(&r->state, REG_DONE, memory_order_relaxed);
    t->firing = r;
    t->firing_thread = pthread_self();
    void (*fn)(void *) = r->fn;
    void *arg = r->arg;
    bool owned = (r->flags & REG_OWNED) != 0;
    pthread_mutex_unlock(&t->lock);
    if (owned) bw__free(r); /* nobody else can reach an owned reg now */
    fn(arg); /* r may be freed by fn from here on: never touch it again */
  }
}

/* Flip t to cancelled if it is not yet; push its children (counted refs)
 * onto *wl and fire its registrations. */
static void cancel_one(bw_cancel_token_t *t, bw_cancel_token_t **wl) {
  pthread_mutex_lock(&t->lock);
  if (atomic_load_explicit(&t->cancelled, memory_order_relaxed)) {
    pthread_mutex_unlock(&t->lock);
    return;
  }
  /* release: pairs with the acquire loads in is_cancelled / poll */
  atomic_store_explicit(&t->cancelled, true, memory_order_release);
  for (bw_cancel_token_t *c = t->first_child; c; c = c->sib_next) {
    if (node_try_ref(c)) {
      c->cancel_next = *wl;
      *wl = c;
    }
  }
  pthread_mutex_unlock(&t->lock);
  fire_all(t);
}

void bw_cancel_token_cancel(bw_cancel_token_t *t) {
  if (t == NULL) return;
  CHECK(t);
  if (atomic_load_explicit(&t->cancelled, memory_order_acquire)) return;
  node_ref(t); /* a callback may drop the caller's last handle */
  bw_cancel_token_t *wl = NULL;
  cancel_one(t, &wl);
  while (wl != NULL) {
    bw_cancel_token_t *x = wl;
    wl = x->cancel_next;
    cancel_one(x, &wl);
    node_unref(x);
  }
  node_unref(t);
}

bool bw_cancel_token_is_cancelled(const bw_cancel_token_t *t) {
  /* acquire: pairs with the release store in cancel_one */
  return t != NULL && atomic_load_explicit(&t->cancelled, memory_order_acquire);
}

/* ------------------------------------------------------------------ regs */

void bw__cancel_reg_init(bw__cancel_reg_t *r, void (*fn)(void *arg), void *arg) {
  r->prev = r->next = NULL;
  r->fn = fn;
  r->arg = arg;
  r->token = NULL;
  atomic_init(&r->state, REG_IDLE);
  r->flags = 0;
}

int bw__cancel_reg_add(bw_cancel_token_t *t, bw__cancel_reg_t *r) {
  CHECK(t);
  pthread_mutex_lock(&t->lock);
  if (atomic_load_explicit(&t->cancelled, memory_order_relaxed)) {
    pthread_mutex_unlock(&t->lock);
    return BW__CANCEL_ALREADY;
  }
  r->token = t;
  atomic_store_explicit(&r->state, REG_LINKED, memory_order_relaxed);
  list_push(list_of(t, r), r);
  pthread_mutex_unlock(&t->lock);
  return BW__CANCEL_ADDED;
}

bool bw__cancel_reg_del(bw__cancel_reg_t *r) {
  bw_cancel_token_t *t = r->token;
  if (t == NULL) return false;
  pthread_mutex_lock(&t->lock);
  int st = atomic_load_explicit(&r->state, memory_order_relaxed);
  bool removed = false;
  if (st == REG_LINKED) {
    list_unlink(list_of(t, r), r);
    removed = true;
  } else if (st == REG_DROPPED) {
    removed = true;
  } else if (st == REG_DONE) {
    /* popped for firing: wait until fn has returned, unless we are inside it */
    while (t->firing == r && !pthread_equal(t->firing_thread, pthread_self())) {
      pthread_mutex_unlock(&t->lock);
      sched_yield();
      pthread_mutex_lock(&t->lock);
    }
  }
  atomic_store_explicit(&r->state, REG_IDLE, memory_order_relaxed);
  r->token = NULL;
  pthread_mutex_unlock(&t->lock);
  return removed;
}

bw_error_t *bw_cancel_token_on_cancel(bw_cancel_token_t *t, bw_cancel_fn cb, void *arg,
                                      bw_cancel_reg_t **out) {
  if (out) *out = NULL;
  if (t == NULL || cb == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_cancel_token_on_cancel: token and callback must not be NULL");
  bw_cancel_reg_t *reg = bw__malloc(sizeof *reg);
  if (reg == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw__cancel_reg_init(&reg->r, cb, arg);
  if (out == NULL) reg->r.flags = REG_OWNED;
  else node_ref(t); /* lets remove() lock t even after its handles are gone */
  if (bw__cancel_reg_add(t, &reg->r) == BW__CANCEL_ALREADY) {
    if (out == NULL) {
      bw__free(reg);
    } else {
      /* remove() will find it done and return false */
      reg->r.token = t;
      atomic_store_explicit(&reg->r.state, REG_DONE, memory_order_relaxed);
      *out = reg;
    }
    cb(arg);
    return NULL;
  }
  if (out) *out = reg;
  return NULL;
}

bool bw_cancel_reg_remove(bw_cancel_reg_t *reg) {
  if (reg == NULL) return false;
  bw_cancel_token_t *t = reg->r.token;
  bool removed = bw__cancel_reg_del(&reg->r);
  node_unref(t);
  bw__free(reg);
  return removed;
}

/* ------------------------------------------------------------------ poll */

static void wake_waker(void *arg) { bw_waker_wake(arg); }

bw_poll_t bw_cancel_token_poll(bw_cancel_token_t *t, bw_task_t *self) {
  if (t == NULL) return BW_PENDING; /* never cancelled */
  CHECK(t);
  /* acquire: pairs with the release store in cancel_one */
  if (atomic_load_explicit(&t->cancelled, memory_order_acquire)) return BW_READY;
  pthread_mutex_lock(&t->lock);
  if (atomic_load_explicit(&t->cancelled, memory_order_relaxed)) {
    pthread_mutex_unlock(&t->lock);
    return BW_READY;
  }
  for (bw__cancel_reg_t *r = t->wakers.head; r; r = r->next) {
    if (bw_waker_will_wake(r->arg, self)) {
      pthread_mutex_unlock(&t->lock);
      return BW_PENDING; /* already registered */
    }
  }
  bw__cancel_reg_t *r = bw__malloc(sizeof *r);
  if (r == NULL) {
    pthread_mutex_unlock(&t->lock);
    return bw_task_yield(self); /* out of memory: degrade to polling */
  }
  bw__cancel_reg_init(r, wake_waker, bw_task_waker(self));
  r->flags = REG_OWNED | REG_WAKER;
  r->token = t;
  atomic_store_explicit(&r->state, REG_LINKED, memory_order_relaxed);
  list_push(&t->wakers, r);
  pthread_mutex_unlock(&t->lock);
  return BW_PENDING;
}
