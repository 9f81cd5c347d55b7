"""Read errors, side by side with qemu-img and qemu-io: the same exit codes (compare's 4 for a
failed read), messages, and what a --salvage conversion saves. The unreadable image is a file
on a small FUSE file system (faultyfs.py) whose reads fail with EIO in [4 MiB, 5 MiB).

Needs root, /dev/fuse and Debian's python3-fusepy (run by /usr/bin/python3); skipped without.
"""
import os
import shutil
import subprocess
import time
import unittest

from clitest import CliTestCase, errors

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE, BAD_START, BAD_END = 8 << 20, 4 << 20, 5 << 20
SYSTEM_PYTHON = "/usr/bin/python3"


def fuse_available():
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse") or not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import fusepy"],
                          capture_output=True).returncode == 0


@unittest.skipUnless(fuse_available(), "needs root, /dev/fuse and python3-fusepy")
class ReadErrorTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.mnt = self.path("mnt")
        os.mkdir(self.mnt)
        self.server = subprocess.Popen([SYSTEM_PYTHON, os.path.join(HERE, "faultyfs.py"),
                                        self.mnt, str(SIZE), str(BAD_START), str(BAD_END)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.disk = os.path.join(self.mnt, "disk.img")
        deadline = time.monotonic() + 30
        while not os.path.exists(self.disk):
            if self.server.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                super().tearDown()
                self.skipTest("FUSE mount failed")
            time.sleep(0.02)
        with open(self.path("same.img"), "wb") as f:
            f.write(b"\x5a" * SIZE)

    def tearDown(self):
        self.unmount()  # before the temporary directory holding the mount point goes
        super().tearDown()

    def unmount(self):
        subprocess.run(["umount", self.mnt], capture_output=True)
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
            subprocess.run(["umount", "-l", self.mnt], capture_output=True)
        self.server.stderr.close()

    def both(self, *args, tool="img"):
        args = [a.replace("DISK", self.disk) for a in args]
        if tool == "img":
            ours, theirs, prefix = self.blkimg(*args), self.qemu_img(*args), "qemu-img: "
        else:
            ours, theirs, prefix = self.blkimg("io", *args), self.qemu_io(*args), "qemu-io: "
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, prefix))
        return ours, theirs

    def test_compare_read_error_exits_4(self):
        ours, theirs = self.both("compare", "-f", "raw", "-F", "raw", "DISK", "same.img")
        self.assertEqual(ours.code, 4)
        self.assertEqual(ours.out, theirs.out)
        self.assertEqual(self.both("compare", "-f", "raw", "-F", "raw", "same.img", "DISK")[0].code,
                         4)

    def test_convert_fails_and_salvage_saves_every_readable_sector(self):
        ours, _ = self.both("convert", "-f", "raw", "-O", "raw", "DISK", "out.img")
        self.assertEqual(ours.code, 1)
        ours = self.blkimg("convert", "--salvage", "-f", "raw", "-O", "raw", self.disk, "a.img")
        theirs = self.qemu_img("convert", "--salvage", "-f", "raw", "-O", "raw", self.disk,
                               "b.img")
        self.assertEqual((ours.code, theirs.code), (0, 0))
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))
        self.assertEqual(len(ours.err.splitlines()), (BAD_END - BAD_START) // 512)
        self.assertEqual(self.read("a.img"), self.read("b.img"))
        self.assertEqual(self.read("a.img")[BAD_START - 512:BAD_START], b"\x5a" * 512)
        self.assertEqual(self.qemu_img("map", "--output=json", "a.img").out,
                         self.qemu_img("map", "--output=json", "b.img").out)

    def test_dd_bench_and_io_read_errors(self):
        self.assertEqual(self.both("dd", "-f", "raw", "if=DISK", "of=dd.img", "bs=1M")[0].code, 1)
        ours, theirs = self.both("bench", "-f", "raw", "-c", "64", "-s", "64k", "-S", "1M",
                                 "DISK")
        self.assertEqual(ours.code, 1)
        self.assertEqual(ours.out.splitlines()[:1], theirs.out.splitlines()[:1])
        ours, theirs = self.both("-r", "-f", "raw", "-c", "read 4M 4k", "-c", "read 0 4k",
                                 "DISK", tool="io")
        self.assertEqual(ours.out.splitlines()[0], theirs.out.splitlines()[0])
        self.assertEqual(ours.out.splitlines()[0], "read failed: Input/output error")

    def test_map_and_info_need_no_reads(self):
        for args in (["map", "-f", "raw", "DISK"], ["map", "--output=json", "-f", "raw", "DISK"],
                     ["info", "-f", "raw", "DISK"]):
            with self.subTest(args=args):
                ours, theirs = self.both(*args)
                self.assertEqual(ours.code, 0)
                self.assertEqual(ours.out, theirs.out)


if __name__ == "__main__":
    unittest.main()
