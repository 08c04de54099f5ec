// Lab 04's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=04` (the solution) or
// `build/exercises/04_thread_pool/test "[lab]"` (your skeleton).
//
// What the server is doing is read from /proc, never guessed with a sleep.
// "B waits in the queue": the server holds one more descriptor (B was
// accepted), and then its main thread is blocked in accept() again (it went
// round the loop, so B was queued). "A worker waits for its client": a thread
// is blocked in recv(); only then has it finished looking at the queue.
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include <fstream>
#include <memory>
#include <string>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

// The system call thread tid of pid is blocked in, or -1 if it runs.
// /proc/PID/task/TID/syscall starts with the call's number, or says "running".
long blocked_in(pid_t pid, const std::string& tid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + tid + "/syscall");
    std::string first;
    in >> first;
    if (first.empty() || first == "running") return -1;
    return std::stol(first);
}

// True if the server's main thread (its tid is the pid) is blocked in
// accept(2) or accept4(2).
bool main_thread_in_accept(pid_t pid) {
    const long nr = blocked_in(pid, std::to_string(pid));
#ifdef SYS_accept
    if (nr == SYS_accept) return true;
#endif
    return nr == SYS_accept4;
}

// How many of the server's threads are blocked in recv(2), which glibc
// implements with the recvfrom system call: workers waiting for a client.
int threads_in_recv(pid_t pid) {
    const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
    DIR* dir = ::opendir(tasks.c_str());
    if (!dir) return -1;
    int count = 0;
    while (dirent* e = ::readdir(dir))
        if (e->d_name[0] != '.' && blocked_in(pid, e->d_name) == SYS_recvfrom) ++count;
    ::closedir(dir);
    return count;
}

// Connects a client, sends GET /, and waits until the server has accepted it
// and put it in the queue (see the comment at the top).
std::unique_ptr<Client> queued_client(ServerProcess& server) {
    const long fds_before = open_fd_count(server.pid());
    auto client = std::make_unique<Client>(server.port());
    client->send(get_request("/"));
    REQUIRE(eventually([&] { return open_fd_count(server.pid()) == fds_before + 1; }, 5s));
    REQUIRE(eventually([&] { return main_thread_in_accept(server.pid()); }, 5s));
    return client;
}

}  // namespace

TEST_CASE("a client whose request ran while others queued is let go", "[lab]") {
    ServerProcess server({"--workers", "1"});
    Client a(server.port());
    // Long enough that B is surely queued before it ends, even under sanitizers.
    const long sleep_ms = static_cast<long>(to_ms(scaled(1000ms)));
    a.send(get_request("/sleep?ms=" + std::to_string(sleep_ms)));  // keep-alive
    // The only worker runs A's /sleep: the server has read A's request, and a
    // thread sleeps (under ThreadSanitizer, its runtime's thread sleeps too).
    REQUIRE(eventually([&] { return server_has_read_all(a, server.port()) && sleeping_in_nanosleep(server.pid()); },
                       5s));
    std::unique_ptr<Client> b = queued_client(server);
    {
        INFO("precondition: B was queued while A's request still ran");
        REQUIRE_FALSE(a.read_response(0ms).has_value());
    }

    std::optional<http::ClientResponse> ra = a.read_response(10s);
    REQUIRE(ra);
    CHECK(ra->status == 200);
    // A never closes its side: the server must let it go to serve B. (The
    // reply may say keep-alive: B arrived after the request was read.)
    CHECK(a.wait_closed(5s));
    std::optional<http::ClientResponse> rb = b->read_response(5s);
    REQUIRE(rb);  // the skeleton keeps waiting for A's next request
    CHECK(rb->status == 200);
}

TEST_CASE("a client that asks while others queue is told Connection: close", "[lab]") {
    ServerProcess server({"--workers", "1"});
    Client a(server.port());
    REQUIRE(a.request(get_request("/")).keep_alive);
    // The only worker has answered A, found nobody waiting, and waits in recv() for A.
    REQUIRE(eventually([&] { return threads_in_recv(server.pid()) == 1; }, 5s));
    std::unique_ptr<Client> b = queued_client(server);
    CHECK_FALSE(b->read_response(0ms).has_value());   // B waits: the worker is A's
    http::ClientResponse ra = a.request(get_request("/"));
    CHECK(ra.status == 200);
    CHECK_FALSE(ra.keep_alive);  // the server says so in the reply
    CHECK(a.wait_closed(5s));
    std::optional<http::ClientResponse> rb = b->read_response(5s);
    REQUIRE(rb);
    CHECK(rb->status == 200);
}

TEST_CASE("with nobody waiting, keep-alive stays", "[lab]") {
    ServerProcess server({"--workers", "1"});
    Client a(server.port());
    for (int i = 0; i < 3; ++i) {
        http::ClientResponse r = a.request(get_request("/"));
        CHECK(r.status == 200);
        CHECK(r.keep_alive);
    }
    CHECK_FALSE(a.wait_closed(200ms));
}

TEST_CASE("the policy's limit: idle clients still starve a pool", "[lab]") {
    // The policy acts only when a worker has just answered. A worker already
    // waiting in recv() for a silent client does not look at the queue.
    ServerProcess server({"--workers", "2"});
    // One after the other, so that nobody is ever queued: both stay.
    Client a(server.port());
    REQUIRE(a.request(get_request("/")).keep_alive);
    // A's worker looks at the queue once more after it has sent the answer:
    // B must not arrive before that, or (on a busy machine, where the worker
    // may be slow to get there) A is let go as the policy says.
    REQUIRE(eventually([&] { return threads_in_recv(server.pid()) == 1; }, 5s));
    Client b(server.port());
    REQUIRE(b.request(get_request("/")).keep_alive);
    REQUIRE(eventually([&] { return threads_in_recv(server.pid()) == 2; }, 5s));  // both wait for their client
    Client c(server.port());
    c.send(get_request("/"));
    CHECK_FALSE(c.read_response(300ms).has_value());  // both workers wait for a and b
    a.close();
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 200);
}
