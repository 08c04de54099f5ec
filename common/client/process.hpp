// Child processes for the tools that measure servers (the tour, benchmarks):
// start a program, read its output with deadlines, stop it for sure.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fd.hpp"

namespace common {

// Where a child's stderr goes: /dev/null, ours, or a file we opened.
struct ChildStderr {
    enum Kind { discard, inherit, to_fd } kind = discard;
    int fd = -1;  // for to_fd; dup'ed into the child, still ours to close
};

class ChildProcess {
public:
    using Stderr = ChildStderr;
    // Starts argv[0] with argv; its stdout comes to us through a pipe. SIGPIPE
    // is reset to its default in the child, so a program that must survive a
    // vanished peer has to say so itself (exec keeps an ignored signal ignored).
    // extra_env: "NAME=VALUE" entries added to our environment for the child
    // (replacing a variable of the same name).
    explicit ChildProcess(const std::vector<std::string>& argv, Stderr err = {},
                          const std::vector<std::string>& extra_env = {});
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;
    ~ChildProcess();  // stop(), if still running

    pid_t pid() const { return pid_; }
    // One line of stdout (without the newline), or nullopt at EOF or timeout.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout);
    // The rest of stdout until EOF, then the exit status (as waitpid gives it).
    // Sends SIGKILL if the deadline passes first.
    int finish(std::string& out, std::chrono::milliseconds timeout);
    // SIGTERM; SIGKILL after the timeout. Returns the waitpid status.
    int stop(std::chrono::milliseconds timeout = std::chrono::seconds(5));
    // The waitpid status once it has exited (reaping it), nullopt while it runs.
    std::optional<int> exit_status();
    // True once its stdout has ended (it exited, or closed it).
    bool at_eof() const { return eof_; }

private:
    bool read_some(std::chrono::milliseconds timeout);  // false on EOF or timeout
    int reap(std::chrono::milliseconds timeout);

    pid_t pid_ = -1;
    UniqueFd out_;
    std::string buffered_;
    bool eof_ = false;
    bool reaped_ = false;
    int status_ = 0;
};

// A server started on 127.0.0.1 --port 0, ready (its "listening on" line read).
struct StartedServer {
    std::unique_ptr<ChildProcess> process;
    std::uint16_t port = 0;
};
// Throws std::runtime_error, saying how the server ended if it did, when no
// ready line comes within ready_timeout.
StartedServer start_server(const std::string& binary, std::vector<std::string> args,
                           std::chrono::milliseconds ready_timeout = std::chrono::seconds(10),
                           ChildProcess::Stderr err = {}, const std::vector<std::string>& extra_env = {});

// GET target from 127.0.0.1:port (or another IPv4 address, in host byte
// order: 0x7f000002 is 127.0.0.2) with a deadline; the body, or nullopt.
std::optional<std::string> http_get(std::uint16_t port, const std::string& target,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(5),
                                    std::uint32_t ipv4 = 0x7f000001);

}  // namespace common
