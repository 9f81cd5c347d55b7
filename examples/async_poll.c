/* async_poll: asynchronous I/O driven by the embedder's own poll() loop.
 *
 * It shows
 *   - submitting many requests with lb_aio_pwrite / lb_aio_pread, each tagged with a
 *     user_data pointer that comes back with its completion,
 *   - back-pressure: a submission beyond the context's limit of requests in flight is
 *     rejected with -EAGAIN (and never completes), so the program reaps and retries,
 *   - the event loop contract: libblock runs its loop only inside libblock calls, so the
 *     program poll()s the descriptor from lb_get_fd() and then calls lb_reap() with a zero
 *     timeout to collect whatever is ready, without ever blocking inside libblock,
 *   - that every accepted request completes exactly once.
 *
 *   async_poll IMAGE                   overwrite the first 4 MiB of IMAGE (a raw image of at
 *                                      least 4 MiB) with a pattern and verify it
 *   async_poll --selftest DIR          the same on a new DIR/async_poll.raw, then remove it
 *
 * Exit status: 0 success, 1 failure (message on stderr), 2 usage. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"

#define REQUEST_COUNT 256
#define REQUEST_SIZE (16u * 1024)
#define IMAGE_SIZE ((uint64_t)REQUEST_COUNT * REQUEST_SIZE) /* 4 MiB */
#define MAX_INFLIGHT 32 /* deliberately small, to exercise -EAGAIN */
#define REAP_BATCH 16

/* One request of the program; its address is the user_data libblock hands back. */
struct request {
  unsigned index;
  uint64_t offset;
  unsigned char *buf;
  int completions; /* how often it was reported complete: must end up exactly 1 */
  int ret;         /* the completion's result */
};

/* The byte request `index` writes at position `i` of its buffer. */
static unsigned char pattern_byte(unsigned index, size_t i) {
  return (unsigned char)(index * 31 + i % 97);
}

/* Waits until the context's descriptor is readable, then collects the completions that
 * are ready, without blocking in libblock. Returns how many were reaped, or -1. */
static int wait_and_reap(lb_context *ctx) {
  lb_completion done[REAP_BATCH];
  struct pollfd pfd;
  int i, n;

  pfd.fd = lb_get_fd(ctx);
  pfd.events = POLLIN;
  pfd.revents = 0;
  /* A real program would poll its sockets, timers, ... here too. */
  if (poll(&pfd, 1, 10 * 1000) < 0 && errno != EINTR) {
    perror("async_poll: poll");
    return -1;
  }
  /* min 0 and timeout 0: run the loop once and return what completed, possibly nothing */
  n = lb_reap(ctx, 0, REAP_BATCH, 0, done);
  if (n < 0) {
    fprintf(stderr, "async_poll: reap: %s\n", lb_get_error());
    return -1;
  }
  for (i = 0; i < n; i++) {
    struct request *req = done[i].user_data;
    req->completions++;
    req->ret = done[i].ret;
  }
  return n;
}

/* Submits every request (writes or reads), reaping whenever the context is full, then
 * reaps until all completed. Returns 0 when each completed exactly once and succeeded. */
static int run_all(lb_context *ctx, lb_backend *be, struct request *reqs, int writing) {
  unsigned next = 0, completed = 0, rejected = 0, i;
  lb_completion extra;

  for (i = 0; i < REQUEST_COUNT; i++) reqs[i].completions = 0;
  while (completed < REQUEST_COUNT) {
    /* Submit until everything is in flight or the context says "full". */
    while (next < REQUEST_COUNT) {
      struct request *req = &reqs[next];
      int ret = writing
                    ? lb_aio_pwrite(be, req->buf, REQUEST_SIZE, req->offset, 0, req)
                    : lb_aio_pread(be, req->buf, REQUEST_SIZE, req->offset, 0, req);
      if (ret == -EAGAIN) { /* rejected: it will never complete; retry it later */
        rejected++;
        break;
      }
      if (ret < 0) {
        fprintf(stderr, "async_poll: submit: %s\n", lb_get_error());
        return 1;
      }
      next++;
    }
    {
      int n = wait_and_reap(ctx);
      if (n < 0) return 1;
      completed += (unsigned)n;
    }
  }
  /* Nothing may complete twice: a last look must find no completion at all. */
  if (lb_reap(ctx, 0, 1, 0, &extra) != 0) {
    fprintf(stderr, "async_poll: a completion arrived after all requests completed\n");
    return 1;
  }
  if (lb_context_get_inflight(ctx) != 0) {
    fprintf(stderr, "async_poll: %d requests still in flight\n", lb_context_get_inflight(ctx));
    return 1;
  }
  for (i = 0; i < REQUEST_COUNT; i++) {
    if (reqs[i].completions != 1 || reqs[i].ret != 0) {
      fprintf(stderr, "async_poll: request %u completed %d times, result %d\n", i,
              reqs[i].completions, reqs[i].ret);
      return 1;
    }
  }
  /* With more requests than MAX_INFLIGHT, the context must have pushed back. */
  if (rejected == 0) {
    fprintf(stderr, "async_poll: no submission was rejected with -EAGAIN\n");
    return 1;
  }
  printf("%s: %u requests of %u bytes, each completed exactly once (%u submissions "
         "deferred by -EAGAIN)\n",
         writing ? "write" : "read", REQUEST_COUNT, REQUEST_SIZE, rejected);
  return 0;
}

