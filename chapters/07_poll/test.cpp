// Chapter 07's own tests: one thread and poll(2). The shared behaviour
// suite is linked in too.
#include <memory>

#include "harness.hpp"
#include "scenarios.hpp"
#include "http.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("one thread serves 50 concurrent clients", "[chapter07]") {
    ServerProcess server;
    CHECK(concurrent_gets(server.port(), 50, "/").status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1);
}

TEST_CASE("50 idle clients cost no CPU and no wake-ups", "[chapter07][lesson]") {
    ServerProcess server;
    IdleCost cost = idle_cost(server, 50, "wakeups");
    INFO("CPU share " << cost.cpu_share << "; " << cost.counter_delta << " wake-ups");
    CHECK(cost.cpu_share < 0.05);
    CHECK(cost.runnable_share < 0.05);  // asleep in the kernel, not waiting for a CPU
    CHECK(cost.counter_delta < 20);  // the /stats requests wake it a few times; idle clients never do
}

TEST_CASE("a client that does not read its large response delays nobody", "[chapter07][lesson]") {
    ServerProcess server;
    LargeResponse r = other_client_beside_unread_large_response(server.port());
    CHECK(r.other_client_ms < to_ms(scaled(1s)));
    CHECK(r.intact);  // partial writes resumed where they stopped
}

TEST_CASE("50 clients sending byte by byte, interleaved, are all answered", "[chapter07][lesson]") {
    ServerProcess server;
    CHECK(interleaved_byte_by_byte_clients(server.port(), 50) == 50);
}

TEST_CASE("a slow handler stalls everyone: handlers run in the loop", "[chapter07][lesson]") {
    ServerProcess server;
    CHECK(quick_answer_after_slow_request_ms(server) >= 300);
}

TEST_CASE("5,000 concurrent connections on one thread", "[chapter07][lesson]") {
    constexpr int kClients = 5000;
    raise_fd_limit(kClients + 1000);
    ServerProcess server;
    server.set_fd_limit(kClients + 1000);  // poll has no FD_SETSIZE: only RLIMIT_NOFILE limits it
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < kClients; ++i) clients.push_back(std::make_unique<Client>(server.port()));
    for (auto& c : clients) c->send(get_request("/"));
    int served = 0;
    for (auto& c : clients) {
        std::optional<http::ClientResponse> r = c->read_response(30s);
        served += r && r->status == 200;
    }
    CHECK(served == kClients);  // every one of them, past 1024 and all
    auto s = stats(server.port());
    CHECK(s["connections_open"] == kClients + 1);  // all still connected (keep-alive), + this /stats
    CHECK(s["threads"] == 1);
    CHECK(own_threads(thread_count(server.pid())) == 1);
}

TEST_CASE("5,000 idle connections make every request of an active client dearer", "[chapter07][lesson]") {
    constexpr int kIdle = 5000, kRequests = 500;
    raise_fd_limit(kIdle + 1000);
    ServerProcess server;
    server.set_fd_limit(kIdle + 1000);
    const ActiveCost alone = active_client_cost(server, 0, kRequests);
    const ActiveCost crowded = active_client_cost(server, kIdle, kRequests);
    INFO("server CPU per request: " << alone.cpu_us_per_request << " µs alone, " << crowded.cpu_us_per_request
                                    << " µs beside " << kIdle << " idle connections");
    // Each wake-up hands poll() all 5,001 entries and scans them: the work a
    // request costs grows with the connections nobody uses. (Chapter 08: flat.)
    CHECK(crowded.cpu_us_per_request > 3 * alone.cpu_us_per_request);
}
