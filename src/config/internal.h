/* Internal interfaces of the config component (src/config/).
 *
 *   units.c    human units (durations, ratios, rates, sizes), edit distance
 *   yaml.c     libfyaml event stream -> a small node tree with line:col marks
 *   schema.c   the table of layers and their settings (type, unit, range, default)
 *   loader.c   node tree -> validated model + diagnostics (nothing half loaded)
 *   report.c   diagnostics reports, file reading, bw_config_check_*
 *   explain.c  printing a model: effective values, defaults, warnings
 *   registry.c the public registry: build stacks, clients, reload, watch
 */
#ifndef BW_CONFIG_INTERNAL_H
#define BW_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bulwark/config.h"

/* ---- units.c ------------------------------------------------------------ */

/* Return codes of the unit parsers. */
enum {
  BW__UNIT_OK = 0,
  BW__UNIT_NUMBER = -1, /* not a number where one was expected */
  BW__UNIT_UNIT = -2,   /* missing or unknown unit suffix */
  BW__UNIT_RANGE = -3,  /* overflows, negative, or not a whole count of the base unit */
};

int bw__parse_duration_ns(const char *s, uint64_t *out_ns);
int bw__parse_ratio(const char *s, double *out);
int bw__parse_rate(const char *s, bw_config_rate_t *out);
int bw__parse_size(const char *s, uint64_t *out_bytes);
int bw__parse_int(const char *s, int64_t *out);
int bw__parse_double(const char *s, double *out);
int bw__parse_bool(const char *s, bool *out);

/* Format back into the largest exact unit ("1m", "1500ms", "250us"). */
void bw__format_duration(uint64_t ns, char *buf, size_t len);
void bw__format_size(uint64_t bytes, char *buf, size_t len);
void bw__format_rate(const bw_config_rate_t *r, char *buf, size_t len);
void bw__format_ratio(double r, char *buf, size_t len);

/* ns -> ms rounded UP, as every duration is handed to a constructor or client
 * in ms: opts fields in ms often read 0 as "no limit", so "250us" must become
 * 1 ms, not 0 (and the loader's cross-checks must see the same number). */
static inline uint64_t bw__ms_up(uint64_t ns) { return ns / 1000000u + (ns % 1000000u ? 1 : 0); }

/* Levenshtein distance (bounded work: strings longer than 64 give a big number). */
size_t bw__edit_distance(const char *a, const char *b);
/* The candidate closest to `word` if it is close enough to suggest, else NULL. */
const char *bw__did_you_mean(const char *word, const char *const *candidates, size_t n);

/* ---- yaml.c --------------------------------------------------------------- */

typedef enum bw__cnode_kind { BW__CN_SCALAR, BW__CN_MAP, BW__CN_SEQ } bw__cnode_kind_t;

typedef struct bw__cnode bw__cnode_t;
struct bw__cnode {
  bw__cnode_kind_t kind;
  int line, col;        /* 1-based */
  bool quoted;          /* scalar was quoted ('..' or "..", block scalars too) */
  bool null_value;      /* plain empty / ~ / null */
  char *str;            /* scalar text (NUL-terminated) */
  size_t n;             /* children (map: pairs) */
  bw__cnode_t **keys;   /* map only: key scalars */
  bw__cnode_t **items;  /* map: values; seq: items */
};

typedef struct bw__cdoc bw__cdoc_t; /* arena owning every node */

/* Parse YAML (or JSON) text. On success *root is the document root (may be
 * NULL for an empty document) and *doc owns it. On a syntax error (tabs,
 * bad indentation, unclosed quotes, duplicate keys, aliases to unknown
 * anchors...) fills the diag list of `report` and returns -1. */
int bw__yaml_parse(const char *text, size_t len, const char *fname, bw_config_report_t *report,
                   bw__cdoc_t **doc, bw__cnode_t **root);
void bw__cdoc_free(bw__cdoc_t *doc);

/* ---- report (report.c) ------------------------------------------------- */

