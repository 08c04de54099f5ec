// tour: every chapter's server through the same short scenarios, side by side.
//
//   build/tools/tour [--chapters 01,03,07] [--quick] [--out DIR]
//
// For each build/chapters/NN_*/server it runs, with build/tools/loadgen:
//   queue       -n 30 -c 10 on /sleep?ms=100 (the seeds' ab experiment at a
//               tenth of the scale): p50 / p99 / max latency;
//   idle        100 silent keep-alive connections for one second: server CPU,
//               threads, memory per connection held (PSS, so that a fork's
//               shared pages are not counted once per child);
//   throughput  GET / with keep-alive at -c 50 for two seconds: requests/sec.
// It prints one table, and writes DIR/results.md and SVG charts (default
// DIR: build/tour). --quick shrinks every scenario, for CI.
//
//   build/tools/tour --bench [--only STUDY,...] [--quick] [--out DIR]   (make bench)
//   build/tools/tour --lb [--quick] [--out DIR]                           (make lb)
//
// The longer studies, each a Markdown table and an SVG chart in DIR (default
// build/bench): the thread pool sweep (chapter 04, /sleep latency as workers
// vary); throughput and server CPU per request of every event-loop chapter
// (05 on, and nginx through wrk when both are installed); and many idle
// connections (1,000 / 5,000 / 10,000) on the thread-per-connection, poll and
// epoll servers (chapter 03, 07, and 08 on): memory per connection and the
// latency of one active client; /work?ms=10 on chapter 10's worker pool
// (and chapter 04's) as concurrency grows, against the cores x 1000/10 req/s
// a machine can compute; and chapter 11 with N loops against nginx with N
// workers (when nginx and wrk are installed), requests per second and CPU
// time per request. Their names, for --only: pool_sweep, loop_throughput,
// work_sweep, nginx_comparison, many_idle.
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/resource.h>

#include <algorithm>
#include <functional>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "proc.hpp"
#include "process.hpp"
#include "report.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

struct Settings {
    std::vector<std::string> only;  // chapter numbers; empty: all
    bool quick = false;
    bool bench = false;  // the longer studies (make bench) instead of the tour
    bool lb = false;     // nginx as a load balancer in front of chapter 11 (make lb)
    std::vector<std::string> studies;  // --only: these studies of the bench; empty: all
    fs::path out;
};

struct Scenario {
    int queue_n, queue_c, sleep_ms;
    int idle_connections;
    double idle_window_s;
    int throughput_c;
    double throughput_s;
};

Scenario scenario_for(bool quick) {
    if (quick) return {10, 5, 50, 20, 0.5, 10, 0.5};
    return {30, 10, 100, 100, 1.0, 50, 2.0};
}

struct Result {
    std::string chapter;
    std::string model;
    double p50_ms = -1, p99_ms = -1, max_ms = -1;
    double throughput_rps = -1;
    double idle_cpu_percent = -1;
    long threads = -1;
    long held = -1;
    double pss_kib_per_connection = -1;
    double vm_kib_per_connection = -1;
    std::string error;
};

// ---- small helpers ------------------------------------------------------------

fs::path own_directory() { return fs::canonical("/proc/self/exe").parent_path(); }

// The number after "key": in a flat JSON line (loadgen --json, /stats).
std::optional<double> json_number(const std::string& json, const std::string& key) {
    const std::string quoted = "\"" + key + "\":";
    const std::size_t at = json.find(quoted);
    if (at == std::string::npos) return std::nullopt;
    return std::strtod(json.c_str() + at + quoted.size(), nullptr);
}

std::optional<std::string> json_string(const std::string& json, const std::string& key) {
    const std::string quoted = "\"" + key + "\":\"";
    const std::size_t at = json.find(quoted);
    if (at == std::string::npos) return std::nullopt;
    const std::size_t start = at + quoted.size();
    return json.substr(start, json.find('"', start) - start);
}

