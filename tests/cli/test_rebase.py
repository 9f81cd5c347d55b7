"""blkimg rebase, side by side with qemu-img rebase: two copies of the same chain, one
rebased by each tool, must then compare identical (qemu-img compare), map identically,
record the same backing file and format (qemu-img info) and pass qemu-img check. Safe mode
onto another backing file, onto a raw one, flattening (-b ""), unsafe mode (-u), -T, -U, -p,
-q, a new backing file smaller than the image, and the errors (no -b, no -F, a missing file, a
raw image)."""
import json
import os
import shutil
import unittest

from clitest import CliTestCase, errors


class RebaseTest(CliTestCase):
    def io(self, name, *cmds, fmt="qcow2"):
        argv = ["-f", fmt]
        for c in cmds:
            argv += ["-c", c]
        self.assertOk(self.qemu_io(*argv, name))

    def chain(self, d):
        os.makedirs(self.path(d), exist_ok=True)
        q = lambda *a: self.assertOk(self.qemu_img(*a))
        q("create", "-q", "-f", "qcow2", f"{d}/b1.qcow2", "4M")
        self.io(f"{d}/b1.qcow2", "write -P 1 0 4M")
        q("create", "-q", "-f", "qcow2", f"{d}/b2.qcow2", "4M")
        self.io(f"{d}/b2.qcow2", "write -P 1 0 1M", "write -P 9 2M 1M", "write -z 3M 512k")
        q("create", "-q", "-f", "raw", f"{d}/b3.raw", "3M")
        self.io(f"{d}/b3.raw", "write -P 1 0 3M", fmt="raw")
        q("create", "-q", "-f", "qcow2", "-b", "b1.qcow2", "-F", "qcow2", f"{d}/t.qcow2", "6M")
        self.io(f"{d}/t.qcow2", "write -P 3 1536k 1M", "write -z 5M 64k", "write -P 4 4M 100k")

    def info(self, name):
        j = json.loads(self.qemu_img("info", "--output=json", name).out)
        return j.get("backing-filename"), j.get("backing-filename-format")

    def map(self, name):
        r = self.qemu_img("map", "--output=json", name)
        return [(e["start"], e["length"], e["depth"], e["data"], e["zero"]) for e in json.loads(r.out)]

    def both(self, *args, same_map=True):
        self.chain("o")
        self.chain("t")
        ours = self.blkimg("rebase", *args, "o/t.qcow2")
        theirs = self.qemu_img("rebase", *args, "t/t.qcow2")
        self.assertEqual(ours.code, theirs.code, f"{args}\nours {ours!r}\ntheirs {theirs!r}")
        self.assertEqual([e.replace("o/", "X/") for e in errors(ours, "blkimg: ")],
                         [e.replace("t/", "X/") for e in errors(theirs, "qemu-img: ")])
        if "-p" not in args:
            self.assertEqual(ours.out, theirs.out)
        self.assertEqual(self.qemu_img("compare", "o/t.qcow2", "t/t.qcow2").code, 0, args)
        self.assertEqual(self.info("o/t.qcow2"), self.info("t/t.qcow2"))
        if same_map:
            self.assertEqual(self.map("o/t.qcow2"), self.map("t/t.qcow2"), args)
        self.assertEqual(self.qemu_img("check", "o/t.qcow2").code, 0)
        shutil.rmtree(self.path("o"))
        shutil.rmtree(self.path("t"))
        return ours

    def test_modes(self):
        for args in (["-b", "b2.qcow2", "-F", "qcow2"], ["-b", "b3.raw", "-F", "raw"], ["-b", ""],
                     ["-u", "-b", "b2.qcow2", "-F", "qcow2"], ["-u", "-b", ""], ["-u"],
                     ["-T", "none", "-b", "b2.qcow2", "-F", "qcow2"], ["-t", "none", "-b", "", "-q"],
                     ["-U", "-b", "b2.qcow2", "-F", "qcow2"], ["-f", "qcow2", "-b", "b1.qcow2", "-F", "qcow2"]):
            with self.subTest(args=args):
                self.both(*args)

    def test_progress(self):
        r = self.both("-p", "-b", "b2.qcow2", "-F", "qcow2")
        self.assertTrue(r.out.startswith("    (0.00/100%)\n"), repr(r.out))
        self.assertTrue(r.out.endswith("    (100.00/100%)\n"), repr(r.out))
        self.assertEqual(self.both("-p", "-q", "-b", "").out, "")

    def test_errors(self):
        for args in ([], ["-b", "nope.qcow2", "-F", "qcow2"], ["-t", "bogus", "-b", ""],
                     ["-T", "bogus", "-b", ""]):
            with self.subTest(args=args):
                self.both(*args)
        # Without -F qemu-img copies the data, then fails to change the header; we fail before
        # writing anything (the image reads the same either way).
        self.chain("x")
        before = self.map("x/t.qcow2")
        self.both("-b", "b2.qcow2", same_map=False)
        ours = self.blkimg("rebase", "-b", "b2.qcow2", "x/t.qcow2")
        self.assertEqual(ours.code, 1)
        self.assertEqual(self.map("x/t.qcow2"), before)
        self.chain("o")
        self.chain("t")
        ours = self.blkimg("rebase", "-f", "raw", "-b", "b1.qcow2", "-F", "qcow2", "o/b3.raw")
        theirs = self.qemu_img("rebase", "-f", "raw", "-b", "b1.qcow2", "-F", "qcow2", "t/b3.raw")
        self.assertSameErrors(ours, theirs)
        self.assertSameErrors(self.blkimg("rebase", "-b", "", "missing.qcow2"),
                              self.qemu_img("rebase", "-b", "", "missing.qcow2"))


if __name__ == "__main__":
    unittest.main()
