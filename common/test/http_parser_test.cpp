// Unit tests of the HTTP layer in common/: the incremental parser under every
// split of its input, pipelining, every limit and error of the contract, the
// keep-alive rules, the response writer and the router.
#include <string>
#include <vector>

#include "http.hpp"
#include "http_client.hpp"
#include "testing.hpp"

namespace {

struct Outcome {
    std::vector<http::Request> requests;
    int error = 0;  // the status of a parse error, if any
};

// Feeds the input in pieces of the given sizes (the rest in one piece) and
// collects everything the parser yields.
Outcome parse_in_pieces(const std::string& input, const std::vector<std::size_t>& cuts) {
    http::RequestParser parser;
    Outcome out;
    std::size_t pos = 0;
    auto drain = [&] {
        for (http::ParseResult r = parser.next(); r.kind != http::ParseResult::need_more; r = parser.next()) {
            if (r.kind == http::ParseResult::error) {
                out.error = r.error_status;
                return false;
            }
            out.requests.push_back(std::move(r.request));
        }
        return true;
    };
    for (std::size_t cut : cuts) {
        parser.feed(std::string_view(input).substr(pos, cut));
        pos += cut;
        if (!drain()) return out;
    }
    parser.feed(std::string_view(input).substr(pos));
    drain();
    return out;
}

Outcome parse(const std::string& input) { return parse_in_pieces(input, {}); }

int error_of(const std::string& input) { return parse(input).error; }

bool same(const Outcome& a, const Outcome& b) {
    if (a.error != b.error || a.requests.size() != b.requests.size()) return false;
    for (std::size_t i = 0; i < a.requests.size(); ++i) {
        const http::Request &x = a.requests[i], &y = b.requests[i];
        if (x.method != y.method || x.target != y.target || x.body != y.body || x.keep_alive != y.keep_alive ||
            x.headers.size() != y.headers.size())
            return false;
    }
    return true;
}

const std::string kTwoRequests =
    "POST /echo?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    "GET /sleep?ms=5 HTTP/1.1\nHost: b\nConnection: close\n\n";

}  // namespace

TEST_CASE("a simple GET", "[parser]") {
    Outcome o = parse("GET /sleep?ms=10 HTTP/1.1\r\nHost: x\r\nX-Thing:  spaced value \r\n\r\n");
    REQUIRE(o.error == 0);
    REQUIRE(o.requests.size() == 1);
    const http::Request& r = o.requests[0];
    CHECK(r.method == "GET");
    CHECK(r.target == "/sleep?ms=10");
    CHECK(r.path == "/sleep");
    CHECK(r.query == "ms=10");
    CHECK(r.minor_version == 1);
    CHECK(r.keep_alive);
    REQUIRE(r.header("x-thing") != nullptr);
    CHECK(*r.header("X-THING") == "spaced value");
    CHECK(r.header("missing") == nullptr);
}

TEST_CASE("every split into two pieces gives the same requests", "[parser]") {
    const Outcome whole = parse(kTwoRequests);
    REQUIRE(whole.requests.size() == 2);
    for (std::size_t cut = 0; cut <= kTwoRequests.size(); ++cut) {
        INFO("cut at " << cut);
        CHECK(same(parse_in_pieces(kTwoRequests, {cut}), whole));
    }
}

TEST_CASE("every split into three pieces gives the same requests", "[parser]") {
    const Outcome whole = parse(kTwoRequests);
    for (std::size_t a = 0; a <= kTwoRequests.size(); a += 3)
        for (std::size_t b = 0; a + b <= kTwoRequests.size(); b += 5) {
            INFO("cuts " << a << ", " << b);
            CHECK(same(parse_in_pieces(kTwoRequests, {a, b}), whole));
        }
}

TEST_CASE("one byte at a time gives the same requests", "[parser]") {
    const Outcome whole = parse(kTwoRequests);
    CHECK(same(parse_in_pieces(kTwoRequests, std::vector<std::size_t>(kTwoRequests.size(), 1)), whole));
    const Outcome& o = whole;
    CHECK(o.requests[0].body == "hello world");
    CHECK(o.requests[1].path == "/sleep");
    CHECK_FALSE(o.requests[1].keep_alive);
}

