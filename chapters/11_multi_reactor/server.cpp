// Chapter 11: one event loop per core. Chapter 10's loop, N times over,
// each in a thread of its own, with an acceptor that hands them connections.
//
// Model:   the main thread is the acceptor: it accepts until EAGAIN and
//          gives each connection to one of --loops N event loops (default:
//          one per core), through that loop's inbox and eventfd, the same
//          hand-back chapter 10's workers use for their results. From then
//          on the connection belongs to that loop alone: only it registers,
//          reads, writes and closes it, so no lock guards a connection. The
//          acceptor picks the loop with the fewest connections and skips one
//          that has been busy in one round for a while. --reuseport instead
//          gives every loop a listening socket of its own on the same port
//          (SO_REUSEPORT), and the kernel picks a loop by a hash of the
//          client's address. /sleep timers stay in the loops; /work goes to
//          one worker pool shared by all loops, and each result goes back to
//          the inbox of the loop that owns its connection.
// Shows:   how nginx workers, Netty, muduo and actix-web use every core:
//          share nothing between loops but the listening port; what an
//          acceptor can know (which loop is busy) and a hash cannot.
// Cannot:  make one connection faster: it lives on one loop for its whole
//          life. And a loop that runs a slow handler itself (--workers 0)
//          still stalls the clients it owns.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <exception>
#include <functional>
#include <initializer_list>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "error.hpp"
#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"
#include "stop.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;

// ANCHOR: state
// What a connection is doing. As in chapter 09, the epoll interest is fixed
// and the state decides what to do when epoll says something changed.
//   reading:   no output pending; read and answer until EAGAIN
//   writing:   a response is partly sent; send until EAGAIN, read nothing more
//   waiting:   a timer or a worker has its request and nothing is left to
//              send: read nothing more until the answer comes (requests
//              pipelined behind it wait in the socket, so the answers leave
//              in order and the connection holds no more than before)
//   lingering: the last response is out and our side shut down; read and
//              discard until the client closes too (common::LingeringClose)
//   closed:    done; leaves the interest list when its fd is closed
enum class State { reading, writing, waiting, lingering, closed };
// ANCHOR_END: state

// ANCHOR: tags
// Each entry of the interest list carries 64 bits of ours, handed back with
// every report: what the descriptor is (a kind, in the top byte) and, for a
// connection, its id. An id rather than a pointer: whatever names a
// connection can be looked up and found gone, never left dangling. That is
// what makes a worker's late answer harmless: it names an id, not a
// descriptor number that a new client may have been given meanwhile.
// (The eventfds of the loop's two inboxes are two more kinds: one through
// which the acceptor hands it new connections, one through which the
// workers hand it results.)
using ConnectionId = std::uint64_t;
enum class Kind : std::uint8_t { listener, connection, completions, arrivals };

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

// ANCHOR: timers
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
// ANCHOR_END: timers

// ANCHOR: sleep_timers
// The timers of /sleep. The idle timer's list is in deadline order only
// because every connection waits the same time: the one that was active
// last expires last. A sleep of 10 ms that starts after one of 5,000 ms is
// due first, so the order of arrival is no longer the order of deadlines,
// and keeping a list in order would cost O(n) per insertion. An ordered tree
// (std::multimap, a red-black tree, as nginx keeps its timers) costs
// O(log n) to add, O(1) to see the first, and, with the position kept, O(1)
// to remove one whose client left. A binary min-heap (libuv's choice) adds
// and pops in O(log n) too, and removes from the middle in O(log n) if every
// entry knows its place in the heap, as libuv's intrusive heap does;
// std::priority_queue keeps no such place, and could only skip stale entries.
struct SleepTimers {
    using Tree = std::multimap<SteadyClock::time_point, ConnectionId>;
    using Position = Tree::iterator;
    Tree by_deadline;

    Position add(ConnectionId id, std::chrono::milliseconds delay) {
        return by_deadline.emplace(SteadyClock::now() + delay, id);
    }
    void remove(Position p) { by_deadline.erase(p); }

    // ms until the first deadline, rounded up (as for the idle timer), or -1.
    int wait_ms() const {
        if (by_deadline.empty()) return -1;
        const auto left = by_deadline.begin()->first - SteadyClock::now();
        return static_cast<int>(std::max<long long>(0, std::chrono::ceil<std::chrono::milliseconds>(left).count()));
    }
    // Takes out the first timer due at `now`, if any, and names its connection.
    std::optional<ConnectionId> pop_due(SteadyClock::time_point now) {
        if (by_deadline.empty() || by_deadline.begin()->first > now) return std::nullopt;
        const ConnectionId id = by_deadline.begin()->second;
        by_deadline.erase(by_deadline.begin());
        return id;
    }
};
// ANCHOR_END: sleep_timers

// ANCHOR: inbox
// Chapter 10's hand-back, made a thing of its own: any thread posts, one
// loop takes. A mutex guards the items; an eventfd that the loop's epoll
// watches (edge-triggered) wakes the loop, whose epoll_wait must never be
// replaced by a wait on a condition variable. Only the post that finds the
// inbox empty writes: the loop, once woken, takes everything that is there,
// so one wake-up serves many posts. Each loop has two: new connections from
// the acceptor, results from the workers.
template <typename T>
class Inbox {
public:
    explicit Inbox(std::atomic<std::uint64_t>& signals)
        : signals_(signals), wake_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
        if (!wake_) common::throw_errno("eventfd");
    }
    Inbox(const Inbox&) = delete;
    Inbox& operator=(const Inbox&) = delete;

    int wake_fd() const { return wake_.get(); }

    // Any thread.
    void post(T item) {
        bool was_empty;
        {
            std::lock_guard lock(mutex_);
            was_empty = items_.empty() && !closed_;
            items_.push_back(std::move(item));
        }
        if (was_empty) signal();  // otherwise the loop has not taken the last ones yet: it takes this one too
    }
    // Any thread: nothing more will be posted. Wakes the loop, which sees it in take().
    void close() {
        {
            std::lock_guard lock(mutex_);
            closed_ = true;
        }
        signal();
    }

    // The loop, when epoll reports the eventfd: reset its counter, then take
    // every item there is. In this order: an item that comes after the read
    // finds the inbox either empty (and writes, so epoll reports again) or
    // not yet taken (and is taken now). The other order could take the
    // items, then read away the write of an item that came in between, and
    // leave that item waiting for the next one. `closed` tells whether
    // close() was called.
    std::vector<T> take(bool& closed) {
        std::uint64_t count = 0;
        if (::read(wake_.get(), &count, sizeof count) < 0 && errno != EAGAIN)
            common::throw_errno("read(eventfd " + std::to_string(wake_.get()) + ")");
        std::vector<T> taken;
        std::lock_guard lock(mutex_);
        taken.swap(items_);
        closed = closed_;
        return taken;
    }

