/* Replaceable allocator. Every allocation bulwark makes goes through these.
 * Set it once, before creating any bulwark object; not thread-safe against
 * concurrent allocation. Passing NULL for all four restores the libc ones. */
#ifndef BULWARK_ALLOC_H
#define BULWARK_ALLOC_H
#include <stddef.h>
#include "bulwark/error.h"
#ifdef __cplusplus
extern "C" {
#endif
typedef struct bw_allocator {
  void *(*malloc_fn)(size_t size);
  void *(*calloc_fn)(size_t count, size_t size);
  void *(*realloc_fn)(void *ptr, size_t size);
  void (*free_fn)(void *ptr);
} bw_allocator_t;

/* Errors: BW_ERR_INVALID_ARGUMENT if only some of the functions are set. */
bw_error_t *bw_set_allocator(const bw_allocator_t *a);
#ifdef __cplusplus
}
#endif
#endif
