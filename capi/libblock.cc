// The C ABI glue: lb_* definitions over the internal C++ library.
//
// Every entry point runs through Guard(), the one place where failures become the ABI's
// convention: a negative errno returned, and a thread-local message and errno for
// lb_get_error()/lb_get_errno(). No exception crosses the ABI (allocation failure is the only
// one the library can raise). The thread-local error storage is plain arrays, without
// destructors, so the library can be dlclose()d from any thread.
#include <cerrno>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/backend.h"
#include "core/event_loop.h"
#include "core/graph.h"
#include "core/info.h"
#include "core/json_text.h"
#include "core/options.h"
#include "core/commit.h"
#include "core/measure.h"
#include "core/rebase.h"
#include "core/snapshot.h"
#include "libblock.h"
#include "libblock_config.h"
#include "util/checked_math.h"
#include "util/size_parse.h"
#include "util/status.h"

struct lb_context {
  std::unique_ptr<libblock::EventLoop> loop;
  std::unique_ptr<libblock::Graph> graph;
  std::set<lb_backend*> backends;
  std::set<lb_node*> nodes;
  lb_warning_fn warning_fn = nullptr;
  void* warning_data = nullptr;
  // Asynchronous requests: accepted and not yet reaped, and completions waiting to be reaped.
  unsigned inflight = 0;
  unsigned max_inflight = 1024;
  // Events waiting to be reaped (lb_reap takes the LB_EVENT_REQUEST ones, lb_reap_events all).
  struct Event {
    uint32_t kind;
    void* user_data;
    int64_t result;
  };
  std::deque<Event> completions;
  // Inside lb_reap, which collects completions itself and leaves the fd readable on return
  // if some are left: completions then need no eventfd write each.
  bool reaping = false;
};

struct lb_backend {
  lb_context* ctx;
  std::unique_ptr<libblock::Backend> be;
  std::string extent_filename;  // backing store of the last lb_extent.filename
  std::string temp_overlay;     // LB_OPEN_SNAPSHOT: the overlay file, deleted with the handle
  ~lb_backend() {
    be.reset();
    if (!temp_overlay.empty()) unlink(temp_overlay.c_str());
  }
};

struct lb_node {
  lb_context* ctx;
  libblock::Node* node;  // one reference held (Graph::Ref) until lb_node_close
};

struct lb_options {
  libblock::Options opts;
  std::map<std::string, std::string> text;  // backing store of lb_options_get results
};

