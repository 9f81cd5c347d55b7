"""blkimg check, side by side with qemu-img check on qcow2 images qemu-img made: clean ones,
leaks and corruptions made by editing the refcounts and tables, compressed images; human and
JSON output, -q, repairs (-r leaks, -r all: the repaired images then check clean with
qemu-img), the exit codes (0, 1, 2, 3, 63) and the option errors."""
import shutil
import struct
import unittest

from clitest import CliTestCase, errors


class CheckTest(CliTestCase):
    def make(self, name="a.qcow2", opts=()):
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", *opts, name, "10M"))
        self.assertOk(self.qemu_io("-f", "qcow2", "-c", "write -P 1 0 128k",
                                   "-c", "write -P 2 1M 64k", name))
        return name

    def header(self, name):
        with open(self.path(name), "rb") as f:
            h = f.read(104)
        return {"l1": struct.unpack(">Q", h[40:48])[0], "rt": struct.unpack(">Q", h[48:56])[0]}

    def peek(self, name, off):
        with open(self.path(name), "rb") as f:
            f.seek(off)
            return struct.unpack(">Q", f.read(8))[0]

    def poke(self, name, off, fmt, value):
        with open(self.path(name), "r+b") as f:
            f.seek(off)
            f.write(struct.pack(fmt, value))

    def set_refcount(self, name, cluster, value):
        rb = self.peek(name, self.header(name)["rt"])
        self.poke(name, rb + 2 * cluster, ">H", value)

    def same(self, name, *args):
        """Both tools on copies of `name`: same exit code, stdout and stderr (tool names aside),
        and for repairs the same image afterwards as far as qemu-img check can tell."""
        shutil.copy(self.path(name), self.path("theirs.qcow2"))
        shutil.copy(self.path(name), self.path("ours.qcow2"))
        theirs = self.qemu_img("check", *args, "theirs.qcow2")
        ours = self.blkimg("check", *args, "ours.qcow2")
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(ours.out.replace("ours.qcow2", "X"), theirs.out.replace("theirs.qcow2", "X"))
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))
        return ours

    def test_clean_images(self):
        for opts in ([], ["-o", "cluster_size=4096,refcount_bits=64"], ["-o", "compat=0.10"],
                     ["-o", "extended_l2=on"], ["-o", "lazy_refcounts=on"]):
            with self.subTest(opts=opts):
                name = self.make("c.qcow2", opts)
                for out in ([], ["--output=json"], ["-q"], ["-q", "--output=json"]):
                    r = self.same(name, *out)
                    self.assertEqual(r.code, 0)
                self.assertIn("No errors were found on the image.", self.same(name).out)

    def test_compressed(self):
        with open(self.path("r.raw"), "wb") as f:
            f.write(b"x" * (3 << 20))
        self.assertOk(self.qemu_img("convert", "-c", "-O", "qcow2", "r.raw", "c.qcow2"))
        self.assertOk(self.qemu_io("-f", "qcow2", "-c", "write -P 3 2M 64k", "-c",
                                   "write -P 3 1M 64k", "c.qcow2"))
        for out in ([], ["--output=json"]):
            self.assertIn("compressed", self.same("c.qcow2", *out).out)

    def test_leaks(self):
        name = self.make()
        with open(self.path(name), "r+b") as f:
            f.truncate(8 * 65536)
        self.set_refcount(name, 7, 1)
        self.set_refcount(name, 2, 2)
        for out in ([], ["--output=json"], ["-f", "qcow2"]):
            self.assertEqual(self.same(name, *out).code, 3)
        for r in ("leaks", "all"):
            for out in ([], ["--output=json"]):
                with self.subTest(r=r, out=out):
                    self.assertEqual(self.same(name, "-r", r, *out).code, 0)
                    self.assertOk(self.qemu_img("check", "ours.qcow2"))

    def test_corruptions(self):
        name = self.make()
        self.set_refcount(name, 5, 0)  # a data cluster without refcount: rebuild
        self.assertEqual(self.same(name).code, 2)
        self.assertEqual(self.same(name, "--output=json").code, 2)
        # -r leaks cannot rebuild: "Check failed: Input/output error", exit 1
        self.assertEqual(self.same(name, "-r", "leaks").code, 1)
        for out in ([], ["--output=json"]):
            self.assertEqual(self.same(name, "-r", "all", *out).code, 0)
            self.assertOk(self.qemu_img("check", "ours.qcow2"))
            self.assertOk(self.qemu_io("-f", "qcow2", "-c", "read -P 1 0 128k", "ours.qcow2"))

    def test_edited_tables(self):
        name = self.make()
        h = self.header(name)
        l1e = self.peek(name, h["l1"])
        l2 = l1e & 0x00fffffffffffe00
        for off, value in ((h["l1"], l1e & ~(1 << 63)),        # COPIED flag cleared
                           (l2, self.peek(name, l2) + 512),     # unaligned data cluster
                           (l2 + 16, (1 << 63) | (1 << 40))):   # data past the end
            with self.subTest(off=off):
                shutil.copy(self.path(name), self.path("e.qcow2"))
                self.poke("e.qcow2", off, ">Q", value)
                self.assertEqual(self.same("e.qcow2").code, 2)
                self.same("e.qcow2", "-r", "all")

    def test_no_check(self):
        with open(self.path("r.raw"), "wb") as f:
            f.write(b"\0" * 65536)
        theirs = self.qemu_img("check", "-f", "raw", "r.raw")
        ours = self.blkimg("check", "-f", "raw", "r.raw")
        self.assertEqual(theirs.code, 63)
        self.assertSameErrors(ours, theirs)
        self.assertSameErrors(self.blkimg("check", "r.raw"), self.qemu_img("check", "r.raw"))

    def test_option_errors(self):
        name = self.make()
        for args in (["-r", "foo", name], ["--output=xml", name], [], [name, name],
                     ["missing.qcow2"], ["-T", "bogus", name]):
            with self.subTest(args=args):
                self.assertSameErrors(self.blkimg("check", *args), self.qemu_img("check", *args))

    def test_image_opts(self):
        name = self.make()
        opts = f"driver=qcow2,file.driver=file,file.filename={name}"
        ours = self.blkimg("check", "--image-opts", opts)
        theirs = self.qemu_img("check", "--image-opts", opts)
        self.assertEqual(ours.code, theirs.code, f"{ours!r} {theirs!r}")
        self.assertEqual(ours.out, theirs.out)


if __name__ == "__main__":
    unittest.main()
