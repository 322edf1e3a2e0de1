/* bulwark's own hiredis <-> libuv event glue (internal).
 *
 * Replaces hiredis/adapters/libuv.h, whose poll callback ignores errors: a
 * refused connect shows up as POLLERR (libuv passes UV_EBADF and stops the
 * handle), the adapter returns, and the connect callback never fires. Here
 * the first writable/error event of a connecting socket is checked with
 * getsockopt(SO_ERROR) and reported through `on_connect` either way.
 *
 * Everything runs on the loop's thread. */
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

/* Optional: fn(arg, true) before and fn(arg, false) after the glue hands a
 * batch of socket events to hiredis (one poll callback: all replies read
 * in one go), so a client can collect the completions and pass them on
 * together. Same arg as attach. Call right after attach. */
void bw__redis_uv_set_batch_hook(redisAsyncContext *ac, void (*fn)(void *arg, bool begin));

#endif
