// Lab 03's tests: they fail on the untouched skeleton and pass on a correct
// solution. Run them with `make test CH=03` (the solution) or
// `build/exercises/03_thread_per_connection/test "[lab]"` (your skeleton).
#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "harness.hpp"
#include "testing.hpp"

using namespace harness;

namespace {

// Two clients that were answered and stay connected: each holds a place.
std::vector<std::unique_ptr<Client>> connected_clients(std::uint16_t port, int n) {
    std::vector<std::unique_ptr<Client>> clients;
    for (int i = 0; i < n; ++i) {
        clients.push_back(std::make_unique<Client>(port));
        REQUIRE(clients.back()->request(get_request("/")).status == 200);  // answered: its thread exists
    }
    return clients;
}

}  // namespace

TEST_CASE("with --max-connections 2 a third client gets 503 and is closed", "[lab]") {
    ServerProcess server({"--max-connections", "2"});
    std::vector<std::unique_ptr<Client>> held = connected_clients(server.port(), 2);
    Client third(server.port());
    third.send(get_request("/"));
    std::optional<http::ClientResponse> r = third.read_response(5s);
    REQUIRE(r);  // the skeleton gives it a thread and answers 200
    CHECK(r->status == 503);
    CHECK_FALSE(r->keep_alive);
    CHECK(third.wait_closed(5s));
    CHECK(own_threads(thread_count(server.pid())) == 3);  // main + the two held connections
    for (auto& c : held) CHECK(c->request(get_request("/")).status == 200);  // still served
}

TEST_CASE("a place freed by a leaving client goes to the next one", "[lab]") {
    ServerProcess server({"--max-connections", "2"});
    std::vector<std::unique_ptr<Client>> held = connected_clients(server.port(), 2);
    REQUIRE(get(server.port(), "/").status == 503);  // full
    held[0]->close();
    // Its thread reads EOF and ends; from then on a new client is served.
    // Until then it may still get 503, so we retry.
    CHECK(eventually([&] { return get(server.port(), "/").status == 200; }, 5s));
    CHECK(held[1]->request(get_request("/")).status == 200);
}

TEST_CASE("ten clients at once never get more than two threads", "[lab]") {
    ServerProcess server({"--max-connections", "2"});
    constexpr int kClients = 10;
    const std::string target = "/sleep?ms=" + std::to_string(static_cast<long>(to_ms(scaled(500ms))));
    std::vector<int> status(kClients);
    std::atomic<bool> first_answer{false};
    long most_threads = 0;
    // Jobs 0..9 are clients; job 10 reads the server's thread count until the
    // first client is answered (after that a thread that has let its place go
    // may still be ending while a new one starts). If the count is raised only
    // in the new thread, several clients get past the check before any counts.
    run_concurrently(kClients + 1, [&](int i) {
        if (i == kClients) {
            const Clock::time_point deadline = Clock::now() + scaled(30s);
            while (!first_answer.load() && Clock::now() < deadline) {
                most_threads = std::max(most_threads, own_threads(thread_count(server.pid())));
                std::this_thread::sleep_for(1ms);  // a sampling interval, not a synchronisation
            }
            return;
        }
        struct Answered {  // also when get() throws, so the sampler stops
            std::atomic<bool>& flag;
            int& status;
            ~Answered() {
                if (status != 503) flag.store(true);
            }
        } answered{first_answer, status[static_cast<std::size_t>(i)]};
        status[static_cast<std::size_t>(i)] = get(server.port(), target, 20s).status;
    });
    INFO("most threads seen: " << most_threads);
    CHECK(most_threads <= 3);  // main + 2; the skeleton starts one per client
    for (int s : status) CHECK((s == 200 || s == 503));
    // The first two accepted always get a place; a late one may get a freed place.
    CHECK(std::count(status.begin(), status.end(), 200) >= 2);
    CHECK(eventually([&] { return own_threads(thread_count(server.pid())) == 1; }, 5s));
}

TEST_CASE("without --max-connections every client gets a thread", "[lab]") {
    ServerProcess server;
    std::vector<std::unique_ptr<Client>> held = connected_clients(server.port(), 5);
    CHECK(get(server.port(), "/").status == 200);
    // main + 5; the thread that served get() ends soon after it answered.
    CHECK(eventually([&] { return own_threads(thread_count(server.pid())) == 6; }, 5s));
}

TEST_CASE("--max-connections rejects bad values", "[lab]") {
    for (const char* bad : {"-1", "abc", "99999999999"}) {
        INFO(bad);
        CHECK_THROWS(ServerProcess({"--max-connections", bad}));
    }
}
