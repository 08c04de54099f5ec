// Chapter 06: one thread, and select(2) to wait until a socket is ready.
//
// Model:   the same non-blocking sockets and per-connection state as chapter
//          05, but before touching any socket the loop asks the kernel, with
//          select(), which ones are ready: the listener and clients to read,
//          and clients with output pending to write. With nothing ready, the
//          thread sleeps in select() instead of spinning.
// Shows:   readiness: one call waits on many sockets; write interest only
//          while output is pending (otherwise a writable socket would wake us
//          all the time); /stats counts the wake-ups, which stay flat while idle.
// Cannot:  watch a descriptor numbered FD_SETSIZE (1024) or more: an fd_set is
//          a fixed bitmap, and FD_SET past its end corrupts memory. Such
//          clients are refused (503). Each call also copies and scans the whole
//          set, so the cost grows with the number of connections. Handlers
//          still run inline: a slow one stalls everyone. Chapter 07: poll(2).
#include <sys/select.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <vector>

#include "error.hpp"
#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

// ANCHOR: connection
// Everything the loop needs to know about one client, as plain data.
struct Connection {
    common::UniqueFd fd;
    std::string peer;
    http::RequestParser parser{};
    std::string output{};        // response bytes not yet accepted by the kernel
    std::size_t output_sent = 0;
    http::GeneratedBody rest{};  // the last response's generated body, still to be made
    bool close_after_output = false;
    common::LingeringClose linger{};  // active once the last response is out
    bool closed = false;
    common::Stats::ConnectionScope counted;
};
// ANCHOR_END: connection

struct LoopCounters {
    std::atomic<std::uint64_t>& wakeups;           // select() returned
    std::atomic<std::uint64_t>& refused_fd_setsize; // clients we could not watch
};

// A client may pipeline many requests, or ask for a huge body, and never
// read: answering pauses at this much pending output, and a generated body
// (/bytes) is made only up to it, so a connection holds about this much.
constexpr std::size_t kOutputHighWater = 256 * 1024;

// Turns complete requests into response bytes (handlers run right here, in
// the loop's only thread), until the output reaches the high-water mark.
// The other requests wait in the parser until the output is sent.
void answer_requests(Connection& c, common::Stats& stats) {
    while (c.output.size() < kOutputHighWater) {
        if (!c.rest.done()) {  // a big body is made piece by piece, as the output drains
            c.rest.append_to(c.output, kOutputHighWater - c.output.size());
            continue;
        }
        if (c.close_after_output) return;  // the last response: ignore anything pipelined after it
        http::ParseResult r = c.parser.next();
        if (r.kind == http::ParseResult::need_more) return;
        http::Reply reply = http::respond(r, stats);
        c.output += reply.bytes;
        c.rest = reply.rest;
        c.close_after_output = reply.close_after;
    }
}

// The last response is out: shut our side down, and read and throw away what
// the client still sends until it closes too. Closing at once could reset the
// connection, and the reset would destroy the response on its way.
void start_lingering(Connection& c) {
    if (!c.linger.start(c.fd.get())) c.closed = true;  // nothing to wait for
}

// ANCHOR: flush_output
// Sends as much pending output as the kernel takes now. Returns true when
// all of it is gone. EAGAIN: the send buffer is full, try again next round.
bool flush_output(Connection& c) {
    while (c.output_sent < c.output.size()) {
        ssize_t n = ::send(c.fd.get(), c.output.data() + c.output_sent, c.output.size() - c.output_sent, MSG_NOSIGNAL);
        if (n >= 0) {
            c.output_sent += static_cast<std::size_t>(n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return false;
        } else if (errno != EINTR) {
            common::log_client_error("send", c.peer, errno);
            c.closed = true;
            return false;
        }
    }
    c.output.clear();
    c.output_sent = 0;
    if (c.close_after_output && c.rest.done()) start_lingering(c);
    return true;
}
// ANCHOR_END: flush_output

// Sends pending output; once all of it is gone, answers the requests that
// waited behind it and sends those, until the kernel takes no more or no
// complete request is left.
void answer_and_send(Connection& c, common::Stats& stats) {
    while (!c.closed && flush_output(c)) {
        answer_requests(c, stats);
        if (c.output.empty()) return;
    }
}

// ANCHOR: read_ready
// select() said the socket is readable: one recv() will not block.
void read_ready(Connection& c, common::Stats& stats) {
    if (c.linger.active()) {
        c.closed = c.linger.discard(c.fd.get());  // until the client closes
        return;
    }
    char buffer[16 * 1024];
    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
    if (n > 0) {
        c.parser.feed({buffer, static_cast<std::size_t>(n)});
        answer_and_send(c, stats);  // often the answer fits in the socket buffer at once
    } else if (n == 0) {
        c.closed = true;  // the client closed its side
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        common::log_client_error("recv", c.peer, errno);
        c.closed = true;
    }
}
// ANCHOR_END: read_ready

// How long the loop may sleep: until the first lingering client's deadline
// or the end of an accept pause (-1: no deadline), and while stopping no
// more than common::kStopRecheck.
int wait_ms(const std::vector<std::unique_ptr<Connection>>& connections, bool stopping,
            std::chrono::steady_clock::time_point accept_resume) {
    std::optional<std::chrono::steady_clock::time_point> first;
    if (!stopping && accept_resume != std::chrono::steady_clock::time_point{}) first = accept_resume;
    for (const auto& c : connections)
        if (c->linger.active() && (!first || c->linger.deadline() < *first)) first = c->linger.deadline();
    long long ms = -1;
    if (first) ms = std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(
                                               *first - std::chrono::steady_clock::now()).count());
    if (stopping && (ms < 0 || ms > common::kStopRecheck.count())) ms = common::kStopRecheck.count();
    return static_cast<int>(ms);
}

