"""File names are bytes (issue 6): blkimg prints them as qemu-img/qemu-io do, byte for byte
— raw in human output and messages, escaped as QEMU escapes them in JSON (\\uXXXX in upper
case, \\uFFFD for every sequence that is not UTF-8) — instead of failing on names that are
not UTF-8. Each tool works in its own directory on an image of the same name."""
import json
import os
import re
import subprocess
import unittest

from clitest import BLKIMG, CliTestCase

# Every kind of sequence QEMU's decoder tells apart: valid UTF-8 of each length, stray and
# missing continuation bytes, overlong forms (and modified UTF-8's C0 80), surrogates,
# noncharacters, code points above U+10FFFF, 5- and 6-byte forms, control characters, DEL
# and the characters JSON escapes.
NAMES = [b"\xff\xfe", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xc0\x80", b"\xc0\x81",
         b"\xc1\xbf", b"\xe0\x80\x80", b"\xf0\x80\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
         b"\xef\xb7\x90", b"\xef\xb7\xb0", b"\xef\xbf\xbe", b"\xef\xbf\xbf", b"\xef\xbb\xbf",
         b"\xf0\x9f\xbf\xbe", b"\xf0\x9f\xbf\xbd", b"\xf4\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
         b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xc3",
         b"\xe2\x82", b"\xe2\x82x", b"\xc3\xc3\xa9", b"\xe2(\xa1", b"\x80", b"\xbf\xbf",
         b"\xfe\x80", b"\x01", b"\x1f", b"\x7f", b"\t", b"\n", b"\r", b"\x08", b"\x0c", b'"',
         b"\\", b"<>&'", b"\xe2\x80\xa8"]


