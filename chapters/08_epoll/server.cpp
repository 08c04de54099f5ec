// Chapter 08: one thread, epoll(7) in level-triggered mode, and a small state
// machine per connection.
//
// Model:   the interest list lives in the kernel. Each socket is registered
//          once (EPOLL_CTL_ADD) with a tag naming it, changed only when the
//          connection changes state (EPOLL_CTL_MOD: reading <-> writing), and
//          leaves the list when it is closed. epoll_wait() returns just the
//          sockets that are ready, each with its tag. The loop is one object
//          (EventLoop): its state, and a member function for each thing it does.
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

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <initializer_list>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "error.hpp"
#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;

// ANCHOR: state
// What a connection waits for; each state is one epoll interest.
//   reading: no output pending; waits for bytes           -> EPOLLIN
//            (or, lingering, for the client's end of stream)
//   writing: a response is partly sent; waits for room    -> EPOLLOUT
//            (and reads nothing more until it has gone)
//   closed:  done; leaves the interest list when its fd is closed
enum class State { reading, writing, closed };
// ANCHOR_END: state

// ANCHOR: tags
// Each entry of the interest list carries 64 bits of ours, handed back with
// every report: what the descriptor is (a kind, in the top byte) and, for a
// connection, its id. An id rather than a pointer: whatever names a
// connection can be looked up and found gone, never left dangling.
using ConnectionId = std::uint64_t;
enum class Kind : std::uint8_t { listener, connection };

constexpr std::uint64_t tag(Kind kind, ConnectionId id = 0) {
    return std::uint64_t{static_cast<std::uint8_t>(kind)} << 56 | id;
}
constexpr Kind kind_of(std::uint64_t tag) {
    return static_cast<Kind>(tag >> 56);
}
constexpr ConnectionId id_of(std::uint64_t tag) {
    return tag & ((std::uint64_t{1} << 56) - 1);
}
// ANCHOR_END: tags

// ANCHOR: connection
// Everything the loop needs to know about one client, as plain data.
struct Connection {
    ConnectionId id = 0;
    common::UniqueFd fd;
    std::string peer;
    http::RequestParser parser{};
    std::string output{};  // response bytes not yet accepted by the kernel
    std::size_t output_sent = 0;
    http::GeneratedBody rest{};  // the last response's generated body, still to be made
    bool close_after_output = false;
    State state = State::reading;     // what epoll watches for now
    common::LingeringClose linger{};  // active once the last response is out (then it reads)
    common::Stats::ConnectionScope counted;
};
// ANCHOR_END: connection

// ANCHOR: linger_queue
// Connections in a lingering close, oldest first. Every one waits the same
// time (common::kLingerTimeout), so the order they began in is the order of
// their deadlines: the front is the next to expire, and epoll_wait's timeout.
// An id whose connection closed meanwhile stays until its turn, and is skipped.
struct LingerQueue {
    struct Entry {
        ConnectionId id;
        std::chrono::steady_clock::time_point deadline;
    };
    std::deque<Entry> entries;

    void add(ConnectionId id, std::chrono::steady_clock::time_point deadline) { entries.push_back({id, deadline}); }
    // ms until the front's deadline, rounded up, or -1 for none; while
    // stopping, no more than common::kStopRecheck (see LingeringClose::over).
    int wait_ms(bool stopping) const {
        long long ms = -1;
        if (!entries.empty())
            ms = std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(
                                            entries.front().deadline - std::chrono::steady_clock::now())
                                            .count());
        if (stopping && (ms < 0 || ms > common::kStopRecheck.count())) ms = common::kStopRecheck.count();
        return static_cast<int>(ms);
    }
};
// ANCHOR_END: linger_queue

