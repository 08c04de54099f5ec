// LAB BEGIN
// Lab 09: a second timeout, the request's deadline (solution).
// LAB SKELETON
//> // Lab 09: a second timeout, the request's deadline (your task: see README.md).
// LAB END
//
// Task:    with --request-timeout MS, a request must arrive whole within MS
//          milliseconds of its first byte; otherwise the client gets 408 and
//          is closed. More bytes do not move the deadline: the idle timer,
//          which every byte restarts, cannot stop a client that sends one byte
//          just before each idle deadline (slowloris). 0, the default: no
//          deadline, as in chapter 09.
// Shows:   the idle timer's trick works twice. Requests in progress all have
//          the same timeout, so a list in the order they began is in the order
//          of their deadlines: joining, leaving and finding the next to expire
//          cost O(1), and epoll_wait sleeps until the earlier of two fronts.
//          Like the idle timer's, the list names connections by id.
//
// Chapter 09: one thread, epoll(7) in edge-triggered mode, and a timer that
// closes idle connections.
//
// Model:   each socket is registered once, for everything it will need
//          (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET), and never
//          changed: epoll reports a socket when it changes (bytes arrive, room
//          appears, the peer closes), not while it stays ready. So each report
//          is served until the kernel says EAGAIN: read until EAGAIN, write
//          until EAGAIN. A connection that has more to do than its turn allows
//          waits on our own ready list. Idle connections sit in a list ordered
//          by their last activity; its front is the next to expire, and its
//          deadline is epoll_wait's timeout.
// Shows:   no epoll_ctl after the first (chapter 08 changed the interest on
//          every switch between reading and writing); timers that cost O(1)
//          per activity and nothing while asleep; the pitfalls of edge
//          triggering (bytes left unread are never reported again, nor is a
//          FIN or reset that came with the last bytes; one client could keep
//          the loop to itself) and how to avoid them.
// Cannot:  run a slow handler without stalling everyone (handlers still run
//          inline), or use a second core. Chapter 10: a worker pool.
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
#include <list>
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

// What a connection is doing. Unlike chapter 08, the state no longer decides
// the epoll interest (that is fixed): it decides what to do when epoll says
// something changed.
//   reading:   no output pending; read and answer until EAGAIN
//   writing:   a response is partly sent; send until EAGAIN, read nothing more
//   lingering: the last response is out and our side shut down; read and
//              discard until the client closes too (common::LingeringClose)
//   closed:    done; leaves the interest list when its fd is closed
enum class State { reading, writing, lingering, closed };

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

// The idle timer. Every connection has the same timeout, so the list ordered
// by last activity is also ordered by deadline: moving a connection to the
// back when it is active costs O(1), and the front is the next to expire.
struct IdleTimer {
    struct Entry {
        ConnectionId id;
        SteadyClock::time_point last_activity;
    };
    using Position = std::list<Entry>::iterator;

    std::chrono::milliseconds timeout;  // 0: never
    std::list<Entry> order;             // least recently active first

    Position add(ConnectionId id) { return order.insert(order.end(), Entry{id, SteadyClock::now()}); }
    void touch(Position p) {
        p->last_activity = SteadyClock::now();
        order.splice(order.end(), order, p);
    }
    void remove(Position p) { order.erase(p); }

