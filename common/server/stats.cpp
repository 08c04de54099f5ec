#include "stats.hpp"

#include <fstream>
#include <string>

namespace common {

namespace {

long current_thread_count() {
    std::ifstream status("/proc/self/status");
    std::string key;
    while (status >> key) {
        if (key == "Threads:") {
            long threads = 0;
            status >> threads;
            return threads;
        }
        status.ignore(4096, '\n');
    }
    return -1;
}

}  // namespace

std::string Stats::to_json() const {
    std::string json = "{\"model\":\"" + model_ + "\"";
    auto field = [&json](const std::string& name, long long value) {
        json += ",\"" + name + "\":" + std::to_string(value);
    };
    field("connections_open", static_cast<long long>(connections_open.load()));
    field("connections_total", static_cast<long long>(connections_total.load()));
    field("requests", static_cast<long long>(requests.load()));
    field("threads", current_thread_count());
    field("accept_pauses", static_cast<long long>(g_accept_pauses.load()));
    for (const NamedCounter& counter : counters_) field(counter.name, static_cast<long long>(counter.value.load()));
    json += "}\n";
    return json;
}

}  // namespace common
