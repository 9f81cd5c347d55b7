"""Tests of the ctypes binding, cross-checked against Debian's qemu-img and qemu-io.

Run from this directory:  LIBBLOCK_LIB=<build>/capi/libblock.so.0 python3 -m unittest -v
(meson test -C <build> python_binding does exactly that).
"""

import errno
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
import unittest

import libblock

# Under a sanitized build the runtime is preloaded for the library (examples/meson.build);
# qemu-img/qemu-io started by these tests must not inherit it.
os.environ.pop('LD_PRELOAD', None)

MiB = 1024 * 1024
HAVE_QEMU = shutil.which('qemu-img') is not None and shutil.which('qemu-io') is not None
needs_qemu = unittest.skipUnless(HAVE_QEMU, 'qemu-img/qemu-io not installed')


def qemu_img(*args, check=True):
    return subprocess.run(['qemu-img', *args], capture_output=True, text=True, check=check)


def qemu_io(image, *commands, fmt='raw', readonly=False):
    """Runs qemu-io commands; returns (exit code, stdout + stderr)."""
    argv = ['qemu-io', '-f', fmt] + (['-r'] if readonly else [])
    for command in commands:
        argv += ['-c', command]
    proc = subprocess.run(argv + [image], capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix='libblock-py-')
        self.addCleanup(self.tmp.cleanup)
        self.ctx = libblock.Context()
        self.addCleanup(self.ctx.close)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def new_image(self, name='disk.raw', size=4 * MiB, options=None):
        path = self.path(name)
        self.ctx.create(path, 'raw', size, options)
        return path

    def assert_error(self, code, func, *args, **kwargs):
        with self.assertRaises(libblock.LibblockError) as cm:
            func(*args, **kwargs)
        self.assertEqual(cm.exception.errno, code, cm.exception)
        self.assertIsInstance(cm.exception, OSError)
        self.assertTrue(cm.exception.strerror)
        return cm.exception


class LibraryTest(Base):
    def test_version(self):
        self.assertRegex(libblock.version(), r'^\d+\.\d+\.\d+$')

    def test_drivers(self):
        self.assertIn('raw', self.ctx.drivers())
        self.assertNotIn('file', self.ctx.drivers())
        protocols = self.ctx.drivers(formats=False, protocols=True)
        self.assertIn('file', protocols)
        self.assertNotIn('raw', protocols)
        self.assertIn('preallocate', self.ctx.drivers(formats=False, filters=True))

    @needs_qemu
    def test_create_options_match_qemu_img_help(self):
        path = self.path('help.raw')
        ours = self.ctx.create_options('raw', path)
        # qemu-img lists "  name=<type> - help" lines for the format and its protocol
        help_text = qemu_img('create', '-f', 'raw', '-o', 'help', path).stdout
        theirs = {line.split('=')[0].strip() for line in help_text.splitlines()
                  if line.startswith('  ') and '=' in line}
        self.assertEqual({o['name'] for o in ours}, theirs)
        prealloc = next(o for o in ours if o['name'] == 'preallocation')
        self.assertEqual(prealloc['type'], 'enum')
        self.assertEqual(prealloc['default'], 'off')
        self.assertIn('falloc', prealloc['choices'])
        for option in ours:
            self.assertEqual(set(option), {'name', 'type', 'default', 'help', 'choices'})
            self.assertIn(option['type'], ('string', 'bool', 'number', 'size', 'enum'))
            self.assertTrue(option['help'])

    def test_create_options_errors(self):
        self.assert_error(errno.EINVAL, self.ctx.create_options, 'no-such-format')


