/* bulwark: resilience middleware for C. One include for everything. */
#ifndef BULWARK_H
#define BULWARK_H
#include "bulwark/error.h"
#include "bulwark/alloc.h"
#include "bulwark/runtime.h"
#include "bulwark/sync.h"
#endif
