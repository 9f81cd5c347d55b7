/*
 * libblock.h — the stable C ABI of libblock, an embeddable block layer compatible with
 * QEMU's: disk image formats and storage protocols arranged as a graph of nodes, with
 * QEMU's option syntax, permission rules and image locking.
 *
 * Conventions
 *   Handles   Opaque pointers: lb_context (an event loop and a block graph), lb_node (a
 *             reference to a node of the graph), lb_backend (a user of a node, through which
 *             I/O is done), lb_options (a set of options), lb_image_info. Whatever a
 *             constructor returns is released by the matching close/free function, which
 *             accepts NULL. Closing a context closes every handle still open in it.
 *   Errors    Functions return 0 (or a count/size) on success and a negative errno on
 *             failure. lb_get_error() then describes the failure and lb_get_errno() repeats
 *             its errno; both are thread-local, lb_get_error() is never NULL and stays valid
 *             until the next failing call on the same thread. Constructors write *out on
 *             success and set it to NULL on failure. Every failure sets a message.
 *   Strings   UTF-8, NUL-terminated, borrowed for the duration of the call unless stated.
 *             Strings the library returns as `char *` are freed with lb_free(). File
 *             names are bytes: any byte but NUL, returned as given; JSON texts the library
 *             makes escape them as QEMU does (\uFFFD for bytes that are not UTF-8).
 *   Options   QEMU's syntax: "key=value,key2=value2" with ",," for a literal comma, dotted
 *             keys for child nodes ("file.locking=off"), or a "json:{...}" pseudo-filename;
 *             or an lb_options object built key by key.
 *   Threads   A context and the handles opened in it may be used from any thread, but by
 *             one thread at a time. Distinct contexts are independent. The library starts no
 *             thread unless asked (aio=threads, or a host without io_uring).
 *   Async     Requests submitted with lb_aio_* run on the context's event loop, which runs
 *             only inside libblock calls: the embedder polls lb_get_fd() and calls lb_reap().
 *             An accepted request completes exactly once; a rejected submission (negative
 *             return) never completes.
 *   Structs   Extensible structs begin with `size_t struct_size`. Input structs are
 *             initialised with their LB_*_INIT macro; fields are only ever added at the end,
 *             and the library reads only the first struct_size bytes.
 *   Versions  "Since" names the library version that added a symbol; the symbol versions of
 *             libblock.so.0 follow it (LIBBLOCK_0.1, ...). A shipped signature never changes.
 */
#ifndef LIBBLOCK_H
#define LIBBLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LIBBLOCK_BUILDING_LIBRARY)
#define LB_API __attribute__((visibility("default")))
#else
#define LB_API
#endif

#define LB_VERSION_MAJOR 0
#define LB_VERSION_MINOR 2
#define LB_VERSION_MICRO 0
/* e.g. 100 for 0.1.0: compare with >= in preprocessor checks */
#define LB_VERSION_NUMBER (LB_VERSION_MAJOR * 10000 + LB_VERSION_MINOR * 100 + LB_VERSION_MICRO)

typedef struct lb_context lb_context;
typedef struct lb_node lb_node;
typedef struct lb_backend lb_backend;
typedef struct lb_options lb_options;

/* ---- library ----------------------------------------------------------------------------- */

/* The library version, e.g. "0.2.0". Static storage. Since 0.1. */
LB_API const char *lb_version(void);

/* The message of the last failure on this thread ("" if none). Never NULL. The string is
 * owned by the library and valid until the next failing call on this thread. Messages
 * longer than 4095 bytes are truncated. Since 0.1. */
LB_API const char *lb_get_error(void);

/* The (positive) errno of the last failure on this thread, 0 if none. Since 0.1. */
LB_API int lb_get_errno(void);

/* Frees a string or array the library returned. Accepts NULL. Since 0.1. */
LB_API void lb_free(void *ptr);

/* ---- contexts ---------------------------------------------------------------------------- */

/* lb_context_new flags */
#define LB_CONTEXT_NO_IO_URING 0x1u /* use worker threads for file I/O even if io_uring works */

/* Creates a context: an event loop and a block graph. Starts no thread.
 * Errors: -EINVAL (unknown flags), -ENOMEM, -EMFILE. Since 0.1. */
LB_API int lb_context_new(uint32_t flags, lb_context **out);

/* Closes every backend and node handle still open in `ctx` (the handles become invalid) and
 * frees it. Accepts NULL. Since 0.1. */
LB_API void lb_context_free(lb_context *ctx);

/* Called for non-fatal diagnostics (format probing guessed raw, lock fallback, ...). The
 * message is valid only during the call. NULL restores the default (print to stderr).
 * Since 0.1. */
typedef void (*lb_warning_fn)(const char *message, void *user_data);
LB_API void lb_context_set_warning_handler(lb_context *ctx, lb_warning_fn fn, void *user_data);

/* Adds an object in QEMU's --object syntax. Supported: "secret,id=ID,data=TEXT[,format=raw|
 * base64]" and "secret,id=ID,file=PATH[,format=...]"; images refer to secrets by id (e.g.
 * "key-secret=ID"). Secret values are never logged or put into messages.
 * Errors: -EINVAL (syntax, unknown type or option), -EEXIST (id in use), -ENOENT (file).
 * Since 0.1. */
LB_API int lb_context_add_object(lb_context *ctx, const char *spec);

/* ---- options ----------------------------------------------------------------------------- */

/* An ordered set of dotted-key options, e.g. for lb_open_args.opts. Since 0.1. */
LB_API int lb_options_new(lb_options **out);
LB_API void lb_options_free(lb_options *opts);
/* Sets `key` (dotted for child nodes) to `value`, replacing an earlier value. Since 0.1. */
LB_API int lb_options_set(lb_options *opts, const char *key, const char *value);
/* Merges a "key=value,..." string or a "json:{...}" text into `opts`; later keys win.
 * On failure `opts` is unchanged. Errors: -EINVAL with the parse error. Since 0.1. */
