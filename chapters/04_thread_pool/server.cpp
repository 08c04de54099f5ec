// Chapter 04: a thread pool.
//
// Model:   a fixed number of worker threads (--workers N) started once. The
//          main thread accepts and puts each connection in a bounded queue
//          (--queue N); an idle worker takes it and serves it until the client
//          leaves, then takes the next.
// Shows:   a queue guarded by a mutex and a condition variable; the work runs
//          outside the lock; backpressure (a full queue answers 503); a
//          shutdown that drains the queue and joins every worker.
// Cannot:  serve more clients at once than it has workers. A worker waits in
//          recv() for as long as its client is connected, so N silent
//          keep-alive clients starve everyone else. Chapters 05-09 stop
//          waiting on one client at a time.
#include <sys/socket.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

// Serves one client until it closes, asks to close, or sends something we
// cannot parse. The same blocking code as chapter 01: while it waits, it
// holds one of the pool's few workers.
void serve_client(int fd, const std::string& peer, common::Stats& stats) {
    http::RequestParser parser;
    char buffer[16 * 1024];
    for (;;) {
        // Answer every complete request already received (pipelining) first.
        for (http::ParseResult r = parser.next(); r.kind != http::ParseResult::need_more; r = parser.next()) {
            http::Reply reply = http::respond(r, stats);
            if (!common::send_reply(fd, reply, peer)) return;
            if (reply.close_after) return;  // the caller closes, lingering (see server.hpp)
        }
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);  // blocks this worker
        if (n > 0) {
            parser.feed({buffer, static_cast<std::size_t>(n)});
        } else if (n == 0) {
            return;  // the client closed its side, or we are stopping (shutdown SHUT_RD)
        } else if (errno == EINTR) {
            if (common::stop_requested()) return;
        } else {
            common::log_client_error("recv", peer, errno);
            return;
        }
    }
}

// ANCHOR: queue
// Connections waiting for a worker. One mutex guards the deque; workers sleep
// on the condition variable until there is work or the queue is closed.
class ConnectionQueue {
public:
    explicit ConnectionQueue(std::size_t capacity) : capacity_(capacity) {}

    // False when the queue is full: the caller must refuse the client.
    // ANCHOR: try_push
    bool try_push(common::Accepted& client) {
        {
            std::lock_guard lock(mutex_);
            if (waiting_.size() >= capacity_) return false;
            waiting_.push_back(std::move(client));
        }
        ready_.notify_one();  // after unlocking, so the woken worker can take the lock at once
        return true;
    }
    // ANCHOR_END: try_push

    // Blocks until a connection is queued; nullopt once closed and drained.
    // ANCHOR: pop
    std::optional<common::Accepted> pop() {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [this] { return !waiting_.empty() || closed_; });
        if (waiting_.empty()) return std::nullopt;
        common::Accepted client = std::move(waiting_.front());
        waiting_.pop_front();
        return client;
    }
    // ANCHOR_END: pop

    // Workers finish what is queued, then pop() returns nullopt.
    void close() {
        {
            std::lock_guard lock(mutex_);
            closed_ = true;
        }
        ready_.notify_all();
    }

private:
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<common::Accepted> waiting_;
    const std::size_t capacity_;
    bool closed_ = false;
};
// ANCHOR_END: queue

struct PoolCounters {
    std::atomic<std::uint64_t>& workers;
    std::atomic<std::uint64_t>& busy_workers;
    std::atomic<std::uint64_t>& rejected;
};

// ANCHOR: worker
// A worker takes one connection at a time and serves it outside the lock.
void run_worker(ConnectionQueue& queue, common::Stats& stats, PoolCounters& counters,
                common::OpenConnections& open) {
    while (std::optional<common::Accepted> client = queue.pop()) {
        counters.busy_workers.fetch_add(1);
        {
            common::OpenConnections::Entry entry = open.add(client->fd.get());
            common::Stats::ConnectionScope counted = stats.track_connection();
            serve_client(client->fd.get(), client->peer, stats);
            common::linger_close(client->fd.get(), entry.begin_closing());  // no reset cuts the last response short
            client->fd.reset();
        }
        counters.busy_workers.fetch_sub(1);
    }
}
// ANCHOR_END: worker

// The workers, started once and joined however main() ends (RAII).
class WorkerPool {
public:
    WorkerPool(long size, ConnectionQueue& queue, common::OpenConnections& open, common::Stats& stats,
               PoolCounters& counters)
        : queue_(queue), open_(open) {
        try {
            // ANCHOR: pool_start
            for (long i = 0; i < size; ++i)
                threads_.push_back(common::start_thread_without_stop_signals(
                    [&] { run_worker(queue, stats, counters, open); }));
            // ANCHOR_END: pool_start
        } catch (...) {  // no destructor runs for a constructor that throws
            stop_and_join();
            throw;
        }
    }
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    ~WorkerPool() { stop_and_join(); }

private:
    // ANCHOR: shutdown
    void stop_and_join() {
        queue_.close();                 // workers drain what is queued, then leave
        open_.shut_down_reading_all();  // and idle clients no longer hold them
        for (std::thread& worker : threads_) worker.join();
    }
    // ANCHOR_END: shutdown

    ConnectionQueue& queue_;
    common::OpenConnections& open_;
    std::vector<std::thread> threads_;
};

}  // namespace

int main(int argc, char** argv) {
    long workers = 4;
    long queue_capacity = 64;
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Chapter 04: a server with a fixed pool of worker threads.",
        {{"--workers", "N", "worker threads", &workers, 1, 1024},
         {"--queue", "N", "connections that may wait for a worker; more get 503", &queue_capacity, 1, 1'000'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("thread_pool");
        PoolCounters counters{stats.add_counter("workers"), stats.add_counter("busy_workers"),
                              stats.add_counter("rejected")};
        counters.workers = static_cast<std::uint64_t>(workers);
        common::OpenConnections open;
        ConnectionQueue queue(static_cast<std::size_t>(queue_capacity));
        common::UniqueFd listener = common::listen_tcp(config);

        WorkerPool pool(workers, queue, open, stats, counters);
        common::announce_listening(listener.get());

        // ANCHOR: accept_loop
        while (!common::stop_requested()) {
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR, aborted, shed, paused
            // ANCHOR: backpressure
            if (!queue.try_push(client)) {
                // Backpressure: better a quick "no" than an unbounded wait.
                counters.rejected.fetch_add(1);
                common::send_all(client.fd.get(),
                                 http::serialize(http::error_response(503, "all workers are busy"), false), client.peer);
                common::shutdown_and_drain(client.fd.get());
            }
            // ANCHOR_END: backpressure
        }
        // ANCHOR_END: accept_loop

        // Leaving this scope destroys the pool: see ~WorkerPool.
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
