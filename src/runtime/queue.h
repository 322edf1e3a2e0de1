/* Bounded lock-free local run queue of one worker (tokio's multi_thread
 * queue): a power-of-two ring; the owner pushes and pops at either end of
 * its own making, other workers steal half of it. See queue.c. */
#ifndef BW_RUNTIME_QUEUE_H
#define BW_RUNTIME_QUEUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/inject.h"
#include "runtime/task.h"

typedef struct bw__lq {
  /* (steal << 32) | real: `real` is the next slot to pop; `steal` trails
   * it while a stealer copies [steal, real) out. */
  _Atomic uint64_t head;
  char pad0[56];
  _Atomic uint32_t tail; /* written only by the owner */
  uint32_t cap, mask;
  _Atomic(bw_task_t *) *buf;
  char pad1[40];
} bw__lq_t;

int bw__lq_init(bw__lq_t *q, uint32_t cap);
void bw__lq_destroy(bw__lq_t *q);
/* Owner: push at the tail. When full, half of the queue plus t move to the
 * inject queue in one batch (returns how many moved, 0 normally). */
uint32_t bw__lq_push_back_or_overflow(bw__lq_t *q, bw_task_t *t, bw__inject_t *inj);
/* Owner: pop from the head, or NULL. */
bw_task_t *bw__lq_pop(bw__lq_t *q);
/* Owner of dst: steal half of src into dst; returns one stolen task to run
 * now (the rest are in dst), or NULL. *n = number stolen. */
bw_task_t *bw__lq_steal_into(bw__lq_t *src, bw__lq_t *dst, uint32_t *n);
/* Any thread: tasks in the queue (approximate while it changes). */
uint32_t bw__lq_len(const bw__lq_t *q);
/* Owner: free slots. */
uint32_t bw__lq_room(const bw__lq_t *q);

#endif
