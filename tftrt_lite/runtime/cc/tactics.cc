#include "tactics.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include "plan_format.h"

namespace tftrt_lite {
namespace tactics {
namespace {

using cuda::CublasLtApi;
using cuda::CudnnApi;
using cuda::DriverApi;

constexpr char kHeader[] = "# tftrt_lite tactic cache v1";
constexpr char kHeaderPrefix[] = "# tftrt_lite tactic cache ";
constexpr char kCacheEnvVar[] = "TFTRT_LITE_TACTIC_CACHE";
// A cache file past this size is not one this runtime wrote in any sane use; it is ignored.
constexpr uint64_t kMaxCacheFileBytes = uint64_t(64) << 20;
constexpr int kGemmRuns = 5;
constexpr int kConvRuns = 3;
constexpr int kKernelRuns = 5;
// Candidates timed per GEMM problem at most: the heuristic's and the split-K variants.
constexpr size_t kMaxGemmCandidates = 64;
constexpr int32_t kSplitKCounts[] = {2, 4, 8, 16};
// GEMMs whose operands fit these limits are checked against cuBLASLt's first pick (their
// test data goes through host memory); larger ones fill the GPU without split-K anyway.
constexpr uint64_t kMaxCheckedInputBytes = uint64_t(64) << 20;
constexpr uint64_t kMaxCheckedOutputBytes = uint64_t(16) << 20;
constexpr uint64_t kAlignment = 256;

uint64_t AlignUp(uint64_t v) { return (v + kAlignment - 1) / kAlignment * kAlignment; }

bool SwitchedOff(const char* name) {
  const char* v = std::getenv(name);
  return v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "false") == 0);
}

bool SwitchedOn(const char* name) {
  const char* v = std::getenv(name);
  return v && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0);
}

// --------------------------------------------------------------------------- counts
enum Count {
  kGemmTimed, kConvTimed, kCacheHits, kCacheRejected, kCandidatesRejected, kSplitKChosen, kKernelTimed, kNumCounts
};
const char* const kCountNames[kNumCounts] = {"gemm_timed",     "conv_timed",     "cache_hits",  "cache_rejected",
                                             "candidates_rejected", "split_k_chosen", "kernel_timed"};
std::atomic<int64_t> counts[kNumCounts];
std::atomic<bool> prefer_split_k{false};

void Increment(Count c) { counts[c].fetch_add(1, std::memory_order_relaxed); }

// Writes `message` to stderr the first time `flag` is seen clear: cache and scratch
// problems are worth one line, not one per problem.
void LogOnce(std::atomic<bool>* flag, const std::string& message) {
  if (!flag->exchange(true)) std::fprintf(stderr, "tftrt_lite: %s\n", message.c_str());
}
std::atomic<bool> cache_logged{false}, scratch_logged{false};

// Held while candidates are timed: timings taken while another engine times its own
// candidates on the same GPU would measure both.
std::mutex& TimingMutex() {
  static std::mutex* mu = new std::mutex();
  return *mu;
}

// --------------------------------------------------------------------------- text
std::string Hex(const void* data, size_t size) {
  static const char digits[] = "0123456789abcdef";
  const uint8_t* bytes = static_cast<const uint8_t*>(data);
  std::string out;
  for (size_t i = 0; i < size; ++i) {
    out += digits[bytes[i] >> 4];
    out += digits[bytes[i] & 15];
  }
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool Unhex(const std::string& text, void* out, size_t size) {
  if (text.size() != 2 * size) return false;
  uint8_t* bytes = static_cast<uint8_t*>(out);
  for (size_t i = 0; i < size; ++i) {
    const int hi = HexDigit(text[2 * i]), lo = HexDigit(text[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

bool IsDecimal(const std::string& s) {
  return !s.empty() && s.size() <= 19 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Comma-separated integers, each optionally negative.
bool IsProblem(const std::string& s) {
  size_t start = 0;
  while (true) {
    const size_t comma = s.find(',', start);
    std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!item.empty() && item[0] == '-') item.erase(0, 1);
    if (!IsDecimal(item)) return false;
    if (comma == std::string::npos) return true;
    start = comma + 1;
  }
}

std::string ProblemString(const std::vector<int64_t>& key) {
  std::string s;
  for (size_t i = 0; i < key.size(); ++i) s += (i ? "," : "") + std::to_string(key[i]);
  return s;
}

std::vector<std::string> Fields(const std::string& line) {
  std::vector<std::string> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    const size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) fields.push_back(line.substr(start, i - start));
  }
  return fields;
}

// The store key of a winner: every field of its line but the algorithm and workspace.
// Empty (nothing is stored) when the GPU or library version is unknown.
std::string StoreKey(const char* kind, const std::string& device, const std::string& version,
                     const std::vector<int64_t>& problem) {
  if (device.empty() || version.empty()) return "";
  return std::string(kind) + " " + device + " " + version + " " + ProblemString(problem);
}

struct Winner {
  std::string algo;  // gemm: the cublasLtMatmulAlgo_t bytes in hex; conv: the algorithm number; kernel: the variant
  uint64_t workspace = 0;
  bool used = false;  // chosen or reused by this process
  std::set<std::string> owners;
};

// Parses one winner line; false when it is malformed.
bool ParseLine(const std::string& line, std::string* key, Winner* winner) {
  const std::vector<std::string> f = Fields(line);
  if (f.size() != 6 || !IsDecimal(f[2]) || !IsProblem(f[3]) || !IsDecimal(f[5])) return false;
  if (f[0] == "gemm") {
    cublasLtMatmulAlgo_t algo;
    if (!Unhex(f[4], &algo, sizeof(algo))) return false;
  } else if (f[0] == "conv") {
    if (!IsDecimal(f[4]) || f[4].size() > 2 || std::atoi(f[4].c_str()) >= CUDNN_CONVOLUTION_FWD_ALGO_COUNT) {
      return false;
    }
  } else if (f[0] == "kernel") {
    if (!IsDecimal(f[4]) || f[4].size() > 4) return false;  // checked against the step's variants when used
  } else {
    return false;
  }
  *key = f[0] + " " + f[1] + " " + f[2] + " " + f[3];
  winner->algo = f[4];
  winner->workspace = std::strtoull(f[5].c_str(), nullptr, 10);
  return true;
}

// Calls `take(key, winner)` for every winner line of `text`; returns the number of
// malformed lines. Comment lines start with '#'; a header of another format version makes
// every line malformed.
template <typename Take>
int ParseText(const std::string& text, Take take) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!Fields(line).empty()) lines.push_back(line);
    start = end + 1;
  }
  bool foreign = false;
  for (const std::string& line : lines) {
    if (line.compare(0, sizeof(kHeaderPrefix) - 1, kHeaderPrefix) == 0 && line != kHeader) foreign = true;
  }
  if (foreign) return static_cast<int>(lines.size());
  int malformed = 0;
  for (const std::string& line : lines) {
    if (line[0] == '#') continue;
    std::string key;
    Winner winner;
    if (ParseLine(line, &key, &winner)) {
      take(key, winner);
    } else {
      ++malformed;
    }
  }
  return malformed;
}

