/* Internal snapshots and VM snapshots through libblock.so (0.3): lb_snapshot_* on one image,
 * the VM-state area, and lb_vm_snapshot_* over three qcow2 disks together: snapshot them with
 * a VM-state blob, write to all three, restore, and compare every byte of every disk and of
 * the blob. The all-or-none rules: a writable raw disk in the set, a disk without the
 * snapshot, and a read-only disk (skipped) leave everything as it was. Every image then passes
 * our check and, when it is installed, qemu-img check. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "libblock.h"
#include "check.h"

enum { kDisks = 3, kSize = 4 << 20, kVmState = 300000 };

static unsigned char disk_data[kDisks][kSize], back[kSize];

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    p[i] = (unsigned char)(seed >> 16);
  }
}

/* Every byte of `be` equals `want`. */
static int same(lb_backend *be, const unsigned char *want) {
  if (lb_pread(be, back, kSize, 0, 0) != 0) return 0;
  return memcmp(back, want, kSize) == 0;
}

static size_t count_snapshots(lb_backend *be) {
  lb_node *node = NULL;
  lb_snapshot_list *list = NULL;
  size_t n = (size_t)-1;
  if (lb_backend_get_node(be, &node) == 0 && lb_snapshot_list_get(node, &list) == 0) {
    n = lb_snapshot_list_count(list);
  }
  lb_snapshot_list_free(list);
  lb_node_close(node);
  return n;
}

static void check_image(lb_context *ctx, const char *path) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  args.filename = path;
  args.format = "qcow2";
  lb_check_result res = LB_CHECK_RESULT_INIT;
  CHECK(lb_check(ctx, &args, 0, NULL, NULL, &res) == 0);
  CHECK(res.corruptions == 0 && res.leaks == 0 && res.check_errors == 0);
  if (system("command -v qemu-img >/dev/null 2>&1") == 0) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "qemu-img check -q '%s'", path);
    CHECK(system(cmd) == 0);
  }
}

