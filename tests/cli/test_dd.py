"""blkimg dd, side by side with qemu-img dd: the same output image (bytes and allocation), the
same messages and exit codes."""
import os
import unittest

from clitest import CliTestCase, errors


class DdTest(CliTestCase):
    def setUp(self):
        super().setUp()
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", self.path("in.img"), "1M"))
        self.assertOk(self.qemu_io("-f", "raw", "-c", "write -P 1 0 300k", "-c",
                                   "write -P 2 700k 100000", "-c", "write -P 3 1000000 1",
                                   "in.img"))

    def dd_both(self, *operands, opts=()):
        ours = self.blkimg("dd", *opts, *operands, "if=in.img", "of=a.img")
        theirs = self.qemu_img("dd", *opts, *operands, "if=in.img", "of=b.img")
        self.assertEqual(ours.code, theirs.code, f"{ours!r}\n{theirs!r}")
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))
        self.assertEqual(ours.out, theirs.out)
        self.assertEqual(os.path.exists(self.path("a.img")), os.path.exists(self.path("b.img")))
        return ours

    def test_block_combinations(self):
        data = self.read("in.img")
        for operands in [[], ["bs=4k"], ["bs=4k", "count=3"], ["bs=4k", "skip=10"],
                         ["skip=3"], ["bs=1000", "count=2"], ["bs=1000", "skip=3"],
                         ["bs=3k", "skip=100", "count=200"], ["count=1k"], ["count=0"],
                         ["bs=64k", "skip=16"], ["bs=1k", "bs=2k"], ["bs=1M", "count=5"],
                         ["bs=7", "skip=100000", "count=50000"]]:
            with self.subTest(operands=operands):
                ours = self.dd_both(*operands)
                self.assertOk(ours)
                self.assertEqual(os.path.getsize(self.path("a.img")),
                                 os.path.getsize(self.path("b.img")))
                self.assertEqual(self.read("a.img"), self.read("b.img"))
                self.assertEqual(
                    self.qemu_img("map", "--output=json", "-f", "raw", "a.img").json(),
                    self.qemu_img("map", "--output=json", "-f", "raw", "b.img").json())
                if operands == ["bs=4k", "skip=10"]:
                    self.assertEqual(self.read("a.img"), data[40960:])
                os.remove(self.path("a.img"))
                os.remove(self.path("b.img"))

    def test_skip_beyond_count(self):
        # qemu-img applies count before skip: this reports an error, copies nothing, exits 0
        for operands in [["bs=4k", "count=3", "skip=10"], ["skip=3000"], ["bs=3k", "skip=400"]]:
            with self.subTest(operands=operands):
                ours = self.dd_both(*operands)
                self.assertOk(ours)
                self.assertEqual(errors(ours, "blkimg: "), ["in.img: cannot skip to specified offset"])
                self.assertEqual(os.path.getsize(self.path("a.img")), 0)

    def test_errors(self):
        for operands, opts in [(["bs=0"], []), (["bs=x"], []), (["bs=3G"], []),
                               (["count=-1"], []), (["skip=x"], []), (["skip=1.5"], []),
                               (["foo=1"], []), (["bs"], []), (["xx"], []),
                               ([], ["-O", "nosuch"]), ([], ["-f", "nosuch"])]:
            with self.subTest(operands=operands, opts=opts):
                ours = self.dd_both(*operands, opts=opts)
                self.assertEqual(ours.code, 1)
                self.assertTrue(ours.err)
        for args in [["if=in.img"], ["of=a.img"], ["if=nonexist.img", "of=a.img"],
                     ["if=in.img", "of=/nonexistent-dir/a.img"]]:
            with self.subTest(args=args):
                ours = self.blkimg("dd", *args)
                theirs = self.qemu_img("dd", *args)
                self.assertSameErrors(ours, theirs)
                self.assertEqual(ours.code, 1)


if __name__ == "__main__":
    unittest.main()
