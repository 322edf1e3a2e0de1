/* A misbehaving HTTP/1.1 test server on its own libuv loop and thread.
 *
 * TEST FIXTURE, not part of the library. It listens on 127.0.0.1 (port 0 =
 * pick a free one; read it back with httpd_port) and keeps connections alive.
 * Every path is served; query parameters choose the behaviour:
 *
 *   status=N            answer with status N (default 200)
 *   delay_ms=N          wait N ms before answering
 *   retry_after=S       add "Retry-After: S"
 *   retry_after_date=S  add "Retry-After: <HTTP-date S seconds from now>"
 *   hdr=Name:Value      add a response header (may repeat)
 *   size=N              body of N bytes, byte i = 'a' + i % 26
 *   chunked=1           send the body with Transfer-Encoding: chunked
 *   echo=1              body = "METHOD TARGET\n" + request header lines + "\n" + body
 *                       (also for any path starting with /echo)
 *   reset=1             reset the connection (RST) instead of answering
 *   reset=body          send the headers and half the body, then reset
 *   close=1             close the connection without answering
 *   hang=1              never answer (until the client goes away)
 *   redirect=URL        status 302 (unless status= given) with Location: URL
 *   key=K               count requests per key K (httpd_key_count)
 *   fail_first=N        with key: the first N requests of key K get the
 *                       misbehaviour (status default 503, retry_after...,
 *                       reset, close); later ones get a plain 200 "ok"
 *   conn_close=1        answer with "Connection: close" and close after
 *
 * Without size/echo the body is "ok\n" (or "status N\n" for a non-2xx).
 * A HEAD answer has no body but announces the Content-Length the GET would
 * have had (so HEAD /?size=N says N); 204 and 304 announce 0.
 * Request bodies need Content-Length (Expect: 100-continue is answered).
 *
 * Threads: start/stop from one thread; counters may be read from any. */
#ifndef BW_TEST_HTTP_SERVER_H
#define BW_TEST_HTTP_SERVER_H

#include <stdint.h>

typedef struct httpd httpd_t;

/* Start listening on 127.0.0.1:port (0 = any free port) and serve on a new
 * thread. Returns 0 or a negative libuv error code. */
int httpd_start(httpd_t **out, int port);
/* Stop, close every connection, join the thread, free. NULL-safe. */
void httpd_stop(httpd_t *srv);
/* The port actually bound. */
int httpd_port(const httpd_t *srv);
/* Requests fully received (any behaviour), connections accepted. */
uint64_t httpd_requests(const httpd_t *srv);
uint64_t httpd_connections(const httpd_t *srv);
/* Connections currently open. */
uint64_t httpd_open_connections(const httpd_t *srv);
/* Requests received with key=K. */
uint64_t httpd_key_count(httpd_t *srv, const char *key);
/* Block the calling thread (not the server's) until fewer than or equal to
 * `n` connections are open or timeout_ms passed; returns the open count. */
uint64_t httpd_wait_open_connections(httpd_t *srv, uint64_t n, int timeout_ms);

/* Run the server until a signal (standalone program): blocks the calling
 * thread in the loop; httpd_stop from a signal-safe context is not allowed,
 * use httpd_request_stop (async-signal-safe). */
void httpd_request_stop(httpd_t *srv);
/* Wait for the server thread to finish after httpd_request_stop. */
void httpd_join(httpd_t *srv);

#endif