    // epoll_wait's timeout: ms until the front's deadline, rounded up (waking
    // a little early would find nothing due and ask again), or -1 for none.
    int wait_ms() const {
        if (timeout.count() == 0 || order.empty()) return -1;
        const auto left = order.front().last_activity + timeout - SteadyClock::now();
        return static_cast<int>(std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }
    // The first connection whose deadline had passed at `now`, if any. Pass
    // the time epoll_wait returned, not the time after the round: a handler
    // that ran long must not expire a client whose bytes arrived meanwhile
    // and have not been looked at yet.
    std::optional<ConnectionId> first_expired(SteadyClock::time_point now) const {
        if (timeout.count() == 0 || order.empty() || order.front().last_activity + timeout > now) return std::nullopt;
        return order.front().id;
    }
};

// LAB BEGIN
// The request timer. A request must arrive whole within `timeout` of its
// first byte, and more bytes do not move that deadline: the idle timer,
// restarted by every byte, cannot stop a client that trickles (slowloris).
// All requests have the same timeout, so a list in the order they began is
// in the order of their deadlines too: a request joins at the back and
// leaves from wherever it is, both O(1), and the front expires first. When
// a connection joins and leaves is track_request's business (below).
struct RequestTimer {
    struct Entry {
        ConnectionId id;
        SteadyClock::time_point started;  // since when we wait for the rest of its request
    };
    using Position = std::list<Entry>::iterator;

    std::chrono::milliseconds timeout;  // 0: never
    std::list<Entry> order;             // by when we began to wait, oldest first

    Position add(ConnectionId id) { return order.insert(order.end(), Entry{id, SteadyClock::now()}); }
    void remove(Position p) { order.erase(p); }

