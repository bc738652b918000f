/*
 * demo.c: the program that `make demo` traces live.
 *
 * A toy HTTP server: three worker threads each take a made-up request,
 * forever, and run it through parse_request -> route -> handle_* ->
 * render_page (recursive, one level per nested block) -> write_response,
 * with short sleeps so that a trace stays readable. Every function is
 * noinline, so each keeps its own patchable site.
 *
 * demo/run.sh builds it with clang-16 -O2 -g -fpatchable-function-entry=5.
 * It prints "ready" on stdout once its threads run; it never reads stdin
 * and runs until it is killed.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define KEEP __attribute__((noinline))

struct request {
	char method[8];
	char path[64];
	int user_id;
};

struct response {
	int status;
	char body[512];
	size_t len;
};

static volatile unsigned long bytes_sent;
static int running; /* worker threads that have started */

static const char *const requests[] = {
	"GET / HTTP/1.1",
	"GET /users/42 HTTP/1.1",
	"GET /static/app.css HTTP/1.1",
	"POST /users/7 HTTP/1.1",
	"GET /nowhere HTTP/1.1",
};

KEEP static void pause_ms(long ms)
{
	struct timespec ts = {0, ms * 1000000L};
	nanosleep(&ts, NULL);
}

KEEP int parse_request(const char *line, struct request *req)
{
	memset(req, 0, sizeof *req);
	if (sscanf(line, "%7s %63s", req->method, req->path) != 2)
		return -1;
	if (strncmp(req->path, "/users/", 7) == 0)
		sscanf(req->path + 7, "%d", &req->user_id);
	return 0;
}

KEEP static size_t append(struct response *resp, const char *s)
{
	size_t n = strlen(s);
	if (resp->len + n >= sizeof resp->body)
		n = sizeof resp->body - 1 - resp->len;
	memcpy(resp->body + resp->len, s, n);
	resp->len += n;
	resp->body[resp->len] = 0;
	return n;
}

/* render_page renders depth nested blocks, calling itself once per level. */
KEEP void render_page(struct response *resp, const char *title, int depth)
{
	append(resp, "<div>");
	if (depth > 0)
		render_page(resp, title, depth - 1);
	else
		append(resp, title);
	append(resp, "</div>");
}

KEEP int lookup_user(int id)
{
	pause_ms(1); /* the "database" */
	return id * 7 + 1;
}

KEEP void handle_index(const struct request *req, struct response *resp)
{
	(void)req;
	resp->status = 200;
	render_page(resp, "welcome", 2);
}

KEEP void handle_user(const struct request *req, struct response *resp)
{
	char title[32];
	snprintf(title, sizeof title, "user %d", lookup_user(req->user_id));
	resp->status = 200;
	render_page(resp, title, 3);
}

KEEP void handle_static(const struct request *req, struct response *resp)
{
	(void)req;
	resp->status = 200;
	append(resp, "body { color: black }");
}

KEEP void handle_not_found(const struct request *req, struct response *resp)
{
	resp->status = 404;
	render_page(resp, req->path, 1);
}

KEEP void route(const struct request *req, struct response *resp)
{
	if (strcmp(req->path, "/") == 0)
		handle_index(req, resp);
	else if (strncmp(req->path, "/users/", 7) == 0)
		handle_user(req, resp);
	else if (strncmp(req->path, "/static/", 8) == 0)
		handle_static(req, resp);
	else
		handle_not_found(req, resp);
}

KEEP void write_response(const struct response *resp)
{
	bytes_sent += resp->len + (unsigned long)resp->status;
}

KEEP void serve_one(const char *line)
{
	struct request req;
	struct response resp = {0};
	if (parse_request(line, &req) != 0)
		return;
	route(&req, &resp);
	write_response(&resp);
}

static void *worker(void *arg)
{
	unsigned long i = (unsigned long)(size_t)arg;
	__atomic_add_fetch(&running, 1, __ATOMIC_SEQ_CST);
	for (;;) {
		serve_one(requests[i++ % (sizeof requests / sizeof requests[0])]);
		pause_ms(20);
	}
	return NULL;
}

int main(void)
{
	pthread_t t[3];
	for (size_t i = 0; i < 3; i++) {
		if (pthread_create(&t[i], NULL, worker, (void *)i) != 0) {
			fprintf(stderr, "demo: pthread_create failed\n");
			return 1;
		}
	}
	/* A thread that has not run yet still has pthread_create's blocked
	 * signal mask, which a live attach would refuse. */
	while (__atomic_load_n(&running, __ATOMIC_SEQ_CST) < 3)
		pause_ms(1);
	printf("ready\n");
	fflush(stdout);
	for (size_t i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	return 0;
}
