// Lab 10's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=10` (the solution) or
// `build/exercises/10_epoll_workers/test "[lab]"` (your skeleton).
//
// Every wait is for a counter in /stats (a job running, so many queued, a
// cancel counted), never for a length of time: the long jobs only have to
// outlast the few requests each test makes meanwhile.
#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

// A /work request that keeps the one worker busy while a test queues jobs
// behind it and lets their clients go: 2 s of CPU (more under a sanitizer,
// up to the 10 s that /work accepts).
std::string long_job() {
    return "/work?ms=" + std::to_string(std::min(10'000L, static_cast<long>(to_ms(scaled(2000ms)))));
}

// Sends a /work of `ms` on its own connection, then waits until the pool has
// it: queued (so its client's reset comes while the job waits for a worker).
std::unique_ptr<Client> queue_job(std::uint16_t port, int ms, long long queued_after) {
    auto c = std::make_unique<Client>(port);
    c->send(get_request("/work?ms=" + std::to_string(ms)));
    REQUIRE(eventually([&] { return stats(port)["jobs_queued"] == queued_after; }));
    return c;
}

}  // namespace

TEST_CASE("jobs whose clients leave while they wait are taken out of the queue; the others keep theirs", "[lab]") {
    ServerProcess server({"--workers", "1"});
    Client running(server.port());
    running.send(get_request(long_job()));
    REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 1; }));
    // Seven jobs queue behind it, in this order. The ones that stay are first
    // and in the middle: a cancel that takes the front of the queue, or more
    // than the one job it was asked for, takes theirs.
    const std::vector<bool> leaves{false, true, true, false, true, true, true};
    std::vector<std::unique_ptr<Client>> queued;
    for (std::size_t i = 0; i < leaves.size(); ++i)
        queued.push_back(queue_job(server.port(), static_cast<int>(10 + i), static_cast<long long>(i + 1)));
    for (std::size_t i = 0; i < leaves.size(); ++i)
        if (leaves[i]) queued[i]->reset();
    // The loop sees each reset at once; the worker would come to these jobs
    // only after the long one.
    const bool cancelled = eventually([&] { return stats(server.port())["jobs_cancelled"] == 5; });
    std::map<std::string, long long> s = stats(server.port());
    INFO("after 5 resets: jobs_cancelled " << s["jobs_cancelled"] << ", jobs_queued " << s["jobs_queued"]
                                           << ", jobs_running " << s["jobs_running"]);
    REQUIRE(cancelled);               // the skeleton: the five stay queued
    CHECK(s["jobs_queued"] == 2);     // the two that stayed: the gauge follows the queue
    CHECK(s["jobs_running"] == 1);    // taken out while the long job ran, not when a worker came to them
    std::optional<http::ClientResponse> r = running.read_response(scaled(20s));
    REQUIRE(r);
    CHECK(r->status == 200);
    for (std::size_t i = 0; i < leaves.size(); ++i) {
        if (leaves[i]) continue;
        r = queued[i]->read_response(scaled(10s));
        REQUIRE(r);  // its own job was left in the queue, and ran
        CHECK(r->body == "work " + std::to_string(10 + i) + " ms\n");
    }
    s = stats(server.port());
    CHECK(s["jobs_done"] == 3);        // the long job and the two that stayed: no worker ran the others
    CHECK(s["results_dropped"] == 0);  // so no result came back for a client that was gone
    CHECK(s["jobs_cancelled"] == 5);
    CHECK(s["jobs_queued"] == 0);
}

TEST_CASE("a cancelled job frees its place in the queue: the next client is not turned away", "[lab]") {
    ServerProcess server({"--workers", "1", "--queue", "2"});
    Client running(server.port());
    running.send(get_request(long_job()));
    REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 1; }));
    std::vector<std::unique_ptr<Client>> leavers;
    for (int i = 1; i <= 2; ++i) leavers.push_back(queue_job(server.port(), 10, i));
    Client later(server.port());
    REQUIRE(later.request(get_request("/work?ms=1"), 5s).status == 503);  // the queue is full: so far, chapter 10
    for (auto& c : leavers) c->reset();
    // Both resets seen: open are `running`, `later` and the /stats connection.
    REQUIRE(eventually([&] { return stats(server.port())["connections_open"] == 3; }));
    CHECK(stats(server.port())["jobs_queued"] == 0);
    REQUIRE(stats(server.port())["jobs_running"] == 1);  // the long job still holds the worker: the queue did not drain
    // `later` tries again on the same connection (sooner than Retry-After said).
    const http::ClientResponse retried = later.request(get_request("/work?ms=2"), scaled(20s));
    CHECK(retried.status == 200);  // the skeleton: 503 again, the two gone clients' jobs fill the queue
    CHECK(retried.body == "work 2 ms\n");
    std::optional<http::ClientResponse> r = running.read_response(scaled(20s));
    REQUIRE(r);
    CHECK(r->status == 200);
    std::map<std::string, long long> s = stats(server.port());
    CHECK(s["jobs_rejected"] == 1);
    CHECK(s["jobs_cancelled"] == 2);
    CHECK(s["jobs_done"] == 2);
    CHECK(s["results_dropped"] == 0);
}

