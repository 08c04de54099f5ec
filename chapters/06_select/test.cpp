// Chapter 06's own tests: one thread and select(2). The shared behaviour
// suite is linked in too.
#include <sys/select.h>

#include <memory>

#include "harness.hpp"
#include "scenarios.hpp"
#include "http.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("one thread serves 50 concurrent clients", "[chapter06]") {
    ServerProcess server;
    CHECK(concurrent_gets(server.port(), 50, "/").status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1);
}

TEST_CASE("50 idle clients cost no CPU and no wake-ups", "[chapter06][lesson]") {
    ServerProcess server;
    IdleCost cost = idle_cost(server, 50, "wakeups");
    INFO("CPU share " << cost.cpu_share << "; " << cost.counter_delta << " wake-ups");
    CHECK(cost.cpu_share < 0.05);
    CHECK(cost.runnable_share < 0.05);  // asleep in the kernel, not waiting for a CPU
    CHECK(cost.counter_delta < 20);  // the /stats requests wake it a few times; idle clients never do
}

TEST_CASE("a client that does not read its large response delays nobody", "[chapter06][lesson]") {
    ServerProcess server;
    LargeResponse r = other_client_beside_unread_large_response(server.port());
    CHECK(r.other_client_ms < to_ms(scaled(1s)));
    CHECK(r.intact);  // partial writes resumed where they stopped
}

TEST_CASE("50 clients sending byte by byte, interleaved, are all answered", "[chapter06][lesson]") {
    ServerProcess server;
    CHECK(interleaved_byte_by_byte_clients(server.port(), 50) == 50);
}

TEST_CASE("a slow handler stalls everyone: handlers run in the loop", "[chapter06][lesson]") {
    ServerProcess server;
    CHECK(quick_answer_after_slow_request_ms(server) >= 300);
}

TEST_CASE("descriptors at or above FD_SETSIZE are refused, never watched", "[chapter06][lesson]") {
    raise_fd_limit(4096);
    ServerProcess server;
    server.set_fd_limit(4096);  // allow the server descriptors past FD_SETSIZE
    constexpr int kClients = 1100;
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < kClients; ++i) clients.push_back(std::make_unique<Client>(server.port()));
    for (auto& c : clients) c->send(get_request("/"));
    int served = 0, refused = 0;
    for (auto& c : clients) {
        std::optional<http::ClientResponse> r = c->read_response(20s);
        REQUIRE(r);
        served += r->status == 200;
        refused += r->status == 503;
    }
    INFO(served << " served, " << refused << " refused");
    CHECK(served + refused == kClients);
    CHECK(refused > 0);              // the server ran past FD_SETSIZE...
    CHECK(served > FD_SETSIZE - 50);  // ...and served every client it could watch
    REQUIRE(server.running());        // no crash, no _FORTIFY_SOURCE abort
    clients.clear();
    CHECK(eventually([&] { return stats(server.port())["refused_fd_setsize"] == refused; }, 10s));
}
