/* Global inject queue: see inject.h. The length is stored under the mutex
 * (relaxed) and read without it as a hint only; a reader that acts on it
 * takes the mutex. Missed tasks are impossible because every push is
 * followed by a notify (idle.c) that orders with the parking worker's
 * SeqCst state change. */
#include "runtime/inject.h"

void bw__inject_init(bw__inject_t *q) {
  bw__mutex_init_adaptive(&q->mu);
  q->head = q->tail = NULL;
  atomic_init(&q->len, 0);
}

void bw__inject_destroy(bw__inject_t *q) { pthread_mutex_destroy(&q->mu); }

void bw__inject_push(bw__inject_t *q, bw_task_t *t) {
  t->next = NULL;
  pthread_mutex_lock(&q->mu);
  if (q->tail)
    q->tail->next = t;
  else
    q->head = t;
  q->tail = t;
  atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  pthread_mutex_unlock(&q->mu);
}

void bw__inject_push_batch(bw__inject_t *q, bw_task_t *first, bw_task_t *last, size_t n) {
  last->next = NULL;
  pthread_mutex_lock(&q->mu);
  if (q->tail)
    q->tail->next = first;
  else
    q->head = first;
  q->tail = last;
  atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) + n,
                        memory_order_relaxed);
  pthread_mutex_unlock(&q->mu);
}

size_t bw__inject_pop_n(bw__inject_t *q, size_t max, bw_task_t **out) {
  *out = NULL;
  if (max == 0 || atomic_load_explicit(&q->len, memory_order_relaxed) == 0) return 0;
  pthread_mutex_lock(&q->mu);
  bw_task_t *first = q->head, *t = first, *last = NULL;
  size_t n = 0;
  while (t && n < max) {
    last = t;
    t = t->next;
    n++;
  }
  if (n) {
    q->head = t;
    if (!t) q->tail = NULL;
    last->next = NULL;
    atomic_store_explicit(&q->len, atomic_load_explicit(&q->len, memory_order_relaxed) - n,
                          memory_order_relaxed);
    *out = first;
  }
  pthread_mutex_unlock(&q->mu);
  return n;
}

bw_task_t *bw__inject_pop(bw__inject_t *q) {
  bw_task_t *t;
  return bw__inject_pop_n(q, 1, &t) ? t : NULL;
}
