#include "common/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace ironmoe::tools {

void Table::print(std::ostream& out) const {
  std::vector<size_t> width(columns_.size());
  for (size_t c = 0; c < columns_.size(); ++c) width[c] = columns_[c].title.size();
  for (const Row& row : rows_) {
    for (size_t c = 0; c < row.cells.size() && c < width.size(); ++c) {
      width[c] = std::max(width[c], row.cells[c].size());
    }
  }
  auto print_cells = [&](const std::vector<std::string>& cells, bool header) {
    for (size_t c = 0; c < cells.size() && c < columns_.size(); ++c) {
      const std::string pad(width[c] - cells[c].size(), ' ');
      const bool right = columns_[c].right_align && !header;
      out << (c == 0 ? "" : "  ") << (right ? pad + cells[c] : cells[c] + pad);
    }
  };
  std::vector<std::string> titles;
  for (const Column& column : columns_) titles.push_back(column.title);
  print_cells(titles, true);
  out << "\n";
  size_t total = 0;
  for (size_t c = 0; c < width.size(); ++c) total += width[c] + (c == 0 ? 0 : 2);
  out << std::string(total, '-') << "\n";
  for (const Row& row : rows_) {
    print_cells(row.cells, false);
    if (!row.note.empty()) out << "  " << row.note;
    out << "\n";
  }
}

std::string format_fixed(double value, int decimals) {
  if (!std::isfinite(value)) return std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string format_scientific(double value, int digits) {
  if (!std::isfinite(value)) return std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
  char text[64];
  std::snprintf(text, sizeof text, "%.*e", digits, value);
  return text;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  int unit = 0;
  while (bytes >= 1000.0 && unit < 4) {
    bytes /= 1000.0;
    ++unit;
  }
  return format_fixed(bytes, unit == 0 ? 0 : 2) + " " + units[unit];
}

std::string json_quote(const std::string& text) {
  std::string quoted = "\"";
  for (char c : text) {
    switch (c) {
      case '"': quoted += "\\\""; break;
      case '\\': quoted += "\\\\"; break;
      case '\n': quoted += "\\n"; break;
      case '\t': quoted += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
          quoted += escaped;
        } else {
          quoted += c;
        }
    }
  }
  return quoted + "\"";
}

std::string json_array(const std::vector<std::string>& items) {
  std::string text = "[";
  for (size_t i = 0; i < items.size(); ++i) text += (i == 0 ? "\n  " : ",\n  ") + items[i];
  return text + (items.empty() ? "]" : "\n]");
}

JsonObject& JsonObject::add(const std::string& key, const std::string& value) {
  fields_.emplace_back(key, json_quote(value));
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, const char* value) {
  return add(key, std::string(value));
}

JsonObject& JsonObject::add(const std::string& key, double value) {
  if (!std::isfinite(value)) {
    fields_.emplace_back(key, "null");
    return *this;
  }
  char text[64];
  std::snprintf(text, sizeof text, "%.9g", value);
  fields_.emplace_back(key, text);
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, int64_t value) {
  fields_.emplace_back(key, std::to_string(value));
  return *this;
}

JsonObject& JsonObject::add(const std::string& key, bool value) {
  fields_.emplace_back(key, value ? "true" : "false");
  return *this;
}

JsonObject& JsonObject::add_raw(const std::string& key, const std::string& json) {
  fields_.emplace_back(key, json);
  return *this;
}

std::string JsonObject::str() const {
  std::ostringstream text;
  text << "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    text << (i == 0 ? "" : ", ") << json_quote(fields_[i].first) << ": " << fields_[i].second;
  }
  text << "}";
  return text.str();
}

}  // namespace ironmoe::tools
