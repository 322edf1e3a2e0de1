/* Config loader: node tree -> validated model, with a report of every
 * diagnostic.
 *
 * Design notes
 * - Two passes over the top level: `shared:` first (stacks reference it),
 *   then `stacks:`, then `clients:` (they reference stacks), whatever order
 *   the file uses. Validation goes on after an error so `check` can show
 *   many at once (capped at kMaxErrors); the model is freed if any error was
 *   reported, so nothing is ever half loaded.
 * - Every value, given or defaulted, is parsed by the same code: a default
 *   is config text in the schema table, so explain prints what the file
 *   would have to say.
 * - ${VAR} is expanded only in clients: settings; a value that used it is
 *   marked secret and its text never appears in a message (we name the
 *   variable instead).
 * - Paths: "stacks.payments[2].retry.max_attempts" (indexes from 0),
 *   "shared.NAME.LAYER.KEY", "clients.NAME.http.KEY". */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"
#include "core/alloc.h"


/* ---- small helpers -------------------------------------------------------- */

typedef struct ctx {
  bw_config_report_t *r;
  bw__config_t *c;
  bool env_allowed;
} ctx_t;

static char *path_join(const char *base, const char *key) {
  size_t lb = strlen(base), lk = strlen(key);
  char *p = bw__malloc(lb + lk + 2);
  if (p == NULL) return NULL;
  memcpy(p, base, lb);
  size_t o = lb;
  if (lb) p[o++] = '.';
  memcpy(p + o, key, lk + 1);
  return p;
}

static char *path_index(const char *base, size_t i) {
  size_t lb = strlen(base);
  char *p = bw__malloc(lb + 24);
  if (p == NULL) return NULL;
  snprintf(p, lb + 24, "%s[%zu]", base, i);
  return p;
}

#define ERR(ctx, prob, node, path, ...) \
  bw__report_add((ctx)->r, (prob), false, (node)->line, (node)->col, (path), __VA_ARGS__)

static const char *node_kind_name(const bw__cnode_t *n) {
  if (n == NULL || (n->kind == BW__CN_SCALAR && n->null_value)) return "nothing";
  switch (n->kind) {
    case BW__CN_MAP: return "a mapping";
    case BW__CN_SEQ: return "a list";
    case BW__CN_SCALAR: return "a value";
  }
  return "?";
}

static void names_of(const bw__layer_schema_t *s, const char **out) {
  for (size_t i = 0; i < s->nkeys; i++) out[i] = s->keys[i].name;
}

/* Name tables for suggestions, filled once (pthread_once: loads may run on
 * several threads at once). */
static const char *kind_names[BW_ERR__MAX];
static size_t nkind_names;
static const char *layer_names[16];
static size_t nlayer_names;
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static void fill_names(void) {
  size_t n = 0;
  for (int k = 1; k < BW_ERR__MAX; k++) kind_names[n++] = bw_error_kind_name((bw_error_kind_t)k);
  nkind_names = n;
  const bw__layer_schema_t *const *all = bw__schema_all(&n);
  for (size_t i = 0; i < n && i < 16; i++) layer_names[i] = all[i]->name;
  nlayer_names = n < 16 ? n : 16;
}

static void init_kind_names(void) { pthread_once(&names_once, fill_names); }

static void expected_text(const bw__key_t *k, char *buf, size_t len) {
  switch (k->type) {
    case BW__VT_INT: snprintf(buf, len, "an integer"); break;
    case BW__VT_DOUBLE: snprintf(buf, len, "a number"); break;
    case BW__VT_BOOL: snprintf(buf, len, "true or false"); break;
    case BW__VT_DURATION: snprintf(buf, len, "a duration like 250us, 200ms, 2s or 1m"); break;
    case BW__VT_RATIO: snprintf(buf, len, "a ratio like 50%% or 0.5"); break;
    case BW__VT_RATE: snprintf(buf, len, "a rate like 100/s or 6000/m"); break;
    case BW__VT_SIZE: snprintf(buf, len, "a size like 64KiB or 10MiB"); break;
    case BW__VT_ENUM: {
      snprintf(buf, len, "one of ");
      size_t o = strlen(buf);
      for (const char *p = k->enum_values; *p && o + 3 < len; p++) {
        if (*p == '|') {
          if (o + 3 < len) { buf[o++] = ','; buf[o++] = ' '; }
        } else {
          buf[o++] = *p;
        }
      }
      buf[o] = '\0';
      break;
    }
    case BW__VT_STRING: snprintf(buf, len, "a string"); break;
    case BW__VT_KINDS: snprintf(buf, len, "a list of error kinds like [timeout, transport]"); break;
    case BW__VT_INTS: snprintf(buf, len, "a list of integers"); break;
    case BW__VT_STRINGS:
      if (k->enum_values) {
        bw__key_t one = *k;
        one.type = BW__VT_ENUM;
        char inner[120];
        expected_text(&one, inner, sizeof inner);
        snprintf(buf, len, "a list of %s", inner);
      } else {
        snprintf(buf, len, "a list of strings");
      }
      break;
    case BW__VT_KIND: snprintf(buf, len, "an error kind like timeout, transport, unavailable"); break;
    case BW__VT_REF:
      if (strcmp(k->enum_values, "stack") == 0) snprintf(buf, len, "the name of a stack");
      else snprintf(buf, len, "the name of a shared %s", k->enum_values);
      break;
  }
}

