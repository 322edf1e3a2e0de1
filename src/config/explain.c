/* `explain`: print a stack as it will be built, and the layer-order check.
 *
 * Design notes
 * - Values print in config syntax (the largest exact unit), so a line of
 *   explain output can be pasted back into the file.
 * - Secrets (values that used ${VAR}) print as "<from ${VAR}>", never the text.
 * - Recommended order, outermost first (DESIGN.md):
 *     fallback, retry, circuit_breaker, rate_limit, bulkhead, timeout, [chaos]
 *   Reasons, one per warning below:
 *   - fallback outermost: it must see the error of every layer (an open
 *     breaker, an exhausted retry), else those errors escape it.
 *   - retry outside circuit_breaker: the breaker then counts each attempt and
 *     retry stops at once when it opens (an open-circuit error is not
 *     retried); with the breaker outside, a whole retry loop counts as one
 *     call and keeps hammering a failing backend.
 *   - a timeout inside retry bounds each attempt; if the only timeout is
 *     outside retry it bounds all attempts together, which is rarely meant
 *     as the per-attempt limit.
 *   - bulkhead/rate_limit outside retry hold a permit (or spend one token)
 *     through backoff waits.
 *   - the same layer twice in a row multiplies (retry in retry: 3x3 attempts). */
#include <string.h>

#include "config/internal.h"
#include "core/alloc.h"

void bw__format_value(const bw__key_t *k, const bw__cval_t *v, char *buf, size_t len) {
  if (!v->has) {
    snprintf(buf, len, "-");
    return;
  }
  if (v->secret) {
    snprintf(buf, len, "<from ${%s}>", v->env ? v->env : "?");
    return;
  }
  if (strcmp(k->name, "password") == 0) { /* literal password: never printed either */
    snprintf(buf, len, "<set>");
    return;
  }
  switch (k->type) {
    case BW__VT_INT: snprintf(buf, len, "%lld", (long long)v->i); return;
    case BW__VT_DOUBLE: snprintf(buf, len, "%g", v->d); return;
    case BW__VT_BOOL: snprintf(buf, len, "%s", v->b ? "true" : "false"); return;
    case BW__VT_DURATION: bw__format_duration(v->u, buf, len); return;
    case BW__VT_SIZE: bw__format_size(v->u, buf, len); return;
    case BW__VT_RATIO: bw__format_ratio(v->d, buf, len); return;
    case BW__VT_RATE: bw__format_rate(&v->rate, buf, len); return;
    case BW__VT_ENUM: case BW__VT_REF: case BW__VT_KIND:
      snprintf(buf, len, "%s", v->s ? v->s : "");
      return;
    case BW__VT_STRING:
      snprintf(buf, len, "\"%s\"", v->s ? v->s : "");
      return;
    case BW__VT_KINDS: case BW__VT_INTS: case BW__VT_STRINGS: {
      size_t o = 0;
      int w = snprintf(buf, len, "[");
      o = w > 0 ? (size_t)w : 0;
      for (size_t i = 0; i < v->n && o < len; i++) {
        w = snprintf(buf + o, len - o, "%s%s", i ? ", " : "", v->strs[i]);
        if (w > 0) o += (size_t)w;
      }
      if (o < len) snprintf(buf + o, len - o, "]");
      return;
    }
  }
}

static int find_kind(const bw__config_t *c, const bw__cstack_t *s, bw_config_layer_kind_t kind,
                     size_t from) {
  for (size_t i = from; i < s->n; i++) {
    const bw__clayer_t *l = bw__config_resolve(c, &s->layers[i]);
    if (l->schema && l->schema->kind == kind) return (int)i;
  }
  return -1;
}

static void warn(bw_config_report_t *r, const bw__clayer_t *at, const char *fmt, const char *a,
                 const char *b) {
  bw__report_add(r, BW_CFG_LAYER_ORDER, true, at->line, at->col, at->path ? at->path : "", fmt, a, b);
}

static const char *enum_val(const bw__clayer_t *l, const char *key) {
  int i = bw__schema_key(l->schema, key);
  return (i >= 0 && l->vals[i].s) ? l->vals[i].s : "";
}

/* Mirrors bw_stack_check_order (layer.h) on the parsed model, so `check`
 * warns without building anything; the codes follow bw_stack_warning_code_t. */
