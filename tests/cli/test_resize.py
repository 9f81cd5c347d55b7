"""blkimg resize, side by side with qemu-img resize: the same messages and exit codes, and the
same resulting files (size, bytes, allocation) for every preallocation mode."""
import os
import unittest

from clitest import CliTestCase, errors


class ResizeTest(CliTestCase):
    def twins(self, size=1024 * 1024, data=True):
        """Two equal raw files: ours.img for blkimg, theirs.img for qemu-img."""
        for name in ("ours.img", "theirs.img"):
            with open(self.path(name), "wb") as f:
                f.truncate(size)
            if data:
                self.write_pattern(name, 4096, 8192, 0x5a)
                self.write_pattern(name, size - 512, 512, 0xa5)

    def compare(self, *args, expect_ok=None):
        """Runs both tools with IMG replaced by their own file; checks messages, exit codes and
        what the files look like afterwards."""
        ours = self.blkimg("resize", *[a.replace("IMG", "ours.img") for a in args])
        theirs = self.qemu_img("resize", *[a.replace("IMG", "theirs.img") for a in args])
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(ours.out, theirs.out)
        self.assertEqual([l.replace("ours.img", "X") for l in errors(ours, "blkimg: ")],
                         [l.replace("theirs.img", "X") for l in errors(theirs, "qemu-img: ")])
        if expect_ok is not None:
            self.assertEqual(ours.code == 0, expect_ok, repr(ours))
        a, b = os.stat(self.path("ours.img")), os.stat(self.path("theirs.img"))
        self.assertEqual(a.st_size, b.st_size)
        self.assertEqual(a.st_blocks, b.st_blocks)
        self.assertEqual(self.read("ours.img"), self.read("theirs.img"))
        return ours

    def test_grow_and_shrink(self):
        self.twins()
        for args in [["-f", "raw", "IMG", "2M"], ["-f", "raw", "IMG", "+1M"],
                     ["-f", "raw", "IMG", "+1000"], ["IMG", "4M"],
                     ["--shrink", "-f", "raw", "IMG", "-1M"], ["-f", "raw", "--shrink", "IMG", "1M"],
                     ["-f", "raw", "--shrink", "IMG", "-0"], ["-f", "raw", "IMG", "+0"],
                     ["-f", "raw", "IMG", "1.5M"], ["-f", "raw", "IMG", "0x200000"],
                     ["-f", "raw", "IMG", "++1M"], ["-f", "raw", "--shrink", "IMG", "-+1M"],
                     ["-q", "-f", "raw", "IMG", "3M"], ["-f", "raw", "IMG", "-q", "5M"],
                     ["--shrink", "-f", "raw", "IMG", "1000"]]:
            with self.subTest(args=args):
                ours = self.compare(*args, expect_ok=True)
                self.assertEqual(ours.out, "" if "-q" in args else "Image resized.\n")
        self.assertEqual(os.path.getsize(self.path("ours.img")), 1000)

    def test_preallocation_modes(self):
        for mode in ["off", "falloc", "full", "metadata", "bogus"]:
            with self.subTest(mode=mode):
                self.twins()
                self.compare(f"--preallocation={mode}", "-f", "raw", "IMG", "+1M",
                             expect_ok=mode in ("off", "falloc", "full"))
                # the same allocation as qemu-img map sees it
                maps = [self.qemu_img("map", "--output=json", "-f", "raw", n).json()
                        for n in ("ours.img", "theirs.img")]
                self.assertEqual(maps[0], maps[1])
                if mode in ("falloc", "full"):
                    self.assertTrue(maps[0][-1]["data"] or mode == "falloc", maps[0])
                    self.assertGreaterEqual(os.stat(self.path("ours.img")).st_blocks * 512,
                                            1024 * 1024)
                # growing nothing or shrinking with preallocation is refused
                self.compare(f"--preallocation={mode}", "-f", "raw", "IMG", "+0")
                self.compare(f"--preallocation={mode}", "--shrink", "-f", "raw", "IMG", "-4k")

    def test_errors_match(self):
        self.twins()
        for args in [["-f", "raw", "IMG", "-512k"], ["-f", "raw", "IMG", "512k"],
                     ["IMG", "-1"], ["-f", "raw", "IMG", "0"],
                     ["-f", "raw", "--shrink", "IMG", "-1M"], ["-f", "raw", "--shrink", "IMG", "-2M"],
                     ["-f", "raw", "IMG", "x"], ["-f", "raw", "IMG", "-x"], ["-f", "raw", "IMG", "1.5"],
                     ["-f", "raw", "IMG", "--1M"], ["-f", "raw", "IMG", "9E"],
                     ["-f", "raw", "IMG", "+9E"], ["-f", "raw", "IMG", "16E"],
                     ["-f", "raw", "IMG", "+16E"], ["-f", "raw", "IMG", "18446744073709551615"],
                     ["-f", "raw", "IMG", "18446744073709551616"], ["-f", "raw", "IMG", "2 M"],
                     ["-f", "raw", "IMG"], ["IMG"], [], ["-f", "raw", "IMG", "1M", "2M"],
                     ["-f", "raw", "nosuch", "1M"], ["-f", "raw", "nosuch", "x"],
                     ["-f", "bogus", "IMG", "2M"], ["-U", "-f", "raw", "IMG", "2M"],
                     ["--bogus", "-f", "raw", "IMG", "2M"],
                     ["--image-opts", "-f", "raw", "driver=raw,file.filename=IMG", "3M"],
                     ["--image-opts", "driver=null-co,size=1M", "2M"]]:
            with self.subTest(args=args):
                ours = self.compare(*args, expect_ok=False)
                self.assertNotEqual(ours.err, "")

    def test_image_opts(self):
        self.twins()
        for opts in ["driver=raw,file.filename=IMG", "driver=file,filename=IMG"]:
            with self.subTest(opts=opts):
                self.compare("--image-opts", opts, "+64k", expect_ok=True)
                self.compare("--image-opts", "--shrink", opts, "-4k", expect_ok=True)
        self.compare("--object", "secret,id=s0,data=x", "-f", "raw", "IMG", "+1k", expect_ok=True)

    def test_locked_image(self):
        # a qcow2 held read-write by qemu-io keeps others from writing its file: the raw view
        # of it cannot be resized by either tool
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "q.qcow2", "1M"))
        before = self.read("q.qcow2")
        with self.held_by_qemu_io("q.qcow2", "qcow2"):
            theirs = self.qemu_img("resize", "-f", "raw", "q.qcow2", "+1M")
            self.assertEqual(theirs.code, 1, repr(theirs))
            ours = self.blkimg("resize", "-f", "raw", "q.qcow2", "+1M")
            self.assertEqual(ours.code, 1, repr(ours))
            self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))
            self.assertIn('Failed to get "write" lock', ours.err)
        self.assertEqual(self.read("q.qcow2"), before)
        # once the holder is gone, the resize works
        self.assertOk(self.blkimg("resize", "-f", "raw", "q.qcow2", "+1M"))


if __name__ == "__main__":
    unittest.main()
