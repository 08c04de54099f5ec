// Lab 08's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=08` (the solution) or
// `build/exercises/08_epoll/test "[lab]"` (your skeleton).
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

// Clients whose handshake the kernel has completed but the server has not
// accepted: the accept queue of the listener on 127.0.0.1:port. For a
// listening socket, /proc/net/tcp shows its length as rx_queue. -1 if no
// socket listens on that port.
long accept_queue_length(std::uint16_t port) {
    std::ifstream table("/proc/net/tcp");
    std::string line;
    std::getline(table, line);  // the header
    char local_end[16];
    std::snprintf(local_end, sizeof local_end, ":%04X", port);
    while (std::getline(table, line)) {
        std::istringstream fields(line);
        std::string slot, local, remote, state, queues;
        fields >> slot >> local >> remote >> state >> queues;
        if (state != "0A" || !local.ends_with(local_end)) continue;  // 0A: TCP_LISTEN
        const std::size_t colon = queues.find(':');
        return colon == std::string::npos ? -1 : static_cast<long>(std::strtoul(queues.c_str() + colon + 1, nullptr, 16));
    }
    return -1;
}

// n keep-alive clients, each answered once: the server has accepted them all,
// and they stay connected.
std::vector<std::unique_ptr<Client>> hold_connections(std::uint16_t port, int n) {
    std::vector<std::unique_ptr<Client>> held;
    for (int i = 0; i < n; ++i) {
        held.push_back(std::make_unique<Client>(port));
        if (held.back()->request(get_request("/")).status != 200) throw std::runtime_error("GET / failed");
    }
    return held;
}

}  // namespace

TEST_CASE("while N clients are connected, client N+1 waits in the backlog", "[lab]") {
    ServerProcess server({"--max-connections", "3"});
    std::vector<std::unique_ptr<Client>> held = hold_connections(server.port(), 3);
    Client waiting(server.port());  // connect() returns: the kernel completed the handshake
    waiting.send(get_request("/"));
    // No answer while the three stay. The 300 ms are the scenario, not
    // synchronisation: a server that had accepted it would answer in a
    // fraction of a millisecond.
    REQUIRE_FALSE(waiting.read_response(300ms));  // the skeleton answers at once
    CHECK(accept_queue_length(server.port()) == 1);  // the kernel holds it for us
    held.front()->close();  // a slot frees...
    std::optional<http::ClientResponse> r = waiting.read_response(scaled(5s));  // ...and it is its turn
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(accept_queue_length(server.port()) == 0);
    for (std::size_t i = 1; i < held.size(); ++i) CHECK(held[i]->request(get_request("/")).status == 200);
}

TEST_CASE("waiting to accept is no busy loop: the listener leaves the interest list while full", "[lab]") {
    ServerProcess server({"--max-connections", "2"});
    const long long wakeups_before = stats(server.port())["wakeups"];
    std::vector<std::unique_ptr<Client>> held = hold_connections(server.port(), 2);
    Client waiting(server.port());
    waiting.send(get_request("/", "Connection: close\r\n"));
    REQUIRE(eventually([&] { return accept_queue_length(server.port()) == 1; }, scaled(5s)));
    // /stats is out of reach while full (its connection would wait in the
    // backlog too): /proc tells what the server does meanwhile.
    const CpuShares shares = cpu_shares_over(server.pid(), 1s);
    const double cpu_share = shares.on_cpu, runnable_share = shares.runnable;
    INFO("over 1 s with a client in the backlog: CPU share " << cpu_share << ", runnable share " << runnable_share);
    CHECK(cpu_share < 0.05);       // a listener left ready but unaccepted: about 1
    CHECK(runnable_share < 0.05);  // asleep in epoll_wait, not waiting for a CPU
    CHECK(accept_queue_length(server.port()) == 1);  // still waiting: nobody was accepted
    held.front()->close();
    std::optional<http::ClientResponse> r = waiting.read_response(scaled(5s));
    REQUIRE(r);
    CHECK(r->status == 200);
    std::map<std::string, long long> after = stats(server.port());  // a slot is free again
    const long long wakeups = after["wakeups"] - wakeups_before;
    INFO(wakeups << " wake-ups for 4 clients, a second full, and the /stats requests");
    CHECK(wakeups < 20);  // a few per client; a busy loop, millions
    CHECK(after["listener_paused"] >= 1);
}

