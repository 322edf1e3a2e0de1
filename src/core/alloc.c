/* The replaceable allocator. bw__free keeps errno so cleanup paths never
 * clobber the error a caller is about to read. */
#include "core/alloc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/alloc.h"

static bw_allocator_t current = {malloc, calloc, realloc, free};

bw_error_t *bw_set_allocator(const bw_allocator_t *a) {
  if (a == NULL || (!a->malloc_fn && !a->calloc_fn && !a->realloc_fn && !a->free_fn)) {
    current = (bw_allocator_t){malloc, calloc, realloc, free};
    return NULL;
  }
  if (!a->malloc_fn || !a->calloc_fn || !a->realloc_fn || !a->free_fn)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0,
                        "bw_set_allocator: all four functions must be set (or none)");
  current = *a;
  return NULL;
}

void *bw__malloc(size_t size) { return current.malloc_fn(size ? size : 1); }
void *bw__calloc(size_t count, size_t size) {
  return current.calloc_fn(count ? count : 1, size ? size : 1);
}
void *bw__realloc(void *ptr, size_t size) { return current.realloc_fn(ptr, size ? size : 1); }

void bw__free(void *ptr) {
  if (ptr == NULL) return;
  int saved = errno;
  current.free_fn(ptr);
  errno = saved;
}

char *bw__strdup(const char *s) {
  if (s == NULL) return NULL;
  size_t n = strlen(s) + 1;
  char *d = bw__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}
