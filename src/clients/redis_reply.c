/* Copying hiredis replies into bulwark-owned trees.
 *
 * One allocation per reply: a first pass counts nodes, element pointers and
 * string bytes; the block is laid out as [nodes][pointer arrays][strings]
 * (nodes and pointers are 8-byte aligned; strings need no alignment), and a
 * second pass fills it. bw_redis_reply_free() is then a single free. */
#include <string.h>

#include "clients/redis_internal.h"
#include "core/alloc.h"

typedef struct sizes {
  size_t nodes, ptrs, bytes;
} sizes_t;

static void measure(const redisReply *r, sizes_t *s) {
  s->nodes++;
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
      s->bytes += r->len + 1;
      break;
    case REDIS_REPLY_ARRAY:
      s->ptrs += r->elements;
      for (size_t i = 0; i < r->elements; i++) measure(r->element[i], s);
      break;
    default:
      break;
  }
}

typedef struct cursor {
  bw_redis_reply_t *node;
  const bw_redis_reply_t **ptr;
  char *bytes;
} cursor_t;

static bw_redis_reply_t *fill(const redisReply *r, cursor_t *c) {
  bw_redis_reply_t *n = c->node++;
  memset(n, 0, sizeof *n);
  switch (r->type) {
    case REDIS_REPLY_STRING:
      n->type = BW_REDIS_REPLY_STRING;
      break;
    case REDIS_REPLY_STATUS:
      n->type = BW_REDIS_REPLY_STATUS;
      break;
    case REDIS_REPLY_ERROR:
      n->type = BW_REDIS_REPLY_ERROR;
      break;
    case REDIS_REPLY_ARRAY:
      n->type = BW_REDIS_REPLY_ARRAY;
      break;
    case REDIS_REPLY_INTEGER:
      n->type = BW_REDIS_REPLY_INTEGER;
      n->integer = r->integer;
      break;
    default:
      n->type = BW_REDIS_REPLY_NIL;
      break;
  }
  if (n->type == BW_REDIS_REPLY_STRING || n->type == BW_REDIS_REPLY_STATUS ||
      n->type == BW_REDIS_REPLY_ERROR) {
    char *dst = c->bytes;
    if (r->len) memcpy(dst, r->str, r->len);
    dst[r->len] = '\0';
    c->bytes += r->len + 1;
    n->str = dst;
    n->len = r->len;
  } else if (n->type == BW_REDIS_REPLY_ARRAY) {
    const bw_redis_reply_t **arr = c->ptr;
    c->ptr += r->elements;
    n->elements = r->elements;
    n->element = arr;
    for (size_t i = 0; i < r->elements; i++) arr[i] = fill(r->element[i], c);
  }
  return n;
}

bw_redis_reply_t *bw__redis_reply_copy(const redisReply *r) {
  sizes_t s = {0, 0, 0};
  measure(r, &s);
  size_t total = s.nodes * sizeof(bw_redis_reply_t) + s.ptrs * sizeof(void *) + s.bytes;
  char *block = bw__malloc(total);
  if (!block) return NULL;
  cursor_t c;
  c.node = (bw_redis_reply_t *)(void *)block;
  c.ptr = (const bw_redis_reply_t **)(void *)(block + s.nodes * sizeof(bw_redis_reply_t));
  c.bytes = block + s.nodes * sizeof(bw_redis_reply_t) + s.ptrs * sizeof(void *);
  return fill(r, &c);
}

void bw_redis_reply_free(bw_redis_reply_t *r) { bw__free(r); }
