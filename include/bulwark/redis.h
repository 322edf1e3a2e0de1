/* bulwark Redis client: hiredis async on the runtime's reactor loop.
 *
 * One client = one connection (TCP host/port or unix socket), AUTH and
 * SELECT sent first on every (re)connect, many commands in flight at once
 * (pipelined), replies copied into a bulwark-owned bw_redis_reply_t.
 * Connect and command timeouts run on the runtime's timers, so they follow
 * a paused clock in tests.
 *
 * Connection states: CONNECTING -> READY -> (server gone) -> BACKOFF ->
 * CONNECTING ... Commands issued while CONNECTING wait in the client
 * (bounded by max_in_flight) until the connect and the AUTH/SELECT
 * handshake succeeded, then are written in order; if the connect or the
 * handshake fails they complete with BW_ERR_CONNECT (a refused handshake:
 * BW_ERR_REDIS, see Errors) and were never sent (so never ran, e.g. in the
 * wrong db). Commands issued in BACKOFF fail at once the same way, over
 * the reason the last connection failed — nothing queues without bound;
 * the retry and breaker layers decide what happens next. Reconnect backoff
 * doubles from reconnect_min_ms to reconnect_max_ms and resets after a
 * good connect.
 *
 * Errors (kind of the outermost link; the chain says more):
 *   BW_ERR_CONNECT      refused, unreachable, connect timeout (also carries a
 *                       BW_ERR_TIMEOUT cause), a handshake answered with a
 *                       "try again" reply (LOADING, BUSY...: cause
 *                       BW_ERR_UNAVAILABLE), or not connected right now; the
 *                       command was not sent. Retryable.
 *                       detail: errno when there is one (e.g. ECONNREFUSED,
 *                       ENOENT for a missing unix socket), else 0.
 *   BW_ERR_REDIS with the BW_REDIS_HANDSHAKE bit in its detail: the server
 *                       refused the connect handshake, i.e. answered AUTH or
 *                       SELECT with any other error reply (WRONGPASS, NOAUTH,
 *                       NOPERM, "ERR DB index is out of range", ...). The
 *                       command was not sent, and neither is any other until
 *                       a reconnect's handshake succeeds (the client keeps
 *                       reconnecting with backoff, e.g. for a password
 *                       changed on the server). NOT retryable: another
 *                       attempt meets the same refusal until the
 *                       configuration changes. detail: the reply's
 *                       bw_redis_code_t | BW_REDIS_HANDSHAKE; the cause is
 *                       the server's reply (BW_ERR_REDIS, its code).
 *   BW_ERR_TOO_LARGE    a reply was larger than max_reply_bytes. The
 *                       connection is closed (the rest of the reply cannot
 *                       be skipped safely), so every command in flight on it
 *                       fails with this error (it may have run), and the
 *                       client reconnects as after any lost connection.
 *                       detail: max_reply_bytes. Not retryable (the same
 *                       command gets the same reply), as for HTTP's
 *                       max_response_bytes.
 *   BW_ERR_TRANSPORT    connection reset/closed with the command in flight
 *                       (the command may or may not have run). detail: the
 *                       errno of the failed read/write, or 0 (closed).
 *   BW_ERR_TIMEOUT      no reply within the command timeout or the call's
 *                       deadline; the late reply is dropped and freed, the
 *                       connection stays usable.
 *   BW_ERR_CANCELLED    cancelled by the caller, or client freed.
 *   BW_ERR_UNAVAILABLE  (cause: BW_ERR_REDIS) a server error that says "try
 *                       again": LOADING, BUSY, TRYAGAIN, MASTERDOWN, READONLY;
 *                       also too many commands in flight (no cause).
 *   BW_ERR_REDIS        any other error reply (ERR, WRONGTYPE, NOSCRIPT,
 *                       NOAUTH, WRONGPASS, ...), and MOVED/ASK, which say
 *                       "cluster redirection not supported". detail: a
 *                       bw_redis_code_t (BW_REDIS_RETRYABLE bit set for the
 *                       retryable ones above).
 *   BW_ERR_PROTOCOL     the reply could not be parsed (the connection is
 *                       dropped; the command may have run). Not retryable.
 * Connection errors name the server ("host:port" or "unix:path").
 * The configured password never appears in error text: server messages
 * are scrubbed of it, and command arguments are never echoed. */
#ifndef BULWARK_REDIS_H
#define BULWARK_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bulwark/error.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/sync.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Replies ------------------------------------------------------------ */

typedef enum bw_redis_reply_type {
  BW_REDIS_REPLY_STRING = 1, /* bulk string: str/len, binary-safe */
  BW_REDIS_REPLY_ARRAY = 2,  /* element[0..elements) */
  BW_REDIS_REPLY_INTEGER = 3,
  BW_REDIS_REPLY_NIL = 4,
  BW_REDIS_REPLY_STATUS = 5, /* "+OK": str/len */
  BW_REDIS_REPLY_ERROR = 6   /* only inside arrays (EXEC); a top-level
                                error reply is the call's bw_error_t */
} bw_redis_reply_type_t;

