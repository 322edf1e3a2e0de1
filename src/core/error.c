/* The error chain (include/bulwark/error.h).
 *
 * Design notes
 * - One allocation per error: the struct, then the related-error array, then
 *   the message, then a copy of the file name. Nothing is ever written after
 *   bw_error_make returns, so readers need no synchronisation beyond the
 *   reference they hold.
 * - Refcount: ref is a relaxed increment (the caller already holds a ref, so
 *   the object cannot die meanwhile). unref is an acq_rel decrement, so the
 *   thread that drops the last ref sees every other thread's reads as
 *   finished before it frees (the Arc scheme, without a separate fence).
 * - Freeing walks the cause chain iteratively (chains can be long: a retry
 *   wraps every attempt), related errors recurse (they are shallow).
 * - Static errors (one per kind) live in a table filled at compile time; their
 *   `is_static` flag turns ref/unref into no-ops, so hot-path rejections cost
 *   no malloc and no atomic.
 * - Out of memory while making an error: release what was consumed (cause and
 *   related) and return the static BW_ERR_OUT_OF_MEMORY error. Never NULL.
 * - bw_error_format never allocates and uses no static buffer: it appends to
 *   the caller's buffer through a small cursor that keeps counting past the
 *   end, like snprintf. */
#include "bulwark/error.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

struct bw_error {
  atomic_size_t refs;
  bool is_static;
  bw_error_kind_t kind;
  int64_t detail;
  int line;
  const char *file;    /* points into the allocation, or NULL */
  const char *message; /* into the allocation, or a static default message */
  bw_error_t *cause;
  bw_error_hints_t hints;
  size_t nrelated;
  bw_error_t **related; /* into the allocation */
};

/* -------------------------------------------------------------------------
 * Kind table */

const char *bw_error_kind_name(bw_error_kind_t kind) {
  switch (kind) {
    case BW_ERR_NONE:
      return "none";
#define NAME_CASE(name, num, str, msg) \
  case BW_ERR_##name:                  \
    return str;
      BW_ERROR_KINDS(NAME_CASE)
#undef NAME_CASE
    case BW_ERR__MAX:
      break;
  }
  return "unknown";
}

const char *bw_error_kind_message(bw_error_kind_t kind) {
  switch (kind) {
    case BW_ERR_NONE:
      return "no error";
#define MSG_CASE(name, num, str, msg) \
  case BW_ERR_##name:                 \
    return msg;
      BW_ERROR_KINDS(MSG_CASE)
#undef MSG_CASE
    case BW_ERR__MAX:
      break;
  }
  return "unknown error";
}

bool bw_error_kind_from_name(const char *name, bw_error_kind_t *out) {
  if (name == NULL) return false;
#define PARSE(n, num, str, msg)     \
  if (strcmp(name, str) == 0) {     \
    if (out) *out = BW_ERR_##n;     \
    return true;                    \
  }
  BW_ERROR_KINDS(PARSE)
#undef PARSE
  return false;
}

static bool kind_valid(bw_error_kind_t kind) {
  return (int)kind > (int)BW_ERR_NONE && (int)kind < (int)BW_ERR__MAX &&
         strcmp(bw_error_kind_name(kind), "unknown") != 0;
}

/* -------------------------------------------------------------------------
 * Static errors */

/* One per kind, filled at compile time from the X-macro table. Holes (numbers
 * without a kind) stay zero and are never handed out. The refcount is never
 * touched (is_static), so the table is read-only in practice. */