TEST_CASE("the limit holds within one batch of accepts", "[lab]") {
    ServerProcess server({"--max-connections", "3"});
    // The server sleeps in a handler while five clients queue up: when it is
    // back, all five are in the backlog at once, and one accept4() loop could
    // take them all. It must stop at the limit: the sleeper and two more.
    Client sleeper(server.port());
    sleeper.send(get_request("/sleep?ms=500"));
    REQUIRE(eventually([&] {
        return server_has_read_all(sleeper, server.port()) && sleeping_in_nanosleep(server.pid());
    }, scaled(5s)));
    std::vector<std::unique_ptr<Client>> burst;
    for (int i = 0; i < 5; ++i) {
        burst.push_back(std::make_unique<Client>(server.port()));
        burst.back()->send(get_request("/"));
    }
    std::optional<http::ClientResponse> slept = sleeper.read_response(scaled(5s));
    REQUIRE(slept);
    CHECK(slept->status == 200);
    // The backlog is first in, first out: the first two are accepted and answered.
    for (int i = 0; i < 2; ++i) {
        std::optional<http::ClientResponse> r = burst[i]->read_response(scaled(5s));
        REQUIRE(r);
        CHECK(r->status == 200);
    }
    CHECK(eventually([&] { return accept_queue_length(server.port()) == 3; }, scaled(5s)));
    CHECK_FALSE(burst[2]->read_response(300ms));  // the window is the scenario, as above
    CHECK(accept_queue_length(server.port()) == 3);
    // Three slots free in one go; the three waiting clients are taken together.
    sleeper.close();
    burst[0]->close();
    burst[1]->close();
    for (int i = 2; i < 5; ++i) {
        std::optional<http::ClientResponse> r = burst[i]->read_response(scaled(5s));
        REQUIRE(r);
        CHECK(r->status == 200);
    }
}

TEST_CASE("connections beyond the limit are served in turn", "[lab]") {
    ServerProcess server({"--max-connections", "4"});
    SECTION("20 clients connect at once, then each sends a request and leaves") {
        // All 20 handshakes complete before any request: four are accepted,
        // sixteen wait. Each answer closes a connection and lets one more in.
        std::vector<std::unique_ptr<Client>> clients;
        for (int i = 0; i < 20; ++i) clients.push_back(std::make_unique<Client>(server.port()));
        CHECK(eventually([&] { return accept_queue_length(server.port()) == 16; }, scaled(5s)));
        for (auto& c : clients) c->send(get_request("/", "Connection: close\r\n"));
        int answered = 0;
        for (auto& c : clients) {
            std::optional<http::ClientResponse> r = c->read_response(scaled(10s));
            answered += r && r->status == 200;
        }
        CHECK(answered == 20);
        const long long paused = stats(server.port())["listener_paused"];
        INFO("accepting paused " << paused << " times");
        CHECK(paused >= 1);
    }
    SECTION("20 clients, each on its own thread, GET / with Connection: close") {
        std::vector<int> status(20, 0);
        run_concurrently(20, [&](int i) { status[i] = get(server.port(), "/", scaled(10s)).status; });
        CHECK(status == std::vector<int>(20, 200));
    }
    CHECK(accept_queue_length(server.port()) == 0);
}

TEST_CASE("--max-connections 0 means no limit", "[lab]") {
    ServerProcess server({"--max-connections", "0"});
    std::vector<std::unique_ptr<Client>> held = hold_connections(server.port(), 50);
    CHECK(stats(server.port())["connections_open"] == 51);  // the 50 and /stats itself
    CHECK(stats(server.port())["listener_paused"] == 0);
}

TEST_CASE("SIGTERM while full, with a client in the backlog, exits 0 promptly", "[lab]") {
    ServerProcess server({"--max-connections", "2"});
    std::vector<std::unique_ptr<Client>> held = hold_connections(server.port(), 2);
    Client waiting(server.port());
    waiting.send(get_request("/"));
    REQUIRE(eventually([&] { return accept_queue_length(server.port()) == 1; }, scaled(5s)));
    // The listener is out of the interest list already: stopping must not
    // take it out a second time (EPOLL_CTL_DEL would fail with ENOENT).
    Clock::duration took{};
    const int status = server.stop(10s, &took);
    CHECK(describe_status(status) == "exited with 0");
    CHECK(to_ms(took) < to_ms(scaled(1500ms)));  // before the 2 s grace timer would end it anyway
}

TEST_CASE("--max-connections rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "1000001", "99999999999"}) {
        INFO(bad);
        std::string error;
        try {
            ServerProcess server({"--max-connections", bad});
        } catch (const std::exception& e) {
            error = e.what();
        }
        INFO(error);
        CHECK(error.find("exited with 2") != std::string::npos);  // a usage error
    }
}
