"""blkimg io's session commands side by side with qemu-io's: the ones that end the process
(abort, sigraise), the blkdebug breakpoint commands on images without blkdebug, and open,
close and reopen. Same command lists on twin raw images: same exit status, same stdout
(timings aside), same stderr (tool prefix aside), same bytes on disk."""
import fcntl
import os
import re
import select
import shutil
import signal
import subprocess
import time
import unittest

from clitest import BLKIMG
from test_io import IoTestCase, normalise


class SessionTestCase(IoTestCase):
    def compare_session(self, commands, opts=(), image=False):
        """Runs `commands` (IMG standing for the tool's own image) in both tools, with the
        image as the operand only if `image`; compares as compare() does."""
        def run(tool, name):
            argv = list(opts)
            for c in commands:
                argv += ["-c", c.replace("IMG", name)]
            if image:
                argv.append(name)
            result = tool(*argv)
            result.out = result.out.replace(name, "IMG")
            # generated node names are numbered differently
            result.err = re.sub(r"#block\d+", "#blockN", result.err.replace(name, "IMG"))
            return result
        ours = run(lambda *a: self.blkimg("io", *a), "ours.img")
        theirs = run(self.qemu_io, "theirs.img")
        self.assertSame(ours, theirs)
        self.assertSameImages()
        return ours, theirs

    def fd_flags(self, argv, commands=(), image="ours.img"):
        """The open(2) flags of the descriptor an interactive `argv` holds on `image`, once it
        ran `commands` and shows its prompt."""
        proc = subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            # one command per prompt: qemu-io prompts once for all the lines one read brings
            seen, deadline = b"", time.monotonic() + 60
            for pending in list(commands) + [None]:
                while not seen.endswith(b"> "):
                    ready, _, _ = select.select([proc.stdout], [], [], 1)
                    chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
                    self.assertLess(time.monotonic(), deadline, seen)
                    seen += chunk
                if pending is not None:
                    seen = b""
                    proc.stdin.write((pending + "\n").encode())
                    proc.stdin.flush()
            image = os.path.realpath(self.path(image))
            flags = []
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{proc.pid}/fd/{fd}") != image:
                        continue
                    with open(f"/proc/{proc.pid}/fdinfo/{fd}") as f:
                        info = dict(line.split(":", 1) for line in f if ":" in line)
                except FileNotFoundError:
                    continue
                flags.append(int(info["flags"].strip(), 8))
            self.assertEqual(len(flags), 1, flags)
            return flags[0]
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
            proc.stdout.close()