class ContextTest(Base):
    def test_context_manager_closes_context_and_images(self):
        path = self.new_image()
        with libblock.Context() as ctx:
            image = ctx.open(path, format='raw')
            self.assertFalse(ctx.closed)
            self.assertFalse(image.closed)
        self.assertTrue(ctx.closed)
        self.assertTrue(image.closed)
        with self.assertRaises(ValueError):
            image.read(0, 512)
        with self.assertRaises(ValueError):
            ctx.open(path)
        image.close()  # closing again is harmless
        ctx.close()

    def test_closing_releases_the_image_lock(self):
        path = self.new_image()
        with libblock.Context() as ctx:
            ctx.open(path, format='raw', readonly=False)
            self.assert_error(errno.EAGAIN, self.ctx.open, path, format='raw', readonly=False)
        # the context closed its image: a new writer succeeds
        with self.ctx.open(path, format='raw', readonly=False) as image:
            self.assertFalse(image.closed)
        self.assertTrue(image.closed)

    def test_image_context_manager(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False) as image:
            image.write(0, b'abc')
        self.assertTrue(image.closed)
        with self.assertRaises(ValueError):
            image.size

    def test_warning_handler(self):
        path = self.new_image()
        messages = []
        with libblock.Context(on_warning=messages.append) as ctx:
            ctx.open(path, readonly=True).close()
            self.assertEqual(messages, [])  # read-only probing does not warn (as QEMU)
            ctx.open(path, readonly=False).close()
        self.assertEqual(len(messages), 1)
        self.assertIn('probing guessed raw', messages[0])

    def test_no_io_uring_and_aio_modes(self):
        path = self.new_image()
        with libblock.Context(no_io_uring=True) as ctx:
            for aio in (None, 'threads'):
                with ctx.open(path, format='raw', readonly=False, aio=aio) as image:
                    image.write(MiB, b'q' * 4096)
                    self.assertEqual(image.read(MiB, 4096), b'q' * 4096)
        with self.assertRaises(ValueError):
            self.ctx.open(path, aio='bogus')


class Qcow2Test(Base):
    """0.3: compressed writes and check, internal snapshots, through qcow2."""

    def test_snapshots(self):
        path = self.path('s.qcow2')
        self.ctx.create(path, 'qcow2', 4 * MiB)
        with self.ctx.open(path, format='qcow2', readonly=False) as img:
            img.write(0, b'a' * 65536)
            self.assertEqual(img.snapshots(), [])
            self.assertEqual(img.create_snapshot('first'), '1')
            img.write(0, b'b' * 65536)
            listed = img.snapshots()
            self.assertEqual([(s['id'], s['name'], s['icount']) for s in listed], [('1', 'first', None)])
            self.assertGreater(listed[0]['date_sec'], 0)
            img.apply_snapshot('first')
            self.assertEqual(img.read(0, 65536), b'a' * 65536)
            self.assert_error(errno.ENOENT, img.apply_snapshot, 'nope')
            self.assert_error(errno.EEXIST, img.create_snapshot, 'again', id='1')
            img.delete_snapshot(name='first')
            self.assertEqual(img.snapshots(), [])
        result = self.ctx.check(path)
        self.assertEqual((result['corruptions'], result['leaks']), (0, 0))

    def test_compressed_writes_and_check(self):
        self.assertEqual(self.ctx.drivers(compressed=True), ['qcow2'])
        path = self.path('c.qcow2')
        self.ctx.create(path, 'qcow2', 4 * MiB)
        data = (b'libblock ' * 20000)[:128 * 1024]
        with self.ctx.open(path, format='qcow2', readonly=False) as img:
            img.write(0, data, compressed=True)
            self.assertEqual(img.read(0, len(data)), data)
            self.assert_error(errno.EINVAL, img.write, 0, data[:4096], compressed=True)
        result = self.ctx.check(path)
        self.assertEqual(result['format'], 'qcow2')
        self.assertEqual((result['corruptions'], result['leaks'], result['check_errors']),
                         (0, 0, 0))
        self.assertEqual(result['compressed_clusters'], 2)
        self.assertEqual(result['allocated_clusters'], 2)
        # A leak made by hand (a refcount raised by one) is found, then repaired.
        with open(path, 'rb') as f:
            raw = bytearray(f.read())
        reftable = int.from_bytes(raw[48:56], 'big')
        block = int.from_bytes(raw[reftable:reftable + 8], 'big')
        refcount = int.from_bytes(raw[block:block + 2], 'big')  # the header's cluster
        raw[block:block + 2] = (refcount + 1).to_bytes(2, 'big')
        with open(path, 'wb') as f:
            f.write(bytes(raw))
        result = self.ctx.check(path)
        self.assertEqual(result['leaks'], 1)
        self.assertTrue(any('refcount=2 reference=1' in m for m in result['messages']),
                        result['messages'])
        result = self.ctx.check(path, repair='leaks')
        self.assertEqual(result['leaks_fixed'], 1)
        self.assertEqual(self.ctx.check(path)['leaks'], 0)
        self.assert_error(errno.ENOTSUP, self.ctx.check, self.new_image())


