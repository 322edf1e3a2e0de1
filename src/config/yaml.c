/* YAML text -> a small node tree with 1-based line:col marks.
 *
 * Design notes
 * - libfyaml 0.7 has no start mark for mapping/sequence nodes of a built
 *   document, so we read its *event* stream (every event has a start mark)
 *   and build our own tree. That also lets us report duplicate keys at the
 *   second key with the first one's line.
 * - libfyaml's diagnostics go to a private fy_diag in "collect" mode with an
 *   output function that drops text: nothing is ever printed to stderr; each
 *   collected error becomes a report entry (tabs get their own problem code).
 * - Memory: every node is owned by the doc's node vector, not by its parent,
 *   so an alias may point at an earlier node and freeing stays simple. An
 *   alias may only name a node that is complete (no cycles).
 * - Depth is limited (kMaxDepth) so a hostile file cannot exhaust anything.
 * - An empty plain scalar (`timeout:` with nothing after it) has no token,
 *   so libfyaml gives its event no mark. It gets one anyway (empty_mark()),
 *   or its errors would be the only ones without file:line:col. */
#include <libfyaml.h>
#include <string.h>

#include "config/internal.h"
#include "core/alloc.h"

enum { kMaxDepth = 64 };

struct bw__cdoc {
  bw__cnode_t **nodes;
  size_t n, cap;
};

typedef struct anchor {
  char *name;
  bw__cnode_t *node;
  bool open;
} anchor_t;

typedef struct frame {
  bw__cnode_t *node;
  size_t cap;
  bw__cnode_t *pending_key; /* map: a key waiting for its value */
  int anchor;               /* index in anchors of this node's anchor, or -1 */
} frame_t;

typedef struct builder {
  bw__cdoc_t *doc;
  bw_config_report_t *report;
  const char *fname;
  anchor_t *anchors;
  size_t nanchors, capanchors;
  frame_t stack[kMaxDepth];
  int depth;
  bw__cnode_t *root;
  int docs;
  bool failed;
  const char *text; /* the whole input, for empty_mark() */
  size_t len;
  size_t last_pos;          /* end mark of the last event that had one */
  int last_line, last_col;  /* 1-based */
} builder_t;

static void drop_output(struct fy_diag *diag, void *user, const char *buf, size_t len) {
  (void)diag, (void)user, (void)buf, (void)len;
}

static bw__cnode_t *node_new(builder_t *b, bw__cnode_kind_t kind, const struct fy_mark *m) {
  bw__cdoc_t *d = b->doc;
  if (d->n == d->cap) {
    size_t nc = d->cap ? d->cap * 2 : 32;
    bw__cnode_t **nv = bw__realloc(d->nodes, nc * sizeof *nv);
    if (nv == NULL) return NULL;
    d->nodes = nv;
    d->cap = nc;
  }
  bw__cnode_t *n = bw__calloc(1, sizeof *n);
  if (n == NULL) return NULL;
  n->kind = kind;
  n->line = m ? m->line + 1 : 0;
  n->col = m ? m->column + 1 : 0;
  d->nodes[d->n++] = n;
  return n;
}

void bw__cdoc_free(bw__cdoc_t *doc) {
  if (doc == NULL) return;
  for (size_t i = 0; i < doc->n; i++) {
    bw__cnode_t *n = doc->nodes[i];
    bw__free(n->str);
    bw__free(n->keys);
    bw__free(n->items);
    bw__free(n);
  }
  bw__free(doc->nodes);
  bw__free(doc);
}

static void fail(builder_t *b, bw_config_problem_t p, int line, int col, const char *msg,
                 const char *arg) {
  if (!b->failed) bw__report_add(b->report, p, false, line, col, "", msg, arg);
  b->failed = true;
}

static int remember_anchor(builder_t *b, struct fy_token *t, bw__cnode_t *node, bool open) {
  if (t == NULL) return -1;
  size_t len;
  const char *txt = fy_token_get_text(t, &len);
  if (txt == NULL) return -1;
  if (b->nanchors == b->capanchors) {
    size_t nc = b->capanchors ? b->capanchors * 2 : 8;
    anchor_t *na = bw__realloc(b->anchors, nc * sizeof *na);
    if (na == NULL) return -1;
    b->anchors = na;
    b->capanchors = nc;
  }
  char *name = bw__malloc(len + 1);
  if (name == NULL) return -1;
  memcpy(name, txt, len);
  name[len] = '\0';
  b->anchors[b->nanchors] = (anchor_t){name, node, open};
  return (int)b->nanchors++;
}

