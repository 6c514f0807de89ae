"""Per-rule load, compatible with modern rules_cc."""

cc_test = native.cc_test
