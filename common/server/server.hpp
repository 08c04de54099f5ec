// What every chapter's server shares and no chapter teaches: the command line,
// the listening socket, accept(2) error handling, logging, and a blocking
// "send everything" helper; the stop signals are in stop.hpp, included here.
// The model itself (who calls accept and recv, and when) always stays in the
// chapter's server.cpp.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include "fd.hpp"
#include "http.hpp"
#include "stop.hpp"

namespace common {

// ---- command line -----------------------------------------------------------

struct ServerConfig {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;  // 0: the kernel picks a free port
};

// A chapter-specific numeric option such as "--workers N", or a flag such
// as "--reuseport" (no value name: present, it sets the value to 1).
struct ChapterOption {
    std::string_view name;        // "--workers"
    std::string_view value_name;  // "N", or empty for a flag
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
// before_bind, if given, is called with the new socket before bind (chapter
// 11 sets SO_REUSEPORT there).
// Throws std::system_error naming the call and address ("bind 127.0.0.1:80: ...").
UniqueFd listen_tcp(const ServerConfig& config, int extra_type_flags = 0,
                    const std::function<void(int fd)>& before_bind = {});

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
        pause,        // the system is short of memory or descriptors (ENOBUFS, ENOMEM,
                      // EMFILE with no spare to free): stop accepting for kAcceptPause
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
//
// ENOBUFS and ENOMEM (the kernel is short of memory), and EMFILE or ENFILE
// when the spare could not be freed (there was none, or the descriptor it
// left went elsewhere), mean "not now": the client stays queued, the
// listener stays readable, and trying again at once fails again, so a loop
// that retried would spin. accept_client then says `pause`: the caller stops
// accepting for kAcceptPause and tries again (nginx disables its accept
// events on EMFILE for a while, the same idea). It logs one line per pause
// ("accept4 fd 3: Cannot allocate memory; pausing accept for 100 ms") and
// counts it (accept_pauses in /stats), never a line per attempt.
Accepted accept_client(int listen_fd, int flags = 0);

// How long accepting pauses after Accepted::pause: long enough that a server
// short of memory spends next to nothing on retries (about 10 accept4 calls a
// second), short enough that a waiting client is hardly kept waiting when
// memory comes back. (nginx waits 500 ms.)
inline constexpr std::chrono::milliseconds kAcceptPause{100};

// For a thread that blocks in accept (chapters 01-04): sleeps kAcceptPause.
// A stop signal ends the sleep early (the caller then sees stop_requested());
// another signal, such as chapter 02's SIGCHLD, does not shorten the pause.
void sleep_for_accept_pause();

// ---- blocking I/O helpers (chapters 01-04) ----------------------------------

// Sends all of data on a blocking socket: retries partial writes and EINTR,
// never raises SIGPIPE (MSG_NOSIGNAL). Returns false if the peer is gone or
// the send failed (logged, except for the ordinary EPIPE/ECONNRESET).
bool send_all(int fd, std::string_view data, std::string_view peer);

// How much of a generated body (http::Reply::rest) is made at a time: a
// thread holds one piece, whatever the size of the response.
inline constexpr std::size_t kSendPiece = 64 * 1024;

// Sends a whole reply with send_all: its bytes, then its generated rest,
// one piece of kSendPiece at a time.
bool send_reply(int fd, const http::Reply& reply, std::string_view peer);

// ---- closing: the lingering close (RFC 9112 section 9.6) ---------------------
//
// close(2) on a socket whose receive queue still holds bytes, or that receives
// bytes afterwards, makes the kernel answer with a reset (RST); the reset
// throws away whatever of our response is still queued to be sent, and the
// client may lose what it received but had not read yet. A client that
// pipelines, or sends a body we did not read, or simply keeps talking after
// "Connection: close", would see its response cut short. So a connection ends
// in two steps: shut down our side for writing (the client then reads our
// response and then end of stream), read and discard whatever the client
// still sends until it closes its side too, and only then close. A client
// that never closes is given kLingerTimeout, and at most kLingerMaxBytes.
// (Apache httpd waits 2 s; nginx calls this "lingering close".)
inline constexpr std::chrono::milliseconds kLingerTimeout{2000};
inline constexpr std::size_t kLingerMaxBytes = 4 * 1024 * 1024;

// A lingering close for a loop that must not block (chapters 05-09): start()
// it, call discard() whenever the socket is readable, and close the socket
// when discard() says so or expired() does.
class LingeringClose {
public:
    using Clock = std::chrono::steady_clock;

