/* Human units for config values.
 *
 * Design notes
 * - Numbers are parsed as decimal fixed point (integer digits, optional
 *   fraction of up to 9 digits) and scaled with integer arithmetic, so
 *   "1.5s" is exactly 1500000000 ns and "0.1s" never becomes 99999999 ns.
 *   A value that is not a whole count of the base unit ("1.5ns", "0.5B") is
 *   a range error rather than silently rounded.
 * - Every overflow is checked; nothing here allocates.
 * - Ratios are doubles: "50%" is 50/100 and "0.5" is strtod's 0.5, the same
 *   double. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "config/internal.h"

/* Decimal "123.456" -> mantissa 123456, scale 3. Returns the end pointer or
 * NULL if no digits. Up to 18 significant digits. */
static const char *parse_fixed(const char *s, uint64_t *mant, int *scale) {
  uint64_t m = 0;
  int sc = 0, digits = 0;
  bool frac = false;
  for (;; s++) {
    if (*s >= '0' && *s <= '9') {
      if (m > (UINT64_MAX - 9) / 10) return NULL;
      m = m * 10 + (uint64_t)(*s - '0');
      digits++;
      if (frac) sc++;
    } else if (*s == '.' && !frac) {
      frac = true;
    } else {
      break;
    }
  }
  if (digits == 0 || sc > 9) return NULL;
  *mant = m;
  *scale = sc;
  return s;
}

/* mant / 10^scale * mul, exact. BW__UNIT_RANGE if overflow or not whole. */
static int scale_exact(uint64_t mant, int scale, uint64_t mul, uint64_t *out) {
  uint64_t div = 1;
  for (int i = 0; i < scale; i++) div *= 10;
  if (mul != 0 && mant > UINT64_MAX / mul) {
    /* divide first when the fraction allows it */
    if (mant % div != 0) return BW__UNIT_RANGE;
    mant /= div;
    div = 1;
    if (mant > UINT64_MAX / mul) return BW__UNIT_RANGE;
  }
  uint64_t v = mant * mul;
  if (v % div != 0) return BW__UNIT_RANGE;
  *out = v / div;
  return BW__UNIT_OK;
}

static const char *skip_ws(const char *s) {
  while (*s == ' ') s++;
  return s;
}

static bool rest_is_empty(const char *s) { return *skip_ws(s) == '\0'; }

typedef struct unit {
  const char *name;
  uint64_t mul;
} unit_t;

static const unit_t kDurationUnits[] = {
    {"ns", 1ull},          {"us", 1000ull},        {"\xc2\xb5s", 1000ull}, /* µs */
    {"ms", 1000000ull},    {"s", 1000000000ull},   {"m", 60000000000ull},
    {"min", 60000000000ull}, {"h", 3600000000000ull},
};

static const unit_t kSizeUnits[] = {
    {"B", 1ull},
    {"KB", 1000ull},       {"kB", 1000ull},       {"KiB", 1024ull},
    {"MB", 1000000ull},    {"MiB", 1048576ull},   {"GB", 1000000000ull},
    {"GiB", 1073741824ull}, {"TiB", 1099511627776ull},
};

static const unit_t *find_unit(const unit_t *t, size_t n, const char *s, const char **end) {
  /* unit = the letters (and µ) up to whitespace/end */
  size_t len = 0;
  while (s[len] != '\0' && s[len] != ' ') len++;
  for (size_t i = 0; i < n; i++) {
    if (strlen(t[i].name) == len && memcmp(t[i].name, s, len) == 0) {
      *end = s + len;
      return &t[i];
    }
  }
  return NULL;
}

int bw__parse_duration_ns(const char *s, uint64_t *out_ns) {
  uint64_t mant;
  int scale;
  s = skip_ws(s);
  if (*s == '-') return BW__UNIT_RANGE;
  const char *p = parse_fixed(s, &mant, &scale);
  if (p == NULL) return BW__UNIT_NUMBER;
  p = skip_ws(p);
  if (*p == '\0') {
    if (mant == 0) { /* a bare 0 needs no unit */
      *out_ns = 0;
      return BW__UNIT_OK;
    }
    return BW__UNIT_UNIT;
  }
  const char *end;
  const unit_t *u = find_unit(kDurationUnits, sizeof kDurationUnits / sizeof kDurationUnits[0], p, &end);
  if (u == NULL || !rest_is_empty(end)) return BW__UNIT_UNIT;
  return scale_exact(mant, scale, u->mul, out_ns);
}

int bw__parse_size(const char *s, uint64_t *out_bytes) {
  uint64_t mant;
  int scale;
  s = skip_ws(s);
  if (*s == '-') return BW__UNIT_RANGE;
  const char *p = parse_fixed(s, &mant, &scale);
  if (p == NULL) return BW__UNIT_NUMBER;
  p = skip_ws(p);
  if (*p == '\0') return scale_exact(mant, scale, 1, out_bytes); /* bare bytes */
  const char *end;
  const unit_t *u = find_unit(kSizeUnits, sizeof kSizeUnits / sizeof kSizeUnits[0], p, &end);
  if (u == NULL || !rest_is_empty(end)) return BW__UNIT_UNIT;
  return scale_exact(mant, scale, u->mul, out_bytes);
}