namespace {

using libblock::ErrnoError;
using libblock::StatusErrno;

constexpr size_t kErrorSize = 4096;
thread_local char last_error[kErrorSize];
thread_local int last_errno;

int Fail(int err, std::string_view message) {
  size_t n = std::min(message.size(), kErrorSize - 1);
  std::memcpy(last_error, message.data(), n);
  last_error[n] = '\0';
  last_errno = err;
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

int BadHandle() { return Fail(EINVAL, "invalid or closed backend handle"); }
int UnknownFlags() { return Fail(EINVAL, "unknown flags"); }
int NullArgument(const char* fn) { return Fail(EINVAL, std::string(fn) + ": NULL argument"); }

bool ValidBackend(lb_backend* be) { return be && be->be && be->be->root(); }

char* DupString(std::string_view s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (!p) throw std::bad_alloc();
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

absl::StatusOr<libblock::Options> ParseOptions(const char* text) {
  if (!text || !*text) return libblock::Options();
  if (libblock::IsJsonFilename(text)) return libblock::ParseJsonFilename(text);
  return libblock::ParseKeyValueOptions(text);
}

libblock::ReqFlags ToReqFlags(uint32_t flags) {
  libblock::ReqFlags out = 0;
  if (flags & LB_REQ_FUA) out |= libblock::kReqFua;
  if (flags & LB_REQ_MAY_UNMAP) out |= libblock::kReqMayUnmap;
  if (flags & LB_REQ_NO_FALLBACK) out |= libblock::kReqNoFallback;
  if (flags & LB_REQ_COMPRESSED) out |= libblock::kReqCompressed;
  return out;
}

constexpr uint32_t kReqFlagsAll = LB_REQ_FUA | LB_REQ_MAY_UNMAP | LB_REQ_NO_FALLBACK;
constexpr uint32_t kOpenFlagsAll = LB_OPEN_RDWR | LB_OPEN_SHARE_RW | LB_OPEN_RESIZE |
                                   LB_OPEN_FORCE_SHARE | LB_OPEN_NO_BACKING | LB_OPEN_UNMAP |
                                   LB_OPEN_SHARE_ALL | LB_OPEN_CACHE_MASK | LB_OPEN_AIO_MASK | LB_OPEN_SNAPSHOT;
// What a backend's permissions are made of: lb_backend_new and lb_reopen take these.
constexpr uint32_t kBackendPermFlags = LB_OPEN_RDWR | LB_OPEN_SHARE_RW | LB_OPEN_RESIZE |
                                       LB_OPEN_SHARE_ALL;

int RangeCheck(uint64_t offset, uint64_t count) {
  if (offset > static_cast<uint64_t>(libblock::kMaxLength) ||
      count > static_cast<uint64_t>(libblock::kMaxLength) - offset) {
    return Fail(EINVAL, "offset or length out of range");
  }
  return 0;
}

// Builds an IoVec over a caller's iovec array; fails on overflowing totals.
int MakeVector(const struct iovec* iov, int iovcnt, libblock::IoVec* v, uint64_t* total) {
  if (iovcnt < 0 || (iovcnt > 0 && !iov)) return Fail(EINVAL, "invalid I/O vector");
  *total = 0;
  for (int i = 0; i < iovcnt; ++i) {
    if (!libblock::CheckedAdd<uint64_t>(*total, iov[i].iov_len, total)) {
      return Fail(EINVAL, "I/O vector lengths overflow");
    }
    v->Append(iov[i].iov_base, iov[i].iov_len);
  }
  return 0;
}

// The cache mode of LB_OPEN_CACHE_* flags, as QEMU's cache= names it.
absl::StatusOr<const char*> CacheModeName(uint32_t flags) {
  switch (flags & LB_OPEN_CACHE_MASK) {
    case LB_OPEN_CACHE_WRITEBACK: return "writeback";
    case LB_OPEN_CACHE_NONE: return "none";
    case LB_OPEN_CACHE_WRITETHROUGH: return "writethrough";
    case LB_OPEN_CACHE_DIRECTSYNC: return "directsync";
    case LB_OPEN_CACHE_UNSAFE: return "unsafe";
  }
  return ErrnoError(EINVAL, "unknown cache mode in flags");
}

struct OpenPlan {
  std::string filename;
  libblock::Options options;
  libblock::OpenParams params;
  libblock::BackendOptions backend;
};

// Turns lb_open_args into the graph's terms: options (string, then object), the format, and
// the flags (mode, sharing, cache, aio, backing, discard).
absl::StatusOr<OpenPlan> PlanOpen(const lb_open_args* args) {
  if (!args || args->struct_size < offsetof(lb_open_args, flags) + sizeof(uint32_t)) {
    return ErrnoError(EINVAL, "lb_open_args is NULL or its struct_size is too small");
  }
  bool has_name = args->struct_size >= offsetof(lb_open_args, name) + sizeof(const char*);
  OpenPlan plan;
  uint32_t flags = args->flags;
  if (flags & ~kOpenFlagsAll) return ErrnoError(EINVAL, "unknown flags");
  if ((flags & LB_OPEN_FORCE_SHARE) && (flags & LB_OPEN_RDWR)) {
    return ErrnoError(EINVAL, "force-share=on can only be used with read-only images");
  }
  LB_ASSIGN_OR_RETURN(plan.options, ParseOptions(args->options));
  if (args->opts) {
    for (const auto& [key, value] : args->opts->opts) plan.options.Set(key, value);
  }
  if (args->filename) plan.filename = args->filename;
  if (args->format && *args->format) {
    std::optional<std::string> driver = plan.options.GetString("driver");
    if (driver && *driver != args->format) {
      return ErrnoError(EINVAL, absl::StrFormat("the format '%s' and the option driver=%s disagree",
                                                args->format, *driver));
    }
    plan.options.Set("driver", std::string(args->format));
  }
  LB_ASSIGN_OR_RETURN(const char* cache, CacheModeName(flags));
  if (std::optional<std::string> c = plan.options.GetString("cache")) {
    cache = nullptr;  // an explicit cache= option wins over the flags
    plan.options.Erase("cache");
    bool wt = false;
    LB_RETURN_IF_ERROR(libblock::ApplyCacheMode(*c, plan.options, &wt));
    plan.backend.writethrough = wt;
  }
  if (cache) {
    bool wt = false;
    LB_RETURN_IF_ERROR(libblock::ApplyCacheMode(cache, plan.options, &wt));
    plan.backend.writethrough = wt;
  }
  plan.params.inherit.writethrough = plan.backend.writethrough;
  if ((flags & LB_OPEN_AIO_MASK) == LB_OPEN_AIO_THREADS) plan.params.inherit.aio = "threads";
  if ((flags & LB_OPEN_AIO_MASK) == LB_OPEN_AIO_IO_URING) plan.params.inherit.aio = "io_uring";
  if ((flags & LB_OPEN_AIO_MASK) == LB_OPEN_AIO_NATIVE) plan.params.inherit.aio = "native";
  plan.params.inherit.no_backing = flags & LB_OPEN_NO_BACKING;
  if (flags & LB_OPEN_UNMAP) plan.options.SetDefault("discard", std::string("unmap"));
  if (!(flags & LB_OPEN_RDWR)) plan.options.SetDefault("read-only", true);
  if (flags & LB_OPEN_FORCE_SHARE) plan.options.SetDefault("force-share", true);
  plan.backend.read_only = !(flags & LB_OPEN_RDWR);
  plan.backend.share_rw = flags & LB_OPEN_SHARE_RW;
  plan.backend.share_all = flags & LB_OPEN_SHARE_ALL;
  plan.backend.resize = flags & LB_OPEN_RESIZE;
  if (has_name && args->name) plan.backend.name = args->name;
  return plan;
}

absl::StatusOr<libblock::Node*> OpenNode(lb_context* ctx, OpenPlan& plan) {
  return ctx->graph->Open(plan.filename, std::move(plan.options), plan.params);
}

int NewBackendHandle(lb_context* ctx, std::unique_ptr<libblock::Backend> be, lb_backend** out) {
  auto handle = std::make_unique<lb_backend>();
  handle->ctx = ctx;
  handle->be = std::move(be);
  ctx->backends.insert(handle.get());
  *out = handle.release();
  return 0;
}

int NewNodeHandle(lb_context* ctx, libblock::Node* node, lb_node** out) {
  auto handle = std::make_unique<lb_node>();
  handle->ctx = ctx;
  handle->node = node;
  ctx->nodes.insert(handle.get());
  *out = handle.release();
  return 0;
}

// ---- image information ------------------------------------------------------------------------

// One lb_image_info with the storage for its strings; the head of a chain owns the rest.
// Standard layout, so a pointer to `info` is a pointer to the holder.
struct InfoStorage;
struct InfoHolder {
  lb_image_info info;
  InfoStorage* storage;  // non-null only for the head
};
struct InfoStorage {
  std::deque<std::string> strings;
  std::vector<InfoHolder*> holders;
  ~InfoStorage() {
    for (InfoHolder* h : holders) delete h;
  }
};
static_assert(std::is_standard_layout_v<InfoHolder>);

const char* Keep(InfoStorage& s, const nlohmann::ordered_json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return nullptr;
  s.strings.push_back(it->is_string() ? it->get<std::string>()
                                      : libblock::QemuJsonText(*it, /*pretty=*/false));
  return s.strings.back().c_str();
}

lb_image_info FromJson(InfoStorage& s, const nlohmann::ordered_json& j) {
  lb_image_info info = {};
  info.struct_size = sizeof(lb_image_info);
  info.filename = Keep(s, j, "filename");
  info.format = Keep(s, j, "format");
  info.virtual_size = j.value("virtual-size", uint64_t{0});
  info.actual_size = j.value("actual-size", int64_t{-1});
  info.cluster_size = j.value("cluster-size", uint32_t{0});
  info.dirty = j.value("dirty-flag", false);
  info.encrypted = j.value("encrypted", false);
  info.backing_filename = Keep(s, j, "backing-filename");
  info.full_backing_filename = Keep(s, j, "full-backing-filename");
  info.backing_format = Keep(s, j, "backing-filename-format");
  info.format_specific = Keep(s, j, "format-specific");
  // qemu-img's text: names are bytes, escaped as QEMU escapes them (nlohmann's dump would
  // throw on a name that is not UTF-8).
  s.strings.push_back(libblock::QemuJsonText(j, /*pretty=*/true));
  info.json = s.strings.back().c_str();
  return info;
}

// ---- asynchronous requests ---------------------------------------------------------------------

// Runs a synchronous request on the context's loop. The loop consumes the fd's wake-ups, so
// if completions are still waiting to be reaped afterwards the fd is made readable again.
template <typename T>
T RunSync(lb_context* ctx, libblock::Task<T> task) {
  T result = ctx->loop->Run(std::move(task));
  if (!ctx->completions.empty()) ctx->loop->Kick();
  return result;
}

// Queues the completion of an accepted request. The fd must say so: Kick (which costs a
// system call only when the loop has consumed the last one), unless lb_reap is collecting.
void Complete(lb_context* ctx, void* user_data, const absl::Status& st) {
  ctx->completions.push_back({LB_EVENT_REQUEST, user_data, -StatusErrno(st)});
  if (!ctx->reaping) ctx->loop->Kick();
}

// Counts an accepted request, or refuses it when the context is full.
int Accept(lb_context* ctx) {
  if (ctx->inflight >= ctx->max_inflight) {
    return Fail(EAGAIN, absl::StrFormat("the context already has %d requests in flight",
                                        ctx->max_inflight));
  }
  ++ctx->inflight;
  return 0;
}

int Submit(lb_backend* be, libblock::Task<absl::Status> task, void* user_data) {
  lb_context* ctx = be->ctx;
  if (int r = Accept(ctx)) return r;
  ctx->loop->Spawn(std::move(task), [ctx, user_data](absl::Status st) {
    Complete(ctx, user_data, st);
  });
  ctx->loop->PrepareForPoll();
  return 0;
}

// A read or write, as one self-owning coroutine that starts at once and queues its own
// completion (one coroutine frame, where Spawn would add a wrapper around a Task). The vector
// is a copy of the caller's, owned by the frame. An exception goes to the loop, as a spawned
// task's does.
libblock::DetachedTask VectorRequest(lb_context* ctx, libblock::Backend* be, bool write,
                                     libblock::IoVec v, int64_t offset, libblock::ReqFlags flags,
                                     void* user_data) {
  int64_t len = static_cast<int64_t>(v.size());
  if (write) {
    absl::Status st = co_await be->Write(offset, len, v, flags);
    Complete(ctx, user_data, st);
    co_return;
  }
  absl::Status st = co_await be->Read(offset, len, v, flags);
  Complete(ctx, user_data, st);
}

int SubmitVector(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
                 uint32_t flags, void* user_data, bool write) {
  if (!ValidBackend(be)) return BadHandle();
  if (flags & ~(write ? LB_REQ_FUA | LB_REQ_COMPRESSED : 0u)) return UnknownFlags();
  libblock::IoVec v;
  uint64_t total = 0;
  if (int r = MakeVector(iov, iovcnt, &v, &total)) return r;
  if (int r = RangeCheck(offset, total)) return r;
  lb_context* ctx = be->ctx;
  if (int r = Accept(ctx)) return r;
  {
    libblock::internal::CurrentLoopScope scope(ctx->loop.get());
    VectorRequest(ctx, be->be.get(), write, std::move(v), static_cast<int64_t>(offset),
                  ToReqFlags(flags), user_data);
  }
  ctx->loop->PrepareForPoll();
  return 0;
}

int SyncVector(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
               uint32_t flags, bool write) {
  if (!ValidBackend(be)) return BadHandle();
  if (flags & ~(write ? LB_REQ_FUA | LB_REQ_COMPRESSED : 0u)) return UnknownFlags();
  libblock::IoVec v;
  uint64_t total = 0;
  if (int r = MakeVector(iov, iovcnt, &v, &total)) return r;
  if (int r = RangeCheck(offset, total)) return r;
  int64_t off = static_cast<int64_t>(offset), len = static_cast<int64_t>(total);
  absl::Status st = write ? RunSync(be->ctx, be->be->Write(off, len, v, ToReqFlags(flags)))
                          : RunSync(be->ctx, be->be->Read(off, len, v, 0));
  return Check(st);
}

// The node that holds an extent's data (the one qemu-img map names), or null.
const libblock::Node* DataNode(const libblock::BlockStatus& st) { return st.file_node(); }

// Static storage for the type and choices strings of option descriptions.
const char* TypeName(libblock::OptionType t) {
  switch (t) {
    case libblock::OptionType::kString: return "string";
    case libblock::OptionType::kBool: return "bool";
    case libblock::OptionType::kInt: return "number";
    case libblock::OptionType::kSize: return "size";
    case libblock::OptionType::kEnum: return "enum";
  }
  return "string";
}

const char* ChoicesText(const libblock::OptionSpec& spec) {
  if (spec.choices.empty()) return nullptr;
  static std::mutex mu;
  static std::map<const void*, std::string>* texts = new std::map<const void*, std::string>();
  std::lock_guard<std::mutex> lock(mu);
  std::string& t = (*texts)[spec.choices.data()];
  if (t.empty()) {
    for (std::string_view c : spec.choices) {
      if (!t.empty()) t += "|";
      t.append(c.data(), c.size());
    }
  }
  return t.c_str();
}

// Milliseconds for EventLoop::RunOnce from a C ABI timeout (< 0: no limit), rounded up.
int WaitMs(int64_t timeout_ns) {
  if (timeout_ns < 0) return -1;
  return static_cast<int>(std::min<int64_t>(timeout_ns / 1000000 + (timeout_ns % 1000000 != 0),
                                            1 << 30));
}

// lb_reap and lb_reap_events: runs the loop and hands queued events to `take` (which says
// whether it took one: lb_reap leaves kinds it cannot express), at most `max`, waiting for
// `min` while requests are in flight that could still complete.
template <typename Take>
int ReapEvents(lb_context* ctx, unsigned min, unsigned max, int64_t timeout_ns, Take take) {
  libblock::EventLoop& loop = *ctx->loop;
  ctx->reaping = true;
  struct ReapingScope {
    lb_context* ctx;
    ~ReapingScope() { ctx->reaping = false; }
  } reaping_scope{ctx};
  int64_t deadline = timeout_ns < 0 ? -1 : libblock::EventLoop::NowNs() + timeout_ns;
  unsigned got = 0;
  auto collect = [&] {
    // From the front while events are taken (the common case: a pop, not an erase).
    while (got < max && !ctx->completions.empty() && take(got, ctx->completions.front())) {
      ++got;
      if (ctx->completions.front().kind == LB_EVENT_REQUEST) --ctx->inflight;
      ctx->completions.pop_front();
    }
    for (auto it = ctx->completions.begin(); got < max && it != ctx->completions.end();) {
      if (!take(got, *it)) {
        ++it;
        continue;
      }
      ++got;
      if (it->kind == LB_EVENT_REQUEST) --ctx->inflight;
      it = ctx->completions.erase(it);
    }
  };
  collect();
  bool ran = false;
  // Wait for `min`, as long as something is in flight that could still complete.
  while (got < min && ctx->inflight > 0) {
    int wait_ms = -1;
    if (deadline >= 0) {
      int64_t left = deadline - libblock::EventLoop::NowNs();
      if (left <= 0) break;
      wait_ms = WaitMs(left);
    }
    loop.RunOnce(true, wait_ms);
    ran = true;
    collect();
  }
  // Then whatever else is ready now, without waiting (a loop run above already took
  // everything that was ready when it woke; another pass would cost a syscall for nothing,
  // and so would one over an idle loop: requests that completed inline left only a kick,
  // which stays until the next run consumes it).
  if (got < max && !ran && !(got > 0 && loop.Idle())) {
    loop.RunOnce(false);
    collect();
  }
  loop.PrepareForPoll();
  if (!ctx->completions.empty()) loop.Kick();
  return static_cast<int>(got);
}

// The size lb_create_ex creates with: `size` when set, else the options' "size", else the
// backing file's (qemu-img create's order). With a backing file, the rules of qemu-img
// 6.1 and later: the options are validated first (with a placeholder size), so that what the
// format refuses fails before any backing file opens; then, unless `unsafe` (-u), the
// backing file is opened (with "backing_fmt" as its driver, else probed) and a backing file
// without a format is refused naming the probed one; with `unsafe`, the format is still
// required and nothing is opened.
absl::StatusOr<uint64_t> CreateSize(lb_context* ctx, const char* filename, const char* format,
                                    const libblock::Options& opts, int64_t size, bool unsafe) {
  std::optional<uint64_t> given;
  if (std::optional<std::string> text = opts.GetString("size")) {
    // As Graph::Create will read it; a bad one fails there, with its message.
    absl::StatusOr<uint64_t> parsed = libblock::ParseSize(*text);
    given = parsed.ok() ? *parsed : 0;
  } else if (size >= 0) {
    given = static_cast<uint64_t>(size);
  }
  std::optional<std::string> backing = opts.GetString("backing_file");
  if (!backing && given) return *given;
  libblock::Options check = opts;
  check.Set("size", uint64_t{0});
  LB_RETURN_IF_ERROR(ctx->graph->Create(filename, format, std::move(check), /*validate_only=*/true));
  if (!backing) {
    return ErrnoError(EINVAL, absl::StrFormat("%s: Image creation needs a size parameter", filename));
  }
  std::optional<std::string> backing_fmt = opts.GetString("backing_fmt");
  if (unsafe) {
    if (!backing_fmt) {
      return ErrnoError(EINVAL, absl::StrFormat("%s: Backing file specified without backing "
                                                "format", filename));
    }
    if (!given) {
      return ErrnoError(EINVAL, absl::StrFormat("%s: Image creation needs a size parameter", filename));
    }
    return *given;
  }
  libblock::Options bopts;
  if (backing_fmt) bopts.Set("driver", *backing_fmt);
  bopts.Set("read-only", true);
  bopts.Set("force-share", true);
  // The name as the new image will refer to it (relative to its directory), as the core
  // resolves it when the image opens.
  absl::StatusOr<std::string> path = libblock::ResolveBackingName(filename, *backing);
  if (!path.ok()) return libblock::Prepend(path.status(), absl::StrFormat("%s: ", filename));
  absl::StatusOr<libblock::Node*> node = ctx->graph->Open(*path, std::move(bopts), {});
  if (!node.ok()) {
    return ErrnoError(libblock::StatusErrno(node.status()),
                      absl::StrFormat("%s: %s\nCould not open backing image.", filename,
                                      node.status().message()));
  }
  int64_t length = (*node)->size();
  std::string probed((*node)->driver().name);
  ctx->graph->Unref(*node);
  if (!backing_fmt) {
    return ErrnoError(EINVAL, absl::StrFormat("%s: Backing file specified without backing "
                                              "format\nDetected format of %s.", filename, probed));
  }
  if (given) return *given;
  if (length < 0) {
    return ErrnoError(static_cast<int>(-length),
                      absl::StrFormat("%s: Could not get size of '%s'", filename, *backing));
  }
  return static_cast<uint64_t>(length);
}

}  // namespace

extern "C" {

LB_API const char* lb_version(void) { return LIBBLOCK_VERSION; }

LB_API const char* lb_get_error(void) { return last_error; }

LB_API int lb_get_errno(void) { return last_errno; }

LB_API void lb_free(void* ptr) { std::free(ptr); }

LB_API int lb_context_new(uint32_t flags, lb_context** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!out) return NullArgument("lb_context_new");
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
    for (lb_node* n : std::set<lb_node*>(ctx->nodes)) {
      ctx->graph->Unref(n->node);
      delete n;
    }
    ctx->nodes.clear();
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

LB_API int lb_context_add_object(lb_context* ctx, const char* spec) {
  return Guard([&]() -> int {
    if (!ctx || !spec) return NullArgument("lb_context_add_object");
    return Check(ctx->graph->objects().Add(spec));
  });
}

// ---- options -----------------------------------------------------------------------------------

LB_API int lb_options_new(lb_options** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!out) return NullArgument("lb_options_new");
    *out = new lb_options();
    return 0;
  });
}

