#include "report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace report {

namespace {

// Characters, not bytes: UTF-8 continuation bytes do not start a character.
std::size_t display_width(const std::string& s) {
    std::size_t width = 0;
    for (unsigned char c : s) {
        if ((c & 0xC0) == 0x80) continue;
        width += c >= 0xE0 ? 2 : 1;  // CJK (3- and 4-byte sequences) take two columns in a terminal
    }
    return width;
}

// "12.5", "-3", "n/a": right-aligned; "01_blocking": a name, left-aligned.
bool looks_numeric(const std::string& s) {
    if (s == "n/a") return true;
    if (s.empty()) return false;
    for (char c : s)
        if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '%')) return false;
    return true;
}

}  // namespace

std::string format_number(double value) {
    char buffer[64];
    const double magnitude = std::fabs(value);
    if (magnitude >= 100 || value == std::floor(value)) std::snprintf(buffer, sizeof buffer, "%.0f", value);
    else if (magnitude >= 10) std::snprintf(buffer, sizeof buffer, "%.1f", value);
    else if (magnitude >= 1) std::snprintf(buffer, sizeof buffer, "%.2f", value);
    else std::snprintf(buffer, sizeof buffer, "%.3g", value);
    return buffer;
}

std::string text_table(const Row& header, const std::vector<Row>& rows) {
    std::vector<std::size_t> widths(header.size(), 0);
    auto measure = [&](const Row& row) {
        for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i)
            widths[i] = std::max(widths[i], display_width(row[i]));
    };
    measure(header);
    for (const Row& row : rows) measure(row);
    auto line = [&](const Row& row) {
        std::string out;
        for (std::size_t i = 0; i < widths.size(); ++i) {
            const std::string cell = i < row.size() ? row[i] : "";
            const std::string pad(widths[i] - display_width(cell), ' ');
            out += (i ? "  " : "") + (looks_numeric(cell) ? pad + cell : cell + pad);
        }
        while (!out.empty() && out.back() == ' ') out.pop_back();
        return out + "\n";
    };
    std::string out = line(header);
    std::size_t total = 0;
    for (std::size_t w : widths) total += w;
    out += std::string(total + 2 * (widths.size() - 1), '-') + "\n";
    for (const Row& row : rows) out += line(row);
    return out;
}

std::string markdown_table(const Row& header, const std::vector<Row>& rows) {
    auto line = [](const Row& row) {
        std::string out = "|";
        for (const std::string& cell : row) out += " " + cell + " |";
        return out + "\n";
    };
    std::string out = line(header) + "|";
    for (std::size_t i = 0; i < header.size(); ++i) out += i == 0 ? " --- |" : " ---: |";
    out += "\n";
    for (const Row& row : rows) out += line(row);
    return out;
}

std::vector<double> nice_ticks(double max_value) {
    if (!(max_value > 0)) max_value = 1;
    double power = std::pow(10.0, std::floor(std::log10(max_value)));
    double lead = 1;  // the top is lead x power, lead in {1, 2, 5}
    for (double candidate : {1.0, 2.0, 5.0, 10.0}) {
        lead = candidate;
        if (lead * power >= max_value * (1 - 1e-9)) break;
    }
    if (lead == 10) {
        lead = 1;
        power *= 10;
    }
    const double top = lead * power;
    const int steps = lead == 2 ? 4 : 5;  // 0, 0.5, 1, 1.5, 2 or 0, 1, ..., 5 (times power)
    std::vector<double> ticks;
    for (int i = 0; i <= steps; ++i) ticks.push_back(top * i / steps);
    return ticks;
}

