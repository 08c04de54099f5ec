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

class ChildProcess {
public:
    // Starts argv[0] with argv; its stdout comes to us through a pipe, its
    // stderr goes to /dev/null unless keep_stderr.
    explicit ChildProcess(const std::vector<std::string>& argv, bool keep_stderr = false);
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
StartedServer start_server(const std::string& binary, std::vector<std::string> args,
                           std::chrono::milliseconds ready_timeout = std::chrono::seconds(10));

// GET target from 127.0.0.1:port with a deadline; the body, or nullopt.
std::optional<std::string> http_get(std::uint16_t port, const std::string& target,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(5));

}  // namespace common
