// A libFuzzer target for the HTTP parser and the router (make fuzz).
//
// Crashes are only half of what it looks for: AddressSanitizer and
// UndefinedBehaviorSanitizer catch memory and arithmetic errors, and the
// checks below abort on a broken promise of http.hpp:
//   - any split of the same bytes yields the same requests (the input is
//     parsed whole, then again in small pieces whose sizes the first byte
//     seeds), so a server that reads one byte at a time sees what one that
//     reads 64 KiB sees;
//   - after an error, next() keeps returning that error;
//   - a complete request is well formed (a method, a path starting with '/',
//     HTTP/1.x, a Host header from 1.1 on, a body within the limit);
//   - an error is one of the statuses the parser documents;
//   - what the parser keeps while it waits stays bounded;
//   - every reply starts with a status line, ends its head with a blank line,
//     and its Content-Length counts exactly the body that follows (none for
//     HEAD and 100 Continue).
// /sleep and /work are parsed but not routed: they would only sleep or spin.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"
#include "stats.hpp"

namespace {

[[noreturn]] void broken(const char* promise, std::string_view detail = {}) {
    std::fprintf(stderr, "fuzz_http_parser: broken promise: %s %.*s\n", promise, static_cast<int>(detail.size()),
                 detail.data());
    std::abort();
}

void check(bool ok, const char* promise, std::string_view detail = {}) {
    if (!ok) broken(promise, detail);
}

// What one parse result says, in a form two parses can compare.
std::string describe(const http::ParseResult& result) {
    if (result.kind == http::ParseResult::error) return "error " + std::to_string(result.error_status);
    const http::Request& r = result.request;
    std::string text = r.method + ' ' + r.target + " 1." + std::to_string(r.minor_version) +
                       (r.keep_alive ? " keep-alive" : " close") + " body " + std::to_string(r.body.size()) + ':' +
                       r.body;
    for (const http::Header& h : r.headers) text += '\n' + h.name + ": " + h.value;
    return text;
}

bool is_documented_error(int status) {
    for (int s : {400, 413, 414, 417, 431, 501, 505})
        if (status == s) return true;
    return false;
}

void check_request(const http::Request& r) {
    check(!r.method.empty(), "a request has a method");
    check(!r.path.empty() && r.path.front() == '/', "a path starts with '/'", r.path);
    // HTTP/1.2 to 1.9 are taken as 1.1 (RFC 9110 section 6.2), so they need Host too.
    check(r.minor_version >= 0 && r.minor_version <= 9, "HTTP/1.x with one digit");
    check(r.minor_version == 0 || r.header("host") != nullptr, "an HTTP/1.1 request has a Host header");
    check(r.body.size() <= http::kMaxBodyBytes, "a body within kMaxBodyBytes");
}

// The value of the Content-Length header in a serialized head, or -1.
long content_length(std::string_view head) {
    const std::string_view name = "\r\nContent-Length: ";
    const std::size_t at = head.find(name);
    if (at == std::string_view::npos) return -1;
    long value = 0;
    for (std::size_t i = at + name.size(); i < head.size() && head[i] >= '0' && head[i] <= '9'; ++i)
        value = value * 10 + (head[i] - '0');
    return value;
}

void check_reply(http::ParseResult& result, common::Stats& stats) {
    if (result.kind == http::ParseResult::complete &&
        (result.request.path == "/sleep" || result.request.path == "/work"))
        return;
    const bool head_request = result.kind == http::ParseResult::complete && result.request.method == "HEAD";
    const http::Reply reply = http::respond(result, stats);
    const std::string_view bytes = reply.bytes;
    check(bytes.starts_with("HTTP/1.1 "), "a reply starts with a status line", bytes.substr(0, 40));
    const std::size_t end = bytes.find("\r\n\r\n");
    check(end != std::string_view::npos, "a reply's head ends with a blank line");
    const std::string_view head = bytes.substr(0, end + 2);
    const std::size_t body = bytes.size() - (end + 4);
    if (result.kind == http::ParseResult::interim) {
        check(bytes == "HTTP/1.1 100 Continue\r\n\r\n", "an interim reply is 100 Continue and nothing else");
        return;
    }
    const long length = content_length(head);
    check(length >= 0, "a final reply has Content-Length", head);
    if (head_request) {
        check(body == 0 && reply.rest.done(), "a reply to HEAD has no body");
    } else {
        check(static_cast<std::uint64_t>(length) == body + reply.rest.remaining(),
              "Content-Length counts the body exactly", head);
    }
    if (result.kind == http::ParseResult::error) check(reply.close_after, "an error reply closes the connection");
}

// Feeds input in the given pieces and returns every result up to and
// including the first error (the parser's promise is checked at each step).
std::vector<std::string> parse(std::string_view input, const std::vector<std::size_t>& pieces,
                               common::Stats* stats) {
    http::RequestParser parser;
    std::vector<std::string> seen;
    std::size_t largest_piece = 0;
    for (std::size_t piece : pieces) {
        largest_piece = std::max(largest_piece, piece);
        parser.feed(input.substr(0, piece));
        input.remove_prefix(piece);
        for (;;) {
            http::ParseResult result = parser.next();
            if (result.kind == http::ParseResult::need_more) {
                check(parser.buffered() <= http::kMaxHeaderBytes + http::kMaxBodyBytes + largest_piece,
                      "what the parser keeps stays bounded");
                break;
            }
            if (stats != nullptr) check_reply(result, *stats);
            if (result.kind == http::ParseResult::interim) continue;  // only one split sees it
            if (result.kind == http::ParseResult::complete) check_request(result.request);
            seen.push_back(describe(result));
            if (result.kind == http::ParseResult::error) {
                check(is_documented_error(result.error_status), "a documented error status", seen.back());
                const http::ParseResult again = parser.next();
                check(again.kind == http::ParseResult::error && again.error_status == result.error_status,
                      "after an error, next() returns the same error");
                return seen;
            }
        }
    }
    return seen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    std::uint32_t seed = data[0];
    const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

    common::Stats stats("fuzz");
    const std::vector<std::string> whole = parse(input, {input.size()}, &stats);

    // Pieces of 1 to 16 bytes, from a small linear congruential generator.
    std::vector<std::size_t> pieces;
    for (std::size_t left = input.size(); left > 0;) {
        seed = seed * 1103515245u + 12345u;
        const std::size_t piece = std::min<std::size_t>(left, 1 + (seed >> 16) % 16);
        pieces.push_back(piece);
        left -= piece;
    }
    const std::vector<std::string> split = parse(input, pieces, nullptr);
    check(whole == split, "any split of the bytes yields the same requests",
          whole.size() == split.size() ? "(same count, different request)" : "(different count)");
    return 0;
}