/* Append a diagnostic; path and message are copied. */
void bw__report_add(bw_config_report_t *r, bw_config_problem_t problem, bool warning,
                    int line, int col, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
bw_config_report_t *bw__report_new(const char *file);
/* A bw_error for the report's errors (first one on top, the rest related), or NULL. */
bw_error_t *bw__report_error(const bw_config_report_t *r);

/* ---- schema.c ------------------------------------------------------------- */

typedef enum bw__vtype {
  BW__VT_INT,
  BW__VT_DOUBLE,
  BW__VT_BOOL,
  BW__VT_DURATION,
  BW__VT_RATIO,
  BW__VT_RATE,
  BW__VT_SIZE,
  BW__VT_ENUM,
  BW__VT_STRING,
  BW__VT_KINDS,   /* list of error kind names */
  BW__VT_INTS,    /* list of integers (HTTP statuses) */
  BW__VT_STRINGS, /* list of strings (Redis error prefixes) */
  BW__VT_KIND,    /* one error kind name */
  BW__VT_REF,     /* name of a shared instance (enum_values: its layer name) or "stack" */
} bw__vtype_t;

typedef struct bw__key {
  const char *name;
  bw__vtype_t type;
  const char *enum_values; /* ENUM: "a|b|c" (first is not necessarily the default) */
  double min, max;         /* numeric range in the base unit (ns, bytes, ratio, per-s) */
  const char *def;         /* default in config syntax, NULL: no default / unset */
  bool required;
  const char *help;
} bw__key_t;

#define BW__MAX_KEYS 24

typedef struct bw__layer_schema {
  const char *name;        /* "retry" */
  bw_config_layer_kind_t kind;
  const char *shorthand;   /* key set by `- timeout: 200ms`, or NULL */
  bool shareable;          /* may appear under shared: */
  bool is_layer;           /* false for retry_budget (shared only) */
  const bw__key_t *keys;
  size_t nkeys;
} bw__layer_schema_t;

const bw__layer_schema_t *bw__schema_find(const char *name);
const bw__layer_schema_t *bw__schema_by_kind(bw_config_layer_kind_t kind);
const bw__layer_schema_t *const *bw__schema_all(size_t *n);
const bw__layer_schema_t *bw__schema_client(bool redis);
/* Index of key `name` in s, or -1. */
int bw__schema_key(const bw__layer_schema_t *s, const char *name);

/* ---- model (loader.c) ---------------------------------------------------- */

typedef struct bw__cval {
  bool set;      /* given in the file (else: default, or unset if no default) */
  bool has;      /* has a value (set or defaulted) */
  bool secret;   /* came through ${ENV}: never print */
  int line, col;
  int64_t i;
  double d;
  bool b;
  uint64_t u;    /* duration ns, size bytes */
  bw_config_rate_t rate;
  char *s;       /* STRING, ENUM, REF */
  size_t n;      /* list length */
  int64_t *ints; /* INTS, KINDS (as bw_error_kind_t) */
  char **strs;   /* STRINGS */
  char *env;     /* the ${VAR} name when secret */
} bw__cval_t;

typedef struct bw__clayer {
  const bw__layer_schema_t *schema;
  char *shared;           /* non-NULL: this item references shared[shared] */
  int line, col;
  char *path;             /* "stacks.payments[2].retry" */
  bw__cval_t vals[BW__MAX_KEYS];
} bw__clayer_t;

typedef struct bw__cstack {
  char *name;
  int line, col;
  size_t n;
  bw__clayer_t *layers;
} bw__cstack_t;

typedef struct bw__cshared {
  char *name;
  bw__clayer_t layer;
} bw__cshared_t;

typedef struct bw__cclient {
  char *name;
  bool redis;
  int line, col;
  bw__clayer_t conf;      /* schema = bw__schema_client(redis) */
} bw__cclient_t;

typedef struct bw__config {
  char *file;
  size_t nstacks, nshared, nclients;
  bw__cstack_t *stacks;
  bw__cshared_t *shared;
  bw__cclient_t *clients;
} bw__config_t;

/* Validate text into a model. Returns the model, or NULL if `report` got an
 * error (every diagnostic lands in report; warnings do not fail). */
bw__config_t *bw__config_load(const char *text, size_t len, const char *fname,
                              bw_config_report_t *report);
void bw__config_free(bw__config_t *c);
const bw__cstack_t *bw__config_stack(const bw__config_t *c, const char *name);
const bw__cshared_t *bw__config_shared(const bw__config_t *c, const char *name);
const bw__cclient_t *bw__config_client(const bw__config_t *c, const char *name);
/* The layer an item stands for (the shared definition for references). */
const bw__clayer_t *bw__config_resolve(const bw__config_t *c, const bw__clayer_t *item);
/* True if two layer definitions have the same schema and every value equal. */
bool bw__clayer_equal(const bw__clayer_t *a, const bw__clayer_t *b);
/* Read a whole file into a NUL-terminated buffer (bw__free it). -errno on failure. */
int bw__read_file(const char *path, char **out, size_t *len);

/* ---- explain.c ------------------------------------------------------------ */
void bw__format_value(const bw__key_t *k, const bw__cval_t *v, char *buf, size_t len);
/* Layer-order warnings for a stack (recommended order, DESIGN.md). */
void bw__order_check(const bw__config_t *c, const bw__cstack_t *s, bw_config_report_t *r);

#endif
