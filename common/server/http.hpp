// The HTTP/1.1 subset every chapter speaks. Nothing here touches a socket:
// the parser eats bytes and the router turns a request into a response, so a
// blocking server and an event loop can share them unchanged.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stats.hpp"

namespace http {

inline constexpr std::size_t kMaxHeaderBytes = 8 * 1024;     // request line + headers
inline constexpr std::size_t kMaxBodyBytes = 1024 * 1024;    // POST /echo
inline constexpr long kMaxDelayMs = 10'000;                  // /sleep and /work
inline constexpr long kMaxBytesResponse = 64L * 1024 * 1024; // /bytes

struct Header {
    std::string name;
    std::string value;
};

struct Request {
    std::string method;
    std::string target;  // as sent, "/sleep?ms=100" or "http://host/sleep?ms=100"
    std::string path;    // "/sleep"
    std::string query;   // "ms=100"
    int minor_version = 1;
    std::vector<Header> headers;
    std::string body;
    bool keep_alive = true;

    // The first header with this name (case-insensitive), or nullptr.
    const std::string* header(std::string_view name) const;
};

struct ParseResult {
    // interim: the head of a request with "Expect: 100-continue" is here and
    // its body is not; respond() makes that "100 Continue", so the client
    // sends the body (RFC 9110 section 10.1.1). Then call next() again.
    enum Kind { need_more, complete, error, interim };
    Kind kind = need_more;
    Request request;         // when kind == complete
    int error_status = 0;    // when kind == error: 400, 413, 414, 417, 431, 501 or 505
    std::string error_text;  // why, for the response body
};

// Incremental request parser. feed() it whatever recv() returned, then call
// next() until it says need_more. Any split of the same bytes, one byte at a
// time included, yields the same requests; bytes after a request are kept for
// the next one (pipelining). After an error the connection must be closed:
// next() keeps returning the same error.
class RequestParser {
public:
    void feed(std::string_view bytes);
    ParseResult next();

    std::size_t buffered() const { return buffer_.size() - start_; }

private:
    ParseResult fail(int status, std::string text);
    ParseResult fail_too_large(std::string_view data);
    ParseResult parse_head(std::string_view head);
    ParseResult take_body();
    void consume(std::size_t n);

    std::string buffer_;
    std::size_t start_ = 0;  // bytes before start_ belong to requests already returned
    std::size_t scan_ = 0;   // where to resume looking for the blank line, relative to start_
    bool in_body_ = false;
    std::size_t body_length_ = 0;
    bool expect_continue_ = false;  // the pending request asked for "100 Continue"
    Request pending_;  // head parsed, body still arriving
    ParseResult failed_;
};

// A body that is made as it is sent rather than held whole: the /bytes
// pattern, from an offset on. A server appends the next piece to its output
// whenever the output has room, so a response of 64 MiB costs a connection
// no more memory than its output buffer, whatever the client reads.
class GeneratedBody {
public:
    GeneratedBody() = default;
    GeneratedBody(std::uint64_t offset, std::uint64_t size) : offset_(offset), end_(offset + size) {}

    bool done() const { return offset_ == end_; }
    std::uint64_t remaining() const { return end_ - offset_; }
    // Appends the next min(max, remaining()) bytes to out.
    void append_to(std::string& out, std::size_t max);

private:
    std::uint64_t offset_ = 0;
    std::uint64_t end_ = 0;
};

struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    GeneratedBody generated;      // sent after body (Content-Length counts both)
    std::vector<Header> headers;  // extra headers, such as Allow
    bool close = false;           // the connection must close after this response
};

std::string_view reason_phrase(int status);

// Status line, headers and body in one buffer, so one send() carries all of
// it and Nagle's algorithm never holds the body back waiting for an ACK.
// A generated body is not included: the caller sends it after these bytes.
std::string serialize(const Response& response, bool keep_alive);

// The router. /sleep and /work run inline: they block the calling thread,
// which is exactly what the chapters want to show. HEAD is answered as GET
// (respond() leaves the body out); a method no route takes is 405 with Allow,
// a method this server does not know at all is 501.
Response handle(const Request& request, const common::Stats& stats);

// A response for a request the parser rejected; it always closes.
Response error_response(int status, std::string_view text);

// /sleep and /work recognised without being run, for a server that runs them
// somewhere else than handle() would (chapter 10: /sleep on a timer of the
// loop, /work on a worker thread). nullopt for any other request, and for a
// /sleep or /work that handle() refuses (bad ms, a method other than GET or
// HEAD): those go to handle() as usual.
struct SlowRequest {
    enum Kind { sleep, work } kind;
    std::chrono::milliseconds ms;
};
std::optional<SlowRequest> slow_request(const Request& request);
// What /sleep or /work answers once the wait or the work is over (the same
// response handle() makes after running it inline).
Response slow_response(const SlowRequest& slow);
// /work's computation: uses `amount` of the calling thread's CPU time. A
// thread that shares its core with others takes longer in wall-clock time.
void burn_cpu(std::chrono::milliseconds amount);

// What a server sends for one parse result, and whether to close afterwards.
// Counts the request in stats. A server that has been asked to stop answers
// with "Connection: close". bytes come first, then rest, made piece by piece
// as the socket drains (a blocking server sends it with common::send_reply).
struct Reply {
    std::string bytes;
    GeneratedBody rest;
    bool close_after = false;
};
Reply respond(ParseResult& result, common::Stats& stats);
// The part of respond() after the handler: `response` serialized for
// `request` (HEAD leaves the body out; Connection: close when the client or
// the response asks for it, or the server is stopping). respond() is: count
// the request, run handle(), then this. It does not count the request.
Reply reply_to(const Request& request, const Response& response);

// The byte at offset i of every /bytes response, so a client can verify it.
// The pattern repeats every kPatternPeriod bytes.
inline constexpr std::size_t kPatternPeriod = 64;
char pattern_byte(std::uint64_t offset);

}  // namespace http
