"""blkimg io, side by side with qemu-io: the same command lists on copies of the same raw
image must print the same lines (timings aside), fail the same way and leave the same bytes."""
import fcntl
import os
import re
import subprocess
import time
import unittest

from clitest import BLKIMG, CliTestCase

# "4 KiB, 1 ops; 00.00 sec (41.485 MiB/sec and 10620.2209 ops/sec)"
STATS = re.compile(r"^(?P<bytes>\d+(?:\.\d+)? (?:bytes|KiB|MiB|GiB|TiB|PiB|EiB)), (?P<ops>\d+) ops; "
                   r"(?:\d\d\.\d\d sec|\d\d:\d\d\.\d\d|\d+:\d\d:\d\d\.\d\d) "
                   r"\(\d+(?:\.\d+)? (?:bytes|KiB|MiB|GiB|TiB|PiB|EiB)/sec and "
                   r"(?:\d+\.\d{4}|inf) ops/sec\)$")
# -C: "4096,1,0:00:00.00,72068267.793,17594.792"
CSV = re.compile(r"^(?P<bytes>\d+),(?P<ops>\d+),\d+:\d\d:\d\d\.\d\d,\d+\.\d{3},\d+\.\d{3}$")


def normalise(text, tool):
    """Output lines with timings replaced by what they must still agree on, and the tool's
    own name (prompt, message prefix) neutralised."""
    lines = []
    for line in text.splitlines():
        for name in (f"{tool}> ", f"{tool}: "):
            line = line.replace(name, name.replace(tool, "TOOL"))
        m = STATS.match(line) or CSV.match(line)
        if m:
            line = f"<stats {m['bytes']} {m['ops']} ops>"
        lines.append(line)
    return lines


class IoTestCase(CliTestCase):
    SIZE = "1M"

    def setUp(self):
        super().setUp()
        # made the same way (not copied) so that allocation agrees too
        for name in ("ours.img", "theirs.img"):
            self.assertOk(self.qemu_img("create", "-q", "-f", "raw", name, self.SIZE))
            self.write_pattern(name, 0, 4096, 0x41)
            self.write_pattern(name, 8192, 100, 0x0a)

    def both(self, commands, opts=("-f", "raw"), input=None):
        argv = list(opts)
        for c in commands:
            argv += ["-c", c]
        ours = self.blkimg("io", *argv, "ours.img", input=input)
        theirs = self.qemu_io(*argv, "theirs.img", input=input)
        return ours, theirs

    def assertSame(self, ours, theirs, sort=False):
        """Same exit status, same normalised stdout and stderr."""
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        o_out, t_out = normalise(ours.out, "blkimg"), normalise(theirs.out, "qemu-io")
        if sort:
            o_out, t_out = sorted(o_out), sorted(t_out)
        self.assertEqual(o_out, t_out)
        self.assertEqual(normalise(ours.err, "blkimg"), normalise(theirs.err, "qemu-io"))

    def assertSameImages(self):
        self.assertEqual(self.read("ours.img"), self.read("theirs.img"))

    def compare(self, commands, **kw):
        ours, theirs = self.both(commands, **kw)
        self.assertSame(ours, theirs)
        self.assertSameImages()
        return ours, theirs


