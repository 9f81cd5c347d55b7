// The block graph: permission rules, conflict messages, all-or-nothing transactions, node
// names, reopen, attach/detach/replace, and the open path's option handling.
#include <catch2/catch.hpp>
#include <sys/stat.h>

#include <cerrno>
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

namespace libblock {
namespace {

// A parent that is neither a node nor a backend (a block job's edge, say).
struct TestParent : ChildParent {
  std::string ParentDescription() const override { return "the test job"; }
};

TEST_CASE("one transaction replaces a backing child and reopens the base read-write",
          "[graph][transaction]") {
  Fixture f;
  Node* mid = f.MustOpenNode("driver=test-proto,node-name=mid");
  Node* base = f.MustOpenNode("driver=test-proto,node-name=base,read-only=on,veto=2");
  Node* top = f.MustOpenNode("driver=test-fmt,node-name=top,file.driver=test-proto,backing=mid");
  // share-rw: top's backing edge then shares write (QEMU's rule for cow children)
  auto be = f.MustAttach(top, {.share_rw = true});
  f.graph.Unref(top);
  Child* backing = top->FindChild("backing");
  REQUIRE(backing->node() == mid);
  TestParent job;

  // Replace mid by base, reopen base read-write and let a writer onto it, as commit does. A
  // writer on base alone would be refused (read-only); the combined change is checked once.
  // base vetoes write: the whole change is undone.
  std::string before = f.Snapshot();
  {
    Transaction tran;
    REQUIRE(f.graph.ReplaceChild(backing, *base, tran).ok());
    Graph::ReopenRequest rw;
    rw.changes.Set("read-only", false);
    absl::Status st = f.loop->Run(f.graph.ReopenCo(*base, std::move(rw), tran));
    REQUIRE(st.ok());
    auto edge = f.graph.AttachChild(job, *base, "job", kRoleData,
                                    kPermConsistentRead | kPermWrite, kPermAll, tran);
    REQUIRE(edge.ok());
    REQUIRE(backing->node() == base);  // staged: the structure already changed
    st = f.graph.Commit(tran);
    REQUIRE(Message(st) == "test-proto vetoes 'write'");
  }
  REQUIRE(backing->node() == mid);
  REQUIRE(base->flags().read_only);
  REQUIRE(base->parents().empty());
  REQUIRE(f.Snapshot() == before);
  REQUIRE_FALSE(be->quiesced());  // the reopen's drained section ended with the abort

  // The same change onto a base that accepts writers commits as a whole.
  Node* base2 = f.MustOpenNode("driver=test-proto,node-name=base2,read-only=on");
  Child* job_edge = nullptr;
  {
    Transaction tran;
    REQUIRE(f.graph.ReplaceChild(backing, *base2, tran).ok());
    Graph::ReopenRequest rw;
    rw.changes.Set("read-only", false);
    REQUIRE(f.loop->Run(f.graph.ReopenCo(*base2, std::move(rw), tran)).ok());
    auto edge = f.graph.AttachChild(job, *base2, "job", kRoleData,
                                    kPermConsistentRead | kPermWrite, kPermAll, tran);
    REQUIRE(edge.ok());
    job_edge = *edge;
    REQUIRE(f.graph.Commit(tran).ok());
  }
  REQUIRE(backing->node() == base2);
  REQUIRE_FALSE(base2->flags().read_only);
  REQUIRE((base2->perm() & kPermWrite) != 0);
  REQUIRE(mid->parents().empty());
  f.graph.DetachChild(job_edge);
  for (Node* n : {mid, base, base2}) f.graph.Unref(n);
}

TEST_CASE("ReplaceNode moves every parent and refuses what the new node cannot take",
          "[graph][transaction]") {
  Fixture f;
  Node* a = f.MustOpenNode("driver=test-proto,node-name=a");
  Node* ro = f.MustOpenNode("driver=test-proto,node-name=ro,read-only=on");
  Node* shared = f.MustOpenNode("driver=test-proto,node-name=shared");
  Node* b = f.MustOpenNode("driver=test-proto,node-name=b");
  auto writer = f.MustAttach(a, {.name = "w", .share_rw = true});
  auto reader = f.MustAttach(a, {.name = "r", .read_only = true, .share_rw = true});
  auto other = f.MustAttach(shared, {.name = "o", .read_only = true});  // shares no write

  std::string before = f.Snapshot();
  REQUIRE(Message(f.graph.ReplaceNode(*a, *ro)) == "Block node is read-only");
  REQUIRE(f.Snapshot() == before);
  REQUIRE_THAT(Message(f.graph.ReplaceNode(*a, *shared)),
               Catch::StartsWith("Permission conflict on node 'shared': permissions 'write'"));
  REQUIRE(f.Snapshot() == before);
  REQUIRE(writer->root() == a);

  // All but the excepted edge move; permissions follow.
  REQUIRE(f.graph.ReplaceNode(*a, *b, {reader->root_child()}).ok());
  REQUIRE(writer->root() == b);
  REQUIRE(reader->root() == a);
  REQUIRE(b->perm() == (kPermConsistentRead | kPermWrite));
  REQUIRE(a->perm() == kPermConsistentRead);
  REQUIRE(f.graph.ReplaceNode(*a, *b).ok());
  REQUIRE(reader->root() == b);
  REQUIRE(a->parents().empty());
  REQUIRE(a->perm() == 0);
  for (Node* n : {a, ro, shared, b}) f.graph.Unref(n);
}

TEST_CASE("InsertFilterAbove puts a filter above a node, taking over all its parents",
          "[graph][transaction]") {
  Fixture f;
  Node* a = f.MustOpenNode("driver=test-proto,node-name=a,size=64k");
  auto writer = f.MustAttach(a, {.name = "w", .share_rw = true});
  auto reader = f.MustAttach(a, {.name = "r", .read_only = true, .share_rw = true});
  f.graph.Unref(a);
  size_t nodes = f.graph.nodes().size();

  // Refused: not a filter; a permission the node refuses. Nothing changes, no node is left.
  std::string before = f.Snapshot();
  auto opts = ParseKeyValueOptions("driver=test-fmt");
  REQUIRE(opts.ok());
  auto not_filter = f.graph.InsertFilterAbove(*a, *opts);
  REQUIRE_FALSE(not_filter.ok());
  REQUIRE(f.Snapshot() == before);
  opts = ParseKeyValueOptions("driver=test-delay,ns=1000,node-name=delay");
  REQUIRE(opts.ok());
  testing::SetTestProtoRefuseAll(true);
  auto refused = f.graph.InsertFilterAbove(*a, *opts);
  testing::SetTestProtoRefuseAll(false);
  REQUIRE(Message(refused.status()) == "test-proto refuses every permission change");
  REQUIRE(f.Snapshot() == before);
  REQUIRE(f.graph.nodes().size() == nodes);

  auto filter = f.graph.InsertFilterAbove(*a, *opts);
  INFO(filter.status().ToString());
  REQUIRE(filter.ok());
  Node* delay = *filter;
  REQUIRE(writer->root() == delay);
  REQUIRE(reader->root() == delay);
  REQUIRE(a->parents().size() == 1);
  REQUIRE(a->parents()[0]->parent() == delay);
  REQUIRE(delay->perm() == (kPermConsistentRead | kPermWrite));
  REQUIRE((a->perm() & kPermWrite) != 0);
  f.Write(*writer, 0, "through");
  REQUIRE(std::string(testing::DataOf(*a).begin(), testing::DataOf(*a).begin() + 7) == "through");
}

TEST_CASE("a drained section quiesces the backends above and waits for requests in flight",
          "[graph][drain]") {
  Fixture f;
  Node* delay = f.MustOpenNode(
      "driver=test-delay,ns=2000000,node-name=delay,file.driver=test-proto,file.node-name=p");
  auto be = f.MustAttach(delay, {});
  f.graph.Unref(delay);
  Node* p = f.graph.FindNode("p");
  std::string data = "abcd";
  IoVec v(data.data(), data.size());

  // A write in flight (sleeping in the filter) when the section begins: it completes first.
  bool first_done = false;
  f.loop->Spawn(be->Write(0, 4, v), [&](absl::Status st) { first_done = st.ok(); });
  REQUIRE(be->in_flight() == 1);
  {
    DrainedSection section(f.graph, *p);  // below the filter: the backend above is quiesced
    REQUIRE(be->quiesced());
    REQUIRE(p->drained());
    REQUIRE(delay->drained());
    section.WaitSync();
    REQUIRE(first_done);
    REQUIRE(testing::StatsOf(*p).writes == 1);

    bool second_done = false;
    f.loop->Spawn(be->Write(512, 4, v), [&](absl::Status st) { second_done = st.ok(); });
    REQUIRE(be->queued() == 1);
    for (int i = 0; i < 20; ++i) f.loop->RunOnce(false, 1);
    REQUIRE_FALSE(second_done);
    REQUIRE(testing::StatsOf(*p).writes == 1);

    // A backend attached to a drained node is quiesced too; detached, it is let go.
    auto late = f.MustAttach(delay, {.read_only = true, .share_rw = true});
    REQUIRE(late->quiesced());
    REQUIRE(late->Close().ok());
    REQUIRE_FALSE(late->quiesced());

    section.End();
    REQUIRE_FALSE(be->quiesced());
    f.loop->RunUntil([&] { return second_done; });
  }
  REQUIRE(testing::StatsOf(*p).writes == 2);
  REQUIRE_FALSE(p->drained());
}

}  // namespace
}  // namespace libblock

