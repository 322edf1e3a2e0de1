/* The Redis client as a bw_service_t (see include/bulwark/redis.h).
 *
 * Per-call state: the call, and one atomic slot for the in-flight request,
 * holding a request reference. ops->call publishes the request with a CAS
 * from NULL; ops->cancel and the completion take it out with an exchange
 * that leaves GONE behind, so exactly one of them drops that reference,
 * and whichever of publish and take comes second sees the other (a cancel
 * before the publish: ops->call finds GONE and cancels the request
 * itself). The call is referenced (bw_call_ref) while a request may still
 * complete it.
 *
 * The completion gets this state, not the call: the call may have been
 * forwarded here by outer nodes, and an outer retry may have resumed it
 * after a timeout aborted this attempt (service_internal.h,
 * bw__call_resume). bw_call_state(call) then names the retry node's state,
 * not ours; and our late bw_call_complete loses (the call is in a later
 * generation), so a late reply never answers the next attempt.
 * Completion is `direct`: bw_call_complete moves the caller's callback to a
 * worker itself, so the loop thread completes calls without another hop. */
#include <stdatomic.h>
#include <string.h>

#include "bulwark/layer.h"
#include "clients/redis_internal.h"
#include "core/alloc.h"
#include "layers/service_internal.h"

struct bw_redis_request {
  int argc;
  const char **argv;
  size_t *lens;
};

typedef struct call_state {
  _Atomic(bw__redis_req_t *) req; /* NULL, the request, or GONE */
  bw_call_t *call;
} call_state_t;

/* The slot's value once the completion or the cancel took the request. */
#define GONE ((bw__redis_req_t *)(void *)&gone_mark)
static const char gone_mark;

bw_error_t *bw_redis_request_new(bw_redis_request_t **out, int argc, const char *const *argv,
                                 const size_t *argvlen) {
  if (!out || argc <= 0 || !argv)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_request_new: bad arguments");
  *out = NULL;
  size_t bytes = 0;
  for (int i = 0; i < argc; i++) {
    if (!argv[i] && !(argvlen && argvlen[i] == 0))
      return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_request_new: NULL argument %d", i);
    bytes += (argvlen ? argvlen[i] : strlen(argv[i])) + 1;
  }
  size_t n = (size_t)argc;
  bw_redis_request_t *r =
      bw__malloc(sizeof *r + n * sizeof(char *) + n * sizeof(size_t) + bytes);
  if (!r) return bw_error_static(BW_ERR_OUT_OF_MEMORY);
  r->argc = argc;
  r->argv = (const char **)(void *)(r + 1);
  r->lens = (size_t *)(void *)(r->argv + n);
  char *p = (char *)(r->lens + n);
  for (int i = 0; i < argc; i++) {
    size_t l = argvlen ? argvlen[i] : strlen(argv[i]);
    if (l) memcpy(p, argv[i], l);
    p[l] = '\0';
    r->argv[i] = p;
    r->lens[i] = l;
    p += l + 1;
  }
  *out = r;
  return NULL;
}

void bw_redis_request_free(void *req) { bw__free(req); }

static void reply_free(void *p) { bw_redis_reply_free(p); }

static void on_done(bw_redis_reply_t *reply, bw_error_t *err, void *arg) {
  call_state_t *st = arg;
  bw_call_t *call = st->call;
  bw__redis_req_t *r = atomic_exchange(&st->req, GONE);
  if (r && r != GONE) bw__redis_req_release(r); /* safe: delivery holds its own reference */
  bw_service_t *svc = bw__call_pool_service(call);
  bw_call_complete(call, reply, reply ? reply_free : NULL, err);
  bw_call_unref(call);
  bw_service_release(svc);
}

static void svc_call(bw_service_t *svc, bw_call_t *call) {
  bw_redis_t *client = bw_service_impl(svc);
  call_state_t *st = bw_call_state(call);
  atomic_store_explicit(&st->req, NULL, memory_order_relaxed);
  st->call = call;
  const bw_redis_request_t *rq = bw_call_request(call);
  if (!rq) {
    bw_call_complete(call, NULL, NULL,
                     bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "redis service: no request"));
    return;
  }
  /* A call reference for the request (dropped in on_done), with a
   * reference on the service whose pool holds the call (not svc: a
   * forwarded call lives in an outer node's pool), so the pool outlives
   * that unref: the caller may release everything as soon as its callback
   * ran. The rest of this function needs none: the call's start holds it
   * until ops->call returned (service.c, the "starting" reference), even
   * when the reply is delivered on another worker meanwhile. */
  bw_service_t *pool = bw__call_pool_service(call);
  bw_service_ref(pool); /* for the request, released in on_done */
  bw_call_ref(call);
  bw__redis_req_t *hold = NULL;
  bw_error_t *e = bw__redis_submit(client, rq->argc, (const char *const *)rq->argv, rq->lens,
                                   bw_call_deadline_ns(call), NULL, true, on_done, st, &hold);
  if (e) {
    bw_call_complete(call, NULL, NULL, e);
    bw_call_unref(call);
    bw_service_release(pool);
    return;
  }
  /* Publish. If the cancel or the completion came first (it left GONE),
   * the request is ours to drop, and to cancel in case that was the cancel
   * (a done request ignores it). */
  bw__redis_req_t *expect = NULL;
  if (!atomic_compare_exchange_strong(&st->req, &expect, hold)) {
    bw__redis_req_cancel(hold, NULL);
    bw__redis_req_release(hold);
  }
}

static void svc_cancel(bw_service_t *svc, bw_call_t *call, const bw_error_t *reason) {
  (void)svc;
  call_state_t *st = bw_call_state(call);
  bw__redis_req_t *r = atomic_exchange(&st->req, GONE);
  if (!r || r == GONE) return; /* svc_call, or the completion, drops it */
  bw__redis_req_cancel(r, reason ? bw_error_ref(reason) : NULL);
  bw__redis_req_release(r);
}

static const bw_service_ops_t redis_ops = {
    .kind = "redis",
    .call_state_size = sizeof(call_state_t),
    .call = svc_call,
    .cancel = svc_cancel,
};

bw_error_t *bw_redis_service_new(bw_service_t **out, bw_redis_t *client) {
  if (!out || !client)
    return bw_error_new(BW_ERR_INVALID_ARGUMENT, 0, "bw_redis_service_new: NULL argument");
  return bw_service_new(out, &redis_ops, client);
}