static bw_error_t static_errors[BW_ERR__MAX] = {
#define STATIC_ERR(name, num, str, msg) \
  [BW_ERR_##name] = {.is_static = true, .kind = BW_ERR_##name, .message = msg},
    BW_ERROR_KINDS(STATIC_ERR)
#undef STATIC_ERR
};

bw_error_t *bw_error_static(bw_error_kind_t kind) {
  if (!kind_valid(kind)) kind = BW_ERR_INTERNAL;
  return &static_errors[kind];
}

/* -------------------------------------------------------------------------
 * Lifetime */

bw_error_t *bw_error_ref(const bw_error_t *ce) {
  bw_error_t *e = (bw_error_t *)ce;
  if (e == NULL || e->is_static) return e;
  /* relaxed: the caller holds a reference, nothing to order with */
  atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
  return e;
}

/* Drop one ref; true if it was the last one (the caller then frees). */
static bool drop_ref(bw_error_t *e) {
  if (e->is_static) return false;
  /* acq_rel: the release half orders our reads of e before the free done by
   * the last dropper; the acquire half (used by that last dropper) pairs with
   * the release of every other dropper. One RMW instead of release + fence:
   * same cost on x86 and TSan understands it (it does not model fences). */
  return atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1;
}

void bw_error_unref(const bw_error_t *ce) {
  bw_error_t *e = (bw_error_t *)ce;
  while (e != NULL && drop_ref(e)) {
    bw_error_t *next = e->cause;
    for (size_t i = 0; i < e->nrelated; i++) bw_error_unref(e->related[i]);
    bw__free(e);
    e = next;
  }
}

/* -------------------------------------------------------------------------
 * Making */

static bw_error_t *out_of_memory(bw_error_t *cause, bw_error_t **related, size_t nrelated) {
  bw_error_unref(cause);
  for (size_t i = 0; related != NULL && i < nrelated; i++) bw_error_unref(related[i]);
  return bw_error_static(BW_ERR_OUT_OF_MEMORY);
}

bw_error_t *bw_error_vmake(bw_error_kind_t kind, int64_t detail, bw_error_t *cause,
                           const bw_error_hints_t *hints, bw_error_t **related,
                           size_t nrelated, const char *file, int line, const char *fmt,
                           va_list ap) {
  if (!kind_valid(kind)) kind = BW_ERR_INTERNAL;
  if (related == NULL) nrelated = 0;

  /* Size the message first (a copy of ap: it is walked twice). */
  size_t msg_len = 0;
  if (fmt != NULL) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
      fmt = NULL; /* a broken format: keep the default message */
    } else {
      msg_len = (size_t)n;
    }
  }
  size_t file_len = file ? strlen(file) : 0;

  size_t off_related = sizeof(bw_error_t);
  size_t off_msg = off_related + nrelated * sizeof(bw_error_t *);
  size_t off_file = off_msg + (fmt ? msg_len + 1 : 0);
  size_t total = off_file + (file ? file_len + 1 : 0);
  if (nrelated > (SIZE_MAX - sizeof(bw_error_t)) / sizeof(bw_error_t *) / 2 ||
      msg_len > SIZE_MAX / 4 || file_len > SIZE_MAX / 4)
    return out_of_memory(cause, related, nrelated);

  void *block = bw__malloc(total);
  if (block == NULL) return out_of_memory(cause, related, nrelated);

  bw_error_t *e = block;
  char *mem = block;
  atomic_init(&e->refs, 1);
  e->is_static = false;
  e->kind = kind;
  e->detail = detail;
  e->line = line;
  e->cause = cause;
  e->hints.retry_after_ms = hints ? hints->retry_after_ms : 0;
  e->nrelated = nrelated;
  e->related = nrelated ? (bw_error_t **)(void *)(mem + off_related) : NULL;
  for (size_t i = 0; i < nrelated; i++) e->related[i] = related[i];
  if (fmt != NULL) {
    char *m = mem + off_msg;
    vsnprintf(m, msg_len + 1, fmt, ap);
    e->message = m;
  } else {
    e->message = bw_error_kind_message(kind);
  }
  if (file != NULL) {
    char *f = mem + off_file;
    memcpy(f, file, file_len + 1);
    e->file = f;
  } else {
    e->file = NULL;
  }
  return e;
}

bw_error_t *bw_error_make(bw_error_kind_t kind, int64_t detail, bw_error_t *cause,
                          const bw_error_hints_t *hints, bw_error_t **related,
                          size_t nrelated, const char *file, int line, const char *fmt,
                          ...) {
  va_list ap;
  va_start(ap, fmt);
  bw_error_t *e =
      bw_error_vmake(kind, detail, cause, hints, related, nrelated, file, line, fmt, ap);
  va_end(ap);
  return e;
}

/* -------------------------------------------------------------------------
 * Accessors */

static const bw_error_hints_t no_hints = {0};