class ReadWriteTest(IoTestCase):
    def test_read_write_session(self):
        ours, _ = self.compare([
            "write -P 0x55 4k 4k", "read -P 0x55 4k 4k", "read -C 0 4k", "read -q 0 4k",
            "write 1000 1536", "read -P 0xcd 1000 1.5k", "write -f -P 7 64k 512",
            "write -z 70k 10k", "write -z -u 80k 4k", "writev -P 3 200k 1k 512 3",
            "readv -P 3 200k 1k 515", "readv -v 8190 4 4", "write -s /dev/null 0 1",
            "write -C 0x100 0x10", "read 010 1", "read 0.5k 1", "read 1024b 1",
            "r 0 1", "w -P 9 12k 1", "read 0 0", "discard 0 4k", "discard -C 4k 4k", "flush",
            "length", "info", "map", "alloc 0 2M", "alloc 1M", "alloc 4k",
        ])
        self.assertEqual(ours.code, 1)  # the empty pattern file made one command fail
        self.assertIn("read 4096/4096 bytes at offset 4096", ours.out)
        self.assertIn("1 MiB", ours.out.splitlines())

    def test_timing_lines_are_qemu_io_format(self):
        ours = self.blkimg("io", "-f", "raw", "-c", "read 0 100000", "-c", "read -C 0 1536",
                           "ours.img")
        self.assertOk(ours)
        lines = ours.out.splitlines()
        self.assertEqual(lines[0], "read 100000/100000 bytes at offset 0")
        m = STATS.match(lines[1])
        self.assertIsNotNone(m, lines[1])
        self.assertEqual(m["bytes"], "97.656 KiB")
        m = CSV.match(lines[2])
        self.assertIsNotNone(m, lines[2])
        self.assertEqual((m["bytes"], m["ops"]), ("1536", "1"))

    def test_pattern_mismatch(self):
        ours, theirs = self.compare(["read -P 0x41 0 4k", "read -P 0x42 0 4k",
                                     "read -P 0x41 -s 4 -l 8 4092 16",
                                     "read -P 0 -s 8 8184 16", "read -P 0 -s 4 -l 20 0 16"])
        self.assertEqual(ours.code, 1)
        self.assertIn("Pattern verification failed at offset 0, 4096 bytes", ours.out)
        self.assertIn("Pattern verification failed at offset 4096, 8 bytes", ours.out)
        self.assertIn("pattern verification range exceeds end of read data", ours.out)
        # a passing verification alone exits 0
        ours = self.blkimg("io", "-f", "raw", "-c", "read -P 0x41 0 4k", "ours.img")
        self.assertOk(ours)

    def test_hex_dump(self):
        self.compare(["write -P 0x7e 9000 3", "read -v 0 40", "read -v 8180 40", "read -v 9000 3",
                      "readv -v 4090 3 5 9"])
        ours = self.blkimg("io", "-f", "raw", "-c", "read -v 4088 20", "ours.img")
        self.assertEqual(ours.out.splitlines()[:2], [
            "00000ff8:  41 41 41 41 41 41 41 41 00 00 00 00 00 00 00 00  AAAAAAAA........",
            "00001008:  00 00 00 00  ....",
        ])

    def test_truncate_and_map(self):
        self.compare(["truncate 3M", "length", "map", "truncate -m falloc 4M", "length",
                      "truncate 100k", "map", "read 99k 1k", "read 100k 1", "truncate -m bogus 1M",
                      "truncate"])
        self.assertEqual(os.path.getsize(self.path("ours.img")), 100 * 1024)

    def assertSameAllocation(self):
        ours = self.qemu_img("map", "--output=json", "-f", "raw", "ours.img").json()
        theirs = self.qemu_img("map", "--output=json", "-f", "raw", "theirs.img").json()
        self.assertEqual(ours, theirs)

    def test_unmap_with_discard_option(self):
        # qemu-io's default is discard=unmap: discards and write -z -u punch holes
        for opts in (("-f", "raw"), ("-f", "raw", "-d", "unmap"), ("-f", "raw", "-d", "ignore")):
            with self.subTest(opts=opts):
                self.compare(["write -P 0x41 0 192k", "discard 0 64k", "write -z -u 64k 64k",
                              "read -P 0 64k 64k", "discard 256k 64k"], opts=opts)
                if "ignore" not in opts:
                    self.assertSameAllocation()
                self.assertEqual(self.read("ours.img")[:1], b"A" if "ignore" in opts else b"\0")

    def test_zeroes_unmap_with_discard_ignore_allocation(self):
        # With discard=ignore, "write -z -u" still punches a hole (QEMU's blk layer passes
        # may-unmap through; the discard option rules discards only).
        self.compare(["write -z -u 0 64k"], opts=("-f", "raw", "-d", "ignore"))
        self.assertSameAllocation()

    def test_cache_and_aio_modes(self):
        for opts in (("-n",), ("-t", "writethrough"), ("-i", "threads"), ("-t", "none", "-m")):
            with self.subTest(opts=opts):
                self.compare(["write -P 0x11 0 64k", "read -P 0x11 0 64k"],
                             opts=("-f", "raw", *opts))


class AioTest(IoTestCase):
    def test_aio_in_sequence(self):
        # one request in flight at a time: qemu-io's output order is then fixed
        self.compare(["aio_write -P 0x55 0 4k", "aio_flush", "aio_read -P 0x55 0 4k",
                      "aio_flush", "aio_write -P 0x66 4k 1k 1k 2k", "aio_flush",
                      "read -P 0x66 4k 4k", "aio_read -v 8190 4", "aio_flush",
                      "aio_read -P 0x99 0 512", "aio_flush",
                      "aio_write -z 0 512", "aio_flush", "aio_read -q 0 1", "aio_write -C 0 1",
                      "aio_flush", "aio_read 2M 1", "aio_flush", "aio_read -i 0 1"])

    def test_aio_many_in_flight(self):
        cmds = [f"aio_write -P {i} {i * 4096} 4k" for i in range(1, 9)] + ["aio_flush"]
        cmds += [f"aio_read -P {i} {i * 4096} 4k" for i in range(1, 9)] + ["aio_flush"]
        ours, theirs = self.both(cmds)
        # completion order is the event loop's business: compare the lines as sets
        self.assertSame(ours, theirs, sort=True)
        self.assertNotIn("Pattern verification failed", ours.out)
        self.assertSameImages()

    def test_aio_completes_before_exit(self):
        ours, _ = self.compare(["aio_write -P 0x77 16k 64k"])
        self.assertIn("wrote 65536/65536 bytes at offset 16384", ours.out)


