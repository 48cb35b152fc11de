// tvm_runner: runs an exported Relax executable on a board that has no Python.
//
// The host pushes this binary with libtvm_runtime.so and libtvm_ffi.so and drives it over ssh, so
// the command line and the output lines below are a contract with the host side:
//   tvm_runner --info
//     stdout: {"arch": "...", "cores": N, "runner_version": 1}
//   tvm_runner --lib model.so --params params.bin --input input.bin --input-shape 1,3,224,224
//              --output out.bin [--warmup W] [--runs R] [--profile P]
//     stderr: "progress <first|warmup|run|profile> <i> <n> <ms>" after each inference (i counts from 1)
//     stdout: one JSON line with load_ms, first_ms, warmup_ms, runs_ms, output_shape, num_outputs,
//             peak_rss_kb (the process's peak resident memory after the timed runs) and, with
//             --profile P > 0, profile: [{"name", "calls", "ms"}, ...], every function the VM called
//             (kernels and VM builtins) in order of first call, calls and ms per inference, averaged
//             over P extra inferences that run after the timed ones, so timing them never slows those
//             (load_ms covers loading the library, initialising the VM, reading params and input)
// Every error prints one message on stderr and exits with code 2.

#include <tvm/ffi/any.h>
#include <tvm/ffi/c_api.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

constexpr int kRunnerVersion = 1;
constexpr int kExitError = 2;
constexpr size_t kAlignment = 64;
// Relax VM allocator kinds (tvm::runtime::memory::AllocatorType): 2 reuses freed blocks.
constexpr int kPooledAllocator = 2;

#if defined(__aarch64__)
constexpr const char* kArch = "aarch64";
#elif defined(__x86_64__)
constexpr const char* kArch = "x86_64";
#else
#error "tvm_runner supports aarch64 and x86_64 only"
#endif

// A bad command line or input file: reported the same way as a TVM error, without a backtrace.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

using Clock = std::chrono::steady_clock;

double MillisSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Fixed notation keeps microsecond resolution for fast layers and never switches to exponents.
std::string FormatMs(double ms) {
  std::ostringstream text;
  text << std::fixed << std::setprecision(4) << ms;
  return text.str();
}

// Input tensors come from here so that generated kernels can assume aligned data, as they do for
// tensors TVM allocates itself.
struct AlignedCPUAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = ffi::GetDataSize(*tensor);
    size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

struct Options {
  std::string lib, params, input, output;
  std::vector<int64_t> input_shape;
  int warmup = 1;
  int runs = 10;
  int profile = 0;
};

std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    long long dim = -1;
    try {
      dim = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || dim <= 0) {
      throw UsageError("--input-shape must be positive integers separated by commas, got '" +
                       text + "'");
    }
    shape.push_back(dim);
  }
  if (shape.empty()) throw UsageError("--input-shape is empty");
  return shape;
}

int ParseCount(const std::string& flag, const std::string& text) {
  size_t used = 0;
  int value = -1;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value < 0) {
    throw UsageError(flag + " must be a non-negative integer, got '" + text + "'");
  }
  return value;
}

Options ParseOptions(int argc, char** argv) {
  std::map<std::string, std::string> values;
  for (int i = 1; i < argc; i += 2) {
    std::string flag = argv[i];
    if (i + 1 >= argc) throw UsageError("missing value after " + flag);
    values[flag] = argv[i + 1];
  }
  Options opts;
  auto take = [&](const std::string& flag) -> std::optional<std::string> {
    auto it = values.find(flag);
    if (it == values.end()) return std::nullopt;
    std::string value = it->second;
    values.erase(it);
    return value;
  };
  auto require = [&](const std::string& flag) {
    std::optional<std::string> value = take(flag);
    if (!value) throw UsageError("missing required option " + flag);
    return *value;
  };
  opts.lib = require("--lib");
  opts.params = require("--params");
  opts.input = require("--input");
  opts.input_shape = ParseShape(require("--input-shape"));
  opts.output = require("--output");
  if (auto warmup = take("--warmup")) opts.warmup = ParseCount("--warmup", *warmup);
  if (auto runs = take("--runs")) opts.runs = ParseCount("--runs", *runs);
  if (auto profile = take("--profile")) opts.profile = ParseCount("--profile", *profile);
  if (!values.empty()) throw UsageError("unknown option " + values.begin()->first);
  if (opts.runs < 1) throw UsageError("--runs must be at least 1");
  return opts;
}