/* ${VAR} expansion. Returns a new string, or NULL after reporting. */
static char *expand_env(ctx_t *x, const bw__cnode_t *n, const char *path, bw__cval_t *v) {
  const char *s = n->str;
  if (strstr(s, "${") == NULL) return bw__strdup(s);
  if (!x->env_allowed) return bw__strdup(s); /* literal outside clients */
  size_t cap = strlen(s) + 1, o = 0;
  char *out = bw__malloc(cap);
  if (out == NULL) return NULL;
  while (*s) {
    if (s[0] == '$' && s[1] == '{') {
      const char *end = strchr(s + 2, '}');
      const char *dflt = NULL; /* ${NAME:-default} */
      size_t dlen = 0;
      if (end != NULL) {
        const char *sep = strstr(s + 2, ":-");
        if (sep != NULL && sep < end) {
          dflt = sep + 2;
          dlen = (size_t)(end - dflt);
        }
      }
      size_t nl = end ? (size_t)((dflt ? dflt - 2 : end) - s - 2) : 0;
      char name[128];
      bool ok = end != NULL && nl > 0 && nl < sizeof name;
      for (size_t i = 0; ok && i < nl; i++) {
        char ch = s[2 + i];
        ok = (ch == '_' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
              (ch >= '0' && ch <= '9'));
      }
      if (!ok) {
        ERR(x, BW_CFG_ENV, n, path, "malformed ${...}; expected ${NAME} or ${NAME:-default}, NAME of letters, digits and _");
        bw__free(out);
        return NULL;
      }
      memcpy(name, s + 2, nl);
      name[nl] = '\0';
      const char *val = getenv(name);
      size_t vl = val ? strlen(val) : 0;
      if (val == NULL && dflt != NULL) {
        /* the default is copied from the text in place, at its full length */
        val = dflt;
        vl = dlen;
      }
      if (val == NULL) {
        ERR(x, BW_CFG_ENV, n, path, "environment variable %s is not set", name);
        bw__free(out);
        return NULL;
      }
      if (v->env == NULL) v->env = bw__strdup(name);
      v->secret = true;
      if (o + vl + strlen(end + 1) + 1 > cap) {
        cap = o + vl + strlen(end + 1) + 1;
        char *no = bw__realloc(out, cap);
        if (no == NULL) {
          bw__free(out);
          return NULL;
        }
        out = no;
      }
      memcpy(out + o, val, vl);
      o += vl;
      s = end + 1;
    } else {
      if (o + 2 > cap) {
        cap = cap * 2 + 2;
        char *no = bw__realloc(out, cap);
        if (no == NULL) {
          bw__free(out);
          return NULL;
        }
        out = no;
      }
      out[o++] = *s++;
    }
  }
  out[o] = '\0';
  return out;
}

static void fmt_bound(const bw__key_t *k, double b, char *buf, size_t len) {
  switch (k->type) {
    case BW__VT_DURATION: bw__format_duration((uint64_t)b, buf, len); break;
    case BW__VT_SIZE: bw__format_size((uint64_t)b, buf, len); break;
    case BW__VT_RATE: snprintf(buf, len, "%g/s", b); break;
    case BW__VT_RATIO: bw__format_ratio(b, buf, len); break;
    default: snprintf(buf, len, "%.15g", b); break;
  }
}

static bool check_range(ctx_t *x, const bw__key_t *k, const bw__cnode_t *n, const char *path,
                        const bw__cval_t *v, double val) {
  if (k->min == 0 && k->max == 0) return true;
  if (val >= k->min && val <= k->max) return true;
  char lo[48], hi[48];
  fmt_bound(k, k->min, lo, sizeof lo);
  fmt_bound(k, k->max, hi, sizeof hi);
  if (v->secret)
    ERR(x, BW_CFG_RANGE, n, path, "the value of ${%s} is out of range; expected %s..%s", v->env, lo, hi);
  else
    ERR(x, BW_CFG_RANGE, n, path, "%s is out of range; expected %s..%s", n->str, lo, hi);
  return false;
}

static void report_unit(ctx_t *x, int rc, const bw__key_t *k, const bw__cnode_t *n,
                        const char *path, const bw__cval_t *v) {
  char exp[160];
  expected_text(k, exp, sizeof exp);
  const char *what = v->secret ? "the value of ${...}" : n->str;
  bw_config_problem_t p = rc == BW__UNIT_RANGE ? BW_CFG_RANGE
                          : rc == BW__UNIT_UNIT ? BW_CFG_UNIT
                                                : BW_CFG_BAD_VALUE;
  if (p == BW_CFG_UNIT)
    ERR(x, p, n, path, "'%s' has a missing or unknown unit; expected %s", what, exp);
  else if (p == BW_CFG_RANGE)
    ERR(x, p, n, path, "'%s' is out of range; expected %s", what, exp);
  else
    ERR(x, p, n, path, "'%s' is not valid; expected %s", what, exp);
}

static void free_val(bw__cval_t *v) {
  bw__free(v->s);
  bw__free(v->ints);
  for (size_t i = 0; v->strs && i < v->n; i++) bw__free(v->strs[i]);
  bw__free(v->strs);
  bw__free(v->env);
  memset(v, 0, sizeof *v);
}

