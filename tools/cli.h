/* Shared pieces of the `bulwark` command (tools/). */
#ifndef BW_TOOLS_CLI_H
#define BW_TOOLS_CLI_H

#include <stdbool.h>

#include "bulwark/error.h"

enum { BW_CLI_OK = 0, BW_CLI_FAILED = 1, BW_CLI_USAGE = 2, BW_CLI_START = 3 };

/* "prefix: the whole chain (related errors too)" on stderr. */
void bw__cli_print_error(const char *prefix, const bw_error_t *e);
/* bw__cli_print_error, then drop the caller's reference to e. */
void bw__cli_report_error(const char *prefix, bw_error_t *e);
/* True if --help appears before a "--". */
bool bw__cli_wants_help(int argc, char **argv);

int bw__cli_http(int argc, char **argv);
int bw__cli_redis(int argc, char **argv);

#endif
