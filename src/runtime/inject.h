/* The global inject queue of a multi-thread runtime: tasks spawned or woken
 * from threads that are not workers, and local-queue overflow. An
 * intrusive FIFO under a mutex (the measured winner on 2 cores, DESIGN.md),
 * with an atomic length so "is it empty?" costs one relaxed load. */
#ifndef BW_RUNTIME_INJECT_H
#define BW_RUNTIME_INJECT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "runtime/task.h"

typedef struct bw__inject {
  pthread_mutex_t mu;
  bw_task_t *head, *tail; /* under mu, linked through task->next */
  atomic_size_t len;      /* written under mu; read anywhere (relaxed) */
} bw__inject_t;

void bw__inject_init(bw__inject_t *q);
void bw__inject_destroy(bw__inject_t *q);
void bw__inject_push(bw__inject_t *q, bw_task_t *t);
/* Push a linked batch first..last (n tasks, last->next ignored). */
void bw__inject_push_batch(bw__inject_t *q, bw_task_t *first, bw_task_t *last, size_t n);
/* Pop up to max tasks as a linked list (NULL-terminated); returns count. */
size_t bw__inject_pop_n(bw__inject_t *q, size_t max, bw_task_t **out);
bw_task_t *bw__inject_pop(bw__inject_t *q);
static inline size_t bw__inject_len(bw__inject_t *q) {
  return atomic_load_explicit(&q->len, memory_order_relaxed);
}

#endif
