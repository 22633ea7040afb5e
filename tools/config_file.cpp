#include "tools/config_file.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "kernels/common.h"

namespace diloco {

namespace {

std::string trim(const std::string& s) {
    const size_t a = s.find_first_not_of(" \t\r");
    if (a == std::string::npos) return "";
    return s.substr(a, s.find_last_not_of(" \t\r") - a + 1);
}

// The value of `key = value`: a quoted TOML string, or a bare word or number up to a comment.
bool parse_value(const std::string& raw, std::string& value) {
    const std::string v = trim(raw);
    if (!v.empty() && (v[0] == '"' || v[0] == '\'')) {
        const size_t end = v.find(v[0], 1);
        if (end == std::string::npos) return false;
        const std::string rest = trim(v.substr(end + 1));
        if (!rest.empty() && rest[0] != '#' && rest[0] != ';') return false;
        value = v.substr(1, end - 1);
        return true;
    }
    const size_t comment = v.find_first_of("#;");
    value = trim(v.substr(0, comment));
    return !value.empty() && value.find_first_of("\"'[]{}=") == std::string::npos;
}

// Parses `--name value` (or the flag alone) alone, with the app's results cleared first, so that
// the option's own conversion and checks judge the value; returns CLI11's complaint, or "" when
// the value is fine. One scratch app serves every line: building one per line made a config file
// cost milliseconds a line (the fuzz target ran at 26 inputs a second).
std::string check_alone(CLI::App& scratch, const std::vector<std::string>& words) {
    scratch.clear();
    std::vector<std::string> reversed(words.rbegin(), words.rend());  // CLI11 takes them reversed
    try {
        scratch.parse(reversed);
    } catch (const CLI::ParseError& e) {
        return e.what();
    }
    return "";
}

}  // namespace

std::vector<std::string> config_file_arguments(const std::string& path, void (*define)(CLI::App*)) {
    std::ifstream f(path);
    DILOCO_CHECK(f, "--config " + path + ": cannot read the file");
    std::ostringstream text;
    text << f.rdbuf();
    return config_text_arguments(text.str(), path, define);
}

ConfigOptions::ConfigOptions(void (*define)(CLI::App*)) {
    define(&known);
    define(&scratch);
    for (CLI::Option* o : scratch.get_options({})) o->required(false);  // --data, --out: not a key's business
}

std::vector<std::string> config_text_arguments(const std::string& text, const std::string& path,
                                               void (*define)(CLI::App*)) {
    ConfigOptions options(define);
    return config_text_arguments(text, path, options);
}

std::vector<std::string> config_text_arguments(const std::string& text, const std::string& path,
                                               ConfigOptions& options) {
    std::istringstream f(text);
    CLI::App& known = options.known;
    CLI::App& scratch = options.scratch;
    std::vector<std::string> args;
    std::string line;
    for (int n = 1; std::getline(f, line); n++) {
        const std::string where = path + ":" + std::to_string(n) + ": ";
        const std::string s = trim(line);
        if (s.empty() || s[0] == '#' || s[0] == ';') continue;
        if (s[0] == '[') {
            DILOCO_CHECK(s == "[train]", where + "unknown section " + s + " (only [train], or none)");
            continue;
        }
        const size_t eq = s.find('=');
        DILOCO_CHECK(eq != std::string::npos && eq > 0, where + "expected `key = value`, found `" + s + "`");
        std::string key = trim(s.substr(0, eq)), value;
        std::replace(key.begin(), key.end(), '_', '-');
        DILOCO_CHECK(key != "config", where + "a config file cannot name another (--config)");
        const CLI::Option* opt = known.get_option_no_throw("--" + key);
        DILOCO_CHECK(opt, where + "unknown key '" + key + "' (the keys are the options of `diloco train --help`)");
        DILOCO_CHECK(parse_value(s.substr(eq + 1), value), where + "key '" + key + "': cannot read the value `" +
                                                              trim(s.substr(eq + 1)) + "`");
        std::vector<std::string> words = {"--" + key};
        if (opt->get_expected_max() == 0) {  // a flag
            DILOCO_CHECK(value == "true" || value == "false",
                         where + "key '" + key + "' is a flag: true or false, not `" + value + "`");
            if (value == "false") continue;
        } else {
            words.push_back(value);
        }
        const std::string complaint = check_alone(scratch, words);
        DILOCO_CHECK(complaint.empty(), where + "key '" + key + "': " + complaint);
        args.insert(args.end(), words.begin(), words.end());
    }
    return args;
}

std::vector<std::string> expand_config_files(int argc, char** argv, const std::string& subcommand,
                                             void (*define)(CLI::App*)) {
    std::vector<std::string> in(argv, argv + argc), out;
    const auto sub = std::find(in.begin() + std::min(argc, 1), in.end(), subcommand);
    if (sub == in.end()) return in;
    out.assign(in.begin(), sub + 1);
    std::vector<std::string> from_files, rest;
    for (auto it = sub + 1; it != in.end(); ++it) {
        std::string file;
        if (*it == "--config") {
            DILOCO_CHECK(it + 1 != in.end(), "--config needs a file");
            file = *++it;
        } else if (it->rfind("--config=", 0) == 0) {
            file = it->substr(9);
        } else {
            rest.push_back(*it);
            continue;
        }
        const std::vector<std::string> a = config_file_arguments(file, define);
        from_files.insert(from_files.end(), a.begin(), a.end());
    }
    out.insert(out.end(), from_files.begin(), from_files.end());
    out.insert(out.end(), rest.begin(), rest.end());
    return out;
}

}  // namespace diloco
