// Chapter 03: a thread per connection.
//
// Model:   the main thread only accepts. For each client it starts a
//          std::thread, which serves that client with chapter 01's blocking
//          code and ends when the client leaves.
// Shows:   threads share one address space, so one Stats object counts every
//          request (compare chapter 02); a thread blocked in recv() never sees
//          SIGTERM, so stopping means waking it (shutdown(2)) and waiting for it.
// Cannot:  hold many idle connections cheaply: each thread reserves a stack
//          (8 MiB of address space by default) and kernel state, and the
//          number of threads grows with the number of clients, without limit.
//          Chapter 04 fixes the number of threads.
#include <sys/socket.h>

#include <cerrno>
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

// ANCHOR: connection_thread
// The body of one connection's thread. main() registered and counted the
// connection before starting us (so a SIGTERM right now still finds it in
// `open`); we take those over as locals, in this order, because locals are
// destroyed in reverse: the fd closes and the stats are updated first, the
// Entry goes last, and main() may return as soon as the last Entry is gone.
void run_connection(common::Accepted client, common::OpenConnections::Entry registered,
                    common::Stats::ConnectionScope counted_by_main, common::Stats& stats) {
    // ANCHOR: connection_locals
    common::OpenConnections::Entry entry = std::move(registered);
    common::Stats::ConnectionScope counted = std::move(counted_by_main);
    serve_client(client.fd.get(), client.peer, stats);
    common::linger_close(client.fd.get(), entry.begin_closing());  // no reset cuts the last response short
    client.fd.reset();
    // ANCHOR_END: connection_locals
}
// ANCHOR_END: connection_thread

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config =
        common::parse_command_line(argc, argv, "Chapter 03: a server that starts a thread per connection.");
    try {
        common::install_stop_handlers();
        common::Stats stats("thread_per_connection");
        common::OpenConnections open;
        common::UniqueFd listener = common::listen_tcp(config);
        common::announce_listening(listener.get());

        // ANCHOR: accept_loop
        while (!common::stop_requested()) {
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR, aborted, shed, paused
            const std::string peer = client.peer;
            try {
                // ANCHOR: start_thread
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
                // ANCHOR_END: start_thread
            } catch (const std::system_error& e) {
                // EAGAIN: no more threads. The lambda, and the socket it owned,
                // are already destroyed: the client sees its connection close.
                common::log_line("std::thread for " + peer + ": " + e.what());
            }
        }
        // ANCHOR_END: accept_loop

        // ANCHOR: shutdown
        open.shut_down_reading_all();  // idle threads read EOF and end
        open.wait_until_empty();       // busy ones finish their response first
        // ANCHOR_END: shutdown
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
