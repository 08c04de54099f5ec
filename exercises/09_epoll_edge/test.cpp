// Lab 09's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=09` (the solution) or
// `build/exercises/09_epoll_edge/test "[lab]"` (your skeleton).
#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

TEST_CASE("slowloris: a request trickling in byte by byte gets 408 at its deadline, though each byte resets the "
          "idle timer",
          "[lab]") {
    ServerProcess server({"--request-timeout", "500", "--idle-timeout", "60000"});
    Client c(server.port());
    // 400 bytes, one every 50 ms, would take 20 s. Each byte is activity and
    // restarts the idle timer; only a deadline that bytes do not move stops it.
    const std::string request = get_request("/", "X-Padding: " + std::string(360, 'x') + "\r\n");
    REQUIRE(request.size() >= 400);
    const Clock::time_point first_byte = Clock::now();
    std::optional<http::ClientResponse> r;
    for (std::size_t i = 0; i < request.size() && !r; ++i) {
        try {
            c.send(request.substr(i, 1));
        } catch (const std::exception&) {
            break;  // the server closed after its 408: read it below
        }
        r = c.read_response(50ms);  // the pause between bytes is the scenario
        if (Clock::now() - first_byte > scaled(3s)) break;  // long past the deadline: give up
    }
    if (!r) r = c.read_response(1s);
    const double took = to_ms(Clock::now() - first_byte);
    REQUIRE(r);  // the skeleton lets it trickle on
    CHECK(r->status == 408);
    CHECK_FALSE(r->keep_alive);
    CHECK(took >= 450);               // not before its deadline
    CHECK(took < to_ms(scaled(2s)));  // but soon after it
    CHECK(c.wait_closed(5s));
    std::map<std::string, long long> s = stats(server.port());
    CHECK(s["request_timeouts"] == 1);
    CHECK(s["idle_closed"] == 0);
}

TEST_CASE("a stalled request is cut at its request deadline, and waiting for it is no busy loop", "[lab]") {
    std::string idle_timeout;
    SECTION("the idle timeout is longer") { idle_timeout = "5000"; }
    SECTION("there is no idle timeout") { idle_timeout = "0"; }
    ServerProcess server({"--request-timeout", "400", "--idle-timeout", idle_timeout});
    Client c(server.port());
    const long long wakeups_before = stats(server.port())["timer_wakeups"];
    const Clock::time_point first_byte = Clock::now();
    c.send("GET / HTTP/1.1\r\nHo");  // ...and nothing more
    std::optional<http::ClientResponse> r = c.read_response(3s);
    const double took = to_ms(Clock::now() - first_byte);
    REQUIRE(r);  // the skeleton: only the idle timer, after 5 s or never
    CHECK(r->status == 408);
    CHECK(took >= 380);
    CHECK(took < to_ms(scaled(2s)));
    CHECK(c.wait_closed(5s));
    std::map<std::string, long long> s = stats(server.port());
    const long long wakeups = s["wakeups"] - wakeups_before;
    INFO(wakeups << " wake-ups while the request waited for its deadline");
    CHECK(wakeups < 20);  // a timeout rounded down to 0 ms would spin here
    CHECK(s["request_timeouts"] == 1);
    CHECK(s["idle_closed"] == 0);
}

TEST_CASE("complete requests sent slowly one after another are never cut", "[lab]") {
    ServerProcess server({"--request-timeout", "500"});
    Client c(server.port());
    // Each request arrives in two halves 100 ms apart, then the client pauses
    // 300 ms: 2 s in all, but no single request takes more than 100 ms. A
    // clock that is not stopped by a whole request would cut it.
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
    CHECK(stats(server.port())["request_timeouts"] == 0);
}

