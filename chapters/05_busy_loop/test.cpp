// Chapter 05's own tests: one thread, non-blocking sockets, a loop that
// never waits. The shared behaviour suite is linked in too.
#include <memory>

#include "harness.hpp"
#include "scenarios.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("one thread serves 50 concurrent clients", "[chapter05][lesson]") {
    ServerProcess server;
    CHECK(concurrent_gets(server.port(), 50, "/").status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1);
    CHECK(stats(server.port())["threads"] == 1);
}

TEST_CASE("a silent client does not block the others", "[chapter05][lesson]") {
    ServerProcess server;
    Client half(server.port());
    half.send("GET / HTTP/1.1\r\nHo");  // and then nothing: the loop must not wait for the rest
    std::optional<http::ClientResponse> r = response_beside_silent_client(server.port(), 5s);
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("with idle clients the loop spins: EAGAIN after EAGAIN", "[chapter05][lesson]") {
    ServerProcess server;
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 3; ++i) idle.push_back(std::make_unique<Client>(server.port()));
    const long long before = stats(server.port())["eagain_reads"];
    // Nobody sends anything, yet the count of fruitless reads races upwards.
    CHECK(eventually([&] { return stats(server.port())["eagain_reads"] - before > 100'000; }, 500ms));
}

TEST_CASE("an idle busy loop burns a whole CPU", "[chapter05][lesson]") {
    ServerProcess server;
    IdleCost cost = idle_cost(server, 1, "eagain_reads");
    INFO("with no request at all: CPU share " << cost.cpu_share << ", runnable share " << cost.runnable_share
                                              << ", " << cost.counter_delta << " EAGAINs");
    // It never sleeps: on a CPU, or waiting for one, the whole time. (How much
    // of it is on a CPU depends on what else the machine runs; on an idle
    // machine it is a whole core.)
    CHECK(cost.runnable_share >= 0.9);
}

TEST_CASE("a slow handler stalls everyone: handlers run in the loop", "[chapter05][lesson]") {
    ServerProcess server;
    // GET / could not be answered before the 300 ms sleep ended.
    CHECK(quick_answer_after_slow_request_ms(server) >= 300);
}
