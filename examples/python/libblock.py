"""libblock.py: a ctypes binding of libblock's C ABI (include/libblock.h), no build step.

The library is found through the LIBBLOCK_LIB environment variable (a path to
libblock.so.0), else through ctypes.util.find_library('block'), else as 'libblock.so.0' on
the loader's search path.

    import libblock
    with libblock.Context() as ctx:
        ctx.create('disk.raw', 'raw', 64 << 20, 'preallocation=falloc')
        with ctx.open('disk.raw', format='raw', readonly=False) as img:
            img.write(0, b'hello')
            print(img.read(0, 5), len(img), img.info()['format'])
            for extent in img.block_status():
                print(extent)

Failures raise LibblockError, an OSError whose errno is the library's and whose strerror
is lb_get_error()'s message. Closing a Context closes every image opened in it.

Asynchronous requests: Image.submit_read/submit_write/... return a Request; Context.reap()
runs the event loop and returns the requests that completed. A Context has fileno(), so
it can be registered with selectors/asyncio: when it is readable, call reap(timeout=0).
"""

import ctypes
import ctypes.util
import errno as _errno
import itertools
import json
import os
from collections import namedtuple

__all__ = ['LibblockError', 'Context', 'Image', 'Backend', 'Extent', 'Request', 'version',
           'load_library']

# ---- the C declarations (mirroring include/libblock.h exactly) -------------------------

_c_char_p = ctypes.c_char_p
_void_p = ctypes.c_void_p


class _OptionDesc(ctypes.Structure):
    """struct lb_option_desc"""
    _fields_ = [('struct_size', ctypes.c_size_t),
                ('name', _c_char_p),
                ('type', _c_char_p),
                ('default_value', _c_char_p),
                ('help', _c_char_p),
                ('choices', _c_char_p)]


class _OpenArgs(ctypes.Structure):
    """struct lb_open_args"""
    _fields_ = [('struct_size', ctypes.c_size_t),
                ('filename', _c_char_p),
                ('format', _c_char_p),
                ('options', _c_char_p),
                ('opts', _void_p),
                ('flags', ctypes.c_uint32),
                ('name', _c_char_p)]


class _CheckResult(ctypes.Structure):
    """struct lb_check_result (0.3)"""
    _fields_ = [('struct_size', ctypes.c_size_t),
                ('corruptions', ctypes.c_int64),
                ('leaks', ctypes.c_int64),
                ('check_errors', ctypes.c_int64),
                ('corruptions_fixed', ctypes.c_int64),
                ('leaks_fixed', ctypes.c_int64),
                ('image_end_offset', ctypes.c_int64),
                ('total_clusters', ctypes.c_int64),
                ('allocated_clusters', ctypes.c_int64),
                ('fragmented_clusters', ctypes.c_int64),
                ('compressed_clusters', ctypes.c_int64),
                ('format', _c_char_p),
                ('failed_errno', ctypes.c_int)]


_CHECK_MESSAGE_FN = ctypes.CFUNCTYPE(None, _c_char_p, _void_p)


class _Snapshot(ctypes.Structure):
    _fields_ = [
        ('struct_size', ctypes.c_size_t),
        ('id', ctypes.c_char_p),
        ('name', ctypes.c_char_p),
        ('vm_state_size', ctypes.c_uint64),
        ('date_sec', ctypes.c_uint32),
        ('date_nsec', ctypes.c_uint32),
        ('vm_clock_nsec', ctypes.c_uint64),
        ('icount', ctypes.c_uint64),
    ]


class _ImageInfo(ctypes.Structure):
    """struct lb_image_info (allocated by the library)"""


_ImageInfo._fields_ = [('struct_size', ctypes.c_size_t),
                       ('filename', _c_char_p),
                       ('format', _c_char_p),
                       ('virtual_size', ctypes.c_uint64),
                       ('actual_size', ctypes.c_int64),
                       ('cluster_size', ctypes.c_uint32),
                       ('dirty', ctypes.c_bool),
                       ('encrypted', ctypes.c_bool),
                       ('backing_filename', _c_char_p),
                       ('full_backing_filename', _c_char_p),
                       ('backing_format', _c_char_p),
                       ('format_specific', _c_char_p),
                       ('backing', ctypes.POINTER(_ImageInfo)),
                       ('json', _c_char_p)]


