// loadgen: the load generator of this repository, in the spirit of ApacheBench (ab).
//
// What it is: N GET requests over C connections (with or without keep-alive,
// for a count or a duration), then throughput and a table of latency
// percentiles. One thread drives every connection with non-blocking sockets
// and epoll, so one process can hold 10,000+ connections and is not the
// bottleneck of the measurement (common/README.md shows it against wrk).
//
// How it differs from ab: the percentiles are exact (every latency is kept
// and sorted); keep-alive connections the server closes are reopened;
// --idle holds connections that connect and never speak, the client every
// chapter has to survive; requests still waiting when -t runs out are
// reported, not dropped, so a server that starves connections shows it;
// --json prints one line for scripts; and it refuses every host but
// loopback, because this repository only load-tests itself.
// How it differs from wrk: a request count as well as a duration; a
// connection-per-request mode (without -k); one thread instead of -t threads;
// no Lua scripting.
//
// What it does not do: TLS, HTTP/2, methods other than GET, request bodies,
// pipelining, chunked responses (every response must carry Content-Length,
// as ours do), DNS ("localhost" means 127.0.0.1), or a fixed request rate.
// It is a closed loop: a connection sends its next request only when the
// previous answer has arrived, and latencies are not corrected for
// coordinated omission (a stalled server also stalls the requests we send).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "error.hpp"
#include "fd.hpp"
#include "http_client.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int kExitRan = 0;  // the run completed, even if requests failed (like ab)
constexpr int kExitCouldNotRun = 1;
constexpr int kExitBadArguments = 2;

constexpr long long kUnlimited = std::numeric_limits<long long>::max();

// ---- command line -------------------------------------------------------------

class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct Target {
    sockaddr_storage address{};
    socklen_t address_length = 0;
    std::string authority;  // "127.0.0.1:8080": the Host header and the report
    std::string path;       // "/sleep?ms=100"
};

struct Options {
    long long requests = 1;  // -n; kUnlimited with -t and no -n
    long long concurrency = 1;
    bool keep_alive = false;
    std::optional<Clock::duration> time_limit;
    Clock::duration timeout = 30s;
    long long idle = 0;
    bool json = false;
    Target target;
};

void print_usage(std::FILE* out) {
    std::fputs(
        "usage: loadgen [-n N] [-c C] [-k] [-t SECONDS] [--timeout SECONDS] [--idle N] [--json] URL\n"
        "  URL             http://HOST[:PORT]/path?query; HOST is 127.x.x.x, localhost or [::1]\n"
        "  -n N            requests to make (default 1; unlimited with -t alone)\n"
        "  -c C            connections making requests at once (default 1; at most N unless -t)\n"
        "  -k              keep-alive: reuse each connection (default: one connection per request)\n"
        "  -t SECONDS      stop after this long (with -n too: whichever comes first)\n"
        "  --timeout S     a request unanswered after S seconds fails and its connection\n"
        "                  is closed (default 30)\n"
        "  --idle N        first open N connections that never send, and hold them during the\n"
        "                  run (with -n 0: for -t seconds, default 1)\n"
        "  --json          print the results as one JSON object on one line\n"
        "exit status: 0 the run completed (even with failed requests), 1 it could not run,\n"
        "             2 bad arguments\n",
        out);
}

long long parse_whole(std::string_view what, std::string_view text, long long min, long long max) {
    long long value = 0;
    const char* end = text.data() + text.size();
    auto [stop, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || stop != end || value < min || value > max)
        throw UsageError(std::string(what) + " must be a whole number from " + std::to_string(min) + " to " +
                         std::to_string(max) + ", not '" + std::string(text) + "'");
    return value;
}

