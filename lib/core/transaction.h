// Transaction: the all-or-nothing unit of every graph change.
//
// Each step of a change records how to undo itself (abort) and what to finish once every
// step has succeeded (commit). Abort actions run in reverse order, so a half-done change
// unwinds exactly; a transaction destroyed without Commit aborts.
#ifndef LIBBLOCK_CORE_TRANSACTION_H_
#define LIBBLOCK_CORE_TRANSACTION_H_

#include <functional>
#include <utility>
#include <vector>

namespace libblock {

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
  }
  void Abort() {
    finished_ = true;
    commit_.clear();
    auto aborts = std::move(abort_);
    for (auto it = aborts.rbegin(); it != aborts.rend(); ++it) (*it)();
  }

 private:
  std::vector<std::function<void()>> abort_;
  std::vector<std::function<void()>> commit_;
  bool finished_ = false;
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_TRANSACTION_H_