class _Extent(ctypes.Structure):
    """struct lb_extent"""
    _fields_ = [('struct_size', ctypes.c_size_t),
                ('length', ctypes.c_uint64),
                ('flags', ctypes.c_uint32),
                ('has_host_offset', ctypes.c_bool),
                ('host_offset', ctypes.c_uint64),
                ('depth', ctypes.c_uint32)]


class _Completion(ctypes.Structure):
    """struct lb_completion"""
    _fields_ = [('user_data', _void_p),
                ('ret', ctypes.c_int)]


_WARNING_FN = ctypes.CFUNCTYPE(None, _c_char_p, _void_p)

# flags
CONTEXT_NO_IO_URING = 0x1
DRIVER_FORMATS, DRIVER_PROTOCOLS, DRIVER_FILTERS, DRIVER_COMPRESSED = 0x1, 0x2, 0x4, 0x8
CREATE_VALIDATE_ONLY = 0x1
OPEN_RDWR = 0x1
OPEN_SHARE_RW = 0x2
OPEN_RESIZE = 0x4
OPEN_FORCE_SHARE = 0x8
OPEN_NO_BACKING = 0x10
OPEN_UNMAP = 0x20
OPEN_SHARE_ALL = 0x40
_CACHE_MODES = {'writeback': 0x000, 'none': 0x100, 'writethrough': 0x200,
                'directsync': 0x300, 'unsafe': 0x400}
_AIO_MODES = {None: 0x0000, 'default': 0x0000, 'threads': 0x1000, 'io_uring': 0x2000}
INFO_BACKING_CHAIN = 0x1
REQ_FUA, REQ_MAY_UNMAP, REQ_NO_FALLBACK, REQ_COMPRESSED = 0x1, 0x2, 0x4, 0x8
CHECK_FIX_LEAKS, CHECK_FIX_ERRORS = 0x1, 0x2
STATUS_DATA, STATUS_ZERO, STATUS_ALLOCATED, STATUS_EOF = 0x01, 0x02, 0x10, 0x20