// --------------------------------------------------------------------------- file
// The cache file's path, or "" when the file is off.
std::string CacheFilePath() {
  const char* v = std::getenv(kCacheEnvVar);
  if (v != nullptr && *v != '\0') {
    std::string s(v);
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s == "off" || s == "0" || s == "false" ? "" : std::string(v);
  }
  const char* xdg = std::getenv("XDG_CACHE_HOME");  // the XDG spec ignores relative paths
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/tftrt_lite/tactics.txt";
  const char* home = std::getenv("HOME");
  if (home != nullptr && *home != '\0') return std::string(home) + "/.cache/tftrt_lite/tactics.txt";
  return "";
}

// Creates the missing folders above `path` (errors surface when the file is opened).
void MakeParentDirs(const std::string& path) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    mkdir(path.substr(0, slash).c_str(), 0755);
  }
}

// An open file descriptor, closed (which also drops its flock) when it goes.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, uint64_t size, std::string* text) {
  text->resize(size);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = read(fd, &(*text)[done], size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) break;  // shorter than fstat said: take what is there
    done += static_cast<size_t>(n);
  }
  text->resize(done);
  return true;
}

// Reads `path` under a shared lock into `text`. Returns "" on success or when the file
// does not exist (`text` stays empty), else why it cannot be read.
std::string ReadCacheFile(const std::string& path, std::string* text) {
  FileDescriptor fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return errno == ENOENT ? "" : std::strerror(errno);
  struct stat info;
  if (flock(fd.get(), LOCK_SH) != 0 || fstat(fd.get(), &info) != 0) return std::strerror(errno);
  if (static_cast<uint64_t>(info.st_size) > kMaxCacheFileBytes) {
    return "it is larger than " + std::to_string(kMaxCacheFileBytes >> 20) + " MiB";
  }
  if (!ReadAll(fd.get(), static_cast<uint64_t>(info.st_size), text)) return std::strerror(errno);
  return "";
}