    // As the idle timer's: ms until the front's deadline, rounded up (a
    // little early would find nothing due and spin at 0 ms), or -1 for none.
    int wait_ms() const {
        if (timeout.count() == 0 || order.empty()) return -1;
        const auto left = order.front().started + timeout - SteadyClock::now();
        return static_cast<int>(std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }
    // The first connection whose request deadline had passed at `now` (when
    // epoll_wait returned, as for the idle timer), if any.
    std::optional<ConnectionId> first_expired(SteadyClock::time_point now) const {
        if (timeout.count() == 0 || order.empty() || order.front().started + timeout > now) return std::nullopt;
        return order.front().id;
    }
};
// LAB SKELETON
//> // TODO(lab 09): a RequestTimer, beside IdleTimer and built the same way: the
//> // connections that wait for the rest of a request, as entries {id, since
//> // when}, in the order they began to wait. Define it here, before
//> // Connection, which keeps its place in the list.
// LAB END

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
    State state = State::reading;
    bool waiting_for_turn = false;        // on the loop's ready list: it has work left
    IdleTimer::Position idle_position{};  // its entry in the idle timer (until it lingers)
    common::LingeringClose linger{};
    // LAB BEGIN
    // For the request timer. With defaults, so that the initializer in
    // accept_clients stays as it is.
    bool awaiting_request = false;              // in the request list: we wait for the rest of a request
    RequestTimer::Position request_position{};  // its entry there
    // LAB SKELETON
    //> // TODO(lab 09): what the request timer needs to know about a connection:
    //> // whether it is in the request list, and where (a position, as
    //> // idle_position is in the idle timer). Give each a default value.
    // LAB END
    common::Stats::ConnectionScope counted;
};

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

struct LoopCounters {
    std::atomic<std::uint64_t>& wakeups;           // epoll_wait() returned
    std::atomic<std::uint64_t>& timer_wakeups;     // ...with no event, because the first deadline came
    std::atomic<std::uint64_t>& events;            // ready sockets it reported, in all
    std::atomic<std::uint64_t>& idle_closed;       // connections the idle timer closed
    std::atomic<std::uint64_t>& turns_deferred;    // a connection used its turn up and waited for the next round
    std::atomic<std::uint64_t>& request_timeouts;  // requests cut at their deadline (--request-timeout)
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
    c.state = c.linger.start(c.fd.get()) ? State::lingering : State::closed;  // closed: nothing to wait for
}

// Sends as much pending output as the kernel takes now. Returns true when
// all of it is gone. EAGAIN: the send buffer is full; epoll reports the
// socket again when there is room (a change, so edge-triggered sees it too).
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

// LAB BEGIN
// A connection is in the request list exactly while we wait for the rest of
// a request: part of one is buffered and no response is pending. Bytes
// behind a pending response may be whole requests, answered later, and
// meanwhile we wait for our output, not for the client. So a request's
// clock starts when we begin to wait for it: at its first byte, or, if it
// came in behind a response, once that response has gone.
//
// Call after each answer_requests, where requests become whole. Every whole
// request leaves a response pending and so leaves the list: when one read
// ends a request and begins the next, the next gets a clock of its own (once
// the response has gone), not the old one's.
void track_request(Connection& c, RequestTimer& requests) {
    if (requests.timeout.count() == 0) return;
    const bool awaiting = c.output.empty() && c.parser.buffered() > 0;
    if (awaiting == c.awaiting_request) return;  // the usual case: no change
    if (awaiting)
        c.request_position = requests.add(c.id);
    else
        requests.remove(c.request_position);
    c.awaiting_request = awaiting;
}

// The earlier of two epoll_wait timeouts. -1 means no deadline, so it is
// not the smaller one: std::min would sleep for ever as soon as either list
// is empty.
int sooner(int a_ms, int b_ms) {
    if (a_ms < 0) return b_ms;
    if (b_ms < 0) return a_ms;
    return std::min(a_ms, b_ms);
}

// Answers 408 to a client whose request missed its deadline, and closes.
// It has no output pending (it would not be in the list otherwise), so the
// 408 is all there is to send; if unread earlier answers still fill the
// send buffer, it goes with what fits.
void close_late_request(Connection& c) {
    c.output =
        http::serialize(http::error_response(408, "the request did not arrive within the request timeout"), false);
    c.close_after_output = true;
    if (flush_output(c)) return;  // sent: with close_after_output set, it now lingers
    common::shutdown_and_drain(c.fd.get());
    c.state = State::closed;
}

// LAB SKELETON
//> // TODO(lab 09): what drive needs to start and stop a request's clock (see
//> // its TODOs), and a 408 for a connection whose request misses its
//> // deadline. Define them here, before drive.
//>
// LAB END
// How many recv() calls one connection gets per turn. Reading until EAGAIN
// is a must with edge triggering, but a client that sends as fast as we read
// would then keep the loop to itself: after its turn it waits for the next
// round, on our own ready list, since epoll will not report it again.
// (--reads-per-turn; set once, before the loop starts.)
long reads_per_turn = 8;

enum class Turn { blocked, more_to_do };

// Runs the connection's state machine until the kernel says EAGAIN for what
// it needs next (then epoll reports the next change), or its turn is over.
// With `short_read_ends_turn`, a recv() that returns less than asked ends the
// turn as EAGAIN would (EventLoop::serve says when that is safe); it saves a
// recv() per request.
// LAB BEGIN
Turn drive(Connection& c, common::Stats& stats, RequestTimer& requests, bool short_read_ends_turn) {
// LAB SKELETON
//> // TODO(lab 09): give drive the request timer: a request's clock starts and
//> // stops here, where bytes reach the parser and requests are answered.
//> Turn drive(Connection& c, common::Stats& stats, bool short_read_ends_turn) {
// LAB END
    int reads = 0;
    bool drained = false;  // the last recv() returned less than asked
    for (;;) {
        if (c.state == State::closed) return Turn::blocked;
        if (c.state == State::writing) {
            if (!flush_output(c)) return Turn::blocked;  // EAGAIN (or an error closed it)
            if (c.state != State::writing) continue;     // the last response went: lingering (or closed)
            answer_requests(c, stats);  // requests that waited behind the output
            // LAB BEGIN
            track_request(c, requests);  // all answered and sent: a part request left starts its clock
            // LAB SKELETON
            //> // TODO(lab 09): once the output has gone, a part request left in the parser
            //> // starts its clock here (nothing else would: no report comes for bytes
            //> // already read).
            // LAB END
            if (c.output.empty()) c.state = State::reading;  // and read on: no report comes for bytes already here
            continue;
        }
        if (c.state == State::lingering) {
            if (c.linger.discard(c.fd.get())) c.state = State::closed;  // read until EAGAIN, or the client closed
            return Turn::blocked;
        }
        if (drained && short_read_ends_turn) return Turn::blocked;
        if (reads++ == reads_per_turn) return Turn::more_to_do;
        char buffer[16 * 1024];
        ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
        if (n > 0) {
            drained = static_cast<std::size_t>(n) < sizeof buffer;
            c.parser.feed({buffer, static_cast<std::size_t>(n)});
            answer_requests(c, stats);
            // LAB BEGIN
            track_request(c, requests);  // a request's first bytes start its clock; a whole request stops it
            // LAB SKELETON
            //> // TODO(lab 09): the first bytes of a request start its clock (the bytes
            //> // after them do not restart it); a whole request stops it. One read may
            //> // do both: the end of one request and the start of the next.
            // LAB END
            if (!c.output.empty()) c.state = State::writing;
        } else if (n == 0) {
            c.state = State::closed;  // the client closed its side
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return Turn::blocked;  // all read: the next bytes will be a change
        } else if (errno != EINTR) {
            common::log_client_error("recv", c.peer, errno);
            c.state = State::closed;
        }
    }
}

// Tells an idle client why it is closed if it had started a request (408),
// as chapter 01's lab does for SO_RCVTIMEO; otherwise just closes.
void close_idle(Connection& c) {
    if (c.output.empty() && c.parser.buffered() > 0) {
        c.output = http::serialize(http::error_response(408, "no data within the idle timeout"), false);
        c.close_after_output = true;
        if (flush_output(c)) return;  // the send buffer was empty: it fitted, and now it lingers
    }
    common::shutdown_and_drain(c.fd.get());
    c.state = State::closed;
}

// The loop: the interest list, the connections by id, the ready list, the
// idle timer and the request timer, and what it does with them.
class EventLoop {
public:
    EventLoop(common::UniqueFd listener, std::chrono::milliseconds idle_timeout,
              std::chrono::milliseconds request_timeout, common::Stats& stats)
        : stats_(stats),
          counters_{stats.add_counter("wakeups"),        stats.add_counter("timer_wakeups"),
                    stats.add_counter("events"),         stats.add_counter("idle_closed"),
                    stats.add_counter("turns_deferred"), stats.add_counter("request_timeouts")},
          listener_(std::move(listener)),
          epoll_(::epoll_create1(EPOLL_CLOEXEC)),
          // LAB BEGIN
          timer_{idle_timeout, {}},
          requests_{request_timeout, {}} {
          // LAB SKELETON
          //> timer_{idle_timeout, {}} {
        //> // TODO(lab 09): build the request timer (a member beside timer_) from
        //> // request_timeout (0 = off), as timer_ is built from idle_timeout. Then
        //> // drop the cast below: it only keeps the unused parameter from being
        //> // an error (-Werror) until you use it.
        //> static_cast<void>(request_timeout);
          // LAB END
        if (!epoll_) common::throw_errno("epoll_create1");
        epoll_event interest{};
        interest.events = EPOLLIN | EPOLLET;
        interest.data.u64 = tag(Kind::listener);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listener_.get(), &interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_ADD, listener fd " + std::to_string(listener_.get()) + ")");
    }

