// Chapter 08: one thread, epoll(7) in level-triggered mode, and a small state
// machine per connection.
//
// Model:   the interest list lives in the kernel. Each socket is registered
//          once (EPOLL_CTL_ADD) with a pointer to its Connection, changed only
//          when the connection changes state (EPOLL_CTL_MOD: reading <->
//          writing), and leaves the list when it is closed. epoll_wait()
//          returns just the sockets that are ready, each with its pointer.
// Shows:   work per wake-up grows with the number of ready sockets, not with
//          the number of connections: 10,000 idle clients cost an active one
//          nothing (the README measures it against chapter 07). Level-
//          triggered: a socket that still has unread bytes is reported again
//          on the next call, so one recv() per event is enough.
// Cannot:  run a slow handler without stalling everyone (handlers still run
//          inline, in the only thread), or use a second core. Chapter 09:
//          edge-triggered mode and timers; chapter 10: a worker pool.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <unordered_map>

#include "error.hpp"
#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

// ANCHOR: state
// What a connection waits for; each state is one epoll interest.
//   reading: no output pending; waits for bytes           -> EPOLLIN
//   writing: a response is partly sent; waits for room    -> EPOLLOUT
//            (and reads nothing more until it has gone)
//   closed:  done; leaves the interest list when its fd is closed
enum class State { reading, writing, closed };
// ANCHOR_END: state

// ANCHOR: connection
// Everything the loop needs to know about one client, as plain data.
struct Connection {
    common::UniqueFd fd;
    std::string peer;
    http::RequestParser parser;
    std::string output;          // response bytes not yet accepted by the kernel
    std::size_t output_sent = 0;
    bool close_after_output = false;
    State state = State::reading;  // what epoll watches for now
    common::Stats::ConnectionScope counted;
};
// ANCHOR_END: connection

struct LoopCounters {
    std::atomic<std::uint64_t>& wakeups;  // epoll_wait() returned
    std::atomic<std::uint64_t>& events;   // ready sockets it reported, in all
};

// A client may pipeline many requests and never read: answering pauses at
// this much pending output, so we never hold more than about one response.
constexpr std::size_t kOutputHighWater = 256 * 1024;

// Turns complete requests into response bytes (handlers run right here, in
// the loop's only thread), until the output reaches the high-water mark.
// The other requests wait in the parser until the output is sent.
void answer_requests(Connection& c, common::Stats& stats) {
    while (!c.close_after_output && c.output.size() < kOutputHighWater) {
        http::ParseResult r = c.parser.next();
        if (r.kind == http::ParseResult::need_more) return;
        http::Reply reply = http::respond(r, stats);
        c.output += reply.bytes;
        c.close_after_output = reply.close_after;  // then ignore anything pipelined after it
    }
}

// ANCHOR: flush_output
// Sends as much pending output as the kernel takes now. Returns true when
// all of it is gone. EAGAIN: the send buffer is full, try again when epoll
// says there is room.
bool flush_output(Connection& c) {
    while (c.output_sent < c.output.size()) {
        ssize_t n = ::send(c.fd.get(), c.output.data() + c.output_sent, c.output.size() - c.output_sent, MSG_NOSIGNAL);
        if (n >= 0) {
            c.output_sent += static_cast<std::size_t>(n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return false;
        } else if (errno != EINTR) {
            common::log_client_error("send", c.peer, errno);
            c.state = State::closed;
            return false;
        }
    }
    c.output.clear();
    c.output_sent = 0;
    if (c.close_after_output) {
        common::shutdown_and_drain(c.fd.get());
        c.state = State::closed;
    }
    return true;
}
// ANCHOR_END: flush_output

// Sends pending output; once all of it is gone, answers the requests that
// waited behind it and sends those, until the kernel takes no more or no
// complete request is left.
void answer_and_send(Connection& c, common::Stats& stats) {
    while (c.state != State::closed && flush_output(c)) {
        answer_requests(c, stats);
        if (c.output.empty()) return;
    }
}

// ANCHOR: read_ready
// epoll said the socket is readable: one recv() will not block. If more
// bytes are left in the socket, level-triggered epoll reports it again.
void read_ready(Connection& c, common::Stats& stats) {
    char buffer[16 * 1024];
    ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
    if (n > 0) {
        c.parser.feed({buffer, static_cast<std::size_t>(n)});
        answer_and_send(c, stats);  // often the answer fits in the socket buffer at once
    } else if (n == 0) {
        c.state = State::closed;  // the client closed its side
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        common::log_client_error("recv", c.peer, errno);
        c.state = State::closed;
    }
}
// ANCHOR_END: read_ready

// ANCHOR: transition
// After an event: the state the connection's buffers call for. When it
// differs from the state epoll watches, one epoll_ctl(MOD) tells the kernel;
// a round where nothing changes makes no system call for interest at all.
void update_state(int epoll_fd, Connection& c) {
    if (c.state == State::closed) return;
    const State next = c.output.empty() ? State::reading : State::writing;
    if (next == c.state) return;
    epoll_event interest{};
    interest.events = next == State::reading ? EPOLLIN : EPOLLOUT;
    interest.data.ptr = &c;
    if (::epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c.fd.get(), &interest) < 0) {
        common::log_client_error("epoll_ctl(EPOLL_CTL_MOD, fd " + std::to_string(c.fd.get()) + ")", c.peer, errno);
        c.state = State::closed;
        return;
    }
    c.state = next;
}
// ANCHOR_END: transition