std::string xml_escape(const std::string& text) {
    std::string out;
    for (char c : text) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

std::string render_svg(const BarChart& chart) {
    const double width = 960, height = 520;
    const double left = 90, right = 30, top = 70, bottom = 130;  // room for slanted chapter names
    const double plot_w = width - left - right, plot_h = height - top - bottom;

    double max_value = 0, min_positive = 0;
    for (const BarSeries& s : chart.series)
        for (double v : s.values) {
            max_value = std::max(max_value, v);
            if (v > 0) min_positive = min_positive == 0 ? v : std::min(min_positive, v);
        }
    // The y mapping: linear from 0, or log10 across whole decades.
    std::vector<double> ticks;
    double low = 0, high = 1;
    if (chart.log_scale) {
        low = std::floor(std::log10(min_positive > 0 ? min_positive : 1));
        high = std::ceil(std::log10(max_value > 0 ? max_value : 10));
        if (high <= low) high = low + 1;
        for (double e = low; e <= high; ++e) ticks.push_back(std::pow(10.0, e));
    } else {
        ticks = nice_ticks(max_value);
        high = ticks.back();
    }
    auto y_of = [&](double v) {
        double fraction = chart.log_scale ? (std::log10(std::max(v, std::pow(10.0, low))) - low) / (high - low)
                                          : v / high;
        return top + plot_h * (1 - std::clamp(fraction, 0.0, 1.0));
    };

    std::string svg;
    auto add = [&svg](const std::string& s) { svg += s + "\n"; };
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" width=\"%.0f\" height=\"%.0f\" "
                  "font-family=\"'Noto Sans CJK JP', 'Hiragino Sans', sans-serif\">",
                  width, height, width, height);
    add(buf);
    add("<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"34\" font-size=\"24\" font-weight=\"bold\" fill=\"#222\">", left);
    add(buf + xml_escape(chart.title) + "</text>");

    // Grid lines and tick labels.
    for (double t : ticks) {
        const double y = y_of(t);
        std::snprintf(buf, sizeof buf,
                      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#dddddd\"/>"
                      "<text x=\"%.1f\" y=\"%.1f\" font-size=\"15\" text-anchor=\"end\" fill=\"#333\">%s</text>",
                      left, y, left + plot_w, y, left - 8, y + 5, format_number(t).c_str());
        add(buf);
    }
    // Axes and the y label (rotated).
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\" stroke-width=\"2\"/>"
                  "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\" stroke-width=\"2\"/>",
                  left, top, left, top + plot_h, left, top + plot_h, left + plot_w, top + plot_h);
    add(buf);
    std::snprintf(buf, sizeof buf,
                  "<text transform=\"translate(22 %.1f) rotate(-90)\" font-size=\"16\" text-anchor=\"middle\" "
                  "fill=\"#333\">",
                  top + plot_h / 2);
    add(buf + xml_escape(chart.y_label + (chart.log_scale ? " (log)" : "")) + "</text>");

    // Bars: one group per category, one bar per series.
    const std::size_t groups = std::max<std::size_t>(chart.categories.size(), 1);
    const std::size_t per_group = std::max<std::size_t>(chart.series.size(), 1);
    const double group_w = plot_w / static_cast<double>(groups);
    const double bar_w = std::min(60.0, group_w * 0.8 / static_cast<double>(per_group));
    for (std::size_t g = 0; g < chart.categories.size(); ++g) {
        const double group_x = left + group_w * static_cast<double>(g);
        const double first_x = group_x + (group_w - bar_w * static_cast<double>(per_group)) / 2;
        for (std::size_t s = 0; s < chart.series.size(); ++s) {
            const BarSeries& series = chart.series[s];
            const double x = first_x + bar_w * static_cast<double>(s);
            const double v = g < series.values.size() ? series.values[g] : -1;
            if (v < 0) {
                std::snprintf(buf, sizeof buf,
                              "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\" fill=\"#888\">n/a</text>",
                              x + bar_w / 2, top + plot_h - 6);
                add(buf);
                continue;
            }
            const double y = y_of(v);
            std::snprintf(buf, sizeof buf,
                          "<rect class=\"bar\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\">"
                          "<title>%s: %s</title></rect>",
                          x, y, bar_w - 2, top + plot_h - y, series.color.c_str(),
                          xml_escape(series.name).c_str(), format_number(v).c_str());
            add(buf);
            std::snprintf(buf, sizeof buf,
                          "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\" fill=\"#222\">%s</text>",
                          x + bar_w / 2 - 1, y - 4, format_number(v).c_str());
            add(buf);
        }
        std::snprintf(buf, sizeof buf,
                      "<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" text-anchor=\"end\" fill=\"#222\" "
                      "transform=\"rotate(-25 %.1f %.1f)\">",
                      group_x + group_w / 2 + 10, top + plot_h + 22, group_x + group_w / 2 + 10, top + plot_h + 22);
        add(buf + xml_escape(chart.categories[g]) + "</text>");
    }
    // Legend, top right: each entry as wide as its swatch and name (about
    // 8.5 px per column at font-size 15; a CJK character takes two columns).
    auto entry_width = [](const BarSeries& series) {
        return 22.0 + 8.5 * static_cast<double>(display_width(series.name)) + 28.0;
    };
    double legend_w = 0;
    for (const BarSeries& series : chart.series) legend_w += entry_width(series);
    double legend_x = std::max(left, left + plot_w - legend_w);
    for (const BarSeries& series : chart.series) {
        std::snprintf(buf, sizeof buf,
                      "<rect x=\"%.1f\" y=\"46\" width=\"16\" height=\"16\" fill=\"%s\"/>"
                      "<text x=\"%.1f\" y=\"59\" font-size=\"15\" fill=\"#222\">",
                      legend_x, series.color.c_str(), legend_x + 22);
        add(buf + xml_escape(series.name) + "</text>");
        legend_x += entry_width(series);
    }
    add("</svg>");
    return svg;
}

}  // namespace report