LB_API int lb_options_parse(lb_options *opts, const char *text);
/* The value of `key` as text, or NULL if unset. Valid until `opts` next changes. Since 0.1. */
LB_API const char *lb_options_get(const lb_options *opts, const char *key);
/* The options as one "key=value,..." string (commas doubled); free with lb_free.
 * Since 0.1. */
LB_API char *lb_options_to_string(const lb_options *opts);

/* ---- drivers ----------------------------------------------------------------------------- */

typedef struct lb_option_desc {
  size_t struct_size;
  const char *name;          /* e.g. "preallocation" */
  const char *type;          /* "string", "bool", "number", "size" or "enum" */
  const char *default_value; /* text, or NULL when there is none */
  const char *help;          /* one line */
  const char *choices;       /* enums: "off|falloc|full", else NULL */
} lb_option_desc;

/* The creation options of `format` when creating `filename` (the protocol it names adds its
 * own, as qemu-img create -o help shows). With `filename` NULL, only the format's own options
 * (what qemu-img create -o help prints without a filename). Strings
 * are static. Returns the number of options, or a negative errno (-EINVAL unknown format,
 * -ENOTSUP a format that cannot create). Writes at most `max` entries to `out` (`out` may be
 * NULL with max 0). out[0].struct_size must be set to the caller's sizeof(lb_option_desc):
 * it is the array's stride, every entry written gets it as its struct_size, and only its
 * first struct_size bytes are written. Since 0.1 (the stride rule since 0.2). */
LB_API int lb_create_options(lb_context *ctx, const char *format, const char *filename,
                             lb_option_desc *out, size_t max);

/* lb_driver_list flags */
#define LB_DRIVER_FORMATS 0x1u   /* image formats (raw, qcow2, ...) that can be opened */
#define LB_DRIVER_PROTOCOLS 0x2u /* protocols (file, host_device, nbd, ...) */
#define LB_DRIVER_FILTERS 0x4u   /* filters (preallocate, ...) */
/* With LB_DRIVER_FORMATS: only the formats whose images store compressed clusters
 * (LB_REQ_COMPRESSED writes, qemu-img convert -c). Since 0.3. */
#define LB_DRIVER_COMPRESSED 0x8u

/* The names of the drivers of the given kinds that this build can open, as one space-
 * separated string (free with lb_free), or NULL with an error. Since 0.1. */
LB_API char *lb_driver_list(lb_context *ctx, uint32_t flags);

/* ---- images ------------------------------------------------------------------------------ */

/* lb_create flags */
#define LB_CREATE_VALIDATE_ONLY 0x1u /* check the format, options and backing file; create nothing */
/* lb_create_ex only: do not open the backing file (qemu-img create -u); "backing_fmt" is
 * still required and the size must be given. Since 0.2. */
#define LB_CREATE_UNSAFE_BACKING 0x2u

/* Creates an image of `size` bytes with `format` ("raw", or a protocol such as "file").
 * `options` (may be NULL) are creation options in key=value form, e.g.
 * "preallocation=falloc,nocow=on"; a "size" there overrides `size`. `flags`: 0 or
 * LB_CREATE_VALIDATE_ONLY. Unknown options fail with "FILENAME: Invalid parameter 'x'";
 * failures while creating carry the block layer's own message, as qemu-img dd and convert
 * quote it ("Could not create 'F': ...", "Could not write zeros for preallocation: No space
 * left on device"; qemu-img create puts "FILENAME: " in front). A failed preallocation
 * leaves the file empty, as qemu-img leaves it.
 * Creating over an image that another process has open fails with -EAGAIN ("Failed to get
 * "write" lock"). Errors: -EINVAL (bad option), -ENOTSUP, -EAGAIN, or the errno of the
 * failing syscall. Since 0.1. */
LB_API int lb_create(lb_context *ctx, const char *filename, const char *format,
                     const char *options, uint64_t size, uint32_t flags);

/* lb_open flags */
#define LB_OPEN_RDWR 0x1u        /* read-write (default: read-only) */
#define LB_OPEN_SHARE_RW 0x2u    /* let other users write the image too (QEMU's share-rw) */
#define LB_OPEN_RESIZE 0x4u      /* take the resize permission (needed by lb_truncate) */
#define LB_OPEN_FORCE_SHARE 0x8u /* read-only, ignoring other users' locks (qemu-img -U) */
#define LB_OPEN_NO_BACKING 0x10u /* do not open backing files (qemu-img info's default) */
#define LB_OPEN_UNMAP 0x20u      /* honour discards and may-unmap zeroing (discard=unmap) */
/* Share every permission with other users, write and resize included, as qemu-img and
 * qemu-io do (QEMU's blk_new_open): other processes, QEMU's tools included, may write to
 * and resize the image while this backend holds it, and the backend takes no "unshare"
 * lock bytes (2xx) of its own. Nodes may still unshare what they need themselves (raw
 * with offset/size keeps its file from being resized, as in QEMU). What the backend takes
 * is unchanged: read, + write with LB_OPEN_RDWR, + resize with LB_OPEN_RESIZE. Implies
 * LB_OPEN_SHARE_RW. Meant for tools that work as qemu-img does; a backend whose user
 * caches data or metadata (a guest) should not use it. Since 0.1. */
#define LB_OPEN_SHARE_ALL 0x40u
/* Snapshot mode (QEMU's -snapshot): the image is opened read-only under a temporary qcow2
 * overlay in $TMPDIR (else /tmp) that takes every write; the overlay is deleted when the
 * backend closes. lb_commit(be, NULL, 0, LB_COMMIT_KEEP_TOP, ...) writes what was written
 * back into the image (the seeds' "commit" monitor command). Since 0.3. */
#define LB_OPEN_SNAPSHOT 0x80u
/* Cache mode (QEMU's cache=): one of */
#define LB_OPEN_CACHE_WRITEBACK 0x000u /* default */
#define LB_OPEN_CACHE_NONE 0x100u
#define LB_OPEN_CACHE_WRITETHROUGH 0x200u
#define LB_OPEN_CACHE_DIRECTSYNC 0x300u
#define LB_OPEN_CACHE_UNSAFE 0x400u
#define LB_OPEN_CACHE_MASK 0x700u
/* File I/O engine (aio=): one of */
#define LB_OPEN_AIO_DEFAULT 0x0000u /* io_uring when available, else threads */
#define LB_OPEN_AIO_THREADS 0x1000u
#define LB_OPEN_AIO_IO_URING 0x2000u
/* QEMU's aio=native. libblock has no Linux AIO engine and uses io_uring, but refuses it
 * without cache.direct=on, as QEMU does ("aio=native was specified, but it requires
 * cache.direct=on, which was not specified."). Since 0.1. */