# name: (restype, argtypes)
_PROTOTYPES = {
    'lb_version': (_c_char_p, []),
    'lb_get_error': (_c_char_p, []),
    'lb_get_errno': (ctypes.c_int, []),
    'lb_free': (None, [_void_p]),
    'lb_context_new': (ctypes.c_int, [ctypes.c_uint32, ctypes.POINTER(_void_p)]),
    'lb_context_free': (None, [_void_p]),
    'lb_context_set_warning_handler': (None, [_void_p, _WARNING_FN, _void_p]),
    'lb_context_add_object': (ctypes.c_int, [_void_p, _c_char_p]),
    'lb_create_options': (ctypes.c_int, [_void_p, _c_char_p, _c_char_p,
                                         ctypes.POINTER(_OptionDesc), ctypes.c_size_t]),
    'lb_driver_list': (_void_p, [_void_p, ctypes.c_uint32]),  # char *, freed with lb_free
    'lb_create': (ctypes.c_int, [_void_p, _c_char_p, _c_char_p, _c_char_p, ctypes.c_uint64,
                                 ctypes.c_uint32]),
    'lb_open_ex': (ctypes.c_int, [_void_p, ctypes.POINTER(_OpenArgs), ctypes.POINTER(_void_p)]),
    'lb_node_open': (ctypes.c_int, [_void_p, ctypes.POINTER(_OpenArgs),
                                    ctypes.POINTER(_void_p)]),
    'lb_node_close': (None, [_void_p]),
    'lb_backend_get_node': (ctypes.c_int, [_void_p, ctypes.POINTER(_void_p)]),
    'lb_close': (ctypes.c_int, [_void_p]),
    'lb_get_size': (ctypes.c_int64, [_void_p]),
    'lb_reopen': (ctypes.c_int, [_void_p, ctypes.c_uint32]),
    'lb_node_get_info': (ctypes.c_int, [_void_p, ctypes.c_uint32,
                                        ctypes.POINTER(ctypes.POINTER(_ImageInfo))]),
    'lb_image_info_free': (None, [ctypes.POINTER(_ImageInfo)]),
    'lb_pread': (ctypes.c_int, [_void_p, _void_p, ctypes.c_size_t, ctypes.c_uint64,
                                ctypes.c_uint32]),
    'lb_pwrite': (ctypes.c_int, [_void_p, _void_p, ctypes.c_size_t, ctypes.c_uint64,
                                 ctypes.c_uint32]),
    'lb_pwrite_zeroes': (ctypes.c_int, [_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                        ctypes.c_uint32]),
    'lb_discard': (ctypes.c_int, [_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint32]),
    'lb_flush': (ctypes.c_int, [_void_p, ctypes.c_uint32]),
    'lb_truncate': (ctypes.c_int, [_void_p, ctypes.c_uint64, _c_char_p, ctypes.c_uint32]),
    'lb_block_status': (ctypes.c_int, [_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                       ctypes.c_uint32, ctypes.POINTER(_Extent)]),
    'lb_aio_pread': (ctypes.c_int, [_void_p, _void_p, ctypes.c_size_t, ctypes.c_uint64,
                                    ctypes.c_uint32, _void_p]),
    'lb_aio_pwrite': (ctypes.c_int, [_void_p, _void_p, ctypes.c_size_t, ctypes.c_uint64,
                                     ctypes.c_uint32, _void_p]),
    'lb_aio_pwrite_zeroes': (ctypes.c_int, [_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                            ctypes.c_uint32, _void_p]),
    'lb_aio_discard': (ctypes.c_int, [_void_p, ctypes.c_uint64, ctypes.c_uint64,
                                      ctypes.c_uint32, _void_p]),
    'lb_aio_flush': (ctypes.c_int, [_void_p, ctypes.c_uint32, _void_p]),
    'lb_context_set_max_inflight': (ctypes.c_int, [_void_p, ctypes.c_uint]),
    'lb_context_get_inflight': (ctypes.c_int, [_void_p]),
    'lb_get_fd': (ctypes.c_int, [_void_p]),
    'lb_reap': (ctypes.c_int, [_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int64,
                               ctypes.POINTER(_Completion)]),
    'lb_check': (ctypes.c_int, [_void_p, ctypes.POINTER(_OpenArgs), ctypes.c_uint32,
                                _CHECK_MESSAGE_FN, _void_p, ctypes.POINTER(_CheckResult)]),
    'lb_snapshot_list_get': (ctypes.c_int, [_void_p, ctypes.POINTER(_void_p)]),
    'lb_snapshot_list_count': (ctypes.c_size_t, [_void_p]),
    'lb_snapshot_list_entry': (ctypes.c_int, [_void_p, ctypes.c_size_t, ctypes.POINTER(_Snapshot)]),
    'lb_snapshot_list_free': (None, [_void_p]),
    'lb_snapshot_create': (ctypes.c_int, [_void_p, ctypes.POINTER(_Snapshot), ctypes.POINTER(_void_p)]),
    'lb_snapshot_apply': (ctypes.c_int, [_void_p, _c_char_p]),
    'lb_snapshot_delete': (ctypes.c_int, [_void_p, _c_char_p, _c_char_p]),
}

_lib = None


def load_library():
    """Loads libblock once (see the module doc for where it is looked for)."""
    global _lib
    if _lib is not None:
        return _lib
    path = os.environ.get('LIBBLOCK_LIB') or ctypes.util.find_library('block') or \
        'libblock.so.0'
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in _PROTOTYPES.items():
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
    _lib = lib
    return lib


# ---- errors ----------------------------------------------------------------------------

class LibblockError(OSError):
    """A libblock failure: .errno is the errno, .strerror lb_get_error()'s message."""

    def __init__(self, errno, message):
        super().__init__(errno, message)


def _error(ret):
    """The exception for a failed call that returned `ret` (a negative errno)."""
    lib = load_library()
    message = lib.lb_get_error().decode('utf-8', 'replace')
    code = -ret if ret < 0 else (lib.lb_get_errno() or _errno.EIO)
    return LibblockError(code, message or os.strerror(code))


def _check(ret):
    if ret < 0:
        raise _error(ret)
    return ret


def _enc(text):
    if text is None:
        return None
    return os.fsencode(text) if isinstance(text, (str, os.PathLike)) else bytes(text)


def _dec(raw):
    return None if raw is None else raw.decode('utf-8', 'replace')


def _options_text(options):
    """Options as QEMU's "key=value,..." text; a dict is joined (commas doubled)."""
    if options is None or isinstance(options, (str, bytes)):
        return options
    return ','.join('%s=%s' % (key, _option_value(value)) for key, value in options.items())


