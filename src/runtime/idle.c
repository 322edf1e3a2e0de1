/* Idle worker accounting (after tokio's multi_thread/idle.rs).
 *
 * state packs num_unparked (high 16 bits) and num_searching (low 16).
 * Every change of state is a SeqCst read-modify-write. The "should I
 * wake someone?" check of a pusher is a SeqCst fence then a relaxed load,
 * and a parker puts a SeqCst fence between its RMW and its re-check. That
 * is what makes the lost-wake-up argument work (store-buffer / Dekker):
 *   pusher:  push task (queue store)   -> FENCE -> load(state): notify?
 *   parker:  RMW(state): unparked--    -> FENCE -> re-check queues
 * The two fences are totally ordered: if the pusher's comes first, the
 * parker's re-check sees the pushed task; else the pusher's load sees the
 * RMW (or a later value) and wakes a sleeper. A fence + load instead of a
 * fetch_add(0) keeps the state line shared between busy workers (an RMW
 * takes it exclusive on every local push, so two busy workers bounced it
 * on every yield); the fence is paid by the pusher, the second one only by
 * a parker. Any later parker RMWs come later in state's modification
 * order than the value the pusher loaded, so the same argument covers a
 * searcher the pusher counted on that parks afterwards.
 *
 * The sleepers stack is under `mu`; worker_to_notify re-checks the state
 * under it so two notifiers do not both wake a worker for one task. */
#include "runtime/idle.h"

#include "core/alloc.h"
#include "runtime/task.h"

#define UNPARK_SHIFT 16
#define SEARCH_MASK 0xffffu

static inline unsigned n_searching(uint32_t s) { return s & SEARCH_MASK; }
static inline unsigned n_unparked(uint32_t s) { return s >> UNPARK_SHIFT; }

int bw__idle_init(bw__idle_t *id, unsigned num_workers) {
  id->sleepers = bw__calloc(num_workers, sizeof *id->sleepers);
  if (!id->sleepers) return -1;
  id->nsleepers = 0;
  id->num_workers = num_workers;
  atomic_init(&id->state, (uint32_t)num_workers << UNPARK_SHIFT);
  bw__mutex_init_adaptive(&id->mu);
  return 0;
}

void bw__idle_destroy(bw__idle_t *id) {
  pthread_mutex_destroy(&id->mu);
  bw__free(id->sleepers);
  id->sleepers = NULL;
}

static bool should_notify(bw__idle_t *id) {
  /* fence pairs with the fence after the parker's RMW in
   * transition_to_parked (see top); the load may then be relaxed */
  atomic_thread_fence(memory_order_seq_cst);
  uint32_t s = atomic_load_explicit(&id->state, memory_order_relaxed);
  return n_searching(s) == 0 && n_unparked(s) < id->num_workers;
}

/* Under mu (the re-check before picking a sleeper): an RMW, so it reads the
 * latest state, as the pre-mutex check did before it. */
static bool should_notify_locked(bw__idle_t *id) {
  uint32_t s = atomic_fetch_add_explicit(&id->state, 0, memory_order_seq_cst);
  return n_searching(s) == 0 && n_unparked(s) < id->num_workers;
}

bool bw__idle_may_notify(bw__idle_t *id) {
  uint32_t s = atomic_load_explicit(&id->state, memory_order_relaxed);
  return n_searching(s) == 0 && n_unparked(s) < id->num_workers;
}

int bw__idle_worker_to_notify(bw__idle_t *id) {
  if (!should_notify(id)) return -1;
  pthread_mutex_lock(&id->mu);
  int r = -1;
  if (should_notify_locked(id) && id->nsleepers > 0) {
    atomic_fetch_add_explicit(&id->state, (1u << UNPARK_SHIFT) | 1u, memory_order_seq_cst);
    r = (int)id->sleepers[--id->nsleepers];
  }
  pthread_mutex_unlock(&id->mu);
  return r;
}

bool bw__idle_transition_to_parked(bw__idle_t *id, unsigned i, bool is_searching) {
  pthread_mutex_lock(&id->mu);
  uint32_t dec = (1u << UNPARK_SHIFT) | (is_searching ? 1u : 0u);
  uint32_t prev = atomic_fetch_sub_explicit(&id->state, dec, memory_order_seq_cst);
  id->sleepers[id->nsleepers++] = i;
  pthread_mutex_unlock(&id->mu);
  /* pairs with the fence in should_notify: the caller's re-check of the
   * queues (last searcher) comes after it (see top) */
  atomic_thread_fence(memory_order_seq_cst);
  return is_searching && n_searching(prev) == 1;
}

bool bw__idle_transition_to_searching(bw__idle_t *id) {
  uint32_t s = atomic_load_explicit(&id->state, memory_order_seq_cst);
  if (2 * n_searching(s) >= id->num_workers) return false;
  /* may overshoot the bound by a little under races; harmless */
  atomic_fetch_add_explicit(&id->state, 1u, memory_order_seq_cst);
  return true;
}

bool bw__idle_transition_from_searching(bw__idle_t *id) {
  uint32_t prev = atomic_fetch_sub_explicit(&id->state, 1u, memory_order_seq_cst);
  return n_searching(prev) == 1;
}

bool bw__idle_unpark_worker_by_id(bw__idle_t *id, unsigned i) {
  pthread_mutex_lock(&id->mu);
  bool found = false;
  for (unsigned k = 0; k < id->nsleepers; k++) {
    if (id->sleepers[k] == i) {
      id->sleepers[k] = id->sleepers[--id->nsleepers];
      atomic_fetch_add_explicit(&id->state, 1u << UNPARK_SHIFT, memory_order_seq_cst);
      found = true;
      break;
    }
  }
  pthread_mutex_unlock(&id->mu);
  return found;
}

bool bw__idle_is_parked(bw__idle_t *id, unsigned i) {
  pthread_mutex_lock(&id->mu);
  bool found = false;
  for (unsigned k = 0; k < id->nsleepers; k++)
    if (id->sleepers[k] == i) found = true;
  pthread_mutex_unlock(&id->mu);
  return found;
}

unsigned bw__idle_num_unparked(bw__idle_t *id) {
  return n_unparked(atomic_fetch_add_explicit(&id->state, 0, memory_order_seq_cst));
}