LB_API void lb_options_free(lb_options* opts) { delete opts; }

LB_API int lb_options_set(lb_options* opts, const char* key, const char* value) {
  return Guard([&]() -> int {
    if (!opts || !key || !value) return NullArgument("lb_options_set");
    if (!*key) return Fail(EINVAL, "an option key cannot be empty");
    opts->opts.Set(key, std::string(value));
    opts->text.clear();
    return 0;
  });
}

LB_API int lb_options_parse(lb_options* opts, const char* text) {
  return Guard([&]() -> int {
    if (!opts || !text) return NullArgument("lb_options_parse");
    auto parsed = ParseOptions(text);
    if (!parsed.ok()) return Fail(parsed.status());
    for (const auto& [key, value] : *parsed) opts->opts.Set(key, value);
    opts->text.clear();
    return 0;
  });
}

LB_API const char* lb_options_get(const lb_options* opts, const char* key) {
  if (!opts || !key) return nullptr;
  std::optional<std::string> v = opts->opts.GetString(key);
  if (!v) return nullptr;
  auto& text = const_cast<lb_options*>(opts)->text;
  auto [it, inserted] = text.emplace(key, *v);
  return it->second.c_str();
}

LB_API char* lb_options_to_string(const lb_options* opts) {
  if (!opts) {
    Fail(EINVAL, "lb_options_to_string: NULL argument");
    return nullptr;
  }
  try {
    return DupString(opts->opts.ToString());
  } catch (const std::bad_alloc&) {
    Fail(ENOMEM, "out of memory");
    return nullptr;
  }
}

