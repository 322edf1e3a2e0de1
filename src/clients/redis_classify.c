/* Redis error classification (see the table in include/bulwark/redis.h).
 *
 * A top-level error reply is split at its first space into a prefix
 * ("LOADING", "WRONGTYPE", ...) and looked up in a small table. Retryable
 * prefixes become BW_ERR_UNAVAILABLE over a BW_ERR_REDIS cause, so a retry
 * predicate that only looks at kinds does the right thing, and
 * bw_redis_error_is_retryable() says the same. Server text is copied with
 * the configured password scrubbed out and capped at MAX_TEXT bytes. */
#include <string.h>

#include "clients/redis_internal.h"

#define MAX_TEXT 256

static const struct {
  const char *prefix;
  bw_redis_code_t code;
} table[] = {
    {"ERR", BW_REDIS_ERR},
    {"WRONGTYPE", BW_REDIS_WRONGTYPE},
    {"NOSCRIPT", BW_REDIS_NOSCRIPT},
    {"NOAUTH", BW_REDIS_NOAUTH},
    {"WRONGPASS", BW_REDIS_WRONGPASS},
    {"NOPERM", BW_REDIS_NOPERM},
    {"OOM", BW_REDIS_OOM},
    {"EXECABORT", BW_REDIS_EXECABORT},
    {"MOVED", BW_REDIS_MOVED},
    {"ASK", BW_REDIS_ASK},
    {"LOADING", BW_REDIS_LOADING},
    {"BUSY", BW_REDIS_BUSY},
    {"TRYAGAIN", BW_REDIS_TRYAGAIN},
    {"MASTERDOWN", BW_REDIS_MASTERDOWN},
    {"READONLY", BW_REDIS_READONLY},
};

size_t bw__redis_scrub(char *buf, size_t cap, const char *text, size_t len, const char *secret) {
  size_t slen = secret ? strlen(secret) : 0;
  size_t o = 0;
  for (size_t i = 0; i < len && o + 1 < cap;) {
    if (slen && i + slen <= len && memcmp(text + i, secret, slen) == 0) {
      for (const char *m = "***"; *m && o + 1 < cap; m++) buf[o++] = *m;
      i += slen;
      continue;
    }
    char ch = text[i++];
    buf[o++] = (ch == '\r' || ch == '\n' || ch == '\0') ? ' ' : ch;
  }
  buf[o] = '\0';
  return o;
}

bw_error_t *bw__redis_error_from_reply(const char *str, size_t len, const char *secret) {
  size_t plen = 0;
  while (plen < len && str[plen] != ' ') plen++;
  bw_redis_code_t code = BW_REDIS_OTHER;
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    if (strlen(table[i].prefix) == plen && memcmp(table[i].prefix, str, plen) == 0) {
      code = table[i].code;
      break;
    }
  }
  char text[MAX_TEXT];
  bw__redis_scrub(text, sizeof text, str, len, secret);
  if (code == BW_REDIS_MOVED || code == BW_REDIS_ASK)
    return bw_error_new(BW_ERR_REDIS, code, "cluster redirection not supported (%s)", text);
  bw_error_t *e = bw_error_new(BW_ERR_REDIS, code, "%s", text);
  if (code & BW_REDIS_RETRYABLE)
    e = bw_error_wrap(e, BW_ERR_UNAVAILABLE, code, "redis server unavailable, try again");
  return e;
}

bool bw_redis_error_is_retryable(const bw_error_t *err) {
  if (!err) return false;
  switch (bw_error_kind(err)) {
    case BW_ERR_CONNECT:
    case BW_ERR_TRANSPORT:
    case BW_ERR_TIMEOUT:
    case BW_ERR_UNAVAILABLE:
      return true;
    default:
      break;
  }
  /* Wrapped by a layer (e.g. a timeout layer's own link): look inside, but
   * never retry what the caller cancelled or a non-retryable reply. A
   * refused handshake (BW_ERR_REDIS, BW_REDIS_HANDSHAKE | code) and
   * BW_ERR_TOO_LARGE end here as false too: neither has a retryable link
   * (redis.c builds them that way, so bw_retry_default_predicate, which
   * stops at the first meaningful kind, says false as well). */
  if (bw_error_is(err, BW_ERR_CANCELLED)) return false;
  const bw_error_t *r = bw_error_find(err, BW_ERR_REDIS);
  if (r) return (bw_error_detail(r) & BW_REDIS_RETRYABLE) != 0;
  return bw_error_is(err, BW_ERR_CONNECT) || bw_error_is(err, BW_ERR_TRANSPORT) ||
         bw_error_is(err, BW_ERR_TIMEOUT) || bw_error_is(err, BW_ERR_UNAVAILABLE);
}

int bw_redis_error_code(const bw_error_t *err) {
  const bw_error_t *r = bw_error_find(err, BW_ERR_REDIS);
  return r ? (int)(bw_error_detail(r) & ~(int64_t)BW_REDIS_HANDSHAKE) : 0;
}
