"""blkimg map, side by side with qemu-img map: the same entries (JSON and human) on the same
images, the same range options, the same errors."""
import os
import unittest

from clitest import CliTestCase, errors


class MapTest(CliTestCase):
    def make_sparse(self, name="s.img"):
        """A 10 MiB raw file: data, a hole, data, zeroes written as a hole, a short tail."""
        with open(self.path(name), "wb") as f:
            f.truncate(10 * 1024 * 1024)
        self.write_pattern(name, 0, 65536, 1)
        self.write_pattern(name, 1024 * 1024, 128 * 1024, 2)
        self.assertOk(self.qemu_io("-f", "raw", "-c", "write -z 2M 64k", name))
        self.write_pattern(name, 3 * 1024 * 1024, 4096, 3)
        self.write_pattern(name, 10 * 1024 * 1024 - 4096, 4096, 4)
        return name

    def same_output(self, *args):
        ours = self.blkimg("map", *args)
        theirs = self.qemu_img("map", *args)
        self.assertOk(ours)
        self.assertOk(theirs)
        self.assertEqual(ours.out, theirs.out)
        return ours

    def test_json_matches(self):
        name = self.make_sparse()
        for fmt in ([], ["-f", "raw"]):
            with self.subTest(fmt=fmt):
                ours = self.same_output("--output=json", *fmt, name)
                entries = ours.json()
                # data extents really are where qemu-io wrote them
                self.assertEqual([(e["start"], e["length"]) for e in entries if e["data"]],
                                 [(0, 65536), (1048576, 131072), (3145728, 4096),
                                  (10 * 1048576 - 4096, 4096)])
                self.assertEqual(list(entries[0]),
                                 ["start", "length", "depth", "present", "zero", "data", "offset"])

    def test_human_matches(self):
        name = self.make_sparse()
        ours = self.same_output(name)
        self.assertEqual(ours.out.splitlines()[0],
                         "Offset          Length          Mapped to       File")
        self.assertEqual(ours.out.splitlines()[1].split(), ["0", "0x10000", "0", name])
        # a file in a subdirectory keeps the name as given
        os.mkdir(self.path("sub"))
        os.rename(self.path(name), self.path("sub/x.img"))
        self.same_output("-f", "raw", "sub/x.img")

    def test_ranges(self):
        name = self.make_sparse()
        for start, length in [("100000", "2000000"), ("1.5k", None), ("0x10", None),
                              (None, "1"), ("65535", "2"), ("20M", None), (None, "0"),
                              ("3M", "1M"), ("10M", None)]:
            opts = ([f"--start-offset={start}"] if start else []) + \
                   ([f"--max-length={length}"] if length else [])
            with self.subTest(opts=opts):
                self.same_output("--output=json", "-f", "raw", *opts, name)
                self.same_output("-f", "raw", *opts, name)

    def test_fully_allocated_and_odd_size(self):
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "-o", "preallocation=full",
                                    "p.img", "1000"))
        self.same_output("--output=json", "-f", "raw", "p.img")
        self.same_output("-f", "raw", "p.img")
        with open(self.path("e.img"), "wb"):
            pass
        self.same_output("--output=json", "-f", "raw", "e.img")

    def test_image_opts(self):
        name = self.make_sparse()
        for opts in ["driver=null-co,size=1M", "driver=null-co,size=1M,read-zeroes=on",
                     "driver=raw,file.filename=" + name,
                     "driver=raw,offset=4096,size=2M,file.filename=" + name,
                     "driver=file,filename=" + name]:
            with self.subTest(opts=opts):
                self.same_output("--output=json", "--image-opts", opts)
                self.same_output("--image-opts", opts)
        ours = self.same_output("--output=json", "null-co://")
        self.assertNotIn("offset", ours.json()[0])

    def test_force_share(self):
        name = self.make_sparse()
        self.same_output("-U", "--output=json", "-f", "raw", name)

    def test_errors_match(self):
        name = self.make_sparse()
        cases = [
            ["--output=xml", name],
            ["nosuch"],
            ["-f", "bogus", name],
            ["--start-offset=abc", name],
            ["--start-offset=-1", name],
            ["--start-offset=9E", name],
            ["--max-length=-1", name],
            ["--max-length=99999999999999999999", name],
            ["--start-offset=1.5", name],
            [],
            [name, name],
            ["--image-opts", "-f", "raw", name],
            ["--output=xml"],
        ]
        for case in cases:
            with self.subTest(case=case):
                ours = self.blkimg("map", *case)
                theirs = self.qemu_img("map", *case)
                self.assertEqual(ours.code, theirs.code, f"{ours!r}\n{theirs!r}")
                self.assertNotEqual(ours.code, 0)
                self.assertEqual(errors(ours, "blkimg: "), errors(theirs, "qemu-img: "))


if __name__ == "__main__":
    unittest.main()