// Appends `line` to the cache file at `path` under an exclusive lock, writing the header
// first into an empty file. Returns "" or why the file cannot take it.
std::string AppendToCacheFile(const std::string& path, const std::string& line) {
  MakeParentDirs(path);
  FileDescriptor fd(open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (fd.get() < 0) return std::strerror(errno);
  struct stat info;
  if (flock(fd.get(), LOCK_EX) != 0 || fstat(fd.get(), &info) != 0) return std::strerror(errno);
  std::string out;
  if (info.st_size == 0) {
    out = std::string(kHeader) + "\n";
  } else {
    // Never append to a file of another format; finish a line a crashed writer left open.
    const std::string header = std::string(kHeader) + "\n";
    std::string first(header.size(), '\0');
    char last = '\n';
    if (pread(fd.get(), &first[0], first.size(), 0) != static_cast<ssize_t>(first.size()) ||
        pread(fd.get(), &last, 1, info.st_size - 1) != 1) {
      return "it is not a '" + std::string(kHeader) + "' file";
    }
    if (first != header) return "it is not a '" + std::string(kHeader) + "' file";
    if (last != '\n') out = "\n";
  }
  out += line + "\n";
  return WriteAll(fd.get(), out) ? "" : std::strerror(errno);
}

// --------------------------------------------------------------------------- store
// The process-wide winners, seeded by the cache file and `tactics` attrs.
class Store {
 public:
  // Reads the cache file, once per process (at the first device use).
  void LoadFileOnce() {
    std::call_once(file_once_, [this] {
      std::lock_guard<std::mutex> lock(mu_);
      path_ = CacheFilePath();
      if (path_.empty()) return;
      std::string text;
      const std::string why = ReadCacheFile(path_, &text);
      if (!why.empty()) return Disable("cannot be read (" + why + ")");
      if (text.empty()) return;
      if (text.compare(0, sizeof(kHeader) - 1, kHeader) != 0 || text.find('\n') != sizeof(kHeader) - 1) {
        return Disable("is not a '" + std::string(kHeader) + "' file");
      }
      const int malformed = ParseText(text, [this](const std::string& k, const Winner& w) { Put(k, w); });
      if (malformed > 0) {
        LogOnce(&cache_logged, "tactic cache " + path_ + ": skipped " + std::to_string(malformed) +
                                   " malformed line(s)");
      }
    });
  }

  // Merges the winners of `text`; returns how many were taken.
  int Add(const std::string& text, int* malformed) {
    std::lock_guard<std::mutex> lock(mu_);
    int taken = 0;
    const int bad = ParseText(text, [&](const std::string& k, const Winner& w) {
      Put(k, w);
      ++taken;
    });
    if (malformed != nullptr) *malformed = bad;
    return taken;
  }

  bool Find(const std::string& key, std::string* algo) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = winners_.find(key);
    if (it == winners_.end()) return false;
    *algo = it->second.algo;
    return true;
  }

  void MarkUsed(const std::string& key, const std::string& owner) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = winners_.find(key);
    if (it == winners_.end()) return;
    it->second.used = true;
    if (!owner.empty()) it->second.owners.insert(owner);
  }

  // Stores a winner this process timed and appends it to the cache file.
  void Record(const std::string& key, const std::string& algo, uint64_t workspace, const std::string& owner) {
    std::lock_guard<std::mutex> lock(mu_);
    Winner& w = winners_[key];
    w = Winner();
    w.algo = algo;
    w.workspace = workspace;
    w.used = true;
    if (!owner.empty()) w.owners.insert(owner);
    if (path_.empty()) return;
    const std::string why = AppendToCacheFile(path_, Line(key, w));
    if (!why.empty()) Disable("cannot be written (" + why + ")");
  }

  std::string Dump(const std::string& owner, bool everything) {
    std::lock_guard<std::mutex> lock(mu_);
    std::string lines;
    for (const auto& kv : winners_) {
      const Winner& w = kv.second;
      if (!everything && (!w.used || (!owner.empty() && w.owners.count(owner) == 0))) continue;
      lines += Line(kv.first, w) + "\n";
    }
    return lines.empty() ? "" : std::string(kHeader) + "\n" + lines;
  }

 private:
  static std::string Line(const std::string& key, const Winner& w) {
    return key + " " + w.algo + " " + std::to_string(w.workspace);
  }

  // A winner from text replaces a stored one unless this process already uses that one.
  void Put(const std::string& key, const Winner& w) {
    Winner& slot = winners_[key];
    if (slot.used) return;
    slot = w;
  }

  // Stops reading and writing the file (winners stay in the process); called with mu_ held.
  void Disable(const std::string& why) {
    LogOnce(&cache_logged, "tactic cache " + path_ + " " + why + "; it is left as is and tactics are kept for "
                               "this process only (" + kCacheEnvVar + " chooses the file, 'off' none)");
    path_.clear();
  }

  std::mutex mu_;
  std::map<std::string, Winner> winners_;
  std::once_flag file_once_;
  std::string path_;  // "" while the file is off
};

Store& GetStore() {
  static Store* store = new Store();
  return *store;
}

// --------------------------------------------------------------------------- timing
// One block of the caller's scratch holding a timing run's operands (the caller's
// allocator takes it back after the call).
class ScratchBlock {
 public:
  // Reserves `bytes` and returns their offset; call before Allocate.
  uint64_t Reserve(uint64_t bytes) {
    const uint64_t offset = total_;
    total_ += AlignUp(std::max<uint64_t>(bytes, 1));
    return offset;
  }
  bool Allocate(const Scratch& scratch) {
    if (scratch.allocate && scratch.allocate(total_, &base_)) return true;
    base_ = 0;
    LogOnce(&scratch_logged, "cannot get " + std::to_string(total_) + " bytes of scratch to time library "
                             "algorithms; such problems use the library's first choice");
    return false;
  }
  CUdeviceptr base() const { return base_; }
  uint64_t total() const { return total_; }
  void* at(uint64_t offset) const { return reinterpret_cast<void*>(base_ + offset); }

 private:
  CUdeviceptr base_ = 0;
  uint64_t total_ = 0;
};

// A private stream with two timing events; its work finishes before it is destroyed.
class TimingStream {
 public:
  explicit TimingStream(const DriverApi& drv) : drv_(drv) {}
  ~TimingStream() {
    if (stream_) drv_.StreamSynchronize(stream_);
    if (start_) drv_.EventDestroy(start_);
    if (stop_) drv_.EventDestroy(stop_);
    if (stream_) drv_.StreamDestroy(stream_);
  }
  TimingStream(const TimingStream&) = delete;
  TimingStream& operator=(const TimingStream&) = delete;

