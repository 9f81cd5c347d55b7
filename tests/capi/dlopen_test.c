/* libblock.so can be dlopen()ed, used and dlclose()d from a second thread (and again from the
 * first), repeatedly: no destructor-bearing thread-locals, no leftover state that breaks a
 * reload. usage: dlopen_test PATH_TO_LIBBLOCK_SO */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "libblock.h"

typedef const char *(*version_fn)(void);
typedef const char *(*error_fn)(void);
typedef int (*context_new_fn)(uint32_t, lb_context **);
typedef void (*context_free_fn)(lb_context *);
typedef int (*open_fn)(lb_context *, const char *, const char *, uint32_t, lb_backend **);
typedef int (*parse_size_fn)(const char *, uint64_t *);

/* Symbols carry the version node of the release that added them: 0.1's stay in
 * LIBBLOCK_0.1, 0.2's are in LIBBLOCK_0.2 only. */
static int check_versions(void *h) {
  static const char *const v01[] = {"lb_reap", "lb_create", "lb_block_status", "lb_open"};
  static const char *const v02[] = {"lb_parse_size", "lb_create_ex", "lb_reap_events",
                                    "lb_context_run", "lb_context_set_cpu_workers"};
  parse_size_fn parse_size;
  uint64_t v = 0;
  size_t i;
  for (i = 0; i < sizeof v01 / sizeof v01[0]; i++) {
    if (!dlvsym(h, v01[i], "LIBBLOCK_0.1") || dlvsym(h, v01[i], "LIBBLOCK_0.2")) {
      fprintf(stderr, "%s is not (only) in LIBBLOCK_0.1\n", v01[i]);
      return 1;
    }
  }
  for (i = 0; i < sizeof v02 / sizeof v02[0]; i++) {
    if (!dlvsym(h, v02[i], "LIBBLOCK_0.2") || dlvsym(h, v02[i], "LIBBLOCK_0.1")) {
      fprintf(stderr, "%s is not (only) in LIBBLOCK_0.2\n", v02[i]);
      return 1;
    }
  }
  *(void **)&parse_size = dlvsym(h, "lb_parse_size", "LIBBLOCK_0.2");
  if (parse_size("1.5G", &v) != 0 || v != 1610612736u) return 1;
  return 0;
}

static void *use_library(void *arg) {
  const char *path = arg;
  int round;
  for (round = 0; round < 3; round++) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    version_fn version;
    error_fn error;
    context_new_fn context_new;
    context_free_fn context_free;
    open_fn open_image;
    lb_context *ctx = NULL;
    lb_backend *be = NULL;
    if (!h) {
      fprintf(stderr, "dlopen: %s\n", dlerror());
      return (void *)1;
    }
    *(void **)&version = dlsym(h, "lb_version");
    *(void **)&error = dlsym(h, "lb_get_error");
    *(void **)&context_new = dlsym(h, "lb_context_new");
    *(void **)&context_free = dlsym(h, "lb_context_free");
    *(void **)&open_image = dlsym(h, "lb_open");
    if (!version || !error || !context_new || !context_free || !open_image) {
      fprintf(stderr, "dlsym failed\n");
      return (void *)1;
    }
    if (check_versions(h) != 0) return (void *)1;
    if (strlen(version()) == 0 || context_new(0, &ctx) != 0) return (void *)1;
    /* a failure sets the thread-local message */
    if (open_image(ctx, "/nonexistent/disk.img", NULL, 0, &be) >= 0) return (void *)1;
    if (strstr(error(), "/nonexistent/disk.img") == NULL) return (void *)1;
    context_free(ctx);
    if (dlclose(h) != 0) {
      fprintf(stderr, "dlclose: %s\n", dlerror());
      return (void *)1;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  pthread_t t;
  void *ret = NULL;
  if (argc != 2) return 2;
  if (pthread_create(&t, NULL, use_library, argv[1]) != 0) return 1;
  pthread_join(t, &ret);
  if (ret != NULL) {
    fprintf(stderr, "second thread failed\n");
    return 1;
  }
  if (use_library(argv[1]) != NULL) {
    fprintf(stderr, "main thread failed\n");
    return 1;
  }
  printf("dlopen: ok\n");
  return 0;
}
