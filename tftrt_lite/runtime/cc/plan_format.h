// The engine plan format, read side: the C++ mirror of tftrt_lite/engine/plan.py.
//
// Why header-only and dependency-free: the TftrtLiteEngine op, a standalone inspection
// tool and the Python<->C++ agreement test all include it, and none of them should need
// protobuf or a JSON parser to execute a plan. Every constant here must equal its Python
// twin; tests/engine/test_plan.py compiles a program against this header, feeds it a
// plan written by Python and compares what it read.
//
// Parsing never trusts an offset: every read is bounds-checked, every index is checked
// against its table, and failures come back as a message (no exceptions, so the op can
// turn them into a Status).
#ifndef TFTRT_LITE_RUNTIME_CC_PLAN_FORMAT_H_
#define TFTRT_LITE_RUNTIME_CC_PLAN_FORMAT_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace tftrt_lite {
namespace plan {

constexpr char kMagic[8] = {'T', 'F', 'T', 'R', 'T', 'L', 'P', '\0'};
constexpr uint32_t kFormatVersion = 3;
constexpr uint64_t kWeightAlignment = 256;
constexpr uint64_t kHeaderSize = 24;        // magic, u32 version, u32 section count, u64 size
constexpr uint64_t kSectionEntrySize = 20;  // u32 kind, u64 offset, u64 size
constexpr uint32_t kNoBuffer = 0xFFFFFFFFu;

enum SectionKind : uint32_t {
  kSymbols = 1, kExprs = 2, kBuffers = 3, kKernels = 4, kSteps = 5, kWeights = 6, kGraph = 7, kMeta = 8,
};
constexpr uint32_t kNumSectionKinds = 8;

// Same order as tftrt_lite.engine.ir.DTYPES.
enum DType : uint32_t {
  kFloat32 = 0, kFloat16, kBFloat16, kFloat64, kInt8, kUInt8, kInt16, kUInt16,
  kInt32, kUInt32, kInt64, kUInt64, kBool, kNumDTypes,
};

inline uint64_t DTypeSize(uint32_t dtype) {
  static const uint8_t sizes[kNumDTypes] = {4, 2, 2, 8, 1, 1, 2, 2, 4, 4, 8, 8, 1};
  return dtype < kNumDTypes ? sizes[dtype] : 0;
}

enum Storage : uint32_t { kInput = 0, kOutput = 1, kWeight = 2, kArena = 3, kAlias = 4 };
enum StepKind : uint32_t { kLaunch = 1, kGemm = 2, kConv = 3 };
enum ArgKind : uint32_t { kArgBuffer = 0, kArgExpr = 1, kArgI64 = 2, kArgF32 = 3 };
enum Activation : uint32_t {
  kActNone = 0, kActRelu, kActGeluErf, kActGeluTanh, kActSigmoid, kActTanh, kActClip, kActLeakyRelu,
};
enum Layout : uint32_t { kNCHW = 0, kNHWC = 1 };
enum FilterLayout : uint32_t { kKCRS = 0, kKRSC = 1 };

struct Symbol {
  std::string name;
  uint32_t input_index;
  uint32_t axis;
};

struct Term {
  int64_t coeff;
  std::vector<uint32_t> symbols;  // a repeated symbol is a power
};

// (sum of coeff * prod(symbols)) / divisor, rounded down or (ceil) up.
struct Expr {
  int64_t divisor;
  bool ceil;
  std::vector<Term> terms;

