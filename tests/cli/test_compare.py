"""blkimg compare, side by side with qemu-img compare: the same verdict (exit code), the same
messages (first mismatch offset included) and the same progress output."""
import os
import shutil
import unittest

from clitest import CliTestCase, errors


class CompareTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", self.path("a.img"), "1M"))
        self.assertOk(self.qemu_io("-f", "raw", "-c", "write -P 1 4096 4096",
                                   "-c", "write -P 5 300k 64k", "a.img"))

    def copy(self, name, writes=(), size=None):
        shutil.copyfile(self.path("a.img"), self.path(name))
        if size:
            os.truncate(self.path(name), size)
        cmds = []
        for w in writes:
            cmds += ["-c", w]
        if cmds:
            self.assertOk(self.qemu_io("-f", "raw", *cmds, name))

    def both(self, *args):
        ours = self.blkimg("compare", *args)
        theirs = self.qemu_img("compare", *args)
        self.assertEqual(ours.code, theirs.code, f"{ours!r}\n{theirs!r}")
        self.assertEqual(ours.out, theirs.out)
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))
        return ours

    def test_identical(self):
        self.assertOk(self.qemu_img("convert", "-f", "raw", "a.img", "same.img"))
        ours = self.both("a.img", "same.img")
        self.assertEqual((ours.code, ours.out), (0, "Images are identical.\n"))
        self.assertEqual(self.both("-s", "a.img", "same.img").code, 0)
        self.assertEqual(self.both("-q", "-f", "raw", "-F", "raw", "a.img", "same.img").out, "")
        self.assertEqual(self.both("-U", "-T", "none", "a.img", "same.img").code, 0)

    def test_differences_first_offset(self):
        for writes in [["write -P 2 5000 1"], ["write -P 2 600000 1", "write -P 2 5000 1"],
                       ["write -P 2 0 1"], ["write -P 9 310000 3"], ["write -P 0 4096 512"],
                       ["write -P 7 1048575 1"], ["write -P 7 700000 1", "write -P 7 900000 1"]]:
            with self.subTest(writes=writes):
                self.copy("b.img", writes)
                ours = self.both("a.img", "b.img")
                self.assertEqual(ours.code, 1)
                self.assertRegex(ours.out, r"^Content mismatch at offset \d+!\n$")
                self.assertEqual(self.both("b.img", "a.img").code, 1)
                self.assertEqual(self.both("-q", "a.img", "b.img").out, "")
                self.assertEqual(self.both("-p", "a.img", "b.img").code, 1)

    def test_zero_data_equals_hole(self):
        # written zeroes compare equal to a hole, except in strict mode
        self.copy("b.img", ["write -P 0 100000 4096"])
        self.assertEqual(self.both("a.img", "b.img").code, 0)
        ours = self.both("-s", "a.img", "b.img")
        self.assertEqual(ours.code, 1)
        self.assertRegex(ours.out, r"^Strict mode: Offset \d+ block status mismatch!\n$")

    def test_size_mismatch(self):
        self.copy("zero-tail.img", size=2 << 20)
        ours = self.both("a.img", "zero-tail.img")
        self.assertEqual(ours.out, "Warning: Image size mismatch!\nImages are identical.\n")
        self.both("zero-tail.img", "a.img")
        ours = self.both("-s", "a.img", "zero-tail.img")
        self.assertEqual((ours.code, ours.out), (1, "Strict mode: Image size mismatch!\n"))
        self.copy("data-tail.img", ["write -P 3 1500000 1"], size=2 << 20)
        ours = self.both("a.img", "data-tail.img")
        self.assertEqual(ours.out, "Warning: Image size mismatch!\n"
                                   "Content mismatch at offset 1499648!\n")
        self.both("data-tail.img", "a.img")
        self.both("-p", "data-tail.img", "a.img")
        # a difference inside the common part is found before the tail is looked at
        self.copy("both.img", ["write -P 3 1500000 1", "write -P 2 7000 1"], size=2 << 20)
        self.assertEqual(self.both("a.img", "both.img").out, "Content mismatch at offset 6656!\n")

    def test_progress(self):
        self.copy("b.img", ["write -P 0 100000 4096"])
        ours = self.both("-p", "a.img", "b.img")
        self.assertIn("(100.00/100%)", ours.out)
        self.both("-p", "-q", "a.img", "b.img")

    def test_errors(self):
        for args in [["a.img", "nonexist.img"], ["nonexist.img", "a.img"], ["a.img"],
                     ["a.img", "a.img", "a.img"], ["-T", "bogus", "a.img", "a.img"]]:
            with self.subTest(args=args):
                ours = self.both(*args)
                self.assertIn(ours.code, (1, 2))
                self.assertTrue(ours.err)
        self.assertEqual(self.both("a.img", "nonexist.img").code, 2)


if __name__ == "__main__":
    unittest.main()
