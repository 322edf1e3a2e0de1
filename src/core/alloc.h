/* Internal allocation entry points (see include/bulwark/alloc.h). */
#ifndef BW_CORE_ALLOC_H
#define BW_CORE_ALLOC_H
#include <stddef.h>
void *bw__malloc(size_t size);
void *bw__calloc(size_t count, size_t size);
void *bw__realloc(void *ptr, size_t size);
void bw__free(void *ptr); /* keeps errno; NULL-safe */
char *bw__strdup(const char *s);
#endif
