/* The registry: a validated config plus the layer instances built from it.
 *
 * Design notes
 * - A generation (gen_t) is one loaded config and its instances: every
 *   shared entry once, and every stack's layers. Fallbacks depend on the
 *   response type (flavor) of the service they wrap, so each is made by the
 *   first build of its stack for a flavor and kept in the generation for
 *   the next builds (they keep no state). A new generation is built
 *   completely (from the new model and the previous generation, to reuse
 *   instances) before it replaces the current one under reg->mu: nothing
 *   half loaded.
 * - Reuse on reload: a shared entry with the same name and equal settings
 *   keeps its instance (an open breaker stays open); so does a stateful
 *   inline layer (breaker, rate limit, bulkhead, chaos) at the same index of
 *   a stack with the same name. Retry and timeout layers keep no state and
 *   are rebuilt (a retry may reference a budget that changed).
 * - Services handed out (regsvc_t) follow reloads: each call compares the
 *   registry's generation number (acquire; pairs with the release store in
 *   install()) with the one its cached stack was built from and rebuilds
 *   under its own lock when they differ. The call keeps a reference on the
 *   stack it started on (in its per-call state), so in-flight calls finish
 *   on the old stack however many reloads happen meanwhile.
 * - Lock order: regsvc.mu -> reg->mu. Per-call state has its own mutex
 *   (child pointer vs a concurrent cancel); no lock is held while calling
 *   into the service layer.
 * - Predicate and fallback arguments must live as long as the layers that
 *   point at them, which may outlive a generation (a stack still in use):
 *   they are kept in reg->keep and freed with the registry. Each reload adds
 *   a few small blocks (at most one per predicate, and per fallback and
 *   flavor built); this is bounded by the number of reloads. Building and
 *   releasing services adds none: a fallback is made once per generation
 *   and flavor, not per build. Freeing a block with the service that used
 *   it is not possible here: the fallback layer does not own its fn_arg or
 *   predicate_arg (fallback.h), and a built stack's layers outlive its last
 *   release while calls of it are alive (service.h), which this file cannot
 *   observe. */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "bulwark/bulkhead.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/fallback.h"
#include "bulwark/http.h"
#include "bulwark/rate_limit.h"
#include "bulwark/redis.h"
#include "bulwark/timeout.h"
#include "config/internal.h"
#include "config/registry_internal.h"
#include "core/alloc.h"

/* ---- generations ----------------------------------------------------------- */

static void gen_free(gen_t *g) {
  if (g == NULL) return;
  for (size_t i = 0; i < g->nshared; i++) {
    bw_layer_release(g->shared[i].layer);
    bw_retry_budget_release(g->shared[i].budget);
  }
  for (size_t i = 0; i < g->nstacks; i++) {
    for (size_t j = 0; j < g->stacks[i].n; j++) bw_layer_release(g->stacks[i].layers[j]);
    for (size_t j = 0; g->stacks[i].fallbacks && j < g->stacks[i].n * BW__NFLAVORS; j++)
      bw_layer_release(g->stacks[i].fallbacks[j]);
    bw__free(g->stacks[i].layers);
    bw__free(g->stacks[i].fallbacks);
  }
  bw__free(g->shared);
  bw__free(g->stacks);
  bw__config_free(g->cfg);
  bw__free(g);
}

void *bw__reg_keep(bw_registry_t *reg, size_t size) {
  keep_t *k = bw__calloc(1, sizeof *k + size);
  if (k == NULL) return NULL;
  pthread_mutex_lock(&reg->keep_mu);
  k->next = reg->keep;
  reg->keep = k;
  pthread_mutex_unlock(&reg->keep_mu);
  return k + 1;
}

static const built_shared_t *gen_shared(const gen_t *g, const char *name) {
  for (size_t i = 0; g && i < g->nshared; i++)
    if (strcmp(g->shared[i].def->name, name) == 0) return &g->shared[i];
  return NULL;
}

static const built_stack_t *gen_stack(const gen_t *g, const char *name) {
  for (size_t i = 0; g && i < g->nstacks; i++)
    if (strcmp(g->stacks[i].def->name, name) == 0) return &g->stacks[i];
  return NULL;
}