// ---- backing files ---------------------------------------------------------------------------

namespace libblock {
namespace {

// test-fmt images on real files whose "header" names their backing file.
struct BackingFixture : Fixture {
  // Writes a test-fmt image `path` (4 KiB) naming `backing` (and `fmt`, when not empty).
  void MakeImage(const std::string& path, const std::string& backing, const std::string& fmt = "") {
    std::string header = "LBTESTFMT\n";
    if (!backing.empty()) header += "backing=" + backing + "\n";
    if (!fmt.empty()) header += "backing-fmt=" + fmt + "\n";
    header.resize(4096, '\0');
    testing::WriteFile(path, header);
  }
  std::string TopOpts(const std::string& path, const std::string& extra = "") {
    return "driver=test-fmt,node-name=top,file.driver=file,file.filename=" + path +
           (extra.empty() ? "" : "," + extra);
  }
  Node* BackingOf(Node* n) {
    Child* c = n->FindChild("backing");
    return c ? c->node() : nullptr;
  }
};

TEST_CASE("a format's backing file opens from its header, relative to the overlay", "[graph][backing]") {
  BackingFixture f;
  REQUIRE(mkdir(f.dir.File("sub").c_str(), 0755) == 0);
  testing::WriteFile(f.dir.File("sub/base.img"), std::string(testing::kMiB, 'b'));
  f.MakeImage(f.dir.File("sub/mid.img"), "base.img", "raw");
  f.MakeImage(f.dir.File("sub/top.img"), f.dir.File("sub/mid.img"), "test-fmt");  // absolute
  Node* top = f.MustOpenNode(f.TopOpts(f.dir.File("sub/top.img")));
  Node* mid = f.BackingOf(top);
  REQUIRE(mid);
  REQUIRE(mid->driver().name == "test-fmt");
  REQUIRE(mid->filename() == f.dir.File("sub/mid.img"));
  REQUIRE(top->FindChild("backing")->role() == kRoleCow);
  Node* base = f.BackingOf(mid);
  REQUIRE(base);
  REQUIRE(base->driver().name == "raw");
  REQUIRE(base->filename() == f.dir.File("sub/base.img"));  // resolved against sub/, not the cwd
  // Backing files are read-only, whatever the overlay's mode.
  REQUIRE_FALSE(top->flags().read_only);
  REQUIRE(mid->flags().read_only);
  REQUIRE(base->flags().read_only);
  f.graph.Unref(top);
  REQUIRE(f.graph.nodes().empty());
}

TEST_CASE("backing options, node references, null and LB_OPEN_NO_BACKING", "[graph][backing]") {
  BackingFixture f;
  std::string top = f.dir.File("top.img");
  testing::WriteFile(f.dir.File("base.img"), std::string(4096, 'b'));
  testing::WriteFile(f.dir.File("other.img"), std::string(8192, 'o'));
  f.MakeImage(top, "base.img", "raw");

  SECTION("backing=null in json:, and the empty string") {
    Node* n = f.MustOpenNode("", R"(json:{"driver": "test-fmt", "backing": null, "file": {"driver": "file", "filename": ")" +
                                     top + R"("}})");
    REQUIRE(n->FindChild("backing") == nullptr);
    f.graph.Unref(n);
    n = f.MustOpenNode(f.TopOpts(top, "backing="));
    REQUIRE(n->FindChild("backing") == nullptr);
    f.graph.Unref(n);
    // null elsewhere is still an error
    REQUIRE_THAT(Message(f.OpenNode("", R"(json:{"driver": "test-fmt", "file": null})").status()),
                 Catch::Contains("'file' is null"));
  }
  SECTION("no_backing leaves it closed") {
    auto opts = ParseKeyValueOptions(f.TopOpts(top));
    REQUIRE(opts.ok());
    OpenParams params;
    params.inherit.no_backing = true;
    auto n = f.graph.Open("", *opts, params);
    REQUIRE(n.ok());
    REQUIRE((*n)->FindChild("backing") == nullptr);
    f.graph.Unref(*n);
  }
  SECTION("backing.* options win over the header") {
    Node* n = f.MustOpenNode(f.TopOpts(top, "backing.driver=raw,backing.file.driver=file,backing.file.filename=" +
                                                f.dir.File("other.img")));
    REQUIRE(f.BackingOf(n)->size() == 8192);
    f.graph.Unref(n);
    // only the format: the header's file with another driver
    n = f.MustOpenNode(f.TopOpts(top, "backing.driver=raw,backing.node-name=bk"));
    REQUIRE(f.BackingOf(n)->name() == "bk");
    REQUIRE(f.BackingOf(n)->size() == 4096);
    f.graph.Unref(n);
  }
  SECTION("a node reference") {
    Node* other = f.MustOpenNode("driver=test-proto,node-name=other,size=12k");
    Node* n = f.MustOpenNode(f.TopOpts(top, "backing=other"));
    REQUIRE(f.BackingOf(n) == other);
    f.graph.Unref(n);
    f.graph.Unref(other);
    REQUIRE(Message(f.OpenNode(f.TopOpts(top, "backing=nosuch")).status()) ==
            "Cannot find device='nosuch' nor node-name='nosuch'");
  }
  SECTION("the header as options; a protocol-prefixed name is not made relative") {
    Node* n = f.MustOpenNode(f.TopOpts(top, "backing-file=test-proto://b,backing-fmt=test-proto"));
    Node* b = f.BackingOf(n);
    REQUIRE(b->driver().name == "test-proto");
    REQUIRE(b->filename() == "test-proto://b");
    f.graph.Unref(n);
  }
  SECTION("a format without backing files refuses backing options") {
    REQUIRE(Message(f.OpenNode("driver=raw,file.driver=file,backing=,file.filename=" + top).status()) ==
            "Block format 'raw' does not support the option 'backing'");
  }
  REQUIRE(f.graph.nodes().empty());
}

