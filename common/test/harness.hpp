// The test harness: start any chapter's server, talk to it with deadlines,
// run clients at once, and read what the kernel knows about the server.
//
// Rules it helps keep: servers start on --port 0 and we wait for their ready
// line; every wait has a deadline; counters beat clocks.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fd.hpp"
#include "process.hpp"
#include "http_client.hpp"
#include "proc.hpp"

namespace harness {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// Deadlines, multiplied by $TEST_TIME_SCALE (set for sanitizer builds).
// Only ever used for "give up after", never for "wait this long".
Clock::duration scaled(Clock::duration d);

double to_ms(Clock::duration d);

// The server under test: $SERVER_BIN, or the "server" beside this test binary.
std::string server_binary();

// ---- the server process -------------------------------------------------------

class ServerProcess {
public:
    // Starts BINARY --port 0 ARGS..., waits (with a deadline) for its
    // "listening on HOST:PORT" line. Its stderr goes to a log file. env:
    // "NAME=VALUE" entries added to its environment (LD_PRELOAD, say).
    explicit ServerProcess(std::vector<std::string> args = {}, std::string binary = server_binary(),
                           std::vector<std::string> env = {});
    ServerProcess(const ServerProcess&) = delete;
    ServerProcess& operator=(const ServerProcess&) = delete;
    // Stops the server if it still runs, and fails the current test if it had
    // died on its own or did not exit with status 0.
    ~ServerProcess();

    std::uint16_t port() const { return port_; }
    pid_t pid() const { return pid_; }

    // True while the process has not exited.
    bool running();
    // Sends a signal; an exit after SIGTERM or SIGINT sent this way is expected.
    void send_signal(int signo);
    // Sends SIGTERM and waits for the exit status (SIGKILL after the deadline).
    // Returns the waitpid status; `took` receives how long the exit took.
    int stop(Clock::duration deadline = 10s, Clock::duration* took = nullptr);
    // The server's stderr so far (its last 4000 bytes).
    std::string log() const;
    // How many lines of the whole stderr so far contain `word`.
    long count_log_lines(std::string_view word) const;
    // Sets the server's RLIMIT_NOFILE soft limit (prlimit(2) on the child).
    void set_fd_limit(rlim_t soft);

private:
    std::unique_ptr<common::ChildProcess> process_;
    pid_t pid_ = -1;
    std::uint16_t port_ = 0;
    std::string log_path_;
    bool died_on_its_own_ = false;
    bool stop_requested_ = false;  // by this harness: an exit is expected
};

// "exited with 0", "killed by signal 11 (Segmentation fault)", ...
std::string describe_status(int status);

// ---- clients ----------------------------------------------------------------

std::string get_request(std::string_view target, std::string_view extra_headers = "");

class Client {
public:
    // Connects to 127.0.0.1:port (throws on failure).
    explicit Client(std::uint16_t port);

    int fd() const { return fd_.get(); }
    // Sends all bytes within the deadline (throws on error or timeout).
    void send(std::string_view bytes, Clock::duration timeout = 10s);
    // One response, or nullopt if none completed within the timeout. Throws
    // if the connection ended before a whole response arrived.
    std::optional<http::ClientResponse> read_response(Clock::duration timeout);
    // Sends a request and reads its response; throws if none within the timeout.
    http::ClientResponse request(std::string_view raw, Clock::duration timeout = 10s);
    // True if the server closed the connection (EOF or RST) within the timeout.
    // Bytes that arrive meanwhile are kept and can still be parsed.
    bool wait_closed(Clock::duration timeout);
    // Bytes received but not yet parsed into a response.
    std::size_t unparsed_bytes() const { return parser_.buffered(); }
    // Closes with SO_LINGER 0, so the kernel sends RST instead of FIN.
    void reset();
    // shutdown(SHUT_WR): sends FIN, and can still read the answer.
    void shutdown_write();
    // One byte with MSG_OOB: TCP marks it urgent, and a reader without
    // SO_OOBINLINE finds its recv() cut short at the mark.
    void send_urgent(char byte);
    void close() { fd_.reset(); }
    void set_receive_buffer(int bytes);
    // The local port of this connection (the server sees it as the peer's port).
    std::uint16_t local_port() const;

private:
    // Reads what is available within the deadline; false on timeout, true on
    // data; sets eof_ on EOF or error.
    bool fill(Clock::time_point deadline);

    common::UniqueFd fd_;
    http::ResponseParser parser_;
    bool eof_ = false;
};

// True if body is the /bytes pattern (http::pattern_byte) from offset 0.
bool body_matches_pattern(const std::string& body);

// GET target on a fresh connection with "Connection: close".
http::ClientResponse get(std::uint16_t port, std::string_view target, Clock::duration timeout = 10s);

// GET /stats, as name -> number (the "model" string is under stats_model()).
std::map<std::string, long long> stats(std::uint16_t port);
std::string stats_model(std::uint16_t port);

// True when the server has read every byte this client sent: the receive
// queue of the server's end of the connection is empty (/proc/net/tcp).
// With sleeping_in_nanosleep, it tells that a /sleep handler for this very
// request is running, not merely that some thread sleeps.
bool server_has_read_all(const Client& client, std::uint16_t server_port);

// ---- concurrency ------------------------------------------------------------

// Runs job(i) for i in 0..n-1, each on its own thread, released together.
// Returns each job's duration. Rethrows the first exception a job threw.
// Catch2's CHECK and REQUIRE are not thread-safe: a job stores its results
// (in a slot of its own, indexed by i) and the test checks them afterwards.
std::vector<Clock::duration> run_concurrently(int n, const std::function<void(int)>& job);

// Polls cond every few milliseconds until it holds or the timeout passes.
bool eventually(const std::function<bool()>& cond, Clock::duration timeout = 5s);

// ---- what /proc says about a process (common/client/proc.hpp) -----------------

using common::proc::cpu_seconds;
using common::proc::on_cpu_seconds;
using common::proc::open_fd_count;
using common::proc::peak_rss_kib;
using common::proc::process_tree;
using common::proc::rss_kib;
using common::proc::runnable_seconds;
using common::proc::sleeping_in_nanosleep;
using common::proc::threads_in_nanosleep;
using common::proc::thread_count;
using common::proc::vm_kib;
using common::proc::zombie_children;

// What a process tree did with the CPU over a window this thread sleeps
// through: time on a CPU, and time runnable (on a CPU or waiting in a run
// queue), each divided by the wall time. A sleeping server has both near 0; a
// thread that never sleeps has a runnable share of 1 however busy the machine.
// Counts, while it lives, the most threads of pid's process tree that were
// asleep in nanosleep at the same moment (sampled every 2 ms): how many
// /sleep handlers really ran at once, read from the kernel rather than
// inferred from the clock.
class NanosleepPeak {
public:
    explicit NanosleepPeak(pid_t pid);
    ~NanosleepPeak();
    NanosleepPeak(const NanosleepPeak&) = delete;
    NanosleepPeak& operator=(const NanosleepPeak&) = delete;
    int stop();  // ends the sampling; returns the peak
private:
    struct State;
    std::unique_ptr<State> state_;
};

struct CpuShares {
    double on_cpu = 0;
    double runnable = 0;
};
CpuShares cpu_shares_over(pid_t pid, Clock::duration window);

// Threads the server itself started: ThreadSanitizer's runtime adds one
// background thread to a process that has started threads. Give it a count
// read from /proc (thread_count) or from /stats ("threads").
long own_threads(long threads);

// Raises this process's RLIMIT_NOFILE soft limit to at least n (up to the hard limit).
void raise_fd_limit(rlim_t n);

}  // namespace harness
