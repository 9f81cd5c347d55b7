/* The C ABI, exercised from C through libblock.so only: error conventions, handles,
 * create/open/I/O/status/reopen/truncate, lock conflicts between two opens. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"


/* Whether some open file description other than `fd`'s holds a lock on byte `offset` of
 * the file (QEMU's lock bytes: 100 + permission bit taken, 200 + bit unshared). */
static int byte_locked(int fd, off_t offset) {
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = offset;
  fl.l_len = 1;
  if (fcntl(fd, F_OFD_GETLK, &fl) != 0) return -1;
  return fl.l_type != F_UNLCK;
}

/* The lock bytes 100..103 and 200..203 held on `path`, as a bit mask: bit i for 100 + i,
 * bit 4 + i for 200 + i. */
static int lock_bytes(const char *path) {
  int fd = open(path, O_RDONLY), mask = 0, i;
  if (fd < 0) return -1;
  for (i = 0; i < 4; i++) {
    if (byte_locked(fd, 100 + i) == 1) mask |= 1 << i;
    if (byte_locked(fd, 200 + i) == 1) mask |= 1 << (4 + i);
  }
  close(fd);
  return mask;
}
#define TAKES(bits) (bits)         /* consistent-read 0x1, write 0x2, write-unchanged 0x4, resize 0x8 */
#define UNSHARES(bits) ((bits) << 4)

static int warnings = 0;
static void on_warning(const char *msg, void *data) {
  (void)msg;
  *(int *)data += 1;
}

