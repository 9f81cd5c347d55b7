"""The qcow2 driver's data path against qemu-img/qemu-io, both directions, over the image
variants qemu-img creates (cluster sizes 512..2M, compat 0.10/1.1, refcount_bits 1/16/64,
extended L2, lazy refcounts, preallocation=metadata, zlib/zstd compression, external data
files raw or not, raw and qcow2 backing files):

* qemu writes, we read: qemu-io writes seeded random patterns (unaligned, spanning clusters,
  write-zeroes with and without unmap, discards) and `blkimg convert -O raw` must produce the
  same bytes as `qemu-img convert -O raw`;
* we write, qemu checks: `blkimg io` runs the same commands on a copy of the same fresh image
  that qemu-io runs them on; `qemu-img check` must find no errors and no leaks in ours, and
  `qemu-img compare` must call the two identical;
* qemu's compressed clusters read back here, and partial writes over them (copy-on-write from
  the decompressed cluster) leave an image qemu-img checks clean; `blkimg io`'s `write -c`
  compresses clusters qemu reads (more in tests/unit/qcow2_test.cc);
* tiny caches (evictions between every step) keep the write ordering right;
* `blkimg info`'s format-specific block and dirty flag are qemu-img's.
"""
import json
import os
import random
import shutil
import unittest

from clitest import CliTestCase

SIZE = 16 * 1024 * 1024

# name -> (create options, with a backing file of this format or None)
VARIANTS = {
    "default": ("", None),
    "c512": ("cluster_size=512", None),
    "c4k": ("cluster_size=4k", None),
    "c2M": ("cluster_size=2M", None),
    "v2": ("compat=0.10", None),
    "rc1": ("refcount_bits=1", None),
    "rc64": ("refcount_bits=64", None),
    "ext": ("extended_l2=on", None),
    "ext16k": ("extended_l2=on,cluster_size=16k", None),
    "lazy": ("lazy_refcounts=on", None),
    "prealloc": ("preallocation=metadata", None),
    "zstd": ("compression_type=zstd", None),
    "datafile": ("data_file=IMG.data", None),
    "datafile_raw": ("data_file=IMG.data,data_file_raw=on", None),
    "backing_raw": ("", "raw"),
    "backing_qcow2": ("", "qcow2"),
    "backing_v2": ("compat=0.10", "qcow2"),
    "backing_ext": ("extended_l2=on", "qcow2"),
}


def random_commands(seed, with_discard=True, cluster=65536):
    """qemu-io commands: unaligned writes and zeroes, some spanning clusters."""
    rng = random.Random(seed)
    cmds = []
    for i in range(40):
        kind = rng.random()
        off = rng.randrange(0, SIZE - 300000)
        if rng.random() < 0.3:
            off -= off % cluster
        length = rng.choice([1, 511, 512, 4096, 5000, 65536, 70000, 200000, 2 * cluster + 17])
        length = min(length, SIZE - off)
        if kind < 0.65:
            cmds.append(f"write -P {rng.randrange(1, 255)} {off} {length}")
        elif kind < 0.8:
            cmds.append(f"write -z {off} {length}")
        elif kind < 0.9:
            cmds.append(f"write -z -u {off} {length}")
        elif with_discard:
            cmds.append(f"discard {off} {length}")
    return cmds