void RequireFile(const std::string& what, const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) throw UsageError(what + " not found or not readable: " + path);
}

ffi::Tensor ReadInput(const std::string& path, const std::vector<int64_t>& shape) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UsageError("input file not found or not readable: " + path);
  DLDataType f32{kDLFloat, 32, 1};
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(
      AlignedCPUAlloc(), ffi::ShapeView(shape.data(), shape.size()), f32, DLDevice{kDLCPU, 0});
  size_t expected = ffi::GetDataSize(tensor);
  size_t actual = static_cast<size_t>(in.tellg());
  if (actual != expected) {
    throw UsageError("input file " + path + " has " + std::to_string(actual) +
                     " bytes, the float32 input shape needs " + std::to_string(expected));
  }
  in.seekg(0);
  in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(expected));
  if (!in) throw UsageError("could not read input file " + path);
  return tensor;
}

// Every call into TVM goes through tvm-ffi's C ABI (TVMFFIFunctionCall): an error comes back as a
// code and is raised here as the runner's own ffi::Error. ffi::Function's call operator would take
// the C++ fast path (FunctionObj::cpp_call) and let TVM's exceptions unwind into the runner, which
// is built with LLVM's libc++ (see pipeline/board/bundle.py) while TVM uses libstdc++.
void CallSafely(const ffi::Function& func, const std::vector<ffi::AnyView>& args, ffi::Any* result) {
  auto* handle = static_cast<TVMFFIObjectHandle>(const_cast<ffi::FunctionObj*>(func.get()));
  auto* packed = reinterpret_cast<TVMFFIAny*>(const_cast<ffi::AnyView*>(args.data()));
  TVM_FFI_CHECK_SAFE_CALL(TVMFFIFunctionCall(handle, packed, static_cast<int32_t>(args.size()),
                                             reinterpret_cast<TVMFFIAny*>(result)));
}

template <typename... Args>
ffi::Any Call(const ffi::Function& func, const Args&... args) {
  ffi::Any result;
  CallSafely(func, {ffi::AnyView(args)...}, &result);
  return result;
}

// Parameters arrive as one save_param_dict file keyed p00000, p00001, ... in argument order.
std::vector<ffi::Tensor> LoadParams(const std::string& path) {
  RequireFile("parameters file", path);
  ffi::Function load = ffi::Function::GetGlobalRequired("runtime.LoadParamsFromFile");
  auto params = Call(load, ffi::String(path)).cast<ffi::Map<ffi::String, ffi::Tensor>>();
  std::vector<ffi::Tensor> ordered;
  for (size_t i = 0; i < params.size(); ++i) {
    char key[32];
    std::snprintf(key, sizeof(key), "p%05zu", i);
    auto found = params.find(ffi::String(key));
    if (found == params.end()) {
      throw UsageError("parameters file " + path + " lacks key " + key +
                       ": expected keys p00000, p00001, ... in argument order");
    }
    ordered.push_back((*found).second);
  }
  return ordered;
}

// The VM returns a tensor for a single output and an array (a Relax tuple) for several.
std::vector<ffi::Tensor> Outputs(const ffi::Any& result) {
  if (auto tensor = result.as<ffi::Tensor>()) return {*tensor};
  std::vector<ffi::Tensor> outputs;
  if (auto items = result.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) {
      auto tensor = item.as<ffi::Tensor>();
      if (!tensor) throw UsageError("model output holds a non-tensor: " + item.GetTypeKey());
      outputs.push_back(*tensor);
    }
  }
  if (outputs.empty()) throw UsageError("model returned no tensor: " + result.GetTypeKey());
  return outputs;
}

