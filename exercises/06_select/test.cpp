// Lab 06's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=06` (the solution) or
// `build/exercises/06_select/test "[lab]"` (your skeleton).
#include <memory>
#include <thread>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("with --idle-timeout a silent client is closed, even though no socket is ready", "[lab]") {
    ServerProcess server({"--idle-timeout", "300"});
    const Clock::time_point start = Clock::now();
    Client silent(server.port());  // connects and never speaks
    REQUIRE(silent.wait_closed(5s));  // the skeleton's select() never wakes up for it
    CHECK(to_ms(Clock::now() - start) >= 250);  // not before its timeout
    CHECK(silent.unparsed_bytes() == 0);        // closed without a 408: it had sent nothing
}

TEST_CASE("a client that stops in the middle of a request gets 408", "[lab]") {
    ServerProcess server({"--idle-timeout", "300"});
    Client c(server.port());
    const Clock::time_point start = Clock::now();
    c.send("GET /sleep?ms=1 HTTP/1.1\r\nHost: te");  // ...and nothing more
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 408);
    CHECK_FALSE(r->keep_alive);
    CHECK(to_ms(Clock::now() - start) >= 250);
    CHECK(c.wait_closed(5s));
}

TEST_CASE("an idle keep-alive client is closed after the timeout", "[lab]") {
    ServerProcess server({"--idle-timeout", "300"});
    Client idle(server.port());
    CHECK(idle.request(get_request("/")).status == 200);
    CHECK(idle.wait_closed(5s));
    CHECK(idle.unparsed_bytes() == 0);  // closed without a 408: it had no request pending
    Client next(server.port());
    CHECK(next.request(get_request("/")).status == 200);  // the server goes on serving
}

TEST_CASE("a client that keeps talking is not cut off", "[lab]") {
    ServerProcess server({"--idle-timeout", "500"});
    Client c(server.port());
    // 15 requests 100 ms apart: 1.5 s in all, three times the timeout. The
    // timeout counts silence, not how long a connection has been open.
    for (int i = 0; i < 15; ++i) {
        CHECK(c.request(get_request("/")).status == 200);
        std::this_thread::sleep_for(100ms);  // the pause is the scenario, not synchronisation
    }
    CHECK(c.request(get_request("/")).status == 200);
}

namespace {

// Wake-ups of the server's select() during one second of nobody speaking.
long long wakeups_in_a_quiet_second(ServerProcess& server) {
    const long long before = stats(server.port())["wakeups"];
    std::this_thread::sleep_for(1s);  // the measurement window, not synchronisation
    return stats(server.port())["wakeups"] - before;
}

}  // namespace

TEST_CASE("the timeout is no busy loop: with nobody connected, select waits without one", "[lab]") {
    ServerProcess server({"--idle-timeout", "300"});
    const long long wakeups = wakeups_in_a_quiet_second(server);
    INFO(wakeups << " wake-ups in 1 s");
    CHECK(wakeups < 20);  // the /stats requests wake it a few times; a zero timeout, thousands
}

TEST_CASE("the timeout is no busy loop: select sleeps until the earliest deadline", "[lab]") {
    ServerProcess server({"--idle-timeout", "2000"});
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 5; ++i) idle.push_back(std::make_unique<Client>(server.port()));
    REQUIRE(eventually([&] { return stats(server.port())["connections_open"] == 6; }, 5s));
    const long long wakeups = wakeups_in_a_quiet_second(server);
    INFO(wakeups << " wake-ups in 1 s");
    CHECK(wakeups < 20);
    for (auto& c : idle) CHECK(c->wait_closed(10s));  // ...and at the deadline it does wake up
}

TEST_CASE("--idle-timeout rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "99999999999"}) {
        INFO(bad);
        CHECK_THROWS(ServerProcess({"--idle-timeout", bad}));
    }
}