static int write_and_verify(lb_context *ctx, lb_backend *be) {
  struct request *reqs = calloc(REQUEST_COUNT, sizeof *reqs);
  unsigned char *memory = malloc((size_t)IMAGE_SIZE);
  unsigned i;
  size_t j;
  int ret = 1;

  if (reqs == NULL || memory == NULL) goto out;
  for (i = 0; i < REQUEST_COUNT; i++) {
    reqs[i].index = i;
    /* Submit in a scrambled order so that completions cannot simply follow offsets. */
    reqs[i].offset = (uint64_t)((i * 37u) % REQUEST_COUNT) * REQUEST_SIZE;
    reqs[i].buf = memory + (size_t)i * REQUEST_SIZE;
    for (j = 0; j < REQUEST_SIZE; j++) reqs[i].buf[j] = pattern_byte(i, j);
  }
  if (run_all(ctx, be, reqs, 1)) goto out;
  if (lb_flush(be, 0) < 0) {
    fprintf(stderr, "async_poll: flush: %s\n", lb_get_error());
    goto out;
  }
  /* Read everything back into the cleared buffers and compare with the pattern. */
  memset(memory, 0, (size_t)IMAGE_SIZE);
  if (run_all(ctx, be, reqs, 0)) goto out;
  for (i = 0; i < REQUEST_COUNT; i++) {
    for (j = 0; j < REQUEST_SIZE; j++) {
      if (reqs[i].buf[j] != pattern_byte(i, j)) {
        fprintf(stderr, "async_poll: byte %zu of request %u (offset %" PRIu64 ") is wrong\n",
                j, i, reqs[i].offset);
        goto out;
      }
    }
  }
  printf("verified %" PRIu64 " bytes\n", IMAGE_SIZE);
  ret = 0;
out:
  free(memory);
  free(reqs);
  return ret;
}

static int run(lb_context *ctx, const char *path) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  lb_backend *be = NULL;
  int ret;

  args.filename = path;
  args.format = "raw";
  args.flags = LB_OPEN_RDWR;
  if (lb_open_ex(ctx, &args, &be) < 0) {
    fprintf(stderr, "async_poll: open: %s\n", lb_get_error());
    return 1;
  }
  if (lb_get_size(be) < (int64_t)IMAGE_SIZE) {
    fprintf(stderr, "async_poll: %s is smaller than %" PRIu64 " bytes\n", path, IMAGE_SIZE);
    lb_close(be);
    return 1;
  }
  ret = write_and_verify(ctx, be);
  if (lb_close(be) < 0 && ret == 0) ret = 1;
  return ret;
}

int main(int argc, char **argv) {
  lb_context *ctx = NULL;
  char path[4096];
  int ret = 2;

  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: async_poll IMAGE | --selftest DIR\n");
    return 2;
  }
  if (lb_context_new(0, &ctx) < 0) {
    fprintf(stderr, "async_poll: %s\n", lb_get_error());
    return 1;
  }
  lb_context_set_max_inflight(ctx, MAX_INFLIGHT);
  if (strcmp(argv[1], "--selftest") == 0 && argc == 3) {
    snprintf(path, sizeof path, "%s/async_poll.raw", argv[2]);
    if (lb_create(ctx, path, "raw", NULL, IMAGE_SIZE, 0) < 0) {
      fprintf(stderr, "async_poll: create: %s\n", lb_get_error());
      ret = 1;
    } else {
      ret = run(ctx, path);
      if (ret == 0) {
        unlink(path);
        printf("selftest passed\n");
      }
    }
  } else if (argc == 2) {
    ret = run(ctx, argv[1]);
  }
  lb_context_free(ctx);
  return ret;
}
