// The C ABI glue: lb_* definitions over the internal C++ library.
//
// Every entry point runs through Guard(), the one place where failures become the ABI's
// convention: a negative errno returned and a thread-local message for lb_get_error(). No
// exception crosses the ABI (allocation failure is the only one the library can raise).
#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <set>
#include <string>

#include "absl/strings/str_format.h"
#include "core/backend.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/options.h"
#include "libblock.h"
#include "libblock_config.h"
#include "util/checked_math.h"
#include "util/status.h"

struct lb_context {
  std::unique_ptr<libblock::EventLoop> loop;
  std::unique_ptr<libblock::Graph> graph;
  std::set<lb_backend*> backends;
  lb_warning_fn warning_fn = nullptr;
  void* warning_data = nullptr;
};

struct lb_backend {
  lb_context* ctx;
  std::unique_ptr<libblock::Backend> be;
};

namespace {

using libblock::ErrnoError;
using libblock::StatusErrno;

thread_local std::string last_error;

int Fail(int err, std::string_view message) {
  last_error.assign(message.data(), message.size());
  return -err;
}

int Fail(const absl::Status& st) {
  return Fail(StatusErrno(st), std::string_view(st.message().data(), st.message().size()));
}

template <typename F>
auto Guard(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return Fail(ENOMEM, "out of memory");
  } catch (const std::exception& e) {
    return Fail(EIO, std::string("internal error: ") + e.what());
  } catch (...) {
    return Fail(EIO, "internal error");
  }
}

int Check(const absl::Status& st) { return st.ok() ? 0 : Fail(st); }

absl::StatusOr<libblock::Options> ParseOptions(const char* text) {
  if (!text || !*text) return libblock::Options();
  return libblock::ParseKeyValueOptions(text);
}

bool ValidBackend(lb_backend* be) { return be && be->be && be->be->root(); }

int BadHandle() { return Fail(EINVAL, "invalid or closed backend handle"); }

int UnknownFlags() { return Fail(EINVAL, "unknown flags"); }

libblock::ReqFlags ToReqFlags(uint32_t flags) {
  libblock::ReqFlags out = 0;
  if (flags & LB_REQ_FUA) out |= libblock::kReqFua;
  if (flags & LB_REQ_MAY_UNMAP) out |= libblock::kReqMayUnmap;
  if (flags & LB_REQ_NO_FALLBACK) out |= libblock::kReqNoFallback;
  return out;
}

constexpr uint32_t kReqFlagsAll = LB_REQ_FUA | LB_REQ_MAY_UNMAP | LB_REQ_NO_FALLBACK;

int RangeCheck(uint64_t offset, uint64_t count) {
  if (offset > static_cast<uint64_t>(libblock::kMaxLength) ||
      count > static_cast<uint64_t>(libblock::kMaxLength) - offset) {
    return Fail(EINVAL, "offset or length out of range");
  }
  return 0;
}

int VectorIo(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
             uint32_t flags, bool write) {
  if (!ValidBackend(be)) return BadHandle();
  if (flags & ~(write ? LB_REQ_FUA : 0u)) return UnknownFlags();
  if (iovcnt < 0 || (iovcnt > 0 && !iov)) return Fail(EINVAL, "invalid I/O vector");
  libblock::IoVec v;
  uint64_t total = 0;
  for (int i = 0; i < iovcnt; ++i) {
    if (!libblock::CheckedAdd<uint64_t>(total, iov[i].iov_len, &total)) {
      return Fail(EINVAL, "offset or length out of range");
    }
    v.Append(iov[i].iov_base, iov[i].iov_len);
  }
  if (int r = RangeCheck(offset, total)) return r;
  libblock::EventLoop& loop = *be->ctx->loop;
  int64_t off = static_cast<int64_t>(offset), len = static_cast<int64_t>(total);
  absl::Status st = write ? loop.Run(be->be->Write(off, len, v, ToReqFlags(flags)))
                          : loop.Run(be->be->Read(off, len, v, 0));
  return Check(st);
}

}  // namespace