static void single_image(lb_context *ctx, const char *dir) {
  char path[256];
  snprintf(path, sizeof path, "%s/one.qcow2", dir);
  CHECK(lb_create(ctx, path, "qcow2", NULL, kSize, 0) == 0);
  lb_backend *be = NULL;
  CHECK(lb_open(ctx, path, "driver=qcow2", LB_OPEN_RDWR, &be) == 0);
  if (!be) return;
  lb_node *node = NULL;
  CHECK(lb_backend_get_node(be, &node) == 0);
  fill(disk_data[0], kSize, 1);
  CHECK(lb_pwrite(be, disk_data[0], kSize, 0, 0) == 0);

  /* The VM-state area: written, read back, saved with the snapshot. */
  static unsigned char vm[kVmState], vm_back[kVmState];
  fill(vm, kVmState, 2);
  CHECK(lb_vmstate_write(node, vm, kVmState, 0) == 0);
  CHECK(lb_vmstate_read(node, vm_back, kVmState, 0) == 0);
  CHECK(memcmp(vm, vm_back, kVmState) == 0);

  lb_snapshot sn = LB_SNAPSHOT_INIT;
  sn.name = "first";
  sn.vm_state_size = kVmState;
  sn.vm_clock_nsec = 3723004000000ull; /* 01:02:03.004 */
  sn.icount = 42;
  char *id = NULL;
  CHECK(lb_snapshot_create(node, &sn, &id) == 0);
  CHECK(id && strcmp(id, "1") == 0);
  lb_free(id);
  /* The given id must be new. */
  lb_snapshot dup = LB_SNAPSHOT_INIT;
  dup.id = "1";
  dup.name = "again";
  CHECK(lb_snapshot_create(node, &dup, NULL) == -EEXIST);

  lb_snapshot_list *list = NULL;
  CHECK(lb_snapshot_list_get(node, &list) == 0);
  CHECK(lb_snapshot_list_count(list) == 1);
  lb_snapshot got = LB_SNAPSHOT_INIT;
  CHECK(lb_snapshot_list_entry(list, 0, &got) == 0);
  CHECK(strcmp(got.id, "1") == 0 && strcmp(got.name, "first") == 0);
  CHECK(got.vm_state_size == kVmState && got.vm_clock_nsec == 3723004000000ull);
  CHECK(got.icount == 42 && got.date_sec != 0);
  CHECK(lb_snapshot_list_entry(list, 1, &got) == -EINVAL);
  lb_snapshot_list_free(list);

  /* After the snapshot, the current state's VM-state area is empty again (QEMU drops it). */
  memset(vm_back, 0xff, kVmState);
  CHECK(lb_vmstate_read(node, vm_back, 4096, 0) == 0);
  unsigned char zeroes[4096] = {0};
  CHECK(memcmp(vm_back, zeroes, 4096) == 0);

  fill(back, kSize, 3);
  CHECK(lb_pwrite(be, back, kSize / 2, kSize / 4, 0) == 0);
  CHECK(lb_snapshot_apply(node, "first") == 0);
  CHECK(same(be, disk_data[0]));
  CHECK(lb_vmstate_read(node, vm_back, kVmState, 0) == 0);
  CHECK(memcmp(vm, vm_back, kVmState) == 0);
  CHECK(lb_snapshot_apply(node, "nope") == -ENOENT);
  CHECK(lb_snapshot_delete(node, "9", NULL) == -ENOENT);
  CHECK(lb_snapshot_delete(node, NULL, "first") == 0);
  lb_node_close(node);
  CHECK(lb_close(be) == 0);
  check_image(ctx, path);

  /* Read-only: no snapshot changes. */
  be = NULL;
  CHECK(lb_open(ctx, path, "driver=qcow2", 0, &be) == 0);
  if (be) {
    node = NULL;
    CHECK(lb_backend_get_node(be, &node) == 0);
    lb_snapshot ro = LB_SNAPSHOT_INIT;
    ro.name = "ro";
    CHECK(lb_snapshot_create(node, &ro, NULL) == -EACCES);
    lb_node_close(node);
    CHECK(lb_close(be) == 0);
  }
  /* raw has none. */
  snprintf(path, sizeof path, "%s/one.raw", dir);
  CHECK(lb_create(ctx, path, "raw", NULL, kSize, 0) == 0);
  be = NULL;
  CHECK(lb_open(ctx, path, "driver=raw", LB_OPEN_RDWR, &be) == 0);
  if (be) {
    node = NULL;
    CHECK(lb_backend_get_node(be, &node) == 0);
    lb_snapshot_list *none = NULL;
    CHECK(lb_snapshot_list_get(node, &none) == -ENOTSUP);
    CHECK(lb_snapshot_apply(node, "x") == -ENOTSUP);
    lb_node_close(node);
    CHECK(lb_close(be) == 0);
  }
  unlink(path);
}

/* Snapshot mode: writes go to a temporary overlay in $TMPDIR, gone at close; lb_commit
 * writes them back into the image. */
