/* The `bulwark` command: runs the built binary ($BW_BINARY_DIR/bulwark) and
 * checks stdout, stderr and exit codes. Network calls only go to 127.0.0.1
 * port 9, which refuses at once (nothing listens there). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

extern char **environ;

typedef struct run {
  int code;
  char out[65536];
  char err[65536];
} run_t;

static const char *bin(void) {
  static char path[1024];
  const char *b = getenv("BW_BINARY_DIR");
  snprintf(path, sizeof path, "%s/bulwark", b ? b : ".");
  if (access(path, X_OK) != 0) fail_msg("%s not built (cmake --build ... --target bulwark_cli)", path);
  return path;
}

static const char *src(const char *rel) {
  static char buf[8][1024];
  static int slot;
  const char *s = getenv("BW_SOURCE_DIR");
  char *b = buf[slot++ & 7];
  snprintf(b, sizeof buf[0], "%s/%s", s ? s : ".", rel);
  return b;
}

static void slurp(const char *path, char *buf, size_t len) {
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(buf, 1, len - 1, f) : 0;
  buf[n] = '\0';
  if (f) fclose(f);
  unlink(path);
}

/* Run bulwark with argv (NULL-terminated, argv[0] ignored). */
static void run(run_t *r, const char *const *argv) {
  char outp[] = "/tmp/bw_cli_out_XXXXXX", errp[] = "/tmp/bw_cli_err_XXXXXX";
  int fo = mkstemp(outp), fe = mkstemp(errp);
  assert_true(fo >= 0 && fe >= 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fo, 1);
  posix_spawn_file_actions_adddup2(&fa, fe, 2);
  const char *args[32];
  size_t n = 0;
  args[n++] = bin();
  for (size_t i = 1; argv[i] && n < 31; i++) args[n++] = argv[i];
  args[n] = NULL;
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, args[0], &fa, NULL, (char *const *)args, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  close(fo);
  close(fe);
  slurp(outp, r->out, sizeof r->out);
  slurp(errp, r->err, sizeof r->err);
  if (!WIFEXITED(st)) fail_msg("bulwark died (signal %d); stderr: %s", WTERMSIG(st), r->err);
  r->code = WEXITSTATUS(st);
}

#define RUN(r, ...)                                      \
  do {                                                   \
    const char *const a_[] = {"bulwark", __VA_ARGS__, NULL}; \
    run((r), a_);                                        \
  } while (0)

static run_t R;

static void test_version_and_help(void **state) {
  (void)state;
  RUN(&R, "--version");
  assert_int_equal(R.code, 0);
  assert_string_equal(R.out, "bulwark 0.1.0\n");
  RUN(&R, "--help");
  assert_int_equal(R.code, 0);
  assert_non_null(strstr(R.out, "Exit codes:"));
  assert_non_null(strstr(R.out, "check FILE..."));
  static const char *const subs[] = {"check", "explain", "http", "redis"};
  for (size_t i = 0; i < 4; i++) {
    RUN(&R, subs[i], "--help");
    assert_int_equal(R.code, 0);
    char want[64];
    snprintf(want, sizeof want, "usage: bulwark %s", subs[i]);
    assert_non_null(strstr(R.out, want));
  }
  RUN(&R, "reference");
  assert_int_equal(R.code, 0);
  assert_non_null(strstr(R.out, "### `circuit_breaker` (may be shared)"));
  assert_non_null(strstr(R.out, "| `max_attempts` | integer | 1..100 | `3` |"));
  assert_non_null(strstr(R.out, "| `rate` | rate | 1e-06/s..1e+09/s | **required** |"));
  RUN(&R, "frobnicate");
  assert_int_equal(R.code, 2);
  assert_non_null(strstr(R.err, "unknown command 'frobnicate'"));
  const char *const none[] = {"bulwark", NULL};
  run(&R, none);
  assert_int_equal(R.code, 2);
}