/* A reply, copied out of hiredis into one bulwark allocation (the whole
 * tree). str is NUL-terminated (also when it holds binary data; len is the
 * real length). Owns: the receiver; free with bw_redis_reply_free(). The
 * tree is immutable and may be read from any thread. */
typedef struct bw_redis_reply {
  bw_redis_reply_type_t type;
  long long integer;
  size_t len;
  const char *str;
  size_t elements;
  const struct bw_redis_reply *const *element;
} bw_redis_reply_t;

void bw_redis_reply_free(bw_redis_reply_t *r); /* NULL-safe */

/* ---- Server error codes (detail of a BW_ERR_REDIS link) ------------------ */

#define BW_REDIS_RETRYABLE 0x100
/* Set in the detail of the BW_ERR_REDIS links of a refused connect
 * handshake (see Errors above), never in a reply's own code. */
#define BW_REDIS_HANDSHAKE 0x200
typedef enum bw_redis_code {
  BW_REDIS_OTHER = 1,      /* an error prefix not listed here */
  BW_REDIS_ERR = 2,        /* generic "ERR ..." */
  BW_REDIS_WRONGTYPE = 3,
  BW_REDIS_NOSCRIPT = 4,
  BW_REDIS_NOAUTH = 5,
  BW_REDIS_WRONGPASS = 6,
  BW_REDIS_NOPERM = 7,
  BW_REDIS_OOM = 8,
  BW_REDIS_EXECABORT = 9,
  BW_REDIS_MOVED = 10,     /* cluster redirection: not supported */
  BW_REDIS_ASK = 11,       /* cluster redirection: not supported */
  BW_REDIS_LOADING = BW_REDIS_RETRYABLE | 1,
  BW_REDIS_BUSY = BW_REDIS_RETRYABLE | 2,
  BW_REDIS_TRYAGAIN = BW_REDIS_RETRYABLE | 3,
  BW_REDIS_MASTERDOWN = BW_REDIS_RETRYABLE | 4,
  BW_REDIS_READONLY = BW_REDIS_RETRYABLE | 5
} bw_redis_code_t;

/* Should a retry layer try this error again? True for connection errors
 * (BW_ERR_CONNECT, BW_ERR_TRANSPORT), timeouts, and BW_ERR_UNAVAILABLE (the
 * retryable server replies above); false for cancellation, other BW_ERR_REDIS
 * replies (a refused handshake included), BW_ERR_TOO_LARGE, protocol errors,
 * and anything else. bw_retry_default_predicate (retry.h) also says false
 * for a refused handshake and for BW_ERR_TOO_LARGE (it differs on
 * BW_ERR_PROTOCOL, which it retries). A retry predicate for Redis stacks
 * can be exactly this function. Note: BW_ERR_TRANSPORT means the command
 * may have run; retry non-idempotent commands at your own risk.
 * Threads: any. NULL gives false. */
bool bw_redis_error_is_retryable(const bw_error_t *err);

/* The bw_redis_code_t of the first BW_ERR_REDIS link in err (without the
 * BW_REDIS_HANDSHAKE bit), or 0. */
int bw_redis_error_code(const bw_error_t *err);

/* ---- Client -------------------------------------------------------------- */

typedef struct bw_redis bw_redis_t;

typedef struct bw_redis_opts {
  const char *host;            /* numeric IP or name; default "127.0.0.1".
                                  (A name is resolved with a blocking
                                  getaddrinfo on the loop thread.) */
  int port;                    /* default 6379 */
  const char *unix_path;       /* if set: connect here instead of host/port */
  const char *username;        /* ACL user for AUTH (needs password), or NULL */
  const char *password;        /* NULL: no AUTH. Copied; never shown anywhere */
  int db;                      /* > 0: SELECT db on connect */
  uint32_t connect_timeout_ms; /* default 1000 */
  uint32_t command_timeout_ms; /* default 0: none (a call's deadline applies) */
  uint32_t reconnect_min_ms;   /* default 50 */
  uint32_t reconnect_max_ms;   /* default 2000 */
  uint32_t max_in_flight;      /* default 65536; beyond: BW_ERR_UNAVAILABLE */
  /* Largest reply accepted, in bytes as sent by the server (RESP framing
   * included; for an array, the whole array). A bigger reply fails with
   * BW_ERR_TOO_LARGE and closes the connection (see Errors above).
   * Default 64 MiB (BW_REDIS_DEFAULT_MAX_REPLY_BYTES): our choice, far
   * above what a cache value usually is yet well below Redis's own cap on
   * one string (proto-max-bulk-len, 512 MB), so one runaway GET/LRANGE/
   * HGETALL cannot take hundreds of MB. Memory: the bytes of a reply being
   * received are held until it is complete (at most the cap plus one
   * 16 KiB read), and a reply of many tiny elements takes several times
   * its wire size once parsed (hiredis makes an object per element), then
   * again as the bw_redis_reply_t copy. */
  size_t max_reply_bytes;
} bw_redis_opts_t;

#define BW_REDIS_DEFAULT_MAX_REPLY_BYTES ((size_t)64 << 20)

