// LAB BEGIN
// Lab 04: under load, a worker lets a keep-alive client go (solution).
// LAB SKELETON
//> // Lab 04: under load, a worker lets a keep-alive client go (your task: see README.md).
// LAB END
//
// Model:   chapter 04's pool: N workers take connections from a bounded queue
//          and serve each one until it leaves.
// Task:    when other connections wait in the queue, a worker that has just
//          answered a request does not wait for that client's next one: it
//          closes the connection (announced with "Connection: close" when it
//          can) and takes the next connection from the queue.
// Shows:   keep-alive is an offer the server may withdraw; a server may close
//          an idle keep-alive connection, and clients reconnect.
// Cannot:  help while the queue is empty: a worker already waiting in recv()
//          for a silent client stays there. N silent clients still starve
//          everyone else; chapters 05-09 stop waiting on one client at a time.
#include <sys/socket.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <exception>
#include <functional>
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
// holds one of the pool's few workers. others_waiting() tells whether a
// connection in the queue waits for a worker to become free.
// LAB BEGIN
void serve_client(int fd, const std::string& peer, common::Stats& stats, const std::function<bool()>& others_waiting) {
// LAB SKELETON
//> // TODO(lab 04): use others_waiting below, then remove [[maybe_unused]].
//> void serve_client(int fd, const std::string& peer, common::Stats& stats,
//>                   [[maybe_unused]] const std::function<bool()>& others_waiting) {
// LAB END
    http::RequestParser parser;
    char buffer[16 * 1024];
    for (;;) {
        // Answer every complete request already received (pipelining) first.
        for (http::ParseResult r = parser.next(); r.kind != http::ParseResult::need_more; r = parser.next()) {
            // LAB BEGIN
            // Others wait: this is the client's last request here, and we say
            // so. http::respond then sends "Connection: close" and closes.
            if (r.kind == http::ParseResult::complete && others_waiting()) r.request.keep_alive = false;
            // LAB SKELETON
            //> // TODO(lab 04): if others_waiting(), make this the connection's last
            //> // request: set r.request.keep_alive = false (for a complete request),
            //> // and http::respond answers with "Connection: close" and closes.
            // LAB END
            http::Reply reply = http::respond(r, stats);
            if (!common::send_reply(fd, reply, peer)) return;
            if (reply.close_after) return;  // the caller closes, lingering (see server.hpp)
            // LAB BEGIN
            // Others started waiting while we handled the request (a slow
            // /sleep, say): the reply already promised keep-alive, but a server
            // may close an idle connection at any time (RFC 9112, 9.6). With
            // nothing more from this client buffered, we let it go rather than
            // wait in recv() for its next request; it will reconnect.
            if (parser.buffered() == 0 && others_waiting()) return;  // the caller closes, lingering
            // LAB SKELETON
            //> // TODO(lab 04): the reply above promised keep-alive, but others may
            //> // have started waiting while the request ran (a slow /sleep, say).
            //> // If nothing more from this client is buffered (parser.buffered() == 0)
            //> // and others_waiting(), return here (the caller closes the connection)
            //> // instead of waiting in recv() below.
            // LAB END
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

// Connections waiting for a worker. One mutex guards the deque; workers sleep
// on the condition variable until there is work or the queue is closed.
class ConnectionQueue {
public:
    explicit ConnectionQueue(std::size_t capacity) : capacity_(capacity) {}

    // False when the queue is full: the caller must refuse the client.
    bool try_push(common::Accepted& client) {
        {
            std::lock_guard lock(mutex_);
            if (waiting_.size() >= capacity_) return false;
            waiting_.push_back(std::move(client));
        }
        ready_.notify_one();  // after unlocking, so the woken worker can take the lock at once
        return true;
    }

    // Blocks until a connection is queued; nullopt once closed and drained.
    std::optional<common::Accepted> pop() {
        std::unique_lock lock(mutex_);
        ++idle_workers_;
        ready_.wait(lock, [this] { return !waiting_.empty() || closed_; });
        --idle_workers_;
        if (waiting_.empty()) return std::nullopt;
        common::Accepted client = std::move(waiting_.front());
        waiting_.pop_front();
        return client;
    }

    // Workers finish what is queued, then pop() returns nullopt.
    void close() {
        {
            std::lock_guard lock(mutex_);
            closed_ = true;
        }
        ready_.notify_all();
    }

    // True if a queued connection has no idle worker to take it. "The queue
    // is not empty" is not enough: a connection just pushed, with an idle
    // worker waking up to take it, waits for nobody.
    bool waiting_for_a_worker() {
        std::lock_guard lock(mutex_);
        return waiting_.size() > idle_workers_;
    }

private:
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<common::Accepted> waiting_;
    const std::size_t capacity_;
    bool closed_ = false;
    std::size_t idle_workers_ = 0;  // workers blocked in pop()
};

struct PoolCounters {
    std::atomic<std::uint64_t>& workers;
    std::atomic<std::uint64_t>& busy_workers;
    std::atomic<std::uint64_t>& rejected;
};

// A worker takes one connection at a time and serves it outside the lock.
void run_worker(ConnectionQueue& queue, common::Stats& stats, PoolCounters& counters,
                common::OpenConnections& open) {
    while (std::optional<common::Accepted> client = queue.pop()) {
        counters.busy_workers.fetch_add(1);
        {
            common::OpenConnections::Entry entry = open.add(client->fd.get());
            common::Stats::ConnectionScope counted = stats.track_connection();
            serve_client(client->fd.get(), client->peer, stats, [&queue] { return queue.waiting_for_a_worker(); });
            common::linger_close(client->fd.get(), entry.begin_closing());  // no reset cuts the last response short
            client->fd.reset();
        }
        counters.busy_workers.fetch_sub(1);
    }
}

// The workers, started once and joined however main() ends (RAII).
class WorkerPool {
public:
    WorkerPool(long size, ConnectionQueue& queue, common::OpenConnections& open, common::Stats& stats,
               PoolCounters& counters)
        : queue_(queue), open_(open) {
        try {
            for (long i = 0; i < size; ++i)
                threads_.push_back(common::start_thread_without_stop_signals(
                    [&] { run_worker(queue, stats, counters, open); }));
        } catch (...) {  // no destructor runs for a constructor that throws
            stop_and_join();
            throw;
        }
    }
    WorkerPool(const WorkerPool&) = delete;
    WorkerPool& operator=(const WorkerPool&) = delete;

    ~WorkerPool() { stop_and_join(); }

private:
    void stop_and_join() {
        queue_.close();                 // workers drain what is queued, then leave
        open_.shut_down_reading_all();  // and idle clients no longer hold them
        for (std::thread& worker : threads_) worker.join();
    }

    ConnectionQueue& queue_;
    common::OpenConnections& open_;
    std::vector<std::thread> threads_;
};

}  // namespace

int main(int argc, char** argv) {
    long workers = 4;
    long queue_capacity = 64;
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Lab 04: a thread pool whose workers let keep-alive clients go when others wait.",
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

        while (!common::stop_requested()) {
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR, aborted, shed, paused
            if (!queue.try_push(client)) {
                // Backpressure: better a quick "no" than an unbounded wait.
                counters.rejected.fetch_add(1);
                common::send_all(client.fd.get(),
                                 http::serialize(http::error_response(503, "all workers are busy"), false), client.peer);
                common::shutdown_and_drain(client.fd.get());
            }
        }

        // Leaving this scope destroys the pool: see ~WorkerPool.
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