int bw__parse_double(const char *s, double *out) {
  s = skip_ws(s);
  if (*s == '\0') return BW__UNIT_NUMBER;
  /* strtod accepts hex, inf and nan: insist on plain decimal text */
  for (const char *q = s; *q; q++) {
    if (!(isdigit((unsigned char)*q) || *q == '.' || *q == '-' || *q == '+' || *q == 'e' ||
          *q == 'E' || *q == ' '))
      return BW__UNIT_NUMBER;
  }
  errno = 0;
  char *end;
  double d = strtod(s, &end);
  if (end == s || !rest_is_empty(end)) return BW__UNIT_NUMBER;
  if (errno == ERANGE || !isfinite(d)) return BW__UNIT_RANGE;
  *out = d;
  return BW__UNIT_OK;
}

int bw__parse_ratio(const char *s, double *out) {
  s = skip_ws(s);
  size_t len = strlen(s);
  while (len > 0 && s[len - 1] == ' ') len--;
  if (len > 0 && s[len - 1] == '%') {
    char tmp[64];
    if (len - 1 >= sizeof tmp) return BW__UNIT_NUMBER;
    memcpy(tmp, s, len - 1);
    tmp[len - 1] = '\0';
    double pct;
    int rc = bw__parse_double(tmp, &pct);
    if (rc != BW__UNIT_OK) return rc;
    if (pct < 0 || pct > 100) return BW__UNIT_RANGE;
    *out = pct / 100.0;
    return BW__UNIT_OK;
  }
  double d;
  int rc = bw__parse_double(s, &d);
  if (rc != BW__UNIT_OK) {
    /* "50 percent", "half": a number followed by junk is a unit problem */
    uint64_t m;
    int sc;
    if (parse_fixed(s, &m, &sc) != NULL) return BW__UNIT_UNIT;
    return rc;
  }
  if (d < 0 || d > 1) return BW__UNIT_RANGE;
  *out = d;
  return BW__UNIT_OK;
}

int bw__parse_rate(const char *s, bw_config_rate_t *out) {
  uint64_t mant;
  int scale;
  s = skip_ws(s);
  if (*s == '-') return BW__UNIT_RANGE;
  const char *p = parse_fixed(s, &mant, &scale);
  if (p == NULL) return BW__UNIT_NUMBER;
  if (scale != 0) return BW__UNIT_RANGE; /* "1.5/s": write 3/2s instead */
  p = skip_ws(p);
  if (*p != '/') return BW__UNIT_UNIT;
  p = skip_ws(p + 1);
  /* optional count before the unit: "5/10s" */
  uint64_t per = 1;
  if (*p >= '0' && *p <= '9') {
    uint64_t pm;
    int ps;
    const char *q = parse_fixed(p, &pm, &ps);
    if (q == NULL || ps != 0 || pm == 0) return BW__UNIT_RANGE;
    per = pm;
    p = q;
  }
  const char *end;
  const unit_t *u = find_unit(kDurationUnits, sizeof kDurationUnits / sizeof kDurationUnits[0], p, &end);
  if (u == NULL || !rest_is_empty(end)) {
    if (strncmp(p, "sec", 3) == 0 && rest_is_empty(p + 3)) u = &kDurationUnits[4];
    else return BW__UNIT_UNIT;
  }
  if (per > UINT64_MAX / u->mul) return BW__UNIT_RANGE;
  out->count = mant;
  out->per_ns = per * u->mul;
  return BW__UNIT_OK;
}

int bw__parse_int(const char *s, int64_t *out) {
  s = skip_ws(s);
  const char *p = s;
  if (*p == '-' || *p == '+') p++;
  if (!isdigit((unsigned char)*p)) return BW__UNIT_NUMBER;
  errno = 0;
  char *end;
  long long v = strtoll(s, &end, 10);
  if (!rest_is_empty(end)) {
    /* "3.5" or "3x": a number, but not an integer */
    return BW__UNIT_NUMBER;
  }
  if (errno == ERANGE) return BW__UNIT_RANGE;
  *out = (int64_t)v;
  return BW__UNIT_OK;
}

int bw__parse_bool(const char *s, bool *out) {
  if (strcmp(s, "true") == 0 || strcmp(s, "yes") == 0 || strcmp(s, "on") == 0) {
    *out = true;
    return BW__UNIT_OK;
  }
  if (strcmp(s, "false") == 0 || strcmp(s, "no") == 0 || strcmp(s, "off") == 0) {
    *out = false;
    return BW__UNIT_OK;
  }
  return BW__UNIT_NUMBER;
}

double bw_config_rate_per_sec(const bw_config_rate_t *r) {
  if (r == NULL || r->per_ns == 0) return 0;
  return (double)r->count * 1e9 / (double)r->per_ns;
}

