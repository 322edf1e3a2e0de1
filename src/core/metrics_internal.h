/* Internal metrics registry: collectors write families of samples into a
 * Prometheus text writer (src/core/metrics.c). */
#ifndef BW_CORE_METRICS_INTERNAL_H
#define BW_CORE_METRICS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "bulwark/metrics.h"

typedef struct bw__prom bw__prom_t;

/* printf into the output (no-op once the writer failed). */
void bw__prom_printf(bw__prom_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One histogram's _bucket/_sum/_count lines (family `name`, labels may be "" ). */
void bw__prom_histogram(bw__prom_t *w, const char *name, const char *labels,
                        const bw_histogram_t *h);

/* Mark the output failed (a collector out of memory). */
void bw__prom_fail(bw__prom_t *w);

/* Label values may hold any text (stack and layer names are the user's):
 * the text format wants backslash, double quote and line feed escaped as
 * \\, \" and \n. A new string (bw__free it), NULL when out of memory:
 * the value escaped, and `key="value escaped"`. */
char *bw__prom_escape(const char *value);
char *bw__prom_label(const char *key, const char *value);

typedef enum { BW__PROM_COUNTER, BW__PROM_GAUGE, BW__PROM_HISTOGRAM } bw__prom_type_t;

/* Register a collector for family `family` (static or lives as long as the
 * registration): collect(arg, w) writes its samples (no # lines).
 * Collectors of one family are written together under one # HELP/# TYPE. */
bw_error_t *bw__metrics_collector_add(bw_metric_t **out, const char *family, const char *help,
                                      bw__prom_type_t type,
                                      void (*collect)(void *arg, bw__prom_t *w), void *arg);

/* Histogram bucket helpers (tests and stack.c). */
#define BW__HIST_BUCKETS 106
size_t bw__histogram_index(uint64_t v);
uint64_t bw__histogram_upper(size_t index); /* UINT64_MAX for overflow */

#endif