TEST_CASE("a backing file whose format is not known is probed only read-only", "[graph][backing]") {
  BackingFixture f;
  std::string top = f.dir.File("top.img");
  testing::WriteFile(f.dir.File("base.img"), std::string(4096, 'b'));
  f.MakeImage(top, "base.img");  // no backing format

  Node* n = f.MustOpenNode(f.TopOpts(top));
  Node* base = f.BackingOf(n);
  REQUIRE(base->driver().name == "raw");
  REQUIRE(base->flags().probed);
  REQUIRE(base->flags().read_only);
  REQUIRE(f.warnings.empty());  // read-only: raw's probing warning does not apply
  // A probed raw backing file never becomes writable (commit would reopen it read-write).
  Graph::ReopenRequest rw;
  rw.changes.Set("read-only", false);
  REQUIRE_THAT(Message(f.graph.Reopen(*base, std::move(rw))),
               Catch::StartsWith("Cannot make backing file '" + f.dir.File("base.img") + "' writable"));
  REQUIRE(base->flags().read_only);
  f.graph.Unref(n);

  // Asked to open it read-write, the probe is refused.
  absl::Status st = f.OpenNode(f.TopOpts(top, "backing.read-only=off")).status();
  REQUIRE_THAT(Message(st), Catch::Contains("its format is not known") &&
                                Catch::Contains(f.dir.File("base.img")));
  // With a format, it may be.
  n = f.MustOpenNode(f.TopOpts(top, "backing.read-only=off,backing.driver=raw"));
  REQUIRE_FALSE(f.BackingOf(n)->flags().read_only);
  f.graph.Unref(n);
  REQUIRE(f.graph.nodes().empty());
}

