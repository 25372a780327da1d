#pragma once
// Output helpers: a text table for people and JSON for scripts.
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace ironmoe::tools {

// Columns sized to their widest cell; numbers right-aligned, text left-aligned.
class Table {
 public:
  struct Column {
    std::string title;
    bool right_align = true;
  };
  explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}
  void add_row(std::vector<std::string> cells) { rows_.push_back({std::move(cells), ""}); }
  // A row with only its first cells, then free text that does not widen any column.
  void add_note_row(std::vector<std::string> cells, std::string note) {
    rows_.push_back({std::move(cells), std::move(note)});
  }
  void print(std::ostream& out) const;

 private:
  std::vector<Column> columns_;
  struct Row {
    std::vector<std::string> cells;
    std::string note;
  };
  std::vector<Row> rows_;
};

std::string format_fixed(double value, int decimals);
std::string format_scientific(double value, int digits);  // "3.1e-03"; "inf", "nan" as words
std::string format_bytes(double bytes);                   // "1.18 GB" (powers of 1000)

// One JSON object built field by field; values keep insertion order.
class JsonObject {
 public:
  JsonObject& add(const std::string& key, const std::string& value);
  JsonObject& add(const std::string& key, const char* value);
  JsonObject& add(const std::string& key, double value);  // non-finite values become null
  JsonObject& add(const std::string& key, int64_t value);
  JsonObject& add(const std::string& key, bool value);
  JsonObject& add_raw(const std::string& key, const std::string& json);  // already JSON
  std::string str() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

std::string json_quote(const std::string& text);
std::string json_array(const std::vector<std::string>& items);  // items already JSON

}  // namespace ironmoe::tools
