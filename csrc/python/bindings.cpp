// litcore._C: the thin pybind11 layer over liblitcore. No logic lives here.
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <sys/mman.h>
#include <unistd.h>

#include "litcore/litcore.h"
#include "litcore/aten_dtype.h"

namespace py = pybind11;
using namespace litcore;

namespace {

Verify parse_verify(const std::string& mode) {
  if (mode == "none") return Verify::None;
  if (mode == "full") return Verify::Full;
  if (mode == "lazy") return Verify::Lazy;
  throw std::invalid_argument("verify must be 'none', 'full' or 'lazy', got '" + mode + "'");
}

py::tuple info_tuple(const Store& store, const TensorInfo& t) {
  py::object alias = py::none();
  if (t.alias_of >= 0) alias = py::str(store.index().tensors[t.alias_of].name);
  return py::make_tuple(dtype_name(t.dtype), t.shape, t.offset, t.nbytes, t.checksum, alias);
}

// Drops the whole pages inside a tensor's memory (a file-backed mapping, e.g. from
// torch.load(mmap=True)) so a streaming conversion does not keep the source resident.
void drop_pages(const at::Tensor& tensor) {
  auto begin = reinterpret_cast<uintptr_t>(tensor.storage().data());
  auto end = begin + tensor.storage().nbytes();
  uintptr_t ps = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t first = (begin + ps - 1) / ps * ps;
  uintptr_t last = end / ps * ps;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

// The planner's units and rates as Python passes them: (name, nbytes, streamable, on_demand)
// and (compute, read, seek) seconds per byte / per seek.
using UnitTuple = std::tuple<std::string, uint64_t, bool, bool>;
using RatesTuple = std::tuple<double, double, double>;

std::vector<Unit> to_units(const std::vector<UnitTuple>& units) {
  std::vector<Unit> out;
  out.reserve(units.size());
  for (const auto& [name, nbytes, streamable, on_demand] : units) out.push_back({name, nbytes, streamable, on_demand});
  return out;
}

PassRates to_rates(const RatesTuple& r) { return {std::get<0>(r), std::get<1>(r), std::get<2>(r)}; }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "litcore native core";
  m.attr("__version__") = LITCORE_VERSION;
  m.attr("torch_version") = LITCORE_TORCH_VERSION;
  m.attr("ALIGNMENT") = kAlignment;
  m.attr("FORMAT_VERSION") = kFormatVersion;

  static py::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
  static py::exception<BudgetTooSmallError> budget_error(m, "BudgetTooSmallError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      py::set_error(format_error, e.what());
    } catch (const BudgetTooSmallError& e) {
      py::set_error(budget_error, e.what());
    } catch (const IOError& e) {
      // OSError(errno, message) picks the subclass (FileNotFoundError, PermissionError...).
      if (e.code() != 0) {
        PyErr_SetObject(PyExc_OSError, py::make_tuple(e.code(), e.what()).ptr());
      } else {
        py::set_error(PyExc_OSError, e.what());
      }
    } catch (const litcore::KeyError& e) {
      py::set_error(PyExc_KeyError, e.what());
    }
  });

  py::class_<Store, std::shared_ptr<Store>>(m, "Store")
      .def(py::init([](const std::string& path, const std::string& verify) {
             py::gil_scoped_release nogil;
             return std::make_shared<Store>(path, parse_verify(verify));
           }),
           py::arg("path"), py::arg("verify") = "none")
      .def_property_readonly("path", &Store::path)
      .def_property_readonly("closed", &Store::closed)
      .def_property_readonly("metadata", &Store::metadata)
      .def("keys", &Store::keys)
      .def("contains", &Store::contains)
      .def("__len__", &Store::size)
      .def("get", &Store::get)
      .def("info", [](const Store& s, const std::string& name) { return info_tuple(s, s.info(name)); })
      .def("infos", [](const Store& s) {
        py::list out;
        for (const auto& t : s.index().tensors) out.append(py::make_tuple(t.name, info_tuple(s, t)));
        return out;
      })
      .def("byte_ranges", &Store::byte_ranges)
      .def("prefetch", &Store::prefetch, py::call_guard<py::gil_scoped_release>())
      .def("release", &Store::release, py::call_guard<py::gil_scoped_release>())
      .def("verify", &Store::verify, py::call_guard<py::gil_scoped_release>())
      .def("verify_all", [](const Store& s, py::object progress) {
        std::function<void(uint64_t)> cb;
        if (!progress.is_none()) {
          cb = [progress](uint64_t n) {
            py::gil_scoped_acquire gil;
            progress(n);
          };
        }
        py::gil_scoped_release nogil;
        return s.verify_all(cb);
      }, py::arg("progress") = py::none())
      .def("close", &Store::close);

  py::class_<Writer>(m, "Writer")
      .def(py::init([](const std::string& path, const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, int64_t>>& specs,
                       const std::map<std::string, std::string>& metadata) {
             std::vector<TensorSpec> out;
             out.reserve(specs.size());
             for (const auto& [name, dtype, shape, alias] : specs) out.push_back({name, dtype_from_name(dtype), shape, alias});
             return std::make_unique<Writer>(path, out, metadata);
           }),
           py::arg("path"), py::arg("specs"), py::arg("metadata"))
      .def("write", [](Writer& w, size_t i, const at::Tensor& t) {
        if (!t.device().is_cpu() || !t.is_contiguous()) throw std::invalid_argument("litcore: Writer.write needs a contiguous CPU tensor");
        const TensorInfo& info = w.index().tensors.at(i);
        if (from_scalar_type(t.scalar_type()) != info.dtype) {
          throw std::invalid_argument("litcore: tensor '" + info.name + "' has dtype " + c10::toString(t.scalar_type()) +
                                      ", the plan says " + dtype_name(info.dtype));
        }
        const void* data = t.data_ptr();
        uint64_t nbytes = t.nbytes();
        py::gil_scoped_release nogil;
        w.write(i, data, nbytes);
      })
      .def("copy_from_fd", &Writer::copy_from_fd, py::call_guard<py::gil_scoped_release>())
      .def("commit", &Writer::commit, py::call_guard<py::gil_scoped_release>())
      .def("abort", &Writer::abort)
      .def_property_readonly("temp_path", &Writer::temp_path)
      .def_property_readonly("file_size", &Writer::file_size);

  py::class_<Prefetcher>(m, "Prefetcher")
      .def(py::init([](const Store& store, const std::vector<std::vector<std::pair<uint64_t, uint64_t>>>& groups,
                       uint64_t window_bytes, int threads, const std::string& read_mode,
                       const std::vector<bool>& on_demand, bool keep) {
             std::vector<std::vector<ByteRange>> ranges;
             ranges.reserve(groups.size());
             for (const auto& g : groups) {
               std::vector<ByteRange> out;
               for (const auto& [off, len] : g) out.push_back({off, len});
               ranges.push_back(std::move(out));
             }
             Prefetcher::Options opts;
             opts.window_bytes = window_bytes;
             opts.threads = threads;
             opts.on_demand = on_demand;
             opts.keep = keep;
             if (read_mode == "sendfile") opts.read_mode = ReadMode::Sendfile;
             else if (read_mode == "pread") opts.read_mode = ReadMode::Pread;
             else if (read_mode == "populate") opts.read_mode = ReadMode::Populate;
             else throw std::invalid_argument("litcore: read_mode must be 'sendfile', 'pread' or 'populate', not '" + read_mode + "'");
             return std::make_unique<Prefetcher>(store.mapping(), std::move(ranges), opts);
           }),
           py::arg("store"), py::arg("groups"), py::arg("window_bytes"), py::arg("threads") = 1,
           py::arg("read_mode") = "sendfile", py::arg("on_demand") = std::vector<bool>{}, py::arg("keep") = false)
      .def("set_order", &Prefetcher::set_order, py::call_guard<py::gil_scoped_release>())
      .def("wait", &Prefetcher::wait, py::call_guard<py::gil_scoped_release>())
      .def("done", &Prefetcher::done, py::call_guard<py::gil_scoped_release>())
      .def("release_all", &Prefetcher::release_all, py::call_guard<py::gil_scoped_release>())
      .def("group_bytes", &Prefetcher::group_bytes)
      .def("reset_stats", &Prefetcher::reset_stats)
      .def("stats", [](const Prefetcher& p) {
        PrefetchStats s = p.stats();
        py::dict d;
        d["bytes_read"] = s.bytes_read;
        d["hits"] = s.hits;
        d["misses"] = s.misses;
        d["mispredicts"] = s.mispredicts;
        d["wait_seconds"] = s.wait_seconds;
        d["read_seconds"] = s.read_seconds;
        d["seek_reads"] = s.seek_reads;
        d["seek_read_bytes"] = s.seek_read_bytes;
        d["seek_read_seconds"] = s.seek_read_seconds;
        d["in_flight_bytes"] = s.in_flight_bytes;
        d["peak_in_flight_bytes"] = s.peak_in_flight_bytes;
        return d;
      });

  m.def("make_plan", [](const std::vector<UnitTuple>& units, const std::vector<int>& order, uint64_t budget,
                        const std::set<int>& ran, int depth, const RatesTuple& rates, int current_runs) {
    Plan p = make_plan(to_units(units), order, budget, ran, depth, to_rates(rates), current_runs);
    return py::make_tuple(p.resident, p.streamed_order, p.window_bytes, p.resident_bytes, p.streamed_bytes, p.budget,
                          p.total_bytes, p.runs, p.modeled_seconds);
  }, py::arg("units"), py::arg("order"), py::arg("budget"), py::arg("ran") = std::set<int>{}, py::arg("depth") = 3,
     py::arg("rates") = RatesTuple{0.0, 0.0, 0.0}, py::arg("current_runs") = 1);
  m.def("model_pass_seconds", [](const std::vector<UnitTuple>& units, const std::vector<int>& order,
                                 const std::set<int>& streamed, uint64_t window_bytes, const RatesTuple& rates) {
    return model_pass_seconds(to_units(units), order, streamed, window_bytes, to_rates(rates));
  });
  m.def("auto_budget", &auto_budget);
  m.def("cgroup_limit", &cgroup_limit);

  m.def("xxh64", [](py::buffer b) {
    py::buffer_info info = b.request();
    py::gil_scoped_release nogil;
    return xxh64(info.ptr, static_cast<size_t>(info.size * info.itemsize));
  });
  m.def("tensor_xxh64", [](const at::Tensor& t) {
    if (!t.is_contiguous() || !t.device().is_cpu()) throw std::invalid_argument("tensor_xxh64 needs a contiguous CPU tensor");
    return xxh64(t.data_ptr(), t.nbytes());
  });
  m.def("drop_pages", &drop_pages);
  m.def("remove_stale_partials", &remove_stale_partials);
}