private:
    void signal() {
        signals_.fetch_add(1, std::memory_order_relaxed);
        const std::uint64_t one = 1;
        // Cannot fail but by a bug (EAGAIN would need 2^64 - 2 writes unread),
        // and a worker has nobody to throw to: a lost wake-up would leave
        // clients unanswered, so the server stops loudly instead.
        if (::write(wake_.get(), &one, sizeof one) != sizeof one) {
            std::perror(("write(eventfd " + std::to_string(wake_.get()) + ")").c_str());
            std::abort();
        }
    }

    std::atomic<std::uint64_t>& signals_;  // eventfd writes
    common::UniqueFd wake_;
    std::mutex mutex_;
    std::vector<T> items_;  // guarded by mutex_
    bool closed_ = false;   // guarded by mutex_
};
// ANCHOR_END: inbox

// ANCHOR: jobs
// What goes to a worker: the request, the id of its connection (never a
// pointer, which would dangle once the connection is gone, nor a descriptor,
// whose number the kernel hands to the next client accepted), and the inbox
// of the loop that owns the connection. What comes back: the id and the
// answer, ready to send.
struct Result {
    ConnectionId id;
    http::Reply reply;
};
struct Job {
    ConnectionId id;
    http::Request request;
    http::SlowRequest work;
    Inbox<Result>* reply_to = nullptr;  // the owning loop's; every loop outlives the pool
};
// ANCHOR_END: jobs

struct PoolCounters {
    std::atomic<std::uint64_t>& workers;            // threads in the pool
    std::atomic<std::uint64_t>& jobs_queued;        // waiting for a worker, now
    std::atomic<std::uint64_t>& jobs_running;       // on a worker, now
    std::atomic<std::uint64_t>& jobs_running_peak;  // the most that ever ran at once
    std::atomic<std::uint64_t>& jobs_done;          // results handed back
};

// ANCHOR: pool
// A fixed set of threads that run jobs for every loop. Jobs go from the
// loops to the workers through one queue (a worker waits on a condition
// variable); each result goes to the inbox of the loop that sent its job.
// With --workers 0 there is no pool: /work runs in the loop that read it.
class WorkerPool {
public:
    WorkerPool(long workers, std::size_t capacity, PoolCounters counters)
        : capacity_(capacity), counters_(counters) {
        counters_.workers = static_cast<std::uint64_t>(workers);
        // Started with SIGINT and SIGTERM blocked: a stop signal must reach the
        // main thread, the acceptor.
        try {
            for (long i = 0; i < workers; ++i)
                threads_.push_back(common::start_thread_without_stop_signals([this] { work(); }));
        } catch (...) {
            stop_and_join();  // a thread could not be started (EAGAIN): the ones that were must not outlive us
            throw;
        }
    }
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;
    ~WorkerPool() { stop_and_join(); }

    bool has_workers() const { return !threads_.empty(); }

    // ANCHOR: submit
    // Queues a job, or returns false at once if the queue is full: a client
    // told 503 now can go elsewhere; one left waiting behind a long queue
    // only times out later, having cost us its memory meanwhile. Any loop.
    bool submit(Job job) {
        {
            std::lock_guard lock(jobs_mutex_);
            if (jobs_.size() >= capacity_) return false;
            jobs_.push_back(std::move(job));
            counters_.jobs_queued.store(jobs_.size(), std::memory_order_relaxed);
        }
        job_ready_.notify_one();
        return true;
    }
    // ANCHOR_END: submit

private:
    // Jobs still queued are dropped (nobody will send their answers); a job
    // that runs is finished, then its worker exits.
    void stop_and_join() {
        {
            std::lock_guard lock(jobs_mutex_);
            stopping_ = true;
            jobs_.clear();
        }
        job_ready_.notify_all();
        for (std::thread& t : threads_) t.join();
    }

    // ANCHOR: work
    void work() {
        for (;;) {
            Job job;
            {
                std::unique_lock lock(jobs_mutex_);
                job_ready_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
                if (stopping_) return;
                job = std::move(jobs_.front());
                jobs_.pop_front();
                counters_.jobs_queued.store(jobs_.size(), std::memory_order_relaxed);
                counters_.jobs_running.store(++running_, std::memory_order_relaxed);
                if (running_ > counters_.jobs_running_peak.load(std::memory_order_relaxed))
                    counters_.jobs_running_peak.store(running_, std::memory_order_relaxed);
            }
            // The work itself, outside every lock. It touches no socket and no
            // connection: only the job, which it owns.
            http::burn_cpu(job.work.ms);
            Result result{job.id, http::reply_to(job.request, http::slow_response(job.work))};
            {
                std::lock_guard lock(jobs_mutex_);
                counters_.jobs_running.store(--running_, std::memory_order_relaxed);
            }
            counters_.jobs_done.fetch_add(1, std::memory_order_relaxed);
            job.reply_to->post(std::move(result));  // to the loop that owns the connection
        }
    }
    // ANCHOR_END: work

