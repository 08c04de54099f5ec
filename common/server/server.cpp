#include "server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <vector>

#include "error.hpp"
#include "stats.hpp"

namespace common {

// ---- command line -----------------------------------------------------------

namespace {

void print_usage(std::FILE* out, std::string_view program, std::string_view summary,
                 std::initializer_list<ChapterOption> options) {
    std::fprintf(out, "usage: %.*s [--host ADDR] [--port N]", int(program.size()), program.data());
    for (const ChapterOption& o : options) {
        if (o.value_name.empty())
            std::fprintf(out, " [%.*s]", int(o.name.size()), o.name.data());
        else
            std::fprintf(out, " [%.*s %.*s]", int(o.name.size()), o.name.data(), int(o.value_name.size()),
                         o.value_name.data());
    }
    std::fprintf(out, "\n%.*s\n\n", int(summary.size()), summary.data());
    std::fprintf(out, "  --host ADDR   address to listen on (default 127.0.0.1)\n");
    std::fprintf(out, "  --port N      port to listen on, 0 for any free port (default 8080)\n");
    for (const ChapterOption& o : options) {
        if (o.value_name.empty())  // a flag
            std::fprintf(out, "  %.*s  %.*s\n", int(o.name.size()), o.name.data(), int(o.help.size()), o.help.data());
        else
            std::fprintf(out, "  %.*s %.*s  %.*s (default %ld, %ld..%ld)\n", int(o.name.size()), o.name.data(),
                         int(o.value_name.size()), o.value_name.data(), int(o.help.size()), o.help.data(), *o.value,
                         o.min, o.max);
    }
}

// A chapter option without a value name is a flag: present, it sets 1.
const ChapterOption* find_flag(std::initializer_list<ChapterOption> options, std::string_view arg) {
    for (const ChapterOption& o : options)
        if (o.value_name.empty() && arg == o.name) return &o;
    return nullptr;
}

std::optional<long> parse_long(std::string_view text) {
    long value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

}  // namespace

ServerConfig parse_command_line(int argc, char** argv, std::string_view summary,
                                std::initializer_list<ChapterOption> options) {
    ServerConfig config;
    std::string_view program = argc > 0 ? argv[0] : "server";
    auto fail = [&](const std::string& message) {
        std::fprintf(stderr, "%s: %s\n", std::string(program).c_str(), message.c_str());
        print_usage(stderr, program, summary, options);
        std::exit(2);
    };
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            print_usage(stdout, program, summary, options);
            std::exit(0);
        }
        if (const ChapterOption* flag = find_flag(options, arg)) {
            *flag->value = 1;
            continue;
        }
        if (i + 1 >= argc) fail("missing value for " + std::string(arg));
        std::string_view value = argv[++i];
        if (arg == "--host") {
            config.host = std::string(value);
            continue;
        }
        std::optional<long> number = parse_long(value);
        if (arg == "--port") {
            if (!number || *number < 0 || *number > 65535) fail("bad port: " + std::string(value));
            config.port = static_cast<std::uint16_t>(*number);
            continue;
        }
        bool known = false;
        for (const ChapterOption& o : options) {
            if (arg != o.name) continue;
            if (!number || *number < o.min || *number > o.max)
                fail("bad value for " + std::string(arg) + ": " + std::string(value));
            *o.value = *number;
            known = true;
        }
        if (!known) fail("unknown option " + std::string(arg));
    }
    return config;
}

// ---- listening socket -------------------------------------------------------

std::string format_address(const sockaddr* address, socklen_t length) {
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (address->sa_family == AF_INET && length >= sizeof(sockaddr_in)) {
        auto* in = reinterpret_cast<const sockaddr_in*>(address);
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        return std::string(host) + ":" + std::to_string(port);
    }
    if (address->sa_family == AF_INET6 && length >= sizeof(sockaddr_in6)) {
        auto* in6 = reinterpret_cast<const sockaddr_in6*>(address);
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        return "[" + std::string(host) + "]:" + std::to_string(port);
    }
    return "?";
}

namespace {

// One descriptor held in reserve for the EMFILE dance (see accept_client).
// It is taken with the listener, while descriptors are surely available: a
// server that looked for it only when out of them would find none.
std::mutex g_spare_mutex;
UniqueFd g_spare_fd;

UniqueFd open_spare() { return UniqueFd(::open("/dev/null", O_RDONLY | O_CLOEXEC)); }

}  // namespace