void bw__order_check(const bw__config_t *c, const bw__cstack_t *s, bw_config_report_t *r) {
  int fb = find_kind(c, s, BW_CFG_LAYER_FALLBACK, 0);
  int first_re = find_kind(c, s, BW_CFG_LAYER_RETRY, 0);
  int last_re = -1;
  for (int i = first_re; i >= 0; i = find_kind(c, s, BW_CFG_LAYER_RETRY, (size_t)i + 1)) last_re = i;
  if (fb > 0) {
    const bw__clayer_t *outer = bw__config_resolve(c, &s->layers[0]);
    warn(r, &s->layers[fb],
         "fallback is not outermost: errors of '%s'%s outside it are not covered; put fallback first",
         outer->schema ? outer->schema->name : "?", fb > 1 ? " and others" : "");
  }
  bool seen_kind[16] = {false};
  for (size_t i = 0; i < s->n; i++) {
    const bw__clayer_t *l = bw__config_resolve(c, &s->layers[i]);
    if (l->schema == NULL) continue;
    bw_config_layer_kind_t k = l->schema->kind;
    bool outside_retry = first_re >= 0 && (int)i < first_re;
    bool inside_retry = first_re >= 0 && (int)i > first_re;
    switch (k) {
      case BW_CFG_LAYER_CIRCUIT_BREAKER:
        if (outside_retry)
          warn(r, &s->layers[i],
               "%s outside retry counts a whole retry loop as one call and lets retries hammer a "
               "failing backend; put it inside %s", "circuit_breaker", "retry");
        break;
      case BW_CFG_LAYER_BULKHEAD:
        if (outside_retry)
          warn(r, &s->layers[i], "%s outside %s holds its permit through backoff waits; put it inside retry",
               "bulkhead", "retry");
        break;
      case BW_CFG_LAYER_RATE_LIMIT:
        if (outside_retry)
          warn(r, &s->layers[i], "%s outside %s does not limit retry attempts; put it inside retry",
               "rate_limit", "retry");
        break;
      case BW_CFG_LAYER_RETRY:
        if (inside_retry)
          warn(r, &s->layers[i], "%s inside another %s multiplies the attempts", "retry", "retry");
        break;
      case BW_CFG_LAYER_TIMEOUT: {
        const char *scope = enum_val(l, "scope");
        if (inside_retry && strcmp(scope, "total") == 0)
          warn(r, &s->layers[i], "a timeout with scope %s inside %s bounds only one attempt; move it outside retry",
               "total", "retry");
        else if (outside_retry && strcmp(scope, "per_attempt") == 0)
          warn(r, &s->layers[i], "a timeout with scope %s outside %s bounds all attempts together; move it inside retry",
               "per_attempt", "retry");
        else if (outside_retry && strcmp(scope, "unspecified") == 0 &&
                 find_kind(c, s, BW_CFG_LAYER_TIMEOUT, (size_t)last_re + 1) < 0)
          warn(r, &s->layers[i],
               "the only timeout is outside retry, so a hung attempt eats the whole budget; add a "
               "timeout inside %s, or set scope: %s",
               "retry", "total");
        break;
      }
      case BW_CFG_LAYER_CHAOS:
        if (i + 1 < s->n)
          warn(r, &s->layers[i], "%s is not innermost: its faults skip the layers inside it; put it last%s",
               "chaos", "");
        break;
      case BW_CFG_LAYER_FALLBACK:
      case BW_CFG_LAYER_RETRY_BUDGET:
        break;
    }
    if (k != BW_CFG_LAYER_RETRY && k != BW_CFG_LAYER_TIMEOUT && (unsigned)k < 16) {
      if (seen_kind[k])
        warn(r, &s->layers[i], "a second %s layer in one stack%s; is it a copy-paste?", l->schema->name, "");
      seen_kind[k] = true;
    }
  }
}