class ProcessEndTest(SessionTestCase):
    def test_abort(self):
        # qemu-io calls abort(3): SIGABRT, and stdout still buffered for the pipe is lost;
        # the write before it reached the file
        ours, theirs = self.compare(["write -P 0x55 0 4k", "abort", "write -P 0x66 0 4k"])
        self.assertEqual(ours.code, -signal.SIGABRT)
        self.assertEqual(self.read("ours.img")[:4096], b"\x55" * 4096)

    def test_abort_after_an_error(self):
        # Unlike qemu-io, an error message flushes stdout first (issue 6: piped output keeps
        # its order), so the write's report printed before it survives the abort.
        cmds = ["-c", "write -P 0x59 0 1", "-c", "reopen -o bogus=1", "-c", "abort"]
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "a.img", "1M"))
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "b.img", "1M"))
        ours = self.blkimg("io", "-f", "raw", *cmds, "a.img")
        theirs = self.qemu_io("-f", "raw", *cmds, "b.img")
        self.assertEqual(ours.code, theirs.code)
        self.assertEqual(theirs.out, "")
        self.assertTrue(ours.out.startswith("wrote 1/1 bytes at offset 0\n"), ours.out)

    def test_stdout_and_stderr_in_one_pipe(self):
        # stderr is written at once, stdout when its buffer is flushed (at exit here): in one
        # pipe the messages come first, as qemu-io's do
        outputs = []
        for tool, prefix, name in (([BLKIMG, "io"], "blkimg", "ours.img"),
                                   (["qemu-io"], "qemu-io", "theirs.img")):
            argv = tool + ["-f", "raw"]
            for c in ("write -P 0x5a 0 1", "reopen -o bogus=1", "read 0", "read -P 0x5a 0 1",
                      "bogus", "open x", "length"):
                argv += ["-c", c]
            proc = subprocess.run(argv + [name], cwd=self.dir, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            outputs.append((proc.returncode, normalise(proc.stdout, prefix)))
        # The same lines and exit code; qemu-io's stderr overtakes its buffered stdout, blkimg
        # flushes stdout before each message (issue 6), so its lines come in command order.
        (ours_code, ours), (theirs_code, theirs) = outputs
        self.assertEqual(ours_code, theirs_code)
        self.assertEqual(sorted(ours), sorted(theirs))
        lines = ours
        wrote = next(i for i, l in enumerate(lines) if l.startswith("wrote 1/1 bytes"))
        error = next(i for i, l in enumerate(lines) if "bogus" in l)
        self.assertLess(wrote, error, ours)

    def test_abort_exit_status_from_a_shell(self):
        for tool in ([BLKIMG, "io"], ["qemu-io"]):
            with self.subTest(tool=tool[0]):
                r = subprocess.run(["sh", "-c", '"$@" 2>/dev/null; echo $?', "sh", *tool,
                                    "-c", "abort"], capture_output=True, text=True)
                self.assertEqual(r.stdout, "134\n")

    def test_sigraise(self):
        # stdout is flushed before the signal; signals qemu-io blocks (SIGBUS, SIGUSR1,
        # SIGALRM, SIGIO) or ignores (SIGPIPE), default-ignored ones, the C library's own (32,
        # 33) and NSIG itself leave it running
        for sig in (15, 9, 1, 6, 10, 14, 13, 7, 29, 17, 28, 32, 33, 34, 64, 65, 0):
            with self.subTest(sig=sig):
                self.compare(["help quit", f"write -P {sig} 0 512", f"sigraise {sig}",
                              "help q", f"write -P {sig} 512 512"])

    def test_sigraise_arguments(self):
        for case in (["sigraise x"], ["sigraise 66"], ["sigraise 1k"], ["sigraise -1"],
                     ["sigraise 1.5"], ["sigraise 0x11"], ["sigraise 010"], ["sigraise"],
                     ["sigraise 1 2"], ["abort x"], ["sigraise -- 15"]):
            with self.subTest(case=case):
                self.compare(case + ["help quit"])

    def test_closed_stdout_is_not_fatal(self):
        # qemu-io ignores SIGPIPE: a reader that goes away does not kill it
        for tool in ([BLKIMG, "io"], ["qemu-io"]):
            with self.subTest(tool=tool[0]):
                proc = subprocess.Popen(tool + ["-f", "raw", "-c", "read -v 0 1M",
                                                self.path("ours.img")],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                proc.stdout.readline()
                proc.stdout.close()
                self.assertEqual(proc.wait(timeout=60), 0)

    def test_help(self):
        for topic in ("abort", "sigraise"):
            with self.subTest(topic=topic):
                self.compare([f"help {topic}"])


class BreakpointTest(SessionTestCase):
    """libblock has no blkdebug filter: every image is one without blkdebug, on which qemu-io's
    breakpoint commands fail with ENOTSUP. qemu-io's wait_break then waits forever; blkimg's
    says that nothing can be suspended and fails instead of hanging."""

    def test_not_supported(self):
        self.compare(["break write_aio A", "break bogus_event B", "remove_break A", "resume A",
                      "write -P 0x31 0 512", "help quit"])

    def test_argument_counts_and_no_file(self):
        for case in (["break"], ["break write_aio"], ["break a b c"], ["break -x a b"],
                     ["remove_break"], ["resume"], ["wait_break"], ["wait_break a b"],
                     ["resume a b"]):
            with self.subTest(case=case):
                self.compare(case + ["help quit"])
        ours = self.blkimg("io", "-c", "break a b", "-c", "remove_break a", "-c", "resume a",
                           "-c", "wait_break a", "-c", "help quit")
        theirs = self.qemu_io("-c", "break a b", "-c", "remove_break a", "-c", "resume a",
                              "-c", "wait_break a", "-c", "help quit")
        self.assertSame(ours, theirs)

    def test_help(self):
        for topic in ("break", "remove_break", "resume", "wait_break"):
            with self.subTest(topic=topic):
                self.compare([f"help {topic}"])

    def test_wait_break_does_not_hang(self):
        # the aio write submitted before completes, then wait_break fails at once (qemu-io
        # would wait for a signal) and the run goes on with the next command
        self.assertOk(self.qemu_img("create", "-q", "-f", "raw", "ours.img", "1M"))
        ours = self.blkimg("io", "-f", "raw", "-c", "aio_write -P 0x77 64k 4k", "-c",
                           "wait_break A", "-c", "write -P 0x78 68k 4k", "ours.img", timeout=60)
        self.assertEqual(ours.code, 1, repr(ours))
        self.assertIn("wait_break: no request can be suspended at 'A'", ours.out)
        data = self.read("ours.img")
        self.assertEqual(data[64 << 10:68 << 10], b"\x77" * 4096)
        self.assertEqual(data[68 << 10:72 << 10], b"\x78" * 4096)


class OpenCloseTest(SessionTestCase):
    def test_session_without_image_operand(self):
        self.compare_session([
            "open -o driver=raw IMG", "info", "write -P 0x51 0 4k", "close", "length", "close",
            "read 0 1", "open -r -o driver=raw IMG", "write 0 1", "read -P 0x51 0 4k", "close",
            "open -o driver=raw,file.filename=IMG", "write -P 0x52 4k 4k", "length",
            "close x", "aio_write -P 0x53 8k 4k", "close", "map"])

    def test_open_probes_the_format(self):
        self.compare_session(["open IMG", "length", "write -P 0x54 4k 512"])

    def test_open_when_open(self):
        # option and operand errors come first, then "file open already"
        for case in ("open IMG", "open -r IMG", "open -U IMG", "open -o bogus=1 IMG",
                     "open nosuch.img", "open -s IMG", "open -x IMG", "open -t bogus IMG",
                     "open -d bogus IMG", "open -i bogus IMG", "open IMG IMG", "open"):
            with self.subTest(case=case):
                self.compare_session([case, "write -P 0x55 0 512"], opts=("-f", "raw"),
                                     image=True)

    def test_open_errors(self):
        for case in ("open nosuch.img", "open -o driver=raw", "open -r",
                     "open -o driver=raw,file.driver=file,file.filename=nosuch", "open -U IMG",
                     "open -o bogus=1 IMG", "open -o driver=raw -o bogus=1 IMG",
                     "open -o driver=raw -o file.bogus=1 IMG", "open -o force-share=off -U -r IMG",
                     "open -o driver=raw,offset=2M IMG",
                     "open -o driver=raw -o file.filename=IMG IMG",
                     "open -k -o driver=raw IMG", "open -i native -o driver=raw IMG",
                     "open -k -t writeback -o driver=raw IMG"):
            with self.subTest(case=case):
                self.compare_session([case, "length"])

    def test_open_flags(self):
        for flags in ("-r", "-n", "-t writeback", "-t unsafe", "-t directsync", "-d ignore",
                      "-d unmap", "-i threads", "-C", "-U -r", "-rU", "-k -n", "-i native -n",
                      "-- "):
            with self.subTest(flags=flags):
                self.compare_session([f"open {flags} -o driver=raw IMG", "write -P 0x56 0 64k",
                                      "discard 0 4k", "read -P 0x56 60k 4k", "flush",
                                      "aio_write -z -u 64k 4k", "aio_flush", "length"])

    def test_close_leaves_no_file(self):
        cmds = ["close"] + [c for c in ("read 0 1", "write 0 1", "readv 0 1", "writev 0 1",
                                        "aio_read 0 1", "aio_write 0 1", "aio_flush", "flush",
                                        "discard 0 1", "info", "length", "map", "alloc 0",
                                        "truncate 0", "close", "break a b")]
        self.compare_session(cmds + ["help quit"], opts=("-f", "raw"), image=True)

    def test_native_aio_needs_direct_io(self):
        for opts in (("-k",), ("-i", "native"), ("-k", "-t", "writethrough"), ("-k", "-n"),
                     ("-i", "native", "-t", "directsync")):
            with self.subTest(opts=opts):
                self.compare_session(["write -P 0x57 0 4k", "read -P 0x57 0 4k"],
                                     opts=("-f", "raw", *opts), image=True)
        self.compare_session(["length"], opts=("-k", "--image-opts",
                                               "driver=raw,file.filename=IMG,cache.direct=on"))

    def test_info_by_driver(self):
        # a protocol's name is printed twice (format and protocol name); drivers that cannot
        # describe themselves make info fail silently
        for spec in ("driver=raw,file.filename=IMG", "driver=file,filename=IMG", "driver=null-co",
                     "driver=null-aio,size=1M", "driver=raw,file.driver=null-co",
                     "driver=raw,offset=512,file.filename=IMG"):
            with self.subTest(spec=spec):
                self.compare_session([f"open -o {spec}", "info", "length"])

    def test_filter_file_is_not_probed(self):
        # a filter's file child is a protocol node: no probing (and its warning), no raw options
        for spec in ("driver=preallocate,file.filename=IMG",
                     "driver=preallocate,file.filename=IMG,file.offset=512",
                     "driver=preallocate,prealloc-size=64k,file.driver=raw,file.offset=4k,"
                     "file.file.filename=IMG"):
            with self.subTest(spec=spec):
                self.compare_session([f"open -o {spec}", "write -P 0x58 0 4k", "info", "length",
                                      "read -P 0x58 0 4k"])

    def test_image_opts_messages(self):
        # with --image-opts no filename is named: "can't open: ..."
        for spec in ("driver=raw,file.filename=nosuch.img",
                     "driver=raw,file.filename=IMG,force-share=on",
                     "driver=raw,file.filename=IMG,bogus=1"):
            with self.subTest(spec=spec):
                ours = self.blkimg("io", "--image-opts", "-c", "length",
                                   spec.replace("IMG", "ours.img"))
                theirs = self.qemu_io("--image-opts", "-c", "length",
                                      spec.replace("IMG", "theirs.img"))
                self.assertEqual(ours.code, 1)
                self.assertSame(ours, theirs)
        self.compare_session(["length"], opts=("-f", "raw", "--image-opts",
                                               "driver=raw,file.filename=IMG"))
        self.compare_session(["length"], opts=("-f", "raw", "--image-opts"))

    def test_default_cache_mode_is_writethrough(self):
        # qemu-io flushes after every write unless -t/-n say otherwise (it is qemu-io's default
        # cache mode, not qemu-img's writeback); libblock's writethrough opens O_DSYNC
        if shutil.which("strace"):
            def syncs(*opts):
                trace = self.path("trace")
                subprocess.run(["strace", "-f", "-e", "trace=fdatasync", "-o", trace, "qemu-io",
                                *opts, "-c", "write 0 4k", "-c", "write 4k 4k",
                                "-c", "write 8k 4k", self.path("theirs.img")],
                               check=True, capture_output=True)
                with open(trace) as f:
                    return sum("fdatasync(" in line for line in f)
            self.assertGreaterEqual(syncs("-f", "raw"), 3)
            self.assertLessEqual(syncs("-f", "raw", "-t", "writeback"), 1)
        for argv, commands, dsync in (
                ([BLKIMG, "io", "-f", "raw", "ours.img"], (), True),
                ([BLKIMG, "io", "-f", "raw", "-t", "writeback", "ours.img"], (), False),
                ([BLKIMG, "io"], ("open -o driver=raw ours.img",), True),
                ([BLKIMG, "io"], ("open -t writeback -o driver=raw ours.img",), False)):
            with self.subTest(argv=argv, commands=commands):
                self.assertEqual(bool(self.fd_flags(argv, commands) & os.O_DSYNC), dsync)

    @unittest.skipUnless(shutil.which("strace"), "strace is not installed")
    def test_aio_flush_does_not_flush(self):
        # qemu-io's aio_flush drains; only close flushes a writeback image here (libblock with
        # worker threads, so that its fdatasync calls are system calls strace sees)
        def syncs(tool, name, *opts):
            trace = self.path("trace")
            # LeakSanitizer cannot run under ptrace: a sanitized build checks leaks elsewhere.
            env = dict(os.environ, ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") +
                       ":detect_leaks=0")
            subprocess.run(["strace", "-f", "-e", "trace=fdatasync,fsync", "-o", trace, *tool,
                            "-f", "raw", "-t", "writeback", *opts, "-c", "aio_write 0 4k",
                            "-c", "aio_flush", "-c", "write 4k 4k", self.path(name)],
                           check=True, capture_output=True, env=env)
            with open(trace) as f:
                return sum("fdatasync(" in line or "fsync(" in line for line in f)
        self.assertEqual(syncs([BLKIMG, "io"], "ours.img", "-i", "threads"),
                         syncs(["qemu-io"], "theirs.img"))

    def test_help(self):
        for topic in ("open", "close"):
            with self.subTest(topic=topic):
                self.compare([f"help {topic}"])


class ReopenTest(SessionTestCase):
    def test_read_only_and_back(self):
        self.compare_session(["write -P 0x61 0 4k", "reopen -r", "write 0 1", "aio_write 0 1",
                              "read -P 0x61 0 4k", "reopen -w", "write -P 0x62 0 4k", "reopen",
                              "write -P 0x63 4k 4k", "reopen -r", "reopen", "discard 0 1"],
                             opts=("-f", "raw"), image=True)
        # opened read-only: reopen keeps the mode, -w lets the next write take the permission
        self.compare_session(["reopen", "write 0 1", "reopen -w", "write -P 0x64 0 512",
                              "reopen -r", "read -P 0x64 0 512", "truncate 2M"],
                             opts=("-r", "-f", "raw"), image=True)

    def test_unknown_commands_and_errors_do_not_stop_the_run(self):
        # qemu-io runs every -c whatever failed before (and exits 1): "reopen -r" then "write"
        # must refuse the write, as it is no unknown command any more
        self.compare_session(["reopen -r", "write -P 0x71 0 1", "bogus", "reopen -w",
                              "write -P 0x72 1 1", "read 0", "write -P 0x73 2 1", "read -Z 0 1",
                              "write -P 0x74 3 1", "reopen -x", "write -P 0x75 4 1"],
                             opts=("-f", "raw"), image=True)

    def test_errors(self):
        for case in ("reopen -x", "reopen foo", "reopen -r -w", "reopen -w -w", "reopen -c bogus",
                     "reopen -c", "reopen -r -o read-only=on", "reopen -w -o read-only=off",
                     "reopen -c none -o cache.direct=on", "reopen -c none -o cache.no-flush=off",
                     "reopen -o bogus=1", "reopen -o file.locking=off",
                     "reopen -o file.locking=auto", "reopen -o file.aio=threads",
                     "reopen -o driver=file", "reopen -o file.filename=other.img",
                     "reopen -o node-name=x", "reopen -o file.node-name=y", "reopen -o cache=none",
                     "reopen -o cache.writeback=off", "reopen -o size=513", "reopen -o offset=2M",
                     "reopen -o size=2M", "reopen -o offset=512,size=1M", "reopen -o file=nosuch",
                     "reopen -o a.b=1", "reopen -o offset=2M,bogus=1",
                     "reopen -o bogus=1,file.cache.direct=x", "reopen -o force-share=off",
                     "reopen -o read-only=on", "reopen -o file.read-only=on",
                     "reopen -o read-only=on -o read-only=off"):
            with self.subTest(case=case):
                self.compare_session([case, "write -P 0x65 0 512", "length"],
                                     opts=("-f", "raw"), image=True)
        self.compare_session(["reopen -o detect-zeroes=unmap", "write -P 0 0 4k"],
                             opts=("-f", "raw", "-d", "ignore"), image=True)

    def test_options_take_effect(self):
        self.compare_session([
            "reopen -o offset=1024", "length", "read -v 0 16", "write -P 0x66 0 512",
            "reopen -o offset=0,size=512k", "length", "read 512k 1", "write 512k 1",
            "reopen -o size=1M", "reopen -o discard=ignore", "discard 0 4k", "read -P 0x66 1024 512",
            "reopen -o discard=unmap", "discard 0 64k", "map", "reopen -o detect-zeroes=unmap",
            "write -P 0 128k 64k", "map", "reopen -o detect-zeroes=off,discard=ignore",
            "write -P 0 256k 64k", "map", "reopen -o driver=raw,file.driver=file,file.filename=IMG",
            "reopen -o auto-read-only=on", "write -P 0x67 0 1"], opts=("-f", "raw"), image=True)
        ours = self.qemu_img("map", "--output=json", "-f", "raw", "ours.img").json()
        theirs = self.qemu_img("map", "--output=json", "-f", "raw", "theirs.img").json()
        self.assertEqual(ours, theirs)

    def test_cache_modes(self):
        self.compare_session([
            "reopen -c none", "write 1 1", "read -P 0xcd 1 1", "reopen -c writethrough",
            "reopen -c directsync", "write 3 5", "aio_write -P 0x68 8k 3", "reopen -c unsafe",
            "flush", "reopen -c writeback", "reopen -o cache.direct=on", "read 0 3",
            "reopen -o cache.direct=off,cache.no-flush=on", "flush", "reopen -c off"],
            opts=("-f", "raw"), image=True)
        # the image's descriptor, as both tools hold it (QEMU has no O_DSYNC: compare O_DIRECT)
        for commands in (("reopen -c none",), ("reopen -c none", "reopen -c writeback"),
                         ("reopen -o cache.direct=on",), ("reopen -c directsync", "reopen -r"),
                         ("reopen -r", "reopen -w")):
            with self.subTest(commands=commands):
                ours = self.fd_flags([BLKIMG, "io", "-f", "raw", "ours.img"], commands)
                theirs = self.fd_flags(["qemu-io", "-f", "raw", "theirs.img"], commands,
                                       image="theirs.img")
                mask = os.O_DIRECT | os.O_ACCMODE
                self.assertEqual(ours & mask, theirs & mask)

    def test_write_permission_is_taken_when_needed(self):
        # another user unshares write (as a guest device would): reopen -w succeeds, the write
        # after it fails on the lock, a read-only reopen gives up what was taken
        fds = [os.open(self.path(name), os.O_RDONLY) for name in ("ours.img", "theirs.img")]
        try:
            for fd in fds:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 201, os.SEEK_SET)
            ours, _ = self.compare_session(
                ["reopen -w", "read -P 0x41 0 1", "write 0 1", "reopen -r", "read -P 0x41 0 1",
                 "reopen -o read-only=off", "aio_write 0 1"], opts=("-r", "-f", "raw"), image=True)
            self.assertIn('Failed to get "write" lock', ours.err)
        finally:
            for fd in fds:
                os.close(fd)
        self.compare_session(["reopen -w", "reopen -o read-only=on", "write 0 1"],
                             opts=("-r", "-f", "raw"), image=True)

    def test_no_file(self):
        self.compare_session(["reopen", "reopen -r", "reopen -x", "open -o driver=raw IMG",
                              "reopen -r", "close", "reopen -w"])

    def test_help(self):
        self.compare(["help reopen"])
        self.compare(["help"])


if __name__ == "__main__":
    unittest.main()
