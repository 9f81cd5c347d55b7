/* lb_reopen_options and LB_OPEN_AIO_NATIVE through libblock.so only: changed options, QEMU's
 * refusals, the node's mode apart from the backend's permissions, cache modes (the image
 * descriptor's O_DIRECT/O_DSYNC, from /proc/self/fdinfo), lock conflicts when the backend asks
 * to write, and argument errors. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"

#define CHECK_ERROR(call, err, text)                                               \
  do {                                                                             \
    CHECK((call) == -(err));                                                       \
    CHECK(strcmp(lb_get_error(), (text)) == 0);                                    \
  } while (0)

/* The open flags of this process's descriptors on `path`, OR-ed; -1 when it has none, -2 when
 * it has more than one. */
static int fd_flags(const char *path) {
  char real[PATH_MAX], link[PATH_MAX], name[PATH_MAX], line[256];
  DIR *dir = opendir("/proc/self/fd");
  struct dirent *e;
  int found = -1;
  if (!realpath(path, real) || !dir) return -3;
  while ((e = readdir(dir)) != NULL) {
    ssize_t n;
    FILE *info;
    snprintf(name, sizeof name, "/proc/self/fd/%s", e->d_name);
    n = readlink(name, link, sizeof link - 1);
    if (n < 0) continue;
    link[n] = '\0';
    if (strcmp(link, real) != 0) continue;
    if (found != -1) found = -2;
    snprintf(name, sizeof name, "/proc/self/fdinfo/%s", e->d_name);
    info = fopen(name, "r");
    if (!info) continue;
    while (fgets(line, sizeof line, info)) {
      if (strncmp(line, "flags:", 6) == 0 && found != -2) found = (int)strtol(line + 6, NULL, 8);
    }
    fclose(info);
  }
  closedir(dir);
  return found;
}

