// Transaction: the all-or-nothing unit of every graph change.
//
// Each step of a change records how to undo itself (abort) and what to finish once every
// step has succeeded (commit). Abort actions run in reverse order, so a half-done change
// unwinds exactly; a transaction destroyed without Commit aborts.
//
// Graph changes staged into one transaction (Graph::AttachChild(..., tran), ReplaceChild,
// ReopenCo, ...) only record which nodes need their permissions recomputed; Graph::Commit
// recomputes and checks them once, over the combined change, and then commits. Work that must
// wait until every commit action ran (closing a node that lost its last parent, ending a
// drained section) is registered with AfterCommit.
#ifndef LIBBLOCK_CORE_TRANSACTION_H_
#define LIBBLOCK_CORE_TRANSACTION_H_

#include <functional>
#include <utility>
#include <vector>

namespace libblock {

class Node;

class Transaction {
 public:
  Transaction() = default;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() {
    if (!finished_) Abort();
  }

  void OnAbort(std::function<void()> fn) { abort_.push_back(std::move(fn)); }
  void OnCommit(std::function<void()> fn) { commit_.push_back(std::move(fn)); }
  // Runs after every commit action, in registration order; dropped on abort.
  void AfterCommit(std::function<void()> fn) { after_.push_back(std::move(fn)); }

  // Permission refresh bookkeeping for Graph::Commit: the roots below which masks change, and
  // whether every staged step only gives permissions up (then nothing may refuse it).
  void NeedPermRefresh(Node* root, bool relaxing) {
    perm_roots_.push_back(root);
    relaxing_ = relaxing_ && relaxing;
  }
  const std::vector<Node*>& perm_roots() const { return perm_roots_; }
  bool relaxing() const { return relaxing_; }
  void ClearPermRefresh() {
    perm_roots_.clear();
    relaxing_ = true;
  }
  bool finished() const { return finished_; }

  // Sets *slot to value now and restores the old value on abort.
  template <typename T>
  void Assign(T* slot, T value) {
    T old = std::move(*slot);
    *slot = std::move(value);
    OnAbort([slot, old = std::move(old)]() mutable { *slot = std::move(old); });
  }

  void Commit() {
    finished_ = true;
    abort_.clear();
    auto commits = std::move(commit_);
    for (auto& fn : commits) fn();
    auto after = std::move(after_);
    for (auto& fn : after) fn();
  }
  void Abort() {
    finished_ = true;
    commit_.clear();
    after_.clear();
    auto aborts = std::move(abort_);
    for (auto it = aborts.rbegin(); it != aborts.rend(); ++it) (*it)();
  }

 private:
  std::vector<std::function<void()>> abort_;
  std::vector<std::function<void()>> commit_;
  std::vector<std::function<void()>> after_;
  std::vector<Node*> perm_roots_;
  bool relaxing_ = true;
  bool finished_ = false;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_TRANSACTION_H_
