// Lab 02's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=02` (the solution) or
// `build/exercises/02_fork/test "[lab]"` (your skeleton).
//
// "requests_all_processes" in /stats counts every request answered by any
// child, the /stats request itself included (it is counted before the reply
// is built, like "requests").
#include <cstdlib>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

// As in chapter 02's tests: under AddressSanitizer, the server's SIGCHLD
// handler reaps LeakSanitizer's helper task, so leak checks are off for the
// servers this binary starts. setenv before main: no threads yet.
static const bool leak_checks_off = ::setenv("ASAN_OPTIONS", "detect_leaks=0", 0) == 0;

namespace {

long long requests_all_processes(std::uint16_t port) {
    std::map<std::string, long long> s = stats(port);
    REQUIRE(s.count("requests_all_processes") == 1);
    return s["requests_all_processes"];
}

}  // namespace

TEST_CASE("children count into one shared counter", "[lab]") {
    ServerProcess server;
    for (int i = 0; i < 5; ++i) REQUIRE(get(server.port(), "/").status == 200);
    // Five children answered one request each and exited; a sixth answers
    // /stats. With a private counter each of them would have seen 1.
    CHECK(requests_all_processes(server.port()) == 6);
    CHECK(requests_all_processes(server.port()) == 7);  // live: each /stats sees the one before
}

TEST_CASE("requests on a kept-alive connection are counted too", "[lab]") {
    ServerProcess server;
    Client c(server.port());
    for (int i = 0; i < 3; ++i) REQUIRE(c.request(get_request("/")).status == 200);
    // c's child still runs; another child answers /stats and sees its three.
    CHECK(requests_all_processes(server.port()) == 4);
}

TEST_CASE("20 clients at once: every request is counted exactly once", "[lab]") {
    ServerProcess server;
    constexpr int kClients = 20, kRequestsEach = 5;
    std::vector<int> ok(kClients);
    // Twenty processes add to the counter at the same time: only an atomic
    // add on the shared memory counts them all.
    run_concurrently(kClients, [&](int i) {
        Client c(server.port());
        for (int k = 0; k < kRequestsEach; ++k)
            if (c.request(get_request("/"), 20s).status == 200) ++ok[static_cast<std::size_t>(i)];
    });
    CHECK(ok == std::vector<int>(kClients, kRequestsEach));
    CHECK(requests_all_processes(server.port()) == kClients * kRequestsEach + 1);
}

TEST_CASE("the model is still one process per connection", "[lab]") {
    ServerProcess server;
    CHECK(stats_model(server.port()) == "fork");
    CHECK(own_threads(thread_count(server.pid())) == 1);  // shared memory, not threads
}
