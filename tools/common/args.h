#pragma once
// A small command-line parser shared by ironmoe-bench and ironmoe-check: "--name value",
// "--name=value", repeatable options and flags, and a generated usage text.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ironmoe::tools {

class ArgParser {
 public:
  ArgParser(std::string program, std::string summary);

  // An option taking a value; `repeatable` keeps every occurrence, otherwise the last one wins.
  void add_option(const std::string& name, const std::string& value_name, const std::string& help,
                  bool repeatable = false);
  void add_flag(const std::string& name, const std::string& help);

  // Returns false with a message in *error for an unknown option or a missing value.
  bool parse(int argc, const char* const* argv, std::string* error);

  bool has(const std::string& name) const;
  // The last value given, or `fallback` when the option was not given.
  std::string value(const std::string& name, const std::string& fallback = "") const;
  // Every value given, in order.
  const std::vector<std::string>& values(const std::string& name) const;
  std::string usage() const;

 private:
  struct Spec {
    std::string value_name;  // empty for a flag
    std::string help;
    bool repeatable = false;
  };
  std::string program_;
  std::string summary_;
  std::vector<std::string> order_;
  std::map<std::string, Spec> specs_;
  std::map<std::string, std::vector<std::string>> given_;
};

// "a,b,,c" -> {"a", "b", "c"} (empty items dropped, spaces trimmed).
std::vector<std::string> split_list(const std::string& text);
// Whole-string integer parsing; throws std::invalid_argument naming `what` on bad input.
int64_t parse_int(const std::string& text, const std::string& what);
std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what);

}  // namespace ironmoe::tools
