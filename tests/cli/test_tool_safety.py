"""What blkimg does to files and other users, side by side with qemu-img: SIGUSR1 asks for
progress instead of killing a copy, images are shared with other users as qemu-img shares
them (its lock bytes, not the library's stricter default), and nothing is truncated or created
over an existing file before every check of the operation has passed."""
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import time
import unittest
from contextlib import contextmanager

from clitest import BLKIMG, CliTestCase, errors

# QEMU's lock bytes: 100 + permission bit held, 200 + bit that others may not take.
PERM_BITS = {"consistent-read": 0, "write": 1, "write-unchanged": 2, "resize": 3}


@contextmanager
def ofd_locks(path, offsets):
    """Holds shared OFD locks on the given bytes of `path`, as a QEMU process would."""
    fd = os.open(path, os.O_RDWR)
    try:
        for off in offsets:
            # struct flock: l_type, l_whence, l_start, l_len, l_pid
            lk = struct.pack("hhqqi", fcntl.F_RDLCK, os.SEEK_SET, off, 1, 0)
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lk)
        yield
    finally:
        os.close(fd)


def held_lock_bytes(path):
    """The lock bytes (offsets) that some process holds on `path`, from /proc/locks."""
    ino = os.stat(path).st_ino
    held = set()
    with open("/proc/locks") as f:
        for line in f:
            m = re.search(r":(\d+) (\d+) (\d+|EOF)$", line.strip())
            if m and int(m.group(1)) == ino:
                start, end = int(m.group(2)), m.group(3)
                end = start if end == "EOF" else int(end)
                held.update(range(start, end + 1))
    return held


class SignalTest(CliTestCase):
    """qemu-img installs a SIGUSR1 handler in convert and compare: the signal makes it print
    its progress once (on stderr without -p) and it carries on."""

    def make_big(self, name):
        with open(self.path(name), "wb") as f:
            f.write(os.urandom(192 << 20))

    def signal_until_done(self, argv):
        proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # Signals only once the handler is in place (SigCgt), as a user would after start-up.
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", f.read(), re.M).group(1), 16)
            except (OSError, AttributeError):
                break
            if caught & (1 << (signal.SIGUSR1 - 1)):
                break
            time.sleep(0.001)
        sent = 0
        while proc.poll() is None:
            try:
                proc.send_signal(signal.SIGUSR1)
                sent += 1
            except ProcessLookupError:
                break
            time.sleep(0.005)
        out, err = proc.communicate()
        return proc.returncode, out, err, sent

    def check_progress_lines(self, err):
        for line in err.splitlines():
            self.assertRegex(line, r"^    \(\d+\.\d\d/100%\)$")

    def test_sigusr1_during_convert(self):
        self.make_big("src.img")
        for tool, prefix in ((BLKIMG, "blkimg"), ("qemu-img", "qemu-img")):
            with self.subTest(tool=tool):
                target = f"{prefix}.img"
                code, out, err, sent = self.signal_until_done(
                    [tool, "convert", "-f", "raw", "-O", "raw", "src.img", target])
                self.assertGreater(sent, 0)
                self.assertEqual(code, 0, err)
                self.assertEqual(out, "")
                self.check_progress_lines(err)
                self.assertEqual(self.read(target), self.read("src.img"))

    def test_sigusr1_during_compare(self):
        self.make_big("a.img")
        self.assertOk(self.qemu_img("convert", "-f", "raw", "-O", "raw", "a.img", "b.img"))
        for tool in (BLKIMG, "qemu-img"):
            with self.subTest(tool=tool):
                code, out, err, sent = self.signal_until_done([tool, "compare", "a.img", "b.img"])
                self.assertGreater(sent, 0)
                self.assertEqual(code, 0, err)
                self.assertEqual(out, "Images are identical.\n")
                self.check_progress_lines(err)


