// Lab 01's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=01` (the solution) or
// `build/exercises/01_blocking/test "[lab]"` (your skeleton).
#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("with --idle-timeout a silent client no longer holds the server", "[lab]") {
    ServerProcess server({"--idle-timeout", "300"});
    Client silent(server.port());  // connects and never speaks
    Client second(server.port());
    const Clock::time_point start = Clock::now();
    second.send(get_request("/"));
    std::optional<http::ClientResponse> r = second.read_response(5s);
    REQUIRE(r);  // the skeleton waits forever here
    CHECK(r->status == 200);
    CHECK(to_ms(Clock::now() - start) >= 250);  // it still had to wait for the timeout
    CHECK(silent.wait_closed(5s));              // the silent client was disconnected
}

TEST_CASE("a client that stops in the middle of a request gets 408", "[lab]") {
    ServerProcess server({"--idle-timeout", "200"});
    Client c(server.port());
    c.send("GET /sleep?ms=1 HTTP/1.1\r\nHost: te");  // ...and nothing more
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 408);
    CHECK_FALSE(r->keep_alive);
    CHECK(c.wait_closed(5s));
}

TEST_CASE("an idle keep-alive client is closed after the timeout", "[lab]") {
    ServerProcess server({"--idle-timeout", "200"});
    Client c(server.port());
    CHECK(c.request(get_request("/")).status == 200);
    CHECK(c.wait_closed(5s));
    CHECK(c.unparsed_bytes() == 0);  // closed without a 408: it had no request pending
}

TEST_CASE("a client that keeps talking is not cut off", "[lab]") {
    ServerProcess server({"--idle-timeout", "2000"});
    Client c(server.port());
    // Requests of 300 ms each: the timeout counts silence, not the time a
    // connection has been open, so 5 x 300 ms > 2000 ms total is fine.
    for (int i = 0; i < 5; ++i) CHECK(c.request(get_request("/sleep?ms=300")).status == 200);
}

TEST_CASE("without --idle-timeout the server still waits for a silent client", "[lab]") {
    ServerProcess server;
    Client silent(server.port());
    Client second(server.port());
    second.send(get_request("/"));
    CHECK_FALSE(second.read_response(300ms).has_value());
}

TEST_CASE("--idle-timeout rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "99999999999"}) {
        INFO(bad);
        CHECK_THROWS(ServerProcess({"--idle-timeout", bad}));
    }
}
