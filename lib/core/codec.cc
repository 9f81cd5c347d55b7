// Compression codecs (see codec.h). zlib and libzstd contexts are kept per thread (the CPU
// pool's threads live long) and reset for each blob, so a cluster costs no context set-up.
#include "core/codec.h"

#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/str_format.h"
#include "util/status.h"

namespace libblock {
namespace {

// qcow2 and qcow store raw deflate written with a 4 KiB window, as qemu-img writes it.
constexpr int kDeflateWindowBits = 12;
// Any raw deflate stream, whatever window it was written with, inflates with the largest one.
constexpr int kInflateRawWindowBits = 15;
// Zstd frames may ask for a window as large as 2^27 bytes; a hostile one must not make us
// allocate that. Real blobs need no more than their own size (frames with a known content
// size) or the window of the level they were written with (2^21 at the default level).
constexpr int kZstdMinWindowLogMax = 23;
constexpr int kZstdWindowLogLimit = 31;  // zstd's own limit on 64-bit hosts

absl::Status Corrupt(Codec codec, std::string_view what) {
  return ErrnoError(EIO, absl::StrFormat("%s blob: %s", CodecName(codec), what));
}

class Deflater {
 public:
  Deflater(int window_bits, int mem_level) {
    ok_ = deflateInit2(&s_, Z_DEFAULT_COMPRESSION, Z_DEFLATED, window_bits, mem_level,
                       Z_DEFAULT_STRATEGY) == Z_OK;
  }
  ~Deflater() {
    if (ok_) deflateEnd(&s_);
  }
  z_stream* Get() {
    if (!ok_ || deflateReset(&s_) != Z_OK) return nullptr;
    return &s_;
  }

 private:
  z_stream s_{};
  bool ok_ = false;
};

class Inflater {
 public:
  explicit Inflater(int window_bits) { ok_ = inflateInit2(&s_, window_bits) == Z_OK; }
  ~Inflater() {
    if (ok_) inflateEnd(&s_);
  }
  z_stream* Get() {
    if (!ok_ || inflateReset(&s_) != Z_OK) return nullptr;
    return &s_;
  }

