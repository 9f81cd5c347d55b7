"""blkimg measure, side by side with qemu-img measure: the same numbers (required, fully
allocated, bitmaps) and the same output (human and JSON) for raw and qcow2 targets, from
--size or from images of several kinds (sparse and allocated raw files, qcow2 images with
zero and compressed clusters, backing chains, persistent bitmaps, internal snapshots with
-l), with every qcow2 option measure reads; and the same errors and exit codes."""
import os
import shutil
import unittest

from clitest import CliTestCase, errors

MiB = 1 << 20


class MeasureTest(CliTestCase):
    def same(self, *args):
        ours, theirs = self.blkimg("measure", *args), self.qemu_img("measure", *args)
        self.assertEqual(ours.code, theirs.code, f"{args}\nours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(ours.out, theirs.out, args)
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "), args)
        return ours

    def io(self, name, fmt, *cmds):
        argv = ["-f", fmt]
        for c in cmds:
            argv += ["-c", c]
        r = self.qemu_io(*argv, name)
        self.assertOk(r)

    def images(self):
        """Inputs of several kinds, made by qemu-img and qemu-io."""
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "sparse.raw", "7M"))
        self.io("sparse.raw", "raw", "write -P 1 0 4096", "write -P 2 3M 70000", "write -P 3 6M 1M")
        with open(self.path("full.raw"), "wb") as f:
            f.write(os.urandom(3 * MiB + 1234))
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "z.qcow2", "9M"))
        self.io("z.qcow2", "qcow2", "write -P 4 100k 300k", "write -z 2M 1M", "write -P 5 5M 64k",
                "write -z -u 5M 32k")
        self.assertOk(self.qemu_img("convert", "-c", "-O", "qcow2", "full.raw", "c.qcow2"))
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "-b", "z.qcow2", "-F", "qcow2",
                                    "top.qcow2"))
        self.io("top.qcow2", "qcow2", "write -P 6 8M 512k")
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "3M"))
        self.io("v2.qcow2", "qcow2", "write -P 7 1M 1M")
        return ["sparse.raw", "full.raw", "z.qcow2", "c.qcow2", "top.qcow2", "v2.qcow2"]

    def test_from_images(self):
        for name in self.images():
            for target in (["-O", "raw"], ["-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=4k"],
                           ["-O", "qcow2", "-o", "cluster_size=2M,extended_l2=on"],
                           ["-O", "qcow2", "-o", "refcount_bits=1"], ["-O", "qcow2", "-o", "compat=0.10"],
                           ["-O", "qcow2", "-o", "preallocation=falloc"],
                           ["-O", "qcow2", "-o", "backing_file=x.qcow2"], []):
                for out in ([], ["--output=json"]):
                    with self.subTest(name=name, target=target, out=out):
                        self.same(*out, *target, name)
        self.same("-f", "raw", "-O", "qcow2", "z.qcow2")  # its bytes, measured as raw data
        self.same("--image-opts", "-O", "qcow2", "driver=qcow2,file.filename=top.qcow2")

    def test_from_size(self):
        for size in ("0", "1", "1000", "64k", "1G", "3T", "1P"):
            for target in (["-O", "raw"], ["-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=512"],
                           ["-O", "qcow2", "-o", "cluster_size=16k,extended_l2=on,refcount_bits=64"],
                           ["-O", "qcow2", "-o", "preallocation=full"], []):
                with self.subTest(size=size, target=target):
                    self.same("--size", size, *target)
        self.same("--size", "1G", "-O", "qcow2", "-o", "size=5G")
        self.same("--size", "1G", "--output=json", "-O", "qcow2")

    def test_bitmaps(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "b.qcow2", "100M"))
        self.assertOk(self.qemu_img("bitmap", "--add", "b.qcow2", "first"))
        self.assertOk(self.qemu_img("bitmap", "--add", "-g", "512", "b.qcow2", "a-much-longer-bitmap-name"))
        self.assertOk(self.qemu_img("bitmap", "--add", "-g", "2M", "--disable", "b.qcow2", "off"))
        self.io("b.qcow2", "qcow2", "write -P 1 0 1M")
        for target in (["-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=4k"],
                       ["-O", "qcow2", "-o", "compat=0.10"], ["-O", "raw"]):
            for out in ([], ["--output=json"]):
                with self.subTest(target=target, out=out):
                    r = self.same(*out, *target, "b.qcow2")
                    if target == ["-O", "qcow2"] and not out:
                        self.assertIn("bitmaps size: ", r.out)
                        self.assertNotIn("bitmaps size: 0\n", r.out)

    def test_info_lists_bitmaps(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "i.qcow2", "10M"))
        self.assertOk(self.qemu_img("bitmap", "--add", "i.qcow2", "on"))
        self.assertOk(self.qemu_img("bitmap", "--add", "-g", "4k", "--disable", "i.qcow2", "off"))
        # A copy taken while qemu-io has the image open read-write: its bitmaps are in use.
        with self.held_by_qemu_io("i.qcow2", "qcow2"):
            shutil.copy(self.path("i.qcow2"), self.path("inuse.qcow2"))
        for name in ("i.qcow2", "inuse.qcow2"):
            for out in ([], ["--output=json"]):
                with self.subTest(name=name, out=out):
                    ours = self.blkimg("info", "-U", *out, name)
                    theirs = self.qemu_img("info", "-U", *out, name)
                    self.assertOk(ours)
                    self.assertEqual(ours.out.replace("disk size", "x"), theirs.out.replace("disk size", "x"))
        self.assertIn("in-use", self.blkimg("info", "inuse.qcow2").out)

    def test_snapshot_param(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "s.qcow2", "8M"))
        self.io("s.qcow2", "qcow2", "write -P 1 0 1M")
        self.assertOk(self.qemu_img("snapshot", "-c", "small", "s.qcow2"))
        self.io("s.qcow2", "qcow2", "write -P 2 1M 5M")
        for sn in ("small", "1", "snapshot.id=1", "snapshot.name=small", "nope", "snapshot.x=1"):
            with self.subTest(sn=sn):
                self.same("-O", "qcow2", "-l", sn, "s.qcow2")

    def test_errors(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "e.qcow2", "1M"))
        cases = [
            [], ["--size", "1G", "e.qcow2"], ["-f", "qcow2", "--size", "1G"], ["-l", "x", "--size", "1G"],
            ["--image-opts", "--size", "1G"], ["e.qcow2", "e.qcow2"], ["--size", "-1"], ["--size", "1x"],
            ["--size", "1G", "-O", "nope"], ["--output=xml", "--size", "1G"],
            ["--size", "1G", "-O", "qcow2", "-o", "foo=1"], ["--size", "1G", "-O", "raw", "-o", "foo=1"],
            ["--size", "1G", "-O", "qcow2", "-o", "cluster_size=1000"],
            ["--size", "1G", "-O", "qcow2", "-o", "compat=0.10,refcount_bits=8"],
            ["--size", "1G", "-O", "qcow2", "-o", "refcount_bits=3"],
            ["--size", "1G", "-O", "qcow2", "-o", "compat=xx"],
            ["--size", "1G", "-O", "qcow2", "-o", "preallocation=bad"],
            ["--size", "1G", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=4k"],
            ["--size", "100T", "-O", "qcow2", "-o", "cluster_size=512"],
            ["missing.qcow2"], ["-f", "raw", "-l", "1", "e.qcow2"],
        ]
        for args in cases:
            with self.subTest(args=args):
                self.same(*args)


if __name__ == "__main__":
    unittest.main()
