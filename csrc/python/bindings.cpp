// litcore._C: the thin pybind11 layer over liblitcore. No logic lives here.
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <sys/mman.h>
#include <unistd.h>

#include "litcore/litcore.h"
#include "litcore/aten_dtype.h"
#include "litcore/options.h"
#include "litcore/read_groups.h"

namespace py = pybind11;
using namespace litcore;

namespace {


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

// The planner's units and rates as Python passes them: (name, nbytes, streamable, on_demand,
// routed) and (compute, read, seek) seconds per byte / per seek.
using UnitTuple = std::tuple<std::string, uint64_t, bool, bool, bool>;
using RatesTuple = std::tuple<double, double, double>;

std::vector<Unit> to_units(const std::vector<UnitTuple>& units) {
  std::vector<Unit> out;
  out.reserve(units.size());
  for (const auto& [name, nbytes, streamable, on_demand, routed] : units) {
    out.push_back({name, nbytes, streamable, on_demand, routed});
  }
  return out;
}

PassRates to_rates(const RatesTuple& r) { return {std::get<0>(r), std::get<1>(r), std::get<2>(r)}; }

// (name, stored tensor names, streamable, lookup, experts): a UnitSpec as Python passes it.
using UnitSpecTuple = std::tuple<std::string, std::vector<std::string>, bool, bool, int>;

// Each unit's (offset, length) byte ranges, as Store.byte_ranges gives them.
using RangesList = std::vector<std::vector<std::pair<uint64_t, uint64_t>>>;

std::vector<std::vector<ByteRange>> to_ranges(const RangesList& units) {
  std::vector<std::vector<ByteRange>> out;
  out.reserve(units.size());
  for (const auto& u : units) {
    std::vector<ByteRange> ranges;
    for (const auto& [offset, length] : u) ranges.push_back({offset, length});
    out.push_back(std::move(ranges));
  }
  return out;
}


std::vector<UnitSpec> to_specs(const std::vector<UnitSpecTuple>& units) {
  std::vector<UnitSpec> specs;
  for (const auto& [name, tensors, streamable, lookup, experts] : units) {
    specs.push_back({name, tensors, streamable, lookup, experts});
  }
  return specs;
}

std::vector<UnitTuple> unit_tuples(const std::vector<Unit>& units) {
  std::vector<UnitTuple> out;
  for (const auto& u : units) out.emplace_back(u.name, u.nbytes, u.streamable, u.on_demand, u.routed);
  return out;
}

py::tuple plan_tuple(const Plan& p) {
  return py::make_tuple(p.resident, p.streamed_order, p.window_bytes, p.resident_bytes, p.streamed_bytes,
                        p.lookup_bytes, p.budget, p.total_bytes, p.runs, p.modeled_seconds, p.routed_bytes);
}

// The engine's statistics under their C++ names; counts as ints, times as floats.
py::dict stats_dict(const std::vector<Stat>& stats) {
  py::dict d;
  for (const auto& s : stats) {
    if (s.integer) d[py::str(s.name)] = static_cast<uint64_t>(s.value);
    else d[py::str(s.name)] = s.value;
  }
  return d;
}

py::dict prefetch_stats_dict(const PrefetchStats& s) {
  py::dict d;
  d["bytes_read"] = s.bytes_read;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["mispredicts"] = s.mispredicts;
  d["wait_seconds"] = s.wait_seconds;
  d["read_seconds"] = s.read_seconds;
  d["reading_seconds"] = s.reading_seconds;
  d["timed_bytes"] = s.timed_bytes;
  d["seek_reads"] = s.seek_reads;
  d["seek_read_bytes"] = s.seek_read_bytes;
  d["seek_read_seconds"] = s.seek_read_seconds;
  d["in_flight_bytes"] = s.in_flight_bytes;
  d["peak_in_flight_bytes"] = s.peak_in_flight_bytes;
  return d;
}

// Writer.write / Writer.append from Python: a CPU, contiguous tensor of the dtype spec `i`
// plans, handed to `method` without the GIL.
auto tensor_data(void (Writer::*method)(size_t, const void*, uint64_t), const char* name) {
  return [method, name](Writer& w, size_t i, const at::Tensor& t) {
    if (!t.device().is_cpu() || !t.is_contiguous()) {
      throw std::invalid_argument(std::string("litcore: Writer.") + name + " needs a contiguous CPU tensor");
    }
    const TensorInfo& info = w.index().tensors.at(i);
    if (from_scalar_type(t.scalar_type()) != info.dtype) {
      throw std::invalid_argument("litcore: tensor '" + info.name + "' has dtype " + c10::toString(t.scalar_type()) +
                                  ", the plan says " + dtype_name(info.dtype));
    }
    const void* data = t.data_ptr();
    uint64_t nbytes = t.nbytes();
    py::gil_scoped_release nogil;
    (w.*method)(i, data, nbytes);
  };
}

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
      .def("write", tensor_data(&Writer::write, "write"))
      .def("append", tensor_data(&Writer::append, "append"))
      .def("copy_from_fd", &Writer::copy_from_fd, py::call_guard<py::gil_scoped_release>())
      .def("commit", &Writer::commit, py::call_guard<py::gil_scoped_release>())
      .def("abort", &Writer::abort)
      .def_property_readonly("temp_path", &Writer::temp_path)
      .def_property_readonly("file_size", &Writer::file_size);

