// The block graph: permission rules, conflict messages, all-or-nothing transactions, node
// names, reopen, attach/detach/replace, and the open path's option handling.
#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/graph.h"
#include "core/options.h"
#include "test_drivers.h"
#include "test_support.h"
#include "util/status.h"

namespace libblock {
namespace {

using testing::MakeLoop;
using testing::Message;
using testing::TestRegistry;

// The shared env on the test registry, plus attaching backends to nodes and a snapshot of
// the graph's permission state.
struct Fixture : testing::GraphEnv {
  Fixture() : GraphEnv(TestRegistry()) {}
  ~Fixture() { testing::SetTestProtoRefuseAll(false); }

  absl::StatusOr<std::unique_ptr<Backend>> Attach(Node* node, BackendOptions opts) {
    return Backend::Attach(graph, *node, std::move(opts));
  }
  std::unique_ptr<Backend> MustAttach(Node* node, BackendOptions opts) {
    auto be = Attach(node, std::move(opts));
    INFO(be.status().ToString());
    REQUIRE(be.ok());
    return std::move(*be);
  }

  // Everything a transaction may touch, for before/after comparisons.
  std::string Snapshot() const {
    std::string out;
    for (Node* n : graph.nodes()) {
      out += n->name() + " ro=" + std::to_string(n->flags().read_only) +
             " perm=" + std::to_string(n->perm()) + " shared=" + std::to_string(n->shared()) +
             " parents=" + std::to_string(n->parents().size()) + "\n";
      for (Child* c : n->children()) {
        out += "  " + c->name() + "->" + c->node()->name() + " perm=" + std::to_string(c->perm()) +
               " shared=" + std::to_string(c->shared()) + "\n";
      }
      for (Child* p : n->parents()) {
        out += "  <-" + p->parent()->ParentDescription() + " perm=" + std::to_string(p->perm()) +
               " shared=" + std::to_string(p->shared()) + "\n";
      }
    }
    return out;
  }
};

TEST_CASE("permission names use QEMU's wording", "[perm]") {
  REQUIRE(PermNames(kPermWrite) == "write");
  REQUIRE(PermNames(kPermAll) == "consistent read, write, write unchanged, resize");
  REQUIRE(PermNames(kPermConsistentRead | kPermResize) == "consistent read, resize");
  REQUIRE(PermNames(0).empty());
}

TEST_CASE("default child permissions follow QEMU's per-role rules", "[perm]") {
  Perm p, s;
  ChildPermContext writable{true}, readonly{false};
  // filtered: everything passes through
  DefaultChildPerm(kRoleFiltered | kRolePrimary, writable, kPermConsistentRead | kPermWrite,
                   kPermConsistentRead, &p, &s);
  REQUIRE(p == (kPermConsistentRead | kPermWrite));
  REQUIRE(s == kPermConsistentRead);
  // cow: only consistent read; write/resize shared only when the parent's users share write
  DefaultChildPerm(kRoleCow, writable, kPermAll, kPermAll, &p, &s);
  REQUIRE(p == kPermConsistentRead);
  REQUIRE(s == kPermAll);
  DefaultChildPerm(kRoleCow, writable, kPermAll, kPermConsistentRead, &p, &s);
  REQUIRE(s == (kPermConsistentRead | kPermWriteUnchanged));
  // metadata: write+resize whenever the parent is writable, never shared
  DefaultChildPerm(kRoleMetadata, writable, 0, kPermAll, &p, &s);
  REQUIRE(p == (kPermConsistentRead | kPermWrite | kPermResize));
  REQUIRE(s == (kPermConsistentRead | kPermWriteUnchanged));
  DefaultChildPerm(kRoleMetadata, readonly, 0, kPermAll, &p, &s);
  REQUIRE(p == kPermConsistentRead);
  REQUIRE(s == (kPermConsistentRead | kPermWriteUnchanged));
  // data: resize never shared; write-unchanged becomes write; write implies resize
  DefaultChildPerm(kRoleData, readonly, kPermWriteUnchanged, kPermAll, &p, &s);
  REQUIRE(p == (kPermWriteUnchanged | kPermWrite | kPermResize));
  REQUIRE(s == (kPermAll & ~kPermResize));
  DefaultChildPerm(kRoleData, readonly, kPermConsistentRead, kPermAll, &p, &s);
  REQUIRE(p == kPermConsistentRead);
  // image = data + metadata
  DefaultChildPerm(kRoleImage, writable, kPermConsistentRead, kPermAll, &p, &s);
  REQUIRE(p == (kPermConsistentRead | kPermWrite | kPermResize));
  REQUIRE(s == (kPermConsistentRead | kPermWriteUnchanged));
}

TEST_CASE("node names are unique, validated, and generated when absent", "[graph]") {
  Fixture f;
  Node* a = f.MustOpenNode("driver=test-proto");
  Node* b = f.MustOpenNode("driver=test-proto");
  REQUIRE(a->name().rfind("#block", 0) == 0);
  REQUIRE(a->auto_named());
  REQUIRE(a->name() != b->name());
  Node* named = f.MustOpenNode("driver=test-proto,node-name=disk0");
  REQUIRE(named->name() == "disk0");
  REQUIRE(f.graph.FindNode("disk0") == named);
  REQUIRE(Message(f.OpenNode("driver=test-proto,node-name=disk0").status()) ==
          "Duplicate nodes with node-name='disk0'");
  REQUIRE(Message(f.OpenNode("driver=test-proto,node-name=1bad").status()) == "Invalid node-name: '1bad'");
  REQUIRE(Message(f.OpenNode("driver=test-proto,node-name=#block001").status()) ==
          "Invalid node-name: '#block001'");
  REQUIRE(Message(f.OpenNode("driver=test-proto,node-name=" + std::string(32, 'a')).status()) ==
          "Node name too long");
  for (Node* n : {a, b, named}) f.graph.Unref(n);
  REQUIRE(f.graph.nodes().empty());
}

TEST_CASE("conflicting parents get QEMU's permission-conflict message", "[perm]") {
  Fixture f;
  Node* n = f.MustOpenNode("driver=test-proto,node-name=proto");
  auto vda = f.MustAttach(n, {.name = "vda"});
  auto vdb = f.Attach(n, {.name = "vdb"});
  REQUIRE_FALSE(vdb.ok());
  REQUIRE(StatusErrno(vdb.status()) == EPERM);
  REQUIRE(Message(vdb.status()) ==
          "Permission conflict on node 'proto': permissions 'write' are both required by block "
          "device 'vdb' (uses node 'proto' as 'root' child) and unshared by block device 'vda' "
          "(uses node 'proto' as 'root' child).");
  // A reader that does not share write is refused while a writer is there...
  auto reader = f.Attach(n, {.read_only = true});
  REQUIRE(Message(reader.status()) ==
          "Permission conflict on node 'proto': permissions 'write' are both required by block "
          "device 'vda' (uses node 'proto' as 'root' child) and unshared by an unnamed block "
          "device (uses node 'proto' as 'root' child).");
  // ...and accepted when it shares write (share-rw); a second writer with share-rw is still
  // refused by the first writer, which shares nothing.
  auto sharing_reader = f.MustAttach(n, {.read_only = true, .share_rw = true});
  REQUIRE(n->perm() == (kPermConsistentRead | kPermWrite));
  REQUIRE(n->shared() == (kPermConsistentRead | kPermWriteUnchanged));
  REQUIRE_FALSE(f.Attach(n, {.share_rw = true}).ok());
  f.graph.Unref(n);
}

TEST_CASE("a node parent is named in conflicts with its child role", "[perm]") {
  Fixture f;
  Node* fmt = f.MustOpenNode("driver=test-fmt,role=metadata,node-name=fmt,file.driver=test-proto,"
                             "file.node-name=proto");
  Node* proto = f.graph.FindNode("proto");
  REQUIRE(proto);
  Child* file = fmt->FindChild("file");
  REQUIRE(file->perm() == (kPermConsistentRead | kPermWrite | kPermResize));
  REQUIRE(file->shared() == (kPermConsistentRead | kPermWriteUnchanged));
  auto be = f.Attach(proto, {.name = "raw-user"});
  REQUIRE(Message(be.status()) ==
          "Permission conflict on node 'proto': permissions 'write' are both required by block "
          "device 'raw-user' (uses node 'proto' as 'root' child) and unshared by node 'fmt' "
          "(uses node 'proto' as 'file' child).");
  f.graph.Unref(fmt);
}

TEST_CASE("a read-only node refuses writers", "[perm]") {
  Fixture f;
  Node* n = f.MustOpenNode("driver=test-proto,read-only=on");
  auto be = f.Attach(n, {});
  REQUIRE(Message(be.status()) == "Block node is read-only");
  auto ro = f.MustAttach(n, {.read_only = true});
  // Writing through an edge without the write permission is refused, not attempted.
  uint8_t buf[512] = {};
  absl::Status st = f.loop->Run(ro->root_child()->Pwrite(0, buf, sizeof(buf)));
  REQUIRE(StatusErrno(st) == EPERM);
  f.graph.Unref(n);
}

TEST_CASE("a failed transaction leaves every node exactly as before", "[perm]") {
  Fixture f;
  // fmt (read-only) -> proto that refuses resize. Going read-write makes fmt's data child ask
  // for write+resize, which fails deep in the graph after fmt's own masks were updated.
  Node* fmt = f.MustOpenNode("driver=test-fmt,role=data,read-only=on,node-name=fmt,"
                             "file.driver=test-proto,file.veto=8,file.node-name=proto,"
                             "backing.driver=test-proto,backing.node-name=base");
  auto be = f.MustAttach(fmt, {.name = "vda", .read_only = true});
  f.graph.Unref(fmt);
  std::string before = f.Snapshot();
  absl::Status st = be->Reopen(false);
  REQUIRE(Message(st) == "test-proto vetoes 'resize'");
  REQUIRE(f.Snapshot() == before);
  REQUIRE(be->options().read_only);
  REQUIRE(f.graph.FindNode("fmt")->flags().read_only);
  REQUIRE(f.graph.FindNode("proto")->flags().read_only);

  // A conflicting attach is undone too.
  auto other = f.Attach(f.graph.FindNode("proto"), {.name = "w"});
  REQUIRE_FALSE(other.ok());
  REQUIRE(f.Snapshot() == before);
}

TEST_CASE("giving up permissions never fails", "[perm]") {
  Fixture f;
  Node* n = f.MustOpenNode("driver=test-proto,node-name=p");
  auto writer = f.MustAttach(n, {.name = "w"});
  auto reader = f.MustAttach(n, {.name = "r", .read_only = true, .share_rw = true});
  f.graph.Unref(n);
  testing::SetTestProtoRefuseAll(true);
  // Taking more is refused...
  REQUIRE_FALSE(writer->SetPerm(kPermAll, kPermAll).ok());
  // ...but dropping permissions and detaching go through even though the driver objects.
  REQUIRE(writer->SetPerm(kPermConsistentRead, kPermAll).ok());
  REQUIRE(f.graph.FindNode("p")->perm() == kPermConsistentRead);
  REQUIRE(writer->Close().ok());
  REQUIRE(f.graph.FindNode("p")->parents().size() == 1);
  REQUIRE(reader->Close().ok());
  REQUIRE(f.graph.FindNode("p") == nullptr);  // last reference gone: closed and freed
}

TEST_CASE("reopen switches read-only and read-write as one transaction", "[perm]") {
  Fixture f;
  Node* fmt = f.MustOpenNode("driver=test-fmt,node-name=fmt,file.driver=test-proto,file.node-name=proto,"
                             "backing.driver=test-proto,backing.node-name=base,read-only=on");
  auto be = f.MustAttach(fmt, {.read_only = true, .share_rw = true});
  f.graph.Unref(fmt);
  Node* proto = f.graph.FindNode("proto");
  Node* base = f.graph.FindNode("base");
  REQUIRE(base->flags().read_only);
  REQUIRE(be->Reopen(false).ok());
  REQUIRE_FALSE(fmt->flags().read_only);
  REQUIRE_FALSE(proto->flags().read_only);  // inherited the mode, so it follows
  REQUIRE(base->flags().read_only);         // a backing file stays read-only
  REQUIRE((be->perm() & kPermWrite));
  uint8_t buf[4096];
  memset(buf, 0x5a, sizeof(buf));
  REQUIRE(be->PwriteSync(0, buf, sizeof(buf)).ok());

  // Another writer on the node makes going read-only impossible.
  auto second = f.MustAttach(fmt, {.share_rw = true, .perm_override = kPermConsistentRead | kPermWrite,
                                   .shared_override = kPermAll});
  std::string before = f.Snapshot();
  REQUIRE(Message(be->Reopen(true)) == "Read-only block node 'fmt' cannot support read-write users");
  REQUIRE(f.Snapshot() == before);
  REQUIRE(second->Close().ok());
  REQUIRE(be->Reopen(true).ok());
  REQUIRE(fmt->flags().read_only);
  REQUIRE(proto->flags().read_only);
  REQUIRE(StatusErrno(be->PwriteSync(0, buf, sizeof(buf))) == EPERM);
  uint8_t back[4096];
  REQUIRE(be->PreadSync(0, back, sizeof(back)).ok());
  REQUIRE(memcmp(buf, back, sizeof(buf)) == 0);
}

TEST_CASE("an explicitly read-only child does not follow its parent's reopen", "[perm]") {
  Fixture f;
  Node* fmt = f.MustOpenNode("driver=test-fmt,read-only=on,file.driver=test-proto,file.read-only=on,"
                             "file.node-name=proto");
  auto be = f.MustAttach(fmt, {.read_only = true});
  f.graph.Unref(fmt);
  REQUIRE(Message(be->Reopen(false)) == "Block node is read-only");
  REQUIRE(fmt->flags().read_only);
}

TEST_CASE("attach, replace and detach children", "[graph]") {
  Fixture f;
  Node* p1 = f.MustOpenNode("driver=test-proto,node-name=p1,size=4k");
  Node* p2 = f.MustOpenNode("driver=test-proto,node-name=p2,size=8k");
  Node* bad = f.MustOpenNode("driver=test-proto,node-name=bad,veto=2");
  Node* raw = f.MustOpenNode("driver=raw,file=p1,node-name=r");
  auto be = f.MustAttach(raw, {});
  f.graph.Unref(raw);
  Child* file = raw->FindChild("file");
  REQUIRE(file->node() == p1);
  REQUIRE(p1->perm() == (kPermConsistentRead | kPermWrite));
  REQUIRE(raw->size() == 4096);

  REQUIRE(f.graph.ReplaceChild(file, *p2).ok());
  REQUIRE(file->node() == p2);
  REQUIRE(raw->size() == 8192);  // the parent follows its new child
  REQUIRE(p2->perm() == (kPermConsistentRead | kPermWrite));
  REQUIRE(p1->perm() == 0);
  REQUIRE(p1->parents().empty());

  std::string before = f.Snapshot();
  absl::Status st = f.graph.ReplaceChild(file, *bad);
  REQUIRE(Message(st) == "test-proto vetoes 'write'");
  REQUIRE(file->node() == p2);
  REQUIRE(f.Snapshot() == before);

  // A node cannot become its own descendant.
  auto cycle = f.graph.AttachChild(*p2, *raw, "x", kRoleData);
  REQUIRE(Message(cycle.status()) == "Making 'r' a child of 'p2' would create a cycle");

  // Detaching the backend frees the nodes nobody else references.
  REQUIRE(be->Close().ok());
  REQUIRE(f.graph.FindNode("r") == nullptr);
  REQUIRE(f.graph.FindNode("p2") != nullptr);  // still held by this test's open reference
  for (Node* n : {p1, p2, bad}) f.graph.Unref(n);
  REQUIRE(f.graph.nodes().empty());
}

TEST_CASE("force-share makes every parent share everything with the node", "[perm]") {
  Fixture f;
  Node* fmt = f.MustOpenNode("driver=test-fmt,read-only=on,force-share=on,file.driver=test-proto,"
                             "file.node-name=proto");
  Child* file = fmt->FindChild("file");
  REQUIRE(f.graph.FindNode("proto")->flags().force_share);  // inherited
  REQUIRE(file->shared() == kPermAll);
  REQUIRE(Message(f.OpenNode("driver=test-proto,force-share=on").status()) ==
          "force-share=on can only be used with read-only images");
  f.graph.Unref(fmt);
}

TEST_CASE("opening understands QEMU's option syntax and reports bad options", "[options][graph]") {
  Fixture f;
  SECTION("dotted keys") {
    Node* n = f.MustOpenNode("driver=raw,file.driver=test-proto,file.size=4k");
    REQUIRE(n->size() == 4096);
    REQUIRE(n->primary_child()->node()->driver().name == "test-proto");
    f.graph.Unref(n);
  }
  SECTION("json: pseudo-filename") {
    auto n = f.OpenNode("", R"(json:{"driver":"raw","offset":512,"file":{"driver":"test-proto","size":"2M"}})");
    REQUIRE(n.ok());
    REQUIRE((*n)->size() == 2 * 1024 * 1024 - 512);
    f.graph.Unref(*n);
  }
  SECTION("explicit options win over json: content") {
    auto o = ParseKeyValueOptions("file.size=8k");
    REQUIRE(o.ok());
    auto n = f.graph.Open(R"(json:{"driver":"raw","file":{"driver":"test-proto","size":"2M"}})", *o);
    REQUIRE(n.ok());
    REQUIRE((*n)->size() == 8192);
    f.graph.Unref(*n);
  }
  SECTION("a child can reference an existing node") {
    Node* p = f.MustOpenNode("driver=test-proto,node-name=p0");
    Node* r = f.MustOpenNode("driver=raw,file=p0");
    REQUIRE(r->primary_child()->node() == p);
    REQUIRE(Message(f.OpenNode("driver=raw,file=nosuch").status()) ==
            "Cannot find device='nosuch' nor node-name='nosuch'");
    f.graph.Unref(r);
    f.graph.Unref(p);
  }
  SECTION("without a driver, the file child's options or a node reference are probed") {
    // QEMU's bdrv_open: "file.*" options (or "file": "node-name") instead of a filename.
    Node* n = f.MustOpenNode("read-only=on,file.driver=test-proto,file.size=4k");
    REQUIRE(n->driver().name == "raw");
    REQUIRE(n->flags().probed);
    REQUIRE(n->primary_child()->node()->driver().name == "test-proto");
    REQUIRE(n->size() == 4096);
    Node* p = f.MustOpenNode("driver=test-proto,node-name=p1,size=8k");
    Node* r = f.MustOpenNode("read-only=on,file=p1");
    REQUIRE(r->driver().name == "raw");
    REQUIRE(r->primary_child()->node() == p);
    REQUIRE(Message(f.OpenNode("file=nosuch").status()) ==
            "Cannot find device='nosuch' nor node-name='nosuch'");
    REQUIRE(Message(f.OpenNode("file=p1,file.size=4k").status()) ==
            "Cannot reference an existing block device with additional options or a new filename");
    f.graph.Unref(r);
    f.graph.Unref(p);
    f.graph.Unref(n);
  }
  SECTION("unknown and mistyped options name the driver") {
    REQUIRE(Message(f.OpenNode("driver=raw,file.driver=test-proto,bogus=1").status()) ==
            "Block format 'raw' does not support the option 'bogus'");
    REQUIRE(Message(f.OpenNode("driver=raw,file.driver=test-proto,file.bogus=1").status()) ==
            "Block protocol 'test-proto' doesn't support the option 'bogus'");
    absl::Status st = f.OpenNode("driver=null-co,size=abc").status();
    REQUIRE(StatusErrno(st) == EINVAL);
    REQUIRE_THAT(Message(st), Catch::Contains("null-co") && Catch::Contains("'size'"));
    st = f.OpenNode("driver=null-co,read-zeroes=2").status();
    REQUIRE_THAT(Message(st), Catch::Contains("null-co") && Catch::Contains("'read-zeroes'"));
    st = f.OpenNode("driver=raw,file.driver=null-co,detect-zeroes=maybe").status();
    REQUIRE_THAT(Message(st), Catch::Contains("raw") && Catch::Contains("'detect-zeroes'"));
  }
  SECTION("missing pieces") {
    REQUIRE(Message(f.OpenNode("driver=raw").status()) == "A block device must be specified for \"file\"");
    REQUIRE(Message(f.OpenNode("read-only=on").status()) == "Must specify either driver or file");
    REQUIRE(Message(f.OpenNode("driver=nosuch").status()) == "Unknown driver 'nosuch'");
    REQUIRE(Message(f.OpenNode("", "bogus:disk.img").status()) == "Unknown protocol 'bogus'");
    REQUIRE(Message(f.OpenNode("", "null-co://x").status()) ==
            "The only allowed filename for this driver is 'null-co://'");
  }
  SECTION("a proto: prefix selects the protocol, and probing guesses raw with a warning") {
    auto n = f.OpenNode("", "null-co://");
    REQUIRE(n.ok());
    REQUIRE((*n)->driver().name == "raw");
    REQUIRE((*n)->flags().probed);
    REQUIRE((*n)->primary_child()->node()->driver().name == "null-co");
    REQUIRE(f.warnings.size() == 1);
    REQUIRE_THAT(f.warnings[0], Catch::StartsWith("WARNING: Image format was not specified for "
                                                  "'null-co://' and probing guessed raw."));
    f.graph.Unref(*n);
    // read-only opens do not warn, as in QEMU
    n = f.OpenNode("read-only=on", "null-co://");
    REQUIRE(n.ok());
    REQUIRE(f.warnings.size() == 1);
    f.graph.Unref(*n);
  }
  REQUIRE(f.graph.nodes().empty());
}

TEST_CASE("backend cache modes map to node options", "[graph]") {
  struct Case {
    const char* mode;
    bool direct, no_flush, writethrough;
  } cases[] = {{"writeback", false, false, false},   {"none", true, false, false},
               {"writethrough", false, false, true}, {"directsync", true, false, true},
               {"unsafe", false, true, false}};
  for (const Case& c : cases) {
    Fixture f;
    auto be = f.OpenBackend(std::string("driver=raw,file.driver=null-co,cache=") + c.mode);
    REQUIRE(be.ok());
    Node* file = (*be)->root()->primary_child()->node();
    INFO(c.mode);
    REQUIRE(file->flags().cache_direct == c.direct);
    REQUIRE(file->flags().cache_no_flush == c.no_flush);
    REQUIRE(file->flags().writethrough == c.writethrough);
    REQUIRE((*be)->options().writethrough == c.writethrough);
  }
  Fixture f;
  REQUIRE_THAT(Message(f.OpenBackend("driver=null-co,cache=sometimes").status()),
               Catch::Contains("invalid cache option 'sometimes'"));
}

TEST_CASE("a backend outliving its graph is orphaned, not left dangling", "[graph]") {
  auto loop = MakeLoop();
  std::unique_ptr<Backend> be;
  {
    Graph graph(*loop, TestRegistry());
    be = testing::MustOpenBackend(graph, "driver=test-proto");
  }
  REQUIRE(be->root() == nullptr);
  uint8_t buf[16];
  REQUIRE(StatusErrno(be->PreadSync(0, buf, sizeof buf)) == ECANCELED);
  REQUIRE(be->Close().ok());
}

}  // namespace
}  // namespace libblock
