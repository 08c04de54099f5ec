#include "stop.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "error.hpp"

namespace common {

namespace {

// Written by a signal handler, read by every thread: volatile sig_atomic_t
// would do for one thread, but across threads it must be a lock-free atomic
// (which is also safe to touch in a signal handler).
std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free);

// Set in a thread that called block_stop_signals: there, a stop signal may
// be pending, not yet handled.
thread_local bool t_stop_signals_blocked = false;

void on_stop_signal(int) {
    if (!g_stop.exchange(true)) alarm(kStopGraceSeconds);  // alarm(2) is async-signal-safe
}

void on_grace_expired(int) {
    static const char message[] = "stop: grace period expired, exiting with responses unfinished\n";
    ssize_t ignored = ::write(STDERR_FILENO, message, sizeof message - 1);
    (void)ignored;
    _exit(0);
}

void install(int signo, void (*handler)(int)) {
    struct sigaction action{};
    action.sa_handler = handler;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: blocked calls must return EINTR
    if (::sigaction(signo, &action, nullptr) != 0) throw_errno("sigaction " + std::string(strsignal(signo)));
}

}  // namespace

void install_stop_handlers() {
    install(SIGPIPE, SIG_IGN);
    install(SIGINT, on_stop_signal);
    install(SIGTERM, on_stop_signal);
    install(SIGALRM, on_grace_expired);
}

bool stop_requested() noexcept {
    if (g_stop.load()) return true;
    if (!t_stop_signals_blocked) return false;
    // A loop that blocks the stop signals outside its wait may be running a
    // handler when one comes: it is pending until the next wait, but the
    // response being made should already say "Connection: close".
    sigset_t pending;
    if (::sigpending(&pending) != 0) return false;
    return sigismember(&pending, SIGINT) == 1 || sigismember(&pending, SIGTERM) == 1;
}

void note_stop_signals_blocked() noexcept { t_stop_signals_blocked = true; }

sigset_t block_stop_signals() {
    sigset_t stop_signals, previous;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    // pthread_sigmask returns the error instead of setting errno.
    if (const int error = ::pthread_sigmask(SIG_BLOCK, &stop_signals, &previous); error != 0) {
        errno = error;
        throw_errno("pthread_sigmask SIG_BLOCK SIGINT SIGTERM");
    }
    t_stop_signals_blocked = true;
    sigdelset(&previous, SIGINT);
    sigdelset(&previous, SIGTERM);
    return previous;  // as before, with the stop signals let in
}

}  // namespace common