class SharingTest(CliTestCase):
    """While qemu-io holds an image read-write (it takes lock bytes 100 and 101 and shares
    everything), qemu-img's reading and writing subcommands work on it; blkimg's too."""

    def setUp(self):
        super().setUp()
        for name in ("a.img", "b.img"):
            self.assertOk(self.qemu_img("create", "-q", "-f", "raw", name, "4M"))
            self.write_pattern(name, 0, "1M", "0x11")
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "src.img", "4M"))
        self.write_pattern("src.img", 0, "64k", "0x22")

    def both_while_held(self, args_for):
        """Runs the command on a.img (ours) and b.img (qemu-img's), each held by qemu-io."""
        results = []
        for tool, name in ((self.blkimg, "a.img"), (self.qemu_img, "b.img")):
            with self.held_by_qemu_io(name, "raw"):
                results.append(tool(*args_for(name)))
        ours, theirs = results
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))
        return ours, theirs

    def test_commands_work_beside_a_qemu_io_writer(self):
        cases = {
            "map": lambda n: ["map", "-f", "raw", n],
            "compare": lambda n: ["compare", "-f", "raw", "-F", "raw", n, "src.img"],
            "bench": lambda n: ["bench", "-f", "raw", "-c", "100", n],
            "bench -w": lambda n: ["bench", "-f", "raw", "-w", "-c", "100", n],
            "dd": lambda n: ["dd", "-f", "raw", f"if={n}", f"of=dd-{n}", "bs=64k", "count=2"],
            "resize": lambda n: ["resize", "-f", "raw", n, "8M"],
            "convert -n": lambda n: ["convert", "-n", "-f", "raw", "-O", "raw", "src.img", n],
            "convert": lambda n: ["convert", "-f", "raw", "-O", "raw", "src.img", n],
        }
        for what, args in cases.items():
            with self.subTest(what=what):
                ours, theirs = self.both_while_held(args)
                self.assertEqual(ours.code, 0 if what != "compare" else 1, repr(ours))
        self.assertEqual(self.read("a.img"), self.read("b.img"))

    def test_read_only_io_takes_no_unshare_bytes(self):
        # `io -r` (like `qemu-io -r`) lets `resize` through.
        for io, resize, name in ((BLKIMG, BLKIMG, "a.img"), ("qemu-io", "qemu-img", "b.img")):
            argv = [io] + (["io"] if io == BLKIMG else []) + ["-r", "-f", "raw", name]
            holder = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                # The prompt says the image is open with all its locks taken.
                prompt = b"blkimg> " if io == BLKIMG else b"qemu-io> "
                seen, deadline = b"", time.monotonic() + 60
                while prompt not in seen:
                    ready, _, _ = select.select([holder.stdout], [], [],
                                                max(deadline - time.monotonic(), 0))
                    chunk = os.read(holder.stdout.fileno(), 4096) if ready else b""
                    self.assertTrue(chunk, f"{io} did not open {name}: {seen!r}")
                    seen += chunk
                held = held_lock_bytes(self.path(name))
                self.assertEqual(held, {100}, f"{io}: {sorted(held)}")
                r = subprocess.run([resize, "resize", "-f", "raw", name, "8M"], cwd=self.dir,
                                   capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
            finally:
                holder.stdin.close()
                holder.wait()
                holder.stdout.close()

    def test_convert_sources_are_protected_like_qemu_img(self):
        # qemu-img keeps others from writing or resizing its sources while it copies them
        # (lock bytes 201 and 203): a self-conversion fails on the lock and loses nothing.
        for tool, name in ((self.blkimg, "a.img"), (self.qemu_img, "b.img")):
            before = self.read(name)
            r = tool("convert", "-f", "raw", "-O", "raw", name, name)
            self.assertEqual(r.code, 1)
            self.assertIn('Failed to get "write" lock', r.err)
            self.assertEqual(self.read(name), before)


class NothingLostTest(CliTestCase):
    """Checks before destruction: a target that some process protects, or that the command
    cannot open as asked, keeps its contents."""

    def setUp(self):
        super().setUp()
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "src.img", "1M"))
        self.write_pattern("src.img", 0, "64k", "0x22")
        for name in ("a.img", "b.img"):
            self.assertOk(self.qemu_img("create", "-q", "-f", "raw", name, "2M"))
            self.write_pattern(name, 0, "2M", "0x5a")
        self.original = self.read("a.img")

    def test_target_locked_against_writers(self):
        # Another process that unshares "write" (byte 201): create is refused on its lock
        # before the file is truncated, by both tools with the same message.
        for tool, name in ((self.blkimg, "a.img"), (self.qemu_img, "b.img")):
            with ofd_locks(self.path(name), [100, 201]):
                for args in (["convert", "-f", "raw", "-O", "raw", "src.img", name],
                             ["dd", "-f", "raw", "if=src.img", f"of={name}"],
                             ["create", "-f", "raw", name, "1M"]):
                    with self.subTest(tool=name, args=args):
                        r = tool(*args)
                        self.assertEqual(r.code, 1)
                        self.assertIn('Failed to get "write" lock', r.err)
                        self.assertEqual(self.read(name), self.original)

    def test_target_locked_against_readers(self):
        # A process that unshares "consistent read" (byte 200) does not stop image creation,
        # only the open that follows it: qemu-img has truncated the target by then, blkimg
        # checks first and leaves it whole.
        with ofd_locks(self.path("a.img"), [100, 200]):
            r = self.blkimg("convert", "-f", "raw", "-O", "raw", "src.img", "a.img")
            self.assertEqual(r.code, 1)
            self.assertIn('Failed to get "consistent read" lock', r.err)
            self.assertEqual(self.read("a.img"), self.original)
            r = self.blkimg("dd", "-f", "raw", "if=src.img", "of=a.img")
            self.assertEqual(r.code, 1)
            self.assertEqual(self.read("a.img"), self.original)

    def test_bad_target_cache_leaves_target(self):
        r = self.blkimg("convert", "-t", "bogus", "-f", "raw", "src.img", "a.img")
        self.assertEqual(errors(r, "blkimg: "), ["Invalid cache option: bogus"])
        self.assertEqual(self.read("a.img"), self.original)


if __name__ == "__main__":
    unittest.main()