extern "C" {

LB_API const char* lb_version(void) { return LIBBLOCK_VERSION; }

LB_API const char* lb_get_error(void) { return last_error.c_str(); }

LB_API int lb_context_new(uint32_t flags, lb_context** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!out) return Fail(EINVAL, "lb_context_new: out is NULL");
    if (flags & ~LB_CONTEXT_NO_IO_URING) return UnknownFlags();
    libblock::LoopOptions opts;
    opts.use_io_uring = !(flags & LB_CONTEXT_NO_IO_URING);
    auto loop = libblock::EventLoop::Create(opts);
    if (!loop.ok()) return Fail(loop.status());
    auto ctx = std::make_unique<lb_context>();
    ctx->loop = std::move(*loop);
    ctx->graph = std::make_unique<libblock::Graph>(*ctx->loop);
    lb_context* raw = ctx.get();
    ctx->graph->SetWarningHandler([raw](const std::string& msg) {
      if (raw->warning_fn) {
        raw->warning_fn(msg.c_str(), raw->warning_data);
      } else {
        fprintf(stderr, "%s\n", msg.c_str());
      }
    });
    *out = ctx.release();
    return 0;
  });
}

LB_API void lb_context_free(lb_context* ctx) {
  if (!ctx) return;
  Guard([&]() -> int {
    for (lb_backend* be : std::set<lb_backend*>(ctx->backends)) {
      (void)be->be->Close();
      delete be;
    }
    ctx->backends.clear();
    ctx->graph.reset();
    ctx->loop.reset();
    return 0;
  });
  delete ctx;
}

LB_API void lb_context_set_warning_handler(lb_context* ctx, lb_warning_fn fn, void* user_data) {
  if (!ctx) return;
  ctx->warning_fn = fn;
  ctx->warning_data = user_data;
}

LB_API int lb_create(lb_context* ctx, const char* filename, const char* format,
                     const char* options, uint64_t size, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ctx || !filename || !format) return Fail(EINVAL, "lb_create: NULL argument");
    if (flags) return UnknownFlags();
    auto opts = ParseOptions(options);
    if (!opts.ok()) return Fail(opts.status());
    opts->SetDefault("size", static_cast<uint64_t>(size));
    return Check(ctx->graph->Create(filename, format, std::move(*opts)));
  });
}

LB_API int lb_open(lb_context* ctx, const char* filename, const char* options, uint32_t flags,
                   lb_backend** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!ctx || !out) return Fail(EINVAL, "lb_open: NULL argument");
    constexpr uint32_t kAll = LB_OPEN_RDWR | LB_OPEN_SHARE_RW | LB_OPEN_RESIZE | LB_OPEN_FORCE_SHARE;
    if (flags & ~kAll) return UnknownFlags();
    if ((flags & LB_OPEN_FORCE_SHARE) && (flags & LB_OPEN_RDWR)) {
      return Fail(EINVAL, "force-share=on can only be used with read-only images");
    }
    auto opts = ParseOptions(options);
    if (!opts.ok()) return Fail(opts.status());
    if (flags & LB_OPEN_FORCE_SHARE) opts->SetDefault("force-share", true);
    libblock::BackendOptions bo;
    bo.read_only = !(flags & LB_OPEN_RDWR);
    bo.share_rw = flags & LB_OPEN_SHARE_RW;
    bo.resize = flags & LB_OPEN_RESIZE;
    auto be = libblock::Backend::Open(*ctx->graph, filename ? filename : "", std::move(*opts), bo);
    if (!be.ok()) return Fail(be.status());
    auto handle = std::make_unique<lb_backend>();
    handle->ctx = ctx;
    handle->be = std::move(*be);
    ctx->backends.insert(handle.get());
    *out = handle.release();
    return 0;
  });
}

