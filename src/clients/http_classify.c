/* HTTP outcome classification, Retry-After parsing and URL redaction.
 *
 * Design notes:
 * - One function (bw__http_classify) turns a finished transfer into NULL or
 *   a bw_error chain; the curl code is the detail of transport-level errors,
 *   the status the detail of BW_ERR_HTTP_STATUS.
 * - A connect timeout is BW_ERR_CONNECT over a BW_ERR_TIMEOUT cause, so both
 *   "was it a connect failure" and "was it a timeout" answer yes. Likewise
 *   an error status whose body went over the cap is BW_ERR_HTTP_STATUS over
 *   a BW_ERR_TOO_LARGE cause: the retry and breaker predicates look at the
 *   status first (a 503 stays retryable, its Retry-After a hint), and
 *   bw_error_is(e, BW_ERR_TOO_LARGE) still says the body was dropped.
 * - Secrets: every message names the request by its redacted URL (userinfo
 *   replaced, query dropped) and curl's error text is scrubbed of the
 *   userinfo and of the user and password separately before use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clients/http_internal.h"
#include "core/alloc.h"

char *bw__http_redact_url(const char *url, char **userinfo) {
  *userinfo = NULL;
  const char *auth = strstr(url, "://");
  auth = auth ? auth + 3 : url;
  size_t alen = strcspn(auth, "/?#");
  const char *at = NULL;
  for (const char *p = auth; p < auth + alen; p++)
    if (*p == '@') at = p; /* the last '@' ends the userinfo */
  const char *host = at ? at + 1 : auth;
  size_t hlen = (size_t)(auth + alen - host);
  const char *path = auth + alen;
  size_t plen = strcspn(path, "?#");
  size_t slen = (size_t)(auth - url);
  size_t n = slen + (at ? 4 : 0) + hlen + plen + 1;
  char *out = bw__malloc(n);
  if (!out) return NULL;
  char *o = out;
  memcpy(o, url, slen);
  o += slen;
  if (at) {
    memcpy(o, "***@", 4);
    o += 4;
    size_t ulen = (size_t)(at - auth);
    *userinfo = bw__malloc(ulen + 1);
    if (!*userinfo) {
      bw__free(out);
      return NULL;
    }
    memcpy(*userinfo, auth, ulen);
    (*userinfo)[ulen] = 0;
  }
  memcpy(o, host, hlen);
  o += hlen;
  memcpy(o, path, plen);
  o += plen;
  *o = 0;
  return out;
}

int64_t bw__http_parse_retry_after(const char *v, int64_t now_s) {
  if (!v) return 0;
  while (*v == ' ' || *v == '\t') v++;
  if (*v >= '0' && *v <= '9') {
    char *end;
    long long s = strtoll(v, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    if (*end != 0 || s < 0) return 0;
    if (s > 365LL * 24 * 3600) s = 365LL * 24 * 3600; /* absurd values: clamp */
    return s > 0 ? (int64_t)s * 1000 : 0;
  }
  time_t t = curl_getdate(v, NULL);
  if (t == (time_t)-1) return 0;
  int64_t delta = (int64_t)t - now_s;
  if (delta <= 0) return 0;
  if (delta > 365LL * 24 * 3600) delta = 365LL * 24 * 3600;
  return delta * 1000;
}

bool bw__http_default_status_is_error(int status, void *arg) {
  (void)arg;
  return status >= 500 || status == 429;
}

/* Replace every occurrence of `secret` by "***" (a secret shorter than
 * that by as many '*'). The search resumes after each replacement, never
 * inside it: a secret made of '*' (or one the replacement recreates)
 * would otherwise match again forever. The text only shrinks. */
static void scrub(char *s, size_t cap, const char *secret) {
  (void)cap;
  if (!secret || !*secret) return;
  size_t sl = strlen(secret);
  size_t rl = sl >= 3 ? 3 : sl;
  char *from = s, *p;
  while ((p = strstr(from, secret)) != NULL) {
    if (rl < sl) memmove(p + rl, p + sl, strlen(p + sl) + 1);
    memset(p, '*', rl);
    from = p + rl;
  }
}

static void scrub_userinfo(char *s, size_t cap, const char *userinfo) {
  if (!userinfo) return;
  scrub(s, cap, userinfo);
  const char *colon = strchr(userinfo, ':');
  if (colon) {
    scrub(s, cap, colon + 1); /* the password alone */
    char user[256];
    size_t ul = (size_t)(colon - userinfo);
    if (ul >= sizeof user) ul = sizeof user - 1;
    memcpy(user, userinfo, ul);
    user[ul] = 0;
    if (ul >= 3) scrub(s, cap, user);
  }
}

static bw_error_kind_t kind_of(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return BW_ERR_DNS;
    case CURLE_COULDNT_CONNECT:
      return BW_ERR_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_USE_SSL_FAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
      return BW_ERR_TLS;
    case CURLE_OPERATION_TIMEDOUT:
      return BW_ERR_TIMEOUT;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_PROXY:
      return BW_ERR_TRANSPORT;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_HTTP3:
      return BW_ERR_PROTOCOL;
    case CURLE_FILESIZE_EXCEEDED:
      return BW_ERR_TOO_LARGE;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_NOT_BUILT_IN:
      return BW_ERR_INVALID_ARGUMENT;
    case CURLE_OUT_OF_MEMORY:
      return BW_ERR_OUT_OF_MEMORY;
    case CURLE_ABORTED_BY_CALLBACK:
      return BW_ERR_CANCELLED;
    default:
      return BW_ERR_TRANSPORT;
  }
}