static void test_check(void **state) {
  (void)state;
  const char *good = src("tests/config/files/good/shared.yaml");
  RUN(&R, "check", good);
  assert_int_equal(R.code, 0);
  char want[2048];
  snprintf(want, sizeof want, "%s: ok\n", good);
  assert_string_equal(R.out, want);
  assert_string_equal(R.err, "");

  const char *bad = src("tests/config/files/bad/06_unknown_key.yaml");
  RUN(&R, "check", bad);
  assert_int_equal(R.code, 1);
  snprintf(want, sizeof want,
           "%s:6:9: stacks.payments[2].retry.max_attempt: unknown retry setting 'max_attempt'; "
           "did you mean 'max_attempts'?\n%s: 1 error\n",
           bad, bad);
  assert_string_equal(R.err, want);
  assert_string_equal(R.out, "");

  /* several files: one bad makes the exit code 1, the good one still says ok */
  RUN(&R, "check", good, src("tests/config/files/bad/02_tab_indent.yaml"));
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.out, ": ok\n"));
  assert_non_null(strstr(R.err, "02_tab_indent.yaml:3:1: tab character may not be used as indentation"));

  /* warnings do not fail */
  RUN(&R, "check", src("tests/config/files/good/order_warnings.yaml"));
  assert_int_equal(R.code, 0);
  assert_non_null(strstr(R.out, "ok (3 warnings)"));
  assert_non_null(strstr(R.err, ":7:7: stacks.odd[3].fallback: warning: fallback is not outermost"));

  RUN(&R, "check", "-q", good);
  assert_int_equal(R.code, 0);
  assert_string_equal(R.out, "");

  RUN(&R, "check", "/nonexistent/x.yaml");
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "/nonexistent/x.yaml: cannot read: No such file or directory"));

  const char *const usage[] = {"bulwark", "check", NULL};
  run(&R, usage);
  assert_int_equal(R.code, 2);

  /* the shipped example */
  RUN(&R, "check", src("examples/stacks.yaml"));
  assert_int_equal(R.code, 0);
}

static void test_explain(void **state) {
  (void)state;
  const char *f = src("tests/config/files/good/shared.yaml");
  RUN(&R, "explain", f, "writes");
  assert_int_equal(R.code, 0);
  assert_non_null(strstr(R.out, "stack writes"));
  assert_non_null(strstr(R.out, "2. circuit_breaker  (shared instance 'backend_breaker'"));
  assert_non_null(strstr(R.out, "max_attempts               2\n"));
  assert_non_null(strstr(R.out, "jitter                     full  (default)\n"));
  assert_null(strstr(R.out, "stack reads"));

  RUN(&R, "explain", f, "wirtes");
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "no stack 'wirtes'; did you mean 'writes'?"));

  RUN(&R, "explain", src("tests/config/files/bad/19_bad_enum.yaml"));
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "19_bad_enum.yaml:4:18: stacks.api[0].retry.backoff: 'exponentail' is not allowed"));

  /* secrets: the variable is named, its value never printed */
  setenv("BW_TEST_REDIS_PASSWORD", "pw-S3CRET-cli", 1);
  setenv("BW_TEST_REDIS_PORT", "6390", 1);
  RUN(&R, "explain", src("tests/config/files/good/clients.yaml"));
  assert_int_equal(R.code, 0);
  assert_null(strstr(R.out, "S3CRET"));
  assert_null(strstr(R.err, "S3CRET"));
  assert_non_null(strstr(R.out, "<from ${BW_TEST_REDIS_PASSWORD}>"));
  unsetenv("BW_TEST_REDIS_PASSWORD");
  unsetenv("BW_TEST_REDIS_PORT");

  RUN(&R, "explain");
  assert_int_equal(R.code, 2);
}

static void test_http(void **state) {
  (void)state;
  /* no stack: the refused connection is the error, whole chain printed */
  RUN(&R, "http", "-t", "5s", "http://127.0.0.1:9/x");
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "bulwark http: "));
  assert_non_null(strstr(R.err, "127.0.0.1"));
  assert_string_equal(R.out, "");

  /* through a stack: two attempts fail, the fallback answers; -v shows events */
  const char *f = src("tests/config/files/good/cli_fallback.yaml");
  RUN(&R, "http", "-v", "-c", f, "-s", "guarded", "http://127.0.0.1:9/x");
  assert_int_equal(R.code, 0);
  assert_string_equal(R.out, "from-fallback");
  assert_non_null(strstr(R.err, "] attempt_failed"));
  assert_non_null(strstr(R.err, "] retry_scheduled"));
  assert_non_null(strstr(R.err, "] give_up"));
  assert_non_null(strstr(R.err, "] fallback_used"));
  assert_non_null(strstr(R.err, "HTTP 200"));
  assert_non_null(strstr(R.err, "answered by the fallback instead of"));

  RUN(&R, "http", "-c", f, "-s", "nope", "http://127.0.0.1:9/x");
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "no stack 'nope'"));

  RUN(&R, "http", "-c", src("tests/config/files/bad/05_unknown_layer.yaml"), "-s", "api",
      "http://127.0.0.1:9/x");
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "05_unknown_layer.yaml:4:7: stacks.api[1].retyr: unknown layer"));

  RUN(&R, "http", "-c", f, "http://127.0.0.1:9/x"); /* -c without -s */
  assert_int_equal(R.code, 2);
  RUN(&R, "http", "-t", "soon", "http://127.0.0.1:9/x");
  assert_int_equal(R.code, 2);
  const char *const nourl[] = {"bulwark", "http", NULL};
  run(&R, nourl);
  assert_int_equal(R.code, 2);
}