void WriteOutput(const std::string& path, const ffi::Tensor& tensor) {
  DLDataType dtype = tensor.dtype();
  if (dtype.code != kDLFloat || dtype.bits != 32 || dtype.lanes != 1) {
    throw UsageError("output 0 is not float32");
  }
  if (!tensor.IsContiguous()) throw UsageError("output 0 is not contiguous");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const char* data = static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset();
  out.write(data, static_cast<std::streamsize>(ffi::GetDataSize(tensor)));
  if (!out) throw UsageError("could not write output file " + path);
}

std::string JsonList(const std::vector<double>& values) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < values.size(); ++i) text << (i ? ", " : "") << FormatMs(values[i]);
  text << "]";
  return text.str();
}

std::string JsonList(const ffi::ShapeView& shape) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < shape.size(); ++i) text << (i ? ", " : "") << shape[i];
  text << "]";
  return text.str();
}

// Linux reports ru_maxrss in kilobytes.
long PeakRssKb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

struct CallTimes {
  std::vector<std::string> order;  // first call first
  std::map<std::string, std::pair<int64_t, double>> calls_and_ms;
};

struct Instrument {
  CallTimes times;
  std::vector<Clock::time_point> started;  // a stack: nested calls stay apart
};

// The VM calls its instrument before and after every Call instruction (kernels and builtins alike),
// as (func, func_symbol, before_run, ret_value, args...). It is handed to TVM as a C function
// (TVMFFIFunctionCreate), called over the C ABI, and never throws: nothing unwinds across the
// runner's libc++ and TVM's libstdc++.
int InstrumentCall(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) noexcept {
  result->type_index = kTVMFFIInt;
  result->zero_padding = 0;
  result->v_int64 = 0;  // VMInstrumentReturnKind::kNoOp: run the call as usual
  if (num_args < 3) return 0;
  auto* state = static_cast<Instrument*>(self);
  const auto* views = reinterpret_cast<const ffi::AnyView*>(args);
  try {
    if (views[2].cast<bool>()) {
      state->started.push_back(Clock::now());
    } else if (!state->started.empty()) {
      double ms = MillisSince(state->started.back());
      state->started.pop_back();
      std::string name = views[1].cast<ffi::String>();
      auto [entry, inserted] = state->times.calls_and_ms.try_emplace(name, 0, 0.0);
      if (inserted) state->times.order.push_back(name);
      entry->second.first += 1;
      entry->second.second += ms;
    }
  } catch (...) {
    // A call the profile cannot name is left out of it rather than stopping the model.
  }
  return 0;
}

ffi::Function InstrumentFunction(Instrument* state) {
  TVMFFIObjectHandle handle = nullptr;
  TVM_FFI_CHECK_SAFE_CALL(TVMFFIFunctionCreate(state, InstrumentCall, nullptr, &handle));
  return ffi::details::ObjectUnsafe::ObjectRefFromObjectPtr<ffi::Function>(
      ffi::details::ObjectUnsafe::ObjectPtrFromOwned<ffi::Object>(static_cast<TVMFFIObject*>(handle)));
}

std::string JsonString(const std::string& text) {
  std::ostringstream out;
  out << '"';
  for (char c : text) {
    if (c == '"' || c == '\\') out << '\\';
    out << c;
  }
  out << '"';
  return out.str();
}

std::string JsonProfile(const CallTimes& times, int runs) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < times.order.size(); ++i) {
    const auto& [calls, ms] = times.calls_and_ms.at(times.order[i]);
    text << (i ? ", " : "") << "{\"name\": " << JsonString(times.order[i])
         << ", \"calls\": " << calls / runs << ", \"ms\": " << FormatMs(ms / runs) << "}";
  }
  text << "]";
  return text.str();
}

// Modules are loaded and queried through tvm-ffi's registered global functions, not through the C++
// methods libtvm_ffi.so exports, so that these calls too cross into TVM over the C ABI.
ffi::Module LoadModule(const std::string& path) {
  ffi::Function load = ffi::Function::GetGlobalRequired("ffi.ModuleLoadFromFile");
  return Call(load, ffi::String(path)).cast<ffi::Module>();
}