#define LB_OPEN_AIO_NATIVE 0x3000u
#define LB_OPEN_AIO_MASK 0x3000u

/* Opens `filename` (may be NULL when `options` name everything) with `options` (may be
 * NULL): the image's format is probed unless "driver=" is given. A "cache=" option takes
 * QEMU's modes: writeback (default), none, writethrough, directsync, unsafe.
 * Like QEMU's guest devices, a backend lets others read but not write unless
 * LB_OPEN_SHARE_RW, and never resize unless LB_OPEN_SHARE_ALL. Lock conflicts with other processes (QEMU included) fail with -EAGAIN
 * and QEMU's message ("Failed to get "write" lock ... Is another process using the
 * image [path]?"). Errors: -EINVAL, -ENOENT, -EACCES, -EPERM, -EAGAIN, -ENOTSUP, ...
 * Since 0.1. */
LB_API int lb_open(lb_context *ctx, const char *filename, const char *options, uint32_t flags,
                   lb_backend **out);

/* Everything an open can say. Initialise with LB_OPEN_ARGS_INIT. */
typedef struct lb_open_args {
  size_t struct_size;
  const char *filename;    /* may be NULL when the options name the file */
  const char *format;      /* "raw", "qcow2", ...; NULL: probe (with raw's protections) */
  const char *options;     /* "key=value,..." or "json:{...}", may be NULL */
  const lb_options *opts;  /* more options, may be NULL; merged over `options` */
  uint32_t flags;          /* LB_OPEN_* */
  const char *name;        /* the backend's name in permission conflicts, may be NULL */
} lb_open_args;
#define LB_OPEN_ARGS_INIT {sizeof(lb_open_args), NULL, NULL, NULL, NULL, 0, NULL}

/* lb_open with every option: a backend on the opened image. Since 0.1. */
LB_API int lb_open_ex(lb_context *ctx, const lb_open_args *args, lb_backend **out);

/* Opens a node tree without a backend (QEMU's blockdev-add): a reference that keeps the
 * node open, through which backends can be attached and information read. Only the
 * read-only, force-share, no-backing, unmap, cache and aio flags apply. Since 0.1. */
LB_API int lb_node_open(lb_context *ctx, const lb_open_args *args, lb_node **out);

/* Drops the reference; the node closes when nothing else uses it. Accepts NULL. Since 0.1. */
LB_API void lb_node_close(lb_node *node);

/* A new reference to the node `be` is attached to (close it with lb_node_close).
 * Since 0.1. */
LB_API int lb_backend_get_node(lb_backend *be, lb_node **out);

/* Attaches a backend to an open node. `flags`: LB_OPEN_RDWR, LB_OPEN_SHARE_RW,
 * LB_OPEN_SHARE_ALL, LB_OPEN_RESIZE, LB_OPEN_CACHE_WRITETHROUGH (durable writes). Writing needs the node to
 * be read-write. Errors: -EPERM (a permission conflict, with QEMU's message), -EAGAIN
 * (locks). Since 0.1. */
LB_API int lb_backend_new(lb_node *node, uint32_t flags, lb_backend **out);

/* Completes the requests in flight, flushes (read-write backends), closes the node tree and
 * frees `be`. Returns the flush's error if it failed; `be` is freed either way. Accepts NULL.
 * Since 0.1. */
LB_API int lb_close(lb_backend *be);

/* The size of the device in bytes, or a negative errno. Since 0.1. */
LB_API int64_t lb_get_size(lb_backend *be);
/* Same as lb_get_size (the name qemu-io users look for). Since 0.1. */
LB_API int64_t lb_get_length(lb_backend *be);

/* Sets a backend's mode as one transaction (on failure nothing changed): read-only (no
 * LB_OPEN_RDWR) or read-write (LB_OPEN_RDWR) for the backend and the nodes below it, and its
 * LB_OPEN_SHARE_RW, LB_OPEN_SHARE_ALL and LB_OPEN_RESIZE permissions (QEMU's blk_set_perm),
 * e.g. to take the resize permission only around an lb_truncate. Sharing less than before
 * fails with -EPERM/-EAGAIN while another user holds what is no longer shared.
 * Errors: -EPERM (e.g. "Read-only block node 'NAME' cannot support read-write users" while
 * another user writes), -EAGAIN (locks), -EACCES. Since 0.1. */
LB_API int lb_reopen(lb_backend *be, uint32_t flags);

/* lb_reopen_options flags, besides LB_OPEN_RDWR, LB_OPEN_SHARE_RW, LB_OPEN_SHARE_ALL,
 * LB_OPEN_RESIZE and one
 * LB_OPEN_CACHE_* mode: */
#define LB_REOPEN_CACHE 0x10000u /* set the cache mode to the LB_OPEN_CACHE_* one in flags */

