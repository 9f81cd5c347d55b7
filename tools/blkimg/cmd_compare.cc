// blkimg compare: qemu-img compare [--object OBJ] [--image-opts] [-f FMT] [-F FMT] [-T CACHE]
//                 [-p] [-q] [-s] [-U] FILENAME1 FILENAME2
//
// Exit codes as qemu-img's: 0 the images read the same, 1 they differ, 2 an error (such as an
// image that cannot be opened). The images are walked by block status: ranges both read as
// zeroes are skipped unread; ranges allocated in one image only must read as zeroes there.
// Differences are reported at 512-byte sector granularity, the first differing sector of the
// first differing range. When the sizes differ, the larger image's tail must read as zeroes
// (-s, strict mode, fails instead, and also fails on any block status difference).
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common.h"

namespace blkimg {
namespace {

constexpr uint64_t kSector = 512;
constexpr uint64_t kBufBytes = 2 * 1024 * 1024;  // at most this much is read at once

// qemu-img compare's exit codes: same, different, an image that cannot be opened (and usage
// of --object / -T), a failed allocation query, a failed read.
constexpr int kSame = 0, kDiffer = 1, kFailed = 2, kStatusFailed = 3, kReadFailed = 4;

struct CompareArgs {
  bool image_opts = false, force_share = false, progress = false, quiet = false;
  bool strict = false;
  std::string format1, format2, cache = "writeback";
  std::vector<std::string> files;
};

// Messages on stdout that -q silences.
void Say(const CompareArgs& a, const std::string& text) {
  if (!a.quiet) printf("%s\n", text.c_str());
}

struct Image {
  lb_backend* be = nullptr;
  std::string name;
  uint64_t size = 0;
};

// The offset of the first sector of `buf` that is not all zeroes, or `len` if none.
uint64_t FirstNonZeroSector(const uint8_t* buf, uint64_t len) {
  for (uint64_t off = 0; off < len; off += kSector) {
    uint64_t n = std::min(kSector, len - off);
    for (uint64_t i = 0; i < n; ++i) {
      if (buf[off + i]) return off;
    }
  }
  return len;
}

// The offset of the first sector at which the buffers differ, or `len` if none.
uint64_t FirstDifferentSector(const uint8_t* a, const uint8_t* b, uint64_t len) {
  for (uint64_t off = 0; off < len; off += kSector) {
    if (memcmp(a + off, b + off, std::min(kSector, len - off))) return off;
  }
  return len;
}

class Comparer {
 public:
  Comparer(const CompareArgs& a, Image& one, Image& two)
      : args_(a), one_(one), two_(two), buf1_(kBufBytes), buf2_(kBufBytes),
        progress_(a.progress && !a.quiet, 2.0f) {}

  int Run() {
    progress_.Set(0);
    int ret = Compare();
    progress_.End();
    return ret;
  }

 private:
  int Compare() {
    uint64_t common = std::min(one_.size, two_.size);
    progress_base_ = std::max(one_.size, two_.size);
    if (one_.size != two_.size && args_.strict) {
      Say(args_, "Strict mode: Image size mismatch!");
      return kDiffer;
    }
    for (uint64_t offset = 0; offset < common;) {
      lb_extent e1 = LB_EXTENT_INIT, e2 = LB_EXTENT_INIT;
      if (!Status(one_, offset, &e1) || !Status(two_, offset, &e2)) return kStatusFailed;
      uint64_t chunk = std::min({e1.length, e2.length, common - offset});
      if (args_.strict && StrictStatus(e1) != StrictStatus(e2)) {
        Say(args_, "Strict mode: Offset " + std::to_string(offset) + " block status mismatch!");
        return kDiffer;
      }
      bool zero1 = e1.flags & LB_STATUS_ZERO, zero2 = e2.flags & LB_STATUS_ZERO;
      bool alloc1 = e1.flags & LB_STATUS_ALLOCATED, alloc2 = e2.flags & LB_STATUS_ALLOCATED;
      if (zero1 && zero2) {
        // both read as zeroes: nothing to read
      } else if (alloc1 == alloc2) {
        if (alloc1) {
          chunk = std::min(chunk, kBufBytes);
          if (!Read(one_, offset, chunk, buf1_.data()) || !Read(two_, offset, chunk, buf2_.data())) {
            return kReadFailed;
          }
          uint64_t at = FirstDifferentSector(buf1_.data(), buf2_.data(), chunk);
          if (at < chunk) return Mismatch(offset + at);
        }
      } else {
        chunk = std::min(chunk, kBufBytes);
        int r = CheckZero(alloc1 ? one_ : two_, offset, chunk);
        if (r != kSame) return r;
      }
      offset += chunk;
      Advance(chunk);
    }
    // The larger image's tail must read as zeroes.
    if (one_.size != two_.size) Say(args_, "Warning: Image size mismatch!");
    Image& larger = one_.size > two_.size ? one_ : two_;
    for (uint64_t offset = common; offset < larger.size;) {
      lb_extent e = LB_EXTENT_INIT;
      if (!Status(larger, offset, &e)) return kStatusFailed;
      uint64_t chunk = std::min(e.length, larger.size - offset);
      if ((e.flags & LB_STATUS_ALLOCATED) && !(e.flags & LB_STATUS_ZERO)) {
        chunk = std::min(chunk, kBufBytes);
        int r = CheckZero(larger, offset, chunk);
        if (r != kSame) return r;
      }
      offset += chunk;
      Advance(chunk);
    }
    Say(args_, "Images are identical.");
    return kSame;
  }