  int64_t Evaluate(const std::vector<int64_t>& symbol_values) const {
    int64_t total = 0;
    for (const Term& t : terms) {
      int64_t v = t.coeff;
      for (uint32_t s : t.symbols) v *= symbol_values[s];
      total += v;
    }
    int64_t q = total / divisor, r = total % divisor;  // C++ truncates toward zero
    if (r != 0 && ((r < 0) != ceil)) q += ceil ? 1 : -1;
    return q;
  }
};

struct Buffer {
  std::string name;
  uint32_t dtype;
  std::vector<uint32_t> shape;  // expr indices
  uint32_t storage;
  uint64_t a;  // input/output index, weight offset, arena offset expr, or aliased buffer
  uint64_t b;  // weight byte size
};

struct KernelImage {
  std::string arch;  // "sm_90"
  const uint8_t* cubin;
  uint64_t cubin_size;
};

struct Kernel {
  std::string name;
  std::string source;
  std::string ptx_arch;
  std::string ptx;
  std::vector<KernelImage> images;
};

struct Arg {
  uint32_t kind;
  uint64_t value;  // buffer index, expr index, int64 bits, or float32 bits
};

// Math modes of a library step (plan.py MathMode).
enum MathMode : uint32_t { kMathExact = 0, kMathTF32 = 1 };

struct Epilogue {
  uint32_t dtype, compute, math, activation;
  float act_p0, act_p1, alpha, beta;
};

// One kernel of a launch step and its launch geometry.
struct LaunchConfig {
  uint32_t kernel;
  uint32_t grid[3];  // expr indices
  uint32_t block[3];
  uint32_t shared_mem;
};

// configs[0] is the builder's choice; any others are variants of it (the same computation
// on the same arguments, tiled differently) that the executor times per shape.
struct LaunchStep {
  std::vector<LaunchConfig> configs;
  std::vector<Arg> args;
};

struct GemmStep {  // row-major D = act(alpha * op(A) op(B) + beta * C + bias), see plan.py
  uint32_t a, b, d, bias, c;
  bool trans_a, trans_b;
  uint32_t m, n, k, lda, ldb, ldd, batch, stride_a, stride_b, stride_d;  // expr indices
  Epilogue epilogue;
};

struct ConvStep {
  uint32_t layout, filter_layout;
  uint32_t x, w, y, bias, residual;
  uint32_t n, c, h, w_in, k, r, s, out_h, out_w;  // expr indices
  uint32_t pads[4], strides[2], dilations[2], groups;
  Epilogue epilogue;
};

struct Step {
  uint32_t kind;
  std::string name;
  LaunchStep launch;
  GemmStep gemm;
  ConvStep conv;
};

struct Plan {
  uint32_t format_version = 0;
  std::vector<Symbol> symbols;
  std::vector<Expr> exprs;
  uint32_t arena_size_expr = 0;
  std::vector<Buffer> buffers;
  std::vector<Kernel> kernels;
  std::vector<Step> steps;
  const uint8_t* weights = nullptr;
  uint64_t weights_size = 0;
  std::string graph_json;
  std::string meta_json;
};

namespace internal {

inline uint32_t LoadU32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline uint64_t LoadU64(const uint8_t* p) { return uint64_t(LoadU32(p)) | uint64_t(LoadU32(p + 4)) << 32; }

// Bounds-checked little-endian cursor over one section; the first failure sticks.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size, const char* section, std::string* error)
      : data_(data), size_(size), section_(section), error_(error) {}

