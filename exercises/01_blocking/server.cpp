// Lab 01: a receive timeout for the blocking server (your task: see README.md).
//
// Model:   chapter 01's iterative server: one thread, one client at a time.
// Task:    with --idle-timeout MS, a client that stays silent for MS
//          milliseconds is disconnected, so it cannot hold the server (and
//          every client queued behind it) forever.
// Shows:   SO_RCVTIMEO: a blocking recv(2) that gives up with EAGAIN.
// Cannot:  stop a client that sends one byte just before every timeout
//          ("slowloris"): the timeout restarts with each recv. A deadline for
//          the whole request needs poll(2) or an event loop (chapters 06-09).
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstdio>
#include <exception>

#include "fd.hpp"
#include "http.hpp"
#include "server.hpp"
#include "stats.hpp"

namespace {


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
        ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);  // blocks until bytes arrive
        if (n > 0) {
            parser.feed({buffer, static_cast<std::size_t>(n)});
        } else if (n == 0) {
            return;  // the client closed its side
        } else if (errno == EINTR) {
            if (common::stop_requested()) return;  // SIGTERM while we waited: stop here
        // TODO(lab 01): once the receive timeout is set, recv() fails with
        // EAGAIN (or EWOULDBLOCK) when the client stays silent too long.
        // Handle that case here: answer 408 if part of a request had arrived,
        // then close the connection so the next client can be served.
        } else {
            common::log_client_error("recv", peer, errno);
            return;
        }
    }
}

}  // namespace

int main(int argc, char** argv) {
    long idle_timeout_ms = 0;  // 0: wait for a silent client forever, as in chapter 01
    const common::ServerConfig config = common::parse_command_line(
        argc, argv, "Lab 01: the blocking server with a receive timeout.",
        {{"--idle-timeout", "MS", "close a client after MS ms of silence, 0 = never", &idle_timeout_ms, 0, 3'600'000}});
    try {
        common::install_stop_handlers();
        common::Stats stats("blocking");
        common::UniqueFd listener = common::listen_tcp(config);
        common::announce_listening(listener.get());

        while (!common::stop_requested()) {
            // Blocks until a client connects. Others who connect meanwhile wait
            // in the listen backlog: the kernel completes their handshake, but
            // nobody reads what they send until we come back here.
            common::Accepted client = common::accept_client(listener.get());
            // Short of memory or descriptors (ENOBUFS, ENOMEM...): retrying at once would spin.
            if (client.status == common::Accepted::pause) common::sleep_for_accept_pause();
            if (client.status != common::Accepted::accepted) continue;  // EINTR, aborted, shed, paused
            auto counted = stats.track_connection();
            // TODO(lab 01): when --idle-timeout is set (idle_timeout_ms > 0), give
            // recv() on this client a timeout with setsockopt(SO_RCVTIMEO).
            serve_client(client.fd.get(), client.peer, stats);
            common::linger_close(client.fd.get());  // so that no reset cuts the last response short
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