  // Creates the stream and events; the stream's work starts after what is already on `after`.
  bool Create(CUstream after) {
    if (drv_.StreamCreate(&stream_, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) stream_ = nullptr;
    if (stream_ && drv_.EventCreate(&start_, CU_EVENT_DEFAULT) != CUDA_SUCCESS) start_ = nullptr;
    if (start_ && drv_.EventCreate(&stop_, CU_EVENT_DEFAULT) != CUDA_SUCCESS) stop_ = nullptr;
    return stop_ != nullptr && drv_.EventRecord(start_, after) == CUDA_SUCCESS &&
           drv_.StreamWaitEvent(stream_, start_, 0) == CUDA_SUCCESS;
  }
  CUstream stream() const { return stream_; }
  bool Synchronize() const { return drv_.StreamSynchronize(stream_) == CUDA_SUCCESS; }

  // Milliseconds `runs` back-to-back calls of `launch` take, or -1 when a call fails.
  template <typename Launch>
  float Time(int runs, Launch launch) {
    bool ok = drv_.EventRecord(start_, stream_) == CUDA_SUCCESS;
    for (int r = 0; ok && r < runs; ++r) ok = launch();
    float ms = 0.0f;
    ok = ok && drv_.EventRecord(stop_, stream_) == CUDA_SUCCESS && drv_.EventSynchronize(stop_) == CUDA_SUCCESS &&
         drv_.EventElapsedTime(&ms, start_, stop_) == CUDA_SUCCESS;
    if (!ok) Synchronize();
    return ok ? ms : -1.0f;
  }

 private:
  const DriverApi& drv_;
  CUstream stream_ = nullptr;
  CUevent start_ = nullptr, stop_ = nullptr;
};

// --------------------------------------------------------------------------- GEMM
struct Candidate {
  GemmAlgo choice;
  bool split_k = false;  // splits K (as cuBLASLt proposed it, or as a variant made here)
  bool variant = false;  // a split-K variant made here: runs in an engine only once checked
};

std::string LtVersion(const CublasLtApi& lt) { return lt.GetVersion ? std::to_string(lt.GetVersion()) : ""; }

// Whether cuBLASLt accepts `algo` for `p` within the workspace limit; `result` gets the
// workspace it needs.
bool CheckGemm(const GemmProblem& p, const cublasLtMatmulAlgo_t& algo, cublasLtMatmulHeuristicResult_t* result) {
  std::memset(result, 0, sizeof(*result));
  return p.lt->MatmulAlgoCheck != nullptr &&
         p.lt->MatmulAlgoCheck(p.handle, p.desc, p.a, p.b, p.d, p.d, &algo, result) == CUBLAS_STATUS_SUCCESS &&
         result->workspaceSize <= kMaxGemmWorkspace;
}

int32_t SplitCount(const CublasLtApi& lt, const cublasLtMatmulAlgo_t& algo) {
  int32_t splits = 1;
  size_t written = 0;
  if (lt.MatmulAlgoConfigGetAttribute == nullptr ||
      lt.MatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits), &written) !=
          CUBLAS_STATUS_SUCCESS) {
    return 1;
  }
  return splits;
}

// Reduction schemes for split-K partial sums, most accurate first: float32 partials (the
// compute type) always; float32 outputs also allow reducing in the output type or in
// place, which for half outputs would round every partial sum to half.
std::vector<uint32_t> ReductionSchemes(uint32_t dtype, uint32_t supported) {
  std::vector<uint32_t> schemes = {CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE};
  if (dtype == plan::kFloat32) {
    schemes.push_back(CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE);
    schemes.push_back(CUBLASLT_REDUCTION_SCHEME_INPLACE);
  }
  std::vector<uint32_t> out;
  for (uint32_t s : schemes) {
    if ((supported & s) == s) out.push_back(s);
  }
  return out;
}

// Split-K variants of `base` that cuBLASLt accepts for `p`: one per split count, with the
// most accurate reduction scheme it takes.
void AddSplitKVariants(const GemmProblem& p, const cublasLtMatmulAlgo_t& base, std::vector<Candidate>* out) {
  const CublasLtApi& lt = *p.lt;
  int32_t support = 0;
  uint32_t schemes = 0;
  size_t written = 0;
  if (lt.MatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &support, sizeof(support), &written) !=
          CUBLAS_STATUS_SUCCESS ||
      support == 0 ||
      lt.MatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &schemes, sizeof(schemes),
                                   &written) != CUBLAS_STATUS_SUCCESS) {
    return;
  }
  const int32_t current = SplitCount(lt, base);
  for (int32_t splits : kSplitKCounts) {
    if (splits == current) continue;
    for (uint32_t scheme : ReductionSchemes(p.dtype, schemes)) {
      Candidate c;
      c.choice.algo = base;
      c.split_k = c.variant = true;
      cublasLtMatmulHeuristicResult_t check;
      if (lt.MatmulAlgoConfigSetAttribute(&c.choice.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits, sizeof(splits)) !=
              CUBLAS_STATUS_SUCCESS ||
          lt.MatmulAlgoConfigSetAttribute(&c.choice.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                          sizeof(scheme)) != CUBLAS_STATUS_SUCCESS ||
          !CheckGemm(p, c.choice.algo, &check)) {
        continue;
      }
      c.choice.workspace = check.workspaceSize;
      out->push_back(c);
      break;
    }
  }
}

bool SplitKApi(const CublasLtApi& lt) {
  return lt.MatmulAlgoCheck && lt.MatmulAlgoCapGetAttribute && lt.MatmulAlgoConfigGetAttribute &&
         lt.MatmulAlgoConfigSetAttribute;
}

// Whether candidates' outputs can be compared with cuBLASLt's first pick's.
bool Checkable(const GemmProblem& p) {
  const uint64_t inputs = p.a_bytes + p.b_bytes + p.bias_bytes + (p.has_c ? p.d_bytes : 0);
  return p.driver->MemcpyDtoHAsync && inputs <= kMaxCheckedInputBytes &&
         p.d_bytes <= kMaxCheckedOutputBytes;
}

