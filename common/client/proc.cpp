#include "proc.hpp"

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>

namespace common::proc {

namespace {

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// The value after "Key:" in /proc/PID/status, in its unit (kB for memory).
long status_field(pid_t pid, std::string_view key) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.compare(0, key.size(), key) == 0 && line.size() > key.size() && line[key.size()] == ':')
            return std::strtol(line.c_str() + key.size() + 1, nullptr, 10);
    }
    return -1;
}

// Fields of /proc/PID/stat after the command name (which may contain spaces).
std::vector<std::string> stat_fields(const std::string& stat_path) {
    std::string text = read_file(stat_path);
    std::vector<std::string> fields;
    std::size_t close = text.rfind(')');
    if (close == std::string::npos) return fields;
    std::istringstream rest(text.substr(close + 2));
    std::string field;
    while (rest >> field) fields.push_back(field);
    return fields;  // fields[0] is the state (field 3 of proc(5))
}

}  // namespace

std::vector<pid_t> process_tree(pid_t pid) {
    // Parent of every process, from /proc/*/stat; then a walk down from pid.
    std::vector<std::pair<pid_t, pid_t>> parent_of;  // (pid, ppid)
    if (DIR* dir = ::opendir("/proc")) {
        while (dirent* e = ::readdir(dir)) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            std::vector<std::string> f = stat_fields(std::string("/proc/") + e->d_name + "/stat");
            if (f.size() > 1) parent_of.emplace_back(std::atoi(e->d_name), std::stoi(f[1]));
        }
        ::closedir(dir);
    }
    std::vector<pid_t> tree{pid};
    for (std::size_t i = 0; i < tree.size(); ++i)
        for (auto [child, parent] : parent_of)
            if (parent == tree[i]) tree.push_back(child);
    return tree;
}

double cpu_seconds(pid_t pid) {
    // utime, stime (fields 14, 15 of proc(5)) of every live process in the
    // tree, plus cutime, cstime (16, 17): children that exited and were reaped.
    const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
    double total = 0;
    for (pid_t p : process_tree(pid)) {
        std::vector<std::string> f = stat_fields("/proc/" + std::to_string(p) + "/stat");
        if (f.size() < 15) continue;
        total += std::stod(f[11]) + std::stod(f[12]);
        if (p == pid) total += std::stod(f[13]) + std::stod(f[14]);
    }
    return total / ticks;
}

long thread_count(pid_t pid) { return status_field(pid, "Threads"); }

long rss_kib(pid_t pid) { return status_field(pid, "VmRSS"); }
long vm_kib(pid_t pid) { return status_field(pid, "VmSize"); }
long peak_rss_kib(pid_t pid) { return status_field(pid, "VmHWM"); }

namespace {

// Sums, over every thread of the tree, /proc/.../schedstat's first field (ns
// on a CPU) and, if asked, its second (ns waiting in a run queue).
double schedstat_seconds(pid_t pid, bool with_waiting) {
    double total_ns = 0;
    for (pid_t p : process_tree(pid)) {
        const std::string tasks = "/proc/" + std::to_string(p) + "/task";
        DIR* dir = ::opendir(tasks.c_str());
        if (!dir) continue;
        while (dirent* e = ::readdir(dir)) {
            if (e->d_name[0] == '.') continue;
            std::ifstream in(tasks + "/" + e->d_name + "/schedstat");
            double on_cpu_ns = 0, waiting_ns = 0;
            if (in >> on_cpu_ns >> waiting_ns) total_ns += on_cpu_ns + (with_waiting ? waiting_ns : 0);
        }
        ::closedir(dir);
    }
    return total_ns / 1e9;
}

}  // namespace

double runnable_seconds(pid_t pid) { return schedstat_seconds(pid, true); }
double on_cpu_seconds(pid_t pid) { return schedstat_seconds(pid, false); }

long pss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
    std::string key;
    while (in >> key) {
        if (key == "Pss:") {
            long kib = -1;
            in >> kib;
            return kib;
        }
        in.ignore(4096, '\n');
    }
    return -1;
}

long socket_count(pid_t pid) {
    const std::string fds = "/proc/" + std::to_string(pid) + "/fd";
    DIR* dir = ::opendir(fds.c_str());
    if (!dir) return -1;
    long count = 0;
    char target[64];
    while (dirent* e = ::readdir(dir)) {
        if (e->d_name[0] == '.') continue;
        const ssize_t n = ::readlink((fds + "/" + e->d_name).c_str(), target, sizeof target - 1);
        if (n > 0 && std::string_view(target, static_cast<std::size_t>(n)).starts_with("socket:")) ++count;
    }
    ::closedir(dir);
    return count;
}

long open_fd_count(pid_t pid) {
    DIR* dir = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
    if (!dir) return -1;
    long count = 0;
    while (dirent* e = ::readdir(dir))
        if (e->d_name[0] != '.') ++count;
    ::closedir(dir);
    return count;
}

long zombie_children(pid_t pid) {
    DIR* dir = ::opendir("/proc");
    if (!dir) return -1;
    long zombies = 0;
    while (dirent* e = ::readdir(dir)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        std::vector<std::string> f = stat_fields(std::string("/proc/") + e->d_name + "/stat");
        // fields[0] is the state, fields[1] the parent's pid.
        if (f.size() > 1 && f[0] == "Z" && std::stol(f[1]) == pid) ++zombies;
    }
    ::closedir(dir);
    return zombies;
}

int threads_in_nanosleep(pid_t pid) {
    int count = 0;
    for (pid_t p : process_tree(pid)) {
        const std::string tasks = "/proc/" + std::to_string(p) + "/task";
        DIR* dir = ::opendir(tasks.c_str());
        if (!dir) continue;
        while (dirent* e = ::readdir(dir)) {
            if (e->d_name[0] == '.') continue;
            std::string text = read_file(tasks + "/" + e->d_name + "/syscall");
            long nr = std::strtol(text.c_str(), nullptr, 10);
#ifdef SYS_nanosleep
            if (nr == SYS_nanosleep) ++count;
#endif
            if (nr == SYS_clock_nanosleep) ++count;
        }
        ::closedir(dir);
    }
    return count;
}

bool sleeping_in_nanosleep(pid_t pid) { return threads_in_nanosleep(pid) > 0; }

}  // namespace common::proc
