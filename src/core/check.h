#pragma once
// Argument checks that throw ironmoe::Error with a message naming where, what and why.
#include <sstream>
#include <string>

#include "ironmoe/error.h"

namespace ironmoe::core {

template <class... Parts>
[[noreturn]] void fail(const char* where, const Parts&... parts) {
  std::ostringstream message;
  message << "ironmoe::" << where << ": ";
  (message << ... << parts);
  throw Error(message.str());
}

}  // namespace ironmoe::core

// IRONMOE_CHECK(cond, "where", "what was expected", ...): throws ironmoe::Error when cond fails.
#define IRONMOE_CHECK(cond, where, ...)              \
  do {                                               \
    if (!(cond)) ::ironmoe::core::fail(where, __VA_ARGS__); \
  } while (0)