// cuBLASLt's candidates, then (when `with_split_k`) split-K variants of those that leave
// the GPU partly idle (fewer than one wave of CTAs), without duplicates.
std::vector<Candidate> GemmCandidates(const GemmProblem& p, const cublasLtMatmulHeuristicResult_t* heuristic,
                                      int count, bool with_split_k) {
  std::vector<Candidate> found;
  for (int i = 0; i < count; ++i) {
    Candidate c;
    c.choice.algo = heuristic[i].algo;
    c.choice.workspace = heuristic[i].workspaceSize;
    c.split_k = SplitCount(*p.lt, heuristic[i].algo) > 1;
    found.push_back(c);
  }
  if (with_split_k && SplitKApi(*p.lt)) {
    for (int i = 0; i < count; ++i) {
      if (heuristic[i].wavesCount < 1.0f) AddSplitKVariants(p, heuristic[i].algo, &found);
    }
  }
  std::vector<Candidate> out;
  for (const Candidate& c : found) {
    const bool seen = std::any_of(out.begin(), out.end(), [&](const Candidate& o) {
      return std::memcmp(&o.choice.algo, &c.choice.algo, sizeof(c.choice.algo)) == 0;
    });
    if (!seen && out.size() < kMaxGemmCandidates) out.push_back(c);
  }
  return out;
}

// Half-precision bits of `v`, exact for the test values (normal, few significant bits).
uint16_t HalfBits(float v) {
  uint32_t f;
  std::memcpy(&f, &v, sizeof(f));
  const uint32_t sign = (f >> 16) & 0x8000, exponent = (f >> 23) & 0xff;
  if (exponent == 0) return static_cast<uint16_t>(sign);
  return static_cast<uint16_t>(sign | (exponent - 112) << 10 | (f & 0x7fffff) >> 13);
}

float HalfValue(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    v = mantissa ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mantissa | 0x400), exponent - 25);
  }
  return h & 0x8000 ? -v : v;
}

float LoadValue(uint32_t dtype, const uint8_t* p) {
  if (dtype == plan::kFloat32) {
    float v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  if (dtype == plan::kFloat16) return HalfValue(h);
  const uint32_t f = uint32_t(h) << 16;
  float v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
}

// `bytes` of test values j / `scale` (|j| <= 8, pseudo-random) in `dtype`. They are exact in
// float32, TF32, float16 and bfloat16, and with scale 64 every product and partial sum a
// GEMM forms is exact in float32, so correct algorithms agree whatever order they add in.
std::vector<uint8_t> TestData(uint32_t dtype, uint64_t bytes, float scale, uint32_t* seed) {
  const uint64_t elem = plan::DTypeSize(dtype);
  std::vector<uint8_t> data(bytes, 0);
  for (uint64_t i = 0; i + elem <= bytes; i += elem) {
    *seed = *seed * 1664525u + 1013904223u;
    const float v = static_cast<float>(static_cast<int>((*seed >> 16) % 17) - 8) / scale;
    if (dtype == plan::kFloat32) {
      std::memcpy(&data[i], &v, sizeof(v));
    } else {
      uint32_t f;
      std::memcpy(&f, &v, sizeof(f));
      const uint16_t h = dtype == plan::kFloat16 ? HalfBits(v) : static_cast<uint16_t>(f >> 16);
      std::memcpy(&data[i], &h, sizeof(h));
    }
  }
  return data;
}

// Whether `got` equals `want` up to the rounding two correct algorithms may differ by in
// the epilogue (activation, bias, C) at `dtype`; a wrong reduction, bias or activation
// changes values by at least 1/8 of the test data's scale.
bool SameOutput(uint32_t dtype, const std::vector<uint8_t>& want, const std::vector<uint8_t>& got) {
  const uint64_t elem = plan::DTypeSize(dtype);
  const float tolerance = dtype == plan::kFloat16 ? 4e-3f : dtype == plan::kBFloat16 ? 1.6e-2f : 1e-3f;
  if (want.size() != got.size()) return false;
  for (uint64_t i = 0; i + elem <= want.size(); i += elem) {
    const float w = LoadValue(dtype, &want[i]), g = LoadValue(dtype, &got[i]);
    if (!(std::fabs(g - w) <= tolerance * std::max(1.0f, std::fabs(w)))) return false;
  }
  return true;
}

// Device addresses of a timed GEMM's operands (C is D when the problem has no C).
struct GemmOperands {
  const void* a;
  const void* b;
  const void* c;
  void* d;
  void* workspace;
};

bool RunGemm(const GemmProblem& p, const GemmOperands& ops, const GemmAlgo& algo, CUstream stream) {
  return p.lt->Matmul(p.handle, p.desc, &p.alpha, ops.a, p.a, ops.b, p.b, &p.beta, ops.c, p.d, ops.d, p.d,
                      &algo.algo, ops.workspace, algo.workspace, stream) == CUBLAS_STATUS_SUCCESS;
}

// Runs `algo` on zeroed D and copies D to `out`; false when a call fails.
bool RunAndRead(const GemmProblem& p, const GemmOperands& ops, const GemmAlgo& algo, const TimingStream& timing,
                std::vector<uint8_t>* out) {
  const DriverApi& drv = *p.driver;
  const CUdeviceptr d = reinterpret_cast<CUdeviceptr>(ops.d);
  out->assign(p.d_bytes, 0);
  const bool ok = drv.MemsetD8Async(d, 0, p.d_bytes, timing.stream()) == CUDA_SUCCESS &&
                  RunGemm(p, ops, algo, timing.stream()) &&
                  drv.MemcpyDtoHAsync(out->data(), d, p.d_bytes, timing.stream()) == CUDA_SUCCESS;
  return timing.Synchronize() && ok;
}

// Copies test data into A, B, C and the bias; false when a copy fails.
bool UploadTestData(const GemmProblem& p, const GemmOperands& ops, const void* bias, const TimingStream& timing) {
  uint32_t seed = 12345;
  const std::pair<const void*, std::vector<uint8_t>> inputs[] = {
      {ops.a, TestData(p.dtype, p.a_bytes, 64.0f, &seed)},
      {ops.b, TestData(p.dtype, p.b_bytes, 64.0f, &seed)},
      {p.has_c ? ops.c : nullptr, TestData(p.dtype, p.has_c ? p.d_bytes : 0, 8.0f, &seed)},
      {p.has_bias ? bias : nullptr, TestData(p.dtype, p.has_bias ? p.bias_bytes : 0, 8.0f, &seed)}};
  bool ok = true;
  for (const auto& input : inputs) {
    if (ok && input.first != nullptr && !input.second.empty()) {
      ok = p.driver->MemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(input.first), input.second.data(),
                                     input.second.size(), timing.stream()) == CUDA_SUCCESS;
    }
  }
  return timing.Synchronize() && ok;  // the host copies must outlive the transfers
}

