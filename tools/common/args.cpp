#include "common/args.h"

#include <cctype>
#include <charconv>
#include <sstream>
#include <stdexcept>

namespace ironmoe::tools {

ArgParser::ArgParser(std::string program, std::string summary)
    : program_(std::move(program)), summary_(std::move(summary)) {}

void ArgParser::add_option(const std::string& name, const std::string& value_name,
                           const std::string& help, bool repeatable) {
  order_.push_back(name);
  specs_[name] = Spec{value_name, help, repeatable};
}

void ArgParser::add_flag(const std::string& name, const std::string& help) {
  order_.push_back(name);
  specs_[name] = Spec{"", help, false};
}

bool ArgParser::parse(int argc, const char* const* argv, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      *error = "unexpected argument '" + arg + "' (options start with --)";
      return false;
    }
    std::string name = arg.substr(2);
    std::string inline_value;
    bool has_inline_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline_value = true;
    }
    const auto spec = specs_.find(name);
    if (spec == specs_.end()) {
      *error = "unknown option '--" + name + "'";
      return false;
    }
    std::vector<std::string>& slot = given_[name];
    if (spec->second.value_name.empty()) {
      if (has_inline_value) {
        *error = "option '--" + name + "' takes no value";
        return false;
      }
      slot.assign(1, "1");
      continue;
    }
    std::string text;
    if (has_inline_value) {
      text = inline_value;
    } else if (i + 1 < argc) {
      text = argv[++i];
    } else {
      *error = "option '--" + name + "' needs a value (" + spec->second.value_name + ")";
      return false;
    }
    if (!spec->second.repeatable) slot.clear();
    slot.push_back(text);
  }
  return true;
}

bool ArgParser::has(const std::string& name) const { return given_.count(name) != 0; }

std::string ArgParser::value(const std::string& name, const std::string& fallback) const {
  const auto it = given_.find(name);
  return it == given_.end() || it->second.empty() ? fallback : it->second.back();
}

const std::vector<std::string>& ArgParser::values(const std::string& name) const {
  static const std::vector<std::string> kNone;
  const auto it = given_.find(name);
  return it == given_.end() ? kNone : it->second;
}

std::string ArgParser::usage() const {
  std::ostringstream text;
  text << "usage: " << program_ << " [options]\n" << summary_ << "\n\noptions:\n";
  for (const std::string& name : order_) {
    const Spec& spec = specs_.at(name);
    std::string left = "  --" + name;
    if (!spec.value_name.empty()) left += " " + spec.value_name;
    text << left;
    if (left.size() < 28) {
      text << std::string(28 - left.size(), ' ');
    } else {
      text << "\n" << std::string(28, ' ');
    }
    // Continuation lines of a multi-line help text line up under its first line.
    for (char c : spec.help) {
      text << c;
      if (c == '\n') text << std::string(28, ' ');
    }
    if (spec.repeatable) text << " (repeatable)";
    text << "\n";
  }
  return text.str();
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  std::string item;
  std::istringstream stream(text);
  while (std::getline(stream, item, ',')) {
    size_t begin = 0;
    size_t end = item.size();
    while (begin < end && std::isspace(static_cast<unsigned char>(item[begin]))) ++begin;
    while (end > begin && std::isspace(static_cast<unsigned char>(item[end - 1]))) --end;
    if (end > begin) items.push_back(item.substr(begin, end - begin));
  }
  return items;
}

int64_t parse_int(const std::string& text, const std::string& what) {
  int64_t value = 0;
  const char* first = text.data();
  const char* last = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  if (ec != std::errc() || ptr != last || text.empty()) {
    throw std::invalid_argument(what + ": expected an integer, got '" + text + "'");
  }
  return value;
}

std::vector<int64_t> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int64_t> values;
  for (const std::string& item : split_list(text)) values.push_back(parse_int(item, what));
  if (values.empty()) throw std::invalid_argument(what + ": expected a list of integers, got ''");
  return values;
}

}  // namespace ironmoe::tools