ffi::Function RequireFunction(const ffi::Module& module, const char* name, const std::string& lib) {
  ffi::Function get = ffi::Function::GetGlobalRequired("ffi.ModuleGetFunction");
  auto func = Call(get, module, ffi::String(name), true).cast<ffi::Optional<ffi::Function>>();
  if (!func) throw UsageError(lib + " is not an exported Relax executable with '" + name + "'");
  return *func;
}

int PrintInfo() {
  std::cout << "{\"arch\": \"" << kArch << "\", \"cores\": " << std::thread::hardware_concurrency()
            << ", \"runner_version\": " << kRunnerVersion << "}" << std::endl;
  return 0;
}

int Run(const Options& opts) {
  Clock::time_point load_start = Clock::now();
  RequireFile("model library", opts.lib);
  // dlopen searches the library path for a name without a slash, so pass an absolute path.
  ffi::Module lib = LoadModule(std::filesystem::absolute(opts.lib).string());
  ffi::Module vm = Call(RequireFunction(lib, "vm_load_executable", opts.lib)).cast<ffi::Module>();
  Call(RequireFunction(vm, "vm_initialization", opts.lib), static_cast<int>(kDLCPU), 0,
       kPooledAllocator);
  ffi::Function main_fn = RequireFunction(vm, "main", opts.lib);
  std::vector<ffi::Tensor> params = LoadParams(opts.params);
  ffi::Tensor input = ReadInput(opts.input, opts.input_shape);

  std::vector<ffi::AnyView> args;
  args.emplace_back(input);
  for (const ffi::Tensor& param : params) args.emplace_back(param);
  double load_ms = MillisSince(load_start);

  ffi::Any result;
  auto infer = [&](const char* phase, int i, int n) {
    result = ffi::Any();
    Clock::time_point start = Clock::now();
    CallSafely(main_fn, args, &result);
    double ms = MillisSince(start);
    std::cerr << "progress " << phase << " " << i << " " << n << " " << FormatMs(ms) << std::endl;
    return ms;
  };
  double first_ms = infer("first", 1, 1);
  std::vector<double> warmup_ms, runs_ms;
  for (int i = 1; i <= opts.warmup; ++i) warmup_ms.push_back(infer("warmup", i, opts.warmup));
  for (int i = 1; i <= opts.runs; ++i) runs_ms.push_back(infer("run", i, opts.runs));
  long peak_rss_kb = PeakRssKb();

  std::string profile;
  if (opts.profile > 0) {
    Instrument instrument;
    Call(RequireFunction(vm, "set_instrument", opts.lib), InstrumentFunction(&instrument));
    for (int i = 1; i <= opts.profile; ++i) infer("profile", i, opts.profile);
    Call(RequireFunction(vm, "set_instrument", opts.lib), ffi::Any());  // before `instrument` goes away
    profile = ", \"profile\": " + JsonProfile(instrument.times, opts.profile);
  }

  std::vector<ffi::Tensor> outputs = Outputs(result);
  WriteOutput(opts.output, outputs[0]);
  std::cout << "{\"load_ms\": " << FormatMs(load_ms) << ", \"first_ms\": " << FormatMs(first_ms)
            << ", \"warmup_ms\": " << JsonList(warmup_ms) << ", \"runs_ms\": " << JsonList(runs_ms)
            << ", \"output_shape\": " << JsonList(outputs[0].shape())
            << ", \"num_outputs\": " << outputs.size() << ", \"peak_rss_kb\": " << peak_rss_kb
            << profile << "}" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 2 && std::string(argv[1]) == "--info") return PrintInfo();
    return Run(ParseOptions(argc, argv));
  } catch (const UsageError& err) {
    std::cerr << "tvm_runner: error: " << err.what() << std::endl;
  } catch (const ffi::Error& err) {
    std::cerr << "tvm_runner: error: " << err.kind() << ": " << err.message() << std::endl;
  } catch (const std::exception& err) {
    std::cerr << "tvm_runner: error: " << err.what() << std::endl;
  }
  return kExitError;
}