using Connections = std::unordered_map<Connection*, std::unique_ptr<Connection>>;

// ANCHOR: accept
// A new client joins the interest list once, in state reading, carrying a
// pointer to its Connection: epoll hands that pointer back with each event.
void accept_pending_clients(int listener, int epoll_fd, Connections& connections, common::Stats& stats) {
    for (;;) {
        common::Accepted client = common::accept_client(listener, SOCK_NONBLOCK);
        if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
        if (client.status != common::Accepted::accepted) continue;
        auto c = std::make_unique<Connection>(Connection{std::move(client.fd), std::move(client.peer), {}, {}, 0,
                                                         false, State::reading, stats.track_connection()});
        epoll_event interest{};
        interest.events = EPOLLIN;
        interest.data.ptr = c.get();
        if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd.get(), &interest) < 0) {
            // ENOMEM or ENOSPC (fs.epoll.max_user_watches): this client cannot
            // be watched, so it is let go; the others are unaffected.
            common::log_client_error("epoll_ctl(EPOLL_CTL_ADD, fd " + std::to_string(c->fd.get()) + ")", c->peer,
                                     errno);
            continue;
        }
        Connection* key = c.get();
        connections.emplace(key, std::move(c));
    }
}
// ANCHOR_END: accept

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Chapter 08: one thread, epoll(7) level-triggered, a state machine per connection.");
    try {
        common::install_stop_handlers();
        common::Stats stats("epoll");
        LoopCounters counters{stats.add_counter("wakeups"), stats.add_counter("events")};
        common::UniqueFd listener = common::listen_tcp(config, SOCK_NONBLOCK);
        // ANCHOR: setup
        common::UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
        if (!epoll) common::throw_errno("epoll_create1");
        epoll_event listener_interest{};
        listener_interest.events = EPOLLIN;
        listener_interest.data.ptr = nullptr;  // the listener: the one entry without a Connection
        if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, listener.get(), &listener_interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_ADD, listener fd " + std::to_string(listener.get()) + ")");
        // ANCHOR_END: setup
        common::announce_listening(listener.get());
        Connections connections;
        bool listening = true;  // is the listener in the interest list? (removed once, at stop)

        // ANCHOR: loop
        for (;;) {
            // ANCHOR: stop
            if (common::stop_requested()) {  // finish responses in progress; idle clients are done
                if (listening) {
                    if (::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, listener.get(), nullptr) < 0)
                        common::throw_errno("epoll_ctl(EPOLL_CTL_DEL, listener fd " + std::to_string(listener.get()) +
                                            ")");
                    listening = false;
                }
                std::erase_if(connections, [](const auto& entry) { return entry.second->output.empty(); });
                if (connections.empty()) break;
            }
            // ANCHOR_END: stop
            // ANCHOR: wait
            // No interest to build: the kernel keeps it. Only ready sockets come back.
            std::array<epoll_event, 256> events;
            const int ready =
                ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), -1);  // sleeps
            // ANCHOR_END: wait
            counters.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("epoll_wait");
            }
            counters.events.fetch_add(static_cast<std::uint64_t>(ready), std::memory_order_relaxed);
            // ANCHOR: dispatch
            // Visit only the ready ones: O(ready) per wake-up, however many are connected.
            for (int i = 0; i < ready; ++i) {
                if (events[i].data.ptr == nullptr) {
                    accept_pending_clients(listener.get(), epoll.get(), connections, stats);
                    continue;
                }
                Connection& c = *static_cast<Connection*>(events[i].data.ptr);
                // EPOLLHUP and EPOLLERR come unasked: recv or send then reports them.
                if (c.state == State::writing) answer_and_send(c, stats);
                else read_ready(c, stats);
                update_state(epoll.get(), c);
                // Closing the fd also removes it from the interest list (no other
                // descriptor refers to the socket), and epoll returns each fd at
                // most once per call: no later event of this round points here.
                if (c.state == State::closed) connections.erase(&c);
            }
            // ANCHOR_END: dispatch
        }
        // ANCHOR_END: loop
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