/* Reopens the nodes below `be` with changed options, as QEMU's bdrv_reopen does for qemu-io's
 * reopen command, and sets the backend's permissions, as one transaction (on failure nothing
 * changed; requests in flight complete first).
 * `options` ("key=value,..." or "json:{...}", may be NULL) names only what changes: the
 * options of the backend's node, and of its children with dotted keys ("file.cache.direct=on").
 * Every option not named keeps its value, and a child follows its parent's new mode and cache
 * settings unless its own options set them. What can change: "read-only", "auto-read-only",
 * "cache.direct", "cache.no-flush", "discard", "detect-zeroes", and the driver options a
 * driver can change (raw: "offset", "size"; preallocate: "prealloc-align", "prealloc-size").
 * Giving any other option (an unknown one included) a value other than its current one fails
 * with -EINVAL and QEMU's "Cannot change the option 'NAME'"; "driver" and a child reference
 * ("file=NODE-NAME") may name what is already there. Option values are checked as lb_open
 * checks them.
 * `flags`: the backend's permissions afterwards, as lb_reopen's: LB_OPEN_RDWR (write: the node
 * must be read-write afterwards), LB_OPEN_SHARE_RW, LB_OPEN_SHARE_ALL, LB_OPEN_RESIZE. Unlike
 * lb_reopen, the
 * node's mode is its "read-only" option's (unchanged when not named): a backend that does not
 * write may stay on a read-write node, as QEMU's do until they need to write. Making a node
 * read-only under a writer fails with -EPERM ("Read-only block node 'NAME' cannot support
 * read-write users"), writing to a read-only one with -EPERM ("Block node is read-only").
 * With LB_REOPEN_CACHE the cache mode becomes flags' LB_OPEN_CACHE_* mode, as lb_open sets it
 * (cache.direct and cache.no-flush, unless `options` name them, and the backend's
 * writethrough); without it the mode is unchanged. With neither options nor LB_REOPEN_CACHE
 * only the backend's permissions change.
 * Errors: -EINVAL (options, flags), -ENOENT (a child reference to no node), -EPERM, -EAGAIN
 * (locks), or the errno of reopening a file (-EACCES, ...). Since 0.1. */
LB_API int lb_reopen_options(lb_backend *be, const char *options, uint32_t flags);

/* ---- information -------------------------------------------------------------------------- */

/* What qemu-img info shows about one image, allocated by the library. */
typedef struct lb_image_info {
  size_t struct_size;
  const char *filename;              /* the image's name as qemu-img names it: the file
                                        name's bytes, or a json:{...} of its options */
  const char *format;                /* driver name of the format node: "raw", "qcow2", ... */
  uint64_t virtual_size;             /* guest-visible size in bytes */
  int64_t actual_size;               /* bytes used on the host, -1 if unknown */
  uint32_t cluster_size;             /* 0 for formats without clusters */
  bool dirty;                        /* the image's dirty/corrupt flag is set */
  bool encrypted;
  const char *backing_filename;      /* as stored in the image; NULL if none */
  const char *full_backing_filename; /* resolved against the image's directory; NULL if none */
  const char *backing_format;        /* as stored; NULL if none */
  const char *format_specific;       /* qemu-img's "format-specific" object as JSON; NULL */
  const struct lb_image_info *backing; /* next image of the chain (LB_INFO_BACKING_CHAIN) */
  const char *json;                  /* this image as one qemu-img info --output=json
                                        object, byte for byte (ASCII) */
} lb_image_info;

/* lb_node_get_info flags */
#define LB_INFO_BACKING_CHAIN 0x1u /* also describe every backing file (info->backing) */

/* Describes the image of `node`. Free the result with lb_image_info_free; every string and
 * the chain live as long as it. Since 0.1. */
LB_API int lb_node_get_info(lb_node *node, uint32_t flags, lb_image_info **out);
LB_API void lb_image_info_free(lb_image_info *info);

/* Whether the image reads as zeroes everywhere right after it was created (QEMU's
 * bdrv_has_zero_init): 1 for images in regular files, 0 where old contents may show through
 * (host devices, null-co), or a negative errno. A copy into a freshly created image may skip
 * the ranges that are zero when this is 1. Since 0.1. */
LB_API int lb_node_has_zero_init(lb_node *node);

/* ---- I/O (synchronous: each call runs the context's loop until the request completes) --- */

/* request flags */
#define LB_REQ_FUA 0x1u         /* the write is durable when the call returns */
#define LB_REQ_MAY_UNMAP 0x2u   /* write-zeroes may deallocate (as QEMU's blk layer: whatever
                                   the top node's discard option, which governs discards) */