    const std::size_t capacity_;
    PoolCounters counters_;
    std::mutex jobs_mutex_;
    std::condition_variable job_ready_;
    std::deque<Job> jobs_;       // guarded by jobs_mutex_
    std::uint64_t running_ = 0;  // guarded by jobs_mutex_
    bool stopping_ = false;      // guarded by jobs_mutex_
    std::vector<std::thread> threads_;
};
// ANCHOR_END: pool

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
    State state = State::reading;
    bool waiting_for_turn = false;  // on the loop's ready list: it has work left
    // Its entry in the idle timer; none while a timer or a worker has its
    // request (it is waiting for us, not idle) or once it lingers.
    std::optional<IdleTimer::Position> idle_position{};
    // A /sleep or /work request the loop does not run itself, from the moment
    // the parser yields it until its answer is in the output.
    struct Slow {
        http::Request request;  // for the answer (HEAD, keep-alive); a job carries a copy
        http::SlowRequest what;
        bool handed_off = false;  // on a timer or with a worker
    };
    std::optional<Slow> slow{};
    SleepTimers::Position sleep_position{};  // while a sleep is handed off
    common::LingeringClose linger{};
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
    std::atomic<std::uint64_t>& wakeups;         // epoll_wait() returned
    std::atomic<std::uint64_t>& timer_wakeups;   // ...with no event, because a deadline came (sleep, idle, linger, pause)
    std::atomic<std::uint64_t>& events;          // ready sockets it reported, in all
    std::atomic<std::uint64_t>& idle_closed;     // connections the idle timer closed
    std::atomic<std::uint64_t>& turns_deferred;  // a connection used its turn up and waited for the next round
    std::atomic<std::uint64_t>& sleeps_pending;   // /sleep timers set, now
    std::atomic<std::uint64_t>& sleeps_done;      // ...that were due and answered
    std::atomic<std::uint64_t>& jobs_rejected;    // /work answered 503: the queue was full
    std::atomic<std::uint64_t>& completion_wakeups;  // the results' eventfd was reported and results taken
    std::atomic<std::uint64_t>& results_dropped;     // a result whose connection was gone
    std::atomic<std::uint64_t>& arrival_wakeups;     // the arrivals' eventfd was reported and connections taken
    std::atomic<std::uint64_t>& arrival_signals;     // eventfd writes by the acceptor: it found the inbox empty
    std::atomic<std::uint64_t>& completion_signals;  // eventfd writes by the workers: a result found the inbox empty
};

// ANCHOR: own_counters
// The lines of /stats that belong to one loop: "loop0_connections_open" and
// so on. Every loop adds to the shared counters above too, so that /stats
// reads like chapter 10's; these say how the work was spread.
struct OwnCounters {
    // Connections it owns, now, counting those handed over and still in its
    // inbox: the acceptor adds one as it hands a connection over, the loop
    // takes one off as it forgets a connection. The acceptor's measure of load.
    std::atomic<std::uint64_t>& connections_open;
    std::atomic<std::uint64_t>& connections_total;  // it was ever given
    std::atomic<std::uint64_t>& requests;           // it answered (or handed off)
};
// ANCHOR_END: own_counters

// A client may pipeline many requests, or ask for a huge body, and never
// read: answering pauses at this much pending output, and a generated body
// (/bytes) is made only up to it, so a connection holds about this much.
constexpr std::size_t kOutputHighWater = 256 * 1024;

// ANCHOR: answer
// Turns complete requests into response bytes, until the output reaches the
// high-water mark. Quick handlers run right here, in the loop's thread;
// /sleep and /work are only taken out of the parser (c.slow), and the loop
// hands them to a timer or a worker after the turn (EventLoop::serve). Until
// their answer comes, the requests behind them wait.
void answer_requests(Connection& c, common::Stats& stats, std::atomic<std::uint64_t>& loop_requests) {
    while (c.output.size() < kOutputHighWater) {
        if (!c.rest.done()) {  // a big body is made piece by piece, as the output drains
            c.rest.append_to(c.output, kOutputHighWater - c.output.size());
            continue;
        }
        if (c.close_after_output) return;  // the last response: ignore anything pipelined after it
        if (c.slow) return;                 // answers leave in order: this one first
        http::ParseResult r = c.parser.next();
        if (r.kind == http::ParseResult::need_more) return;
        loop_requests.fetch_add(1, std::memory_order_relaxed);
        if (r.kind == http::ParseResult::complete) {
            if (std::optional<http::SlowRequest> slow = http::slow_request(r.request)) {
                stats.requests.fetch_add(1, std::memory_order_relaxed);  // as respond() would
                c.slow = Connection::Slow{std::move(r.request), *slow};
                return;
            }
        }
        http::Reply reply = http::respond(r, stats);
        c.output += reply.bytes;
        c.rest = reply.rest;
        c.close_after_output = reply.close_after;
    }
}
// ANCHOR_END: answer

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

