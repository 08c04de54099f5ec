// Chapter 10's own tests: chapter 09's loop with timers for /sleep and a
// worker pool for /work. The shared behaviour suite is linked in too.
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "http.hpp"
#include "scenarios.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

std::string ms_param(Clock::duration d) {
    return std::to_string(static_cast<long>(to_ms(d)));
}

// The most threads the server had at once while `during` ran (sampled from /proc).
long peak_threads_during(pid_t pid, const std::function<void()>& during) {
    std::atomic<bool> done{false};
    std::atomic<long> peak{0};
    std::thread sampler([&] {
        while (!done) {
            peak = std::max(peak.load(), thread_count(pid));
            std::this_thread::sleep_for(2ms);
        }
    });
    try {
        during();
    } catch (...) {
        done = true;
        sampler.join();
        throw;
    }
    done = true;
    sampler.join();
    return peak;
}

// Everything the server sends until it closes (or the deadline passes).
std::string read_until_closed(int fd, Clock::duration timeout) {
    std::string bytes;
    const Clock::time_point deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 10) <= 0) continue;
        char buffer[4096];
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n <= 0) break;
        bytes.append(buffer, static_cast<std::size_t>(n));
    }
    return bytes;
}

}  // namespace

TEST_CASE("one loop thread and the workers serve 50 concurrent clients", "[chapter10]") {
    ServerProcess server({"--workers", "3"});
    CHECK(concurrent_gets(server.port(), 50, "/").status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1 + 3);
    auto s = stats(server.port());
    CHECK(s["workers"] == 3);
    CHECK(stats_model(server.port()) == "epoll_workers");
}

TEST_CASE("while every worker computes, the loop answers another client at once", "[chapter10][lesson]") {
    ServerProcess server({"--workers", "2"});
    // Two jobs of 500 ms of CPU: both workers busy for at least half a second.
    std::vector<std::unique_ptr<Client>> workers;
    for (int i = 0; i < 2; ++i) {
        workers.push_back(std::make_unique<Client>(server.port()));
        workers.back()->send(get_request("/work?ms=500"));
    }
    REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 2; }));
    double worst_ms = 0;
    for (int i = 0; i < 5; ++i) {
        const Clock::time_point start = Clock::now();
        CHECK(get(server.port(), "/", 5s).status == 200);
        worst_ms = std::max(worst_ms, to_ms(Clock::now() - start));
    }
    const long long running_after = stats(server.port())["jobs_running"];
    for (auto& w : workers) {
        std::optional<http::ClientResponse> r = w->read_response(scaled(10s));
        REQUIRE(r);
        CHECK(r->body == "work 500 ms\n");
    }
    INFO("slowest GET / beside two running jobs: " << worst_ms << " ms");
    // The answers came while the jobs ran (they use 500 ms of CPU each, and
    // wall time is never less). Chapter 09 ran /work in its loop: GET / waited
    // for the job, 500 ms or more.
    CHECK(running_after == 2);
    CHECK(worst_ms < 250);
}

TEST_CASE("K jobs on W workers run W at a time, in ceil(K/W) waves", "[chapter10][lesson]") {
    constexpr int kWorkers = 2, kJobs = 5, kMs = 200;
    ServerProcess server({"--workers", std::to_string(kWorkers)});
    std::vector<int> status(kJobs);
    const Clock::time_point start = Clock::now();
    run_concurrently(kJobs, [&](int i) { status[i] = get(server.port(), "/work?ms=" + std::to_string(kMs), 30s).status; });
    const double took_ms = to_ms(Clock::now() - start);
    CHECK(status == std::vector<int>(kJobs, 200));
    auto s = stats(server.port());
    INFO("5 jobs of 200 ms on 2 workers took " << took_ms << " ms; at most " << s["jobs_running_peak"] << " ran at once");
    // Never more at once than there are workers, and all of them were used
    // (the counter is the workers' own, not a guess from the clock).
    CHECK(s["jobs_running_peak"] == kWorkers);
    // Some worker ran ceil(5/2) = 3 jobs one after another, each 200 ms of CPU
    // and so at least 200 ms of wall time: a lower bound no machine can beat.
    CHECK(took_ms >= (kJobs + kWorkers - 1) / kWorkers * kMs);
    CHECK(s["jobs_done"] == kJobs);
}

