// Chapter 04's own tests: a fixed pool of workers fed by a bounded queue.
// The shared behaviour suite (common/test/behaviour_suite.cpp) is linked in too.
#include <algorithm>
#include <memory>

#include <signal.h>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

// Runs n concurrent GETs of target; returns each one's latency in ms, sorted,
// and the most handlers that slept at once (read from /proc, not the clock).
struct Wave {
    std::vector<double> ms;
    int most_asleep_at_once = 0;
};
Wave sorted_latencies(const ServerProcess& server, int n, const std::string& target) {
    std::vector<int> status(static_cast<std::size_t>(n));
    NanosleepPeak peak(server.pid());
    std::vector<Clock::duration> each = run_concurrently(
        n, [&](int i) { status[static_cast<std::size_t>(i)] = get(server.port(), target, 20s).status; });
    Wave wave;
    wave.most_asleep_at_once = peak.stop();
    CHECK(status == std::vector<int>(static_cast<std::size_t>(n), 200));
    for (Clock::duration d : each) wave.ms.push_back(to_ms(d));
    std::sort(wave.ms.begin(), wave.ms.end());
    return wave;
}

}  // namespace

TEST_CASE("K requests on K workers finish in one wave", "[chapter04][lesson]") {
    ServerProcess server({"--workers", "4"});
    Wave wave = sorted_latencies(server, 4, "/sleep?ms=400");
    INFO("slowest " << wave.ms.back() << " ms; at most " << wave.most_asleep_at_once << " asleep at once");
    CHECK(wave.ms.front() >= 400);
    // All four workers slept together: one wave. (At least, not exactly:
    // ThreadSanitizer's runtime has a thread of its own that naps too.)
    CHECK(wave.most_asleep_at_once >= 4);
}

TEST_CASE("K requests on W workers run in ceil(K/W) waves", "[chapter04][lesson]") {
    ServerProcess server({"--workers", "2"});
    Wave wave = sorted_latencies(server, 6, "/sleep?ms=200");
    for (std::size_t i = 0; i < wave.ms.size(); ++i) {
        // Lower bounds: never more than two at once, so the (i+1)-th fastest
        // waited for i/2 waves before its own.
        INFO("request " << i << ": " << wave.ms[i] << " ms");
        CHECK(wave.ms[i] >= 200.0 * static_cast<double>(i / 2 + 1) - 5);
    }
    INFO("at most " << wave.most_asleep_at_once << " asleep at once");
    // Two at a time, not one after another (never three: the lower bounds
    // above say so; ThreadSanitizer's own napping thread may add one here).
    CHECK(wave.most_asleep_at_once >= 2);
}

TEST_CASE("two silent keep-alive clients starve a pool of two", "[chapter04][lesson]") {
    ServerProcess server({"--workers", "2"});
    Client a(server.port()), b(server.port());
    REQUIRE(a.request(get_request("/")).status == 200);  // answered: a worker holds it, now idle
    REQUIRE(b.request(get_request("/")).status == 200);
    Client c(server.port());
    c.send(get_request("/"));
    CHECK_FALSE(c.read_response(300ms).has_value());  // both workers wait in recv() for a and b
    a.close();                                         // a leaves: its worker is free
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("a full queue answers 503 and closes", "[chapter04]") {
    ServerProcess server({"--workers", "1", "--queue", "1"});
    Client holder(server.port());
    REQUIRE(holder.request(get_request("/")).status == 200);  // the only worker now waits on holder
    Client queued(server.port());                              // takes the only place in the queue
    Client refused(server.port());
    refused.send(get_request("/"));
    std::optional<http::ClientResponse> r = refused.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 503);
    CHECK(refused.wait_closed(5s));
    holder.close();
    queued.close();
    // At least ours: a /stats request that arrives while `queued` still holds
    // the only place in the queue is refused (and counted) too.
    CHECK(eventually([&] { return stats(server.port())["rejected"] >= 1; }, 5s));
}

TEST_CASE("stopping answers the queued requests before exiting", "[chapter04]") {
    ServerProcess server({"--workers", "1", "--queue", "4"});
    Client busy(server.port());
    busy.send(get_request("/sleep?ms=500"));
    REQUIRE(eventually([&] { return server_has_read_all(busy, server.port()) && sleeping_in_nanosleep(server.pid()); },
                       5s));  // the worker is busy with it
    const long fds_before = open_fd_count(server.pid());
    Client waiting(server.port());
    waiting.send(get_request("/"));
    // Accepted and queued (the server holds one more descriptor), not yet served.
    REQUIRE(eventually([&] { return open_fd_count(server.pid()) == fds_before + 1; }, 5s));
    server.send_signal(SIGTERM);
    std::optional<http::ClientResponse> first = busy.read_response(5s);
    std::optional<http::ClientResponse> second = waiting.read_response(5s);
    REQUIRE(first);
    REQUIRE(second);
    CHECK(first->status == 200);
    CHECK(second->status == 200);
    CHECK_FALSE(second->keep_alive);
    CHECK(describe_status(server.stop()) == "exited with 0");
}

TEST_CASE("SIGTERM with every worker held by an idle client exits at once", "[chapter04]") {
    ServerProcess server({"--workers", "3"});
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 3; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        REQUIRE(clients.back()->request(get_request("/")).status == 200);
    }
    Clock::duration took{};
    CHECK(describe_status(server.stop(10s, &took)) == "exited with 0");
    CHECK(to_ms(took) < to_ms(scaled(1500ms)));
    CHECK(server.log().find("grace period expired") == std::string::npos);
}

TEST_CASE("the pool's size is fixed", "[chapter04]") {
    ServerProcess server({"--workers", "3"});
    CHECK(own_threads(thread_count(server.pid())) == 4);  // main + 3 workers, before any client
    for (int i = 0; i < 10; ++i) REQUIRE(get(server.port(), "/").status == 200);
    auto s = stats(server.port());
    CHECK(s["workers"] == 3);
    CHECK(own_threads(s["threads"]) == 4);  // no thread per connection
    CHECK(s["requests"] == 11);
    CHECK(stats_model(server.port()) == "thread_pool");
}
