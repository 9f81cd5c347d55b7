// TaskGroup: fans a request out into sub-requests that run concurrently (one per cluster, one
// per child, ...) and joins them with a first-error result, as a format's mapping engine needs.
//
//   TaskGroup group;
//   for (...) group.Start(ReadCluster(...));      // each runs until its first suspension
//   absl::Status st = co_await group.Join();      // all finished; the first error, or OK
//
// Every started task runs to completion: an error does not cancel the others (a sub-request
// half-way through a write cannot be abandoned), it only makes failed() true so that tasks
// not yet started can be skipped and running ones may stop early. Join waits for all of them,
// so no coroutine outlives the group; destroying a group with tasks still running is a bug
// and aborts. With `max_parallel`, StartWhenFree waits for a free slot before starting.
// Single-threaded: the tasks run on the loop of the coroutine that starts them.
#ifndef LIBBLOCK_CORE_TASK_GROUP_H_
#define LIBBLOCK_CORE_TASK_GROUP_H_

#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "core/co_sync.h"
#include "core/event_loop.h"
#include "core/task.h"

namespace libblock {

class TaskGroup {
 public:
  // `max_parallel` bounds how many tasks StartWhenFree lets run at once (0: no bound).
  explicit TaskGroup(int max_parallel = 0) : max_parallel_(max_parallel) {}
  ~TaskGroup() {
    if (running_ != 0) std::abort();  // a group must be joined before it goes away
  }
  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;

  // Starts `task` on the current loop now.
  void Start(Task<absl::Status> task) {
    ++running_;
    ++started_;
    EventLoop::Current()->Spawn(Run(std::move(task)));
  }

  // Waits for a free slot (with max_parallel), then starts `task`.
  Task<void> StartWhenFree(Task<absl::Status> task) {
    while (max_parallel_ > 0 && running_ >= max_parallel_) co_await changed_.Wait();
    Start(std::move(task));
  }

  // Waits until every started task finished. Returns the first error in completion order.
  Task<absl::Status> Join() {
    while (running_ > 0) co_await changed_.Wait();
    co_return status_;
  }

  bool failed() const { return !status_.ok(); }
  const absl::Status& status() const { return status_; }
  int running() const { return running_; }
  int started() const { return started_; }

 private:
  Task<void> Run(Task<absl::Status> task) {
    absl::Status st = co_await task;
    if (status_.ok() && !st.ok()) status_ = std::move(st);
    --running_;
    changed_.WakeAll();
  }

  int max_parallel_;
  int running_ = 0;
  int started_ = 0;
  absl::Status status_;
  CoQueue changed_;  // a task finished
};

}  // namespace libblock

#endif  // LIBBLOCK_CORE_TASK_GROUP_H_