static bw__cnode_t *find_anchor(builder_t *b, const char *txt, size_t len, bool *open) {
  for (size_t i = b->nanchors; i-- > 0;) { /* the latest definition wins */
    if (strlen(b->anchors[i].name) == len && memcmp(b->anchors[i].name, txt, len) == 0) {
      *open = b->anchors[i].open;
      return b->anchors[i].node;
    }
  }
  return NULL;
}

static bool push_child(bw__cnode_t **arr_keys, bw__cnode_t ***items, size_t n, size_t *cap,
                       bw__cnode_t *key, bw__cnode_t *val, bw__cnode_t ***keys) {
  (void)arr_keys;
  if (n == *cap) {
    size_t nc = *cap ? *cap * 2 : 4;
    bw__cnode_t **ni = bw__realloc(*items, nc * sizeof *ni);
    if (ni == NULL) return false;
    *items = ni;
    if (keys != NULL) {
      bw__cnode_t **nk = bw__realloc(*keys, nc * sizeof *nk);
      if (nk == NULL) return false;
      *keys = nk;
    }
    *cap = nc;
  }
  (*items)[n] = val;
  if (keys != NULL) (*keys)[n] = key;
  return true;
}

/* "stacks.api[0].retry" for the containers open now, then `last`. */
static void build_path(const builder_t *b, const char *last, char *buf, size_t len) {
  size_t o = 0;
  buf[0] = '\0';
  for (int i = 0; i < b->depth && o < len; i++) {
    const frame_t *f = &b->stack[i];
    bool inner = i + 1 < b->depth;
    int w = 0;
    if (f->node->kind == BW__CN_SEQ && inner) {
      w = snprintf(buf + o, len - o, "[%zu]", f->node->n);
    } else if (f->node->kind == BW__CN_MAP && inner && f->pending_key) {
      w = snprintf(buf + o, len - o, "%s%s", o ? "." : "", f->pending_key->str);
    }
    if (w > 0) o += (size_t)w;
  }
  if (o < len) snprintf(buf + o, len - o, "%s%s", o ? "." : "", last);
}

/* Attach a finished value to the open container (or make it the root). */
static void attach(builder_t *b, bw__cnode_t *v) {
  if (b->failed) return;
  if (b->depth == 0) {
    b->root = v;
    return;
  }
  frame_t *f = &b->stack[b->depth - 1];
  bw__cnode_t *c = f->node;
  if (c->kind == BW__CN_SEQ) {
    if (!push_child(NULL, &c->items, c->n, &f->cap, NULL, v, NULL)) goto oom;
    c->n++;
    return;
  }
  if (f->pending_key == NULL) {
    if (v->kind != BW__CN_SCALAR) {
      fail(b, BW_CFG_SYNTAX, v->line, v->col, "%s", "a mapping key must be a plain word, not a list or mapping");
      return;
    }
    for (size_t i = 0; i < c->n; i++) {
      if (strcmp(c->keys[i]->str, v->str) == 0) {
        if (!b->failed) {
          char path[512];
          build_path(b, v->str, path, sizeof path);
          bw__report_add(b->report, BW_CFG_DUPLICATE_KEY, false, v->line, v->col, path,
                         "duplicate key '%s' (first at line %d); each key may appear once",
                         v->str, c->keys[i]->line);
        }
        b->failed = true;
        return;
      }
    }
    f->pending_key = v;
    return;
  }
  if (!push_child(NULL, &c->items, c->n, &f->cap, f->pending_key, v, &c->keys)) goto oom;
  c->n++;
  f->pending_key = NULL;
  return;
oom:
  fail(b, BW_CFG_IO, 0, 0, "%s", "out of memory");
}

/* Where an empty plain scalar is. A mapping value is placed at its key (the
 * key is what the reader looks for: "duration:" with nothing after it). A
 * list item is placed at its '-': the first one after the end of the
 * previous event, past blanks and comments; failing that, at that end. */
static void empty_mark(const builder_t *b, int *line, int *col) {
  if (b->depth > 0) {
    const frame_t *f = &b->stack[b->depth - 1];
    if (f->node->kind == BW__CN_MAP && f->pending_key != NULL) {
      *line = f->pending_key->line;
      *col = f->pending_key->col;
      return;
    }
  }
  *line = b->last_line;
  *col = b->last_col;
  int l = b->last_line, c = b->last_col;
  for (size_t i = b->last_pos; l > 0 && i < b->len; i++) {
    char ch = b->text[i];
    if (ch == '-') {
      *line = l;
      *col = c;
      return;
    }
    if (ch == '#') { /* a comment: only blanks come before it here */
      while (i + 1 < b->len && b->text[i + 1] != '\n') i++;
    } else if (ch == '\n') {
      l++;
      c = 1;
    } else if (ch == ' ' || ch == '\t' || ch == '\r') {
      c++;
    } else {
      return;
    }
  }
}