  // What strict mode compares: the status flags (EOF included, as qemu-img does: an extent
  // that reaches the end differs from one that does not) and whether the data has a host
  // offset.
  static uint32_t StrictStatus(const lb_extent& e) {
    return e.flags | (e.has_host_offset ? 0x100u : 0);
  }

  void Advance(uint64_t chunk) {
    progress_.Add(static_cast<float>(chunk) / static_cast<float>(progress_base_) * 100);
  }

  int Mismatch(uint64_t offset) {
    Say(args_, "Content mismatch at offset " + std::to_string(offset) + "!");
    return kDiffer;
  }

  int CheckZero(Image& image, uint64_t offset, uint64_t len) {
    if (!Read(image, offset, len, buf1_.data())) return kReadFailed;
    uint64_t at = FirstNonZeroSector(buf1_.data(), len);
    return at < len ? Mismatch(offset + at) : kSame;
  }

  bool Status(Image& image, uint64_t offset, lb_extent* e) {
    if (lb_block_status(image.be, offset, image.size - offset, 0, e) < 0) {
      Error("Sector allocation test failed for " + image.name);
      return false;
    }
    return true;
  }

  bool Read(Image& image, uint64_t offset, uint64_t len, uint8_t* buf) {
    int r = lb_pread(image.be, buf, len, offset, 0);
    if (r < 0) {
      Error("Error while reading offset " + std::to_string(offset) + " of " + image.name + ": " +
            strerror(-r));
      return false;
    }
    return true;
  }

  const CompareArgs& args_;
  Image& one_;
  Image& two_;
  std::vector<uint8_t> buf1_, buf2_;
  Progress progress_;
  uint64_t progress_base_ = 1;
};

bool OpenImage(Context& ctx, const CompareArgs& a, size_t i, uint32_t flags, Image* image) {
  image->name = a.files[i];
  image->be = OpenBackend(ctx, {a.files[i], i == 0 ? a.format1 : a.format2, a.image_opts}, flags);
  if (!image->be) return false;
  int64_t size = lb_get_size(image->be);
  if (size < 0) {
    Error("Can't get size of " + image->name + ": " + LibError());
    return false;
  }
  image->size = static_cast<uint64_t>(size);
  return true;
}

int Run(Context& ctx, const CompareArgs& a) {
  std::optional<uint32_t> cache = ParseCacheMode(a.cache);
  if (!cache) {
    Error("Invalid source cache option: " + a.cache);
    return kFailed;
  }
  uint32_t flags = *cache | (a.force_share ? LB_OPEN_FORCE_SHARE : 0);
  Image one, two;
  int ret = kFailed;
  if (OpenImage(ctx, a, 0, flags, &one) && OpenImage(ctx, a, 1, flags, &two)) {
    ret = Comparer(a, one, two).Run();
  }
  lb_close(one.be);
  lb_close(two.be);
  return ret;
}

}  // namespace

int RunCompare(int argc, char** argv) {
  Progress::InstallSignalHandler();
  static const option kLong[] = {BLKIMG_LONG_HELP, BLKIMG_LONG_OBJECT, BLKIMG_LONG_IMAGE_OPTS,
                                 BLKIMG_LONG_FORCE_SHARE, BLKIMG_LONG_END};
  Context ctx;
  CompareArgs a;
  for (;;) {
    int c = NextOption(argc, argv, ":hf:F:T:pqsU", kLong);
    if (c == -1) break;
    switch (c) {
      case 'h': PrintHelp(); return 0;
      case 'f': a.format1 = optarg; break;
      case 'F': a.format2 = optarg; break;
      case 'T': a.cache = optarg; break;
      case 'p': a.progress = true; break;
      case 'q': a.quiet = true; break;
      case 's': a.strict = true; break;
      case 'U': a.force_share = true; break;
      case kOptImageOpts: a.image_opts = true; break;
      case kOptObject:
        // compare's own exit code for errors, unlike the other subcommands
        if (!ctx.AddObjects({optarg})) return kFailed;
        break;
      default: return 1;
    }
  }
  if (optind != argc - 2) return UsageError("Expecting two image file names");
  a.files = {argv[optind], argv[optind + 1]};
  return Run(ctx, a);
}

}  // namespace blkimg