// ANCHOR: drive
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
Turn drive(Connection& c, common::Stats& stats, std::atomic<std::uint64_t>& loop_requests, bool short_read_ends_turn) {
    int reads = 0;
    bool drained = false;  // the last recv() returned less than asked
    for (;;) {
        if (c.state == State::closed) return Turn::blocked;
        if (c.state == State::writing) {
            if (!flush_output(c)) return Turn::blocked;  // EAGAIN (or an error closed it)
            if (c.state != State::writing) continue;     // the last response went: lingering (or closed)
            answer_requests(c, stats, loop_requests);  // requests that waited behind the output
            if (c.output.empty())       // and read on: no report comes for bytes already here
                c.state = c.slow ? State::waiting : State::reading;
            continue;
        }
        if (c.state == State::waiting) return Turn::blocked;  // until a timer or a worker answers
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
            answer_requests(c, stats, loop_requests);
            if (!c.output.empty()) c.state = State::writing;
            else if (c.slow) c.state = State::waiting;
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
// ANCHOR_END: drive

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

// ANCHOR: listener
// A listening socket in an epoll interest list, edge-triggered, with
// chapter 08's accept pause. In chapter 10 this was part of the loop; here
// the acceptor has one, and with --reuseport every loop has one.
class Listener {
public:
    using Adopt = std::function<void(common::Accepted)>;

    // Registers fd with epoll_fd; each accepted client goes to `adopt`.
    Listener(common::UniqueFd fd, int epoll_fd, Adopt adopt)
        : fd_(std::move(fd)), epoll_(epoll_fd), adopt_(std::move(adopt)) {
        epoll_event interest{};
        interest.events = EPOLLIN | EPOLLET;
        interest.data.u64 = tag(Kind::listener);
        if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, fd_.get(), &interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_ADD, listener fd " + std::to_string(fd_.get()) + ")");
    }

    int fd() const { return fd_.get(); }

    // ANCHOR: accept
    // Edge-triggered listener: one report may stand for many clients, so
    // accept until EAGAIN.
    void accept_clients() {
        if (!listening_) return;
        for (;;) {
            common::Accepted client = common::accept_client(fd_.get(), SOCK_NONBLOCK);
            if (client.status == common::Accepted::would_block) return;  // nobody else is waiting
            if (client.status == common::Accepted::pause) {  // short of memory or descriptors: not now
                pause_accepting();
                return;
            }
            if (client.status != common::Accepted::accepted) continue;
            adopt_(std::move(client));
        }
    }
    // ANCHOR_END: accept

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
        set_events(0);
        accept_resume_ = SteadyClock::now() + common::kAcceptPause;
    }

    // The pause is over: the listener asks for events again (unless a stop has
    // taken it out of the interest list meanwhile).
    void resume_accepting_if_due() {
        if (!accept_resume_ || !listening_ || SteadyClock::now() < *accept_resume_) return;
        accept_resume_.reset();
        set_events(EPOLLIN | EPOLLET);
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
    // ANCHOR_END: accept_pause

    // At a stop: out of the interest list, once. The socket stays open (a
    // client that connects now waits in the backlog until the process exits,
    // and is then reset, rather than refused while others are still served).
    void stop_listening() {
        if (!listening_) return;
        if (::epoll_ctl(epoll_, EPOLL_CTL_DEL, fd_.get(), nullptr) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_DEL, listener fd " + std::to_string(fd_.get()) + ")");
        listening_ = false;
    }

private:
    void set_events(std::uint32_t events) {
        epoll_event interest{};
        interest.events = events;
        interest.data.u64 = tag(Kind::listener);
        if (::epoll_ctl(epoll_, EPOLL_CTL_MOD, fd_.get(), &interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_MOD, listener fd " + std::to_string(fd_.get()) + ")");
    }

    common::UniqueFd fd_;
    int epoll_;  // the interest list it is in (not ours to close)
    Adopt adopt_;
    bool listening_ = true;  // in the interest list? (removed once, at stop)
    std::optional<SteadyClock::time_point> accept_resume_;  // during an accept pause: when it ends
};
// ANCHOR_END: listener

// ANCHOR: busy
// A loop that has spent this long in one round (since its epoll_wait
// returned) is busy with something: the acceptor gives the next connection
// to another loop if there is one that is not. A healthy round takes
// microseconds to a millisecond or two.
constexpr std::chrono::milliseconds kBusyRound{10};
// ANCHOR_END: busy

// One event loop: the interest list, the connections it owns by id, the
// ready list, the idle timer, the sleep timers, its two inboxes, and what it
// does with them. It runs in a thread of its own; of all its members, only
// the inboxes and the counters are touched by other threads.
class EventLoop {
public:
    // With a listener (--reuseport) it accepts its own clients; without, the
    // acceptor hands them over (hand_over).
    EventLoop(std::optional<common::UniqueFd> listener, std::chrono::milliseconds idle_timeout, WorkerPool& pool,
              common::Stats& stats, LoopCounters counters, OwnCounters own)
        : stats_(stats),
          counters_(counters),
          own_(own),
          epoll_(::epoll_create1(EPOLL_CLOEXEC)),
          arrivals_(counters.arrival_signals),
          results_(counters.completion_signals),
          timer_{idle_timeout, {}},
          pool_(pool) {
        // ANCHOR: setup
        if (!epoll_) common::throw_errno("epoll_create1");
        if (listener)
            listener_.emplace(std::move(*listener), epoll_.get(), [this](common::Accepted client) {
                own_.connections_open.fetch_add(1, std::memory_order_relaxed);
                adopt(std::move(client));
            });
        // The inboxes' eventfds, edge-triggered like the rest: every write is
        // a change, and take() reads it empty each time.
        watch(arrivals_.wake_fd(), Kind::arrivals);
        watch(results_.wake_fd(), Kind::completions);
        // ANCHOR_END: setup
    }

    int listener_fd() const { return listener_ ? listener_->fd() : -1; }

    // ANCHOR: hand_over
    // The acceptor's side (another thread): the connection is this loop's
    // from now on. Counted at once, so that the acceptor's next choice
    // already sees it.
    void hand_over(common::Accepted client) {
        own_.connections_open.fetch_add(1, std::memory_order_relaxed);
        arrivals_.post(std::move(client));
    }
    // Another thread: no more connections will come; finish the ones there
    // are, and return from run().
    void request_stop() { arrivals_.close(); }

    // What the acceptor weighs (another thread): the connections this loop
    // owns, and whether it has been in one round longer than kBusyRound.
    std::uint64_t load() const { return own_.connections_open.load(std::memory_order_relaxed); }
    bool busy(SteadyClock::time_point now) const {
        const auto started = round_started_.load(std::memory_order_relaxed);
        return started != 0 && now.time_since_epoch().count() - started > std::chrono::nanoseconds(kBusyRound).count();
    }
    // ANCHOR_END: hand_over

    // ANCHOR: loop
    // Until request_stop() and the responses in progress are out. The stop
    // signals never reach this thread (it was started with them blocked):
    // the acceptor, which gets them, tells the loop through its inbox.
    void run() {
        for (;;) {
            if (stopping_ && wind_down()) return;
            if (listener_) listener_->resume_accepting_if_due();
            // ANCHOR: wait
            // Sleep until a socket changes, an inbox gets something, or the
            // first deadline (a /sleep, idle, lingering, the end of an accept
            // pause), but not at all while our ready list has work.
            std::array<epoll_event, 256> events;
            const int wait_ms = ready_list_.empty() ? first_deadline_ms() : 0;
            round_started_.store(0, std::memory_order_relaxed);  // waiting, not busy
            const int ready = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), wait_ms);
            const SteadyClock::time_point woke = SteadyClock::now();
            round_started_.store(woke.time_since_epoch().count(), std::memory_order_relaxed);
            // ANCHOR_END: wait
            counters_.wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready == 0 && ready_list_.empty() && wait_ms >= 0)
                counters_.timer_wakeups.fetch_add(1, std::memory_order_relaxed);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal we do not block, such as a debugger's
                common::throw_errno("epoll_wait");
            }
            counters_.events.fetch_add(static_cast<std::uint64_t>(ready), std::memory_order_relaxed);
            // ANCHOR: dispatch
            // The new reports first, then the connections that were waiting
            // for another turn: epoll may never report them again.
            std::size_t waiting = ready_list_.size();
            for (int i = 0; i < ready; ++i) {
                switch (kind_of(events[i].data.u64)) {
                    case Kind::listener:
                        listener_->accept_clients();
                        break;
                    case Kind::arrivals:
                        take_arrivals();
                        break;
                    case Kind::connection:
                        // An id no longer in the table is skipped (see forget).
                        if (auto it = connections_.find(id_of(events[i].data.u64));
                            it != connections_.end() && !it->second.waiting_for_turn)
                            serve(it->second, events[i].events);  // a waiting one gets its turn below
                        break;
                    case Kind::completions:
                        deliver_results();
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
            // ANCHOR_END: dispatch
            // ANCHOR: expire
            answer_sleeps(woke);
            expire_idle(woke);
            expire_lingering(woke);
            // ANCHOR_END: expire
        }
    }
    // ANCHOR_END: loop

private:
    void watch(int fd, Kind kind) {
        epoll_event interest{};
        interest.events = EPOLLIN | EPOLLET;
        interest.data.u64 = tag(kind);
        if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &interest) < 0)
            common::throw_errno("epoll_ctl(EPOLL_CTL_ADD, eventfd " + std::to_string(fd) + ")");
    }

    // ANCHOR: take_arrivals
    // The arrivals' eventfd was reported: the acceptor has handed us
    // connections (or closed the inbox: a stop).
    void take_arrivals() {
        bool closed = false;
        std::vector<common::Accepted> arrived = arrivals_.take(closed);
        if (!arrived.empty()) counters_.arrival_wakeups.fetch_add(1, std::memory_order_relaxed);
        for (common::Accepted& client : arrived) adopt(std::move(client));
        if (closed) stopping_ = true;
    }
    // ANCHOR_END: take_arrivals

    // ANCHOR: adopt
    // A new client is ours: registered once, for everything it will ever
    // need, tagged with its id. From here on this thread alone touches it.
    void adopt(common::Accepted client) {
        // ANCHOR: nodelay
        // The answer to a request behind a /work or /sleep leaves later, in a
        // send of its own; Nagle's algorithm would hold it until the client's
        // delayed ACK (chapter 10). TCP_NODELAY sends at once.
        const int on = 1;
        if (::setsockopt(client.fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) < 0)
            common::log_client_error("setsockopt(TCP_NODELAY, fd " + std::to_string(client.fd.get()) + ")",
                                     client.peer, errno);  // slower for this client, not broken: serve it anyway
        // ANCHOR_END: nodelay
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
            own_.connections_open.fetch_sub(1, std::memory_order_relaxed);
            return;
        }
        own_.connections_total.fetch_add(1, std::memory_order_relaxed);
        connections_.emplace(id, Connection{.id = id,
                                            .fd = std::move(client.fd),
                                            .peer = std::move(client.peer),
                                            .idle_position = timer_.add(id),
                                            .counted = stats_.track_connection()});
    }
    // ANCHOR_END: adopt

    // ANCHOR: serve
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
        touch(c);
        Turn turn = drive(c, stats_, own_.requests, short_read_ends_turn);
        // ANCHOR: hand_off_after_turn
        // The turn stopped at a /sleep or /work: hand it off. If the queue is
        // full, it was answered 503 instead, and the turn goes on behind it.
        while (c.slow && !c.slow->handed_off && c.state != State::closed && !hand_off(c))
            turn = drive(c, stats_, own_.requests, false);
        // ANCHOR_END: hand_off_after_turn
        // ANCHOR: reset_while_waiting
        // A reset while a timer or a worker has the request: nobody will read
        // the answer, so the connection goes now, and its descriptor number is
        // free for the next client. The reset may have come in this very
        // report, behind the request: edge-triggered epoll will not report it
        // again, so it is looked at after the turn, not only before it. (A FIN
        // is not enough: a client may shut down its sending side and still
        // read the answer, RFC 9112 section 9.6.)
        if (c.state == State::waiting && (events & (EPOLLERR | EPOLLHUP))) {
            forget(c);
            return;
        }
        // ANCHOR_END: reset_while_waiting
        if (c.linger.active() && !was_lingering) now_lingering(c);
        if (c.state == State::closed) {
            forget(c);
            return;
        }
        touch(c);
        if (turn == Turn::more_to_do && !c.waiting_for_turn) {
            c.waiting_for_turn = true;
            ready_list_.push_back(c.id);
            counters_.turns_deferred.fetch_add(1, std::memory_order_relaxed);
        }
    }
    // ANCHOR_END: serve

    // ANCHOR: expire_idle
    // Closes the connections whose idle deadline had passed at `now`, oldest first.
    void expire_idle(SteadyClock::time_point now) {
        while (std::optional<ConnectionId> id = timer_.first_expired(now)) {
            Connection& c = connections_.at(*id);  // never one that waits: it left the idle timer
            counters_.idle_closed.fetch_add(1, std::memory_order_relaxed);
            close_idle(c);
            if (c.linger.active()) now_lingering(c);  // it was sent a 408
            if (c.state == State::closed) forget(c);
        }
    }
    // ANCHOR_END: expire_idle

    // ANCHOR: lingering
    // A connection that has just begun its lingering close leaves the idle
    // timer (its client may still be reading our last response) for the
    // linger queue, where it waits at most common::kLingerTimeout.
    void now_lingering(Connection& c) {
        leave_idle_timer(c);
        lingering_.add(c.id, c.linger.deadline());
    }

    // Closes the lingering connections whose client took too long to close.
    void expire_lingering(SteadyClock::time_point now) {
        while (!lingering_.entries.empty() && lingering_.entries.front().deadline <= now) {
            if (auto it = connections_.find(lingering_.entries.front().id); it != connections_.end()) forget(it->second);
            lingering_.entries.pop_front();
        }
    }

    // epoll_wait's timeout: the first sleep, idle or lingering deadline or the
    // end of an accept pause (-1: none).
    int first_deadline_ms() const {
        int first = -1;
        for (const int ms : {sleeps_.wait_ms(), timer_.wait_ms(), lingering_.wait_ms(stopping_),
                             listener_ ? listener_->accept_pause_ms() : -1})
            if (ms >= 0 && (first < 0 || ms < first)) first = ms;
        return first;
    }
    // ANCHOR_END: lingering

    // ANCHOR: idle_membership
    // In the idle timer unless a timer or a worker has its request, or it lingers.
    void touch(Connection& c) {
        if (c.idle_position) timer_.touch(*c.idle_position);
    }
    void leave_idle_timer(Connection& c) {
        if (c.idle_position) timer_.remove(*c.idle_position);
        c.idle_position.reset();
    }
    // ANCHOR_END: idle_membership

    // ANCHOR: hand_off
    // Gives the connection's /sleep to a timer or its /work to a worker; it
    // waits, out of the idle timer, until the answer comes. False if it was
    // answered at once instead: 503 when the job queue is full, or the answer
    // itself when there is no pool.
    bool hand_off(Connection& c) {
        Connection::Slow& slow = *c.slow;
        if (slow.what.kind == http::SlowRequest::sleep) {
            c.sleep_position = sleeps_.add(c.id, slow.what.ms);  // no thread: the loop's wait ends at the deadline
            counters_.sleeps_pending.fetch_add(1, std::memory_order_relaxed);  // every loop's, together
        } else if (!pool_.has_workers()) {
            // --workers 0: the loop computes itself, as chapter 09 did, and
            // every client it owns waits meanwhile (the acceptor sees it busy).
            http::burn_cpu(slow.what.ms);
            answer(c, http::reply_to(slow.request, http::slow_response(slow.what)));
            return false;
        } else if (!pool_.submit(Job{c.id, slow.request, slow.what, &results_})) {
            counters_.jobs_rejected.fetch_add(1, std::memory_order_relaxed);
            http::Response busy = http::error_response(503, "the job queue is full");
            busy.headers.push_back({"Retry-After", "1"});  // RFC 9110 section 15.6.4
            busy.close = false;                            // the connection itself is fine
            answer(c, http::reply_to(slow.request, busy));
            return false;
        }
        slow.handed_off = true;
        leave_idle_timer(c);
        return true;
    }
    // ANCHOR_END: hand_off

    // ANCHOR: deliver
    // The answer to the connection's slow request is here: it goes out after
    // whatever output is still pending, and the connection is idle-timed again.
    void answer(Connection& c, http::Reply reply) {
        c.slow.reset();
        c.output += reply.bytes;
        c.rest = reply.rest;
        c.close_after_output = reply.close_after;
        if (c.state == State::waiting) c.state = State::writing;
        if (!c.idle_position && !c.linger.active()) c.idle_position = timer_.add(c.id);
    }

    // The sleeps that are due: answered here, in the loop, as any quick handler.
    void answer_sleeps(SteadyClock::time_point now) {
        while (std::optional<ConnectionId> id = sleeps_.pop_due(now)) {
            counters_.sleeps_pending.fetch_sub(1, std::memory_order_relaxed);
            counters_.sleeps_done.fetch_add(1, std::memory_order_relaxed);
            Connection& c = connections_.at(*id);  // forget() takes a gone one's timer out
            answer(c, http::reply_to(c.slow->request, http::slow_response(c.slow->what)));
            if (!c.waiting_for_turn) serve(c, 0);  // send it, then the requests that waited behind it
        }
    }

    // The results' eventfd was reported: the workers have results. Each names its
    // connection by id; one that is no longer in the table left while its job
    // ran, and its answer goes nowhere. A new client that got the same
    // descriptor number has another id.
    void deliver_results() {
        bool closed_unused = false;  // this inbox is never closed: the pool ends after the loops
        std::vector<Result> results = results_.take(closed_unused);
        if (!results.empty()) counters_.completion_wakeups.fetch_add(1, std::memory_order_relaxed);
        for (Result& r : results) {
            auto it = connections_.find(r.id);
            if (it == connections_.end()) {
                counters_.results_dropped.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            answer(it->second, std::move(r.reply));
            if (!it->second.waiting_for_turn) serve(it->second, 0);  // one on the ready list is served there
        }
    }
    // ANCHOR_END: deliver

    // Closes and forgets a connection (its fd leaves the interest list as it
    // closes). If it waits on the ready list, its id stays there and is
    // skipped when its turn comes: ids are never reused. So it is if a worker
    // runs its job: the result comes back with an id nobody has.
    void forget(Connection& c) {
        leave_idle_timer(c);
        if (c.slow && c.slow->handed_off && c.slow->what.kind == http::SlowRequest::sleep) {
            sleeps_.remove(c.sleep_position);
            counters_.sleeps_pending.fetch_sub(1, std::memory_order_relaxed);
        }
        own_.connections_open.fetch_sub(1, std::memory_order_relaxed);
        connections_.erase(c.id);
    }

    // ANCHOR: stop
    // A stop was requested (and no connection will arrive any more): accept
    // nobody more, let the responses in progress finish, and close the
    // others, lingering where anything is still in flight. True when none is left.
    bool wind_down() {
        if (listener_) listener_->stop_listening();
        const auto now = SteadyClock::now();
        std::vector<Connection*> done;
        for (auto& [id, c] : connections_) {
            if (c.linger.active()) {
                if (c.linger.over(c.fd.get(), now)) done.push_back(&c);
            } else if (c.output.empty() && !c.slow) {  // one that waits for a timer or a worker is answered first
                start_lingering(c);
                if (c.state == State::closed) done.push_back(&c);
                else now_lingering(c);
            }
        }
        for (Connection* c : done) forget(*c);
        return connections_.empty();
    }
    // ANCHOR_END: stop

    common::Stats& stats_;
    LoopCounters counters_;  // shared with the other loops
    OwnCounters own_;        // this loop's alone
    common::UniqueFd epoll_;
    std::optional<Listener> listener_;  // --reuseport: our own listening socket
    Inbox<common::Accepted> arrivals_;  // from the acceptor
    Inbox<Result> results_;             // from the workers
    bool stopping_ = false;             // the arrivals' inbox was closed
    // When the current round began (steady clock, ns), 0 while in epoll_wait.
    std::atomic<SteadyClock::rep> round_started_{0};
    ConnectionId last_id_ = 0;
    std::unordered_map<ConnectionId, Connection> connections_;
    std::deque<ConnectionId> ready_list_;  // connections whose turn ended with work left
    IdleTimer timer_;
    LingerQueue lingering_;
    SleepTimers sleeps_;
    WorkerPool& pool_;  // shared by every loop
};