static bool stateful(const bw__layer_schema_t *s) {
  return s->kind == BW_CFG_LAYER_CIRCUIT_BREAKER || s->kind == BW_CFG_LAYER_RATE_LIMIT ||
         s->kind == BW_CFG_LAYER_BULKHEAD || s->kind == BW_CFG_LAYER_CHAOS;
}

/* Wrap a layer constructor's error with the file position and key path of
 * the definition it was built from ("f.yaml:3:7: shared.br.circuit_breaker"). */
static bw_error_t *locate(bw_error_t *err, const bw__config_t *cfg, const bw__clayer_t *def,
                          const char *fallback_path) {
  return bw_error_wrap(err, BW_ERR_CONFIG, BW_CFG_BAD_VALUE, "%s:%d:%d: %s", cfg->file, def->line,
                       def->col, def->path ? def->path : fallback_path);
}

static bw_error_t *build_gen(bw_registry_t *reg, bw__config_t *cfg, const gen_t *old, gen_t **out) {
  gen_t *g = bw__calloc(1, sizeof *g);
  if (g == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  g->cfg = cfg;
  g->shared = bw__calloc(cfg->nshared ? cfg->nshared : 1, sizeof *g->shared);
  g->stacks = bw__calloc(cfg->nstacks ? cfg->nstacks : 1, sizeof *g->stacks);
  if (g->shared == NULL || g->stacks == NULL) {
    gen_free(g);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  bw_error_t *err = NULL;
  /* budgets first: retry layers in shared entries or stacks reference them */
  for (int pass = 0; pass < 2 && err == NULL; pass++) {
    for (size_t i = 0; i < cfg->nshared && err == NULL; i++) {
      const bw__cshared_t *sh = &cfg->shared[i];
      bool budget = sh->layer.schema->kind == BW_CFG_LAYER_RETRY_BUDGET;
      if (budget != (pass == 0)) continue;
      built_shared_t *b = &g->shared[i];
      b->def = sh;
      const built_shared_t *prev = gen_shared(old, sh->name);
      if (prev && bw__clayer_equal(&prev->def->layer, &sh->layer)) {
        b->layer = prev->layer ? bw_layer_ref(prev->layer) : NULL;
        b->budget = prev->budget ? bw_retry_budget_ref(prev->budget) : NULL;
        continue;
      }
      if (budget) err = bw__build_budget(&sh->layer, &b->budget);
      else err = bw__build_layer(reg, g, &sh->layer, sh->name, &b->layer);
      /* the constructor's message says what; this says where */
      if (err) err = locate(err, cfg, &sh->layer, sh->name);
    }
    if (pass == 0) g->nshared = cfg->nshared;
  }
  for (size_t i = 0; i < cfg->nstacks && err == NULL; i++) {
    const bw__cstack_t *st = &cfg->stacks[i];
    built_stack_t *bs = &g->stacks[g->nstacks++];
    bs->def = st;
    bs->layers = bw__calloc(st->n, sizeof *bs->layers);
    bs->fallbacks = bw__calloc(st->n * BW__NFLAVORS, sizeof *bs->fallbacks);
    if (bs->layers == NULL || bs->fallbacks == NULL) {
      err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
      break;
    }
    bs->n = st->n;
    const built_stack_t *prev = gen_stack(old, st->name);
    for (size_t j = 0; j < st->n && err == NULL; j++) {
      const bw__clayer_t *item = &st->layers[j];
      if (item->shared) {
        const built_shared_t *sh = gen_shared(g, item->shared);
        bs->layers[j] = sh && sh->layer ? bw_layer_ref(sh->layer) : NULL;
        continue;
      }
      if (item->schema->kind == BW_CFG_LAYER_FALLBACK) continue; /* per built stack */
      if (prev && j < prev->n && prev->layers[j] && stateful(item->schema) &&
          !prev->def->layers[j].shared &&
          bw__clayer_equal(&prev->def->layers[j], item)) {
        bs->layers[j] = bw_layer_ref(prev->layers[j]);
        continue;
      }
      err = bw__build_layer(reg, g, item, NULL, &bs->layers[j]);
      if (err) err = locate(err, cfg, item, st->name);
    }
  }
  if (err) {
    g->cfg = NULL; /* the caller still owns cfg */
    gen_free(g);
    return err;
  }
  *out = g;
  return NULL;
}

/* Parse + build, then swap in. With `path` (reload_file), *path becomes
 * reg->path in the same critical section (taken: *path is set to NULL) and
 * the watch, if any, moves to it before this returns. */
static bw_error_t *load_into(bw_registry_t *reg, const char *text, size_t len, const char *name,
                             char **path) {
  bw_config_report_t *r = bw__report_new(name);
  if (r == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw__config_t *cfg = bw__config_load(text, len, name, r);
  bw_error_t *err = bw__report_error(r);
  bw_config_report_free(r);
  if (err != NULL) {
    bw__config_free(cfg);
    return err;
  }
  pthread_mutex_lock(&reg->mu);
  gen_t *g = NULL;
  err = build_gen(reg, cfg, reg->gen, &g);
  if (err == NULL) {
    gen_t *old = reg->gen;
    reg->gen = g;
    g->id = reg->gen_id_plain + 1;
    reg->gen_id_plain = g->id;
    /* release: pairs with the acquire load in regsvc_current() */
    atomic_store_explicit(&reg->gen_id, g->id, memory_order_release);
    gen_free(old);
    if (path != NULL) {
      bw__free(reg->path);
      reg->path = *path;
      *path = NULL;
      bw__registry_watch_retarget(reg, text, len);
    }
  }
  pthread_mutex_unlock(&reg->mu);
  if (err) bw__config_free(cfg);
  else if (path != NULL) bw__registry_watch_sync(reg);
  return err;
}

/* ---- public: load, reload, free ----------------------------------------------------- */

void bw_registry_opts_init(bw_registry_opts_t *opts) {
  if (opts) memset(opts, 0, sizeof *opts);
}

static bw_registry_t *reg_new(const bw_registry_opts_t *opts) {
  bw_registry_t *reg = bw__calloc(1, sizeof *reg);
  if (reg == NULL) return NULL;
  if (opts) reg->opts = *opts;
  pthread_mutex_init(&reg->mu, NULL);
  pthread_mutex_init(&reg->keep_mu, NULL);
  return reg;
}

bw_error_t *bw_registry_load_string(bw_registry_t **out, const char *text, size_t len,
                                    const char *name, const bw_registry_opts_t *opts) {
  if (out == NULL || text == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL argument");
  *out = NULL;
  bw_registry_t *reg = reg_new(opts);
  if (reg == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  reg->opts.watch = false; /* nothing to watch */
  bw_error_t *err = load_into(reg, text, len, name ? name : "<string>", NULL);
  if (err) {
    bw_registry_free(reg);
    return err;
  }
  *out = reg;
  return NULL;
}

/* With own_path (reload_file): see load_into. */
static bw_error_t *read_and_load(bw_registry_t *reg, const char *path, char **own_path) {
  char *text;
  size_t len;
  int rc = bw__read_file(path, &text, &len);
  if (rc != 0) return bw_error_new(BW_ERR_CONFIG, BW_CFG_IO, "%s: cannot read: %s", path, strerror(-rc));
  bw_error_t *err = load_into(reg, text, len, path, own_path);
  bw__free(text);
  return err;
}

bw_error_t *bw_registry_load_file(bw_registry_t **out, const char *path,
                                  const bw_registry_opts_t *opts) {
  if (out == NULL || path == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL argument");
  *out = NULL;
  bw_registry_t *reg = reg_new(opts);
  if (reg == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  reg->path = bw__strdup(path);
  bw_error_t *err = reg->path ? read_and_load(reg, path, NULL) : bw_error_static(BW_ERR_OUT_OF_MEMORY);
  if (err == NULL && reg->opts.watch) err = bw__registry_watch_start(reg);
  if (err) {
    bw_registry_free(reg);
    return err;
  }
  *out = reg;
  return NULL;
}

char *bw__registry_path(bw_registry_t *reg) {
  pthread_mutex_lock(&reg->mu);
  char *path = reg->path ? bw__strdup(reg->path) : NULL;
  pthread_mutex_unlock(&reg->mu);
  return path;
}

bw_error_t *bw_registry_reload(bw_registry_t *reg) {
  if (reg == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL");
  char *path = bw__registry_path(reg);
  if (path == NULL) return bw_error_new(BW_ERR_NOT_ALLOWED, 0, "registry: loaded from a string, no file to reload");
  bw_error_t *err = read_and_load(reg, path, NULL);
  bw__free(path);
  return err;
}

bw_error_t *bw_registry_reload_file(bw_registry_t *reg, const char *path) {
  if (reg == NULL || path == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL");
  /* the path changes with the generation, under the same lock, and the
   * watch follows it (watch.c) */
  char *p = bw__strdup(path);
  if (p == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw_error_t *err = read_and_load(reg, path, &p);
  bw__free(p); /* NULL if taken */
  return err;
}

bw_error_t *bw_registry_reload_string(bw_registry_t *reg, const char *text, size_t len,
                                      const char *name) {
  if (reg == NULL || text == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL");
  return load_into(reg, text, len, name ? name : "<string>", NULL);
}

uint64_t bw_registry_generation(const bw_registry_t *reg) {
  return reg ? atomic_load_explicit(&((bw_registry_t *)reg)->gen_id, memory_order_acquire) : 0;
}

void bw_registry_free(bw_registry_t *reg) {
  if (reg == NULL) return;
  bw__registry_watch_stop(reg);
  bw__registry_clients_free(reg);
  gen_free(reg->gen);
  keep_t *k = reg->keep;
  while (k) {
    keep_t *n = k->next;
    bw__free(k);
    k = n;
  }
  pthread_mutex_destroy(&reg->mu);
  pthread_mutex_destroy(&reg->keep_mu);
  bw__free(reg->path);
  bw__free(reg);
}

size_t bw_registry_names(bw_registry_t *reg, bw_registry_section_t section,
                         void (*fn)(const char *name, void *arg), void *arg) {
  if (reg == NULL) return 0;
  pthread_mutex_lock(&reg->mu);
  const bw__config_t *c = reg->gen ? reg->gen->cfg : NULL;
  size_t n = 0;
  if (c) {
    switch (section) {
      case BW_REGISTRY_STACKS:
        n = c->nstacks;
        for (size_t i = 0; fn && i < n; i++) fn(c->stacks[i].name, arg);
        break;
      case BW_REGISTRY_SHARED:
        n = c->nshared;
        for (size_t i = 0; fn && i < n; i++) fn(c->shared[i].name, arg);
        break;
      case BW_REGISTRY_CLIENTS:
        n = c->nclients;
        for (size_t i = 0; fn && i < n; i++) fn(c->clients[i].name, arg);
        break;
    }
  }
  pthread_mutex_unlock(&reg->mu);
  return n;
}

/* ---- lookups ------------------------------------------------------------------------------ */

bw_error_t *bw__reg_unknown(const bw__config_t *c, bw_registry_section_t sec, const char *name) {
  const char *cands[64];
  size_t nc = 0;
  const char *what = sec == BW_REGISTRY_STACKS ? "stack" : sec == BW_REGISTRY_SHARED ? "shared entry" : "client";
  for (size_t i = 0; c && nc < 64; i++) {
    if (sec == BW_REGISTRY_STACKS && i < c->nstacks) cands[nc++] = c->stacks[i].name;
    else if (sec == BW_REGISTRY_SHARED && i < c->nshared) cands[nc++] = c->shared[i].name;
    else if (sec == BW_REGISTRY_CLIENTS && i < c->nclients) cands[nc++] = c->clients[i].name;
    else break;
  }
  const char *dym = bw__did_you_mean(name ? name : "", cands, nc);
  return bw_error_new(BW_ERR_CONFIG, BW_CFG_UNKNOWN_REF, "%s: no %s '%s'%s%s%s", c ? c->file : "registry",
                      what, name ? name : "(null)", dym ? "; did you mean '" : "", dym ? dym : "",
                      dym ? "'?" : "");
}

bw_error_t *bw_registry_shared_layer(bw_registry_t *reg, const char *name, bw_layer_t **out) {
  if (reg == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL");
  pthread_mutex_lock(&reg->mu);
  const built_shared_t *b = gen_shared(reg->gen, name ? name : "");
  bw_error_t *err = NULL;
  if (b == NULL || b->layer == NULL) err = bw__reg_unknown(reg->gen ? reg->gen->cfg : NULL, BW_REGISTRY_SHARED, name);
  else *out = bw_layer_ref(b->layer);
  pthread_mutex_unlock(&reg->mu);
  return err;
}

bw_error_t *bw_registry_shared_budget(bw_registry_t *reg, const char *name, bw_retry_budget_t **out) {
  if (reg == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL");
  pthread_mutex_lock(&reg->mu);
  const built_shared_t *b = gen_shared(reg->gen, name ? name : "");
  bw_error_t *err = NULL;
  if (b == NULL || b->budget == NULL) err = bw__reg_unknown(reg->gen ? reg->gen->cfg : NULL, BW_REGISTRY_SHARED, name);
  else *out = bw_retry_budget_ref(b->budget);
  pthread_mutex_unlock(&reg->mu);
  return err;
}

bw_error_t *bw_registry_stack_layer(bw_registry_t *reg, const char *stack, size_t index,
                                    bw_layer_t **out) {
  if (reg == NULL || out == NULL) return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: NULL");
  pthread_mutex_lock(&reg->mu);
  const built_stack_t *b = gen_stack(reg->gen, stack ? stack : "");
  bw_error_t *err = NULL;
  if (b == NULL) err = bw__reg_unknown(reg->gen ? reg->gen->cfg : NULL, BW_REGISTRY_STACKS, stack);
  else if (index >= b->n || b->layers[index] == NULL)
    err = bw_error_new(BW_ERR_NOT_FOUND, 0, "stack %s has no prebuilt layer at %zu", stack, index);
  else *out = bw_layer_ref(b->layers[index]);
  pthread_mutex_unlock(&reg->mu);
  return err;
}

/* Build the stack `name` of the current generation around inner (reg->mu held).
 * *missing is set when the generation has no such stack. */
bw_error_t *bw__reg_build_stack(bw_registry_t *reg, const char *name, bw_service_t *inner,
                                int flavor, bw_service_t **out, bool *missing) {
  *missing = false;
  built_stack_t *b = NULL;
  for (size_t i = 0; reg->gen && i < reg->gen->nstacks && b == NULL; i++)
    if (strcmp(reg->gen->stacks[i].def->name, name) == 0) b = &reg->gen->stacks[i];
  if (b == NULL) {
    *missing = true;
    return bw__reg_unknown(reg->gen ? reg->gen->cfg : NULL, BW_REGISTRY_STACKS, name);
  }
  if (flavor < 0 || flavor >= BW__NFLAVORS)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "registry: unknown flavor %d", flavor);
  bw_layer_t **layers = bw__calloc(b->n, sizeof *layers);
  if (layers == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  bw_error_t *err = NULL;
  for (size_t i = 0; i < b->n && err == NULL; i++) {
    if (b->layers[i]) {
      layers[i] = bw_layer_ref(b->layers[i]);
    } else {
      /* a fallback: this generation's for the flavor, made on first use */
      bw_layer_t **fb = &b->fallbacks[i * BW__NFLAVORS + (size_t)flavor];
      if (*fb == NULL) err = bw__build_fallback(reg, &b->def->layers[i], flavor, fb);
      if (err == NULL) layers[i] = bw_layer_ref(*fb);
    }
  }
  if (err == NULL) err = bw_stack_build(out, name, layers, b->n, inner, NULL);
  for (size_t i = 0; i < b->n; i++) bw_layer_release(layers[i]);
  bw__free(layers);
  return err;
}