// ---- drivers -----------------------------------------------------------------------------------

LB_API int lb_create_options(lb_context* ctx, const char* format, const char* filename,
                             lb_option_desc* out, size_t max) {
  return Guard([&]() -> int {
    if (!ctx || !format || (max > 0 && !out)) return NullArgument("lb_create_options");
    auto specs = ctx->graph->CreateOptions(format, filename ? filename : "");
    if (!specs.ok()) return Fail(specs.status());
    size_t n = std::min(specs->size(), max);
    if (n == 0) return static_cast<int>(specs->size());
    // The caller's element size is out[0].struct_size: it is the array's stride, and only
    // that many bytes of each element are the caller's to write (an older caller's struct is
    // a prefix of ours; a newer one's has fields we do not know).
    size_t stride = out[0].struct_size;
    if (stride < offsetof(lb_option_desc, help) + sizeof(const char*)) {
      return Fail(EINVAL, "lb_option_desc struct_size is too small");
    }
    auto* bytes = reinterpret_cast<unsigned char*>(out);
    for (size_t i = 0; i < n; ++i) {
      const libblock::OptionSpec& s = (*specs)[i];
      lb_option_desc d = {};
      d.struct_size = stride;
      // The schema's strings are NUL-terminated literals.
      d.name = s.name.data();
      d.type = TypeName(s.type);
      d.default_value = s.default_value.empty() ? nullptr : s.default_value.data();
      d.help = s.help.data();
      d.choices = ChoicesText(s);
      std::memcpy(bytes + i * stride, &d, std::min(stride, sizeof(d)));
    }
    return static_cast<int>(specs->size());
  });
}

LB_API char* lb_driver_list(lb_context* ctx, uint32_t flags) {
  if (!ctx) {
    Fail(EINVAL, "lb_driver_list: NULL argument");
    return nullptr;
  }
  if (flags & ~(LB_DRIVER_FORMATS | LB_DRIVER_PROTOCOLS | LB_DRIVER_FILTERS |
                LB_DRIVER_COMPRESSED)) {
    UnknownFlags();
    return nullptr;
  }
  std::vector<std::string> names;
  for (const libblock::Driver* d : ctx->graph->registry().drivers()) {
    if (!d->instantiate) continue;
    if ((flags & LB_DRIVER_COMPRESSED) && !d->compresses) continue;
    bool want = (d->kind == libblock::DriverKind::kFormat && (flags & LB_DRIVER_FORMATS)) ||
                (d->kind == libblock::DriverKind::kProtocol && (flags & LB_DRIVER_PROTOCOLS)) ||
                (d->kind == libblock::DriverKind::kFilter && (flags & LB_DRIVER_FILTERS));
    if (want) names.emplace_back(d->name);
  }
  try {
    return DupString(absl::StrJoin(names, " "));
  } catch (const std::bad_alloc&) {
    Fail(ENOMEM, "out of memory");
    return nullptr;
  }
}

// ---- images ------------------------------------------------------------------------------------

LB_API int lb_create(lb_context* ctx, const char* filename, const char* format,
                     const char* options, uint64_t size, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ctx || !filename || !format) return NullArgument("lb_create");
    if (flags & ~LB_CREATE_VALIDATE_ONLY) return UnknownFlags();
    auto opts = ParseOptions(options);
    if (!opts.ok()) return Fail(opts.status());
    opts->SetDefault("size", static_cast<uint64_t>(size));
    return Check(ctx->graph->Create(filename, format, std::move(*opts),
                                    flags & LB_CREATE_VALIDATE_ONLY));
  });
}

namespace {

// LB_OPEN_SNAPSHOT: the image read-only under a temporary qcow2 overlay (QEMU's
// bdrv_append_temp_snapshot: created with the image's size and no backing file in its
// header, opened with the image as its backing node, cache=unsafe).
int OpenSnapshotMode(lb_context* ctx, OpenPlan& plan, lb_backend** out) {
  plan.options.Set("read-only", true);
  auto base = OpenNode(ctx, plan);
  if (!base.ok()) return Fail(base.status());
  libblock::Node* image = *base;
  const char* dir = getenv("TMPDIR");
  std::string path = std::string(dir && *dir ? dir : "/tmp") + "/vl.XXXXXX";
  int fd = mkstemp(path.data());
  if (fd < 0) {
    int err = errno;
    ctx->graph->Unref(image);
    return Fail(err, absl::StrFormat("Could not get temporary filename: %s", strerror(err)));
  }
  close(fd);
  libblock::Options create;
  create.Set("size", static_cast<uint64_t>(image->size()));
  absl::Status made = ctx->graph->Create(path, "qcow2", std::move(create));
  if (!made.ok()) {
    unlink(path.c_str());
    ctx->graph->Unref(image);
    return Fail(libblock::Prepend(made, "Could not create temporary overlay: "));
  }
  libblock::Options o;
  o.Set("driver", std::string("qcow2"));
  o.Set("file.driver", std::string("file"));
  o.Set("file.filename", path);
  o.Set("backing", image->name());
  o.Set("cache.direct", false);
  o.Set("cache.no-flush", true);
  libblock::OpenParams params = plan.params;
  auto overlay = ctx->graph->Open("", std::move(o), params);
  ctx->graph->Unref(image);  // the overlay's backing edge holds it now (or it closes)
  if (!overlay.ok()) {
    unlink(path.c_str());
    return Fail(overlay.status());
  }
  auto be = libblock::Backend::Attach(*ctx->graph, **overlay, plan.backend);
  ctx->graph->Unref(*overlay);
  if (!be.ok()) {
    unlink(path.c_str());
    return Fail(be.status());
  }
  int r = NewBackendHandle(ctx, std::move(*be), out);
  (*out)->temp_overlay = path;
  return r;
}

}  // namespace

LB_API int lb_open_ex(lb_context* ctx, const lb_open_args* args, lb_backend** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!ctx || !out) return NullArgument("lb_open_ex");
    auto plan = PlanOpen(args);
    if (!plan.ok()) return Fail(plan.status());
    if (args->flags & LB_OPEN_SNAPSHOT) return OpenSnapshotMode(ctx, *plan, out);
    auto node = OpenNode(ctx, *plan);
    if (!node.ok()) return Fail(node.status());
    auto be = libblock::Backend::Attach(*ctx->graph, **node, plan->backend);
    ctx->graph->Unref(*node);  // the backend holds it now (or it closes)
    if (!be.ok()) return Fail(be.status());
    return NewBackendHandle(ctx, std::move(*be), out);
  });
}

LB_API int lb_open(lb_context* ctx, const char* filename, const char* options, uint32_t flags,
                   lb_backend** out) {
  lb_open_args args = LB_OPEN_ARGS_INIT;
  args.filename = filename;
  args.options = options;
  args.flags = flags;
  return lb_open_ex(ctx, &args, out);
}

LB_API int lb_node_open(lb_context* ctx, const lb_open_args* args, lb_node** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!ctx || !out) return NullArgument("lb_node_open");
    auto plan = PlanOpen(args);
    if (!plan.ok()) return Fail(plan.status());
    auto node = OpenNode(ctx, *plan);
    if (!node.ok()) return Fail(node.status());
    return NewNodeHandle(ctx, *node, out);  // the open's reference becomes the handle's
  });
}

