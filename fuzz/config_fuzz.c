/* libFuzzer target for the config loader: any bytes must give a model or a
 * report, never a crash, a leak, or undefined behaviour. Also explains every
 * stack of inputs that load, to exercise the printers.
 *
 * Build: cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang -DBW_FUZZ=ON
 *        cmake --build build-fuzz --target config_fuzz
 * Run:   LSAN_OPTIONS=suppressions=fuzz/lsan.supp \
 *          build-fuzz/fuzz/config_fuzz -max_total_time=60 -max_len=4096 -timeout=10 \
 *          build-fuzz/fuzz/corpus   (seeded from tests/config/files at build time)
 *        or: ctest --test-dir build-fuzz -L fuzz
 * lsan.supp names a leak inside libfyaml 0.7.12 itself (see the file). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 65536) return 0;
  char *text = malloc(size + 1);
  if (text == NULL) return 0;
  memcpy(text, data, size);
  text[size] = '\0';
  bw_config_report_t *r = NULL;
  bw_error_t *e = bw_config_check_string(text, size, "fuzz.yaml", &r);
  for (size_t i = 0; i < bw_config_report_count(r); i++) {
    const bw_config_diag_t *d = bw_config_report_get(r, i);
    if (d == NULL || d->message == NULL || d->path == NULL) abort();
  }
  char buf[512];
  bw_error_format(e, buf, sizeof buf, BW_ERROR_FMT_RELATED);
  if (e == NULL) {
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull != NULL) {
      bw_error_t *x = bw_config_explain_string(text, size, "fuzz.yaml", NULL, devnull);
      if (x != NULL) abort(); /* it loaded once, it must load again */
      fclose(devnull);
    }
  }
#ifdef BW_FUZZ_BUILD_LAYERS
  /* config_build_fuzz: a valid file must also build every layer (layer
   * constructors, shared instances, predicates) without crashing or leaking. */
  if (e == NULL) {
    bw_registry_t *reg = NULL;
    bw_error_t *be = bw_registry_load_string(&reg, text, size, "fuzz.yaml", NULL);
    if (be == NULL) {
      bw_error_t *re = bw_registry_reload_string(reg, text, size, "fuzz.yaml");
      bw_error_unref(re);
    }
    bw_error_unref(be);
    bw_registry_free(reg);
  }
#endif
  bw_error_unref(e);
  bw_config_report_free(r);
  free(text);
  return 0;
}