struct LoopCounters {
    std::atomic<std::uint64_t>& wakeups;  // epoll_wait() returned
    std::atomic<std::uint64_t>& events;   // ready sockets it reported, in all
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
    if (!c.linger.start(c.fd.get())) c.state = State::closed;  // nothing to wait for
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
    if (c.close_after_output && c.rest.done()) start_lingering(c);
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

// The loop: the interest list, the connections by id, and what it does with them.
class EventLoop {
public:
    EventLoop(common::UniqueFd listener, common::Stats& stats)
        : stats_(stats),
          counters_{stats.add_counter("wakeups"), stats.add_counter("events")},
          listener_(std::move(listener)),
          epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
        // ANCHOR: setup
        if (!epoll_) common::throw_errno("epoll_create1");
        epoll_event interest{};
        interest.events = EPOLLIN;
        interest.data.u64 = tag(Kind::listener);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_ADD, listener fd " + std::to_string(listener_.get()) + ")");
        // ANCHOR_END: setup
    }

    int listener() const { return listener_.get(); }

    // ANCHOR: loop
    // Until a stop is requested and the responses in progress are out.
    void run() {
        // The stop signals get in only while the loop waits (stop.hpp): one that
        // comes after the stop check below waits for the next wait, which it ends.
        const sigset_t wait_mask = common::block_stop_signals();
        for (;;) {
            if (common::stop_requested() && wind_down()) return;
            resume_accepting_if_due();
            // ANCHOR: wait
            // No interest to build: the kernel keeps it. Only ready sockets come back.
            std::array<epoll_event, 256> events;
            // Sleeps until a socket is ready, the first lingering deadline or the end of an accept pause.
            const int ready = ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                            first_deadline_ms(), &wait_mask);
            // ANCHOR_END: wait
            counters_.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("epoll_pwait");
            }
            counters_.events.fetch_add(static_cast<std::uint64_t>(ready), std::memory_order_relaxed);
            // ANCHOR: dispatch
            // Visit only the ready ones: O(ready) per wake-up, however many are connected.
            for (int i = 0; i < ready; ++i) {
                switch (kind_of(events[i].data.u64)) {
                    case Kind::listener:
                        if (listening_) accept_clients();
                        break;
                    case Kind::connection:
                        // An id no longer in the table is skipped: nothing here
                        // names a closed connection yet, but later chapters'
                        // workers and timers will.
                        if (auto it = connections_.find(id_of(events[i].data.u64)); it != connections_.end())
                            serve(it->second);
                        break;
                }
            }
            // ANCHOR_END: dispatch
            expire_lingering();
        }
    }
    // ANCHOR_END: loop

