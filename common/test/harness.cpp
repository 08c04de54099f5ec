#include "harness.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "testing.hpp"

namespace harness {

namespace {

[[noreturn]] void fail_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace

Clock::duration scaled(Clock::duration d) {
    static const double scale = [] {
        const char* s = std::getenv("TEST_TIME_SCALE");
        double v = s ? std::strtod(s, nullptr) : 1.0;
        return v >= 1.0 ? v : 1.0;
    }();
    return std::chrono::duration_cast<Clock::duration>(d * scale);
}

double to_ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string server_binary() {
    if (const char* s = std::getenv("SERVER_BIN"); s && *s) return s;
    char self[4096];
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) fail_errno("readlink /proc/self/exe");
    std::string path(self, static_cast<std::size_t>(n));
    return path.substr(0, path.rfind('/') + 1) + "server";
}

// ---- the server process -------------------------------------------------------

std::string describe_status(int status) {
    if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
    if (WIFSIGNALED(status))
        return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
    return "status " + std::to_string(status);
}

ServerProcess::ServerProcess(std::vector<std::string> args, std::string binary, std::vector<std::string> env) {
    if (::access(binary.c_str(), X_OK) != 0) fail_errno("server binary " + binary);
    char log_template[] = "/tmp/server-log-XXXXXX";
    common::UniqueFd log_fd(::mkostemp(log_template, O_CLOEXEC));
    if (!log_fd) fail_errno("mkostemp /tmp/server-log-XXXXXX");
    log_path_ = log_template;
    // A server that outlives the 2 s stop grace period leaves with _exit(0),
    // abandoning its threads on purpose; ThreadSanitizer would call that a
    // thread leak. (Only the runtime of a TSan build reads this variable.)
    ::setenv("TSAN_OPTIONS", "report_thread_leaks=0", 0);
    try {
        common::StartedServer started =
            common::start_server(binary, std::move(args), std::chrono::duration_cast<std::chrono::milliseconds>(scaled(10s)),
                                 {common::ChildProcess::Stderr::to_fd, log_fd.get()}, env);
        process_ = std::move(started.process);
        port_ = started.port;
    } catch (const std::runtime_error& e) {
        const std::string text = log();
        ::unlink(log_path_.c_str());
        throw std::runtime_error(std::string(e.what()) + "; log:\n" + text);
    }
    pid_ = process_->pid();
}

bool ServerProcess::running() {
    if (!process_->exit_status()) return true;
    if (!stop_requested_) died_on_its_own_ = true;
    return false;
}

void ServerProcess::send_signal(int signo) {
    if (signo == SIGTERM || signo == SIGINT) stop_requested_ = true;
    if (running() && ::kill(pid_, signo) != 0) fail_errno("kill " + std::to_string(pid_));
}

int ServerProcess::stop(Clock::duration deadline, Clock::duration* took) {
    const Clock::time_point start = Clock::now();
    if (running()) stop_requested_ = true;  // an exit from here on is expected
    const int status = process_->stop(std::chrono::duration_cast<std::chrono::milliseconds>(scaled(deadline)));
    if (took) *took = Clock::now() - start;
    return status;
}

ServerProcess::~ServerProcess() {
    const bool was_running = running();
    const bool died = died_on_its_own_;
    const int status = stop();
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (std::uncaught_exceptions() == 0 && (died || !clean)) {
        // Reported here so that no test can pass with a crashed server.
        FAIL_CHECK("the server " << (died && !was_running ? "died during the test: " : "stopped badly: ")
                                 << describe_status(status) << "\n--- server log ---\n"
                                 << log());
    }
    ::unlink(log_path_.c_str());
}

std::string ServerProcess::log() const {
    std::string text = read_file(log_path_);
    if (text.size() > 4000) text = "...\n" + text.substr(text.size() - 4000);
    return text;
}

long ServerProcess::count_log_lines(std::string_view word) const {
    std::ifstream in(log_path_);
    if (!in) fail_errno("open " + log_path_);
    long n = 0;
    for (std::string line; std::getline(in, line);) n += line.find(word) != std::string::npos;
    return n;
}

void ServerProcess::set_fd_limit(rlim_t soft) {
    rlimit old{};
    if (::prlimit(pid_, RLIMIT_NOFILE, nullptr, &old) != 0) fail_errno("prlimit get");
    rlimit limit{soft, old.rlim_max};
    if (::prlimit(pid_, RLIMIT_NOFILE, &limit, nullptr) != 0) fail_errno("prlimit set " + std::to_string(soft));
}

// ---- clients ----------------------------------------------------------------

bool body_matches_pattern(const std::string& body) {
    for (std::size_t i = 0; i < body.size(); ++i)
        if (body[i] != http::pattern_byte(i)) return false;
    return true;
}

std::string get_request(std::string_view target, std::string_view extra_headers) {
    std::string r = "GET " + std::string(target) + " HTTP/1.1\r\nHost: test\r\n";
    r += extra_headers;
    r += "\r\n";
    return r;
}

Client::Client(std::uint16_t port) {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd_) fail_errno("socket");
    int on = 1;
    ::setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    // On loopback the kernel completes the handshake itself (even when the
    // server is busy), so a blocking connect returns at once.
    while (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
        if (errno != EINTR) fail_errno("connect 127.0.0.1:" + std::to_string(port));
    }
}

