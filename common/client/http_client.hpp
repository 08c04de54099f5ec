// The client side of the project's HTTP subset: an incremental response
// parser, shared by the test harness and the load generator.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "http.hpp"

namespace http {

struct ClientResponse {
    int status = 0;
    std::vector<Header> headers;
    std::string body;
    bool keep_alive = true;  // false when the server said "Connection: close"

    const std::string* header(std::string_view name) const;
};

// Parses responses that carry Content-Length (every response of ours does).
// feed() bytes, then next() until it returns false. A malformed response
// sets failed(); the connection is then useless.
class ResponseParser {
public:
    void feed(std::string_view bytes) { buffer_.append(bytes); }
    bool next(ClientResponse& out);
    bool failed() const { return failed_; }
    std::size_t buffered() const { return buffer_.size(); }

private:
    std::string buffer_;
    bool failed_ = false;
};

}  // namespace http
