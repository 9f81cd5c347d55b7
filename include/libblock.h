/*
 * libblock.h — the stable C ABI of libblock, an embeddable block layer compatible with
 * QEMU's: disk image formats and storage protocols arranged as a graph of nodes, with
 * QEMU's option syntax, permission rules and image locking.
 *
 * Conventions
 *   Handles   Opaque pointers (lb_context, lb_backend). Whatever lb_*_new / lb_open returns
 *             is released by the matching lb_*_free / lb_close, which accept NULL.
 *   Errors    Functions return 0 (or a count/size) on success and a negative errno on
 *             failure. lb_get_error() then describes the failure; it is thread-local, never
 *             NULL, and stays valid until the next failing call on the same thread.
 *             Constructors write *out on success and set it to NULL on failure.
 *   Strings   UTF-8, NUL-terminated, borrowed for the duration of the call unless stated.
 *   Options   QEMU's syntax: "key=value,key2=value2" with ",," for a literal comma, dotted
 *             keys for child nodes ("file.locking=off"), or a "json:{...}" pseudo-filename.
 *   Threads   A context and the backends opened in it may be used from any thread, but by
 *             one thread at a time. Distinct contexts are independent.
 *   Structs   Extensible structs begin with `size_t struct_size`; initialise them with their
 *             LB_*_INIT macro. Fields are only ever added at the end.
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

typedef struct lb_context lb_context;
typedef struct lb_backend lb_backend;

/* ---- library ----------------------------------------------------------------------------- */

/* The library version, e.g. "0.1.0". Static storage. Since 0.1. */
LB_API const char *lb_version(void);

/* The message of the last failure on this thread ("" if none). Never NULL. The string is
 * owned by the library and valid until the next failing call on this thread. Since 0.1. */
LB_API const char *lb_get_error(void);

/* ---- contexts ---------------------------------------------------------------------------- */

/* lb_context_new flags */
#define LB_CONTEXT_NO_IO_URING 0x1u /* use worker threads for file I/O even if io_uring works */

/* Creates a context: an event loop and a block graph. Starts no thread.
 * Errors: -EINVAL (unknown flags), -ENOMEM, -EMFILE. Since 0.1. */
LB_API int lb_context_new(uint32_t flags, lb_context **out);

/* Closes every backend still open in `ctx` (their handles become invalid) and frees it.
 * Accepts NULL. Since 0.1. */
LB_API void lb_context_free(lb_context *ctx);

/* Called for non-fatal diagnostics (format probing guessed raw, lock fallback, ...). The
 * message is valid only during the call. NULL restores the default (print to stderr).
 * Since 0.1. */
typedef void (*lb_warning_fn)(const char *message, void *user_data);
LB_API void lb_context_set_warning_handler(lb_context *ctx, lb_warning_fn fn, void *user_data);

/* ---- images ------------------------------------------------------------------------------ */

/* Creates an image of `size` bytes with `format` ("raw", or a protocol such as "file").
 * `options` (may be NULL) are creation options in key=value form, e.g.
 * "preallocation=falloc,nocow=on"; a "size" there overrides `size`. `flags` must be 0.
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

/* Opens `filename` (may be NULL when `options` name everything) with `options` (may be
 * NULL): the image's format is probed unless "driver=" is given. A "cache=" option takes
 * QEMU's modes: writeback (default), none, writethrough, directsync, unsafe.
 * Like QEMU's guest devices, a backend lets others read but not write unless
 * LB_OPEN_SHARE_RW. Lock conflicts with other processes (QEMU included) fail with -EAGAIN
 * and QEMU's message ("Failed to get "write" lock ... Is another process using the
 * image [path]?"). Errors: -EINVAL, -ENOENT, -EACCES, -EPERM, -EAGAIN, -ENOTSUP, ...
 * Since 0.1. */
LB_API int lb_open(lb_context *ctx, const char *filename, const char *options, uint32_t flags,
                   lb_backend **out);

/* Completes the requests in flight, flushes (read-write backends), closes the node tree and
 * frees `be`. Returns the flush's error if it failed; `be` is freed either way. Accepts NULL.
 * Since 0.1. */
LB_API int lb_close(lb_backend *be);

/* The size of the device in bytes, or a negative errno. Since 0.1. */
LB_API int64_t lb_get_size(lb_backend *be);

/* Switches a backend and the nodes below it between read-only (flags 0) and read-write
 * (LB_OPEN_RDWR), as one transaction: on failure nothing changed.
 * Errors: -EPERM (e.g. "Cannot make block node read-only, there is a writer on it"),
 * -EAGAIN (locks), -EACCES. Since 0.1. */
LB_API int lb_reopen(lb_backend *be, uint32_t flags);

/* ---- I/O (synchronous: each call runs the context's loop until the request completes) --- */

/* request flags */
#define LB_REQ_FUA 0x1u         /* the write is durable when the call returns */
#define LB_REQ_MAY_UNMAP 0x2u   /* write-zeroes may deallocate (honoured with discard=unmap) */
#define LB_REQ_NO_FALLBACK 0x4u /* write-zeroes: fail with -ENOTSUP instead of writing zeroes */

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
 * "discard=unmap" (QEMU's default is to ignore discards). `flags` must be 0. Since 0.1. */
LB_API int lb_discard(lb_backend *be, uint64_t offset, uint64_t count, uint32_t flags);

/* Makes every completed write durable. `flags` must be 0. Since 0.1. */
LB_API int lb_flush(lb_backend *be, uint32_t flags);

/* Resizes the device (needs LB_OPEN_RESIZE). `prealloc` is "off" (or NULL), "falloc",
 * "full" or "metadata" as the format supports. `flags` must be 0. Since 0.1. */
LB_API int lb_truncate(lb_backend *be, uint64_t size, const char *prealloc, uint32_t flags);

/* ---- allocation status -------------------------------------------------------------------- */

#define LB_STATUS_DATA 0x01u      /* reads return data stored in the image */
#define LB_STATUS_ZERO 0x02u      /* reads return zeroes */
#define LB_STATUS_ALLOCATED 0x10u /* this image (not a backing file) provides the content */
#define LB_STATUS_EOF 0x20u       /* the extent reaches the end of the device */

typedef struct lb_extent {
  size_t struct_size; /* sizeof(lb_extent), set by LB_EXTENT_INIT */
  uint64_t length;    /* bytes from the queried offset that share these flags (> 0) */
  uint32_t flags;     /* LB_STATUS_* */
  bool has_host_offset;
  uint64_t host_offset; /* where the data lives in the storage file, if has_host_offset */
} lb_extent;
#define LB_EXTENT_INIT {sizeof(lb_extent), 0, 0, false, 0}

/* Describes the extent starting at `offset` (at most `count` bytes). `flags` must be 0.
 * Since 0.1. */
LB_API int lb_block_status(lb_backend *be, uint64_t offset, uint64_t count, uint32_t flags,
                           lb_extent *out);

#ifdef __cplusplus
}
#endif

#endif /* LIBBLOCK_H */