// Runs loadgen with --json and returns its one line of output.
std::string run_loadgen(const fs::path& loadgen, std::vector<std::string> args, std::chrono::seconds timeout) {
    std::vector<std::string> argv{loadgen.string(), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    common::ChildProcess child(argv);
    std::string out;
    const int status = child.finish(out, timeout);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw std::runtime_error("loadgen failed: " + args.back());
    return out;
}

struct TreeSample {
    long threads = 0, sockets = 0;
    long pss_kib = 0, vm_kib = 0;
};

TreeSample sample_tree(pid_t pid) {
    TreeSample s;
    for (pid_t p : common::proc::process_tree(pid)) {
        s.threads += std::max(0L, common::proc::thread_count(p));
        s.sockets += std::max(0L, common::proc::socket_count(p));
        s.pss_kib += std::max(0L, common::proc::pss_kib(p));
        s.vm_kib += std::max(0L, common::proc::vm_kib(p));
    }
    return s;
}

std::string shell_line(const std::string& command) {
    std::string out;
    if (std::FILE* p = ::popen(command.c_str(), "r")) {
        char buf[256];
        while (std::fgets(buf, sizeof buf, p)) out += buf;
        ::pclose(p);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

std::string machine_description() {
    utsname u{};
    ::uname(&u);
    std::string cpu = shell_line("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    while (!cpu.empty() && cpu.front() == ' ') cpu.erase(0, 1);
    return std::to_string(std::thread::hardware_concurrency()) + " CPU (" + (cpu.empty() ? "?" : cpu) + "), Linux " +
           u.release;
}

// ---- the scenarios ------------------------------------------------------------

void run_queue(Result& r, const fs::path& loadgen, std::uint16_t port, const Scenario& s) {
    const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/sleep?ms=" + std::to_string(s.sleep_ms);
    const std::string json = run_loadgen(
        loadgen, {"-n", std::to_string(s.queue_n), "-c", std::to_string(s.queue_c), "--timeout", "20", url}, 60s);
    r.p50_ms = json_number(json, "p50_ms").value_or(-1);
    r.p99_ms = json_number(json, "p99_ms").value_or(-1);
    r.max_ms = json_number(json, "max_ms").value_or(-1);
}

void run_idle(Result& r, const fs::path& loadgen, pid_t server, std::uint16_t port, const Scenario& s) {
    const TreeSample before = sample_tree(server);
    const double hold_s = s.idle_window_s + 1.5;
    char hold[32];
    std::snprintf(hold, sizeof hold, "%.1f", hold_s);
    common::ChildProcess holder({loadgen.string(), "--json", "--idle", std::to_string(s.idle_connections), "-n", "0",
                                 "-t", hold, "http://127.0.0.1:" + std::to_string(port) + "/"});
    // Let the server take the connections it will take (all of them, or, for
    // chapter 01, one): wait until its socket count stops growing.
    const Clock::time_point settle_deadline = Clock::now() + 1000ms;
    long last = -1;
    while (Clock::now() < settle_deadline) {
        const long sockets = sample_tree(server).sockets;
        if (sockets - before.sockets >= s.idle_connections) break;
        if (sockets == last && sockets > before.sockets) break;
        last = sockets;
        std::this_thread::sleep_for(100ms);  // sampling interval
    }
    const double cpu_before = common::proc::cpu_seconds(server);
    const Clock::time_point start = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(s.idle_window_s));  // the measurement window
    const double wall = std::chrono::duration<double>(Clock::now() - start).count();
    const double cpu = common::proc::cpu_seconds(server) - cpu_before;
    const TreeSample during = sample_tree(server);
    r.idle_cpu_percent = 100.0 * cpu / wall;
    r.threads = during.threads;
    r.held = during.sockets - before.sockets;
    if (r.held > 0) {
        // Memory is counted in pages, so a few connections may show no growth
        // (or a little shrinkage from freed pages): never below zero.
        r.pss_kib_per_connection =
            std::max(0.0, static_cast<double>(during.pss_kib - before.pss_kib) / static_cast<double>(r.held));
        r.vm_kib_per_connection =
            std::max(0.0, static_cast<double>(during.vm_kib - before.vm_kib) / static_cast<double>(r.held));
    }
    std::string ignored;
    holder.finish(ignored, std::chrono::seconds(static_cast<int>(hold_s) + 10));
}

void run_throughput(Result& r, const fs::path& loadgen, std::uint16_t port, const Scenario& s) {
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%.1f", s.throughput_s);
    const std::string json =
        run_loadgen(loadgen,
                    {"-k", "-c", std::to_string(s.throughput_c), "-t", seconds, "--timeout", "5",
                     "http://127.0.0.1:" + std::to_string(port) + "/"},
                    60s);
    r.throughput_rps = json_number(json, "requests_per_second").value_or(-1);
}

Result tour_chapter(const fs::path& server_binary, const fs::path& loadgen, const Scenario& s) {
    Result r;
    r.chapter = server_binary.parent_path().filename().string();
    try {
        {
            common::StartedServer server = common::start_server(server_binary.string(), {});
            if (std::optional<std::string> body = common::http_get(server.port, "/stats"))
                r.model = json_string(*body, "model").value_or("?");
            run_queue(r, loadgen, server.port, s);
        }
        {
            // A fresh server for the idle scenario, so the queue's leftovers
            // (threads, children) do not count as idle cost.
            common::StartedServer server = common::start_server(server_binary.string(), {});
            run_idle(r, loadgen, server.process->pid(), server.port, s);
        }
        {
            common::StartedServer server = common::start_server(server_binary.string(), {});
            run_throughput(r, loadgen, server.port, s);
        }
    } catch (const std::exception& e) {
        r.error = e.what();
    }
    return r;
}

// ---- the report -----------------------------------------------------------------

std::string cell(double v) { return v < 0 ? "n/a" : report::format_number(v); }

report::Row header() {
    return {"chapter", "model", "p50 ms", "p99 ms", "max ms", "req/s", "idle CPU %", "threads", "held", "KiB/conn",
            "VM KiB/conn"};
}

report::Row row_of(const Result& r) {
    if (!r.error.empty()) return {r.chapter, "error: " + r.error};
    return {r.chapter,
            r.model,
            cell(r.p50_ms),
            cell(r.p99_ms),
            cell(r.max_ms),
            cell(r.throughput_rps),
            cell(r.idle_cpu_percent),
            std::to_string(r.threads),
            std::to_string(r.held),
            cell(r.pss_kib_per_connection),
            cell(r.vm_kib_per_connection)};
}

void write_file(const fs::path& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

void write_charts(const fs::path& dir, const std::vector<Result>& results, const Scenario& s) {
    std::vector<std::string> names;
    for (const Result& r : results) names.push_back(r.chapter);
    auto values = [&](auto field) {
        std::vector<double> v;
        for (const Result& r : results) v.push_back(r.error.empty() ? field(r) : -1);
        return v;
    };
    report::BarChart latency;
    latency.title = "待ち行列: /sleep?ms=" + std::to_string(s.sleep_ms) + " を -n " + std::to_string(s.queue_n) +
                    " -c " + std::to_string(s.queue_c) + " (レイテンシ)";
    latency.y_label = "ミリ秒";
    latency.categories = names;
    latency.series = {{"p50", "#1f77b4", values([](const Result& r) { return r.p50_ms; })},
                      {"p99", "#ff7f0e", values([](const Result& r) { return r.p99_ms; })}};
    write_file(dir / "latency.svg", report::render_svg(latency));

    report::BarChart idle;
    idle.title = "アイドル接続 " + std::to_string(s.idle_connections) + " 本を抱えたときの CPU 使用率";
    idle.y_label = "1 CPU に対する %";
    idle.categories = names;
    idle.series = {{"CPU %", "#d62728", values([](const Result& r) { return r.idle_cpu_percent; })}};
    write_file(dir / "idle_cpu.svg", report::render_svg(idle));

    report::BarChart memory;
    memory.title = "アイドル接続 1 本あたりのメモリ";
    memory.y_label = "KiB / 接続";
    memory.categories = names;
    memory.log_scale = true;
    memory.series = {{"PSS (実メモリ)", "#2ca02c", values([](const Result& r) { return r.pss_kib_per_connection; })},
                     {"仮想メモリ", "#9467bd", values([](const Result& r) { return r.vm_kib_per_connection; })}};
    write_file(dir / "memory.svg", report::render_svg(memory));

    report::BarChart throughput;
    throughput.title = "スループット: GET / を keep-alive、-c " + std::to_string(s.throughput_c);
    throughput.y_label = "リクエスト / 秒";
    throughput.categories = names;
    throughput.series = {{"req/s", "#17becf", values([](const Result& r) { return r.throughput_rps; })}};
    write_file(dir / "throughput.svg", report::render_svg(throughput));
}

std::string results_markdown(const std::vector<Result>& results, const Scenario& s, bool quick) {
    std::vector<report::Row> rows;
    for (const Result& r : results) rows.push_back(row_of(r));
    char date[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::ostringstream md;
    md << "# ツアーの結果 (make tour" << (quick ? " --quick" : "") << ")\n\n"
       << "- 日時: " << date << "\n- マシン: " << machine_description() << "\n"
       << "- シナリオ: 待ち行列 `loadgen -n " << s.queue_n << " -c " << s.queue_c << " /sleep?ms=" << s.sleep_ms
       << "`、アイドル `loadgen --idle " << s.idle_connections << "` を " << s.idle_window_s
       << " 秒、スループット `loadgen -k -c " << s.throughput_c << " -t " << s.throughput_s << " /`\n"
       << "- 数値はマシンによって変わります。\n\n"
       << report::markdown_table(header(), rows) << "\n"
       << "- held: サーバーが受け付けて抱えた接続の数 (第 01 章は 1 本だけ受け付け、残りはカーネルの待ち行列にいます)。\n"
       << "- KiB/conn: 接続 1 本あたりに増えたメモリ (PSS: 共有ページは共有するプロセスで割った実メモリ)。"
          "VM KiB/conn: 同じく仮想メモリ (スレッドのスタックが見えます)。\n"
       << "- req/s: 第 01 章は keep-alive の接続 1 本にしか答えないので、その 1 本の速さです"
          " (ほかの接続は最後まで待たされます)。\n\n"
       << "![レイテンシ](latency.svg)\n\n![アイドル時の CPU](idle_cpu.svg)\n\n![メモリ](memory.svg)\n\n"
       << "![スループット](throughput.svg)\n";
    return md.str();
}

// ---- make bench: the longer studies -----------------------------------------------

fs::path chapter_server(const fs::path& build, const std::string& number) {
    for (const auto& entry : fs::directory_iterator(build / "chapters"))
        if (entry.path().filename().string().rfind(number + "_", 0) == 0 && fs::exists(entry.path() / "server"))
            return entry.path() / "server";
    return {};
}

std::string seconds_arg(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", s);
    return buf;
}

bool have_program(const std::string& name) { return !shell_line("command -v " + name).empty(); }

// A port that was free a moment ago (nginx.conf cannot say "port 0"): the
// kernel picks one for chapter 01's server, which is then stopped.
std::uint16_t free_port(const fs::path& build) {
    common::StartedServer probe = common::start_server(chapter_server(build, "01").string(), {});
    const std::uint16_t port = probe.port;
    probe.process->stop();
    return port;
}

// nginx in the foreground (daemon off) with a configuration of ours in dir,
// ready once `probe_target` on `port` answers. Its master and workers are
// one process tree: common::proc::cpu_seconds(pid()) counts them all.
class Nginx {
public:
    // `http` is the body of the http { } block; the rest is set here: access
    // logging off, pid and error log and temporary files in dir.
    Nginx(const fs::path& dir_in, int workers, const std::string& http, std::uint16_t port,
          const std::string& probe_target = "/") {
        const fs::path dir = fs::absolute(dir_in);  // nginx resolves relative paths against -p
        fs::create_directories(dir);
        {
            std::ofstream conf(dir / "nginx.conf");
            conf << "daemon off;\nworker_processes " << workers << ";\npid " << (dir / "nginx.pid").string()
                 << ";\nerror_log " << (dir / "error.log").string() << ";\nevents { worker_connections 4096; }\n"
                 << "http {\n  access_log off;\n  client_body_temp_path " << dir.string() << ";\n  proxy_temp_path "
                 << dir.string() << ";\n"
                 << http << "}\n";
        }
        process_ = std::make_unique<common::ChildProcess>(std::vector<std::string>{
            shell_line("command -v nginx"), "-c", (dir / "nginx.conf").string(), "-p", dir.string()});
        for (int i = 0; i < 50 && !common::http_get(port, probe_target, 100ms); ++i)
            std::this_thread::sleep_for(100ms);  // waiting for nginx to listen, bounded
    }
    pid_t pid() const { return process_->pid(); }
    void stop() { process_->stop(); }

private:
    std::unique_ptr<common::ChildProcess> process_;
};

// wrk's result: requests completed and requests per second ("123 requests in
// 3.00s", "Requests/sec: 41.0"); -1 when wrk said nothing of the kind.
struct WrkResult {
    double requests = -1, rps = -1;
};
WrkResult run_wrk(int connections, int seconds, std::uint16_t port, const std::string& target) {
    // wrk takes whole seconds only ("-d3s"; "-d3.0s" is refused). One thread:
    // the load generator should take as little of the machine as it can.
    const std::string out = shell_line("wrk -t1 -c" + std::to_string(connections) + " -d" + std::to_string(seconds) +
                                       "s http://127.0.0.1:" + std::to_string(port) + target +
                                       " 2>&1 | grep -E 'requests in|Requests/sec' | tr '\\n' ' '");
    WrkResult r;
    if (const auto at = out.find(" requests in"); at != std::string::npos) {
        const auto start = out.find_last_of(' ', at - 1);
        r.requests = std::strtod(out.c_str() + (start == std::string::npos ? 0 : start + 1), nullptr);
    }
    if (const auto at = out.find("Requests/sec:"); at != std::string::npos)
        r.rps = std::strtod(out.c_str() + at + 13, nullptr);
    return r;
}

// The greeting chapter 11 sends for GET /, for nginx to send the same bytes.
const char* const kGreeting = "Hello from the concurrent-servers tutorial!\\n";

struct Study {
    std::string name, title, markdown;
    report::BarChart chart;  // written as NAME.svg
};

// Chapter 04's latency as the pool grows: K requests on W workers take ceil(K/W) waves.
Study pool_sweep(const fs::path& build, const fs::path& loadgen, bool quick) {
    const fs::path server = chapter_server(build, "04");
    const int requests = quick ? 16 : 64, concurrency = 16, sleep_ms = quick ? 20 : 50;
    report::BarChart chart;
    chart.title = "スレッドプール: /sleep?ms=" + std::to_string(sleep_ms) + " を -n " + std::to_string(requests) +
                  " -c " + std::to_string(concurrency) + "、ワーカー数を変える";
    chart.y_label = "ミリ秒";
    chart.series = {{"p50", "#1f77b4", {}}, {"p99", "#ff7f0e", {}}};
    std::vector<report::Row> rows;
    for (int workers : {1, 2, 4, 8, 16}) {
        common::StartedServer s = common::start_server(server.string(), {"--workers", std::to_string(workers)});
        const std::string json =
            run_loadgen(loadgen,
                        {"-n", std::to_string(requests), "-c", std::to_string(concurrency), "--timeout", "30",
                         "http://127.0.0.1:" + std::to_string(s.port) + "/sleep?ms=" + std::to_string(sleep_ms)},
                        120s);
        const double p50 = json_number(json, "p50_ms").value_or(-1), p99 = json_number(json, "p99_ms").value_or(-1);
        chart.categories.push_back(std::to_string(workers) + " workers");
        chart.series[0].values.push_back(p50);
        chart.series[1].values.push_back(p99);
        const int waves = (std::min(requests, concurrency) + workers - 1) / workers;
        rows.push_back({std::to_string(workers), cell(p50), cell(p99),
                        cell(json_number(json, "requests_per_second").value_or(-1)),
                        std::to_string(waves * sleep_ms)});
    }
    return {"pool_sweep", chart.title,
            report::markdown_table({"workers", "p50 ms", "p99 ms", "req/s", "ceil(c/W) x sleep ms"}, rows) +
                "\n![](pool_sweep.svg)\n",
            chart};
}

// Throughput and server CPU per request of the one-thread loops (and nginx).
Study loop_throughput(const fs::path& build, const fs::path& loadgen, bool quick, const fs::path& out) {
    // Quick: half a second per chapter, to leave room in CI's ten seconds for the /work study.
    const double seconds = quick ? 0.5 : 3.0;
    report::BarChart chart;
    chart.title = "GET / を keep-alive、-c 50: スループット";
    chart.y_label = "リクエスト / 秒";
    chart.series = {{"req/s", "#17becf", {}}};
    std::vector<report::Row> rows;
    // Every event-loop chapter that exists (05 on).
    for (const char* number : {"05", "06", "07", "08", "09", "10", "11"}) {
        const fs::path server = chapter_server(build, number);
        if (server.empty()) continue;
        common::StartedServer s = common::start_server(server.string(), {});
        const double cpu_before = common::proc::cpu_seconds(s.process->pid());
        const std::string json = run_loadgen(
            loadgen, {"-k", "-c", "50", "-t", seconds_arg(seconds), "http://127.0.0.1:" + std::to_string(s.port) + "/"},
            60s);
        const double cpu = common::proc::cpu_seconds(s.process->pid()) - cpu_before;
        const double rps = json_number(json, "requests_per_second").value_or(-1);
        const double complete = json_number(json, "complete").value_or(0);
        const std::string name = server.parent_path().filename().string();
        chart.categories.push_back(name);
        chart.series[0].values.push_back(rps);
        rows.push_back({name + " (loadgen)", cell(rps), complete > 0 ? cell(1e6 * cpu / complete) : "n/a",
                        cell(json_number(json, "p99_ms").value_or(-1))});
    }
    // nginx measured by wrk, when both are installed: a yardstick, not a contest.
    if (have_program("nginx") && have_program("wrk")) {
        const std::uint16_t port = free_port(build);
        Nginx nginx(out / "nginx", 1,
                    "  server {\n    listen 127.0.0.1:" + std::to_string(port) +
                        ";\n    location = / { default_type \"text/plain; charset=utf-8\"; return 200 \"" + kGreeting +
                        "\"; }\n  }\n",
                    port);
        const double rps = run_wrk(50, static_cast<int>(seconds), port, "/").rps;
        nginx.stop();
        chart.categories.push_back("nginx (wrk)");
        chart.series[0].values.push_back(rps);
        rows.push_back({"nginx, 1 worker (wrk -t1)", cell(rps), "n/a", "n/a"});
    } else {
        rows.push_back({"nginx (wrk)", "skipped: nginx or wrk is not installed", "", ""});
    }
    return {"loop_throughput", chart.title,
            report::markdown_table({"server", "req/s", "server CPU µs / request", "p99 ms"}, rows) +
                "\n![](loop_throughput.svg)\n",
            chart};
}

// Chapter 11 with --loops N against nginx with worker_processes N, in one
// run on one machine: the same greeting for GET /, keep-alive, access log
// off, driven by wrk and by our loadgen at -c 50. Requests per second, and
// server CPU time per request: user + system time of every thread (ours) or
// process (nginx's master and workers), divided by the requests completed.
// Each cell is the median of `rounds` runs, the servers taking turns, so
// that a slow moment of the machine does not favour one of them.
Study nginx_comparison(const fs::path& build, const fs::path& loadgen, bool quick, const fs::path& out) {
    report::BarChart chart;
    chart.title = "第 11 章 --loops N と nginx worker_processes N: GET / を keep-alive、-c 50、CPU 時間 / リクエスト";
    chart.y_label = "サーバーの CPU µs / リクエスト";
    const fs::path server = chapter_server(build, "11");
    if (server.empty() || !have_program("nginx") || !have_program("wrk")) {
        std::printf(" skipped: %s is not installed or built;", server.empty() ? "chapter 11" : "nginx or wrk");
        return {"nginx_comparison", chart.title,
                "skipped: nginx or wrk is not installed (apt-get install nginx-light wrk), or chapter 11 is not built\n",
                chart};
    }
    const long cores = std::max(1u, std::thread::hardware_concurrency());
    std::vector<int> loops{1};
    for (int n = 2; n <= cores && n <= 8; n *= 2) loops.push_back(n);
    const int rounds = quick ? 1 : 3, seconds = quick ? 1 : 3, connections = 50;
    struct Cell {
        std::vector<double> rps, cpu_us;
    };
    // [server: 0 chapter 11, 1 nginx][driver: 0 wrk, 1 loadgen][loops index]
    std::vector<Cell> cells(2 * 2 * loops.size());
    auto at = [&](int srv, int drv, std::size_t n) -> Cell& { return cells[(srv * 2 + drv) * loops.size() + n]; };
    for (int round = 0; round < rounds; ++round)
        for (std::size_t n = 0; n < loops.size(); ++n)
            for (int srv = 0; srv < 2; ++srv) {
                std::unique_ptr<common::StartedServer> ours;
                std::unique_ptr<Nginx> nginx;
                std::uint16_t port = 0;
                pid_t pid = -1;
                if (srv == 0) {
                    ours = std::make_unique<common::StartedServer>(
                        common::start_server(server.string(), {"--loops", std::to_string(loops[n])}));
                    port = ours->port;
                    pid = ours->process->pid();
                } else {
                    port = free_port(build);
                    nginx = std::make_unique<Nginx>(
                        out / "nginx", loops[n],
                        // keepalive_requests: nginx closes a keep-alive connection after
                        // 1000 requests by default; ours never does. Equal terms.
                        "  keepalive_requests 1000000000;\n  server {\n    listen 127.0.0.1:" + std::to_string(port) +
                            ";\n    location = / { default_type \"text/plain; charset=utf-8\"; return 200 \"" +
                            kGreeting + "\"; }\n  }\n",
                        port);
                    pid = nginx->pid();
                }
                for (int drv = 0; drv < 2; ++drv) {
                    const double cpu_before = common::proc::cpu_seconds(pid);
                    double requests = -1, rps = -1;
                    if (drv == 0) {
                        const WrkResult w = run_wrk(connections, seconds, port, "/");
                        requests = w.requests;
                        rps = w.rps;
                    } else {
                        const std::string json =
                            run_loadgen(loadgen,
                                        {"-k", "-c", std::to_string(connections), "-t", std::to_string(seconds),
                                         "http://127.0.0.1:" + std::to_string(port) + "/"},
                                        60s);
                        requests = json_number(json, "complete").value_or(-1);
                        rps = json_number(json, "requests_per_second").value_or(-1);
                    }
                    const double cpu = common::proc::cpu_seconds(pid) - cpu_before;
                    at(srv, drv, n).rps.push_back(rps);
                    at(srv, drv, n).cpu_us.push_back(requests > 0 ? 1e6 * cpu / requests : -1);
                }
                if (nginx) nginx->stop();
            }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v.empty() ? -1 : v[v.size() / 2];
    };
    std::vector<report::Row> rows;
    chart.series = {{"第 11 章 (wrk)", "#e377c2", {}}, {"nginx (wrk)", "#2ca02c", {}},
                    {"第 11 章 (loadgen)", "#f7b6d2", {}}, {"nginx (loadgen)", "#98df8a", {}}};
    for (std::size_t n = 0; n < loops.size(); ++n) {
        chart.categories.push_back("N = " + std::to_string(loops[n]));
        for (int drv = 0; drv < 2; ++drv) {
            const char* driver = drv == 0 ? "wrk -t1" : "loadgen";
            const double our_rps = median(at(0, drv, n).rps), our_cpu = median(at(0, drv, n).cpu_us);
            const double ng_rps = median(at(1, drv, n).rps), ng_cpu = median(at(1, drv, n).cpu_us);
            chart.series[drv * 2].values.push_back(our_cpu);
            chart.series[drv * 2 + 1].values.push_back(ng_cpu);
            rows.push_back({std::to_string(loops[n]), driver, cell(our_rps), cell(ng_rps), cell(our_cpu), cell(ng_cpu),
                            our_cpu > 0 && ng_cpu > 0 ? cell(our_cpu / ng_cpu) : "n/a"});
        }
    }
    const std::string note = "\n- N: 第 11 章の `--loops N` と nginx の `worker_processes N`。-c " +
                             std::to_string(connections) + "、" + std::to_string(seconds) + " 秒、" +
                             std::to_string(rounds) + " 回の中央値。ロードジェネレーターも同じマシンで動きます。\n";
    return {"nginx_comparison", chart.title,
            report::markdown_table({"N", "driver", "ch11 req/s", "nginx req/s", "ch11 CPU µs/req",
                                    "nginx CPU µs/req", "ch11 / nginx CPU"},
                                   rows) +
                note + "\n![](nginx_comparison.svg)\n",
            chart};
}

// /work?ms=N is N ms of CPU: W workers on C cores finish at most
// min(c, W, C) x 1000/N requests a second, however many clients wait. Chapter
// 10 with --workers = cores (its default, given explicitly), and chapter 04's
// thread pool with as many workers. A connection per request (no -k): in
// chapter 04 a keep-alive connection would hold its worker to the end.
Study work_sweep(const fs::path& build, const fs::path& loadgen, bool quick) {
    const int work_ms = 10;
    const long cores = std::max(1u, std::thread::hardware_concurrency());
    const std::vector<int> concurrencies = quick ? std::vector<int>{1, 4} : std::vector<int>{1, 2, 4, 8};
    const double seconds = quick ? 0.3 : 3.0;
    const double per_core = 1000.0 / work_ms;
    report::BarChart chart;
    chart.title = "/work?ms=" + std::to_string(work_ms) + " のスループット、--workers " + std::to_string(cores) +
                  " (= コア数)、-c を変える";
    chart.y_label = "リクエスト / 秒";
    for (int c : concurrencies) chart.categories.push_back("-c " + std::to_string(c));
    report::BarSeries expected{"min(c, コア数) x 1000/" + std::to_string(work_ms), "#7f7f7f", {}};
    for (int c : concurrencies) expected.values.push_back(static_cast<double>(std::min<long>(c, cores)) * per_core);
    std::vector<report::Row> rows;
    // Chapter 04 only in the full run: a comparison, not the subject.
    const std::vector<std::pair<std::string, std::string>> servers =
        quick ? std::vector<std::pair<std::string, std::string>>{{"10", "#8c564b"}}
              : std::vector<std::pair<std::string, std::string>>{{"10", "#8c564b"}, {"04", "#2ca02c"}};
    for (const auto& [number, color] : servers) {
        const fs::path server = chapter_server(build, number);
        if (server.empty()) continue;
        const std::string name = server.parent_path().filename().string();
        report::BarSeries series{name, color, {}};
        for (int c : concurrencies) {
            common::StartedServer s = common::start_server(server.string(), {"--workers", std::to_string(cores)});
            const double cpu_before = common::proc::cpu_seconds(s.process->pid());
            const std::string json = run_loadgen(
                loadgen,
                {"-c", std::to_string(c), "-t", seconds_arg(seconds), "--timeout", "10",
                 "http://127.0.0.1:" + std::to_string(s.port) + "/work?ms=" + std::to_string(work_ms)},
                60s);
            const double cpu = common::proc::cpu_seconds(s.process->pid()) - cpu_before;
            const double rps = json_number(json, "requests_per_second").value_or(-1);
            const double complete = json_number(json, "complete").value_or(0);
            series.values.push_back(rps);
            rows.push_back({name, std::to_string(c), cell(rps),
                            cell(static_cast<double>(std::min<long>(c, cores)) * per_core),
                            complete > 0 ? cell(1e3 * cpu / complete) : "n/a",
                            cell(json_number(json, "p50_ms").value_or(-1)),
                            cell(json_number(json, "p99_ms").value_or(-1)),
                            cell(json_number(json, "non_2xx").value_or(-1) + json_number(json, "failed").value_or(-1))});
        }
        chart.series.push_back(series);
    }
    chart.series.push_back(expected);
    char plateau[160];
    std::snprintf(plateau, sizeof plateau,
                  "このマシンの予想: コア %ld 個 x 1000/%d ms = 毎秒 %.0f 件で頭打ち (-c %ld から)。\n\n", cores,
                  work_ms, static_cast<double>(cores) * per_core, cores);
    return {"work_sweep", chart.title,
            plateau +
                report::markdown_table({"server", "c", "req/s", "expected req/s", "server CPU ms / request", "p50 ms",
                                        "p99 ms", "not 2xx or failed"},
                                       rows) +
                "\n- expected: min(c, コア数) x 1000/" + std::to_string(work_ms) +
                "。loadgen も同じマシンの CPU を使うので、頭打ちは少し下に出ます。\n\n![](work_sweep.svg)\n",
            chart};
}

// Many idle connections: memory per connection, and what one active client pays.
Study many_idle(const fs::path& build, const fs::path& loadgen, bool quick) {
    const std::vector<int> counts = quick ? std::vector<int>{200} : std::vector<int>{1000, 5000, 10000};
    report::BarChart chart;
    chart.title = "アイドル接続を抱えたときの、1 本の活動中クライアントの p99";
    chart.y_label = "ミリ秒";
    chart.log_scale = true;
    std::vector<report::Row> rows;
    // Thread per connection, poll, and every epoll chapter that exists (08 on).
    const std::vector<std::pair<std::string, std::string>> servers{
        {"03", "#2ca02c"}, {"07", "#d62728"}, {"08", "#1f77b4"}, {"09", "#9467bd"}, {"10", "#8c564b"}, {"11", "#e377c2"}};
    for (const auto& [number, color] : servers) {
        const fs::path server = chapter_server(build, number);
        if (server.empty()) continue;
        const std::string name = server.parent_path().filename().string();
        report::BarSeries series{name, color, {}};
        for (int idle : counts) {
            if (chart.categories.size() < counts.size()) chart.categories.push_back(std::to_string(idle) + " 本");
            common::StartedServer s = common::start_server(server.string(), {});
            ::prlimit(s.process->pid(), RLIMIT_NOFILE, nullptr, nullptr);
            rlimit limit{static_cast<rlim_t>(idle + 1000), static_cast<rlim_t>(idle + 1000)};
            ::prlimit(s.process->pid(), RLIMIT_NOFILE, &limit, nullptr);  // the server needs a descriptor each
            const TreeSample before = sample_tree(s.process->pid());
            const std::string url = "http://127.0.0.1:" + std::to_string(s.port) + "/";
            common::ChildProcess holder(
                {loadgen.string(), "--json", "--idle", std::to_string(idle), "-n", "0", "-t", "30", url});
            const Clock::time_point deadline = Clock::now() + 25s;
            while (Clock::now() < deadline && sample_tree(s.process->pid()).sockets - before.sockets < idle)
                std::this_thread::sleep_for(100ms);  // sampling until all are held, bounded
            const TreeSample during = sample_tree(s.process->pid());
            const long held = during.sockets - before.sockets;
            const std::string json = run_loadgen(loadgen, {"-k", "-c", "1", "-t", quick ? "0.5" : "2", url}, 60s);
            const double p99 = json_number(json, "p99_ms").value_or(-1);
            series.values.push_back(p99);
            rows.push_back({name, std::to_string(idle), std::to_string(held), std::to_string(during.threads),
                            held > 0 ? cell(static_cast<double>(during.pss_kib - before.pss_kib) / held) : "n/a",
                            held > 0 ? cell(static_cast<double>(during.vm_kib - before.vm_kib) / held) : "n/a",
                            cell(json_number(json, "requests_per_second").value_or(-1)), cell(p99)});
            holder.stop();
        }
        chart.series.push_back(series);
    }
    return {"many_idle", chart.title,
            report::markdown_table({"server", "idle", "held", "threads", "KiB/conn (PSS)", "VM KiB/conn",
                                    "active req/s", "active p99 ms"},
                                   rows) +
                "\n![](many_idle.svg)\n",
            chart};
}

int run_bench(const Settings& settings, const fs::path& build, const fs::path& loadgen) {
    const fs::path out = settings.out == build / "tour" ? build / "bench" : settings.out;
    fs::create_directories(out);
    std::string md = "# ベンチマーク (make bench" + std::string(settings.quick ? " --quick" : "") + ")\n\n- マシン: " +
                     machine_description() + "\n- 数値はマシンによって変わります。\n";
    using Runner = std::function<Study()>;
    struct Entry {
        std::string name, label;
        Runner run;
    };
    const std::vector<Entry> studies{
        {"pool_sweep", "thread pool sweep", [&] { return pool_sweep(build, loadgen, settings.quick); }},
        {"loop_throughput", "loop throughput", [&] { return loop_throughput(build, loadgen, settings.quick, out); }},
        {"work_sweep", "/work on a worker pool", [&] { return work_sweep(build, loadgen, settings.quick); }},
        {"nginx_comparison", "chapter 11 against nginx",
         [&] { return nginx_comparison(build, loadgen, settings.quick, out); }},
        {"many_idle", "many idle connections", [&] { return many_idle(build, loadgen, settings.quick); }}};
    for (const auto& [name, label, run] : studies) {
        if (!settings.studies.empty() &&
            std::find(settings.studies.begin(), settings.studies.end(), name) == settings.studies.end())
            continue;
        const Clock::time_point start = Clock::now();
        std::printf("%s ...", label.c_str());
        std::fflush(stdout);
        Study study = run();
        std::printf(" done (%.0f s)\n", std::chrono::duration<double>(Clock::now() - start).count());
        md += "\n## " + study.title + "\n\n" + study.markdown;
        if (!study.chart.categories.empty()) write_file(out / (study.name + ".svg"), report::render_svg(study.chart));
        std::printf("\n%s\n", study.markdown.substr(0, study.markdown.find("\n![")).c_str());
    }
    write_file(out / "results.md", md);
    std::printf("wrote %s/results.md and its charts\n", out.string().c_str());
    return 0;
}

// ---- make lb: nginx in front of several instances -------------------------------------

// One number from a server's /stats at 127.0.0.N:port, or -1.
double stat_of(std::uint16_t port, std::uint32_t ipv4, const std::string& name) {
    const std::optional<std::string> json = common::http_get(port, "/stats", 2s, ipv4);
    return json ? json_number(*json, name).value_or(-1) : -1;
}

// Chapter 11 instances on 127.0.0.2, .3, ... (--loops 1 each: one core's
// worth), nginx on 127.0.0.1 in front of them as a load balancer, loadgen
// at -c 50 keep-alive against nginx. Four runs: one instance alone, without
// nginx; through nginx with keep-alive to the backends; through nginx with a
// new backend connection per request; and through nginx while one backend
// is stopped (SIGTERM) a second into the run.
int run_lb(const Settings& settings, const fs::path& build, const fs::path& loadgen) {
    const fs::path out = settings.out == build / "tour" ? build / "lb" : settings.out;
    fs::create_directories(out);
    const fs::path server = chapter_server(build, "11");
    if (server.empty()) throw std::runtime_error("chapter 11 is not built: run make servers");
    if (!have_program("nginx")) {
        std::printf("make lb: skipped, nginx is not installed (apt-get install nginx-light)\n");
        return 0;
    }
    const int backends = 3, seconds = settings.quick ? 1 : 3, connections = 50;
    auto address = [](int i) -> std::uint32_t { return 0x7f000002u + static_cast<std::uint32_t>(i); };
    auto dotted = [](std::uint32_t a) {
        return std::to_string(a >> 24) + "." + std::to_string((a >> 16) & 255) + "." + std::to_string((a >> 8) & 255) +
               "." + std::to_string(a & 255);
    };
    struct Run {
        std::string label;
        double rps = -1, complete = 0, failed = 0, non_2xx = 0, cpu_us = -1;
        std::vector<double> per_backend_requests, per_backend_connections;
    };
    std::vector<Run> runs;
    auto start_backends = [&](int count) {
        std::vector<std::unique_ptr<common::StartedServer>> list;
        for (int i = 0; i < count; ++i)
            list.push_back(std::make_unique<common::StartedServer>(
                common::start_server(server.string(), {"--loops", "1", "--host", dotted(address(i))})));
        return list;
    };
    auto measure = [&](const std::string& label, std::uint16_t port, std::vector<pid_t> pids,
                       std::vector<std::unique_ptr<common::StartedServer>>& instances,
                       const std::function<void()>& during) {
        double cpu_before = 0;
        for (pid_t p : pids) cpu_before += common::proc::cpu_seconds(p);
        std::vector<double> req_before, conn_before;
        for (std::size_t i = 0; i < instances.size(); ++i) {
            req_before.push_back(stat_of(instances[i]->port, address(static_cast<int>(i)), "requests"));
            conn_before.push_back(stat_of(instances[i]->port, address(static_cast<int>(i)), "connections_total"));
        }
        std::thread side;
        if (during) side = std::thread(during);
        const std::string json =
            run_loadgen(loadgen,
                        {"-k", "-c", std::to_string(connections), "-t", std::to_string(seconds), "--timeout", "10",
                         "http://127.0.0.1:" + std::to_string(port) + "/"},
                        60s);
        if (side.joinable()) side.join();
        double cpu = 0;
        for (pid_t p : pids) cpu += common::proc::cpu_seconds(p);
        cpu -= cpu_before;
        Run run;
        run.label = label;
        run.rps = json_number(json, "requests_per_second").value_or(-1);
        run.complete = json_number(json, "complete").value_or(0);
        run.failed = json_number(json, "failed").value_or(0);
        run.non_2xx = json_number(json, "non_2xx").value_or(0);
        run.cpu_us = run.complete > 0 ? 1e6 * cpu / run.complete : -1;
        for (std::size_t i = 0; i < instances.size(); ++i) {
            // The two /stats requests before and after count themselves.
            const double r = stat_of(instances[i]->port, address(static_cast<int>(i)), "requests");
            const double c = stat_of(instances[i]->port, address(static_cast<int>(i)), "connections_total");
            run.per_backend_requests.push_back(r < 0 || req_before[i] < 0 ? -1 : r - req_before[i] - 1);
            run.per_backend_connections.push_back(c < 0 || conn_before[i] < 0 ? -1 : c - conn_before[i] - 1);
        }
        runs.push_back(run);
    };
    auto upstream_conf = [&](const std::vector<std::unique_ptr<common::StartedServer>>& instances,
                             std::uint16_t port, bool keepalive) {
        std::string conf = "  keepalive_requests 1000000000;\n  upstream backends {\n";
        for (std::size_t i = 0; i < instances.size(); ++i)
            conf += "    server " + dotted(address(static_cast<int>(i))) + ":" + std::to_string(instances[i]->port) +
                    " max_fails=1 fail_timeout=10s;\n";
        // keepalive: idle connections to the backends each worker keeps for
        // reuse; HTTP/1.1 and an empty Connection header make them persistent.
        if (keepalive) conf += "    keepalive 64;\n    keepalive_requests 1000000000;\n";
        conf += "  }\n  server {\n    listen 127.0.0.1:" + std::to_string(port) +
                ";\n    location / {\n      proxy_pass http://backends;\n";
        if (keepalive) conf += "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n";
        conf += "    }\n  }\n";
        return conf;
    };
    {
        auto one = start_backends(1);
        measure("1 台に直接 (nginx なし)", one[0]->port, {one[0]->process->pid()}, one, {});
    }
    for (int variant = 0; variant < 3; ++variant) {
        auto instances = start_backends(backends);
        const std::uint16_t port = free_port(build);
        Nginx nginx(out / ("nginx" + std::to_string(variant)), 1, upstream_conf(instances, port, variant != 1), port);
        std::vector<pid_t> pids{nginx.pid()};
        for (auto& i : instances) pids.push_back(i->process->pid());
        std::function<void()> during;
        if (variant == 2)  // a backend leaves a second into the run
            during = [&] {
                std::this_thread::sleep_for(1s);
                instances[0]->process->stop();
            };
        const char* labels[] = {"nginx → 3 台、バックエンドへ keep-alive", "nginx → 3 台、リクエストごとに新しい接続",
                                "nginx → 3 台、1 秒後に 1 台を SIGTERM で止める"};
        measure(labels[variant], port, pids, instances, during);
        nginx.stop();
    }
    std::vector<report::Row> rows;
    for (const Run& r : runs) {
        std::string share, conns;
        for (std::size_t i = 0; i < r.per_backend_requests.size(); ++i) {
            share += (i ? " / " : "") + cell(r.per_backend_requests[i]);
            conns += (i ? " / " : "") + cell(r.per_backend_connections[i]);
        }
        rows.push_back({r.label, cell(r.rps), cell(r.cpu_us), cell(r.failed + r.non_2xx), share, conns});
    }
    std::string md = "# nginx をロードバランサーに (make lb" + std::string(settings.quick ? " LB_ARGS=--quick" : "") +
                     ")\n\n- マシン: " + machine_description() +
                     "\n- 第 11 章のサーバー (`--loops 1`) を 127.0.0.2、127.0.0.3、127.0.0.4 に、nginx "
                     "(`worker_processes 1`) を 127.0.0.1 に置き、loadgen `-k -c " +
                     std::to_string(connections) + " -t " + std::to_string(seconds) +
                     "` で nginx に GET / を送ります。\n- CPU は nginx とバックエンド全部の user + system です。\n\n" +
                     report::markdown_table({"構成", "req/s", "CPU µs / リクエスト", "失敗", "バックエンドごとのリクエスト",
                                             "バックエンドごとの新しい接続"},
                                            rows);
    write_file(out / "results.md", md);
    std::printf("%s\nwrote %s/results.md\n", md.c_str(), out.string().c_str());
    return 0;
}

Settings parse(int argc, char** argv) {
    Settings settings;
    settings.out = own_directory().parent_path() / "tour";
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--quick") {
            settings.quick = true;
        } else if (arg == "--bench") {
            settings.bench = true;
        } else if (arg == "--lb") {
            settings.lb = true;
        } else if (arg == "--chapters" && i + 1 < argc) {
            std::stringstream list(argv[++i]);
            for (std::string item; std::getline(list, item, ',');)
                if (!item.empty()) settings.only.push_back(item);
        } else if (arg == "--only" && i + 1 < argc) {
            std::stringstream list(argv[++i]);
            for (std::string item; std::getline(list, item, ',');)
                if (!item.empty()) settings.studies.push_back(item);
        } else if (arg == "--out" && i + 1 < argc) {
            settings.out = argv[++i];
        } else {
            std::fprintf(stderr,
                         "usage: tour [--bench [--only pool_sweep,loop_throughput,work_sweep,nginx_comparison,"
                         "many_idle] | --lb] [--chapters 01,03,...] [--quick] [--out DIR]\n");
            std::exit(2);
        }
    }
    return settings;
}

}  // namespace

int main(int argc, char** argv) {
    const Settings settings = parse(argc, argv);
    try {
        const fs::path build = own_directory().parent_path();  // build/tools/tour -> build
        const fs::path loadgen = build / "tools" / "loadgen";
        if (!fs::exists(loadgen)) throw std::runtime_error(loadgen.string() + " is missing: run make tools");
        if (settings.bench) return run_bench(settings, build, loadgen);
        if (settings.lb) return run_lb(settings, build, loadgen);
        std::vector<fs::path> servers;
        for (const auto& entry : fs::directory_iterator(build / "chapters")) {
            const std::string name = entry.path().filename().string();
            if (!settings.only.empty() &&
                std::none_of(settings.only.begin(), settings.only.end(),
                             [&](const std::string& n) { return name.rfind(n + "_", 0) == 0; }))
                continue;
            if (fs::exists(entry.path() / "server")) servers.push_back(entry.path() / "server");
        }
        std::sort(servers.begin(), servers.end());
        if (servers.empty()) throw std::runtime_error("no chapter servers under " + (build / "chapters").string());

        const Scenario scenario = scenario_for(settings.quick);
        std::vector<Result> results;
        const Clock::time_point tour_start = Clock::now();
        for (std::size_t i = 0; i < servers.size(); ++i) {
            const Clock::time_point start = Clock::now();
            std::printf("[%zu/%zu] %s ...", i + 1, servers.size(),
                        servers[i].parent_path().filename().string().c_str());
            std::fflush(stdout);
            results.push_back(tour_chapter(servers[i], loadgen, scenario));
            std::printf(" %s (%.1f s)\n", results.back().error.empty() ? "done" : "FAILED",
                        std::chrono::duration<double>(Clock::now() - start).count());
        }
        std::vector<report::Row> rows;
        for (const Result& r : results) rows.push_back(row_of(r));
        std::printf("\n%s\n", report::text_table(header(), rows).c_str());

        fs::create_directories(settings.out);
        write_file(settings.out / "results.md", results_markdown(results, scenario, settings.quick));
        write_charts(settings.out, results, scenario);
        std::printf("wrote %s/results.md and latency.svg, idle_cpu.svg, memory.svg, throughput.svg (%.0f s in all)\n",
                    settings.out.string().c_str(),
                    std::chrono::duration<double>(Clock::now() - tour_start).count());
        const bool failed = std::any_of(results.begin(), results.end(), [](const Result& r) { return !r.error.empty(); });
        return failed ? 1 : 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tour: %s\n", e.what());
        return 1;
    }
}