int main(void) {
  char dir[] = "/tmp/lb-reopen-XXXXXX";
  char path[256], opts[512], text[512];
  lb_context *ctx = NULL;
  lb_backend *a = NULL, *b = NULL;
  lb_open_args args = LB_OPEN_ARGS_INIT;
  unsigned char buf[4096], back[4096];
  int i;

  if (!mkdtemp(dir)) return 1;
  snprintf(path, sizeof path, "%s/disk.raw", dir);
  CHECK(lb_context_new(0, &ctx) == 0);
  CHECK(lb_create(ctx, path, "raw", NULL, 1 << 20, 0) == 0);
  snprintf(opts, sizeof opts, "driver=raw,file.filename=%s", path);
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR, &a) == 0);
  for (i = 0; i < (int)sizeof buf; i++) buf[i] = (unsigned char)(i * 13 + 1);
  CHECK(lb_pwrite(a, buf, sizeof buf, 8192, 0) == 0);

  /* driver options that change: raw's window */
  CHECK(lb_reopen_options(a, "offset=8192", LB_OPEN_RDWR) == 0);
  CHECK(lb_get_size(a) == (1 << 20) - 8192);
  CHECK(lb_pread(a, back, 16, 0, 0) == 0 && memcmp(back, buf, 16) == 0);
  CHECK(lb_reopen_options(a, "size=4096", LB_OPEN_RDWR) == 0);
  CHECK(lb_get_size(a) == 4096);
  CHECK_ERROR(lb_reopen_options(a, "size=513", LB_OPEN_RDWR), EINVAL,
              "Specified size is not multiple of 512");
  CHECK(lb_get_size(a) == 4096);
  CHECK(lb_reopen_options(a, "offset=0,size=1M", LB_OPEN_RDWR) == 0);
  CHECK(lb_get_size(a) == 1 << 20);

  /* what cannot change, as QEMU says it; names of what is there are no change */
  CHECK_ERROR(lb_reopen_options(a, "bogus=1", LB_OPEN_RDWR), EINVAL,
              "Cannot change the option 'bogus'");
  CHECK_ERROR(lb_reopen_options(a, "file.locking=off", LB_OPEN_RDWR), EINVAL,
              "Cannot change the option 'locking'");
  CHECK_ERROR(lb_reopen_options(a, "driver=file", LB_OPEN_RDWR), EINVAL,
              "Cannot change the option 'driver'");
  CHECK_ERROR(lb_reopen_options(a, "file=nosuch", LB_OPEN_RDWR), ENOENT,
              "Cannot find device='' nor node-name='nosuch'");
  snprintf(text, sizeof text, "driver=raw,file.driver=file,file.filename=%s", path);
  CHECK(lb_reopen_options(a, text, LB_OPEN_RDWR) == 0);
  CHECK(lb_reopen_options(a, "json:{\"file\": {\"driver\": \"file\"}}", LB_OPEN_RDWR) == 0);
  /* a repeated key's last value wins (QemuOpts); unknown options cannot change */
  CHECK_ERROR(lb_reopen_options(a, "a=1,a=2", LB_OPEN_RDWR), EINVAL, "Cannot change the option 'a'");

  /* cache modes: the descriptor is reopened; flushes and writethrough as lb_open sets them */
  CHECK(!(fd_flags(path) & (O_DIRECT | O_DSYNC)));
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR | LB_REOPEN_CACHE | LB_OPEN_CACHE_NONE) == 0);
  CHECK((fd_flags(path) & (O_DIRECT | O_DSYNC)) == O_DIRECT);
  CHECK(lb_pwrite(a, buf + 1, 3, 8192 + 1, 0) == 0); /* unaligned under O_DIRECT */
  CHECK(lb_pread(a, back, 5, 8192, 0) == 0 && back[0] == buf[0] && memcmp(back + 1, buf + 1, 3) == 0);
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR | LB_REOPEN_CACHE | LB_OPEN_CACHE_DIRECTSYNC) == 0);
  CHECK((fd_flags(path) & (O_DIRECT | O_DSYNC)) == (O_DIRECT | O_DSYNC));
  /* explicit cache options win over the mode, as with lb_open */
  CHECK(lb_reopen_options(a, "cache.direct=off", LB_OPEN_RDWR | LB_REOPEN_CACHE |
                          LB_OPEN_CACHE_NONE) == 0);
  CHECK((fd_flags(path) & (O_DIRECT | O_DSYNC)) == 0);
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR | LB_REOPEN_CACHE | LB_OPEN_CACHE_WRITETHROUGH) == 0);
  CHECK((fd_flags(path) & (O_DIRECT | O_DSYNC)) == O_DSYNC);
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR | LB_REOPEN_CACHE | LB_OPEN_CACHE_WRITEBACK) == 0);
  CHECK((fd_flags(path) & (O_DIRECT | O_DSYNC)) == 0);
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR | LB_OPEN_CACHE_NONE) == -EINVAL);
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR | 0x80) == -EINVAL);
  CHECK(lb_reopen_options(NULL, NULL, 0) == -EINVAL);
  CHECK(fd_flags(path) >= 0); /* one descriptor: every failed reopen closed what it opened */

  /* the node's mode is its read-only option; the backend's permissions are the flags */
  CHECK(lb_reopen_options(a, "read-only=on", LB_OPEN_RDWR) == -EPERM);
  CHECK(strstr(lb_get_error(), "cannot support read-write users") != NULL);
  CHECK(lb_reopen_options(a, NULL, 0) == 0); /* give up writing */
  CHECK(lb_pwrite(a, buf, 512, 0, 0) == -EPERM);
  CHECK(lb_reopen_options(a, "read-only=on", 0) == 0);
  CHECK((fd_flags(path) & O_ACCMODE) == O_RDONLY);
  CHECK_ERROR(lb_reopen_options(a, NULL, LB_OPEN_RDWR), EPERM, "Block node is read-only");
  CHECK(lb_reopen_options(a, "read-only=off", 0) == 0);
  CHECK((fd_flags(path) & O_ACCMODE) == O_RDWR);
  CHECK(lb_pwrite(a, buf, 512, 0, 0) == -EPERM); /* a read-write node, but no writer yet */

  /* a read-write node takes no write lock until the backend writes: another opener that
   * does not share writes makes that fail, not the reopen */
  CHECK(lb_open(ctx, NULL, opts, 0, &b) == 0); /* read-only, unshares write */
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR) == -EAGAIN);
  CHECK(strstr(lb_get_error(), "Failed to get \"write\" lock") != NULL);
  CHECK(lb_close(b) == 0);
  CHECK(lb_reopen_options(a, NULL, LB_OPEN_RDWR) == 0);
  CHECK(lb_pwrite(a, buf, 512, 0, 0) == 0);
  CHECK(lb_close(a) == 0);

  /* aio=native needs cache.direct=on, as in QEMU */
  args.options = opts;
  args.flags = LB_OPEN_RDWR | LB_OPEN_AIO_NATIVE;
  CHECK_ERROR(lb_open_ex(ctx, &args, &a), EINVAL,
              "aio=native was specified, but it requires cache.direct=on, which was not specified.");
  args.flags = LB_OPEN_RDWR | LB_OPEN_AIO_NATIVE | LB_OPEN_CACHE_NONE;
  CHECK(lb_open_ex(ctx, &args, &a) == 0);
  CHECK(lb_pread(a, back, 7, 8193, 0) == 0 && memcmp(back, buf + 1, 7) == 0);
  CHECK(lb_close(a) == 0);

  lb_context_free(ctx);
  unlink(path);
  rmdir(dir);
  return check_report("reopen");
}
