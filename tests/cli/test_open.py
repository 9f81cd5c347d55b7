"""How images open without a format, side by side with qemu-img info and qemu-io (issue 6):
options that describe only the "file" child probe the format, as QEMU does, and the file
under a filter is never format-probed (so no probed-raw guard lands under preallocate)."""
import json
import os
import unittest

from clitest import CliTestCase, errors

QCOW2_MAGIC = b"QFI\xfb\x00\x00\x00\x03"


def lines(result, tool):
    """stdout and stderr lines with the tool's name and qemu-io's timings neutralised."""
    out = [l for l in result.out.splitlines() if " ops; " not in l]
    return out, errors(result, f"{tool}: ")


class OpenTestCase(CliTestCase):
    def setUp(self):
        super().setUp()
        for name in ("ours.img", "theirs.img"):
            with open(self.path(name), "wb") as f:
                f.write(b"\x41" * 4096 + b"\x00" * (1024 * 1024 - 4096))
        with open(self.path("hdr"), "wb") as f:
            f.write(QCOW2_MAGIC)

    def both(self, tool, args):
        """blkimg TOOL and qemu-img TOOL (or qemu-io for "io") with IMG replaced by each
        side's image."""
        ours = self.blkimg(*([tool] if tool != "io" else ["io"]),
                           *[a.replace("IMG", "ours.img") for a in args])
        theirs_args = [a.replace("IMG", "theirs.img") for a in args]
        theirs = self.qemu_io(*theirs_args) if tool == "io" else self.qemu_img(tool, *theirs_args)
        return ours, theirs

    def assertSame(self, ours, theirs, qemu_tool):
        self.assertEqual(ours.code, theirs.code, f"ours: {ours!r}\ntheirs: {theirs!r}")
        o_out, o_err = lines(ours, "blkimg")
        t_out, t_err = lines(theirs, qemu_tool)
        self.assertEqual([l.replace("ours.img", "IMG") for l in o_out],
                         [l.replace("theirs.img", "IMG") for l in t_out])
        self.assertEqual([l.replace("ours.img", "IMG") for l in o_err],
                         [l.replace("theirs.img", "IMG") for l in t_err])

    def assertSameBytes(self):
        self.assertEqual(self.read("ours.img"), self.read("theirs.img"))


class ProbeFromFileOptionsTest(OpenTestCase):
    """json:{"file":{...}} and --image-opts file.*=... without a top-level driver."""

    SPECS = [["json:{\"file\":{\"filename\":\"IMG\"}}"],
             ["--image-opts", "file.filename=IMG"],
             ["--image-opts", "file.driver=file,file.filename=IMG"],
             ["--image-opts", "read-only=on,file.filename=IMG"],
             ["json:{\"file\":{\"driver\":\"file\",\"filename\":\"IMG\"},\"file.aio\":\"threads\"}"]]

    def test_info(self):
        for spec in self.SPECS:
            for output in ("human", "json"):
                with self.subTest(spec=spec, output=output):
                    ours, theirs = self.both("info", [f"--output={output}", *spec])
                    self.assertEqual(ours.code, 0, repr(ours))
                    self.assertSame(ours, theirs, "qemu-img")

    def test_io_reads_and_writes_through_the_probed_format(self):
        for spec in self.SPECS:
            with self.subTest(spec=spec):
                ro = "read-only=on" in spec[-1]
                commands = (["-r"] if ro else []) + ["-c", "read -P 0x41 0 512"]
                if not ro:
                    commands += ["-c", "write -P 0x5a 512 512",
                                 # the probed-raw guard: sector 0 may not become a qcow2
                                 "-c", "write -s hdr 0 8"]
                ours, theirs = self.both("io", [*commands, *spec])
                self.assertSame(ours, theirs, "qemu-io")
                if not ro:
                    self.assertIn("write failed: Operation not permitted", ours.out)
                    self.assertIn("probing guessed raw", ours.err)
                self.assertSameBytes()

    def test_null_co_file(self):
        ours, theirs = self.both("info", ["--output=json", "--image-opts",
                                          "file.driver=null-co,file.size=1M"])
        self.assertEqual(ours.code, 0, repr(ours))
        o, t = ours.json(), theirs.json()
        # the json: name is compared as the tree it describes
        o["filename"], t["filename"] = (json.loads(j["filename"][5:]) for j in (o, t))
        self.assertEqual(o, t)

    def test_errors(self):
        for spec in (["json:{}"], ["json:{\"file\":{}}"], ["json:{\"file\":1}"],
                     ["json:{\"file\":\"nonode\"}"],
                     ["json:{\"file\":\"nonode\",\"file.locking\":\"off\"}"],
                     ["json:{\"file\":{\"filename\":\"nosuch.img\"}}"],
                     ["--image-opts", "file.filename=IMG,bogus=1"],
                     ["--image-opts", "file.filename=IMG,file.bogus=1"],
                     ["--image-opts", "file.file.filename=IMG"]):
            for tool, qemu_tool in (("info", "qemu-img"), ("io", "qemu-io")):
                if tool == "io" and spec[0] == "--image-opts":
                    continue  # qemu-io says "can't open: ..." there, blkimg io names the options
                with self.subTest(spec=spec, tool=tool):
                    args = ["-c", "read 0 512", *spec] if tool == "io" else spec
                    ours, theirs = self.both(tool, args)
                    self.assertNotEqual(ours.code, 0, repr(ours))
                    self.assertSame(ours, theirs, qemu_tool)


