/* Bounded lock-free local run queue (after tokio's multi_thread/queue.rs).
 *
 * Layout: a power-of-two ring `buf`, a `tail` written only by the owner,
 * and a packed `head` = (steal << 32 | real). The owner pops at `real`;
 * a stealer first moves `real` forward by half of the queue with one CAS
 * (claiming [steal, new real)), copies the claimed slots into its own
 * queue, then moves `steal` up to `real` with a second CAS. While steal !=
 * real a steal is in progress: other stealers back off, and the owner does
 * not reuse the claimed slots (its room check uses `steal`).
 *
 * Indices are free-running u32 and wrap; slot = index & mask.
 *
 * Orderings:
 *  - owner push: slot store (relaxed) then tail store RELEASE; pairs with
 *    the ACQUIRE load of tail in steal_into2 (the stealer then reads the
 *    slot contents and the task written before the push).
 *  - pop/steal claim: CAS on head ACQ_REL/ACQUIRE: claims are totally
 *    ordered; the owner's room check loads head ACQUIRE so the stealer's
 *    reads of claimed slots (done before its release CAS that frees them)
 *    happen before the owner overwrites them.
 *  - steal copy into dst: slot stores (relaxed) then dst tail store
 *    RELEASE, as for a push.
 * Slots are atomics (relaxed) so TSan sees no plain race on recycled slots.
 *
 * Overflow: when the ring is full and no steal is in progress, the owner
 * claims the first half with a CAS and moves it, plus the new task, to the
 * inject queue as one linked batch (one mutex acquisition). */
#include "runtime/queue.h"

#include "core/alloc.h"

static inline uint32_t h_steal(uint64_t h) { return (uint32_t)(h >> 32); }
static inline uint32_t h_real(uint64_t h) { return (uint32_t)h; }
static inline uint64_t h_pack(uint32_t steal, uint32_t real) {
  return ((uint64_t)steal << 32) | real;
}

int bw__lq_init(bw__lq_t *q, uint32_t cap) {
  q->buf = bw__calloc(cap, sizeof *q->buf);
  if (!q->buf) return -1;
  q->cap = cap;
  q->mask = cap - 1;
  atomic_init(&q->head, 0);
  atomic_init(&q->tail, 0);
  for (uint32_t i = 0; i < cap; i++) atomic_init(&q->buf[i], NULL);
  return 0;
}

void bw__lq_destroy(bw__lq_t *q) {
  bw__free(q->buf);
  q->buf = NULL;
}

uint32_t bw__lq_len(const bw__lq_t *q) {
  uint64_t h = atomic_load_explicit(&((bw__lq_t *)q)->head, memory_order_acquire);
  uint32_t t = atomic_load_explicit(&((bw__lq_t *)q)->tail, memory_order_acquire);
  return t - h_real(h);
}

uint32_t bw__lq_room(const bw__lq_t *q) {
  uint64_t h = atomic_load_explicit(&((bw__lq_t *)q)->head, memory_order_acquire);
  uint32_t t = atomic_load_explicit(&((bw__lq_t *)q)->tail, memory_order_relaxed);
  return q->cap - (t - h_steal(h));
}

/* Move half the queue + t to inject. Fails (returns 0) if a stealer moved
 * head meanwhile; the caller retries. */
static uint32_t push_overflow(bw__lq_t *q, bw_task_t *t, uint32_t head, uint32_t tail,
                              bw__inject_t *inj) {
  uint32_t n = q->cap / 2;
  (void)tail;
  uint64_t prev = h_pack(head, head);
  /* claim [head, head+n); release publishes nothing new but keeps the CAS
   * symmetric with steal's; acquire on failure is not needed */
  if (!atomic_compare_exchange_strong_explicit(&q->head, &prev, h_pack(head + n, head + n),
                                               memory_order_acq_rel, memory_order_relaxed))
    return 0;
  bw_task_t *first = atomic_load_explicit(&q->buf[head & q->mask], memory_order_relaxed);
  bw_task_t *last = first;
  for (uint32_t i = 1; i < n; i++) {
    bw_task_t *x = atomic_load_explicit(&q->buf[(head + i) & q->mask], memory_order_relaxed);
    last->next = x;
    last = x;
  }
  last->next = t;
  bw__inject_push_batch(inj, first, t, n + 1);
  return n + 1;
}