class Qcow2IoTest(CliTestCase):
    def make(self, name, variant, base_data=None):
        """A fresh qemu-img image `name` of `variant`; returns its create options."""
        opts, backing = VARIANTS[variant]
        opts = opts.replace("IMG", name)
        args = ["create", "-f", "qcow2"]
        if backing:
            base = name + ".base"
            self.assertOk(self.qemu_img("create", "-f", backing, base, str(SIZE)))
            self.assertOk(self.qemu_io("-f", backing, "-c", "write -P 0x5a 0 8M",
                                       "-c", "write -P 0xa5 9M 3M", base))
            args += ["-b", base, "-F", backing]
        if opts:
            args += ["-o", opts]
        self.assertOk(self.qemu_img(*args, name, str(SIZE)))
        return opts

    def copy_image(self, src, dst, opts):
        shutil.copy(self.path(src), self.path(dst))
        if "data_file" in opts:
            # The copy must name its own data file: rewrite it with qemu-img amend.
            shutil.copy(self.path(src + ".data"), self.path(dst + ".data"))
            self.assertOk(self.qemu_img("amend", "-o", f"data_file={dst}.data", dst))

    def check_clean(self, name):
        r = self.qemu_img("check", name)
        self.assertEqual(r.code, 0, repr(r))
        self.assertIn("No errors were found on the image.", r.out, repr(r))
        self.assertNotIn("leaked", r.out + r.err, repr(r))

    def qemu_writes_we_read(self, variant, seed):
        self.make("q.qcow2", variant)
        cmds = random_commands(seed)
        args = []
        for c in cmds:
            args += ["-c", c]
        self.assertOk(self.qemu_io(*args, "q.qcow2"))
        self.assertOk(self.qemu_img("convert", "-O", "raw", "q.qcow2", "theirs.raw"))
        r = self.blkimg("convert", "-O", "raw", "q.qcow2", "ours.raw")
        self.assertOk(r)
        self.assertTrue(self.read("ours.raw") == self.read("theirs.raw"),
                        f"{variant}: blkimg reads differ from qemu-img's")

    def we_write_qemu_checks(self, variant, seed):
        opts = self.make("a.qcow2", variant)
        self.copy_image("a.qcow2", "b.qcow2", opts)
        cmds = random_commands(seed)
        args = []
        for c in cmds:
            args += ["-c", c]
        r = self.blkimg("io", *args, "a.qcow2")
        self.assertOk(r)
        self.assertNotIn("error", r.err.lower(), repr(r))
        self.assertOk(self.qemu_io(*args, "b.qcow2"))
        self.check_clean("a.qcow2")
        r = self.qemu_img("compare", "a.qcow2", "b.qcow2")
        self.assertEqual(r.code, 0, f"{variant}: {r!r}")
        # And we read back what we wrote, as qemu-img does.
        self.assertOk(self.qemu_img("convert", "-O", "raw", "a.qcow2", "theirs.raw"))
        self.assertOk(self.blkimg("convert", "-O", "raw", "a.qcow2", "ours.raw"))
        self.assertTrue(self.read("ours.raw") == self.read("theirs.raw"))

    def test_tiny_caches(self):
        for variant in ("default", "ext16k", "c4k"):
            with self.subTest(variant=variant):
                opts = self.make("a.qcow2", variant)
                self.copy_image("a.qcow2", "b.qcow2", opts)
                args = []
                for c in random_commands(7, cluster=4096):
                    args += ["-c", c]
                r = self.blkimg("io", "--image-opts", *args,
                                "driver=qcow2,file.filename=a.qcow2,l2-cache-size=1k,"
                                "l2-cache-entry-size=512,refcount-cache-size=1")
                self.assertOk(r)
                self.assertOk(self.qemu_io(*args, "b.qcow2"))
                self.check_clean("a.qcow2")
                self.assertEqual(self.qemu_img("compare", "a.qcow2", "b.qcow2").code, 0)

    def test_info_format_specific(self):
        for variant in VARIANTS:
            with self.subTest(variant=variant):
                self.make("i.qcow2", variant)
                ours = self.blkimg("info", "--output=json", "i.qcow2")
                theirs = self.qemu_img("info", "--output=json", "i.qcow2")
                self.assertOk(ours)
                self.assertOk(theirs)
                o, t = ours.json(), theirs.json()
                for key in ("format-specific", "dirty-flag", "cluster-size", "backing-filename",
                            "backing-filename-format", "virtual-size"):
                    self.assertEqual(o.get(key), t.get(key), key)

    @staticmethod
    def normalized_map(result, offsets=True):
        """Map extents with equal neighbours merged; without `offsets`, with every host offset
        dropped (images whose clusters the two tools placed differently)."""
        out = []
        for e in json.loads(result.out):
            if not offsets:
                e.pop("offset", None)
            if out:
                p = out[-1]
                same = all(p.get(k) == e.get(k) for k in ("depth", "present", "zero", "data"))
                contiguous = ("offset" not in e and "offset" not in p) or (
                    "offset" in e and "offset" in p and p["offset"] + p["length"] == e["offset"])
                if same and contiguous and p["start"] + p["length"] == e["start"]:
                    p["length"] += e["length"]
                    continue
            out.append(e)
        return out

    def test_map_matches(self):
        for i, variant in enumerate(VARIANTS):
            with self.subTest(variant=variant):
                self.make("q.qcow2", variant)
                args = []
                for c in random_commands(300 + i):
                    args += ["-c", c]
                self.assertOk(self.qemu_io(*args, "q.qcow2"))
                ours = self.blkimg("map", "--output=json", "q.qcow2")
                theirs = self.qemu_img("map", "--output=json", "q.qcow2")
                self.assertOk(ours)
                self.assertEqual(self.normalized_map(ours), self.normalized_map(theirs))

    def test_convert_onto_backing(self):
        # convert -B / -o backing_file copies only what the source's top image provides and
        # leaves the rest to the new backing file, as qemu-img does.
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "4M"))
        self.assertOk(self.qemu_io("-c", "write -P 1 0 1M", "-c", "write -P 2 2M 512k",
                                   "base.qcow2"))
        self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
                                    "qcow2", "top.qcow2"))
        self.assertOk(self.qemu_io("-c", "write -P 3 512k 1M", "-c", "write -z 3M 64k",
                                   "top.qcow2"))
        for how in (["-B", "base.qcow2", "-F", "qcow2"],
                    ["-o", "backing_file=base.qcow2,backing_fmt=qcow2"]):
            with self.subTest(how=how):
                self.assertOk(self.blkimg("convert", "-O", "qcow2", *how, "top.qcow2", "ours.qcow2"))
                self.assertOk(self.qemu_img("convert", "-O", "qcow2", *how, "top.qcow2",
                                            "theirs.qcow2"))
                self.assertOk(self.qemu_img("check", "ours.qcow2"))
                self.assertOk(self.qemu_img("compare", "top.qcow2", "ours.qcow2"))
                maps = [self.qemu_img("map", "--output=json", name).json()
                        for name in ("ours.qcow2", "theirs.qcow2")]
                for m in maps:
                    for extent in m:
                        extent.pop("offset", None)  # where each tool put the clusters
                self.assertEqual(maps[0], maps[1])
                os.remove(self.path("ours.qcow2"))
                os.remove(self.path("theirs.qcow2"))

    def test_resize(self):
        for variant in ("default", "c512", "v2", "ext16k", "datafile_raw", "backing_qcow2"):
            with self.subTest(variant=variant):
                opts = self.make("a.qcow2", variant)
                self.copy_image("a.qcow2", "b.qcow2", opts)
                fill = ["-c", "write -P 0x21 0 3M", "-c", f"write -P 0x22 {SIZE - 70000} 70000"]
                self.assertOk(self.blkimg("io", *fill, "a.qcow2"))
                self.assertOk(self.qemu_io(*fill, "b.qcow2"))
                # Grow far enough for a larger L1 table, write there, then shrink into data.
                for step in (["resize", "{}", "200M"], ["resize", "--shrink", "{}", "1M"],
                             ["resize", "{}", "5M"]):
                    ours = [x.replace("{}", "a.qcow2") for x in step]
                    theirs = [x.replace("{}", "b.qcow2") for x in step]
                    self.assertOk(self.blkimg(*ours))
                    self.assertOk(self.qemu_img(*theirs))
                    if step[-1] == "200M":
                        late = ["-c", "write -P 0x23 190M 100k"]
                        self.assertOk(self.blkimg("io", *late, "a.qcow2"))
                        self.assertOk(self.qemu_io(*late, "b.qcow2"))
                    self.check_clean("a.qcow2")
                    r = self.qemu_img("compare", "a.qcow2", "b.qcow2")
                    self.assertEqual(r.code, 0, f"{step}: {r!r}")
                # Shrinking into a cluster and growing again: the old tail of that cluster
                # reads as zeroes (qemu-img 7.2 shows the stale bytes there).
                self.assertOk(self.blkimg("resize", "--shrink", "a.qcow2", "1000k"))
                self.assertOk(self.blkimg("resize", "a.qcow2", "3M"))
                self.check_clean("a.qcow2")
                r = self.qemu_io("-c", "read -P 0x21 0 1000k", "-c", "read -P 0 1000k 2072k",
                                 "a.qcow2")
                self.assertOk(r)
                self.assertNotIn("Pattern verification failed", r.out)

    def test_writes_beside_internal_snapshots(self):
        # Tables shared with a snapshot (qemu-img snapshot -c) get private copies on the first
        # write, discard or zeroing; the snapshot keeps what it saw.
        # (refcount_bits=1 cannot count a snapshot's reference: qemu-img refuses to take one.)
        for i, variant in enumerate(("default", "ext", "c4k", "v2", "lazy", "rc64",
                                     "backing_qcow2")):
            with self.subTest(variant=variant):
                opts = self.make("a.qcow2", variant)
                fill = ["-c", "write -P 0x31 0 5M", "-c", "write -P 0x32 7M 300k",
                        "-c", "write -z 6M 64k"]
                self.assertOk(self.qemu_io(*fill, "a.qcow2"))
                self.assertOk(self.qemu_img("snapshot", "-c", "s1", "a.qcow2"))
                self.assertOk(self.qemu_img("convert", "-O", "raw", "a.qcow2", "before.raw"))
                self.copy_image("a.qcow2", "b.qcow2", opts)
                args = []
                for c in random_commands(300 + i):
                    args += ["-c", c]
                r = self.blkimg("io", *args, "a.qcow2")
                self.assertOk(r)
                self.assertOk(self.qemu_io(*args, "b.qcow2"))
                self.check_clean("a.qcow2")
                self.assertOk(self.blkimg("check", "a.qcow2"))
                r = self.qemu_img("compare", "a.qcow2", "b.qcow2")
                self.assertEqual(r.code, 0, f"{variant}: {r!r}")
                # The snapshot still reads as the image did when it was taken.
                self.assertOk(self.qemu_img("convert", "-l", "snapshot.name=s1", "-O", "raw",
                                            "a.qcow2", "snap.raw"))
                self.assertTrue(self.read("snap.raw") == self.read("before.raw"),
                                f"{variant}: the snapshot changed")
                # And deleting it leaves consistent refcounts (COPIED flags as QEMU expects).
                self.assertOk(self.qemu_img("snapshot", "-d", "s1", "a.qcow2"))
                self.check_clean("a.qcow2")

    def test_info_lists_snapshots(self):
        self.make("s.qcow2", "default")
        self.assertOk(self.qemu_io("-c", "write -P 1 0 1M", "s.qcow2"))
        for name in ("first", "a-much-longer-snapshot-name"):
            self.assertOk(self.qemu_img("snapshot", "-c", name, "s.qcow2"))
        for output in ("human", "json"):
            with self.subTest(output=output):
                ours = self.blkimg("info", f"--output={output}", "s.qcow2")
                theirs = self.qemu_img("info", f"--output={output}", "s.qcow2")
                self.assertOk(ours)
                self.assertEqual(ours.out, theirs.out)
        # Writes leave the list as it is; deleting one shows in the next open.
        self.assertOk(self.blkimg("io", "-c", "write -P 2 0 64k", "s.qcow2"))
        self.assertOk(self.qemu_img("snapshot", "-d", "first", "s.qcow2"))
        self.assertEqual(self.blkimg("info", "s.qcow2").out, self.qemu_img("info", "s.qcow2").out)

    def test_partial_writes_to_compressed_extended_l2(self):
        self.assertOk(self.qemu_img("create", "-f", "raw", "src.raw", str(SIZE)))
        self.assertOk(self.qemu_io("-f", "raw", "-c", "write -P 0x61 0 3M", "src.raw"))
        self.assertOk(self.qemu_img("convert", "-c", "-O", "qcow2", "-o", "extended_l2=on",
                                    "src.raw", "x.qcow2"))
        shutil.copy(self.path("x.qcow2"), self.path("ref.qcow2"))
        cmds = ["-c", "write -P 0x71 1000 3000", "-c", "write -z 70000 5000",
                "-c", "write -P 0x72 200000 64k", "-c", "discard 1M 4096"]
        self.assertOk(self.blkimg("io", *cmds, "x.qcow2"))
        self.assertOk(self.qemu_io(*cmds, "ref.qcow2"))
        self.check_clean("x.qcow2")
        r = self.qemu_img("compare", "x.qcow2", "ref.qcow2")
        self.assertEqual(r.code, 0, repr(r))

    def test_resize_with_preallocation(self):
        for variant in ("default", "c512", "v2", "ext16k", "datafile", "datafile_raw",
                        "backing_qcow2"):
            for mode in ("metadata", "falloc", "full"):
                with self.subTest(variant=variant, mode=mode):
                    opts = self.make("a.qcow2", variant)
                    self.copy_image("a.qcow2", "b.qcow2", opts)
                    fill = ["-c", f"write -P 0x41 0 1M", "-c", f"write -P 0x42 {SIZE - 7000} 7000"]
                    self.assertOk(self.blkimg("io", *fill, "a.qcow2"))
                    self.assertOk(self.qemu_io(*fill, "b.qcow2"))
                    new_size = str(SIZE + 5 * 1024 * 1024 + 512)
                    self.assertOk(self.blkimg("resize", f"--preallocation={mode}", "a.qcow2",
                                              new_size))
                    self.assertOk(self.qemu_img("resize", f"--preallocation={mode}", "b.qcow2",
                                                new_size))
                    self.check_clean("a.qcow2")
                    r = self.qemu_img("compare", "a.qcow2", "b.qcow2")
                    self.assertEqual(r.code, 0, f"{variant} {mode}: {r!r}")
                    # The new clusters are mapped as qemu-img maps its own (host offsets
                    # aside: the two place clusters differently).
                    ours = self.blkimg("map", "--output=json", "a.qcow2")
                    theirs = self.qemu_img("map", "--output=json", "b.qcow2")
                    if variant == "c512" and mode == "metadata":
                        # Whether a metadata-preallocated cluster reads as zero is the file's
                        # answer for its 4 KiB block, which 512-byte clusters share with
                        # whatever the layout put beside them: compare the allocation only.
                        for r in (ours, theirs):
                            r.out = json.dumps([dict(e, zero=None) for e in json.loads(r.out)])
                    self.assertEqual(self.normalized_map(ours, offsets=False),
                                     self.normalized_map(theirs, offsets=False))
                    if mode != "metadata":
                        # falloc/full: the storage exists in the file (data file when raw).
                        data = "a.qcow2.data" if "data_file" in opts else "a.qcow2"
                        st = os.stat(self.path(data))
                        self.assertGreaterEqual(st.st_blocks * 512, 5 * 1024 * 1024,
                                                f"{variant} {mode}")
                    # Writes into the preallocated area land in place and read back.
                    late = ["-c", f"write -P 0x43 {SIZE + 4096} 70000"]
                    self.assertOk(self.blkimg("io", *late, "a.qcow2"))
                    self.assertOk(self.qemu_io(*late, "b.qcow2"))
                    self.check_clean("a.qcow2")
                    self.assertEqual(self.qemu_img("compare", "a.qcow2", "b.qcow2").code, 0)

    def test_convert_compressed_across_sources(self):
        # Sources that end inside a target cluster: that cluster is read from each in turn and
        # compressed whole (qemu-img convert -c does the same); the 3rd source ends off a sector.
        sizes = (100 * 1024, 64 * 1024 + 512, 70001)
        names = []
        for i, n in enumerate(sizes):
            name = f"s{i}.raw"
            text = (f"source {i} " * (n // 9 + 1)).encode()[:n]
            with open(self.path(name), "wb") as f:
                f.write(text)
            names.append(name)
        self.assertOk(self.blkimg("convert", "-c", "-f", "raw", "-O", "qcow2", *names, "ours.qcow2"))
        self.assertOk(self.qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", *names,
                                    "theirs.qcow2"))
        self.check_clean("ours.qcow2")
        self.assertNotIn(" 0.00% compressed", self.qemu_img("check", "ours.qcow2").out)
        r = self.qemu_img("compare", "ours.qcow2", "theirs.qcow2")
        self.assertEqual(r.code, 0, repr(r))

    def test_qemu_writes_we_read(self):
        for i, variant in enumerate(VARIANTS):
            with self.subTest(variant=variant):
                self.qemu_writes_we_read(variant, 100 + i)

    def test_we_write_qemu_checks(self):
        for i, variant in enumerate(VARIANTS):
            with self.subTest(variant=variant):
                self.we_write_qemu_checks(variant, 200 + i)

    def test_many_allocations_grow_refcounts(self):
        # Enough new clusters for new refcount blocks and a larger refcount table (512-byte
        # clusters with 64-bit refcounts: 64 clusters per block, 64 blocks per table cluster).
        self.assertOk(self.qemu_img("create", "-f", "qcow2", "-o",
                                    "cluster_size=512,refcount_bits=64", "g.qcow2", "8M"))
        self.assertOk(self.qemu_img("create", "-f", "raw", "g.raw", "8M"))
        args = []
        for i in range(0, 8 * 1024 * 1024, 4096 * 7):
            args += ["-c", f"write -P {i % 250 + 1} {i} 3000"]
        self.assertOk(self.blkimg("io", *args, "g.qcow2"))
        self.assertOk(self.qemu_io("-f", "raw", *args, "g.raw"))
        self.check_clean("g.qcow2")
        r = self.qemu_img("compare", "g.qcow2", "g.raw")
        self.assertEqual(r.code, 0, repr(r))

    def test_compressed_both_ways(self):
        self.assertOk(self.qemu_img("create", "-f", "raw", "src.raw", str(SIZE)))
        self.assertOk(self.qemu_io("-f", "raw", "-c", "write -P 0x61 0 3M",
                                   "-c", "write -P 0x62 5M 77777", "src.raw"))
        for ctype in ("zlib", "zstd"):
            with self.subTest(compression=ctype):
                # qemu compresses, we read, and overwrite parts of compressed clusters.
                img = f"qc-{ctype}.qcow2"
                self.assertOk(self.qemu_img("convert", "-c", "-O", "qcow2", "-o",
                                            f"compression_type={ctype}", "src.raw", img))
                self.assertOk(self.blkimg("convert", "-O", "raw", img, "ours.raw"))
                self.assertTrue(self.read("ours.raw") == self.read("src.raw"))
                shutil.copy(self.path(img), self.path("ref-" + img))
                cmds = ["-c", "write -P 0x71 1000 3000", "-c", "write -z 70000 5000"]
                self.assertOk(self.blkimg("io", *cmds, img))
                self.assertOk(self.qemu_io(*cmds, "ref-" + img))
                self.check_clean(img)
                self.assertEqual(self.qemu_img("compare", img, "ref-" + img).code, 0)
                # We compress (qemu-io's write -c), qemu reads; misaligned requests fail as
                # qemu-io's do.
                for name in ("ours.qcow2", "theirs.qcow2"):
                    self.assertOk(self.qemu_img("create", "-f", "qcow2", "-o",
                                                f"compression_type={ctype}", name, str(SIZE)))
                cmds = ["-c", "write -c -P 0x33 0 128k", "-c", "write -c -P 0x34 192k 64k",
                        "-c", "write -P 0x35 200k 1000", "-c", f"write -c -P 0x36 {SIZE - 65536} 64k"]
                r = self.blkimg("io", *cmds, "ours.qcow2")
                self.assertOk(r)
                self.assertNotIn("failed", r.out)
                self.assertOk(self.qemu_io(*cmds, "theirs.qcow2"))
                self.check_clean("ours.qcow2")
                self.assertNotIn(" 0.00% compressed", self.qemu_img("check", "ours.qcow2").out)
                self.assertEqual(self.qemu_img("compare", "ours.qcow2", "theirs.qcow2").code, 0)
                bad = ["-c", "write -c 4096 64k", "-c", "write -c 0 4096"]
                ours = self.blkimg("io", *bad, "ours.qcow2")
                theirs = self.qemu_io(*bad, "theirs.qcow2")
                self.assertEqual(ours.out, theirs.out)


if __name__ == "__main__":
    unittest.main()
