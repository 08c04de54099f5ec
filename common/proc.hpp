// What /proc says about a process and its descendants: CPU time, threads,
// memory, descriptors. Tests and the tour read these instead of guessing.
#pragma once

#include <sys/types.h>

#include <vector>

namespace common::proc {

// The process and all its descendants (chapter 02's children, for example).
std::vector<pid_t> process_tree(pid_t pid);
// User + system time of the process tree: all threads, live descendants, and
// children that exited and were reaped.
double cpu_seconds(pid_t pid);
long thread_count(pid_t pid);   // of this process only
long rss_kib(pid_t pid);        // resident memory, of this process only
long vm_kib(pid_t pid);         // virtual memory, of this process only
long open_fd_count(pid_t pid);
long zombie_children(pid_t pid);  // children that exited and were not reaped
// True if a thread in pid's process tree is blocked in nanosleep (a /sleep handler).
bool sleeping_in_nanosleep(pid_t pid);

}  // namespace common::proc
