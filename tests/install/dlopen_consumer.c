/* libbulwark.so loaded with dlopen (as language bindings load it): its
 * thread-locals are initial-exec, so they must fit in the static TLS that
 * glibc keeps for such libraries (service.c keeps its big per-thread caches
 * on the heap for this). Then one runtime is made, used and freed through
 * the loaded symbols. Usage: dlopen_consumer PATH/libbulwark.so */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "bulwark/runtime.h"

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  const char *(*kind_name)(bw_error_kind_t) = (const char *(*)(bw_error_kind_t))dlsym(h, "bw_error_kind_name");
  void (*opts_init)(bw_runtime_opts_t *) = (void (*)(bw_runtime_opts_t *))dlsym(h, "bw_runtime_opts_init");
  bw_error_t *(*rt_new)(bw_runtime_t **, const bw_runtime_opts_t *) =
      (bw_error_t * (*)(bw_runtime_t **, const bw_runtime_opts_t *)) dlsym(h, "bw_runtime_new");
  void (*rt_free)(bw_runtime_t *) = (void (*)(bw_runtime_t *))dlsym(h, "bw_runtime_free");
  if (!kind_name || !opts_init || !rt_new || !rt_free) {
    fprintf(stderr, "dlsym: %s\n", dlerror());
    return 1;
  }
  if (strcmp(kind_name(BW_ERR_TIMEOUT), "timeout") != 0) return 1;
  bw_runtime_opts_t o;
  opts_init(&o);
  o.worker_threads = 2;
  o.worker_start = BW_START_EAGER;
  bw_runtime_t *rt = NULL;
  if (rt_new(&rt, &o) != NULL || !rt) return 1;
  rt_free(rt);
  puts("bulwark dlopen ok");
  return 0;
}