  bool ok() const { return ok_; }
  bool Fail(const std::string& what) {
    if (ok_) *error_ = std::string("plan section ") + section_ + ": " + what;
    ok_ = false;
    return false;
  }
  const uint8_t* Take(uint64_t n) {
    if (!ok_ || n > size_ - pos_) {
      Fail("truncated at byte " + std::to_string(pos_));
      return nullptr;
    }
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint32_t U32() { const uint8_t* p = Take(4); return p ? LoadU32(p) : 0; }
  uint64_t U64() { const uint8_t* p = Take(8); return p ? LoadU64(p) : 0; }
  int64_t I64() { return static_cast<int64_t>(U64()); }
  float F32() { uint32_t bits = U32(); float f; std::memcpy(&f, &bits, 4); return f; }
  std::string Str() {
    uint32_t n = U32();
    const uint8_t* p = Take(n);
    return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
  }
  // A u32 element count, rejected if even minimal elements could not fit what is left.
  uint32_t Count(uint64_t min_element_size) {
    uint32_t n = U32();
    if (ok_ && min_element_size && n > (size_ - pos_) / min_element_size) {
      Fail("count " + std::to_string(n) + " exceeds the section size");
      return 0;
    }
    return n;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const char* section_;
  std::string* error_;
  bool ok_ = true;
};

inline bool CheckIndex(Cursor& c, uint64_t index, uint64_t count, const char* what) {
  if (index < count) return true;
  return c.Fail(std::string(what) + " index " + std::to_string(index) + " out of range (" +
                std::to_string(count) + ")");
}

inline void ReadEpilogue(Cursor& c, Epilogue* e) {
  e->dtype = c.U32(); e->compute = c.U32(); e->math = c.U32(); e->activation = c.U32();
  e->act_p0 = c.F32(); e->act_p1 = c.F32(); e->alpha = c.F32(); e->beta = c.F32();
  if (c.ok() && (e->dtype >= kNumDTypes || e->compute >= kNumDTypes)) c.Fail("bad epilogue dtype");
  if (c.ok() && e->math > kMathTF32) c.Fail("bad epilogue math mode");
}

}  // namespace internal

// Parses and validates `size` bytes at `data` into `plan`. The plan keeps pointers into
// `data` (cubins, weights), which must outlive it. Returns false with `*error` set.
inline bool ParsePlan(const uint8_t* data, uint64_t size, Plan* plan, std::string* error) {
  using internal::CheckIndex;
  using internal::Cursor;
  if (size < kHeaderSize) {
    *error = "plan is " + std::to_string(size) + " bytes, shorter than its header";
    return false;
  }
  if (std::memcmp(data, kMagic, 8) != 0) {
    *error = "not a tftrt_lite plan (bad magic)";
    return false;
  }
  uint32_t version = internal::LoadU32(data + 8);
  if (version != kFormatVersion) {
    *error = "plan format version " + std::to_string(version) + " is not supported by this runtime (reads " +
             std::to_string(kFormatVersion) + "); rebuild the engine with the installed tftrt_lite";
    return false;
  }
  plan->format_version = version;
  uint32_t count = internal::LoadU32(data + 12);
  uint64_t declared = internal::LoadU64(data + 16);
  if (declared != size) {
    *error = "plan header says " + std::to_string(declared) + " bytes, got " + std::to_string(size);
    return false;
  }
  if (count > (size - kHeaderSize) / kSectionEntrySize) {
    *error = "plan section table runs past the end of the plan";
    return false;
  }
  uint64_t table_end = kHeaderSize + uint64_t(count) * kSectionEntrySize;
  const uint8_t* sec_data[kNumSectionKinds + 1] = {nullptr};
  uint64_t sec_size[kNumSectionKinds + 1] = {0};
  bool seen[kNumSectionKinds + 1] = {false};
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = data + kHeaderSize + uint64_t(i) * kSectionEntrySize;
    uint32_t kind = internal::LoadU32(e);
    uint64_t offset = internal::LoadU64(e + 4), length = internal::LoadU64(e + 12);
    if (offset < table_end || offset > size || length > size - offset) {
      *error = "plan section #" + std::to_string(i) + " lies outside the plan";
      return false;
    }
    if (kind == 0 || kind > kNumSectionKinds) continue;  // unknown kinds are skipped
    if (seen[kind]) {
      *error = "plan has two sections of kind " + std::to_string(kind);
      return false;
    }
    if (kind == kWeights && offset % kWeightAlignment != 0) {
      *error = "plan WEIGHTS section is not 256-byte aligned";
      return false;
    }
    seen[kind] = true;
    sec_data[kind] = data + offset;
    sec_size[kind] = length;
  }
  static const char* kNames[] = {"", "SYMBOLS", "EXPRS", "BUFFERS", "KERNELS", "STEPS", "WEIGHTS", "GRAPH", "META"};
  for (uint32_t k = 1; k <= kNumSectionKinds; ++k) {
    if (!seen[k]) {
      *error = std::string("plan lacks section ") + kNames[k];
      return false;
    }
  }