LB_API int lb_close(lb_backend* be) {
  if (!be) return 0;
  int r = Guard([&]() -> int { return be->be ? Check(be->be->Close()) : 0; });
  be->ctx->backends.erase(be);
  delete be;
  return r;
}

LB_API int64_t lb_get_size(lb_backend* be) {
  if (!ValidBackend(be)) return BadHandle();
  return be->be->size();
}

LB_API int lb_reopen(lb_backend* be, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags & ~LB_OPEN_RDWR) return UnknownFlags();
    return Check(be->be->Reopen(!(flags & LB_OPEN_RDWR)));
  });
}

LB_API int lb_pread(lb_backend* be, void* buf, size_t count, uint64_t offset, uint32_t flags) {
  struct iovec v = {buf, count};
  return Guard([&] { return VectorIo(be, &v, 1, offset, flags, false); });
}

LB_API int lb_pwrite(lb_backend* be, const void* buf, size_t count, uint64_t offset,
                     uint32_t flags) {
  struct iovec v = {const_cast<void*>(buf), count};
  return Guard([&] { return VectorIo(be, &v, 1, offset, flags, true); });
}

LB_API int lb_preadv(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
                     uint32_t flags) {
  return Guard([&] { return VectorIo(be, iov, iovcnt, offset, flags, false); });
}

LB_API int lb_pwritev(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
                      uint32_t flags) {
  return Guard([&] { return VectorIo(be, iov, iovcnt, offset, flags, true); });
}

LB_API int lb_pwrite_zeroes(lb_backend* be, uint64_t offset, uint64_t count, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags & ~kReqFlagsAll) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    return Check(be->ctx->loop->Run(be->be->WriteZeroes(static_cast<int64_t>(offset),
                                                        static_cast<int64_t>(count),
                                                        ToReqFlags(flags))));
  });
}

LB_API int lb_discard(lb_backend* be, uint64_t offset, uint64_t count, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    return Check(be->ctx->loop->Run(be->be->Discard(static_cast<int64_t>(offset),
                                                    static_cast<int64_t>(count))));
  });
}

LB_API int lb_flush(lb_backend* be, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    return Check(be->ctx->loop->Run(be->be->Flush()));
  });
}

LB_API int lb_truncate(lb_backend* be, uint64_t size, const char* prealloc, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    if (size > static_cast<uint64_t>(libblock::kMaxLength)) return Fail(EFBIG, "size too large");
    auto mode = libblock::ParsePreallocMode(prealloc ? prealloc : "off");
    if (!mode.ok()) return Fail(mode.status());
    return Check(be->ctx->loop->Run(be->be->Truncate(static_cast<int64_t>(size), true, *mode)));
  });
}

LB_API int lb_block_status(lb_backend* be, uint64_t offset, uint64_t count, uint32_t flags,
                           lb_extent* out) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (!out || out->struct_size < offsetof(lb_extent, flags) + sizeof(uint32_t)) {
      return Fail(EINVAL, "lb_block_status: out is NULL or its struct_size is too small");
    }
    if (flags) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    auto st = be->ctx->loop->Run(be->be->GetBlockStatus(static_cast<int64_t>(offset),
                                                        static_cast<int64_t>(count)));
    if (!st.ok()) return Fail(st.status());
    lb_extent full = LB_EXTENT_INIT;
    full.length = static_cast<uint64_t>(st->bytes);
    full.flags = st->flags & (LB_STATUS_DATA | LB_STATUS_ZERO | LB_STATUS_ALLOCATED | LB_STATUS_EOF);
    full.has_host_offset = (st->flags & libblock::kStatusOffsetValid) != 0;
    full.host_offset = full.has_host_offset ? static_cast<uint64_t>(st->map) : 0;
    // Callers built against an older, shorter lb_extent get only the fields they know.
    size_t n = std::min(out->struct_size, sizeof(full));
    size_t keep = out->struct_size;
    std::memcpy(out, &full, n);
    out->struct_size = keep;
    return 0;
  });
}

}  // extern "C"
