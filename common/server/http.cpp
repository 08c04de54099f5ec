#include "http.hpp"

#include <time.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include "stop.hpp"

namespace http {

namespace {

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

// RFC 9110 token characters (method and header names).
bool is_tchar(char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
    return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_token(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), is_tchar); }

std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

// Splits "a, b ,c" and calls f for each non-empty element.
template <typename F>
void for_each_list_item(std::string_view list, F f) {
    while (!list.empty()) {
        std::size_t comma = list.find(',');
        std::string_view item = trim_ows(list.substr(0, comma));
        if (!item.empty()) f(item);
        if (comma == std::string_view::npos) break;
        list.remove_prefix(comma + 1);
    }
}

std::optional<std::uint64_t> parse_digits(std::string_view s) {
    if (s.empty() || !std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return std::nullopt;
    std::uint64_t value = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return value;
}

bool is_hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// uri-host [ ":" port ] (RFC 9110 section 7.2, RFC 3986 section 3.2.2): a
// bracketed IP literal, or a registered name or IPv4 address, then an
// optional port of digits. An empty value is valid: it says the target has
// no authority.
bool is_valid_host(std::string_view value) {
    std::string_view port;
    if (value.starts_with('[')) {
        const std::size_t close = value.find(']');
        if (close == std::string_view::npos) return false;
        const std::string_view literal = value.substr(1, close - 1);
        if (literal.empty() ||
            !std::all_of(literal.begin(), literal.end(), [](char c) { return is_hex(c) || c == ':' || c == '.'; }))
            return false;
        value.remove_prefix(close + 1);
        if (!value.empty() && value.front() != ':') return false;
        port = value.empty() ? value : value.substr(1);
    } else {
        const std::size_t colon = value.find(':');
        const std::string_view name = value.substr(0, colon);
        for (std::size_t i = 0; i < name.size(); ++i) {
            const char c = name[i];
            if (c == '%') {  // pct-encoded
                if (i + 2 >= name.size() || !is_hex(name[i + 1]) || !is_hex(name[i + 2])) return false;
                i += 2;
            } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                         std::string_view("-._~!$&'()*+,;=").find(c) != std::string_view::npos)) {
                return false;
            }
        }
        port = colon == std::string_view::npos ? std::string_view() : value.substr(colon + 1);
    }
    return std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
}

}  // namespace

const std::string* Request::header(std::string_view name) const {
    for (const Header& h : headers)
        if (iequals(h.name, name)) return &h.value;
    return nullptr;
}

// ---- parser -------------------------------------------------------------------

void RequestParser::feed(std::string_view bytes) {
    // Drop what earlier requests used once it is at least half the buffer, so
    // pipelined requests cost amortised O(1) copying each.
    if (start_ > 0 && start_ >= buffer_.size() / 2) {
        buffer_.erase(0, start_);
        start_ = 0;
    }
    buffer_.append(bytes);
}

void RequestParser::consume(std::size_t n) {
    start_ += n;
    scan_ = 0;
}

// The head is over the limit. If the request line alone fills it, the target
// is what is too long: 414 (RFC 9110 section 15.5.15); otherwise the header
// fields are: 431 (RFC 6585 section 5).
ParseResult RequestParser::fail_too_large(std::string_view data) {
    if (data.substr(0, kMaxHeaderBytes).find('\n') == std::string_view::npos)
        return fail(414, "request line is over 8 KiB");
    return fail(431, "request header block is over 8 KiB");
}

ParseResult RequestParser::fail(int status, std::string text) {
    failed_.kind = ParseResult::error;
    failed_.error_status = status;
    failed_.error_text = std::move(text);
    return failed_;
}

ParseResult RequestParser::next() {
    if (failed_.kind == ParseResult::error) return failed_;
    if (in_body_) return take_body();

    std::string_view data(buffer_);
    data.remove_prefix(start_);
    // RFC 9112 2.2: a server should ignore empty lines before a request line
    // (some clients send an extra CRLF after a POST body).
    while (data.starts_with("\n") || data.starts_with("\r\n")) {
        const std::size_t n = data[0] == '\n' ? 1 : 2;
        consume(n);
        data.remove_prefix(n);
    }

    // The head ends at an empty line: "\r\n\r\n", or "\n\n" from clients that
    // send bare LF. Resume where the previous call stopped looking.
    std::size_t head_end = std::string_view::npos;
    std::size_t i = scan_;
    while ((i = data.find('\n', i)) != std::string_view::npos) {
        if (i + 1 < data.size() && data[i + 1] == '\n') {
            head_end = i + 2;
            break;
        }
        if (i + 2 < data.size() && data[i + 1] == '\r' && data[i + 2] == '\n') {
            head_end = i + 3;
            break;
        }
        if (i + 1 >= data.size() || (i + 2 >= data.size() && data[i + 1] == '\r')) break;  // need more
        ++i;
    }
    if (head_end == std::string_view::npos) {
        if (data.size() > kMaxHeaderBytes) return fail_too_large(data);
        scan_ = i == std::string_view::npos ? data.size() : i;
        return {};
    }
    if (head_end > kMaxHeaderBytes) return fail_too_large(data);

    ParseResult head = parse_head(data.substr(0, head_end));
    if (head.kind == ParseResult::error) return head;
    consume(head_end);
    if (body_length_ == 0) {
        ParseResult done;
        done.kind = ParseResult::complete;
        done.request = std::move(pending_);
        pending_ = Request{};
        return done;
    }
    in_body_ = true;
    // The client waits for a "100 Continue" before it sends the body; if the
    // body came anyway, the final response is answer enough.
    if (std::exchange(expect_continue_, false) && buffered() < body_length_) {
        ParseResult go_on;
        go_on.kind = ParseResult::interim;
        return go_on;
    }
    return take_body();
}

