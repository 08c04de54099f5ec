// Lab 05's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=05` (the solution) or
// `build/exercises/05_busy_loop/test "[lab]"` (your skeleton).
#include <algorithm>
#include <memory>
#include <thread>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

struct Window {
    double wall_s;      // how long it lasted
    double cpu_s;       // CPU the server used meanwhile
    long long rounds;   // rounds of its loop meanwhile
};

// One second of nobody saying anything, measured.
Window idle_second(ServerProcess& server) {
    const long long rounds_before = stats(server.port())["loop_iterations"];
    const double cpu_before = cpu_seconds(server.pid());
    const Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(1s);  // the measurement window, not synchronisation
    const double wall = to_ms(Clock::now() - start) / 1000.0;
    const double cpu = cpu_seconds(server.pid()) - cpu_before;
    return {wall, cpu, stats(server.port())["loop_iterations"] - rounds_before};
}

}  // namespace

TEST_CASE("with idle clients the loop rests: little CPU", "[lab]") {
    ServerProcess server;  // --idle-sleep-us 1000 by default
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 3; ++i) idle.push_back(std::make_unique<Client>(server.port()));
    const Window w = idle_second(server);
    INFO("server CPU " << w.cpu_s << " s in " << w.wall_s << " s of wall time, " << w.rounds << " rounds");
    CHECK(w.cpu_s < 0.2 * w.wall_s);  // chapter 05 burns a whole CPU here
}

TEST_CASE("with idle clients the loop rests: at most one round per sleep", "[lab]") {
    ServerProcess server({"--idle-sleep-us", "1000"});
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 3; ++i) idle.push_back(std::make_unique<Client>(server.port()));
    const Window w = idle_second(server);
    INFO(w.rounds << " rounds in " << w.wall_s << " s");
    // Each idle round sleeps 1 ms, so about 1,000 rounds a second (the /stats
    // requests add a few busy ones). A loop that never sleeps makes millions.
    CHECK(w.rounds < 1500 * w.wall_s + 100);
}

TEST_CASE("a resting loop still answers everyone", "[lab]") {
    ServerProcess server;
    std::vector<int> status(50);
    run_concurrently(50, [&](int i) { status[static_cast<std::size_t>(i)] = get(server.port(), "/").status; });
    CHECK(status == std::vector<int>(50, 200));
    CHECK(own_threads(thread_count(server.pid())) == 1);
}

TEST_CASE("the price of resting: a request that arrives during a sleep waits for it", "[lab]") {
    ServerProcess server({"--idle-sleep-us", "100000"});  // 100 ms: long enough to see
    Client c(server.port());
    double slowest = 0;
    for (int i = 0; i < 5; ++i) {
        // After a response the loop finds nothing more and falls asleep; the
        // next request arrives 20 ms into that sleep and waits for its end.
        std::this_thread::sleep_for(20ms);  // the pause is the scenario, not synchronisation
        const Clock::time_point sent = Clock::now();
        CHECK(c.request(get_request("/")).status == 200);
        slowest = std::max(slowest, to_ms(Clock::now() - sent));
    }
    CHECK(slowest >= 50);  // chapter 05 answers each in well under a millisecond
}

TEST_CASE("--idle-sleep-us rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "99999999999"}) {
        INFO(bad);
        CHECK_THROWS(ServerProcess({"--idle-sleep-us", bad}));
    }
}
