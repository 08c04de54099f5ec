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
//
// Chapter 09: one thread, epoll(7) in edge-triggered mode, and a timer that
// closes idle connections.
//
// Model:   each socket is registered once, for reading and writing together
//          (EPOLLIN | EPOLLOUT | EPOLLET), and never changed: epoll reports a
//          socket when it changes (bytes arrive, room appears), not while it
//          stays ready. So each report is served until the kernel says EAGAIN:
//          read until EAGAIN, write until EAGAIN. A connection that has more
//          to do than its turn allows waits on our own ready list. Idle
//          connections sit in a list ordered by their last activity; its front
//          is the next to expire, and its deadline is epoll_wait's timeout.
// Shows:   no epoll_ctl after the first (chapter 08 changed the interest on
//          every switch between reading and writing); timers that cost O(1)
//          per activity and nothing while asleep; the pitfalls of edge
//          triggering (bytes left unread are never reported again; one client
//          could keep the loop to itself) and how to avoid them.
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
#include <list>
#include <memory>
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
//   reading: no output pending; read and answer until EAGAIN
//   writing: a response is partly sent; send until EAGAIN, read nothing more
//   closed:  done; leaves the interest list when its fd is closed
enum class State { reading, writing, closed };

struct Connection;
using IdleList = std::list<Connection*>;  // least recently active first

// Everything the loop needs to know about one client, as plain data.
struct Connection {
    common::UniqueFd fd;
    std::string peer;
    http::RequestParser parser;
    std::string output;          // response bytes not yet accepted by the kernel
    std::size_t output_sent = 0;
    bool close_after_output = false;
    State state = State::reading;
    bool waiting_for_turn = false;    // on our own ready list: it has work left
    SteadyClock::time_point last_activity;
    IdleList::iterator idle_position;  // where it is in the idle list
    common::Stats::ConnectionScope counted;
    // LAB BEGIN
    // For the request timer (RequestTimer, below). Last and with defaults, so
    // that the initializer in accept_pending_clients stays as it is.
    bool awaiting_request = false;                        // in the request list: we wait for the rest of a request
    SteadyClock::time_point request_started{};            // since when
    std::list<Connection*>::iterator request_position{};  // where it is in the request list
    // LAB SKELETON
    //> // TODO(lab 09): what the request timer needs to know about a connection:
    //> // whether it is in the request list, since when, and where (an iterator,
    //> // as idle_position is for the idle list). Give each a default value.
    // LAB END
};

struct LoopCounters {
    std::atomic<std::uint64_t>& wakeups;        // epoll_wait() returned
    std::atomic<std::uint64_t>& timer_wakeups;  // ...with no event, because the first idle deadline came
    std::atomic<std::uint64_t>& events;         // ready sockets it reported, in all
    std::atomic<std::uint64_t>& idle_closed;    // connections the idle timer closed
    std::atomic<std::uint64_t>& turns_deferred; // a connection used its turn up and waited for the next round
    std::atomic<std::uint64_t>& request_timeouts;  // requests cut at their deadline (--request-timeout)
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
    if (c.close_after_output) {
        common::shutdown_and_drain(c.fd.get());
        c.state = State::closed;
    }
    return true;
}

// LAB BEGIN
// The request timer. A request must arrive whole within `timeout` of its
// first byte, and more bytes do not move that deadline: the idle timer,
// restarted by every byte, cannot stop a client that trickles (slowloris).
// All requests have the same timeout, so a list in the order they began is
// in the order of their deadlines too: a request joins at the back and
// leaves from wherever it is, both O(1), and the front expires first.
//
// A connection is in the list exactly while we wait for the rest of a
// request: part of one is buffered and no response is pending. Bytes behind
// a pending response may be whole requests, answered later, and meanwhile
// we wait for our output, not for the client. So a request's clock starts
// when we begin to wait for it: at its first byte, or, if it came in behind
// a response, once that response has gone.
struct RequestTimer {
    std::chrono::milliseconds timeout;  // 0: never
    std::list<Connection*> order;       // by when we began to wait, oldest first