TEST_CASE("100 concurrent /sleep overlap on the loop's one thread, with no thread per request",
          "[chapter10][lesson]") {
    ServerProcess server({"--workers", "1"});
    constexpr int kClients = 100;
    std::vector<int> status(kClients);
    std::vector<Clock::duration> took;
    const long peak = peak_threads_during(server.pid(), [&] {
        took = run_concurrently(kClients,
                                [&](int i) { status[i] = get(server.port(), "/sleep?ms=300", scaled(20s)).status; });
    });
    CHECK(status == std::vector<int>(kClients, 200));
    const double shortest = to_ms(*std::min_element(took.begin(), took.end()));
    const double longest = to_ms(*std::max_element(took.begin(), took.end()));
    INFO("100 sleeps of 300 ms: " << shortest << " to " << longest << " ms each; at most " << peak << " threads");
    CHECK(shortest >= 299);  // each one did wait its 300 ms
    // One after another they would take 30 s (chapter 09 does); together,
    // about 300 ms. Generous for a loaded machine.
    CHECK(longest < to_ms(scaled(3s)));
    CHECK(own_threads(peak) == 2);  // the loop and the one worker, throughout
    auto s = stats(server.port());
    CHECK(s["sleeps_done"] == kClients);
    CHECK(s["jobs_done"] == 0);  // waiting needs no worker
}

TEST_CASE("a sleep does not stall the loop: another client is answered meanwhile", "[chapter10][lesson]") {
    ServerProcess server;
    Client slow(server.port());
    slow.send(get_request("/sleep?ms=1000"));
    REQUIRE(eventually([&] { return stats(server.port())["sleeps_pending"] == 1; }));
    const Clock::time_point start = Clock::now();
    CHECK(get(server.port(), "/", 5s).status == 200);
    const double quick_ms = to_ms(Clock::now() - start);
    CHECK(stats(server.port())["sleeps_pending"] == 1);  // answered while the sleep was still pending
    std::optional<http::ClientResponse> r = slow.read_response(scaled(5s));
    REQUIRE(r);
    CHECK(r->body == "sleep 1000 ms\n");
    INFO("GET / beside a pending sleep: " << quick_ms << " ms");
    CHECK(quick_ms < 250);  // chapter 09: a second, the whole sleep
}

TEST_CASE("a client that resets during its job frees its descriptor at once, and the late answer reaches nobody",
          "[chapter10][lesson]") {
    ServerProcess server({"--workers", "1"});
    constexpr int kRounds = 20;
    int own_answer = 0, extra = 0;
    for (int round = 1; round <= kRounds; ++round) {
        {
            Client leaver(server.port());
            leaver.send(get_request("/work?ms=100"));
            REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 1; }));
            leaver.reset();  // RST while its job runs
        }
        // The server closes it on the reset, without waiting for the job: the
        // next client is then given the same descriptor number (the lowest
        // free), and its own job waits in the queue behind the leaver's.
        REQUIRE(eventually([&] { return stats(server.port())["connections_open"] == 1; }));  // the /stats one
        Client next(server.port());
        next.send(get_request("/work?ms=1"));
        // The leaver's result ("work 100 ms") comes back first, naming an id
        // nobody has; a server that named connections by descriptor would
        // hand it to this client as the answer to its own request.
        std::optional<http::ClientResponse> r = next.read_response(scaled(5s));
        REQUIRE(r);
        own_answer += r->body == "work 1 ms\n";
        REQUIRE(eventually([&] { return stats(server.port())["results_dropped"] == round; }, scaled(5s)));
        extra += next.read_response(20ms).has_value() || next.unparsed_bytes() > 0;  // nothing it did not ask for
    }
    CHECK(own_answer == kRounds);
    CHECK(extra == 0);
    CHECK(stats(server.port())["jobs_done"] == 2 * kRounds);
}

