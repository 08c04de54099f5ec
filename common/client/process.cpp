#include "process.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <thread>

#include "error.hpp"
#include "http_client.hpp"

namespace common {

using Clock = std::chrono::steady_clock;

ChildProcess::ChildProcess(const std::vector<std::string>& argv, Stderr err,
                           const std::vector<std::string>& extra_env) {
    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw_errno("pipe2");
    UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
    UniqueFd null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    if (!null) throw_errno("open /dev/null");
    std::vector<std::string> args = argv;
    std::vector<char*> raw;
    for (std::string& a : args) raw.push_back(a.data());
    raw.push_back(nullptr);
    // The child's environment, built before fork (after it, only async-signal-safe calls).
    std::vector<std::string> env = extra_env;
    for (char** e = environ; *e; ++e) {
        const std::string_view entry(*e);
        const std::string_view name = entry.substr(0, entry.find('='));
        bool replaced = false;
        for (const std::string& extra : extra_env) replaced = replaced || extra.substr(0, extra.find('=')) == name;
        if (!replaced) env.emplace_back(entry);
    }
    std::vector<char*> raw_env;
    for (std::string& e : env) raw_env.push_back(e.data());
    raw_env.push_back(nullptr);

    pid_ = ::fork();
    if (pid_ < 0) throw_errno("fork for " + argv.at(0));
    if (pid_ == 0) {  // only async-signal-safe calls until exec
        ::dup2(write_end.get(), STDOUT_FILENO);
        if (err.kind == Stderr::discard) ::dup2(null.get(), STDERR_FILENO);
        if (err.kind == Stderr::to_fd) ::dup2(err.fd, STDERR_FILENO);
        ::signal(SIGPIPE, SIG_DFL);
        ::execve(raw[0], raw.data(), raw_env.data());
        _exit(127);
    }
    out_ = std::move(read_end);
}

ChildProcess::~ChildProcess() {
    if (!reaped_) stop();
}

bool ChildProcess::read_some(std::chrono::milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        pollfd p{out_.get(), POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) return false;
        char chunk[4096];
        const ssize_t n = ::read(out_.get(), chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            eof_ = true;
            return false;
        }
        buffered_.append(chunk, static_cast<std::size_t>(n));
        return true;
    }
}

std::optional<std::string> ChildProcess::read_line(std::chrono::milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    for (;;) {
        if (const std::size_t nl = buffered_.find('\n'); nl != std::string::npos) {
            std::string line = buffered_.substr(0, nl);
            buffered_.erase(0, nl + 1);
            return line;
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (eof_ || left.count() <= 0 || !read_some(left)) return std::nullopt;
    }
}

int ChildProcess::reap(std::chrono::milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    while (!reaped_) {
        int status = 0;
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == pid_ || (r < 0 && errno == ECHILD)) {
            reaped_ = true;
            status_ = status;
            break;
        }
        if (Clock::now() >= deadline) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
            reaped_ = true;
            status_ = status;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));  // polling a child's exit, bounded
    }
    return status_;
}

int ChildProcess::finish(std::string& out, std::chrono::milliseconds timeout) {
    const Clock::time_point deadline = Clock::now() + timeout;
    while (!eof_) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0 || (!read_some(left) && !eof_)) break;
    }
    out = std::move(buffered_);
    buffered_.clear();
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    return reap(std::max(left, std::chrono::milliseconds(0)));
}

std::optional<int> ChildProcess::exit_status() {
    if (!reaped_) {
        int status = 0;
        const pid_t r = ::waitpid(pid_, &status, WNOHANG);
        if (r == 0) return std::nullopt;
        if (r < 0 && errno != ECHILD) throw_errno("waitpid " + std::to_string(pid_));
        reaped_ = true;
        status_ = status;
    }
    return status_;
}

int ChildProcess::stop(std::chrono::milliseconds timeout) {
    if (reaped_) return status_;
    ::kill(pid_, SIGTERM);
    return reap(timeout);
}

StartedServer start_server(const std::string& binary, std::vector<std::string> args,
                           std::chrono::milliseconds ready_timeout, ChildProcess::Stderr err,
                           const std::vector<std::string>& extra_env) {
    std::vector<std::string> argv{binary, "--port", "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    StartedServer server;
    server.process = std::make_unique<ChildProcess>(argv, err, extra_env);
    std::optional<std::string> line = server.process->read_line(ready_timeout);
    const std::string prefix = "listening on ";
    unsigned port = 0;
    if (line && line->rfind(prefix, 0) == 0) {
        const std::size_t colon = line->rfind(':');
        std::from_chars(line->data() + colon + 1, line->data() + line->size(), port);
    }
    if (port == 0 || port > 65535) {
        std::string how = "printed no ready line (\"listening on HOST:PORT\") within the deadline";
        if (line) how = "printed \"" + *line + "\" instead of a ready line";
        else if (std::optional<int> status = server.process->at_eof() ? server.process->stop(std::chrono::seconds(1))
                                                                        : server.process->exit_status())
            how = WIFEXITED(*status) ? "exited with " + std::to_string(WEXITSTATUS(*status)) + " before it was ready"
                                     : "was killed by signal " + std::to_string(WTERMSIG(*status)) + " before it was ready";
        throw std::runtime_error("server " + binary + " " + how);
    }
    server.port = static_cast<std::uint16_t>(port);
    return server;
}

std::optional<std::string> http_get(std::uint16_t port, const std::string& target, std::chrono::milliseconds timeout,
                                    std::uint32_t ipv4) {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) return std::nullopt;
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(ipv4);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) return std::nullopt;
    const std::string request = "GET " + target + " HTTP/1.1\r\nHost: tour\r\nConnection: close\r\n\r\n";
    if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
        return std::nullopt;
    http::ResponseParser parser;
    http::ClientResponse response;
    char buffer[16 * 1024];
    for (;;) {
        if (parser.next(response)) return response.body;
        const ssize_t n = ::recv(fd.get(), buffer, sizeof buffer, 0);
        if (n <= 0) return std::nullopt;  // EOF, error, or SO_RCVTIMEO
        parser.feed({buffer, static_cast<std::size_t>(n)});
    }
}

}  // namespace common