LB_API void lb_node_close(lb_node* node) {
  if (!node) return;
  Guard([&]() -> int {
    node->ctx->nodes.erase(node);
    node->ctx->graph->Unref(node->node);
    return 0;
  });
  delete node;
}

LB_API int lb_backend_get_node(lb_backend* be, lb_node** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!out) return NullArgument("lb_backend_get_node");
    if (!ValidBackend(be)) return BadHandle();
    libblock::Node* n = be->be->root();
    be->ctx->graph->Ref(n);
    return NewNodeHandle(be->ctx, n, out);
  });
}

LB_API int lb_backend_new(lb_node* node, uint32_t flags, lb_backend** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!node || !out) return NullArgument("lb_backend_new");
    constexpr uint32_t kAllowed = kBackendPermFlags | LB_OPEN_CACHE_WRITETHROUGH;
    if (flags & ~kAllowed) return UnknownFlags();
    libblock::BackendOptions bo;
    bo.read_only = !(flags & LB_OPEN_RDWR);
    bo.share_rw = flags & LB_OPEN_SHARE_RW;
    bo.share_all = flags & LB_OPEN_SHARE_ALL;
    bo.resize = flags & LB_OPEN_RESIZE;
    bo.writethrough = (flags & LB_OPEN_CACHE_MASK) == LB_OPEN_CACHE_WRITETHROUGH;
    auto be = libblock::Backend::Attach(*node->ctx->graph, *node->node, bo);
    if (!be.ok()) return Fail(be.status());
    return NewBackendHandle(node->ctx, std::move(*be), out);
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

LB_API int64_t lb_get_length(lb_backend* be) { return lb_get_size(be); }

LB_API int lb_reopen(lb_backend* be, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags & ~kBackendPermFlags) return UnknownFlags();
    return Check(be->be->Reconfigure(!(flags & LB_OPEN_RDWR), flags & LB_OPEN_SHARE_RW,
                                     flags & LB_OPEN_RESIZE, flags & LB_OPEN_SHARE_ALL));
  });
}

LB_API int lb_reopen_options(lb_backend* be, const char* options, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    constexpr uint32_t kAllowed = kBackendPermFlags | LB_REOPEN_CACHE | LB_OPEN_CACHE_MASK;
    if (flags & ~kAllowed) return UnknownFlags();
    if ((flags & LB_OPEN_CACHE_MASK) && !(flags & LB_REOPEN_CACHE)) {
      return Fail(EINVAL, "a cache mode in flags needs LB_REOPEN_CACHE");
    }
    auto changes = ParseOptions(options);
    if (!changes.ok()) return Fail(changes.status());
    std::optional<bool> writethrough;
    if (flags & LB_REOPEN_CACHE) {
      auto mode = CacheModeName(flags);
      if (!mode.ok()) return Fail(mode.status());
      bool wt = false;
      if (absl::Status st = libblock::ApplyCacheMode(*mode, *changes, &wt); !st.ok()) return Fail(st);
      writethrough = wt;
    }
    return Check(be->be->ReopenOptions(std::move(*changes), flags & LB_OPEN_RDWR,
                                       flags & LB_OPEN_SHARE_RW, flags & LB_OPEN_RESIZE,
                                       flags & LB_OPEN_SHARE_ALL, writethrough));
  });
}

// ---- information -------------------------------------------------------------------------------

LB_API int lb_node_get_info(lb_node* node, uint32_t flags, lb_image_info** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!node || !out) return NullArgument("lb_node_get_info");
    if (flags & ~LB_INFO_BACKING_CHAIN) return UnknownFlags();
    auto j = libblock::ImageInfoJson(*node->node, flags & LB_INFO_BACKING_CHAIN);
    if (!j.ok()) return Fail(j.status());
    std::vector<nlohmann::ordered_json> images;
    if (j->is_array()) {
      for (auto& e : *j) images.push_back(e);
    } else {
      images.push_back(*j);
    }
    auto storage = std::make_unique<InfoStorage>();
    for (const auto& image : images) {
      auto* h = new InfoHolder{FromJson(*storage, image), nullptr};
      storage->holders.push_back(h);
    }
    for (size_t i = 0; i + 1 < storage->holders.size(); ++i) {
      storage->holders[i]->info.backing = &storage->holders[i + 1]->info;
    }
    InfoHolder* head = storage->holders.front();
    head->storage = storage.release();
    *out = &head->info;
    return 0;
  });
}

LB_API int lb_node_has_zero_init(lb_node* node) {
  return Guard([&]() -> int {
    if (!node) return NullArgument("lb_node_has_zero_init");
    return libblock::HasZeroInit(*node->node) ? 1 : 0;
  });
}

LB_API void lb_image_info_free(lb_image_info* info) {
  if (!info) return;
  InfoHolder* head = reinterpret_cast<InfoHolder*>(info);
  delete head->storage;  // deletes every holder of the chain, the head included
}

// ---- I/O ---------------------------------------------------------------------------------------

LB_API int lb_pread(lb_backend* be, void* buf, size_t count, uint64_t offset, uint32_t flags) {
  struct iovec v = {buf, count};
  return Guard([&] { return SyncVector(be, &v, 1, offset, flags, false); });
}

LB_API int lb_pwrite(lb_backend* be, const void* buf, size_t count, uint64_t offset,
                     uint32_t flags) {
  struct iovec v = {const_cast<void*>(buf), count};
  return Guard([&] { return SyncVector(be, &v, 1, offset, flags, true); });
}

LB_API int lb_preadv(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
                     uint32_t flags) {
  return Guard([&] { return SyncVector(be, iov, iovcnt, offset, flags, false); });
}

LB_API int lb_pwritev(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
                      uint32_t flags) {
  return Guard([&] { return SyncVector(be, iov, iovcnt, offset, flags, true); });
}

LB_API int lb_pwrite_zeroes(lb_backend* be, uint64_t offset, uint64_t count, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags & ~kReqFlagsAll) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    return Check(RunSync(be->ctx, be->be->WriteZeroes(static_cast<int64_t>(offset),
                                                        static_cast<int64_t>(count),
                                                        ToReqFlags(flags))));
  });
}

LB_API int lb_discard(lb_backend* be, uint64_t offset, uint64_t count, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    return Check(RunSync(be->ctx, be->be->Discard(static_cast<int64_t>(offset),
                                                    static_cast<int64_t>(count))));
  });
}

LB_API int lb_flush(lb_backend* be, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    return Check(RunSync(be->ctx, be->be->Flush()));
  });
}

LB_API int lb_truncate(lb_backend* be, uint64_t size, const char* prealloc, uint32_t flags) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    if (size > static_cast<uint64_t>(libblock::kMaxLength)) return Fail(EFBIG, "size too large");
    auto mode = libblock::ParsePreallocMode(prealloc ? prealloc : "off");
    if (!mode.ok()) return Fail(mode.status());
    return Check(RunSync(be->ctx, be->be->Truncate(static_cast<int64_t>(size), true, *mode)));
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
    auto st = RunSync(be->ctx, be->be->GetBlockStatus(static_cast<int64_t>(offset),
                                                        static_cast<int64_t>(count)));
    if (!st.ok()) return Fail(st.status());
    lb_extent full = LB_EXTENT_INIT;
    full.length = static_cast<uint64_t>(st->bytes);
    full.flags = st->flags & (LB_STATUS_DATA | LB_STATUS_ZERO | LB_STATUS_ALLOCATED | LB_STATUS_EOF);
    full.has_host_offset = (st->flags & libblock::kStatusOffsetValid) != 0;
    full.host_offset = full.has_host_offset ? static_cast<uint64_t>(st->map) : 0;
    full.depth = static_cast<uint32_t>(st->depth);
    if (const libblock::Node* holder = DataNode(*st)) {
      be->extent_filename = libblock::DisplayFilename(*holder);
      full.filename = be->extent_filename.c_str();
      const std::string& name = holder->name();
      size_t n = std::min(name.size(), sizeof(full.node_name) - 1);  // names are < 32 bytes
      std::memcpy(full.node_name, name.data(), n);
      full.node_name[n] = '\0';
    }
    // Callers built against an older, shorter lb_extent get only the fields they know.
    size_t keep = out->struct_size;
    std::memcpy(out, &full, std::min(keep, sizeof(full)));
    out->struct_size = keep;
    return 0;
  });
}

// ---- asynchronous I/O --------------------------------------------------------------------------