private:
    // ANCHOR: accept
    // A new client joins the interest list once, in state reading, tagged
    // with its id: epoll hands the tag back with each event.
    void accept_clients() {
        for (;;) {
            common::Accepted client = common::accept_client(listener_.get(), SOCK_NONBLOCK);
            if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
            if (client.status == common::Accepted::pause) {  // short of memory or descriptors: not now
                pause_accepting();
                return;
            }
            if (client.status != common::Accepted::accepted) continue;
            const ConnectionId id = ++last_id_;
            epoll_event interest{};
            interest.events = EPOLLIN;
            interest.data.u64 = tag(Kind::connection, id);
            if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, client.fd.get(), &interest) < 0) {
                // ENOMEM or ENOSPC (fs.epoll.max_user_watches): this client cannot
                // be watched, so it is let go; the others are unaffected.
                common::log_client_error("epoll_ctl(EPOLL_CTL_ADD, fd " + std::to_string(client.fd.get()) + ")",
                                         client.peer, errno);
                continue;
            }
            connections_.emplace(id, Connection{.id = id,
                                                .fd = std::move(client.fd),
                                                .peer = std::move(client.peer),
                                                .counted = stats_.track_connection()});
        }
    }
    // ANCHOR_END: accept

    // ANCHOR: accept_pause
    // accept said "not now" (Accepted::pause): the system is short of memory
    // or descriptors. The client is still queued and the listener readable,
    // so level-triggered epoll would report it on every wait: a spin of
    // failing accept4 calls. The listener stays registered but asks for no
    // events until accept_resume_ (the wait's timeout includes it). EPOLL_CTL_MOD
    // keeps the kernel's entry, so resuming allocates nothing; DEL and a new
    // ADD could fail for want of the very memory that ran short.
    void pause_accepting() {
        set_listener_events(0);
        accept_resume_ = SteadyClock::now() + common::kAcceptPause;
    }

    // The pause is over: the listener asks for events again (unless a stop has
    // taken it out of the interest list meanwhile).
    void resume_accepting_if_due() {
        if (!accept_resume_ || !listening_ || SteadyClock::now() < *accept_resume_) return;
        accept_resume_.reset();
        set_listener_events(EPOLLIN);  // clients still queued make the next wait report it at once
    }

    // ms until the accept pause ends, rounded up, or -1 for none.
    int accept_pause_ms() const {
        if (!accept_resume_ || !listening_) return -1;
        const auto left = *accept_resume_ - SteadyClock::now();
        return static_cast<int>(std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }

    void set_listener_events(std::uint32_t events) {
        epoll_event interest{};
        interest.events = events;
        interest.data.u64 = tag(Kind::listener);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_MOD, listener fd " + std::to_string(listener_.get()) + ")");
    }
    // ANCHOR_END: accept_pause

    // ANCHOR: serve
    // One report: do what the connection's state waits for. EPOLLHUP and
    // EPOLLERR come unasked; recv or send then reports them.
    void serve(Connection& c) {
        const bool was_lingering = c.linger.active();
        if (was_lingering) {
            if (c.linger.discard(c.fd.get())) c.state = State::closed;  // the client closed too
        } else if (c.state == State::writing) {
            answer_and_send(c, stats_);
        } else {
            read_ready(c, stats_);
        }
        if (c.linger.active() && !was_lingering) lingering_.add(c.id, c.linger.deadline());
        update_interest(c);
        if (c.state == State::closed) forget(c);
    }
    // ANCHOR_END: serve

    // ANCHOR: transition
    // After an event: the state the connection's buffers call for. When it
    // differs from the state epoll watches, one epoll_ctl(MOD) tells the kernel;
    // a round where nothing changes makes no system call for interest at all.
    void update_interest(Connection& c) {
        if (c.state == State::closed) return;
        const State next = c.output.empty() ? State::reading : State::writing;
        if (next == c.state) return;
        epoll_event interest{};
        interest.events = next == State::reading ? EPOLLIN : EPOLLOUT;
        interest.data.u64 = tag(Kind::connection, c.id);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &interest) < 0) {
            common::log_client_error("epoll_ctl(EPOLL_CTL_MOD, fd " + std::to_string(c.fd.get()) + ")", c.peer, errno);
            c.state = State::closed;
            return;
        }
        c.state = next;
    }
    // ANCHOR_END: transition

    // ANCHOR: expire_lingering
    // Closes the lingering connections whose client took too long to close.
    void expire_lingering() {
        const auto now = std::chrono::steady_clock::now();
        while (!lingering_.entries.empty() && lingering_.entries.front().deadline <= now) {
            if (auto it = connections_.find(lingering_.entries.front().id); it != connections_.end()) forget(it->second);
            lingering_.entries.pop_front();
        }
    }
    // ANCHOR_END: expire_lingering

    // epoll_wait's timeout: the first lingering deadline or the end of an
    // accept pause (-1: none).
    int first_deadline_ms() const {
        int first = -1;
        for (const int ms : {lingering_.wait_ms(common::stop_requested()), accept_pause_ms()})
            if (ms >= 0 && (first < 0 || ms < first)) first = ms;
        return first;
    }

    // Closes and forgets a connection (its fd leaves the interest list as it closes).
    void forget(Connection& c) { connections_.erase(c.id); }

    // ANCHOR: stop
    // A stop was requested: accept nobody more, let the responses in progress
    // finish, and close the others, lingering where anything is still in
    // flight. True when none is left.
    bool wind_down() {
        if (listening_) {
            if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr) < 0)
                common::throw_errno("epoll_ctl(EPOLL_CTL_DEL, listener fd " + std::to_string(listener_.get()) + ")");
            listening_ = false;
        }
        const auto now = std::chrono::steady_clock::now();
        std::vector<Connection*> done;
        for (auto& [id, c] : connections_) {
            if (c.linger.active()) {
                if (c.linger.over(c.fd.get(), now)) done.push_back(&c);
            } else if (c.output.empty()) {
                start_lingering(c);
                if (c.state == State::closed) done.push_back(&c);
                else lingering_.add(c.id, c.linger.deadline());  // its interest is EPOLLIN already
            }
        }
        for (Connection* c : done) forget(*c);
        return connections_.empty();
    }
    // ANCHOR_END: stop

    common::Stats& stats_;
    LoopCounters counters_;
    common::UniqueFd listener_;
    common::UniqueFd epoll_;
    bool listening_ = true;  // is the listener in the interest list? (removed once, at stop)
    std::optional<SteadyClock::time_point> accept_resume_;  // during an accept pause: when it ends
    ConnectionId last_id_ = 0;
    std::unordered_map<ConnectionId, Connection> connections_;
    LingerQueue lingering_;
};

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Chapter 08: one thread, epoll(7) level-triggered, a state machine per connection.");
    try {
        common::install_stop_handlers();
        common::Stats stats("epoll");
        EventLoop loop(common::listen_tcp(config, SOCK_NONBLOCK), stats);
        common::announce_listening(loop.listener());
        loop.run();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
