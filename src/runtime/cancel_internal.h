/* Intrusive cancellation registrations, for layers and clients that must
 * register on a bw_cancel_token_t without a malloc per call.
 *
 * Usage (e.g. a timeout layer's per-call state embeds a bw__cancel_reg_t):
 *   bw__cancel_reg_init(&st->reg, on_cancel, st);
 *   if (bw__cancel_reg_add(call_token, &st->reg) == BW__CANCEL_ALREADY)
 *     ... the token is already cancelled; on_cancel was NOT called ...
 *   ...
 *   if (!bw__cancel_reg_del(&st->reg)) ... on_cancel ran (or is running on
 *      the thread calling del, i.e. del from inside on_cancel) ...
 *
 * Rules:
 *   - The caller keeps a reference (handle) on the token from add until del
 *     returned or fn has run. A reg sits on one token at a time.
 *   - fn(arg) runs at most once, on the thread that cancels, with no lock
 *     held. It may call del on its own reg (returns false at once), cancel
 *     other tokens, and unref tokens.
 *   - del after fn ran is allowed (returns false) and then the reg may be
 *     re-initialised and added again. Calling del on an initialised reg that
 *     was never added is allowed (returns false).
 *   - del waits while fn runs on another thread, so after del returns, fn is
 *     not running and will not run: the caller may free the memory fn uses.
 *     (Do not hold a lock fn takes while calling del.)
 *   - The cancelling thread never touches the reg once fn has started, so fn
 *     may free the memory holding the reg (after calling del or not).
 * Cost: add/del take the token's mutex once; cancel does no allocation. */
#ifndef BW_RUNTIME_CANCEL_INTERNAL_H
#define BW_RUNTIME_CANCEL_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>

#include "bulwark/sync.h"

typedef struct bw__cancel_reg bw__cancel_reg_t;
struct bw__cancel_reg {
  /* all private to cancel_token.c */
  bw__cancel_reg_t *prev, *next; /* in the token's list, under its lock */
  void (*fn)(void *arg);
  void *arg;
  bw_cancel_token_t *token; /* set from add until del */
  atomic_int state;
  unsigned flags;
};

enum { BW__CANCEL_ADDED = 0, BW__CANCEL_ALREADY = 1 };

void bw__cancel_reg_init(bw__cancel_reg_t *r, void (*fn)(void *arg), void *arg);
/* BW__CANCEL_ADDED, or BW__CANCEL_ALREADY if t is already cancelled (fn is
 * not called and the reg is not added). */
int bw__cancel_reg_add(bw_cancel_token_t *t, bw__cancel_reg_t *r);
/* true if the reg was added and fn had not run: it now never will.
 * false if fn ran or is running (waits for it, except from inside fn), or
 * the reg was not added. */
bool bw__cancel_reg_del(bw__cancel_reg_t *r);

#endif