LB_API int lb_aio_pread(lb_backend* be, void* buf, size_t count, uint64_t offset,
                        uint32_t flags, void* user_data) {
  struct iovec v = {buf, count};
  return Guard([&] { return SubmitVector(be, &v, 1, offset, flags, user_data, false); });
}

LB_API int lb_aio_pwrite(lb_backend* be, const void* buf, size_t count, uint64_t offset,
                         uint32_t flags, void* user_data) {
  struct iovec v = {const_cast<void*>(buf), count};
  return Guard([&] { return SubmitVector(be, &v, 1, offset, flags, user_data, true); });
}

LB_API int lb_aio_preadv(lb_backend* be, const struct iovec* iov, int iovcnt, uint64_t offset,
                         uint32_t flags, void* user_data) {
  return Guard([&] { return SubmitVector(be, iov, iovcnt, offset, flags, user_data, false); });
}

LB_API int lb_aio_pwritev(lb_backend* be, const struct iovec* iov, int iovcnt,
                          uint64_t offset, uint32_t flags, void* user_data) {
  return Guard([&] { return SubmitVector(be, iov, iovcnt, offset, flags, user_data, true); });
}

LB_API int lb_aio_pwrite_zeroes(lb_backend* be, uint64_t offset, uint64_t count,
                                uint32_t flags, void* user_data) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags & ~kReqFlagsAll) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    return Submit(be, be->be->WriteZeroes(static_cast<int64_t>(offset), static_cast<int64_t>(count),
                                          ToReqFlags(flags)),
                  user_data);
  });
}

LB_API int lb_aio_discard(lb_backend* be, uint64_t offset, uint64_t count, uint32_t flags,
                          void* user_data) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    if (int r = RangeCheck(offset, count)) return r;
    return Submit(be, be->be->Discard(static_cast<int64_t>(offset), static_cast<int64_t>(count)),
                  user_data);
  });
}

LB_API int lb_aio_flush(lb_backend* be, uint32_t flags, void* user_data) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags) return UnknownFlags();
    return Submit(be, be->be->Flush(), user_data);
  });
}

LB_API int lb_context_set_max_inflight(lb_context* ctx, unsigned max) {
  if (!ctx) return NullArgument("lb_context_set_max_inflight");
  if (max == 0) return Fail(EINVAL, "the maximum of requests in flight must be at least 1");
  ctx->max_inflight = max;
  return 0;
}

LB_API int lb_context_set_cpu_workers(lb_context* ctx, unsigned n) {
  if (!ctx) return NullArgument("lb_context_set_cpu_workers");
  if (n > 1024) return Fail(EINVAL, "at most 1024 CPU worker threads");
  return Guard([&]() -> int {
    ctx->loop->SetCpuWorkers(n);
    return static_cast<int>(ctx->loop->cpu_workers());
  });
}

LB_API int lb_context_get_inflight(lb_context* ctx) {
  if (!ctx) return NullArgument("lb_context_get_inflight");
  return static_cast<int>(ctx->inflight);
}

LB_API int lb_get_fd(lb_context* ctx) {
  if (!ctx) return NullArgument("lb_get_fd");
  return ctx->loop->fd();
}

LB_API int lb_reap(lb_context* ctx, unsigned min, unsigned max, int64_t timeout_ns,
                   lb_completion* out) {
  return Guard([&]() -> int {
    if (!ctx || (max > 0 && !out)) return NullArgument("lb_reap");
    if (min > max) return Fail(EINVAL, "lb_reap: min is larger than max");
    // Request completions only: events of other kinds stay queued for lb_reap_events.
    return ReapEvents(ctx, min, max, timeout_ns, [out](unsigned i, const lb_context::Event& e) {
      if (e.kind != LB_EVENT_REQUEST) return false;
      out[i] = lb_completion{e.user_data, static_cast<int>(e.result)};
      return true;
    });
  });
}

// ---- since 0.2 ---------------------------------------------------------------------------------

LB_API int lb_reap_events(lb_context* ctx, unsigned min, unsigned max, int64_t timeout_ns,
                          lb_event* out) {
  return Guard([&]() -> int {
    if (!ctx || (max > 0 && !out)) return NullArgument("lb_reap_events");
    if (min > max) return Fail(EINVAL, "lb_reap_events: min is larger than max");
    size_t stride = max > 0 ? out[0].struct_size : sizeof(lb_event);
    if (stride < offsetof(lb_event, result) + sizeof(int64_t)) {
      return Fail(EINVAL, "lb_event struct_size is too small");
    }
    auto* bytes = reinterpret_cast<unsigned char*>(out);
    return ReapEvents(ctx, min, max, timeout_ns,
                      [bytes, stride](unsigned i, const lb_context::Event& e) {
                        lb_event ev = LB_EVENT_INIT;
                        ev.struct_size = stride;
                        ev.kind = e.kind;
                        ev.user_data = e.user_data;
                        ev.result = e.result;
                        std::memcpy(bytes + i * stride, &ev, std::min(stride, sizeof(ev)));
                        return true;
                      });
  });
}

LB_API int lb_context_run(lb_context* ctx, int64_t timeout_ns) {
  return Guard([&]() -> int {
    if (!ctx) return NullArgument("lb_context_run");
    libblock::EventLoop& loop = *ctx->loop;
    ctx->reaping = true;  // completions need no kick each: the fd is kicked below if needed
    struct ReapingScope {
      lb_context* ctx;
      ~ReapingScope() { ctx->reaping = false; }
    } reaping_scope{ctx};
    loop.RunOnce(timeout_ns != 0, WaitMs(timeout_ns));
    loop.PrepareForPoll();
    if (!ctx->completions.empty()) loop.Kick();
    return static_cast<int>(std::min<size_t>(ctx->completions.size(), INT32_MAX));
  });
}

LB_API int lb_parse_size(const char* text, uint64_t* out) {
  return Guard([&]() -> int {
    if (!text || !out) return NullArgument("lb_parse_size");
    libblock::ParsedSize p = libblock::ParseQemuSize(text);
    if (p.error == ERANGE) {
      return Fail(ERANGE, absl::StrFormat("size '%s' is out of range (the limit is 2^64 - 1)", text));
    }
    if (p.error) {
      return Fail(EINVAL, absl::StrFormat("invalid size '%s': expected a number with an optional "
                                          "suffix k, M, G, T, P or E", text));
    }
    *out = p.value;
    return p.deprecated_hex_suffix ? 1 : 0;
  });
}

LB_API int lb_create_ex(lb_context* ctx, const lb_create_args* args, uint64_t* size_out) {
  return Guard([&]() -> int {
    if (!ctx || !args) return NullArgument("lb_create_ex");
    if (args->struct_size < offsetof(lb_create_args, flags) + sizeof(uint32_t)) {
      return Fail(EINVAL, "lb_create_args struct_size is too small");
    }
    if (!args->filename || !args->format) return NullArgument("lb_create_ex");
    if (args->flags & ~(LB_CREATE_VALIDATE_ONLY | LB_CREATE_UNSAFE_BACKING)) return UnknownFlags();
    if (args->size < 0 && args->size != LB_CREATE_SIZE_UNSET) {
      return Fail(EINVAL, "lb_create_args.size is negative and not LB_CREATE_SIZE_UNSET");
    }
    auto opts = ParseOptions(args->options);
    if (!opts.ok()) return Fail(opts.status());
    auto size = CreateSize(ctx, args->filename, args->format, *opts, args->size,
                           args->flags & LB_CREATE_UNSAFE_BACKING);
    if (!size.ok()) return Fail(size.status());
    opts->SetDefault("size", *size);
    if (int r = Check(ctx->graph->Create(args->filename, args->format, std::move(*opts),
                                         args->flags & LB_CREATE_VALIDATE_ONLY));
        r < 0) {
      return r;
    }
    if (size_out) *size_out = *size;
    return 0;
  });
}

}  // extern "C"

// ---- consistency checks -----------------------------------------------------------------------