TEST_CASE("a request that begins in the same read as the previous one ends has a deadline of its own", "[lab]") {
    ServerProcess server({"--request-timeout", "1000"});
    Client c(server.port());
    const std::string request = get_request("/");
    c.send(request.substr(0, 10));
    std::this_thread::sleep_for(500ms);  // the first request takes half its time: the scenario
    // One write (one read for the server) ends the first request and begins
    // the second, which never ends.
    const Clock::time_point second_began = Clock::now();
    c.send(request.substr(10) + request.substr(0, 10));
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 200);
    // The second request's deadline is 1000 ms after its own first byte. A
    // clock left running from the first request would cut it 500 ms early; a
    // clock that never started (the first request's answer went out between
    // the read and the end of the turn) would never cut it.
    r = c.read_response(3s);
    const double took = to_ms(Clock::now() - second_began);
    REQUIRE(r);
    CHECK(r->status == 408);
    CHECK(took >= 950);
    CHECK(took < to_ms(scaled(2500ms)));
    CHECK(stats(server.port())["request_timeouts"] == 1);
}

TEST_CASE("an idle keep-alive connection has no request in progress, hence no deadline", "[lab]") {
    ServerProcess server({"--request-timeout", "300", "--idle-timeout", "60000"});
    Client c(server.port());
    CHECK(c.request(get_request("/")).status == 200);
    // Three times the timeout with nothing begun: it is idle, not slow.
    CHECK_FALSE(c.wait_closed(900ms));
    CHECK(c.request(get_request("/")).status == 200);
    CHECK(stats(server.port())["request_timeouts"] == 0);
}

TEST_CASE("the idle timer keeps its deadlines beside the request timer", "[lab]") {
    // epoll_wait sleeps until the earlier of two deadlines; -1 from an empty
    // list means "none", not "the earliest".
    ServerProcess server({"--idle-timeout", "300", "--request-timeout", "2000"});
    const Clock::time_point start = Clock::now();
    SECTION("a silent connection: no request is in progress anywhere") {
        Client silent(server.port());
        REQUIRE(silent.wait_closed(3s));
    }
    SECTION("a stalled request whose idle deadline comes first") {
        Client stalled(server.port());
        stalled.send("GET / HTTP/1.1\r\nHo");
        std::optional<http::ClientResponse> r = stalled.read_response(3s);
        REQUIRE(r);
        CHECK(r->status == 408);  // the idle timer's own 408
    }
    const double closed_after = to_ms(Clock::now() - start);
    CHECK(closed_after >= 290);
    CHECK(closed_after < to_ms(scaled(1500ms)));  // by the idle timer, not at the request deadline
    std::map<std::string, long long> s = stats(server.port());
    CHECK(s["idle_closed"] == 1);
    CHECK(s["request_timeouts"] == 0);
}

TEST_CASE("a client that leaves in the middle of a request takes it out of the request list", "[lab]") {
    ServerProcess server({"--request-timeout", "300"});
    {
        Client c(server.port());
        c.send("GET / HTTP/1.1\r\nHo");
        REQUIRE(eventually([&] { return server_has_read_all(c, server.port()); }, scaled(5s)));
    }  // closed long before its deadline: the server reads EOF and forgets the connection
    // Past the deadline the request would have had (the pause is the scenario):
    // a list still holding it would now use a Connection that is gone.
    std::this_thread::sleep_for(600ms);
    CHECK(get(server.port(), "/").status == 200);
    CHECK(stats(server.port())["request_timeouts"] == 0);
}

