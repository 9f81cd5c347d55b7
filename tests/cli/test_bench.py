"""blkimg bench, side by side with qemu-img bench: the same header lines, the same errors, the
same bytes written (patterns, steps, wrap-around at the end of the image). Timings are only
matched by a regular expression, never compared."""
import re
import unittest

from clitest import CliTestCase, errors

TIMING = re.compile(r"^Run completed in \d+\.\d{3} seconds\.$")
MiB = 1024 * 1024


class BenchTest(CliTestCase):
    def twins(self, size=MiB):
        for name in ("ours.img", "theirs.img"):
            with open(self.path(name), "wb") as f:
                f.truncate(size)

    def run_both(self, *args):
        """Runs both tools, IMG naming each one's own file."""
        ours = self.blkimg("bench", *[a.replace("IMG", "ours.img") for a in args])
        theirs = self.qemu_img("bench", *[a.replace("IMG", "theirs.img") for a in args])
        return ours, theirs

    def assertSameRun(self, *args, ok=True):
        ours, theirs = self.run_both(*args)
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(ours.code == 0, ok, repr(ours))
        ours_lines, theirs_lines = ours.out.splitlines(), theirs.out.splitlines()
        if ok:
            self.assertRegex(ours_lines[-1], TIMING)
            self.assertRegex(theirs_lines[-1], TIMING)
            ours_lines, theirs_lines = ours_lines[:-1], theirs_lines[:-1]
        self.assertEqual(ours_lines, theirs_lines)
        self.assertEqual([l.replace("ours.img", "X") for l in errors(ours, "blkimg: ")],
                         [l.replace("theirs.img", "X") for l in errors(theirs, "qemu-img: ")])
        self.assertEqual(self.read("ours.img"), self.read("theirs.img"))
        return ours

    def test_headers(self):
        self.twins()
        cases = [
            ["-c", "10", "IMG"],
            ["-c", "10", "-f", "raw", "-w", "IMG"],
            ["-c", "10", "-w", "IMG"],  # probing warns before a write test
            ["-c", "10", "-w", "-f", "raw", "--flush-interval=3", "-d", "2", "IMG"],
            ["-c", "10", "-w", "-f", "raw", "--flush-interval=3", "-d", "2", "--no-drain", "IMG"],
            ["-c", "5", "-w", "-f", "raw", "--flush-interval=0", "IMG"],
            ["-c", "0", "IMG"],
            ["-c", "3", "-s", "0", "IMG"],
            ["-c", "3", "-S", "0", "-s", "1.5k", "IMG"],
            ["-c", "7", "-d", "3", "-o", "1000", "-s", "512", "-S", "8192", "IMG"],
            ["-c", "0x10", "-q", "IMG"],
            ["-c", "+5", "-U", "IMG"],
            ["-c", "3", "-n", "-t", "none", "IMG"],
            ["-c", "3", "-i", "threads", "-t", "writethrough", "IMG"],
            ["-c", "3", "-i", "io_uring", "-t", "directsync", "-w", "-f", "raw", "IMG"],
            ["-c", "3", "-i", "native", "-t", "off", "IMG"],
            ["-c", "3", "-t", "unsafe", "-w", "-f", "raw", "--pattern=3", "IMG"],
        ]
        for case in cases:
            with self.subTest(case=case):
                ours = self.assertSameRun(*case)
                self.assertTrue(ours.out.startswith("Sending "), ours.out)
        ours = self.blkimg("bench", "-c", "3", "-w", "-f", "raw", "--flush-interval=64",
                           "ours.img")
        self.assertEqual(ours.out.splitlines()[:2], [
            "Sending 3 write requests, 4096 bytes each, 64 in parallel "
            "(starting at offset 0, step size 4096)",
            "Sending flush every 64 requests"])

    def test_image_opts(self):
        self.twins()
        self.assertSameRun("-c", "20", "--image-opts", "driver=null-co,size=1M")
        self.assertSameRun("-c", "20", "-w", "--image-opts", "driver=raw,file.filename=IMG")

    def test_pattern_is_written(self):
        self.twins()
        self.assertSameRun("-c", "64", "-d", "8", "-w", "-f", "raw", "--pattern=0x5a",
                           "-S", "8k", "IMG")
        # every other 4k block from 0 to 512k holds the pattern, the rest is untouched
        for offset in (0, 8192, 63 * 8192):
            self.assertOk(self.qemu_io("-f", "raw", "-c", f"read -P 0x5a {offset} 4k", "ours.img"))
            self.assertOk(self.qemu_io("-f", "raw", "-c", f"read -P 0 {offset + 4096} 4k",
                                       "ours.img"))
        self.assertOk(self.qemu_io("-f", "raw", "-c", "read -P 0 512k 512k", "ours.img"))
        bad = self.qemu_io("-f", "raw", "-c", "read -P 0x5b 0 4k", "ours.img")
        self.assertIn("Pattern verification failed", bad.out)

    def test_offsets_wrap_around(self):
        # 300 requests of 1000 bytes every 12 KiB from offset 5 go round a 1 MiB image
        # several times; writes with a flush interval land where qemu-img's land
        self.twins()
        self.assertSameRun("-c", "300", "-d", "4", "-w", "-f", "raw", "--pattern=9", "-S", "12288",
                           "-s", "1000", "-o", "5", "--flush-interval=50", "IMG")
        self.assertSameRun("-c", "300", "-w", "-f", "raw", "--pattern=7", "-S", "3M", "-o", "4k",
                           "--flush-interval=64", "--no-drain", "IMG")
        data = self.read("ours.img")
        self.assertEqual(data[5:1005], b"\x09" * 1000)
        self.assertEqual(data[4096:8192], b"\x07" * 4096)

    def test_failed_requests(self):
        self.twins()
        for case in [["-c", "3", "-o", "2M", "IMG"], ["-c", "3", "-s", "2M", "IMG"],
                     ["-c", "3", "-o", "1046528", "-S", "3000", "IMG"]]:
            with self.subTest(case=case):
                ours, theirs = self.run_both(*case)
                self.assertEqual(ours.code, 1, repr(ours))
                self.assertEqual(theirs.code, 1, repr(theirs))
                self.assertEqual(ours.out, theirs.out)
                # qemu-img may repeat the message for requests still in flight
                self.assertEqual(errors(ours, "blkimg: "), ["Failed request: Input/output error"])
                self.assertIn("Failed request: Input/output error", theirs.err)

    def test_errors_match(self):
        self.twins()
        cases = [
            ["-c", "10", "--flush-interval=3", "IMG"],
            ["-c", "10", "-w", "-f", "raw", "--flush-interval=3", "IMG"],
            ["-c", "10", "-w", "-d", "8", "--flush-interval=7", "IMG"],
            ["--flush-interval=3"],
            ["-c", "-1", "IMG"], ["-c", "x", "IMG"], ["-c", "2147483648", "IMG"], ["-c", "5 ", "IMG"],
            ["-d", "x", "IMG"], ["-d", "-1", "IMG"], ["-d", "2147483648", "IMG"],
            ["-s", "x", "IMG"], ["-s", "2G", "IMG"], ["-S", "x", "IMG"], ["-S", "3G", "IMG"],
            ["-o", "x", "IMG"], ["-o", "8E", "IMG"], ["-o", "-1", "IMG"],
            ["--pattern=256", "IMG"], ["--pattern=x", "IMG"], ["--pattern=-1", "IMG"],
            ["--flush-interval=x", "IMG"], ["-w", "--flush-interval=-1", "IMG"],
            ["-i", "foo", "IMG"], ["-t", "foo", "IMG"],
            ["-c", "3", "-n", "IMG"], ["-c", "3", "-i", "native", "IMG"],
            ["-c", "3", "-i", "threads", "-n", "-t", "writeback", "IMG"],
            ["-c", "3", "-w", "-U", "IMG"],
            ["-c", "3"], ["-c", "3", "IMG", "IMG"], ["-c", "3", "nosuch"],
            ["-c", "3", "-f", "raw", "--image-opts", "driver=null-co"],
            ["-c", "3", "-f", "bogus", "IMG"],
        ]
        for case in cases:
            with self.subTest(case=case):
                self.assertSameRun(*case, ok=False)


if __name__ == "__main__":
    unittest.main()
