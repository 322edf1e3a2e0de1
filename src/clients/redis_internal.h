/* Internals shared by the Redis client's files (redis*.c). */
#ifndef BW_CLIENTS_REDIS_INTERNAL_H
#define BW_CLIENTS_REDIS_INTERNAL_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "bulwark/redis.h"

/* Copy a hiredis reply tree into one bulwark allocation. NULL on OOM. */
bw_redis_reply_t *bw__redis_reply_copy(const redisReply *r);

/* Classify a top-level error reply (text without the leading '-') into the
 * error chain described in redis.h. Occurrences of `secret` (may be NULL or
 * "") in the text are replaced by "***". Never NULL. */
bw_error_t *bw__redis_error_from_reply(const char *str, size_t len, const char *secret);

/* Copy text into buf (size cap >= 4) with every occurrence of secret
 * replaced by "***", truncated to fit. Returns the length written. */
size_t bw__redis_scrub(char *buf, size_t cap, const char *text, size_t len, const char *secret);

/* ---- Requests (redis.c), used by the public callback API and the service.
 * done(reply, err, arg) runs exactly once: reply (yours) xor err (consumed).
 * Unless `direct`, it runs on a worker (deferred); with `direct` it runs on
 * whichever thread finished the request (loop thread, a worker firing the
 * timeout, a canceller), with no lock held. */
typedef struct bw__redis_req bw__redis_req_t;
typedef void (*bw__redis_done_fn)(bw_redis_reply_t *reply, bw_error_t *err, void *arg);

/* Submit. On success returns NULL and, if hold != NULL, *hold is an extra
 * reference to the request (drop with bw__redis_req_release). */
bw_error_t *bw__redis_submit(bw_redis_t *c, int argc, const char *const *argv,
                             const size_t *argvlen, uint64_t deadline_ns, bw_cancel_token_t *cancel,
                             bool direct, bw__redis_done_fn done, void *arg, bw__redis_req_t **hold);
/* Finish the request now with `reason` (consumed; NULL: BW_ERR_CANCELLED),
 * unless it already finished. The reply, if it comes, is dropped. */
void bw__redis_req_cancel(bw__redis_req_t *r, bw_error_t *reason);
void bw__redis_req_release(bw__redis_req_t *r);
bw_runtime_t *bw__redis_runtime(const bw_redis_t *c);

#endif