uint32_t bw__lq_push_back_or_overflow(bw__lq_t *q, bw_task_t *t, bw__inject_t *inj) {
  for (;;) {
    uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    uint32_t steal = h_steal(h), real = h_real(h);
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed); /* own */
    if (tail - steal < q->cap) {
      atomic_store_explicit(&q->buf[tail & q->mask], t, memory_order_relaxed);
      /* release pairs with the acquire load of tail in steal_into2 */
      atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
      return 0;
    }
    if (steal != real) {
      /* a stealer is freeing room right now; do not wait for it */
      bw__inject_push(inj, t);
      return 1;
    }
    uint32_t moved = push_overflow(q, t, real, tail, inj);
    if (moved) return moved;
  }
}

bw_task_t *bw__lq_pop(bw__lq_t *q) {
  uint64_t h = atomic_load_explicit(&q->head, memory_order_acquire);
  for (;;) {
    uint32_t steal = h_steal(h), real = h_real(h);
    uint32_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed); /* own */
    if (real == tail) return NULL;
    uint32_t next_real = real + 1;
    uint64_t next = steal == real ? h_pack(next_real, next_real) : h_pack(steal, next_real);
    if (atomic_compare_exchange_weak_explicit(&q->head, &h, next, memory_order_acq_rel,
                                              memory_order_acquire))
      return atomic_load_explicit(&q->buf[real & q->mask], memory_order_relaxed);
  }
}

/* Claim half of src and copy it into dst at dst_tail. Returns count. */
static uint32_t steal_into2(bw__lq_t *src, bw__lq_t *dst, uint32_t dst_tail) {
  uint64_t prev = atomic_load_explicit(&src->head, memory_order_acquire);
  uint64_t next;
  uint32_t n;
  for (;;) {
    uint32_t steal = h_steal(prev), real = h_real(prev);
    if (steal != real) return 0; /* another worker is stealing */
    /* acquire pairs with the owner's release store of tail */
    uint32_t tail = atomic_load_explicit(&src->tail, memory_order_acquire);
    n = tail - real;
    n -= n / 2;
    if (n == 0) return 0;
    if (n > src->cap / 2) n = src->cap / 2;
    next = h_pack(steal, real + n);
    if (atomic_compare_exchange_weak_explicit(&src->head, &prev, next, memory_order_acq_rel,
                                              memory_order_acquire))
      break;
  }
  uint32_t first = h_steal(next);
  for (uint32_t i = 0; i < n; i++) {
    bw_task_t *t = atomic_load_explicit(&src->buf[(first + i) & src->mask], memory_order_relaxed);
    atomic_store_explicit(&dst->buf[(dst_tail + i) & dst->mask], t, memory_order_relaxed);
  }
  /* release the claimed slots: steal catches up with real */
  prev = next;
  for (;;) {
    uint32_t real = h_real(prev);
    if (atomic_compare_exchange_weak_explicit(&src->head, &prev, h_pack(real, real),
                                              memory_order_acq_rel, memory_order_acquire))
      return n;
  }
}

bw_task_t *bw__lq_steal_into(bw__lq_t *src, bw__lq_t *dst, uint32_t *nout) {
  *nout = 0;
  uint32_t dst_tail = atomic_load_explicit(&dst->tail, memory_order_relaxed); /* own */
  uint64_t dh = atomic_load_explicit(&dst->head, memory_order_acquire);
  if (dst_tail - h_steal(dh) > dst->cap / 2) return NULL; /* no room for half */
  uint32_t n = steal_into2(src, dst, dst_tail);
  if (n == 0) return NULL;
  *nout = n;
  n--;
  bw_task_t *ret = atomic_load_explicit(&dst->buf[(dst_tail + n) & dst->mask], memory_order_relaxed);
  if (n) atomic_store_explicit(&dst->tail, dst_tail + n, memory_order_release);
  return ret;
}
