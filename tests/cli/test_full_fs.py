"""Preallocation on a full file system, blkimg against qemu-img: resize and create fail the
same way, and leave the file (and the file system's free space) as qemu-img leaves them:
resize keeps the old length, create leaves an empty file.

Each tool gets its own small tmpfs, so what one leaves behind cannot change what the other
sees. Needs root (mount); exits 77 (skipped) otherwise.
"""
import os
import subprocess
import sys
import tempfile
import unittest

from clitest import CliTestCase, errors

if os.geteuid() != 0:
    sys.stderr.write("skipped: mounting a tmpfs needs root\n")
    sys.exit(77)

FS_SIZE = 8 * 1024 * 1024
IMAGE = 1024 * 1024


class FullFileSystemTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.mounts = {}
        for side in ("ours", "theirs"):
            mnt = self.path(side)
            os.mkdir(mnt)
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", mnt],
                               capture_output=True, text=True)
            if r.returncode != 0:
                self.tearDown()
                self.skipTest(f"cannot mount a tmpfs: {r.stderr.strip()}")
            self.mounts[side] = mnt

    def tearDown(self):
        # unmounted before the temporary directory holding the mount points goes
        for mnt in self.mounts.values():
            subprocess.run(["umount", mnt], check=True)
        self.mounts = {}
        super().tearDown()

    def image(self, side):
        return os.path.join(self.mounts[side], "img")

    def fill(self, size=IMAGE):
        """The same image on both sides: `size` bytes of a pattern."""
        for side in self.mounts:
            with open(self.image(side), "wb") as f:
                f.write(b"\x5a" * size)

    def state(self, side):
        """What a file system check would see: the image's length, blocks and bytes, and the
        free space left."""
        path = self.image(side)
        free = os.statvfs(self.mounts[side]).f_bfree
        if not os.path.exists(path):
            return None, free
        st = os.stat(path)
        with open(path, "rb") as f:
            return (st.st_size, st.st_blocks, f.read()), free

    def compare(self, *args):
        """Runs blkimg and qemu-img with IMG replaced by each side's image: the same exit
        code, output and messages (image names aside), and the same state afterwards."""
        ours = self.blkimg(*[a.replace("IMG", self.image("ours")) for a in args])
        theirs = self.qemu_img(*[a.replace("IMG", self.image("theirs")) for a in args])
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(ours.out.replace(self.image("ours"), "IMG"),
                         theirs.out.replace(self.image("theirs"), "IMG"))
        theirs_errors = [l.replace(self.image("theirs"), "IMG")
                         for l in errors(theirs, "qemu-img: ")]
        self.assertEqual([l.replace(self.image("ours"), "IMG") for l in errors(ours, "blkimg: ")],
                         theirs_errors)
        self.assertEqual(self.state("ours"), self.state("theirs"))
        return ours

    def test_resize_that_does_not_fit_keeps_the_old_length(self):
        for mode in ("full", "falloc"):
            with self.subTest(mode=mode):
                self.fill()
                before = self.state("ours")
                ours = self.compare("resize", "-f", "raw", f"--preallocation={mode}", "IMG", "+100M")
                self.assertEqual(ours.code, 1)
                self.assertIn("No space left on device", ours.err)
                self.assertEqual(self.state("ours"), before)  # nothing grown, nothing held

    def test_resize_of_an_unaligned_file_keeps_its_tail(self):
        self.fill(IMAGE + 1000)
        before = self.state("ours")
        self.compare("resize", "-f", "raw", "--preallocation=full", "IMG", "+100M")
        self.assertEqual(self.state("ours"), before)

    def test_resize_that_fits_still_preallocates(self):
        for mode in ("full", "falloc"):
            with self.subTest(mode=mode):
                self.fill()
                ours = self.compare("resize", "-f", "raw", f"--preallocation={mode}", "IMG", "+2M")
                self.assertEqual(ours.code, 0, repr(ours))
                (size, blocks, _), _ = self.state("ours")
                self.assertEqual(size, 3 * IMAGE)
                self.assertGreaterEqual(blocks * 512, 3 * IMAGE)

    def test_create_that_does_not_fit_leaves_an_empty_file(self):
        for mode in ("full", "falloc"):
            for existing in (False, True):
                with self.subTest(mode=mode, existing=existing):
                    if existing:
                        self.fill()
                    else:
                        for side in self.mounts:
                            if os.path.exists(self.image(side)):
                                os.remove(self.image(side))
                    ours = self.compare("create", "-f", "raw", "-o", f"preallocation={mode}",
                                        "IMG", "100M")
                    self.assertEqual(ours.code, 1)
                    (size, blocks, _), free = self.state("ours")
                    self.assertEqual((size, blocks), (0, 0))
                    self.assertEqual(free * os.statvfs(self.mounts["ours"]).f_frsize, FS_SIZE)

    def test_convert_onto_a_full_file_system(self):
        # creating the target fails and leaves it empty; a copy that runs out of space
        # leaves what it wrote, as qemu-img leaves it
        source = os.path.join(self.dir, "source.img")
        with open(source, "wb") as f:
            f.write(os.urandom(FS_SIZE + IMAGE))
        for opts in (["-o", "preallocation=full"], ["-o", "preallocation=falloc"], []):
            with self.subTest(opts=opts):
                for side in self.mounts:
                    if os.path.exists(self.image(side)):
                        os.remove(self.image(side))
                ours = self.compare("convert", "-O", "raw", *opts, source, "IMG")
                self.assertEqual(ours.code, 1)
                self.assertIn("No space left on device", ours.err)

    def test_create_errors_are_the_block_layers(self):
        # metadata is refused after the file was cleared, as by qemu-img
        self.fill()
        self.compare("create", "-f", "raw", "-o", "preallocation=metadata", "IMG", "1M")
        self.compare("create", "-f", "raw", os.path.join(self.dir, "nodir", "x.img"), "1M")


if __name__ == "__main__":
    unittest.main()