 private:
  z_stream s_{};
  bool ok_ = false;
};

struct ZstdContexts {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_DCtx* d = ZSTD_createDCtx();
  ~ZstdContexts() {
    ZSTD_freeCCtx(c);
    ZSTD_freeDCtx(d);
  }
};

ZstdContexts& Zstd() {
  thread_local ZstdContexts contexts;
  return contexts;
}

absl::StatusOr<std::optional<size_t>> DeflateCompress(Codec codec, std::span<const uint8_t> in,
                                                      std::span<uint8_t> out) {
  thread_local Deflater raw(-kDeflateWindowBits, 9);
  thread_local Deflater wrapped(15, 8);
  z_stream* s = codec == Codec::kDeflate ? raw.Get() : wrapped.Get();
  if (!s) return ErrnoError(ENOMEM, "deflate: cannot set up a compression stream");
  s->next_in = const_cast<Bytef*>(in.data());
  s->avail_in = static_cast<uInt>(in.size());
  s->next_out = out.data();
  s->avail_out = static_cast<uInt>(out.size());
  int ret = deflate(s, Z_FINISH);
  if (ret == Z_STREAM_END) return std::optional<size_t>(out.size() - s->avail_out);
  if (ret == Z_OK || ret == Z_BUF_ERROR) return std::optional<size_t>();  // did not fit
  return ErrnoError(EIO, absl::StrFormat("deflate failed (%d)", ret));
}

absl::Status DeflateDecompress(Codec codec, std::span<const uint8_t> in, std::span<uint8_t> out) {
  thread_local Inflater raw(-kInflateRawWindowBits);
  thread_local Inflater wrapped(15);
  z_stream* s = codec == Codec::kDeflate ? raw.Get() : wrapped.Get();
  if (!s) return ErrnoError(ENOMEM, "inflate: cannot set up a decompression stream");
  s->next_in = const_cast<Bytef*>(in.data());
  s->avail_in = static_cast<uInt>(in.size());
  s->next_out = out.data();
  s->avail_out = static_cast<uInt>(out.size());
  int ret = inflate(s, Z_FINISH);
  if (ret == Z_STREAM_END) {
    if (s->avail_out != 0) {
      return Corrupt(codec, absl::StrFormat("decompresses to %d bytes, expected %d",
                                            out.size() - s->avail_out, out.size()));
    }
    return absl::OkStatus();
  }
  if (ret != Z_OK && ret != Z_BUF_ERROR) {
    return Corrupt(codec, s->msg ? s->msg : "invalid stream");
  }
  if (s->avail_out != 0) {
    return Corrupt(codec, absl::StrFormat("truncated: %d bytes decompress to %d of %d bytes",
                                          in.size(), out.size() - s->avail_out, out.size()));
  }
  // The output is full but the stream did not say it ended (it may be one step short of its
  // end marker): it must not hold more data.
  uint8_t extra = 0;
  s->next_out = &extra;
  s->avail_out = 1;
  ret = inflate(s, Z_FINISH);
  if (s->avail_out == 0) {
    return Corrupt(codec, absl::StrFormat("decompresses to more than %d bytes", out.size()));
  }
  // A zlib stream carries a checksum, which only its end verifies. Raw deflate has none, and
  // QEMU reads a qcow2 cluster as soon as it is complete, so neither do we ask more of it.
  if (codec == Codec::kZlib && ret != Z_STREAM_END) {
    return Corrupt(codec, ret == Z_DATA_ERROR && s->msg ? s->msg : "truncated after its data");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<size_t>> ZstdCompress(std::span<const uint8_t> in,
                                                   std::span<uint8_t> out) {
  ZSTD_CCtx* c = Zstd().c;
  if (!c) return ErrnoError(ENOMEM, "zstd: cannot set up a compression context");
  ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
  size_t n = ZSTD_compress2(c, out.data(), out.size(), in.data(), in.size());
  if (ZSTD_isError(n)) {
    if (ZSTD_getErrorCode(n) == ZSTD_error_dstSize_tooSmall) return std::optional<size_t>();
    return ErrnoError(EIO, absl::StrFormat("zstd compression failed: %s", ZSTD_getErrorName(n)));
  }
  return std::optional<size_t>(n);
}

absl::Status ZstdDecompress(std::span<const uint8_t> in, std::span<uint8_t> out) {
  ZSTD_DCtx* d = Zstd().d;
  if (!d) return ErrnoError(ENOMEM, "zstd: cannot set up a decompression context");
  ZSTD_DCtx_reset(d, ZSTD_reset_session_and_parameters);
  int window_log = kZstdMinWindowLogMax;
  while (window_log < kZstdWindowLogLimit && (size_t{1} << window_log) < out.size()) {
    ++window_log;
  }
  ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, window_log);
  ZSTD_inBuffer ib{in.data(), in.size(), 0};
  ZSTD_outBuffer ob{out.data(), out.size(), 0};
  size_t ret = 1;
  // Frames follow one another until the output is full (QEMU reads a cluster the same way).
  while (ob.pos < ob.size) {
    size_t in_before = ib.pos, out_before = ob.pos;
    ret = ZSTD_decompressStream(d, &ob, &ib);
    if (ZSTD_isError(ret)) {
      return Corrupt(Codec::kZstd, absl::StrFormat("%s after %d of %d bytes",
                                                   ZSTD_getErrorName(ret), ob.pos, ob.size));
    }
    if (ob.pos == ob.size) break;
    if (ib.pos == in_before && ob.pos == out_before) {
      return Corrupt(Codec::kZstd, absl::StrFormat("truncated: %d bytes decompress to %d of %d "
                                                   "bytes", in.size(), ob.pos, ob.size));
    }
  }
  if (ret != 0) {
    // The frame that filled the output has not ended yet: it must not hold more data.
    uint8_t extra = 0;
    ZSTD_outBuffer eb{&extra, 1, 0};
    ret = ZSTD_decompressStream(d, &eb, &ib);
    if (!ZSTD_isError(ret) && eb.pos != 0) {
      return Corrupt(Codec::kZstd, absl::StrFormat("decompresses to more than %d bytes",
                                                   out.size()));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSizes(Codec codec, size_t in, size_t out) {
  // zlib counts in uInt; no blob or cluster comes near that.
  if (in > UINT_MAX || out > UINT_MAX) {
    return ErrnoError(EINVAL, absl::StrFormat("%s: buffers larger than 4 GiB", CodecName(codec)));
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view CodecName(Codec codec) {
  switch (codec) {
    case Codec::kNone: return "none";
    case Codec::kDeflate: return "deflate";
    case Codec::kZlib: return "zlib";
    case Codec::kZstd: return "zstd";
    case Codec::kBzip2: return "bzip2";
    case Codec::kLzfse: return "lzfse";
  }
  return "unknown";
}

absl::StatusOr<std::optional<size_t>> Compress(Codec codec, std::span<const uint8_t> in,
                                               std::span<uint8_t> out) {
  LB_RETURN_IF_ERROR(CheckSizes(codec, in.size(), out.size()));
  switch (codec) {
    case Codec::kNone:
      return std::optional<size_t>();  // storing as is never shrinks anything
    case Codec::kDeflate:
    case Codec::kZlib:
      return DeflateCompress(codec, in, out);
    case Codec::kZstd:
      return ZstdCompress(in, out);
    default:
      return ErrnoError(ENOTSUP, absl::StrFormat("%s compression is not supported",
                                                 CodecName(codec)));
  }
}

absl::Status Decompress(Codec codec, std::span<const uint8_t> in, std::span<uint8_t> out) {
  LB_RETURN_IF_ERROR(CheckSizes(codec, in.size(), out.size()));
  switch (codec) {
    case Codec::kNone:
      if (in.size() < out.size()) return Corrupt(codec, "shorter than its data");
      if (!out.empty()) std::memcpy(out.data(), in.data(), out.size());
      return absl::OkStatus();
    case Codec::kDeflate:
    case Codec::kZlib:
      return DeflateDecompress(codec, in, out);
    case Codec::kZstd:
      return ZstdDecompress(in, out);
    default:
      return ErrnoError(ENOTSUP, absl::StrFormat("%s decompression is not supported",
                                                 CodecName(codec)));
  }
}

}  // namespace libblock
