/* bulwark's own hiredis <-> libuv event glue (internal).
 *
 * Replaces hiredis/adapters/libuv.h, whose poll callback ignores errors: a
 * refused connect shows up as POLLERR (libuv passes UV_EBADF and stops the
 * handle), the adapter returns, and the connect callback never fires. Here
 * the first writable/error event of a connecting socket is checked with
 * getsockopt(SO_ERROR) and reported through `on_connect` either way.
 *
 * Everything runs on the loop's thread, except the external-write calls
 * at the end (under the owner's lock, no uv call). */
#ifndef BW_CLIENTS_REDIS_UV_H
#define BW_CLIENTS_REDIS_UV_H

#include <hiredis/async.h>
#include <stdbool.h>
#include <uv.h>

/* Called exactly once per attached context, unless the context is freed
 * (redisAsyncFree) before the connect finished: err is 0 when the TCP/unix
 * connect completed, else an errno value (ECONNREFUSED, ETIMEDOUT...).
 * On err != 0 the glue frees the context right after cb returns (pending
 * command callbacks then get a NULL reply); cb may also free it itself.
 * On success, commands queued before the connect (AUTH, SELECT, early
 * user commands, in that order) are flushed after cb returns. */
typedef void (*bw__redis_uv_connect_fn)(redisAsyncContext *ac, int err, void *arg);

/* Attach ac (fresh from redisAsyncConnect*, ac->err == 0) to loop.
 * Owns: the glue state lives until hiredis calls its cleanup hook (when ac
 * is freed), then the poll handle is closed and freed on the loop.
 * Returns 0, or a negative libuv error (ac untouched, caller frees it). */
int bw__redis_uv_attach(uv_loop_t *loop, redisAsyncContext *ac, bw__redis_uv_connect_fn cb,
                        void *arg);

/* Optional: fn(arg, true) before and fn(arg, false) after every glue
 * callback that calls into hiredis (socket events: all replies read in one
 * go; the coalesced write), so a client can take its lock around them and
 * collect the completions of one read to pass them on together. Same arg as
 * attach. Not called from inside attach, kick or the cleanup hook. Call
 * right after attach. */
void bw__redis_uv_set_hook(redisAsyncContext *ac, void (*fn)(void *arg, bool begin));

/* Writing from a thread other than the loop's, for a connected context,
 * with the owner's lock (the one the hook takes) held throughout:
 * external(ac, true); queue commands (redisAsyncFormattedCommand);
 * external(ac, false); write_now(ac). While external is on, hiredis's
 * write requests are ignored (no uv call off the loop). write_now makes one
 * write(2) of hiredis's buffer: 0 all written, 1 bytes left, -1 error (then
 * hiredis's context carries it). On 1 or -1 call kick(ac) on the loop
 * thread, under the lock: the glue writes the rest, or hiredis sees the
 * error and tears the connection down. */
void bw__redis_uv_external(redisAsyncContext *ac, bool on);
int bw__redis_uv_write_now(redisAsyncContext *ac);
void bw__redis_uv_kick(redisAsyncContext *ac);

#endif