class CreateTest(Base):
    @needs_qemu
    def test_create_agrees_with_qemu_img_info(self):
        for options in (None, 'preallocation=off', {'preallocation': 'falloc'},
                        'preallocation=full'):
            with self.subTest(options=options):
                path = self.path('created.raw')
                if os.path.exists(path):
                    os.unlink(path)
                self.ctx.create(path, 'raw', 3 * MiB + 512, options)
                theirs = json.loads(qemu_img('info', '--output=json', path).stdout)
                self.assertEqual(theirs['format'], 'raw')
                self.assertEqual(theirs['virtual-size'], 3 * MiB + 512)
                preallocated = options not in (None, 'preallocation=off')
                if preallocated:
                    self.assertGreaterEqual(theirs['actual-size'], 3 * MiB)
                else:
                    self.assertLess(theirs['actual-size'], MiB)
                with self.ctx.open(path, format='raw') as image:
                    ours = image.info()
                self.assertEqual(ours, theirs)

    @needs_qemu
    def test_bad_option_message_matches_qemu_img(self):
        path = self.path('bad.raw')
        err = self.assert_error(errno.EINVAL, self.ctx.create, path, 'raw', MiB, 'bogus=1')
        proc = qemu_img('create', '-f', 'raw', '-o', 'bogus=1', path, '1M', check=False)
        self.assertEqual(proc.returncode, 1)
        self.assertEqual('qemu-img: ' + err.strerror, proc.stderr.strip())
        self.assertFalse(os.path.exists(path))

    def test_validate_only_creates_nothing(self):
        path = self.path('validate.raw')
        self.ctx.create(path, 'raw', MiB, validate_only=True)
        self.assertFalse(os.path.exists(path))
        self.assert_error(errno.EINVAL, self.ctx.create, path, 'raw', MiB, 'bogus=1',
                          validate_only=True)

    def test_unknown_format(self):
        self.assert_error(errno.EINVAL, self.ctx.create, self.path('x'), 'no-such-format', MiB)

    @needs_qemu
    def test_unsupported_format_is_refused(self):
        path = self.path('disk.qcow2')
        qemu_img('create', '-f', 'qcow2', path, '1M')
        if 'qcow2' in self.ctx.drivers():
            self.skipTest('this build supports qcow2')
        err = self.assert_error(errno.ENOTSUP, self.ctx.open, path)
        self.assertIn('qcow2', err.strerror)