static void snapshot_mode(lb_context *ctx, const char *dir) {
  char path[256], tmpdir[256];
  snprintf(path, sizeof path, "%s/base.raw", dir);
  snprintf(tmpdir, sizeof tmpdir, "%s/tmp", dir);
  CHECK(mkdir(tmpdir, 0700) == 0);
  setenv("TMPDIR", tmpdir, 1);
  CHECK(lb_create(ctx, path, "raw", NULL, kSize, 0) == 0);
  lb_backend *be = NULL;
  CHECK(lb_open(ctx, path, "driver=raw", LB_OPEN_RDWR, &be) == 0);
  fill(disk_data[0], kSize, 5);
  CHECK(lb_pwrite(be, disk_data[0], kSize, 0, 0) == 0);
  CHECK(lb_close(be) == 0);

  fill(back, 65536, 6);
  static unsigned char changed[65536];
  memcpy(changed, back, sizeof changed);
  for (int commit = 0; commit < 2; ++commit) {
    be = NULL;
    CHECK(lb_open(ctx, path, "driver=raw", LB_OPEN_RDWR | LB_OPEN_SNAPSHOT, &be) == 0);
    if (!be) return;
    CHECK(lb_pwrite(be, changed, sizeof changed, 4096, 0) == 0);
    static unsigned char got[65536];
    CHECK(lb_pread(be, got, sizeof got, 4096, 0) == 0);
    CHECK(memcmp(got, changed, sizeof got) == 0);
    lb_node *node = NULL;
    lb_image_info *info = NULL;
    CHECK(lb_backend_get_node(be, &node) == 0);
    CHECK(lb_node_get_info(node, 0, &info) == 0);
    CHECK(info && strcmp(info->format, "qcow2") == 0);  /* the overlay */
    lb_image_info_free(info);
    lb_node_close(node);
    if (commit) CHECK(lb_commit(be, NULL, 0, LB_COMMIT_KEEP_TOP, NULL, NULL) == 0);
    CHECK(lb_close(be) == 0);
    /* The overlay is gone; the image changed only when committed. */
    CHECK(rmdir(tmpdir) == 0 && mkdir(tmpdir, 0700) == 0);
    be = NULL;
    CHECK(lb_open(ctx, path, "driver=raw", 0, &be) == 0);
    if (commit) memcpy(disk_data[0] + 4096, changed, sizeof changed);
    CHECK(same(be, disk_data[0]));
    CHECK(lb_close(be) == 0);
  }
  rmdir(tmpdir);
  unsetenv("TMPDIR");
  unlink(path);
}