LB_API int lb_check(lb_context* ctx, const lb_open_args* args, uint32_t flags,
                    lb_check_message_fn fn, void* user_data, lb_check_result* out) {
  return Guard([&]() -> int {
    if (!ctx || !args || !out) return NullArgument("lb_check");
    if (out->struct_size < sizeof(size_t)) {
      return Fail(EINVAL, "lb_check: lb_check_result's struct_size is too small");
    }
    if (flags & ~(LB_CHECK_FIX_LEAKS | LB_CHECK_FIX_ERRORS)) return UnknownFlags();
    auto plan = PlanOpen(args);
    if (!plan.ok()) return Fail(plan.status());
    libblock::Options opts = std::move(plan->options);
    std::optional<std::string> format = opts.GetString("driver");
    opts.Erase("driver");
    // The format is not opened: its file is, with the format's generic options (cache,
    // read-only, ...) inherited as a child would.
    libblock::Options file_opts = opts.ExtractPrefix("file");
    if (opts.Has("file")) return Fail(EINVAL, "lb_check: the file must be given by options, not by node name");
    file_opts.MergeMissing(opts);
    libblock::OpenParams params = plan->params;
    params.protocol_only = true;
    auto file = ctx->graph->Open(plan->filename, std::move(file_opts), params);
    if (!file.ok()) return Fail(file.status());
    libblock::BackendOptions bo = plan->backend;
    bo.read_only = !(args->flags & LB_OPEN_RDWR);
    bo.resize = !bo.read_only;
    auto be = libblock::Backend::Attach(*ctx->graph, **file, bo);
    ctx->graph->Unref(*file);
    if (!be.ok()) return Fail(be.status());
    if (flags && bo.read_only) {
      return Fail(EINVAL, "lb_check: repairing needs a read-write open (LB_OPEN_RDWR)");
    }
    std::string name = plan->filename.empty() ? (*file)->filename() : plan->filename;
    const libblock::Driver* driver = nullptr;
    if (format) {
      driver = ctx->graph->registry().Find(*format);
      if (!driver) return Fail(EINVAL, absl::StrFormat("Unknown driver '%s'", *format));
    } else {
      uint8_t sector[libblock::kProbeBufferSize] = {};
      int64_t n = std::min<int64_t>((*be)->size(), static_cast<int64_t>(sizeof sector));
      if (n > 0) {
        absl::Status st = (*be)->PreadSync(0, sector, n);
        if (!st.ok()) return Fail(st);
      }
      driver = ctx->graph->registry().ProbeFormat(sector, static_cast<size_t>(n), name).driver;
    }
    if (!driver || !driver->check) {
      return Fail(ENOTSUP, "This image format does not support checks");
    }
    auto result = ctx->loop->Run(driver->check(*(*be)->root_child(), flags, name));
    absl::Status closed = (*be)->Close();
    if (!result.ok()) return Fail(result.status());
    if (fn) {
      for (const std::string& line : result->messages) fn(line.c_str(), user_data);
    }
    lb_check_result r = LB_CHECK_RESULT_INIT;
    r.corruptions = result->corruptions;
    r.leaks = result->leaks;
    r.check_errors = result->check_errors;
    r.corruptions_fixed = result->corruptions_fixed;
    r.leaks_fixed = result->leaks_fixed;
    r.image_end_offset = result->image_end_offset;
    r.total_clusters = result->total_clusters;
    r.allocated_clusters = result->allocated_clusters;
    r.fragmented_clusters = result->fragmented_clusters;
    r.compressed_clusters = result->compressed_clusters;
    r.format = driver->name.data();
    r.failed_errno = result->failed_errno;  // registry names are NUL-terminated literals
    size_t n = std::min(out->struct_size, sizeof r);
    std::memcpy(reinterpret_cast<char*>(out) + sizeof(size_t),
                reinterpret_cast<const char*>(&r) + sizeof(size_t), n - sizeof(size_t));
    if (!closed.ok()) return Fail(closed);
    return 0;
  });
}

// ---- internal snapshots ------------------------------------------------------------------------

struct lb_snapshot_list {
  std::vector<libblock::SnapshotInfo> items;
};

namespace {

bool ValidNode(const lb_node* node) { return node && node->ctx && node->node; }

int NodeHandle() { return Fail(EINVAL, "invalid or closed node handle"); }

// NULL: not compared.
libblock::SnapshotKey Key(const char* s) {
  return s ? libblock::SnapshotKey(s) : std::nullopt;
}

}  // namespace

LB_API int lb_snapshot_list_get(lb_node* node, lb_snapshot_list** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!out) return NullArgument("lb_snapshot_list_get");
    if (!ValidNode(node)) return NodeHandle();
    auto list = RunSync(node->ctx, libblock::ListSnapshots(*node->node));
    if (!list.ok()) return Fail(list.status());
    auto holder = std::make_unique<lb_snapshot_list>();
    holder->items = std::move(*list);
    *out = holder.release();
    return 0;
  });
}

LB_API size_t lb_snapshot_list_count(const lb_snapshot_list* list) {
  return list ? list->items.size() : 0;
}

LB_API int lb_snapshot_list_entry(const lb_snapshot_list* list, size_t index, lb_snapshot* out) {
  return Guard([&]() -> int {
    if (!list || !out) return NullArgument("lb_snapshot_list_entry");
    if (out->struct_size < offsetof(lb_snapshot, icount) + sizeof(uint64_t)) {
      return Fail(EINVAL, "lb_snapshot_list_entry: lb_snapshot's struct_size is too small");
    }
    if (index >= list->items.size()) return Fail(EINVAL, "lb_snapshot_list_entry: no such entry");
    const libblock::SnapshotInfo& s = list->items[index];
    lb_snapshot full = LB_SNAPSHOT_INIT;
    full.id = s.id.c_str();
    full.name = s.name.c_str();
    full.vm_state_size = s.vm_state_size;
    full.date_sec = s.date_sec;
    full.date_nsec = s.date_nsec;
    full.vm_clock_nsec = s.vm_clock_nsec;
    full.icount = s.icount;
    size_t keep = out->struct_size;
    std::memcpy(out, &full, std::min(keep, sizeof(full)));
    out->struct_size = keep;
    return 0;
  });
}

LB_API void lb_snapshot_list_free(lb_snapshot_list* list) { delete list; }

LB_API int lb_snapshot_create(lb_node* node, const lb_snapshot* sn, char** id_out) {
  if (id_out) *id_out = nullptr;
  return Guard([&]() -> int {
    if (!sn) return NullArgument("lb_snapshot_create");
    if (!ValidNode(node)) return NodeHandle();
    if (sn->struct_size < offsetof(lb_snapshot, icount) + sizeof(uint64_t)) {
      return Fail(EINVAL, "lb_snapshot_create: lb_snapshot's struct_size is too small");
    }
    libblock::SnapshotInfo info;
    info.id = sn->id ? sn->id : "";
    info.name = sn->name ? sn->name : "";
    info.vm_state_size = sn->vm_state_size;
    info.date_sec = sn->date_sec;
    info.date_nsec = sn->date_nsec;
    if (info.date_sec == 0 && info.date_nsec == 0) {
      struct timespec now;
      clock_gettime(CLOCK_REALTIME, &now);
      info.date_sec = static_cast<uint32_t>(now.tv_sec);
      info.date_nsec = static_cast<uint32_t>(now.tv_nsec);
    }
    info.vm_clock_nsec = sn->vm_clock_nsec;
    info.icount = sn->icount;
    absl::Status st = RunSync(node->ctx, libblock::CreateSnapshot(*node->node, info));
    if (!st.ok()) return Fail(st);
    if (id_out) {
      *id_out = strdup(info.id.c_str());
      if (!*id_out) return Fail(ENOMEM, "out of memory");
    }
    return 0;
  });
}

LB_API int lb_snapshot_apply(lb_node* node, const char* id_or_name) {
  return Guard([&]() -> int {
    if (!id_or_name) return NullArgument("lb_snapshot_apply");
    if (!ValidNode(node)) return NodeHandle();
    return Check(RunSync(node->ctx, libblock::ApplySnapshot(*node->node, id_or_name)));
  });
}

LB_API int lb_snapshot_delete(lb_node* node, const char* id, const char* name) {
  return Guard([&]() -> int {
    if (!ValidNode(node)) return NodeHandle();
    if (!id && !name) return NullArgument("lb_snapshot_delete");
    return Check(RunSync(node->ctx, libblock::DeleteSnapshot(*node->node, Key(id), Key(name))));
  });
}

LB_API int lb_snapshot_load_tmp(lb_node* node, const char* id, const char* name) {
  return Guard([&]() -> int {
    if (!ValidNode(node)) return NodeHandle();
    return Check(RunSync(node->ctx, libblock::LoadSnapshotTemporarily(*node->node, Key(id),
                                                                       Key(name))));
  });
}