TEST_CASE("a reset that arrives together with its request frees the connection before the job runs",
          "[chapter10]") {
    ServerProcess server({"--workers", "1"});
    Client running(server.port());
    running.send(get_request("/work?ms=" + ms_param(scaled(1000ms))));
    REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 1; }));
    // Stopped, the server cannot read the request before the reset is there
    // too: both come in one report, and edge-triggered epoll gives no second.
    for (int i = 0; i < 3; ++i) {
        server.send_signal(SIGSTOP);
        {
            Client leaver(server.port());
            leaver.send(get_request("/work?ms=1"));
            leaver.reset();
        }
        server.send_signal(SIGCONT);
    }
    // Gone while the long job still runs (not when its own job's answer fails to send).
    REQUIRE(eventually([&] { return stats(server.port())["connections_open"] == 2; }));  // running and /stats
    CHECK(stats(server.port())["jobs_running"] == 1);
    std::optional<http::ClientResponse> r = running.read_response(scaled(10s));
    REQUIRE(r);
    CHECK(r->status == 200);
}

TEST_CASE("a client that leaves during its sleep leaves no timer behind", "[chapter10]") {
    ServerProcess server;
    for (int i = 0; i < 20; ++i) {
        Client c(server.port());
        c.send(get_request("/sleep?ms=10000"));
        REQUIRE(eventually([&] { return stats(server.port())["sleeps_pending"] == 1; }));
        c.reset();
        REQUIRE(eventually([&] { return stats(server.port())["sleeps_pending"] == 0; }));
    }
    auto s = stats(server.port());
    CHECK(s["connections_open"] == 1);
    CHECK(s["sleeps_done"] == 0);
}

TEST_CASE("a burst of 10,000 completions is all delivered, many per wake-up", "[chapter10][lesson]") {
    constexpr int kConnections = 50, kPerConnection = 200;
    ServerProcess server({"--workers", "2"});
    std::vector<int> intact(kConnections);
    run_concurrently(kConnections, [&](int i) {
        Client c(server.port());
        std::string burst;
        for (int k = 0; k < kPerConnection; ++k) burst += get_request("/work?ms=0");
        c.send(burst);
        for (int k = 0; k < kPerConnection; ++k) {
            std::optional<http::ClientResponse> r = c.read_response(scaled(20s));
            if (!r) return;
            intact[i] += r->status == 200 && r->body == "work 0 ms\n";
        }
    });
    CHECK(intact == std::vector<int>(kConnections, kPerConnection));
    auto s = stats(server.port());
    INFO(s["jobs_done"] << " results, " << s["completion_signals"] << " eventfd writes, " << s["completion_wakeups"]
                        << " wake-ups that took results");
    CHECK(s["jobs_done"] == kConnections * kPerConnection);
    CHECK(s["results_dropped"] == 0);
    // Only a result that finds the completion queue empty writes to the
    // eventfd, and each wake-up takes all there are. (Writing once per result
    // makes the two equal to the number of results.)
    CHECK(s["completion_signals"] < s["jobs_done"] / 2);
    CHECK(s["completion_wakeups"] <= s["completion_signals"]);
}

TEST_CASE("a full job queue answers 503 at once, and the connection goes on", "[chapter10][lesson]") {
    ServerProcess server({"--workers", "1", "--queue", "1"});
    const std::string long_ms = ms_param(scaled(1500ms));
    Client running(server.port());
    running.send(get_request("/work?ms=" + long_ms));
    REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 1; }));
    Client queued(server.port());
    queued.send(get_request("/work?ms=1"));
    REQUIRE(eventually([&] { return stats(server.port())["jobs_queued"] == 1; }));
    Client refused(server.port());
    const Clock::time_point start = Clock::now();
    const http::ClientResponse busy = refused.request(get_request("/work?ms=1"), 5s);
    const double refused_ms = to_ms(Clock::now() - start);
    CHECK(busy.status == 503);
    CHECK(busy.keep_alive);
    CHECK(stats(server.port())["jobs_running"] == 1);  // refused while the queue was full, not after
    INFO("503 after " << refused_ms << " ms");
    CHECK(refused_ms < to_ms(scaled(1000ms)));
    CHECK(refused.request(get_request("/")).status == 200);  // the same connection, served as usual
    for (Client* c : {&running, &queued}) {
        std::optional<http::ClientResponse> r = c->read_response(scaled(10s));
        REQUIRE(r);
        CHECK(r->status == 200);
    }
    CHECK(stats(server.port())["jobs_rejected"] == 1);
}

