// Tests of build/tools/loadgen, run as a program against chapter 01's server:
// what it counts, that it sees the iterative server serialise requests, that
// it holds idle connections, and its exit codes.
//
// Decided here: a URL whose port has nothing listening is "could not run at
// all" (exit 1 and a message naming connect), not a table of failed requests.
// Timing checks are lower bounds only; upper bounds are generous deadlines.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <system_error>
#include <string>
#include <vector>

#include "fd.hpp"
#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

// A path relative to this test binary (build/common/test/unit).
std::string beside_this_binary(const std::string& relative) {
    char self[4096];
    const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) throw std::system_error(errno, std::generic_category(), "readlink /proc/self/exe");
    const std::string path(self, static_cast<std::size_t>(n));
    return path.substr(0, path.rfind('/') + 1) + relative;
}

std::string loadgen_binary() { return beside_this_binary("../../tools/loadgen"); }
std::string chapter01_server() { return beside_this_binary("../../chapters/01_blocking/server"); }

struct Run {
    int exit_code = -1;  // -1: killed (it overran the deadline)
    std::string out;
    std::string err;
};

std::string read_all(int fd) {
    std::string text;
    char buffer[4096];
    for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) != 0;) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
    }
    return text;
}

// Runs loadgen ARGS... and collects its exit code, stdout and stderr. A
// loadgen still running after the deadline is killed: a hang fails the test.
Run run_loadgen(std::vector<std::string> args, Clock::duration deadline = 30s) {
    const std::string binary = loadgen_binary();
    args.insert(args.begin(), binary);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    common::UniqueFd out_read(out[0]), out_write(out[1]);
    // stderr goes to a memory file: read once at the end, it can never fill up and block loadgen.
    common::UniqueFd err_file(::memfd_create("loadgen-stderr", MFD_CLOEXEC));
    if (!err_file) throw std::system_error(errno, std::generic_category(), "memfd_create");

    const pid_t pid = ::fork();
    if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
    if (pid == 0) {
        ::dup2(out_write.get(), STDOUT_FILENO);
        ::dup2(err_file.get(), STDERR_FILENO);
        ::execv(argv[0], argv.data());
        _exit(127);
    }
    out_write.reset();

    Run run;
    const Clock::time_point until = Clock::now() + scaled(deadline);
    bool killed = false;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
        pollfd p{out_read.get(), POLLIN, 0};
        const int ready = left > 0 ? ::poll(&p, 1, static_cast<int>(left)) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) {
            ::kill(pid, SIGKILL);
            killed = true;
            break;
        }
        char buffer[4096];
        const ssize_t n = ::read(out_read.get(), buffer, sizeof buffer);
        if (n <= 0) break;  // EOF: loadgen has exited (or closed stdout)
        run.out.append(buffer, static_cast<std::size_t>(n));
    }
    int status = 0;
    ::waitpid(pid, &status, 0);  // after EOF on stdout, the exit is at most moments away
    if (!killed && WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
    ::lseek(err_file.get(), 0, SEEK_SET);
    run.err = read_all(err_file.get());
    return run;
}

// The number after "key": in loadgen's one-line JSON; fails the test if absent.
double json_number(const std::string& json, const std::string& key) {
    const std::string needle = "\"" + key + "\":";
    const std::size_t at = json.find(needle);
    INFO("key " << key << " in " << json);
    REQUIRE(at != std::string::npos);
    return std::strtod(json.c_str() + at + needle.size(), nullptr);
}

std::string url(std::uint16_t port, const std::string& target) {
    return "http://127.0.0.1:" + std::to_string(port) + target;
}

}  // namespace

TEST_CASE("loadgen: keep-alive requests all complete", "[loadgen]") {
    ServerProcess server({}, chapter01_server());
    const Run run = run_loadgen({"-n", "20", "-c", "4", "-k", "--json", url(server.port(), "/")});
    INFO("stdout: " << run.out << "\nstderr: " << run.err);
    REQUIRE(run.exit_code == 0);
    CHECK(json_number(run.out, "complete") == 20);
    CHECK(json_number(run.out, "failed") == 0);
    CHECK(json_number(run.out, "non_2xx") == 0);
    CHECK(run.out.find("\"keep_alive\":true") != std::string::npos);
}