class IoTest(Base):
    def test_write_read_roundtrip(self):
        path = self.new_image()
        data = bytes(range(256)) * 37  # not sector aligned in length
        with self.ctx.open(path, format='raw', readonly=False) as image:
            self.assertEqual(image.size, 4 * MiB)
            self.assertEqual(len(image), 4 * MiB)
            image.write(12345, data)
            image.write(MiB, b'fua', fua=True)
            image.flush()
            self.assertEqual(image.read(12345, len(data)), data)
            self.assertEqual(image.read(MiB - 1, 5), b'\0fua\0')
        with open(path, 'rb') as f:
            f.seek(12345)
            self.assertEqual(f.read(len(data)), data)

    @needs_qemu
    def test_qemu_io_reads_what_python_wrote(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False) as image:
            image.write(64 * 1024, b'\xab' * 65536)
            image.write_zeroes(96 * 1024, 16 * 1024)
        rc, out = qemu_io(path, 'read -P 0xab 64k 32k', 'read -P 0 96k 16k',
                          'read -P 0xab 112k 16k', 'read -P 0 0 64k', readonly=True)
        self.assertEqual(rc, 0, out)
        self.assertNotIn('Pattern verification failed', out)
        # and a wrong pattern is noticed, so the check above means something
        rc, out = qemu_io(path, 'read -P 0xac 64k 4k', readonly=True)
        self.assertIn('Pattern verification failed', out)

    @needs_qemu
    def test_python_reads_what_qemu_io_wrote(self):
        path = self.new_image()
        rc, out = qemu_io(path, 'write -P 0x5a 1M 128k', 'write -z 1088k 32k')
        self.assertEqual(rc, 0, out)
        with self.ctx.open(path, format='raw') as image:
            self.assertEqual(image.read(MiB, 64 * 1024), b'\x5a' * 65536)
            self.assertEqual(image.read(1088 * 1024, 32 * 1024), bytes(32 * 1024))
            self.assertEqual(image.read(1120 * 1024, 32 * 1024), b'\x5a' * 32 * 1024)

    def test_write_zeroes_flags(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False, unmap=True) as image:
            image.write(0, b'\xff' * MiB)
            image.write_zeroes(0, 256 * 1024, may_unmap=True)
            image.write_zeroes(256 * 1024, 4096, fua=True)
            self.assertEqual(image.read(0, 260 * 1024), bytes(260 * 1024))
            self.assertEqual(image.read(260 * 1024, 4), b'\xff' * 4)

    def test_discard_with_unmap_deallocates(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False, unmap=True) as image:
            image.write(0, b'\x01' * MiB)
            image.discard(0, MiB)
            image.flush()
            first = next(image.block_status())
            self.assertTrue(first.zero)
            self.assertGreaterEqual(first.length, MiB)
            self.assertEqual(image.read(0, 4096), bytes(4096))

    def test_discard_without_unmap_is_ignored(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False) as image:
            image.write(0, b'\x01' * 65536)
            image.discard(0, 65536)
            self.assertEqual(image.read(0, 65536), b'\x01' * 65536)

    @needs_qemu
    def test_truncate(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False) as image:
            err = self.assert_error(errno.EPERM, image.truncate, 8 * MiB)
            self.assertIn('resize', err.strerror)
        with self.ctx.open(path, format='raw', readonly=False, resize=True) as image:
            image.truncate(8 * MiB)
            self.assertEqual(image.size, 8 * MiB)
            image.truncate(10 * MiB, prealloc='falloc')
            self.assertEqual(len(image), 10 * MiB)
        info = json.loads(qemu_img('info', '--output=json', '-f', 'raw', path).stdout)
        self.assertEqual(info['virtual-size'], 10 * MiB)
        self.assertGreaterEqual(info['actual-size'], 2 * MiB)  # the falloc'ed tail

    def test_io_errors(self):
        path = self.new_image(size=MiB)
        with self.ctx.open(path, format='raw') as image:
            err = self.assert_error(errno.EIO, image.read, MiB, 512)
            self.assertIn('beyond the end', err.strerror)
            self.assert_error(errno.EPERM, image.write, 0, b'x')
            self.assert_error(errno.EPERM, image.write_zeroes, 0, 512)

    def test_reopen(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw') as image:
            self.assert_error(errno.EPERM, image.write, 0, b'x')
            image.reopen(readonly=False)
            image.write(0, b'now writable')
            image.reopen(readonly=True)
            self.assert_error(errno.EPERM, image.write, 0, b'x')
            self.assertEqual(image.read(0, 12), b'now writable')

    def test_cache_modes(self):
        path = self.new_image()
        for cache in ('writeback', 'none', 'writethrough', 'directsync', 'unsafe'):
            with self.subTest(cache=cache):
                with self.ctx.open(path, format='raw', readonly=False, cache=cache) as image:
                    image.write(4096, cache.encode())
                    self.assertEqual(image.read(4096, len(cache)), cache.encode())
                    # cache=none and directsync bypass the page cache: O_DIRECT on the file
                    self.assertEqual(open_flags(path) & os.O_DIRECT != 0,
                                     cache in ('none', 'directsync'))
        with self.assertRaises(ValueError):
            self.ctx.open(path, cache='sometimes')

    def test_options_text_dict_and_json(self):
        path = self.new_image()
        with self.ctx.open(options={'driver': 'raw', 'file.filename': path},
                           readonly=False) as image:
            image.write(0, b'dict')
        spec = 'json:' + json.dumps({'driver': 'raw',
                                     'file': {'driver': 'file', 'filename': path}})
        with self.ctx.open(spec) as image:
            self.assertEqual(image.read(0, 4), b'dict')
        with self.ctx.open(options='driver=raw,file.filename=' + path.replace(',', ',,'),
                           ) as image:
            self.assertEqual(image.read(0, 4), b'dict')
        err = self.assert_error(errno.EINVAL, self.ctx.open, path, format='raw',
                                options={'bogus-option': True})
        self.assertIn("does not support the option 'bogus-option'", err.strerror)


class InfoAndStatusTest(Base):
    @needs_qemu
    def test_info_matches_qemu_img(self):
        path = self.new_image(size=5 * MiB)
        qemu_io(path, 'write -P 1 0 64k')
        theirs = json.loads(qemu_img('info', '--output=json', '-f', 'raw', path).stdout)
        with self.ctx.open(path, format='raw') as image:
            self.assertEqual(image.info(), theirs)
            chain = image.info(backing_chain=True)
        self.assertEqual(chain, [theirs])

    @needs_qemu
    def test_block_status_matches_qemu_img_map(self):
        path = self.new_image(size=8 * MiB)
        qemu_io(path, 'write -P 7 0 64k', 'write -P 8 2M 1M', 'write -P 9 8128k 64k')
        with self.ctx.open(path, format='raw') as image:
            extents = list(image.block_status())
            # the extents tile the whole image, in order
            self.assertEqual(extents[0].offset, 0)
            for a, b in zip(extents, extents[1:]):
                self.assertEqual(a.offset + a.length, b.offset)
            self.assertEqual(extents[-1].offset + extents[-1].length, 8 * MiB)
            self.assertTrue(extents[-1].eof)
            self.assertEqual(list(image.block_status(2 * MiB, 4096))[0].length, 4096)
        ours = merge([{'start': e.offset, 'length': e.length, 'depth': e.depth,
                       'present': e.allocated, 'zero': e.zero, 'data': e.data,
                       'offset': e.host_offset} for e in extents])
        theirs = json.loads(qemu_img('map', '--output=json', '-f', 'raw', path).stdout)
        self.assertEqual(ours, merge(theirs))
        data = [(e['start'], e['length']) for e in ours if e['data']]
        self.assertIn((2 * MiB, MiB), data)


def wait_for_prompt(proc, prompt, timeout=10):
    """Reads `proc`'s stdout until `prompt` appears; fails if it exits or times out."""
    seen = b''
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while prompt not in seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError('no %r from %s: %r' % (prompt, proc.args[0], seen))
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError('%s exited: %r' % (proc.args[0], seen))
            seen += chunk


def open_flags(path):
    """The open(2) flags of this process's descriptor for `path` (Linux /proc)."""
    for fd in os.listdir('/proc/self/fd'):
        try:
            if os.readlink('/proc/self/fd/' + fd) != path:
                continue
            with open('/proc/self/fdinfo/' + fd) as info:
                for line in info:
                    if line.startswith('flags:'):
                        return int(line.split()[1], 8)
        except OSError:  # closed meanwhile (e.g. the listing's own descriptor)
            continue
    raise AssertionError('%s is not open' % path)


def merge(extents):
    """Joins neighbouring extents that differ only in position (as qemu-img map does)."""
    merged = []
    for e in extents:
        e = dict(e)
        if merged:
            last = merged[-1]
            same = all(last[k] == e[k] for k in ('depth', 'present', 'zero', 'data'))
            contiguous = (last.get('offset') is None) == (e.get('offset') is None) and (
                e.get('offset') is None or last['offset'] + last['length'] == e['offset'])
            if same and contiguous and last['start'] + last['length'] == e['start']:
                last['length'] += e['length']
                continue
        merged.append(e)
    return merged


class LockingTest(Base):
    @needs_qemu
    def test_qemu_holding_the_image_refuses_our_writer(self):
        path = self.new_image()
        # An interactive qemu-io keeps the image open read-write (sharing everything); its
        # prompt appears once the image is open and locked.
        holder = subprocess.Popen(['qemu-io', '-f', 'raw', path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdout.close)
        self.addCleanup(holder.stdin.close)
        wait_for_prompt(holder, b'qemu-io> ')
        # Our backends, like QEMU's guest devices, do not share "write": with a writer
        # present, they cannot take the shared lock (QEMU's message for a VM too).
        err = self.assert_error(errno.EAGAIN, self.ctx.open, path, format='raw',
                                readonly=False)
        self.assertIn('Failed to get shared "write" lock', err.strerror)
        self.assertIn('Is another process using the image [%s]?' % path, err.strerror)
        # the same for a reader, unless it ignores locks (qemu-img -U)
        self.assert_error(errno.EAGAIN, self.ctx.open, path, format='raw')
        with self.ctx.open(path, format='raw', force_share=True) as image:
            self.assertEqual(image.size, 4 * MiB)
        holder.stdin.close()  # qemu-io quits at end of input and releases the image
        self.assertEqual(holder.wait(timeout=10), 0)
        self.ctx.open(path, format='raw', readonly=False).close()

    @needs_qemu
    def test_our_writer_refuses_qemu(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False):
            rc, out = qemu_io(path, 'write 0 4k')
            self.assertNotEqual(rc, 0)
            self.assertIn('Failed to get "write" lock', out)
            rc, out = qemu_io(path, 'read 0 4k', readonly=True)  # read-only is shared
            self.assertEqual(rc, 0, out)
        rc, out = qemu_io(path, 'write 0 4k')
        self.assertEqual(rc, 0, out)

    @needs_qemu
    def test_share_all_lets_qemu_write(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False, share_all=True) as img:
            rc, out = qemu_io(path, 'write -P 0x33 0 4k')
            self.assertEqual(rc, 0, out)
            self.assertEqual(img.read(0, 4096), b'\x33' * 4096)


class AsyncTest(Base):
    def run_loop(self, expected):
        """Reaps with a selector on the context until `expected` requests completed."""
        selector = selectors.DefaultSelector()
        self.addCleanup(selector.close)
        selector.register(self.ctx, selectors.EVENT_READ)
        done = []
        deadline = time.monotonic() + 20
        while len(done) < expected:
            self.assertLess(time.monotonic(), deadline, 'completions never arrived')
            selector.select(timeout=1)
            done += self.ctx.reap(timeout=0)
        self.assertEqual(self.ctx.reap(timeout=0), [])  # nothing completes twice
        self.assertEqual(self.ctx.inflight, 0)
        return done

    @needs_qemu
    def test_many_writes_and_reads(self):
        path = self.new_image(size=8 * MiB)
        count = 128
        with self.ctx.open(path, format='raw', readonly=False) as image:
            writes = [image.submit_write(i * 65536, bytes([i % 251 + 1]) * 65536, user_data=i)
                      for i in range(count)]
            self.assertEqual(self.ctx.inflight, count)
            done = self.run_loop(count)
            self.assertEqual(sorted(r.user_data for r in done), list(range(count)))
            self.assertEqual(len({id(r) for r in done}), count)
            for request in writes:
                self.assertTrue(request.done)
                self.assertEqual(request.ret, 0)
                self.assertIsNone(request.result())
            reads = [image.submit_read(i * 65536 + 100, 1000, user_data=('r', i))
                     for i in range(count)]
            self.run_loop(count)
            for i, request in enumerate(reads):
                self.assertEqual(request.result(), bytes([i % 251 + 1]) * 1000)
        rc, out = qemu_io(path, 'read -P 1 0 64k', 'read -P 128 %d 64k' % (127 * 65536),
                          readonly=True)
        self.assertEqual(rc, 0, out)
        self.assertNotIn('Pattern verification failed', out)

    def test_other_requests(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw', readonly=False, unmap=True) as image:
            image.write(0, b'\xee' * MiB)
            reqs = [image.submit_write_zeroes(0, 4096, user_data='z'),
                    image.submit_discard(MiB - 65536, 65536, user_data='d'),
                    image.submit_flush(user_data='f')]
            done = self.run_loop(3)
            self.assertEqual({r.user_data for r in done}, {'z', 'd', 'f'})
            for request in reqs:
                self.assertEqual(request.result(), None)
            self.assertEqual(image.read(0, 4097), bytes(4096) + b'\xee')
            self.assertEqual(image.read(MiB - 65536, 4), bytes(4))

    def test_blocking_reap(self):
        path = self.new_image()
        with self.ctx.open(path, format='raw') as image:
            request = image.submit_read(0, 512)
            done = self.ctx.reap(min=1, timeout=None)
            self.assertEqual(done, [request])
            self.assertEqual(request.data, bytes(512))

    def test_backpressure_and_errors(self):
        path = self.new_image(size=MiB)
        self.ctx.set_max_inflight(4)
        with self.ctx.open(path, format='raw') as image:
            for i in range(4):
                image.submit_read(i * 512, 512)
            self.assert_error(errno.EAGAIN, image.submit_read, 0, 512)
            self.assertEqual(len(self.run_loop(4)), 4)  # the rejected one never completes
            # a request that fails completes with its error
            request = image.submit_read(MiB, 512)
            self.run_loop(1)
            self.assertEqual(request.ret, -errno.EIO)
            with self.assertRaises(libblock.LibblockError) as cm:
                request.result()
            self.assertEqual(cm.exception.errno, errno.EIO)
            self.assertIsNone(request.data)
            # a write through a read-only backend: rejected or failed, never success
            try:
                request = image.submit_write(0, b'x')
            except libblock.LibblockError as err:
                self.assertEqual(err.errno, errno.EPERM)
            else:
                self.run_loop(1)
                self.assertEqual(request.ret, -errno.EPERM)

    def test_close_context_with_requests_in_flight(self):
        path = self.new_image()
        ctx = libblock.Context()
        image = ctx.open(path, format='raw', readonly=False)
        for i in range(16):
            image.submit_write(i * 4096, b'\x42' * 4096)
        ctx.close()  # completes and drops the requests; must not crash
        self.assertTrue(image.closed)
        with self.ctx.open(path, format='raw') as image:
            self.assertEqual(image.read(0, 16 * 4096), b'\x42' * 16 * 4096)


if __name__ == '__main__':
    unittest.main()