  // The prefetch reader on its own: for the CUDA path's host side and the read-path benchmark.
  py::class_<Prefetcher>(m, "Prefetcher")
      .def(py::init([](const Store& store, const RangesList& units,
                       uint64_t window_bytes, int threads, const std::string& read_mode,
                       const std::vector<bool>& on_demand) {
             Prefetcher::Options opts;
             opts.window_bytes = window_bytes;
             opts.threads = threads;
             opts.on_demand = on_demand;
             opts.read_mode = parse_read_mode(read_mode);
             return std::make_unique<Prefetcher>(store.mapping(), to_ranges(units), opts);
           }),
           py::arg("store"), py::arg("units"), py::arg("window_bytes"), py::arg("threads") = 1,
           py::arg("read_mode") = "sendfile", py::arg("on_demand") = std::vector<bool>{})
      .def("set_order", &Prefetcher::set_order, py::call_guard<py::gil_scoped_release>())
      .def("wait", &Prefetcher::wait, py::call_guard<py::gil_scoped_release>())
      .def("done", &Prefetcher::done, py::call_guard<py::gil_scoped_release>())
      .def("release_all", &Prefetcher::release_all, py::call_guard<py::gil_scoped_release>())
      .def("unit_bytes", &Prefetcher::unit_bytes)
      .def("reset_stats", &Prefetcher::reset_stats)
      .def("stats", [](const Prefetcher& p) { return prefetch_stats_dict(p.stats()); });

  py::class_<Engine>(m, "Engine")
      .def(py::init([](std::shared_ptr<Store> store, const std::vector<UnitSpecTuple>& units, uint64_t memory_budget,
                       int threads, const std::string& read_mode, bool warm_up, bool adapt, const std::string& verify,
                       bool narrow_compute) {
             std::vector<UnitSpec> specs = to_specs(units);
             EngineOptions options;
             options.memory_budget = memory_budget;
             options.threads = threads;
             options.read_mode = parse_read_mode(read_mode);
             options.warm_up = warm_up;
             options.adapt = adapt;
             options.verify = parse_verify(verify);
             options.narrow_compute = narrow_compute;
             py::gil_scoped_release nogil;
             return std::make_unique<Engine>(std::move(store), specs, options);
           }),
           py::arg("store"), py::arg("units"), py::arg("memory_budget") = 0, py::arg("threads") = 1,
           py::arg("read_mode") = "sendfile", py::arg("warm_up") = true, py::arg("adapt") = true,
           py::arg("verify") = "none", py::arg("narrow_compute") = false)
      .def("begin", &Engine::begin, py::arg("restart") = false, py::call_guard<py::gil_scoped_release>())
      .def("enter", py::overload_cast<int>(&Engine::enter), py::call_guard<py::gil_scoped_release>())
      .def("enter_experts", py::overload_cast<int, const std::vector<int64_t>&>(&Engine::enter),
           py::call_guard<py::gil_scoped_release>())
      .def("routed_units", &Engine::routed_units)
      .def("exit", &Engine::exit, py::call_guard<py::gil_scoped_release>())
      .def("end", &Engine::end, py::arg("failed") = false, py::call_guard<py::gil_scoped_release>())
      .def("replan", [](Engine& e, const RatesTuple& rates) {
        PassRates r = to_rates(rates);
        py::gil_scoped_release nogil;
        e.replan(r);
      })
      .def("streams", &Engine::streams)
      .def("warming_up", &Engine::warming_up)
      .def("plan", [](const Engine& e) { return plan_tuple(e.plan()); })
      .def("units", [](const Engine& e) { return unit_tuples(e.units()); })
      .def("order", &Engine::order)
      .def("placements", [](const Engine& e) {
        py::list out;
        for (const auto& p : e.placements()) out.append(py::make_tuple(p.name, residency_name(p.residency), p.nbytes));
        return out;
      })
      .def("passes", [](const Engine& e) {
        py::list out;
        for (const auto& p : e.passes()) out.append(stats_dict(p.fields()));
        return out;
      })
      .def("summary", [](const Engine& e) { return stats_dict(e.summary()); })
      .def("totals", [](const Engine& e) { return stats_dict(e.totals()); })
      .def("take_warnings", &Engine::take_warnings);

  m.def("units_of", [](const Store& store, const std::vector<UnitSpecTuple>& units) {
    return unit_tuples(units_of(store, to_specs(units)));
  });
  m.def("units_of_tensors", [](const std::vector<UnitSpecTuple>& units,
                               const std::map<std::string, std::pair<std::string, uint64_t>>& tensors) {
    return unit_tuples(units_of(to_specs(units), [&](const std::string& name) {
      auto it = tensors.find(name);
      if (it == tensors.end()) throw litcore::KeyError("litcore: no size given for tensor '" + name + "'");
      return it->second;
    }));
  }, py::arg("units"), py::arg("tensors"));