UniqueFd listen_tcp(const ServerConfig& config, int extra_type_flags, const std::function<void(int fd)>& before_bind) {
    const std::string where = config.host + ":" + std::to_string(config.port);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    const std::string service = std::to_string(config.port);
    if (int rc = getaddrinfo(config.host.c_str(), service.c_str(), &hints, &found); rc != 0)
        throw std::runtime_error("getaddrinfo " + where + ": " + gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(found, freeaddrinfo);

    const addrinfo* ai = list.get();  // the first address is the one we were asked for
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | extra_type_flags, ai->ai_protocol));
    if (!fd) throw_errno("socket " + where);
    // Lets a restarted server bind while old connections sit in TIME_WAIT.
    int on = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0)
        throw_errno("setsockopt SO_REUSEADDR " + where);
    if (before_bind) before_bind(fd.get());
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) throw_errno("bind " + where);
    if (::listen(fd.get(), SOMAXCONN) != 0) throw_errno("listen " + where);
    std::lock_guard lock(g_spare_mutex);
    if (!g_spare_fd) g_spare_fd = open_spare();
    if (!g_spare_fd) throw_errno("open /dev/null (the spare descriptor for EMFILE)");
    return fd;
}

void announce_listening(int listen_fd) {
    sockaddr_storage address{};
    socklen_t length = sizeof address;
    if (::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
        throw_errno("getsockname fd " + std::to_string(listen_fd));
    std::printf("listening on %s\n", format_address(reinterpret_cast<sockaddr*>(&address), length).c_str());
    std::fflush(stdout);
}

// ---- accepting --------------------------------------------------------------

namespace {

// Counts and logs shed connections, at most once per second.
void log_shed(int error) {
    static std::mutex mutex;
    static long shed = 0;
    static time_t last = 0;
    std::lock_guard lock(mutex);
    ++shed;
    time_t now = time(nullptr);
    if (now == last) return;
    last = now;
    log_line("accept: " + std::string(std::strerror(error)) + "; " + std::to_string(shed) +
             " connection(s) closed unserved so far");
}

// "Not now": one line and one count per pause, however long the shortage lasts.
Accepted pause_accepting(int listen_fd, int error, std::string_view why) {
    g_accept_pauses.fetch_add(1, std::memory_order_relaxed);
    log_line("accept4 fd " + std::to_string(listen_fd) + ": " + std::strerror(error) + std::string(why) +
             "; pausing accept for " + std::to_string(kAcceptPause.count()) + " ms");
    Accepted result;
    result.status = Accepted::pause;
    return result;
}

}  // namespace

void sleep_for_accept_pause() {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(kAcceptPause).count();
    timespec left{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    timespec rest{};
    while (::nanosleep(&left, &rest) != 0) {
        if (errno != EINTR) throw_errno("nanosleep " + std::to_string(kAcceptPause.count()) + " ms");
        if (stop_requested()) return;  // the accept loop looks at the flag next
        left = rest;                    // any other signal: sleep the rest
    }
}

Accepted accept_client(int listen_fd, int flags) {
    {
        std::lock_guard lock(g_spare_mutex);
        if (!g_spare_fd) g_spare_fd = open_spare();  // given back after a dance that could not retake it
    }
    Accepted result;
    bool waited_for_client = false;
    for (;;) {
        sockaddr_storage address{};
        socklen_t length = sizeof address;
        int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&address), &length, flags | SOCK_CLOEXEC);
        if (fd >= 0) {
            result.status = Accepted::accepted;
            result.fd.reset(fd);
            result.peer = format_address(reinterpret_cast<sockaddr*>(&address), length);
            return result;
        }
        const int error = errno;
        switch (error) {
            case EAGAIN:
                result.status = Accepted::would_block;
                return result;
            case EINTR:
                result.status = Accepted::interrupted;
                return result;
            case EMFILE:
            case ENFILE: {
                // accept4 fails at once, before it waits for a client: with no
                // descriptor it reserves none. Shed only a client that is really
                // there (a blocking listener waits for one here, a non-blocking
                // one only looks), and first try again: descriptors may have
                // come free while we waited.
                if (!waited_for_client) {
                    const int flags_now = ::fcntl(listen_fd, F_GETFL);
                    if (flags_now < 0) throw_errno("fcntl F_GETFL fd " + std::to_string(listen_fd));
                    pollfd pending{listen_fd, POLLIN, 0};
                    const int ready = ::poll(&pending, 1, (flags_now & O_NONBLOCK) ? 0 : -1);
                    if (ready < 0 && errno != EINTR) throw_errno("poll fd " + std::to_string(listen_fd));
                    if (ready < 0) {
                        result.status = Accepted::interrupted;
                        return result;
                    }
                    if (ready == 0) {
                        result.status = Accepted::would_block;
                        return result;
                    }
                    waited_for_client = true;
                    continue;
                }
                std::lock_guard lock(g_spare_mutex);
                const bool had_spare = static_cast<bool>(g_spare_fd);
                g_spare_fd.reset();  // frees exactly one descriptor
                UniqueFd doomed(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
                const int doomed_error = doomed ? 0 : errno;
                const bool shed = static_cast<bool>(doomed);
                doomed.reset();  // the client sees the connection close instead of hanging
                g_spare_fd = open_spare();
                // No spare to free, or the freed number went elsewhere (or the
                // kernel has no memory either): the client is still queued and
                // nothing can be done for it now.
                if (!had_spare)
                    return pause_accepting(listen_fd, error, " (no spare descriptor to free)");
                if (doomed_error == EMFILE || doomed_error == ENFILE || doomed_error == ENOBUFS ||
                    doomed_error == ENOMEM)
                    return pause_accepting(listen_fd, doomed_error, " (freeing the spare did not help)");
                if (shed) log_shed(error);
                // Nothing shed (the client left meanwhile): "nothing more now",
                // rather than have the caller retry at once.
                result.status = shed ? Accepted::shed : Accepted::would_block;
                return result;
            }
            // The connection was reset or the network failed after the handshake but
            // before we took the connection; accept(2) says to treat these like EAGAIN.
            case ECONNABORTED:
            case EPROTO:
            case ENETDOWN:
            case ENOPROTOOPT:
            case EHOSTDOWN:
            case ENONET:
            case EHOSTUNREACH:
            case EOPNOTSUPP:
            case ENETUNREACH:
            case ETIMEDOUT:
            case EPERM:  // a firewall rule refused it
                result.status = Accepted::retry;
                return result;
            // The kernel is short of memory for the new socket; it will not
            // have more a microsecond from now.
            case ENOBUFS:
            case ENOMEM:
                return pause_accepting(listen_fd, error, "");
            default:  // EBADF, EINVAL, ENOTSOCK...: a bug in the server, not a client's doing
                throw_error_code(error, "accept4 fd " + std::to_string(listen_fd));
        }
    }
}

// ---- blocking I/O helpers ---------------------------------------------------

bool send_all(int fd, std::string_view data, std::string_view peer) {
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n >= 0) {
            data.remove_prefix(static_cast<std::size_t>(n));  // a partial write: send the rest
            continue;
        }
        if (errno == EINTR) continue;  // a signal, not an error; finish the response
        log_client_error("send", peer, errno);
        return false;
    }
    return true;
}