int main(void) {
  char dir[] = "/tmp/lb-snapshot-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  lb_context *ctx = NULL;
  CHECK(lb_context_new(0, &ctx) == 0);
  if (!ctx) return 1;
  single_image(ctx, dir);
  snapshot_mode(ctx, dir);

  char paths[kDisks][256], raw[256];
  lb_backend *disks[kDisks + 1] = {NULL};
  for (int i = 0; i < kDisks; ++i) {
    snprintf(paths[i], sizeof paths[i], "%s/disk%d.qcow2", dir, i);
    CHECK(lb_create(ctx, paths[i], "qcow2", i == 1 ? "cluster_size=4096" : NULL, kSize, 0) == 0);
    CHECK(lb_open(ctx, paths[i], "driver=qcow2", LB_OPEN_RDWR, &disks[i]) == 0);
    if (!disks[i]) return check_report("snapshot");
    fill(disk_data[i], kSize, 10 + (unsigned)i);
    CHECK(lb_pwrite(disks[i], disk_data[i], kSize, 0, 0) == 0);
  }
  static unsigned char vm[kVmState];
  fill(vm, kVmState, 99);
  CHECK(lb_vm_snapshot_save(disks, kDisks, "vm1", vm, kVmState, 5000000000ull) == 0);
  for (int i = 0; i < kDisks; ++i) CHECK(count_snapshots(disks[i]) == 1);

  /* Writes to all three after the snapshot. */
  for (int i = 0; i < kDisks; ++i) {
    fill(back, kSize, 50 + (unsigned)i);
    CHECK(lb_pwrite(disks[i], back, kSize / 3, (uint64_t)i * 65536, 0) == 0);
  }
  lb_snapshot_list *list = NULL;
  CHECK(lb_vm_snapshot_list(disks, kDisks, &list) == 0);
  CHECK(lb_snapshot_list_count(list) == 1);
  lb_snapshot got = LB_SNAPSHOT_INIT;
  CHECK(lb_snapshot_list_entry(list, 0, &got) == 0);
  CHECK(strcmp(got.name, "vm1") == 0 && got.vm_state_size == kVmState);
  CHECK(got.vm_clock_nsec == 5000000000ull);
  lb_snapshot_list_free(list);

  void *blob = NULL;
  size_t blob_size = 0;
  CHECK(lb_vm_snapshot_load(disks, kDisks, "vm1", &blob, &blob_size) == 0);
  CHECK(blob_size == kVmState && blob && memcmp(blob, vm, kVmState) == 0);
  lb_free(blob);
  for (int i = 0; i < kDisks; ++i) CHECK(same(disks[i], disk_data[i]));
  /* The undo snapshots the load took are gone. */
  for (int i = 0; i < kDisks; ++i) CHECK(count_snapshots(disks[i]) == 1);

  /* Saving under the same name replaces it. */
  CHECK(lb_vm_snapshot_save(disks, kDisks, "vm1", vm, 1000, 0) == 0);
  for (int i = 0; i < kDisks; ++i) CHECK(count_snapshots(disks[i]) == 1);

  /* A writable raw disk in the set: refused, nothing taken anywhere. */
  snprintf(raw, sizeof raw, "%s/raw.img", dir);
  CHECK(lb_create(ctx, raw, "raw", NULL, kSize, 0) == 0);
  CHECK(lb_open(ctx, raw, "driver=raw", LB_OPEN_RDWR, &disks[kDisks]) == 0);
  CHECK(lb_vm_snapshot_save(disks, kDisks + 1, "vm2", vm, kVmState, 0) == -ENOTSUP);
  CHECK(strstr(lb_get_error(), "does not support snapshots") != NULL);
  for (int i = 0; i < kDisks; ++i) CHECK(count_snapshots(disks[i]) == 1);
  CHECK(lb_close(disks[kDisks]) == 0);
  /* Read-only, the raw disk is skipped. */
  disks[kDisks] = NULL;
  CHECK(lb_open(ctx, raw, "driver=raw", 0, &disks[kDisks]) == 0);
  CHECK(lb_vm_snapshot_save(disks, kDisks + 1, "vm2", NULL, 0, 0) == 0);
  for (int i = 0; i < kDisks; ++i) CHECK(count_snapshots(disks[i]) == 2);
  /* vm2 is disk-only: loadvm refuses it, a disk-only revert takes it. */
  CHECK(lb_vm_snapshot_load(disks, kDisks + 1, "vm2", &blob, &blob_size) == -EINVAL);
  CHECK(lb_vm_snapshot_load(disks, kDisks + 1, "vm2", NULL, NULL) == 0);
  CHECK(lb_close(disks[kDisks]) == 0);
  disks[kDisks] = NULL;

  /* A snapshot missing on one disk: the load changes nothing. */
  lb_node *node = NULL;
  CHECK(lb_backend_get_node(disks[2], &node) == 0);
  lb_snapshot only = LB_SNAPSHOT_INIT;
  only.name = "partial";
  CHECK(lb_snapshot_create(node, &only, NULL) == 0);
  lb_node_close(node);
  fill(back, kSize, 77);
  CHECK(lb_pwrite(disks[0], back, kSize, 0, 0) == 0);
  memcpy(disk_data[0], back, kSize);
  CHECK(lb_vm_snapshot_load(disks, kDisks, "partial", NULL, NULL) == -ENOENT);
  CHECK(same(disks[0], disk_data[0]));
  CHECK(lb_vm_snapshot_delete(disks, kDisks, "nothing") == -ENOENT);
  CHECK(lb_vm_snapshot_delete(disks, kDisks, "partial") == 0);
  CHECK(lb_vm_snapshot_delete(disks, kDisks, "vm2") == 0);
  CHECK(lb_vm_snapshot_delete(disks, kDisks, "vm1") == 0);
  for (int i = 0; i < kDisks; ++i) CHECK(count_snapshots(disks[i]) == 0);
  CHECK(lb_vm_snapshot_save(NULL, 0, "x", NULL, 0, 0) == -EINVAL);

  for (int i = 0; i < kDisks; ++i) {
    CHECK(lb_close(disks[i]) == 0);
    check_image(ctx, paths[i]);
    unlink(paths[i]);
  }
  lb_context_free(ctx);
  unlink(raw);
  snprintf(raw, sizeof raw, "%s/one.qcow2", dir);
  unlink(raw);
  rmdir(dir);
  return check_report("snapshot");
}
