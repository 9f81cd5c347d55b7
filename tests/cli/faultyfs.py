"""A FUSE file system with one read-only file whose reads fail in a byte range, for testing
what blkimg and qemu-img do on I/O errors (libblock has no blkdebug filter yet).

usage: faultyfs.py MOUNTPOINT SIZE BAD_START BAD_END
  MOUNTPOINT/disk.img is SIZE bytes of the byte 0x5a; a read that touches [BAD_START, BAD_END)
  fails with EIO. Runs in the foreground until unmounted. Needs Debian's python3-fusepy (run
  it with /usr/bin/python3) and libfuse2.
"""
import errno
import stat
import sys
import time

from fusepy import FUSE, FuseOSError, Operations

NAME = "/disk.img"


class Faulty(Operations):
    def __init__(self, size, bad_start, bad_end):
        self.size, self.bad_start, self.bad_end = size, bad_start, bad_end
        self.now = time.time()

    def getattr(self, path, fh=None):
        common = {"st_uid": 0, "st_gid": 0, "st_atime": self.now, "st_mtime": self.now,
                  "st_ctime": self.now}
        if path == "/":
            return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **common}
        if path == NAME:
            return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": self.size,
                    **common}
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", NAME[1:]]

    def open(self, path, flags):
        if path != NAME:
            raise FuseOSError(errno.ENOENT)
        return 0

    def read(self, path, size, offset, fh):
        end = min(offset + size, self.size)
        if offset < self.bad_end and end > self.bad_start:
            raise FuseOSError(errno.EIO)
        return b"\x5a" * max(0, end - offset)


if __name__ == "__main__":
    mount, size, bad_start, bad_end = sys.argv[1], *map(int, sys.argv[2:5])
    # direct_io: every read reaches read() above, none is answered from the page cache.
    FUSE(Faulty(size, bad_start, bad_end), mount, foreground=True, ro=True, direct_io=True)
