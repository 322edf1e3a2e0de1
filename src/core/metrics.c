/* Metrics: log-linear histograms, the registry of collectors, and the
 * Prometheus text writer.
 *
 * Histogram layout: bucket 0 holds [0, 1024) ns; then for each power of two
 * 2^e (e = 10..35) four linear sub-buckets of width 2^(e-2); the last bucket
 * is overflow (>= 2^36 ns, ~68.7 s). Four sub-buckets bound the relative
 * error of a percentile at 25% (the bucket width over its lower bound); HDR
 * histograms use more, but 106 relaxed counters per stack are cheap to keep
 * and to write. Recording is one relaxed fetch_add per counter (sum,
 * bucket; the count is the buckets' sum): exact counts, not mutually
 * consistent while calls run.
 *
 * Registry: a mutex-protected list. Writing holds the mutex while calling
 * collectors, which is what makes bw_metric_remove() wait for a running
 * read; a collector must therefore not add or remove metrics. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/counter.h"
#include "core/metrics_internal.h"

/* ---- histograms ----------------------------------------------------------- */

/* One shard per counter shard (core/counter.h): a thread records into its
 * own, so workers recording at once do not fight over cache lines (a stack
 * records every call); readers add the shards up. */
typedef struct hist_shard {
  _Atomic uint64_t sum;
  _Atomic uint64_t b[BW__HIST_BUCKETS];
  char pad[64]; /* the next shard's first line is its own */
} hist_shard_t;

struct bw_histogram {
  hist_shard_t s[BW__COUNTER_SHARDS];
};

static uint64_t bucket_count(const bw_histogram_t *h, size_t i) {
  uint64_t n = 0;
  for (unsigned k = 0; k < BW__COUNTER_SHARDS; k++)
    n += atomic_load_explicit((_Atomic uint64_t *)&h->s[k].b[i], memory_order_relaxed);
  return n;
}

size_t bw__histogram_index(uint64_t v) {
  if (v < 1024) return 0;
  unsigned e = 63u - (unsigned)__builtin_clzll(v);
  if (e >= 36) return BW__HIST_BUCKETS - 1;
  unsigned sub = (unsigned)(v >> (e - 2)) & 3u;
  return 1 + (size_t)(e - 10) * 4 + sub;
}

uint64_t bw__histogram_upper(size_t i) {
  if (i == 0) return 1024;
  if (i >= BW__HIST_BUCKETS - 1) return UINT64_MAX;
  unsigned e = 10 + (unsigned)((i - 1) / 4), sub = (unsigned)((i - 1) % 4);
  return (uint64_t)(4 + sub + 1) << (e - 2);
}

