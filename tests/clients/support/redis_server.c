/* Test fixture: a real redis-server child (see redis_server.h).
 *
 * Readiness is "answers PING" on its own unix socket: the server is polled
 * with a short blocking hiredis connection every few milliseconds, for at
 * most 10 s. Ports: see bw_test_free_port. Children are
 * recorded in a small table that an atexit handler kills, and each child asks
 * the kernel for SIGKILL when its parent dies (PR_SET_PDEATHSIG), so a
 * crashed test leaves no server running. */
#include "redis_server.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#define MAX_CHILDREN 16
static pid_t children[MAX_CHILDREN];
static char dirs[MAX_CHILDREN][96]; /* temp dirs not yet removed */
static bool atexit_done;

static void remove_dir(const char *dir) {
  char path[200];
  if (snprintf(path, sizeof path, "%s/redis.log", dir) < (int)sizeof path) unlink(path);
  if (snprintf(path, sizeof path, "%s/redis.sock", dir) < (int)sizeof path) unlink(path);
  rmdir(dir);
}

static void kill_children(void) {
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i] > 0) {
      kill(children[i], SIGCONT);
      kill(children[i], SIGKILL);
      waitpid(children[i], NULL, 0);
      children[i] = 0;
    }
  }
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (dirs[i][0]) {
      remove_dir(dirs[i]);
      dirs[i][0] = 0;
    }
  }
}

static void ensure_atexit(void) {
  if (!atexit_done) {
    atexit(kill_children);
    atexit_done = true;
  }
}

static void track_dir(const char *dir, bool add) {
  ensure_atexit();
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (add && !dirs[i][0]) {
      snprintf(dirs[i], sizeof dirs[i], "%s", dir);
      return;
    }
    if (!add && strcmp(dirs[i], dir) == 0) {
      dirs[i][0] = 0;
      return;
    }
  }
}

static void track(pid_t pid) {
  ensure_atexit();
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i] == 0) {
      children[i] = pid;
      return;
    }
  }
}

static void untrack(pid_t pid) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i] == pid) children[i] = 0;
}

/* Bind a loopback socket to port (0: any) and close it: the port it got,
 * or -1. */
static int try_port(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons((uint16_t)port);
  socklen_t len = sizeof sa;
  int got = -1;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
    got = ntohs(sa.sin_port);
  close(fd);
  return got;
}

/* A random free port below the kernel's ephemeral range (where bind(0) and
 * outgoing connections take their ports). A server's port inside that
 * range, once the test kills the server, can be handed to another test
 * process running in parallel: our reconnecting client then reaches that
 * process's server, and our restart cannot bind (both seen under ctest -j).
 * A client reconnecting there can even connect to itself. */
int bw_test_free_port(void) {
  int low = 32768;
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
  if (f) {
    if (fscanf(f, "%d", &low) != 1) low = 32768;
    fclose(f);
  }
  static unsigned seed;
  if (!seed) seed = (unsigned)getpid() * 2654435761u ^ (unsigned)time(NULL);
  for (int i = 0; low > 12000 && i < 200; i++) {
    seed = seed * 1103515245u + 12345u;
    int port = 10000 + (int)((seed >> 8) % (unsigned)(low - 10000));
    if (try_port(port) == port) return port;
  }
  return try_port(0); /* no room below the range: any free port */
}

void bw_test_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static bool answers_ping(const bw_test_redis_t *rs) {
  struct timeval tv = {0, 200000};
  /* through the server's own unix socket (a path no other test uses): a
   * PONG on the TCP port could come from another process's server */
  redisContext *c = redisConnectUnixWithTimeout(rs->unix_path, tv);
  bool ok = false;
  if (c && !c->err) {
    redisSetTimeout(c, tv);
    redisReply *r;
    if (rs->password[0]) {
      r = redisCommand(c, "AUTH %s", rs->password);
      if (r) freeReplyObject(r);
    }
    r = redisCommand(c, "PING");
    ok = r && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    if (r) freeReplyObject(r);
  }
  if (c) redisFree(c);
  return ok;
}