ParseResult RequestParser::take_body() {
    if (buffered() < body_length_) return {};
    ParseResult done;
    done.kind = ParseResult::complete;
    done.request = std::move(pending_);
    done.request.body.assign(buffer_, start_, body_length_);
    pending_ = Request{};
    consume(body_length_);
    in_body_ = false;
    body_length_ = 0;
    return done;
}

ParseResult RequestParser::parse_head(std::string_view head) {
    Request request;
    std::vector<std::string_view> lines;
    while (!head.empty()) {
        std::size_t nl = head.find('\n');
        std::string_view line = head.substr(0, nl);
        head.remove_prefix(nl + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty()) break;  // the blank line that ends the head
        if (line.find('\r') != std::string_view::npos || line.find('\0') != std::string_view::npos)
            return fail(400, "stray CR or NUL in the request head");
        lines.push_back(line);
    }
    if (lines.empty()) return fail(400, "empty request");

    // Request line: METHOD SP TARGET SP HTTP/1.x
    std::string_view line = lines.front();
    std::size_t sp1 = line.find(' ');
    std::size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
        return fail(400, "malformed request line");
    std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (!is_token(method)) return fail(400, "malformed method");
    if (target.empty() || std::any_of(target.begin(), target.end(), [](char c) { return c <= ' ' || c == 0x7f; }))
        return fail(400, "malformed request target");
    // origin-form "/path?query", or absolute-form "http://host/path?query",
    // which a server MUST accept (RFC 9112 section 3.2.2).
    std::string_view path_and_query = target;
    if (target.front() != '/') {
        const std::size_t scheme_end = target.find("://");
        if (scheme_end == std::string_view::npos ||
            !(iequals(target.substr(0, scheme_end), "http") || iequals(target.substr(0, scheme_end), "https")))
            return fail(400, "malformed request target");
        std::string_view rest = target.substr(scheme_end + 3);
        const std::size_t path_start = rest.find_first_of("/?");
        const std::string_view authority = rest.substr(0, path_start);
        if (authority.empty() || !is_valid_host(authority)) return fail(400, "malformed authority in the request target");
        path_and_query = path_start == std::string_view::npos ? std::string_view() : rest.substr(path_start);
    }
    if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
        version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9')
        return fail(400, "malformed HTTP version");
    if (version[5] != '1') return fail(505, "only HTTP/1.x is supported");
    request.method = std::string(method);
    request.target = std::string(target);
    std::size_t question = path_and_query.find('?');
    request.path = std::string(path_and_query.substr(0, question));
    if (request.path.empty()) request.path = "/";  // "http://host" or "http://host?q"
    if (question != std::string_view::npos) request.query = std::string(path_and_query.substr(question + 1));
    request.minor_version = version[7] - '0';

    // Header fields.
    std::optional<std::uint64_t> content_length;
    bool keep_alive = request.minor_version >= 1;
    int hosts = 0;
    bool expect_continue = false;
    for (std::size_t k = 1; k < lines.size(); ++k) {
        std::string_view field = lines[k];
        if (field.front() == ' ' || field.front() == '\t') return fail(400, "obsolete header line folding");
        std::size_t colon = field.find(':');
        if (colon == std::string_view::npos) return fail(400, "header line without a colon");
        std::string_view name = field.substr(0, colon);
        std::string_view value = trim_ows(field.substr(colon + 1));
        if (!is_token(name)) return fail(400, "malformed header name");
        if (iequals(name, "Content-Length")) {
            std::optional<std::uint64_t> n = parse_digits(value);
            if (!n) return fail(400, "invalid Content-Length");
            if (content_length && *content_length != *n) return fail(400, "conflicting Content-Length headers");
            content_length = n;
        } else if (iequals(name, "Transfer-Encoding")) {
            // Chunked bodies are out of this project's scope; guessing the body's
            // end wrongly would desynchronise the connection (request smuggling).
            return fail(501, "Transfer-Encoding is not supported");
        } else if (iequals(name, "Host")) {
            // RFC 9112 section 3.2: 400 for more than one, or an invalid one.
            if (++hosts > 1) return fail(400, "more than one Host header");
            if (!is_valid_host(value)) return fail(400, "invalid Host header");
        } else if (iequals(name, "Expect")) {
            // 100-continue is the only expectation there is (RFC 9110 section
            // 10.1.1); an HTTP/1.0 client cannot know it, so it is ignored there.
            if (!iequals(value, "100-continue")) return fail(417, "only Expect: 100-continue is supported");
            expect_continue = request.minor_version >= 1;
        } else if (iequals(name, "Connection")) {
            for_each_list_item(value, [&](std::string_view option) {
                if (iequals(option, "close")) keep_alive = false;
                else if (iequals(option, "keep-alive") && request.minor_version == 0) keep_alive = true;
            });
        }
        request.headers.push_back({std::string(name), std::string(value)});
    }
    // A "close" anywhere wins over "keep-alive".
    for (const Header& h : request.headers)
        if (iequals(h.name, "Connection"))
            for_each_list_item(h.value, [&](std::string_view option) {
                if (iequals(option, "close")) keep_alive = false;
            });
    request.keep_alive = keep_alive;
    // Even with an absolute-form target, which then overrides it.
    if (request.minor_version >= 1 && hosts == 0) return fail(400, "an HTTP/1.1 request needs a Host header");

    if (content_length && *content_length > kMaxBodyBytes) return fail(413, "request body is over 1 MiB");
    body_length_ = content_length.value_or(0);
    expect_continue_ = expect_continue;
    pending_ = std::move(request);
    ParseResult ok;
    ok.kind = ParseResult::complete;
    return ok;
}