/* Zero *o; zero fields mean the defaults above. */
void bw_redis_opts_init(bw_redis_opts_t *o);

/* Create a client and start connecting (asynchronously).
 * Owns: strings in opts are copied; *out is yours, free with bw_redis_free().
 * Threads: any. Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY,
 * BW_ERR_RUNTIME_SHUTDOWN. */
bw_error_t *bw_redis_new(bw_runtime_t *rt, const bw_redis_opts_t *opts, bw_redis_t **out);

/* Close the connection and free the client. Commands still in flight
 * complete with BW_ERR_CANCELLED before this returns (their callbacks run
 * on workers). Blocks until then.
 * Threads: not from a worker or the loop thread of rt. On a current-thread
 * runtime call it after bw_runtime_shutdown() (and before bw_runtime_free).
 * Either way, before bw_runtime_free(rt). NULL does nothing. */
void bw_redis_free(bw_redis_t *r);

/* Completion of one command. reply is yours (free it with
 * bw_redis_reply_free) and non-NULL exactly when err is NULL. err is
 * borrowed (bw_error_ref to keep it). Runs once per command, on a worker
 * of the runtime, never inside bw_redis_command(), with no bulwark lock held. */
typedef void (*bw_redis_cb)(bw_redis_reply_t *reply, const bw_error_t *err, void *arg);

typedef struct bw_redis_cmd_opts {
  uint64_t deadline_ns;     /* 0: none; else bw_runtime_now_ns() scale */
  bw_cancel_token_t *cancel; /* NULL or a token; cancel completes the command
                                with BW_ERR_CANCELLED (the reply is dropped) */
} bw_redis_cmd_opts_t;

/* Send one command: argv[0..argc) with lengths argvlen (NULL: strlen of
 * each), binary-safe. The arguments are copied before this returns. The
 * effective timeout is the earlier of command_timeout_ms and deadline_ns.
 * opts may be NULL.
 * Returns NULL when cb will be called exactly once; else an error
 * (BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY, BW_ERR_RUNTIME_SHUTDOWN:
 * the runtime was shut down, the command was not sent) and cb will not be
 * called. Threads: any. */
bw_error_t *bw_redis_command(bw_redis_t *r, int argc, const char *const *argv,
                             const size_t *argvlen, const bw_redis_cmd_opts_t *opts,
                             bw_redis_cb cb, void *arg);

typedef enum bw_redis_state {
  BW_REDIS_CONNECTING = 0,
  BW_REDIS_READY = 1,
  BW_REDIS_BACKOFF = 2, /* disconnected, waiting to reconnect */
  BW_REDIS_CLOSED = 3
} bw_redis_state_t;

/* Current state (a snapshot). Threads: any. */
bw_redis_state_t bw_redis_state(const bw_redis_t *r);

typedef struct bw_redis_stats {
  uint64_t connects;       /* successful handshakes */
  uint64_t connect_failures;
  uint64_t disconnects;    /* lost READY connections */
  uint64_t commands, replies, errors, timeouts, late_replies_dropped, fail_fast;
  uint64_t in_flight;      /* commands queued on the connection (also those
                              waiting for the handshake), reply not seen yet */
  /* Commands submitted from reply callbacks that the event loop wrote
   * instead of the submitting worker (the socket was busy, earlier
   * commands were still queued for the loop), plus direct writes the loop
   * had to finish (counted once each). A worker that blocks in a callback
   * can hold these up until it returns. */
  uint64_t held_via_loop;
} bw_redis_stats_t;

/* Counters since creation (relaxed reads). Threads: any. */
void bw_redis_stats(const bw_redis_t *r, bw_redis_stats_t *out);

/* ---- As a bw_service_t (service.h) ---------------------------------------
 * Request: a bw_redis_request_t (set with bw_call_set_request(call, req,
 * bw_redis_request_free)); response: a bw_redis_reply_t (freed with the
 * call, or take it with bw_call_take_response and free it with
 * bw_redis_reply_free). The call's deadline bounds the command (as
 * deadline_ns above); bw_call_cancel drops the command's reply. Errors as
 * above. Retries replay the same request (it is only borrowed). */

typedef struct bw_redis_request bw_redis_request_t;

/* Copy argv (argvlen NULL: strlen) into one allocation.
 * Owns: *out is yours; bw_redis_request_free (a bw_destroy_fn).
 * Errors: BW_ERR_INVALID_ARGUMENT, BW_ERR_OUT_OF_MEMORY. Threads: any. */
bw_error_t *bw_redis_request_new(bw_redis_request_t **out, int argc, const char *const *argv,
                                 const size_t *argvlen);
void bw_redis_request_free(void *req); /* NULL-safe */

/* A service sending each call's request on `client`, kind "redis".
 * Owns: borrows client, which must outlive the service and all its calls;
 * *out is yours (bw_service_release). Errors: BW_ERR_INVALID_ARGUMENT,
 * BW_ERR_OUT_OF_MEMORY. Threads: any. */
bw_error_t *bw_redis_service_new(bw_service_t **out, bw_redis_t *client);

#ifdef __cplusplus
}
#endif
#endif
