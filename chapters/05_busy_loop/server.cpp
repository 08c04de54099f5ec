// Chapter 05: one thread, non-blocking sockets, and a loop that never waits.
//
// Model:   the listener and every client socket are O_NONBLOCK. One thread
//          goes round and round: try accept(), then for each client try to
//          send what is pending or recv() what has arrived. A call that would
//          block fails with EAGAIN instead, and the loop moves on.
// Shows:   per-connection state as plain data (input parser, output buffer,
//          close-after-output), partial writes kept for later; one thread
//          serves many clients, and a silent one no longer stops the others.
// Cannot:  rest. With nothing to do, the loop asks every socket again and
//          again: /stats counts the reads that returned EAGAIN, and the server
//          burns a whole CPU while idle. Handlers run inline, so a slow one
//          (/sleep, /work) still stalls everyone. Chapter 06 lets the kernel
//          say which sockets are ready (select).
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

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
    // ANCHOR: output_state
    std::string output{};        // response bytes not yet accepted by the kernel
    std::size_t output_sent = 0;
    http::GeneratedBody rest{};  // the last response's generated body, still to be made
    bool close_after_output = false;
    common::LingeringClose linger{};  // active once the last response is out
    bool closed = false;
    // ANCHOR_END: output_state
    common::Stats::ConnectionScope counted;
};
// ANCHOR_END: connection

struct LoopCounters {
    std::atomic<std::uint64_t>& eagain_reads;
    std::atomic<std::uint64_t>& loop_iterations;
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
        // ANCHOR: partial_write
        ssize_t n = ::send(c.fd.get(), c.output.data() + c.output_sent, c.output.size() - c.output_sent, MSG_NOSIGNAL);
        if (n >= 0) {
            c.output_sent += static_cast<std::size_t>(n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return false;
        // ANCHOR_END: partial_write
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

// ANCHOR: try_read
// One attempt to read. EAGAIN means "nothing yet": we count it and move on.
void try_read(Connection& c, common::Stats& stats, LoopCounters& counters) {
    char buffer[16 * 1024];
    // ANCHOR: recv_eagain
    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
    if (n > 0) {
        c.parser.feed({buffer, static_cast<std::size_t>(n)});
        answer_and_send(c, stats);  // often the answer fits in the socket buffer at once
    } else if (n == 0) {
        c.closed = true;  // the client closed its side
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        counters.eagain_reads.fetch_add(1, std::memory_order_relaxed);  // the spin, counted
        // ANCHOR_END: recv_eagain
    } else if (errno != EINTR) {
        common::log_client_error("recv", c.peer, errno);
        c.closed = true;
    }
}
// ANCHOR_END: try_read

void accept_pending_clients(int listener, std::vector<std::unique_ptr<Connection>>& connections,
                            common::Stats& stats, std::chrono::steady_clock::time_point& accept_resume) {
    for (;;) {
        // ANCHOR: accept_nonblock
        common::Accepted client = common::accept_client(listener, SOCK_NONBLOCK);
        if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
        if (client.status == common::Accepted::pause) {  // short of memory or descriptors: not now
            accept_resume = std::chrono::steady_clock::now() + common::kAcceptPause;
            return;
        }
        if (client.status != common::Accepted::accepted) continue;
        // ANCHOR_END: accept_nonblock
        connections.push_back(std::make_unique<Connection>(Connection{
            .fd = std::move(client.fd), .peer = std::move(client.peer), .counted = stats.track_connection()}));
    }
}

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Chapter 05: one thread, non-blocking sockets, a loop that never waits.");
    try {
        common::install_stop_handlers();
        common::Stats stats("busy_loop");
        // ANCHOR: nonblocking_listener
        LoopCounters counters{stats.add_counter("eagain_reads"), stats.add_counter("loop_iterations")};
        common::UniqueFd listener = common::listen_tcp(config, SOCK_NONBLOCK);
        // ANCHOR_END: nonblocking_listener
        common::announce_listening(listener.get());
        std::vector<std::unique_ptr<Connection>> connections;
        // After accept said "not now" (Accepted::pause), no accept4 before this:
        // the loop spins anyway, but it must not spin on a failing accept4.
        std::chrono::steady_clock::time_point accept_resume{};

        // ANCHOR: loop
        for (;;) {
            counters.loop_iterations.fetch_add(1, std::memory_order_relaxed);
            const bool stopping = common::stop_requested();
            if (!stopping && std::chrono::steady_clock::now() >= accept_resume)
                accept_pending_clients(listener.get(), connections, stats, accept_resume);
            // ANCHOR: round
            for (auto& c : connections) {
                if (c->linger.active()) c->closed = c->linger.discard(c->fd.get());  // until the client closes
                else if (!c->output.empty()) answer_and_send(*c, stats);  // finish a response before reading more
                else if (stopping) start_lingering(*c);                   // idle at shutdown: nothing to finish
                else try_read(*c, stats, counters);
            }
            // ANCHOR_END: round
            std::erase_if(connections, [](const auto& c) { return c->closed; });
            if (stopping && connections.empty()) break;
            // No sleep, no wait: straight back to the top. This is the problem.
        }
        // ANCHOR_END: loop
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