// Times `candidates` on scratch operands; returns the index of the fastest, -1 when none
// could be timed. With `check` the operands hold test data and a candidate whose output
// differs from candidate 0's (cuBLASLt's first pick) cannot win; without it they hold
// zeros (tensor-core time does not depend on values) and split-K variants are left out.
int FastestGemm(const GemmProblem& p, const std::vector<Candidate>& candidates, bool check) {
  const DriverApi& drv = *p.driver;
  uint64_t workspace = 0;
  for (const Candidate& c : candidates) workspace = std::max(workspace, c.choice.workspace);
  ScratchBlock scratch;
  const uint64_t a_at = scratch.Reserve(p.a_bytes), b_at = scratch.Reserve(p.b_bytes),
                 c_at = scratch.Reserve(p.has_c ? p.d_bytes : 0), d_at = scratch.Reserve(p.d_bytes),
                 bias_at = scratch.Reserve(p.bias_bytes), ws_at = scratch.Reserve(workspace);
  TimingStream timing(drv);
  if (p.scratch == nullptr || !scratch.Allocate(*p.scratch) || !timing.Create(p.scratch->after) ||
      drv.MemsetD8Async(scratch.base(), 0, scratch.total(), timing.stream()) != CUDA_SUCCESS) {
    return -1;
  }
  GemmOperands ops{scratch.at(a_at), scratch.at(b_at), scratch.at(p.has_c ? c_at : d_at), scratch.at(d_at),
                   scratch.at(ws_at)};
  const void* bias = scratch.at(bias_at);
  if (p.has_bias && p.lt->MatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)) !=
                        CUBLAS_STATUS_SUCCESS) {
    return -1;
  }
  std::vector<uint8_t> reference, output;
  check = check && UploadTestData(p, ops, bias, timing) &&
          RunAndRead(p, ops, candidates[0].choice, timing, &reference);
  const bool split_k_only = prefer_split_k.load() && std::any_of(candidates.begin(), candidates.end(),
                                                                 [](const Candidate& c) { return c.split_k; });
  int best = -1;
  float best_ms = 0.0f;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    if (split_k_only && !c.split_k) continue;
    if (!check && c.variant) continue;  // unchecked variants never run in an engine
    if (check && i > 0) {
      if (!RunAndRead(p, ops, c.choice, timing, &output)) continue;
      if (!SameOutput(p.dtype, reference, output)) {
        Increment(kCandidatesRejected);
        continue;
      }
    } else if (!check && !RunGemm(p, ops, c.choice, timing.stream())) {
      continue;  // warm-up (a checked run warms up too); a refused candidate is skipped
    }
    const float ms = timing.Time(kGemmRuns, [&] { return RunGemm(p, ops, c.choice, timing.stream()); });
    if (ms >= 0.0f && (best < 0 || ms < best_ms)) {
      best = static_cast<int>(i);
      best_ms = ms;
    }
  }
  return best;
}

// The stored winner of `key` when cuBLASLt still accepts it for `p`.
bool StoredGemm(const GemmProblem& p, const std::string& key, GemmAlgo* out) {
  std::string text;
  if (key.empty() || !GetStore().Find(key, &text)) return false;
  cublasLtMatmulHeuristicResult_t check;
  if (!Unhex(text, &out->algo, sizeof(out->algo)) || !CheckGemm(p, out->algo, &check)) {
    Increment(kCacheRejected);
    return false;
  }
  out->workspace = check.workspaceSize;
  GetStore().MarkUsed(key, p.owner);
  Increment(kCacheHits);
  return true;
}

// --------------------------------------------------------------------------- conv
std::string DnnVersion(const CudnnApi& dnn) { return dnn.GetVersion ? std::to_string(dnn.GetVersion()) : ""; }