TEST_CASE("1,000 stalled requests are all cut at their deadlines, a batch per wake-up", "[lab]") {
    constexpr int kClients = 1000;
    raise_fd_limit(kClients + 200);
    ServerProcess server({"--request-timeout", "1000"});
    server.set_fd_limit(kClients + 200);
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < kClients; ++i) clients.push_back(std::make_unique<Client>(server.port()));
    REQUIRE(eventually([&] { return stats(server.port())["connections_open"] == kClients + 1; }, scaled(10s)));
    // All are connected; now the part requests go out together, so their
    // deadlines fall within a few milliseconds of each other.
    std::vector<Clock::time_point> sent(kClients);
    for (int i = 0; i < kClients; ++i) {
        sent[i] = Clock::now();
        clients[i]->send("GET / HTTP/1.1\r\nHo");
    }
    const double send_ms = to_ms(Clock::now() - sent.front());
    const long long wakeups_before = stats(server.port())["timer_wakeups"];
    int cut = 0;
    double earliest_ms = 1e9;
    for (int i = 0; i < kClients; ++i) {
        std::optional<http::ClientResponse> r = clients[i]->read_response(5s);
        if (!r) break;  // not cut: the others will not be either
        cut += r->status == 408;
        earliest_ms = std::min(earliest_ms, to_ms(Clock::now() - sent[i]));
    }
    const double all_cut_ms = to_ms(Clock::now() - sent.back());
    std::map<std::string, long long> s = stats(server.port());
    // Timer wake-ups only (epoll_wait returned with no event): how the part
    // requests' arrivals batch into wake-ups depends on how busy the machine is.
    const long long wakeups = s["timer_wakeups"] - wakeups_before;
    INFO("sent in " << send_ms << " ms; " << wakeups << " timer wake-ups to cut them; the last answer "
                    << all_cut_ms << " ms after the last request began");
    CHECK(cut == kClients);
    CHECK(s["request_timeouts"] == kClients);
    CHECK(earliest_ms >= 950);                             // none before its deadline
    CHECK(all_cut_ms < 1000 + to_ms(scaled(5s)));           // all of them soon after
    // At most one wake-up per millisecond in which deadlines fall, and each
    // takes every request that is due; one wake-up per request would be 1,000.
    CHECK(wakeups < 100 + send_ms);
}

TEST_CASE("requests pipelined behind a paused answer are whole: they are never cut", "[lab]") {
    ServerProcess server({"--request-timeout", "300"});
    Client c(server.port());
    c.set_receive_buffer(64 * 1024);
    // 600 requests for 64 KiB each in one write: 39 MB of answers, far more
    // than the kernel's send buffer takes (net.ipv4.tcp_wmem: 4 MiB at most,
    // by default). The first read holds hundreds of whole requests; answering
    // pauses at the output high-water mark once the send buffer is full, and
    // the rest wait in the parser and in the socket until the client reads.
    // They are complete: the delay is the server's output, not the request.
    constexpr int kRequests = 600;
    constexpr std::size_t kSize = 64 * 1024;
    std::string requests;
    for (int i = 0; i < kRequests; ++i) requests += get_request("/bytes?n=" + std::to_string(kSize));
    c.send(requests);
    const long long wakeups_before = stats(server.port())["timer_wakeups"];
    // The client reads nothing for more than three times the request timeout:
    // the scenario, not synchronisation.
    std::this_thread::sleep_for(1s);
    const long long wakeups = stats(server.port())["wakeups"] - wakeups_before;
    INFO(wakeups << " wake-ups while the answers waited for the client to read");
    CHECK(wakeups < 20);  // a deadline that is past but does not apply must not spin
    int intact = 0;
    for (int i = 0; i < kRequests; ++i) {
        std::optional<http::ClientResponse> r = c.read_response(10s);
        REQUIRE(r);
        intact += r->status == 200 && r->body.size() == kSize && body_matches_pattern(r->body);
    }
    CHECK(intact == kRequests);
    CHECK(stats(server.port())["request_timeouts"] == 0);
}

TEST_CASE("--request-timeout 0 means no deadline, as in chapter 09", "[lab]") {
    ServerProcess server({"--request-timeout", "0"});
    Client c(server.port());
    const std::string request = get_request("/");
    c.send(request.substr(0, 10));
    CHECK_FALSE(c.wait_closed(500ms));  // the window is the scenario
    c.send(request.substr(10));
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(stats(server.port())["request_timeouts"] == 0);
}

TEST_CASE("--request-timeout rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "3600001", "99999999999"}) {
        INFO(bad);
        std::string error;
        try {
            ServerProcess server({"--request-timeout", bad});
        } catch (const std::exception& e) {
            error = e.what();
        }
        INFO(error);
        CHECK(error.find("exited with 2") != std::string::npos);  // a usage error
    }
}