static void test_redis(void **state) {
  (void)state;
  RUN(&R, "redis", "-p", "9", "-t", "2s", "PING");
  assert_int_equal(R.code, 1);
  assert_non_null(strstr(R.err, "bulwark redis: "));
  assert_non_null(strstr(R.err, "127.0.0.1:9"));

  /* the fallback answers a Redis string reply */
  RUN(&R, "redis", "-c", src("tests/config/files/good/cli_fallback.yaml"), "-s", "guarded", "-p",
      "9", "GET", "k");
  assert_int_equal(R.code, 0);
  assert_string_equal(R.out, "\"from-fallback\"\n");

  RUN(&R, "redis", "-p", "99999", "PING");
  assert_int_equal(R.code, 2);
  const char *const nocmd[] = {"bulwark", "redis", "-p", "9", NULL};
  run(&R, nocmd);
  assert_int_equal(R.code, 2);
}


/* ---- against a real redis-server on a free loopback port ------------------------------ */

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

static void test_redis_server(void **state) {
  (void)state;
  if (access("/usr/bin/redis-server", X_OK) != 0) skip();
  int port = free_port();
  assert_true(port > 0);
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  const char *const sargs[] = {"redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  assert_int_equal(posix_spawn(&pid, "/usr/bin/redis-server", &fa, NULL, (char *const *)sargs, environ), 0);
  posix_spawn_file_actions_destroy(&fa);
  /* until the server accepts: each try fails at once while nothing listens */
  bool up = false;
  for (int i = 0; i < 2000 && !up; i++) {
    RUN(&R, "redis", "-p", ps, "-t", "1s", "PING");
    up = R.code == 0;
  }
  if (up) {
    assert_string_equal(R.out, "PONG\n");
    RUN(&R, "redis", "-p", ps, "SET", "k", "hello world");
    assert_int_equal(R.code, 0);
    assert_string_equal(R.out, "OK\n");
    RUN(&R, "redis", "-p", ps, "-n", "0", "GET", "k");
    assert_string_equal(R.out, "\"hello world\"\n");
    RUN(&R, "redis", "-p", ps, "RPUSH", "l", "a", "b");
    assert_string_equal(R.out, "(integer) 2\n");
    RUN(&R, "redis", "-p", ps, "LRANGE", "l", "0", "-1");
    assert_string_equal(R.out, "1) \"a\"\n2) \"b\"\n");
    RUN(&R, "redis", "-p", ps, "GET", "nothing");
    assert_string_equal(R.out, "(nil)\n");
    RUN(&R, "redis", "-p", ps, "HGET", "k", "f"); /* an error reply fails the call */
    assert_int_equal(R.code, 1);
    assert_non_null(strstr(R.err, "WRONGTYPE"));
    /* through a stack, with events */
    RUN(&R, "redis", "-v", "-c", src("examples/stacks.yaml"), "-s", "cache", "-p", ps, "GET", "k");
    assert_int_equal(R.code, 0);
    assert_string_equal(R.out, "\"hello world\"\n");
  }
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  assert_true(up);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_version_and_help), cmocka_unit_test(test_check),
      cmocka_unit_test(test_explain),          cmocka_unit_test(test_http),
      cmocka_unit_test(test_redis),            cmocka_unit_test(test_redis_server),
  };
  return cmocka_run_group_tests_name("config_cli", tests, NULL, NULL);
}