/* ---- formatting -------------------------------------------------------- */

void bw__format_duration(uint64_t ns, char *buf, size_t len) {
  static const unit_t order[] = {{"h", 3600000000000ull}, {"m", 60000000000ull},
                                 {"s", 1000000000ull},    {"ms", 1000000ull},
                                 {"us", 1000ull},         {"ns", 1ull}};
  if (ns == 0) {
    snprintf(buf, len, "0s");
    return;
  }
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
    if (ns % order[i].mul == 0) {
      snprintf(buf, len, "%llu%s", (unsigned long long)(ns / order[i].mul), order[i].name);
      return;
    }
  }
}

void bw__format_size(uint64_t b, char *buf, size_t len) {
  static const unit_t order[] = {{"TiB", 1099511627776ull}, {"GiB", 1073741824ull},
                                 {"MiB", 1048576ull},       {"KiB", 1024ull}};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
    if (b != 0 && b % order[i].mul == 0) {
      snprintf(buf, len, "%llu%s", (unsigned long long)(b / order[i].mul), order[i].name);
      return;
    }
  }
  snprintf(buf, len, "%lluB", (unsigned long long)b);
}

void bw__format_rate(const bw_config_rate_t *r, char *buf, size_t len) {
  static const unit_t order[] = {{"h", 3600000000000ull}, {"m", 60000000000ull},
                                 {"s", 1000000000ull},    {"ms", 1000000ull},
                                 {"us", 1000ull},         {"ns", 1ull}};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
    if (r->per_ns != 0 && r->per_ns % order[i].mul == 0) {
      uint64_t k = r->per_ns / order[i].mul;
      if (k == 1)
        snprintf(buf, len, "%llu/%s", (unsigned long long)r->count, order[i].name);
      else
        snprintf(buf, len, "%llu/%llu%s", (unsigned long long)r->count, (unsigned long long)k,
                 order[i].name);
      return;
    }
  }
  snprintf(buf, len, "%llu/0s", (unsigned long long)r->count);
}

void bw__format_ratio(double r, char *buf, size_t len) { snprintf(buf, len, "%g%%", r * 100.0); }

/* ---- suggestions --------------------------------------------------------- */

size_t bw__edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 64 || lb > 64) return (size_t)-1;
  size_t row[65];
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t cost = (tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1])) ? 0 : 1;
      size_t v = diag + cost;
      if (row[j] + 1 < v) v = row[j] + 1;
      if (row[j - 1] + 1 < v) v = row[j - 1] + 1;
      row[j] = v;
      diag = up;
    }
  }
  return row[lb];
}

const char *bw__did_you_mean(const char *word, const char *const *cands, size_t n) {
  const char *best = NULL;
  size_t bestd = (size_t)-1;
  for (size_t i = 0; i < n; i++) {
    size_t d = bw__edit_distance(word, cands[i]);
    if (d < bestd) {
      bestd = d;
      best = cands[i];
    }
  }
  size_t wl = strlen(word);
  size_t limit = wl <= 4 ? 1 : (wl <= 8 ? 2 : 3);
  /* "max_attempt" vs "max_attempts", "circuitbreaker" vs "circuit_breaker" */
  return (best != NULL && bestd <= limit) ? best : NULL;
}

/* ---- public wrappers -------------------------------------------------------- */

static bw_error_t *unit_error(int rc, const char *s, const char *what, const char *example) {
  bw_config_problem_t p = rc == BW__UNIT_RANGE ? BW_CFG_RANGE
                          : rc == BW__UNIT_UNIT ? BW_CFG_UNIT
                                                : BW_CFG_BAD_VALUE;
  return bw_error_new(BW_ERR_CONFIG, p, "'%s' is not a valid %s (%s)", s, what, example);
}

bw_error_t *bw_config_parse_duration(const char *s, uint64_t *out_ns) {
  if (s == NULL || out_ns == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, NULL);
  int rc = bw__parse_duration_ns(s, out_ns);
  return rc ? unit_error(rc, s, "duration", "expected e.g. 250us, 200ms, 2s, 1m") : NULL;
}
bw_error_t *bw_config_parse_ratio(const char *s, double *out) {
  if (s == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, NULL);
  int rc = bw__parse_ratio(s, out);
  return rc ? unit_error(rc, s, "ratio", "expected 0..1 or 0%..100%, e.g. 50% or 0.5") : NULL;
}
bw_error_t *bw_config_parse_rate(const char *s, bw_config_rate_t *out) {
  if (s == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, NULL);
  int rc = bw__parse_rate(s, out);
  return rc ? unit_error(rc, s, "rate", "expected COUNT/UNIT, e.g. 100/s or 6000/m") : NULL;
}
bw_error_t *bw_config_parse_size(const char *s, uint64_t *out_bytes) {
  if (s == NULL || out_bytes == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, NULL);
  int rc = bw__parse_size(s, out_bytes);
  return rc ? unit_error(rc, s, "size", "expected e.g. 512B, 64KiB, 10MiB") : NULL;
}
