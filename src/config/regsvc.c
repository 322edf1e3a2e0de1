/* Services handed out by the registry (they follow reloads) and the
 * registry's clients.
 *
 * Design notes
 * - A regsvc is a leaf service whose call forwards to a built stack as a
 *   child call. The stack is cached per regsvc and rebuilt lazily when the
 *   registry's generation number moved (acquire load; pairs with the
 *   release store in registry.c load_into()).
 * - Per-call state (pooled with the call, mutex made in state_init):
 *   { child, stack }. The call keeps a reference on the stack it started on
 *   until its child is freed, so in-flight calls finish on the old stack.
 * - Cancel vs child completion: both take the state mutex to read the child
 *   pointer; cancel takes an extra call reference before unlocking (so the
 *   child memory stays valid while bw_call_cancel_with runs), on_child
 *   clears the pointer before freeing. bw_call_cancel_with may deliver the
 *   child's callback inline (which takes the mutex), so it is called with
 *   the mutex released.
 * - Lock order: regsvc.mu -> reg->mu; the state mutex is never held with
 *   either.
 * - Clients are made on first use and kept until bw_registry_free (a reload
 *   that changes a client's settings makes a new one; the old one stays
 *   alive for calls still using it). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/registry_internal.h"
#include "core/alloc.h"

typedef struct regsvc {
  bw_registry_t *reg;
  char *stack;
  bw_service_t *inner;
  int flavor;
  pthread_mutex_t mu;
  uint64_t gen;        /* generation `built` was made from */
  bw_service_t *built; /* ref */
} regsvc_t;

typedef struct regcall {
  pthread_mutex_t mu;
  bw_call_t *child;
  bw_service_t *stack; /* ref held while the child lives */
} regcall_t;

static void regsvc_destroy(void *impl) {
  regsvc_t *s = impl;
  bw_service_release(s->built);
  bw_service_release(s->inner);
  pthread_mutex_destroy(&s->mu);
  bw__free(s->stack);
  bw__free(s);
}

/* The stack for a new call (a reference), rebuilt if the config changed. */
static bw_error_t *regsvc_current(regsvc_t *s, bw_service_t **out) {
  bw_registry_t *reg = s->reg;
  bw_error_t *err = NULL;
  pthread_mutex_lock(&s->mu);
  uint64_t now = atomic_load_explicit(&reg->gen_id, memory_order_acquire);
  if (s->built == NULL || s->gen != now) {
    bw_service_t *nb = NULL;
    bool missing = false;
    pthread_mutex_lock(&reg->mu);
    uint64_t id = reg->gen ? reg->gen->id : 0;
    err = bw__reg_build_stack(reg, s->stack, s->inner, s->flavor, &nb, &missing);
    pthread_mutex_unlock(&reg->mu);
    if (err != NULL && missing && s->built != NULL) {
      /* the stack left the config: keep serving the last one we had */
      bw_error_unref(err);
      err = NULL;
      s->gen = id;
    } else if (err == NULL) {
      bw_service_release(s->built);
      s->built = nb;
      s->gen = id;
    }
  }
  if (err == NULL) *out = bw_service_ref(s->built);
  pthread_mutex_unlock(&s->mu);
  return err;
}

static void on_child(bw_call_t *child, const bw_error_t *err, void *arg) {
  (void)err;
  bw_call_t *call = arg;
  regcall_t *st = bw_call_state(call);
  pthread_mutex_lock(&st->mu);
  st->child = NULL;
  bw_service_t *stack = st->stack;
  st->stack = NULL;
  pthread_mutex_unlock(&st->mu);
  bw_call_complete_from_child(call, child);
  bw_call_free(child);
  bw_service_release(stack);
}

static void regsvc_call(bw_service_t *svc, bw_call_t *call) {
  regsvc_t *s = bw_service_impl(svc);
  regcall_t *st = bw_call_state(call);
  bw_service_t *stack = NULL;
  bw_error_t *err = regsvc_current(s, &stack);
  if (err != NULL) {
    bw_call_complete(call, NULL, NULL, err);
    return;
  }
  bw_call_t *child = NULL;
  err = bw_call_child_new(&child, call, stack);
  if (err != NULL) {
    bw_service_release(stack);
    bw_call_complete(call, NULL, NULL, err);
    return;
  }
  pthread_mutex_lock(&st->mu);
  st->child = child;
  st->stack = stack;
  pthread_mutex_unlock(&st->mu);
  /* seq_cst (in is_done): a cancel that ran before we published the child
   * found nothing to cancel; we see its DONE state here and abandon. */
  if (bw_call_is_done(call)) {
    pthread_mutex_lock(&st->mu);
    bw_call_t *c = st->child;
    st->child = NULL;
    st->stack = NULL;
    pthread_mutex_unlock(&st->mu);
    if (c != NULL) {
      bw_call_free(c); /* never started: no callback */
      bw_service_release(stack);
    }
    return;
  }
  bw_call_child_start(child, on_child, call);
}

