// Lab 02: a request counter shared by every process (your task: see README.md).
//
// Model:   chapter 02's server: the parent accepts and forks a child per client.
// Task:    /stats shows "requests_all_processes", the number of requests
//          answered by all children together, live and exact.
// Shows:   mmap(2) with MAP_SHARED | MAP_ANONYMOUS made before fork: the one
//          kind of memory that fork shares instead of copying; a lock-free
//          std::atomic works across processes in it.
// Cannot:  share anything richer without care: a pointer into the parent's
//          private memory means nothing to a sibling, and a std::mutex is not
//          made for processes (that needs PTHREAD_PROCESS_SHARED). Threads
//          (chapter 03) share everything without asking.
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <system_error>

#include "error.hpp"
#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

// Requests answered by all processes together, shown in /stats as
// "requests_all_processes". /stats is answered by a child from its own Stats,
// so before each response the child copies the total into its own `shown`.
struct RequestsAllProcesses {
    std::atomic<std::uint64_t>& total;  // every process adds to this one
    std::atomic<std::uint64_t>& shown;  // this process's counter in Stats
};

// Serves one client until it closes, asks to close, or sends something we
// cannot parse. The same blocking code as chapter 01: here it blocks only
// the child process it runs in.
void serve_client(int fd, const std::string& peer, common::Stats& stats, RequestsAllProcesses& requests) {
    http::RequestParser parser;
    char buffer[16 * 1024];
    for (;;) {
        // Answer every complete request already received (pipelining) first.
        for (http::ParseResult r = parser.next(); r.kind != http::ParseResult::need_more; r = parser.next()) {
            // Counted before responding, so /stats includes its own request (as
            // "requests" does). fetch_add returns the total before ours.
            requests.shown.store(requests.total.fetch_add(1) + 1);
            http::Reply reply = http::respond(r, stats);
            if (!common::send_reply(fd, reply, peer)) return;
            if (reply.close_after) return;  // the caller closes, lingering (see server.hpp)
        }
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);  // blocks until bytes arrive
        if (n > 0) {
            parser.feed({buffer, static_cast<std::size_t>(n)});
        } else if (n == 0) {
            return;  // the client closed its side
        } else if (errno == EINTR) {
            if (common::stop_requested()) return;  // SIGTERM while we waited: stop here
        } else {
            common::log_client_error("recv", peer, errno);
            return;
        }
    }
}

// In this model a child is a connection: connections_open counts live children.
std::atomic<std::uint64_t>* g_live_children = nullptr;
// The SIGCHLD handler may only touch lock-free atomics (signal-safety(7)).
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// A child that exits stays a zombie until its parent collects its status.
// Reap every child that has exited (several SIGCHLDs may merge into one).
// Only async-signal-safe calls here; waitpid may clobber errno, so save it.
void on_sigchld(int) {
    const int saved_errno = errno;
    while (::waitpid(-1, nullptr, WNOHANG) > 0) g_live_children->fetch_sub(1);
    errno = saved_errno;
}

// Installs on_sigchld for as long as it lives, counting into live_children.
// main() declares it after the Stats it counts into, so the handler is gone
// before they are: a child that exits while main() returns must not touch a
// destroyed counter (UndefinedBehaviorSanitizer caught that once).
class SigchldHandler {
public:
    explicit SigchldHandler(std::atomic<std::uint64_t>& live_children) {
        g_live_children = &live_children;
        struct sigaction action{};
        action.sa_handler = on_sigchld;
        sigemptyset(&action.sa_mask);
        // No SA_RESTART, like the stop signals: accept() returns EINTR and we loop.
        action.sa_flags = SA_NOCLDSTOP;
        if (::sigaction(SIGCHLD, &action, nullptr) != 0) common::throw_errno("sigaction SIGCHLD");
    }
    ~SigchldHandler() {
        struct sigaction action{};
        action.sa_handler = SIG_DFL;  // a child that exits later is reaped by whoever reaps us
        sigemptyset(&action.sa_mask);
        if (::sigaction(SIGCHLD, &action, nullptr) != 0)
            common::log_line("sigaction SIGCHLD SIG_DFL: " + std::string(std::strerror(errno)));
    }
    SigchldHandler(const SigchldHandler&) = delete;
    SigchldHandler& operator=(const SigchldHandler&) = delete;
};

// Runs in the child: serve one client, then exit without returning to the
// parent's accept loop.
[[noreturn]] void run_child(common::UniqueFd listener, common::Accepted client, pid_t parent,
                            common::Stats& stats, RequestsAllProcesses& requests) {
    listener.reset();  // the child never accepts; only the parent holds the listener
    // If the parent goes away (SIGTERM), we get SIGTERM too and finish up,
    // instead of living on as an orphan with an idle client.
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || ::getppid() != parent) _exit(0);
    serve_client(client.fd.get(), client.peer, stats, requests);
    common::linger_close(client.fd.get());  // so that no reset cuts the last response short
    client.fd.reset();
    _exit(0);  // not exit(): the parent's atexit handlers and stdio buffers are not ours to run
}

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config =
        common::parse_command_line(argc, argv, "Lab 02: the forking server with a request counter in shared memory.");
    try {
        common::install_stop_handlers();
        common::Stats stats("fork");
        // TODO(lab 02): this total lives in the parent's private memory. fork()
        // gives each child a copy, so every child counts from 0 and its count
        // vanishes when it exits. Create the total in memory mapped with
        // mmap(MAP_SHARED | MAP_ANONYMOUS) instead, here, before the first fork.
        std::atomic<std::uint64_t> private_total{0};
        RequestsAllProcesses requests{private_total, stats.add_counter("requests_all_processes")};
        const SigchldHandler reaper(stats.connections_open);  // after stats: destroyed first
        common::UniqueFd listener = common::listen_tcp(config);
        common::announce_listening(listener.get());
        const pid_t parent = ::getpid();

        while (!common::stop_requested()) {
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR (SIGCHLD too), aborted, shed, paused
            stats.connections_total.fetch_add(1);
            g_live_children->fetch_add(1);  // before fork: the SIGCHLD handler may run right after it
            const pid_t pid = ::fork();
            if (pid == 0) run_child(std::move(listener), std::move(client), parent, stats, requests);
            if (pid < 0) {  // out of processes or memory: tell this client, keep serving others
                g_live_children->fetch_sub(1);
                common::log_client_error("fork for", client.peer, errno);
                common::send_all(client.fd.get(), http::serialize(http::error_response(503, "cannot fork"), false),
                                 client.peer);
                common::shutdown_and_drain(client.fd.get());
            }
            // The parent closes its copy of the socket (at the end of this
            // iteration); the connection lives on in the child.
        }
        // Children learn of our exit through PR_SET_PDEATHSIG and finish their
        // responses on their own.
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