// ---- responses ------------------------------------------------------------------

std::string_view reason_phrase(int status) {
    switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 413: return "Content Too Large";
        case 414: return "URI Too Long";
        case 417: return "Expectation Failed";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 503: return "Service Unavailable";
        case 505: return "HTTP Version Not Supported";
        default: return "Unknown";
    }
}

std::string serialize(const Response& response, bool keep_alive) {
    std::string head = "HTTP/1.1 " + std::to_string(response.status) + " " + std::string(reason_phrase(response.status)) +
                       "\r\nContent-Type: " + response.content_type +
                       "\r\nContent-Length: " + std::to_string(response.body.size() + response.generated.remaining()) +
                       (keep_alive && !response.close ? "\r\nConnection: keep-alive" : "\r\nConnection: close");
    for (const Header& h : response.headers) head += "\r\n" + h.name + ": " + h.value;
    head += "\r\n\r\n";
    std::string wire;
    wire.reserve(head.size() + response.body.size());
    wire += head;
    wire += response.body;
    return wire;
}

Response error_response(int status, std::string_view text) {
    Response r;
    r.status = status;
    r.body = std::string(reason_phrase(status)) + ": " + std::string(text) + "\n";
    r.close = true;
    return r;
}

namespace {
constexpr std::string_view kAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-\n";
static_assert(kAlphabet.size() == kPatternPeriod);
}  // namespace

char pattern_byte(std::uint64_t offset) { return kAlphabet[offset % kAlphabet.size()]; }

void GeneratedBody::append_to(std::string& out, std::size_t max) {
    std::uint64_t n = std::min<std::uint64_t>(max, remaining());
    out.reserve(out.size() + n);
    // The pattern repeats every 64 bytes: copy runs of the alphabet, not bytes.
    while (n > 0) {
        const std::size_t at = offset_ % kAlphabet.size();
        const std::size_t run = static_cast<std::size_t>(std::min<std::uint64_t>(n, kAlphabet.size() - at));
        out.append(kAlphabet.substr(at, run));
        offset_ += run;
        n -= run;
    }
}

namespace {

// The value of NAME=V in a query string, as a number within [min, max].
std::optional<long> query_number(std::string_view query, std::string_view name, long min, long max) {
    while (!query.empty()) {
        std::size_t amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        if (pair.size() > name.size() && pair.substr(0, name.size()) == name && pair[name.size()] == '=') {
            std::string_view digits = pair.substr(name.size() + 1);
            std::optional<std::uint64_t> n = parse_digits(digits);
            if (!n || *n < static_cast<std::uint64_t>(min) || *n > static_cast<std::uint64_t>(max)) return std::nullopt;
            return static_cast<long>(*n);
        }
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
    }
    return std::nullopt;
}

Response text(std::string body) {
    Response r;
    r.body = std::move(body);
    return r;
}

Response method_not_allowed(std::string_view allow) {
    Response r;
    r.status = 405;
    r.body = "Method Not Allowed\n";
    r.headers.push_back({"Allow", std::string(allow)});
    return r;
}

Response bad_parameter(std::string_view what) {
    Response r;
    r.status = 400;
    r.body = "Bad Request: " + std::string(what) + "\n";
    return r;
}

}  // namespace

