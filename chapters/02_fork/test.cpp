// Chapter 02's own tests: a process per connection. The shared behaviour
// suite (common/test/behaviour_suite.cpp) is linked in too.
#include <cstdlib>
#include <algorithm>

#include "harness.hpp"
#include "scenarios.hpp"
#include "testing.hpp"

using namespace harness;

// Under AddressSanitizer, LeakSanitizer checks for leaks as a process exits,
// using a helper task that ends with SIGCHLD. This server's SIGCHLD handler
// reaps every child with waitpid(-1), the helper included, and LeakSanitizer
// then dies with "fatal error" (checked: a handler without waitpid does not
// trigger it). Leak checks are off for the servers this binary starts; the
// other AddressSanitizer checks stay on. setenv before main: no threads yet.
static const bool leak_checks_off = ::setenv("ASAN_OPTIONS", "detect_leaks=0", 0) == 0;

TEST_CASE("a silent client no longer blocks the others", "[chapter02][lesson]") {
    ServerProcess server;
    std::optional<http::ClientResponse> r = response_beside_silent_client(server.port(), 5s);
    REQUIRE(r);  // its own child waits for the silent client; nobody else does
    CHECK(r->status == 200);
}

TEST_CASE("ten concurrent /sleep?ms=300 overlap", "[chapter02][lesson]") {
    ServerProcess server;
    Batch batch = concurrent_gets(server, 10, "/sleep?ms=300");
    INFO("total " << batch.total_ms << " ms; at most " << batch.most_asleep_at_once << " asleep at once");
    CHECK(batch.status == std::vector<int>(10, 200));
    CHECK(batch.total_ms >= 300);
    // Overlap is read from the kernel, not the clock: all ten handlers were
    // asleep at the same moment (one at a time, it would be one). At least:
    // ThreadSanitizer's runtime has a thread of its own that naps too.
    CHECK(batch.most_asleep_at_once >= 10);
}

TEST_CASE("no zombie children remain after 50 connections", "[chapter02]") {
    ServerProcess server;
    for (int i = 0; i < 50; ++i) REQUIRE(get(server.port(), "/").status == 200);
    // Each child exits after its client leaves; the parent must reap it.
    CHECK(eventually([&] { return zombie_children(server.pid()) == 0; }, 5s));
    CHECK(eventually([&] { return stats(server.port())["connections_open"] == 1; }, 5s));  // only the /stats child
}

TEST_CASE("counters in children never reach the parent", "[chapter02][lesson]") {
    ServerProcess server;
    for (int i = 0; i < 5; ++i) REQUIRE(get(server.port(), "/").status == 200);
    auto s = stats(server.port());
    // The parent accepted six connections and counted them before forking...
    CHECK(s["connections_total"] == 6);
    // ...but each request was counted in a child's copy of the memory, which
    // vanished with the child. The child answering /stats saw only its own request.
    CHECK(s["requests"] == 1);
    CHECK(stats_model(server.port()) == "fork");
}

TEST_CASE("each connection gets its own process", "[chapter02]") {
    ServerProcess server;
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 5; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        CHECK(clients.back()->request(get_request("/")).status == 200);  // answered: its child exists
    }
    CHECK(stats(server.port())["connections_open"] == 6);  // 5 idle children + the one serving /stats
    CHECK(own_threads(thread_count(server.pid())) == 1);                 // processes, not threads
    clients.clear();
    CHECK(eventually([&] { return stats(server.port())["connections_open"] == 1; }, 5s));
}
