// relay.c is testdata/relay written in C with epoll, the floor of a proxy
// hop without Go's runtime: each accepted connection is paired with its own
// connection to the target and bytes are copied both ways, one epoll_wait,
// read and write per message.
//
// Build and use it in the warm-path benchmark:
//   gcc -O2 -pthread -o /tmp/baton-crelay internal/e2e/testdata/crelay/relay.c
//   BATON_BENCH_RELAY=/tmp/baton-crelay go test -run '^$' -bench WarmPathProcess ./internal/e2e/
// RELAY_THREADS=N runs N threads, each with its own epoll loop accepting
// from the one listening socket (default 1).
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXFD 65536
#define BATCH 256
static int peer[MAXFD]; // each pair is used by the one thread that accepted it
static int ln;
static struct sockaddr_in target;

static void prepare(int fd) {
	int one = 1;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void watch(int ep, int fd) {
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
	epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}

static void die(const char *what) {
	perror(what);
	exit(1);
}

// writeAll writes b whole to fd, waiting for room when the socket is full;
// it returns -1 if fd failed. MSG_NOSIGNAL: a reset peer is an error, not
// a SIGPIPE.
static int writeAll(int fd, const char *b, ssize_t n) {
	for (ssize_t off = 0; off < n;) {
		ssize_t w = send(fd, b + off, n - off, MSG_NOSIGNAL);
		if (w > 0) {
			off += w;
		} else if (w < 0 && errno == EAGAIN) {
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			poll(&p, 1, -1);
		} else {
			return -1;
		}
	}
	return 0;
}

static void *loop(void *arg) {
	(void)arg;
	static __thread char buf[65536];
	int ep = epoll_create1(0);
	if (ep < 0)
		die("relay: epoll");
	watch(ep, ln);
	struct epoll_event evs[BATCH];
	for (;;) {
		int n = epoll_wait(ep, evs, BATCH, -1);
		if (n < 0 && errno != EINTR)
			die("relay: epoll_wait");
		int closed[2 * BATCH], nclosed = 0; // fds closed in this batch: their later events are stale
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd, stale = 0;
			for (int k = 0; k < nclosed; k++)
				stale |= closed[k] == fd;
			if (stale)
				continue;
			if (fd == ln) {
				int c = accept(ln, NULL, NULL); // non-blocking: another thread may have taken it
				if (c < 0)
					continue;
				int u = socket(AF_INET, SOCK_STREAM, 0);
				if (c >= MAXFD || u < 0 || u >= MAXFD || connect(u, (void *)&target, sizeof target) < 0) {
					close(c);
					if (u >= 0)
						close(u);
					continue;
				}
				prepare(c);
				prepare(u);
				peer[c] = u;
				peer[u] = c;
				watch(ep, c);
				watch(ep, u);
				continue;
			}
			// Read until a short read (level-triggered: anything left
			// is reported again), writing each piece whole to the peer.
			for (;;) {
				ssize_t r = read(fd, buf, sizeof buf);
				if (r < 0 && errno == EAGAIN)
					break;
				if (r <= 0 || writeAll(peer[fd], buf, r) < 0) {
					closed[nclosed++] = fd;
					closed[nclosed++] = peer[fd];
					close(peer[fd]);
					close(fd);
					break;
				}
				if (r < (ssize_t)sizeof buf)
					break;
			}
		}
	}
	return NULL;
}

int main(int argc, char **argv) {
	char *colon = argc == 2 ? strrchr(argv[1], ':') : NULL;
	if (colon == NULL) {
		fprintf(stderr, "usage: relay HOST:PORT\n");
		return 2;
	}
	*colon = 0;
	target = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
	if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
		fprintf(stderr, "relay: %s is not an IPv4 address\n", argv[1]);
		return 2;
	}
	struct sockaddr_in self = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof self;
	ln = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (ln < 0 || bind(ln, (void *)&self, sizeof self) < 0 || listen(ln, 1024) < 0 ||
	    getsockname(ln, (void *)&self, &len) < 0)
		die("relay: listen");
	printf("127.0.0.1:%d\n", ntohs(self.sin_port));
	fflush(stdout);
	char *threads = getenv("RELAY_THREADS");
	for (int i = 1; threads != NULL && i < atoi(threads); i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, loop, NULL) != 0)
			die("relay: thread");
	}
	loop(NULL);
}