static void regsvc_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)svc;
  regcall_t *st = bw_call_state(call);
  pthread_mutex_lock(&st->mu);
  bw_call_t *c = st->child;
  if (c != NULL) bw_call_ref(c);
  pthread_mutex_unlock(&st->mu);
  if (c != NULL) {
    bw_call_cancel_with(c, reason ? bw_error_ref(reason) : NULL);
    bw_call_unref(c);
  }
}

static int regsvc_state_init(bw_service_t *svc, void *state) {
  (void)svc;
  regcall_t *st = state;
  memset(st, 0, sizeof *st);
  return pthread_mutex_init(&st->mu, NULL) == 0 ? 0 : -1;
}

static void regsvc_state_fini(bw_service_t *svc, void *state) {
  (void)svc;
  regcall_t *st = state;
  pthread_mutex_destroy(&st->mu);
}

static const bw_service_ops_t kRegsvcOps = {
    .kind = "registry",
    .call_state_size = sizeof(regcall_t),
    .call = regsvc_call,
    .cancel = regsvc_cancel,
    .state_init = regsvc_state_init,
    .state_fini = regsvc_state_fini,
    .destroy = regsvc_destroy,
};

static bw_error_t *regsvc_new(bw_registry_t *reg, const char *stack, bw_service_t *inner,
                              int flavor, bw_service_t **out) {
  regsvc_t *s = bw__calloc(1, sizeof *s);
  if (s == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  s->reg = reg;
  s->flavor = flavor;
  s->stack = bw__strdup(stack);
  pthread_mutex_init(&s->mu, NULL);
  s->inner = bw_service_ref(inner);
  if (s->stack == NULL) {
    regsvc_destroy(s);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  /* build now: an unknown stack fails here, not on the first call */
  bw_service_t *first = NULL;
  bw_error_t *err = regsvc_current(s, &first);
  bw_service_release(first);
  if (err != NULL) {
    regsvc_destroy(s);
    return err;
  }
  return bw_service_new(out, &kRegsvcOps, s); /* destroys s on error */
}

bw_error_t *bw_registry_build_ex(bw_registry_t *reg, const char *stack, bw_service_t *inner,
                                 bw_registry_flavor_t flavor, bw_service_t **out) {
  if (reg == NULL || stack == NULL || inner == NULL || out == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_registry_build: NULL argument");
  *out = NULL;
  int f = flavor == BW_REGISTRY_HTTP ? BW__FLAVOR_HTTP
          : flavor == BW_REGISTRY_REDIS ? BW__FLAVOR_REDIS
                                         : BW__FLAVOR_BYTES;
  return regsvc_new(reg, stack, inner, f, out);
}

bw_error_t *bw_registry_build(bw_registry_t *reg, const char *stack, bw_service_t *inner,
                              bw_service_t **out) {
  return bw_registry_build_ex(reg, stack, inner, BW_REGISTRY_BYTES, out);
}

/* ---- clients -------------------------------------------------------------------------- */

static const bw__cval_t *CV(const bw__cclient_t *c, const char *key) {
  static const bw__cval_t none;
  int i = bw__schema_key(c->conf.schema, key);
  return i >= 0 ? &c->conf.vals[i] : &none;
}

static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

/* A text that is equal for equal settings (the stack is not a client setting). */
char *bw__client_signature(const bw__cclient_t *c) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) return NULL;
  fprintf(f, "%s", c->redis ? "redis" : "http");
  for (size_t i = 0; i < c->conf.schema->nkeys; i++) {
    const bw__key_t *k = &c->conf.schema->keys[i];
    const bw__cval_t *v = &c->conf.vals[i];
    if (strcmp(k->name, "stack") == 0) continue;
    char val[512];
    if (v->secret || strcmp(k->name, "password") == 0) {
      /* Compare secrets without printing them anywhere readable: FNV-1a over
       * every field a value can land in, whatever its type (a ${VAR}
       * duration lives in u, a number in i or d, a string in s). */
      uint64_t h = 1469598103934665603ull;
      const char *str = v->s ? v->s : "";
      h = fnv_bytes(h, str, strlen(str) + 1);
      h = fnv_bytes(h, &v->i, sizeof v->i);
      h = fnv_bytes(h, &v->u, sizeof v->u);
      h = fnv_bytes(h, &v->d, sizeof v->d);
      h = fnv_bytes(h, &v->b, sizeof v->b);
      h = fnv_bytes(h, &v->rate.count, sizeof v->rate.count);
      h = fnv_bytes(h, &v->rate.per_ns, sizeof v->rate.per_ns);
      snprintf(val, sizeof val, "#%llx", (unsigned long long)h);
    } else {
      bw__format_value(k, v, val, sizeof val);
    }
    fprintf(f, "|%s=%s", k->name, val);
  }
  fclose(f);
  /* open_memstream uses libc malloc: copy into our allocator */
  char *s = buf ? bw__strdup(buf) : NULL;
  free(buf);
  return s;
}

/* Durations are ns in the model; the clients take ms, rounded up so a
 * sub-millisecond limit stays a limit (0 means "none" to both clients). */
void bw__client_redis_opts(const bw__cclient_t *c, bw_redis_opts_t *o) {
  bw_redis_opts_init(o);
  o->host = CV(c, "host")->s;
  o->port = (int)CV(c, "port")->i;
  /* empty (e.g. ${VAR:-} with VAR unset) means "not set" */
  o->unix_path = CV(c, "unix_path")->has && *CV(c, "unix_path")->s ? CV(c, "unix_path")->s : NULL;
  o->username = CV(c, "username")->has && *CV(c, "username")->s ? CV(c, "username")->s : NULL;
  o->password = CV(c, "password")->has && *CV(c, "password")->s ? CV(c, "password")->s : NULL;
  o->db = (int)CV(c, "db")->i;
  /* the schema bounds both to 1 h: they fit in 32 bits of ms */
  o->connect_timeout_ms = (uint32_t)bw__ms_up(CV(c, "connect_timeout")->u);
  o->command_timeout_ms = (uint32_t)bw__ms_up(CV(c, "command_timeout")->u);
  o->max_in_flight = (uint32_t)CV(c, "max_in_flight")->i;
  o->max_reply_bytes = (size_t)CV(c, "max_reply")->u;
}

void bw__client_http_opts(const bw__cclient_t *c, bw_http_client_opts_t *o) {
  bw_http_client_opts_init(o);
  o->max_host_connections = (long)CV(c, "max_host_connections")->i;
  o->max_total_connections = (long)CV(c, "max_total_connections")->i;
  o->connect_timeout_ms = bw__ms_up(CV(c, "connect_timeout")->u);
  o->timeout_ms = bw__ms_up(CV(c, "timeout")->u);
  o->max_response_bytes = (size_t)CV(c, "max_body")->u;
  o->user_agent = CV(c, "user_agent")->s;
}

static bw_error_t *make_client(bw_registry_t *reg, const bw__cclient_t *c, client_entry_t *e) {
  bw_runtime_t *rt = reg->opts.rt;
  if (c->redis) {
    bw_redis_opts_t o;
    bw__client_redis_opts(c, &o);
    bw_error_t *err = bw_redis_new(rt, &o, &e->rc);
    if (err) return err;
    return bw_redis_service_new(&e->leaf, e->rc);
  }
  bw_http_client_opts_t o;
  bw__client_http_opts(c, &o);
  bw_error_t *err = bw_http_client_new(&e->http, rt, &o);
  if (err) return err;
  e->leaf = bw_service_ref(bw_http_client_service(e->http));
  e->base_url = bw__strdup(CV(c, "base_url")->s ? CV(c, "base_url")->s : "");
  return e->base_url ? NULL : bw_error_static(BW_ERR_OUT_OF_MEMORY);
}

static void entry_free(client_entry_t *e) {
  bw_service_release(e->leaf);
  if (e->http) bw_http_client_free(e->http);
  if (e->rc) bw_redis_free(e->rc);
  bw__free(e->name);
  bw__free(e->sig);
  bw__free(e->base_url);
  bw__free(e);
}

void bw__registry_clients_free(bw_registry_t *reg) {
  client_entry_t *e = reg->clients;
  reg->clients = NULL;
  while (e) {
    client_entry_t *n = e->next;
    entry_free(e);
    e = n;
  }
}

/* The entry for client `name` of the current generation (reg->mu held). */
static bw_error_t *client_entry(bw_registry_t *reg, const char *name, client_entry_t **out,
                                char **stack, bool *redis) {
  const bw__config_t *cfg = reg->gen ? reg->gen->cfg : NULL;
  const bw__cclient_t *c = bw__config_client(cfg, name);
  if (c == NULL || c->conf.schema == NULL) return bw__reg_unknown(cfg, BW_REGISTRY_CLIENTS, name);
  *redis = c->redis;
  const bw__cval_t *sv = CV(c, "stack");
  *stack = sv->has ? bw__strdup(sv->s) : NULL;
  char *sig = bw__client_signature(c);
  if (sig == NULL) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  for (client_entry_t *e = reg->clients; e; e = e->next) {
    if (strcmp(e->name, name) == 0 && strcmp(e->sig, sig) == 0) {
      bw__free(sig);
      *out = e;
      return NULL;
    }
  }
  if (reg->opts.rt == NULL) {
    bw__free(sig);
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "registry: client '%s' needs a runtime (bw_registry_opts_t.rt)", name);
  }
  client_entry_t *e = bw__calloc(1, sizeof *e);
  if (e == NULL) {
    bw__free(sig);
    return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  }
  e->sig = sig;
  e->redis = c->redis;
  e->name = bw__strdup(name);
  bw_error_t *err = e->name ? make_client(reg, c, e) : bw_error_static(BW_ERR_OUT_OF_MEMORY);
  if (err) {
    entry_free(e);
    return bw_error_wrap(err, BW_ERR_CONFIG, BW_CFG_BAD_VALUE, "%s:%d:%d: clients.%s: cannot create the client",
                         cfg->file, c->line, c->col, name);
  }
  e->next = reg->clients;
  reg->clients = e;
  *out = e;
  return NULL;
}