    // Shuts our side down for writing and starts the clock. Returns false if
    // there is nothing to wait for: the peer is gone, or the server is
    // stopping and nothing is in flight either way (see nothing_in_flight).
    bool start(int fd);
    // Reads and discards what has arrived, until EAGAIN. True when the socket
    // may be closed now: the client closed its side, an error, too many bytes,
    // or over() says so.
    bool discard(int fd);
    // True when waiting is over without a word from the client: the deadline
    // has passed, or the server is stopping and nothing is in flight any more.
    bool over(int fd, Clock::time_point now) const;
    bool active() const { return active_; }
    Clock::time_point deadline() const { return deadline_; }

private:
    bool active_ = false;
    Clock::time_point deadline_{};
    std::size_t budget_ = kLingerMaxBytes;
};

// While stopping, a loop with lingering connections waits at most this long
// at a time, to ask over() again: the acknowledgement that makes a connection
// quiet wakes nobody.
inline constexpr std::chrono::milliseconds kStopRecheck{50};

// The same for a thread that may block (chapters 01-04): returns when the
// socket may be closed. EINTR does not end it (a response must not be cut
// short by a stop); the grace timer bounds a stop anyway. If our reading has
// been shut down (chapters 03 and 04 wake their threads at a stop that way,
// see OpenConnections), our side cannot shut down writing as well without
// the kernel resetting the connection at the client's next byte: then it
// waits, discarding input, until the client has acknowledged everything.
void linger_close(int fd, bool reading_shut_down = false);

// True when neither direction has anything in flight: the peer acknowledged
// every byte we sent, and nothing it sent waits unread. A stopping server
// closes such a connection at once (an idle keep-alive client, typically):
// there is nothing a reset could destroy.
bool nothing_in_flight(int fd);

// Best effort, for a refusal (a 503 from an accepting thread, which must not
// wait for the client it refuses): shuts our side down and discards what has
// already arrived, without waiting for more.
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
    struct Registration {
        int fd;
        bool closing = false;  // in its lingering close: not to be woken (see begin_closing)
    };
    using Position = std::list<Registration>::iterator;

public:
    class Entry {
    public:
        Entry(OpenConnections& owner, Position position) : owner_(&owner), position_(position) {}
        Entry(Entry&& other) noexcept
            : owner_(std::exchange(other.owner_, nullptr)), position_(other.position_) {}
        Entry& operator=(Entry&&) = delete;
        ~Entry() {
            if (owner_) owner_->remove(position_);
        }

        // The connection's last response is out and its thread begins the
        // lingering close (linger_close): from now on a stop leaves its
        // reading alone. Returns whether its reading has been shut down
        // already, which linger_close must be told: shutting down writing
        // too would make the kernel reset the connection at the client's next
        // byte (RFC 1122 section 4.2.2.13, which Linux follows).
        [[nodiscard]] bool begin_closing();

    private:
        OpenConnections* owner_;
        Position position_;
    };

    // Registers fd until the returned Entry is destroyed: destroy it before
    // closing fd. After stopping began, fd is shut down for reading at once.
    [[nodiscard]] Entry add(int fd);
    // Wakes every registered reader, now and from now on.
    void shut_down_reading_all();
    // Blocks until every Entry is gone. The grace alarm bounds the wait.
    void wait_until_empty();

private:
    void remove(Position position);

    std::mutex mutex_;
    std::condition_variable empty_;
    // One registration each: a socket is closed before its Entry goes, so
    // accept() may hand the same number to a new connection while the old
    // Entry still exists. Each registration counts on its own; shutdown(fd)
    // reaches the socket that has the number now.
    std::list<Registration> registered_;
    bool stopping_ = false;
};

}  // namespace common