class ErrorTest(IoTestCase):
    def test_command_errors(self):
        cases = [
            ["read 1M 1"], ["write 1M 1"], ["discard 2M 1"], ["bogus"], ["read 0"], ["read -P"],
            ["read -Z 0 1"], ["read x 1"], ["read 0 1x"], ["read 1.5 1"], ["read 0x 1"],
            ["read 99999999999999999999 1"], ["read 8E 1"], ["read 0 3G"], ["write 0 3G"],
            ["discard 0 3G"], ["read -P 0x100 0 1"], ["read -P foo 0 1"], ["read -s 4 0 16"],
            ["read 0 1 2"], ["length 1"], ["truncate 1 2 3 4"], ["truncate -m"],
            ["write -u 0 1"], ["write -n 0 1"], ["write -z -P 1 0 1"], ["write -c 0 512"],
            ["write -b 0 512"], ["read -b 1 512"], ["writev 0 x"], ["writev 0 3G"],
            ["aio_write -z 0 1 1"], ["aio_write -u 0 1"], ["sleep x"], ["read -1 5"],
            ["help bogus"], ["read -P 1"], ["q", "length"], ["quit", "read 2M 1"],
        ]
        for case in cases:
            with self.subTest(case=case):
                self.compare(case)

    def test_write_flag_conflicts(self):
        # qemu-io checks write's flags in a fixed order; the first failing check speaks
        for case in ["write -bz 0 512", "write -bcz 0 512", "write -bzu 0 512", "write -bzf 0 512",
                     "write -b -f 0 512", "write -c -f 0 512", "write -bfu 0 512",
                     "write -u -n 0 1", "write -fun 0 512", "write -bz -P 1 0 512",
                     "write -u -z -P 1 0 1"]:
            with self.subTest(case=case):
                self.compare([case])

    def test_vmstate_and_compressed_writes(self):
        # -b/-c need whole sectors (even with -z), then the source file is read, then the
        # request is refused: out of range (EIO) before unsupported for compressed writes
        for case in ["write -c 1 512", "write -c 0 511", "write -cz 0 511", "write -cz 0 512",
                     "write -c 0 512", "write -c 0 0", "write -c 2M 512", "write -c 1048064 1024",
                     "write -c -s nosuch 2M 512", "write -c -s /dev/null 0 512",
                     "write -b -s nosuch 0 512", "write -b -s nosuch 0 511", "write -b 2M 512",
                     "write -b 0 3G", "read -b 2M 512"]:
            with self.subTest(case=case):
                self.compare([case])

    def test_quiet_suppresses_dump(self):
        self.compare(["read -v -q 0 16", "readv -v -q 0 8 8", "read -q -v -C 0 16",
                      "read -v -q -P 0x42 0 16", "aio_read -v -q -P 0x42 0 16", "aio_flush",
                      "aio_read -q -v 0 16"])

    def test_other_names_as_typed(self):
        # help and argument-count messages name the command as it was typed
        for case in [["help q"], ["help ?"], ["help r"], ["help w"], ["r 0"], ["w 0"],
                     ["q 1"], ["quit 1 2", "length"], ["? a b"]]:
            with self.subTest(case=case):
                self.compare(case)

    def test_words_are_separated_by_spaces_only(self):
        # a tab or a carriage return is part of a word, as in qemu-io
        self.compare(["read\t0 1", "read 0 1\t", "length\r", "read  0   1", " read 0 1 ", "",
                      "   ", "length"])

    def test_truncate_ignores_extra_operands(self):
        self.compare(["truncate 512k 2 3", "length", "truncate -m falloc 768k x", "length"])

    def test_aio_invalid_request_comes_first(self):
        self.compare(["aio_write -i -z 0 1 2", "aio_write -i -u 0 1", "aio_read -i 0 x"])

    def test_help(self):
        for topic in ("read", "write", "discard", "quit", "map", "truncate", "aio_read"):
            with self.subTest(topic=topic):
                ours, theirs = self.both([f"help {topic}"])
                self.assertEqual(ours.out, theirs.out)
        ours, theirs = self.both(["help"])
        self.assertOk(ours)
        ours_lines = ours.out.splitlines()
        self.assertTrue(set(ours_lines) <= set(theirs.out.splitlines()), ours.out)
        self.assertGreaterEqual(len(ours_lines), 18)

    def test_read_only_refuses_writes(self):
        before = self.read("ours.img")
        ours, _ = self.compare(["write 0 1", "write -z 0 1", "discard 0 1", "truncate 2M",
                                "aio_write 0 1", "writev 0 1", "write", "read -P 0x41 0 4k",
                                "flush"], opts=("-r", "-f", "raw"))
        self.assertEqual(ours.code, 1)
        self.assertEqual(self.read("ours.img"), before)
        self.assertIn("blkimg: Block node is read-only", ours.err.splitlines())

    def test_open_errors(self):
        for opts, name in [(("-f", "raw"), "nosuch.img"), (("-c", "length"), "nosuch.img"),
                           (("-U", "-f", "raw"), "ours.img"), (("-d", "bogus"), "ours.img"),
                           (("-t", "bogus"), "ours.img"), (("-i", "bogus"), "ours.img")]:
            with self.subTest(opts=opts):
                ours = self.blkimg("io", *opts, "-c", "length", name)
                theirs = self.qemu_io(*opts, "-c", "length", name.replace("ours", "theirs"))
                self.assertEqual(ours.code, 1)
                self.assertEqual(normalise(ours.err.replace("ours", "X"), "blkimg"),
                                 normalise(theirs.err.replace("theirs", "X"), "qemu-io"))
        ours = self.blkimg("io", "-U", "-r", "-f", "raw", "-c", "read -P 0x41 0 1", "ours.img")
        self.assertOk(ours)

    def test_no_file(self):
        ours = self.blkimg("io", "-c", "read 0 1", "-c", "length", "-c", "help quit")
        theirs = self.qemu_io("-c", "read 0 1", "-c", "length", "-c", "help quit")
        self.assertSame(ours, theirs)