bw_error_t *bw_histogram_new(bw_histogram_t **out) {
  if (!out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_histogram_new: NULL out");
  bw_histogram_t *h = bw__calloc(1, sizeof *h);
  if (!h) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  *out = h;
  return NULL;
}

void bw_histogram_free(bw_histogram_t *h) { bw__free(h); }

void bw_histogram_record(bw_histogram_t *h, uint64_t v) {
  unsigned k = bw__counter_shard();
  hist_shard_t *s = &h->s[k];
  bw__shard_add(&s->b[bw__histogram_index(v)], k, 1);
  bw__shard_add(&s->sum, k, v);
}

/* The count is the sum of the buckets (readers are rare; recording saves a
 * shared RMW, and the +Inf bucket can never be below a finite one). */
uint64_t bw_histogram_count(const bw_histogram_t *h) {
  uint64_t n = 0;
  for (size_t i = 0; i < BW__HIST_BUCKETS; i++) n += bucket_count(h, i);
  return n;
}
uint64_t bw_histogram_sum_ns(const bw_histogram_t *h) {
  uint64_t n = 0;
  for (unsigned k = 0; k < BW__COUNTER_SHARDS; k++)
    n += atomic_load_explicit((_Atomic uint64_t *)&h->s[k].sum, memory_order_relaxed);
  return n;
}

uint64_t bw_histogram_percentile(const bw_histogram_t *h, double q) {
  uint64_t counts[BW__HIST_BUCKETS], total = 0;
  for (size_t i = 0; i < BW__HIST_BUCKETS; i++) {
    counts[i] = bucket_count(h, i);
    total += counts[i];
  }
  if (!total) return 0;
  if (!(q >= 0)) q = 0; /* NaN too: its conversion below is undefined */
  if (q > 1) q = 1;
  uint64_t rank = (uint64_t)ceil(q * (double)total);
  if (rank == 0) rank = 1;
  uint64_t acc = 0;
  for (size_t i = 0; i < BW__HIST_BUCKETS; i++) {
    acc += counts[i];
    if (acc >= rank) return bw__histogram_upper(i);
  }
  return UINT64_MAX;
}

void bw_histogram_reset(bw_histogram_t *h) {
  for (unsigned k = 0; k < BW__COUNTER_SHARDS; k++) {
    for (size_t i = 0; i < BW__HIST_BUCKETS; i++)
      atomic_store_explicit(&h->s[k].b[i], 0, memory_order_relaxed);
    atomic_store_explicit(&h->s[k].sum, 0, memory_order_relaxed);
  }
}

/* ---- writer --------------------------------------------------------------- */

struct bw__prom {
  bw_write_fn write;
  void *arg;
  int failed;
};

void bw__prom_printf(bw__prom_t *w, const char *fmt, ...) {
  if (w->failed) return;
  char small[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) {
    w->failed = 1;
    return;
  }
  if ((size_t)n < sizeof small) {
    if (w->write(w->arg, small, (size_t)n) != 0) w->failed = 1;
    return;
  }
  char *big = bw__malloc((size_t)n + 1);
  if (!big) {
    w->failed = 1;
    return;
  }
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  if (w->write(w->arg, big, (size_t)n) != 0) w->failed = 1;
  bw__free(big);
}

void bw__prom_fail(bw__prom_t *w) { w->failed = 1; }

char *bw__prom_escape(const char *value) {
  size_t n = 0;
  for (const char *p = value; *p; p++) n += *p == '\\' || *p == '"' || *p == '\n' ? 2 : 1;
  char *out = bw__malloc(n + 1), *q = out;
  if (!out) return NULL;
  for (const char *p = value; *p; p++) {
    if (*p == '\\' || *p == '"' || *p == '\n') *q++ = '\\';
    *q++ = *p == '\n' ? 'n' : *p;
  }
  *q = '\0';
  return out;
}

char *bw__prom_label(const char *key, const char *value) {
  char *v = bw__prom_escape(value);
  if (!v) return NULL;
  size_t n = strlen(key) + strlen(v) + 4; /* ="" and the NUL */
  char *out = bw__malloc(n);
  if (out) snprintf(out, n, "%s=\"%s\"", key, v);
  bw__free(v);
  return out;
}

void bw__prom_histogram(bw__prom_t *w, const char *name, const char *labels,
                        const bw_histogram_t *h) {
  const char *sep = labels && *labels ? "," : "";
  if (!labels) labels = "";
  uint64_t acc = 0;
  size_t i = 0;
  /* Cumulative counts at each power of two from 2^10 ns to 2^36 ns. */
  for (unsigned e = 10; e <= 36; e++) {
    uint64_t bound = (uint64_t)1 << e;
    while (i < BW__HIST_BUCKETS - 1 && bw__histogram_upper(i) <= bound) {
      acc += bucket_count(h, i);
      i++;
    }
    bw__prom_printf(w, "%s_bucket{%s%sle=\"%.9g\"} %llu\n", name, labels, sep,
                    (double)bound / 1e9, (unsigned long long)acc);
  }
  uint64_t count = bw_histogram_count(h);
  bw__prom_printf(w, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                  (unsigned long long)count);
  bw__prom_printf(w, "%s_sum{%s} %.9g\n", name, labels, (double)bw_histogram_sum_ns(h) / 1e9);
  bw__prom_printf(w, "%s_count{%s} %llu\n", name, labels, (unsigned long long)count);
}

/* ---- registry ------------------------------------------------------------- */

struct bw_metric {
  struct bw_metric *next;
  char *family;
  char *help;
  char *labels;
  bw__prom_type_t type;
  /* one of: */
  void (*collect)(void *arg, bw__prom_t *w);
  bw_metric_read_fn read;
  void *arg;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static bw_metric_t *g_metrics, **g_tail = &g_metrics;

static bool valid_name(const char *s) {
  if (!s || !*s) return false;
  for (const char *p = s; *p; p++) {
    char c = *p;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (p != s && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

static void metric_free(bw_metric_t *m) {
  bw__free(m->family);
  bw__free(m->help);
  bw__free(m->labels);
  bw__free(m);
}

static bw_error_t *metric_add(bw_metric_t *m, bw_metric_t **out) {
  pthread_mutex_lock(&g_mu);
  m->next = NULL;
  *g_tail = m;
  g_tail = &m->next;
  pthread_mutex_unlock(&g_mu);
  if (out) *out = m;
  return NULL;
}

static bw_metric_t *metric_make(const char *family, const char *help, const char *labels) {
  bw_metric_t *m = bw__calloc(1, sizeof *m);
  if (!m) return NULL;
  m->family = bw__strdup(family);
  m->help = bw__strdup(help ? help : "");
  m->labels = bw__strdup(labels ? labels : "");
  if (!m->family || !m->help || !m->labels) {
    metric_free(m);
    return NULL;
  }
  return m;
}

bw_error_t *bw__metrics_collector_add(bw_metric_t **out, const char *family, const char *help,
                                      bw__prom_type_t type,
                                      void (*collect)(void *arg, bw__prom_t *w), void *arg) {
  if (!valid_name(family) || !collect)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "metrics: bad collector");
  bw_metric_t *m = metric_make(family, help, NULL);
  if (!m) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  m->type = type;
  m->collect = collect;
  m->arg = arg;
  return metric_add(m, out);
}

bw_error_t *bw_metrics_gauge_add(bw_metric_t **out, const char *name, const char *help,
                                 const char *labels, bool counter, bw_metric_read_fn read,
                                 void *arg) {
  if (!out || !valid_name(name) || !read)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_metrics_gauge_add: bad name or read fn");
  bw_metric_t *m = metric_make(name, help, labels);
  if (!m) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  m->type = counter ? BW__PROM_COUNTER : BW__PROM_GAUGE;
  m->read = read;
  m->arg = arg;
  return metric_add(m, out);
}

void bw_metric_remove(bw_metric_t *m) {
  if (!m) return;
  pthread_mutex_lock(&g_mu);
  for (bw_metric_t **pp = &g_metrics; *pp; pp = &(*pp)->next) {
    if (*pp == m) {
      *pp = m->next;
      if (g_tail == &m->next) g_tail = pp;
      break;
    }
  }
  pthread_mutex_unlock(&g_mu);
  metric_free(m);
}

static const char *type_name(bw__prom_type_t t) {
  switch (t) {
  case BW__PROM_COUNTER: return "counter";
  case BW__PROM_GAUGE: return "gauge";
  case BW__PROM_HISTOGRAM: return "histogram";
  }
  return "untyped";
}

static void write_one(bw__prom_t *w, bw_metric_t *m) {
  if (m->collect) {
    m->collect(m->arg, w);
    return;
  }
  double v = m->read(m->arg);
  if (m->labels[0]) bw__prom_printf(w, "%s{%s} %.17g\n", m->family, m->labels, v);
  else bw__prom_printf(w, "%s %.17g\n", m->family, v);
}

bw_error_t *bw_metrics_write_prometheus(bw_write_fn write, void *arg) {
  if (!write) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_metrics_write_prometheus: NULL write");
  bw__prom_t w = {write, arg, 0};
  pthread_mutex_lock(&g_mu);
  for (bw_metric_t *m = g_metrics; m && !w.failed; m = m->next) {
    bool seen = false;
    for (bw_metric_t *p = g_metrics; p != m; p = p->next)
      if (strcmp(p->family, m->family) == 0) {
        seen = true;
        break;
      }
    if (seen) continue;
    if (m->help[0]) bw__prom_printf(&w, "# HELP %s %s\n", m->family, m->help);
    bw__prom_printf(&w, "# TYPE %s %s\n", m->family, type_name(m->type));
    for (bw_metric_t *p = m; p && !w.failed; p = p->next)
      if (strcmp(p->family, m->family) == 0) write_one(&w, p);
  }
  pthread_mutex_unlock(&g_mu);
  return w.failed ? bw_error_new(BW_ERR_IO, 0, "metrics: writer failed") : NULL;
}

typedef struct strbuf {
  char *p;
  size_t len, cap;
} strbuf_t;

static int sb_write(void *arg, const char *data, size_t len) {
  strbuf_t *b = arg;
  if (b->len + len + 1 > b->cap) {
    size_t nc = b->cap ? b->cap : 4096;
    while (b->len + len + 1 > nc) nc *= 2;
    char *np = bw__realloc(b->p, nc);
    if (!np) return -1;
    b->p = np;
    b->cap = nc;
  }
  memcpy(b->p + b->len, data, len);
  b->len += len;
  b->p[b->len] = '\0';
  return 0;
}

bw_error_t *bw_metrics_prometheus_text(char **out, size_t *len) {
  if (!out) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_metrics_prometheus_text: NULL out");
  strbuf_t b = {0};
  if (sb_write(&b, "", 0) != 0) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw_error_t *e = bw_metrics_write_prometheus(sb_write, &b);
  if (e) {
    bw_error_unref(e);
    bw__free(b.p);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  *out = b.p;
  if (len) *len = b.len;
  return NULL;
}

void bw_metrics_text_free(char *text) { bw__free(text); }
