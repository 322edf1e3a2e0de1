/* The `bulwark` command: check and explain config files, make one call
 * through a configured stack (HTTP or Redis).
 *
 * Design notes
 * - Output: results on stdout, diagnostics and -v events on stderr, so
 *   `bulwark http ... > body` keeps the body clean.
 * - Errors print as the whole chain, one line: "bulwark: retry: gave up ...:
 *   timeout: ...: http: connect ... refused".
 * - Exit codes (also in usage()): 0 success; 1 the config has errors, or the
 *   call failed; 2 usage error; 3 could not start (runtime, client).
 * - Calls are made from main (not a worker) and waited for on a condition
 *   variable; the runtime has 2 workers and a real clock. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bulwark/config.h"
#include "bulwark/error.h"
#include "bulwark/http.h"
#include "bulwark/metrics.h"
#include "bulwark/redis.h"
#include "bulwark/runtime.h"
#include "bulwark/service.h"
#include "cli.h"

#ifndef BW_VERSION
#define BW_VERSION "0.1.0"
#endif

static const char kUsage[] =
    "usage: bulwark [--version] [--help] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  check FILE...         validate config files; errors as file:line:col: key.path: message\n"
    "  explain FILE [STACK]  print each stack as it will be built: every setting, its\n"
    "                        effective value, where defaults apply, order warnings\n"
    "  http [OPTIONS] URL    one HTTP request, through a stack with -c FILE -s STACK\n"
    "  redis [OPTIONS] CMD [ARG...]  one Redis command, through a stack with -c/-s\n"
    "  reference             every layer, key, unit, range and default (Markdown)\n"
    "\n"
    "Run 'bulwark COMMAND --help' for a command's options.\n"
    "\n"
    "Exit codes:\n"
    "  0  success (check: every file is valid; warnings allowed)\n"
    "  1  a config file has errors, or the call failed (the error chain is printed)\n"
    "  2  usage error\n"
    "  3  could not start (runtime or client creation failed)\n";

static const char kCheckUsage[] =
    "usage: bulwark check [-q] FILE...\n"
    "\n"
    "Validate each FILE. Every error and warning is printed to stderr as\n"
    "  FILE:LINE:COL: KEY.PATH: MESSAGE\n"
    "(warnings say 'warning:'). Valid files print 'FILE: ok' on stdout unless -q.\n"
    "Exit 0 if every file is valid (warnings allowed), 1 otherwise, 2 on bad usage.\n";

static const char kExplainUsage[] =
    "usage: bulwark explain FILE [STACK]\n"
    "\n"
    "Print STACK (or every stack) of FILE as it will be built, outermost layer\n"
    "first: every setting with its effective value, '(default)' where the\n"
    "default applies, shared instances, the clients using it, and layer-order\n"
    "warnings. Secrets (${VAR} values, passwords) are never printed.\n"
    "Exit 0, or 1 if FILE has errors or has no such stack.\n";

void bw__cli_print_error(const char *prefix, const bw_error_t *e) {
  size_t need = bw_error_format(e, NULL, 0, BW_ERROR_FMT_RELATED);
  char *buf = malloc(need + 1);
  if (buf == NULL) {
    fprintf(stderr, "%s: %s\n", prefix, bw_error_message(e));
    return;
  }
  bw_error_format(e, buf, need + 1, BW_ERROR_FMT_RELATED);
  fprintf(stderr, "%s: %s\n", prefix, buf);
  free(buf);
}

void bw__cli_report_error(const char *prefix, bw_error_t *e) {
  bw__cli_print_error(prefix, e);
  bw_error_unref(e);
}

bool bw__cli_wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) return false;
    if (strcmp(argv[i], "--help") == 0) return true;
  }
  return false;
}

static int cmd_check(int argc, char **argv) {
  if (bw__cli_wants_help(argc, argv)) {
    fputs(kCheckUsage, stdout);
    return BW_CLI_OK;
  }
  bool quiet = false;
  int first = 1;
  for (; first < argc && argv[first][0] == '-' && argv[first][1] != '\0'; first++) {
    if (strcmp(argv[first], "-q") == 0) {
      quiet = true;
    } else if (strcmp(argv[first], "--") == 0) {
      first++;
      break;
    } else {
      fprintf(stderr, "bulwark check: unknown option '%s'\n%s", argv[first], kCheckUsage);
      return BW_CLI_USAGE;
    }
  }
  if (first >= argc) {
    fprintf(stderr, "bulwark check: no FILE given\n%s", kCheckUsage);
    return BW_CLI_USAGE;
  }
  int rc = BW_CLI_OK;
  for (int i = first; i < argc; i++) {
    bw_config_report_t *r = NULL;
    bw_error_t *e = bw_config_check_file(argv[i], &r);
    bw_config_report_print(r, stderr);
    if (e == NULL) {
      /* also build every layer (no runtime needed): a constructor may refuse
       * a combination the schema cannot see */
      bw_registry_t *reg = NULL;
      e = bw_registry_load_file(&reg, argv[i], NULL);
      bw_registry_free(reg);
      if (e != NULL) bw__cli_print_error(argv[i], e);
    }
    if (e != NULL) {
      rc = BW_CLI_FAILED;
      size_t n = bw_config_report_errors(r);
      if (n == 0) n = 1; /* the build error printed above */
      fprintf(stderr, "%s: %zu error%s\n", argv[i], n, n == 1 ? "" : "s");
    } else if (!quiet) {
      size_t w = bw_config_report_count(r);
      if (w) printf("%s: ok (%zu warning%s)\n", argv[i], w, w == 1 ? "" : "s");
      else printf("%s: ok\n", argv[i]);
    }
    bw_error_unref(e);
    bw_config_report_free(r);
  }
  return rc;
}