  // The warm-up reader on its own: for the CUDA path's host-kept weights.
  py::class_<WarmupReader>(m, "WarmupReader")
      .def(py::init([](const Store& store, const RangesList& units) {
        return std::make_unique<WarmupReader>(store.mapping(), to_ranges(units));
      }))
      .def("stop", &WarmupReader::stop)
      .def_property_readonly("bytes_read", &WarmupReader::bytes_read)
      .def_property_readonly("running", &WarmupReader::running);

  m.def("make_plan", [](const std::vector<UnitTuple>& units, const std::vector<int>& order, uint64_t budget,
                        const std::set<int>& ran, int depth, const RatesTuple& rates, int current_runs,
                        uint64_t read_group_bytes, bool direct_reads) {
    return plan_tuple(make_plan(to_units(units), order, budget, ran, depth, to_rates(rates), current_runs,
                                read_group_bytes, direct_reads));
  }, py::arg("units"), py::arg("order"), py::arg("budget"), py::arg("ran") = std::set<int>{}, py::arg("depth") = 3,
     py::arg("rates") = RatesTuple{0.0, 0.0, 0.0}, py::arg("current_runs") = 1, py::arg("read_group_bytes") = 0,
     py::arg("direct_reads") = false);
  m.def("make_device_plan", [](const std::vector<UnitTuple>& units, const std::vector<int>& order, uint64_t budget,
                               int slots, uint64_t slot_overhead) {
    return plan_tuple(make_device_plan(to_units(units), order, budget, slots, slot_overhead));
  }, py::arg("units"), py::arg("order"), py::arg("budget"), py::arg("slots") = 3, py::arg("slot_overhead") = 4096);
  m.def("make_host_plan", [](const std::vector<UnitTuple>& units, const std::vector<int>& streamed_order,
                             uint64_t budget) {
    Plan device;
    device.streamed_order = streamed_order;
    return plan_tuple(make_host_plan(to_units(units), device, budget));
  }, py::arg("units"), py::arg("streamed_order"), py::arg("budget"));
  m.def("planned_read_group", [](const std::vector<UnitTuple>& units, const std::vector<int>& order,
                                 const RangesList& ranges, uint64_t budget) {
    if (units.size() != ranges.size()) throw std::invalid_argument("litcore: one list of byte ranges per unit");
    for (int i : order) {
      if (i < 0 || static_cast<size_t>(i) >= ranges.size()) throw std::out_of_range("litcore: unit out of range");
    }
    return planned_read_group(to_units(units), order, to_ranges(ranges), budget);
  }, py::arg("units"), py::arg("order"), py::arg("ranges"), py::arg("budget"));
  m.def("model_pass_seconds", [](const std::vector<UnitTuple>& units, const std::vector<int>& order,
                                 const std::set<int>& streamed, uint64_t window_bytes, const RatesTuple& rates) {
    return model_pass_seconds(to_units(units), order, streamed, window_bytes, to_rates(rates));
  });
  m.def("narrow_streamed_compute", [](const RatesTuple& rates, int threads, bool narrowed) {
    return narrow_streamed_compute(to_rates(rates), threads, narrowed);
  }, py::arg("rates"), py::arg("threads"), py::arg("narrowed"));
  m.def("measure_rates", [](const std::vector<UnitTuple>& units, const std::vector<int>& order, double forward_seconds,
                            const py::dict& stats, const RatesTuple& previous) {
    PrefetchStats s;
    s.timed_bytes = stats["timed_bytes"].cast<uint64_t>();
    s.wait_seconds = stats["wait_seconds"].cast<double>();
    s.read_seconds = stats["read_seconds"].cast<double>();
    s.seek_reads = stats["seek_reads"].cast<uint64_t>();
    s.seek_read_bytes = stats["seek_read_bytes"].cast<uint64_t>();
    s.seek_read_seconds = stats["seek_read_seconds"].cast<double>();
    PassRates r = measure_rates(to_units(units), order, forward_seconds, s, to_rates(previous));
    return RatesTuple{r.compute_seconds_per_byte, r.read_seconds_per_byte, r.seek_seconds};
  });
  m.def("auto_budget", &auto_budget);
  m.def("parse_budget", &parse_budget, py::arg("text"), py::arg("argument") = "memory_budget");
  m.def("check_threads", &check_threads);
  m.def("parse_device", [](const std::string& text) { return parse_device(text).str(); }, py::arg("text"));
  m.def("require_device", [](const std::string& text, const std::string& entry_point) {
    require_device(parse_device(text), entry_point);
  }, py::arg("device"), py::arg("entry_point"));
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
  m.def("check_destination", &check_destination);
  py::class_<AtomicFile>(m, "AtomicFile")
      .def(py::init<const std::string&>())
      .def_property_readonly("temp_path", &AtomicFile::temp_path)
      .def("commit", &AtomicFile::commit, py::call_guard<py::gil_scoped_release>())
      .def("abort", &AtomicFile::abort);
}