// Device addresses of a timed convolution's operands.
struct ConvOperands {
  void* x;
  void* w;
  void* y;
  void* bias;
  void* workspace;
};

// Enqueues `algo` as the engine step runs it: `fused` with bias and relu, else plain.
bool RunConv(const ConvProblem& p, const ConvOperands& ops, const ConvAlgo& algo, bool fused) {
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t s =
      fused ? p.dnn->ConvolutionBiasActivationForward(p.handle, &one, p.x, ops.x, p.w, ops.w, p.conv, algo.algo,
                                                      ops.workspace, algo.workspace, &zero, p.y, ops.y, p.bias,
                                                      ops.bias, p.act, p.y, ops.y)
            : p.dnn->ConvolutionForward(p.handle, &one, p.x, ops.x, p.w, ops.w, p.conv, algo.algo, ops.workspace,
                                        algo.workspace, &zero, p.y, ops.y);
  return s == CUDNN_STATUS_SUCCESS;
}

// Index of the fastest of `usable` run `fused` or plain on the handle's stream, -1 when
// none ran (a refused call enqueues nothing).
int FastestConvRun(const ConvProblem& p, const std::vector<ConvAlgo>& usable, const ConvOperands& ops, bool fused,
                   TimingStream& timing) {
  int best = -1;
  float best_ms = 0.0f;
  for (size_t i = 0; i < usable.size(); ++i) {
    if (!RunConv(p, ops, usable[i], fused)) continue;  // warm-up; a refused algorithm is skipped
    const float ms = timing.Time(kConvRuns, [&] { return RunConv(p, ops, usable[i], fused); });
    if (ms >= 0.0f && (best < 0 || ms < best_ms)) {
      best = static_cast<int>(i);
      best_ms = ms;
    }
  }
  return best;
}

// Times every algorithm of `usable` on zeroed scratch operands, in the call the step
// makes; returns the index of the fastest, -1 when none could be timed.
int FastestConv(const ConvProblem& p, const std::vector<ConvAlgo>& usable) {
  const DriverApi& drv = *p.driver;
  uint64_t workspace = 0;
  for (const ConvAlgo& a : usable) workspace = std::max(workspace, a.workspace);
  ScratchBlock scratch;
  const uint64_t x_at = scratch.Reserve(p.x_bytes), w_at = scratch.Reserve(p.w_bytes),
                 y_at = scratch.Reserve(p.y_bytes), bias_at = scratch.Reserve(p.bias_bytes),
                 ws_at = scratch.Reserve(workspace);
  TimingStream timing(drv);
  if (p.scratch == nullptr || p.handle_mu == nullptr || !scratch.Allocate(*p.scratch) ||
      !timing.Create(p.scratch->after) ||
      drv.MemsetD8Async(scratch.base(), 0, scratch.total(), timing.stream()) != CUDA_SUCCESS) {
    return -1;
  }
  const ConvOperands ops{scratch.at(x_at), scratch.at(w_at), scratch.at(y_at), scratch.at(bias_at),
                         scratch.at(ws_at)};
  const bool fused = p.bias != nullptr && p.act != nullptr;
  std::lock_guard<std::mutex> lock(*p.handle_mu);
  if (p.dnn->SetStream(p.handle, timing.stream()) != CUDNN_STATUS_SUCCESS) return -1;
  int best = FastestConvRun(p, usable, ops, fused, timing);
  if (best < 0 && fused) best = FastestConvRun(p, usable, ops, false, timing);  // the step will run plain
  timing.Synchronize();
  p.dnn->SetStream(p.handle, nullptr);  // the handle never names the private stream once it is gone
  return best;
}

// The stored winner of `key` when it is still among cuDNN's usable algorithms.
bool StoredConv(const ConvProblem& p, const std::string& key, const std::vector<ConvAlgo>& usable, ConvAlgo* out) {
  std::string text;
  if (key.empty() || !GetStore().Find(key, &text)) return false;
  for (const ConvAlgo& a : usable) {
    if (std::to_string(static_cast<int>(a.algo)) == text) {
      *out = a;
      GetStore().MarkUsed(key, p.owner);
      Increment(kCacheHits);
      return true;
    }
  }
  Increment(kCacheRejected);
  return false;
}

// --------------------------------------------------------------------------- kernels
std::string DriverVersion(const DriverApi& drv) {
  int version = 0;
  return drv.DriverGetVersion && drv.DriverGetVersion(&version) == CUDA_SUCCESS ? std::to_string(version) : "";
}

// Times every variant of `p` on a private stream; the index of the fastest, -1 when none
// could be timed.
int FastestKernel(const KernelProblem& p) {
  TimingStream timing(*p.driver);
  if (!timing.Create(p.after)) return -1;
  int best = -1;
  float best_ms = 0.0f;
  for (int v = 0; v < p.variants; ++v) {
    if (!p.launch(v, timing.stream())) continue;  // warm-up; a variant that cannot launch is skipped
    const float ms = timing.Time(kKernelRuns, [&] { return p.launch(v, timing.stream()); });
    if (ms >= 0.0f && (best < 0 || ms < best_ms)) {
      best = v;
      best_ms = ms;
    }
  }
  timing.Synchronize();
  return best;
}

}  // namespace

bool GemmTimingEnabled() {
  static const bool enabled = !SwitchedOff("TFTRT_LITE_TUNING") && !SwitchedOff("TFTRT_LITE_GEMM_TUNING");
  return enabled;
}

