/* Task synchronisation primitives: one-shot channel, notify, cancellation
 * tokens, and a once-cell for async initialisation. All are built only on
 * the public task/waker API of runtime.h. Threads: any, unless stated. */
#ifndef BULWARK_SYNC_H
#define BULWARK_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- One-shot channel: one value from one sender to one receiver. ------ */
typedef struct bw_oneshot bw_oneshot_t;

/* Owns: the channel has two ends; each end is released exactly once: the
 * sender by bw_oneshot_send or bw_oneshot_close_sender, the receiver by a
 * READY bw_oneshot_poll_recv / bw_oneshot_recv_wait or bw_oneshot_close_receiver. */
bw_error_t *bw_oneshot_new(bw_oneshot_t **out);
/* Send and release the sender end. If the receiver is gone, value is freed
 * with value_free (if set) and false is returned. */
bool bw_oneshot_send(bw_oneshot_t *ch, void *value, void (*value_free)(void *));
void bw_oneshot_close_sender(bw_oneshot_t *ch);
/* From a task. READY: *value set (or *err = BW_ERR_CANCELLED when the sender
 * closed without sending); the receiver end is released. */
bw_poll_t bw_oneshot_poll_recv(bw_oneshot_t *ch, bw_task_t *self, void **value, bw_error_t **err);
/* From a non-worker thread: block for the value. BW_ERR_NESTED_RUNTIME from a worker. */
bw_error_t *bw_oneshot_recv_wait(bw_oneshot_t *ch, void **value);
void bw_oneshot_close_receiver(bw_oneshot_t *ch);

/* ---- Notify: wake one or all waiting tasks (tokio's Notify). ---------- */
typedef struct bw_notify bw_notify_t;
bw_error_t *bw_notify_new(bw_notify_t **out);
void bw_notify_free(bw_notify_t *n); /* no task may be waiting */
/* Wake one waiter, or store one permit if none waits. */
void bw_notify_one(bw_notify_t *n);
/* Wake every task waiting now; stores no permit. */
void bw_notify_waiters(bw_notify_t *n);
/* From a task. READY when a permit was taken or the task was notified.
 * `*ticket` is per-wait state the task keeps between polls: set it to 0
 * before the first poll of each wait. */
bw_poll_t bw_notify_poll(bw_notify_t *n, bw_task_t *self, uint64_t *ticket);
/* Abandon a wait begun by bw_notify_poll that has not returned READY (e.g.
 * the task timed out or is being dropped): frees its slot and resets
 * *ticket to 0. A bw_notify_one already handed to this waiter is passed on
 * (to the next waiter, or stored as the permit), so it is never lost. A
 * task that stops waiting must call this (from its drop hook if need be).
 * NULL-safe; does nothing when *ticket is 0. */
void bw_notify_poll_cancel(bw_notify_t *n, uint64_t *ticket);

/* ---- Cancellation tokens -------------------------------------------- */
typedef struct bw_cancel_token bw_cancel_token_t;
typedef struct bw_cancel_reg bw_cancel_reg_t;
typedef void (*bw_cancel_fn)(void *arg);

bw_error_t *bw_cancel_token_new(bw_cancel_token_t **out);
/* A child: cancelled when the parent is (at once if it already is); never
 * cancels the parent. The child holds no reference that keeps the parent's
 * callbacks alive after the parent is freed. */
bw_error_t *bw_cancel_token_child(bw_cancel_token_t *parent, bw_cancel_token_t **out);
bw_cancel_token_t *bw_cancel_token_ref(bw_cancel_token_t *t);
void bw_cancel_token_unref(bw_cancel_token_t *t); /* NULL-safe */
/* Cancel this token and all its descendants. Idempotent. Callbacks run on
 * the calling thread, once each, no lock held. */
void bw_cancel_token_cancel(bw_cancel_token_t *t);
bool bw_cancel_token_is_cancelled(const bw_cancel_token_t *t);
/* From a task: READY once the token is cancelled. Re-poll on each wake.
 * Registers the task's waker once (one small allocation per waiting task,
 * kept until the token is cancelled or its last handle dropped). For
 * per-call registrations without malloc see src/runtime/cancel_internal.h. */
bw_poll_t bw_cancel_token_poll(bw_cancel_token_t *t, bw_task_t *self);
/* Register cb(arg) to run once when t is cancelled (at once, on this thread,
 * if it already is). *reg (may be NULL if not wanted) lets you unregister;
 * when given, it must be released with bw_cancel_reg_remove (even after cb
 * ran). If t's last handle is dropped before it is cancelled, cb never runs.
 * Owns: one allocation per registration. Errors: BW_ERR_INVALID_ARGUMENT,
 * BW_ERR_OUT_OF_MEMORY (cb not registered, not run). */
bw_error_t *bw_cancel_token_on_cancel(bw_cancel_token_t *t, bw_cancel_fn cb, void *arg,
                                      bw_cancel_reg_t **reg);
/* Unregister and free reg. Returns true if cb had not run and now never
 * will; false if it ran or is running (then this waits until it returned,
 * unless called from inside cb). */
bool bw_cancel_reg_remove(bw_cancel_reg_t *reg);

/* ---- Once-cell for async initialisation ---------------------------------- */
typedef struct bw_once_cell bw_once_cell_t;
/* init is a task poll function; its output value becomes the cell's value.
 * value_free frees it when the cell is freed. */
bw_error_t *bw_once_cell_new(bw_once_cell_t **out, bw_task_fn init, void *init_arg,
                             void (*value_free)(void *));
void bw_once_cell_free(bw_once_cell_t *c);
/* From a task. The first caller spawns init; concurrent callers wait for
 * it. READY with *value on success, or with *err if init failed: a failed
 * init is not cached, the next caller runs it again. */
bw_poll_t bw_once_cell_poll(bw_once_cell_t *c, bw_task_t *self, void **value, bw_error_t **err);
/* From a non-worker thread: block until initialised (runs init on rt). */
bw_error_t *bw_once_cell_wait(bw_once_cell_t *c, bw_runtime_t *rt, void **value);

#ifdef __cplusplus
}
#endif
#endif
