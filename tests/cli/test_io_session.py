"""blkimg io's session commands side by side with qemu-io's: the ones that end the process
(abort, sigraise), the blkdebug breakpoint commands on images without blkdebug, and open,
close and reopen. Same command lists on twin raw images: same exit status, same stdout
(timings aside), same stderr (tool prefix aside), same bytes on disk."""
import os
import signal
import subprocess
import time
import unittest

from clitest import BLKIMG
from test_io import IoTestCase


class ProcessEndTest(IoTestCase):
    def test_abort(self):
        # qemu-io calls abort(3): SIGABRT, and stdout still buffered for the pipe is lost;
        # the write before it reached the file
        ours, theirs = self.compare(["write -P 0x55 0 4k", "abort", "write -P 0x66 0 4k"])
        self.assertEqual(ours.code, -signal.SIGABRT)
        self.assertEqual(self.read("ours.img")[:4096], b"\x55" * 4096)

    def test_abort_exit_status_from_a_shell(self):
        for tool in ([BLKIMG, "io"], ["qemu-io"]):
            with self.subTest(tool=tool[0]):
                r = subprocess.run(["sh", "-c", '"$@" 2>/dev/null; echo $?', "sh", *tool,
                                    "-c", "abort"], capture_output=True, text=True)
                self.assertEqual(r.stdout, "134\n")

    def test_sigraise(self):
        # stdout is flushed before the signal; signals qemu-io blocks (SIGBUS, SIGUSR1,
        # SIGALRM, SIGIO) or ignores (SIGPIPE), default-ignored ones, the C library's own (32,
        # 33) and NSIG itself leave it running
        for sig in (15, 9, 1, 6, 10, 14, 13, 7, 29, 17, 28, 32, 33, 34, 64, 65, 0):
            with self.subTest(sig=sig):
                self.compare(["help quit", f"write -P {sig} 0 512", f"sigraise {sig}",
                              "help q", f"write -P {sig} 512 512"])

    def test_sigraise_arguments(self):
        for case in (["sigraise x"], ["sigraise 66"], ["sigraise 1k"], ["sigraise -1"],
                     ["sigraise 1.5"], ["sigraise 0x11"], ["sigraise 010"], ["sigraise"],
                     ["sigraise 1 2"], ["abort x"], ["sigraise -- 15"]):
            with self.subTest(case=case):
                self.compare(case + ["help quit"])

    def test_closed_stdout_is_not_fatal(self):
        # qemu-io ignores SIGPIPE: a reader that goes away does not kill it
        for tool in ([BLKIMG, "io"], ["qemu-io"]):
            with self.subTest(tool=tool[0]):
                proc = subprocess.Popen(tool + ["-f", "raw", "-c", "read -v 0 1M",
                                                self.path("ours.img")],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                proc.stdout.readline()
                proc.stdout.close()
                self.assertEqual(proc.wait(timeout=60), 0)

    def test_help(self):
        for topic in ("abort", "sigraise"):
            with self.subTest(topic=topic):
                self.compare([f"help {topic}"])


class BreakpointTest(IoTestCase):
    """libblock has no blkdebug filter: every image is one without blkdebug, on which qemu-io's
    breakpoint commands fail with ENOTSUP and wait_break waits forever."""

    def test_not_supported(self):
        self.compare(["break write_aio A", "break bogus_event B", "remove_break A", "resume A",
                      "write -P 0x31 0 512", "help quit"])

    def test_argument_counts_and_no_file(self):
        for case in (["break"], ["break write_aio"], ["break a b c"], ["break -x a b"],
                     ["remove_break"], ["resume"], ["wait_break"], ["wait_break a b"],
                     ["resume a b"]):
            with self.subTest(case=case):
                self.compare(case + ["help quit"])
        ours = self.blkimg("io", "-c", "break a b", "-c", "remove_break a", "-c", "resume a",
                           "-c", "wait_break a", "-c", "help quit")
        theirs = self.qemu_io("-c", "break a b", "-c", "remove_break a", "-c", "resume a",
                              "-c", "wait_break a", "-c", "help quit")
        self.assertSame(ours, theirs)

    def test_help(self):
        for topic in ("break", "remove_break", "resume", "wait_break"):
            with self.subTest(topic=topic):
                self.compare([f"help {topic}"])

    def test_wait_break_waits_forever(self):
        # the aio write submitted before still completes (the loop runs), then nothing ends
        # the wait but a signal; the output still buffered for the pipe dies with it
        procs = []
        for tool, name in (([BLKIMG, "io"], "ours.img"), (["qemu-io"], "theirs.img")):
            procs.append(subprocess.Popen(
                tool + ["-f", "raw", "-c", "aio_write -P 0x77 64k 4k", "-c", "wait_break A",
                        "-c", "write -P 0x78 64k 4k", self.path(name)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        try:
            deadline = time.monotonic() + 30
            for name in ("ours.img", "theirs.img"):
                while self.read(name)[64 * 1024:68 * 1024] != b"\x77" * 4096:
                    self.assertLess(time.monotonic(), deadline, f"the aio write to {name}")
                    time.sleep(0.05)
            time.sleep(0.5)
            for p in procs:
                self.assertIsNone(p.poll())
        finally:
            for p in procs:
                p.terminate()
        outs = [p.communicate(timeout=30) for p in procs]
        self.assertEqual([p.returncode for p in procs], [-signal.SIGTERM] * 2)
        self.assertEqual(outs[0], outs[1])
        self.assertSameImages()


if __name__ == "__main__":
    unittest.main()
