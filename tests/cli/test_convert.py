"""blkimg convert, side by side with qemu-img convert: the same bytes, the same allocation
(qemu-img map), the same messages and exit codes."""
import os
import pty
import unittest

from clitest import CliTestCase, BLKIMG, errors


def read_pty(argv, cwd):
    """Runs argv on a pseudo-terminal and returns everything it printed."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(cwd)
        os.execvp(argv[0], argv)
    out = b""
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out


class ConvertTest(CliTestCase):
    def make_source(self, name="src.img", size="4M", writes=()):
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", self.path(name), size))
        cmds = []
        for w in writes:
            cmds += ["-c", w]
        if cmds:
            self.assertOk(self.qemu_io("-f", "raw", *cmds, name))

    def standard_source(self):
        # data, an explicit zero write (a hole), data, written zeroes (data that reads as zero),
        # data containing small and large zero runs at unaligned places
        self.make_source(writes=[
            "write -P 0xaa 0 64k", "write -z 1M 64k", "write -P 0x55 2M 8k",
            "write -P 0 3M 128k", "write -P 7 3300000 1",
            "write -P 9 3400000 200000", "write -P 0 3450000 1000", "write -P 0 3500000 40000",
            "write -P 0 3560000 7000",
        ])

    def map(self, name):
        result = self.qemu_img("map", "--output=json", "-f", "raw", name)
        self.assertOk(result)
        return [(e["start"], e["length"], e["data"], e["zero"]) for e in result.json()]

    def assertSameConversion(self, *args, sources=("src.img",), prepare=None):
        """Converts with both tools into a.img (ours) and b.img (theirs)."""
        if prepare:
            prepare("a.img")
            prepare("b.img")
        ours = self.blkimg("convert", *args, *sources, "a.img")
        theirs = self.qemu_img("convert", *args, *sources, "b.img")
        self.assertOk(theirs)
        self.assertOk(ours)
        self.assertEqual(ours.out, theirs.out)
        self.assertEqual(os.path.getsize(self.path("a.img")), os.path.getsize(self.path("b.img")))
        self.assertEqual(self.read("a.img"), self.read("b.img"))
        self.assertEqual(self.map("a.img"), self.map("b.img"))
        return self.map("a.img")

    def test_sparse_modes(self):
        self.standard_source()
        for args in [[], ["-S", "0"], ["-S", "64k"], ["-S", "512"], ["-S", "16M"],
                     ["-m", "1"], ["-m", "8", "-W"], ["-m", "16", "-W", "-S", "0"],
                     ["-t", "writeback", "-T", "none"], ["-O", "raw", "-f", "raw", "-U"]]:
            with self.subTest(args=args):
                layout = self.assertSameConversion(*args)
                if "-S" in args and args[args.index("-S") + 1] == "0":
                    self.assertEqual(layout, [(0, 4 << 20, True, False)])
                else:
                    self.assertGreater(len(layout), 4)

    def test_not_sector_multiple_and_multiple_sources(self):
        self.make_source("s1.img", "100000", ["write -P 1 0 3000", "write -P 2 99000 1000"])
        self.make_source("s2.img", "1M", ["write -P 3 512k 4k"])
        self.make_source("s3.img", "7000", ["write -P 4 6000 1000"])
        self.assertSameConversion(sources=("s1.img",))
        self.assertSameConversion(sources=("s1.img", "s2.img", "s3.img"))
        self.assertSameConversion("-m", "4", "-W", "-S", "0", sources=("s3.img", "s1.img"))
        size = os.path.getsize(self.path("a.img"))
        self.assertEqual(size, 7168 + 100352)

    def test_no_create_onto_existing(self):
        self.standard_source()

        def garbage(size):
            def prepare(name):
                self.assertOk(self.qemu_img("create", "-q", "-f", "raw", self.path(name), size))
                self.assertOk(self.qemu_io("-f", "raw", "-c", f"write -P 0x11 0 {size}", name))
            return prepare

        # larger target: zero ranges are written as zeroes (and unmapped), the tail stays
        layout = self.assertSameConversion("-n", prepare=garbage("8M"))
        self.assertEqual(layout[-1], (4 << 20, 4 << 20, True, False))
        self.assertSameConversion("-n", "-S", "0", prepare=garbage("8M"))
        self.assertSameConversion("-n", "-m", "3", "-W", prepare=garbage("4M"))
        # --target-is-zero: zero ranges are skipped, the garbage stays
        self.assertSameConversion("-n", "--target-is-zero", prepare=garbage("4M"))
        self.assertIn(b"\x11", self.read("a.img")[1 << 20:2 << 20])
        # a smaller target is refused
        garbage("1M")("a.img")
        garbage("1M")("b.img")
        ours = self.blkimg("convert", "-n", "-f", "raw", "src.img", "a.img")
        theirs = self.qemu_img("convert", "-n", "-f", "raw", "src.img", "b.img")
        self.assertSameErrors(ours, theirs)
        self.assertEqual(errors(ours, "blkimg: "), ["output file is smaller than input file"])
        self.assertEqual(self.read("a.img"), self.read("b.img"))
        # --target-image-opts names the existing target by options
        garbage("4M")("a.img")
        garbage("4M")("b.img")
        ours = self.blkimg("convert", "-n", "--target-image-opts", "-f", "raw", "src.img",
                           "driver=raw,file.filename=a.img")
        theirs = self.qemu_img("convert", "-n", "--target-image-opts", "-f", "raw", "src.img",
                               "driver=raw,file.filename=b.img")
        self.assertOk(ours)
        self.assertOk(theirs)
        self.assertEqual(self.read("a.img"), self.read("b.img"))
        self.assertEqual(self.read("a.img"), self.read("src.img"))

    def test_null_co_source_with_image_opts(self):
        self.assertSameConversion("--image-opts",
                                  sources=("driver=null-co,size=3M,read-zeroes=on",))
        self.assertSameConversion("--image-opts", "-S", "0",
                                  sources=("driver=null-co,size=1M,read-zeroes=on",))

    def test_progress(self):
        self.make_source(writes=["write -P 1 0 64k", "write -P 2 1M 8k", "write -P 3 3M 128k"])
        for args in [["-m", "1"], ["-S", "0", "-m", "1"], ["-q", "-m", "1"]]:
            with self.subTest(args=args):
                ours = self.blkimg("convert", "-p", *args, "src.img", "a.img")
                theirs = self.qemu_img("convert", "-p", *args, "src.img", "b.img")
                self.assertOk(ours)
                self.assertEqual(ours.out, theirs.out)
                if "-q" not in args:
                    self.assertIn("(100.00/100%)", ours.out)
        code, ours = read_pty([BLKIMG, "convert", "-p", "-m", "1", "src.img", "a.img"], self.dir)
        self.assertEqual(code, 0)
        _, theirs = read_pty(["qemu-img", "convert", "-p", "-m", "1", "src.img", "b.img"],
                             self.dir)
        self.assertEqual(ours, theirs)

    def test_o_help(self):
        self.make_source(size="1M")
        for args in [["-o", "help", "src.img", "x.img"], ["-o", "?", "src.img", "x.img"],
                     ["-o", "help"], ["-O", "raw", "-o", "preallocation=full,help", "src.img", "x.img"]]:
            with self.subTest(args=args):
                ours = self.blkimg("convert", *args)
                theirs = self.qemu_img("convert", *args)
                self.assertOk(ours)
                self.assertEqual(ours.out, theirs.out)
                self.assertIn("size=<size>", ours.out)
        self.assertFalse(os.path.exists(self.path("x.img")))

    def test_preallocation_option(self):
        self.make_source(size="1M", writes=["write -P 1 0 4k"])
        layout = self.assertSameConversion("-o", "preallocation=full")
        self.assertEqual(layout, [(0, 1 << 20, True, False)])
        self.assertSameConversion("-O", "raw", "-o", "size=4M")
        self.assertEqual(os.path.getsize(self.path("a.img")), 1 << 20)

    def test_errors_match(self):
        self.make_source(size="1M")
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", self.path("big.img"), "2M"))
        cases = [
            ["-m", "0", "src.img", "{}"], ["-m", "17", "src.img", "{}"], ["-m", "x", "src.img", "{}"],
            ["-c", "src.img", "{}"], ["-n", "-c", "src.img", "big.img"],
            ["-B", "base", "src.img", "{}"], ["-F", "raw", "src.img", "{}"],
            ["-c", "-B", "base", "src.img", "{}"],
            ["--target-is-zero", "src.img", "{}"],
            ["--target-image-opts", "src.img", "driver=raw,file.filename={}"],
            ["-S", "x", "src.img", "{}"], ["-S", "100", "src.img", "{}"],
            ["-S", "32M", "src.img", "{}"],
            ["-l", "snap", "src.img", "{}"], ["-O", "nosuch", "src.img", "{}"],
            ["-O", "nosuch", "nonexist.img", "{}"], ["-T", "bogus", "src.img", "{}"],
            ["-T", "bogus", "nonexist.img", "{}"],
            ["-o", "bogus=1", "src.img", "{}"], ["-B", "x", "-o", "bogus=1", "src.img", "{}"],
            ["-n", "-o", "preallocation=full", "src.img", "big.img"],
            ["nonexist.img", "{}"], ["-n", "src.img", "{}"], [], ["src.img"],
            ["--bitmaps", "src.img", "{}"],
        ]
        for case in cases:
            with self.subTest(case=case):
                ours = self.blkimg("convert", *[a.format("x.img") for a in case])
                theirs = self.qemu_img("convert", *[a.format("y.img") for a in case])
                self.assertNotEqual(theirs.code, 0)
                self.assertEqual(ours.code, theirs.code, f"{ours!r}\n{theirs!r}")
                self.assertEqual(errors(ours, "blkimg: "),
                                 [e.replace("y.img", "x.img") for e in errors(theirs, "qemu-img: ")])
                self.assertEqual(os.path.exists(self.path("x.img")),
                                 os.path.exists(self.path("y.img")))

    def test_bad_target_cache_checked_before_create(self):
        # qemu-img creates (truncates) the target before it looks at -t, so an existing
        # target loses its data; blkimg gives the same error with the target untouched.
        self.make_source(size="1M")
        for name in ("a.img", "b.img"):
            self.assertOk(self.qemu_img("create", "-q", "-f", "raw", name, "1M"))
            self.write_pattern(name, 0, "1M", "0x5a")
        ours = self.blkimg("convert", "-t", "bogus", "src.img", "a.img")
        theirs = self.qemu_img("convert", "-t", "bogus", "src.img", "b.img")
        self.assertSameErrors(ours, theirs)
        self.assertEqual(self.read("a.img"), b"\x5a" * (1 << 20))
        ours = self.blkimg("convert", "-t", "bogus", "src.img", "new.img")
        self.assertEqual(ours.code, 1)
        self.assertFalse(os.path.exists(self.path("new.img")))


if __name__ == "__main__":
    unittest.main()
