// LAB BEGIN
// Lab 05: the busy loop rests when a round found nothing to do (solution).
// LAB SKELETON
//> // Lab 05: the busy loop rests when a round found nothing to do (your task: see README.md).
// LAB END
//
// Task:    with --idle-sleep-us N, a round of the loop that accepted nothing,
//          read nothing and wrote nothing ends with a sleep of N microseconds,
//          so an idle server no longer burns a whole CPU.
// Shows:   the classic "sleep a little" workaround for a polling loop, and its
//          price: a request that arrives during the sleep waits for it to end.
//          select, poll and epoll (chapters 06-08) need no such guess: the
//          kernel wakes the thread exactly when a socket is ready.
//
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
#include <thread>
#include <vector>

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
};

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

// One attempt to read. EAGAIN means "nothing yet": we count it and move on.
// Returns false only then: bytes, end of stream and errors are all news.
bool try_read(Connection& c, common::Stats& stats, LoopCounters& counters) {
    char buffer[16 * 1024];
    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
    if (n > 0) {
        c.parser.feed({buffer, static_cast<std::size_t>(n)});
        answer_and_send(c, stats);  // often the answer fits in the socket buffer at once
    } else if (n == 0) {
        c.closed = true;  // the client closed its side
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        counters.eagain_reads.fetch_add(1, std::memory_order_relaxed);  // the spin, counted
        return false;
    } else if (errno != EINTR) {
        common::log_client_error("recv", c.peer, errno);
        c.closed = true;
    }
    return true;
}

// Returns true if anyone was accepted.
bool accept_pending_clients(int listener, std::vector<std::unique_ptr<Connection>>& connections,
                            common::Stats& stats, std::chrono::steady_clock::time_point& accept_resume) {
    bool accepted = false;
    for (;;) {
        common::Accepted client = common::accept_client(listener, SOCK_NONBLOCK);
        if (client.status == common::Accepted::would_block) return accepted;  // nobody else is waiting
        if (client.status == common::Accepted::pause) {  // short of memory or descriptors: not now
            accept_resume = std::chrono::steady_clock::now() + common::kAcceptPause;
            return accepted;
        }
        if (client.status != common::Accepted::accepted) continue;
        connections.push_back(std::make_unique<Connection>(Connection{
            .fd = std::move(client.fd), .peer = std::move(client.peer), .counted = stats.track_connection()}));
        accepted = true;
    }
}

}  // namespace

int main(int argc, char** argv) {
    long idle_sleep_us = 1000;  // how long a round with nothing to do rests; 0 = spin as in chapter 05
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Lab 05: the busy loop, resting when a round finds nothing to do.",
        {{"--idle-sleep-us", "N", "sleep N microseconds after a round with nothing to do, 0 = never",
          &idle_sleep_us, 0, 1'000'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("busy_loop");
        LoopCounters counters{stats.add_counter("eagain_reads"), stats.add_counter("loop_iterations")};
        common::UniqueFd listener = common::listen_tcp(config, SOCK_NONBLOCK);
        common::announce_listening(listener.get());
        std::vector<std::unique_ptr<Connection>> connections;
        // After accept said "not now" (Accepted::pause), no accept4 before this:
        // the loop spins anyway, but it must not spin on a failing accept4.
        std::chrono::steady_clock::time_point accept_resume{};

        for (;;) {
            counters.loop_iterations.fetch_add(1, std::memory_order_relaxed);
            const bool stopping = common::stop_requested();
            // LAB BEGIN
            bool did_work = false;  // did this round accept, read or write anything?
            if (!stopping && std::chrono::steady_clock::now() >= accept_resume)
                did_work = accept_pending_clients(listener.get(), connections, stats, accept_resume);
            // LAB SKELETON
            //> // TODO(lab 05): remember whether this round did anything, in a bool
            //> // that starts false. accept_pending_clients returns true if it accepted someone.
            //> if (!stopping && std::chrono::steady_clock::now() >= accept_resume)
            //>     accept_pending_clients(listener.get(), connections, stats, accept_resume);
            // LAB END
            for (auto& c : connections) {
                if (c->linger.active()) {
                    c->closed = c->linger.discard(c->fd.get());  // until the client closes
                } else if (!c->output.empty()) {
                    // LAB BEGIN
                    // true: all of it went out. false: the kernel's send buffer is
                    // full, and resting gives it time to drain.
                    did_work |= flush_output(*c);  // finish a response before reading more
                    // LAB SKELETON
                    //> flush_output(*c);  // finish a response before reading more
                    //> // TODO(lab 05): flush_output returns true when the whole response went out: that is work.
                    // LAB END
                    if (!c->closed && c->output.empty()) answer_and_send(*c, stats);  // requests that waited behind it
                } else if (try_read(*c, stats, counters)) {
                    // LAB BEGIN
                    did_work = true;  // bytes, end of stream or an error: something happened
                    // LAB SKELETON
                    //> // TODO(lab 05): try_read found something (bytes, end of stream or an error): that is work.
                    // LAB END
                } else if (stopping) {
                    // Idle at shutdown. (We read first: a request may have arrived
                    // while the loop slept, and it deserves its response.)
                    start_lingering(*c);
                }
            }
            std::erase_if(connections, [](const auto& c) { return c->closed; });
            if (stopping && connections.empty()) break;
            // LAB BEGIN
            // Every socket said EAGAIN: rest before asking them all again. A request
            // that arrives meanwhile waits for the sleep to end: the price of guessing.
            if (!did_work && idle_sleep_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(idle_sleep_us));
            // LAB SKELETON
            //> // No sleep, no wait: straight back to the top. This is the problem.
            //> // TODO(lab 05): if this round did nothing and --idle-sleep-us is above 0
            //> // (idle_sleep_us > 0), sleep that many microseconds before the next round
            //> // (std::this_thread::sleep_for and std::chrono::microseconds).
            // LAB END
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
