"""blkimg commit, side by side with qemu-img commit: the same backing chain is built twice
(qemu-img and qemu-io), each tool commits one copy, and then every image of the two chains
compares identical in qemu-img compare and passes qemu-img check; the top is emptied (reads
through to the base) unless -d or -b. Variants: the immediate backing file and a deeper base
(-b), a raw base, a base smaller than the top (it grows), zero clusters above the base,
internal snapshots in the top, -d, -q, -p, -r, -t and the errors."""
import os
import shutil
import unittest

from clitest import CliTestCase, errors

MiB = 1 << 20


class CommitTest(CliTestCase):
    def io(self, name, *cmds):
        argv = []
        for c in cmds:
            argv += ["-c", c]
        r = self.qemu_io(*argv, name)
        self.assertOk(r)

    def chain(self, d, base_fmt="qcow2", base_size="4M", snapshot=False, top_opts=()):
        os.makedirs(self.path(d), exist_ok=True)
        self.assertOk(self.qemu_img("create", "-q", "-f", base_fmt, f"{d}/base.img", base_size))
        self.io(f"{d}/base.img", f"write -P 1 0 {base_size}")
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.img", "-F", base_fmt,
                                    f"{d}/mid.qcow2", "6M"))
        self.io(f"{d}/mid.qcow2", "write -P 2 1M 1M", "write -z 3M 64k", "write -P 5 4M 100k")
        top_opts = [o.replace("{dir}", self.path(d)) for o in top_opts]
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", *top_opts, "-b", "mid.qcow2",
                                    "-F", "qcow2", f"{d}/top.qcow2", "6M"))
        self.io(f"{d}/top.qcow2", "write -P 3 1536k 1M", "write -P 4 5M 512k", "write -z 200k 100k",
                "discard 3M 64k")
        if snapshot:
            self.assertOk(self.qemu_img("snapshot", "-c", "s", f"{d}/top.qcow2"))
            self.io(f"{d}/top.qcow2", "write -P 6 0 64k")

    def both(self, *args, **chain):
        self.chain("o", **chain)
        self.chain("t", **chain)
        ours = self.blkimg("commit", *args, "o/top.qcow2")
        theirs = self.qemu_img("commit", *args, "t/top.qcow2")
        self.assertSameErrors(ours, theirs)
        if "-p" not in args:
            self.assertEqual(ours.out, theirs.out)
        for name in ("base.img", "mid.qcow2", "top.qcow2"):
            cmp = self.qemu_img("compare", f"o/{name}", f"t/{name}")
            self.assertEqual(cmp.code, 0, f"{args} {chain} {name}: {cmp!r}")
            if name.endswith("qcow2") or chain.get("base_fmt", "qcow2") == "qcow2":
                check = self.qemu_img("check", f"o/{name}")
                self.assertEqual(check.code, 0, f"{name}: {check!r}")
        # The tops hold the same clusters of their own: emptied or kept alike. (Below the top
        # the allocation may differ: how zeroed ranges land in the base is each tool's own.)
        self.assertEqual(self.map("o/top.qcow2"), self.map("t/top.qcow2"))
        shutil.rmtree(self.path("o"))
        shutil.rmtree(self.path("t"))
        return ours

    def map(self, name):
        import json
        r = self.qemu_img("map", "--output=json", name)
        self.assertOk(r)
        return [(e["start"], e["length"], e["data"], e["zero"]) for e in json.loads(r.out)
                if e["depth"] == 0]

    def test_variants(self):
        for args in ([], ["-d"], ["-q"], ["-b", "base.img"], ["-b", "mid.qcow2"], ["-b", "base.img", "-d"],
                     ["-t", "none"], ["-t", "unsafe"], ["-r", "100M"], ["-f", "qcow2"]):
            for chain in ({}, {"base_fmt": "raw"}, {"base_size": "2M"}, {"snapshot": True},
                          {"top_opts": ("-o", "cluster_size=4k")},
                          {"top_opts": ("-o", "data_file={dir}/top.data")}):
                with self.subTest(args=args, chain=chain):
                    self.both(*args, **chain)

    def test_progress(self):
        r = self.both("-p")  # (the output is read as text: the \r ends lines)
        self.assertTrue(r.out.startswith("    (0.00/100%)\n"), repr(r.out))
        self.assertIn("    (100.00/100%)\n", r.out)
        self.assertTrue(r.out.endswith("\nImage committed.\n"), repr(r.out))
        self.assertEqual(self.both("-p", "-q").out, "")

    def test_errors(self):
        self.chain("o")
        self.chain("t")
        for args in (["-b", "nope"], ["-t", "bogus"], ["-r", "x"], ["-r", "-1"], [], ["a", "b"]):
            with self.subTest(args=args):
                tail = [] if args in ([], ["a", "b"]) else None
                ours = self.blkimg("commit", *args, *(["o/top.qcow2"] if tail is None else []))
                theirs = self.qemu_img("commit", *args, *(["t/top.qcow2"] if tail is None else []))
                self.assertEqual(ours.code, theirs.code)
                self.assertEqual([e.replace("o/", "X/") for e in errors(ours, "blkimg: ")],
                                 [e.replace("t/", "X/") for e in errors(theirs, "qemu-img: ")])
        # No backing file; a missing file; nothing changed by the failures.
        for name in ("base.img",):
            ours = self.blkimg("commit", f"o/{name}")
            theirs = self.qemu_img("commit", f"t/{name}")
            self.assertSameErrors(ours, theirs)
        self.assertSameErrors(self.blkimg("commit", "missing.qcow2"), self.qemu_img("commit", "missing.qcow2"))
        for name in ("base.img", "mid.qcow2", "top.qcow2"):
            self.assertEqual(self.qemu_img("compare", f"o/{name}", f"t/{name}").code, 0)

    def test_rate_limit_slows_the_copy(self):
        import time
        self.chain("o")
        start = time.monotonic()
        self.assertOk(self.blkimg("commit", "-r", "1M", "o/top.qcow2"))
        # 1.5 MiB above the base at 1 MiB/s: at least a second (no upper bound asserted).
        self.assertGreater(time.monotonic() - start, 0.9)


if __name__ == "__main__":
    unittest.main()