/* One scalar item into v (lists call it per element). Returns success. */
static bool parse_scalar(ctx_t *x, const bw__key_t *k, bw__vtype_t t, const bw__cnode_t *n,
                         const char *path, bw__cval_t *v, const char *text) {
  int rc = BW__UNIT_UNIT; /* every path below sets it; initialised for -O2 -Wmaybe-uninitialized */
  switch (t) {
    case BW__VT_INT: {
      int64_t i;
      rc = bw__parse_int(text, &i);
      if (rc) break;
      if (!check_range(x, k, n, path, v, (double)i)) return false;
      v->i = i;
      return true;
    }
    case BW__VT_DOUBLE: {
      double d;
      rc = bw__parse_double(text, &d);
      if (rc) break;
      if (!check_range(x, k, n, path, v, d)) return false;
      v->d = d;
      return true;
    }
    case BW__VT_BOOL:
      rc = bw__parse_bool(text, &v->b);
      if (rc) break;
      return true;
    case BW__VT_DURATION:
      rc = bw__parse_duration_ns(text, &v->u);
      if (rc) break;
      return check_range(x, k, n, path, v, (double)v->u);
    case BW__VT_SIZE:
      rc = bw__parse_size(text, &v->u);
      if (rc) break;
      return check_range(x, k, n, path, v, (double)v->u);
    case BW__VT_RATIO:
      rc = bw__parse_ratio(text, &v->d);
      if (rc) break;
      return check_range(x, k, n, path, v, v->d);
    case BW__VT_RATE:
      rc = bw__parse_rate(text, &v->rate);
      if (rc) break;
      return check_range(x, k, n, path, v, bw_config_rate_per_sec(&v->rate));
    case BW__VT_ENUM: {
      size_t tl = strlen(text);
      const char *p = k->enum_values;
      const char *cands[16];
      char words[16][32];
      size_t nc = 0;
      while (*p && nc < 16) {
        const char *e = strchr(p, '|');
        size_t wl = e ? (size_t)(e - p) : strlen(p);
        if (wl == tl && memcmp(p, text, tl) == 0) {
          v->s = bw__strdup(text);
          return v->s != NULL;
        }
        if (wl >= sizeof words[0]) wl = sizeof words[0] - 1;
        memcpy(words[nc], p, wl);
        words[nc][wl] = '\0';
        cands[nc] = words[nc];
        nc++;
        p = e ? e + 1 : p + wl;
      }
      char exp[160];
      expected_text(k, exp, sizeof exp);
      const char *dym = bw__did_you_mean(text, cands, nc);
      if (dym)
        ERR(x, BW_CFG_BAD_VALUE, n, path, "'%s' is not allowed; did you mean '%s'? expected %s", text, dym, exp);
      else
        ERR(x, BW_CFG_BAD_VALUE, n, path, "'%s' is not allowed; expected %s", text, exp);
      return false;
    }
    case BW__VT_KIND:
    case BW__VT_KINDS: {
      bw_error_kind_t kind;
      if (bw_error_kind_from_name(text, &kind) && kind != BW_ERR_NONE) {
        if (t == BW__VT_KIND) {
          v->s = bw__strdup(text);
          v->i = kind;
          return v->s != NULL;
        }
        v->i = kind;
        return true;
      }
      init_kind_names();
      const char *dym = bw__did_you_mean(text, kind_names, nkind_names);
      if (dym)
        ERR(x, BW_CFG_BAD_VALUE, n, path, "unknown error kind '%s'; did you mean '%s'?", text, dym);
      else
        ERR(x, BW_CFG_BAD_VALUE, n, path,
            "unknown error kind '%s'; expected an error kind like timeout, transport, http_status", text);
      return false;
    }
    case BW__VT_STRINGS:
      if (k->enum_values != NULL) {
        bw__key_t one = *k;
        one.type = BW__VT_ENUM;
        bw__cval_t tmp;
        memset(&tmp, 0, sizeof tmp);
        bool ok = parse_scalar(x, &one, BW__VT_ENUM, n, path, &tmp, text);
        bw__free(tmp.s);
        return ok;
      }
      return true;
    case BW__VT_STRING:
    case BW__VT_REF:
      return true;
    case BW__VT_INTS: {
      int64_t i;
      rc = bw__parse_int(text, &i);
      if (rc) break;
      if (!check_range(x, k, n, path, v, (double)i)) return false;
      v->i = i;
      return true;
    }
  }
  report_unit(x, rc, k, n, path, v);
  return false;
}

/* Parse node n as the value of key k into v. */
static bool parse_value(ctx_t *x, const bw__key_t *k, const bw__cnode_t *n, const char *path,
                        bw__cval_t *v) {
  char exp[160];
  expected_text(k, exp, sizeof exp);
  v->line = n->line;
  v->col = n->col;
  bool list = k->type == BW__VT_KINDS || k->type == BW__VT_INTS || k->type == BW__VT_STRINGS;
  if (list) {
    size_t cnt = n->kind == BW__CN_SEQ ? n->n : 1;
    if (n->kind == BW__CN_MAP || (n->kind == BW__CN_SCALAR && n->null_value)) {
      ERR(x, BW_CFG_TYPE, n, path, "expected %s, got %s", exp, node_kind_name(n));
      return false;
    }
    v->n = 0;
    v->ints = bw__calloc(cnt ? cnt : 1, sizeof *v->ints);
    v->strs = bw__calloc(cnt ? cnt : 1, sizeof *v->strs);
    if (v->ints == NULL || v->strs == NULL) return false;
    bool ok = true;
    for (size_t i = 0; i < cnt; i++) {
      const bw__cnode_t *it = n->kind == BW__CN_SEQ ? n->items[i] : n;
      char *ip = path_index(path, i);
      if (ip == NULL) return false;
      if (it->kind != BW__CN_SCALAR || it->null_value) {
        ERR(x, BW_CFG_TYPE, it, ip, "expected %s, got %s as an item", exp, node_kind_name(it));
        ok = false;
      } else {
        bw__cval_t tmp;
        memset(&tmp, 0, sizeof tmp);
        char *txt = expand_env(x, it, ip, &tmp);
        if (txt == NULL) {
          ok = false;
        } else if (parse_scalar(x, k, k->type, it, ip, &tmp, txt)) {
          v->ints[v->n] = tmp.i;
          v->strs[v->n] = txt;
          txt = NULL;
          v->n++;
        } else {
          ok = false;
        }
        bw__free(txt);
        if (tmp.secret) v->secret = true;
        bw__free(tmp.env);
      }
      bw__free(ip);
    }
    v->has = ok;
    return ok;
  }
  if (n->kind != BW__CN_SCALAR || n->null_value) {
    ERR(x, BW_CFG_TYPE, n, path, "expected %s, got %s", exp, node_kind_name(n));
    return false;
  }
  char *txt = expand_env(x, n, path, v);
  if (txt == NULL) return false;
  bool ok = parse_scalar(x, k, k->type, n, path, v, txt);
  if (ok && (k->type == BW__VT_STRING || k->type == BW__VT_REF)) {
    v->s = txt;
    txt = NULL;
  }
  bw__free(txt);
  v->has = ok;
  return ok;
}

