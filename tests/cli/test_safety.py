"""blkimg against qemu-img/qemu-io on hostile input (issue 6): option strings with NUL
characters, and preallocation that runs out of space. Both tools must refuse, and leave the
same bytes (and the same file sizes) behind."""
import os
import subprocess
import tempfile
import unittest

from clitest import BLKIMG, CliTestCase, Result, errors

PATTERN = 0x5a
SIZE = 1024 * 1024


def run(argv, cwd):
    """Like clitest.run, for tools whose messages hold bytes that are not UTF-8 (QEMU writes a
    \\u0000 of a JSON string as C0 80): such bytes survive as surrogate escapes."""
    return Result(subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                                 errors="surrogateescape", timeout=120))


class NulInOptionsTest(CliTestCase):
    """QEMU's JSON parser keeps a \\u0000 as the two bytes C0 80 (so the name it opens is
    another file); libblock refuses the string. Either way the file that a C string cut at
    the NUL would name is left alone."""

    def setUp(self):
        super().setUp()
        for name in ("ours.img", "theirs.img"):
            with open(self.path(name), "wb") as f:
                f.write(bytes([PATTERN]) * SIZE)

    def both(self, spec, tool):
        """Runs blkimg and the QEMU tool (`info` = qemu-img info, `io` = qemu-io) on `spec`,
        a json: filename with NAME standing for each tool's own victim."""
        ours_spec = spec.replace("NAME", "ours.img")
        theirs_spec = spec.replace("NAME", "theirs.img")
        if tool == "info":
            ours = run([BLKIMG, "info", ours_spec], self.dir)
            theirs = run(["qemu-img", "info", theirs_spec], self.dir)
        else:
            ours = run([BLKIMG, "io", "-c", "write -P 0xee 0 4k", ours_spec], self.dir)
            theirs = run(["qemu-io", "-c", "write -P 0xee 0 4k", theirs_spec], self.dir)
        return ours, theirs

    def assertUntouched(self):
        for name in ("ours.img", "theirs.img"):
            self.assertEqual(self.read(name), bytes([PATTERN]) * SIZE, name)

    def test_nul_in_filename_does_not_open_the_prefix(self):
        for spec, key in [
                ('json:{"driver":"raw","file":{"filename":"NAME\\u0000.other"}}', "file.filename"),
                ('json:{"driver":"raw","file":{"driver":"file","filename":"NAME\\u0000"}}',
                 "file.filename"),
                ('json:{"driver":"file","filename":"NAME\\u0000x"}', "filename"),
                ('json:{"file":{"filename":"NAME\\u0000.other"}}', "file.filename")]:
            for tool in ("io", "info"):
                with self.subTest(spec=spec, tool=tool):
                    ours, theirs = self.both(spec, tool)
                    self.assertEqual(ours.code, 1, repr(ours))
                    self.assertEqual(theirs.code, 1, repr(theirs))
                    self.assertEqual(ours.out, "")
                    # the same context as QEMU's message, then our reason instead of its
                    # ENOENT for the C0 80 name
                    prefix = "can't open device " if tool == "io" else "Could not open '"
                    (line,) = errors(ours, "blkimg: ")
                    self.assertTrue(line.startswith(prefix + spec.replace("NAME", "ours.img")),
                                    line)
                    self.assertIn(f"'{key}' contains a NUL character", line)
                    self.assertUntouched()

    def test_nul_in_other_strings(self):
        # any string option, whatever the driver, and keys too
        for spec, what in [
                ('json:{"driver":"raw\\u0000x","file":"NAME"}', "'driver'"),
                ('json:{"driver":"raw","file":{"filename":"NAME","locking":"of\\u0000f"}}',
                 "'file.locking'"),
                ('json:{"driver":"raw","file":{"filename":"NAME","aio":"threads\\u0000"}}',
                 "'file.aio'"),
                ('json:{"driver":"raw","node-name":"a\\u0000b","file":{"filename":"NAME"}}',
                 "'node-name'"),
                ('json:{"driver":"raw","file":{"filename":"NAME"},"x\\u0000y":"1"}',
                 "key 'x\\u0000y'"),
                # (qemu-img 7.2 aborts on null-co's size="1\\u0000M": parse_option_size)
                ('json:{"driver":"raw","offset":"1\\u0000M","file":{"filename":"NAME"}}',
                 "'offset'")]:
            for tool in ("io", "info"):
                with self.subTest(spec=spec, tool=tool):
                    ours, theirs = self.both(spec, tool)
                    self.assertEqual(ours.code, 1, repr(ours))
                    self.assertEqual(theirs.code, 1, repr(theirs))
                    (line,) = errors(ours, "blkimg: ")
                    self.assertIn(f"{what} contains a NUL character", line)
                    self.assertUntouched()


if __name__ == "__main__":
    unittest.main()
