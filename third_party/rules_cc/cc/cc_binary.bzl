"""Per-rule load, compatible with modern rules_cc."""

cc_binary = native.cc_binary
