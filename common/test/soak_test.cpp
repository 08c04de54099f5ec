// Unit tests of the soak's response check (common/client/response_check.hpp),
// and a short run of build/tools/soak against chapter 08.
//
// Decided here: a response is judged on the bytes it is made of, in any
// split; a wrong byte, length, status or a missing "Connection: close" fails
// it; and the check never takes bytes that belong to the next response.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"
#include "process.hpp"
#include "response_check.hpp"
#include "testing.hpp"

namespace {

using http::Expectation;
using http::ResponseCheck;

std::string response(std::string_view status_line, std::string_view body, bool close = false) {
    return std::string(status_line) + "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
           (close ? "\r\nConnection: close" : "\r\nConnection: keep-alive") + "\r\n\r\n" + std::string(body);
}

std::string pattern(std::uint64_t n) {
    std::string s;
    for (std::uint64_t i = 0; i < n; ++i) s += http::pattern_byte(i);
    return s;
}

// Feeds wire in pieces of `piece` bytes; returns how many bytes the check took.
std::size_t feed_in_pieces(ResponseCheck& check, std::string_view wire, std::size_t piece) {
    std::size_t taken = 0;
    while (taken < wire.size() && !check.complete() && !check.failed()) {
        const std::string_view next = wire.substr(taken, piece);
        const std::size_t n = check.feed(next);
        taken += n;
        if (n < next.size()) break;  // the rest is not this response's
    }
    return taken;
}

}  // namespace

TEST_CASE("the response check takes one exact response in any split, and no byte more", "[soak]") {
    const std::string body = "Hello from the concurrent-servers tutorial!\n";
    const std::string one = response("HTTP/1.1 200 OK", body);
    const std::string wire = one + "HTTP/1.1 404 Not Found\r\n";
    for (std::size_t piece : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{7}, wire.size()}) {
        INFO("pieces of " << piece);
        ResponseCheck check({.body = Expectation::Body::exact, .text = body});
        CHECK(feed_in_pieces(check, wire, piece) == one.size());
        CHECK(check.complete());
        CHECK(check.status() == 200);
        CHECK(check.keep_alive());
    }
}

TEST_CASE("the response check verifies the /bytes pattern past its period", "[soak]") {
    const std::uint64_t n = 70'000;  // many periods of 64, and more than one run of 4 KiB
    const std::string wire = response("HTTP/1.1 200 OK", pattern(n));
    for (std::size_t piece : {std::size_t{1000}, std::size_t{4096}, std::size_t{65536}}) {
        ResponseCheck check({.body = Expectation::Body::pattern, .length = n});
        CHECK(feed_in_pieces(check, wire, piece) == wire.size());
        CHECK(check.complete());
    }
    std::string broken = wire;
    broken[broken.size() - 12345] ^= 1;
    ResponseCheck check({.body = Expectation::Body::pattern, .length = n});
    feed_in_pieces(check, broken, 2048);
    CHECK(check.failed());
    CHECK(check.error().find("/bytes body is wrong") != std::string::npos);
}

TEST_CASE("the response check fails a wrong status, length, body or a missing close", "[soak]") {
    SECTION("status") {
        ResponseCheck check({.body = Expectation::Body::exact, .text = "x"});
        check.feed(response("HTTP/1.1 500 Internal Server Error", "x"));
        CHECK(check.failed());
        CHECK(check.error() == "status 500, expected 200");
    }
    SECTION("Content-Length") {
        ResponseCheck check({.body = Expectation::Body::pattern, .length = 10});
        check.feed(response("HTTP/1.1 200 OK", pattern(9)));
        CHECK(check.failed());
    }
    SECTION("body") {
        ResponseCheck check({.body = Expectation::Body::exact, .text = "abc"});
        check.feed(response("HTTP/1.1 200 OK", "abd"));
        CHECK(check.failed());
    }
    SECTION("Connection: close") {
        ResponseCheck check({.body = Expectation::Body::exact, .text = "abc", .must_close = true});
        check.feed(response("HTTP/1.1 200 OK", "abc"));
        CHECK(check.failed());
        ResponseCheck closes({.body = Expectation::Body::exact, .text = "abc", .must_close = true});
        closes.feed(response("HTTP/1.1 200 OK", "abc", true));
        CHECK(closes.complete());
        CHECK_FALSE(closes.keep_alive());
    }
    SECTION("not HTTP") {
        ResponseCheck check({.body = Expectation::Body::any});
        check.feed("garbage\r\n\r\n");
        CHECK(check.failed());
    }
    SECTION("no Content-Length") {
        ResponseCheck check({.body = Expectation::Body::any});
        check.feed("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        CHECK(check.failed());
    }
}

TEST_CASE("the response check reads a HEAD answer's length and no body", "[soak]") {
    const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
    const std::string wire = head + "HTTP/1.1 200 OK\r\n";
    ResponseCheck check({.body = Expectation::Body::pattern, .length = 1000, .head = true});
    CHECK(check.feed(wire) == head.size());
    CHECK(check.complete());
    ResponseCheck wrong({.body = Expectation::Body::pattern, .length = 999, .head = true});
    wrong.feed(wire);
    CHECK(wrong.failed());
}

TEST_CASE("the soak runs chapter 08 and writes its table", "[soak]") {
    namespace fs = std::filesystem;
    const fs::path build = fs::canonical("/proc/self/exe").parent_path().parent_path().parent_path();
    const fs::path out = fs::temp_directory_path() / ("soak-test-" + std::to_string(::getpid()));
    common::ChildProcess soak(
        {(build / "tools" / "soak").string(), "--chapters", "08", "--requests", "2000", "--out", out.string()});
    std::string printed;
    const int status = soak.finish(printed, std::chrono::seconds(60));
    INFO(printed);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(printed.find("[1/1] 08_epoll, 2000 requests ... PASS") != std::string::npos);
    std::ifstream md(out / "soak_results.md");
    std::stringstream text;
    text << md.rdbuf();
    CHECK(text.str().find("| 08_epoll | 800 | 700 |") != std::string::npos);
    CHECK(text.str().find("| PASS |") != std::string::npos);
    fs::remove_all(out);
}