Clock::duration parse_seconds(std::string_view what, std::string_view text) {
    double seconds = 0;
    const char* end = text.data() + text.size();
    auto [stop, ec] = std::from_chars(text.data(), end, seconds);
    if (ec != std::errc() || stop != end || !(seconds > 0) || seconds > 1e6)
        throw UsageError(std::string(what) + " must be a number of seconds above 0, not '" + std::string(text) + "'");
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Fills target.address if host is a loopback address. "localhost" is taken
// to mean 127.0.0.1 without asking DNS, which could say anything.
bool resolve_loopback(std::string host, bool bracketed, std::uint16_t port, Target& target) {
    if (bracketed) {
        sockaddr_in6 address{};
        address.sin6_family = AF_INET6;
        address.sin6_port = htons(port);
        if (inet_pton(AF_INET6, host.c_str(), &address.sin6_addr) != 1 || !IN6_IS_ADDR_LOOPBACK(&address.sin6_addr))
            return false;
        std::memcpy(&target.address, &address, sizeof address);
        target.address_length = sizeof address;
        return true;
    }
    if (strcasecmp(host.c_str(), "localhost") == 0) host = "127.0.0.1";
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    if (inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1 || (ntohl(address.sin_addr.s_addr) >> 24) != 127)
        return false;
    std::memcpy(&target.address, &address, sizeof address);
    target.address_length = sizeof address;
    return true;
}

// http://HOST[:PORT][/path][?query]
Target parse_url(std::string_view url) {
    constexpr std::string_view scheme = "http://";
    if (!url.starts_with(scheme))
        throw UsageError("the URL must start with http:// (plain HTTP only): " + std::string(url));
    std::string_view rest = url.substr(scheme.size());
    const std::size_t authority_end = std::min(rest.find_first_of("/?#"), rest.size());
    const std::string_view authority = rest.substr(0, authority_end);
    std::string_view path = rest.substr(authority_end);
    path = path.substr(0, path.find('#'));  // a fragment never goes to the server

    std::string_view host = authority;
    std::string_view port_text;
    const bool bracketed = authority.starts_with('[');
    if (bracketed) {
        const std::size_t close = authority.find(']');
        if (close == std::string_view::npos) throw UsageError("no ']' after '[' in " + std::string(url));
        host = authority.substr(1, close - 1);
        const std::string_view after = authority.substr(close + 1);
        if (!after.empty() && after.front() != ':')
            throw UsageError("unexpected text after ']' in " + std::string(url));
        if (!after.empty()) port_text = after.substr(1);
    } else if (const std::size_t colon = authority.find(':'); colon != std::string_view::npos) {
        host = authority.substr(0, colon);
        port_text = authority.substr(colon + 1);
    }
    const auto port =
        static_cast<std::uint16_t>(port_text.empty() ? 80 : parse_whole("the URL's port", port_text, 1, 65535));

    Target target;
    if (!resolve_loopback(std::string(host), bracketed, port, target))
        throw UsageError("refusing to load-test '" + std::string(host) +
                         "': only loopback hosts (127.x.x.x, localhost, [::1]) may be targeted from this machine");
    for (char ch : path)
        if (static_cast<unsigned char>(ch) <= ' ' || ch == '\x7f')
            throw UsageError("the URL's path holds a space or control character; percent-encode it");
    target.path = path.empty() ? "/" : path.starts_with('?') ? "/" + std::string(path) : std::string(path);
    target.authority = (bracketed ? "[" + std::string(host) + "]" : std::string(host)) + ":" + std::to_string(port);
    return target;
}

Options parse_command_line(int argc, char** argv) {
    Options options;
    bool requests_given = false;
    std::optional<std::string_view> url;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        auto value = [&]() -> std::string_view {
            if (i + 1 >= argc) throw UsageError(std::string(arg) + " needs a value");
            return argv[++i];
        };
        if (arg == "-n") {
            options.requests = parse_whole("-n", value(), 0, 1'000'000'000);
            requests_given = true;
        } else if (arg == "-c") {
            options.concurrency = parse_whole("-c", value(), 1, 1'000'000);
        } else if (arg == "-k") {
            options.keep_alive = true;
        } else if (arg == "-t") {
            options.time_limit = parse_seconds("-t", value());
        } else if (arg == "--timeout") {
            options.timeout = parse_seconds("--timeout", value());
        } else if (arg == "--idle") {
            options.idle = parse_whole("--idle", value(), 0, 1'000'000);
        } else if (arg == "--json") {
            options.json = true;
        } else if (arg == "-h" || arg == "--help") {
            print_usage(stdout);
            std::exit(kExitRan);
        } else if (arg.starts_with('-')) {
            throw UsageError("unknown option " + std::string(arg));
        } else if (url) {
            throw UsageError("more than one URL");
        } else {
            url = arg;
        }
    }
    if (!url) throw UsageError("no URL given");
    if (options.time_limit && !requests_given) options.requests = kUnlimited;
    if (!options.time_limit && options.requests > 0 && options.concurrency > options.requests)
        throw UsageError("-c " + std::to_string(options.concurrency) + " is more than -n " +
                         std::to_string(options.requests) + ": those connections would have nothing to do");
    options.target = parse_url(*url);
    return options;
}

// ---- what a run measures --------------------------------------------------------

enum class Failure { connect, closed, timeout, malformed };
constexpr std::array<const char*, 4> kFailureNames{"connect", "closed", "timeout", "malformed"};

struct Results {
    std::vector<double> latencies_ms;  // of every complete request, in completion order
    std::array<long long, 4> failures{};  // by Failure
    long long non_2xx = 0;
    long long unfinished = 0;  // in flight when the time ran out (or Ctrl-C): neither complete nor failed
    long long idle_held = 0;    // idle connections that were established
    long long idle_closed = 0;  // ... and that the server closed during the run
    long long idle_failed = 0;  // idle connections that were never established
    Clock::duration elapsed{};
    bool interrupted = false;

    long long failed() const { return failures[0] + failures[1] + failures[2] + failures[3]; }
};

// ---- the load generator ---------------------------------------------------------

volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void on_interrupt(int) { g_interrupted = 1; }

// Ctrl-C ends the run early and still prints what was measured, like ab.
// No SA_RESTART, so that epoll_wait returns EINTR and the loop sees the flag.
void install_interrupt_handler() {
    struct sigaction action{};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;
    if (::sigaction(SIGINT, &action, nullptr) != 0) common::throw_errno("sigaction SIGINT");
}

// One socket and where it is in its life. Plain data: the event loop below
// decides every transition.
struct Connection {
    enum class State { unused, connecting, sending, receiving, holding };
    common::UniqueFd fd;
    State state = State::unused;
    bool idle = false;           // an --idle connection: it connects and never sends
    std::uint32_t watched = 0;   // the epoll events registered for fd; 0: not registered
    std::size_t sent = 0;        // bytes of the request written so far
    Clock::time_point started;   // the latency clock of the request in flight
    Clock::time_point deadline = Clock::time_point::max();
    http::ResponseParser parser;
};

class LoadGenerator {
public:
    explicit LoadGenerator(const Options& options);
    Results run();

private:
    void open_idle_connections();
    // The event loop.
    void wait_for_events(Clock::time_point until);
    void dispatch(Connection& c, std::uint32_t events);
    void sweep_timeouts(Clock::time_point now);
    void start_queued_connections();
    // One connection's life.
    void begin_connect(Connection& c);
    void on_connect_ready(Connection& c);
    void on_connected(Connection& c);
    void on_connect_failed(Connection& c, int error);
    void begin_sending(Connection& c);
    void send_more(Connection& c);
    void on_readable(Connection& c);
    void on_idle_readable(Connection& c);
    void idle_connection_failed(Connection& c, const char* why);
    // One request's end.
    void complete_request(Connection& c);
    void fail_request(Connection& c, Failure why, std::string_view call, int error);
    void next_request_or_stop(Connection& c, bool connection_reusable);
    bool may_start_request() const;
    // Helpers.
    void watch(Connection& c, std::uint32_t events);
    void close_connection(Connection& c);
    void report_first_failure(Failure why, std::string_view call, int error);
    std::size_t index_of(const Connection& c) const { return static_cast<std::size_t>(&c - connections_.data()); }

    const Options& options_;
    const std::string request_;
    const Clock::duration sweep_interval_;
    common::UniqueFd epoll_;
    std::vector<Connection> connections_;  // the load slots first, then the idle ones
    std::vector<epoll_event> events_;
    std::vector<char> receive_buffer_;
    http::ClientResponse response_;  // reused, so a response costs no new vector
    std::vector<std::size_t> start_queue_;  // slots waiting for a new connection
    std::vector<std::size_t> starting_;
    Clock::time_point next_sweep_;
    long long requests_started_ = 0;
    long long active_slots_ = 0;  // slots with a request in flight or queued
    long long idle_connecting_ = 0;
    bool ever_connected_ = false;
    Results results_;
};

std::string build_request(const Options& options) {
    std::string request = "GET " + options.target.path + " HTTP/1.1\r\nHost: " + options.target.authority + "\r\n";
    if (!options.keep_alive) request += "Connection: close\r\n";
    return request + "\r\n";
}

long long load_slots(const Options& options) { return std::min(options.concurrency, options.requests); }

LoadGenerator::LoadGenerator(const Options& options)
    : options_(options),
      request_(build_request(options)),
      // Timeouts are found by a sweep over all connections a few times per
      // timeout: simpler than a timer heap, and a timeout of seconds does not
      // need to fire to the microsecond.
      sweep_interval_(std::clamp<Clock::duration>(options.timeout / 20, 1ms, 100ms)),
      epoll_(::epoll_create1(EPOLL_CLOEXEC)),
      receive_buffer_(64 * 1024) {
    if (!epoll_) common::throw_errno("epoll_create1");
    const auto slots = static_cast<std::size_t>(load_slots(options));
    // Sized once: epoll_event.data holds an index into this vector.
    connections_.resize(slots + static_cast<std::size_t>(options.idle));
    for (std::size_t i = slots; i < connections_.size(); ++i) connections_[i].idle = true;
    events_.resize(std::clamp<std::size_t>(connections_.size(), 1, 1024));
    start_queue_.reserve(slots);
    starting_.reserve(slots);
    if (options.requests != kUnlimited)
        results_.latencies_ms.reserve(static_cast<std::size_t>(std::min(options.requests, 10'000'000LL)));
}

// Runs the whole measurement; call it once.
Results LoadGenerator::run() {
    next_sweep_ = Clock::now() + sweep_interval_;
    open_idle_connections();

    const Clock::time_point start = Clock::now();
    Clock::time_point end = Clock::time_point::max();
    if (options_.time_limit) end = start + *options_.time_limit;
    else if (options_.requests == 0) end = start + 1s;  // how long -n 0 holds the idle connections

    for (std::size_t slot = 0; slot < static_cast<std::size_t>(load_slots(options_)); ++slot) {
        ++requests_started_;
        ++active_slots_;
        start_queue_.push_back(slot);
    }
    while (!g_interrupted) {
        start_queued_connections();
        const bool done = options_.requests == 0 ? options_.idle == 0 : active_slots_ == 0;
        if (done || Clock::now() >= end) break;  // requests in flight at the end are not counted, as in ab and wrk
        wait_for_events(end);
    }
    results_.elapsed = std::min(Clock::now(), end) - start;
    results_.unfinished =
        requests_started_ - static_cast<long long>(results_.latencies_ms.size()) - results_.failed();
    results_.interrupted = g_interrupted != 0;
    return std::move(results_);
}

// Idle connections come first, so that the requests meet a server already
// holding them. We wait until each is established or has failed; the sweep
// gives up on those the server does not complete within the --timeout.
void LoadGenerator::open_idle_connections() {
    for (std::size_t i = static_cast<std::size_t>(load_slots(options_)); i < connections_.size(); ++i) {
        ++idle_connecting_;
        begin_connect(connections_[i]);
    }
    while (idle_connecting_ > 0 && !g_interrupted) wait_for_events(Clock::time_point::max());
}

// ---- the event loop -------------------------------------------------------------

int milliseconds_until(Clock::time_point when, Clock::time_point now) {
    if (when <= now) return 0;
    // Rounded up: rounding down would wake us just before the time, again and again.
    const auto ms = std::chrono::ceil<std::chrono::milliseconds>(when - now).count();
    return static_cast<int>(std::min<long long>(ms, INT_MAX));
}

void LoadGenerator::wait_for_events(Clock::time_point until) {
    Clock::time_point now = Clock::now();
    if (now >= next_sweep_) {
        sweep_timeouts(now);
        next_sweep_ = now + sweep_interval_;
    }
    // Slots waiting for a connection must not wait for an event.
    const int timeout_ms = start_queue_.empty() ? milliseconds_until(std::min(until, next_sweep_), now) : 0;
    const int ready = ::epoll_wait(epoll_.get(), events_.data(), static_cast<int>(events_.size()), timeout_ms);
    if (ready < 0) {
        if (errno == EINTR) return;  // Ctrl-C: the caller looks at g_interrupted
        common::throw_errno("epoll_wait");
    }
    for (int i = 0; i < ready; ++i) dispatch(connections_[events_[i].data.u64], events_[i].events);
}

void LoadGenerator::dispatch(Connection& c, std::uint32_t events) {
    if (c.state == Connection::State::connecting) return on_connect_ready(c);
    if (c.idle) return on_idle_readable(c);
    // EPOLLHUP and EPOLLERR are read too: recv then reports the EOF or the error.
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
    if ((events & EPOLLOUT) && c.state == Connection::State::sending) send_more(c);
}

void LoadGenerator::sweep_timeouts(Clock::time_point now) {
    for (Connection& c : connections_) {
        if (!c.fd || c.deadline > now) continue;
        if (c.idle) idle_connection_failed(c, "not established within the --timeout");  // still connecting
        else fail_request(c, Failure::timeout, "", 0);
    }
}

// New connections are opened here, from the loop, and never from inside a
// failure handler: a connect refused at once would otherwise recurse into the
// next connect, and the next, without end.
void LoadGenerator::start_queued_connections() {
    std::swap(starting_, start_queue_);
    for (std::size_t index : starting_) begin_connect(connections_[index]);
    starting_.clear();
}

// ---- one connection's life --------------------------------------------------------

void LoadGenerator::begin_connect(Connection& c) {
    const Target& target = options_.target;
    c.fd.reset(::socket(target.address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!c.fd) common::throw_errno("socket for " + target.authority);
    c.watched = 0;
    c.parser = http::ResponseParser();
    // Without keep-alive the latency includes the connect, as in ab.
    c.started = Clock::now();
    c.deadline = c.started + options_.timeout;
    if (::connect(c.fd.get(), reinterpret_cast<const sockaddr*>(&target.address), target.address_length) == 0)
        return on_connected(c);
    // EINTR: the connect goes on in the background, as with EINPROGRESS.
    if (errno != EINPROGRESS && errno != EINTR) return on_connect_failed(c, errno);
    c.state = Connection::State::connecting;
    watch(c, EPOLLOUT);  // writable = the handshake ended, one way or the other
}

void LoadGenerator::on_connect_ready(Connection& c) {
    int error = 0;
    socklen_t length = sizeof error;
    if (::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
    if (error != 0) return on_connect_failed(c, error);
    on_connected(c);
}

void LoadGenerator::on_connected(Connection& c) {
    ever_connected_ = true;
    if (!c.idle) return begin_sending(c);
    --idle_connecting_;
    ++results_.idle_held;
    c.state = Connection::State::holding;
    c.deadline = Clock::time_point::max();  // held until the end, whatever happens
    watch(c, EPOLLIN);                      // only to notice the server closing it
}

void LoadGenerator::on_connect_failed(Connection& c, int error) {
    // Nothing ever answered: this is no measurement, but a wrong port or a
    // server that is not running. Say so instead of printing a table of failures.
    if (!ever_connected_) common::throw_error_code(error, "connect " + options_.target.authority);
    if (!c.idle) return fail_request(c, Failure::connect, "connect", error);
    idle_connection_failed(c, std::strerror(error));
}

void LoadGenerator::idle_connection_failed(Connection& c, const char* why) {
    if (results_.idle_failed++ == 0)
        std::fprintf(stderr, "loadgen: an idle connection to %s failed: %s (later ones are only counted)\n",
                     options_.target.authority.c_str(), why);
    --idle_connecting_;
    close_connection(c);
}

void LoadGenerator::begin_sending(Connection& c) {
    c.state = Connection::State::sending;
    c.sent = 0;
    if (options_.keep_alive) {
        // With keep-alive the latency starts at the request's first write.
        c.started = Clock::now();
        c.deadline = c.started + options_.timeout;
    }
    send_more(c);
}

void LoadGenerator::send_more(Connection& c) {
    while (c.sent < request_.size()) {
        // MSG_NOSIGNAL: a server that closed the connection gives EPIPE, not a fatal SIGPIPE.
        const ssize_t n = ::send(c.fd.get(), request_.data() + c.sent, request_.size() - c.sent, MSG_NOSIGNAL);
        if (n >= 0) {
            c.sent += static_cast<std::size_t>(n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            watch(c, EPOLLIN | EPOLLOUT);  // the socket buffer is full: go on when it drains
            return;
        } else if (errno != EINTR) {
            return fail_request(c, Failure::closed, "send", errno);  // EPIPE, ECONNRESET
        }
    }
    c.state = Connection::State::receiving;
    // With keep-alive this is a no-op from the second request on: no epoll_ctl per request.
    watch(c, EPOLLIN);
}

void LoadGenerator::on_readable(Connection& c) {
    for (;;) {
        const ssize_t n = ::recv(c.fd.get(), receive_buffer_.data(), receive_buffer_.size(), 0);
        if (n > 0) {
            c.parser.feed({receive_buffer_.data(), static_cast<std::size_t>(n)});
            if (c.parser.next(response_)) return complete_request(c);
            if (c.parser.failed()) return fail_request(c, Failure::malformed, "", 0);
            // A short read emptied the socket; level-triggered epoll calls us
            // again when more arrives, which saves a recv that says EAGAIN.
            if (static_cast<std::size_t>(n) < receive_buffer_.size()) return;
        } else if (n == 0) {
            // A request in flight on a connection the server closed (maybe a
            // keep-alive connection it found idle too long) has failed.
            return fail_request(c, Failure::closed, "recv", 0);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return;
        } else if (errno != EINTR) {
            return fail_request(c, Failure::closed, "recv", errno);  // ECONNRESET
        }
    }
}

void LoadGenerator::on_idle_readable(Connection& c) {
    const ssize_t n = ::recv(c.fd.get(), receive_buffer_.data(), receive_buffer_.size(), 0);
    if (n > 0) return;  // a "408 Request Timeout", say: ignored; the close comes next
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    ++results_.idle_closed;  // EOF or ECONNRESET: the server let it go
    close_connection(c);
}

// ---- one request's end ----------------------------------------------------------------

void LoadGenerator::complete_request(Connection& c) {
    const Clock::duration latency = Clock::now() - c.started;
    results_.latencies_ms.push_back(std::chrono::duration<double, std::milli>(latency).count());
    if (response_.status < 200 || response_.status > 299) ++results_.non_2xx;
    // Bytes after the response were never asked for: the stream is out of step.
    const bool reusable = options_.keep_alive && response_.keep_alive && c.parser.buffered() == 0;
    next_request_or_stop(c, reusable);
}

void LoadGenerator::fail_request(Connection& c, Failure why, std::string_view call, int error) {
    report_first_failure(why, call, error);
    ++results_.failures[static_cast<std::size_t>(why)];
    next_request_or_stop(c, false);
}

void LoadGenerator::next_request_or_stop(Connection& c, bool connection_reusable) {
    if (!connection_reusable || !may_start_request()) close_connection(c);
    if (!may_start_request()) {
        --active_slots_;
        return;
    }
    ++requests_started_;
    if (c.fd) return begin_sending(c);  // keep-alive: straight on, no trip through the loop
    start_queue_.push_back(index_of(c));
}

bool LoadGenerator::may_start_request() const { return requests_started_ < options_.requests && !g_interrupted; }

// ---- helpers ------------------------------------------------------------------------

// Changes what epoll watches for c, only when it changes: most requests need no epoll_ctl.
void LoadGenerator::watch(Connection& c, std::uint32_t events) {
    if (c.watched == events) return;
    epoll_event event{};
    event.events = events;
    event.data.u64 = index_of(c);
    const int op = c.watched == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (::epoll_ctl(epoll_.get(), op, c.fd.get(), &event) != 0)
        common::throw_errno(std::string(op == EPOLL_CTL_ADD ? "epoll_ctl ADD" : "epoll_ctl MOD") + " fd " +
                            std::to_string(c.fd.get()));
    c.watched = events;
}

// Closing the descriptor also removes it from the epoll set (it has no duplicates).
void LoadGenerator::close_connection(Connection& c) {
    c.fd.reset();
    c.state = Connection::State::unused;
    c.watched = 0;
    c.deadline = Clock::time_point::max();
}

// The first failure of each kind is described on stderr; the rest are only counted.
void LoadGenerator::report_first_failure(Failure why, std::string_view call, int error) {
    if (results_.failures[static_cast<std::size_t>(why)] > 0) return;
    std::string what;
    switch (why) {
    case Failure::timeout: what = "no whole answer within the --timeout"; break;
    case Failure::malformed: what = "a malformed response"; break;
    case Failure::connect:
    case Failure::closed:
        what = std::string(call) + ": " + (error ? std::strerror(error) : "the server closed the connection");
        break;
    }
    std::fprintf(stderr, "loadgen: first '%s' failure from %s: %s (later ones are only counted)\n",
                 kFailureNames[static_cast<std::size_t>(why)], options_.target.authority.c_str(), what.c_str());
}

// ---- the report ----------------------------------------------------------------------

constexpr std::array<int, 9> kPercentiles{50, 66, 75, 80, 90, 95, 98, 99, 100};

struct Summary {
    long long complete = 0;
    double seconds = 0;
    double requests_per_second = 0;
    double mean_ms = 0;
    std::array<double, kPercentiles.size()> percentile_ms{};  // the last is the maximum
};

// Nearest rank: the smallest latency that at least p% of the requests did not exceed.
double percentile(const std::vector<double>& sorted, int p) {
    const std::size_t rank = (sorted.size() * static_cast<std::size_t>(p) + 99) / 100;
    return sorted[std::max<std::size_t>(rank, 1) - 1];
}

Summary summarize(Results& results) {
    Summary s;
    std::vector<double>& latencies = results.latencies_ms;
    s.complete = static_cast<long long>(latencies.size());
    s.seconds = std::chrono::duration<double>(results.elapsed).count();
    if (latencies.empty()) return s;
    s.requests_per_second = s.seconds > 0 ? static_cast<double>(s.complete) / s.seconds : 0;
    double total = 0;
    for (double ms : latencies) total += ms;
    s.mean_ms = total / static_cast<double>(latencies.size());
    std::sort(latencies.begin(), latencies.end());
    for (std::size_t i = 0; i < kPercentiles.size(); ++i) s.percentile_ms[i] = percentile(latencies, kPercentiles[i]);
    return s;
}

void print_json(const Options& options, const Results& results, const Summary& s) {
    std::printf("{\"complete\":%lld,\"failed\":%lld,\"unfinished\":%lld,\"non_2xx\":%lld,\"seconds\":%.6f,"
                "\"requests_per_second\":%.2f,\"mean_ms\":%.3f",
                s.complete, results.failed(), results.unfinished, results.non_2xx, s.seconds, s.requests_per_second,
                s.mean_ms);
    for (std::size_t i = 0; i + 1 < kPercentiles.size(); ++i)
        std::printf(",\"p%d_ms\":%.3f", kPercentiles[i], s.percentile_ms[i]);
    std::printf(",\"max_ms\":%.3f,\"idle_held\":%lld,\"idle_closed\":%lld,\"idle_failed\":%lld,\"concurrency\":%lld,"
                "\"keep_alive\":%s}\n",
                s.percentile_ms.back(), results.idle_held, results.idle_closed, results.idle_failed,
                options.concurrency, options.keep_alive ? "true" : "false");
}

void print_text(const Options& options, const Results& results, const Summary& s) {
    std::printf("Server Address:         %s\n", options.target.authority.c_str());
    std::printf("Document Path:          %s\n", options.target.path.c_str());
    std::printf("Concurrency Level:      %lld\n", options.concurrency);
    std::printf("Keep-Alive:             %s\n", options.keep_alive ? "yes" : "no");
    std::printf("Time taken for tests:   %.3f seconds\n", s.seconds);
    std::printf("Complete requests:      %lld\n", s.complete);
    std::printf("Failed requests:        %lld\n", results.failed());
    if (results.failed() > 0)
        std::printf("   (connect: %lld, closed: %lld, timeout: %lld, malformed: %lld)\n", results.failures[0],
                    results.failures[1], results.failures[2], results.failures[3]);
    // Without this line a server that starves some connections (chapter 01
    // under -k -t) would look perfect: their requests never finish, never fail.
    if (results.unfinished > 0)
        std::printf("Unfinished requests:    %lld (still waiting when the run ended)\n", results.unfinished);
    std::printf("Non-2xx responses:      %lld\n", results.non_2xx);
    std::printf("Idle connections:       %lld held (%lld closed by the server)\n", results.idle_held,
                results.idle_closed);
    if (results.idle_failed > 0) std::printf("   (%lld more were never established)\n", results.idle_failed);
    if (s.complete == 0) return;
    std::printf("Requests per second:    %.2f [#/sec] (mean)\n", s.requests_per_second);
    // ab prints concurrency * time / requests here; we have every latency, so the real mean.
    std::printf("Time per request:       %.3f [ms] (mean)\n", s.mean_ms);
    std::printf("Time per request:       %.3f [ms] (mean, across all concurrent requests)\n",
                1000.0 / s.requests_per_second);
    std::printf("\nPercentage of the requests served within a certain time (ms)\n");
    // Whole milliseconds like ab, unless most would read 0 or 1 (loopback keep-alive).
    const bool whole = s.percentile_ms.front() >= 10;
    for (std::size_t i = 0; i < kPercentiles.size(); ++i) {
        std::printf(" %3d%%  ", kPercentiles[i]);
        if (whole) std::printf("%6.0f", s.percentile_ms[i]);
        else std::printf("%8.3f", s.percentile_ms[i]);
        std::printf("%s\n", kPercentiles[i] == 100 ? " (longest request)" : "");
    }
}

// One process holding 10,000 connections needs more descriptors than the
// usual soft limit of 1024; the hard limit is ours to take.
void raise_descriptor_limit(const Options& options) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) common::throw_errno("getrlimit RLIMIT_NOFILE");
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &limit) != 0)
            common::throw_errno("setrlimit RLIMIT_NOFILE " + std::to_string(limit.rlim_max));
    }
    const auto needed = static_cast<rlim_t>(load_slots(options) + options.idle + 16);  // + stdio, epoll
    if (needed > limit.rlim_cur)
        throw std::runtime_error(std::to_string(load_slots(options) + options.idle) + " connections need about " +
                                 std::to_string(needed) + " descriptors, but RLIMIT_NOFILE allows " +
                                 std::to_string(limit.rlim_cur) + " (raise the hard limit: ulimit -Hn)");
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    try {
        options = parse_command_line(argc, argv);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "loadgen: %s\n", e.what());
        print_usage(stderr);
        return kExitBadArguments;
    }
    try {
        raise_descriptor_limit(options);
        install_interrupt_handler();
        Results results = LoadGenerator(options).run();
        if (results.interrupted) std::fprintf(stderr, "loadgen: interrupted; the results so far:\n");
        const Summary summary = summarize(results);
        if (options.json) print_json(options, results, summary);
        else print_text(options, results, summary);
        return kExitRan;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "loadgen: %s\n", e.what());
        return kExitCouldNotRun;
    }
}