def _option_value(value):
    if isinstance(value, bool):
        value = 'on' if value else 'off'
    return str(value).replace(',', ',,')


def version():
    """The library version, e.g. '0.1.0'."""
    return load_library().lb_version().decode()


# ---- extents and asynchronous requests ---------------------------------------------------

class Extent(namedtuple('Extent', 'offset length flags depth host_offset')):
    """One range of lb_block_status: `offset`/`length` in guest bytes, `flags` the raw
    LB_STATUS_* bits, `host_offset` None when unknown."""
    __slots__ = ()

    data = property(lambda self: bool(self.flags & STATUS_DATA))
    zero = property(lambda self: bool(self.flags & STATUS_ZERO))
    allocated = property(lambda self: bool(self.flags & STATUS_ALLOCATED))
    eof = property(lambda self: bool(self.flags & STATUS_EOF))


class Request:
    """An asynchronous request. After Context.reap() returned it: `done` is True, `ret` the
    result (0 or -errno), `data` the bytes read (reads), and result() returns the data or
    raises its LibblockError."""

    def __init__(self, kind, offset, length, user_data, buffer=None):
        self.kind = kind
        self.offset = offset
        self.length = length
        self.user_data = user_data  # the caller's own tag
        self.done = False
        self.ret = None
        self._buffer = buffer  # kept alive until reaped: the library writes/reads it

    @property
    def data(self):
        if self.kind != 'read' or not self.done or self.ret != 0:
            return None
        return self._buffer.raw

    def result(self):
        if not self.done:
            raise RuntimeError('request not completed yet')
        if self.ret < 0:
            raise LibblockError(-self.ret, os.strerror(-self.ret))
        return self.data

    def __repr__(self):
        return '<Request %s offset=%d length=%d done=%s ret=%s>' % (
            self.kind, self.offset, self.length, self.done, self.ret)


# ---- contexts --------------------------------------------------------------------------