// The methods RFC 9110 section 9 defines, and PATCH (RFC 5789): a route may
// not take them (405), but they are known (any other method is 501).
bool is_known_method(std::string_view method) {
    for (std::string_view known : {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
        if (method == known) return true;
    return false;
}

Response handle(const Request& request, const common::Stats& stats) {
    const std::string& path = request.path;
    if (!is_known_method(request.method)) {
        Response r;
        r.status = 501;
        r.body = "Not Implemented: unknown method\n";
        return r;
    }
    // Every general-purpose server supports GET and HEAD (RFC 9110 section 9.1).
    const bool get = request.method == "GET" || request.method == "HEAD";
    if (path == "/") {
        if (!get) return method_not_allowed("GET, HEAD");
        return text("Hello from the concurrent-servers tutorial!\n");
    }
    if (path == "/sleep" || path == "/work") {
        if (!get) return method_not_allowed("GET, HEAD");
        std::optional<SlowRequest> slow = slow_request(request);
        if (!slow) return bad_parameter("expected ms=0..10000");
        if (slow->kind == SlowRequest::sleep)
            std::this_thread::sleep_for(slow->ms);  // like waiting for a database
        else
            burn_cpu(slow->ms);  // like a computation
        return slow_response(*slow);
    }
    if (path == "/bytes") {
        if (!get) return method_not_allowed("GET, HEAD");
        std::optional<long> n = query_number(request.query, "n", 0, kMaxBytesResponse);
        if (!n) return bad_parameter("expected n=0..67108864");
        Response r;
        r.content_type = "application/octet-stream";
        r.generated = GeneratedBody(0, static_cast<std::uint64_t>(*n));  // made as it is sent
        return r;
    }
    if (path == "/echo") {
        if (request.method != "POST") return method_not_allowed("POST");
        Response r;
        r.content_type = "application/octet-stream";
        r.body = request.body;
        return r;
    }
    if (path == "/stats") {
        if (!get) return method_not_allowed("GET, HEAD");
        Response r;
        r.content_type = "application/json";
        r.body = stats.to_json();
        return r;
    }
    Response r;
    r.status = 404;
    r.body = "Not Found\n";
    return r;
}

// Burns CPU time of this thread, as a computation would.
void burn_cpu(std::chrono::milliseconds amount) {
    auto thread_cpu = [] {
        timespec ts{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
    };
    const auto until = thread_cpu() + amount;
    volatile std::uint64_t sink = 0;
    while (thread_cpu() < until)
        for (int i = 0; i < 1000; ++i) sink = sink + static_cast<std::uint64_t>(i) * 2654435761u;
}

std::optional<SlowRequest> slow_request(const Request& request) {
    if (request.method != "GET" && request.method != "HEAD") return std::nullopt;
    SlowRequest::Kind kind;
    if (request.path == "/sleep") kind = SlowRequest::sleep;
    else if (request.path == "/work") kind = SlowRequest::work;
    else return std::nullopt;
    std::optional<long> ms = query_number(request.query, "ms", 0, kMaxDelayMs);
    if (!ms) return std::nullopt;
    return SlowRequest{kind, std::chrono::milliseconds(*ms)};
}

Response slow_response(const SlowRequest& slow) {
    return text(std::string(slow.kind == SlowRequest::sleep ? "sleep " : "work ") + std::to_string(slow.ms.count()) +
                " ms\n");
}

Reply respond(ParseResult& result, common::Stats& stats) {
    // Not a response to the request, only leave to send its body: not counted.
    if (result.kind == ParseResult::interim) return {"HTTP/1.1 100 Continue\r\n\r\n", {}, false};
    stats.requests.fetch_add(1, std::memory_order_relaxed);
    if (result.kind == ParseResult::error)
        return {serialize(error_response(result.error_status, result.error_text), false), {}, true};
    return reply_to(result.request, handle(result.request, stats));
}

Reply reply_to(const Request& request, const Response& response) {
    // Asked after the handler ran: a stop that arrived during /sleep counts.
    const bool close = !request.keep_alive || response.close || common::stop_requested();
    std::string bytes = serialize(response, !close);
    if (request.method == "HEAD") {
        // The head GET would send, Content-Length included, and no body (RFC 9110 section 9.3.2).
        bytes.resize(bytes.size() - response.body.size());
        return {std::move(bytes), {}, close};
    }
    return {std::move(bytes), response.generated, close};
}

}  // namespace http