    int listener() const { return listener_.get(); }

    // Until a stop is requested and the responses in progress are out.
    void run() {
        // The stop signals get in only while the loop waits (stop.hpp): one that
        // comes after the stop check below waits for the next wait, which it ends.
        const sigset_t wait_mask = common::block_stop_signals();
        for (;;) {
            if (common::stop_requested() && wind_down()) return;
            resume_accepting_if_due();
            // Sleep until a socket changes or the first deadline (idle, lingering,
            // the end of an accept pause), but not at all while our ready list has work.
            std::array<epoll_event, 256> events;
            // LAB BEGIN
            // Two lists, two fronts: sleep until the earlier of the two deadlines.
            const int wait_ms = ready_list_.empty() ? sooner(first_deadline_ms(), requests_.wait_ms()) : 0;
            // LAB SKELETON
            //> // TODO(lab 09): with requests in progress, sleep no longer than until the
            //> // first request deadline either: the earlier of the two, where -1 means
            //> // "no deadline" (not "the smallest").
            //> const int wait_ms = ready_list_.empty() ? first_deadline_ms() : 0;
            // LAB END
            const int ready =
                ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()), wait_ms, &wait_mask);
            const SteadyClock::time_point woke = SteadyClock::now();
            counters_.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready == 0 && ready_list_.empty() && wait_ms >= 0)
                counters_.timer_wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("epoll_pwait");
            }
            counters_.events.fetch_add(static_cast<std::uint64_t>(ready), std::memory_order_relaxed);
            // The new reports first, then the connections that were waiting
            // for another turn: epoll may never report them again.
            std::size_t waiting = ready_list_.size();
            for (int i = 0; i < ready; ++i) {
                switch (kind_of(events[i].data.u64)) {
                    case Kind::listener:
                        if (listening_) accept_clients();
                        break;
                    case Kind::connection:
                        // An id no longer in the table is skipped (see forget).
                        if (auto it = connections_.find(id_of(events[i].data.u64));
                            it != connections_.end() && !it->second.waiting_for_turn)
                            serve(it->second, events[i].events);  // a waiting one gets its turn below
                        break;
                }
            }
            for (; waiting > 0; --waiting) {
                const ConnectionId id = ready_list_.front();
                ready_list_.pop_front();
                if (auto it = connections_.find(id); it != connections_.end()) {
                    it->second.waiting_for_turn = false;
                    serve(it->second, 0);  // if it still has more to do, it goes to the back of the line
                }
            }
            expire_idle(woke);
            expire_lingering(woke);
            // LAB BEGIN
            expire_requests(woke);
            // LAB SKELETON
            //> // TODO(lab 09): every connection whose request deadline has passed gets 408,
            //> // is closed and forgotten, and is counted in counters_.request_timeouts, as
            //> // expire_idle does for the idle timer (and with the same `woke`).
            // LAB END
        }
    }

