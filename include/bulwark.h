/* bulwark: resilience middleware for C. One include for everything. */
#ifndef BULWARK_H
#define BULWARK_H
#include "bulwark/alloc.h"
#include "bulwark/bulkhead.h"
#include "bulwark/chaos.h"
#include "bulwark/circuit_breaker.h"
#include "bulwark/config.h"
#include "bulwark/error.h"
#include "bulwark/fallback.h"
#include "bulwark/http.h"
#include "bulwark/layer.h"
#include "bulwark/metrics.h"
#include "bulwark/rate_limit.h"
#include "bulwark/redis.h"
#include "bulwark/retry.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "bulwark/sync.h"
#include "bulwark/timeout.h"
#endif
