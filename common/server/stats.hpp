// Counters behind GET /stats. Tests read them instead of timing things:
// "the busy loop saw 100,000 EAGAINs" is a fact; "it felt slow" is not.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>

namespace common {

// Counted by common code that has no Stats at hand: accept_client's pauses
// (Accepted::pause). Every Stats reports it as "accept_pauses".
inline std::atomic<std::uint64_t> g_accept_pauses{0};

class Stats {
public:
    explicit Stats(std::string model) : model_(std::move(model)) {}
    Stats(const Stats&) = delete;
    Stats& operator=(const Stats&) = delete;

    std::atomic<std::uint64_t> connections_open{0};
    std::atomic<std::uint64_t> connections_total{0};
    std::atomic<std::uint64_t> requests{0};

    // A counter of the model's own, such as "eagain_reads" or "wakeups".
    // Register all counters at startup, before other threads exist.
    std::atomic<std::uint64_t>& add_counter(std::string name) {
        return counters_.emplace_back(std::move(name)).value;
    }

    // Counts one connection for as long as it lives.
    class ConnectionScope {
    public:
        explicit ConnectionScope(Stats& stats) : stats_(&stats) {
            stats.connections_open.fetch_add(1, std::memory_order_relaxed);
            stats.connections_total.fetch_add(1, std::memory_order_relaxed);
        }
        ConnectionScope(ConnectionScope&& other) noexcept : stats_(std::exchange(other.stats_, nullptr)) {}
        ConnectionScope& operator=(ConnectionScope&&) = delete;
        ~ConnectionScope() {
            if (stats_) stats_->connections_open.fetch_sub(1, std::memory_order_relaxed);
        }

    private:
        Stats* stats_;
    };
    ConnectionScope track_connection() { return ConnectionScope(*this); }

    // {"model": ..., "connections_open": ..., ..., "threads": N, <counters>}.
    // "threads" is read from /proc/self/status, so it is the real number.
    std::string to_json() const;

private:
    struct NamedCounter {
        explicit NamedCounter(std::string n) : name(std::move(n)) {}
        std::string name;
        std::atomic<std::uint64_t> value{0};
    };
    std::string model_;
    std::deque<NamedCounter> counters_;  // a deque never moves its elements
};

}  // namespace common
