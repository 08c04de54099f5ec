#include "http_client.hpp"

#include <charconv>
#include <strings.h>

namespace http {

const std::string* ClientResponse::header(std::string_view name) const {
    for (const Header& h : headers)
        if (h.name.size() == name.size() && strncasecmp(h.name.data(), name.data(), name.size()) == 0)
            return &h.value;
    return nullptr;
}

bool ResponseParser::next(ClientResponse& out) {
    if (failed_) return false;
    std::size_t head_end = buffer_.find("\r\n\r\n");
    if (head_end == std::string::npos) return false;
    std::string_view head(buffer_.data(), head_end);

    ClientResponse response;
    std::size_t line_end = head.find("\r\n");
    std::string_view status_line = head.substr(0, line_end);
    // "HTTP/1.1 200 OK"
    auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || !is_digit(status_line[7]) ||
        status_line[8] != ' ' || !is_digit(status_line[9]) || !is_digit(status_line[10]) ||
        !is_digit(status_line[11])) {
        failed_ = true;
        return false;
    }
    std::from_chars(status_line.data() + 9, status_line.data() + 12, response.status);
    std::size_t content_length = 0;
    bool has_length = false;
    while (line_end != std::string_view::npos) {
        head.remove_prefix(line_end + 2);
        line_end = head.find("\r\n");
        std::string_view line = head.substr(0, line_end);
        std::size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
            failed_ = true;
            return false;
        }
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
        response.headers.push_back({std::string(line.substr(0, colon)), std::string(value)});
    }
    if (const std::string* cl = response.header("Content-Length")) {
        auto [end, ec] = std::from_chars(cl->data(), cl->data() + cl->size(), content_length);
        has_length = ec == std::errc() && end == cl->data() + cl->size();
    }
    if (!has_length) {
        failed_ = true;
        return false;
    }
    if (const std::string* c = response.header("Connection")) response.keep_alive = strcasecmp(c->c_str(), "close") != 0;
    const std::size_t body_start = head_end + 4;
    if (buffer_.size() - body_start < content_length) return false;
    response.body.assign(buffer_, body_start, content_length);
    buffer_.erase(0, body_start + content_length);
    out = std::move(response);
    return true;
}

}  // namespace http
