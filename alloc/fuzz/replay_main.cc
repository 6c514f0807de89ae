// A main() that feeds files to LLVMFuzzerTestOneInput, for builds without
// libFuzzer (gcc, the ASan and TSan configs).
//
// For: the corpus replay tests (//alloc/fuzz:*_replay_test), which run every
// committed seed through its fuzzer's model checks in the normal test
// suites, and reproducing a crash from a file under any build. Each argument
// is a file or a folder (its files, in name order). Not for: fuzzing; build
// with --config=fuzz for that (docs/reliability.md).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool RunFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    return false;
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()),
                         bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::filesystem::path arg(argv[i]);
    if (std::filesystem::is_directory(arg)) {
      std::vector<std::string> in_dir;
      for (const auto& entry : std::filesystem::directory_iterator(arg)) {
        if (entry.is_regular_file()) in_dir.push_back(entry.path().string());
      }
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else {
      files.push_back(arg.string());
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s FILE_OR_FOLDER...\n", argv[0]);
    return 2;
  }
  // The empty input too: every fuzzer must accept it.
  LLVMFuzzerTestOneInput(nullptr, 0);
  size_t bytes = 0;
  for (const std::string& f : files) {
    if (!RunFile(f)) return 1;
    bytes += std::filesystem::file_size(f);
  }
  std::printf("replay: %zu inputs (%zu bytes) passed the model checks\n",
              files.size(), bytes);
  return 0;
}