static void handle_event(builder_t *b, struct fy_event *e) {
  const struct fy_mark *m = fy_event_start_mark(e);
  switch (e->type) {
    case FYET_DOCUMENT_START:
      if (++b->docs > 1) {
        fail(b, BW_CFG_SYNTAX, m ? m->line + 1 : 0, m ? m->column + 1 : 0, "%s",
             "more than one YAML document; a config file holds exactly one");
      }
      return;
    case FYET_SCALAR: {
      bw__cnode_t *n = node_new(b, BW__CN_SCALAR, m);
      if (n == NULL) {
        fail(b, BW_CFG_IO, 0, 0, "%s", "out of memory");
        return;
      }
      if (m == NULL) empty_mark(b, &n->line, &n->col);
      size_t len = 0;
      const char *txt = fy_token_get_text(e->scalar.value, &len);
      n->str = bw__malloc(len + 1);
      if (n->str == NULL) {
        fail(b, BW_CFG_IO, 0, 0, "%s", "out of memory");
        return;
      }
      if (len) memcpy(n->str, txt, len);
      n->str[len] = '\0';
      if (memchr(n->str, '\0', len) != NULL) {
        {
        fail(b, BW_CFG_SYNTAX, n->line, n->col, "%s", "NUL character inside a value");
        return;
      }
      }
      enum fy_scalar_style st = fy_token_scalar_style(e->scalar.value);
      n->quoted = st != FYSS_PLAIN && st != FYSS_ANY;
      n->null_value = !n->quoted && (len == 0 || strcmp(n->str, "~") == 0 ||
                                     strcmp(n->str, "null") == 0 || strcmp(n->str, "Null") == 0 ||
                                     strcmp(n->str, "NULL") == 0);
      remember_anchor(b, e->scalar.anchor, n, false);
      attach(b, n);
      return;
    }
    case FYET_ALIAS: {
      size_t len = 0;
      const char *txt = fy_token_get_text(e->alias.anchor, &len);
      bool open = false;
      bw__cnode_t *t = txt ? find_anchor(b, txt, len, &open) : NULL;
      if (t == NULL || open) {
        {
        fail(b, BW_CFG_SYNTAX, m ? m->line + 1 : 0, m ? m->column + 1 : 0, "%s",
                    t == NULL ? "alias to an unknown anchor" : "alias to an enclosing node (a cycle)");
        return;
      }
      }
      attach(b, t);
      return;
    }
    case FYET_MAPPING_START:
    case FYET_SEQUENCE_START: {
      if (b->depth >= kMaxDepth) {
        {
        fail(b, BW_CFG_SYNTAX, m ? m->line + 1 : 0, m ? m->column + 1 : 0, "%s",
                    "nesting too deep");
        return;
      }
      }
      bw__cnode_t *n =
          node_new(b, e->type == FYET_MAPPING_START ? BW__CN_MAP : BW__CN_SEQ, m);
      if (n == NULL) {
        fail(b, BW_CFG_IO, 0, 0, "%s", "out of memory");
        return;
      }
      struct fy_token *at = e->type == FYET_MAPPING_START ? e->mapping_start.anchor
                                                          : e->sequence_start.anchor;
      frame_t *f = &b->stack[b->depth++];
      *f = (frame_t){n, 0, NULL, remember_anchor(b, at, n, true)};
      return;
    }
    case FYET_MAPPING_END:
    case FYET_SEQUENCE_END: {
      if (b->depth == 0) return;
      frame_t *f = &b->stack[--b->depth];
      if (f->anchor >= 0) b->anchors[f->anchor].open = false;
      attach(b, f->node);
      return;
    }
    case FYET_NONE:
    case FYET_STREAM_START:
    case FYET_STREAM_END:
    case FYET_DOCUMENT_END:
      return;
  }
}

