/* Registry internals shared by registry.c, build.c, regsvc.c and watch.c. */
#ifndef BW_CONFIG_REGISTRY_INTERNAL_H
#define BW_CONFIG_REGISTRY_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "bulwark/config.h"
#include "bulwark/http.h"
#include "bulwark/redis.h"
#include "config/internal.h"

typedef struct built_shared {
  const bw__cshared_t *def; /* in gen->cfg */
  bw_layer_t *layer;        /* layers */
  bw_retry_budget_t *budget; /* retry_budget entries */
} built_shared_t;

/* Response flavors of the service a stack wraps (fallback answers). */
enum { BW__FLAVOR_BYTES = 0, BW__FLAVOR_HTTP = 1, BW__FLAVOR_REDIS = 2, BW__NFLAVORS = 3 };

typedef struct built_stack {
  const bw__cstack_t *def;
  size_t n;
  bw_layer_t **layers; /* NULL at fallback positions */
  /* Fallback layers, [position * BW__NFLAVORS + flavor]: made by the first
   * build of this stack for that flavor (under reg->mu), then shared by
   * every later build from this generation, as the other layers are. */
  bw_layer_t **fallbacks;
} built_stack_t;

typedef struct gen {
  uint64_t id;
  bw__config_t *cfg;
  size_t nshared, nstacks;
  built_shared_t *shared;
  built_stack_t *stacks;
} gen_t;

typedef struct keep {
  struct keep *next;
} keep_t;

typedef struct client_entry {
  struct client_entry *next;
  char *name;
  bool redis;
  char *sig;                    /* settings signature (secrets hashed in) */
  bw_http_client_t *http;
  bw_redis_t *rc;
  bw_service_t *leaf;           /* the client's own service */
  char *base_url;
} client_entry_t;

struct bw__watch;

struct bw_registry {
  pthread_mutex_t mu; /* gen, path, clients */
  gen_t *gen;
  uint64_t gen_id_plain;    /* under mu */
  _Atomic uint64_t gen_id;  /* release on swap; acquire in services */
  char *path;               /* under mu: bw__registry_path() copies it */
  bw_registry_opts_t opts;
  pthread_mutex_t keep_mu;
  keep_t *keep;
  client_entry_t *clients;
  struct bw__watch *watch;
};

/* A copy of reg->path taken under reg->mu (bw__free it), or NULL when the
 * registry was loaded from a string (or out of memory). reg->path may be
 * replaced by bw_registry_reload_file at any time: never read it unlocked. */
char *bw__registry_path(bw_registry_t *reg);
/* A zeroed block that lives as long as the registry (a layer's predicate or
 * fallback argument: the layer does not own it and may outlive its
 * generation). Allocated once per generation, never per build. */
void *bw__reg_keep(bw_registry_t *reg, size_t size);
bw_error_t *bw__reg_unknown(const bw__config_t *c, bw_registry_section_t sec, const char *name);
bw_error_t *bw__reg_build_stack(bw_registry_t *reg, const char *name, bw_service_t *inner,
                                int flavor, bw_service_t **out, bool *missing);

/* build.c: model -> layer instances. `name` labels shared instances. */
bw_error_t *bw__build_layer(bw_registry_t *reg, const gen_t *g, const bw__clayer_t *def,
                            const char *name, bw_layer_t **out);
bw_error_t *bw__build_budget(const bw__clayer_t *def, bw_retry_budget_t **out);
bw_error_t *bw__build_fallback(bw_registry_t *reg, const bw__clayer_t *def, int flavor,
                               bw_layer_t **out);

/* regsvc.c */
void bw__registry_clients_free(bw_registry_t *reg);
/* The client options a config client maps to (pointers into c, which must
 * outlive o). Exposed for tests of the mapping (units, rounding). */
void bw__client_http_opts(const bw__cclient_t *c, bw_http_client_opts_t *o);
void bw__client_redis_opts(const bw__cclient_t *c, bw_redis_opts_t *o);
/* A text equal for equal client settings: a reload that changes it makes a
 * new client. Secrets are hashed in, never copied (bw__free it). */
char *bw__client_signature(const bw__cclient_t *c);

/* watch.c */
bw_error_t *bw__registry_watch_start(bw_registry_t *reg);
void bw__registry_watch_stop(bw_registry_t *reg);
/* reg->path just changed (reg->mu held) to a file whose loaded content is
 * text: record it as the path to watch. No-op without a watch. */
void bw__registry_watch_retarget(bw_registry_t *reg, const char *text, size_t len);
/* After bw__registry_watch_retarget, with no registry lock held: move the
 * watch and wait until it watches the new path (no wait on the loop thread
 * or a worker of the runtime: the move happens on a later loop turn). */
void bw__registry_watch_sync(bw_registry_t *reg);

#endif