bool send_reply(int fd, const http::Reply& reply, std::string_view peer) {
    if (!send_all(fd, reply.bytes, peer)) return false;
    http::GeneratedBody rest = reply.rest;
    std::string piece;
    while (!rest.done()) {
        piece.clear();
        rest.append_to(piece, kSendPiece);
        if (!send_all(fd, piece, peer)) return false;
    }
    return true;
}

// ---- closing: the lingering close -------------------------------------------

namespace {

// The peer's FIN has arrived. recv() returning 0 says so too, except after our
// own shutdown(SHUT_RD) (chapters 03 and 04 stop their threads that way): then
// it returns 0 whenever nothing is queued, while the client may still be
// sending. The TCP state tells the two apart: until the peer's FIN comes, a
// connection we shut down for writing is in FIN_WAIT1 or FIN_WAIT2.
bool peer_has_closed(int fd) {
    tcp_info info{};
    socklen_t length = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return true;  // no TCP state: gone
    return info.tcpi_state != TCP_ESTABLISHED && info.tcpi_state != TCP_FIN_WAIT1 &&
           info.tcpi_state != TCP_FIN_WAIT2;
}

enum class Drained {
    for_now,         // EAGAIN: nothing more has arrived yet
    finished,        // end of stream, an error, or the byte budget is spent: close now
    read_side_shut,  // recv() says 0 because of our shutdown(SHUT_RD), not the client
};

Drained discard_available(int fd, std::size_t& budget) {
    char sink[16 * 1024];
    for (;;) {
        const ssize_t n = ::recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0) {
            if (static_cast<std::size_t>(n) >= budget) return Drained::finished;  // it will not stop: give up
            budget -= static_cast<std::size_t>(n);
            continue;
        }
        if (n == 0) return peer_has_closed(fd) ? Drained::finished : Drained::read_side_shut;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Drained::for_now;
        return Drained::finished;  // ECONNRESET and the like: nothing left to protect
    }
}

}  // namespace

