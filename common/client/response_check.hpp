// Checks one response against what the request must get, as its bytes
// arrive, without keeping the body: a soak reads millions of responses, some
// of a few hundred KiB in 2 KiB pieces, so it must not buffer them whole or
// search them again on every piece (http::ResponseParser does both, which is
// right for the tests' short answers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace http {

// What a well-behaved request must get back.
struct Expectation {
    enum class Body {
        exact,    // exactly `text`
        pattern,  // `length` bytes of the /bytes pattern (http::pattern_byte), from offset 0
        any,      // any body (a /stats answer); only its length is checked
    };
    int status = 200;
    Body body = Body::exact;
    std::string text{};        // for exact (the braces: designated initializers may leave it out)
    std::uint64_t length = 0;  // for pattern
    bool head = false;         // a HEAD request: Content-Length as for GET, no body
    bool must_close = false;   // the response must say "Connection: close"

    // The length Content-Length must have, or -1 when any length will do.
    long long expected_length() const;
};

// Feed it the connection's bytes; it takes those of one response and leaves
// the rest (the next pipelined response) to the caller.
class ResponseCheck {
public:
    explicit ResponseCheck(Expectation expected) : expected_(std::move(expected)) {}

    // Consumes bytes of this response from the front of `bytes` and returns
    // how many it took: all of them, or fewer once the response is complete
    // or has failed. A failed check takes nothing more.
    std::size_t feed(std::string_view bytes);

    bool complete() const { return state_ == State::complete; }
    bool failed() const { return state_ == State::failed; }
    const std::string& error() const { return error_; }  // why it failed, for the report
    // The server's word: will the connection stay open after this response?
    bool keep_alive() const { return keep_alive_; }
    int status() const { return status_; }

private:
    enum class State { head, body, complete, failed };
    std::size_t fail(std::string why);
    bool parse_head();  // false: failed
    std::size_t take_body(std::string_view bytes);

    Expectation expected_;
    State state_ = State::head;
    std::string head_;
    int status_ = 0;
    bool keep_alive_ = true;
    std::uint64_t body_length_ = 0;
    std::uint64_t body_seen_ = 0;
    std::string error_;
};

}  // namespace http
