"""blkimg snapshot (-l, -c, -a, -d), side by side with qemu-img snapshot: the same sequence of
snapshot operations and qemu-io writes runs on two copies of an image, one driven by each
tool. After every step both copies pass qemu-img check, compare identical with qemu-img
compare, list the same snapshots (qemu-img info), and every snapshot reads back the same
bytes (qemu-img convert -l). The tools also take turns on one image (snapshots taken by one
are applied and deleted by the other), and the errors and exit codes match qemu-img's."""
import json
import os
import random
import shutil
import unittest

from clitest import CliTestCase, errors

MiB = 1 << 20


class SnapshotTest(CliTestCase):
    def make(self, name, opts, size="8M", backing=None):
        args = ["create", "-q", "-f", "qcow2"]
        if backing:
            args += ["-b", backing, "-F", "qcow2"]
        self.assertOk(self.qemu_img(*args, *opts, name, size))

    def io(self, name, *cmds):
        argv = ["-f", "qcow2"]
        for c in cmds:
            argv += ["-c", c]
        r = self.qemu_io(*argv, name)
        self.assertOk(r)
        self.assertNotIn("failed", r.out + r.err)

    def snapshots(self, name):
        info = self.qemu_img("info", "--output=json", "-U", name)
        self.assertOk(info)
        return [(s["id"], s["name"], s["vm-state-size"], s["vm-clock-sec"], s["vm-clock-nsec"],
                 s.get("icount")) for s in json.loads(info.out).get("snapshots", [])]

    def check_clean(self, name):
        r = self.qemu_img("check", name)
        self.assertEqual(r.code, 0, f"{name}: {r!r}")

    def snapshot_bytes(self, name, snapshot, tool=None):
        out = self.path(f"{name}.{snapshot}.raw")
        self.assertOk((tool or self.qemu_img)("convert", "-l", snapshot, "-O", "raw", name, out))
        with open(out, "rb") as f:
            data = f.read()
        os.unlink(out)
        return data

    def same_state(self, ours, theirs):
        self.check_clean(ours)
        self.check_clean(theirs)
        cmp = self.qemu_img("compare", ours, theirs)
        self.assertEqual(cmp.code, 0, repr(cmp))
        lo, lt = self.snapshots(ours), self.snapshots(theirs)
        self.assertEqual(lo, lt)
        for sn in lo:
            # blkimg convert -l reads our copy's snapshot, qemu-img convert -l theirs.
            self.assertEqual(self.snapshot_bytes(ours, sn[0], self.blkimg),
                             self.snapshot_bytes(theirs, sn[0]), f"snapshot {sn[0]}")

    def random_writes(self, rng, size, count=6):
        cmds = []
        for _ in range(count):
            off = rng.randrange(0, size // 512) * 512
            length = min(rng.choice([512, 4096, 65536, 200000 // 512 * 512, MiB]), size - off)
            kind = rng.random()
            if kind < 0.7:
                cmds.append(f"write -P {rng.randrange(1, 255)} {off} {length}")
            elif kind < 0.85:
                cmds.append(f"write -z {off} {length}")
            else:
                cmds.append(f"discard {off} {length}")
        return cmds

    def run_sequence(self, opts, seed, backing=False):
        rng = random.Random(seed)
        size = 8 * MiB
        b = None
        if backing:
            self.assertOk(self.qemu_img("create", "-q", "-f", "qcow2", "base.qcow2", "8M"))
            self.io("base.qcow2", "write -P 0x5a 0 8M")
            b = "base.qcow2"
        self.make("theirs.qcow2", opts, backing=b)
        self.io("theirs.qcow2", *self.random_writes(rng, size))
        shutil.copy(self.path("theirs.qcow2"), self.path("ours.qcow2"))
        taken = 0
        for step in range(10):
            action = rng.choice(["c", "c", "c", "a", "d", "w"])
            existing = self.snapshots("ours.qcow2")
            if action in "ad" and not existing:
                action = "c"
            if action == "c":
                taken += 1
                arg = f"snap{taken % 3}"  # names repeat: -a/-d then find the first one
            elif action in "ad":
                arg = rng.choice([rng.choice(existing)[0], rng.choice(existing)[1]])
            if action == "w":
                cmds = self.random_writes(rng, size)
                self.io("ours.qcow2", *cmds)
                self.io("theirs.qcow2", *cmds)
            else:
                # -d with an id fails in both (qemu-img deletes by name only).
                ours = self.blkimg("snapshot", f"-{action}", arg, "ours.qcow2")
                theirs = self.qemu_img("snapshot", f"-{action}", arg, "theirs.qcow2")
                self.assertSameErrors(ours, theirs)
                if action == "c" and theirs.code:
                    # A refcount would overflow (refcount_bits=2): qemu-img fails midway and
                    # leaves raised refcounts (leaks) behind; we fail before changing anything.
                    self.assertIn("Invalid argument", theirs.err)
                    self.assertEqual(self.qemu_img("check", "-q", "-r", "leaks", "theirs.qcow2").code, 0)
                cmds = self.random_writes(rng, size, 3)
                self.io("ours.qcow2", *cmds)
                self.io("theirs.qcow2", *cmds)
            with self.subTest(step=step, action=action):
                self.same_state("ours.qcow2", "theirs.qcow2")
        # Listing: the same table (dates are local and equal to the second only if taken
        # together, so the rows are compared without them).
        lo = self.blkimg("snapshot", "-l", "ours.qcow2")
        lt = self.qemu_img("snapshot", "-l", "theirs.qcow2")
        self.assertOk(lo)
        strip = lambda out: [l[:36] + l[56:] for l in out.splitlines()]
        self.assertEqual(strip(lo.out), strip(lt.out))
        # Everything deleted: both images are back to no snapshot at all.
        for sn in self.snapshots("ours.qcow2"):  # by name: the first of that name goes
            self.assertOk(self.blkimg("snapshot", "-d", sn[1], "ours.qcow2"))
            self.assertOk(self.qemu_img("snapshot", "-d", sn[1], "theirs.qcow2"))
        self.same_state("ours.qcow2", "theirs.qcow2")
        self.assertEqual(self.snapshots("ours.qcow2"), [])

    def test_sequences_match_qemu_img(self):
        variants = [
            [],
            ["-o", "compat=0.10"],
            ["-o", "cluster_size=4096,refcount_bits=64"],
            ["-o", "extended_l2=on"],
            ["-o", "lazy_refcounts=on"],
            ["-o", "cluster_size=512,refcount_bits=2"],
        ]
        for i, opts in enumerate(variants):
            with self.subTest(opts=opts):
                self.run_sequence(opts, seed=100 + i)

    def test_sequence_with_backing_file(self):
        self.run_sequence([], seed=7, backing=True)

    def test_compressed_image(self):
        with open(self.path("r.raw"), "wb") as f:
            f.write(os.urandom(MiB) + b"abc" * (MiB // 3) + bytes(2 * MiB))
        self.assertOk(self.qemu_img("convert", "-c", "-O", "qcow2", "r.raw", "c.qcow2"))
        self.assertOk(self.blkimg("snapshot", "-c", "before", "c.qcow2"))
        self.io("c.qcow2", "write -P 7 100k 300k")
        self.check_clean("c.qcow2")
        self.assertOk(self.blkimg("snapshot", "-a", "before", "c.qcow2"))
        self.check_clean("c.qcow2")
        self.assertEqual(self.qemu_img("compare", "-f", "qcow2", "-F", "raw", "c.qcow2", "r.raw").code, 0)
        self.assertOk(self.blkimg("snapshot", "-d", "before", "c.qcow2"))
        self.check_clean("c.qcow2")
        self.assertEqual(self.qemu_img("compare", "-f", "qcow2", "-F", "raw", "c.qcow2", "r.raw").code, 0)

    def test_tools_take_turns(self):
        self.make("t.qcow2", [])
        self.io("t.qcow2", "write -P 1 0 2M")
        self.assertOk(self.qemu_img("snapshot", "-c", "q1", "t.qcow2"))
        self.io("t.qcow2", "write -P 2 1M 2M")
        self.assertOk(self.blkimg("snapshot", "-c", "b1", "t.qcow2"))
        self.io("t.qcow2", "write -P 3 2M 2M")
        self.check_clean("t.qcow2")
        self.assertOk(self.blkimg("snapshot", "-a", "q1", "t.qcow2"))
        self.io("t.qcow2", "read -P 1 0 2M", "read -P 0 2M 2M")
        self.assertOk(self.qemu_img("snapshot", "-a", "b1", "t.qcow2"))
        self.io("t.qcow2", "read -P 1 0 1M", "read -P 2 1M 2M")
        self.assertOk(self.qemu_img("snapshot", "-d", "q1", "t.qcow2"))
        self.assertOk(self.blkimg("snapshot", "-d", "b1", "t.qcow2"))
        self.check_clean("t.qcow2")
        self.io("t.qcow2", "read -P 1 0 1M", "read -P 2 1M 2M")
        self.assertEqual(self.snapshots("t.qcow2"), [])

    def test_convert_l_forms(self):
        self.make("v.qcow2", [])
        self.io("v.qcow2", "write -P 1 0 3M")
        self.assertOk(self.qemu_img("snapshot", "-c", "one", "v.qcow2"))
        self.io("v.qcow2", "write -P 2 1M 3M")
        self.assertOk(self.qemu_img("snapshot", "-c", "7", "v.qcow2"))  # a name that looks like an id
        self.io("v.qcow2", "write -P 3 2M 3M")
        for form in ("1", "one", "2", "7", "snapshot.id=1", "snapshot.name=one",
                     "snapshot.id=2,snapshot.name=7", "snapshot.id=1,snapshot.name=7",
                     "snapshot.foo=1", "9", "snapshot.id=", "snapshot.name="):
            with self.subTest(form=form):
                ours = self.blkimg("convert", "-l", form, "-O", "raw", "v.qcow2", "o.raw")
                theirs = self.qemu_img("convert", "-l", form, "-O", "raw", "v.qcow2", "t.raw")
                self.assertSameErrors(ours, theirs)
                if theirs.code == 0:
                    self.assertEqual(self.read("o.raw"), self.read("t.raw"))
                for f in ("o.raw", "t.raw"):
                    if os.path.exists(self.path(f)):
                        os.unlink(self.path(f))
        # qcow2 targets too, and the read-only open leaves the image as it was.
        self.assertOk(self.blkimg("convert", "-l", "one", "-O", "qcow2", "v.qcow2", "o.qcow2"))
        self.assertOk(self.qemu_img("convert", "-l", "one", "-O", "qcow2", "v.qcow2", "t.qcow2"))
        self.assertEqual(self.qemu_img("compare", "o.qcow2", "t.qcow2").code, 0)
        self.check_clean("v.qcow2")
        self.assertEqual(len(self.snapshots("v.qcow2")), 2)
        # Several sources and a snapshot: refused as qemu-img refuses it.
        ours = self.blkimg("convert", "-l", "one", "-O", "raw", "v.qcow2", "v.qcow2", "m.raw")
        theirs = self.qemu_img("convert", "-l", "one", "-O", "raw", "v.qcow2", "v.qcow2", "m.raw")
        self.assertSameErrors(ours, theirs)

    def test_apply_restores_the_size(self):
        self.make("s.qcow2", [], size="4M")
        self.io("s.qcow2", "write -P 9 0 4M")
        self.assertOk(self.blkimg("snapshot", "-c", "small", "s.qcow2"))
        self.assertOk(self.qemu_img("resize", "s.qcow2", "12M"))
        self.io("s.qcow2", "write -P 8 0 12M")
        self.assertOk(self.blkimg("snapshot", "-a", "small", "s.qcow2"))
        info = json.loads(self.qemu_img("info", "--output=json", "s.qcow2").out)
        self.assertEqual(info["virtual-size"], 4 * MiB)
        self.check_clean("s.qcow2")
        self.io("s.qcow2", "read -P 9 0 4M")

    def test_list_forms(self):
        self.make("l.qcow2", [])
        for tool in (self.blkimg, self.qemu_img):
            self.assertEqual(tool("snapshot", "-l", "l.qcow2").out, "")  # none: nothing printed
        self.assertOk(self.qemu_img("snapshot", "-c", "one", "l.qcow2"))
        for args in (["-l"], [], ["-U", "-l"], ["-q", "-l"]):
            ours, theirs = self.blkimg("snapshot", *args, "l.qcow2"), self.qemu_img("snapshot", *args, "l.qcow2")
            self.assertEqual((ours.code, ours.out), (theirs.code, theirs.out), args)
        img_opts = "driver=qcow2,file.driver=file,file.filename=l.qcow2"
        ours = self.blkimg("snapshot", "--image-opts", "-l", img_opts)
        self.assertEqual(ours.out, self.qemu_img("snapshot", "-l", "l.qcow2").out)

    def test_errors_match_qemu_img(self):
        self.make("e.qcow2", [])
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "r.img", "1M"))
        cases = [
            ["-a", "nope", "e.qcow2"],
            ["-d", "nope", "e.qcow2"],
            ["-c", "x", "-d", "x", "e.qcow2"],
            ["-l", "-a", "x", "e.qcow2"],
            ["-U", "-c", "x", "e.qcow2"],
            ["-c", "x"],
            ["-c", "x", "e.qcow2", "extra"],
            ["-f", "qcow2", "-l", "e.qcow2"],
            ["-c", "x", "r.img"],
            ["-a", "x", "r.img"],
            ["-d", "x", "r.img"],
            ["-l", "r.img"],
            ["-c", "x", "missing.qcow2"],
        ]
        for args in cases:
            with self.subTest(args=args):
                ours, theirs = self.blkimg("snapshot", *args), self.qemu_img("snapshot", *args)
                if args == ["-a", "x", "r.img"]:
                    # qemu-img reopens the raw node's file to try it instead, and prints the
                    # probing warning a second time; the error itself is the same.
                    self.assertEqual(ours.code, theirs.code)
                    self.assertEqual(errors(ours, "blkimg: ")[-1], errors(theirs, "qemu-img: ")[-1])
                else:
                    self.assertSameErrors(ours, theirs)
                self.assertEqual(ours.out, theirs.out)
        self.assertEqual(self.snapshots("e.qcow2"), [])

    def test_snapshot_mode(self):
        # blkimg io -s / qemu-io -s: a temporary overlay in $TMPDIR takes the writes and is
        # deleted at the end; the image is untouched.
        tmp = self.path("tmp")
        os.mkdir(tmp)
        saved = os.environ.get("TMPDIR")
        os.environ["TMPDIR"] = tmp
        self.addCleanup(lambda: os.environ.pop("TMPDIR") if saved is None
                        else os.environ.__setitem__("TMPDIR", saved))
        for fmt in ("raw", "qcow2"):
            with self.subTest(fmt=fmt):
                name = f"m.{fmt}"
                self.assertOk(self.qemu_img("create", "-q", "-f", fmt, name, "4M"))
                self.assertOk(self.qemu_io("-f", fmt, "-c", "write -P 7 0 4M", name))
                before = self.read(name)
                cmds = ["-c", "write -P 9 64k 1M", "-c", "read -P 9 64k 1M", "-c", "read -P 7 0 64k",
                        "-c", "write -z 2M 64k", "-c", "read -P 0 2M 64k"]
                ours = self.blkimg("io", "-f", fmt, "-s", *cmds, name)
                theirs = self.qemu_io("-f", fmt, "-s", *cmds, name)
                self.assertOk(ours)
                self.assertNotIn("fail", ours.out + ours.err)
                strip = lambda out: [l for l in out.splitlines() if "ops/sec" not in l]
                self.assertEqual(strip(ours.out), strip(theirs.out))
                self.assertEqual(self.read(name), before)
                self.assertEqual(os.listdir(tmp), [])
                # --snapshot is the long form.
                self.assertOk(self.blkimg("io", "-f", fmt, "--snapshot", "-c", "write 0 4k", name))
                self.assertEqual(self.read(name), before)

    def test_pass_discard_snapshot(self):
        def allocated(name):
            return os.stat(self.path(name)).st_blocks * 512

        for discard, shrinks in (("on", True), ("off", False)):
            with self.subTest(discard=discard):
                self.make("d.qcow2", [])
                self.io("d.qcow2", "write -P 1 0 4M")
                self.assertOk(self.blkimg("snapshot", "-c", "s", "d.qcow2"))
                self.io("d.qcow2", "write -P 2 0 4M")  # the snapshot alone keeps the old data
                before = allocated("d.qcow2")
                opts = f"driver=qcow2,pass-discard-snapshot={discard},file.filename=d.qcow2"
                self.assertOk(self.blkimg("snapshot", "--image-opts", "-d", "s", opts))
                self.check_clean("d.qcow2")
                after = allocated("d.qcow2")
                if shrinks:
                    self.assertLessEqual(after, before - 4 * MiB)
                else:
                    self.assertEqual(after, before)
                os.unlink(self.path("d.qcow2"))


if __name__ == "__main__":
    unittest.main()