static void explain_layer(const bw__config_t *c, const bw__clayer_t *item, size_t idx, FILE *out) {
  const bw__clayer_t *l = bw__config_resolve(c, item);
  if (l->schema == NULL) return;
  if (item->shared)
    fprintf(out, "  %zu. %s  (shared instance '%s', line %d)\n", idx + 1, l->schema->name,
            item->shared, l->line);
  else
    fprintf(out, "  %zu. %s  (line %d)\n", idx + 1, l->schema->name, l->line);
  for (size_t k = 0; k < l->schema->nkeys; k++) {
    char buf[512];
    bw__format_value(&l->schema->keys[k], &l->vals[k], buf, sizeof buf);
    const char *note = l->vals[k].set ? "" : (l->vals[k].has ? "  (default)" : "  (default: not set)");
    fprintf(out, "       %-26s %s%s\n", l->schema->keys[k].name, buf, note);
  }
}

static void explain_stack(const bw__config_t *c, const bw__cstack_t *s, FILE *out) {
  fprintf(out, "stack %s  (%s:%d:%d), outermost first:\n", s->name, c->file, s->line, s->col);
  for (size_t i = 0; i < s->n; i++) explain_layer(c, &s->layers[i], i, out);
  fprintf(out, "  -> the service (client or your function)\n");
  for (size_t i = 0; i < c->nclients; i++) {
    const bw__cclient_t *cl = &c->clients[i];
    int si = bw__schema_key(cl->conf.schema, "stack");
    if (si >= 0 && cl->conf.vals[si].s && strcmp(cl->conf.vals[si].s, s->name) == 0) {
      fprintf(out, "  used by %s client '%s':\n", cl->redis ? "redis" : "http", cl->name);
      for (size_t k = 0; k < cl->conf.schema->nkeys; k++) {
        char buf[512];
        bw__format_value(&cl->conf.schema->keys[k], &cl->conf.vals[k], buf, sizeof buf);
        const char *note = cl->conf.vals[k].set ? "" : (cl->conf.vals[k].has ? "  (default)" : "  (default: not set)");
        fprintf(out, "       %-26s %s%s\n", cl->conf.schema->keys[k].name, buf, note);
      }
    }
  }
}

