/* Keyed breakers: a bounded map key -> breaker store, least recently used
 * evicted first (see breaker_state.h).
 *
 * Design notes.
 * - One mutex guards the hash chains, the LRU list and the count; lookups
 *   are O(1) (FNV-1a, chains, table sized 2x max_keys, never rehashed).
 * - Entries are reference counted: the map holds one while the key is in
 *   it, each call that acquired through it holds one until it recorded. An
 *   evicted entry leaves the map at once and is freed by its last holder,
 *   so a late record never touches freed memory.
 * - A new key allocates (entry + breaker); steady traffic over known keys
 *   does not. Eviction forgets a breaker's state: a key that comes back
 *   starts closed. Size max_keys above the number of live keys.
 * - Lock order: keyed->mu, then (not nested here) a breaker's own lock is
 *   never taken with keyed->mu held, except by bw__breaker_store_mem_new's
 *   init (no lock taken). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "layers/breaker_state.h"

struct bw__keyed_entry {
  bw__keyed_entry_t *hnext;
  bw__keyed_entry_t *prev, *next; /* LRU, most recent first */
  _Atomic int refs;
  uint64_t hash;
  size_t len;
  bw__breaker_store_t *store;
  char key[BW__KEY_MAX];
};

struct bw__keyed {
  pthread_mutex_t mu;
  bw__breaker_cfg_t cfg;
  uint32_t max_keys;
  size_t nbuckets; /* power of two */
  bw__keyed_entry_t **buckets;
  bw__keyed_entry_t *mru, *lru;
  size_t count;
};

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = UINT64_C(1469598103934665603);
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= UINT64_C(1099511628211);
  }
  return h;
}

int bw__keyed_new(bw__keyed_t **out, const bw__breaker_cfg_t *cfg, uint32_t max_keys) {
  if (max_keys < 1 || max_keys > (1u << 24)) return BW__BRK_EINVAL;
  bw__keyed_t *k = bw__calloc(1, sizeof *k);
  if (!k) return -12;
  k->cfg = *cfg;
  k->max_keys = max_keys;
  k->nbuckets = 16;
  while (k->nbuckets < (size_t)max_keys * 2) k->nbuckets <<= 1;
  k->buckets = bw__calloc(k->nbuckets, sizeof *k->buckets);
  if (!k->buckets || pthread_mutex_init(&k->mu, NULL) != 0) {
    bw__free(k->buckets);
    bw__free(k);
    return -12;
  }
  *out = k;
  return 0;
}

static void entry_put(bw__keyed_entry_t *e) {
  /* acq_rel: the last holder sees every other holder's writes (pairs with
   * the other holders' decrements). */
  if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
    e->store->vt->destroy(e->store);
    bw__free(e);
  }
}

void bw__keyed_free(bw__keyed_t *k) {
  if (!k) return;
  bw__keyed_entry_t *e = k->mru;
  while (e) {
    bw__keyed_entry_t *n = e->next;
    entry_put(e);
    e = n;
  }
  pthread_mutex_destroy(&k->mu);
  bw__free(k->buckets);
  bw__free(k);
}

static void lru_unlink(bw__keyed_t *k, bw__keyed_entry_t *e) {
  if (e->prev) e->prev->next = e->next;
  else k->mru = e->next;
  if (e->next) e->next->prev = e->prev;
  else k->lru = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push_front(bw__keyed_t *k, bw__keyed_entry_t *e) {
  e->prev = NULL;
  e->next = k->mru;
  if (k->mru) k->mru->prev = e;
  else k->lru = e;
  k->mru = e;
}

static void hash_unlink(bw__keyed_t *k, bw__keyed_entry_t *e) {
  bw__keyed_entry_t **pp = &k->buckets[e->hash & (k->nbuckets - 1)];
  while (*pp && *pp != e) pp = &(*pp)->hnext;
  if (*pp) *pp = e->hnext;
  e->hnext = NULL;
}

bw__breaker_store_t *bw__keyed_get(bw__keyed_t *k, const char *key, size_t len, bool create,
                                   bw__keyed_entry_t **entry) {
  *entry = NULL;
  if (len >= BW__KEY_MAX) len = BW__KEY_MAX - 1;
  uint64_t h = fnv1a(key, len);
  bw__keyed_entry_t *victim = NULL, *fresh = NULL;
  pthread_mutex_lock(&k->mu);
  for (int pass = 0; pass < 2; pass++) {
    for (bw__keyed_entry_t *e = k->buckets[h & (k->nbuckets - 1)]; e; e = e->hnext) {
      if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) {
        lru_unlink(k, e);
        lru_push_front(k, e);
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
        pthread_mutex_unlock(&k->mu);
        if (fresh) { /* lost a race to make it: nobody else saw it */
          fresh->store->vt->destroy(fresh->store);
          bw__free(fresh);
        }
        *entry = e;
        return e->store;
      }
    }
    if (!create || pass == 1) break;
    /* Make the entry without the lock (allocation), then look again. */
    pthread_mutex_unlock(&k->mu);
    fresh = bw__calloc(1, sizeof *fresh);
    if (fresh && bw__breaker_store_mem_new(&k->cfg, &fresh->store) != 0) {
      bw__free(fresh);
      fresh = NULL;
    }
    if (!fresh) return NULL;
    memcpy(fresh->key, key, len);
    fresh->key[len] = '\0';
    fresh->len = len;
    fresh->hash = h;
    atomic_init(&fresh->refs, 2); /* the map's and the caller's */
    pthread_mutex_lock(&k->mu);
  }
  if (!fresh) {
    pthread_mutex_unlock(&k->mu);
    return NULL;
  }
  if (k->count >= k->max_keys && k->lru) {
    victim = k->lru;
    lru_unlink(k, victim);
    hash_unlink(k, victim);
    k->count--;
  }
  bw__keyed_entry_t **b = &k->buckets[h & (k->nbuckets - 1)];
  fresh->hnext = *b;
  *b = fresh;
  lru_push_front(k, fresh);
  k->count++;
  pthread_mutex_unlock(&k->mu);
  if (victim) entry_put(victim); /* the map's reference */
  *entry = fresh;
  return fresh->store;
}

void bw__keyed_put(bw__keyed_t *k, bw__keyed_entry_t *e) {
  (void)k;
  if (e) entry_put(e);
}

size_t bw__keyed_count(bw__keyed_t *k) {
  pthread_mutex_lock(&k->mu);
  size_t n = k->count;
  pthread_mutex_unlock(&k->mu);
  return n;
}