TEST_CASE("pipelined requests come out in order, leftovers wait", "[parser]") {
    std::string input;
    for (int i = 0; i < 100; ++i) input += "GET /" + std::to_string(i) + " HTTP/1.1\r\nHost: t\r\n\r\n";
    input += "GET /partial HTTP/1.1\r\nHost: t\r\n";  // not finished yet
    http::RequestParser parser;
    parser.feed(input);
    for (int i = 0; i < 100; ++i) {
        http::ParseResult r = parser.next();
        REQUIRE(r.kind == http::ParseResult::complete);
        CHECK(r.request.target == "/" + std::to_string(i));
    }
    CHECK(parser.next().kind == http::ParseResult::need_more);
    CHECK(parser.buffered() == std::string("GET /partial HTTP/1.1\r\nHost: t\r\n").size());
    parser.feed("\r\n");
    http::ParseResult last = parser.next();
    REQUIRE(last.kind == http::ParseResult::complete);
    CHECK(last.request.target == "/partial");
}

TEST_CASE("empty lines before a request are ignored", "[parser]") {
    Outcome o = parse("\r\n\nGET / HTTP/1.1\r\nHost: t\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(o.requests.size() == 2);
    CHECK(o.requests[1].target == "/b");
}

TEST_CASE("keep-alive rules", "[parser]") {
    CHECK(parse("GET / HTTP/1.1\r\nHost: t\r\n\r\n").requests.at(0).keep_alive);
    CHECK_FALSE(parse("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").requests.at(0).keep_alive);
    CHECK_FALSE(parse("GET / HTTP/1.1\r\nHost: t\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").requests.at(0).keep_alive);
    CHECK_FALSE(parse("GET / HTTP/1.0\r\n\r\n").requests.at(0).keep_alive);
    CHECK(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").requests.at(0).keep_alive);
    CHECK_FALSE(parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").requests.at(0).keep_alive);
}

TEST_CASE("limits: header block 8 KiB (414 for the request line, 431 for the fields), body 1 MiB", "[parser]") {
    const std::string line = "GET / HTTP/1.1\r\nHost: t\r\n";
    const std::string end = "\r\n";
    // Exactly 8 KiB of head is fine; one byte more is 431.
    std::string filler = "X: " + std::string(8192 - line.size() - end.size() - 3 - 2, 'a') + "\r\n";
    REQUIRE(line.size() + filler.size() + end.size() == 8192);
    CHECK(error_of(line + filler + end) == 0);
    std::string over = "X: " + std::string(filler.size() - 4, 'a') + "\r\n";
    CHECK(error_of(line + over + end) == 431);
    // A head that never ends is cut off once it passes the limit: 414 when
    // the request line alone fills it (the target is too long), else 431.
    CHECK(error_of("GET /" + std::string(9000, 'a')) == 414);
    CHECK(error_of("GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: t\r\n\r\n") == 414);
    CHECK(error_of(line + "X: " + std::string(9000, 'a')) == 431);
    // A request line just under the limit, then headers past it: 431.
    CHECK(error_of("GET /" + std::string(8000, 'a') + " HTTP/1.1\r\nHost: t\r\nX: " + std::string(500, 'b') + "\r\n\r\n") == 431);
    // Bodies: 1 MiB is fine, more is 413 before the body arrives.
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n" + std::string(1048576, 'b')) == 0);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048577\r\n\r\n") == 413);
}

TEST_CASE("malformed requests and their statuses", "[parser]") {
    CHECK(error_of("garbage\r\n\r\n") == 400);
    CHECK(error_of("GET /\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.1 extra\r\n\r\n") == 400);
    CHECK(error_of("GET  / HTTP/1.1\r\nHost: t\r\n\r\n") == 400);
    CHECK(error_of("GET nopath HTTP/1.1\r\nHost: t\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTQ/1.1\r\n\r\n") == 400);
    CHECK(error_of("G(T / HTTP/1.1\r\nHost: t\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/2.0\r\n\r\n") == 505);
    CHECK(error_of("GET / HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.1\r\nHost: t\r\nA: b\r\n  folded\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.1\r\nHost: t\r\nA: b\rc\r\n\r\n") == 400);
    using namespace std::string_literals;
    CHECK(error_of("GET / HTTP/1.1\r\nHost: t\r\nA: b\0c\r\n\r\n"s) == 400);
}

TEST_CASE("Content-Length and Transfer-Encoding", "[parser]") {
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n") == 400);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n") == 400);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1,1\r\n\r\n") == 400);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length:\r\n\r\n") == 400);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n") == 400);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd") == 400);
    Outcome same_twice = parse("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc");
    REQUIRE(same_twice.requests.size() == 1);
    CHECK(same_twice.requests[0].body == "abc");
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 501);
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n") == 501);
}