TEST_CASE("backing chains that loop or are too long are refused, naming the files", "[graph][backing]") {
  BackingFixture f;
  std::string a = f.dir.File("a.img"), b = f.dir.File("b.img");
  f.MakeImage(a, "b.img", "test-fmt");
  f.MakeImage(b, "a.img", "test-fmt");
  absl::Status st = f.OpenNode(f.TopOpts(a)).status();
  INFO(Message(st));
  REQUIRE(StatusErrno(st) == ELOOP);
  REQUIRE_THAT(Message(st), Catch::Contains("Backing file chain loops: '" + a + "' -> '" + b +
                                            "' -> '" + a + "'"));
  f.MakeImage(a, "a.img", "test-fmt");  // itself
  st = f.OpenNode(f.TopOpts(a)).status();
  REQUIRE_THAT(Message(st), Catch::Contains("loops: '" + a + "' -> '" + a + "'"));
  REQUIRE(f.graph.nodes().empty());

  // A chain of kMaxBackingChain images opens; one more is refused.
  for (int i = 0; i < kMaxBackingChain; ++i) {
    f.MakeImage(f.dir.File("c" + std::to_string(i) + ".img"),
                i + 1 < kMaxBackingChain ? "c" + std::to_string(i + 1) + ".img" : "", "test-fmt");
  }
  Node* n = f.MustOpenNode(f.TopOpts(f.dir.File("c0.img")));
  int depth = 0;
  for (Node* x = n; x; x = f.BackingOf(x)) ++depth;
  REQUIRE(depth == kMaxBackingChain);
  f.graph.Unref(n);
  f.MakeImage(f.dir.File("c" + std::to_string(kMaxBackingChain - 1) + ".img"), "last.img", "test-fmt");
  f.MakeImage(f.dir.File("last.img"), "", "");
  st = f.OpenNode(f.TopOpts(f.dir.File("c0.img"))).status();
  REQUIRE(StatusErrno(st) == EMLINK);
  REQUIRE_THAT(Message(st), Catch::Contains("is longer than " + std::to_string(kMaxBackingChain) +
                                            " images (at '" + f.dir.File("last.img") + "')"));
  REQUIRE(f.graph.nodes().empty());
}

}  // namespace
}  // namespace libblock
