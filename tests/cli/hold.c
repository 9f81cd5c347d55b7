/* Holds an image open through libblock.h until stdin closes, for the CLI tests that check
 * what other processes (qemu-img, qemu-io) may do meanwhile.
 *
 *   hold FLAGS OPTIONS
 *
 * FLAGS: a comma-separated list of rdwr, share_rw, share_all, resize (or "-" for none);
 * OPTIONS: "key=value,..." or "json:{...}" as lb_open takes them. Prints "ready" once the
 * image is open (and its locks taken), or the error and exits 1. */
#include <stdio.h>
#include <string.h>

#include "libblock.h"

static int parse_flags(const char *text, uint32_t *flags) {
  char buf[256], *tok, *save = NULL;
  *flags = 0;
  if (strcmp(text, "-") == 0) return 0;
  snprintf(buf, sizeof buf, "%s", text);
  for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (strcmp(tok, "rdwr") == 0) *flags |= LB_OPEN_RDWR;
    else if (strcmp(tok, "share_rw") == 0) *flags |= LB_OPEN_SHARE_RW;
    else if (strcmp(tok, "share_all") == 0) *flags |= LB_OPEN_SHARE_ALL;
    else if (strcmp(tok, "resize") == 0) *flags |= LB_OPEN_RESIZE;
    else return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  lb_context *ctx = NULL;
  lb_backend *be = NULL;
  uint32_t flags;
  char line[64];
  if (argc != 3 || parse_flags(argv[1], &flags) != 0) {
    fprintf(stderr, "usage: hold rdwr,share_rw,share_all,resize|- OPTIONS\n");
    return 2;
  }
  if (lb_context_new(0, &ctx) < 0 || lb_open(ctx, NULL, argv[2], flags, &be) < 0) {
    fprintf(stderr, "hold: %s\n", lb_get_error());
    lb_context_free(ctx);
    return 1;
  }
  printf("ready\n");
  fflush(stdout);
  while (fgets(line, sizeof line, stdin)) {
  }
  lb_close(be);
  lb_context_free(ctx);
  return 0;
}