void Client::send(std::string_view bytes, Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + scaled(timeout);
    while (!bytes.empty()) {
        ssize_t n = ::send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            bytes.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) fail_errno("send");
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0) throw std::runtime_error("send: the server did not read our request in time");
        pollfd p{fd_.get(), POLLOUT, 0};
        ::poll(&p, 1, static_cast<int>(left));
    }
}

bool Client::fill(Clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd p{fd_.get(), POLLIN, 0};
        int ready = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) return false;
        char buf[64 * 1024];
        ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            parser_.feed({buf, static_cast<std::size_t>(n)});
            return true;
        }
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        eof_ = true;  // EOF, or ECONNRESET
        return true;
    }
}

std::optional<http::ClientResponse> Client::read_response(Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + scaled(timeout);
    http::ClientResponse response;
    for (;;) {
        if (parser_.next(response)) return response;
        if (parser_.failed()) throw std::runtime_error("malformed response from the server");
        if (eof_) throw std::runtime_error("the server closed the connection before a whole response");
        if (!fill(deadline)) return std::nullopt;
    }
}

http::ClientResponse Client::request(std::string_view raw, Clock::duration timeout) {
    send(raw, timeout);
    std::optional<http::ClientResponse> response = read_response(timeout);
    if (!response) throw std::runtime_error("no response within " + std::to_string(to_ms(scaled(timeout))) + " ms");
    return *response;
}

bool Client::wait_closed(Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + scaled(timeout);
    while (!eof_)
        if (!fill(deadline)) return false;
    return true;
}

void Client::reset() {
    linger l{1, 0};
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
    fd_.reset();
}

void Client::shutdown_write() {
    if (::shutdown(fd_.get(), SHUT_WR) != 0) fail_errno("shutdown SHUT_WR");
}

void Client::send_urgent(char byte) {
    if (::send(fd_.get(), &byte, 1, MSG_OOB | MSG_NOSIGNAL) != 1) fail_errno("send MSG_OOB");
}

void Client::set_receive_buffer(int bytes) {
    if (::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes) != 0) fail_errno("setsockopt SO_RCVBUF");
}

std::uint16_t Client::local_port() const {
    sockaddr_in address{};
    socklen_t length = sizeof address;
    if (::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) fail_errno("getsockname");
    return ntohs(address.sin_port);
}

bool server_has_read_all(const Client& client, std::uint16_t server_port) {
    // Lines of /proc/net/tcp: "sl local_address rem_address st tx_queue:rx_queue ...",
    // addresses as hex "0100007F:1F90". The server's end has local port
    // server_port and remote port our client's port.
    std::ifstream table("/proc/net/tcp");
    std::string line;
    std::getline(table, line);  // the header
    char local_end[16], remote_end[16];
    std::snprintf(local_end, sizeof local_end, ":%04X", server_port);
    std::snprintf(remote_end, sizeof remote_end, ":%04X", client.local_port());
    while (std::getline(table, line)) {
        std::istringstream fields(line);
        std::string slot, local, remote, state, queues;
        fields >> slot >> local >> remote >> state >> queues;
        if (!local.ends_with(local_end) || !remote.ends_with(remote_end)) continue;
        const std::size_t colon = queues.find(':');
        return colon != std::string::npos && std::strtoul(queues.c_str() + colon + 1, nullptr, 16) == 0;
    }
    return false;  // not accepted yet, or gone
}

http::ClientResponse get(std::uint16_t port, std::string_view target, Clock::duration timeout) {
    Client client(port);
    return client.request(get_request(target, "Connection: close\r\n"), timeout);
}

