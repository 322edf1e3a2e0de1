/* Task synchronisation primitives: one-shot channel, notify, cancellation
 * tokens, and a once-cell for async initialisation. All are built only on
 * the public task/waker API of runtime.h, so they work on any runtime and
 * across runtimes. Threads: any, unless a function says otherwise.
 * "From a task" means from inside a task's poll function, passing its
 * bw_task_t *self; such a function never blocks. */
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

/* Make a channel (one allocation; lock-free).
 * Owns: the channel has two ends; each end is released exactly once: the
 * sender by bw_oneshot_send or bw_oneshot_close_sender, the receiver by a
 * READY bw_oneshot_poll_recv / bw_oneshot_recv_wait or
 * bw_oneshot_close_receiver. The memory goes when both are released; a
 * value sent but never received is then freed with its value_free.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_oneshot_new(bw_oneshot_t **out);
/* Send and release the sender end. Wakes the receiver. Returns false if the
 * receiver is already gone: value is then freed with value_free (if set).
 * Owns: on true, value belongs to the receiver once it takes it. */
bool bw_oneshot_send(bw_oneshot_t *ch, void *value, void (*value_free)(void *));
/* Release the sender end without a value: the receiver sees BW_ERR_CANCELLED. */
void bw_oneshot_close_sender(bw_oneshot_t *ch);
/* From a task. READY: *value is the value (now the caller's), *err NULL; or
 * *value NULL and *err the static BW_ERR_CANCELLED when the sender closed
 * without sending. Either pointer may be NULL to ignore it (an ignored
 * value is freed with its value_free). READY releases the receiver end.
 * PENDING: the task will be woken when the sender finishes. */
bw_poll_t bw_oneshot_poll_recv(bw_oneshot_t *ch, bw_task_t *self, void **value, bw_error_t **err);
/* From a thread that is not a runtime thread: block for the value and
 * release the receiver end. Errors: BW_ERR_CANCELLED (sender closed);
 * BW_ERR_NESTED_RUNTIME from a worker or block_on thread (the end is NOT
 * released then; use bw_oneshot_poll_recv). */
bw_error_t *bw_oneshot_recv_wait(bw_oneshot_t *ch, void **value);
/* Release the receiver end without receiving (a waiting task's waker is
 * dropped; a value already sent is freed with its value_free). */
void bw_oneshot_close_receiver(bw_oneshot_t *ch);

/* ---- Notify: wake one or all waiting tasks (tokio's Notify). ---------- */
typedef struct bw_notify bw_notify_t;

/* Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY.
 * Owns: *out is yours; free with bw_notify_free. */
bw_error_t *bw_notify_new(bw_notify_t **out);
/* Free. No task may be waiting (leftover wakers are dropped). NULL-safe. */
void bw_notify_free(bw_notify_t *n);
/* Wake the oldest waiter, or store one permit if none waits (permits do not
 * add up: at most one is stored). Never wakes under a lock. */
void bw_notify_one(bw_notify_t *n);
/* Wake every task waiting now; stores no permit. */
void bw_notify_waiters(bw_notify_t *n);
/* From a task. READY when a permit was taken or the task was notified.
 * `*ticket` is per-wait state the task keeps between polls: set it to 0
 * before the first poll of each wait (READY resets it to 0). Waiting slots
 * are reused, so steady state does no allocation. */
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

/* A new, uncancelled root token.
 * Owns: *out is one handle; drop with bw_cancel_token_unref.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_cancel_token_new(bw_cancel_token_t **out);
/* A child: cancelled when the parent is (at once if it already is); never
 * cancels the parent. The child holds no reference that keeps the parent's
 * callbacks alive after the parent is freed; if the parent's last handle
 * goes first, cancelling the grandparent still reaches the child. Freeing
 * a child first unlinks it (a long-lived parent does not accumulate them).
 * Owns: *out is one handle. Errors: as bw_cancel_token_new. */
bw_error_t *bw_cancel_token_child(bw_cancel_token_t *parent, bw_cancel_token_t **out);
/* Another handle (returns t). */
bw_cancel_token_t *bw_cancel_token_ref(bw_cancel_token_t *t);
/* Drop a handle. When the last goes, callbacks still registered never run
 * and waiting tasks' wakers are dropped. NULL-safe. */
void bw_cancel_token_unref(bw_cancel_token_t *t); /* NULL-safe */
/* Cancel this token and all its descendants. Idempotent; allocates nothing.
 * Callbacks run on the calling thread, once each, no lock held (they may
 * register, remove, cancel and unref, including the token itself). */
void bw_cancel_token_cancel(bw_cancel_token_t *t);
/* Lock-free check (acquire: what was done before the cancel is visible). */
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
 * unless called from inside cb). Do not hold a lock cb takes while calling
 * this. Safe after the token's handles are gone. NULL-safe (false). */
bool bw_cancel_reg_remove(bw_cancel_reg_t *reg);

/* ---- Once-cell for async initialisation ---------------------------------- */
typedef struct bw_once_cell bw_once_cell_t;
/* init is a task poll function; its output value (bw_task_set_output)
 * becomes the cell's value; an error output is a failed init.
 * value_free frees the value when the cell is freed.
 * Owns: *out is yours; free with bw_once_cell_free.
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. */
bw_error_t *bw_once_cell_new(bw_once_cell_t **out, bw_task_fn init, void *init_arg,
                             void (*value_free)(void *));
/* Free. Safe while init is still running (the value is freed once it ends);
 * no task may still be polling the cell. NULL-safe. */
void bw_once_cell_free(bw_once_cell_t *c);
/* From a task. The first caller spawns init (as its own task on the
 * caller's runtime, so it finishes even if the caller is aborted);
 * concurrent callers wait for it. READY with *value (borrowed: lives as long
 * as the cell) on success, or with *err (yours) for the caller that
 * started a failed attempt: a failed init is not cached, and the next
 * caller (or a waiter) runs it again. */
bw_poll_t bw_once_cell_poll(bw_once_cell_t *c, bw_task_t *self, void **value, bw_error_t **err);
/* From a thread that is not a runtime thread: block until initialised (runs
 * init on rt if needed). Errors: init's error; BW_ERR_NESTED_RUNTIME from a
 * worker (use bw_once_cell_poll there); those of bw_block_on. */
bw_error_t *bw_once_cell_wait(bw_once_cell_t *c, bw_runtime_t *rt, void **value);

#ifdef __cplusplus
}
#endif
#endif
