// The one TORCH_LIBRARY(litcore, ...) registration: TorchScript programs reach the engine
// and its store through torch.classes.litcore.Engine, from Python or from C++
// (torch::jit::load). Statistics cross as Dict[str, float] under the engine's own names.
#include <torch/custom_class.h>
#include <torch/library.h>

#include "litcore/options.h"
#include "litcore/script_engine.h"

namespace litcore {
namespace {

using Self = c10::intrusive_ptr<ScriptEngine>;

c10::Dict<std::string, double> to_dict(const std::vector<Stat>& stats) {
  c10::Dict<std::string, double> out;
  for (const auto& s : stats) out.insert(s.name, s.value);
  return out;
}

TORCH_LIBRARY(litcore, m) {
  m.class_<ScriptEngine>("Engine")
      .def(torch::init<std::string>())
      .def("path", [](const Self& self) { return self->store->path(); })
      .def("keys", [](const Self& self) { return self->store->keys(); })
      .def("contains", [](const Self& self, const std::string& name) { return self->store->contains(name); })
      .def("__len__", [](const Self& self) { return static_cast<int64_t>(self->store->size()); })
      .def("get", [](const Self& self, const std::string& name) { return self->store->get(name); })
      .def("configure", [](const Self& self, const std::vector<std::vector<std::string>>& units,
                           const c10::List<bool>& streamable, const c10::List<bool>& lookup, int64_t budget_bytes,
                           int64_t threads, const std::string& verify) {
        if (budget_bytes < 0) throw std::invalid_argument("litcore: memory budget must be >= 0 (0: auto)");
        EngineOptions options;
        options.memory_budget = static_cast<uint64_t>(budget_bytes);
        options.threads = check_threads(threads);
        options.verify = parse_verify(verify);
        self->configure(units, std::vector<bool>(streamable.begin(), streamable.end()),
                        std::vector<bool>(lookup.begin(), lookup.end()), options);
      })
      .def("begin", [](const Self& self) {
        if (self->engine) self->engine->begin(/*restart=*/true);  // TorchScript cannot run code on an exception
      })
      .def("enter", [](const Self& self, int64_t unit) {
        if (self->engine) self->engine->enter(static_cast<int>(unit));
      })
      .def("exit", [](const Self& self, int64_t unit) {
        if (self->engine) self->engine->exit(static_cast<int>(unit));
      })
      .def("end", [](const Self& self) {
        if (self->engine) self->engine->end();
      })
      .def("streams", [](const Self& self) { return self->running().streams(); })
      .def("summary", [](const Self& self) { return to_dict(self->running().summary()); })
      .def("passes", [](const Self& self) {
        c10::List<c10::Dict<std::string, double>> out;
        for (const auto& p : self->running().passes()) out.push_back(to_dict(p.fields()));
        return out;
      })
      .def("placements", [](const Self& self) {
        std::vector<std::tuple<std::string, std::string, int64_t>> out;
        for (const auto& p : self->running().placements()) {
          out.emplace_back(p.name, residency_name(p.residency), static_cast<int64_t>(p.nbytes));
        }
        return out;
      })
      .def_pickle(
          // Pickled by path: a saved TorchScript program reopens the file when loaded.
          [](const Self& self) -> std::string { return self->store->path(); },
          [](std::string path) { return c10::make_intrusive<ScriptEngine>(path); });
}

}  // namespace
}  // namespace litcore
