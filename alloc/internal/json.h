// JSON string escaping shared by the reports of alloc/.
//
// For: writing tag paths and other user strings into the JSON that stats,
// reports and traces produce. Not for: parsing, or general JSON building.
#ifndef ALLOC_INTERNAL_JSON_H_
#define ALLOC_INTERNAL_JSON_H_

#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace framealloc {
namespace alloc_internal {

// Appends `s` as a quoted JSON string, escaping quotes, backslashes and
// control characters.
inline void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(out, "\\u%04x", c);
    } else {
      out->push_back(c);
    }
  }
  out->push_back('"');
}

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_JSON_H_
