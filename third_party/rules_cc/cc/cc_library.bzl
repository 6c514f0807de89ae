"""Per-rule load, compatible with modern rules_cc."""

cc_library = native.cc_library