// ANCHOR: acceptor
// The main thread, with an acceptor: its own epoll with one listener, and
// the loops to give clients to. It also gets the stop signals.
class Acceptor {
public:
    Acceptor(common::UniqueFd listener, const std::vector<std::unique_ptr<EventLoop>>& loops,
             std::atomic<std::uint64_t>& busy_skips)
        : epoll_(::epoll_create1(EPOLL_CLOEXEC)), loops_(loops), busy_skips_(busy_skips) {
        if (!epoll_) common::throw_errno("epoll_create1");
        listener_.emplace(std::move(listener), epoll_.get(),
                          [this](common::Accepted client) { pick().hand_over(std::move(client)); });
    }

    int listener() const { return listener_->fd(); }

    // Accepts until a stop is requested; then takes the listener out of the
    // interest list. The stop signals get in only while it waits (stop.hpp).
    void run() {
        const sigset_t wait_mask = common::block_stop_signals();
        while (!common::stop_requested()) {
            listener_->resume_accepting_if_due();
            std::array<epoll_event, 8> events;
            const int ready = ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                            listener_->accept_pause_ms(), &wait_mask);
            if (ready < 0) {
                if (errno == EINTR) continue;  // a signal: look at the stop flag
                common::throw_errno("epoll_pwait");
            }
            if (ready > 0) listener_->accept_clients();
        }
        listener_->stop_listening();
    }

