// Chapter 01: a blocking, iterative HTTP server.
//
// Model:   one thread does everything, one client at a time: accept a client,
//          read its requests and answer them until it leaves, then accept the next.
// Shows:   accept(2), recv(2) and send(2) as blocking calls; keep-alive and
//          pipelining on one connection; what "blocking" costs everyone else.
// Cannot:  serve two clients at once. While one client is connected, even a
//          silent one, every other client waits in the kernel's accept queue.
//          Chapter 02 (fork), 03 (threads) and 04 (thread pool) lift this.
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <exception>

#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {

// ANCHOR: serve_client
// Serves one client until it closes, asks to close, or sends something we
// cannot parse. Every call here may block, and while it blocks nobody else
// is served: that is the lesson of this chapter.
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
        // ANCHOR: blocking_recv
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);  // blocks until bytes arrive
        if (n > 0) {
            parser.feed({buffer, static_cast<std::size_t>(n)});
        } else if (n == 0) {
            return;  // the client closed its side
        } else if (errno == EINTR) {
            if (common::stop_requested()) return;  // SIGTERM while we waited: stop here
        // ANCHOR_END: blocking_recv
        } else {
            common::log_client_error("recv", peer, errno);
            return;
        }
    }
}
// ANCHOR_END: serve_client

}  // namespace

int main(int argc, char** argv) {
    const common::ServerConfig config =
        common::parse_command_line(argc, argv, "Chapter 01: a blocking server that serves one client at a time.");
    try {
        common::install_stop_handlers();
        common::Stats stats("blocking");
        common::UniqueFd listener = common::listen_tcp(config);
        common::announce_listening(listener.get());

        // ANCHOR: accept_loop
        while (!common::stop_requested()) {
            // Blocks until a client connects. Others who connect meanwhile wait
            // in the listen backlog: the kernel completes their handshake, but
            // nobody reads what they send until we come back here.
            // ANCHOR: accept_one
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR, aborted, shed, paused
            auto counted = stats.track_connection();
            serve_client(client.fd.get(), client.peer, stats);
            common::linger_close(client.fd.get());  // so that no reset cuts the last response short
            // ANCHOR_END: accept_one
        }  // end of the iteration: `client` goes out of scope and its socket is closed
        // ANCHOR_END: accept_loop
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
