"""LB_OPEN_SHARE_ALL: a libblock backend that shares like qemu-img/qemu-io. While one holds
an image (through the C ABI, tests/cli/hold.c), qemu-img and qemu-io may do exactly what
they may do next to a qemu-io holding the same image: the same lock bytes are held, and the
same commands succeed with the same output and the same bytes on disk."""
import contextlib
import os
import select
import subprocess
import time
import unittest

from clitest import CliTestCase

HOLD = os.environ.get("CLI_HOLD", "cli_hold")


def locked_bytes(path):
    """The lock byte offsets held on `path` by anyone, from /proc/locks."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    held = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields or dev not in fields:
                continue  # a blocked waiter, or another file
            start, end = fields[-2], fields[-1]
            end = int(start) if end == "EOF" else int(end)
            held.update(range(int(start), end + 1))
    return sorted(held)


class ShareAllTest(CliTestCase):
    def setUp(self):
        super().setUp()
        for name in ("ours.img", "theirs.img"):
            self.assertOk(self.qemu_img("create", "-q", "-f", "raw", name, "1M"))
            self.write_pattern(name, 0, 4096, 0x41)

    @contextlib.contextmanager
    def held(self, argv, ready):
        """Runs `argv` until the test is done with it; `ready` is what it prints once the
        image is open and locked."""
        holder = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            seen = b""
            deadline = time.monotonic() + 60
            while ready not in seen:
                left = deadline - time.monotonic()
                r, _, _ = select.select([holder.stdout], [], [], max(left, 0))
                chunk = os.read(holder.stdout.fileno(), 4096) if r else b""
                if not chunk:
                    self.fail(f"{argv} did not open the image: {seen.decode(errors='replace')}")
                seen += chunk
            yield holder
        finally:
            holder.stdin.close()  # ours closes its backend and exits; qemu-io quits at EOF
            try:
                holder.wait(timeout=60)
            finally:
                if holder.poll() is None:
                    holder.kill()
                    holder.wait()
                holder.stdout.close()

    def held_by_us(self, name, flags):
        return self.held([HOLD, flags, f"driver=raw,file.filename={name}"], b"ready\n")

    def held_by_qemu(self, name, read_only):
        return self.held(["qemu-io", *(["-r"] if read_only else []), "-f", "raw", name],
                         b"qemu-io> ")

    def next_to_holder(self, name):
        """What other processes do while the image is held; returns their results with the
        image name neutralised."""
        results = []
        for argv in (["qemu-img", "resize", "-f", "raw", name, "+1M"],
                     ["qemu-io", "-f", "raw", "-c", "write -P 0x11 512 4k", name],
                     ["qemu-io", "-f", "raw", "-c", "read -P 0x11 512 4k", name],
                     ["qemu-img", "info", "-f", "raw", "--output=json", name]):
            r = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True, timeout=120)
            out = [l for l in r.stdout.replace(name, "IMG").splitlines() if "ops/sec" not in l]
            results.append((argv[0], argv[1], r.returncode, out, r.stderr.replace(name, "IMG")))
        return results

    def test_read_write_holder_shares_like_qemu_io(self):
        with self.held_by_us("ours.img", "rdwr,share_all"):
            ours_locks = locked_bytes(self.path("ours.img"))
            ours = self.next_to_holder("ours.img")
        with self.held_by_qemu("theirs.img", read_only=False):
            theirs_locks = locked_bytes(self.path("theirs.img"))
            theirs = self.next_to_holder("theirs.img")
        self.assertEqual(ours_locks, [100, 101])
        self.assertEqual(ours_locks, theirs_locks)
        self.assertEqual(ours, theirs)
        self.assertTrue(all(code == 0 for _, _, code, _, _ in ours), ours)
        self.assertEqual(self.read("ours.img"), self.read("theirs.img"))
        self.assertEqual(os.path.getsize(self.path("ours.img")), 2 * 1024 * 1024)

    def test_read_only_holder_takes_no_unshare_bytes(self):
        with self.held_by_us("ours.img", "share_all"):
            ours_locks = locked_bytes(self.path("ours.img"))
            ours = self.next_to_holder("ours.img")
        with self.held_by_qemu("theirs.img", read_only=True):
            theirs_locks = locked_bytes(self.path("theirs.img"))
            theirs = self.next_to_holder("theirs.img")
        self.assertEqual(ours_locks, [100])
        self.assertEqual(ours_locks, theirs_locks)
        self.assertEqual(ours, theirs)
        self.assertTrue(all(code == 0 for _, _, code, _, _ in ours), ours)
        self.assertEqual(self.read("ours.img"), self.read("theirs.img"))

    def test_default_sharing_is_a_guest_devices(self):
        # Without the flag a backend shares as a QEMU guest device does: qemu-img may read
        # but neither resize nor write (that is what the flag is for).
        with self.held_by_us("ours.img", "rdwr"):
            self.assertEqual(locked_bytes(self.path("ours.img")), [100, 101, 201, 203])
            ((_, _, resize, _, resize_err), (_, _, write, _, write_err), _,
             (_, _, info, _, _)) = self.next_to_holder("ours.img")
        self.assertEqual(resize, 1)
        self.assertIn("Is another process using the image [IMG]?", resize_err)
        self.assertEqual(write, 1)
        self.assertIn('Failed to get "write" lock', write_err)
        self.assertEqual(info, 0)
        self.assertEqual(os.path.getsize(self.path("ours.img")), 1024 * 1024)


if __name__ == "__main__":
    unittest.main()