TEST_CASE("loadgen: sees the iterative server serialise /sleep", "[loadgen]") {
    ServerProcess server({}, chapter01_server());
    // Three connections at once, 50 ms each, one at a time: the third waits
    // for the other two, so the longest request takes about 150 ms.
    const Run run = run_loadgen({"-n", "6", "-c", "3", "--json", url(server.port(), "/sleep?ms=50")});
    INFO("stdout: " << run.out << "\nstderr: " << run.err);
    REQUIRE(run.exit_code == 0);
    CHECK(json_number(run.out, "complete") == 6);
    CHECK(json_number(run.out, "failed") == 0);
    CHECK(json_number(run.out, "max_ms") >= 140);
    CHECK(json_number(run.out, "p50_ms") >= 45);  // no request is answered before its 50 ms sleep
}

TEST_CASE("loadgen: nothing listening means it could not run (exit 1)", "[loadgen]") {
    // A socket bound but not listening holds a port where connect is refused.
    common::UniqueFd holder(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(holder);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(holder.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    socklen_t length = sizeof address;
    REQUIRE(::getsockname(holder.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);

    const Run run = run_loadgen({"-n", "5", "-c", "2", "--json", url(ntohs(address.sin_port), "/")});
    INFO("stdout: " << run.out << "\nstderr: " << run.err);
    CHECK(run.exit_code == 1);
    CHECK(run.err.find("connect") != std::string::npos);
    CHECK(run.out.empty());
}

TEST_CASE("loadgen: refuses hosts other than loopback (exit 2)", "[loadgen]") {
    for (const char* target : {"http://192.0.2.1:80/", "http://example.com/", "http://[2001:db8::1]:80/"}) {
        const Run run = run_loadgen({"-n", "1", target});
        INFO(target << " stderr: " << run.err);
        CHECK(run.exit_code == 2);
        CHECK(run.err.find("loopback") != std::string::npos);
        CHECK(run.out.empty());
    }
}

TEST_CASE("loadgen: bad arguments exit 2 with the usage on stderr", "[loadgen]") {
    for (std::vector<std::string> args : {std::vector<std::string>{"-n", "2", "-c", "3", "http://127.0.0.1:1/"},
                                          {"-n", "x", "http://127.0.0.1:1/"},
                                          {"--bogus", "http://127.0.0.1:1/"},
                                          {"-n", "1"},
                                          {"https://127.0.0.1/"}}) {
        const Run run = run_loadgen(args);
        INFO(args.front() << " stderr: " << run.err);
        CHECK(run.exit_code == 2);
        CHECK(run.err.find("usage:") != std::string::npos);
    }
}

TEST_CASE("loadgen: holds idle connections (-n 0)", "[loadgen]") {
    ServerProcess server({}, chapter01_server());
    // Chapter 01 accepts one of them and waits on it; the kernel still
    // completes the other handshakes (the listen backlog), so all 5 are held.
    const Run run = run_loadgen({"--idle", "5", "-n", "0", "-t", "1", "--json", url(server.port(), "/")});
    INFO("stdout: " << run.out << "\nstderr: " << run.err);
    REQUIRE(run.exit_code == 0);
    CHECK(json_number(run.out, "idle_held") == 5);
    CHECK(json_number(run.out, "idle_closed") == 0);
    CHECK(json_number(run.out, "complete") == 0);
    CHECK(json_number(run.out, "seconds") >= 0.99);  // held for the -t second
}

TEST_CASE("loadgen: counts the requests a starving server leaves unanswered", "[loadgen]") {
    ServerProcess server({}, chapter01_server());
    // Keep-alive on the iterative server: it serves the first connection for
    // the whole second, and the other two wait. Their requests neither
    // complete nor fail; they must still show up in the report.
    const Run run = run_loadgen({"-k", "-c", "3", "-t", "1", "--json", url(server.port(), "/")});
    INFO("stdout: " << run.out << "\nstderr: " << run.err);
    REQUIRE(run.exit_code == 0);
    CHECK(json_number(run.out, "complete") >= 1);
    CHECK(json_number(run.out, "failed") == 0);
    CHECK(json_number(run.out, "unfinished") >= 2);
}
