// Unit tests of the report code (tables, SVG charts) and a smoke run of the
// tour itself against chapter 01.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "process.hpp"
#include "report.hpp"
#include "testing.hpp"

namespace {

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

}  // namespace

TEST_CASE("nice ticks end at 1, 2 or 5 times a power of ten", "[report]") {
    CHECK(report::nice_ticks(7.3) == std::vector<double>{0, 2, 4, 6, 8, 10});
    CHECK(report::nice_ticks(180).back() == 200);
    CHECK(report::nice_ticks(0.4).back() == Approx(0.5));
    CHECK(report::nice_ticks(1000).back() == 1000);
    CHECK(report::nice_ticks(0).back() == 1);  // no data: still an axis
    CHECK(report::nice_ticks(5000).size() >= 3);
}

TEST_CASE("numbers keep about three significant digits", "[report]") {
    CHECK(report::format_number(1004) == "1004");
    CHECK(report::format_number(51.6) == "51.6");
    CHECK(report::format_number(3.14159) == "3.14");
    CHECK(report::format_number(0.0234) == "0.0234");
    CHECK(report::format_number(0) == "0");
}

TEST_CASE("text tables align columns, numbers to the right", "[report]") {
    const std::string t = report::text_table({"chapter", "p50 ms"}, {{"01_blocking", "1004"}, {"03_threads", "51.6"}});
    std::istringstream lines(t);
    std::string header, rule, first, second;
    std::getline(lines, header);
    std::getline(lines, rule);
    std::getline(lines, first);
    std::getline(lines, second);
    CHECK(header == "chapter      p50 ms");
    CHECK(first == "01_blocking    1004");  // names left, numbers right
    CHECK(second == "03_threads     51.6");
    CHECK(rule == std::string(header.size(), '-'));
}

TEST_CASE("text tables count Japanese characters as two columns", "[report]") {
    const std::string t = report::text_table({"名前", "n"}, {{"ab", "1"}});
    CHECK(t.find("名前  n\n") == 0);
    CHECK(t.find("ab    1\n") != std::string::npos);
}

TEST_CASE("Markdown tables", "[report]") {
    CHECK(report::markdown_table({"a", "b"}, {{"x", "1"}}) == "| a | b |\n| --- | ---: |\n| x | 1 |\n");
}

TEST_CASE("an SVG bar chart has its bars, axes, labels and legend", "[report]") {
    report::BarChart chart;
    chart.title = "レイテンシ <p50 & p99>";
    chart.y_label = "ミリ秒";
    chart.categories = {"01_blocking", "03_thread", "07_poll"};
    chart.series = {{"p50", "#1f77b4", {1004, 51.6, 1003}}, {"p99", "#ff7f0e", {1011, 52, -1}}};
    const std::string svg = report::render_svg(chart);
    CHECK(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0) == 0);
    CHECK(svg.find("</svg>") != std::string::npos);
    CHECK(count(svg, "class=\"bar\"") == 5);  // six values, one missing
    CHECK(count(svg, ">n/a<") == 1);
    CHECK(svg.find("レイテンシ &lt;p50 &amp; p99&gt;") != std::string::npos);  // escaped title
    CHECK(svg.find(">ミリ秒<") != std::string::npos);
    CHECK(svg.find(">01_blocking<") != std::string::npos);
    CHECK(svg.find(">p99<") != std::string::npos);  // legend
    CHECK(svg.find(">2000<") != std::string::npos);  // top tick above 1011
    CHECK(svg.find("<script") == std::string::npos);
}

TEST_CASE("legend entries leave room for their names", "[report]") {
    report::BarChart chart;
    chart.title = "t";
    chart.y_label = "ms";
    chart.categories = {"a"};
    chart.series = {{"03_thread_per_connection", "#111111", {1}}, {"07_poll", "#222222", {2}}};
    const std::string svg = report::render_svg(chart);
    // The swatches are the 16x16 rects at y=46; the first name needs about
    // 24 columns of 8 px after its swatch.
    std::vector<double> xs;
    for (std::size_t at = svg.find("<rect x=\""); at != std::string::npos; at = svg.find("<rect x=\"", at + 1))
        if (svg.compare(svg.find('"', at + 9) + 1, 7, " y=\"46\"") == 0) xs.push_back(std::stod(svg.substr(at + 9)));
    REQUIRE(xs.size() == 2);
    CHECK(xs[1] - xs[0] >= 22 + 24 * 8);
}

TEST_CASE("a log-scale chart spans whole decades", "[report]") {
    report::BarChart chart;
    chart.title = "memory";
    chart.y_label = "KiB";
    chart.categories = {"a", "b"};
    chart.series = {{"v", "#000000", {3, 57000}}};
    chart.log_scale = true;
    const std::string svg = report::render_svg(chart);
    CHECK(svg.find(">1<") != std::string::npos);
    CHECK(svg.find(">100000<") != std::string::npos);
    CHECK(svg.find("KiB (log)") != std::string::npos);
}

TEST_CASE("the tour runs a chapter and writes its table and charts", "[tour]") {
    namespace fs = std::filesystem;
    const fs::path build = fs::canonical("/proc/self/exe").parent_path().parent_path().parent_path();
    const fs::path out = fs::temp_directory_path() / ("tour-test-" + std::to_string(::getpid()));
    common::ChildProcess tour(
        {(build / "tools" / "tour").string(), "--quick", "--chapters", "01", "--out", out.string()});
    std::string printed;
    const int status = tour.finish(printed, std::chrono::seconds(60));
    INFO(printed);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    CHECK(printed.find("[1/1] 01_blocking ... done") != std::string::npos);
    std::ifstream md(out / "results.md");
    std::stringstream text;
    text << md.rdbuf();
    CHECK(text.str().find("| 01_blocking | blocking |") != std::string::npos);
    for (const char* chart : {"latency.svg", "idle_cpu.svg", "memory.svg", "throughput.svg"}) {
        INFO(chart);
        CHECK(fs::file_size(out / chart) > 500);
    }
    fs::remove_all(out);
}