TEST_CASE("a job that already runs is not cancelled: it finishes and its answer is dropped; a sleep is no job",
          "[lab]") {
    ServerProcess server({"--workers", "1"});
    Client running(server.port());
    running.send(get_request(long_job()));
    REQUIRE(eventually([&] { return stats(server.port())["jobs_running"] == 1; }));
    std::unique_ptr<Client> queued = queue_job(server.port(), 10, 1);
    Client sleeper(server.port());
    sleeper.send(get_request("/sleep?ms=10000"));  // the longest there is
    REQUIRE(eventually([&] { return stats(server.port())["sleeps_pending"] == 1; }));
    // All three leave: the one whose job runs, the one whose job waits, the sleeper.
    running.reset();
    queued->reset();
    sleeper.reset();
    // The running job cannot be stopped: it ends, and its result finds nobody.
    const bool dropped = eventually([&] { return stats(server.port())["results_dropped"] == 1; }, scaled(20s));
    std::map<std::string, long long> s = stats(server.port());
    INFO("jobs_cancelled " << s["jobs_cancelled"] << ", jobs_done " << s["jobs_done"] << ", results_dropped "
                           << s["results_dropped"] << ", sleeps_pending " << s["sleeps_pending"]);
    REQUIRE(dropped);
    CHECK(s["jobs_cancelled"] == 1);  // the queued one only: not the running one, not the sleep
    CHECK(s["jobs_done"] == 1);       // the running one ran to its end; the queued one never ran
    CHECK(s["sleeps_pending"] == 0);  // the sleeper's timer went with it, as in chapter 10
    CHECK(s["sleeps_done"] == 0);
    CHECK(s["jobs_queued"] == 0);
    CHECK(s["jobs_running"] == 0);
    CHECK(s["connections_open"] == 1);  // the /stats one
}

TEST_CASE("cancels and the workers share the queue: every job is run or cancelled, exactly once", "[lab]") {
    // Quick jobs on two workers, and clients that leave as soon as the server
    // has their request: whether a worker or the cancel gets a job first is
    // up to the scheduler, but never both, and never neither.
    constexpr int kThreads = 4, kPerThread = 25;
    ServerProcess server({"--workers", "2"});
    std::vector<int> handed(kThreads);
    run_concurrently(kThreads, [&](int t) {
        for (int k = 0; k < kPerThread; ++k) {
            Client c(server.port());
            c.send(get_request("/work?ms=3"));
            // Read by the server, so handed to the pool (in the same turn).
            if (!eventually([&] { return server_has_read_all(c, server.port()); })) return;
            c.reset();
            ++handed[t];
        }
    });
    CHECK(handed == std::vector<int>(kThreads, kPerThread));
    constexpr long long kJobs = kThreads * kPerThread;
    const bool settled = eventually([&] {
        auto s = stats(server.port());
        return s["jobs_queued"] == 0 && s["jobs_running"] == 0 && s["jobs_done"] + s["jobs_cancelled"] >= kJobs;
    }, scaled(20s));
    std::map<std::string, long long> s = stats(server.port());
    INFO(s["jobs_done"] << " jobs run, " << s["jobs_cancelled"] << " cancelled, " << s["results_dropped"]
                        << " results dropped");
    CHECK(settled);
    CHECK(s["jobs_done"] + s["jobs_cancelled"] == kJobs);
    CHECK(s["results_dropped"] <= s["jobs_done"]);
    CHECK(get(server.port(), "/work?ms=1").body == "work 1 ms\n");  // and the pool still works
}
