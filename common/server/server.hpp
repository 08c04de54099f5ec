// What every chapter's server shares and no chapter teaches: the command line,
// the listening socket, accept(2) error handling, logging, and a blocking
// "send everything" helper; the stop signals are in stop.hpp, included here.
// The model itself (who calls accept and recv, and when) always stays in the
// chapter's server.cpp.
#pragma once

#include <sys/socket.h>

#include <condition_variable>
#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "fd.hpp"
#include "stop.hpp"

namespace common {

// ---- command line -----------------------------------------------------------

struct ServerConfig {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;  // 0: the kernel picks a free port
};

// A chapter-specific numeric option such as "--workers N".
struct ChapterOption {
    std::string_view name;        // "--workers"
    std::string_view value_name;  // "N"
    std::string_view help;        // one line
    long* value;                  // holds the default; receives the parsed value
    long min;
    long max;
};

// Parses --host, --port and the chapter's options. On a bad option it prints
// the usage to stderr and exits 2; on --help it prints it to stdout, exits 0.
ServerConfig parse_command_line(int argc, char** argv, std::string_view summary,
                                std::initializer_list<ChapterOption> options = {});

// ---- listening socket -------------------------------------------------------

// socket + SO_REUSEADDR + bind + listen, and the spare descriptor that
// accept_client frees when the process runs out. extra_type_flags may add SOCK_NONBLOCK.
// Throws std::system_error naming the call and address ("bind 127.0.0.1:80: ...").
UniqueFd listen_tcp(const ServerConfig& config, int extra_type_flags = 0);

// Prints "listening on HOST:PORT" (the port the kernel actually bound) and flushes,
// so that a test harness reading our stdout knows we are ready.
void announce_listening(int listen_fd);

// ---- accepting --------------------------------------------------------------

struct Accepted {
    enum Status {
        accepted,     // fd and peer are set
        would_block,  // EAGAIN on a non-blocking listener: nothing pending
        interrupted,  // EINTR: a signal arrived; check stop_requested()
        retry,        // the connection died before we took it (ECONNABORTED...)
        shed,         // out of descriptors (EMFILE/ENFILE): taken and closed at once
    };
    Status status = retry;
    UniqueFd fd;
    std::string peer;  // "127.0.0.1:54321"
};

// accept4(2) with every error a long-running server meets handled. On EMFILE
// the kernel keeps the connection queued and the listener stays readable, so
// a loop that just retries would spin at 100% CPU: instead we free a spare
// descriptor (taken by listen_tcp, while there were descriptors to take),
// accept the connection and close it, so the client gets a clean close and the
// backlog drains. accept4 says EMFILE before it waits for a client, so we
// first wait until one is pending (a non-blocking listener only looks) and try
// once more: only a client that is really there, and still cannot be taken, is
// shed. flags: SOCK_CLOEXEC is always added.
Accepted accept_client(int listen_fd, int flags = 0);

// ---- blocking I/O helpers (chapters 01-04) ----------------------------------

// Sends all of data on a blocking socket: retries partial writes and EINTR,
// never raises SIGPIPE (MSG_NOSIGNAL). Returns false if the peer is gone or
// the send failed (logged, except for the ordinary EPIPE/ECONNRESET).
bool send_all(int fd, std::string_view data, std::string_view peer);

// Half-closes our side and discards input that has already arrived. Closing a
// socket with unread input makes the kernel send RST, which can destroy the
// response we just sent (an error page, say) before the client reads it.
void shutdown_and_drain(int fd);

// ---- logging ------------------------------------------------------------------

// One line on stderr: "CALL PEER: strerror(errno)". EPIPE and ECONNRESET are
// ordinary ways for a client to leave and are not logged.
void log_client_error(std::string_view call, std::string_view peer, int error);
void log_line(std::string_view line);

// "127.0.0.1:8080" or "[::1]:8080" for a socket's local or peer address.
std::string format_address(const sockaddr* address, socklen_t length);

// ---- threaded servers (chapters 03, 04, 10, 11) -------------------------------

// Their threads start with start_thread_without_stop_signals (stop.hpp).
// The connections that threads are serving right now. A thread blocked in
// recv() never sees SIGTERM; to stop it, shutdown(fd, SHUT_RD) makes its
// recv() return 0 (after any bytes already received), as if the client had
// closed. Sending is not affected, so responses in progress still complete.
class OpenConnections {
public:
    class Entry {
    public:
        Entry(OpenConnections& owner, int fd) : owner_(&owner), fd_(fd) {}
        Entry(Entry&& other) noexcept : owner_(std::exchange(other.owner_, nullptr)), fd_(other.fd_) {}
        Entry& operator=(Entry&&) = delete;
        ~Entry() {
            if (owner_) owner_->remove(fd_);
        }

    private:
        OpenConnections* owner_;
        int fd_;
    };

    // Registers fd until the returned Entry is destroyed: destroy it before
    // closing fd. After stopping began, fd is shut down for reading at once.
    [[nodiscard]] Entry add(int fd);
    // Wakes every registered reader, now and from now on.
    void shut_down_reading_all();
    // Blocks until every Entry is gone. The grace alarm bounds the wait.
    void wait_until_empty();

private:
    void remove(int fd);

    std::mutex mutex_;
    std::condition_variable empty_;
    // A multiset: a socket is closed before its Entry goes, so accept() may
    // hand the same number to a new connection while the old Entry still
    // exists. Each registration counts on its own; shutdown(fd) reaches the
    // socket that has the number now.
    std::unordered_multiset<int> fds_;
    bool stopping_ = false;
};

}  // namespace common
