// Lab 07's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=07` (the solution) or
// `build/exercises/07_poll/test "[lab]"` (your skeleton).
#include <string>
#include <thread>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("slowloris: a request trickling in byte by byte gets 408 at its deadline", "[lab]") {
    ServerProcess server({"--request-timeout", "500"});
    Client c(server.port());
    // 400 bytes, one every 50 ms, would take 20 s. Each byte restarts lab
    // 01's SO_RCVTIMEO; a deadline for the whole request does not restart.
    const std::string request = get_request("/", "X-Padding: " + std::string(350, 'x') + "\r\n");
    const Clock::time_point first_byte = Clock::now();
    std::optional<http::ClientResponse> r;
    for (std::size_t i = 0; i < request.size() && !r; ++i) {
        try {
            c.send(request.substr(i, 1));
        } catch (const std::exception&) {
            break;  // the server closed after its 408: read it below
        }
        r = c.read_response(50ms);  // the pause between bytes is the scenario
        if (to_ms(Clock::now() - first_byte) > to_ms(scaled(5s))) break;
    }
    if (!r) r = c.read_response(2s);
    const double took = to_ms(Clock::now() - first_byte);
    REQUIRE(r);  // the skeleton lets it trickle on forever
    CHECK(r->status == 408);
    CHECK_FALSE(r->keep_alive);
    CHECK(took >= 450);                       // not before its deadline
    CHECK(took < to_ms(scaled(2s)));          // but soon after it
    CHECK(c.wait_closed(5s));
}

TEST_CASE("a stalled request is cut at its deadline, and waiting for it is no busy loop", "[lab]") {
    ServerProcess server({"--request-timeout", "1000"});
    Client c(server.port());
    const long long wakeups_before = stats(server.port())["wakeups"];
    const Clock::time_point first_byte = Clock::now();
    c.send("GET / HTTP/1.1\r\nHo");  // ...and nothing more
    std::optional<http::ClientResponse> r = c.read_response(5s);
    const double took = to_ms(Clock::now() - first_byte);
    REQUIRE(r);
    CHECK(r->status == 408);
    CHECK(took >= 950);
    const long long wakeups = stats(server.port())["wakeups"] - wakeups_before;
    INFO(wakeups << " wake-ups while the request waited for its deadline");
    CHECK(wakeups < 20);  // a timeout rounded down to 0 ms would spin here
}

TEST_CASE("complete requests sent slowly one after another are never cut", "[lab]") {
    ServerProcess server({"--request-timeout", "500"});
    Client c(server.port());
    // Each request arrives in two halves 100 ms apart, then the client pauses
    // 300 ms: 2 s in all, but no single request takes more than 100 ms. A
    // deadline that is not cleared after a whole request would cut it.
    const std::string request = get_request("/");
    for (int i = 0; i < 5; ++i) {
        c.send(request.substr(0, 10));
        std::this_thread::sleep_for(100ms);  // the pauses are the scenario, not synchronisation
        c.send(request.substr(10));
        std::optional<http::ClientResponse> r = c.read_response(5s);
        REQUIRE(r);
        CHECK(r->status == 200);
        std::this_thread::sleep_for(300ms);
    }
}

TEST_CASE("an idle keep-alive client has no request, hence no deadline", "[lab]") {
    ServerProcess server({"--request-timeout", "300"});
    Client c(server.port());
    CHECK(c.request(get_request("/")).status == 200);
    // Three times the timeout with nothing begun: it is idle, not slow.
    CHECK_FALSE(c.wait_closed(900ms));
    CHECK(c.request(get_request("/")).status == 200);
}

TEST_CASE("--request-timeout rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "99999999999"}) {
        INFO(bad);
        CHECK_THROWS(ServerProcess({"--request-timeout", bad}));
    }
}