// ANCHOR: accept
void accept_pending_clients(int listener, std::vector<std::unique_ptr<Connection>>& connections,
                            common::Stats& stats, LoopCounters& counters,
                            std::chrono::steady_clock::time_point& accept_resume) {
    for (;;) {
        common::Accepted client = common::accept_client(listener, SOCK_NONBLOCK);
        if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
        if (client.status == common::Accepted::pause) {  // short of memory or descriptors: not now
            accept_resume = std::chrono::steady_clock::now() + common::kAcceptPause;
            return;
        }
        if (client.status != common::Accepted::accepted) continue;
        // ANCHOR: fd_setsize_check
        if (client.fd.get() >= FD_SETSIZE) {
            // FD_SET would write past the end of the fd_set: refuse, never watch.
            // (A fresh socket's send buffer is empty, so the short 503 fits.)
            counters.refused_fd_setsize.fetch_add(1, std::memory_order_relaxed);
            // ANCHOR_END: fd_setsize_check
            common::log_line("select: fd " + std::to_string(client.fd.get()) + " of " + client.peer +
                             " is not below FD_SETSIZE (" + std::to_string(FD_SETSIZE) + "); refused");
            common::send_all(client.fd.get(), http::serialize(http::error_response(503, "too many connections"), false),
                             client.peer);
            common::shutdown_and_drain(client.fd.get());
            continue;
        }
        connections.push_back(std::make_unique<Connection>(Connection{
            .fd = std::move(client.fd), .peer = std::move(client.peer), .counted = stats.track_connection()}));
    }
}
// ANCHOR_END: accept

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config =
        common::parse_command_line(argc, argv, "Chapter 06: one thread, select(2) waits for ready sockets.");
    try {
        common::install_stop_handlers();
        common::Stats stats("select");
        LoopCounters counters{stats.add_counter("wakeups"), stats.add_counter("refused_fd_setsize")};
        common::UniqueFd listener = common::listen_tcp(config, SOCK_NONBLOCK);
        common::announce_listening(listener.get());
        std::vector<std::unique_ptr<Connection>> connections;
        // After accept said "not now" (Accepted::pause), the listener stays out
        // of the interest until then: it is still readable, and would wake us at
        // once. The zero time point: no pause.
        std::chrono::steady_clock::time_point accept_resume{};

        // The stop signals get in only while the loop waits (stop.hpp): one that
        // comes after the stop check below waits for the next wait, which it ends.
        const sigset_t wait_mask = common::block_stop_signals();
        // ANCHOR: loop
        for (;;) {
            const bool stopping = common::stop_requested();
            const bool accepting = !stopping && std::chrono::steady_clock::now() >= accept_resume;
            if (accepting) accept_resume = {};  // no pause (any more): no deadline for wait_ms
            // ANCHOR: linger_deadlines
            // Lingering clients that took too long are closed; at a stop, the
            // responses in progress finish and idle clients are done.
            for (auto& c : connections) {
                if (c->linger.active()) c->closed = c->linger.over(c->fd.get(), std::chrono::steady_clock::now());
                else if (stopping && c->output.empty()) start_lingering(*c);
            }
            std::erase_if(connections, [](const auto& c) { return c->closed; });
            if (stopping && connections.empty()) break;
            // ANCHOR_END: linger_deadlines
            // Interest: the listener and idle clients to read, clients with
            // output pending to write. select() overwrites the sets, so they
            // are rebuilt on every round.
            // ANCHOR: interest
            fd_set readable, writable;
            FD_ZERO(&readable);
            FD_ZERO(&writable);
            int max_fd = -1;
            if (accepting) {
                FD_SET(listener.get(), &readable);
                max_fd = listener.get();
            }
            // ANCHOR: interest_clients
            for (auto& c : connections) {
                FD_SET(c->fd.get(), c->output.empty() ? &readable : &writable);
                max_fd = std::max(max_fd, c->fd.get());
            }
            // ANCHOR_END: interest_clients
            // ANCHOR_END: interest
            // ANCHOR: select_call
            std::optional<timeval> timeout;  // none: sleep until a socket is ready
            if (const int ms = wait_ms(connections, stopping, accept_resume); ms >= 0)
                timeout = timeval{ms / 1000, ms % 1000 * 1000};
            std::optional<timespec> wait_for;  // pselect counts in nanoseconds
            if (timeout) wait_for = timespec{timeout->tv_sec, timeout->tv_usec * 1000};
            const int ready =
                ::pselect(max_fd + 1, &readable, &writable, nullptr, wait_for ? &*wait_for : nullptr, &wait_mask);
            counters.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("pselect");
            }
            // ANCHOR_END: select_call
            // ANCHOR: dispatch
            // ANCHOR: dispatch_clients
            // New clients join the sets from the next round on (they were not
            // in this round's sets, so FD_ISSET is false for them below).
            if (accepting && FD_ISSET(listener.get(), &readable))
                accept_pending_clients(listener.get(), connections, stats, counters, accept_resume);
            for (auto& c : connections) {
                const int fd = c->fd.get();
                if (FD_ISSET(fd, &writable)) answer_and_send(*c, stats);
                else if (FD_ISSET(fd, &readable)) read_ready(*c, stats);
            }
            // ANCHOR_END: dispatch_clients
            std::erase_if(connections, [](const auto& c) { return c->closed; });
            // ANCHOR_END: dispatch
        }
        // ANCHOR_END: loop
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