std::map<std::string, long long> stats(std::uint16_t port) {
    // A flat JSON object of numbers and strings is all /stats ever returns.
    std::string body = get(port, "/stats").body;
    std::map<std::string, long long> values;
    std::size_t pos = 0;
    while ((pos = body.find('"', pos)) != std::string::npos) {
        std::size_t end = body.find('"', pos + 1);
        std::size_t colon = end == std::string::npos ? end : body.find(':', end);
        std::size_t value_start = colon == std::string::npos ? colon : body.find_first_not_of(' ', colon + 1);
        if (value_start == std::string::npos) throw std::runtime_error("malformed /stats body: " + body);
        std::string key = body.substr(pos + 1, end - pos - 1);
        if (body[value_start] == '"') {  // a string value ("model"): skip it
            std::size_t close = body.find('"', value_start + 1);
            if (close == std::string::npos) throw std::runtime_error("malformed /stats body: " + body);
            pos = close + 1;
            continue;
        }
        long long number = 0;
        auto [after, ec] = std::from_chars(body.data() + value_start, body.data() + body.size(), number);
        if (ec != std::errc()) throw std::runtime_error("malformed /stats value for " + key + ": " + body);
        values[key] = number;
        pos = static_cast<std::size_t>(after - body.data());
    }
    return values;
}

std::string stats_model(std::uint16_t port) {
    std::string body = get(port, "/stats").body;
    const std::string key = "\"model\":\"";
    std::size_t start = body.find(key);
    if (start == std::string::npos) return "";
    start += key.size();
    return body.substr(start, body.find('"', start) - start);
}

// ---- concurrency ------------------------------------------------------------

std::vector<Clock::duration> run_concurrently(int n, const std::function<void(int)>& job) {
    std::vector<Clock::duration> durations(static_cast<std::size_t>(n));
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
    std::mutex mutex;
    std::condition_variable cv;
    bool go = false;
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
            {
                std::unique_lock lock(mutex);
                cv.wait(lock, [&] { return go; });
            }
            const Clock::time_point start = Clock::now();
            try {
                job(i);
            } catch (...) {
                errors[static_cast<std::size_t>(i)] = std::current_exception();
            }
            durations[static_cast<std::size_t>(i)] = Clock::now() - start;
        });
    }
    {
        std::lock_guard lock(mutex);
        go = true;
    }
    cv.notify_all();
    for (std::thread& t : threads) t.join();
    for (std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
    return durations;
}

bool eventually(const std::function<bool()>& cond, Clock::duration timeout) {
    const Clock::time_point deadline = Clock::now() + scaled(timeout);
    for (;;) {
        if (cond()) return true;
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(5ms);  // polling interval, not synchronisation
    }
}

struct NanosleepPeak::State {
    pid_t pid;
    std::atomic<bool> done{false};
    std::atomic<int> peak{0};
    std::thread sampler;
};

NanosleepPeak::NanosleepPeak(pid_t pid) : state_(std::make_unique<State>()) {
    state_->pid = pid;
    state_->sampler = std::thread([s = state_.get()] {
        while (!s->done.load()) {
            const int now = threads_in_nanosleep(s->pid);
            if (now > s->peak.load()) s->peak.store(now);
            std::this_thread::sleep_for(2ms);
        }
    });
}

NanosleepPeak::~NanosleepPeak() { stop(); }

int NanosleepPeak::stop() {
    state_->done = true;
    if (state_->sampler.joinable()) state_->sampler.join();
    return state_->peak.load();
}

CpuShares cpu_shares_over(pid_t pid, Clock::duration window) {
    const double on_cpu_before = on_cpu_seconds(pid);
    const double runnable_before = runnable_seconds(pid);
    const Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(window);  // the measurement window, not synchronisation
    const double wall = to_ms(Clock::now() - start) / 1000.0;
    return {(on_cpu_seconds(pid) - on_cpu_before) / wall, (runnable_seconds(pid) - runnable_before) / wall};
}

#if defined(__SANITIZE_THREAD__)
#define HARNESS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HARNESS_TSAN 1
#endif
#endif

long own_threads(long threads) {
#ifdef HARNESS_TSAN
    return threads > 1 ? threads - 1 : threads;
#else
    return threads;
#endif
}

void raise_fd_limit(rlim_t n) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) fail_errno("getrlimit RLIMIT_NOFILE");
    if (limit.rlim_cur >= n) return;
    limit.rlim_cur = std::min(n, limit.rlim_max);
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) fail_errno("setrlimit RLIMIT_NOFILE " + std::to_string(n));
}

}  // namespace harness
