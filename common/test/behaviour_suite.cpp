// The shared behaviour suite: the server contract, checked against whichever
// server sits beside the test binary. Every chapter, exercise and solution
// links it, so every model must pass it.
//
// The suite talks to one connection at a time (a client is closed before the
// next one opens), so that it holds for the iterative server of chapter 01 too;
// where clients come while another is served, the one being served asks to be
// closed after its answer.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "accept_shim.hpp"
#include "harness.hpp"
#include "http.hpp"
#include "server.hpp"
#include "testing.hpp"

using namespace harness;

namespace {


std::string post_echo(const std::string& body, std::string_view extra_headers = "") {
    return "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
           std::string(extra_headers) + "\r\n" + body;
}

// The server answers a fresh client: it survived whatever came before.
void check_still_serving(ServerProcess& server) {
    INFO("server log:\n" << server.log());
    REQUIRE(server.running());
    http::ClientResponse r = get(server.port(), "/");
    CHECK(r.status == 200);
}

// The lowest descriptor number the process does not use: the one its next
// open(), socket() or accept() would get.
int lowest_free_fd(pid_t pid) {
    std::set<int> used;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
        used.insert(std::stoi(entry.path().filename().string()));
    int n = 0;
    while (used.count(n)) ++n;
    return n;
}

// Runs `meanwhile` while the server sleeps in a /sleep handler for another
// client, then waits for that client's answer. In the event-loop chapters the
// loop's only thread is in the handler, so whatever the clients of
// `meanwhile` send (bytes, a FIN, a reset) waits in their sockets and is all
// there at once when the loop looks: the case where an edge-triggered loop
// gets a single report for it all. The sleeper asks to be closed after its
// answer, so that the iterative server moves on to the others.
// The handler must be seen asleep before `meanwhile` runs. On a loaded
// machine (a sanitizer build beside other work) a poll of /proc can miss a
// short sleep altogether, so a miss lets that answer arrive and tries again
// with a longer sleep: quick when the machine is, and never a wrong result.
// From chapter 10 on, /sleep is a timer and no handler ever stops the loop
// (its /stats counts "sleeps_pending"): there the loop is stopped from
// outside instead, with SIGSTOP, which has the same effect on the sockets.
bool sleep_is_a_timer(std::uint16_t port) {
    return stats(port).count("sleeps_pending") > 0;
}

void while_a_handler_sleeps(ServerProcess& server, const std::function<void()>& meanwhile) {
    if (sleep_is_a_timer(server.port())) {
        server.send_signal(SIGSTOP);
        try {
            meanwhile();
        } catch (...) {
            server.send_signal(SIGCONT);
            throw;
        }
        server.send_signal(SIGCONT);
        return;
    }
    for (const int ms : {500, 2000, 8000}) {
        Client sleeper(server.port());
        sleeper.send(get_request("/sleep?ms=" + std::to_string(ms), "Connection: close\r\n"));
        const bool asleep = eventually(
            [&] { return server_has_read_all(sleeper, server.port()) && sleeping_in_nanosleep(server.pid()); },
            std::chrono::milliseconds(ms) + 1s);
        if (asleep) meanwhile();
        std::optional<http::ClientResponse> slept = sleeper.read_response(scaled(10s) + std::chrono::milliseconds(ms));
        REQUIRE(slept);
        CHECK(slept->status == 200);
        if (asleep) return;
        WARN("the /sleep?ms=" << ms << " handler was not seen asleep; trying a longer one");
    }
    FAIL("no /sleep handler was seen asleep, even one of 8 s");
}

// What a client received until the server closed the connection, and
// whether it ended with a reset (ECONNRESET) rather than an end of stream.
struct Received {
    std::string bytes;
    bool reset = false;
};

// Reads until the server closes. after_each(bytes so far) runs after every
// read; it may send. Fails the test if the connection is still open after
// the timeout (scaled).
Received read_until_closed(Client& c, Clock::duration timeout, const std::function<void(std::size_t)>& after_each) {
    Received r;
    const Clock::time_point deadline = Clock::now() + scaled(timeout);
    char buffer[64 * 1024];
    for (;;) {
        if (Clock::now() >= deadline) FAIL("still open after " << to_ms(scaled(timeout)) << " ms, " << r.bytes.size() << " bytes received");
        pollfd readable{c.fd(), POLLIN, 0};
        if (::poll(&readable, 1, 100) < 0 && errno != EINTR) FAIL("poll: " << std::strerror(errno));
        const ssize_t n = ::recv(c.fd(), buffer, sizeof buffer, MSG_DONTWAIT);
        if (n > 0) {
            r.bytes.append(buffer, static_cast<std::size_t>(n));
            after_each(r.bytes.size());
        } else if (n == 0) {
            return r;
        } else if (errno == ECONNRESET) {
            r.reset = true;
            return r;
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            FAIL("recv: " << std::strerror(errno));
        }
    }
}

}  // namespace