static int cmd_explain(int argc, char **argv) {
  if (bw__cli_wants_help(argc, argv)) {
    fputs(kExplainUsage, stdout);
    return BW_CLI_OK;
  }
  if (argc < 2 || argc > 3 || argv[1][0] == '-') {
    fprintf(stderr, "bulwark explain: expected FILE [STACK]\n%s", kExplainUsage);
    return BW_CLI_USAGE;
  }
  bw_error_t *e = bw_config_explain_file(argv[1], argc == 3 ? argv[2] : NULL, stdout);
  if (e != NULL) {
    /* a config with errors: print each diagnostic like check does */
    bw_config_report_t *r = NULL;
    bw_error_t *e2 = bw_config_check_file(argv[1], &r);
    if (e2 != NULL) bw_config_report_print(r, stderr);
    else bw__cli_print_error("bulwark explain", e);
    bw_error_unref(e2);
    bw_config_report_free(r);
    bw_error_unref(e);
    return BW_CLI_FAILED;
  }
  return BW_CLI_OK;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(kUsage, stderr);
    return BW_CLI_USAGE;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(kUsage, stdout);
    return BW_CLI_OK;
  }
  if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
    printf("bulwark %s\n", BW_VERSION);
    return BW_CLI_OK;
  }
  if (strcmp(cmd, "check") == 0) return cmd_check(argc - 1, argv + 1);
  if (strcmp(cmd, "explain") == 0) return cmd_explain(argc - 1, argv + 1);
  if (strcmp(cmd, "reference") == 0) {
    bw_config_print_reference(stdout);
    return BW_CLI_OK;
  }
  if (strcmp(cmd, "http") == 0) return bw__cli_http(argc - 1, argv + 1);
  if (strcmp(cmd, "redis") == 0) return bw__cli_redis(argc - 1, argv + 1);
  fprintf(stderr, "bulwark: unknown command '%s'\n%s", cmd, kUsage);
  return BW_CLI_USAGE;
}