class Context:
    """An event loop and a block graph (lb_context). Use as a context manager, or close()."""

    def __init__(self, no_io_uring=False, on_warning=None):
        """`on_warning(message)` receives non-fatal diagnostics (default: stderr)."""
        self._lib = load_library()
        handle = _void_p()
        _check(self._lib.lb_context_new(CONTEXT_NO_IO_URING if no_io_uring else 0,
                                        ctypes.byref(handle)))
        self._handle = handle
        self._images = []
        self._pending = {}  # user_data id -> Request, keeps buffers alive while in flight
        self._ids = itertools.count(1)
        self._warning_fn = None
        if on_warning is not None:
            # The ctypes callback must outlive the context: keep a reference.
            self._warning_fn = _WARNING_FN(lambda msg, _: on_warning(_dec(msg)))
            self._lib.lb_context_set_warning_handler(handle, self._warning_fn, None)

    # lifetime
    @property
    def closed(self):
        return self._handle is None

    def close(self):
        """Closes every image still open, then the context. Requests still in flight are
        completed (and dropped) by the library."""
        if self._handle is None:
            return
        for image in self._images:
            image._forget()
        self._images = []
        self._lib.lb_context_free(self._handle)
        self._handle = None
        self._pending.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to do
            pass

    def _ptr(self):
        if self._handle is None:
            raise ValueError('I/O operation on a closed libblock context')
        return self._handle

    # drivers and images
    def drivers(self, formats=True, protocols=False, filters=False, compressed=False):
        """Names of the drivers of the given kinds this build can open; with `compressed`,
        only the formats whose images store compressed clusters."""
        flags = ((DRIVER_FORMATS if formats else 0) | (DRIVER_PROTOCOLS if protocols else 0) |
                 (DRIVER_FILTERS if filters else 0) | (DRIVER_COMPRESSED if compressed else 0))
        raw = self._lib.lb_driver_list(self._ptr(), flags)
        if not raw:
            raise _error(-self._lib.lb_get_errno())
        try:
            return ctypes.string_at(raw).decode().split()
        finally:
            self._lib.lb_free(raw)

    def create(self, filename, fmt='raw', size=0, options=None, validate_only=False):
        """Creates an image (qemu-img create); `options` as "k=v,..." text or a dict."""
        _check(self._lib.lb_create(self._ptr(), _enc(filename), _enc(fmt),
                                   _enc(_options_text(options)), size,
                                   CREATE_VALIDATE_ONLY if validate_only else 0))

    def create_options(self, fmt='raw', filename=None):
        """The creation options of `fmt` as dicts with name, type, default, help, choices
        (choices a list or None)."""
        count = _check(self._lib.lb_create_options(self._ptr(), _enc(fmt), _enc(filename),
                                                   None, 0))
        descs = (_OptionDesc * count)()
        for desc in descs:
            desc.struct_size = ctypes.sizeof(_OptionDesc)
        count = min(count, _check(self._lib.lb_create_options(self._ptr(), _enc(fmt),
                                                              _enc(filename), descs, count)))
        return [{'name': _dec(d.name), 'type': _dec(d.type), 'default': _dec(d.default_value),
                 'help': _dec(d.help),
                 'choices': _dec(d.choices).split('|') if d.choices else None}
                for d in descs[:count]]

    def add_object(self, spec):
        """Adds an object in QEMU's --object syntax, e.g. "secret,id=s0,data=x"."""
        _check(self._lib.lb_context_add_object(self._ptr(), _enc(spec)))

    def open(self, filename=None, format=None, options=None, readonly=True, force_share=False,
             cache=None, aio=None, share_rw=False, resize=False, unmap=False,
             no_backing=False, name=None, share_all=False):
        """Opens an image and returns an Image (a backend). `format` None probes;
        `options` as "k=v,..." / "json:{...}" text or a dict; `cache` one of writeback, none,
        writethrough, directsync, unsafe; `aio` 'threads' or 'io_uring'. `share_all` lets
        other users write and resize meanwhile, as next to qemu-img or qemu-io."""
        if cache is not None and cache not in _CACHE_MODES:
            raise ValueError('unknown cache mode %r' % (cache,))
        if aio not in _AIO_MODES:
            raise ValueError('unknown aio mode %r' % (aio,))
        flags = ((0 if readonly else OPEN_RDWR) | (OPEN_FORCE_SHARE if force_share else 0) |
                 (OPEN_SHARE_RW if share_rw else 0) | (OPEN_RESIZE if resize else 0) |
                 (OPEN_UNMAP if unmap else 0) | (OPEN_NO_BACKING if no_backing else 0) |
                 (OPEN_SHARE_ALL if share_all else 0) |
                 _CACHE_MODES.get(cache or 'writeback') | _AIO_MODES[aio])
        args = _OpenArgs(ctypes.sizeof(_OpenArgs), _enc(filename), _enc(format),
                         _enc(_options_text(options)), None, flags, _enc(name))
        handle = _void_p()
        _check(self._lib.lb_open_ex(self._ptr(), ctypes.byref(args), ctypes.byref(handle)))
        image = Image(self, handle)
        self._images.append(image)
        return image

    def check(self, filename, format=None, repair=None, options=None):
        """qemu-img check: returns a dict of what the check found (corruptions, leaks,
        check_errors, ..., messages: the lines it printed). `repair` None, 'leaks' or 'all'
        (the image is then opened read-write)."""
        if repair not in (None, 'leaks', 'all'):
            raise ValueError('repair must be None, "leaks" or "all"')
        fix = {None: 0, 'leaks': CHECK_FIX_LEAKS,
               'all': CHECK_FIX_LEAKS | CHECK_FIX_ERRORS}[repair]
        args = _OpenArgs(ctypes.sizeof(_OpenArgs), _enc(filename), _enc(format),
                         _enc(_options_text(options)), None,
                         OPEN_SHARE_ALL | (OPEN_RDWR if fix else 0), None)
        messages = []
        callback = _CHECK_MESSAGE_FN(lambda line, _: messages.append(_dec(line)))
        result = _CheckResult()
        result.struct_size = ctypes.sizeof(_CheckResult)
        _check(self._lib.lb_check(self._ptr(), ctypes.byref(args), fix, callback, None,
                                  ctypes.byref(result)))
        out = {name: getattr(result, name) for name, _ in _CheckResult._fields_
               if name not in ('struct_size', 'format')}
        out['format'] = _dec(result.format) if result.format else None
        out['messages'] = messages
        return out

    # asynchronous I/O
    def fileno(self):
        """The descriptor that is readable when reap() has something to do."""
        return self._lib.lb_get_fd(self._ptr())

    @property
    def inflight(self):
        """Requests accepted and not yet reaped."""
        return _check(self._lib.lb_context_get_inflight(self._ptr()))

    def set_max_inflight(self, count):
        _check(self._lib.lb_context_set_max_inflight(self._ptr(), count))

    def reap(self, min=0, max=64, timeout=None):
        """Runs the loop and returns the completed Requests: at least `min` unless
        `timeout` (seconds; None waits without limit, 0 takes only what is ready) ends
        first."""
        out = (_Completion * max)()
        timeout_ns = -1 if timeout is None else int(timeout * 1e9)
        count = _check(self._lib.lb_reap(self._ptr(), min, max, timeout_ns, out))
        done = []
        for completion in out[:count]:
            request = self._pending.pop(completion.user_data)
            request.done = True
            request.ret = completion.ret
            done.append(request)
        return done

    def _submit(self, request, submit):
        """Calls submit(user_data id) and tracks the request until it is reaped."""
        key = next(self._ids)
        ret = submit(key)
        if ret < 0:
            raise _error(ret)  # rejected: it will never complete
        self._pending[key] = request
        return request


