/* Test fixture: a one-connection fake server (see fake_server.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "fake_server.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *serve_one(void *arg) {
  bw_test_fake_server_t *f = arg;
  int fd = accept(f->lfd, NULL, NULL);
  if (fd < 0) return NULL;
  char buf[512];
  if (read(fd, buf, sizeof buf) > 0) {
    if (f->reply) {
      /* the client may close before it has everything: no SIGPIPE */
      for (size_t off = 0; off < f->len;) {
        ssize_t n = send(fd, f->reply + off, f->len - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += (size_t)n;
      }
      while (read(fd, buf, sizeof buf) > 0) {
      }
    } else {
      struct linger lg = {1, 0}; /* close with RST */
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
  }
  close(fd);
  return NULL;
}

void bw_test_fake_server_start(bw_test_fake_server_t *f, const char *reply, size_t len) {
  f->reply = reply;
  f->len = len;
  f->lfd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(f->lfd >= 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof sa;
  assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(f->lfd, 16), 0);
  assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &alen), 0);
  f->port = ntohs(sa.sin_port);
  assert_int_equal(pthread_create(&f->th, NULL, serve_one, f), 0);
}

void bw_test_fake_server_stop(bw_test_fake_server_t *f) {
  pthread_join(f->th, NULL);
  close(f->lfd);
}
