/* A tiny program built against an installed bulwark. */
#include <bulwark.h>
#include <stdio.h>

int main(void) {
  bw_error_t *e = bw_error_new(BW_ERR_TIMEOUT, 200, "no response within %d ms", 200);
  int ok = bw_error_is(e, BW_ERR_TIMEOUT);
  bw_error_unref(e);
  if (ok) puts("bulwark consumer ok");
  return ok ? 0 : 1;
}