# ---- images ----------------------------------------------------------------------------

class Image:
    """An open image (lb_backend): the I/O interface. Created by Context.open()."""

    def __init__(self, context, handle):
        self._context = context
        self._lib = context._lib
        self._handle = handle

    def _forget(self):
        """The context freed the backend (Context.close)."""
        self._handle = None

    def _ptr(self):
        if self._handle is None:
            raise ValueError('I/O operation on a closed libblock image')
        return self._handle

    @property
    def closed(self):
        return self._handle is None

    @property
    def context(self):
        return self._context

    def close(self):
        """Completes requests in flight, flushes and closes; raises if the flush failed."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        self._context._images.remove(self)
        _check(self._lib.lb_close(handle))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # geometry
    @property
    def size(self):
        return _check(self._lib.lb_get_size(self._ptr()))

    def __len__(self):
        return self.size

    # synchronous I/O
    def read(self, offset, length):
        buf = ctypes.create_string_buffer(length)
        _check(self._lib.lb_pread(self._ptr(), buf, length, offset, 0))
        return buf.raw

    def write(self, offset, data, fua=False, compressed=False):
        data = bytes(data)
        flags = (REQ_FUA if fua else 0) | (REQ_COMPRESSED if compressed else 0)
        _check(self._lib.lb_pwrite(self._ptr(), data, len(data), offset, flags))

    def write_zeroes(self, offset, length, may_unmap=False, no_fallback=False, fua=False):
        flags = ((REQ_MAY_UNMAP if may_unmap else 0) | (REQ_NO_FALLBACK if no_fallback else 0) |
                 (REQ_FUA if fua else 0))
        _check(self._lib.lb_pwrite_zeroes(self._ptr(), offset, length, flags))

    def discard(self, offset, length):
        _check(self._lib.lb_discard(self._ptr(), offset, length, 0))

    def flush(self):
        _check(self._lib.lb_flush(self._ptr(), 0))

    def truncate(self, size, prealloc=None):
        """Resizes the image (needs open(..., resize=True))."""
        _check(self._lib.lb_truncate(self._ptr(), size, _enc(prealloc), 0))

    def reopen(self, readonly):
        _check(self._lib.lb_reopen(self._ptr(), 0 if readonly else OPEN_RDWR))

    # status and information
    def block_status(self, offset=0, length=None):
        """Yields the Extents covering [offset, offset+length) (default: to the end)."""
        end = self.size if length is None else offset + length
        while offset < end:
            ext = _Extent(ctypes.sizeof(_Extent))
            _check(self._lib.lb_block_status(self._ptr(), offset, end - offset, 0,
                                             ctypes.byref(ext)))
            yield Extent(offset, ext.length, ext.flags, ext.depth,
                         ext.host_offset if ext.has_host_offset else None)
            offset += ext.length

    def info(self, backing_chain=False):
        """What qemu-img info --output=json says, as a dict (its "json" text, parsed);
        with backing_chain, a list of such dicts from the image down its chain."""
        node = _void_p()
        _check(self._lib.lb_backend_get_node(self._ptr(), ctypes.byref(node)))
        info = ctypes.POINTER(_ImageInfo)()
        try:
            _check(self._lib.lb_node_get_info(node, INFO_BACKING_CHAIN if backing_chain else 0,
                                              ctypes.byref(info)))
        finally:
            self._lib.lb_node_close(node)
        try:
            chain = []
            current = info
            while current:
                chain.append(json.loads(current.contents.json.decode()))
                current = current.contents.backing
            return chain if backing_chain else chain[0]
        finally:
            self._lib.lb_image_info_free(info)

    # internal snapshots (qemu-img snapshot)
    def _node_call(self, fn):
        node = _void_p()
        _check(self._lib.lb_backend_get_node(self._ptr(), ctypes.byref(node)))
        try:
            return fn(node)
        finally:
            self._lib.lb_node_close(node)

    def snapshots(self):
        """The image's internal snapshots, as dicts (id, name, vm_state_size, date_sec,
        date_nsec, vm_clock_nsec, icount or None)."""
        def run(node):
            handle = _void_p()
            _check(self._lib.lb_snapshot_list_get(node, ctypes.byref(handle)))
            try:
                out = []
                for i in range(self._lib.lb_snapshot_list_count(handle)):
                    sn = _Snapshot(ctypes.sizeof(_Snapshot))
                    _check(self._lib.lb_snapshot_list_entry(handle, i, ctypes.byref(sn)))
                    out.append({'id': _dec(sn.id), 'name': _dec(sn.name),
                                'vm_state_size': sn.vm_state_size, 'date_sec': sn.date_sec,
                                'date_nsec': sn.date_nsec, 'vm_clock_nsec': sn.vm_clock_nsec,
                                'icount': None if sn.icount == 2**64 - 1 else sn.icount})
                return out
            finally:
                self._lib.lb_snapshot_list_free(handle)
        return self._node_call(run)

    def create_snapshot(self, name, id=None):
        """Takes a snapshot (needs a read-write image); returns its id."""
        def run(node):
            sn = _Snapshot(ctypes.sizeof(_Snapshot), _enc(id), _enc(name), 0, 0, 0, 0, 2**64 - 1)
            out = _void_p()
            _check(self._lib.lb_snapshot_create(node, ctypes.byref(sn), ctypes.byref(out)))
            try:
                return ctypes.cast(out, ctypes.c_char_p).value.decode()
            finally:
                self._lib.lb_free(out)
        return self._node_call(run)

    def apply_snapshot(self, id_or_name):
        """Reverts the disk to a snapshot (by id, else by name)."""
        self._node_call(lambda node: _check(self._lib.lb_snapshot_apply(node, _enc(id_or_name))))

    def delete_snapshot(self, id=None, name=None):
        self._node_call(lambda node: _check(self._lib.lb_snapshot_delete(node, _enc(id), _enc(name))))

    # asynchronous I/O: each returns a Request that Context.reap() hands back once
    def submit_read(self, offset, length, user_data=None):
        buf = ctypes.create_string_buffer(length)
        request = Request('read', offset, length, user_data, buf)
        return self._context._submit(request, lambda key: self._lib.lb_aio_pread(
            self._ptr(), buf, length, offset, 0, key))

    def submit_write(self, offset, data, user_data=None, fua=False):
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        request = Request('write', offset, len(data), user_data, buf)
        return self._context._submit(request, lambda key: self._lib.lb_aio_pwrite(
            self._ptr(), buf, len(data), offset, REQ_FUA if fua else 0, key))

    def submit_write_zeroes(self, offset, length, user_data=None, may_unmap=False):
        request = Request('write_zeroes', offset, length, user_data)
        return self._context._submit(request, lambda key: self._lib.lb_aio_pwrite_zeroes(
            self._ptr(), offset, length, REQ_MAY_UNMAP if may_unmap else 0, key))

    def submit_discard(self, offset, length, user_data=None):
        request = Request('discard', offset, length, user_data)
        return self._context._submit(request, lambda key: self._lib.lb_aio_discard(
            self._ptr(), offset, length, 0, key))

    def submit_flush(self, user_data=None):
        request = Request('flush', 0, 0, user_data)
        return self._context._submit(request, lambda key: self._lib.lb_aio_flush(
            self._ptr(), 0, key))


Backend = Image