static int spawn(bw_test_redis_t *rs) {
  char port[16], logfile[160];
  snprintf(port, sizeof port, "%d", rs->port);
  snprintf(logfile, sizeof logfile, "%s/redis.log", rs->dir);
  const char *argv[32];
  int n = 0;
  argv[n++] = "redis-server";
  argv[n++] = "--port";
  argv[n++] = port;
  argv[n++] = "--bind";
  argv[n++] = "127.0.0.1";
  argv[n++] = "--save";
  argv[n++] = "";
  argv[n++] = "--appendonly";
  argv[n++] = "no";
  argv[n++] = "--daemonize";
  argv[n++] = "no";
  argv[n++] = "--dir";
  argv[n++] = rs->dir;
  argv[n++] = "--logfile";
  argv[n++] = logfile;
  argv[n++] = "--unixsocket";
  argv[n++] = rs->unix_path;
  argv[n++] = "--unixsocketperm";
  argv[n++] = "700";
  argv[n++] = "--maxclients";
  argv[n++] = "1000";
  if (rs->password[0]) {
    argv[n++] = "--requirepass";
    argv[n++] = rs->password;
  }
  argv[n] = NULL;

  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    execvp("redis-server", (char *const *)argv);
    _exit(127);
  }
  rs->pid = pid;
  rs->paused = false;
  track(pid);
  long waited = 0, step = 1;
  while (waited < 10000) {
    int st;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      untrack(pid);
      rs->pid = 0;
      fprintf(stderr, "redis fixture: redis-server exited early (see %s)\n", logfile);
      return -1;
    }
    if (answers_ping(rs)) return 0;
    bw_test_sleep_ms(step);
    waited += step;
    if (step < 20) step *= 2;
  }
  fprintf(stderr, "redis fixture: redis-server did not answer PING on port %d\n", rs->port);
  bw_test_redis_kill(rs);
  return -1;
}

int bw_test_redis_start(bw_test_redis_t *rs, const char *password) {
  memset(rs, 0, sizeof *rs);
  snprintf(rs->dir, sizeof rs->dir, "/tmp/bw-redis-XXXXXX");
  if (!mkdtemp(rs->dir)) {
    perror("redis fixture: mkdtemp");
    return -1;
  }
  track_dir(rs->dir, true);
  snprintf(rs->unix_path, sizeof rs->unix_path, "%s/redis.sock", rs->dir);
  if (password) snprintf(rs->password, sizeof rs->password, "%s", password);
  for (int attempt = 0; attempt < 5; attempt++) {
    rs->port = bw_test_free_port();
    if (rs->port > 0 && spawn(rs) == 0) return 0;
  }
  return -1;
}

int bw_test_redis_restart(bw_test_redis_t *rs) {
  if (rs->pid) return 0;
  for (int attempt = 0; attempt < 50; attempt++) {
    if (spawn(rs) == 0) return 0;
    bw_test_sleep_ms(20); /* port may be briefly unavailable */
  }
  return -1;
}

static void signal_and_wait(bw_test_redis_t *rs, int sig) {
  if (!rs->pid) return;
  if (rs->paused && sig != SIGKILL) kill(rs->pid, SIGCONT);
  kill(rs->pid, sig);
  waitpid(rs->pid, NULL, 0);
  untrack(rs->pid);
  rs->pid = 0;
  rs->paused = false;
}

void bw_test_redis_stop(bw_test_redis_t *rs) { signal_and_wait(rs, SIGTERM); }
void bw_test_redis_kill(bw_test_redis_t *rs) { signal_and_wait(rs, SIGKILL); }

void bw_test_redis_pause(bw_test_redis_t *rs) {
  if (rs->pid && !rs->paused) {
    kill(rs->pid, SIGSTOP);
    rs->paused = true;
  }
}

void bw_test_redis_resume(bw_test_redis_t *rs) {
  if (rs->pid && rs->paused) {
    kill(rs->pid, SIGCONT);
    rs->paused = false;
  }
}

void bw_test_redis_destroy(bw_test_redis_t *rs) {
  bw_test_redis_kill(rs);
  if (rs->dir[0]) {
    remove_dir(rs->dir);
    track_dir(rs->dir, false);
    rs->dir[0] = 0;
  }
}