bw_error_t *bw_registry_client(bw_registry_t *reg, const char *client, bw_service_t **out) {
  if (reg == NULL || client == NULL || out == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_registry_client: NULL argument");
  *out = NULL;
  pthread_mutex_lock(&reg->mu);
  client_entry_t *e = NULL;
  char *stack = NULL;
  bool redis = false;
  bw_error_t *err = client_entry(reg, client, &e, &stack, &redis);
  bw_service_t *leaf = err ? NULL : bw_service_ref(e->leaf);
  pthread_mutex_unlock(&reg->mu);
  if (err == NULL) {
    if (stack == NULL) *out = bw_service_ref(leaf);
    else err = regsvc_new(reg, stack, leaf, redis ? BW__FLAVOR_REDIS : BW__FLAVOR_HTTP, out);
  }
  bw_service_release(leaf);
  bw__free(stack);
  return err;
}

bw_error_t *bw_registry_http_request(bw_registry_t *reg, const char *client, const char *method,
                                     const char *path, struct bw_http_request **out) {
  if (reg == NULL || client == NULL || path == NULL || out == NULL)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_registry_http_request: NULL argument");
  pthread_mutex_lock(&reg->mu);
  const bw__config_t *cfg = reg->gen ? reg->gen->cfg : NULL;
  const bw__cclient_t *c = bw__config_client(cfg, client);
  bw_error_t *err = NULL;
  char *url = NULL;
  if (c == NULL || c->redis) {
    err = bw__reg_unknown(cfg, BW_REGISTRY_CLIENTS, client);
  } else if (strncmp(path, "http://", 7) == 0 || strncmp(path, "https://", 8) == 0) {
    url = bw__strdup(path);
  } else {
    const char *base = CV(c, "base_url")->s ? CV(c, "base_url")->s : "";
    size_t bl = strlen(base), pl = strlen(path);
    bool slash_b = bl > 0 && base[bl - 1] == '/', slash_p = pl > 0 && path[0] == '/';
    url = bw__malloc(bl + pl + 2);
    if (url) {
      memcpy(url, base, bl);
      size_t o = bl;
      if (!slash_b && !slash_p && pl > 0) url[o++] = '/';
      const char *p = (slash_b && slash_p) ? path + 1 : path;
      memcpy(url + o, p, strlen(p) + 1);
    }
  }
  pthread_mutex_unlock(&reg->mu);
  if (err == NULL && url == NULL) err = bw_error_static(BW_ERR_OUT_OF_MEMORY);
  if (err == NULL) err = bw_http_request_new(out, method ? method : "GET", url);
  bw__free(url);
  return err;
}