// Opt-in: on the H200 the timed winners made ResNet50 FP16 at batch 1 about 8x slower
// (1x1 convolutions of 300+ us where cuDNN's first choice takes tens), so until the timing
// is understood convolutions run cuDNN's heuristic order, and stored conv winners are
// used only when this is on.
bool ConvTimingEnabled() {
  static const bool enabled = !SwitchedOff("TFTRT_LITE_TUNING") && SwitchedOn("TFTRT_LITE_CONV_TUNING");
  return enabled;
}

std::string DeviceId(const DriverApi& drv, CUdevice device, const std::string& arch) {
  char name[256] = {0};
  int sms = 0;
  if (drv.DeviceGetName == nullptr || drv.DeviceGetName(name, sizeof(name) - 1, device) != CUDA_SUCCESS ||
      drv.DeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device) != CUDA_SUCCESS) {
    return "";
  }
  std::string id;
  for (const char* c = name; *c; ++c) id += *c > ' ' && *c <= '~' && *c != ':' ? *c : '_';
  return id.empty() ? "" : id + ":" + arch + ":" + std::to_string(sms) + "sm";
}

GemmAlgo ChooseGemm(const GemmProblem& p, const cublasLtMatmulHeuristicResult_t* heuristic, int count) {
  GemmAlgo first;
  first.algo = heuristic[0].algo;
  first.workspace = heuristic[0].workspaceSize;
  Store& store = GetStore();
  store.LoadFileOnce();
  const std::string key = StoreKey("gemm", p.device, LtVersion(*p.lt), p.key);
  std::unique_lock<std::mutex> timing(TimingMutex(), std::defer_lock);
  if (GemmTimingEnabled()) timing.lock();  // before the lookup: another engine may be timing this problem
  GemmAlgo stored;
  if (StoredGemm(p, key, &stored)) return stored;
  if (!GemmTimingEnabled()) return first;
  const bool check = Checkable(p);
  const std::vector<Candidate> candidates = GemmCandidates(p, heuristic, count, check);
  if (candidates.size() < 2) return first;
  const int best = FastestGemm(p, candidates, check);
  if (best < 0) return first;
  const GemmAlgo& winner = candidates[best].choice;
  Increment(kGemmTimed);
  if (candidates[best].split_k) Increment(kSplitKChosen);
  if (!key.empty()) store.Record(key, Hex(&winner.algo, sizeof(winner.algo)), winner.workspace, p.owner);
  return winner;
}

ConvAlgo ChooseConv(const ConvProblem& p, const std::vector<ConvAlgo>& usable) {
  Store& store = GetStore();
  store.LoadFileOnce();
  if (!ConvTimingEnabled()) return usable[0];
  const std::string key = StoreKey("conv", p.device, DnnVersion(*p.dnn), p.key);
  std::lock_guard<std::mutex> timing(TimingMutex());
  ConvAlgo stored;
  if (StoredConv(p, key, usable, &stored)) return stored;
  if (usable.size() < 2) return usable[0];
  const int best = FastestConv(p, usable);
  if (best < 0) return usable[0];
  Increment(kConvTimed);
  const ConvAlgo& winner = usable[best];
  if (!key.empty()) store.Record(key, std::to_string(static_cast<int>(winner.algo)), winner.workspace, p.owner);
  return winner;
}

bool KernelTimingEnabled() {
  static const bool enabled = !SwitchedOff("TFTRT_LITE_TUNING") && !SwitchedOff("TFTRT_LITE_KERNEL_TUNING");
  return enabled;
}

int ChooseKernel(const KernelProblem& p) {
  Store& store = GetStore();
  store.LoadFileOnce();
  const std::string key = StoreKey("kernel", p.device, DriverVersion(*p.driver), p.key);
  std::lock_guard<std::mutex> timing(TimingMutex());
  std::string text;
  if (!key.empty() && store.Find(key, &text)) {
    const int stored = std::atoi(text.c_str());
    if (stored < p.variants) {
      store.MarkUsed(key, p.owner);
      Increment(kCacheHits);
      return stored;
    }
    Increment(kCacheRejected);
  }
  if (!KernelTimingEnabled() || p.variants < 2) return 0;
  const int best = FastestKernel(p);
  if (best < 0) return 0;
  Increment(kKernelTimed);
  if (!key.empty()) store.Record(key, std::to_string(best), 0, p.owner);
  return best;
}

int AddText(const std::string& text, int* malformed) { return GetStore().Add(text, malformed); }

std::string Dump(const std::string& owner, bool everything) { return GetStore().Dump(owner, everything); }

}  // namespace tactics
}  // namespace tftrt_lite

extern "C" {

int tftrt_lite_tactics_add(const char* text, int* malformed) {
  return tftrt_lite::tactics::AddText(text ? text : "", malformed);
}

const char* tftrt_lite_tactics_dump(const char* owner, int everything) {
  thread_local std::string text;
  text = tftrt_lite::tactics::Dump(owner ? owner : "", everything != 0);
  return text.c_str();
}

int64_t tftrt_lite_tactics_count(const char* name) {
  using namespace tftrt_lite::tactics;
  for (int i = 0; name != nullptr && i < kNumCounts; ++i) {
    if (std::strcmp(name, kCountNames[i]) == 0) return counts[i].load(std::memory_order_relaxed);
  }
  return -1;
}

void tftrt_lite_tactics_prefer_split_k(int on) { tftrt_lite::tactics::prefer_split_k.store(on != 0); }

}  // extern "C"
