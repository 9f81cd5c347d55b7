"""Sizes as qemu-img reads them (qemu_strtosz, which blkimg takes from lb_parse_size): the
size operand of create, the value of -o size=, resize's size and map's offsets, for a table
of inputs (fractions and their rounding, suffixes, hex, whitespace and signs, malformed
inputs, out of range), side by side with qemu-img on the same command lines. What is
compared: exit code, stdout (create's "Formatting ... size=N" line, map's extents) and the
error messages. Sizes stay small enough to create (sparse) files with, or fail before."""
import os
import unittest

from clitest import BLKIMG, CliTestCase, errors, run

# create -f raw x SIZE: the "Formatting" line shows the size used.
CREATE_SIZES = [
    "1.5G", "1.5M", "1.5k", "1.5K", "1.25k", "0.1k", "0.3k", "0.0005k", "0.0004k",
    "0.0000000001T", "1.9999999999999999k", "1.99999999999999999999k", "1.0000000000000000001k",
    "0.123456789012345678901234567890M", "1.", "1.k", "1.0", "1.5", "1.5b", "1b", "1B", "512",
    "010", "00000000000000000000000000000001", " 5", "\t7", "+5", "+0x10", "0x10", "0X10",
    "0x10k", "0x1.8k", "0x10.5", "0x", "00x10", "0x 10", ".5k", "1.5e3", "1.5e+3", "1.e5",
    "1.5x", "1k5", "1kk", "1k ", "", "abc", "k", "-5", "-0", " -1", "-99999999999999999999",
    "9223372036854775808", "18446744073709551615", "18446744073709551616",
    "18446744073709551616k", "99999999999999999999999x", "8E", "16E", "15.99999999999999999E",
    "0x8000000000000000", "0x10000000000000000", "0x10000000000000000k",
    "1." + "0" * 330 + "1k", "1." + "0" * 330 + "1",
]

# Not compared with -o size=: qemu-img prints sizes of 2^63 and more as negative numbers
# there, and on a fraction below the double range without a suffix it reads past the end
# of the text (the operand refuses it; -o's result depends on what lies beyond).
NOT_AS_OPTION = {"9223372036854775808", "18446744073709551615", "8E", "15.99999999999999999E",
                 "0x8000000000000000", "0xffffffffffffffff", "1." + "0" * 330 + "1"}

# resize -f raw r.img SIZE (parse_option_size's messages): relative and absolute sizes.
RESIZE_SIZES = ["+1.5k", "+0x1k", "2.5M", "+1.5", "1.5e3", "99999999999999999999",
                "18446744073709551616k", "+0.0005k", "+1."]

# map --start-offset=X --max-length=Y: cvtnum's messages and the offsets used.
MAP_OFFSETS = [("1.5k", "0.5k"), ("0x200", "1k"), ("1.5", "1k"), ("8E", "1k"), ("-1", "1k")]


class SizesTest(CliTestCase):
    def compare(self, args, cwd_ours, cwd_theirs, messages=True):
        ours = run([BLKIMG, *args], cwd=cwd_ours)
        theirs = run(["qemu-img", *args], cwd=cwd_theirs)
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        self.assertEqual(ours.out, theirs.out)
        if messages:
            self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))

    def dirs(self):
        ours, theirs = os.path.join(self.dir, "ours"), os.path.join(self.dir, "theirs")
        for d in (ours, theirs):
            os.makedirs(d, exist_ok=True)
            for f in os.listdir(d):
                os.unlink(os.path.join(d, f))
        return ours, theirs

    def test_create_sizes_match_qemu_img(self):
        for size in CREATE_SIZES:
            with self.subTest(size=size[:40]):
                ours, theirs = self.dirs()
                self.compare(["create", "-f", "raw", "x.img", "--", size], ours, theirs)
                # -o size=: the values and exit codes (the library words a bad option value
                # its own way, and cannot print QEMU's hex-suffix warning from an option).
                if size not in NOT_AS_OPTION:
                    self.compare(["create", "-f", "raw", "-o", "size=" + size, "y.img"], ours,
                                 theirs, messages=False)

    def test_resize_sizes_match_qemu_img(self):
        for size in RESIZE_SIZES:
            with self.subTest(size=size):
                ours, theirs = self.dirs()
                for d in (ours, theirs):
                    run(["qemu-img", "create", "-q", "-f", "raw", os.path.join(d, "r.img"), "1M"])
                self.compare(["resize", "-f", "raw", "r.img", "--", size], ours, theirs)
                self.assertEqual(os.path.getsize(os.path.join(ours, "r.img")),
                                 os.path.getsize(os.path.join(theirs, "r.img")))

    def test_map_offsets_match_qemu_img(self):
        for start, length in MAP_OFFSETS:
            with self.subTest(start=start, length=length):
                ours, theirs = self.dirs()
                for d in (ours, theirs):
                    run(["qemu-img", "create", "-q", "-f", "raw", os.path.join(d, "m.img"), "1M"])
                    run(["qemu-io", "-f", "raw", "-c", "write 0 4k", os.path.join(d, "m.img")])
                self.compare(["map", "-f", "raw", "--output=json", "--start-offset=" + start,
                              "--max-length=" + length, "m.img"], ours, theirs)

    def test_create_without_size(self):
        # qemu-img's message, from the library (lb_create_ex) now: nothing is created.
        ours, theirs = self.dirs()
        self.compare(["create", "-f", "raw", "x.img"], ours, theirs)
        self.compare(["create", "-f", "raw", "-b", "base.img", "x.img"], ours, theirs)
        self.compare(["create", "-f", "raw", "-b", "base.img", "-F", "raw", "x.img"], ours, theirs)
        self.compare(["create", "-f", "raw", "-o", "bogus=1", "x.img"], ours, theirs)
        self.assertEqual(os.listdir(ours), os.listdir(theirs))


if __name__ == "__main__":
    unittest.main()