bool nothing_in_flight(int fd) {
    int unacknowledged = 0, unread = 0;
    if (::ioctl(fd, SIOCOUTQ, &unacknowledged) != 0 || ::ioctl(fd, SIOCINQ, &unread) != 0)
        return true;  // not a connected TCP socket (any more): nothing to protect
    return unacknowledged == 0 && unread == 0;
}

bool LingeringClose::start(int fd) {
    // Looked at before our FIN is queued: the FIN itself counts as in flight
    // until the peer acknowledges it.
    const bool quiet = stop_requested() && nothing_in_flight(fd);
    if (::shutdown(fd, SHUT_WR) != 0) return false;  // ENOTCONN: the peer is gone already
    if (quiet) return false;
    active_ = true;
    deadline_ = Clock::now() + kLingerTimeout;
    budget_ = kLingerMaxBytes;
    return true;
}

bool LingeringClose::discard(int fd) {
    return discard_available(fd, budget_) != Drained::for_now || over(fd, Clock::now());
}

bool LingeringClose::over(int fd, Clock::time_point now) const {
    return now >= deadline_ || (stop_requested() && nothing_in_flight(fd));
}

void linger_close(int fd, bool reading_shut_down) {
    using Clock = LingeringClose::Clock;
    if (reading_shut_down) {
        const Clock::time_point deadline = Clock::now() + kLingerTimeout;
        std::size_t budget = kLingerMaxBytes;
        // No FIN from us, no end of stream to wait for: wait until the client
        // has acknowledged every byte, discarding what it sends meanwhile.
        // Nothing says when (an acknowledgement wakes nobody): look every 10 ms.
        while (Clock::now() < deadline && discard_available(fd, budget) != Drained::finished) {
            int unacknowledged = 0;
            if (::ioctl(fd, SIOCOUTQ, &unacknowledged) != 0 || unacknowledged == 0) return;
            ::poll(nullptr, 0, 10);
        }
        return;
    }
    // Otherwise the loops' LingeringClose, with poll() as the loop.
    LingeringClose lingering;
    if (!lingering.start(fd)) return;
    while (!lingering.discard(fd)) {
        const long long left =
            std::chrono::ceil<std::chrono::milliseconds>(lingering.deadline() - Clock::now()).count();
        // While stopping, look again soon: over() may become true with no event.
        const int wait_ms = static_cast<int>(stop_requested() ? std::min<long long>(left, kStopRecheck.count()) : left);
        pollfd readable{fd, POLLIN, 0};
        if (::poll(&readable, 1, std::max(wait_ms, 0)) < 0 && errno != EINTR) {
            log_line("poll fd " + std::to_string(fd) + " (lingering close): " + std::strerror(errno));
            return;
        }
    }
}

void shutdown_and_drain(int fd) {
    if (::shutdown(fd, SHUT_WR) != 0) return;  // the peer is already gone
    std::size_t budget = 1024 * 1024;
    discard_available(fd, budget);
}

// ---- logging ------------------------------------------------------------------

void log_line(std::string_view line) {
    std::string text(line);
    text += '\n';
    // One write(2) per line, so lines from several threads or processes never interleave.
    ssize_t ignored = ::write(STDERR_FILENO, text.data(), text.size());
    (void)ignored;
}

void log_client_error(std::string_view call, std::string_view peer, int error) {
    if (error == EPIPE || error == ECONNRESET) return;
    log_line(std::string(call) + " " + std::string(peer) + ": " + std::strerror(error));
}

// ---- threaded servers ----------------------------------------------------------

OpenConnections::Entry OpenConnections::add(int fd) {
    std::lock_guard lock(mutex_);
    const Position position = registered_.insert(registered_.end(), Registration{fd});
    if (stopping_) ::shutdown(fd, SHUT_RD);
    return Entry(*this, position);
}

bool OpenConnections::Entry::begin_closing() {
    std::lock_guard lock(owner_->mutex_);
    position_->closing = true;
    return owner_->stopping_;  // then shut_down_reading_all (or add) has reached it
}

void OpenConnections::remove(Position position) {
    std::lock_guard lock(mutex_);
    registered_.erase(position);
    // Notified under the lock: the waiter cannot return (and destroy us)
    // before we are done with the mutex.
    if (registered_.empty()) empty_.notify_all();
}

void OpenConnections::shut_down_reading_all() {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (const Registration& r : registered_)
        if (!r.closing) ::shutdown(r.fd, SHUT_RD);  // ENOTCONN if the peer is gone: nothing to wake
}

void OpenConnections::wait_until_empty() {
    std::unique_lock lock(mutex_);
    empty_.wait(lock, [this] { return registered_.empty(); });
}

}  // namespace common
