// How a server learns that it should stop: SIGINT and SIGTERM set a flag that
// every loop reads, a grace timer bounds the wait for in-flight responses, and
// threads are started so that the signal reaches the main thread. Split out
// of server.hpp so that http.cpp can ask stop_requested() without the rest.
#pragma once

#include <pthread.h>

#include <csignal>
#include <thread>
#include <utility>

namespace common {

// SIGPIPE is ignored (a vanished client must not kill the server).
// SIGINT and SIGTERM set the stop flag; they are installed without SA_RESTART,
// so a thread blocked in accept, recv or poll returns with EINTR and can look
// at the flag. They also start a grace timer: if the server has not finished
// its in-flight responses within kStopGraceSeconds, it exits 0 anyway.
// The timer also bounds a gap: a signal that arrives after a loop checked
// stop_requested() but before it blocked in accept() or recv() interrupts
// nothing, and the stop waits for the timer. accept() and recv() have no
// variant that changes the signal mask as it blocks, so the blocking
// chapters (01-04) keep that gap and rely on the timer (closing it there
// takes a signalfd or a self-pipe watched by poll: the event loops' tool);
// the event loops (06-09) close it with block_stop_signals and pselect, ppoll
// or epoll_pwait. The busy loop (05) never blocks, so it has no gap and
// blocks no signal: it sees the flag at the top of its next round.
inline constexpr unsigned kStopGraceSeconds = 2;
void install_stop_handlers();
bool stop_requested() noexcept;

// For a loop that waits in pselect, ppoll or epoll_pwait: blocks SIGINT and
// SIGTERM in the calling thread and returns the mask to wait with, which
// lets them in. A stop signal is then delivered only while the loop waits,
// and ends the wait with EINTR; one that comes while the loop works stays
// pending until the next wait, which returns at once. Between the check of
// stop_requested() and the wait, nothing can be lost. In such a thread,
// stop_requested() also counts a stop signal that is pending (sigpending),
// so that a response made meanwhile already closes the connection.
sigset_t block_stop_signals();

// For a thread that blocks the stop signals for good: from now on its
// stop_requested() also counts a stop signal that is pending, sent but not
// yet handled by the thread it was delivered to. (Chapter 11's loops make
// responses in threads of their own: one made just after a SIGTERM must say
// "Connection: close" even while the main thread has not yet run the handler.)
void note_stop_signals_blocked() noexcept;

// Starts a thread with SIGINT and SIGTERM blocked. The kernel delivers a
// process-directed signal to any thread that does not block it; this way it
// reaches the main thread, the one blocked in accept() that must react.
template <typename F>
std::thread start_thread_without_stop_signals(F&& body) {
    sigset_t stop_signals, previous;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, &previous);  // the new thread inherits this mask
    try {
        std::thread thread([run = std::forward<F>(body)]() mutable {
            note_stop_signals_blocked();
            run();
        });
        pthread_sigmask(SIG_SETMASK, &previous, nullptr);
        return thread;
    } catch (...) {
        pthread_sigmask(SIG_SETMASK, &previous, nullptr);
        throw;
    }
}

}  // namespace common
