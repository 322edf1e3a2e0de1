/* Test fixture: a one-connection fake server on 127.0.0.1, on its own
 * thread. It accepts one connection, reads the client's first bytes, then
 * sends reply[0..len) and waits for the client to close; with reply NULL it
 * resets the connection (RST) instead of answering.
 * Threads: start and stop from the test's main thread. */
#ifndef BW_TEST_FAKE_SERVER_H
#define BW_TEST_FAKE_SERVER_H

#include <pthread.h>
#include <stddef.h>

typedef struct bw_test_fake_server {
  int lfd, port;
  const char *reply; /* borrowed until bw_test_fake_server_stop */
  size_t len;
  pthread_t th;
} bw_test_fake_server_t;

/* Listen on a free port and serve on a new thread. Fails the test if it
 * cannot. */
void bw_test_fake_server_start(bw_test_fake_server_t *f, const char *reply, size_t len);
/* Join the thread (its connection must end: free the client first), then
 * stop listening. */
void bw_test_fake_server_stop(bw_test_fake_server_t *f);

#endif