private:
    // ANCHOR: pick
    // Which loop gets the next client: the one that owns the fewest
    // connections, among those not busy. Not round-robin: connections live
    // for very different times (one request, or a keep-alive client that
    // stays for minutes), so handing them out in turn would leave some loops
    // with many more than others. Not busy: a loop that has been in one round
    // for more than kBusyRound is running something long and would let the
    // new client wait until it is done. Ties go to the next loop in turn, so
    // idle loops share equally. (The loads change as we look: this is a good
    // choice, not a perfect one, and needs none.)
    EventLoop& pick() {
        const SteadyClock::time_point now = SteadyClock::now();
        std::size_t best = 0, least = 0;  // the choice, and the least loaded whether busy or not
        bool best_busy = true;
        std::uint64_t best_load = 0, least_load = 0;
        for (std::size_t k = 0; k < loops_.size(); ++k) {
            const std::size_t i = (next_ + k) % loops_.size();
            const bool busy = loops_[i]->busy(now);
            const std::uint64_t load = loops_[i]->load();
            if (k == 0 || (!busy && best_busy) || (busy == best_busy && load < best_load)) {
                best = i;
                best_busy = busy;
                best_load = load;
            }
            if (k == 0 || load < least_load) {
                least = i;
                least_load = load;
            }
        }
        if (best != least) busy_skips_.fetch_add(1, std::memory_order_relaxed);
        next_ = (best + 1) % loops_.size();
        return *loops_[best];
    }
    // ANCHOR_END: pick

    common::UniqueFd epoll_;
    std::optional<Listener> listener_;
    const std::vector<std::unique_ptr<EventLoop>>& loops_;
    std::atomic<std::uint64_t>& busy_skips_;
    std::size_t next_ = 0;
};
// ANCHOR_END: acceptor

