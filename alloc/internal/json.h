// JSON string escaping shared by the reports of alloc/.
//
// For: writing tag paths and other user strings into the JSON that stats,
// reports and traces produce. Not for: parsing, or general JSON building.
#ifndef ALLOC_INTERNAL_JSON_H_
#define ALLOC_INTERNAL_JSON_H_

#include <cstddef>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace framealloc {
namespace alloc_internal {

// The length of the well-formed UTF-8 sequence at the start of `s`, 0 if
// there is none (a stray continuation byte, an overlong form, a surrogate,
// a code point past U+10FFFF, or a sequence cut short).
inline size_t Utf8SequenceLength(absl::string_view s) {
  const auto b = [&s](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char lead = b(0);
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf;  // The second byte's range.
  if (lead >= 0xc2 && lead <= 0xdf) {
    n = 2;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    n = 3;
    if (lead == 0xe0) lo = 0xa0;  // No overlong forms.
    if (lead == 0xed) hi = 0x9f;  // No surrogates.
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    n = 4;
    if (lead == 0xf0) lo = 0x90;
    if (lead == 0xf4) hi = 0x8f;  // Up to U+10FFFF.
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if (b(i) < 0x80 || b(i) > 0xbf) return 0;
  }
  return n;
}

// Appends `s` as a quoted JSON string: quotes, backslashes and control
// characters escaped, well-formed UTF-8 copied, and any other byte (text
// from a request, a name cut in the middle of a character) written as
// U+FFFD, so the result is valid JSON whatever `s` holds.
inline void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(c);
    } else if (c == '\n') {
      out->append("\\n");
    } else if (u < 0x20) {
      absl::StrAppendFormat(out, "\\u%04x", u);
    } else if (u < 0x80) {
      out->push_back(c);
    } else if (const size_t n = Utf8SequenceLength(s.substr(i)); n != 0) {
      out->append(s.data() + i, n);
      i += n - 1;
    } else {
      out->append("\\ufffd");
    }
  }
  out->push_back('"');
}

}  // namespace alloc_internal
}  // namespace framealloc

#endif  // ALLOC_INTERNAL_JSON_H_
