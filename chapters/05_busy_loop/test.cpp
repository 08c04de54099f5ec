// Chapter 05's own tests: one thread, non-blocking sockets, a loop that
// never waits. The shared behaviour suite is linked in too.
#include <memory>
#include <thread>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("one thread serves 50 concurrent clients", "[chapter05][lesson]") {
    ServerProcess server;
    std::vector<int> status(50);
    run_concurrently(50, [&](int i) { status[static_cast<std::size_t>(i)] = get(server.port(), "/").status; });
    CHECK(status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1);
    CHECK(stats(server.port())["threads"] == 1);
}

TEST_CASE("a silent client does not block the others", "[chapter05][lesson]") {
    ServerProcess server;
    Client silent(server.port());
    Client half(server.port());
    half.send("GET / HTTP/1.1\r\nHo");  // and then nothing: the loop must not wait for the rest
    Client second(server.port());
    second.send(get_request("/"));
    std::optional<http::ClientResponse> r = second.read_response(5s);
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
    Client idle(server.port());
    const double cpu_before = cpu_seconds(server.pid());
    const Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(1s);  // the measurement window, not synchronisation
    const double wall = to_ms(Clock::now() - start) / 1000.0;
    const double cpu = cpu_seconds(server.pid()) - cpu_before;
    INFO("server CPU " << cpu << " s in " << wall << " s of wall time, with no request at all");
    CHECK(cpu >= 0.5 * wall);
}

TEST_CASE("a slow handler stalls everyone: handlers run in the loop", "[chapter05][lesson]") {
    ServerProcess server;
    Client slow(server.port());
    const Clock::time_point slow_sent = Clock::now();
    slow.send(get_request("/sleep?ms=300"));
    REQUIRE(eventually([&] { return sleeping_in_nanosleep(server.pid()); }, 5s));  // the loop is asleep
    Client quick(server.port());
    quick.send(get_request("/"));
    std::optional<http::ClientResponse> r = quick.read_response(5s);
    REQUIRE(r);
    // GET / could not be answered before the 300 ms sleep ended.
    CHECK(to_ms(Clock::now() - slow_sent) >= 300);
    CHECK(slow.read_response(5s).has_value());
}