    // Call after each answer_requests, where requests become whole. Every
    // whole request leaves a response pending and so leaves the list: when
    // one read ends a request and begins the next, the next gets a clock of
    // its own (once the response has gone), not the old one's.
    void track(Connection& c) {
        if (timeout.count() == 0) return;
        const bool awaiting = c.output.empty() && c.parser.buffered() > 0;
        if (awaiting == c.awaiting_request) return;  // the usual case: no change
        if (awaiting) {
            c.request_started = SteadyClock::now();
            c.request_position = order.insert(order.end(), &c);
            c.awaiting_request = true;
        } else {
            remove(c);
        }
    }
    void remove(Connection& c) {
        if (!c.awaiting_request) return;
        order.erase(c.request_position);
        c.awaiting_request = false;
    }

    // As the idle timer's (below): ms until the front's deadline, rounded up
    // (a little early would find nothing due and spin at 0 ms), or -1 for none.
    int wait_ms() const {
        if (timeout.count() == 0 || order.empty()) return -1;
        const auto left = order.front()->request_started + timeout - SteadyClock::now();
        return static_cast<int>(std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }
    // The connections whose request deadline had passed at `now` (when
    // epoll_wait returned, as for the idle timer), oldest first. `close`
    // takes each out of the list (forget does).
    template <typename F>
    void expire(SteadyClock::time_point now, F&& close) {
        if (timeout.count() == 0) return;
        while (!order.empty() && order.front()->request_started + timeout <= now) close(*order.front());
    }
};

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
    c.output = http::serialize(http::error_response(408, "the request did not arrive within the request timeout"),
                               false);
    c.close_after_output = true;
    if (flush_output(c)) return;  // sent: with close_after_output set, flush_output has closed it
    common::shutdown_and_drain(c.fd.get());
    c.state = State::closed;
}