namespace {
int VmStateIo(lb_node* node, void* buf, size_t count, uint64_t pos, bool write) {
  if (!ValidNode(node)) return NodeHandle();
  if (!buf && count) return NullArgument(write ? "lb_vmstate_write" : "lb_vmstate_read");
  if (count > static_cast<uint64_t>(libblock::kMaxLength) ||
      pos > static_cast<uint64_t>(libblock::kMaxLength)) {
    return Fail(EINVAL, "VM-state range out of bounds");
  }
  auto task = write ? libblock::SaveVmState(*node->node, static_cast<int64_t>(pos), buf,
                                            static_cast<int64_t>(count))
                    : libblock::LoadVmState(*node->node, static_cast<int64_t>(pos), buf,
                                            static_cast<int64_t>(count));
  return Check(RunSync(node->ctx, std::move(task)));
}
}  // namespace

LB_API int lb_vmstate_write(lb_node* node, const void* buf, size_t count, uint64_t pos) {
  return Guard([&] { return VmStateIo(node, const_cast<void*>(buf), count, pos, true); });
}

LB_API int lb_vmstate_read(lb_node* node, void* buf, size_t count, uint64_t pos) {
  return Guard([&] { return VmStateIo(node, buf, count, pos, false); });
}

// ---- VM snapshots ------------------------------------------------------------------------------

namespace {

// The root nodes of `disks`, all of one context (returned in *ctx); a negative errno when
// the set is empty or a handle is invalid.
int VmDisks(lb_backend* const* disks, size_t count, lb_context** ctx,
            std::vector<libblock::Node*>* nodes) {
  if (!disks || count == 0) return Fail(EINVAL, "no disks given");
  *ctx = nullptr;
  for (size_t i = 0; i < count; ++i) {
    if (!ValidBackend(disks[i])) return BadHandle();
    if (*ctx && disks[i]->ctx != *ctx) return Fail(EINVAL, "the disks belong to different contexts");
    *ctx = disks[i]->ctx;
    nodes->push_back(disks[i]->be->root());
  }
  return 0;
}

}  // namespace

LB_API int lb_vm_snapshot_save(lb_backend* const* disks, size_t count, const char* name,
                               const void* vm_state, size_t vm_state_size,
                               uint64_t vm_clock_nsec) {
  return Guard([&]() -> int {
    if (!name || (!vm_state && vm_state_size)) return NullArgument("lb_vm_snapshot_save");
    lb_context* ctx = nullptr;
    std::vector<libblock::Node*> nodes;
    if (int r = VmDisks(disks, count, &ctx, &nodes)) return r;
    std::string blob(static_cast<const char*>(vm_state ? vm_state : ""), vm_state_size);
    return Check(RunSync(ctx, libblock::SaveVmSnapshot(nodes, name, blob, vm_clock_nsec)));
  });
}

LB_API int lb_vm_snapshot_load(lb_backend* const* disks, size_t count, const char* name,
                               void** vm_state, size_t* vm_state_size) {
  if (vm_state) *vm_state = nullptr;
  if (vm_state_size) *vm_state_size = 0;
  return Guard([&]() -> int {
    if (!name || (vm_state && !vm_state_size)) return NullArgument("lb_vm_snapshot_load");
    lb_context* ctx = nullptr;
    std::vector<libblock::Node*> nodes;
    if (int r = VmDisks(disks, count, &ctx, &nodes)) return r;
    auto blob = RunSync(ctx, libblock::LoadVmSnapshot(nodes, name, vm_state != nullptr));
    if (!blob.ok()) return Fail(blob.status());
    if (vm_state) {
      void* copy = std::malloc(blob->size() ? blob->size() : 1);
      if (!copy) return Fail(ENOMEM, "out of memory");
      std::memcpy(copy, blob->data(), blob->size());
      *vm_state = copy;
      *vm_state_size = blob->size();
    }
    return 0;
  });
}

LB_API int lb_vm_snapshot_delete(lb_backend* const* disks, size_t count, const char* name) {
  return Guard([&]() -> int {
    if (!name) return NullArgument("lb_vm_snapshot_delete");
    lb_context* ctx = nullptr;
    std::vector<libblock::Node*> nodes;
    if (int r = VmDisks(disks, count, &ctx, &nodes)) return r;
    return Check(RunSync(ctx, libblock::DeleteVmSnapshot(nodes, name)));
  });
}

LB_API int lb_vm_snapshot_list(lb_backend* const* disks, size_t count, lb_snapshot_list** out) {
  if (out) *out = nullptr;
  return Guard([&]() -> int {
    if (!out) return NullArgument("lb_vm_snapshot_list");
    lb_context* ctx = nullptr;
    std::vector<libblock::Node*> nodes;
    if (int r = VmDisks(disks, count, &ctx, &nodes)) return r;
    auto list = RunSync(ctx, libblock::ListVmSnapshots(nodes));
    if (!list.ok()) return Fail(list.status());
    auto holder = std::make_unique<lb_snapshot_list>();
    holder->items = std::move(*list);
    *out = holder.release();
    return 0;
  });
}

// ---- measure -----------------------------------------------------------------------------------

LB_API int lb_measure(lb_context* ctx, const char* format, const char* options, lb_backend* in,
                      uint64_t size, lb_measure_result* out) {
  return Guard([&]() -> int {
    if (!ctx || !format || !out) return NullArgument("lb_measure");
    if (out->struct_size < offsetof(lb_measure_result, fully_allocated) + sizeof(uint64_t)) {
      return Fail(EINVAL, "lb_measure: lb_measure_result's struct_size is too small");
    }
    if (in && (!ValidBackend(in) || in->ctx != ctx)) return BadHandle();
    if (size > static_cast<uint64_t>(libblock::kMaxLength)) return Fail(EFBIG, "size too large");
    auto opts = ParseOptions(options);
    if (!opts.ok()) return Fail(opts.status());
    auto r = RunSync(ctx, libblock::Measure(ctx->graph->registry(), format, std::move(*opts),
                                            in ? in->be.get() : nullptr,
                                            in ? std::nullopt : std::optional<uint64_t>(size)));
    if (!r.ok()) return Fail(r.status());
    lb_measure_result full = LB_MEASURE_RESULT_INIT;
    full.required = r->required;
    full.fully_allocated = r->fully_allocated;
    full.has_bitmaps = r->bitmaps.has_value();
    full.bitmaps = r->bitmaps.value_or(0);
    size_t keep = out->struct_size;
    std::memcpy(out, &full, std::min(keep, sizeof(full)));
    out->struct_size = keep;
    return 0;
  });
}

// ---- commit ------------------------------------------------------------------------------------

LB_API int lb_commit(lb_backend* top, const char* base, uint64_t rate_limit, uint32_t flags,
                     lb_progress_fn fn, void* user_data) {
  return Guard([&]() -> int {
    if (!ValidBackend(top)) return BadHandle();
    if (flags & ~LB_COMMIT_KEEP_TOP) return UnknownFlags();
    libblock::CommitOptions opts;
    opts.rate_limit = rate_limit;
    opts.keep_top = flags & LB_COMMIT_KEEP_TOP;
    if (base) {
      opts.base = libblock::FindBackingImage(*top->be->root(), base);
      if (!opts.base) {
        return Fail(ENOENT, absl::StrFormat("Did not find '%s' in the backing chain of '%s'", base,
                                            libblock::DisplayFilename(*top->be->root())));
      }
    }
    if (fn) opts.progress = [fn, user_data](uint64_t done, uint64_t total) { fn(done, total, user_data); };
    return Check(libblock::Commit(*top->be, opts));
  });
}

LB_API int lb_rebase(lb_backend* be, const char* backing_file, const char* backing_fmt,
                     const char* options, uint32_t flags, lb_progress_fn fn, void* user_data) {
  return Guard([&]() -> int {
    if (!ValidBackend(be)) return BadHandle();
    if (flags & ~LB_REBASE_UNSAFE) return UnknownFlags();
    auto opts = ParseOptions(options);
    if (!opts.ok()) return Fail(opts.status());
    libblock::RebaseOptions ro;
    ro.backing = backing_file ? backing_file : "";
    if (backing_fmt) ro.format = backing_fmt;
    ro.unsafe = flags & LB_REBASE_UNSAFE;
    ro.backing_options = std::move(*opts);
    if (fn) ro.progress = [fn, user_data](uint64_t done, uint64_t total) { fn(done, total, user_data); };
    return Check(libblock::Rebase(*be->be, ro));
  });
}
