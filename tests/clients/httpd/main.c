/* bw-test-httpd: run the misbehaving HTTP test server (see
 * tests/clients/support/http_server.h for its query parameters).
 *
 *   bw-test-httpd [--port N]     N = 0 (default): pick a free port
 *
 * Prints "PORT <n>" on stdout once listening, then serves on 127.0.0.1
 * until SIGTERM or SIGINT. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http_server.h"

static httpd_t *g_srv;

static void on_signal(int sig) {
  (void)sig;
  if (g_srv) httpd_request_stop(g_srv); /* uv_async_send is async-signal-safe */
}

int main(int argc, char **argv) {
  int port = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
      port = atoi(argv[++i]);
    } else {
      fprintf(stderr, "usage: %s [--port N]\n", argv[0]);
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  httpd_t *srv;
  int rc = httpd_start(&srv, port);
  if (rc != 0) {
    fprintf(stderr, "bw-test-httpd: cannot listen on 127.0.0.1:%d (error %d)\n", port, rc);
    return 1;
  }
  g_srv = srv;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  printf("PORT %d\n", httpd_port(srv));
  fflush(stdout);
  httpd_join(srv);
  g_srv = NULL;
  fprintf(stderr, "bw-test-httpd: %llu requests on %llu connections\n",
          (unsigned long long)httpd_requests(srv), (unsigned long long)httpd_connections(srv));
  httpd_stop(srv);
  return 0;
}