class FilterFileIsNotProbedTest(OpenTestCase):
    """preallocate over a file given without a driver: the file is opened as a protocol,
    with no probing warning and no sector-0 guard, as qemu-io does."""

    def test_writes_through_preallocate(self):
        for spec in (["json:{\"driver\":\"preallocate\",\"file\":{\"filename\":\"IMG\"}}"],
                     ["json:{\"driver\":\"preallocate\",\"file\":{\"driver\":\"file\","
                      "\"filename\":\"IMG\"}}"],
                     ["--image-opts", "driver=preallocate,file.filename=IMG"]):
            with self.subTest(spec=spec):
                ours, theirs = self.both("io", ["-c", "write -P 1 0 512", "-c", "write -s hdr 0 8",
                                                "-c", "read -P 1 8 504", *spec])
                self.assertSame(ours, theirs, "qemu-io")
                self.assertEqual(ours.code, 0, repr(ours))
                self.assertEqual(ours.err, "")
                self.assertSameBytes()
                self.assertEqual(self.read("ours.img")[:8], QCOW2_MAGIC)
                for name in ("ours.img", "theirs.img"):  # for the next spec
                    with open(self.path(name), "r+b") as f:
                        f.write(b"\x41" * 8)

    def test_info_shows_the_file_unprobed(self):
        # a qcow2 file under preallocate is the filter's data, not a qcow2 image
        for name in ("ours.img", "theirs.img"):
            with open(self.path(name), "r+b") as f:
                f.write(QCOW2_MAGIC)
        ours, theirs = self.both("info", ["--output=json", "--image-opts",
                                          "driver=preallocate,file.filename=IMG"])
        self.assertEqual(ours.code, 0, repr(ours))
        o = json.loads(ours.out.replace("ours.img", "IMG"))
        t = json.loads(theirs.out.replace("theirs.img", "IMG"))
        # a filter is named by its option tree (compared as a tree: QEMU's key order is its
        # hash order)
        o["filename"], t["filename"] = (json.loads(j["filename"][5:]) for j in (o, t))
        self.assertEqual(o, t)
        self.assertEqual(o["format"], "preallocate")

    def test_a_format_probed_over_preallocate_is_guarded(self):
        # Probing above the filter is still probing: the raw node found there warns, naming
        # the filter as QEMU names it, and keeps sector 0 from becoming a qcow2 header.
        ours, theirs = self.both("io", ["-c", "write -P 1 0 512", "-c", "write -s hdr 0 8",
                                        "json:{\"file\":{\"driver\":\"preallocate\","
                                        "\"file\":{\"filename\":\"IMG\"}}}"])
        self.assertSame(ours, theirs, "qemu-io")
        self.assertIn("WARNING: Image format was not specified for 'json:{\"driver\": "
                      "\"preallocate\", \"file\": {\"driver\": \"file\", \"filename\": "
                      "\"ours.img\"}}' and probing guessed raw.", ours.err)
        self.assertIn("write failed: Operation not permitted", ours.out)
        self.assertSameBytes()


if __name__ == "__main__":
    unittest.main()
