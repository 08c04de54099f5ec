// Reports for the tour and the benchmarks: aligned text tables, Markdown
// tables and SVG bar charts, written by our own code (no plotting packages),
// so that a measurement becomes a picture a lecturer can put on a slide.
#pragma once

#include <string>
#include <vector>

namespace report {

using Row = std::vector<std::string>;

// Columns padded to their widest cell; numbers (cells starting with a digit)
// are right-aligned. Widths count UTF-8 characters, not bytes.
std::string text_table(const Row& header, const std::vector<Row>& rows);
std::string markdown_table(const Row& header, const std::vector<Row>& rows);

// "12.3", "1234", "0.04": a number with about three significant digits.
std::string format_number(double value);

struct BarSeries {
    std::string name;   // in the legend
    std::string color;  // "#1f77b4"
    std::vector<double> values;  // one per category; negative: no bar ("n/a")
};

struct BarChart {
    std::string title;
    std::string y_label;               // with its unit: "ms", "% of one CPU"
    std::vector<std::string> categories;  // the x axis, one group of bars each
    std::vector<BarSeries> series;
    bool log_scale = false;            // for values spanning several powers of ten
};

// A self-contained SVG document (no scripts, no external fonts).
std::string render_svg(const BarChart& chart);

// The y axis: a "nice" maximum (1, 2 or 5 times a power of ten) at or above
// max_value, and the tick values from 0 up to it.
std::vector<double> nice_ticks(double max_value);

std::string xml_escape(const std::string& text);

}  // namespace report