bw_error_kind_t bw_error_kind(const bw_error_t *e) { return e ? e->kind : BW_ERR_NONE; }
int64_t bw_error_detail(const bw_error_t *e) { return e ? e->detail : 0; }
const char *bw_error_message(const bw_error_t *e) {
  return e ? e->message : bw_error_kind_message(BW_ERR_NONE);
}
const char *bw_error_file(const bw_error_t *e) { return e ? e->file : NULL; }
int bw_error_line(const bw_error_t *e) { return e ? e->line : 0; }
const bw_error_t *bw_error_cause(const bw_error_t *e) { return e ? e->cause : NULL; }
const bw_error_hints_t *bw_error_hints(const bw_error_t *e) {
  return e ? &e->hints : &no_hints;
}
size_t bw_error_related_count(const bw_error_t *e) { return e ? e->nrelated : 0; }
const bw_error_t *bw_error_related(const bw_error_t *e, size_t i) {
  return (e && i < e->nrelated) ? e->related[i] : NULL;
}
bool bw_error_is_static(const bw_error_t *e) { return e ? e->is_static : false; }

const bw_error_t *bw_error_find(const bw_error_t *e, bw_error_kind_t kind) {
  for (; e != NULL; e = e->cause)
    if (e->kind == kind) return e;
  return NULL;
}

bool bw_error_is(const bw_error_t *e, bw_error_kind_t kind) {
  return bw_error_find(e, kind) != NULL;
}

const bw_error_t *bw_error_root(const bw_error_t *e) {
  if (e == NULL) return NULL;
  while (e->cause != NULL) e = e->cause;
  return e;
}

int64_t bw_error_retry_after_ms(const bw_error_t *e) {
  int64_t best = 0;
  for (; e != NULL; e = e->cause) {
    int64_t v = e->hints.retry_after_ms;
    if (v > 0 && (best == 0 || v < best)) best = v;
  }
  return best;
}

/* -------------------------------------------------------------------------
 * Formatting */

typedef struct cursor {
  char *buf;
  size_t len; /* capacity of buf */
  size_t pos; /* characters the full text needs so far */
} cursor_t;

static void put(cursor_t *c, const char *s, size_t n) {
  if (c->pos < c->len) {
    size_t room = c->len - 1 - c->pos; /* keep one byte for the NUL */
    size_t k = n < room ? n : room;
    if (k) memcpy(c->buf + c->pos, s, k);
  }
  c->pos += n;
}

static void puts_(cursor_t *c, const char *s) { put(c, s, strlen(s)); }

static void put_uint(cursor_t *c, unsigned long long v) {
  char tmp[24];
  size_t i = sizeof tmp;
  do {
    tmp[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  put(c, tmp + i, sizeof tmp - i);
}

static void put_int(cursor_t *c, long long v) {
  if (v < 0) {
    put(c, "-", 1);
    put_uint(c, 0ull - (unsigned long long)v);
  } else {
    put_uint(c, (unsigned long long)v);
  }
}

static void format_chain(cursor_t *c, const bw_error_t *e, unsigned flags);

static void format_link(cursor_t *c, const bw_error_t *e, unsigned flags) {
  if (flags & BW_ERROR_FMT_KIND) {
    put(c, "[", 1);
    puts_(c, bw_error_kind_name(e->kind));
    put(c, "] ", 2);
  }
  puts_(c, e->message);
  if ((flags & BW_ERROR_FMT_LOCATION) && e->file != NULL) {
    puts_(c, " (at ");
    puts_(c, e->file);
    put(c, ":", 1);
    put_int(c, e->line);
    put(c, ")", 1);
  }
  if (flags & BW_ERROR_FMT_RELATED) {
    for (size_t i = 0; i < e->nrelated; i++) {
      puts_(c, " [attempt ");
      put_uint(c, (unsigned long long)i + 1);
      put(c, ": ", 2);
      format_chain(c, e->related[i], flags);
      put(c, "]", 1);
    }
  }
}

static void format_chain(cursor_t *c, const bw_error_t *e, unsigned flags) {
  if (e == NULL) {
    puts_(c, "(null)");
    return;
  }
  for (bool first = true; e != NULL; e = e->cause, first = false) {
    if (!first) put(c, ": ", 2);
    format_link(c, e, flags);
  }
}

size_t bw_error_format(const bw_error_t *e, char *buf, size_t len, unsigned flags) {
  cursor_t c = {buf, buf ? len : 0, 0};
  if (e == NULL)
    puts_(&c, "success");
  else
    format_chain(&c, e, flags);
  if (c.len > 0) c.buf[c.pos < c.len ? c.pos : c.len - 1] = '\0';
  return c.pos;
}