int main(void) {
  char dir[] = "/tmp/lb-capi-XXXXXX";
  char path[256], opts[512];
  lb_context *ctx = NULL;
  lb_backend *a = NULL, *b = NULL;
  unsigned char buf[8192], back[8192];
  lb_extent ext = LB_EXTENT_INIT;
  int i;

  if (!mkdtemp(dir)) return 1;
  snprintf(path, sizeof path, "%s/disk.raw", dir);

  CHECK(strlen(lb_version()) > 0);
  CHECK(lb_get_error() != NULL);
  CHECK(lb_context_new(0x80, &ctx) == -EINVAL && ctx == NULL);
  CHECK(lb_context_new(0, &ctx) == 0 && ctx != NULL);
  lb_context_set_warning_handler(ctx, on_warning, &warnings);

  /* errors: -errno and a message naming the file */
  CHECK(lb_open(ctx, "/nonexistent/x.img", NULL, 0, &a) == -ENOENT && a == NULL);
  CHECK(strstr(lb_get_error(), "/nonexistent/x.img") != NULL);
  CHECK(lb_open(ctx, NULL, "driver=raw", LB_OPEN_RDWR | LB_OPEN_FORCE_SHARE, &a) == -EINVAL);
  CHECK(lb_close(NULL) == 0);

  /* create and write */
  CHECK(lb_create(ctx, path, "raw", "preallocation=off", 1 << 20, 0) == 0);
  snprintf(opts, sizeof opts, "driver=raw,file.filename=%s,bogus=1", path);
  CHECK(lb_open(ctx, NULL, opts, 0, &a) == -EINVAL && a == NULL);
  CHECK(strstr(lb_get_error(), "'bogus'") != NULL && strstr(lb_get_error(), "'raw'") != NULL);
  snprintf(opts, sizeof opts, "driver=raw,file.filename=%s", path);
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR | LB_OPEN_RESIZE, &a) == 0);
  CHECK(lb_get_size(a) == 1 << 20);
  for (i = 0; i < (int)sizeof buf; i++) buf[i] = (unsigned char)(i * 7);
  CHECK(lb_pwrite(a, buf, sizeof buf, 4096 + 3, 0) == 0);
  CHECK(lb_pread(a, back, sizeof back, 4096 + 3, 0) == 0);
  CHECK(memcmp(buf, back, sizeof buf) == 0);
  {
    struct iovec iov[2] = {{back, 100}, {back + 100, 200}};
    memset(back, 0, sizeof back);
    CHECK(lb_preadv(a, iov, 2, 4096 + 3, 0) == 0);
    CHECK(memcmp(buf, back, 300) == 0);
  }
  {
    /* element lengths whose sum wraps around are refused, not taken for a short request */
    struct iovec wrap[2] = {{back, (size_t)-1}, {back, 1}};
    CHECK(lb_preadv(a, wrap, 2, 0, 0) == -EINVAL);
    CHECK(lb_pwritev(a, wrap, 2, 0, 0) == -EINVAL);
  }
  CHECK(lb_pwrite(a, buf, 10, (1 << 20) - 5, 0) == -EIO); /* beyond the device */
  CHECK(lb_pwrite(a, buf, 10, 0, 0x100) == -EINVAL);      /* unknown flags */
  CHECK(lb_pwrite_zeroes(a, 4096, 4096, 0) == 0);
  CHECK(lb_pread(a, back, 8, 4096, 0) == 0);
  for (i = 0; i < 8; i++) CHECK(back[i] == 0);
  CHECK(lb_flush(a, 0) == 0);

  /* allocation status: like QEMU's, a new image has its first block allocated; the written
   * range is data and untouched space is a hole */
  CHECK(lb_block_status(a, 0, 1 << 20, 0, &ext) == 0);
  CHECK(ext.struct_size == sizeof(lb_extent));
  CHECK((ext.flags & LB_STATUS_DATA) && !(ext.flags & LB_STATUS_ZERO) && ext.has_host_offset);
  CHECK(lb_block_status(a, 65536, 4096, 0, &ext) == 0);
  CHECK((ext.flags & LB_STATUS_ZERO) && ext.length == 4096);
  CHECK(lb_block_status(a, 8192, 4096, 0, &ext) == 0);
  CHECK((ext.flags & LB_STATUS_DATA) && !(ext.flags & LB_STATUS_ZERO));
  /* the file holding the data, by its name (raw passes the range to it) */
  CHECK(ext.filename != NULL && strcmp(ext.filename, path) == 0);
  ext.struct_size = 1;
  CHECK(lb_block_status(a, 0, 1, 0, &ext) == -EINVAL);
  ext.struct_size = sizeof ext;

  /* a second read-write open of the same file conflicts, as between two QEMUs */
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR, &b) == -EAGAIN && b == NULL);
  CHECK(strstr(lb_get_error(), "Failed to get \"write\" lock") != NULL);
  CHECK(strstr(lb_get_error(), "Is another process using the image") != NULL);
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_FORCE_SHARE, &b) == 0);
  CHECK(lb_pread(b, back, 16, 4096 + 3 + 4096, 0) == 0);
  CHECK(memcmp(back, buf + 4096, 16) == 0);
  CHECK(lb_close(b) == 0);

  /* resize and reopen read-only */
  CHECK(lb_truncate(a, 2 << 20, "falloc", 0) == 0);
  CHECK(lb_get_size(a) == 2 << 20);
  CHECK(lb_truncate(a, 1 << 20, "bogus", 0) == -EINVAL);
  CHECK(lb_reopen(a, 0) == 0);
  CHECK(lb_pwrite(a, buf, 512, 0, 0) == -EPERM);
  CHECK(lb_reopen(a, LB_OPEN_RDWR) == 0);
  CHECK(lb_pwrite(a, buf, 512, 0, LB_REQ_FUA) == 0);
  /* lb_reopen also takes and drops the resize permission (blk_set_perm) */
  CHECK(lb_truncate(a, 3 << 20, NULL, 0) == -EPERM);
  CHECK(lb_reopen(a, LB_OPEN_RDWR | LB_OPEN_RESIZE) == 0);
  CHECK(lb_truncate(a, 3 << 20, NULL, 0) == 0 && lb_get_size(a) == 3 << 20);
  CHECK(lb_reopen(a, LB_OPEN_RDWR) == 0);
  CHECK(lb_truncate(a, 2 << 20, NULL, 0) == -EPERM && lb_get_size(a) == 3 << 20);
  CHECK(lb_reopen(a, LB_OPEN_RDWR | 0x80) == -EINVAL);
  CHECK(lb_pwrite(a, buf, 512, 0, 0) == 0);
  CHECK(lb_close(a) == 0);

  /* LB_OPEN_SHARE_ALL shares as qemu-img does: it takes the same permissions and unshares
   * nothing, so two writers coexist, and a default writer (which unshares write) does not
   * fit next to them */
  CHECK(lock_bytes(path) == 0);
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR | LB_OPEN_SHARE_ALL, &a) == 0);
  CHECK(lock_bytes(path) == TAKES(0x1 | 0x2));
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR | LB_OPEN_SHARE_ALL | LB_OPEN_RESIZE, &b) == 0);
  CHECK(lock_bytes(path) == TAKES(0x1 | 0x2 | 0x8));
  CHECK(lb_pwrite(b, buf, 512, 0, 0) == 0);
  CHECK(lb_truncate(b, 4 << 20, NULL, 0) == 0 && lb_get_size(b) == 4 << 20);
  CHECK(lb_close(b) == 0);
  {
    lb_backend *plain = NULL;
    CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR, &plain) == -EAGAIN && plain == NULL);
    CHECK(strstr(lb_get_error(), "Failed to get shared \"write\" lock") != NULL);
  }
  /* lb_reopen: sharing less while another writer holds the image is refused, and changes
   * nothing; read-only with SHARE_ALL holds only the read byte */
  CHECK(lb_open(ctx, NULL, opts, LB_OPEN_RDWR | LB_OPEN_SHARE_ALL, &b) == 0);
  CHECK(lb_reopen(a, LB_OPEN_RDWR) == -EAGAIN);
  CHECK(lock_bytes(path) == TAKES(0x1 | 0x2));
  CHECK(lb_close(b) == 0);
  CHECK(lb_reopen(a, LB_OPEN_SHARE_ALL) == 0);
  CHECK(lock_bytes(path) == TAKES(0x1));
  CHECK(lb_reopen(a, LB_OPEN_RDWR) == 0); /* device-style again */
  CHECK(lock_bytes(path) == (TAKES(0x1 | 0x2) | UNSHARES(0x2 | 0x8)));
  CHECK(lb_reopen(a, LB_OPEN_RDWR | LB_OPEN_SHARE_ALL | 0x80) == -EINVAL);
  CHECK(lb_close(a) == 0);
  {
    /* lb_backend_new takes the flag too: a read-only SHARE_ALL backend takes only byte 100 */
    lb_open_args args = LB_OPEN_ARGS_INIT;
    lb_node *node = NULL;
    args.options = opts;
    CHECK(lb_node_open(ctx, &args, &node) == 0);
    CHECK(lb_backend_new(node, LB_OPEN_SHARE_ALL, &a) == 0);
    CHECK(lock_bytes(path) == TAKES(0x1));
    CHECK(lb_backend_new(node, LB_OPEN_SHARE_ALL | LB_OPEN_FORCE_SHARE, &b) == -EINVAL);
    CHECK(lb_close(a) == 0);
    lb_node_close(node);
  }
  CHECK(lock_bytes(path) == 0);

  /* probing an image without a driver guesses raw and warns (read-write only) */
  CHECK(lb_open(ctx, path, NULL, LB_OPEN_RDWR, &a) == 0);
  CHECK(warnings == 1);
  /* ...and a backend left open is closed by lb_context_free */
  lb_context_free(ctx);
  lb_context_free(NULL);

  unlink(path);
  rmdir(dir);
  return check_report("capi");
}
