/* Reports (every diagnostic of one validation), reading files, and the
 * public check entry points.
 *
 * Design notes
 * - A report owns copies of every path and message; diagnostics point at
 *   the report's own file name, so they live exactly as long as the report.
 * - Errors after kMaxErrors are dropped (a broken file can produce one per
 *   line); warnings are always kept.
 * - The bw_error for a report is its first error, with the others as
 *   related errors, each "file:line:col: path: message". */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"
#include "core/alloc.h"

enum { kMaxErrors = 50 };

/* ---- report ------------------------------------------------------------- */

struct bw_config_report {
  char *file;
  bw_config_diag_t *d;
  size_t n, cap, nerr;
};

static const char *const kProblemNames[BW_CFG__MAX] = {
    "ok",           "io",           "syntax",        "tab",           "duplicate_key",
    "unknown_section", "unknown_layer", "unknown_key", "type",         "range",
    "unit",         "bad_value",    "unknown_ref",   "empty_stack",   "missing_key",
    "env",          "layer_order",  "empty",
};

const char *bw_config_problem_name(bw_config_problem_t p) {
  if ((int)p < 0 || p >= BW_CFG__MAX) return "unknown";
  return kProblemNames[p];
}

bw_config_report_t *bw__report_new(const char *file) {
  bw_config_report_t *r = bw__calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->file = bw__strdup(file ? file : "<string>");
  if (r->file == NULL) {
    bw__free(r);
    return NULL;
  }
  return r;
}

void bw__report_add(bw_config_report_t *r, bw_config_problem_t problem, bool warning, int line,
                    int col, const char *path, const char *fmt, ...) {
  if (r == NULL) return;
  if (!warning && r->nerr >= kMaxErrors) return;
  if (r->n == r->cap) {
    size_t nc = r->cap ? r->cap * 2 : 8;
    bw_config_diag_t *nd = bw__realloc(r->d, nc * sizeof *nd);
    if (nd == NULL) return;
    r->d = nd;
    r->cap = nc;
  }
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char *p = bw__strdup(path ? path : "");
  char *m = bw__strdup(msg);
  if (p == NULL || m == NULL) {
    bw__free(p);
    bw__free(m);
    return;
  }
  r->d[r->n++] = (bw_config_diag_t){problem, warning, r->file, line, col, p, m};
  if (!warning) r->nerr++;
}

size_t bw_config_report_count(const bw_config_report_t *r) { return r ? r->n : 0; }
size_t bw_config_report_errors(const bw_config_report_t *r) { return r ? r->nerr : 0; }

const bw_config_diag_t *bw_config_report_get(const bw_config_report_t *r, size_t i) {
  return (r != NULL && i < r->n) ? &r->d[i] : NULL;
}

static size_t format_diag(const bw_config_diag_t *d, char *buf, size_t len) {
  int n;
  const char *w = d->warning ? "warning: " : "";
  if (d->line > 0 && d->path[0] != '\0')
    n = snprintf(buf, len, "%s:%d:%d: %s: %s%s", d->file, d->line, d->column, d->path, w, d->message);
  else if (d->line > 0)
    n = snprintf(buf, len, "%s:%d:%d: %s%s", d->file, d->line, d->column, w, d->message);
  else if (d->path[0] != '\0')
    n = snprintf(buf, len, "%s: %s: %s%s", d->file, d->path, w, d->message);
  else
    n = snprintf(buf, len, "%s: %s%s", d->file, w, d->message);
  return n < 0 ? 0 : (size_t)n;
}

void bw_config_report_print(const bw_config_report_t *r, FILE *out) {
  if (r == NULL || out == NULL) return;
  char buf[2048];
  for (size_t i = 0; i < r->n; i++) {
    format_diag(&r->d[i], buf, sizeof buf);
    fprintf(out, "%s\n", buf);
  }
}

void bw_config_report_free(bw_config_report_t *r) {
  if (r == NULL) return;
  for (size_t i = 0; i < r->n; i++) {
    bw__free((char *)r->d[i].path);
    bw__free((char *)r->d[i].message);
  }
  bw__free(r->d);
  bw__free(r->file);
  bw__free(r);
}

static bw_error_t *diag_error(const bw_config_diag_t *d, bw_error_t **related, size_t nrel) {
  char buf[2048];
  format_diag(d, buf, sizeof buf);
  return bw_error_make(BW_ERR_CONFIG, d->problem, NULL, NULL, related, nrel, __FILE__, __LINE__,
                       "%s", buf);
}

bw_error_t *bw__report_error(const bw_config_report_t *r) {
  if (r == NULL || r->nerr == 0) return NULL;
  const bw_config_diag_t *first = NULL;
  bw_error_t *rel[kMaxErrors];
  size_t nrel = 0;
  for (size_t i = 0; i < r->n; i++) {
    if (r->d[i].warning) continue;
    if (first == NULL) first = &r->d[i];
    else if (nrel < kMaxErrors) rel[nrel++] = diag_error(&r->d[i], NULL, 0);
  }
  return diag_error(first, nrel ? rel : NULL, nrel);
}

int bw__read_file(const char *path, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -errno;
  size_t cap = 4096, n = 0;
  char *buf = bw__malloc(cap);
  if (buf == NULL) {
    fclose(f);
    return -ENOMEM;
  }
  for (;;) {
    if (n + 1 >= cap) {
      if (cap > ((size_t)64 << 20)) { /* 64 MiB is not a config file */
        bw__free(buf);
        fclose(f);
        return -EFBIG;
      }
      char *nb = bw__realloc(buf, cap * 2);
      if (nb == NULL) {
        bw__free(buf);
        fclose(f);
        return -ENOMEM;
      }
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) break;
  }
  int err = ferror(f) ? -EIO : 0;
  fclose(f);
  if (err) {
    bw__free(buf);
    return err;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

/* ---- public check ------------------------------------------------------------- */

bw_error_t *bw_config_check_string(const char *text, size_t len, const char *name,
                                   bw_config_report_t **report) {
  if (report) *report = NULL;
  if (text == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "config text is NULL");
  bw_config_report_t *r = bw__report_new(name ? name : "<string>");
  if (r == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw__config_t *c = bw__config_load(text, len, name ? name : "<string>", r);
  bw__config_free(c);
  bw_error_t *e = bw__report_error(r);
  if (report) *report = r;
  else bw_config_report_free(r);
  return e;
}

bw_error_t *bw_config_check_file(const char *path, bw_config_report_t **report) {
  if (report) *report = NULL;
  if (path == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "config path is NULL");
  char *text;
  size_t len;
  int rc = bw__read_file(path, &text, &len);
  if (rc != 0) {
    bw_config_report_t *r = bw__report_new(path);
    if (r == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
    bw__report_add(r, BW_CFG_IO, false, 0, 0, "", "cannot read: %s", strerror(-rc));
    bw_error_t *e = bw__report_error(r);
    if (report) *report = r;
    else bw_config_report_free(r);
    return e;
  }
  bw_error_t *e = bw_config_check_string(text, len, path, report);
  bw__free(text);
  return e;
}
