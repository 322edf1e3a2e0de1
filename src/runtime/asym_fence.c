/* Asymmetric fence: a cheap side that is only a compiler barrier and a
 * heavy side that makes every running thread of the process execute a full
 * barrier (membarrier(2), MEMBARRIER_CMD_PRIVATE_EXPEDITED, Linux 4.14+).
 *
 * For Dekker pairs where one side runs on every call and the other almost
 * never: a call's start (state := RUNNING, then read the cancel flag) pays
 * no locked instruction, a cancel that finds the call not yet RUNNING (a
 * cancel racing its start) and the shutdown sweep pay a system call.
 *
 * Why it holds: after the heavy side returns, each other thread has passed
 * a full barrier at some point P of its program. A store it made before P
 * is visible to the heavy side's later loads; a load it makes after P sees
 * what the heavy side stored before calling. The light side keeps its store
 * before its load in program order (the compiler barrier), so it cannot
 * have its load before P and its store after: one side sees the other.
 *
 * Where membarrier is missing or refused (old kernels, seccomp, valgrind)
 * bw__asym_fence_ready stays false and the callers keep their seq_cst
 * read-modify-write instead. Decided once, at the first bw_runtime_new,
 * before any call exists (calls need a runtime). BULWARK_NO_MEMBARRIER=1 in
 * the environment forces that fallback (for testing it). */
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "runtime/internal.h"

atomic_bool bw__asym_fence_ready;

static pthread_once_t once = PTHREAD_ONCE_INIT;

static long membarrier(int cmd) { return syscall(SYS_membarrier, cmd, 0, 0); }

static void init_once(void) {
  const char *off = getenv("BULWARK_NO_MEMBARRIER");
  if (off && *off && *off != '0') return;
  long cmds = membarrier(MEMBARRIER_CMD_QUERY);
  if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return;
  if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) != 0) return;
  atomic_store_explicit(&bw__asym_fence_ready, true, memory_order_relaxed);
}

void bw__asym_fence_init(void) { pthread_once(&once, init_once); }

void bw__asym_fence_heavy(void) {
  /* Not ready: the light sides are seq_cst read-modify-writes, which
   * order themselves. */
  if (!atomic_load_explicit(&bw__asym_fence_ready, memory_order_relaxed)) return;
  /* Registered, so the kernel accepts the command; if it ever refused,
   * the light sides would be unordered: stop rather than lose a cancel. */
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0) abort();
}