// ANCHOR: reuseport
// --reuseport: a listening socket per loop, all on one port. SO_REUSEPORT
// lets several sockets of one user bind the same address; the kernel then
// gives each new connection to one of them, chosen by a hash of the
// client's address and port. No thread hands anything over, and no
// accept() contends for one queue, but the kernel knows nothing about the
// loops: a loop that is busy still gets its share, and its new clients wait
// in its own backlog.
std::uint16_t bound_port(int fd) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) < 0)
        common::throw_errno("getsockname(fd " + std::to_string(fd) + ")");
    if (address.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
    return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
}

std::vector<common::UniqueFd> reuseport_listeners(common::ServerConfig config, long count) {
    auto reuse_port = [](int fd) {
        const int on = 1;
        if (::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0)
            common::throw_errno("setsockopt(SO_REUSEPORT, fd " + std::to_string(fd) + ")");
    };
    std::vector<common::UniqueFd> listeners;
    listeners.push_back(common::listen_tcp(config, SOCK_NONBLOCK, reuse_port));
    config.port = bound_port(listeners.front().get());  // --port 0: the others join the port the kernel chose
    for (long i = 1; i < count; ++i) listeners.push_back(common::listen_tcp(config, SOCK_NONBLOCK, reuse_port));
    return listeners;
}
// ANCHOR_END: reuseport

