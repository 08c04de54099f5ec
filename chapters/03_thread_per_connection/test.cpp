// Chapter 03's own tests: a thread per connection. The shared behaviour
// suite (common/test/behaviour_suite.cpp) is linked in too.
#include <memory>

#include "harness.hpp"
#include "scenarios.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("a silent client no longer blocks the others", "[chapter03][lesson]") {
    ServerProcess server;
    std::optional<http::ClientResponse> r = response_beside_silent_client(server.port(), 5s);
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("ten concurrent /sleep?ms=300 overlap", "[chapter03][lesson]") {
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

TEST_CASE("threads follow open connections up and back down", "[chapter03][lesson]") {
    ServerProcess server;
    CHECK(own_threads(thread_count(server.pid())) == 1);
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 20; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        REQUIRE(clients.back()->request(get_request("/")).status == 200);  // its thread exists now
    }
    CHECK(own_threads(thread_count(server.pid())) == 21);  // main + one per idle client
    auto s = stats(server.port());
    CHECK(own_threads(s["threads"]) == 22);  // ... + the thread serving /stats
    CHECK(s["connections_open"] == 21);
    clients.clear();
    CHECK(eventually([&] { return own_threads(thread_count(server.pid())) == 1; }, 5s));
}

TEST_CASE("threads share memory: every request is counted", "[chapter03][lesson]") {
    ServerProcess server;
    for (int i = 0; i < 5; ++i) REQUIRE(get(server.port(), "/").status == 200);
    auto s = stats(server.port());
    CHECK(s["requests"] == 6);  // in chapter 02 this was 1
    CHECK(s["connections_total"] == 6);
    CHECK(stats_model(server.port()) == "thread_per_connection");
}

TEST_CASE("SIGTERM with many idle keep-alive clients does not wait for them", "[chapter03]") {
    ServerProcess server;
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 10; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        REQUIRE(clients.back()->request(get_request("/")).status == 200);
    }
    Clock::duration took{};
    CHECK(describe_status(server.stop(10s, &took)) == "exited with 0");
    // Woken by shutdown(SHUT_RD), not rescued by the 2 s grace alarm.
    CHECK(to_ms(took) < to_ms(scaled(1500ms)));
    CHECK(server.log().find("grace period expired") == std::string::npos);
    for (auto& c : clients) CHECK(c->wait_closed(5s));
}
