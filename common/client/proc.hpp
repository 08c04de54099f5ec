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
// Seconds the tree's threads were runnable: on a CPU or waiting in a run
// queue for one (/proc/.../schedstat). A thread that never sleeps is runnable
// all the time, however busy the machine; a sleeping one is not at all.
double runnable_seconds(pid_t pid);
// Seconds the tree's live threads spent on a CPU, to the nanosecond
// (schedstat); cpu_seconds counts in clock ticks, too coarse for a request.
double on_cpu_seconds(pid_t pid);
long thread_count(pid_t pid);   // of this process only
long rss_kib(pid_t pid);        // resident memory, of this process only
long peak_rss_kib(pid_t pid);   // the most resident memory it ever had (VmHWM), of this process only
long vm_kib(pid_t pid);         // virtual memory, of this process only
// Proportional set size: resident memory with each shared page divided among
// the processes sharing it, so a fork's copy-on-write pages are not counted
// once per child. From /proc/PID/smaps_rollup; -1 if unavailable.
long pss_kib(pid_t pid);
// The sockets a process holds (its /proc/PID/fd entries that are sockets).
long socket_count(pid_t pid);
long open_fd_count(pid_t pid);
long zombie_children(pid_t pid);  // children that exited and were not reaped
// How many threads of pid's process tree are blocked in nanosleep right now
// (each is a /sleep handler), and whether any is.
int threads_in_nanosleep(pid_t pid);
bool sleeping_in_nanosleep(pid_t pid);

}  // namespace common::proc