struct Options {
    long loops;
    bool reuseport;
    std::chrono::milliseconds idle_timeout;
    long workers;
    std::size_t queue_capacity;
};

// ANCHOR: server
// The whole server: the loops, each in its thread; the pool they share; and
// the main thread, which accepts (or, with --reuseport, only waits for the
// stop signal). The order of the members is the order of shutdown, reversed:
// the loop threads are joined first (the destructor), then the pool's
// workers, whose results go to the loops' inboxes, then the loops.
class Server {
public:
    Server(const common::ServerConfig& config, const Options& options, common::Stats& stats)
        : busy_skips_(stats.add_counter("busy_skips")),
          pool_(options.workers, options.queue_capacity,
                PoolCounters{stats.add_counter("workers"), stats.add_counter("jobs_queued"),
                             stats.add_counter("jobs_running"), stats.add_counter("jobs_running_peak"),
                             stats.add_counter("jobs_done")}) {
        stats.add_counter("loops") = static_cast<std::uint64_t>(options.loops);
        stats.add_counter("reuseport") = options.reuseport ? 1 : 0;
        // Counters every loop adds to. Registered once, here: /stats lists a name once.
        const LoopCounters shared{stats.add_counter("wakeups"),          stats.add_counter("timer_wakeups"),
                                  stats.add_counter("events"),           stats.add_counter("idle_closed"),
                                  stats.add_counter("turns_deferred"),   stats.add_counter("sleeps_pending"),
                                  stats.add_counter("sleeps_done"),      stats.add_counter("jobs_rejected"),
                                  stats.add_counter("completion_wakeups"), stats.add_counter("results_dropped"),
                                  stats.add_counter("arrival_wakeups"),  stats.add_counter("arrival_signals"),
                                  stats.add_counter("completion_signals")};
        std::vector<common::UniqueFd> listeners;
        if (options.reuseport) listeners = reuseport_listeners(config, options.loops);
        else acceptor_.emplace(common::listen_tcp(config, SOCK_NONBLOCK), loops_, busy_skips_);
        for (long i = 0; i < options.loops; ++i) {
            const std::string name = "loop" + std::to_string(i) + "_";
            std::optional<common::UniqueFd> own_listener;
            if (options.reuseport) own_listener = std::move(listeners[static_cast<std::size_t>(i)]);
            loops_.push_back(std::make_unique<EventLoop>(
                std::move(own_listener), options.idle_timeout, pool_, stats, shared,
                OwnCounters{stats.add_counter(name + "connections_open"), stats.add_counter(name + "connections_total"),
                            stats.add_counter(name + "requests")}));
        }
        // Every counter is registered: the loops may start (they serve
        // /stats, which lists them all). If one cannot start (EAGAIN), the
        // ones that did are stopped and joined before the exception leaves.
        try {
            for (auto& loop : loops_)
                threads_.push_back(common::start_thread_without_stop_signals([this, &loop] { run_loop(*loop); }));
        } catch (...) {
            stop_loops();
            throw;
        }
    }
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    ~Server() { stop_loops(); }

    // The port every listener shares, for the ready line.
    int listener() const { return acceptor_ ? acceptor_->listener() : loops_.front()->listener_fd(); }

    // Accepts (or waits) until a stop signal; then tells every loop that no
    // more connections will come, and waits for them to finish theirs.
    // Rethrows what made a loop fail.
    void run() {
        if (acceptor_) {
            acceptor_->run();
        } else {
            const sigset_t wait_mask = common::block_stop_signals();
            while (!common::stop_requested()) ::sigsuspend(&wait_mask);  // returns after each handled signal
        }
        stop_loops();
        if (failure_) std::rethrow_exception(failure_);
    }

private:
    void run_loop(EventLoop& loop) {
        try {
            loop.run();
        } catch (...) {
            {
                std::lock_guard lock(failure_mutex_);
                if (!failure_) failure_ = std::current_exception();
            }
            ::kill(::getpid(), SIGTERM);  // the whole server stops, as if told to, and exits 1
        }
    }

    void stop_loops() {
        for (auto& loop : loops_) loop->request_stop();
        for (std::thread& t : threads_)
            if (t.joinable()) t.join();
    }

    std::atomic<std::uint64_t>& busy_skips_;
    std::vector<std::unique_ptr<EventLoop>> loops_;
    WorkerPool pool_;
    std::optional<Acceptor> acceptor_;
    std::mutex failure_mutex_;
    std::exception_ptr failure_;  // guarded by failure_mutex_ until the threads are joined
    std::vector<std::thread> threads_;
};
// ANCHOR_END: server

}  // namespace

int main(int argc, char** argv) {
    const long cores = std::max(1u, std::thread::hardware_concurrency());
    long loops = cores;  // one loop per core
    long reuseport = 0;
    long idle_timeout_ms = 60'000;
    long workers = cores;  // /work needs a CPU each: one per core
    long queue_capacity = 1024;
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Chapter 11: one epoll loop per core, an acceptor that hands them connections (or SO_REUSEPORT).",
        {{"--loops", "N", "event loops, each in its own thread", &loops, 1, 1024},
         {"--reuseport", "", "a listening socket per loop (SO_REUSEPORT) instead of an acceptor", &reuseport, 0, 1},
         {"--idle-timeout", "MS", "close a connection after MS ms without a byte in or out, 0 = never",
          &idle_timeout_ms, 0, 3'600'000},
         {"--reads-per-turn", "N", "recv() calls one connection may make before the others get their turn",
          &reads_per_turn, 1, 1'000'000},
         {"--workers", "N", "worker threads for /work, shared by the loops; 0 = /work runs in the loop", &workers, 0,
          1024},
         {"--queue", "N", "/work jobs that may wait for a worker; more get 503", &queue_capacity, 1, 1'000'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("multi_reactor");
        Server server(config,
                      Options{loops, reuseport != 0, std::chrono::milliseconds(idle_timeout_ms), workers,
                              static_cast<std::size_t>(queue_capacity)},
                      stats);
        common::announce_listening(server.listener());
        server.run();
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
