/* Test fixture: a real redis-server child process on 127.0.0.1.
 *
 * Started on a free port with `--save '' --appendonly no` (and a unix socket
 * in a private temporary directory), it is ready when bw_test_redis_start()
 * returns (it answered PING). The fixture can stop it, kill it with SIGKILL,
 * restart it on the same port, and pause/resume it with SIGSTOP/SIGCONT.
 * Every server started is killed at process exit (atexit) and by
 * PR_SET_PDEATHSIG if the test process dies, so nothing is left behind.
 * Threads: call from one thread (the test's main thread). */
#ifndef BW_TEST_REDIS_SERVER_H
#define BW_TEST_REDIS_SERVER_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct bw_test_redis {
  pid_t pid;            /* 0 while not running */
  int port;
  char dir[96];         /* private temp dir (unix socket, logs) */
  char unix_path[128];  /* unix socket path */
  char password[64];    /* requirepass, "" for none */
  bool paused;
} bw_test_redis_t;

/* Start a server on a free port. password may be NULL. Returns 0 or -1
 * (message on stderr). */
int bw_test_redis_start(bw_test_redis_t *rs, const char *password);
/* Start again on the same port and socket after stop/kill. 0 or -1. */
int bw_test_redis_restart(bw_test_redis_t *rs);
/* SIGTERM and wait. No-op if not running. */
void bw_test_redis_stop(bw_test_redis_t *rs);
/* SIGKILL and wait (abrupt death: connections reset). */
void bw_test_redis_kill(bw_test_redis_t *rs);
/* SIGSTOP / SIGCONT. */
void bw_test_redis_pause(bw_test_redis_t *rs);
void bw_test_redis_resume(bw_test_redis_t *rs);
/* Stop the server and remove its temporary directory. */
void bw_test_redis_destroy(bw_test_redis_t *rs);
/* A port on 127.0.0.1 where nothing listens (bound then closed), below
 * the kernel's ephemeral port range when there is room. */
int bw_test_free_port(void);
/* Sleep ms milliseconds of real time (resumed after signals). */
void bw_test_sleep_ms(long ms);

#endif
