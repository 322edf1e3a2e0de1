/* The internal.h reactor entry points (stub until reactor.c lands). */
#include "runtime/reactor.h"
#include "runtime/rt.h"

bw__reactor_t *bw__reactor_get_if_started(bw_runtime_t *rt);
bw__reactor_t *bw__reactor_get_if_started(bw_runtime_t *rt) {
  (void)rt;
  return NULL;
}
int bw__reactor_submit(bw_runtime_t *rt, bw__reactor_op_t *op) {
  (void)rt;
  (void)op;
  return -1;
}
bool bw__reactor_on_loop(const bw_runtime_t *rt) {
  (void)rt;
  return false;
}
uv_loop_t *bw__reactor_loop(bw_runtime_t *rt) {
  (void)rt;
  return NULL;
}
int bw__reactor_on_close(bw_runtime_t *rt, void (*fn)(void *arg, uv_loop_t *loop), void *arg) {
  (void)rt;
  (void)fn;
  (void)arg;
  return -1;
}
void bw__reactor_glue_shutdown(bw_runtime_t *rt) { (void)rt; }
void bw__reactor_glue_free(bw_runtime_t *rt) { (void)rt; }