TEST_CASE("requests pipelined behind a /work or a /sleep are answered in order", "[chapter10]") {
    ServerProcess server;
    Client c(server.port());
    c.send(get_request("/work?ms=50") + get_request("/") + get_request("/sleep?ms=30") + get_request("/bytes?n=5") +
           get_request("/work?ms=0"));
    std::vector<std::string> bodies;
    for (int i = 0; i < 5; ++i) {
        std::optional<http::ClientResponse> r = c.read_response(scaled(5s));
        REQUIRE(r);
        bodies.push_back(r->body);
    }
    CHECK(bodies == std::vector<std::string>{"work 50 ms\n", "Hello from the concurrent-servers tutorial!\n",
                                             "sleep 30 ms\n", "01234", "work 0 ms\n"});
}

TEST_CASE("an answer sent after a deferred one is not held back by Nagle's algorithm", "[chapter10][lesson]") {
    ServerProcess server;
    Client c(server.port());
    // GET / is answered at once, /work?ms=0 a moment later in a send of its
    // own. Without TCP_NODELAY the second waits for the ACK of the first,
    // which the client delays (40 ms), every time: 20 batches take 800 ms.
    const std::string batch = get_request("/") + get_request("/work?ms=0");
    const Clock::time_point start = Clock::now();
    for (int i = 0; i < 20; ++i) {
        c.send(batch);
        for (int k = 0; k < 2; ++k) REQUIRE(c.read_response(scaled(5s)));
    }
    const double took_ms = to_ms(Clock::now() - start);
    INFO("20 batches of GET / and /work?ms=0: " << took_ms << " ms");
    CHECK(took_ms < 400);
}