/* BW_ERR_HTTP_STATUS for o->status, its Retry-After as the hint; `cause`
 * (consumed, may be NULL) goes under it. */
static bw_error_t *status_error(const bw_http_request_t *req, const bw__http_outcome_t *o,
                                bw_error_t *cause) {
  bw_error_hints_t hints = {0};
  const char *ra = o->resp ? bw_http_response_header(o->resp, "Retry-After") : NULL;
  hints.retry_after_ms = bw__http_parse_retry_after(ra, (int64_t)time(NULL));
  return bw_error_make(BW_ERR_HTTP_STATUS, o->status, cause, &hints, NULL, 0, __FILE__,
                       __LINE__, "http: %s %s: status %d", req->method, req->url_redacted,
                       o->status);
}

bw_error_t *bw__http_classify(const bw_http_request_t *req, const bw__http_outcome_t *o,
                              bw_http_status_pred pred, void *pred_arg) {
  const char *m = req->method, *u = req->url_redacted;
  if (!pred) pred = bw__http_default_status_is_error;
  if (o->too_large || o->rc == CURLE_FILESIZE_EXCEEDED) {
    /* The headers came before the body, so the status is known. An error
     * status stays the outcome (a 503 with a large error page is still a
     * retryable 503, its Retry-After still a hint); the overflow is its
     * cause, and the truncated body is not delivered. A status the client
     * would answer with a response has no response to give: too large. */
    if (o->status >= 100 && pred(o->status, pred_arg))
      return status_error(req, o,
                          bw_error_new(BW_ERR_TOO_LARGE, (int64_t)o->max_response_bytes,
                                       "body larger than %zu bytes, dropped",
                                       o->max_response_bytes));
    return bw_error_new(BW_ERR_TOO_LARGE, (int64_t)o->max_response_bytes,
                        "http: %s %s: response body larger than %zu bytes", m, u,
                        o->max_response_bytes);
  }
  if (o->rc == CURLE_OK) return pred(o->status, pred_arg) ? status_error(req, o, NULL) : NULL;
  char detail[CURL_ERROR_SIZE + 64];
  snprintf(detail, sizeof detail, "%s", o->curl_errbuf && *o->curl_errbuf
                                            ? o->curl_errbuf
                                            : curl_easy_strerror(o->rc));
  scrub_userinfo(detail, sizeof detail, req->userinfo);
  bw_error_kind_t kind = kind_of(o->rc);
  if (o->rc == CURLE_OPERATION_TIMEDOUT && !o->connected) {
    /* timed out before a connection existed: a connect timeout */
    bw_error_t *t = bw_error_new(BW_ERR_TIMEOUT, o->rc, "%s (curl %d)", detail, (int)o->rc);
    return bw_error_wrap(t, BW_ERR_CONNECT, o->rc, "http: %s %s: connect timed out", m, u);
  }
  if (o->rc == CURLE_OPERATION_TIMEDOUT)
    return bw_error_new(BW_ERR_TIMEOUT, o->rc, "http: %s %s: no response within %llu ms%s (curl %d)",
                        m, u, (unsigned long long)o->timeout_ms,
                        o->deadline_capped ? " (the call's deadline)" : "", (int)o->rc);
  return bw_error_new(kind, o->rc, "http: %s %s: %s (curl %d)", m, u, detail, (int)o->rc);
}
