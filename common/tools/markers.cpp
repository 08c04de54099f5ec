// markers: keeps code in slides, READMEs and lab skeletons identical to the
// sources it comes from.
//
//   markers skeleton SOLUTION.cpp     print the lab skeleton: every block
//                                     "// LAB BEGIN" ... "// LAB SKELETON" ... "// LAB END"
//                                     keeps only its skeleton part, with the
//                                     leading "//> " of each line removed.
//   markers check FILE.md...          every code block preceded by
//                                     <!-- code: PATH#NAME --> must equal the
//                                     region "// ANCHOR: NAME" ... "// ANCHOR_END: NAME"
//                                     of PATH (dedented, nested ANCHOR lines dropped).
//   markers update FILE.md...         rewrite those code blocks from the sources.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

std::vector<std::string> read_lines(const std::string& path, bool& ok) {
    std::ifstream in(path);
    ok = static_cast<bool>(in);
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) lines.push_back(line);
    return lines;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

// ---- skeleton ---------------------------------------------------------------

int skeleton(const std::string& path) {
    bool ok = false;
    std::vector<std::string> lines = read_lines(path, ok);
    if (!ok) {
        std::cerr << "markers: cannot read " << path << "\n";
        return 1;
    }
    enum { outside, solution, skeleton_part } state = outside;
    int blocks = 0;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        const std::string& line = lines[i];
        std::string_view t = trim(line);
        if (t.rfind("// LAB BEGIN", 0) == 0) {
            if (state != outside) return std::cerr << path << ":" << i + 1 << ": nested LAB BEGIN\n", 1;
            state = solution;
            ++blocks;
        } else if (t == "// LAB SKELETON") {
            if (state != solution) return std::cerr << path << ":" << i + 1 << ": LAB SKELETON outside a block\n", 1;
            state = skeleton_part;
        } else if (t == "// LAB END") {
            if (state == outside) return std::cerr << path << ":" << i + 1 << ": LAB END without BEGIN\n", 1;
            state = outside;
        } else if (state == outside) {
            std::cout << line << "\n";
        } else if (state == skeleton_part) {
            std::size_t at = line.find("//>");
            if (at == std::string::npos || trim(line.substr(0, at)).size() != 0)
                return std::cerr << path << ":" << i + 1 << ": skeleton lines start with //>\n", 1;
            std::string rest = line.substr(at + 3);
            if (!rest.empty() && rest.front() == ' ') rest.erase(0, 1);
            std::cout << (rest.empty() ? "" : line.substr(0, at) + rest) << "\n";
        }
    }
    if (state != outside) return std::cerr << path << ": unterminated LAB block\n", 1;
    if (blocks == 0) return std::cerr << path << ": no LAB blocks\n", 1;
    return 0;
}

// ---- code blocks in Markdown ------------------------------------------------

// The lines between "// ANCHOR: name" and "// ANCHOR_END: name", dedented.
bool anchor_region(const std::string& spec, std::vector<std::string>& out, std::string& error) {
    std::size_t hash = spec.find('#');
    if (hash == std::string::npos) return error = "expected PATH#NAME, got " + spec, false;
    const std::string path = spec.substr(0, hash), name = spec.substr(hash + 1);
    bool ok = false;
    std::vector<std::string> lines = read_lines(path, ok);
    if (!ok) return error = "cannot read " + path, false;
    bool inside = false, found = false;
    for (const std::string& line : lines) {
        std::string_view t = trim(line);
        if (t == "// ANCHOR: " + name) {
            inside = found = true;
            continue;
        }
        if (t == "// ANCHOR_END: " + name) {
            inside = false;
            continue;
        }
        if (!inside || t.rfind("// ANCHOR: ", 0) == 0 || t.rfind("// ANCHOR_END: ", 0) == 0) continue;
        out.push_back(line);
    }
    if (!found) return error = "no ANCHOR " + name + " in " + path, false;
    std::size_t indent = std::string::npos;
    for (const std::string& line : out)
        if (!trim(line).empty()) indent = std::min(indent, line.find_first_not_of(' '));
    for (std::string& line : out) line = trim(line).empty() ? "" : line.substr(indent);
    return true;
}

// Checks or rewrites one Markdown file. Returns the number of problems.
int process(const std::string& path, bool update) {
    bool ok = false;
    std::vector<std::string> lines = read_lines(path, ok);
    if (!ok) return std::cerr << "markers: cannot read " << path << "\n", 1;
    const std::string open = "<!-- code: ";
    std::vector<std::string> result;
    int problems = 0;
    for (std::size_t i = 0; i < lines.size(); ++i) {
        result.push_back(lines[i]);
        std::string_view t = trim(lines[i]);
        if (t.rfind(open, 0) != 0) continue;
        std::string spec(trim(t.substr(open.size(), t.find("-->") - open.size())));
        std::size_t fence = i + 1;
        if (fence >= lines.size() || trim(lines[fence]).rfind("```", 0) != 0) {
            std::cerr << path << ":" << i + 1 << ": " << spec << " is not followed by a code block\n";
            ++problems;
            continue;
        }
        std::size_t close = fence + 1;
        while (close < lines.size() && trim(lines[close]) != "```") ++close;
        if (close >= lines.size()) {
            std::cerr << path << ":" << fence + 1 << ": unterminated code block\n";
            return problems + 1;
        }
        std::vector<std::string> expected;
        std::string error;
        if (!anchor_region(spec, expected, error)) {
            std::cerr << path << ":" << i + 1 << ": " << error << "\n";
            ++problems;
            continue;
        }
        std::vector<std::string> actual(lines.begin() + static_cast<long>(fence) + 1, lines.begin() + static_cast<long>(close));
        if (actual != expected && !update) {
            std::size_t k = 0;
            while (k < actual.size() && k < expected.size() && actual[k] == expected[k]) ++k;
            std::cerr << path << ":" << fence + 2 + k << ": code differs from " << spec << "\n"
                      << "  slide:  " << (k < actual.size() ? actual[k] : "(ends)") << "\n"
                      << "  source: " << (k < expected.size() ? expected[k] : "(ends)") << "\n";
            ++problems;
        }
        result.push_back(lines[fence]);
        result.insert(result.end(), expected.begin(), expected.end());
        result.push_back(lines[close]);
        i = close;
    }
    if (update && result != lines) {
        std::ofstream out(path);
        for (const std::string& line : result) out << line << "\n";
        std::cout << "updated " << path << "\n";
    }
    return problems;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string usage = "usage: markers skeleton FILE | markers check FILE... | markers update FILE...\n";
    if (argc < 2) return std::cerr << usage, 2;
    const std::string command = argv[1];
    if (command == "skeleton") return argc == 3 ? skeleton(argv[2]) : (std::cerr << usage, 2);
    if (argc == 2 && (command == "check" || command == "update")) {
        std::cout << "no Markdown files with code blocks to " << command << "\n";
        return 0;
    }
    if (command != "check" && command != "update") return std::cerr << usage, 2;
    int problems = 0;
    for (int i = 2; i < argc; ++i) problems += process(argv[i], command == "update");
    if (problems > 0) {
        std::cerr << problems << " code block(s) differ from their sources; 'make slides-sync' copies them over\n";
        return 1;
    }
    std::cout << "code blocks match their sources (" << argc - 2 << " files)\n";
    return 0;
}