class NamesTest(CliTestCase):
    def setUp(self):
        super().setUp()
        for side in ("ours", "theirs"):
            os.mkdir(self.path(side))

    def run_both(self, tool, *args, name=None):
        """Runs blkimg TOOL and the QEMU tool (qemu-io for "io", else qemu-img TOOL) with the
        same byte arguments, each in its own directory; returns both CompletedProcesses."""
        ours = subprocess.run([os.fsencode(BLKIMG), tool.encode(), *args],
                              cwd=self.path("ours"), capture_output=True, timeout=120)
        qemu = [b"qemu-io"] if tool == "io" else [b"qemu-img", tool.encode()]
        theirs = subprocess.run([*qemu, *args], cwd=self.path("theirs"), capture_output=True,
                                timeout=120)
        return ours, theirs

    def assertSameBytes(self, ours, theirs, tool):
        """Same exit code, stdout and stderr, byte for byte (tool prefixes and qemu-io's
        timings aside)."""
        def clean(p, name):
            out = b"\n".join(l for l in p.stdout.split(b"\n") if b" ops; " not in l)
            err = p.stderr.replace(name.encode() + b": ", b"TOOL: ")
            return p.returncode, out, err
        self.assertEqual(clean(ours, "blkimg"), clean(theirs, tool))

    def make(self, name, size=1024 * 1024):
        for side in ("ours", "theirs"):
            with open(os.path.join(os.fsencode(self.path(side)), name), "wb") as f:
                f.write(b"\x41" * 4096)
                f.truncate(size)

    def test_info_prints_names_as_qemu_img(self):
        for raw in NAMES:
            name = b"n" + raw + b".img"
            with self.subTest(name=name):
                self.make(name)
                for args in ([name], [b"-f", b"raw", name], [b"--output=json", name],
                             [b"--output=json", b"--backing-chain", b"-f", b"raw", name],
                             [b"--backing-chain", name]):
                    ours, theirs = self.run_both("info", *args)
                    self.assertEqual(ours.returncode, 0, ours.stderr)
                    self.assertSameBytes(ours, theirs, "qemu-img")
                    if b"--output=json" in args:
                        json.loads(ours.stdout)  # valid JSON (ASCII), whatever the bytes

    def test_json_names_escape_the_file_name(self):
        # With options, the image is named by a json: tree; the file name inside it is
        # escaped the same way (the key order of QEMU's dictionaries is its hash order, so
        # the trees are compared, and the escapes by value).
        for raw in (b"\xff\xfe", b"\xc3\xa9\xf0\x9f\x98\x80", b'"\\\n'):
            name = b"n" + raw + b".img"
            with self.subTest(name=name):
                self.make(name, 1024 * 1024 + 512)
                opts = b"driver=raw,offset=512,file.filename=" + name
                ours, theirs = self.run_both("info", b"--output=json", b"--image-opts", opts)
                self.assertEqual(ours.returncode, 0, ours.stderr)
                o, t = json.loads(ours.stdout), json.loads(theirs.stdout)
                self.assertTrue(o["filename"].startswith("json:{"), o)
                o["filename"], t["filename"] = (json.loads(j["filename"][5:]) for j in (o, t))
                self.assertEqual(o, t)
                ours, theirs = self.run_both("info", b"--image-opts", opts)
                escaped = re.sub(rb"\\u([0-9a-f]{4})", lambda m: b"\\u" + m[1].upper(),
                                 json.dumps(t["filename"]["file"]["filename"]).encode())
                self.assertIn(b'"filename": ' + escaped, ours.stdout)
                self.assertEqual(ours.stdout.split(b"\n")[1:], theirs.stdout.split(b"\n")[1:])

    def test_map_file_column(self):
        # the File column names the file holding the data by its bytes, however the image
        # itself is named
        for raw in (b"\xff\xfe", b"\xc3\xa9\xf0\x9f\x98\x80", b"\xe2\x82x\x01"):
            name = b"n" + raw + b".img"
            with self.subTest(name=name):
                self.make(name, 1024 * 1024 + 512)
                for args in ([b"-f", b"raw", name], [name],
                             [b"--image-opts", b"driver=raw,offset=512,file.filename=" + name],
                             [b"--image-opts", b"driver=preallocate,file.filename=" + name],
                             [b"--image-opts",
                              b"driver=raw,file.filename=" + name + b",file.locking=off"],
                             [b"--output=json", b"-f", b"raw", name]):
                    ours, theirs = self.run_both("map", *args)
                    self.assertEqual(ours.returncode, 0, ours.stderr)
                    self.assertSameBytes(ours, theirs, "qemu-img")
                    if b"--output=json" not in args:
                        self.assertIn(b" " + name + b"\n", ours.stdout)

    def test_names_of_option_trees(self):
        # Only the options that change the data name an image (QEMU's strong options): a
        # file's locking or aio, generic node options and null-co's latency leave the plain
        # name; raw's offset and size, null-co's size and read-zeroes, and any filter make a
        # json: tree (compared as trees).
        self.make(b"x.img")
        for opts in [b"driver=raw,file.filename=x.img,file.locking=off,file.aio=threads",
                     b"driver=file,filename=x.img,aio=io_uring",
                     b"driver=raw,file.filename=x.img,node-name=n1,file.node-name=f1,"
                     b"read-only=on,detect-zeroes=on,discard=unmap,cache.direct=off",
                     b"file.filename=x.img,file.locking=off",
                     b"driver=raw,offset=512,file.filename=x.img,file.locking=off",
                     b"file.filename=x.img,offset=0,file.aio=threads",
                     b"driver=raw,size=1048576,file.filename=x.img",
                     b"driver=raw,file.driver=null-co,file.latency-ns=5",
                     b"driver=null-co,size=1M,read-zeroes=on,latency-ns=3",
                     b"driver=preallocate,prealloc-align=4k,file.filename=x.img",
                     b"driver=raw,file.driver=preallocate,file.file.filename=x.img,"
                     b"file.prealloc-size=1M"]:
            with self.subTest(opts=opts):
                ours, theirs = self.run_both("info", b"--output=json", b"--image-opts", opts)
                self.assertEqual(ours.returncode, 0, ours.stderr)
                o, t = json.loads(ours.stdout), json.loads(theirs.stdout)
                for j in (o, t):
                    if j["filename"].startswith("json:"):
                        j["filename"] = json.loads(j["filename"][5:])
                self.assertEqual(o, t)

    def test_messages_and_warnings_carry_the_bytes(self):
        name = b"n\xff\xfe\xc3\xa9.img"
        ours, theirs = self.run_both("info", b"nosuch-" + name)
        self.assertSameBytes(ours, theirs, "qemu-img")
        self.assertIn(b"\xff\xfe", ours.stderr)
        self.make(name)
        # the probing warning names the file as it is
        ours, theirs = self.run_both("io", b"-c", b"write -P 0x5a 512 512", name)
        self.assertSameBytes(ours, theirs, "qemu-io")
        self.assertIn(b"'n\xff\xfe\xc3\xa9.img' and probing guessed raw", ours.stderr)
        ours, theirs = self.run_both("io", b"-f", b"raw", b"-c", b"read -P 0x5a 512 512", name)
        self.assertSameBytes(ours, theirs, "qemu-io")
        self.assertEqual(ours.returncode, 0, ours.stderr)


if __name__ == "__main__":
    unittest.main()