TEST_CASE("HEAD on /work and /sleep gets the head only, and a half-closed client still gets its answer",
          "[chapter10]") {
    ServerProcess server;
    {
        // HEAD gets GET's head, Content-Length included, and no body: the
        // second head follows the first at once.
        Client c(server.port());
        c.send("HEAD /work?ms=10 HTTP/1.1\r\nHost: test\r\n\r\n"
               "HEAD /sleep?ms=10 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        const std::string received = read_until_closed(c.fd(), scaled(5s));
        INFO(received);
        const std::size_t first_end = received.find("\r\n\r\n");
        REQUIRE(first_end != std::string::npos);
        CHECK(received.starts_with("HTTP/1.1 200 OK\r\n"));
        CHECK(received.find("Content-Length: 11\r\n") < first_end);  // "work 10 ms\n"
        CHECK(received.substr(first_end + 4).starts_with("HTTP/1.1 200 OK\r\n"));
        CHECK(received.ends_with("\r\n\r\n"));
        CHECK(received.find("ms\n") == std::string::npos);  // no body anywhere
    }
    Client half(server.port());
    half.send(get_request("/work?ms=100") + get_request("/sleep?ms=100"));
    half.shutdown_write();  // a FIN while the job runs: not a reason to drop it
    for (const char* body : {"work 100 ms\n", "sleep 100 ms\n"}) {
        std::optional<http::ClientResponse> r = half.read_response(scaled(5s));
        REQUIRE(r);
        CHECK(r->body == body);
    }
    CHECK(half.wait_closed(scaled(2s)));
}

TEST_CASE("a connection waiting for its timer or its job is not closed by the idle timer", "[chapter10][lesson]") {
    ServerProcess server({"--idle-timeout", "200", "--workers", "1"});
    Client sleeper(server.port());
    Client worker(server.port());
    sleeper.send(get_request("/sleep?ms=600"));
    worker.send(get_request("/work?ms=600"));
    for (Client* c : {&sleeper, &worker}) {
        std::optional<http::ClientResponse> r = c->read_response(scaled(10s));
        REQUIRE(r);  // not closed unanswered after 200 ms
        CHECK(r->status == 200);
    }
    CHECK(stats(server.port())["idle_closed"] == 0);
    // Answered, they are idle again, and the timer closes them.
    CHECK(sleeper.wait_closed(scaled(3s)));
    CHECK(worker.wait_closed(scaled(3s)));
    CHECK(stats(server.port())["idle_closed"] == 2);
}

TEST_CASE("SIGTERM lets a running job and a pending sleep finish", "[chapter10]") {
    ServerProcess server({"--workers", "1"});
    Client worker(server.port());
    Client sleeper(server.port());
    worker.send(get_request("/work?ms=300"));
    sleeper.send(get_request("/sleep?ms=300"));
    REQUIRE(eventually([&] {
        auto s = stats(server.port());
        return s["jobs_running"] == 1 && s["sleeps_pending"] == 1;
    }));
    server.send_signal(SIGTERM);
    for (Client* c : {&worker, &sleeper}) {
        std::optional<http::ClientResponse> r = c->read_response(scaled(5s));
        REQUIRE(r);
        CHECK(r->status == 200);
        CHECK_FALSE(r->keep_alive);
    }
    CHECK(describe_status(server.stop(10s)) == "exited with 0");
}

TEST_CASE("50 idle clients and idle workers cost no CPU and no wake-ups", "[chapter10][lesson]") {
    ServerProcess server;
    IdleCost cost = idle_cost(server, 50, "wakeups");
    INFO("CPU share " << cost.cpu_share << "; " << cost.counter_delta << " wake-ups");
    CHECK(cost.cpu_share < 0.05);
    CHECK(cost.runnable_share < 0.05);
    CHECK(cost.counter_delta < 20);
}

TEST_CASE("edge-triggered still: every report is read until EAGAIN", "[chapter10]") {
    ServerProcess server;
    PipelinedFlood flood = pipelined_requests_in_one_write(server.port(), 3000);
    CHECK(flood.answered == 3000);
}

TEST_CASE("a connection with more to read than its turn allows waits on the ready list", "[chapter10]") {
    ServerProcess server({"--reads-per-turn", "1"});
    // No handler stops this loop any more: the test stops the whole process
    // while the backlog builds up in the socket.
    Client backlog(server.port());
    REQUIRE(backlog.request(get_request("/")).status == 200);  // accepted and registered
    constexpr int kRequests = 24;  // 24 KB: more than one 16 KiB read, so more than one turn
    std::string requests;
    for (int i = 0; i < kRequests; ++i) requests += get_request("/", "X-Padding: " + std::string(1000, 'x') + "\r\n");
    server.send_signal(SIGSTOP);
    backlog.send(requests);
    server.send_signal(SIGCONT);
    int answered = 0;
    for (int i = 0; i < kRequests; ++i) {
        std::optional<http::ClientResponse> r = backlog.read_response(scaled(5s));
        REQUIRE(r);
        answered += r->status == 200;
    }
    CHECK(answered == kRequests);
    CHECK(stats(server.port())["turns_deferred"] >= 1);
}

TEST_CASE("the idle timer closes a silent connection at its deadline, and a started request gets 408",
          "[chapter10]") {
    ServerProcess server({"--idle-timeout", "300"});
    Client c(server.port());
    CHECK(c.request(get_request("/")).status == 200);
    const Clock::time_point last = Clock::now();
    REQUIRE(c.wait_closed(scaled(5s)));
    CHECK(to_ms(Clock::now() - last) >= 290);
    Client partial(server.port());
    partial.send("GET / HTTP/1.1\r\nHo");
    std::optional<http::ClientResponse> r = partial.read_response(scaled(5s));
    REQUIRE(r);
    CHECK(r->status == 408);
    CHECK(stats(server.port())["idle_closed"] == 2);
}