static void apply_default(const bw__key_t *k, bw__cval_t *v) {
  if (k->def == NULL) return;
  /* defaults are trusted config text: a scalar, or "[a, b, c]" */
  bw_config_report_t *tmp = bw__report_new("<default>");
  if (tmp == NULL) return;
  ctx_t x = {tmp, NULL, false};
  char buf[256];
  snprintf(buf, sizeof buf, "%s", k->def);
  bw__cnode_t items[16], *ptrs[16];
  bw__cnode_t root;
  memset(&root, 0, sizeof root);
  root.kind = BW__CN_SCALAR;
  root.str = buf;
  if (buf[0] == '[') {
    root.kind = BW__CN_SEQ;
    root.items = ptrs;
    char *save = NULL;
    for (char *t = strtok_r(buf + 1, ",]", &save); t && root.n < 16; t = strtok_r(NULL, ",]", &save)) {
      while (*t == ' ') t++;
      memset(&items[root.n], 0, sizeof items[0]);
      items[root.n].kind = BW__CN_SCALAR;
      items[root.n].str = t;
      ptrs[root.n] = &items[root.n];
      root.n++;
    }
  }
  if (parse_value(&x, k, &root, k->name, v)) {
    v->set = false;
    v->line = v->col = 0;
  }
  bw_config_report_free(tmp);
}

/* ---- cross-field rules (what a layer constructor would refuse) ----------- */

static const bw__cval_t *kv(const bw__clayer_t *l, const char *key) {
  int i = bw__schema_key(l->schema, key);
  return &l->vals[i];
}