// LAB SKELETON
//> // TODO(lab 09): a RequestTimer, beside IdleTimer (below) and built the same
//> // way: the connections that wait for the rest of a request, in the order
//> // they began to wait. Define it here, before drive, which starts and stops
//> // the clocks. A connection whose request misses its deadline gets a 408.
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
// LAB BEGIN
Turn drive(Connection& c, common::Stats& stats, RequestTimer& requests) {
// LAB SKELETON
//> // TODO(lab 09): give drive the request timer: a request's clock starts and
//> // stops here, where bytes reach the parser and requests are answered.
//> Turn drive(Connection& c, common::Stats& stats) {
// LAB END
    int reads = 0;
    bool drained = false;  // the last recv() returned less than asked: the socket is empty
    for (;;) {
        if (c.state == State::closed) return Turn::blocked;
        if (c.state == State::writing) {
            if (!flush_output(c)) return Turn::blocked;  // EAGAIN (or an error closed it)
            if (c.state == State::closed) return Turn::blocked;
            answer_requests(c, stats);  // requests that waited behind the output
            // LAB BEGIN
            requests.track(c);  // all answered and sent: a part request left starts its clock
            // LAB SKELETON
            //> // TODO(lab 09): once the output has gone, a part request left in the parser
            //> // starts its clock here (nothing else would: no report comes for bytes
            //> // already read).
            // LAB END
            if (c.output.empty()) c.state = State::reading;  // and read on: no report comes for bytes already here
            continue;
        }
        // A short read already told what EAGAIN would (epoll(7), for stream
        // sockets): bytes that arrive later will be reported. It saves a recv()
        // per request.
        if (drained) return Turn::blocked;
        if (reads++ == reads_per_turn) return Turn::more_to_do;
        char buffer[16 * 1024];
        ssize_t n = ::recv(c.fd.get(), buffer, sizeof buffer, 0);
        if (n > 0) {
            drained = static_cast<std::size_t>(n) < sizeof buffer;
            c.parser.feed({buffer, static_cast<std::size_t>(n)});
            answer_requests(c, stats);
            // LAB BEGIN
            requests.track(c);  // a request's first bytes start its clock; a whole request stops it
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

// The idle timer. Every connection has the same timeout, so the list ordered
// by last activity is also ordered by deadline: moving a connection to the
// back when it is active costs O(1), and the front is the next to expire.
struct IdleTimer {
    std::chrono::milliseconds timeout;  // 0: never
    IdleList order;

    void add(Connection& c) {
        c.last_activity = SteadyClock::now();
        c.idle_position = order.insert(order.end(), &c);
    }
    void touch(Connection& c) {
        c.last_activity = SteadyClock::now();
        order.splice(order.end(), order, c.idle_position);
    }
    void remove(Connection& c) { order.erase(c.idle_position); }

    // epoll_wait's timeout: ms until the front's deadline, rounded up (waking
    // a little early would find nothing due and ask again), or -1 for none.
    int wait_ms() const {
        if (timeout.count() == 0 || order.empty()) return -1;
        const auto left = order.front()->last_activity + timeout - SteadyClock::now();
        return static_cast<int>(std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }
    // The connections whose deadline had passed at `now`, oldest first. Pass
    // the time epoll_wait returned, not the time after the round: a handler
    // that ran long must not expire a client whose bytes arrived meanwhile
    // and have not been looked at yet.
    template <typename F>
    void expire(SteadyClock::time_point now, F&& close) {
        if (timeout.count() == 0) return;
        while (!order.empty() && order.front()->last_activity + timeout <= now) close(*order.front());
    }
};

// Tells an idle client why it is closed if it had started a request (408),
// as chapter 01's lab does for SO_RCVTIMEO; otherwise just closes.
void close_idle(Connection& c) {
    if (c.output.empty() && c.parser.buffered() > 0) {
        c.output = http::serialize(http::error_response(408, "no data within the idle timeout"), false);
        c.close_after_output = true;
        if (flush_output(c)) return;  // the send buffer was empty: it fitted, and flush_output closed
    }
    common::shutdown_and_drain(c.fd.get());
    c.state = State::closed;
}

using Connections = std::unordered_map<Connection*, std::unique_ptr<Connection>>;

// Edge-triggered listener: one report may stand for many clients, so accept
// until EAGAIN. Each client is registered once, for both directions.
void accept_pending_clients(int listener, int epoll_fd, Connections& connections, IdleTimer& timer,
                            common::Stats& stats) {
    for (;;) {
        common::Accepted client = common::accept_client(listener, SOCK_NONBLOCK);
        if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
        if (client.status != common::Accepted::accepted) continue;
        auto c = std::make_unique<Connection>(Connection{std::move(client.fd), std::move(client.peer), {}, {}, 0,
                                                         false, State::reading, false, {}, {},
                                                         stats.track_connection()});
        epoll_event interest{};
        interest.events = EPOLLIN | EPOLLOUT | EPOLLET;  // for its whole life
        interest.data.ptr = c.get();
        if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd.get(), &interest) < 0) {
            // ENOMEM or ENOSPC (fs.epoll.max_user_watches): this client cannot
            // be watched, so it is let go; the others are unaffected.
            common::log_client_error("epoll_ctl(EPOLL_CTL_ADD, fd " + std::to_string(c->fd.get()) + ")", c->peer,
                                     errno);
            continue;
        }
        timer.add(*c);
        Connection* key = c.get();
        connections.emplace(key, std::move(c));
    }
}

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
        LoopCounters counters{stats.add_counter("wakeups"), stats.add_counter("timer_wakeups"), stats.add_counter("events"),
                              stats.add_counter("idle_closed"), stats.add_counter("turns_deferred"),
                              stats.add_counter("request_timeouts")};
        common::UniqueFd listener = common::listen_tcp(config, SOCK_NONBLOCK);
        common::UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
        if (!epoll) common::throw_errno("epoll_create1");
        epoll_event listener_interest{};
        listener_interest.events = EPOLLIN | EPOLLET;
        listener_interest.data.ptr = nullptr;  // the listener: the one entry without a Connection
        if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, listener.get(), &listener_interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_ADD, listener fd " + std::to_string(listener.get()) + ")");
        common::announce_listening(listener.get());
        Connections connections;
        bool listening = true;  // is the listener in the interest list? (removed once, at stop)
        IdleTimer timer{std::chrono::milliseconds(idle_timeout_ms), {}};
        // LAB BEGIN
        RequestTimer requests{std::chrono::milliseconds(request_timeout_ms), {}};
        // LAB SKELETON
        //> // TODO(lab 09): a second timer, for requests in progress: request_timeout_ms
        //> // (0 = off) and a list in the order they began, as IdleTimer has.
        // LAB END
        std::deque<Connection*> ready_list;  // connections whose turn ended with work left

        // Closes and forgets a connection (its fd leaves the interest list as it closes).
        auto forget = [&](Connection& c) {
            if (c.waiting_for_turn) std::erase(ready_list, &c);
            timer.remove(c);
            // LAB BEGIN
            requests.remove(c);  // a request in progress ends with its connection
            // LAB SKELETON
            //> // TODO(lab 09): a connection that closes leaves the request list too
            //> // (else the list keeps a pointer to a Connection that is gone).
            // LAB END
            connections.erase(&c);
        };
        // Gives a connection its turn, and keeps its place in line if it has more to do.
        // (A report means the socket changed: bytes came, or room opened because
        // the client read. Either way it is not idle; nor is it after its turn,
        // which may have sent it an answer a slow handler took long to make.)
        auto serve = [&](Connection& c) {
            timer.touch(c);
            // LAB BEGIN
            const Turn turn = drive(c, stats, requests);
            // LAB SKELETON
            //> const Turn turn = drive(c, stats);
            // LAB END
            if (c.state != State::closed) timer.touch(c);
            if (turn == Turn::more_to_do && !c.waiting_for_turn) {
                c.waiting_for_turn = true;
                ready_list.push_back(&c);
                counters.turns_deferred.fetch_add(1, std::memory_order_relaxed);
            }
            if (c.state == State::closed) forget(c);
        };

        for (;;) {
            if (common::stop_requested()) {  // finish responses in progress; idle clients are done
                if (listening) {
                    if (::epoll_ctl(epoll.get(), EPOLL_CTL_DEL, listener.get(), nullptr) < 0)
                        common::throw_errno("epoll_ctl(EPOLL_CTL_DEL, listener fd " + std::to_string(listener.get()) +
                                            ")");
                    listening = false;
                }
                std::vector<Connection*> nothing_to_send;
                for (auto& [key, c] : connections)
                    if (c->output.empty()) nothing_to_send.push_back(key);
                for (Connection* c : nothing_to_send) forget(*c);
                if (connections.empty()) break;
            }
            // Sleep until a socket changes or the first idle deadline, but not
            // at all while our own ready list has work.
            std::array<epoll_event, 256> events;
            // LAB BEGIN
            // Two lists, two fronts: sleep until the earlier of the two deadlines.
            const int wait_ms = ready_list.empty() ? sooner(timer.wait_ms(), requests.wait_ms()) : 0;
            // LAB SKELETON
            //> // TODO(lab 09): with requests in progress, sleep no longer than until the
            //> // first request deadline either: the earlier of the two, where -1 means
            //> // "no deadline" (not "the smallest").
            //> const int wait_ms = ready_list.empty() ? timer.wait_ms() : 0;
            // LAB END
            const int ready = ::epoll_wait(epoll.get(), events.data(), static_cast<int>(events.size()), wait_ms);
            const SteadyClock::time_point woke = SteadyClock::now();
            counters.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready == 0 && ready_list.empty() && wait_ms >= 0)
                counters.timer_wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("epoll_wait");
            }
            counters.events.fetch_add(static_cast<std::uint64_t>(ready), std::memory_order_relaxed);
            // The new reports first (a connection closed later in this round
            // would leave a dangling pointer in them), then the connections that
            // were waiting for another turn: epoll may never report them again.
            std::size_t waiting = ready_list.size();
            for (int i = 0; i < ready; ++i) {
                if (events[i].data.ptr == nullptr) {
                    if (listening) accept_pending_clients(listener.get(), epoll.get(), connections, timer, stats);
                    continue;
                }
                Connection& c = *static_cast<Connection*>(events[i].data.ptr);
                if (!c.waiting_for_turn) serve(c);  // a waiting one gets its turn below
            }
            for (waiting = std::min(waiting, ready_list.size()); waiting > 0; --waiting) {
                Connection& c = *ready_list.front();
                ready_list.pop_front();
                c.waiting_for_turn = false;
                serve(c);  // if it still has more to do, it goes to the back of the line
            }
            timer.expire(woke, [&](Connection& c) {
                counters.idle_closed.fetch_add(1, std::memory_order_relaxed);
                close_idle(c);
                forget(c);
            });
            // LAB BEGIN
            requests.expire(woke, [&](Connection& c) {
                counters.request_timeouts.fetch_add(1, std::memory_order_relaxed);
                close_late_request(c);
                forget(c);
            });
            // LAB SKELETON
            //> // TODO(lab 09): every connection whose request deadline has passed gets 408
            //> // (http::error_response(408, ...), serialized with keep-alive false), is
            //> // closed and forgotten, and is counted in counters.request_timeouts.
            //> // Compare deadlines with `woke`, as timer.expire does.
            // LAB END
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
