/* Helpers shared by the client benchmarks: a wall clock, a free loopback
 * port, and a server process started for the run and stopped after it. */
#ifndef BW_BENCH_SERVERS_H
#define BW_BENCH_SERVERS_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double bs_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A port free on 127.0.0.1 now (the kernel's pick), or -1. */
static int bs_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  return port;
}

/* Run argv[0] (found on PATH) with stdout and stderr to /dev/null, killed
 * if we die. Then poll ready(port) every step_us, at most `tries` times.
 * 0 once ready; -1 if it could not start, exited, or never got ready
 * (*pid is then 0 if it exited, else for bs_stop). */
static int bs_start(pid_t *pid, char *const argv[], int (*ready)(int), int port, int tries,
                    unsigned step_us) {
  *pid = fork();
  if (*pid < 0) return -1;
  if (*pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) {
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  for (int i = 0; i < tries; i++) {
    if (ready(port)) return 0;
    int st;
    if (waitpid(*pid, &st, WNOHANG) == *pid) {
      *pid = 0;
      return -1;
    }
    usleep(step_us);
  }
  return -1;
}

/* SIGTERM and reap (no-op for 0). */
static void bs_stop(pid_t *pid) {
  if (*pid > 0) {
    kill(*pid, SIGTERM);
    waitpid(*pid, NULL, 0);
    *pid = 0;
  }
}

#endif