class InteractiveTest(IoTestCase):
    def test_stdin_commands(self):
        script = ("write -P 0x33 0 4k\nread -P 0x33 0 4k\nbogus\n\n  length  \nread 0\n"
                  "aio_write -P 5 8k 1k\nlength\nquit\nwrite 0 1M\n")
        ours, theirs = self.both([], input=script)
        self.assertSame(ours, theirs)
        self.assertSameImages()
        self.assertEqual(ours.out.count("blkimg> "), 9)

    def test_stdin_eof_without_quit(self):
        ours, theirs = self.both([], input="read -P 0x41 0 4k\nlength")
        self.assertSame(ours, theirs)
        self.assertEqual(ours.code, 0)


class LockTest(IoTestCase):
    def test_conflict_with_unshared_write(self):
        # a holder of the "unshare write" byte (as a guest device's lock would be)
        fd = os.open(self.path("ours.img"), os.O_RDONLY)
        fd2 = os.open(self.path("theirs.img"), os.O_RDONLY)
        try:
            for f in (fd, fd2):
                fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 201, os.SEEK_SET)
            ours, theirs = self.both(["write 0 1"])
            ours.err = ours.err.replace("ours.img", "X")
            theirs.err = theirs.err.replace("theirs.img", "X")
            self.assertSame(ours, theirs)
            self.assertEqual(ours.code, 1)
            self.assertIn('Failed to get "write" lock', ours.err)
            ours, theirs = self.both(["read -P 0x41 0 1"], opts=("-r", "-f", "raw"))
            self.assertSame(ours, theirs)
            self.assertOk(ours)
        finally:
            os.close(fd)
            os.close(fd2)

    def hold(self, argv):
        """Starts a tool in interactive mode on ours.img, kept alive through its stdin."""
        proc = subprocess.Popen(argv + ["-f", "raw", self.path("ours.img")],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.stdin.close)
        time.sleep(0.5)
        self.assertIsNone(proc.poll())
        return proc

    def test_coexists_with_running_qemu_io(self):
        # qemu-io shares every permission; so does blkimg io, in both directions
        self.hold(["qemu-io"])
        ours = self.blkimg("io", "-f", "raw", "-c", "write -P 0x21 0 1", "ours.img")
        self.assertOk(ours)
        self.hold([BLKIMG, "io"])
        theirs = self.qemu_io("-f", "raw", "-c", "read -P 0x21 0 1", "ours.img")
        self.assertOk(theirs)


if __name__ == "__main__":
    unittest.main()
