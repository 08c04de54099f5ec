// LAB BEGIN
// Lab 03: a limit on connections, and so on threads (solution).
// LAB SKELETON
//> // Lab 03: a limit on connections, and so on threads (your task: see README.md).
// LAB END
//
// Model:   chapter 03's server: the main thread accepts and starts a thread
//          per connection.
// Task:    with --max-connections N, a client that arrives while N
//          connections are open gets 503 and is closed, without a thread.
// Shows:   admission control on the accepting thread; a counter that one
//          thread raises and many threads lower, checked without a lock.
// Cannot:  tell a busy client from an idle one: N silent clients take every
//          place, and everyone else gets 503. Chapter 04's pool has the same
//          limit; chapters 05-09 stop giving each client a waiting thread.
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <system_error>
#include <thread>

#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

// Serves one client until it closes, asks to close, or sends something we
// cannot parse. The same blocking code as chapter 01: here it blocks only
// the thread it runs on.
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
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);  // blocks this thread only
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

// The body of one connection's thread. main() registered and counted the
// connection before starting us (so a SIGTERM right now still finds it in
// `open`); we take those over as locals, in this order, because locals are
// destroyed in reverse: the fd closes and the stats are updated first, the
// Entry goes last, and main() may return as soon as the last Entry is gone.
void run_connection(common::Accepted client, common::OpenConnections::Entry registered,
                    common::Stats::ConnectionScope counted_by_main, common::Stats& stats) {
    common::OpenConnections::Entry entry = std::move(registered);
    common::Stats::ConnectionScope counted = std::move(counted_by_main);
    serve_client(client.fd.get(), client.peer, stats);
    common::linger_close(client.fd.get(), entry.begin_closing());  // no reset cuts the last response short
    client.fd.reset();
}

}  // namespace

int main(int argc, char** argv) {
    long max_connections = 0;  // 0: no limit, as in chapter 03
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Lab 03: a thread per connection, with a limit on open connections.",
        {{"--max-connections", "N", "answer 503 to a client beyond N open connections, 0 = no limit",
          &max_connections, 0, 1'000'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("thread_per_connection");
        common::OpenConnections open;
        common::UniqueFd listener = common::listen_tcp(config);
        common::announce_listening(listener.get());

        while (!common::stop_requested()) {
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR, aborted, shed, paused
            // LAB BEGIN
            // Full: refuse on this thread, at once. Only this thread raises
            // connections_open (below, before the new thread starts), so the
            // count cannot grow between the check and the increment; threads
            // that end can only lower it. A 503 fits in the fresh socket's
            // send buffer: send_all won't block the accept loop.
            if (max_connections > 0 && stats.connections_open.load() >= static_cast<std::uint64_t>(max_connections)) {
                common::send_all(client.fd.get(),
                                 http::serialize(http::error_response(503, "too many connections"), false), client.peer);
                common::shutdown_and_drain(client.fd.get());
                continue;
            }
            // LAB SKELETON
            //> // TODO(lab 03): when --max-connections is set (max_connections > 0) and
            //> // that many connections are open (stats.connections_open), answer 503
            //> // here (http::error_response, http::serialize(..., false),
            //> // common::send_all), then common::shutdown_and_drain, and skip to the
            //> // next client: no thread for this one.
            // LAB END
            const std::string peer = client.peer;
            try {
                // Registered here, before the thread exists, so that stopping
                // always knows about it. detach(): nobody joins a connection's
                // thread; open.wait_until_empty() below is how main() knows
                // they are done.
                common::OpenConnections::Entry entry = open.add(client.fd.get());
                common::Stats::ConnectionScope counted = stats.track_connection();
                common::start_thread_without_stop_signals(
                    [client = std::move(client), entry = std::move(entry), counted = std::move(counted),
                     &stats]() mutable {
                        run_connection(std::move(client), std::move(entry), std::move(counted), stats);
                    })
                    .detach();
            } catch (const std::system_error& e) {
                // EAGAIN: no more threads. The lambda, and the socket it owned,
                // are already destroyed: the client sees its connection close.
                common::log_line("std::thread for " + peer + ": " + e.what());
            }
        }

        open.shut_down_reading_all();  // idle threads read EOF and end
        open.wait_until_empty();       // busy ones finish their response first
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