TEST_CASE("GET / answers 200 text/plain with Content-Length", "[behaviour]") {
    ServerProcess server;
    http::ClientResponse r = get(server.port(), "/");
    CHECK(r.status == 200);
    REQUIRE(r.header("Content-Type") != nullptr);
    CHECK(r.header("Content-Type")->rfind("text/plain", 0) == 0);
    REQUIRE(r.header("Content-Length") != nullptr);
    CHECK(*r.header("Content-Length") == std::to_string(r.body.size()));
    CHECK_FALSE(r.body.empty());
}

TEST_CASE("the routes of the contract", "[behaviour]") {
    ServerProcess server;
    const auto port = server.port();

    SECTION("/sleep waits, then answers") {
        const Clock::time_point start = Clock::now();
        CHECK(get(port, "/sleep?ms=50").status == 200);
        CHECK(Clock::now() - start >= 50ms);
    }
    SECTION("/work burns CPU time in the server") {
        const double before = cpu_seconds(server.pid());
        CHECK(get(port, "/work?ms=100").status == 200);
        // Clock ticks are 10 ms; a forked child's time counts once it is reaped.
        CHECK(eventually([&] { return cpu_seconds(server.pid()) - before >= 0.08; }, 5s));
    }
    SECTION("/bytes sends n bytes of the pattern") {
        http::ClientResponse r = get(port, "/bytes?n=1000003");
        CHECK(r.status == 200);
        CHECK(r.body.size() == 1000003);
        CHECK(body_matches_pattern(r.body));
        CHECK(get(port, "/bytes?n=0").body.empty());
    }
    SECTION("POST /echo returns the body") {
        Client c(port);
        std::string body(100000, 'x');
        body[0] = 'A';
        body.back() = 'Z';
        http::ClientResponse r = c.request(post_echo(body));
        CHECK(r.status == 200);
        CHECK(r.body == body);
    }
    SECTION("/stats is JSON with the common counters") {
        http::ClientResponse r = get(port, "/stats");
        CHECK(r.status == 200);
        REQUIRE(r.header("Content-Type") != nullptr);
        CHECK(*r.header("Content-Type") == "application/json");
        auto s = stats(port);
        for (const char* key : {"connections_open", "connections_total", "requests", "threads"}) {
            INFO(key);
            CHECK(s.count(key) == 1);
        }
        CHECK(s["threads"] >= 1);
        CHECK(s["requests"] >= 1);  // this request, at least (chapter 02 shows why not more)
        CHECK_FALSE(stats_model(port).empty());
    }
    SECTION("unknown path 404, wrong method 405 with Allow") {
        CHECK(get(port, "/nope").status == 404);
        Client c(port);
        http::ClientResponse r = c.request("DELETE / HTTP/1.1\r\nHost: test\r\n\r\n");
        CHECK(r.status == 405);
        REQUIRE(r.header("Allow") != nullptr);
        CHECK(*r.header("Allow") == "GET, HEAD");
        r = c.request(get_request("/echo"));
        CHECK(r.status == 405);
        REQUIRE(r.header("Allow") != nullptr);
        CHECK(*r.header("Allow") == "POST");
    }
    SECTION("out-of-range parameters are 400") {
        CHECK(get(port, "/sleep?ms=abc").status == 400);
        CHECK(get(port, "/sleep?ms=10001").status == 400);
        CHECK(get(port, "/work").status == 400);
        CHECK(get(port, "/bytes?n=-1").status == 400);
        CHECK(get(port, "/bytes?n=67108865").status == 400);
    }
}