private:
    // Edge-triggered listener: one report may stand for many clients, so
    // accept until EAGAIN. Each client is registered once, for everything it
    // will ever need, tagged with its id.
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
            // Bytes and room, and the end of the stream (RDHUP) and urgent
            // data (PRI) named apart from the bytes: see serve.
            interest.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET;  // for its whole life
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
                                                .idle_position = timer_.add(id),
                                                .counted = stats_.track_connection()});
        }
    }

    // ANCHOR: accept_pause
    // accept said "not now" (Accepted::pause): the system is short of memory
    // or descriptors, and trying again at once would fail again. Edge-
    // triggered epoll would not report the clients already queued again, but
    // every new one is an edge, and each would cost a failing accept4. So the
    // listener stays registered but asks for no events until accept_resume_
    // (the wait's timeout includes it). EPOLL_CTL_MOD keeps the kernel's entry,
    // so resuming allocates nothing; DEL and a new ADD could fail for want of
    // the very memory that ran short.
    void pause_accepting() {
        set_listener_events(0);
        accept_resume_ = SteadyClock::now() + common::kAcceptPause;
    }

    // The pause is over: the listener asks for events again (unless a stop has
    // taken it out of the interest list meanwhile).
    void resume_accepting_if_due() {
        if (!accept_resume_ || !listening_ || SteadyClock::now() < *accept_resume_) return;
        accept_resume_.reset();
        set_listener_events(EPOLLIN | EPOLLET);
        // The clients that came during the pause raised their edges while the
        // listener asked for nothing, and an edge that is gone is not raised
        // again: accept now, until EAGAIN, without waiting for a report. (This
        // MOD does look at the listener and queue a report if it is readable,
        // but an edge-triggered loop must not count on a report for a state
        // that has not changed.)
        accept_clients();
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

    // Gives a connection its turn, and keeps its place in line if it has more
    // to do. `events` is what epoll reported, 0 for a turn from the ready list.
    // (A report means the socket changed: bytes came, or room opened because
    // the client read. Either way it is not idle; nor is it after its turn,
    // which may have sent it an answer a slow handler took long to make.)
    void serve(Connection& c, std::uint32_t events) {
        // A short recv() says the receive queue was empty just then; bytes that
        // come later are a change, and epoll will report it. It does not say
        // that no end of stream, reset or urgent byte came with the bytes: a
        // FIN or RST queued behind them raises no later edge, and recv() stops
        // short at an urgent byte. The report names them (RDHUP, HUP, ERR,
        // PRI): then read on to EAGAIN or the end. So does a turn from the
        // ready list, whose reports were not looked at while it waited.
        const bool short_read_ends_turn = events != 0 && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI)) == 0;
        const bool was_lingering = c.linger.active();
        if (!was_lingering) timer_.touch(c.idle_position);
        // LAB BEGIN
        const Turn turn = drive(c, stats_, requests_, short_read_ends_turn);
        // LAB SKELETON
        //> const Turn turn = drive(c, stats_, short_read_ends_turn);
        // LAB END
        if (c.linger.active() && !was_lingering) now_lingering(c);
        if (c.state == State::closed) {
            forget(c);
            return;
        }
        if (!c.linger.active()) timer_.touch(c.idle_position);
        if (turn == Turn::more_to_do && !c.waiting_for_turn) {
            c.waiting_for_turn = true;
            ready_list_.push_back(c.id);
            counters_.turns_deferred.fetch_add(1, std::memory_order_relaxed);
        }
    }

    // Closes the connections whose idle deadline had passed at `now`, oldest first.
    void expire_idle(SteadyClock::time_point now) {
        while (std::optional<ConnectionId> id = timer_.first_expired(now)) {
            Connection& c = connections_.at(*id);
            counters_.idle_closed.fetch_add(1, std::memory_order_relaxed);
            close_idle(c);
            if (c.linger.active()) now_lingering(c);  // it was sent a 408
            if (c.state == State::closed) forget(c);
        }
    }

    // A connection that has just begun its lingering close leaves the idle
    // timer (its client may still be reading our last response) for the
    // linger queue, where it waits at most common::kLingerTimeout.
    void now_lingering(Connection& c) {
        timer_.remove(c.idle_position);
        lingering_.add(c.id, c.linger.deadline());
        // LAB BEGIN
        if (c.awaiting_request) requests_.remove(c.request_position);  // no request to wait for any more
        c.awaiting_request = false;
        // LAB SKELETON
        //> // TODO(lab 09): a connection that lingers waits for no request any more:
        //> // it leaves the request list too, if it is there.
        // LAB END
    }

    // Closes the lingering connections whose client took too long to close.
    void expire_lingering(SteadyClock::time_point now) {
        while (!lingering_.entries.empty() && lingering_.entries.front().deadline <= now) {
            if (auto it = connections_.find(lingering_.entries.front().id); it != connections_.end()) forget(it->second);
            lingering_.entries.pop_front();
        }
    }

    // epoll_wait's timeout: the first idle or lingering deadline or the end of
    // an accept pause (-1: none).
    int first_deadline_ms() const {
        int first = -1;
        for (const int ms : {timer_.wait_ms(), lingering_.wait_ms(common::stop_requested()), accept_pause_ms()})
            if (ms >= 0 && (first < 0 || ms < first)) first = ms;
        return first;
    }

    // LAB BEGIN
    // Answers 408 to the connections whose request deadline had passed at
    // `now`, oldest first, and closes them.
    void expire_requests(SteadyClock::time_point now) {
        while (std::optional<ConnectionId> id = requests_.first_expired(now)) {
            Connection& c = connections_.at(*id);
            counters_.request_timeouts.fetch_add(1, std::memory_order_relaxed);
            close_late_request(c);
            if (c.linger.active()) now_lingering(c);  // the 408 went out
            if (c.state == State::closed) forget(c);
        }
    }
    // LAB SKELETON
    //> // TODO(lab 09): expire_requests(now), for the request timer what
    //> // expire_idle is for the idle timer (408: close_late_request).
    // LAB END

    // Closes and forgets a connection (its fd leaves the interest list as it
    // closes). If it waits on the ready list, its id stays there and is
    // skipped when its turn comes: ids are never reused.
    void forget(Connection& c) {
        if (!c.linger.active()) timer_.remove(c.idle_position);  // a lingering one has left the timer
        // LAB BEGIN
        if (c.awaiting_request) requests_.remove(c.request_position);  // a request in progress ends with its connection
        // LAB SKELETON
        //> // TODO(lab 09): a connection that closes leaves the request list too (else
        //> // its id stays there, and its deadline comes for a connection that is gone).
        // LAB END
        connections_.erase(c.id);
    }

    // A stop was requested: accept nobody more, let the responses in progress
    // finish, and close the others, lingering where anything is still in
    // flight. True when none is left.
    bool wind_down() {
        if (listening_) {
            if (::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listener_.get(), nullptr) < 0)
                common::throw_errno("epoll_ctl(EPOLL_CTL_DEL, listener fd " + std::to_string(listener_.get()) + ")");
            listening_ = false;
        }
        const auto now = SteadyClock::now();
        std::vector<Connection*> done;
        for (auto& [id, c] : connections_) {
            if (c.linger.active()) {
                if (c.linger.over(c.fd.get(), now)) done.push_back(&c);
            } else if (c.output.empty()) {
                start_lingering(c);
                if (c.state == State::closed) done.push_back(&c);
                else now_lingering(c);
            }
        }
        for (Connection* c : done) forget(*c);
        return connections_.empty();
    }

    common::Stats& stats_;
    LoopCounters counters_;
    common::UniqueFd listener_;
    common::UniqueFd epoll_;
    bool listening_ = true;  // is the listener in the interest list? (removed once, at stop)
    std::optional<SteadyClock::time_point> accept_resume_;  // during an accept pause: when it ends
    ConnectionId last_id_ = 0;
    std::unordered_map<ConnectionId, Connection> connections_;
    std::deque<ConnectionId> ready_list_;  // connections whose turn ended with work left
    IdleTimer timer_;
    LingerQueue lingering_;
    // LAB BEGIN
    RequestTimer requests_;  // connections that wait for the rest of a request (--request-timeout)
    // LAB SKELETON
    //> // TODO(lab 09): the request timer, beside the idle timer: the requests in
    //> // progress, in the order they began (built in the constructor).
    // LAB END
};

}  // namespace

int main(int argc, char** argv) {
    long idle_timeout_ms = 60'000;
    long request_timeout_ms = 0;  // 0: a request may take as long as it likes, as in chapter 09
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Lab 09: epoll(7) edge-triggered, an idle timer and a deadline for every request.",
        {{"--idle-timeout", "MS", "close a connection after MS ms without a byte in or out, 0 = never",
          &idle_timeout_ms, 0, 3'600'000},
         {"--reads-per-turn", "N", "recv() calls one connection may make before the others get their turn",
          &reads_per_turn, 1, 1'000'000},
         {"--request-timeout", "MS", "answer 408 when a request is not whole MS ms after its first byte, 0 = never",
          &request_timeout_ms, 0, 3'600'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("epoll_edge");
        EventLoop loop(common::listen_tcp(config, SOCK_NONBLOCK), std::chrono::milliseconds(idle_timeout_ms),
                       std::chrono::milliseconds(request_timeout_ms), stats);
        common::announce_listening(loop.listener());
        loop.run();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
