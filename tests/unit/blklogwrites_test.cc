// The blklogwrites filter: what reaches the file is logged in order with its data in the
// dm-log-writes format (writes, write-zeroes as zero data, discards, flushes, FUA), the log
// sector size rules the alignment, log-append continues a log, the super block is rewritten
// every log-super-update-interval entries and on flush, and option errors carry QEMU's text.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "core/backend.h"
#include "filters/blklogwrites/log_format.h"
#include "test_support.h"

namespace libblock::blklogwrites {
namespace {

using testing::kKiB;
using testing::Message;
using testing::RandomBytes;
using testing::ReadFile;
using testing::WriteFile;

struct Fixture : testing::GraphEnv {
  std::string image = dir.File("d.raw"), log = dir.File("d.log");
  Fixture() {
    WriteFile(image, std::string(1 << 20, '\0'));
    WriteFile(log, "");
  }
  std::string Opts(const std::string& extra = "") const {
    return "driver=blklogwrites,file.driver=file,file.filename=" + image +
           ",log.driver=file,log.filename=" + log + (extra.empty() ? "" : "," + extra);
  }
  ParsedLog Parse() {
    std::string bytes = ReadFile(log);
    absl::StatusOr<ParsedLog> p = ParseLog(
        std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), log);
    INFO(p.status().ToString());
    REQUIRE(p.ok());
    return *p;
  }
  std::string LogData(const Record& r) {
    return ReadFile(log).substr(static_cast<size_t>(r.log_offset), static_cast<size_t>(r.bytes));
  }
};

TEST_CASE("writes, zeroes, discards and flushes are logged in order with their data",
          "[blklogwrites]") {
  Fixture f;
  // discard=unmap: the default (ignore) drops discards before they reach the filter.
  auto be = f.MustOpenBackend(f.Opts("discard=unmap"));
  std::string a = RandomBytes(4096, 1), b = RandomBytes(1024, 2);
  f.Write(*be, 0, a);
  REQUIRE(f.Zero(*be, 8192, 4096).ok());
  REQUIRE(f.Discard(*be, 16384, 4096).ok());
  REQUIRE(f.Flush(*be).ok());
  f.Write(*be, 512, b);
  REQUIRE(be->PwriteSync(102400, a.data(), 512, kReqFua).ok());
  REQUIRE(f.Flush(*be).ok());
  REQUIRE(be->Close().ok());

  ParsedLog p = f.Parse();
  REQUIRE(p.super.sector_size == 512);
  for (const auto& rec : p.records) UNSCOPED_INFO(rec.offset << " " << rec.bytes << " " << rec.entry.flags);
  REQUIRE(p.records.size() == 7);
  const auto& r = p.records;
  CHECK(r[0].offset == 0);
  CHECK(r[0].bytes == 4096);
  CHECK(r[0].entry.flags == 0);
  CHECK(f.LogData(r[0]) == a);
  CHECK(r[1].offset == 8192);
  CHECK(r[1].bytes == 4096);
  CHECK(f.LogData(r[1]) == std::string(4096, '\0'));
  CHECK(r[2].offset == 16384);
  CHECK(r[2].entry.flags == kFlagDiscard);
  CHECK(r[2].bytes == 4096);
  CHECK(r[3].entry.flags == kFlagFlush);
  CHECK(r[3].bytes == 0);
  CHECK(r[4].offset == 512);
  CHECK(f.LogData(r[4]) == b);
  CHECK(r[5].offset == 102400);
  CHECK(r[5].entry.flags == kFlagFua);
  CHECK(f.LogData(r[5]) == a.substr(0, 512));
  CHECK(r[6].entry.flags == kFlagFlush);
  // Entry placement: each entry's sector, then its data (none for discards and flushes).
  CHECK(r[0].log_offset == 2 * 512);
  CHECK(r[1].log_offset == 11 * 512);
  CHECK(r[2].log_offset == 20 * 512);
  CHECK(r[3].log_offset == 21 * 512);
  CHECK(r[4].log_offset == 22 * 512);
  // The file got everything.
  std::string image = ReadFile(f.image);
  CHECK(image.substr(0, 512) == a.substr(0, 512));
  CHECK(image.substr(512, 1024) == b);
  CHECK(image.substr(102400, 512) == a.substr(0, 512));
}

TEST_CASE("the log sector size is the request alignment", "[blklogwrites]") {
  Fixture f;
  auto be = f.MustOpenBackend(f.Opts("log-sector-size=4096"));
  CHECK(be->root()->limits().request_alignment == 4096);
  std::string a = RandomBytes(100, 3);
  f.Write(*be, 5000, a);
  REQUIRE(f.Flush(*be).ok());
  REQUIRE(be->Close().ok());
  ParsedLog p = f.Parse();
  REQUIRE(p.super.sector_size == 4096);
  REQUIRE(p.records.size() == 2);
  CHECK(p.records[0].offset == 4096);
  CHECK(p.records[0].bytes == 4096);
  CHECK(f.LogData(p.records[0]).substr(904, 100) == a);
  CHECK(p.records[0].log_offset == 2 * 4096);
}

TEST_CASE("log-append continues an existing log", "[blklogwrites]") {
  Fixture f;
  {
    auto be = f.MustOpenBackend(f.Opts("log-sector-size=1024"));
    f.Write(*be, 0, std::string(2048, 'a'));
    REQUIRE(f.Flush(*be).ok());
    REQUIRE(be->Close().ok());
  }
  {
    auto be = f.MustOpenBackend(f.Opts("log-append=on"));
    CHECK(be->root()->limits().request_alignment == 1024);
    f.Write(*be, 4096, std::string(1024, 'b'));
    REQUIRE(f.Flush(*be).ok());
    REQUIRE(be->Close().ok());
  }
  ParsedLog p = f.Parse();
  REQUIRE(p.records.size() == 4);
  CHECK(p.records[2].offset == 4096);
  CHECK(f.LogData(p.records[2]) == std::string(1024, 'b'));
  CHECK(p.records[3].entry.flags == kFlagFlush);

  SECTION("an empty log starts afresh with 512-byte sectors") {
    WriteFile(f.log, "");
    auto be = f.MustOpenBackend(f.Opts("log-append=on"));
    CHECK(be->root()->limits().request_alignment == 512);
  }
}

TEST_CASE("the super block is rewritten every interval and on flush", "[blklogwrites]") {
  Fixture f;
  auto be = f.MustOpenBackend(f.Opts("log-super-update-interval=2"));
  auto super_entries = [&] {
    std::string bytes = ReadFile(f.log);
    REQUIRE(bytes.size() >= kSuperBytes);
    return DecodeSuper(reinterpret_cast<const uint8_t*>(bytes.data())).nr_entries;
  };
  f.Write(*be, 0, std::string(512, 'x'));
  std::string before = ReadFile(f.log);
  // Nothing rewrote sector 0 yet: it is still unwritten (the log starts at sector 1).
  CHECK(before.substr(0, 8) == std::string(8, '\0'));
  f.Write(*be, 512, std::string(512, 'y'));
  CHECK(super_entries() == 2);
  f.Write(*be, 1024, std::string(512, 'z'));
  CHECK(super_entries() == 2);
  REQUIRE(f.Flush(*be).ok());
  CHECK(super_entries() == 4);
}

TEST_CASE("option errors have QEMU's text", "[blklogwrites]") {
  Fixture f;
  auto msg = [&](const std::string& extra) {
    absl::StatusOr<std::unique_ptr<Backend>> be = f.OpenBackend(f.Opts(extra));
    REQUIRE(!be.ok());
    return Message(be.status());
  };
  CHECK(msg("log-sector-size=1000") == "Invalid log sector size 1000");
  CHECK(msg("log-sector-size=16") == "Invalid log sector size 16");
  CHECK(msg("log-append=on,log-sector-size=4096") ==
        "log-append and log-sector-size are mutually exclusive");
  CHECK(msg("log-super-update-interval=0") == "Invalid log superblock update interval 0");
  WriteFile(f.log, std::string(512, 'x'));
  CHECK(msg("log-append=on") == "Invalid log superblock magic");
  std::string log(1024, '\0');
  LogSuper super;
  super.nr_entries = 1;
  EncodeSuper(super, reinterpret_cast<uint8_t*>(log.data()));
  EncodeEntry({0, 0, 0x100, 0}, reinterpret_cast<uint8_t*>(log.data() + 512));
  WriteFile(f.log, log);
  CHECK(msg("log-append=on") == "Invalid flags 0x100 in log entry 0");
  super.version = 2;
  EncodeSuper(super, reinterpret_cast<uint8_t*>(log.data()));
  WriteFile(f.log, log);
  CHECK(msg("log-append=on") == "Unsupported log version 2");
}

TEST_CASE("a read-only filter leaves the log alone", "[blklogwrites]") {
  Fixture f;
  auto be = f.MustOpenBackend(f.Opts(), {.read_only = true});
  CHECK(f.Read(*be, 0, 512) == std::string(512, '\0'));
  REQUIRE(be->Close().ok());
  CHECK(ReadFile(f.log).empty());
}

TEST_CASE("ParseLog refuses logs whose entries do not fit", "[blklogwrites]") {
  std::vector<uint8_t> log(2048, 0);
  LogSuper super;
  super.nr_entries = 2;
  EncodeSuper(super, log.data());
  EncodeEntry({0, 2, 0, 0}, log.data() + 512);  // sectors 2..3: fits
  EncodeEntry({0, 1, 0, 0}, log.data() + 2048 - 512);
  absl::StatusOr<ParsedLog> p = ParseLog(log, "l");
  REQUIRE(!p.ok());  // entry 1 would be at sector 4, past the 4-sector log
  super.nr_entries = 1;
  EncodeSuper(super, log.data());
  p = ParseLog(log, "l");
  REQUIRE(p.ok());
  CHECK(p->records.size() == 1);
  EncodeEntry({0, ~0ull, 0, 0}, log.data() + 512);
  CHECK(!ParseLog(log, "l").ok());
}

}  // namespace
}  // namespace libblock::blklogwrites
