"""blkimg create and info, side by side with qemu-img."""
import os
import unittest

from clitest import CliTestCase


class CreateTest(CliTestCase):
    def test_create_like_qemu_img(self):
        for opts, size in [([], "1M"), (["-o", "preallocation=falloc,nocow=on"], "1M"),
                           (["-o", "preallocation=full"], "64k"), ([], "1000"),
                           (["-o", "size=2M"], None)]:
            with self.subTest(opts=opts, size=size):
                tail = [size] if size else []
                ours = self.blkimg("create", "-f", "raw", *opts, "a.img", *tail)
                theirs = self.qemu_img("create", "-f", "raw", *opts, "b.img", *tail)
                self.assertOk(ours)
                self.assertOk(theirs)
                self.assertEqual(ours.out.replace("'a.img'", "'X'"),
                                 theirs.out.replace("'b.img'", "'X'"))
                self.assertEqual(os.path.getsize(self.path("a.img")),
                                 os.path.getsize(self.path("b.img")))
                self.assertEqual(self.read("a.img"), self.read("b.img"))
                # same allocation, as qemu-img map shows it
                self.assertEqual(self.qemu_img("map", "--output=json", "-f", "raw", "a.img").json(),
                                 self.qemu_img("map", "--output=json", "-f", "raw", "b.img").json())
                os.remove(self.path("a.img"))
                os.remove(self.path("b.img"))

    def test_size_syntax_like_qemu_img(self):
        # qemu_strtosz: hex, fractions with a suffix, leading blanks, hex with a suffix (warns)
        for size in ["0x100000", "1.5M", " 5M", "0x10k", "1e3", "512b"]:
            with self.subTest(size=size):
                ours = self.blkimg("create", "-q", "-f", "raw", "a.img", size)
                theirs = self.qemu_img("create", "-q", "-f", "raw", "b.img", size)
                self.assertSameErrors(ours, theirs)
                self.assertEqual(os.path.getsize(self.path("a.img")),
                                 os.path.getsize(self.path("b.img")))

    def test_quiet_and_suffixes(self):
        ours = self.blkimg("create", "-q", "-f", "raw", "a.img", "1.5M")
        self.assertOk(ours)
        self.assertEqual(ours.out, "")
        self.assertEqual(os.path.getsize(self.path("a.img")), 1536 * 1024)

    def test_create_errors_match(self):
        cases = [
            ["create", "-f", "raw", "{}"],                            # no size
            ["create", "-f", "raw", "{}", "1x"],                      # bad size
            ["create", "-f", "raw", "-o", "bogus=1", "{}", "1M"],     # unknown option
            ["create", "-f", "raw", "-b", "base", "-F", "raw", "{}", "1M"],  # raw has no backing
            ["create", "-f", "nosuch", "{}", "1M"],                   # unknown format
            ["create", "-f", "raw", "{}", ""],                        # empty size
            ["create", "-f", "raw", "{}", "18446744073709551616"],    # out of range
            ["create", "-f", "raw", "{}", "1.5"],                     # a fraction of a byte
            ["create", "-f", "raw", "{}", "5 M"],
        ]
        for case in cases:
            with self.subTest(case=case):
                ours = self.blkimg(*[a.format("x.img") for a in case])
                theirs = self.qemu_img(*[a.format("x.img") for a in case])
                self.assertSameErrors(ours, theirs)
                self.assertFalse(os.path.exists(self.path("x.img")))

    def test_o_help(self):
        ours = self.blkimg("create", "-f", "raw", "-o", "help")
        theirs = self.qemu_img("create", "-f", "raw", "-o", "help")
        self.assertOk(ours)
        self.assertEqual(ours.out, theirs.out)
        ours = self.blkimg("create", "-f", "raw", "-o", "help", "x.img")
        theirs = self.qemu_img("create", "-f", "raw", "-o", "help", "x.img")
        self.assertEqual(ours.out, theirs.out)


class InfoTest(CliTestCase):
    def compare_json(self, *args, chain=False):
        flags = ["--output=json"] + (["--backing-chain"] if chain else [])
        ours = self.blkimg("info", *flags, *args)
        theirs = self.qemu_img("info", *flags, *args)
        self.assertOk(ours)
        self.assertOk(theirs)
        return ours.json(), theirs.json()

    def test_raw_info_json_and_human(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "r.img", "1000"))
        self.write_pattern("r.img", 0, 512, 7)
        ours, theirs = self.compare_json("r.img")
        self.assertEqual(ours, theirs)
        ours, theirs = self.compare_json("r.img", chain=True)
        self.assertEqual(ours, theirs)
        ours = self.blkimg("info", "r.img")
        theirs = self.qemu_img("info", "r.img")
        self.assertOk(ours)
        self.assertEqual(ours.out, theirs.out)

    def test_human_sizes_like_qemu_img(self):
        # qemu-img switches units at 1000 of the smaller one: 1048064 bytes is "1 MiB".
        for size in [0, 512, 999 * 1024, 1000 * 1024 - 512, 1048064, 1048576, 1023 * 1024 * 1024,
                     1000 * 1024 * 1024, 1536 * 1024 * 1024, 1099511627264]:
            with self.subTest(size=size):
                self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "h.img", str(size)))
                ours = self.blkimg("info", "-f", "raw", "h.img")
                theirs = self.qemu_img("info", "-f", "raw", "h.img")
                self.assertOk(ours)
                self.assertEqual(ours.out.splitlines()[:4], theirs.out.splitlines()[:4])
                os.remove(self.path("h.img"))

    def test_info_of_option_strings(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "r.img", "1M"))
        for opts in ["driver=raw,file.filename=r.img",
                     "driver=raw,offset=512,file.driver=file,file.filename=r.img"]:
            with self.subTest(opts=opts):
                ours, theirs = self.compare_json("--image-opts", opts)
                # QEMU spells option trees in its own key order: compare the trees.
                for j in (ours, theirs):
                    if j["filename"].startswith("json:"):
                        import json
                        j["filename"] = json.loads(j["filename"][5:])
                self.assertEqual(ours, theirs)

    def test_null_co_has_no_dirty_flag(self):
        ours, theirs = self.compare_json("null-co://")
        self.assertEqual(ours, theirs)

    def test_force_share_and_locks(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "q.qcow2", "1M"))
        # a qcow2 held read-write by qemu-io refuses info, -U works (as for qemu-img)
        with self.held_by_qemu_io("q.qcow2", "qcow2"):
            ours = self.blkimg("info", "-f", "raw", "q.qcow2")
            theirs = self.qemu_img("info", "-f", "raw", "q.qcow2")
            self.assertEqual(ours.code, 0, repr(ours))  # raw takes no unshared lock, as QEMU
            self.assertEqual(theirs.code, 0, repr(theirs))
            self.assertOk(self.blkimg("info", "-U", "-f", "raw", "q.qcow2"))
            # the qcow2 view needs the unshared write lock qemu-io holds: both refuse
            self.assertNotEqual(self.blkimg("info", "q.qcow2").code, 0)

    def test_info_errors_match(self):
        self.assertSameErrors(self.blkimg("info", "nosuch"), self.qemu_img("info", "nosuch"))
        self.assertSameErrors(self.blkimg("info", "bogus:x"), self.qemu_img("info", "bogus:x"))


if __name__ == "__main__":
    unittest.main()
