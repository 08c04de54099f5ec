#include "scenarios.hpp"

#include <exception>
#include <memory>
#include <stdexcept>
#include <thread>

#include "http.hpp"

namespace harness {

std::optional<http::ClientResponse> response_beside_silent_client(std::uint16_t port, Clock::duration wait) {
    Client silent(port);
    Client second(port);
    second.send(get_request("/"));
    return second.read_response(wait);
}

Batch concurrent_gets(std::uint16_t port, int n, const std::string& target) {
    Batch batch;
    batch.status.resize(static_cast<std::size_t>(n));
    const Clock::time_point start = Clock::now();
    run_concurrently(n, [&](int i) { batch.status[static_cast<std::size_t>(i)] = get(port, target, 30s).status; });
    batch.total_ms = to_ms(Clock::now() - start);
    return batch;
}

Batch concurrent_gets(const ServerProcess& server, int n, const std::string& target) {
    NanosleepPeak peak(server.pid());
    Batch batch = concurrent_gets(server.port(), n, target);
    batch.most_asleep_at_once = peak.stop();
    return batch;
}

IdleCost idle_cost(ServerProcess& server, int idle, const std::string& counter) {
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < idle; ++i) clients.push_back(std::make_unique<Client>(server.port()));
    // Wait until the server has accepted them all (+1: the /stats request itself).
    eventually([&] { return stats(server.port())["connections_open"] >= idle + 1; }, 5s);
    const long long counter_before = stats(server.port())[counter];
    const CpuShares shares = cpu_shares_over(server.pid(), 1s);
    IdleCost cost;
    cost.cpu_share = shares.on_cpu;
    cost.runnable_share = shares.runnable;
    cost.counter_delta = stats(server.port())[counter] - counter_before;
    return cost;
}

ActiveCost active_client_cost(ServerProcess& server, int idle, int requests) {
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < idle; ++i) clients.push_back(std::make_unique<Client>(server.port()));
    if (!eventually([&] { return stats(server.port())["connections_open"] >= idle + 1; }, scaled(30s)))
        throw std::runtime_error("the server did not accept all " + std::to_string(idle) + " idle clients");
    Client active(server.port());
    const std::string request = get_request("/");
    if (active.request(request).status != 200) throw std::runtime_error("GET / failed");  // accepted and warm
    std::map<std::string, long long> before = stats(server.port());
    const double cpu_before = on_cpu_seconds(server.pid());
    for (int i = 0; i < requests; ++i)
        if (active.request(request).status != 200) throw std::runtime_error("GET / failed");
    const double cpu = on_cpu_seconds(server.pid()) - cpu_before;
    std::map<std::string, long long> after = stats(server.port());
    return {1e6 * cpu / requests, after["wakeups"] - before["wakeups"], after["events"] - before["events"]};
}

PipelinedFlood pipelined_requests_in_one_write(std::uint16_t port, int n) {
    Client c(port);
    std::string requests;
    for (int i = 0; i < n; ++i) requests += get_request("/");
    const long long wakeups_before = stats(port)["wakeups"];
    std::exception_ptr send_error;
    std::thread sender([&] {
        try {
            c.send(requests, 30s);
        } catch (...) {
            send_error = std::current_exception();
        }
    });
    PipelinedFlood result;
    try {
        while (result.answered < n) {
            std::optional<http::ClientResponse> r = c.read_response(10s);
            if (!r) break;  // a loop that leaves bytes unread stalls here
            result.answered += r->status == 200;
        }
    } catch (...) {
        sender.join();
        throw;
    }
    sender.join();
    if (send_error) std::rethrow_exception(send_error);
    result.wakeups = stats(port)["wakeups"] - wakeups_before;
    return result;
}

double quick_answer_after_slow_request_ms(ServerProcess& server) {
    Client slow(server.port());
    const Clock::time_point slow_sent = Clock::now();
    slow.send(get_request("/sleep?ms=300"));
    if (!eventually([&] { return server_has_read_all(slow, server.port()) && sleeping_in_nanosleep(server.pid()); }, 5s))
        throw std::runtime_error("the server never slept in /sleep");
    Client quick(server.port());
    quick.send(get_request("/"));
    if (!quick.read_response(5s)) throw std::runtime_error("GET / got no answer");
    return to_ms(Clock::now() - slow_sent);
}

LargeResponse other_client_beside_unread_large_response(std::uint16_t port) {
    constexpr std::size_t kSize = 16 * 1024 * 1024;  // far more than the socket buffers hold
    Client hog(port);
    hog.send(get_request("/bytes?n=" + std::to_string(kSize)));
    // The server now has a partial write pending for hog and must not wait for it.
    LargeResponse result;
    const Clock::time_point start = Clock::now();
    if (get(port, "/").status != 200) throw std::runtime_error("GET / failed beside the large response");
    result.other_client_ms = to_ms(Clock::now() - start);
    std::optional<http::ClientResponse> r = hog.read_response(30s);  // hog reads at last
    result.intact = r && r->body.size() == kSize;
    for (std::size_t i = 0; result.intact && i < kSize; i += 4099) result.intact = r->body[i] == http::pattern_byte(i);
    return result;
}

int interleaved_byte_by_byte_clients(std::uint16_t port, int n) {
    std::vector<std::unique_ptr<Client>> clients;
    std::vector<std::string> requests;
    std::size_t longest = 0;
    for (int i = 0; i < n; ++i) {
        clients.push_back(std::make_unique<Client>(port));
        const std::string body = "client " + std::to_string(i);
        requests.push_back("POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
        longest = std::max(longest, requests.back().size());
    }
    for (std::size_t pos = 0; pos < longest; ++pos)
        for (std::size_t i = 0; i < clients.size(); ++i)
            if (pos < requests[i].size()) clients[i]->send(requests[i].substr(pos, 1));
    int echoed = 0;
    for (std::size_t i = 0; i < clients.size(); ++i) {
        std::optional<http::ClientResponse> r = clients[i]->read_response(10s);
        echoed += r && r->body == "client " + std::to_string(i);
    }
    return echoed;
}

}  // namespace harness
