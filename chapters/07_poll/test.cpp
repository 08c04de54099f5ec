// Chapter 07's own tests: one thread and poll(2). The shared behaviour
// suite is linked in too.
#include <memory>
#include <thread>

#include "harness.hpp"
#include "http.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("one thread serves 50 concurrent clients", "[chapter07]") {
    ServerProcess server;
    std::vector<int> status(50);
    run_concurrently(50, [&](int i) { status[static_cast<std::size_t>(i)] = get(server.port(), "/").status; });
    CHECK(status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1);
}

TEST_CASE("50 idle clients cost no CPU and no wake-ups", "[chapter07][lesson]") {
    ServerProcess server;
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 50; ++i) idle.push_back(std::make_unique<Client>(server.port()));
    REQUIRE(eventually([&] { return stats(server.port())["connections_open"] == 51; }, 5s));
    const long long wakeups_before = stats(server.port())["wakeups"];
    const double cpu_before = cpu_seconds(server.pid());
    const Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(1s);  // the measurement window, not synchronisation
    const double wall = to_ms(Clock::now() - start) / 1000.0;
    const double cpu = cpu_seconds(server.pid()) - cpu_before;
    const long long wakeups = stats(server.port())["wakeups"] - wakeups_before;
    INFO("CPU " << cpu << " s in " << wall << " s; " << wakeups << " wake-ups");
    CHECK(cpu < 0.05 * wall);
    CHECK(wakeups < 20);  // the two /stats requests wake it a few times; idle clients never do
}

TEST_CASE("a client that does not read its large response delays nobody", "[chapter07][lesson]") {
    ServerProcess server;
    Client hog(server.port());
    hog.send(get_request("/bytes?n=16777216"));  // 16 MiB, far more than the socket buffers hold
    // The server now has a partial write pending for hog and must not wait for it.
    const Clock::time_point start = Clock::now();
    CHECK(get(server.port(), "/").status == 200);
    CHECK(to_ms(Clock::now() - start) < to_ms(scaled(1s)));
    std::optional<http::ClientResponse> r = hog.read_response(30s);  // hog reads at last: every byte arrives
    REQUIRE(r);
    REQUIRE(r->body.size() == 16777216);
    bool intact = true;
    for (std::size_t i = 0; i < r->body.size(); i += 4099) intact = intact && r->body[i] == http::pattern_byte(i);
    CHECK(intact);
}

TEST_CASE("50 clients sending byte by byte, interleaved, are all answered", "[chapter07][lesson]") {
    ServerProcess server;
    std::vector<std::unique_ptr<Client>> clients;
    std::vector<std::string> requests;
    for (int i = 0; i < 50; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        const std::string body = "client " + std::to_string(i);
        requests.push_back("POST /echo HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
    }
    for (std::size_t pos = 0; pos < requests[0].size() + 2; ++pos)
        for (std::size_t i = 0; i < clients.size(); ++i)
            if (pos < requests[i].size()) clients[i]->send(requests[i].substr(pos, 1));
    for (std::size_t i = 0; i < clients.size(); ++i) {
        std::optional<http::ClientResponse> r = clients[i]->read_response(10s);
        REQUIRE(r);
        CHECK(r->body == "client " + std::to_string(i));
    }
}

TEST_CASE("a slow handler stalls everyone: handlers run in the loop", "[chapter07][lesson]") {
    ServerProcess server;
    Client slow(server.port());
    const Clock::time_point slow_sent = Clock::now();
    slow.send(get_request("/sleep?ms=300"));
    REQUIRE(eventually([&] { return sleeping_in_nanosleep(server.pid()); }, 5s));
    Client quick(server.port());
    quick.send(get_request("/"));
    REQUIRE(quick.read_response(5s).has_value());
    CHECK(to_ms(Clock::now() - slow_sent) >= 300);
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
