"""Shared helpers for the blkimg tests: run blkimg and qemu-img/qemu-io side by side on the
same images and compare what they say and what they leave on disk.

The meson test sets BLKIMG to the built binary. A missing qemu-img or qemu-io makes the whole
test exit 77 (meson: skipped), with the reason on stderr.
"""
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import contextlib
import time
import unittest

BLKIMG = os.environ.get("BLKIMG", "blkimg")

for _tool in ("qemu-img", "qemu-io"):
    if shutil.which(_tool) is None:
        sys.stderr.write(f"skipped: {_tool} is not installed\n")
        sys.exit(77)


class Result:
    def __init__(self, proc):
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self):
        return json.loads(self.out)

    def __repr__(self):
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run(argv, cwd=None, input=None, timeout=120):
    return Result(subprocess.run(argv, cwd=cwd, input=input, capture_output=True, text=True,
                                 timeout=timeout))


def blkimg(*args, cwd=None, **kw):
    return run([BLKIMG, *args], cwd=cwd, **kw)


def qemu_img(*args, cwd=None, **kw):
    return run(["qemu-img", *args], cwd=cwd, **kw)


def qemu_io(*args, cwd=None, **kw):
    return run(["qemu-io", *args], cwd=cwd, **kw)


def errors(result, prefix):
    """stderr with the tool name prefix ("blkimg: " / "qemu-img: ") removed from each line,
    and the tool's name taken out of the "Try 'X --help'" hint."""
    return [(line[len(prefix):] if line.startswith(prefix) else line)
            .replace("'blkimg --help'", "'qemu-img --help'")
            for line in result.err.splitlines()]


class CliTestCase(unittest.TestCase):
    """A test case with a fresh temporary directory (self.dir) used as the working directory."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="blkimg-test-")
        self.dir = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def blkimg(self, *args, **kw):
        return blkimg(*args, cwd=self.dir, **kw)

    def qemu_img(self, *args, **kw):
        return qemu_img(*args, cwd=self.dir, **kw)

    def qemu_io(self, *args, **kw):
        return qemu_io(*args, cwd=self.dir, **kw)

    def assertOk(self, result):
        self.assertEqual(result.code, 0, repr(result))

    def assertSameErrors(self, ours, theirs):
        """Same exit code and the same messages, tool prefixes aside."""
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))

    @contextlib.contextmanager
    def held_by_qemu_io(self, name, fmt):
        """Keeps `name` open read-write in an interactive qemu-io (it holds the image until its
        stdin closes, however slow the machine). Its prompt says the image is open and locked;
        probing the locks instead would race with qemu-io's own open."""
        holder = subprocess.Popen(["qemu-io", "-f", fmt, name], cwd=self.dir,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        try:
            seen = b""
            deadline = time.monotonic() + 60
            while b"qemu-io> " not in seen:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([holder.stdout], [], [], max(left, 0))
                chunk = os.read(holder.stdout.fileno(), 4096) if ready else b""
                if not chunk:
                    self.fail(f"qemu-io did not open {name}: {seen.decode(errors='replace')}")
                seen += chunk
            yield holder
        finally:
            holder.kill()
            holder.wait()
            holder.stdin.close()
            holder.stdout.close()

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def write_pattern(self, name, offset, length, byte):
        """Writes `length` bytes of `byte` at `offset` with qemu-io (format raw)."""
        self.assertOk(self.qemu_io("-f", "raw", "-c", f"write -P {byte} {offset} {length}", name))
