#include "response_check.hpp"

#include <strings.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "http.hpp"

namespace http {

namespace {

constexpr std::size_t kMaxResponseHead = 8 * 1024;  // ours are a few hundred bytes
constexpr std::size_t kRun = 4096;                  // bytes compared at a time

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

long long Expectation::expected_length() const {
    switch (body) {
        case Body::exact: return static_cast<long long>(text.size());
        case Body::pattern: return static_cast<long long>(length);
        case Body::any: return -1;
    }
    return -1;
}

std::size_t ResponseCheck::fail(std::string why) {
    state_ = State::failed;
    error_ = std::move(why);
    return 0;
}

std::size_t ResponseCheck::feed(std::string_view bytes) {
    std::size_t taken = 0;
    if (state_ == State::head) {
        // Look for the blank line from a little before the new bytes: it may
        // straddle two pieces.
        const std::size_t from = head_.size() >= 3 ? head_.size() - 3 : 0;
        const std::size_t room = kMaxResponseHead + 4 - head_.size();
        head_.append(bytes.substr(0, room));
        const std::size_t end = head_.find("\r\n\r\n", from);
        if (end == std::string::npos) {
            if (head_.size() > kMaxResponseHead) return fail("no end of the response head within 8 KiB");
            return bytes.size();
        }
        // Give back what belongs to the body (or to the next response).
        const std::size_t appended = std::min(room, bytes.size());
        const std::size_t extra = head_.size() - (end + 4);
        taken = appended - extra;
        head_.resize(end + 4);
        if (!parse_head()) return 0;
        bytes.remove_prefix(taken);
    }
    if (state_ == State::body) taken += take_body(bytes);
    return taken;
}

bool ResponseCheck::parse_head() {
    std::string_view head(head_);
    head.remove_suffix(4);  // the blank line
    std::size_t line_end = head.find("\r\n");
    const std::string_view status_line = head.substr(0, line_end);
    // "HTTP/1.1 200 OK"
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (status_line.size() < 12 || !status_line.starts_with("HTTP/1.") || !digit(status_line[7]) ||
        status_line[8] != ' ' || !digit(status_line[9]) || !digit(status_line[10]) || !digit(status_line[11])) {
        fail("malformed status line '" + std::string(status_line.substr(0, 80)) + "'");
        return false;
    }
    std::from_chars(status_line.data() + 9, status_line.data() + 12, status_);
    bool has_length = false;
    bool said_close = false;
    while (line_end != std::string_view::npos) {
        head.remove_prefix(line_end + 2);
        line_end = head.find("\r\n");
        const std::string_view line = head.substr(0, line_end);
        const std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            fail("header line without a colon");
            return false;
        }
        const std::string_view name = line.substr(0, colon), value = trim(line.substr(colon + 1));
        if (iequals(name, "Content-Length")) {
            auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), body_length_);
            has_length = ec == std::errc() && end == value.data() + value.size();
            if (!has_length) {
                fail("malformed Content-Length '" + std::string(value) + "'");
                return false;
            }
        } else if (iequals(name, "Connection")) {
            said_close = iequals(value, "close");
        }
    }
    keep_alive_ = !said_close;
    if (!has_length) {
        fail("no Content-Length");
        return false;
    }
    if (status_ != expected_.status) {
        fail("status " + std::to_string(status_) + ", expected " + std::to_string(expected_.status));
        return false;
    }
    if (expected_.must_close && !said_close) {
        fail("no \"Connection: close\" where the connection must close");
        return false;
    }
    const long long want = expected_.expected_length();
    if (want >= 0 && body_length_ != static_cast<std::uint64_t>(want)) {
        fail("Content-Length " + std::to_string(body_length_) + ", expected " + std::to_string(want));
        return false;
    }
    if (expected_.head) body_length_ = 0;  // HEAD: the length GET would have, and no body
    state_ = body_length_ == 0 ? State::complete : State::body;
    return true;
}

std::size_t ResponseCheck::take_body(std::string_view bytes) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(bytes.size(), body_length_ - body_seen_));
    const std::string_view piece = bytes.substr(0, n);
    switch (expected_.body) {
        case Expectation::Body::exact:
            if (piece != std::string_view(expected_.text).substr(static_cast<std::size_t>(body_seen_), n))
                return fail("the body differs from what was expected");
            break;
        case Expectation::Body::pattern: {
            // The pattern repeats every kPatternPeriod bytes: compare runs against one
            // copy of it with memcmp, not byte by byte (gigabytes go by).
            static const std::string runs = [] {
                std::string s;
                for (std::uint64_t i = 0; i < kPatternPeriod + kRun; ++i) s += pattern_byte(i);
                return s;
            }();
            for (std::size_t done = 0; done < n;) {
                const std::size_t len = std::min(kRun, n - done);
                const std::size_t phase = static_cast<std::size_t>((body_seen_ + done) % kPatternPeriod);
                if (std::memcmp(piece.data() + done, runs.data() + phase, len) != 0)
                    return fail("the /bytes body is wrong near offset " + std::to_string(body_seen_ + done));
                done += len;
            }
            break;
        }
        case Expectation::Body::any:
            break;
    }
    body_seen_ += n;
    if (body_seen_ == body_length_) state_ = State::complete;
    return n;
}

}  // namespace http
