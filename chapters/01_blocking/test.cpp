// Chapter 01's own tests: what an iterative server does under concurrency.
// The shared behaviour suite (common/test/behaviour_suite.cpp) is linked in too.
#include <algorithm>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("a silent client makes the next client wait", "[chapter01][lesson]") {
    ServerProcess server;
    Client silent(server.port());  // connects and says nothing
    Client second(server.port());
    second.send(get_request("/"));
    // Lower bound: nothing may come while the first client holds the server.
    CHECK_FALSE(second.read_response(300ms).has_value());
    silent.close();  // the first client leaves (an ordinary close, FIN)...
    std::optional<http::ClientResponse> r = second.read_response(10s);  // ...and the second is served
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("a keep-alive client holds the server between its requests", "[chapter01][lesson]") {
    ServerProcess server;
    Client first(server.port());
    CHECK(first.request(get_request("/")).status == 200);  // then stays connected, idle
    Client second(server.port());
    second.send(get_request("/"));
    CHECK_FALSE(second.read_response(300ms).has_value());
    CHECK(first.request(get_request("/", "Connection: close\r\n")).status == 200);
    REQUIRE(second.read_response(10s).has_value());
}

TEST_CASE("five concurrent /sleep?ms=100 are served one after another", "[chapter01][lesson]") {
    ServerProcess server;
    const Clock::time_point start = Clock::now();
    std::vector<int> status(5);
    std::vector<Clock::duration> each = run_concurrently(5, [&](int i) {
        status[static_cast<std::size_t>(i)] = get(server.port(), "/sleep?ms=100", 20s).status;
    });
    CHECK(status == std::vector<int>(5, 200));
    const double total_ms = to_ms(Clock::now() - start);
    INFO("total " << total_ms << " ms");
    CHECK(total_ms >= 450);  // 5 x 100 ms, one at a time (a lower bound holds on any machine)
    // The last client waited for the four before it.
    CHECK(to_ms(*std::max_element(each.begin(), each.end())) >= 450);
}

TEST_CASE("one thread serves everyone", "[chapter01]") {
    ServerProcess server;
    CHECK(stats_model(server.port()) == "blocking");
    for (int i = 0; i < 3; ++i) CHECK(get(server.port(), "/").status == 200);
    auto s = stats(server.port());
    CHECK(own_threads(s["threads"]) == 1);
    CHECK(s["connections_total"] == 5);  // the /stats connections count too
    CHECK(s["connections_open"] == 1);   // this /stats request's own connection
    CHECK(own_threads(thread_count(server.pid())) == 1);
}
