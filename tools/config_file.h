// `diloco train --config FILE`: a TOML or INI file that sets any `train` option under the name it
// has on the command line (`inner-steps` or `inner_steps`), one `key = value` a line:
//
//   # comments start with # or ;
//   [train]                 # optional; no other section is known
//   steps = 2000
//   algo = "diloco"         # TOML strings are quoted; INI values may be bare
//   eager = true            # flags take true or false
//
// The file's options come first and the command line after them, so the command line overrides
// the file (a repeated option takes its last value). An unknown key, a value the option refuses,
// or a line that does not parse ends the run with one line naming the file, the line and the key.
#pragma once
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace diloco {

// The command-line words ("--steps", "2000", "--eager", ...) that FILE stands for, each checked by
// parsing it alone with a fresh copy of the options `define` adds to an app. Throws Error.
std::vector<std::string> config_file_arguments(const std::string& path, void (*define)(CLI::App*));
// The same on the file's text (`path` names it in errors).
std::vector<std::string> config_text_arguments(const std::string& text, const std::string& path,
                                               void (*define)(CLI::App*));

// The two apps the checks parse against, made once by `define`: building them costs more than
// reading a whole file (CLI11 checks each new option against all before it), so the fuzz target
// makes them once and reads many inputs against the same pair. (CLI11's clear() keeps the
// order of what each parse saw, so the pair grows by a pointer per line read.)
struct ConfigOptions {
    explicit ConfigOptions(void (*define)(CLI::App*));
    CLI::App known;    // looked up, never parsed
    CLI::App scratch;  // parses one line at a time, cleared before each
};
std::vector<std::string> config_text_arguments(const std::string& text, const std::string& path,
                                               ConfigOptions& options);

// argv with every `--config FILE` (or `--config=FILE`) after `subcommand` replaced by the file's
// arguments, placed right after the subcommand so that the rest of the command line wins.
std::vector<std::string> expand_config_files(int argc, char** argv, const std::string& subcommand,
                                             void (*define)(CLI::App*));

}  // namespace diloco