static void cross_error(ctx_t *x, const bw__clayer_t *l, const char *key, const bw__cval_t *v,
                        bw_config_problem_t problem, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void cross_error(ctx_t *x, const bw__clayer_t *l, const char *key, const bw__cval_t *v,
                        bw_config_problem_t problem, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char *kp = path_join(l->path ? l->path : "", key);
  bw__report_add(x->r, problem, false, v->line ? v->line : l->line, v->line ? v->col : l->col,
                 kp ? kp : "", "%s", msg);
  bw__free(kp);
}

/* The rules here mirror the layer constructors' checks, so that `check` and
 * `explain` refuse what a load would: keep them in step with src/layers/. */
static bool cross_check(ctx_t *x, const bw__clayer_t *l) {
  switch (l->schema->kind) {
    case BW_CFG_LAYER_RATE_LIMIT: {
      const bw__cval_t *b = kv(l, "burst"), *t = kv(l, "tokens_per_call");
      if (b->has && t->has && b->i < t->i) {
        cross_error(x, l, "burst", b, BW_CFG_RANGE,
                    "burst is smaller than tokens_per_call; no call could ever pass");
        return false;
      }
      if (!b->has && t->has) {
        /* bw_rate_limit_new's default burst: one second of rate, at least 1 */
        double rate = bw_config_rate_per_sec(&kv(l, "rate")->rate);
        uint64_t burst = rate >= 1 ? (uint64_t)rate : 1;
        if ((uint64_t)t->i > burst) {
          cross_error(x, l, "tokens_per_call", t, BW_CFG_RANGE,
                      "tokens_per_call %lld is more than the default burst %llu (one second of "
                      "rate, at least 1); no call could ever pass: set burst >= tokens_per_call",
                      (long long)t->i, (unsigned long long)burst);
          return false;
        }
      }
      return true;
    }
    case BW_CFG_LAYER_RETRY: {
      const bw__cval_t *b = kv(l, "base_delay"), *m = kv(l, "max_delay");
      if (m->u != 0 && m->u < b->u) {
        cross_error(x, l, "max_delay", m, BW_CFG_RANGE,
                    "max_delay is smaller than base_delay; expected max_delay >= base_delay (or 0: no cap)");
        return false;
      }
      return true;
    }
    case BW_CFG_LAYER_CHAOS: {
      const bw__cval_t *d = kv(l, "latency_distribution"), *lo = kv(l, "latency"),
                       *hi = kv(l, "latency_max"), *f = kv(l, "faults");
      if (d->s && strcmp(d->s, "uniform") == 0 && hi->u < lo->u) {
        cross_error(x, l, "latency_max", hi, BW_CFG_RANGE,
                    "latency_max is smaller than latency; a uniform delay needs latency <= latency_max");
        return false;
      }
      if (f->has && f->n == 0) {
        cross_error(x, l, "faults", f, BW_CFG_BAD_VALUE,
                    "faults is empty; expected at least one of error, latency, hang "
                    "(enabled: false switches chaos off)");
        return false;
      }
      return true;
    }
    case BW_CFG_LAYER_CIRCUIT_BREAKER: {
      const bw__cval_t *w = kv(l, "window"), *dur = kv(l, "window_duration"),
                       *nb = kv(l, "window_buckets");
      uint64_t ms = bw__ms_up(dur->u);
      if (w->s && strcmp(w->s, "time") == 0 && (uint64_t)nb->i > ms) {
        /* the breaker needs every bucket to span at least 1 ms */
        const bw__cval_t *at = nb->set || !dur->set ? nb : dur;
        cross_error(x, l, at == nb ? "window_buckets" : "window_duration", at, BW_CFG_RANGE,
                    "window_buckets %lld is more than the %llu ms of window_duration; expected "
                    "at most one bucket per ms", (long long)nb->i, (unsigned long long)ms);
        return false;
      }
      return true;
    }
    case BW_CFG_LAYER_TIMEOUT:
    case BW_CFG_LAYER_BULKHEAD:
    case BW_CFG_LAYER_FALLBACK:
    case BW_CFG_LAYER_RETRY_BUDGET:
      return true;
  }
  return true;
}

/* ---- layers -------------------------------------------------------------- */

static void free_layer(bw__clayer_t *l) {
  for (size_t i = 0; i < BW__MAX_KEYS; i++) free_val(&l->vals[i]);
  bw__free(l->shared);
  bw__free(l->path);
  memset(l, 0, sizeof *l);
}

/* Settings of schema s from node n (mapping, scalar shorthand or null). */
static bool parse_settings(ctx_t *x, const bw__layer_schema_t *s, const bw__cnode_t *owner,
                           const bw__cnode_t *n, const char *path, bw__clayer_t *out) {
  bool ok = true;
  out->schema = s;
  out->line = owner->line;
  out->col = owner->col;
  if (n == NULL || (n->kind == BW__CN_SCALAR && n->null_value)) {
    /* all defaults */
  } else if (n->kind == BW__CN_SCALAR) {
    if (s->shorthand == NULL) {
      ERR(x, BW_CFG_TYPE, n, path, "expected a mapping of %s settings like { %s: ... }, got a value",
          s->name, s->keys[0].name);
      return false;
    }
    int ki = bw__schema_key(s, s->shorthand);
    char *kp = path_join(path, s->shorthand);
    if (kp == NULL) return false;
    ok = parse_value(x, &s->keys[ki], n, kp, &out->vals[ki]);
    out->vals[ki].set = ok;
    bw__free(kp);
  } else if (n->kind == BW__CN_SEQ) {
    ERR(x, BW_CFG_TYPE, n, path, "expected a mapping of %s settings, got a list", s->name);
    return false;
  } else {
    for (size_t i = 0; i < n->n; i++) {
      const bw__cnode_t *kn = n->keys[i];
      char *kp = path_join(path, kn->str);
      if (kp == NULL) return false;
      int ki = bw__schema_key(s, kn->str);
      if (ki < 0) {
        const char *names[BW__MAX_KEYS];
        names_of(s, names);
        const char *dym = bw__did_you_mean(kn->str, names, s->nkeys);
        if (dym)
          ERR(x, BW_CFG_UNKNOWN_KEY, kn, kp, "unknown %s setting '%s'; did you mean '%s'?", s->name, kn->str, dym);
        else
          ERR(x, BW_CFG_UNKNOWN_KEY, kn, kp, "unknown %s setting '%s'; `bulwark explain` lists them", s->name, kn->str);
        ok = false;
      } else if (!parse_value(x, &s->keys[ki], n->items[i], kp, &out->vals[ki])) {
        ok = false;
      } else {
        out->vals[ki].set = true;
      }
      bw__free(kp);
    }
  }
  for (size_t i = 0; i < s->nkeys; i++) {
    if (out->vals[i].has || out->vals[i].line > 0) continue; /* given (maybe invalid) */
    if (s->keys[i].required) {
      char *kp = path_join(path, s->keys[i].name);
      char exp[160];
      expected_text(&s->keys[i], exp, sizeof exp);
      bw__report_add(x->r, BW_CFG_MISSING_KEY, false, owner->line, owner->col, kp ? kp : path,
                     "%s needs '%s' (%s)", s->name, s->keys[i].name, exp);
      bw__free(kp);
      ok = false;
    } else {
      apply_default(&s->keys[i], &out->vals[i]);
    }
  }
  return ok;
}

static void init_layer_names(void) { pthread_once(&names_once, fill_names); }

static void report_unknown_layer(ctx_t *x, const bw__cnode_t *kn, const char *path) {
  init_layer_names();
  const char *dym = bw__did_you_mean(kn->str, layer_names, nlayer_names);
  if (dym)
    ERR(x, BW_CFG_UNKNOWN_LAYER, kn, path, "unknown layer '%s'; did you mean '%s'?", kn->str, dym);
  else
    ERR(x, BW_CFG_UNKNOWN_LAYER, kn, path,
        "unknown layer '%s'; expected timeout, retry, rate_limit, bulkhead, circuit_breaker, "
        "fallback or chaos", kn->str);
}

/* A one-key mapping { LAYER: settings }. */
static bool parse_one_layer(ctx_t *x, const bw__cnode_t *item, const char *path, bool in_stack,
                            bw__clayer_t *out) {
  const bw__cnode_t *kn, *val = NULL;
  if (item->kind == BW__CN_SCALAR && !item->null_value) {
    kn = item; /* "- bulkhead": all defaults */
  } else if (item->kind == BW__CN_MAP && item->n == 1) {
    kn = item->keys[0];
    val = item->items[0];
  } else if (item->kind == BW__CN_MAP && item->n > 1) {
    ERR(x, BW_CFG_TYPE, item->keys[1], path,
        "one layer per item, found '%s' after '%s'; start each layer with '- ' or indent its settings",
        item->keys[1]->str, item->keys[0]->str);
    return false;
  } else {
    ERR(x, BW_CFG_TYPE, item, path, "expected a layer like { retry: {...} }, got %s",
        node_kind_name(item));
    return false;
  }
  out->line = kn->line;
  out->col = kn->col;
  if (in_stack && strcmp(kn->str, "shared") == 0) {
    if (val == NULL || val->kind != BW__CN_SCALAR || val->null_value) {
      ERR(x, BW_CFG_TYPE, val ? val : kn, path, "expected the name of an instance under shared:, got %s",
          node_kind_name(val));
      return false;
    }
    const bw__cshared_t *sh = bw__config_shared(x->c, val->str);
    char *rp = path_join(path, "shared");
    if (rp == NULL) return false;
    bool ok = false;
    if (sh == NULL) {
      const char *cands[64];
      size_t nc = 0;
      for (size_t i = 0; i < x->c->nshared && nc < 64; i++) cands[nc++] = x->c->shared[i].name;
      const char *dym = bw__did_you_mean(val->str, cands, nc);
      if (dym)
        ERR(x, BW_CFG_UNKNOWN_REF, val, rp, "no shared instance '%s'; did you mean '%s'?", val->str, dym);
      else
        ERR(x, BW_CFG_UNKNOWN_REF, val, rp, "no shared instance '%s'; define it under shared:", val->str);
    } else if (sh->layer.schema == NULL) {
      /* already reported as invalid */
    } else if (!sh->layer.schema->is_layer) {
      ERR(x, BW_CFG_TYPE, val, rp, "'%s' is a %s, not a layer; reference it from retry.budget",
          val->str, sh->layer.schema->name);
    } else {
      out->schema = sh->layer.schema;
      out->shared = bw__strdup(val->str);
      ok = out->shared != NULL;
    }
    bw__free(rp);
    return ok;
  }
  const bw__layer_schema_t *s = bw__schema_find(kn->str);
  char *lp = path_join(path, kn->str);
  if (lp == NULL) return false;
  bool ok;
  if (s == NULL || (in_stack && !s->is_layer)) {
    if (s != NULL)
      ERR(x, BW_CFG_UNKNOWN_LAYER, kn, lp, "%s is not a layer; define it under shared: and name it in retry.budget",
          kn->str);
    else
      report_unknown_layer(x, kn, lp);
    ok = false;
  } else if (!in_stack && !s->shareable) {
    ERR(x, BW_CFG_TYPE, kn, lp, "%s keeps no state and cannot be shared; write it in each stack",
        kn->str);
    ok = false;
  } else {
    ok = parse_settings(x, s, kn, val, lp, out);
  }
  out->path = lp;
  if (ok && s != NULL) ok = cross_check(x, out);
  return ok;
}

/* References from retry.budget must name a shared retry_budget. */
static bool check_refs(ctx_t *x, bw__clayer_t *l) {
  if (l->schema == NULL || l->shared) return true;
  bool ok = true;
  for (size_t i = 0; i < l->schema->nkeys; i++) {
    const bw__key_t *k = &l->schema->keys[i];
    bw__cval_t *v = &l->vals[i];
    if (k->type != BW__VT_REF || !v->set || strcmp(k->enum_values, "stack") == 0) continue;
    const bw__cshared_t *sh = bw__config_shared(x->c, v->s);
    char *kp = path_join(l->path ? l->path : "", k->name);
    if (sh != NULL && sh->layer.schema != NULL && strcmp(sh->layer.schema->name, k->enum_values) != 0) {
      bw__report_add(x->r, BW_CFG_UNKNOWN_REF, false, v->line, v->col, kp ? kp : "",
                     "'%s' is a shared %s, not a %s", v->s, sh->layer.schema->name, k->enum_values);
      ok = false;
    } else if (sh == NULL) {
      const char *cands[64];
      size_t nc = 0;
      for (size_t j = 0; j < x->c->nshared && nc < 64; j++)
        if (x->c->shared[j].layer.schema &&
            strcmp(x->c->shared[j].layer.schema->name, k->enum_values) == 0)
          cands[nc++] = x->c->shared[j].name;
      const char *dym = bw__did_you_mean(v->s, cands, nc);
      bw__report_add(x->r, BW_CFG_UNKNOWN_REF, false, v->line, v->col, kp ? kp : "",
                     "no shared %s '%s'%s%s%s", k->enum_values, v->s, dym ? "; did you mean '" : "",
                     dym ? dym : "", dym ? "'?" : "");
      ok = false;
    }
    bw__free(kp);
  }
  return ok;
}

/* ---- sections -------------------------------------------------------------- */

static void parse_shared(ctx_t *x, const bw__cnode_t *n) {
  if (n->kind != BW__CN_MAP) {
    if (!n->null_value)
      ERR(x, BW_CFG_TYPE, n, "shared", "expected a mapping of NAME: { LAYER: settings }, got %s",
          node_kind_name(n));
    return;
  }
  x->c->shared = bw__calloc(n->n ? n->n : 1, sizeof *x->c->shared);
  if (x->c->shared == NULL) return;
  for (size_t i = 0; i < n->n; i++) {
    bw__cshared_t *sh = &x->c->shared[x->c->nshared++];
    sh->name = bw__strdup(n->keys[i]->str);
    char *p = path_join("shared", n->keys[i]->str);
    if (p == NULL || sh->name == NULL) {
      bw__free(p);
      continue;
    }
    const bw__cnode_t *v = n->items[i];
    if (v->kind != BW__CN_MAP || v->n != 1) {
      ERR(x, BW_CFG_TYPE, v->kind == BW__CN_MAP && v->n > 1 ? v->keys[1] : v, p,
          "expected exactly one layer like { circuit_breaker: {...} }, got %s",
          v->kind == BW__CN_MAP ? "several keys" : node_kind_name(v));
    } else if (!parse_one_layer(x, v, p, false, &sh->layer)) {
      free_layer(&sh->layer); /* schema NULL marks it invalid */
    }
    bw__free(p);
  }
  for (size_t i = 0; i < x->c->nshared; i++) check_refs(x, &x->c->shared[i].layer);
}

static void parse_stacks(ctx_t *x, const bw__cnode_t *n) {
  if (n->kind != BW__CN_MAP) {
    ERR(x, BW_CFG_TYPE, n, "stacks", "expected a mapping of stack names to lists of layers, got %s",
        node_kind_name(n));
    return;
  }
  if (n->n == 0) {
    ERR(x, BW_CFG_EMPTY, n, "stacks", "no stacks; name at least one");
    return;
  }
  x->c->stacks = bw__calloc(n->n, sizeof *x->c->stacks);
  if (x->c->stacks == NULL) return;
  for (size_t i = 0; i < n->n; i++) {
    bw__cstack_t *st = &x->c->stacks[x->c->nstacks++];
    const bw__cnode_t *kn = n->keys[i], *v = n->items[i];
    st->name = bw__strdup(kn->str);
    st->line = kn->line;
    st->col = kn->col;
    char *p = path_join("stacks", kn->str);
    if (p == NULL || st->name == NULL) {
      bw__free(p);
      continue;
    }
    if ((v->kind == BW__CN_SCALAR && v->null_value) || (v->kind == BW__CN_SEQ && v->n == 0)) {
      ERR(x, BW_CFG_EMPTY_STACK, v->kind == BW__CN_SEQ ? v : kn, p,
          "stack '%s' has no layers; list at least one, outermost first", kn->str);
    } else if (v->kind != BW__CN_SEQ) {
      ERR(x, BW_CFG_TYPE, v, p, "expected a list of layers, outermost first (each item starts with '- '), got %s",
          node_kind_name(v));
    } else {
      st->layers = bw__calloc(v->n, sizeof *st->layers);
      if (st->layers != NULL) {
        for (size_t j = 0; j < v->n; j++) {
          char *ip = path_index(p, j);
          if (ip == NULL) break;
          bw__clayer_t *l = &st->layers[st->n++];
          if (parse_one_layer(x, v->items[j], ip, true, l)) {
            if (l->path == NULL) l->path = bw__strdup(ip);
            check_refs(x, l);
          }
          if (l->path == NULL) l->path = bw__strdup(ip);
          if (l->line == 0) {
            l->line = v->items[j]->line;
            l->col = v->items[j]->col;
          }
          bw__free(ip);
        }
      }
    }
    bw__free(p);
  }
}

static void parse_clients(ctx_t *x, const bw__cnode_t *n) {
  if (n->kind != BW__CN_MAP) {
    if (!n->null_value)
      ERR(x, BW_CFG_TYPE, n, "clients", "expected a mapping of NAME: { http|redis: settings }, got %s",
          node_kind_name(n));
    return;
  }
  x->c->clients = bw__calloc(n->n ? n->n : 1, sizeof *x->c->clients);
  if (x->c->clients == NULL) return;
  x->env_allowed = true;
  for (size_t i = 0; i < n->n; i++) {
    const bw__cnode_t *kn = n->keys[i], *v = n->items[i];
    bw__cclient_t *cl = &x->c->clients[x->c->nclients++];
    cl->name = bw__strdup(kn->str);
    cl->line = kn->line;
    cl->col = kn->col;
    char *p = path_join("clients", kn->str);
    if (p == NULL || cl->name == NULL) {
      bw__free(p);
      continue;
    }
    if (v->kind != BW__CN_MAP || v->n != 1) {
      ERR(x, BW_CFG_TYPE, v->kind == BW__CN_MAP && v->n > 1 ? v->keys[1] : v, p,
          "expected exactly one of { http: {...} } or { redis: {...} }, got %s",
          v->kind == BW__CN_MAP ? "several keys" : node_kind_name(v));
      bw__free(p);
      continue;
    }
    const bw__cnode_t *tn = v->keys[0];
    char *tp = path_join(p, tn->str);
    bool redis = strcmp(tn->str, "redis") == 0;
    if (tp != NULL && !redis && strcmp(tn->str, "http") != 0) {
      static const char *const types[] = {"http", "redis"};
      const char *dym = bw__did_you_mean(tn->str, types, 2);
      ERR(x, BW_CFG_UNKNOWN_KEY, tn, tp, "unknown client type '%s'%s%s%s expected http or redis",
          tn->str, dym ? "; did you mean '" : ";", dym ? dym : "", dym ? "'?" : "");
    } else if (tp != NULL) {
      cl->redis = redis;
      const bw__layer_schema_t *s = bw__schema_client(redis);
      if (parse_settings(x, s, tn, v->items[0], tp, &cl->conf)) {
        int si = bw__schema_key(s, "stack");
        bw__cval_t *sv = &cl->conf.vals[si];
        if (sv->set && bw__config_stack(x->c, sv->s) == NULL) {
          const char *cands[64];
          size_t nc = 0;
          for (size_t j = 0; j < x->c->nstacks && nc < 64; j++) cands[nc++] = x->c->stacks[j].name;
          const char *dym = bw__did_you_mean(sv->s, cands, nc);
          char *sp = path_join(tp, "stack");
          if (sv->secret) /* never print a value that came through ${VAR} */
            bw__report_add(x->r, BW_CFG_UNKNOWN_REF, false, sv->line, sv->col, sp ? sp : tp,
                           "no stack named by the value of ${%s}", sv->env ? sv->env : "...");
          else
            bw__report_add(x->r, BW_CFG_UNKNOWN_REF, false, sv->line, sv->col, sp ? sp : tp,
                           "no stack '%s'%s%s%s", sv->s, dym ? "; did you mean '" : "",
                           dym ? dym : "", dym ? "'?" : "");
          bw__free(sp);
        }
      }
      cl->conf.path = tp;
      tp = NULL;
    }
    bw__free(tp);
    bw__free(p);
  }
  x->env_allowed = false;
}

/* ---- model --------------------------------------------------------------- */

void bw__config_free(bw__config_t *c) {
  if (c == NULL) return;
  for (size_t i = 0; i < c->nstacks; i++) {
    for (size_t j = 0; j < c->stacks[i].n; j++) free_layer(&c->stacks[i].layers[j]);
    bw__free(c->stacks[i].layers);
    bw__free(c->stacks[i].name);
  }
  for (size_t i = 0; i < c->nshared; i++) {
    free_layer(&c->shared[i].layer);
    bw__free(c->shared[i].name);
  }
  for (size_t i = 0; i < c->nclients; i++) {
    free_layer(&c->clients[i].conf);
    bw__free(c->clients[i].name);
  }
  bw__free(c->stacks);
  bw__free(c->shared);
  bw__free(c->clients);
  bw__free(c->file);
  bw__free(c);
}

const bw__cstack_t *bw__config_stack(const bw__config_t *c, const char *name) {
  for (size_t i = 0; c && name && i < c->nstacks; i++)
    if (c->stacks[i].name && strcmp(c->stacks[i].name, name) == 0) return &c->stacks[i];
  return NULL;
}
const bw__cshared_t *bw__config_shared(const bw__config_t *c, const char *name) {
  for (size_t i = 0; c && name && i < c->nshared; i++)
    if (c->shared[i].name && strcmp(c->shared[i].name, name) == 0) return &c->shared[i];
  return NULL;
}
const bw__cclient_t *bw__config_client(const bw__config_t *c, const char *name) {
  for (size_t i = 0; c && name && i < c->nclients; i++)
    if (c->clients[i].name && strcmp(c->clients[i].name, name) == 0) return &c->clients[i];
  return NULL;
}

const bw__clayer_t *bw__config_resolve(const bw__config_t *c, const bw__clayer_t *item) {
  if (item->shared == NULL) return item;
  const bw__cshared_t *sh = bw__config_shared(c, item->shared);
  return sh ? &sh->layer : item;
}

static bool val_equal(const bw__key_t *k, const bw__cval_t *a, const bw__cval_t *b) {
  if (a->has != b->has) return false;
  if (!a->has) return true;
  switch (k->type) {
    case BW__VT_INT: return a->i == b->i;
    case BW__VT_DOUBLE: case BW__VT_RATIO: return a->d == b->d;
    case BW__VT_BOOL: return a->b == b->b;
    case BW__VT_DURATION: case BW__VT_SIZE: return a->u == b->u;
    case BW__VT_RATE: return a->rate.count == b->rate.count && a->rate.per_ns == b->rate.per_ns;
    case BW__VT_ENUM: case BW__VT_STRING: case BW__VT_REF: case BW__VT_KIND:
      return strcmp(a->s ? a->s : "", b->s ? b->s : "") == 0;
    case BW__VT_KINDS: case BW__VT_INTS: case BW__VT_STRINGS:
      if (a->n != b->n) return false;
      for (size_t i = 0; i < a->n; i++) {
        if (a->ints[i] != b->ints[i]) return false;
        if (strcmp(a->strs[i], b->strs[i]) != 0) return false;
      }
      return true;
  }
  return false;
}

bool bw__clayer_equal(const bw__clayer_t *a, const bw__clayer_t *b) {
  if (a->schema != b->schema || a->schema == NULL) return false;
  for (size_t i = 0; i < a->schema->nkeys; i++)
    if (!val_equal(&a->schema->keys[i], &a->vals[i], &b->vals[i])) return false;
  return true;
}

bw__config_t *bw__config_load(const char *text, size_t len, const char *fname,
                              bw_config_report_t *report) {
  bw__cdoc_t *doc = NULL;
  bw__cnode_t *root = NULL;
  if (bw__yaml_parse(text, len, fname, report, &doc, &root) != 0) return NULL;
  size_t before = bw_config_report_errors(report);
  bw__config_t *c = bw__calloc(1, sizeof *c);
  if (c == NULL || (c->file = bw__strdup(fname ? fname : "<string>")) == NULL) {
    bw__free(c);
    bw__cdoc_free(doc);
    bw__report_add(report, BW_CFG_IO, false, 0, 0, "", "out of memory");
    return NULL;
  }
  ctx_t x = {report, c, false};
  if (root == NULL || (root->kind == BW__CN_SCALAR && root->null_value)) {
    bw__report_add(report, BW_CFG_EMPTY, false, root ? root->line : 1, root ? root->col : 1, "",
                   "empty config; expected a mapping with a 'stacks:' section");
  } else if (root->kind != BW__CN_MAP) {
    ERR(&x, BW_CFG_TYPE, root, "", "expected a mapping with a 'stacks:' section at the top, got %s",
        node_kind_name(root));
  } else {
    static const char *const sections[] = {"stacks", "shared", "clients", "version"};
    const bw__cnode_t *st = NULL, *sh = NULL, *cl = NULL;
    for (size_t i = 0; i < root->n; i++) {
      const bw__cnode_t *kn = root->keys[i];
      if (strcmp(kn->str, "stacks") == 0) st = root->items[i];
      else if (strcmp(kn->str, "shared") == 0) sh = root->items[i];
      else if (strcmp(kn->str, "clients") == 0) cl = root->items[i];
      else if (strcmp(kn->str, "version") == 0) {
        const bw__cnode_t *v = root->items[i];
        if (v->kind != BW__CN_SCALAR || strcmp(v->str, "1") != 0)
          ERR(&x, BW_CFG_BAD_VALUE, v, "version", "unsupported version; expected 1");
      } else {
        const char *dym = bw__did_you_mean(kn->str, sections, 4);
        ERR(&x, BW_CFG_UNKNOWN_SECTION, kn, kn->str, "unknown section '%s'%s%s%s expected stacks, shared or clients",
            kn->str, dym ? "; did you mean '" : ";", dym ? dym : "", dym ? "'?" : "");
      }
    }
    if (sh) parse_shared(&x, sh);
    if (st) parse_stacks(&x, st);
    else
      bw__report_add(report, BW_CFG_EMPTY, false, root->line, root->col, "",
                     "no 'stacks:' section; expected stacks: { NAME: [layers...] }");
    if (cl) parse_clients(&x, cl);
  }
  bw__cdoc_free(doc);
  if (bw_config_report_errors(report) > before) {
    bw__config_free(c);
    return NULL;
  }
  for (size_t i = 0; i < c->nstacks; i++) bw__order_check(c, &c->stacks[i], report);
  return c;
}
