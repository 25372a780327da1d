#pragma once
// The one exception type ironmoe throws. Every message names the function, the argument, what was
// expected and what was given, e.g.
//   "ironmoe::route: logits: expected shape [T, 128], got [4, 64]".
#include <stdexcept>
#include <string>

namespace ironmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace ironmoe