  {  // SYMBOLS
    Cursor c(sec_data[kSymbols], sec_size[kSymbols], "SYMBOLS", error);
    uint32_t n = c.Count(12);
    for (uint32_t i = 0; i < n && c.ok(); ++i) {
      Symbol s;
      s.name = c.Str();
      s.input_index = c.U32();
      s.axis = c.U32();
      plan->symbols.push_back(s);
    }
    if (!c.ok()) return false;
  }
  {  // EXPRS
    Cursor c(sec_data[kExprs], sec_size[kExprs], "EXPRS", error);
    uint32_t n = c.Count(16);
    for (uint32_t i = 0; i < n && c.ok(); ++i) {
      Expr e;
      e.divisor = c.I64();
      e.ceil = c.U32() != 0;
      if (c.ok() && e.divisor <= 0) c.Fail("expression divisor must be positive");
      uint32_t terms = c.Count(12);
      for (uint32_t t = 0; t < terms && c.ok(); ++t) {
        Term term;
        term.coeff = c.I64();
        uint32_t k = c.Count(4);
        for (uint32_t j = 0; j < k && c.ok(); ++j) {
          uint32_t s = c.U32();
          if (CheckIndex(c, s, plan->symbols.size(), "symbol")) term.symbols.push_back(s);
        }
        e.terms.push_back(term);
      }
      plan->exprs.push_back(e);
    }
    if (!c.ok()) return false;
  }
  const uint64_t num_exprs = plan->exprs.size();
  plan->weights = sec_data[kWeights];
  plan->weights_size = sec_size[kWeights];
  {  // BUFFERS
    Cursor c(sec_data[kBuffers], sec_size[kBuffers], "BUFFERS", error);
    plan->arena_size_expr = c.U32();
    CheckIndex(c, plan->arena_size_expr, num_exprs, "arena size expr");
    uint32_t n = c.Count(32);
    for (uint32_t i = 0; i < n && c.ok(); ++i) {
      Buffer b;
      b.name = c.Str();
      b.dtype = c.U32();
      if (c.ok() && b.dtype >= kNumDTypes) c.Fail("buffer " + b.name + " has unknown dtype");
      uint32_t rank = c.Count(4);
      for (uint32_t r = 0; r < rank && c.ok(); ++r) {
        uint32_t e = c.U32();
        if (CheckIndex(c, e, num_exprs, "shape expr")) b.shape.push_back(e);
      }
      b.storage = c.U32();
      b.a = c.U64();
      b.b = c.U64();
      if (!c.ok()) break;
      switch (b.storage) {
        case kInput: case kOutput: break;
        case kWeight:
          if (b.a > plan->weights_size || b.b > plan->weights_size - b.a)
            c.Fail("weight buffer " + b.name + " lies outside WEIGHTS");
          break;
        case kArena: CheckIndex(c, b.a, num_exprs, "arena offset expr"); break;
        case kAlias: CheckIndex(c, b.a, i, "aliased buffer (must precede its alias)"); break;
        default: c.Fail("buffer " + b.name + " has unknown storage " + std::to_string(b.storage));
      }
      plan->buffers.push_back(b);
    }
    if (!c.ok()) return false;
  }
  {  // KERNELS
    Cursor c(sec_data[kKernels], sec_size[kKernels], "KERNELS", error);
    uint32_t n = c.Count(24);
    for (uint32_t i = 0; i < n && c.ok(); ++i) {
      Kernel k;
      k.name = c.Str();
      k.source = c.Str();
      k.ptx_arch = c.Str();
      uint64_t ptx_size = c.U64();
      const uint8_t* ptx = c.Take(ptx_size);
      if (ptx) k.ptx.assign(reinterpret_cast<const char*>(ptx), ptx_size);
      uint32_t images = c.Count(12);
      for (uint32_t j = 0; j < images && c.ok(); ++j) {
        KernelImage img;
        img.arch = c.Str();
        img.cubin_size = c.U64();
        img.cubin = c.Take(img.cubin_size);
        k.images.push_back(img);
      }
      plan->kernels.push_back(k);
    }
    if (!c.ok()) return false;
  }
  {  // STEPS
    Cursor c(sec_data[kSteps], sec_size[kSteps], "STEPS", error);
    const uint64_t nb = plan->buffers.size();
    auto buffer_or_none = [&](uint32_t b, const char* what) {
      if (b != kNoBuffer) CheckIndex(c, b, nb, what);
    };
    uint32_t n = c.Count(8);
    for (uint32_t i = 0; i < n && c.ok(); ++i) {
      Step s{};
      s.kind = c.U32();
      s.name = c.Str();
      if (s.kind == kLaunch) {
        LaunchStep& l = s.launch;
        auto read_config = [&]() {
          LaunchConfig k;
          k.kernel = c.U32();
          CheckIndex(c, k.kernel, plan->kernels.size(), "kernel");
          for (int d = 0; d < 3; ++d) { k.grid[d] = c.U32(); CheckIndex(c, k.grid[d], num_exprs, "grid expr"); }
          for (int d = 0; d < 3; ++d) k.block[d] = c.U32();
          k.shared_mem = c.U32();
          l.configs.push_back(k);
        };
        read_config();
        uint32_t nargs = c.Count(12);
        for (uint32_t a = 0; a < nargs && c.ok(); ++a) {
          Arg arg;
          arg.kind = c.U32();
          arg.value = c.U64();
          if (arg.kind == kArgBuffer) CheckIndex(c, arg.value, nb, "argument buffer");
          else if (arg.kind == kArgExpr) CheckIndex(c, arg.value, num_exprs, "argument expr");
          else if (arg.kind != kArgI64 && arg.kind != kArgF32) c.Fail("unknown argument kind in step " + s.name);
          l.args.push_back(arg);
        }
        const uint32_t variants = c.Count(32);
        for (uint32_t v = 0; v < variants && c.ok(); ++v) read_config();
      } else if (s.kind == kGemm) {
        GemmStep& g = s.gemm;
        g.a = c.U32(); g.b = c.U32(); g.d = c.U32(); g.bias = c.U32(); g.c = c.U32();
        CheckIndex(c, g.a, nb, "gemm A"); CheckIndex(c, g.b, nb, "gemm B"); CheckIndex(c, g.d, nb, "gemm D");
        buffer_or_none(g.bias, "gemm bias");
        buffer_or_none(g.c, "gemm C");
        g.trans_a = c.U32() != 0;
        g.trans_b = c.U32() != 0;
        uint32_t* dims[] = {&g.m, &g.n, &g.k, &g.lda, &g.ldb, &g.ldd, &g.batch, &g.stride_a, &g.stride_b, &g.stride_d};
        for (uint32_t* d : dims) { *d = c.U32(); CheckIndex(c, *d, num_exprs, "gemm expr"); }
        internal::ReadEpilogue(c, &g.epilogue);
      } else if (s.kind == kConv) {
        ConvStep& v = s.conv;
        v.layout = c.U32(); v.filter_layout = c.U32();
        v.x = c.U32(); v.w = c.U32(); v.y = c.U32(); v.bias = c.U32(); v.residual = c.U32();
        CheckIndex(c, v.x, nb, "conv x"); CheckIndex(c, v.w, nb, "conv w"); CheckIndex(c, v.y, nb, "conv y");
        buffer_or_none(v.bias, "conv bias");
        buffer_or_none(v.residual, "conv residual");
        uint32_t* dims[] = {&v.n, &v.c, &v.h, &v.w_in, &v.k, &v.r, &v.s, &v.out_h, &v.out_w};
        for (uint32_t* d : dims) { *d = c.U32(); CheckIndex(c, *d, num_exprs, "conv expr"); }
        for (uint32_t& p : v.pads) p = c.U32();
        for (uint32_t& p : v.strides) p = c.U32();
        for (uint32_t& p : v.dilations) p = c.U32();
        v.groups = c.U32();
        internal::ReadEpilogue(c, &v.epilogue);
      } else if (c.ok()) {
        c.Fail("step " + s.name + " has unknown kind " + std::to_string(s.kind));
      }
      plan->steps.push_back(s);
    }
    if (!c.ok()) return false;
  }
  plan->graph_json.assign(reinterpret_cast<const char*>(sec_data[kGraph]), sec_size[kGraph]);
  plan->meta_json.assign(reinterpret_cast<const char*>(sec_data[kMeta]), sec_size[kMeta]);
  return true;
}

// Evaluates every symbol's value from the engine's input shapes.
inline bool BindSymbols(const Plan& plan, const std::vector<std::vector<int64_t>>& input_shapes,
                        std::vector<int64_t>* values, std::string* error) {
  values->assign(plan.symbols.size(), 0);
  for (size_t i = 0; i < plan.symbols.size(); ++i) {
    const Symbol& s = plan.symbols[i];
    if (s.input_index >= input_shapes.size() || s.axis >= input_shapes[s.input_index].size()) {
      *error = "symbol " + s.name + " binds to input " + std::to_string(s.input_index) + " axis " +
               std::to_string(s.axis) + ", which the engine was not given";
      return false;
    }
    (*values)[i] = input_shapes[s.input_index][s.axis];
  }
  return true;
}

}  // namespace plan
}  // namespace tftrt_lite

#endif  // TFTRT_LITE_RUNTIME_CC_PLAN_FORMAT_H_