TEST_CASE("Host: HTTP/1.1 needs exactly one, and a valid one (RFC 9112 section 3.2)", "[parser]") {
    CHECK(error_of("GET / HTTP/1.1\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n") == 400);
    CHECK(error_of("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
    for (const char* bad : {"a b", "a/b", "a@b", "a:8x", "[::1", "[::g]", "[::1]x", "a%2", "a%zz", "a\"b"}) {
        INFO("Host: " << bad);
        CHECK(error_of(std::string("GET / HTTP/1.1\r\nHost: ") + bad + "\r\n\r\n") == 400);
    }
    for (const char* good : {"", "a", "example.com:8080", "127.0.0.1:80", "[::1]:8080", "[::1]", "a-b_c~d%41", "a:"}) {
        INFO("Host: " << good);
        CHECK(error_of(std::string("GET / HTTP/1.1\r\nHost: ") + good + "\r\n\r\n") == 0);
    }
    CHECK(error_of("GET / HTTP/1.0\r\n\r\n") == 0);  // HTTP/1.0 had no Host
}

TEST_CASE("an absolute-form target is accepted (RFC 9112 section 3.2.2)", "[parser]") {
    Outcome o = parse("GET http://example.com:8080/sleep?ms=5 HTTP/1.1\r\nHost: other\r\n\r\n"
                      "GET HTTPS://example.com HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET http://example.com?q HTTP/1.1\r\nHost: x\r\n\r\n");
    REQUIRE(o.error == 0);
    REQUIRE(o.requests.size() == 3);
    CHECK(o.requests[0].target == "http://example.com:8080/sleep?ms=5");
    CHECK(o.requests[0].path == "/sleep");
    CHECK(o.requests[0].query == "ms=5");
    CHECK(o.requests[1].path == "/");
    CHECK(o.requests[2].path == "/");
    CHECK(o.requests[2].query == "q");
    CHECK(error_of("GET ftp://example.com/ HTTP/1.1\r\nHost: x\r\n\r\n") == 400);
    CHECK(error_of("GET http:///path HTTP/1.1\r\nHost: x\r\n\r\n") == 400);
    CHECK(error_of("GET http://us@er/ HTTP/1.1\r\nHost: x\r\n\r\n") == 400);
    CHECK(error_of("GET * HTTP/1.1\r\nHost: x\r\n\r\n") == 400);
}

TEST_CASE("Expect: 100-continue gives an interim result while the body is still to come", "[parser]") {
    const std::string head = "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n";
    common::Stats stats("unit");
    {
        http::RequestParser parser;
        parser.feed(head);
        http::ParseResult r = parser.next();
        REQUIRE(r.kind == http::ParseResult::interim);
        http::Reply go_on = http::respond(r, stats);
        CHECK(go_on.bytes == "HTTP/1.1 100 Continue\r\n\r\n");
        CHECK_FALSE(go_on.close_after);
        CHECK(stats.requests == 0);  // not a response to the request
        CHECK(parser.next().kind == http::ParseResult::need_more);  // once only
        parser.feed("hello");
        http::ParseResult done = parser.next();
        REQUIRE(done.kind == http::ParseResult::complete);
        CHECK(done.request.body == "hello");
    }
    // The body came with the head: no need to ask for it.
    CHECK(parse(head + "hello").requests.size() == 1);
    http::RequestParser whole;
    whole.feed(head + "hello");
    CHECK(whole.next().kind == http::ParseResult::complete);
    // No body at all, or HTTP/1.0 (which cannot know 100-continue): no interim.
    http::RequestParser no_body;
    no_body.feed("GET / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\r\n");
    CHECK(no_body.next().kind == http::ParseResult::complete);
    http::RequestParser old;
    old.feed("POST /echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    CHECK(old.next().kind == http::ParseResult::need_more);
    // Any other expectation: 417 at once.
    CHECK(error_of("POST /echo HTTP/1.1\r\nHost: t\r\nExpect: something\r\nContent-Length: 5\r\n\r\n") == 417);
}

TEST_CASE("after an error the parser stays failed", "[parser]") {
    http::RequestParser parser;
    parser.feed("garbage\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(parser.next().kind == http::ParseResult::error);
    CHECK(parser.next().kind == http::ParseResult::error);
}

TEST_CASE("responses carry Content-Length, Content-Type and Connection", "[response]") {
    http::Response r;
    r.body = "hi";
    CHECK(http::serialize(r, true) ==
          "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n"
          "Connection: keep-alive\r\n\r\nhi");
    r.headers.push_back({"Allow", "GET"});
    r.status = 405;
    CHECK(http::serialize(r, false).find("HTTP/1.1 405 Method Not Allowed\r\n") == 0);
    CHECK(http::serialize(r, false).find("\r\nConnection: close\r\nAllow: GET\r\n\r\n") != std::string::npos);
}

TEST_CASE("the router", "[router]") {
    common::Stats stats("unit");
    auto route = [&](const std::string& raw) {
        Outcome o = parse(raw);
        REQUIRE(o.requests.size() == 1);
        return http::handle(o.requests[0], stats);
    };
    CHECK(route("GET / HTTP/1.1\r\nHost: t\r\n\r\n").status == 200);
    CHECK(route("GET /missing HTTP/1.1\r\nHost: t\r\n\r\n").status == 404);
    CHECK(route("POST / HTTP/1.1\r\nHost: t\r\n\r\n").status == 405);
    CHECK(route("GET /sleep?ms=0 HTTP/1.1\r\nHost: t\r\n\r\n").status == 200);
    CHECK(route("GET /sleep?ms=x HTTP/1.1\r\nHost: t\r\n\r\n").status == 400);
    CHECK(route("GET /sleep?other=1&ms=0 HTTP/1.1\r\nHost: t\r\n\r\n").status == 200);
    CHECK(route("GET /work?ms=1 HTTP/1.1\r\nHost: t\r\n\r\n").status == 200);
    http::Response bytes = route("GET /bytes?n=130 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(bytes.body.empty());  // made as it is sent: see the generated-body tests
    CHECK(bytes.generated.remaining() == 130);
    CHECK(route("GET /bytes?n=67108865 HTTP/1.1\r\nHost: t\r\n\r\n").status == 400);
    CHECK(route("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok").body == "ok");
    http::Response s = route("GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(s.content_type == "application/json");
    CHECK(s.body.find("\"model\":\"unit\"") != std::string::npos);
}

TEST_CASE("respond counts requests and closes after errors", "[router]") {
    common::Stats stats("unit");
    http::RequestParser parser;
    parser.feed("GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nbad\r\n\r\n");
    http::ParseResult a = parser.next(), b = parser.next(), c = parser.next();
    CHECK_FALSE(http::respond(a, stats).close_after);
    CHECK(http::respond(b, stats).close_after);
    http::Reply error = http::respond(c, stats);
    CHECK(error.close_after);
    CHECK(error.bytes.find("HTTP/1.1 400 Bad Request") == 0);
    CHECK(stats.requests == 3);
}

TEST_CASE("a generated body: the same bytes in any pieces, and never more than asked", "[response]") {
    const std::uint64_t size = 1000;
    std::string whole;
    http::GeneratedBody(0, size).append_to(whole, 1 << 20);
    REQUIRE(whole.size() == size);
    for (std::size_t i = 0; i < whole.size(); ++i) REQUIRE(whole[i] == http::pattern_byte(i));
    for (std::size_t piece : {1u, 7u, 63u, 64u, 65u, 999u}) {
        INFO("pieces of " << piece);
        http::GeneratedBody body(0, size);
        std::string out = "head";
        while (!body.done()) {
            const std::size_t before = out.size();
            body.append_to(out, piece);
            REQUIRE(out.size() - before == std::min<std::size_t>(piece, size - (before - 4)));
        }
        CHECK(out == "head" + whole);
        CHECK(body.remaining() == 0);
    }
    std::string from_offset;
    http::GeneratedBody(100, 5).append_to(from_offset, 10);
    CHECK(from_offset == whole.substr(100, 5));
    std::string nothing;
    http::GeneratedBody().append_to(nothing, 10);
    CHECK(nothing.empty());
}

TEST_CASE("respond hands a /bytes body over as its generated rest", "[router]") {
    common::Stats stats("unit");
    http::RequestParser parser;
    parser.feed("GET /bytes?n=67108864 HTTP/1.1\r\nHost: t\r\n\r\n");
    http::ParseResult request = parser.next();
    http::Reply reply = http::respond(request, stats);
    // The head says how long the body is; none of the body is made yet.
    CHECK(reply.bytes.find("\r\nContent-Length: 67108864\r\n") != std::string::npos);
    CHECK(reply.bytes.ends_with("\r\n\r\n"));
    CHECK(reply.rest.remaining() == 67108864);
    CHECK_FALSE(reply.close_after);
}

TEST_CASE("HEAD: the head GET would send, without the body", "[router]") {
    common::Stats stats("unit");
    auto reply_to = [&](const std::string& raw) {
        http::RequestParser parser;
        parser.feed(raw);
        http::ParseResult r = parser.next();
        REQUIRE(r.kind == http::ParseResult::complete);
        return http::respond(r, stats);
    };
    const http::Reply get = reply_to("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    const http::Reply head = reply_to("HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    const std::size_t head_end = get.bytes.find("\r\n\r\n") + 4;
    CHECK(head.bytes == get.bytes.substr(0, head_end));  // same status and headers, Content-Length too
    const http::Reply big = reply_to("HEAD /bytes?n=1000000 HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(big.bytes.find("\r\nContent-Length: 1000000\r\n") != std::string::npos);
    CHECK(big.bytes.ends_with("\r\n\r\n"));
    CHECK(big.rest.done());
    CHECK(reply_to("HEAD /stats HTTP/1.1\r\nHost: t\r\n\r\n").bytes.starts_with("HTTP/1.1 200 OK\r\n"));
}

TEST_CASE("405 with Allow for a known method a route does not take, 501 for an unknown method", "[router]") {
    common::Stats stats("unit");
    auto route = [&](const std::string& raw) {
        Outcome o = parse(raw);
        REQUIRE(o.requests.size() == 1);
        return http::handle(o.requests[0], stats);
    };
    http::Response post = route("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    CHECK(post.status == 405);
    REQUIRE(post.headers.size() == 1);
    CHECK(post.headers[0].name == "Allow");
    CHECK(post.headers[0].value == "GET, HEAD");
    http::Response get_echo = route("GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(get_echo.status == 405);
    CHECK(get_echo.headers.at(0).value == "POST");
    CHECK(route("DELETE /stats HTTP/1.1\r\nHost: t\r\n\r\n").status == 405);
    CHECK(route("BREW / HTTP/1.1\r\nHost: t\r\n\r\n").status == 501);
    CHECK(route("get / HTTP/1.1\r\nHost: t\r\n\r\n").status == 501);  // methods are case-sensitive
}

TEST_CASE("the client-side response parser", "[client]") {
    http::ResponseParser p;
    const std::string wire = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhelloHTTP/1.1 404 Not Found\r\n";
    http::ClientResponse r;
    for (char c : wire.substr(0, 62)) {
        p.feed(std::string_view(&c, 1));
    }
    REQUIRE(p.next(r));
    CHECK(r.status == 200);
    CHECK(r.body == "hello");
    CHECK_FALSE(r.keep_alive);
    p.feed(wire.substr(62));
    CHECK_FALSE(p.next(r));
    p.feed("Content-Length: 0\r\n\r\n");
    REQUIRE(p.next(r));
    CHECK(r.status == 404);
}
