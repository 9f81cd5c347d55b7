"""blkimg with qcow2, side by side with qemu-img: create (the "Formatting" line, the image's
bytes, -o help, backing-file rules and messages), and what waits for the qcow2 driver."""
import os
import unittest

from clitest import CliTestCase


class Qcow2CreateTest(CliTestCase):
    def same_create(self, args, size="1G"):
        tail = [size] if size else []
        ours = self.blkimg("create", "-f", "qcow2", *args, "a.qcow2", *tail)
        theirs = self.qemu_img("create", "-f", "qcow2", *args, "b.qcow2", *tail)
        self.assertOk(theirs)
        self.assertOk(ours)
        self.assertEqual(ours.out.replace("'a.qcow2'", "'X'"), theirs.out.replace("'b.qcow2'", "'X'"))
        self.assertEqual(self.read("a.qcow2"), self.read("b.qcow2"))
        self.assertEqual(self.qemu_img("map", "--output=json", "-f", "raw", "a.qcow2").json(),
                         self.qemu_img("map", "--output=json", "-f", "raw", "b.qcow2").json())
        if "nonexist.img" in args:  # qemu-img cannot open it for check or info
            os.remove(self.path("a.qcow2"))
            os.remove(self.path("b.qcow2"))
            return
        check = self.qemu_img("check", "a.qcow2")
        self.assertOk(check)
        info_ours = self.qemu_img("info", "--output=json", "a.qcow2").json()
        info_theirs = self.qemu_img("info", "--output=json", "b.qcow2").json()
        for info in (info_ours, info_theirs):
            info.pop("filename")
        # Bytes and extents are compared above; the blocks a file system charges for an
        # fallocated file also count its extent-tree blocks, which depend on how fragmented
        # the free space was (ext4 keeps four extents in the inode): allow a few blocks.
        if any(p in " ".join(args) for p in ("preallocation=falloc", "preallocation=full")):
            ours_size, theirs_size = info_ours.pop("actual-size"), info_theirs.pop("actual-size")
            self.assertLessEqual(abs(ours_size - theirs_size), 16384, (ours_size, theirs_size))
        self.assertEqual(info_ours, info_theirs)
        os.remove(self.path("a.qcow2"))
        os.remove(self.path("b.qcow2"))

    def test_create_like_qemu_img(self):
        self.qemu_img("create", "-q", "-f", "raw", "base.raw", "3M")
        for args, size in [
                ([], "1G"), ([], "1000"), ([], "0"),
                (["-o", "compat=0.10"], "1G"), (["-o", "compat=v3,lazy_refcounts=on"], "1G"),
                (["-o", "cluster_size=4k,refcount_bits=1"], "1G"),
                (["-o", "cluster_size=512", "-o", "refcount_bits=64"], "64M"),
                (["-o", "cluster_size=2M,extended_l2=on"], "4G"),
                (["-o", "compression_type=zstd"], "1M"),
                (["-o", "preallocation=metadata"], "1G"),
                (["-o", "preallocation=falloc,cluster_size=16k"], "16M"),
                (["-o", "preallocation=full"], "4M"),
                (["-o", "nocow=on,extent_size_hint=2M"], "1M"),
                (["-b", "base.raw", "-F", "raw"], "1M"),
                (["-b", "base.raw", "-F", "raw"], None),
                (["-o", "backing_file=base.raw,backing_fmt=raw"], None),
                (["-u", "-b", "nonexist.img", "-F", "raw"], "1M"),
                (["-b", "base.raw", "-F", "raw", "-o", "extended_l2=on,preallocation=metadata"], None)]:
            with self.subTest(args=args, size=size):
                self.same_create(args, size)

    def test_data_file(self):
        ours = self.blkimg("create", "-f", "qcow2", "-o", "data_file=a.raw,data_file_raw=on", "a.qcow2", "1M")
        theirs = self.qemu_img("create", "-f", "qcow2", "-o", "data_file=a.raw,data_file_raw=on", "b.qcow2", "1M")
        self.assertOk(ours)
        self.assertOk(theirs)
        self.assertEqual(ours.out.replace("'a.qcow2'", "'X'"), theirs.out.replace("'b.qcow2'", "'X'"))
        self.assertEqual(self.read("a.qcow2"), self.read("b.qcow2").replace(b"b.qcow2", b"a.qcow2"))
        self.assertEqual(os.path.getsize(self.path("a.raw")), 1 << 20)
        self.assertOk(self.qemu_img("check", "a.qcow2"))

    def test_help_like_qemu_img(self):
        for tail in ([], ["x.qcow2"]):
            ours = self.blkimg("create", "-f", "qcow2", "-o", "help", *tail)
            theirs = self.qemu_img("create", "-f", "qcow2", "-o", "help", *tail)
            self.assertOk(ours)
            self.assertEqual(ours.out, theirs.out)

    def test_refusals_like_qemu_img(self):
        self.qemu_img("create", "-q", "-f", "raw", "base.raw", "1M")
        for args in [["-o", "cluster_size=3k"], ["-o", "compat=0.9"], ["-o", "refcount_bits=3"],
                     ["-o", "compat=0.10,refcount_bits=1"], ["-o", "extended_l2=on,cluster_size=4k"],
                     ["-o", "compression_type=lz4"], ["-o", "data_file_raw=on"],
                     ["-o", "backing_fmt=raw"], ["-o", "preallocation=foo"],
                     ["-b", "base.raw", "-F", "raw", "-o", "preallocation=metadata"],
                     # qemu-img 6.1 and later: a backing file needs its format
                     ["-b", "base.raw"], ["-u", "-b", "base.raw"], ["-b", "base.raw", "1M"],
                     ["-b", "nonexist.raw", "-F", "raw"], ["-b", "nonexist.raw", "-F", "raw", "1M"],
                     ["-u", "-b", "nonexist.raw", "-F", "raw"]]:
            with self.subTest(args=args):
                tail = [] if "-b" in args else ["1M"]
                if args[-1] == "1M":
                    tail, args = ["1M"], args[:-1]
                ours = self.blkimg("create", "-f", "qcow2", *args, "a.qcow2", *tail)
                theirs = self.qemu_img("create", "-f", "qcow2", *args, "a.qcow2", *tail)
                # qemu-img's hint ("Detected format of raw.") has no newline after it
                self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
                self.assertEqual([l[len("blkimg: "):] if l.startswith("blkimg: ") else l for l in ours.err.splitlines()],
                                 [l[len("qemu-img: "):] if l.startswith("qemu-img: ") else l for l in theirs.err.splitlines()])
                self.assertFalse(os.path.exists(self.path("a.qcow2")))

    def test_encryption_refused(self):
        ours = self.blkimg("create", "-f", "qcow2", "-o", "encrypt.format=luks", "a.qcow2", "1M")
        self.assertEqual(ours.code, 1)
        self.assertIn("encrypted images are not supported", ours.err)
        self.assertFalse(os.path.exists(self.path("a.qcow2")))


if __name__ == "__main__":
    unittest.main()
