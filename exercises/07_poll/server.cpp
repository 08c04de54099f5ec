// Lab 07: a deadline for the whole request, against slowloris (your task: see README.md).
//
// Task:    with --request-timeout MS, a request must arrive whole within MS
//          milliseconds of its first byte. Otherwise the client gets 408 and
//          is closed, even if it keeps trickling bytes: lab 01's SO_RCVTIMEO
//          restarted with every byte and could not stop that. A keep-alive
//          client with no request begun has no deadline.
// Shows:   poll's timeout (milliseconds until the earliest deadline, -1 when
//          there is none): the loop itself keeps time, for every client at once.
//
// Chapter 07: one thread, and poll(2) to wait until a socket is ready.
//
// Model:   chapter 06 with poll() in place of select(): the interest is a
//          vector of struct pollfd (descriptor, events wanted, events
//          returned) instead of two fixed bitmaps.
// Shows:   no FD_SETSIZE: any descriptor number can be watched, so one thread
//          holds thousands of connections (as many as RLIMIT_NOFILE allows).
// Cannot:  avoid O(n) work per wake-up: every call passes the whole vector to
//          the kernel, which checks every socket, and we scan every entry for
//          the few that are ready. With many idle connections each request
//          pays for all of them (the README measures it). Handlers still run
//          inline. Chapter 08: epoll keeps the interest list in the kernel.
#include <poll.h>
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
    // TODO(lab 07): add when the first byte of the request in progress arrived:
    // a std::optional<std::chrono::steady_clock::time_point>, empty between requests.
};

struct LoopCounters {
    std::atomic<std::uint64_t>& wakeups;  // poll() returned
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
        if (c.close_after_output) break;  // the last response: ignore anything pipelined after it
        http::ParseResult r = c.parser.next();
        if (r.kind == http::ParseResult::need_more) break;
        // TODO(lab 07): a whole request was parsed: clear request_started.
        http::Reply reply = http::respond(r, stats);
        c.output += reply.bytes;
        c.rest = reply.rest;
        c.close_after_output = reply.close_after;
    }
    // TODO(lab 07): if part of a request is waiting (c.parser.buffered() > 0) and
    // its clock has not started, start it: request_started = steady_clock::now().
}

// The last response is out: shut our side down, and read and throw away what
// the client still sends until it closes too. Closing at once could reset the
// connection, and the reset would destroy the response on its way.
void start_lingering(Connection& c) {
    if (!c.linger.start(c.fd.get())) c.closed = true;  // nothing to wait for
}

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

// Sends pending output; once all of it is gone, answers the requests that
// waited behind it and sends those, until the kernel takes no more or no
// complete request is left.
void answer_and_send(Connection& c, common::Stats& stats) {
    while (!c.closed && flush_output(c)) {
        answer_requests(c, stats);
        if (c.output.empty()) return;
    }
}

// poll() said the socket is readable: one recv() will not block.
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

void accept_pending_clients(int listener, std::vector<std::unique_ptr<Connection>>& connections,
                            common::Stats& stats, std::chrono::steady_clock::time_point& accept_resume) {
    for (;;) {
        common::Accepted client = common::accept_client(listener, SOCK_NONBLOCK);
        if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
        if (client.status == common::Accepted::pause) {  // short of memory or descriptors: not now
            accept_resume = std::chrono::steady_clock::now() + common::kAcceptPause;
            return;
        }
        if (client.status != common::Accepted::accepted) continue;
        connections.push_back(std::make_unique<Connection>(Connection{
            .fd = std::move(client.fd), .peer = std::move(client.peer), .counted = stats.track_connection()}));
    }
}

}  // namespace

int main(int argc, char** argv) {
    long request_timeout_ms = 0;  // 0: a request may take forever, as in chapter 07
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Lab 07: poll(2) with a deadline for every request.",
        {{"--request-timeout", "MS", "answer 408 when a request is not whole MS ms after its first byte, 0 = never",
          &request_timeout_ms, 0, 3'600'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("poll");
        LoopCounters counters{stats.add_counter("wakeups")};
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
        for (;;) {
            const bool stopping = common::stop_requested();
            const bool accepting = !stopping && std::chrono::steady_clock::now() >= accept_resume;
            if (accepting) accept_resume = {};  // no pause (any more): no deadline for wait_ms
            // Lingering clients that took too long are closed; at a stop, the
            // responses in progress finish and idle clients are done.
            for (auto& c : connections) {
                if (c->linger.active()) c->closed = c->linger.over(c->fd.get(), std::chrono::steady_clock::now());
                else if (stopping && c->output.empty()) start_lingering(*c);
            }
            std::erase_if(connections, [](const auto& c) { return c->closed; });
            if (stopping && connections.empty()) break;
            // Interest: the listener and idle clients to read, clients with
            // output pending to write. Entry i + 1 belongs to connections[i].
            std::vector<pollfd> interest;
            interest.reserve(connections.size() + 1);
            interest.push_back({accepting ? listener.get() : -1, POLLIN, 0});  // fd -1: ignored by poll
            for (auto& c : connections)
                interest.push_back({c->fd.get(), static_cast<short>(c->output.empty() ? POLLIN : POLLOUT), 0});
            int timeout_ms = wait_ms(connections, stopping, accept_resume);  // -1: none
            // TODO(lab 07): with --request-timeout (request_timeout_ms > 0), poll() must
            // also wake at the earliest deadline (request_started + the timeout) among
            // clients with a request in progress: in milliseconds, rounded up and never
            // negative. If timeout_ms is -1 (none) or later, put that time in it instead.
            const timespec timeout{timeout_ms / 1000, timeout_ms % 1000 * 1'000'000L};  // ppoll counts in nanoseconds
            const int ready = ::ppoll(interest.data(), interest.size(), timeout_ms < 0 ? nullptr : &timeout, &wait_mask);
            counters.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("ppoll");
            }
            // Scan every entry for the few that are ready: O(n) per wake-up.
            // (New clients are accepted after the scan, so indexes still match.)
            for (std::size_t i = 0; i < connections.size(); ++i) {
                Connection& c = *connections[i];
                const short revents = interest[i + 1].revents;
                // POLLHUP and POLLERR come unasked: recv or send then reports them.
                if (revents & POLLOUT) answer_and_send(c, stats);
                else if (revents & (POLLIN | POLLHUP | POLLERR)) read_ready(c, stats);
            }
            if (interest[0].revents & POLLIN)
                accept_pending_clients(listener.get(), connections, stats, accept_resume);
            // TODO(lab 07): with --request-timeout, every client whose request_started
            // is at least the timeout ago, and with no output pending, gets a 408
            // (http::error_response(408, ...), http::serialize(..., false)) with
            // close_after_output set; flush_output sends it and closes.
            std::erase_if(connections, [](const auto& c) { return c->closed; });
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