/* Offset of the first NUL or invalid UTF-8 byte, or len if none. */
static size_t check_text(const char *text, size_t len) {
  const unsigned char *p = (const unsigned char *)text;
  size_t i = 0;
  while (i < len) {
    unsigned c = p[i];
    if (c == 0) return i;
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t n;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF) n = 1, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) n = 2, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) n = 3, min = 0x10000;
    else return i;
    if (len - i <= n) return i; /* truncated sequence */
    unsigned cp = c & (0x3F >> n);
    for (size_t k = 1; k <= n; k++) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += n + 1;
  }
  return len;
}

int bw__yaml_parse(const char *text, size_t len, const char *fname, bw_config_report_t *report,
                   bw__cdoc_t **doc_out, bw__cnode_t **root_out) {
  *doc_out = NULL;
  *root_out = NULL;
  /* YAML allows no NUL character, and libfyaml 0.7.12 loops forever on
   * some inputs holding one (found by fuzz/config_fuzz: "%  \0"). */
  /* Invalid UTF-8 inside a directive line hangs it too ("%  \xcd\xdf"), so
   * the text is checked to be UTF-8 first. */
  size_t bad = check_text(text, len);
  if (bad < len) {
    int line = 1, col = 1;
    for (size_t i = 0; i < bad; i++) {
      if (text[i] == '\n') {
        line++;
        col = 1;
      } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
        col++;
      }
    }
    bw__report_add(report, BW_CFG_SYNTAX, false, line, col, "",
                   text[bad] == '\0' ? "NUL character in the file; a config is text"
                                     : "invalid UTF-8; a config is UTF-8 text");
    return -1;
  }
  builder_t b;
  memset(&b, 0, sizeof b);
  b.report = report;
  b.fname = fname;
  b.text = text;
  b.len = len;
  b.doc = bw__calloc(1, sizeof *b.doc);
  if (b.doc == NULL) {
    bw__report_add(report, BW_CFG_IO, false, 0, 0, "", "out of memory");
    return -1;
  }

  struct fy_diag_cfg dcfg;
  fy_diag_cfg_default(&dcfg);
  dcfg.fp = NULL;
  dcfg.output_fn = drop_output;
  dcfg.user = NULL;
  dcfg.colorize = false;
  struct fy_diag *diag = fy_diag_create(&dcfg);
  struct fy_parser *fyp = NULL;
  if (diag != NULL) {
    fy_diag_set_collect_errors(diag, true);
    struct fy_parse_cfg pcfg;
    memset(&pcfg, 0, sizeof pcfg);
    pcfg.flags = FYPCF_QUIET | FYPCF_COLLECT_DIAG | FYPCF_DISABLE_MMAP_OPT;
    pcfg.diag = diag;
    fyp = fy_parser_create(&pcfg);
  }
  if (fyp == NULL || fy_parser_set_string(fyp, text, len) != 0) {
    bw__report_add(report, BW_CFG_IO, false, 0, 0, "", "cannot create the YAML parser");
    b.failed = true;
  } else {
    struct fy_event *e;
    while ((e = fy_parser_parse(fyp)) != NULL) {
      handle_event(&b, e);
      const struct fy_mark *end = fy_event_end_mark(e);
      if (end != NULL) { /* where empty_mark() starts looking */
        b.last_pos = end->input_pos;
        b.last_line = end->line + 1;
        b.last_col = end->column + 1;
      }
      fy_parser_event_free(fyp, e);
      if (b.failed) break;
    }
    bool stream_err = fy_parser_get_stream_error(fyp);
    if (stream_err || fy_diag_got_error(diag)) {
      void *it = NULL;
      struct fy_diag_error *de;
      bool any = false;
      while ((de = fy_diag_errors_iterate(diag, &it)) != NULL) {
        if (de->type < FYET_ERROR || any || b.failed) continue;
        const char *msg = de->msg ? de->msg : "syntax error";
        bool tab = strstr(msg, "tab") != NULL;
        bw__report_add(report, tab ? BW_CFG_TAB : BW_CFG_SYNTAX, false, de->line, de->column, "",
                       "%s%s", msg, tab ? "; indent with spaces" : "");
        any = true;
      }
      if (!any && !b.failed) bw__report_add(report, BW_CFG_SYNTAX, false, 0, 0, "", "invalid YAML");
      b.failed = true;
    }
  }
  if (fyp) fy_parser_destroy(fyp);
  if (diag) fy_diag_destroy(diag);
  for (size_t i = 0; i < b.nanchors; i++) bw__free(b.anchors[i].name);
  bw__free(b.anchors);
  if (b.failed) {
    bw__cdoc_free(b.doc);
    return -1;
  }
  *doc_out = b.doc;
  *root_out = b.root;
  return 0;
}
