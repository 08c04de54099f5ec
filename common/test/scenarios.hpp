// Scenarios that several chapters' tests run, each returning what it
// observed; the chapter's test decides what its model must show (a limit
// asserted in one chapter is a feature asserted in the next).
#pragma once

#include <vector>

#include "harness.hpp"

namespace harness {

// A client connects and stays silent; a second sends GET /. Returns the
// second's response if it arrived within `wait`, without closing the first.
std::optional<http::ClientResponse> response_beside_silent_client(std::uint16_t port, Clock::duration wait);

// n clients GET target at once. Returns the status of each and the wall time
// of the whole batch (ms); given the server's pid, also the most threads of
// the server that slept in nanosleep at once (how many /sleep ran together).
struct Batch {
    std::vector<int> status;
    double total_ms = 0;
    int most_asleep_at_once = 0;
};
Batch concurrent_gets(std::uint16_t port, int n, const std::string& target);
Batch concurrent_gets(const ServerProcess& server, int n, const std::string& target);

// Holds `idle` silent connections and measures the server over a one-second
// window: CPU seconds per wall second, and the growth of a /stats counter.
struct IdleCost {
    double cpu_share = 0;        // CPU time / wall time
    double runnable_share = 0;   // (on a CPU + waiting for one) / wall time: 1 for a thread that never sleeps
    long long counter_delta = 0;  // of `counter`, across the window
};
IdleCost idle_cost(ServerProcess& server, int idle, const std::string& counter);

// Holds `idle` silent connections while one keep-alive client sends
// `requests` GET / one after another. Returns the server's time on a CPU per
// request and the growth of two /stats counters (0 if the server has none)
// across those requests.
struct ActiveCost {
    double cpu_us_per_request = 0;
    long long wakeups = 0;
    long long events = 0;
};
ActiveCost active_client_cost(ServerProcess& server, int idle, int requests);

// One client sends n pipelined GET / in one write (a second thread writes
// while this one reads, since the answers fill the socket buffers too).
// Returns how many 200s came back, and the growth of /stats "wakeups".
struct PipelinedFlood {
    int answered = 0;
    long long wakeups = 0;
};
PipelinedFlood pipelined_requests_in_one_write(std::uint16_t port, int n);

// A client sends /sleep?ms=300; once the server sleeps in its handler, a
// second sends GET /. Returns the ms from the first request to the second
// answer (>= 300 when a slow handler stalls everyone).
double quick_answer_after_slow_request_ms(ServerProcess& server);

// A client asks for 16 MiB and does not read; meanwhile another GETs /.
// Returns how long that GET took (ms) and whether the first client, reading
// at last, received every byte intact.
struct LargeResponse {
    double other_client_ms = 0;
    bool intact = false;
};
LargeResponse other_client_beside_unread_large_response(std::uint16_t port);

// n clients send POST /echo one byte at a time, interleaved. Returns how
// many got their own body back.
int interleaved_byte_by_byte_clients(std::uint16_t port, int n);

}  // namespace harness