#define LB_REQ_NO_FALLBACK 0x4u /* write-zeroes: fail with -ENOTSUP instead of writing zeroes */
#define LB_REQ_COMPRESSED 0x8u  /* write (since 0.3): store the data compressed, as qemu-img
                                   convert -c does. Whole clusters of the format, aligned (the
                                   image's last cluster may be partial); -EINVAL otherwise,
                                   -ENOTSUP when the format cannot store compressed data. */

/* Reads/writes `count` bytes at `offset`. Any alignment works; the library pads. Requests
 * beyond the end of the device fail with -EIO. Returns 0 on success. Since 0.1. */
LB_API int lb_pread(lb_backend *be, void *buf, size_t count, uint64_t offset, uint32_t flags);
LB_API int lb_pwrite(lb_backend *be, const void *buf, size_t count, uint64_t offset,
                     uint32_t flags);
/* Scatter/gather variants; `iov` is only read during the call. Since 0.1. */
LB_API int lb_preadv(lb_backend *be, const struct iovec *iov, int iovcnt, uint64_t offset,
                     uint32_t flags);
LB_API int lb_pwritev(lb_backend *be, const struct iovec *iov, int iovcnt, uint64_t offset,
                      uint32_t flags);

/* Writes zeroes to [offset, offset+count). Since 0.1. */
LB_API int lb_pwrite_zeroes(lb_backend *be, uint64_t offset, uint64_t count, uint32_t flags);

/* Discards [offset, offset+count): a hint, honoured when the image was opened with
 * LB_OPEN_UNMAP ("discard=unmap"; QEMU's default is to ignore discards). `flags` must be 0.
 * Since 0.1. */
LB_API int lb_discard(lb_backend *be, uint64_t offset, uint64_t count, uint32_t flags);

/* Makes every completed write durable. `flags` must be 0. Since 0.1. */
LB_API int lb_flush(lb_backend *be, uint32_t flags);

/* Resizes the device (needs LB_OPEN_RESIZE). `prealloc` is "off" (or NULL), "falloc",
 * "full" or "metadata" as the format supports. A preallocation that fails (e.g. -ENOSPC)
 * leaves the device at its old size, without the space it took, as in QEMU. `flags` must
 * be 0. Since 0.1. */
LB_API int lb_truncate(lb_backend *be, uint64_t size, const char *prealloc, uint32_t flags);

/* ---- allocation status -------------------------------------------------------------------- */

#define LB_STATUS_DATA 0x01u      /* reads return data stored in the image */
#define LB_STATUS_ZERO 0x02u      /* reads return zeroes */
#define LB_STATUS_ALLOCATED 0x10u /* an image of the chain provides the content (not absent) */
#define LB_STATUS_EOF 0x20u       /* the extent reaches the end of the device */

typedef struct lb_extent {
  size_t struct_size; /* sizeof(lb_extent), set by LB_EXTENT_INIT */
  uint64_t length;    /* bytes from the queried offset that share these fields (> 0) */
  uint32_t flags;     /* LB_STATUS_* */
  bool has_host_offset;
  uint64_t host_offset; /* where the data lives in the storage file, if has_host_offset */
  uint32_t depth;       /* backing-chain depth that provides it: 0 = the image itself
                           (qemu-img map's "depth"); for unallocated ranges, the chain length */
  const char *filename; /* the name of the file that holds the data, as qemu-img map's File
                           column shows it (bytes as given); NULL when no file holds it.
                           Valid until the next lb_block_status on the backend or until it
                           closes. Since 0.1. */
  char node_name[32];   /* the name of the node that holds the data (the node `filename`
                           names: its protocol node for a format's data, a backing file's for
                           data from the chain, a data file's), NUL-terminated; "" when no
                           node holds it (unallocated, past the end of a backing file). Node
                           names are shorter than 32 bytes, as in QEMU. Since 0.2. */
} lb_extent;
#define LB_EXTENT_INIT {sizeof(lb_extent), 0, 0, false, 0, 0, NULL, {0}}

/* Describes the extent starting at `offset` (at most `count` bytes) through the whole
 * backing chain, as qemu-img map does. `flags` must be 0. Since 0.1. */
LB_API int lb_block_status(lb_backend *be, uint64_t offset, uint64_t count, uint32_t flags,
                           lb_extent *out);

/* ---- asynchronous I/O --------------------------------------------------------------------- */

typedef struct lb_completion {
  void *user_data; /* as given to the submission */
  int ret;         /* 0 or a negative errno */
} lb_completion;

/* Submits a request; returns 0 when accepted (it then completes exactly once, reported by
 * lb_reap with `user_data`) or a negative errno when rejected (it never completes):
 * -EAGAIN when the context already has its maximum of requests in flight, -EINVAL for bad
 * arguments. Buffers must stay valid until the completion is reaped; the iovec array itself
 * is copied. A request may complete before the call returns (a read the page cache answers
 * without blocking); its completion is still reported by lb_reap. Since 0.1. */
LB_API int lb_aio_pread(lb_backend *be, void *buf, size_t count, uint64_t offset,
                        uint32_t flags, void *user_data);
LB_API int lb_aio_pwrite(lb_backend *be, const void *buf, size_t count, uint64_t offset,
                         uint32_t flags, void *user_data);
LB_API int lb_aio_preadv(lb_backend *be, const struct iovec *iov, int iovcnt, uint64_t offset,
                         uint32_t flags, void *user_data);
LB_API int lb_aio_pwritev(lb_backend *be, const struct iovec *iov, int iovcnt,
                          uint64_t offset, uint32_t flags, void *user_data);
LB_API int lb_aio_pwrite_zeroes(lb_backend *be, uint64_t offset, uint64_t count,
                                uint32_t flags, void *user_data);
LB_API int lb_aio_discard(lb_backend *be, uint64_t offset, uint64_t count, uint32_t flags,
                          void *user_data);
LB_API int lb_aio_flush(lb_backend *be, uint32_t flags, void *user_data);

/* The most requests the context accepts in flight (default 1024). Since 0.1. */
LB_API int lb_context_set_max_inflight(lb_context *ctx, unsigned max);
/* Requests accepted and not yet reaped. Since 0.1. */
LB_API int lb_context_get_inflight(lb_context *ctx);

/* Sizes the context's pool of CPU worker threads, which compress and encrypt (separate from
 * the threads doing blocking I/O for aio=threads, so that neither can hold up the other).
 * `n` = 0 selects the default, the number of online CPUs. Threads are started on demand;
 * lowering the size lets idle threads beyond it exit, and running jobs finish. Returns the
 * size now in effect (>= 1). Call from the thread that drives the context.
 * Errors: -EINVAL (NULL ctx, n > 1024). Since 0.2. */
LB_API int lb_context_set_cpu_workers(lb_context *ctx, unsigned n);

/* A file descriptor that is readable whenever the context has work to do or completions
 * to hand out: poll it, then call lb_reap. It may also be readable once for nothing after
 * lb_reap took the last completion (requests the page cache answered complete inside their
 * lb_aio_* call, and lb_reap does not run the loop again just to quiet the descriptor); the
 * next lb_reap quiets it. Owned by the context. Since 0.1. */
LB_API int lb_get_fd(lb_context *ctx);

/* Runs the context's loop and collects completions into `out` (room for `max`): returns once
 * at least `min` were collected, or when `timeout_ns` elapsed (< 0: no limit; 0: only what
 * is ready now). Returns the number collected (possibly fewer than `min` on timeout).
 * Since 0.1. */
LB_API int lb_reap(lb_context *ctx, unsigned min, unsigned max, int64_t timeout_ns,
                   lb_completion *out);

/* ---- since 0.2 ---------------------------------------------------------------------------- */

/* -- sizes -- */

/* Parses a size as QEMU does (qemu_strtosz, as qemu-img reads sizes, offsets and lengths):
 * digits, optionally a fraction, and an optional suffix b/B (bytes), k/K, m/M, g/G, t/T, p/P
 * or e/E (powers of 1024); or a hex number "0x...". "1.5G" is 1610612736; a fraction needs a
 * suffix other than B ("1.5" is invalid, "1.0" is 1) and the result is QEMU's to the byte
 * ("0.0000000001T" is 110: the fraction is taken at double precision and the result rounded
 * half up), computed in integer arithmetic. Leading whitespace and '+' are accepted; '-',
 * exponents ("1.5e3"; but "1.5e" is 1.5 EiB) and trailing characters are not.
 * Returns 0, or 1 when the text used a form QEMU accepts with a deprecation warning (a
 * multiplier suffix on a hex number, "0x10k"), with the value in *out; -EINVAL when the
 * text is malformed (or NULL), -ERANGE when the value is 2^64 or more (*out unchanged).
 * Thread-safe. Since 0.2. */
LB_API int lb_parse_size(const char *text, uint64_t *out);

/* -- creating -- */

/* lb_create_args.size when the size is not given: it comes from the options' "size", else
 * from the backing file (a "backing_file" creation option), as qemu-img create without a
 * size operand. Since 0.2. */
#define LB_CREATE_SIZE_UNSET (-1)

/* Everything a create can say. Initialise with LB_CREATE_ARGS_INIT. Since 0.2. */
typedef struct lb_create_args {
  size_t struct_size;
  const char *filename; /* the image to create */
  const char *format;   /* "raw", or a protocol such as "file" */
  const char *options;  /* creation options "key=value,...", may be NULL (as lb_create's) */
  int64_t size;         /* bytes, or LB_CREATE_SIZE_UNSET; a "size" option overrides it */
  uint32_t flags;       /* LB_CREATE_* */
} lb_create_args;
#define LB_CREATE_ARGS_INIT {sizeof(lb_create_args), NULL, NULL, NULL, LB_CREATE_SIZE_UNSET, 0}

/* lb_create with a size that may be left unset, reporting the size used in *size_out (may
 * be NULL; written on success, with LB_CREATE_VALIDATE_ONLY too, so a tool can print it
 * before creating). A "backing_file" option is checked as qemu-img 6.1 and later check it:
 * the image it names (relative to the new image's directory unless absolute) is opened
 * read-only and without locking others out (qemu-img's force-share), with the format
 * "backing_fmt" names, else probed; a failure is "FILENAME: <error>\nCould not open backing
 * image.", and a missing "backing_fmt" is refused ("FILENAME: Backing file specified without
 * backing format\nDetected format of FMT."). With LB_CREATE_UNSAFE_BACKING nothing is
 * opened and "backing_fmt" is still required. Without a size (neither args->size nor a
 * "size" option) the size is the opened backing file's, its own backing chain included.
 * With neither: -EINVAL, "FILENAME: Image creation needs a size parameter" (qemu-img's
 * message). Options are checked before the backing file is opened, so a format without
 * backing files fails first with -ENOTSUP ("FILENAME: Backing file not supported for file
 * format 'raw'"). Errors: those of lb_create, and those of opening the backing file.
 * Since 0.2 (LB_CREATE_UNSAFE_BACKING and the checks with a size given: 0.2, issue 8). */
LB_API int lb_create_ex(lb_context *ctx, const lb_create_args *args, uint64_t *size_out);

/* -- events and the loop -- */

/* lb_event kinds. A caller must ignore (but still count as reaped) kinds it does not know:
 * later versions add job and export events. */
#define LB_EVENT_REQUEST 1 /* an lb_aio_* request completed: user_data, result */

/* One event of a context, as lb_reap_events hands them out. An output struct: the caller
 * sets struct_size (LB_EVENT_INIT) and the library writes only that many bytes. Fields
 * are only ever added at the end; a kind that needs more than `result` says which
 * reserved fields it uses. Since 0.2. */
typedef struct lb_event {
  size_t struct_size;
  uint32_t kind;        /* LB_EVENT_* */
  uint32_t flags;       /* 0 for LB_EVENT_REQUEST; per kind */
  void *user_data;      /* LB_EVENT_REQUEST: as given to the submission */
  int64_t result;       /* LB_EVENT_REQUEST: 0 or a negative errno */
  uint64_t reserved[4]; /* 0 unless the kind says otherwise */
} lb_event;
#define LB_EVENT_INIT {sizeof(lb_event), 0, 0, NULL, 0, {0, 0, 0, 0}}

/* lb_reap for every kind of event: runs the context's loop and collects events into `out`
 * (room for `max`), as lb_reap collects completions (same `min`, `timeout_ns` and return
 * value; it waits for `min` only while something is in flight that can still produce an
 * event). out[0].struct_size gives the caller's sizeof(lb_event): it is the array's
 * stride, and only that many bytes of each entry are written (each gets it as its
 * struct_size). lb_reap and lb_reap_events take from the same queue of request
 * completions, in order; lb_reap hands out only LB_EVENT_REQUEST events and leaves others
 * queued. Errors: -EINVAL (NULL arguments, min > max, struct_size smaller than up to
 * `result`). Since 0.2. */
LB_API int lb_reap_events(lb_context *ctx, unsigned min, unsigned max, int64_t timeout_ns,
                          lb_event *out);

/* Runs one iteration of the context's loop whether or not requests are in flight (for
 * exports and jobs, whose work does not come from lb_aio_* requests): waits until the loop
 * has something to do (lb_get_fd() readable: I/O, timers, completions) or `timeout_ns`
 * elapsed (< 0: no limit; 0: only what is ready now), and does it. Events it produces
 * stay queued for lb_reap/lb_reap_events (and lb_get_fd() stays readable while some are, so
 * while events wait to be reaped it returns without waiting).
 * Returns the number of events waiting to be reaped, or a negative errno (-EINVAL for a
 * NULL context). With nothing in flight and `timeout_ns` < 0 it waits until something
 * wakes the loop. Since 0.2. */
LB_API int lb_context_run(lb_context *ctx, int64_t timeout_ns);

/* ---- consistency checks (qemu-img check) ---------------------------------------------- */

/* What a check found, as `qemu-img check` reports it (QEMU's ImageCheck). Initialise with
 * LB_CHECK_RESULT_INIT; fields past struct_size are not written. Since 0.3. */
typedef struct lb_check_result {
  size_t struct_size;
  int64_t corruptions;         /* errors: data may be corrupted (exit code 2) */
  int64_t leaks;               /* clusters allocated but unused (exit code 3) */
  int64_t check_errors;        /* the check itself failed somewhere (exit code 1) */
  int64_t corruptions_fixed;
  int64_t leaks_fixed;
  int64_t image_end_offset;    /* 0: unknown */
  int64_t total_clusters;      /* of the virtual disk; 0: not reported */
  int64_t allocated_clusters;
  int64_t fragmented_clusters;
  int64_t compressed_clusters;
  const char *format;          /* the format checked ("qcow2"): static, never freed */
  int failed_errno;            /* non-zero: the check stopped early with this errno (what
                                  qemu-img reports as "Check failed: <strerror>") */
} lb_check_result;
#define LB_CHECK_RESULT_INIT {sizeof(lb_check_result), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, NULL, 0}

/* lb_check flags: what to repair (qemu-img check -r leaks / -r all). */
#define LB_CHECK_FIX_LEAKS 0x1u
#define LB_CHECK_FIX_ERRORS 0x2u

/* Receives each line a check prints ("Leaked cluster 5 refcount=1 reference=0"), without the
 * newline, in order, while lb_check runs; `line` is valid during the call only. */
typedef void (*lb_check_message_fn)(const char *line, void *user_data);

/* Checks the image `args` names (qemu-img check): its format (args->format, a "driver="
 * option, or probed) checks the image's file directly, without opening the format, and with
 * LB_CHECK_FIX_* repairs what the flags allow (the file is then opened read-write: pass
 * LB_OPEN_RDWR in args->flags). args->flags' sharing and cache flags apply to the file.
 * `fn` (may be NULL) gets the check's messages. Returns 0 when the check ran to its end (what
 * it found is in *out, check_errors included), -ENOTSUP with "This image format does not
 * support checks" for formats without one, other negative errnos when the image cannot be
 * opened or read. Since 0.3. */
LB_API int lb_check(lb_context *ctx, const lb_open_args *args, uint32_t flags,
                    lb_check_message_fn fn, void *user_data, lb_check_result *out);

/* ---- commit (qemu-img commit) ------------------------------------------------------------ */

/* Receives a long operation's progress: `done` of `total` units. */
typedef void (*lb_progress_fn)(uint64_t done, uint64_t total, void *user_data);

/* lb_commit flags */
#define LB_COMMIT_KEEP_TOP 0x1u /* do not empty the top image afterwards (qemu-img commit -d) */

/* Writes everything the images above `base` in `top`'s backing chain hold into `base` (QEMU's
 * commit job, as qemu-img commit runs it; `top` must be a read-write backend). `base`: NULL
 * for the immediate backing file, else an image of the chain as its overlay names it or by
 * its path. The base is reopened read-write for the copy (and grows to the top's size when
 * smaller), then back to read-only. Afterwards the top is emptied so that it reads through
 * again, unless LB_COMMIT_KEEP_TOP or an explicit `base` is given (an explicit base implies
 * -d in qemu-img too; formats that cannot be emptied are left as they are). `rate_limit`:
 * bytes per second, 0 for none. `fn` (may be NULL) gets the progress in bytes of the top's
 * address space. Errors: -ENOTSUP "Image does not have a backing file", -ENOENT "Did not
 * find 'B' in the backing chain of 'T'", -EAGAIN/-EPERM when the base cannot be opened for
 * writing, I/O errors. Since 0.3. */
LB_API int lb_commit(lb_backend *top, const char *base, uint64_t rate_limit, uint32_t flags,
                     lb_progress_fn fn, void *user_data);

/* lb_rebase flags */
#define LB_REBASE_UNSAFE 0x1u /* only the header changes (qemu-img rebase -u) */

/* Makes `backing_file` (as the header will store it; NULL or "" for none) with format
 * `backing_fmt` the backing file of the image `be` (read-write) writes to (qemu-img
 * rebase). Safe mode keeps what the image reads: wherever the image itself allocates nothing
 * and the new backing file (opened relative to the image, read-only, with the extra open
 * `options` such as "cache.direct=on"; NULL for none) reads differently from the old chain,
 * the old content is written into the image first, and the node then reads through the new
 * backing file. LB_REBASE_UNSAFE only rewrites the header. `fn` (may be NULL) gets the
 * progress in bytes of the image. Errors: -EINVAL "backing format must be specified" (a name
 * without a format, checked before anything is written), "Could not open new backing file
 * 'B': ...", -ENOTSUP "Operation not supported" (a format without backing files), I/O
 * errors. Since 0.3. */
LB_API int lb_rebase(lb_backend *be, const char *backing_file, const char *backing_fmt,
                     const char *options, uint32_t flags, lb_progress_fn fn, void *user_data);

/* ---- measure (qemu-img measure) --------------------------------------------------------- */

typedef struct lb_measure_result {
  size_t struct_size;
  uint64_t required;         /* bytes the new image file needs */
  uint64_t fully_allocated;  /* bytes it needs with every cluster allocated */
  bool has_bitmaps;          /* the input's persistent bitmaps could be copied (convert --bitmaps) */
  uint64_t bitmaps;          /* ... and would take this many bytes more */
} lb_measure_result;
#define LB_MEASURE_RESULT_INIT {sizeof(lb_measure_result), 0, 0, false, 0}

/* How much storage an image of `format` created with `options` (creation options, the file
 * protocol's included; NULL for none) needs: for a virtual size of `size` bytes when `in` is
 * NULL, or to hold a copy of what `in` reads (its whole backing chain, zeroes skipped), as
 * qemu-img measure computes it for the same input. Errors: -EINVAL (an unknown format "Unknown
 * file format 'F'", an invalid option with qemu-img's message), -ENOTSUP ("Block driver 'F'
 * does not support size measurement"). Since 0.3. */
LB_API int lb_measure(lb_context *ctx, const char *format, const char *options, lb_backend *in,
                      uint64_t size, lb_measure_result *out);

/* ---- internal snapshots (qemu-img snapshot; QEMU's savevm/loadvm/delvm) ------------------ */

/* One internal snapshot (QEMU's QEMUSnapshotInfo). */
typedef struct lb_snapshot {
  size_t struct_size;
  const char *id;          /* unique in the image: "1", "2", ... */
  const char *name;        /* the tag; not necessarily unique */
  uint64_t vm_state_size;  /* bytes of VM state saved with it; 0 for a disk-only snapshot */
  uint32_t date_sec;       /* wall-clock time it was taken (seconds since the epoch) */
  uint32_t date_nsec;
  uint64_t vm_clock_nsec;  /* guest clock when it was taken */
  uint64_t icount;         /* instruction count (record/replay), LB_SNAPSHOT_NO_ICOUNT: none */
} lb_snapshot;
#define LB_SNAPSHOT_NO_ICOUNT UINT64_MAX
#define LB_SNAPSHOT_INIT {sizeof(lb_snapshot), NULL, NULL, 0, 0, 0, 0, LB_SNAPSHOT_NO_ICOUNT}

typedef struct lb_snapshot_list lb_snapshot_list;

/* The internal snapshots of the image under `node`, in table order. A format without
 * internal snapshots fails with -ENOTSUP; a filter or a raw node over an image file asks what
 * it sits on, as QEMU does. Free the list with lb_snapshot_list_free. Since 0.3. */
LB_API int lb_snapshot_list_get(lb_node *node, lb_snapshot_list **out);
LB_API size_t lb_snapshot_list_count(const lb_snapshot_list *list);
/* Fills *out (out->struct_size set by the caller) with entry `index`; its strings live as
 * long as the list. -EINVAL past the end. */
LB_API int lb_snapshot_list_entry(const lb_snapshot_list *list, size_t index, lb_snapshot *out);
LB_API void lb_snapshot_list_free(lb_snapshot_list *list);

/* Takes a snapshot of the disk as it is now (qemu-img snapshot -c). sn->id NULL or empty:
 * the next free id; sn->name NULL: "". date_sec and date_nsec both 0: the current time. The
 * id given to the snapshot goes to *id_out (may be NULL; free with lb_free). The node must be
 * writable; its parents' requests are drained first. Errors: -ENOTSUP (no internal
 * snapshots, an external data file, refcount_bits=1), -EEXIST (the id exists), -EACCES
 * (read-only), -EIO/-ENOSPC. Since 0.3. */
LB_API int lb_snapshot_create(lb_node *node, const lb_snapshot *sn, char **id_out);
/* Reverts the disk to a snapshot (qemu-img snapshot -a): the one whose id is `id_or_name`,
 * else the first whose name is. The disk takes the size it had then. -ENOENT when there is
 * none. Since 0.3. */
LB_API int lb_snapshot_apply(lb_node *node, const char *id_or_name);
/* Deletes the snapshot whose id is `id` and whose name is `name` (NULL: either is not
 * compared; qemu-img snapshot -d finds the snapshot as lb_snapshot_apply does, then deletes
 * by both). -ENOENT when there is none. Since 0.3. */
LB_API int lb_snapshot_delete(lb_node *node, const char *id, const char *name);

/* Makes a read-only node show the snapshot whose id is `id` and whose name is `name` (NULL:
 * not compared) instead of the current state, until the node is closed (qemu-img convert -l,
 * QEMU's bdrv_snapshot_load_tmp). -ENOENT ("Can't find snapshot"), -EPERM for a writable
 * node, -ENOTSUP without internal snapshots. Since 0.3. */
LB_API int lb_snapshot_load_tmp(lb_node *node, const char *id, const char *name);

/* The VM-state area of the current disk state (QEMU's bdrv_save_vmstate/bdrv_load_vmstate):
 * what the next lb_snapshot_create saves with the snapshot when sn->vm_state_size says how
 * much of it there is, and what lb_snapshot_apply brings back. `pos` is a byte offset into
 * the area. Since 0.3. */
LB_API int lb_vmstate_write(lb_node *node, const void *buf, size_t count, uint64_t pos);
LB_API int lb_vmstate_read(lb_node *node, void *buf, size_t count, uint64_t pos);

/* ---- VM snapshots (QEMU's savevm, loadvm, delvm, info snapshots) ------------------------ */

/* One snapshot, by name, across the `count` disks of a VM (backends of one context). The
 * disks that take part are the writable ones; read-only disks are skipped, as QEMU skips
 * them. Each taking part must hold internal snapshots (qcow2): a writable raw disk fails the
 * call with -ENOTSUP ("Device '...' is writable but does not support snapshots") before
 * anything changes. The VM state goes into the first disk taking part (QEMU's vmstate
 * device).
 *
 * lb_vm_snapshot_save takes snapshot `name` on every disk, with the date, `vm_clock_nsec`
 * and `vm_state` (`vm_state_size` bytes, may be 0) recorded in the first; all or none: when
 * one disk fails, the snapshots already taken are deleted again. Older snapshots with that
 * name are deleted once the new one is everywhere, as savevm replaces them. Since 0.3. */
LB_API int lb_vm_snapshot_save(lb_backend *const *disks, size_t count, const char *name,
                               const void *vm_state, size_t vm_state_size,
                               uint64_t vm_clock_nsec);
/* Reverts every disk to snapshot `name` (the first with that name on each) and returns the
 * saved VM state in *vm_state (allocated, free with lb_free) and *vm_state_size. With
 * vm_state NULL a disk-only snapshot may be loaded too; otherwise it fails with -EINVAL, as
 * loadvm does. -ENOENT when a disk lacks the snapshot. All or none: every disk takes an undo
 * snapshot first, and a failure midway reverts the disks already switched. Since 0.3. */
LB_API int lb_vm_snapshot_load(lb_backend *const *disks, size_t count, const char *name,
                               void **vm_state, size_t *vm_state_size);
/* Deletes snapshot `name` from every disk that has it (-ENOENT when none has). Every disk is
 * checked before the first deletion; an I/O error midway is reported and leaves the later
 * disks with their snapshot. Since 0.3. */
LB_API int lb_vm_snapshot_delete(lb_backend *const *disks, size_t count, const char *name);
/* The snapshots of the VM-state disk whose name every other disk taking part also has (QEMU's
 * "info snapshots" list). Free with lb_snapshot_list_free. Since 0.3. */
LB_API int lb_vm_snapshot_list(lb_backend *const *disks, size_t count, lb_snapshot_list **out);

#ifdef __cplusplus
}
#endif

#endif /* LIBBLOCK_H */