static bw_error_t *explain_text(const char *text, size_t len, const char *name, const char *stack,
                                FILE *out) {
  bw_config_report_t *r = bw__report_new(name);
  if (r == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw__config_t *c = bw__config_load(text, len, name, r);
  bw_error_t *e = bw__report_error(r);
  if (e == NULL && c != NULL) {
    const bw__cstack_t *s = stack ? bw__config_stack(c, stack) : NULL;
    if (stack != NULL && s == NULL) {
      const char *cands[64];
      size_t nc = 0;
      for (size_t i = 0; i < c->nstacks && nc < 64; i++) cands[nc++] = c->stacks[i].name;
      const char *dym = bw__did_you_mean(stack, cands, nc);
      e = bw_error_new(BW_ERR_CONFIG, BW_CFG_UNKNOWN_REF, "%s: no stack '%s'%s%s%s", name, stack,
                       dym ? "; did you mean '" : "", dym ? dym : "", dym ? "'?" : "");
    } else {
      for (size_t i = 0; i < c->nstacks; i++) {
        if (s != NULL && &c->stacks[i] != s) continue;
        explain_stack(c, &c->stacks[i], out);
        /* warnings of this stack */
        size_t plen = strlen("stacks.") + strlen(c->stacks[i].name);
        for (size_t j = 0; j < bw_config_report_count(r); j++) {
          const bw_config_diag_t *d = bw_config_report_get(r, j);
          if (!d->warning || strncmp(d->path, "stacks.", 7) != 0) continue;
          if (strncmp(d->path + 7, c->stacks[i].name, plen - 7) != 0 || d->path[plen] != '[')
            continue;
          fprintf(out, "  warning: %s:%d:%d: %s: %s\n", d->file, d->line, d->column, d->path,
                  d->message);
        }
        fprintf(out, "\n");
      }
    }
  }
  bw__config_free(c);
  bw_config_report_free(r);
  return e;
}

bw_error_t *bw_config_explain_string(const char *text, size_t len, const char *name,
                                     const char *stack, FILE *out) {
  if (text == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, NULL);
  return explain_text(text, len, name ? name : "<string>", stack, out);
}

bw_error_t *bw_config_explain_file(const char *path, const char *stack, FILE *out) {
  if (path == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, NULL);
  char *text;
  size_t len;
  int rc = bw__read_file(path, &text, &len);
  if (rc != 0)
    return bw_error_new(BW_ERR_CONFIG, BW_CFG_IO, "%s: cannot read: %s", path, strerror(-rc));
  bw_error_t *e = explain_text(text, len, path, stack, out);
  bw__free(text);
  return e;
}

/* ---- reference -------------------------------------------------------------------- */

static const char *type_name(const bw__key_t *k, char *buf, size_t len) {
  switch (k->type) {
    case BW__VT_INT: return "integer";
    case BW__VT_DOUBLE: return "number";
    case BW__VT_BOOL: return "true/false";
    case BW__VT_DURATION: return "duration";
    case BW__VT_RATIO: return "ratio";
    case BW__VT_RATE: return "rate";
    case BW__VT_SIZE: return "size";
    case BW__VT_ENUM: {
      snprintf(buf, len, "%s", k->enum_values);
      for (char *p = buf; *p; p++)
        if (*p == '|') *p = '/';
      return buf;
    }
    case BW__VT_STRING: return "string";
    case BW__VT_KINDS: return "list of error kinds";
    case BW__VT_INTS: return "list of integers";
    case BW__VT_STRINGS:
      if (k->enum_values) {
        snprintf(buf, len, "list of %s", k->enum_values);
        for (char *p = buf; *p; p++)
          if (*p == '|') *p = '/';
        return buf;
      }
      return "list of strings";
    case BW__VT_KIND: return "error kind";
    case BW__VT_REF:
      snprintf(buf, len, "name of a %s", k->enum_values);
      return buf;
  }
  return "?";
}

static void print_schema(const bw__layer_schema_t *s, const char *title, FILE *out) {
  fprintf(out, "### %s\n\n", title);
  if (s->shorthand) fprintf(out, "Shorthand: `- %s: VALUE` sets `%s`.\n\n", s->name, s->shorthand);
  fprintf(out, "| key | type | range | default | meaning |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < s->nkeys; i++) {
    const bw__key_t *k = &s->keys[i];
    char tb[160], lo[48] = "", hi[48] = "", range[100] = "";
    const char *t = type_name(k, tb, sizeof tb);
    if (k->min != 0 || k->max != 0) {
      switch (k->type) {
        case BW__VT_DURATION:
          bw__format_duration((uint64_t)k->min, lo, sizeof lo);
          bw__format_duration((uint64_t)k->max, hi, sizeof hi);
          break;
        case BW__VT_SIZE:
          bw__format_size((uint64_t)k->min, lo, sizeof lo);
          bw__format_size((uint64_t)k->max, hi, sizeof hi);
          break;
        case BW__VT_RATIO:
          bw__format_ratio(k->min, lo, sizeof lo);
          bw__format_ratio(k->max, hi, sizeof hi);
          break;
        case BW__VT_RATE:
          snprintf(lo, sizeof lo, "%g/s", k->min);
          snprintf(hi, sizeof hi, "%g/s", k->max);
          break;
        default:
          snprintf(lo, sizeof lo, "%.15g", k->min);
          snprintf(hi, sizeof hi, "%.15g", k->max);
          break;
      }
      snprintf(range, sizeof range, "%s..%s", lo, hi);
    }
    char dflt[160];
    if (k->def) snprintf(dflt, sizeof dflt, "`%s`", k->def);
    else snprintf(dflt, sizeof dflt, "%s", k->required ? "**required**" : "not set");
    fprintf(out, "| `%s` | %s | %s | %s | %s |\n", k->name, t, range, dflt, k->help);
  }
  fprintf(out, "\n");
}

void bw_config_print_reference(FILE *out) {
  if (out == NULL) return;
  size_t n;
  const bw__layer_schema_t *const *all = bw__schema_all(&n);
  fprintf(out, "## Layers\n\n");
  for (size_t i = 0; i < n; i++) {
    char title[96];
    snprintf(title, sizeof title, "`%s`%s", all[i]->name,
             all[i]->is_layer ? (all[i]->shareable ? " (may be shared)" : "") : " (under shared: only)");
    print_schema(all[i], title, out);
  }
  fprintf(out, "## Clients\n\n");
  print_schema(bw__schema_client(false), "`http`", out);
  print_schema(bw__schema_client(true), "`redis`", out);
}