TEST_CASE("HEAD is served without a body and absolute-form targets are served; an unknown method is 501", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    // HEAD gets GET's head, Content-Length included, and no body: the next
    // response follows the blank line at once.
    c.send("HEAD /bytes?n=1000000 HTTP/1.1\r\nHost: test\r\n\r\n"
           "GET http://test/sleep?ms=0 HTTP/1.1\r\nHost: test\r\n\r\n"
           "BREW / HTTP/1.1\r\nHost: test\r\n\r\n"
           "HEAD / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    const Received r = read_until_closed(c, 10s, [](std::size_t) {});
    INFO("received:\n" << r.bytes.substr(0, 2000));
    CHECK_FALSE(r.reset);
    std::vector<std::string> heads;  // each response, which has no body unless it says so
    std::size_t at = 0;
    while (at < r.bytes.size()) {
        const std::size_t end = r.bytes.find("\r\n\r\n", at);
        REQUIRE(end != std::string::npos);
        std::string head = r.bytes.substr(at, end + 4 - at);
        at = end + 4;
        const bool is_head_response = heads.size() == 0 || heads.size() == 3;
        if (!is_head_response) {
            const std::size_t cl = head.find("Content-Length: ");
            REQUIRE(cl != std::string::npos);
            at += std::stoul(head.substr(cl + 16));
        }
        heads.push_back(std::move(head));
    }
    REQUIRE(heads.size() == 4);
    CHECK(heads[0].starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(heads[0].find("\r\nContent-Length: 1000000\r\n") != std::string::npos);
    CHECK(heads[1].starts_with("HTTP/1.1 200 OK\r\n"));  // GET http://test/sleep: an absolute-form target
    CHECK(heads[2].starts_with("HTTP/1.1 501 Not Implemented\r\n"));
    CHECK(heads[3].starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(at == r.bytes.size());
    check_still_serving(server);
}

TEST_CASE("Expect: 100-continue: the server says 100 Continue before the client sends the body", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    c.send("POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    // curl waits a second for it, then sends the body anyway: wait longer
    // than that, so that a server that ignores the expectation fails here.
    std::string interim;
    const Clock::time_point deadline = Clock::now() + scaled(5s);
    while (interim.find("\r\n\r\n") == std::string::npos && Clock::now() < deadline) {
        pollfd readable{c.fd(), POLLIN, 0};
        if (::poll(&readable, 1, 50) <= 0) continue;
        char byte;
        const ssize_t n = ::recv(c.fd(), &byte, 1, 0);  // one byte at a time: leave the final response unread
        if (n <= 0) break;
        interim += byte;
    }
    CHECK(interim == "HTTP/1.1 100 Continue\r\n\r\n");
    c.send("hello");
    std::optional<http::ClientResponse> r = c.read_response(10s);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body == "hello");
    c.close();
    check_still_serving(server);
}

TEST_CASE("keep-alive: HTTP/1.1 stays open until Connection: close", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    for (int i = 0; i < 3; ++i) {
        http::ClientResponse r = c.request(get_request("/"));
        CHECK(r.status == 200);
        CHECK(r.keep_alive);
    }
    http::ClientResponse last = c.request(get_request("/", "Connection: close\r\n"));
    CHECK(last.status == 200);
    CHECK_FALSE(last.keep_alive);
    CHECK(c.wait_closed(5s));
}

TEST_CASE("HTTP/1.0 closes unless it asks for keep-alive", "[behaviour]") {
    ServerProcess server;
    {
        Client c(server.port());
        http::ClientResponse r = c.request("GET / HTTP/1.0\r\n\r\n");
        CHECK(r.status == 200);
        CHECK_FALSE(r.keep_alive);
        CHECK(c.wait_closed(5s));
    }
    Client c(server.port());
    CHECK(c.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    CHECK(c.request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").status == 200);
}

TEST_CASE("100 pipelined requests in one write are answered in order", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    std::string burst;
    for (int i = 0; i < 100; ++i) burst += get_request("/bytes?n=" + std::to_string(i));
    c.send(burst);
    for (int i = 0; i < 100; ++i) {
        std::optional<http::ClientResponse> r = c.read_response(10s);
        REQUIRE(r);
        CHECK(r->status == 200);
        CHECK(r->body.size() == static_cast<std::size_t>(i));
    }
}

TEST_CASE("a request sent one byte at a time", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    const std::string request = post_echo("hello, byte by byte");
    for (char byte : request) c.send(std::string_view(&byte, 1));  // TCP_NODELAY: one segment each
    std::optional<http::ClientResponse> r = c.read_response(10s);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->body == "hello, byte by byte");
}

TEST_CASE("bare LF line endings are accepted", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    CHECK(c.request("GET / HTTP/1.1\nHost: test\n\n").status == 200);
}

TEST_CASE("hostile input gets an error and a close, and harms nobody", "[behaviour]") {
    ServerProcess server;
    std::string input;
    int expected = 0;
    SECTION("garbage") {
        input = "\x01\x02\x03 this is not HTTP\r\n\r\n";
        expected = 400;
    }
    SECTION("a header block over 8 KiB") {
        input = "GET / HTTP/1.1\r\nHost: test\r\nX-Big: " + std::string(9000, 'a') + "\r\n\r\n";
        expected = 431;
    }
    SECTION("an endless request line") {
        input = "GET /" + std::string(9000, 'a');
        expected = 414;  // the target is what is too long
    }
    SECTION("an invalid Content-Length") {
        input = "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 12abc\r\n\r\n";
        expected = 400;
    }
    SECTION("conflicting Content-Lengths") {
        input = "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
        expected = 400;
    }
    SECTION("Transfer-Encoding") {
        input = "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        expected = 501;
    }
    SECTION("a body over 1 MiB") {
        input = "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 2000000\r\n\r\n" + std::string(1000, 'b');
        expected = 413;
    }
    SECTION("HTTP/2.0 on the request line") {
        input = "GET / HTTP/2.0\r\n\r\n";
        expected = 505;
    }
    SECTION("an HTTP/1.1 request without Host") {
        input = "GET / HTTP/1.1\r\n\r\n";
        expected = 400;  // RFC 9112 section 3.2, as for the next two
    }
    SECTION("two Host headers") {
        input = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
        expected = 400;
    }
    SECTION("an invalid Host") {
        input = "GET / HTTP/1.1\r\nHost: a b\r\n\r\n";
        expected = 400;
    }
    SECTION("an expectation other than 100-continue") {
        input = "POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 200-ok\r\nContent-Length: 5\r\n\r\n";
        expected = 417;
    }
    {
        Client c(server.port());
        c.send(input);
        std::optional<http::ClientResponse> r = c.read_response(10s);
        REQUIRE(r);
        CHECK(r->status == expected);
        CHECK_FALSE(r->keep_alive);
        CHECK(c.wait_closed(5s));
    }
    check_still_serving(server);
}

TEST_CASE("random garbage on many connections does not crash the server", "[behaviour]") {
    ServerProcess server;
    std::uint32_t seed = 12345;
    auto next_random = [&seed] { return seed = seed * 1664525u + 1013904223u; };  // a fixed LCG: reproducible
    for (int i = 0; i < 20; ++i) {
        Client c(server.port());
        std::string junk(64 + next_random() % 4000, '\0');
        for (char& ch : junk) ch = static_cast<char>(next_random() >> 24);
        c.send(junk);
        c.close();
    }
    check_still_serving(server);
}

TEST_CASE("a client that resets or leaves before its response harms nobody", "[behaviour]") {
    ServerProcess server;
    SECTION("reset during /sleep") {
        Client c(server.port());
        c.send(get_request("/sleep?ms=100"));
        c.reset();  // RST: the server's send will fail with ECONNRESET or EPIPE
    }
    SECTION("closes without reading a large response") {
        Client c(server.port());
        c.send(get_request("/bytes?n=8388608"));
        c.close();  // the server meets EPIPE in the middle of its response (SIGPIPE!)
    }
    SECTION("reset in the middle of a request") {
        Client c(server.port());
        c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly part of it");
        c.reset();
    }
    check_still_serving(server);
    check_still_serving(server);
}

TEST_CASE("a client that sends its request and then shuts down its side gets the answer, then EOF", "[behaviour]") {
    ServerProcess server;
    constexpr int kClients = 5;
    std::vector<std::unique_ptr<Client>> clients;
    while_a_handler_sleeps(server, [&] {
        for (int i = 0; i < kClients; ++i) {
            clients.push_back(std::make_unique<Client>(server.port()));
            clients.back()->send(get_request("/"));
            clients.back()->shutdown_write();  // FIN right behind the request
        }
    });
    // The FIN says no more requests will come: once the answer is out there
    // is nothing left to wait for. Not an idle timeout's worth, not for ever.
    int answered = 0, closed = 0;
    const Clock::time_point deadline = Clock::now() + scaled(2s);  // one deadline for them all
    auto left = [&] { return std::max<Clock::duration>(deadline - Clock::now(), 0s); };
    for (auto& c : clients) {
        std::optional<http::ClientResponse> r = c->read_response(left());
        answered += r && r->status == 200;
        closed += c->wait_closed(left());
    }
    CHECK(answered == kClients);
    CHECK(closed == kClients);
    check_still_serving(server);
}

TEST_CASE("clients that reset in the middle of a request are let go at once", "[behaviour]") {
    ServerProcess server;
    const long long baseline = stats(server.port())["connections_open"];  // counts the /stats connection itself
    while_a_handler_sleeps(server, [&] {
        for (int i = 0; i < 10; ++i) {
            Client c(server.port());
            c.send("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly part of it");
            c.reset();  // RST right behind the bytes
        }
    });
    long long open = -1;
    const bool released =
        eventually([&] { return (open = stats(server.port())["connections_open"]) == baseline; }, scaled(1s));
    INFO("connections_open " << open << ", baseline " << baseline);
    CHECK(released);
    check_still_serving(server);
}

TEST_CASE("a request after an urgent (out-of-band) byte is still answered", "[behaviour]") {
    ServerProcess server;
    std::unique_ptr<Client> c;
    while_a_handler_sleeps(server, [&] {
        c = std::make_unique<Client>(server.port());
        c->send(post_echo("before"));
        // The urgent byte is not part of the stream (no SO_OOBINLINE): a
        // recv() stops short at it, and the next one skips it.
        c->send_urgent('!');
        c->send(post_echo("after"));
    });
    std::optional<http::ClientResponse> first = c->read_response(scaled(2s));
    REQUIRE(first);
    CHECK(first->body == "before");
    std::optional<http::ClientResponse> second = c->read_response(scaled(2s));
    REQUIRE(second);
    CHECK(second->body == "after");  // nor did the urgent byte slip into it
}

TEST_CASE("a slow reader gets every byte of a large response", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    // A small window (but not below loopback's 64 KiB MSS, or TCP's silly-window
    // avoidance stalls the transfer): 4 MiB cannot fit in the socket buffers, so
    // the server's send() must block or write partially on the way.
    c.set_receive_buffer(64 * 1024);
    c.send(get_request("/bytes?n=4194304"));
    std::optional<http::ClientResponse> r = c.read_response(30s);
    REQUIRE(r);
    CHECK(r->body.size() == 4194304);
    CHECK(body_matches_pattern(r->body));
}

TEST_CASE("a client that pipelines big requests and never reads cannot make the server hold every response",
          "[behaviour]") {
    ServerProcess server;
    const long peak_before = peak_rss_kib(server.pid());
    {
        Client c(server.port());
        c.set_receive_buffer(64 * 1024);
        // 64 requests in one write, 16 MiB each: 1 GiB of responses if the
        // server answered every request it has read before sending.
        std::string requests;
        for (int i = 0; i < 64; ++i) requests += get_request("/bytes?n=16777216");
        c.send(requests);
        REQUIRE(eventually([&] { return server_has_read_all(c, server.port()); }, scaled(10s)));
        c.reset();  // leaves without reading a byte
    }
    // The server has dealt with the client when it serves the next one (a
    // loop thread finishes its round first). A fork server's child takes its
    // memory along when it exits; it sends each response before the next.
    check_still_serving(server);
    const long grown_mib = (peak_rss_kib(server.pid()) - peak_before) / 1024;
    INFO("peak resident memory grew by " << grown_mib << " MiB");
    CHECK(grown_mib < 32);  // an output buffer's worth: bodies are made as they are sent
}

TEST_CASE("clients that ask for huge bodies and never read leave the server's memory nearly flat", "[behaviour]") {
    ServerProcess server;
    const long peak_before = peak_rss_kib(server.pid());
    // The most resident memory any process of the server ever had: a fork
    // server's children hold the responses there.
    auto tree_peak_kib = [&] {
        long peak = 0;
        for (pid_t p : process_tree(server.pid())) peak = std::max(peak, peak_rss_kib(p));
        return peak;
    };
    // Twelve clients ask for the largest body there is and read nothing: a
    // server that made each body whole before sending would hold 768 MiB.
    constexpr int kClients = 12;
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < kClients; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        clients.back()->set_receive_buffer(64 * 1024);
        clients.back()->send(get_request("/bytes?n=" + std::to_string(http::kMaxBytesResponse)));
    }
    // A response has begun when its first bytes wait in the client's socket.
    auto begun = [&] {
        int n = 0;
        for (const auto& c : clients) {
            int queued = 0;
            if (::ioctl(c->fd(), FIONREAD, &queued) == 0 && queued > 0) ++n;
        }
        return n;
    };
    // The iterative server begins one response at a time; the others begin
    // them all. Wait for one, then give the rest a moment to start as well.
    REQUIRE(eventually([&] { return begun() >= 1; }, scaled(10s)));
    eventually([&] { return begun() == kClients; }, scaled(2s));
    const int started = begun();
    const long grown_mib = (tree_peak_kib() - peak_before) / 1024;
    INFO(started << " responses begun; peak resident memory grew by " << grown_mib << " MiB");
    CHECK(grown_mib < 32);  // a few output buffers, not 64 MiB for each response begun
    for (auto& c : clients) c->reset();
    check_still_serving(server);
}

TEST_CASE("running out of file descriptors sheds clients, never crashes", "[behaviour]") {
    ServerProcess server;
    const long in_use = open_fd_count(server.pid());
    REQUIRE(in_use > 0);
    server.set_fd_limit(static_cast<rlim_t>(in_use + 3));
    int answered = 0, shed = 0;
    for (int i = 0; i < 12; ++i) {
        Client c(server.port());
        c.send(get_request("/", "Connection: close\r\n"));
        try {
            if (std::optional<http::ClientResponse> r = c.read_response(10s)) answered += r->status == 200;
        } catch (const std::runtime_error&) {
            ++shed;  // closed unanswered: what a server without descriptors should do
        }
    }
    CHECK(answered + shed == 12);
    server.set_fd_limit(1024);
    check_still_serving(server);
}

TEST_CASE("with no descriptor left, waiting clients are shed and the server does not spin", "[behaviour]") {
    ServerProcess server;
    // A spinning thread is runnable all the time (share about 1, however busy
    // the machine); a sleeping loop about 0. Chapter 05 spins with or without
    // clients, so there is nothing to judge. (Lab 05's loop naps 1 ms at a
    // time: on a busy machine each wake-up waits for a CPU, which shows as a
    // few per cent, so the limits sit midway, not near 0.)
    const bool spins_anyway = cpu_shares_over(server.pid(), 300ms).runnable > 0.5;
    // Not one descriptor to spare, from before the first client: a server that
    // only then looked for a reserve descriptor would find none. (The limit
    // caps descriptor numbers, and a new one takes the lowest free number.)
    const int lowest_free = lowest_free_fd(server.pid());
    REQUIRE(lowest_free > 2);
    server.set_fd_limit(static_cast<rlim_t>(lowest_free));
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < 5; ++i) {
        clients.push_back(std::make_unique<Client>(server.port()));
        clients.back()->send(get_request("/", "Connection: close\r\n"));
    }
    // Each is taken off the backlog and closed: it sees its connection end
    // (a response, if a descriptor came free meanwhile, is fine too).
    for (auto& c : clients) {
        bool ended = false;
        try {
            ended = c->read_response(scaled(10s)).has_value() || c->wait_closed(scaled(10s));
        } catch (const std::runtime_error&) {
            ended = true;  // closed before a response
        }
        CHECK(ended);
    }
    // A listener left readable with accept() failing for ever would keep the
    // server on a CPU; shed, there is nothing left to do.
    const double share = cpu_shares_over(server.pid(), 700ms).runnable;
    INFO("runnable share while out of descriptors: " << share);
    if (!spins_anyway) CHECK(share < 0.5);  // spinning on accept's EMFILE: about 1
    server.set_fd_limit(1024);
    check_still_serving(server);
}

namespace {

// accept4 failing on demand, in the server only: the LD_PRELOAD library
// common/test/accept_shim.cpp (built into BUILD/common/test/) and a control
// file both processes map (accept_shim.hpp).
class AcceptFault {
public:
    AcceptFault() {
        char path[] = "/tmp/accept-shim-XXXXXX";
        common::UniqueFd fd(::mkostemp(path, O_CLOEXEC));
        if (!fd) FAIL("mkostemp /tmp/accept-shim-XXXXXX: " << std::strerror(errno));
        path_ = path;
        if (::ftruncate(fd.get(), sizeof(accept_shim::Control)) != 0)
            FAIL("ftruncate " << path_ << ": " << std::strerror(errno));
        void* mapped = ::mmap(nullptr, sizeof(accept_shim::Control), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
        if (mapped == MAP_FAILED) FAIL("mmap " << path_ << ": " << std::strerror(errno));
        control_ = new (mapped) accept_shim::Control{};  // the file's zeros, as atomics
    }
    ~AcceptFault() {
        ::munmap(control_, sizeof(accept_shim::Control));
        ::unlink(path_.c_str());
    }
    AcceptFault(const AcceptFault&) = delete;
    AcceptFault& operator=(const AcceptFault&) = delete;

    // For ServerProcess: preload the library and name the control file. ASan
    // wants its runtime first among the libraries and refuses to start
    // otherwise; the library does not mind coming first (see its header).
    std::vector<std::string> server_env() const {
        const char* asan = std::getenv("ASAN_OPTIONS");
        return {"LD_PRELOAD=" + library(), std::string(accept_shim::kControlVariable) + "=" + path_,
                "ASAN_OPTIONS=" + std::string(asan && *asan ? std::string(asan) + ":" : "") + "verify_asan_link_order=0"};
    }
    void fail_with(int error) { control_->fail_with.store(error); }
    std::uint64_t failed() const { return control_->failed.load(); }
    std::uint64_t passed() const { return control_->passed.load(); }

private:
    // BUILD/chapters/NN_name/test -> BUILD/common/test/accept_shim.so
    static std::string library() {
        char self[4096];
        const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
        if (n < 0) FAIL("readlink /proc/self/exe: " << std::strerror(errno));
        std::filesystem::path build = std::filesystem::path(std::string(self, static_cast<std::size_t>(n)));
        build = build.parent_path().parent_path().parent_path();
        const std::string shim = (build / "common/test/accept_shim.so").string();
        if (::access(shim.c_str(), R_OK) != 0) FAIL("the accept4 shim " << shim << ": " << std::strerror(errno));
        return shim;
    }

    std::string path_;
    accept_shim::Control* control_ = nullptr;
};


}  // namespace

TEST_CASE("accept failing with ENOBUFS or EMFILE (no spare) pauses accepting instead of spinning", "[behaviour]") {
    // EMFILE from every accept4 is the case where the spare descriptor frees
    // nothing (common::accept_client): nobody can be shed either.
    const int error = GENERATE(ENOBUFS, EMFILE);
    INFO("accept4 fails with " << std::strerror(error));
    AcceptFault fault;
    fault.fail_with(error);  // from the start: the blocking models call accept4 at once
    const Clock::time_point started = Clock::now();
    ServerProcess server({}, server_binary(), fault.server_env());
    Client waiting(server.port());
    // From here a client is queued. (Before, an EMFILE with nobody waiting
    // is "nothing to do": the busy loop of chapter 05 asks again at once, as
    // it asks every round when accept4 says EAGAIN.)
    const std::uint64_t failed_before = fault.failed();
    const Clock::time_point queued = Clock::now();
    waiting.send(get_request("/", "Connection: close\r\n"));
    REQUIRE(eventually([&] { return fault.failed() > failed_before; }, scaled(5s)));
    // A window to count what the server does while accept4 keeps failing
    // (a span to observe, not a deadline).
    std::this_thread::sleep_for(1s);
    const std::uint64_t calls = fault.failed() - failed_before;
    const Clock::time_point now = Clock::now();
    const std::string log = server.log();
    const long log_lines = server.count_log_lines("accept");
    const auto pauses_in = [](Clock::duration d) {
        return 1 + to_ms(d) / static_cast<double>(common::kAcceptPause.count());
    };
    INFO(calls << " failed accept4 calls in " << to_ms(now - queued) << " ms with a client waiting, "
               << log_lines << " log lines about accept in " << to_ms(now - started)
               << " ms; the end of the server log:\n" << log.substr(log.size() > 1500 ? log.size() - 1500 : 0));
    // Each pause lasts kAcceptPause at least: at most one log line per pause,
    // and (EMFILE) three accept4 calls per pause: the first, the one after
    // the wait for a client, the one after freeing the spare. The code before
    // the pause retried at once: 1.5 to 2.3 million calls in the same second
    // (and, for ENOBUFS, a log line each).
    CHECK(log_lines <= 5 + pauses_in(now - started));
    CHECK(static_cast<double>(calls) <= 20 + 4 * pauses_in(now - queued));
    fault.fail_with(0);
    // The waiting client is served once the pause in progress ends.
    std::optional<http::ClientResponse> r = waiting.read_response(scaled(5s));
    REQUIRE(r);
    CHECK(r->status == 200);
    waiting.close();  // its lingering close ends here (chapter 01 would wait for it before the next client)
    const long long pauses = stats(server.port())["accept_pauses"];
    CHECK(pauses >= 1);
    CHECK(static_cast<double>(pauses) <= 2 + pauses_in(Clock::now() - started));
    check_still_serving(server);
    CHECK(describe_status(server.stop(10s)) == "exited with 0");
}

TEST_CASE("a client that keeps sending after Connection: close still gets its whole response", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    c.set_receive_buffer(64 * 1024);  // most of the response waits in the server's socket, not ours
    constexpr std::size_t size = 8 * 1024 * 1024;
    c.send(get_request("/bytes?n=" + std::to_string(size), "Connection: close\r\n"));
    // While it reads, the client pipelines more requests, as one that does not
    // look at the headers would. They come too late (the server closes after
    // this response), but a server that closed its socket with them unread, or
    // with more still to come, would make its kernel reset the connection and
    // throw away what of the response it had not sent yet.
    const std::string more = get_request("/");
    std::size_t next_request_at = 0;
    const Received r = read_until_closed(c, 30s, [&](std::size_t so_far) {
        if (so_far < next_request_at) return;
        next_request_at += 256 * 1024;
        // Once the server has gone this fails (EPIPE, ECONNRESET): the reads tell.
        [[maybe_unused]] ssize_t ignored = ::send(c.fd(), more.data(), more.size(), MSG_NOSIGNAL);
    });
    INFO("received " << r.bytes.size() << " bytes");
    CHECK_FALSE(r.reset);
    http::ResponseParser parser;
    parser.feed(r.bytes);
    http::ClientResponse response;
    REQUIRE(parser.next(response));
    CHECK(response.status == 200);
    CHECK_FALSE(response.keep_alive);
    CHECK(response.body.size() == size);
    CHECK(body_matches_pattern(response.body));
    CHECK(parser.buffered() == 0);  // nothing after it: the late requests were not answered
    check_still_serving(server);
}

TEST_CASE("SIGTERM while a client pipelines big requests: every response that started arrives whole", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    c.set_receive_buffer(64 * 1024);
    // Eight rounds of a 4 MiB download and a 256 KiB upload (2 MiB of requests
    // in all), written by a thread of their own. The server reads them only as
    // it gets to them, so when it stops some are unread in its socket and some
    // still on their way.
    const std::string upload(256 * 1024, 'u');
    std::string requests;
    for (int i = 0; i < 8; ++i) requests += get_request("/bytes?n=4194304") + post_echo(upload);
    // Joined however the test ends; shutdown() ends a send() that blocks.
    struct Writer {
        int fd;
        std::thread thread;
        ~Writer() {
            ::shutdown(fd, SHUT_WR);
            thread.join();
        }
    } writer{c.fd(), std::thread([&] {
        std::string_view left = requests;
        while (!left.empty()) {
            const ssize_t n = ::send(c.fd(), left.data(), left.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return;  // the server has closed (or reset) the connection
            left.remove_prefix(static_cast<std::size_t>(n));
        }
    })};
    bool signalled = false;
    const Received r = read_until_closed(c, 30s, [&](std::size_t so_far) {
        if (signalled || so_far < 1024 * 1024) return;
        server.send_signal(SIGTERM);  // in the middle of the first response
        signalled = true;
    });
    REQUIRE(signalled);
    INFO("received " << r.bytes.size() << " bytes; server log:\n" << server.log());
    CHECK_FALSE(r.reset);
    // Only whole responses, in order. (The last need not say "Connection:
    // close": a server may stop between two responses.)
    http::ResponseParser parser;
    parser.feed(r.bytes);
    http::ClientResponse response;
    int whole = 0;
    bool all_right = true;
    while (parser.next(response)) {
        const bool download = whole % 2 == 0;
        all_right = all_right && response.status == 200 &&
                    (download ? response.body.size() == 4194304 && body_matches_pattern(response.body)
                              : response.body == upload);
        ++whole;
    }
    INFO(whole << " whole responses");
    CHECK(whole >= 1);
    CHECK(all_right);
    CHECK(parser.buffered() == 0);  // no response cut short at the end
    CHECK(describe_status(server.stop(10s)) == "exited with 0");
}

TEST_CASE("SIGTERM with an idle keep-alive client exits 0 promptly", "[behaviour]") {
    ServerProcess server;
    Client c(server.port());
    CHECK(c.request(get_request("/")).status == 200);
    Clock::duration took{};
    const int status = server.stop(10s, &took);
    CHECK(describe_status(status) == "exited with 0");
    CHECK(to_ms(took) < to_ms(scaled(3s)));  // the grace period is 2 s
}

// The models whose loop blocks in accept() or recv(), calls that take no
// signal mask: a stop signal that comes after they looked at the stop flag and
// before they blocked is lost until the grace timer ends the server
// (stop.hpp). Rare (about 1 start in 7,000 with a busy core), but real. Every
// other model, later chapters' included, must never lose one.
static bool may_lose_a_stop_signal(const std::string& model) {
    static const std::set<std::string> blocking{"blocking", "fork", "thread_per_connection", "thread_pool"};
    return blocking.count(model) != 0;
}

TEST_CASE("an idle server stopped right after it starts exits at once, twenty times in a row", "[behaviour]") {
    std::string model;
    {
        ServerProcess server;
        model = stats_model(server.port());
        REQUIRE(describe_status(server.stop(10s)) == "exited with 0");
    }
    // A SIGTERM sent as soon as the ready line is read lands while the server
    // goes from announcing itself to its first wait: across the gap, if it has
    // one. Lost there, it is noticed only when the grace timer fires, 2 s
    // later, with "grace period expired" on stderr.
    const bool may_lose = may_lose_a_stop_signal(model);
    for (int i = 0; i < 20; ++i) {
        ServerProcess server;
        Clock::duration took{};
        const int status = server.stop(10s, &took);
        INFO("model " << model << ": stop " << i + 1 << " took " << to_ms(took) << " ms; server log:\n" << server.log());
        REQUIRE(describe_status(status) == "exited with 0");
        if (may_lose) {
            REQUIRE(to_ms(took) < to_ms(scaled(3s)));  // the grace timer bounds the gap's cost
        } else {
            REQUIRE(server.log().find("grace period expired") == std::string::npos);
            REQUIRE(to_ms(took) < to_ms(scaled(1s)));  // well under the 2 s grace period
        }
    }
}

TEST_CASE("SIGTERM lets a response in progress finish", "[behaviour]") {
    ServerProcess server;
    const bool timers = sleep_is_a_timer(server.port());
    Client c(server.port());
    c.send(get_request("/sleep?ms=500"));
    // Wait until the server has read the request and its handler sleeps (or
    // its timer is set), then ask it to stop.
    REQUIRE(eventually(
        [&] {
            return server_has_read_all(c, server.port()) &&
                   (timers ? stats(server.port())["sleeps_pending"] == 1 : sleeping_in_nanosleep(server.pid()));
        },
        5s));
    server.send_signal(SIGTERM);
    std::optional<http::ClientResponse> r = c.read_response(5s);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK_FALSE(r->keep_alive);  // a stopping server closes after the response
    Clock::duration took{};
    CHECK(describe_status(server.stop(10s, &took)) == "exited with 0");
}
